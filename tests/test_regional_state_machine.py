"""Regional keyspaces (ARCH §6) in one group's state machine: the outbox is replicated state
like any other, so what it keeps and trims must be a function of the log alone, however a
replica cuts the log into apply calls; and an add-wins set's remove names the add tags it
observed: one naming a tag newer than itself is refused where it commits (committed, it
removed the region's later adds of the element too, in every region)."""

from __future__ import annotations

import random

import pytest

from engine.group import (
    OUTBOX_RETENTION_NS,
    GroupStateMachine,
    Outcome,
    encode_close,
    encode_commit,
    encode_remote,
    encode_shipped,
)
from engine.merge import (
    AddWinsSet,
    decode_cell,
    decode_set,
    encode_int,
    encode_set_add,
    encode_set_remove,
)
from engine.mvcc import MAX_TS, MVCCStore
from raft.types import Entry

KEY = (7).to_bytes(4, "big") + b"n"
SET_KEY = (7).to_bytes(4, "big") + b"tags"
DESTINATIONS = [2, 3]
T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them


def _log(seed: int) -> list[bytes]:
    """Regional commits, the destinations' progress (SHIPPED, sometimes late or behind) and
    idle closes, with timestamps moving on."""
    rng = random.Random(seed)
    out, ts = [], 1000
    for txn in range(1, 61):
        ts += rng.randint(1, 4)
        roll = rng.random()
        if roll < 0.5:
            out.append(encode_commit(txn, 0, ts, [], merges=[
                (KEY + bytes([rng.randrange(4)]), "counter", encode_int(1))]))
        elif roll < 0.85:
            out.append(encode_shipped(ts, rng.choice(DESTINATIONS), ts - rng.randint(0, 12)))
        else:
            out.append(encode_close(ts))
    return out


def _replay(path, data: list[bytes], cuts: list[int]):
    """Applies ``data`` in the calls that ``cuts`` (indexes into it) delimit; returns the
    outbox, its trimmed mark and the whole side table."""
    store = MVCCStore(path, map_size=1 << 22)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east",
                           destinations=DESTINATIONS)
    try:
        entries = [Entry(term=1, index=i, data=d) for i, d in enumerate(data, start=1)]
        bounds = sorted({0, len(entries), *cuts})
        for lo, hi in zip(bounds, bounds[1:]):
            sm.apply(entries[lo:hi])
        return sm.outbox_after(0, limit=10_000), sm.outbox_trimmed, store.side_scan(b"", b"\xff")
    finally:
        sm.close()
        store.close()


def test_a_commit_shipped_in_the_same_apply_call_is_trimmed_as_entry_by_entry(tmp_path):
    data = [encode_commit(1, 0, 100, [], merges=[(KEY, "counter", encode_int(1))]),
            encode_shipped(101, 2, 100), encode_shipped(102, 3, 100)]
    one_by_one = _replay(tmp_path / "a", data, [1, 2])
    together = _replay(tmp_path / "b", data, [])
    assert one_by_one[0] == [] and one_by_one[1] == 100
    # Before, the trim read the store only, which did not hold the record yet: the replica
    # that applied the three entries in one call kept it.
    assert together == one_by_one


@pytest.mark.parametrize("seed", range(8))
def test_replicas_keep_the_same_outbox_whatever_their_apply_calls(tmp_path, seed):
    data = _log(seed)
    want = _replay(tmp_path / "one", data, list(range(1, len(data))))
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), 3))
    # Before, a record added earlier in the call was invisible to its trims and one trimmed
    # earlier in it used up their limit: the replicas' outboxes (and trimmed marks) differed.
    assert _replay(tmp_path / "few", data, cuts) == want
    assert _replay(tmp_path / "all", data, []) == want


# ------------------------------------------------------------------ add-wins set removes

def _elements(store) -> list[bytes]:
    return decode_set(AddWinsSet().value_of(decode_cell(store.get(SET_KEY, MAX_TS))))


def test_a_remove_naming_a_future_tag_is_refused_and_later_adds_stay(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 22)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east")
    try:
        index = 0

        def commit(ts, payload):
            nonlocal index
            index += 1
            [result] = sm.apply([Entry(term=1, index=index, data=encode_commit(
                index, 0, ts, [], merges=[(SET_KEY, "add_wins_set", payload)]))])
            return result

        assert commit(T + 100, encode_set_add(b"x")).committed
        # A tag an hour ahead of the remove (a client that took a clock reading for one).
        bad = encode_set_remove(b"x", [(T + 100, "us-east"), (T + 3600 * 10**9, "us-east")])
        result = commit(T + 200, bad)
        assert result.outcome is Outcome.INVALID and "not older than the remove" in result.reason
        assert _elements(store) == [b"x"]
        assert commit(T + 300, encode_set_remove(b"x", [(T + 100, "us-east")])).committed
        assert _elements(store) == []
        # Before, the committed bad remove left a tombstone an hour ahead, which hid this add.
        assert commit(T + 400, encode_set_add(b"x")).committed
        assert _elements(store) == [b"x"]
        # A shipped one (from an origin that took it) refuses its batch, as any payload no
        # cell can take does, rather than remove adds made after it here.
        index += 1
        shipped = [[SET_KEY, "add_wins_set", bad, T + 450, "eu-west", 0, ""]]
        [result] = sm.apply([Entry(term=1, index=index,
                                   data=encode_remote(101, T + 500, 0, T + 450, shipped))])
        assert result.outcome is Outcome.INVALID and sm.watermark(101) == 0
        assert _elements(store) == [b"x"]
    finally:
        sm.close()
        store.close()


# ------------------------------------------------------------------ writes trimmed unshipped

def test_writes_trimmed_before_a_destination_had_them_are_recorded_for_good(tmp_path):
    """The outbox drops a write some destination has not applied once the retention has
    passed: the group records that destination as having lost writes, durably and the same on
    every replica (before, only the node leading the group when its shipper noticed knew it,
    in memory, and only if it noticed before shipping the rest)."""
    record = encode_commit(1, 0, T + 100, [], merges=[(KEY, "counter", encode_int(1))])
    data = [record, encode_shipped(T + 101, 2, T + 100),
            encode_commit(2, 0, T + 200, [], merges=[(KEY, "counter", encode_int(1))]),
            encode_close(T + 102 + OUTBOX_RETENTION_NS),
            encode_shipped(T + 103 + OUTBOX_RETENTION_NS, 3, T + 200),
            encode_shipped(T + 104 + OUTBOX_RETENTION_NS, 2, T + 200),
            encode_close(T + 105 + OUTBOX_RETENTION_NS)]
    path = tmp_path / "g"
    want = _replay(path, data, list(range(1, len(data))))
    assert want[0] == [] and want[1] == T + 200
    assert _replay(tmp_path / "together", data, []) == want
    store = MVCCStore(path, map_size=1 << 22)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east",
                           destinations=DESTINATIONS)
    try:
        # Group 2 had the first write; group 3 had neither when the retention trimmed the
        # first one. The second one was trimmed once both had it: nothing more was lost, and
        # nothing clears what was.
        assert sm.missed() == {3: T + 100}
    finally:
        sm.close()
        store.close()
