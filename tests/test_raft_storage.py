"""RaftStorage: durable log, hard state and snapshot of one Raft group (ARCH §2, §3).

One test per claim: round trips, conflict truncation, snapshot installs that replace the log,
compaction, and one per failure mode recovery must report (a corrupt snapshot file, a commit
index beyond the durable log, a gap between the snapshot and the log). Crash tests are in
test_raft_storage_crash.py.
"""

from __future__ import annotations

import errno
import os
import random
import struct

import pytest
from logtools import flip_byte, truncate, write_at

from engine import (
    CorruptionError,
    CorruptLogError,
    CorruptStateError,
    DiskFullError,
    DurableState,
    InvalidArgumentError,
    LogStore,
    PositionError,
    RecordTooLargeError,
    StoreClosedError,
    StoreFailedError,
    StoreLockedError,
)
from engine._native import crc32c_masked
from raft import storage as storage_module
from raft.core import Config, RaftCore, RestoredState
from raft.storage import (
    FLAG_LOG_RESET,
    InconsistentStateError,
    RaftStorage,
    decode_entry,
    encode_entry,
    encode_hard_state,
    encode_snapshot_header,
)
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftInvariantError,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
)

SEGMENT = 4096  # the smallest segment: a few entries each, so compaction drops whole segments
CONF = ConfState(voters=(1, 2, 3), learners=(4,))
BOOTSTRAP_NONE = ConfState()


def ents(lo: int, hi: int, term: int, tag: bytes = b"") -> list[Entry]:
    """Entries lo..hi-1 of one term, each with distinct data."""
    return [Entry(term, i, tag + b"entry-%d-%d" % (term, i)) for i in range(lo, hi)]


def snap(index: int, term: int, data: bytes = b"", conf: ConfState = CONF) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, conf), data or b"state@%d" % index)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "group"


def reopen(path) -> RaftStorage:
    return RaftStorage.open(path, segment_size=SEGMENT)


def restored(path, bootstrap: ConfState = BOOTSTRAP_NONE) -> RestoredState:
    with reopen(path) as st:
        return st.initial_state(bootstrap)


# ============================================================ round trips


def test_a_new_storage_restores_the_empty_state_and_the_bootstrap_membership(path):
    with reopen(path) as st:
        got = st.initial_state(CONF)
        assert got == RestoredState(HardState(), None, (), CONF)
        assert (st.first_index, st.last_index, st.snapshot_meta) == (1, 0, None)
    assert sorted(os.listdir(path)) == ["hardstate", "log"]


def test_entries_and_hard_state_survive_reopening(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 4, 1), hard_state=HardState(1, 2, 0), sync=True)
        st.save(entries=ents(4, 9, 2), hard_state=HardState(2, 3, 5), sync=True)
        st.save(hard_state=HardState(2, 3, 8), sync=False)
    got = restored(path)
    assert got.hard_state == HardState(2, 3, 8)
    assert got.snapshot is None
    assert got.entries == tuple(ents(1, 4, 1) + ents(4, 9, 2))
    assert [e.index for e in got.entries] == list(range(1, 9))


def test_entry_types_empty_data_and_large_data_round_trip(path):
    cc = ConfChange(ConfChangeType.ADD_LEARNER, 9).encode()
    big = random.Random(1).randbytes(200_000)  # several segments' worth: one bigger segment
    entries = [
        Entry(1, 1, b""),  # a leader's no-op
        Entry(1, 2, cc, EntryType.CONF_CHANGE),
        Entry(1, 3, big),
        Entry(1, 4, bytearray(b"from a bytearray")),
        Entry(1, 5, memoryview(b"from a memoryview")),
    ]
    with reopen(path) as st:
        st.save(entries=entries, sync=True)
        assert st.entries(2, 4) == [entries[1], entries[2]]
    got = restored(path).entries
    assert got[1].type is EntryType.CONF_CHANGE and ConfChange.decode(got[1].data).node == 9
    assert got[2].data == big and got[3].data == b"from a bytearray"
    assert got[4].data == b"from a memoryview" and type(got[4].data) is bytes


def test_unsynced_entries_are_synced_before_a_hard_state_and_on_close(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 1), sync=False)
        assert st.statistics().log.synced_position == 0
        st.save(entries=ents(3, 5, 1), hard_state=HardState(1, 0, 2), sync=False)
        assert st.statistics().log.synced_position == 4  # the hard state waited for them
        st.save(entries=ents(5, 6, 1), sync=False)
    assert restored(path).entries == tuple(ents(1, 6, 1))


