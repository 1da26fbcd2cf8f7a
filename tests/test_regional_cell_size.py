"""Regional keyspaces (ARCH §6): a merge type's cell that would outgrow the value limit must
come out the same in every region, whatever order the regions' writes arrive in."""

from __future__ import annotations

import pytest

from engine.group import GroupStateMachine, Outcome, encode_commit, encode_remote
from engine.merge import AddWinsSet, decode_cell, encode_set_add, encode_set_remove
from engine.mvcc import MAX_TS, MAX_VALUE_SIZE, MVCCStore
from raft.types import Entry

REGIONS = {1: "us-east", 2: "eu-west", 3: "ap-south"}  # group id -> region
KEY = (7).to_bytes(4, "big") + b"set"


class Region:
    """One region's data group, driven entry by entry; ``ship`` delivers another region's
    outbox the way its shipper does (one REMOTE batch after that origin's watermark here)."""

    def __init__(self, path, group: int) -> None:
        self.group = group
        self.store = MVCCStore(path, map_size=128 << 20)
        self.sm = GroupStateMachine(self.store, max_txn_lifetime_ns=10**9,
                                    origin=REGIONS[group],
                                    destinations=[g for g in REGIONS if g != group])
        self.index = 0
        self.txn = 0

    def apply(self, data: bytes):
        self.index += 1
        [result] = self.sm.apply([Entry(term=1, index=self.index, data=data)])
        return result

    def commit(self, payload: bytes):
        self.txn += 1
        return self.apply(encode_commit(self.txn, 0, self.sm.closed_ts + 1, [],
                                        merges=[(KEY, "add_wins_set", payload)]))

    def ship(self, origin: Region):
        after = self.sm.watermark(origin.group)
        records = origin.sm.outbox_after(after)
        if not records:
            return None
        return self.apply(encode_remote(origin.group, self.sm.closed_ts + 1, after,
                                        records[-1][0], [w for _, ws in records for w in ws]))

    def cell(self):
        raw = self.store.get(KEY, MAX_TS)
        return None if raw is None else decode_cell(raw)

    def close(self) -> None:
        self.sm.close()
        self.store.close()


@pytest.fixture
def regions(tmp_path):
    made = {g: Region(tmp_path / str(g), g) for g in REGIONS}
    yield made
    for r in made.values():
        r.close()


def _elements(region: Region) -> list[bytes]:
    cell = region.cell()
    return [] if cell is None else [e[:1] for e, _ in cell.state[0]]


def test_concurrent_adds_too_large_together_come_out_alike_in_every_region(regions):
    # Each region adds two elements concurrently; all six would not fit in one value. Before,
    # each destination kept whichever arrived first and dropped the rest for good.
    size = MAX_VALUE_SIZE // 5
    seconds = []
    for g, region in regions.items():
        assert region.commit(encode_set_add(bytes([g]) + b"a" * size)).committed
        seconds.append(region.commit(encode_set_add(bytes([g]) + b"b" * size)))
    for g, region in regions.items():  # every region hears the others in its own order
        for other in sorted(regions, key=lambda o: (o - g) % len(regions)):
            if other != g:
                assert region.ship(regions[other]).committed
    cells = {g: region.cell() for g, region in regions.items()}
    assert cells[1] == cells[2] == cells[3]
    assert _elements(regions[1]) == [bytes([g]) for g in sorted(REGIONS)]
    # Two fifths of the limit is more than a region's third of it: the second adds were
    # refused where their writers learn of it, rather than lost somewhere else later.
    assert all(r.outcome is Outcome.TOO_LARGE and "share" in r.reason for r in seconds)
    # The cell, over each region's share now, takes no new element, but still a remove.
    east = regions[1]
    assert east.commit(encode_set_add(b"\x01c")).outcome is Outcome.TOO_LARGE
    elem = bytes([1]) + b"a" * size
    tags = AddWinsSet.observed_tags(east.cell(), elem)
    assert east.commit(encode_set_remove(elem, tags)).committed
    assert _elements(east) == [b"\x02", b"\x03"]


def test_a_batch_too_large_for_a_destination_waits_and_nothing_is_lost(regions):
    # us-east adds an element, ap-south removes it, us-east (having seen the remove) adds
    # the next one, four times: us-east's cell never holds more than one element, but
    # eu-west, hearing us-east first, would hold all four before ap-south's removes arrive.
    east, west, south = regions[1], regions[2], regions[3]
    size = MAX_VALUE_SIZE * 3 // 10
    elems = [bytes([i]) * size for i in range(4)]
    for i, elem in enumerate(elems):
        assert east.commit(encode_set_add(elem)).committed
        if i < 3:
            assert south.ship(east).committed
            tags = AddWinsSet.observed_tags(south.cell(), elem)
            assert south.commit(encode_set_remove(elem, tags)).committed
            assert east.ship(south).committed
    first = west.ship(east)
    watermark = west.sm.watermark(1)
    west.ship(south)  # the removes shrink the cell...
    west.ship(east)  # ...and the batch that waited applies whole
    south.ship(east)
    assert east.ship(south) is None and west.ship(east) is None
    # Before, the fourth add was left out at eu-west (logged as refused) and the watermark
    # moved past it: eu-west ended with no element, the others with the fourth.
    assert east.cell() == west.cell() == south.cell()
    assert [e for e, _ in west.cell().state[0]] == [elems[3]]
    assert west.sm.conflicts(b"", b"\xff" * 8) == []  # nothing refused
    assert first.outcome is Outcome.INVALID and watermark == 0
