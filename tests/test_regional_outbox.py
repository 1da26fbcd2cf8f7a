"""Regional keyspaces (ARCH §6): a group's outbox is replicated state like any other, so what
it keeps and trims must be a function of the log alone, however a replica cuts the log into
apply calls."""

from __future__ import annotations

import random

import pytest

from engine.group import (
    GroupStateMachine,
    encode_close,
    encode_commit,
    encode_shipped,
)
from engine.merge import encode_int
from engine.mvcc import MVCCStore
from raft.types import Entry

KEY = (7).to_bytes(4, "big") + b"n"
DESTINATIONS = [2, 3]


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