def test_append_nowait_takes_only_entries_that_follow_the_log_in_its_last_segment(path):
    with reopen(path) as st:
        assert st.append_nowait(ents(1, 3, 1)) is True
        assert st.append_nowait(ents(4, 5, 1)) is False  # a gap
        assert st.append_nowait(ents(2, 4, 2)) is False  # a conflict: truncation syncs
        assert st.append_nowait([Entry(1, 3, b"x" * SEGMENT)]) is False  # a new segment
        assert st.last_index == 2 and st.statistics().log.synced_position == 0
        with pytest.raises(InvalidArgumentError):
            st.append_nowait([Entry(1, 3, b""), Entry(1, 5, b"")])  # not contiguous
        fd, upto = st.sync_begin()
        os.fdatasync(fd)
        st.sync_end(upto, 0)
        assert upto == 2 and st.statistics().log.synced_position == 2
        assert st.sync_begin() is None
        st.save(entries=ents(2, 4, 2), sync=True)  # what append_nowait refused, save does
    assert restored(path).entries == tuple(ents(1, 2, 1) + ents(2, 4, 2))


def test_a_failed_split_sync_fails_the_storage(path):
    with reopen(path) as st:
        assert st.append_nowait(ents(1, 2, 1))
        _, upto = st.sync_begin()
        with pytest.raises(OSError):
            st.sync_end(upto, 5)  # EIO
        with pytest.raises(StoreFailedError):
            st.append_nowait(ents(2, 3, 1))


def test_an_unchanged_hard_state_is_not_rewritten(path):
    with reopen(path) as st:
        st.save(hard_state=HardState(3, 1, 0))
        seq = st._state.sequence
        st.save(entries=ents(1, 2, 3), hard_state=HardState(3, 1, 0))
        assert st._state.sequence == seq


def test_the_on_disk_encodings_are_the_documented_ones(path):
    assert encode_entry(Entry(7, 3, b"ab", EntryType.CONF_CHANGE)) == b"\x01" + struct.pack(
        "<Q", 7
    ) + b"ab"
    assert decode_entry(3, b"\x00" + struct.pack("<Q", 7) + b"xy") == Entry(7, 3, b"xy")
    assert encode_hard_state(HardState(5, 2, 9)) == struct.pack("<BQQQ", 1, 5, 2, 9)
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 1), hard_state=HardState(5, 2, 1))
        st.save(snapshot=snap(4, 5, b"DATA", ConfState((1, 2), (3,))))
    with DurableState(path / "hardstate") as hs:
        assert hs.load() == struct.pack("<BQQQ", 1, 5, 2, 1)
    raw = (path / "snapshot").read_bytes()
    magic, version, flags, index, term, n, nv, nl = struct.unpack_from("<8sIIQQQII", raw)
    assert (magic, version, flags, index, term, n, nv, nl) == (
        b"MERIDSNP", 1, FLAG_LOG_RESET, 4, 5, 4, 2, 1
    )
    assert struct.unpack_from("<3Q", raw, 48) == (1, 2, 3)
    assert raw.endswith(b"DATA") and len(raw) == 48 + 24 + 8 + 4
    meta = SnapshotMeta(4, 5, ConfState((1, 2), (3,)))
    assert raw[:-4] == encode_snapshot_header(meta, b"DATA", FLAG_LOG_RESET)
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        assert log.first_position == 5 and log.last_position == 4


def test_a_restored_state_starts_a_raft_core(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 2), hard_state=HardState(2, 1, 4))
        core = RaftCore(Config(id=1), random.Random(0), st.initial_state(CONF))
    assert (core.term, core.vote, core.commit, core.last_index) == (2, 1, 4, 5)
    assert core.conf == CONF


# ============================================================ conflict truncation


def test_conflicting_entries_replace_the_suffix_from_their_first_index(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 3))
        st.save(entries=ents(6, 8, 2), hard_state=HardState(2, 0, 3))  # shorter than before
        assert st.last_index == 7
    got = restored(path)
    assert got.entries == tuple(ents(1, 6, 1) + ents(6, 8, 2))
    with reopen(path) as st:
        st.save(entries=ents(4, 5, 3), hard_state=HardState(3, 0, 3))
        assert st.entries(1, 5) == ents(1, 4, 1) + ents(4, 5, 3)
        st.save(entries=ents(5, 7, 3))  # a plain append after it
    assert restored(path).entries == tuple(ents(1, 4, 1) + ents(4, 7, 3))


