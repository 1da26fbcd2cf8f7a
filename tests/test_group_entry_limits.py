"""Entries a client could have sent that the group cannot take are refused where they are
applied, like any other, instead of stopping every replica of the group for good: a commit or
prepare with more keys than the adjudicator takes in one request (writes, read locks and
validated reads together), and a serializable one whose scanned range has a bound longer than
any key (refused by the node too)."""

from __future__ import annotations

import pytest
import trio

from engine.adjudicator import MAX_TXN_KEYS
from engine.group import (
    GroupStateMachine,
    Outcome,
    encode_commit,
    encode_prepare,
)
from engine.local import open_local_cluster
from engine.mvcc import MAX_KEY_SIZE, MAX_TS, MVCCStore
from engine.placement import data_group
from engine.rpc import RemoteError
from test_group import LIFETIME, Log
from test_node_misuse import GUARD_S, KEY, OTHER, client_of, leader_of

PRIMARY = 100
MANY = [b"r" + i.to_bytes(3, "big") for i in range(MAX_TXN_KEYS)]  # one too many with a write
LONG = b"z" * (MAX_KEY_SIZE + 2)


@pytest.fixture
def sm(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 24)
    machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    yield machine
    machine.close()
    store.close()


@pytest.mark.parametrize("entry", [
    encode_prepare(5, 0, 100, [(b"k", b"v")], (), MANY, primary=PRIMARY, deadline=1000),
    encode_prepare(5, 50, 100, [(b"k", b"v")], MANY, (), primary=PRIMARY, deadline=1000,
                   serializable=True),
    encode_commit(5, 50, 100, [(b"k", b"v")], MANY, serializable=True),
], ids=["prepare-locks", "prepare-reads", "commit-reads"])
def test_too_many_keys_in_one_entry_are_refused_where_applied(sm, entry):
    log = Log()
    r, after = sm.apply([log(entry), log(encode_commit(6, 0, 200, [(b"k", b"w")]))])
    assert r.outcome is Outcome.INVALID and str(MAX_TXN_KEYS) in r.reason
    assert sm.intents([b"k", MANY[0]], MAX_TS) == [] and sm.prepared() == []
    # The group goes on: the next entry of the same call is applied.
    assert after.committed and sm.store.get(b"k", MAX_TS) == b"w"


def test_read_keys_a_snapshot_commit_does_not_validate_do_not_count(sm):
    log = Log()
    r = sm.apply([log(encode_commit(5, 50, 100, [(b"k", b"v")], MANY))])[0]
    assert r.committed


@pytest.mark.parametrize("span", [[b"a", LONG, None], [LONG, LONG + b"z", 5]],
                         ids=["end", "start"])
@pytest.mark.parametrize("kind", ["commit", "prepare"])
def test_a_range_bound_longer_than_a_key_is_refused_where_applied(sm, kind, span):
    log = Log()
    sm.apply([log(encode_commit(1, 0, 50, [(b"a", b"0")]))])
    if kind == "commit":
        entry = encode_commit(2, 50, 100, [(b"k", b"v")], serializable=True, spans=[span])
    else:
        entry = encode_prepare(2, 50, 100, [(b"k", b"v")], primary=PRIMARY, deadline=1000,
                               serializable=True, spans=[span])
    r, after = sm.apply([log(entry), log(encode_commit(3, 0, 200, [(b"k", b"w")]))])
    assert r.outcome is Outcome.INVALID
    assert after.committed and sm.store.get(b"k", MAX_TS) == b"w"


def test_a_bound_one_byte_longer_than_a_key_is_still_a_range(sm):
    # What a paged scan continues from: the longest key and a zero byte.
    log = Log()
    r = sm.apply([log(encode_commit(2, 0, 100, [(b"k", b"v")], serializable=True,
                                    spans=[[b"x" * MAX_KEY_SIZE + b"\0", b"y", None]]))])[0]
    assert r.committed


@pytest.mark.parametrize("method, bad, code", [
    ("prepare", {"locks": [KEY + k for k in MANY]}, "limit_exceeded"),  # by the node, first
    ("prepare", {"serializable": True, "spans": [[KEY, KEY + LONG, None]]}, "invalid_argument"),
    ("commit", {"serializable": True, "spans": [[KEY, KEY + LONG, None]]}, "invalid_argument"),
], ids=["too-many-locks", "long-bound-prepare", "long-bound-commit"])
async def test_a_request_the_group_cannot_take_is_refused_and_the_group_goes_on(
        tmp_path, method, bad, code):
    async with open_local_cluster(("us-east",), 1, seed=1,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                with pytest.raises(RemoteError) as refused:
                    await conn.call(method, {
                        "group": gid, "txn_id": 77, "read_ts": 0, "writes": [[KEY, b"x"]],
                        "primary": gid, **bad})
                assert refused.value.code == code
                await conn.call("commit", {"group": gid, "txn_id": 78, "read_ts": 0,
                                           "writes": [[OTHER, b"y"]]})
                reply = await conn.call("read", {"group": gid, "keys": [KEY, OTHER]})
                assert reply["values"] == [None, b"y"]
