"""Regional keyspaces (ARCH §6) at the level of the group state machine: a stream that
cannot stall on a write its destination can take, sets that converge whatever their
tombstones weigh, and causal order kept by last-writer-wins."""

from __future__ import annotations

import msgpack
import pytest

from engine.group import GroupStateMachine, Outcome, encode_commit, encode_remote
from engine.merge import AddWinsSet, decode_cell, encode_set_add, encode_set_remove
from engine.mvcc import MAX_TS, MVCCStore
from test_group import LIFETIME, Log


@pytest.fixture
def regional(tmp_path):
    machines, stores = [], []

    def make(origin, map_size=1 << 20):
        store = MVCCStore(tmp_path / origin, map_size=map_size)
        machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin=origin)
        stores.append(store)
        machines.append(machine)
        return machine

    yield make
    for m in machines:
        m.close()
    for s in stores:
        s.close()


def one(sm, log, data):
    [result] = sm.apply([log(data)])
    return result


def ship(src, dst, log, origin_group, after, proposed_ts=10**6):
    """Delivers src's outbox after ``after`` to dst in one REMOTE entry (as the shipper
    does: the writes of consecutive outbox records, up to the last one's timestamp)."""
    batch = src.outbox_after(after)
    writes = [w for _, ws in batch for w in ws]
    return one(dst, log, encode_remote(origin_group, proposed_ts, after, batch[-1][0], writes))


def test_a_set_remove_of_an_element_with_many_tags_does_not_stall_its_stream(regional):
    # An add-wins-set element added five times (five tags) and then removed: the origin
    # commits the remove (its cell drops the tombstones behind its own floor), but the
    # destination's REMOTE pre-check merges the batch into *empty* cells without compaction,
    # where the remove leaves one tombstone per tag, each carrying the element's bytes: five
    # times the element is over a value's limit, the whole batch is refused as INVALID, and
    # the shipper resends it forever -- every later write of that origin is stuck behind it.
    east = regional("us-east", map_size=256 << 20)
    west = regional("eu-west", map_size=256 << 20)
    le, lw = Log(), Log()
    elem = b"x" * 900_000
    ts = 100
    for txn in range(1, 6):
        ts += 10
        assert one(east, le, encode_commit(txn, 0, ts, [], merges=[
            (b"s", "add_wins_set", encode_set_add(elem))])).committed
        assert ship(east, west, lw, 101, after=ts - 10 if txn > 1 else 0).committed
    cell = decode_cell(east.store.get(b"s", MAX_TS))
    tags = AddWinsSet.observed_tags(cell, elem)
    assert len(tags) == 5
    ts += 10
    r = one(east, le, encode_commit(6, 0, ts, [], merges=[
        (b"s", "add_wins_set", encode_set_remove(elem, tags))]))
    assert r.committed  # the origin took it: its cell is small
    assert msgpack.unpackb(AddWinsSet().value_of(decode_cell(east.store.get(b"s", MAX_TS)))) \
        == []
    r = ship(east, west, lw, 101, after=ts - 10)
    assert r.outcome is Outcome.COMMITTED, (r.outcome, r.reason[:200])
    assert west.watermark(101) == ts
    assert msgpack.unpackb(AddWinsSet().value_of(decode_cell(west.store.get(b"s", MAX_TS)))) \
        == []


def test_a_set_remove_whose_tombstones_outgrow_a_value_still_converges(regional):
    # The same amplification through a third region, where the real cell (not the pre-check)
    # takes the tombstones: west adds an element five times, east sees the five adds and
    # removes them; east's stream reaches south before west's does. South's cell gets one
    # tombstone per removed tag, each holding the element: over a value's limit, so the
    # remove is "refused" (left out for good, the watermark moves past it); west's adds then
    # arrive and the element is live in south while east and west have removed it -- the
    # regions never converge.
    big = 256 << 20
    east, west, south = (regional(r, map_size=big) for r in ("us-east", "eu-west", "ap-south"))
    le, lw, ls = Log(), Log(), Log()
    elem = b"x" * 900_000
    for i in range(5):
        assert one(west, lw, encode_commit(i + 1, 0, 110 + 10 * i, [], merges=[
            (b"s", "add_wins_set", encode_set_add(elem))])).committed
    assert ship(west, east, le, 102, after=0).committed
    tags = AddWinsSet.observed_tags(decode_cell(east.store.get(b"s", MAX_TS)), elem)
    assert len(tags) == 5
    assert one(east, le, encode_commit(9, 0, 10**6 + 100, [], merges=[
        (b"s", "add_wins_set", encode_set_remove(elem, tags))])).committed
    # East's remove reaches south first, then west's adds; and the remove reaches west.
    ship(east, south, ls, 101, after=0)
    ship(west, south, ls, 102, after=0)
    assert ship(east, west, lw, 101, after=0).committed

    def members(sm):
        return msgpack.unpackb(AddWinsSet().value_of(decode_cell(sm.store.get(b"s", MAX_TS))))

    assert members(east) == members(west) == []
    assert members(south) == [], "south never removes the element the others removed"


def test_a_local_write_made_after_reading_a_remote_one_is_not_discarded_by_it(regional):
    # West's leader proposes the REMOTE entry with its own clock, which may be behind the
    # shipped writes' timestamps (the node accepts an up_to up to max_clock_offset ahead of
    # its clock; the origin's commit timestamps are max(proposed, closed + 1), which after a
    # leader change there run ahead of the new leader's clock, and Raft messages carry no
    # HLC). The remote value then becomes visible at a snapshot *below* its own timestamp,
    # and a local transaction that read it and overwrote it commits at a timestamp below the
    # value it overwrote: last-writer-wins keeps the value it read and silently discards
    # the acknowledged, causally later write (and logs it as a "concurrent" conflict).
    east, west = regional("us-east"), regional("eu-west")
    le, lw = Log(), Log()
    assert one(east, le, encode_commit(1, 0, 500, [], merges=[(b"k", "lww", b"east")])).committed
    r = ship(east, west, lw, 101, after=0, proposed_ts=300)
    assert r.committed
    read_ts = west.closed_ts  # a snapshot in which west's reader sees east's value
    cell = decode_cell(west.store.get(b"k", read_ts))
    assert cell.state[0] == b"east"
    r = one(west, lw, encode_commit(2, read_ts, read_ts + 50, [], merges=[
        (b"k", "lww", b"west, after reading east")]))
    assert r.committed
    assert decode_cell(west.store.get(b"k", MAX_TS)).state[0] == b"west, after reading east"
    assert west.conflicts(b"", b"\xff") == []