def test_replaced_entries_do_not_come_back_after_an_unsynced_conflicting_append(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1))
        st.save(entries=ents(5, 6, 2), sync=False)
        st.close(sync=False)  # as after a crash: the truncation itself was durable
    entries = restored(path).entries
    assert entries[:4] == tuple(ents(1, 5, 1))
    assert entries[4:] in ((), (ents(5, 6, 2)[0],))


def test_entries_at_or_below_the_commit_index_are_never_replaced(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 1), hard_state=HardState(1, 0, 4))
        with pytest.raises(RaftInvariantError, match="committed"):
            st.save(entries=ents(4, 5, 2))
        st.save(entries=ents(5, 6, 2))  # the entry after the commit index may be replaced
        assert st.entries(1, 6) == ents(1, 5, 1) + ents(5, 6, 2)


@pytest.mark.parametrize(
    "entries, match",
    [
        ([Entry(1, 1), Entry(1, 3)], "not contiguous"),
        ([Entry(2, 1), Entry(1, 2)], "below the term"),
        ([Entry(1, 5)], "gap"),
        ([Entry(1, 0)], "out of range"),
    ],
)
def test_malformed_entries_are_refused_before_anything_is_written(path, entries, match):
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 1))
        with pytest.raises(InvalidArgumentError, match=match):
            st.save(entries=entries, hard_state=HardState(9, 9, 0))
        assert st.hard_state == HardState() and st.last_index == 2
        st.save(entries=ents(3, 4, 1))  # still usable


def test_wrong_types_are_refused(path):
    with reopen(path) as st:
        with pytest.raises(TypeError):
            st.save(entries=[(1, 1, b"x")])
        with pytest.raises(TypeError):
            st.save(entries=[Entry(1, 1, "text")])
        with pytest.raises(TypeError):
            st.save(hard_state=(1, 0, 0))
        with pytest.raises(TypeError):
            st.save(snapshot=SnapshotMeta(1, 1))
        with pytest.raises(RecordTooLargeError):
            st.save(entries=[Entry(1, 1, bytes(64 << 20))])
        st.save(entries=ents(1, 2, 1))


def test_a_hard_state_must_not_run_ahead_of_the_log_or_back_in_term(path):
    with reopen(path) as st:
        with pytest.raises(RaftInvariantError, match="beyond the last entry"):
            st.save(entries=ents(1, 3, 1), hard_state=HardState(1, 0, 3))
        assert st.last_index == 0  # refused before anything was written
        st.save(entries=ents(1, 3, 1), hard_state=HardState(2, 0, 2))
        with pytest.raises(RaftInvariantError, match="below the stored term"):
            st.save(hard_state=HardState(1, 0, 2))


# ============================================================ snapshot installs


def test_a_received_snapshot_replaces_the_whole_log(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 1), hard_state=HardState(1, 0, 5))
        st.save(snapshot=snap(12, 3), hard_state=HardState(3, 0, 12))
        assert (st.first_index, st.last_index) == (13, 12)
        assert st.statistics().log.first_position == 13  # a fresh log, not a truncated one
        st.save(entries=ents(13, 15, 3))
    got = restored(path)
    assert got.snapshot == snap(12, 3)
    assert got.entries == tuple(ents(13, 15, 3))
    assert got.hard_state == HardState(3, 0, 12)
    assert not (path / "log.old").exists() and not (path / "snapshot.tmp").exists()


@pytest.mark.parametrize("index", [3, 10, 30])
def test_a_snapshot_may_end_inside_at_or_beyond_the_log(path, index):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 2))
        st.save(snapshot=snap(index, 2), entries=ents(index + 1, index + 3, 2),
                hard_state=HardState(2, 0, index + 1))
    got = restored(path)
    assert got.snapshot.meta.index == index
    assert got.entries == tuple(ents(index + 1, index + 3, 2))
    assert got.hard_state.commit == index + 1


def test_entries_in_the_same_save_as_a_snapshot_must_follow_it(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 1))
        with pytest.raises(InvalidArgumentError, match="at or below the snapshot"):
            st.save(snapshot=snap(8, 2), entries=ents(8, 9, 2))
        with pytest.raises(InvalidArgumentError, match="gap"):
            st.save(snapshot=snap(8, 2), entries=ents(10, 11, 2))
        assert st.snapshot_meta is None and st.last_index == 5


def test_a_received_snapshot_must_be_newer_and_not_behind_the_commit_index(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 6))
        with pytest.raises(RaftInvariantError, match="discard committed"):
            st.save(snapshot=snap(5, 1))
        st.save(snapshot=snap(6, 1))
        with pytest.raises(InvalidArgumentError, match="not newer"):
            st.save(snapshot=snap(6, 1))
        assert st.snapshot_meta.index == 6


