"""LogStore: API, errors, and one named test per recovery case (ARCH §2.1)."""

from __future__ import annotations

import errno
import os
import select
import struct
import subprocess
import sys
import textwrap

import pytest

from engine import (
    CorruptLogError,
    DiskFullError,
    InvalidArgumentError,
    LogStore,
    MeridianError,
    PositionError,
    RecordTooLargeError,
    StorageError,
    StoreClosedError,
    StoreFailedError,
    StoreLockedError,
)
from engine import _logformat as ref
from engine._native import Syncer, crc32c_masked
from engine.logstore import MAX_RECORD_SIZE
from logtools import (
    HEADER,
    REC,
    flip_byte,
    read_dir,
    record_offsets,
    segments,
    truncate,
    write_at,
    zero_range,
)

SEG = 4096


def payload(pos: int, size: int = 20) -> bytes:
    return (f"{pos:08d}|".encode() * (size // 9 + 1))[:size]


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def fill(logdir, sizes, segment_size=SEG, sync=True):
    with LogStore(logdir, segment_size=segment_size) as log:
        for i, n in enumerate(sizes):
            log.append([payload(i + 1, n)])
        if sync:
            log.sync()


# ---------------------------------------------------------------- the API


def test_append_returns_dense_positions_and_read_returns_records(logdir):
    with LogStore(logdir) as log:
        assert log.first_position == 1 and log.next_position == 1 and log.last_position == 0
        assert log.append([b"a", b"", b"ccc"]) == range(1, 4)
        assert log.append([b"d"]) == range(4, 5)
        assert [log.read(p) for p in range(1, 5)] == [b"a", b"", b"ccc", b"d"]
        assert list(log.scan()) == [(1, b"a"), (2, b""), (3, b"ccc"), (4, b"d")]
        assert list(log.scan(2, 4)) == [(2, b""), (3, b"ccc")]
        assert log.append([]) == range(5, 5)


def test_initial_position_numbers_a_new_log(logdir):
    with LogStore(logdir, initial_position=1000) as log:
        assert log.append([b"x"]) == range(1000, 1001)
    with LogStore(logdir, initial_position=7) as log:  # ignored for an existing log
        assert log.first_position == 1000 and log.read(1000) == b"x"


def test_accepts_bytearray_and_memoryview(logdir):
    with LogStore(logdir) as log:
        log.append([bytearray(b"ab"), memoryview(b"cd"), memoryview(bytes(range(8))).cast("Q")])
        assert log.read(1) == b"ab" and log.read(2) == b"cd" and log.read(3) == bytes(range(8))


def test_sync_moves_synced_position(logdir):
    with LogStore(logdir) as log:
        log.append([b"a", b"b"])
        assert log.synced_position == 0
        log.sync()
        assert log.synced_position == 2
        log.append([b"c"])
        assert log.stats().synced_position == 2


def test_append_nowait_never_rolls_and_changes_nothing_when_it_would(logdir):
    with LogStore(logdir, segment_size=SEG) as log:
        assert log.append_nowait([b"a" * 1000, b"b" * 1000]) == range(1, 3)
        assert log.append_nowait([b"c" * 1000]) == range(3, 4)
        before = log.stats()
        assert log.append_nowait([b"d" * 2000]) is None  # does not fit the first segment
        assert log.stats() == before and len(segments(logdir)) == 1
        assert log.synced_position == 0  # and nothing was synced on the way
        assert log.append([b"d" * 2000]) == range(4, 5)  # the blocking append rolls
        assert len(segments(logdir)) == 2 and log.synced_position == 3
        assert [r[:1] for _, r in log.scan()] == [b"a", b"b", b"c", b"d"]


def test_sync_in_two_halves(logdir):
    syncer = Syncer()
    try:
        with LogStore(logdir) as log:
            assert log.sync_begin() is None  # nothing unsynced
            log.append([b"a", b"b"])
            fd, upto = log.sync_begin()
            assert upto == 2 and log.synced_position == 0
            with pytest.raises(OSError) as info:
                syncer.collect()  # nothing submitted yet
            assert info.value.errno == errno.EINVAL
            syncer.submit(fd)
            with pytest.raises(OSError) as info:
                syncer.submit(fd)  # one at a time
            assert info.value.errno == errno.EBUSY
            while (result := syncer.collect()) is None:
                select.select([syncer.done_fd], [], [], 10)
            assert result == 0
            log.sync_end(upto, result)
            assert log.synced_position == 2 and log.sync_begin() is None
            with pytest.raises(InvalidArgumentError):
                log.sync_end(3, 0)  # beyond the log
            syncer.submit(1 << 20)  # a descriptor that is not open
            while (result := syncer.collect()) is None:
                select.select([syncer.done_fd], [], [], 10)
            assert result == errno.EBADF
            log.append([b"c"])
            _, upto = log.sync_begin()
            with pytest.raises(OSError) as info:
                log.sync_end(upto, errno.EIO)  # a failed fdatasync fails the store
            assert info.value.errno == errno.EIO
            with pytest.raises(MeridianError):
                log.append([b"d"])
        with LogStore(logdir) as log:  # a reopen reads what is really there
            assert [r for _, r in log.scan()][:2] == [b"a", b"b"]
    finally:
        syncer.close()
        syncer.close()  # idempotent


def test_a_sync_failing_with_enospc_fails_the_store_and_is_no_disk_full_error(logdir):
    # DiskFullError promises a store that stays usable once space is freed; a failed
    # fdatasync fails the store whatever its errno (the kernel may have dropped the pages).
    with LogStore(logdir) as log:
        log.append([b"a"])
        _, upto = log.sync_begin()
        with pytest.raises(StorageError) as info:
            log.sync_end(upto, errno.ENOSPC)
        assert info.value.errno == errno.ENOSPC
        assert not isinstance(info.value, DiskFullError)
        with pytest.raises(StoreFailedError):
            log.append([b"b"])


def test_records_survive_reopen_and_segments_roll(logdir):
    sizes = [100 + (i * 37) % 900 for i in range(60)]
    fill(logdir, sizes)
    assert len(segments(logdir)) > 5
    with LogStore(logdir, segment_size=SEG) as log:
        assert [r for _, r in log.scan()] == [payload(i + 1, n) for i, n in enumerate(sizes)]
        assert log.synced_position == 60


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(logdir):
    with LogStore(logdir, segment_size=SEG) as log:
        log.append([b"small"])
        big = [payload(i, 1000) for i in range(2, 12)]  # ~10 KB > 4 KiB segment
        log.append(big)
        log.append([b"after"])
        log.sync()
    with LogStore(logdir, segment_size=SEG) as log:
        assert [r for _, r in log.scan()] == [b"small", *big, b"after"]
    names = segments(logdir)
    assert len(names) == 2 and os.path.getsize(logdir / names[1]) > SEG


def test_scan_reads_across_segments_and_records_larger_than_a_chunk(logdir):
    big = b"B" * (3 << 20)
    with LogStore(logdir, segment_size=1 << 20) as log:
        log.append([b"a"])
        log.append([big])
        log.append([b"c"] * 5)
        assert [len(r) for _, r in log.scan()] == [1, len(big), 1, 1, 1, 1, 1]
        assert log.read(2) == big


def test_truncate_after_removes_records_durably(logdir):
    with LogStore(logdir, segment_size=SEG) as log:
        for i in range(1, 101):
            log.append([payload(i, 90)])
        log.sync()
        log.truncate_after(40)
        assert log.next_position == 41 and log.synced_position == 40
        with pytest.raises(PositionError):
            log.read(41)
        # Same-length records at the same positions: the old ones must never come back.
        log.append([payload(1000 + i, 90) for i in range(41, 61)])
    with LogStore(logdir, segment_size=SEG) as log:
        got = [r for _, r in log.scan()]
    assert got == [payload(i, 90) for i in range(1, 41)] + [
        payload(1000 + i, 90) for i in range(41, 61)
    ]


def test_truncate_everything_and_the_noop_edge(logdir):
    with LogStore(logdir, segment_size=SEG) as log:
        log.append([payload(i, 500) for i in range(1, 30)])
        log.truncate_after(29)  # nothing after the last: no-op
        assert log.next_position == 30
        log.truncate_after(0)
        assert log.next_position == 1 and list(log.scan()) == []
        assert len(segments(logdir)) == 1
        log.append([b"again"])
    with LogStore(logdir) as log:
        assert list(log.scan()) == [(1, b"again")]


def test_drop_before_removes_whole_segments_only(logdir):
    with LogStore(logdir, segment_size=SEG) as log:
        for i in range(1, 101):
            log.append([payload(i, 200)])
        n_before = len(segments(logdir))
        log.drop_before(50)
        first = log.first_position
        assert 1 < first <= 50
        assert len(segments(logdir)) < n_before
        assert log.read(50) == payload(50, 200)
        with pytest.raises(PositionError):
            log.read(first - 1)
        log.drop_before(log.next_position)  # keeps the last segment
        assert len(segments(logdir)) == 1
        assert log.last_position == 100
    with LogStore(logdir, segment_size=SEG) as log:
        assert log.last_position == 100 and log.read(100) == payload(100, 200)


# ---------------------------------------------------------------- errors, not crashes


def test_closed_store_raises(logdir):
    log = LogStore(logdir)
    log.close()
    log.close()  # idempotent
    for call in (
        lambda: log.append([b"x"]),
        log.sync,
        lambda: log.read(1),
        lambda: list(log.scan()),
        lambda: log.truncate_after(0),
        lambda: log.drop_before(1),
        log.stats,
    ):
        with pytest.raises(StoreClosedError, match="closed"):
            call()
    assert "closed" in repr(log)


def test_oversized_record_is_refused_and_nothing_is_appended(logdir):
    with LogStore(logdir) as log:
        log.append([b"ok"])
        with pytest.raises(RecordTooLargeError, match="limit"):
            log.append([b"a", bytes(MAX_RECORD_SIZE + 1)])
        assert log.next_position == 2
        log.append([b"next"])
        assert log.read(2) == b"next"


def test_bad_positions(logdir):
    with LogStore(logdir) as log:
        with pytest.raises(PositionError, match="empty"):
            log.read(1)
        log.append([b"a", b"b"])
        for bad in (0, 3, 2**64 - 1):
            with pytest.raises(PositionError):
                log.read(bad)
        with pytest.raises(PositionError):
            log.read(-1)
        with pytest.raises(TypeError):
            log.read("1")
        with pytest.raises(PositionError):
            log.truncate_after(5)
        with pytest.raises(PositionError):
            log.drop_before(4)
        with pytest.raises(PositionError):
            list(log.scan(5))
        with pytest.raises(PositionError):
            list(log.scan(1, 9))
        assert isinstance(PositionError("x"), IndexError)


def test_bad_arguments(logdir):
    with pytest.raises(InvalidArgumentError, match="segment_size"):
        LogStore(logdir, segment_size=100)
    with pytest.raises(InvalidArgumentError):
        LogStore(logdir, initial_position=0)
    with LogStore(logdir) as log:
        with pytest.raises(TypeError):
            log.append(["not bytes"])
        with pytest.raises(TypeError):
            log.append([1])
        assert log.next_position == 1


def test_missing_directory_without_create(tmp_path):
    with pytest.raises(OSError) as info:
        LogStore(tmp_path / "nope", create=False)
    assert isinstance(info.value, MeridianError) and info.value.errno == errno.ENOENT


def test_a_directory_that_cannot_be_created_is_a_storage_error(tmp_path):
    """The directory is made by the store itself: a file in the way is a StorageError naming
    the log, not a bare FileExistsError about a parent."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create log directory .*file/log") as info:
        LogStore(tmp_path / "file" / "log")
    assert info.value.errno == errno.ENOTDIR


# ---------------------------------------------------------------- recovery, one test per case


def test_empty_directory_opens_as_an_empty_log(logdir):
    logdir.mkdir()
    with LogStore(logdir) as log:
        assert log.next_position == 1 and list(log.scan()) == []
    assert segments(logdir) == [ref.segment_name(1)]


def test_directory_locked(logdir):
    with LogStore(logdir):
        with pytest.raises(StoreLockedError, match="locked"):
            LogStore(logdir)
        code = textwrap.dedent(
            f"""
            from engine import LogStore, StoreLockedError
            try:
                LogStore({str(logdir)!r})
            except StoreLockedError as e:
                print("locked:", e)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.startswith("locked:"), out.stderr
    with LogStore(logdir):  # released on close
        pass


def _last_segment(logdir):
    return logdir / segments(logdir)[-1]


def test_torn_header_at_the_tail_is_end_of_log(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    seg = _last_segment(logdir)
    # A sixth record whose header only half reached the disk.
    write_at(seg, offs[-1] + REC + 30, ref.frame(6, b"sixth")[:4])
    with LogStore(logdir) as log:
        assert log.next_position == 6
        assert log.append([b"new sixth"]) == range(6, 7)
    with LogStore(logdir) as log:
        assert log.read(6) == b"new sixth"


def test_torn_payload_at_the_tail_is_end_of_log(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    seg = _last_segment(logdir)
    zero_range(seg, offs[4] + REC + 10, offs[4] + REC + 30)  # last record's payload half lost
    with LogStore(logdir) as log:
        assert log.last_position == 4
    assert read_dir(logdir)[seg.name][offs[4] : offs[4] + REC + 30] == bytes(REC + 30)


def test_short_file_tail_is_end_of_log(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    truncate(_last_segment(logdir), offs[4] + 5)  # the file ends inside the last header
    with LogStore(logdir) as log:
        assert log.last_position == 4


def test_zero_filled_tail_is_end_of_log(logdir):
    fill(logdir, [30] * 5)
    seg = _last_segment(logdir)
    assert os.path.getsize(seg) == SEG  # preallocated: the tail is zero fill
    with LogStore(logdir) as log:
        assert log.last_position == 5


def test_checksum_mismatch_before_the_tail_names_file_and_offset(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    seg = _last_segment(logdir)
    flip_byte(seg, offs[2] + REC + 3)  # a payload byte of record 3
    with pytest.raises(CorruptLogError) as info:
        LogStore(logdir)
    assert info.value.path == str(seg) and info.value.offset == offs[2]
    assert str(seg) in str(info.value) and str(offs[2]) in str(info.value)
    assert isinstance(info.value, OSError)


def test_damage_to_two_adjacent_records_before_valid_ones_is_corruption(logdir):
    """One damaged spot that spans two records (3 and 4) before valid, synced ones: no valid
    record for position 4 follows, but one for 5 does, so this is corruption, not a torn tail
    (the log used to end at 2, dropping the synced 3..10 without a word)."""
    sizes = [30] * 10
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    seg = _last_segment(logdir)
    flip_byte(seg, offs[2] + REC + 5)
    flip_byte(seg, offs[3] + REC + 5)
    with pytest.raises(CorruptLogError) as info:
        LogStore(logdir)
    assert info.value.offset == offs[2]
    with pytest.raises(CorruptLogError):
        ref.recover(read_dir(logdir), str(logdir))


def test_a_lost_sector_over_several_record_starts_of_an_unsynced_write_is_a_torn_tail(logdir):
    """The other side of the rule above: the unsynced batch's second sector (the starts of
    several records) never reached the disk, later ones did; still a torn tail."""
    with LogStore(logdir, segment_size=1 << 16) as log:
        log.append([payload(1, 30)])
        log.sync()
        log.append([payload(p, 30) for p in range(2, 60)])
    zero_range(_last_segment(logdir), 512, 1024)
    with LogStore(logdir, segment_size=1 << 16) as log:
        assert 1 <= log.last_position < 60
        assert record_offsets([30] * 60)[log.last_position] <= 512


def test_corrupted_length_field_before_the_tail_is_corruption(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    seg = _last_segment(logdir)
    write_at(seg, offs[1] + 4, (31).to_bytes(4, "little"))
    with pytest.raises(CorruptLogError) as info:
        LogStore(logdir)
    assert info.value.offset == offs[1]


def test_corrupted_length_field_of_the_last_record_is_a_torn_tail(logdir):
    sizes = [30] * 5
    fill(logdir, sizes)
    offs = record_offsets(sizes)
    write_at(_last_segment(logdir), offs[4] + 4, (2**31).to_bytes(4, "little"))
    with LogStore(logdir) as log:
        assert log.last_position == 4


def test_corruption_in_an_earlier_segment_is_reported(logdir):
    fill(logdir, [500] * 40)
    first = logdir / segments(logdir)[0]
    flip_byte(first, HEADER + REC + 7)
    with pytest.raises(CorruptLogError) as info:
        LogStore(logdir)
    assert info.value.path == str(first) and info.value.offset == HEADER


def test_garbage_after_the_records_of_an_earlier_segment_is_corruption(logdir):
    fill(logdir, [500] * 40)
    first = logdir / segments(logdir)[0]
    write_at(first, SEG - 3, b"\x07")
    with pytest.raises(CorruptLogError) as info:
        LogStore(logdir)
    assert info.value.path == str(first)


def test_segment_missing_in_the_middle(logdir):
    fill(logdir, [500] * 40)
    names = segments(logdir)
    assert len(names) >= 3
    os.unlink(logdir / names[1])
    with pytest.raises(CorruptLogError, match="missing") as info:
        LogStore(logdir)
    assert info.value.path == str(logdir / names[2])


def test_bad_segment_header(logdir):
    fill(logdir, [30] * 3)
    flip_byte(logdir / segments(logdir)[0], 9)
    with pytest.raises(CorruptLogError, match="header") as info:
        LogStore(logdir)
    assert info.value.offset == 0


def _segment_header_of(first_pos: int, *, version: int = 1, named: int | None = None) -> bytes:
    """A segment header with a valid checksum, of any version and naming any position."""
    head = bytearray(ref.segment_header(first_pos if named is None else named))
    struct.pack_into("<I", head, 8, version)
    struct.pack_into("<I", head, 28, crc32c_masked(bytes(head[:28])))
    return bytes(head)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("newer version", "format version 2; this code reads version 1"),
        ("newer version, another layout", "format version 2; this code reads version 1"),
        ("zeroed header", "no MERIDLOG magic"),
        ("another file", "no MERIDLOG magic"),
        ("checksum", "checksum mismatch"),
        ("another position", "starting at position 2, not 1"),
        ("half a header", "16 bytes, shorter than its header"),
        ("empty", "0 bytes, shorter than its header"),
    ],
)
def test_a_segment_header_that_is_not_this_segments_says_what_is_wrong(logdir, damage, message):
    """Refused with the file and the reason: a newer format version is named as such (its
    header may be laid out otherwise, so the version is judged before the checksum), and the
    store is never re-initialised over it."""
    fill(logdir, [30] * 3)
    f = logdir / segments(logdir)[0]
    before = f.read_bytes()
    if damage == "newer version":
        write_at(f, 0, _segment_header_of(1, version=2))
    elif damage == "newer version, another layout":
        write_at(f, 8, struct.pack("<I", 2))
    elif damage == "zeroed header":
        write_at(f, 0, bytes(HEADER))
    elif damage == "another file":
        write_at(f, 0, b"SQLite format 3\0")
    elif damage == "checksum":
        flip_byte(f, 29)
    elif damage == "another position":
        write_at(f, 0, _segment_header_of(1, named=2))
    elif damage == "half a header":
        truncate(f, HEADER // 2)
    elif damage == "empty":
        truncate(f, 0)
    damaged = f.read_bytes()
    with pytest.raises(CorruptLogError, match=message) as info:
        LogStore(logdir, segment_size=SEG)
    assert info.value.path == str(f) and info.value.offset == 0
    assert f.read_bytes() == damaged and segments(logdir) == [f.name]
    assert damaged != before


def test_pages_of_an_unsynced_write_out_of_order_are_a_torn_tail(logdir):
    """The last batch's middle sector never reached the disk but a later one did: the write
    was never synced, so the log ends before it (etcd's torn-entry rule, FORMAT.md)."""
    with LogStore(logdir, segment_size=1 << 16) as log:
        log.append([payload(1, 100)])
        log.sync()
        log.append([payload(p, 100) for p in range(2, 40)])  # ~4 KiB, unsynced
        log.close(sync=True)
    offs = record_offsets([100] * 39)
    seg = _last_segment(logdir)
    zero_range(seg, 1024, 1536)  # one whole sector inside the second batch
    with LogStore(logdir, segment_size=1 << 16) as log:
        last = log.last_position
        assert last < 39
        assert [r for _, r in log.scan()] == [payload(p, 100) for p in range(1, last + 1)]
        assert offs[last] <= 1024  # the log ends at the first damaged record
    after = read_dir(logdir)[seg.name]
    assert after[offs[last] :].strip(b"\0") == b""  # the tail was erased


def test_leftover_temporary_segment_is_removed(logdir):
    fill(logdir, [30] * 3)
    (logdir / (ref.segment_name(4) + ".tmp")).write_bytes(b"half-made")
    with LogStore(logdir) as log:
        assert log.last_position == 3
    assert not any(n.endswith(".tmp") for n in os.listdir(logdir))


def test_a_record_damaged_after_open_is_reported_on_read(logdir):
    with LogStore(logdir) as log:
        log.append([b"hello world"])
        log.sync()
        flip_byte(_last_segment(logdir), HEADER + REC + 2)
        with pytest.raises(CorruptLogError, match="checksum"):
            log.read(1)
        with pytest.raises(CorruptLogError):
            list(log.scan())


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("2m")


def test_disk_full_raises_and_loses_nothing_synced(tiny_fs):
    d = tiny_fs / "log"
    log = LogStore(d, segment_size=256 << 10)
    written = 0
    with pytest.raises(DiskFullError) as info:
        for i in range(1, 100):
            log.append([payload(i, 50_000)])
            log.sync()
            written = i
    assert info.value.errno == errno.ENOSPC
    assert written > 0
    # Still usable: reads work, and appends work again once space is freed.
    assert log.read(written) == payload(written, 50_000)
    log.drop_before(log.next_position)  # frees the older segments
    log.append([b"after"])
    log.sync()
    log.close()
    with LogStore(d, segment_size=256 << 10) as log:
        assert log.read(log.last_position) == b"after"
        assert log.read(written) == payload(written, 50_000)


def test_a_segment_named_position_zero_is_corruption(logdir):
    logdir.mkdir()
    (logdir / ref.segment_name(0)).write_bytes(ref.segment_header(0) + bytes(100))
    with pytest.raises(CorruptLogError, match="position 0"):
        LogStore(logdir)


# ---------------------------------------------------------------- misuse never crashes

from hypothesis import HealthCheck, given, settings  # noqa: E402
import hypothesis.strategies as st  # noqa: E402

weird = st.one_of(
    st.integers(-(2**70), 2**70),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=10),
    st.floats(allow_nan=True),
    st.lists(st.binary(max_size=5), max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=2)), max_size=3),
)
calls = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "read", "scan", "truncate_after", "drop_before", "sync", "close", "stats"]
        ),
        weird,
        weird,
    ),
    max_size=20,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=calls)
def test_misuse_raises_library_errors_never_crashes(tmp_path_factory, calls):
    d = tmp_path_factory.mktemp("misuse")
    log = LogStore(d, segment_size=4096)
    log.append([b"seed", b"data"])
    try:
        for name, a, b in calls:
            try:
                if name == "append":
                    log.append(a if isinstance(a, list) else [a])
                elif name == "read":
                    log.read(a)
                elif name == "scan":
                    list(log.scan(a, b))
                elif name in ("truncate_after", "drop_before"):
                    getattr(log, name)(a)
                elif name == "sync":
                    log.sync()
                elif name == "close":
                    log.close()
                else:
                    log.stats()
            except (MeridianError, TypeError):
                pass
    finally:
        log.close()
