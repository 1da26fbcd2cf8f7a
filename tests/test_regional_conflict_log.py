"""Regional keyspaces (ARCH §6): the conflict log keeps one record per losing write whatever
the region names, a drain naming ids a client made up applies, and a losing write's record
always fits (else the store would refuse the whole apply, at every replay)."""

from __future__ import annotations

import pytest

from engine.group import GroupStateMachine, Outcome, encode_commit, encode_drain, encode_remote
from engine.mvcc import MAX_VALUE_SIZE, MVCCStore
from raft.types import Entry

KEY = (7).to_bytes(4, "big") + b"k"

# Two regions whose names share their first 32 bytes (say, one deployment's zones).
WEST = "customer-production-europe-west-frankfurt-1"
WEST2 = "customer-production-europe-west-frankfurt-2"


@pytest.mark.parametrize("order", [(WEST, WEST2), (WEST2, WEST)], ids=["1-then-2", "2-then-1"])
def test_two_regions_sharing_a_long_name_prefix_each_get_their_conflict_record(tmp_path, order):
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east")
    try:
        index = 0

        def apply(data):
            nonlocal index
            index += 1
            [result] = sm.apply([Entry(term=1, index=index, data=data)])
            return result

        assert apply(encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"east")])).committed
        # Each of the two regions wrote the key at the same timestamp, without having seen
        # us-east's newer write: both writes lose, and each must be logged.
        for group, origin in enumerate(order, start=101):
            shipped = [[KEY, "lww", origin.encode(), 50, origin, 0, ""]]
            assert apply(encode_remote(group, 200 + group, 0, 200, shipped)).committed
        records = sm.conflicts(KEY, KEY + b"\xff")
        # Before, the second record took the first one's key: the log kept one loser, the
        # one that arrived last, so two regions receiving them in other orders disagreed.
        assert sorted((rec[2], rec[3], rec[4]) for _, _, rec in records) == [
            (50, WEST, WEST.encode()), (50, WEST2, WEST2.encode())]
        assert all(key == KEY for _, key, _ in records)
    finally:
        sm.close()
        store.close()


def test_a_drain_naming_an_overlong_record_id_applies_and_drains_the_rest(tmp_path):
    # conflicts.drain puts the client's ids in the log as they are. An id over the side
    # table's key limit made the store refuse the whole apply: every replica stopped on the
    # entry, again at every restart.
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east")
    try:
        entries = [
            encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"east")]),
            encode_remote(101, 200, 0, 200, [[KEY, "lww", b"west", 50, "eu-west", 0, ""]]),
        ]
        sm.apply([Entry(term=1, index=i, data=d) for i, d in enumerate(entries, start=1)])
        [(record_id, _, _)] = sm.conflicts(KEY, KEY + b"\xff")
        drain = encode_drain(300, [b"c" + b"x" * 600, record_id])
        sm.apply([Entry(term=1, index=3, data=drain)])
        assert sm.applied_index == 3
        assert sm.conflicts(KEY, KEY + b"\xff") == []
    finally:
        sm.close()
        store.close()


# Fits in a cell (the origin commits it), but not in a conflict record with its fields.
BIG = b"v" * (MAX_VALUE_SIZE - 40)
T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them


@pytest.fixture
def sm(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=64 << 20)
    machine = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east")
    yield machine
    machine.close()
    store.close()


def test_a_shipped_write_too_large_to_log_is_refused_not_a_stuck_group(sm):
    # It loses to the newer local write and is logged with its value: the record was over
    # the side table's limit, the store refused the whole apply, and every replica stopped
    # on the entry, again at every restart.
    entries = [encode_commit(1, 0, T + 100, [], merges=[(KEY, "lww", b"east")]),
               encode_remote(101, T + 200, 0, T + 200,
                             [[KEY, "lww", BIG, T + 50, "eu-west", 0, ""]]),
               encode_remote(101, T + 300, 0, T + 300,
                             [[KEY, "lww", b"ok", T + 250, "eu-west", 0, ""]])]
    results = sm.apply([Entry(term=1, index=i, data=d) for i, d in enumerate(entries, start=1)])
    assert sm.applied_index == 3
    assert results[1].outcome is Outcome.INVALID
    assert results[2].committed and sm.watermark(101) == T + 300


def test_a_local_write_too_large_to_log_is_refused_where_it_is_written(sm):
    # Committed here, it would stop every region where it loses a conflict.
    [r] = sm.apply([Entry(term=1, index=1, data=encode_commit(
        1, 0, T + 100, [], merges=[(KEY, "lww", BIG)]))])
    assert r.outcome is Outcome.INVALID and sm.outbox_after(0) == []