def test_snapshots_hold_large_data_and_any_membership(path):
    data = random.Random(2).randbytes(3 << 20)
    conf = ConfState(voters=tuple(range(1, 300)), learners=(2**64 - 1,))
    with reopen(path) as st:
        st.save(snapshot=snap(100, 4, data, conf))
        st.save(snapshot=snap(200, 4, b"", ConfState()))
        st.save(snapshot=snap(300, 4, data, conf))
    got = restored(path)
    assert got.snapshot == snap(300, 4, data, conf)
    assert got.hard_state == HardState(4, 0, 300)


def chunks_of(meta: SnapshotMeta, data: bytes, size: int) -> list[SnapshotChunk]:
    return [SnapshotChunk(meta, off, data[off:off + size], len(data))
            for off in range(0, len(data), size)]


def test_a_snapshot_received_in_chunks_is_written_as_it_comes_and_installed_whole(path):
    """The chunks go to snapshot.recv (not synced, not yet the snapshot); the save that
    installs it makes it the snapshot, as if it had been written whole, and the data reads
    back mapped, checksum verified."""
    data = random.Random(3).randbytes(100_000)
    meta = SnapshotMeta(12, 3, CONF)
    chunks = chunks_of(meta, data, 30_000)
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 1), hard_state=HardState(1, 0, 5))
        st.save(snapshot_chunks=chunks[:2], sync=False)
        assert (path / "snapshot.recv").exists() and st.snapshot_meta is None
        assert st.last_index == 20
        st.save(snapshot=Snapshot(meta, None), snapshot_chunks=chunks[2:],
                entries=ents(13, 15, 3), hard_state=HardState(3, 0, 12))
        assert not (path / "snapshot.recv").exists()
        with st.mapped_snapshot() as view:
            assert view == data
    got = restored(path)
    assert got.snapshot == Snapshot(meta, data)
    assert got.entries == tuple(ents(13, 15, 3)) and got.hard_state == HardState(3, 0, 12)
    with reopen(path) as st, open(path / "snapshot", "r+b") as f:
        f.seek(-1, 2)
        f.write(bytes([data[-1] ^ 1]))
        f.flush()
        with pytest.raises(CorruptStateError, match="checksum"), st.mapped_snapshot():
            pass


def test_snapshot_chunks_must_follow_each_other_and_a_transfer_must_be_whole(path):
    data = bytes(range(200)) * 10
    meta = SnapshotMeta(12, 3, CONF)
    chunks = chunks_of(meta, data, 500)
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 5))
        with pytest.raises(InvalidArgumentError, match="does not follow"):
            st.save(snapshot_chunks=[chunks[0], chunks[2]])
        assert not (path / "snapshot.recv").exists()  # nothing was written
        with pytest.raises(InvalidArgumentError, match="not received whole"):
            st.save(snapshot=Snapshot(meta, None), snapshot_chunks=chunks[:3])
        with pytest.raises(InvalidArgumentError, match="ends beyond"):
            st.save(snapshot_chunks=[SnapshotChunk(meta, 0, data, 10)])
        st.save(snapshot_chunks=chunks[:3])
        st.save(snapshot_chunks=chunks[:1])  # offset 0 starts the file again
        with pytest.raises(InvalidArgumentError, match="does not follow"):
            st.save(snapshot_chunks=chunks[3:4])
        st.save(snapshot=Snapshot(meta, None), snapshot_chunks=chunks[1:])
    with reopen(path) as st:
        assert st.read_snapshot().data == data
        st.save(snapshot_chunks=chunks_of(SnapshotMeta(20, 3, CONF), data, 500)[:1])
    # A transfer cut short by a restart is gone: the leader sends it again from offset 0.
    with reopen(path) as st:
        assert not (path / "snapshot.recv").exists()
        with pytest.raises(InvalidArgumentError, match="does not follow"):
            st.save(snapshot_chunks=chunks_of(SnapshotMeta(20, 3, CONF), data, 500)[1:])
        assert st.snapshot_meta == meta


