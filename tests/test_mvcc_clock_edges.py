"""Edge cases of the MVCC store's argument checks and snapshot validation: bad input must be
refused with a clear InvalidArgumentError or CorruptStateError, never a bare TypeError from
inside the store or a store left with state no read can use."""

from __future__ import annotations

import enum

import msgpack
import pytest

from engine import errors
from engine._native import crc32c
from engine.hlc import HybridClock
from engine.mvcc import MAX_TS, MVCCStore

SMALL_MAP = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    yield s
    s.close()


class Stamp(enum.IntEnum):
    """An int subclass, as an enum of well-known timestamps or indexes would be."""

    FIVE = 5


# ------------------------------------------------------------------ writes that are not iterable


@pytest.mark.parametrize("writes", [None, 5])
def test_apply_with_non_iterable_writes_is_invalid_argument(store, writes):
    # Before: a bare TypeError ("'NoneType' object is not iterable") escaped from the loop
    # over the writes, instead of the store's InvalidArgumentError.
    with pytest.raises(errors.InvalidArgumentError, match="writes must be an iterable"):
        store.apply(writes, 10, 1)
    assert store.applied_index == 0


@pytest.mark.parametrize("batches", [None, 7])
def test_apply_batch_with_non_iterable_batches_is_invalid_argument(store, batches):
    # Before: a bare TypeError escaped from the loop over the batches.
    with pytest.raises(errors.InvalidArgumentError, match="batches must be an iterable"):
        store.apply_batch(batches, 1)
    assert store.applied_index == 0


def test_apply_batch_with_non_iterable_writes_in_a_batch_is_invalid_argument(store):
    # Before: a bare TypeError ("'int' object is not iterable") for the writes of a batch.
    with pytest.raises(errors.InvalidArgumentError, match="writes must be an iterable"):
        store.apply_batch([([(b"k", b"v")], 10), (3, 11)], 1)
    assert store.applied_index == 0
    assert store.get(b"k", MAX_TS) is None  # nothing of the good batch was written either


# ------------------------------------------------------------------ int subclasses


@pytest.mark.parametrize("call", [
    lambda s: s.get(b"k", Stamp.FIVE),
    lambda s: s.get_version(b"k", Stamp.FIVE),
    lambda s: s.scan(b"", None, Stamp.FIVE),
    lambda s: s.gc(Stamp.FIVE),
    lambda s: s.apply([(b"k", b"v")], Stamp.FIVE, 1),
])
def test_timestamp_of_int_subclass_is_refused_for_its_type(store, call):
    # Before: a timestamp 5 of an int subclass was refused as "ts 5 is outside
    # 1..18446744073709551614", which names a range it is inside of.
    with pytest.raises(errors.InvalidArgumentError) as info:
        call(store)
    assert "outside" not in str(info.value)
    assert "Stamp" in str(info.value)


def test_applied_index_of_int_subclass_is_refused_for_its_type(store):
    # Before: "applied_index 5 is outside 1..18446744073709551615".
    with pytest.raises(errors.InvalidArgumentError) as info:
        store.apply([(b"k", b"v")], 10, Stamp.FIVE)
    assert "outside" not in str(info.value)
    assert "Stamp" in str(info.value)


# ------------------------------------------------------------------ snapshot GC watermark


def _with_header(chunks: list[bytes], **changes) -> list[bytes]:
    """The stream with its header changed and its trailer recomputed to match."""
    header = msgpack.unpackb(chunks[0], raw=False)
    header.update(changes)
    body = [msgpack.packb(header, use_bin_type=True)] + chunks[1:-1]
    trailer = msgpack.unpackb(chunks[-1], raw=False)
    crc = 0
    for raw in body:
        crc = crc32c(raw, crc)
    trailer["crc32c"] = crc
    return body + [msgpack.packb(trailer, use_bin_type=True)]


def test_restore_refuses_gc_watermark_beyond_largest_timestamp(tmp_path):
    # Before: a header whose gc_watermark is above MAX_TS (the u64 field allows up to 2**64 - 1)
    # was restored as is; the store then reported a watermark above every timestamp, so every
    # read at a valid timestamp counted as below it (collected), for good.
    with MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as source:
        source.apply([(b"k", b"v")], 10, 1)
        chunks = list(source.snapshot_chunks(4096))
    with MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as target:
        target.apply([(b"old", b"x")], 5, 1)
        with pytest.raises(errors.CorruptStateError, match="gc_watermark"):
            target.restore(_with_header(chunks, gc_watermark=MAX_TS + 1))
        assert target.gc_watermark == 0
        assert target.get(b"old", 5) == b"x"  # unchanged
        # The same stream with a watermark in range restores.
        assert target.restore(_with_header(chunks, gc_watermark=MAX_TS)) == 1
        assert target.gc_watermark == MAX_TS


# ------------------------------------------------------------------ hybrid clock


@pytest.mark.parametrize("reading", [5000.0, True, "5000", None])
def test_a_monotonic_clock_of_the_wrong_type_is_reported_clearly(reading):
    # Before: the monotonic clock's readings were used unchecked. With a float one
    # (time.monotonic for time.monotonic_ns), a physical jump made timestamps floats of about
    # 1e18, where last + 1 == last: two calls of now() returned the same float timestamp.
    physical = [10**18]
    clock = HybridClock(lambda: physical[0], max_offset_ns=1000, monotonic=lambda: reading)
    with pytest.raises(errors.InvalidArgumentError, match="monotonic clock must return an int"):
        clock.now()
    with pytest.raises(errors.InvalidArgumentError, match="monotonic clock must return an int"):
        clock.trust_physical()


def test_timestamps_stay_ints_and_increasing_after_a_jump_with_a_monotonic_clock():
    # The behaviour the check above protects: after a jump the clock follows the trusted
    # reading carried forward by the monotonic clock, as exact ints.
    physical, monotonic = [10**18], [0]
    clock = HybridClock(lambda: physical[0], max_offset_ns=1000,
                        monotonic=lambda: monotonic[0])
    assert clock.now() == 10**18
    physical[0], monotonic[0] = 10**18 + 10**12, 5000
    first, second = clock.now(), clock.now()
    assert type(first) is int and type(second) is int
    assert first == 10**18 + 5000 < second
