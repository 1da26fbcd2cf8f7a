"""How far each destination has applied a group's regional writes (SHIPPED), as the group
reports it: the watermark is kept in memory between reads (every regional commit's outbox trim
asks for it), and must follow the store through SHIPPED entries, apply calls of any size and
snapshot installs."""

from __future__ import annotations

from engine.group import GroupStateMachine, encode_commit, encode_shipped
from engine.mvcc import MVCCStore
from raft.types import Entry

KEY = (7).to_bytes(4, "big") + b"k"
DESTINATIONS = [2, 3]


def _machine(path) -> tuple[MVCCStore, GroupStateMachine]:
    store = MVCCStore(path, map_size=1 << 22)
    return store, GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east",
                                    destinations=DESTINATIONS)


def _entries(data: list[bytes], first: int = 1) -> list[Entry]:
    return [Entry(term=1, index=i, data=d) for i, d in enumerate(data, start=first)]


def test_a_shipped_entry_moves_the_watermark_read_before_it(tmp_path):
    store, sm = _machine(tmp_path / "a")
    try:
        sm.apply(_entries([encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"v")])]))
        assert sm.shipped(2) == 0 and sm.shipped(3) == 0  # read, and kept
        sm.apply(_entries([encode_shipped(101, 2, 100)], first=2))
        assert sm.shipped(2) == 100
        assert sm.shipped(3) == 0
        # An older answer arriving late changes nothing.
        sm.apply(_entries([encode_shipped(102, 2, 50), encode_shipped(103, 3, 100)], first=3))
        assert (sm.shipped(2), sm.shipped(3)) == (100, 100)
        # The outbox record both destinations have is trimmed (the trims read the watermark).
        assert sm.outbox_after(0) == []
    finally:
        sm.close()
        store.close()


def test_a_snapshot_install_brings_the_watermarks_of_the_snapshot(tmp_path):
    store_a, a = _machine(tmp_path / "a")
    store_b, b = _machine(tmp_path / "b")
    try:
        a.apply(_entries([encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"v")]),
                          encode_shipped(101, 2, 100)]))
        b.apply(_entries([encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"v")])]))
        assert b.shipped(2) == 0  # read, and kept
        b.restore(a.snapshot())
        assert b.shipped(2) == 100
        assert b.shipped(3) == 0
    finally:
        a.close()
        b.close()
        store_a.close()
        store_b.close()


def test_a_restart_reads_the_watermarks_from_the_store(tmp_path):
    store, sm = _machine(tmp_path / "a")
    sm.apply(_entries([encode_commit(1, 0, 100, [], merges=[(KEY, "lww", b"v")]),
                       encode_shipped(101, 3, 100)]))
    sm.close()
    store.close()
    store, sm = _machine(tmp_path / "a")
    try:
        assert (sm.shipped(2), sm.shipped(3)) == (0, 100)
    finally:
        sm.close()
        store.close()