def test_a_transfer_the_node_no_longer_needs_is_removed_while_running(path):
    """The core takes no chunk of a snapshot at or below its commit index: once a follower
    is caught up otherwise (a new leader's appends, a newer snapshot, a local compaction),
    its partial transfer, up to a whole state's size, is removed at once, not at the next
    restart, and a transfer that may still complete is kept."""
    data = bytes(range(200)) * 10
    meta = SnapshotMeta(12, 3, CONF)
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 5))
        st.save(snapshot_chunks=chunks_of(meta, data, 500)[:2])
        st.save(entries=ents(11, 13, 4), hard_state=HardState(4, 0, 11))
        assert (path / "snapshot.recv").exists()  # 11 < 12: the rest may still come
        st.save(hard_state=HardState(4, 0, 12))
        assert not (path / "snapshot.recv").exists()
        with pytest.raises(InvalidArgumentError, match="does not follow"):
            st.save(snapshot_chunks=chunks_of(meta, data, 500)[2:3])
        # A local compaction at or past the transfer's index.
        st.save(entries=ents(13, 21, 4))
        st.save(snapshot_chunks=chunks_of(SnapshotMeta(16, 4, CONF), data, 500)[:1])
        st.save_snapshot(snap(16, 4))
        assert not (path / "snapshot.recv").exists()
        # A newer snapshot given whole.
        st.save(snapshot_chunks=chunks_of(SnapshotMeta(30, 5, CONF), data, 500)[:1])
        st.save(snapshot=snap(40, 5), hard_state=HardState(5, 0, 40))
        assert not (path / "snapshot.recv").exists()
        # A newer transfer replaces an older one; the one in use stays.
        st.save(snapshot_chunks=chunks_of(SnapshotMeta(50, 5, CONF), data, 500)[:2])
        st.save(snapshot_chunks=chunks_of(SnapshotMeta(60, 6, CONF), data, 500)[:1])
        assert os.path.getsize(path / "snapshot.recv") < 500 + 200
        assert st.read_snapshot() == snap(40, 5)
    assert restored(path).snapshot == snap(40, 5)


# ============================================================ compaction


def test_compaction_drops_whole_segments_below_the_snapshot_only(path):
    with reopen(path) as st:
        for lo in range(1, 201, 10):
            st.save(entries=ents(lo, lo + 10, 1, b"x" * 300))
        st.save(hard_state=HardState(1, 0, 150))
        before = st.statistics().log
        st.save_snapshot(snap(150, 1))
        after = st.statistics().log
        assert before.first_position == 1 and 1 < after.first_position <= 151
        assert after.segments < before.segments
        assert st.first_index == 151 and st.last_index == 200
        with pytest.raises(PositionError):
            st.entries(150, 152)  # served from the snapshot now
    got = restored(path)
    assert got.snapshot == snap(150, 1)
    assert got.entries == tuple(ents(151, 201, 1, b"x" * 300))


@pytest.mark.parametrize("keep", [0, 1, 7, 40, 500])
def test_compaction_keeps_the_requested_entries_below_the_snapshot(path, keep):
    with reopen(path) as st:
        for lo in range(1, 121, 5):  # a batch goes whole into one segment: small batches
            st.save(entries=ents(lo, lo + 5, 1, b"y" * 200))
        st.save(hard_state=HardState(1, 0, 100))
        st.save_snapshot(snap(100, 1), keep=keep)
        first = st.statistics().log.first_position
        assert first <= max(1, 101 - keep)  # entries 101 - keep .. 100 are still on disk
        assert first > 1 or keep >= 40  # and whole segments below them were dropped
        assert st.statistics().log.next_position == 121
    got = restored(path)
    assert got.entries == tuple(ents(101, 121, 1, b"y" * 200))


def test_compaction_after_an_install_and_at_the_same_index(path):
    with reopen(path) as st:
        st.save(snapshot=snap(50, 2), entries=ents(51, 61, 2), hard_state=HardState(2, 0, 55))
        st.save_snapshot(snap(50, 2, b"again"))  # same index: rewritten, log unchanged
        st.save_snapshot(snap(55, 2))
        assert st.entries(56, 61) == ents(56, 61, 2)
    got = restored(path)
    assert got.snapshot == snap(55, 2) and got.entries == tuple(ents(56, 61, 2))


def test_a_compaction_snapshot_must_match_the_log(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 1) + ents(6, 11, 2), hard_state=HardState(2, 0, 9))
        with pytest.raises(RaftInvariantError, match="term"):
            st.save_snapshot(snap(7, 1))
        with pytest.raises(InvalidArgumentError, match="beyond the last entry"):
            st.save_snapshot(snap(11, 2))
        with pytest.raises(InvalidArgumentError, match="keep"):
            st.save_snapshot(snap(7, 2), keep=-1)
        st.save_snapshot(snap(7, 2))
        with pytest.raises(InvalidArgumentError, match="older"):
            st.save_snapshot(snap(6, 1))
        assert st.snapshot_meta.index == 7


def test_compaction_syncs_the_entries_it_covers_first(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), sync=False)
        st.save_snapshot(snap(8, 1))
        assert st.statistics().log.synced_position >= 8


