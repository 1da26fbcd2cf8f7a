"""A torn tail whose landed bytes hold chance record candidates is still a torn tail.

Recovery looks past a bad record for a *witness*, a valid record for a later position
(native/FORMAT.md, Recovery). Any byte 1 in the landed part of a torn record, with 4 bytes before
it that read as a length reaching into the zero fill, is such a candidate; checking it for every
position it could hold must not cost its length once per position, or a crash in the middle of a
large append leaves a log that refuses to open."""

from __future__ import annotations

import random

import pytest
from logtools import segments, zero_range

from engine import CorruptLogError, LogStore
from engine import _logformat as ref

SMALL = [b"a" * 100, b"b" * 100, b"c" * 100]
TAIL = ref.SEGMENT_HEADER_SIZE + sum(ref.RECORD_HEADER_SIZE + len(r) for r in SMALL)


def _tear(d, segment_size: int, payload: bytes, landed: int) -> None:
    """Three synced records, then ``payload`` appended, of which only the first ``landed``
    bytes of the file from its record on reached the disk (the rest reads as zero)."""
    with LogStore(d, segment_size=segment_size) as log:
        log.append(SMALL)
        log.sync()
        log.append([payload])
    seg = d / segments(d)[0]
    zero_range(seg, TAIL + landed, TAIL + ref.RECORD_HEADER_SIZE + len(payload))


def test_a_chance_candidate_with_a_long_length_in_a_torn_record(tmp_path):
    d = tmp_path / "log"
    payload = bytearray(b"\x07" * 65536)
    # At payload offset 4000: bytes that read as a record header of length 1 MiB.
    payload[4000:4009] = b"\x11\x22\x33\x44" + (1 << 20).to_bytes(4, "little") + b"\x01"
    _tear(d, 4 << 20, bytes(payload), landed=8192)
    with LogStore(d, segment_size=4 << 20) as log:
        assert list(log.scan()) == list(enumerate(SMALL, start=1))


def test_a_large_append_of_random_bytes_torn_halfway(tmp_path):
    d = tmp_path / "log"
    payload = random.Random(20261201).randbytes(1 << 20)
    _tear(d, 8 << 20, payload, landed=1 << 19)
    with LogStore(d, segment_size=8 << 20) as log:
        assert list(log.scan()) == list(enumerate(SMALL, start=1))
        assert log.append([b"d"]) == range(4, 5)


def test_a_torn_record_of_megabytes_of_random_bytes_is_a_torn_tail(tmp_path):
    # About one landed byte in 16 KiB starts a candidate whose length fits the segment; each
    # reaches on average halfway through the landed bytes, and may be for any of the positions
    # up to one per 9 bytes before it: checksummed or tried one by one, 4 MiB of landed bytes
    # used up the budget and the log refused to open.
    d = tmp_path / "log"
    payload = random.Random(20261202).randbytes(8 << 20)
    _tear(d, 32 << 20, payload, landed=4 << 20)
    with LogStore(d, segment_size=32 << 20) as log:
        assert list(log.scan()) == list(enumerate(SMALL, start=1))
        assert log.append([b"d"]) == range(4, 5)


def test_a_witness_far_past_the_damage_is_found_across_a_2_to_the_32_boundary(tmp_path):
    # Positions 2**32 - 4 .. 2**32 + 35; records 2..31 overwritten with 0xff (no zero sector, so
    # not torn): the first valid record after the damage, 30 positions on and past 2**32, is
    # the witness that makes it corruption.
    d = tmp_path / "log"
    first = 2**32 - 4
    records = [bytes([0x40 + i % 26]) * 20 for i in range(40)]
    with LogStore(d, segment_size=1 << 16, initial_position=first) as log:
        log.append(records)
        log.sync()
    offsets = [ref.SEGMENT_HEADER_SIZE + i * (ref.RECORD_HEADER_SIZE + 20) for i in range(40)]
    seg = d / segments(d)[0]
    with open(seg, "r+b") as f:
        f.seek(offsets[2])
        f.write(b"\xff" * (offsets[32] - offsets[2]))
    with pytest.raises(CorruptLogError, match=f"after it at offset {offsets[32]}"):
        LogStore(d, segment_size=1 << 16)
