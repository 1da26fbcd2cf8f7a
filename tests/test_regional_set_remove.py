"""Regional keyspaces (ARCH §6): an add-wins set's remove names the add tags it observed. One
naming a tag newer than itself is refused where it commits: committed, it removed the
region's later adds of the element too, in every region."""

from __future__ import annotations

from engine.group import GroupStateMachine, Outcome, encode_commit, encode_remote
from engine.merge import AddWinsSet, decode_cell, decode_set, encode_set_add, encode_set_remove
from engine.mvcc import MAX_TS, MVCCStore
from raft.types import Entry

KEY = (7).to_bytes(4, "big") + b"tags"
T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them


def _elements(store) -> list[bytes]:
    return decode_set(AddWinsSet().value_of(decode_cell(store.get(KEY, MAX_TS))))


def test_a_remove_naming_a_future_tag_is_refused_and_later_adds_stay(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 22)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east")
    try:
        index = 0

        def commit(ts, payload):
            nonlocal index
            index += 1
            [result] = sm.apply([Entry(term=1, index=index, data=encode_commit(
                index, 0, ts, [], merges=[(KEY, "add_wins_set", payload)]))])
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
        [result] = sm.apply([Entry(term=1, index=index, data=encode_remote(
            101, T + 500, 0, T + 450, [[KEY, "add_wins_set", bad, T + 450, "eu-west", 0, ""]]))])
        assert result.outcome is Outcome.INVALID and sm.watermark(101) == 0
        assert _elements(store) == [b"x"]
    finally:
        sm.close()
        store.close()