# ============================================================ recovery checks


def make_storage_with_snapshot(path) -> None:
    with reopen(path) as st:
        st.save(entries=ents(1, 31, 1, b"z" * 100), hard_state=HardState(1, 0, 20))
        st.save_snapshot(snap(20, 1, b"S" * 1000))


@pytest.mark.parametrize(
    "damage",
    ["flip data", "flip header", "flip crc", "truncate", "append", "empty", "bad magic"],
)
def test_a_corrupt_snapshot_file_is_reported_with_its_path(path, damage):
    make_storage_with_snapshot(path)
    f = path / "snapshot"
    size = f.stat().st_size
    if damage == "flip data":
        flip_byte(f, size - 10)
    elif damage == "flip header":
        flip_byte(f, 17)  # the index
    elif damage == "flip crc":
        flip_byte(f, 48 + 4 * 8 + 5)
    elif damage == "truncate":
        truncate(f, size - 1)
    elif damage == "append":
        with open(f, "ab") as fh:
            fh.write(b"\0")
    elif damage == "empty":
        truncate(f, 0)
    elif damage == "bad magic":
        write_at(f, 0, b"NOTASNAP")
    with pytest.raises(CorruptStateError) as info:
        reopen(path)
    assert info.value.path == str(f) and str(f) in str(info.value)


def test_a_snapshot_of_an_unknown_version_or_flag_is_not_guessed_at(path):
    make_storage_with_snapshot(path)
    f = path / "snapshot"
    raw = bytearray(f.read_bytes())
    raw[8] = 2  # version 2, with a valid checksum
    hsize = 48 + 4 * 8 + 8  # CONF: 3 voters and 1 learner
    struct.pack_into("<I", raw, hsize - 4, crc32c_masked(bytes(raw[: hsize - 4])))
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptStateError, match="version 2"):
        reopen(path)


def test_a_snapshot_of_a_newer_version_with_another_layout_is_named_as_such(path):
    """A newer version's header may differ in size and fields: the version is judged before
    the member counts and checksums this code would read from it, and the file is kept."""
    make_storage_with_snapshot(path)
    f = path / "snapshot"
    raw = bytearray(f.read_bytes())
    struct.pack_into("<I", raw, 8, 2)  # version 2, its header laid out otherwise
    struct.pack_into("<II", raw, 40, 1 << 20, 7)  # fields this code reads as member counts
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptStateError, match="format version 2; this code reads 1") as info:
        reopen(path)
    assert info.value.path == str(f) and info.value.offset == 8
    assert f.read_bytes() == raw


def test_a_corrupt_hard_state_is_reported(path):
    with reopen(path) as st:
        st.save(hard_state=HardState(1, 1, 0))
    with DurableState(path / "hardstate") as hs:
        hs.store(b"\x07garbage")
    with pytest.raises(CorruptStateError, match="hard state"):
        reopen(path)


def test_a_missing_hard_state_beside_a_log_is_reported_not_recreated(path):
    """The hard state file is made before the log and never removed: without it the term and
    vote are lost, and a node restarted with no vote could vote twice in a term."""
    with reopen(path) as st:
        st.save(entries=ents(1, 4, 2), hard_state=HardState(2, 3, 1))
    os.unlink(path / "hardstate")
    for _ in range(2):  # not recreated by the failed open: the next one says so again
        with pytest.raises(CorruptStateError, match="hardstate is missing beside log") as info:
            reopen(path)
        assert info.value.path == str(path / "hardstate")
    assert sorted(os.listdir(path)) == ["log"]


def test_a_commit_index_beyond_the_durable_log_is_reported_not_ignored(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 9))
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.truncate_after(6)  # as if the last segments had vanished
    with pytest.raises(InconsistentStateError, match="acknowledged entries were lost") as info:
        reopen(path)
    assert isinstance(info.value, RaftInvariantError) and isinstance(info.value, CorruptionError)
    assert info.value.path == str(path / "log")


def test_a_log_starting_after_the_snapshot_is_reported(path):
    make_storage_with_snapshot(path)
    for name in os.listdir(path / "log"):
        os.unlink(path / "log" / name)
    with LogStore(path / "log", segment_size=SEGMENT, initial_position=25) as log:
        log.append([encode_entry(e) for e in ents(25, 28, 1)])
    with pytest.raises(InconsistentStateError, match="entries 21..24 are missing"):
        reopen(path)


