"""A commit or prepare with more keys than the adjudicator takes in one request (writes,
read locks and validated reads together) is refused by the node, as a limit, before
anything is proposed: the group would only refuse the entry once it is in the log.

Requests go straight to a node over ``engine.rpc``; in-process cluster.
"""

from __future__ import annotations

import msgpack
import pytest
import trio

import engine.replica
from engine.adjudicator import MAX_TXN_KEYS
from engine.group import CMD_COMMIT, CMD_PREPARE
from engine.local import open_local_cluster
from engine.placement import data_group
from engine.rpc import RemoteError
from test_node_misuse import GUARD_S, KEY, client_of, leader_of


def keys(n: int, tag: bytes) -> list[bytes]:
    return [KEY + tag + b"%d" % i for i in range(n)]


@pytest.mark.parametrize("method,payload", [
    ("commit", {"writes": [[KEY, b"v"]], "reads": keys(MAX_TXN_KEYS, b"r"),
                "serializable": True}),
    ("prepare", {"writes": [[KEY, b"v"]], "locks": keys(MAX_TXN_KEYS, b"l")}),
    ("prepare", {"writes": [[KEY, b"v"]], "locks": keys(MAX_TXN_KEYS // 2, b"l"),
                 "reads": keys(MAX_TXN_KEYS // 2, b"r"), "serializable": True}),
])
async def test_too_many_keys_in_one_group_are_refused_before_proposing(
        method, payload, monkeypatch):
    proposed = []
    propose = engine.replica.GroupReplica._propose

    async def recording(self, data):
        cmd = msgpack.unpackb(data)
        if cmd[0] in (CMD_COMMIT, CMD_PREPARE):
            proposed.append(cmd[1])
        return await propose(self, data)

    monkeypatch.setattr(engine.replica.GroupReplica, "_propose", recording)
    async with open_local_cluster(("us-east",), 1, seed=4) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                with pytest.raises(RemoteError) as refused:
                    await conn.call(method, {"group": gid, "txn_id": 7, "read_ts": 0,
                                             "primary": gid, **payload})
                assert refused.value.code == "limit_exceeded", refused.value
                assert str(MAX_TXN_KEYS) in str(refused.value)
                assert 7 not in proposed
                # At the limit, it goes through (read locks that are also written count once).
                fits = {**payload}
                if "locks" in fits:
                    fits["locks"] = [KEY, *fits["locks"][1:]]
                else:
                    fits["reads"] = fits["reads"][1:]
                await conn.call(method, {"group": gid, "txn_id": 8, "read_ts": 0,
                                         "primary": gid, **fits})
                assert 8 in proposed
