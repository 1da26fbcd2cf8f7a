"""Draining a regional keyspace's conflict log touches that keyspace's records only.

Two regional keyspaces share their region's data group, and so its conflict log. A drain
names its keyspace; a record id of another keyspace in it (a caller that mixed up its
records) used to delete that keyspace's record all the same. In-process cluster; the
conflicts are made deterministic by sending the losing write straight to the group, as the
other region's shipper would.
"""

from __future__ import annotations

import re

import pytest
import trio

from engine.errors import InvalidArgumentError
from engine.local import open_local_cluster
from engine.placement import data_group, encode_key
from engine.rpc import RemoteError, connect_rpc

GUARD_S = 30  # only ever reached by a bug that hangs


async def lose_a_write(conn, here: int, other: int, key: bytes, after: int) -> int:
    """Commits a write to ``key`` here, then delivers an older concurrent one from the other
    region, which loses and is logged; returns the delivered batch's ``up_to``."""
    reply = await conn.call("commit", {"group": here, "txn_id": after + 1, "read_ts": 0,
                                       "writes": [], "merges": [[key, "lww", b"here"]]})
    await conn.call("remote.apply", {
        "group": here, "origin": other, "after": after, "up_to": after + 10,
        "writes": [[key, "lww", b"there", after + 5, "eu-west", 0, ""]]})
    assert reply["ts"] > after + 5
    return after + 10


async def test_a_drain_leaves_other_keyspaces_records_alone(tmp_path):
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=2,
                                  directory=str(tmp_path)) as cluster:
        here, other = (data_group(cluster.config, r) for r in ("us-east", "eu-west"))
        async with cluster.connect(region="us-east") as db:
            with trio.fail_after(GUARD_S):
                a = await db.create_keyspace("a", mode="regional")
                b = await db.create_keyspace("b", mode="regional")
                node = cluster.nodes[1]
                while not node.replicas[here].node.is_leader:
                    await trio.sleep(0.02)
                async with connect_rpc(cluster.config.node(1).client_host,
                                       node.client_port) as conn:
                    up_to = await lose_a_write(conn, here, other, encode_key(a.id, b"k"), 0)
                    await lose_a_write(conn, here, other, encode_key(b.id, b"k"), up_to)
                    [rec_a], [rec_b] = await db.conflicts("a"), await db.conflicts("b")

                    named = re.escape(repr(rec_b.record_id))
                    with pytest.raises(InvalidArgumentError, match=named):
                        await db.drain_conflicts("a", [rec_a, rec_b])
                    # Refused whole: neither keyspace lost its record.
                    assert await db.conflicts("a") == [rec_a]
                    assert await db.conflicts("b") == [rec_b]

                    # A request naming no keyspace is refused too.
                    with pytest.raises(RemoteError) as refused:
                        await conn.call("conflicts.drain", {"group": here,
                                                            "keys": [rec_b.record_id]})
                    assert refused.value.code == "invalid_argument"
                    assert await db.conflicts("b") == [rec_b]

                    await db.drain_conflicts("b", [rec_b])
                    assert await db.conflicts("b") == []
                    assert await db.conflicts("a") == [rec_a]


async def test_a_drain_takes_any_iterable_of_records_and_refuses_one_record(tmp_path):
    # The records were checked in one pass and their ids taken in another: a generator was
    # used up by the check, and the drain removed nothing while saying nothing. One record
    # not in a list failed with a TypeError from inside the client.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=3,
                                  directory=str(tmp_path)) as cluster:
        here, other = (data_group(cluster.config, r) for r in ("us-east", "eu-west"))
        async with cluster.connect(region="us-east") as db:
            with trio.fail_after(GUARD_S):
                a = await db.create_keyspace("a", mode="regional")
                node = cluster.nodes[1]
                while not node.replicas[here].node.is_leader:
                    await trio.sleep(0.02)
                async with connect_rpc(cluster.config.node(1).client_host,
                                       node.client_port) as conn:
                    await lose_a_write(conn, here, other, encode_key(a.id, b"k"), 0)
                [rec] = await db.conflicts("a")
                with pytest.raises(InvalidArgumentError, match="not one ConflictRecord"):
                    await db.drain_conflicts("a", rec)
                assert await db.conflicts("a") == [rec]
                await db.drain_conflicts("a", (r for r in [rec]))
                assert await db.conflicts("a") == []