def test_a_log_whose_terms_go_back_is_reported(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 4, 3))
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.append([encode_entry(Entry(2, 4, b"older term"))])
    with reopen(path) as st, pytest.raises(InconsistentStateError, match="below the term"):
        st.initial_state()


def test_a_log_entry_that_disagrees_with_the_snapshot_is_reported(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 5))
        st.save_snapshot(snap(5, 1), keep=10)
    data = b"state@5"  # rewrite the snapshot claiming term 2 at index 5
    header = encode_snapshot_header(SnapshotMeta(5, 2, CONF), data)
    (path / "snapshot").write_bytes(header + data)
    with reopen(path) as st, pytest.raises(InconsistentStateError, match="term 1"):
        st.initial_state()


def test_a_damaged_log_record_is_reported(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 1))
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.append([b"\x09" + bytes(8), b"short"])
    with reopen(path) as st:
        with pytest.raises(CorruptLogError, match="unknown type 9"):
            st.initial_state()
        with pytest.raises(CorruptLogError, match="shorter than an entry header"):
            st.entries(4, 5)


def test_an_older_term_in_the_hard_state_is_raised_to_the_logs_with_no_vote(path):
    """Entries are durable before the hard state of the same save; a crash between them leaves
    entries of a term the hard state has not reached, a term never voted in from here."""
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 2), hard_state=HardState(2, 3, 1))
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.append([encode_entry(e) for e in ents(3, 5, 5)])
    with reopen(path) as st:
        assert st.hard_state == HardState(2, 3, 1)
        assert st.initial_state().hard_state == HardState(5, 0, 1)


def test_a_log_entirely_below_the_snapshot_restarts_after_it(path):
    make_storage_with_snapshot(path)
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.truncate_after(12)  # as if a tail covered by the snapshot had been lost
    with reopen(path) as st:
        assert (st.first_index, st.last_index) == (21, 20)
        st.save(entries=ents(21, 23, 1))
    assert restored(path).entries == tuple(ents(21, 23, 1))


def test_an_install_cut_short_is_finished_on_open(path):
    """The snapshot (flagged as received) is durable but the old log is still in place."""
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 1), hard_state=HardState(1, 0, 4))
        st._write_snapshot(snap(12, 3), FLAG_LOG_RESET)  # the commit point, and no further
        st.close(sync=False)
    got = restored(path)
    assert got.snapshot == snap(12, 3) and got.entries == ()
    with reopen(path) as st:
        assert st.statistics().log.first_position == 13


def test_leftovers_of_a_crash_are_removed_on_open(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 5, 1))
    (path / "snapshot.tmp").write_bytes(b"half a snapshot")
    (path / "log.old").mkdir()
    (path / "log.old" / "00000000000000000001.log").write_bytes(b"a discarded segment")
    with reopen(path) as st:
        assert sorted(os.listdir(path)) == ["hardstate", "log"]
        assert st.entries(1, 5) == ents(1, 5, 1)


def test_an_install_cut_between_the_log_renames_gets_a_new_log(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 1), hard_state=HardState(1, 0, 4))
        st._write_snapshot(snap(12, 3), FLAG_LOG_RESET)
        st.close(sync=False)
    os.rename(path / "log", path / "log.old")
    with reopen(path) as st:
        assert sorted(os.listdir(path)) == ["hardstate", "log", "snapshot"]
        assert (st.first_index, st.last_index) == (13, 12)
        assert st.statistics().log.first_position == 13


# ============================================================ the handle


def test_the_storage_is_exclusive(path):
    with reopen(path), pytest.raises(StoreLockedError):
        reopen(path)
    reopen(path).close()


def test_a_closed_storage_refuses_everything_and_close_is_idempotent(path):
    st = reopen(path)
    st.close()
    st.close()
    assert st.closed
    for call in (
        lambda: st.save(entries=ents(1, 2, 1)),
        lambda: st.save_snapshot(snap(1, 1)),
        lambda: st.initial_state(),
        lambda: st.statistics(),
        lambda: st.hard_state,
        lambda: st.last_index,
    ):
        with pytest.raises(StoreClosedError):
            call()


def test_a_failed_write_fails_the_handle_until_reopened(path, monkeypatch):
    with reopen(path) as st:
        st.save(entries=ents(1, 3, 1))

        def broken(*args):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(storage_module, "fsync_directory", broken)
        with pytest.raises(OSError, match="cannot write snapshot"):
            st.save(snapshot=snap(5, 1))
        monkeypatch.undo()
        with pytest.raises(StoreFailedError):
            st.save(entries=ents(3, 4, 1))
        assert st.statistics().failed
    got = restored(path)  # the snapshot was renamed in place before the failure: installed
    assert got.snapshot == snap(5, 1) and got.entries == ()


def test_a_handle_that_lost_its_log_in_a_failed_install_still_describes_itself(path,
                                                                              monkeypatch):
    """A full disk while an install makes the new log leaves the handle without one: it
    refuses everything but ``repr`` (error messages and debuggers show it) and ``close``."""
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 3))

        def full(*args, **kwargs):
            raise DiskFullError("no space left for the new log")

        monkeypatch.setattr(storage_module, "LogStore", full)
        with pytest.raises(DiskFullError):
            st.save(snapshot=snap(20, 2), hard_state=HardState(2, 0, 20))
        monkeypatch.undo()
        assert "failed" in repr(st)
        with pytest.raises(StoreFailedError, match="lost its log"):
            st.statistics()
    assert "closed" in repr(st)
    got = restored(path)  # the snapshot was installed before the log was replaced
    assert got.snapshot == snap(20, 2) and got.entries == ()


def test_a_full_disk_while_receiving_a_snapshot_frees_what_was_written(path, monkeypatch):
    """ENOSPC writing a received chunk, a received snapshot's header or a whole snapshot: a
    DiskFullError, the old state stays, and the partial file (up to a whole state's size, on
    a disk other groups share) is removed at once, not when the storage is opened again."""
    data = bytes(range(200)) * 10
    meta = SnapshotMeta(12, 3, CONF)
    chunks = chunks_of(meta, data, 500)
    header = 56 + 8 * 4
    write = storage_module.pwrite_all

    def full_at(at):
        def pwrite_all(fd, buf, offset):
            if offset == at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write(fd, buf, offset)

        monkeypatch.setattr(storage_module, "pwrite_all", pwrite_all)

    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 5))
    for at, kwargs in (
        (header + 1000, {"snapshot_chunks": chunks}),
        (0, {"snapshot": Snapshot(meta, None), "snapshot_chunks": chunks}),
        (0, {"snapshot": Snapshot(meta, data)}),
    ):
        with reopen(path) as st:
            full_at(at)
            with pytest.raises(DiskFullError, match="snapshot"):
                st.save(**kwargs)
            monkeypatch.undo()
            assert sorted(os.listdir(path)) == ["hardstate", "log"]
        got = restored(path)
        assert got.snapshot is None and len(got.entries) == 10
    with reopen(path) as st:  # retried later, the transfer completes
        st.save(snapshot=Snapshot(meta, None), snapshot_chunks=chunks)
    assert restored(path).snapshot == Snapshot(meta, data)


def test_bad_segment_sizes_are_refused_before_anything_is_created(path):
    for size in (0, 100, True, "4096", 2**40):
        with pytest.raises(InvalidArgumentError):
            RaftStorage.open(path, segment_size=size)
    assert not path.exists()


def test_statistics_and_repr(path):
    with reopen(path) as st:
        st.save(entries=ents(1, 11, 1), hard_state=HardState(1, 0, 8))
        st.save_snapshot(snap(8, 1, b"s" * 100))
        s = st.statistics()
        assert (s.first_index, s.last_index, s.snapshot_index, s.snapshot_term) == (9, 10, 8, 1)
        assert s.snapshot_bytes == (path / "snapshot").stat().st_size
        assert s.hard_state == HardState(1, 0, 8) and not s.failed
        assert s.log.next_position == 11
        assert "snapshot 8" in repr(st)
    assert "closed" in repr(st)


def test_a_local_snapshot_keeps_its_flag_and_is_never_installed_from_a_leader(path):
    local = Snapshot(SnapshotMeta(15, 1, CONF), b"marker", local=True)
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 1), hard_state=HardState(1, 0, 20))
        st.save_snapshot(local)
        with pytest.raises(InvalidArgumentError, match="local snapshot"):
            st.save(snapshot=Snapshot(SnapshotMeta(30, 2, CONF), b"x", local=True),
                    hard_state=HardState(2, 0, 30))
        assert st.read_snapshot() == local
        st.save_snapshot(snap(18, 1))  # a full one replaces it, flag and all
        assert not st.read_snapshot().local
        st.save_snapshot(Snapshot(SnapshotMeta(20, 1, CONF), b"marker", local=True))
    got = restored(path)
    assert got.snapshot == Snapshot(SnapshotMeta(20, 1, CONF), b"marker", local=True)
    # The flag is bit 1 of the header's flags; both bits at once is corruption.
    raw = bytearray((path / "snapshot").read_bytes())
    assert struct.unpack_from("<I", raw, 12)[0] == storage_module.FLAG_LOCAL
