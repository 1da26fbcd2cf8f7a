"""Durable storage for one Raft group: the log, the hard state and the latest snapshot
(ARCH §2.1, §2.2, §3).

A :class:`RaftStorage` is a directory holding three things, each in the store made for it::

    PATH/
      hardstate       engine.DurableState: term, vote, commit (format below)
      log/            engine.LogStore: the record at position i is the entry at Raft index i
      snapshot        the latest snapshot, replaced whole by rename (format below)
      snapshot.tmp    a snapshot being written; removed on open
      snapshot.recv   a snapshot being received from the leader, as it arrives; removed on open
                      and once the node no longer needs it (see below)
      log.old/        a log being discarded by a snapshot install; removed on open

The driver persists each ``Ready`` with one :meth:`RaftStorage.save` (the order is fixed there;
a received snapshot's chunks are written as they arrive, so that it is never held in memory
whole) and each local compaction with :meth:`RaftStorage.save_snapshot`; on start it rebuilds
the core from :meth:`RaftStorage.initial_state`.

Formats (all integers little-endian)
------------------------------------

Log record (the LogStore payload of entry ``i``; the index itself is not stored — it is the
record's position, which the LogStore's checksum covers)::

    offset  size  field
    0       1     entry type (EntryType: 0 normal, 1 conf change; others are corruption)
    1       8     term, u64
    9       n     data

Hard state (the DurableState payload, 25 bytes)::

    0       1     format version (1)
    1       8     term, u64
    9       8     vote, u64 (0: none)
    17      8     commit index, u64

Snapshot file (``H = 56 + 8 * (v + l)``; the file is exactly ``H + n`` bytes)::

    0       8     magic b"MERIDSNP"
    8       4     format version, u32 (1)
    12      4     flags, u32: bit 0 = LOG_RESET (see below), bit 1 = LOCAL (a durable state
                  machine's marker, see raft.types.Snapshot); other bits must be 0
    16      8     index of the last entry the snapshot covers, u64
    24      8     term of that entry, u64
    32      8     data length n, u64
    40      4     voter count v, u32
    44      4     learner count l, u32
    48      8v    voter ids, u64 each, then 8l bytes of learner ids
    H-8     4     masked CRC-32C of the data
    H-4     4     masked CRC-32C of bytes [0, H-4)
    H       n     data (the state machine's snapshot)

CRC-32C is engine's (native/FORMAT.md), masked as LevelDB does. A file that fails any check is
:class:`engine.CorruptStateError` naming it: the snapshot replaces log entries that no longer
exist, so falling back to anything else would lose committed state.

Crash safety
------------

Invariants of the files at rest (each operation below keeps them at every instant, so a crash
anywhere leaves a state that :meth:`RaftStorage.open` accepts or repairs):

- I1: the log starts at or before the entry after the snapshot (``log.first <= S + 1``, with
  ``S = 0`` without a snapshot) and ends at or after it (``log.last >= S``; open restarts a log
  found to end below ``S`` at ``S + 1``). Entries at or below ``S`` may linger (compaction frees
  whole segments) and are ignored.
- I2: the hard state's commit index is at most ``max(log.last, S)``: the hard state is stored
  only after the entries it covers are synced, conflict truncation never removes a committed
  entry, and a received snapshot is never older than the commit index.
- I3: a snapshot flagged LOG_RESET (one received from the leader, which replaces the whole log)
  is followed by a log that starts exactly at ``S + 1``; or by the old log, which starts at or
  below ``S`` because received snapshots are always newer than the stored one (I1).

A received snapshot is installed as: its data is written into ``snapshot.recv`` chunk by chunk
as it arrives (after room for the header, with a running checksum; no fsync: a crash loses the
transfer, which the leader then sends again from the start), and once whole, its header; fsync,
rename over ``snapshot``, fsync the directory — the commit point — then close the log, rename
``log`` to ``log.old``, fsync the directory, create a new ``log`` whose first position is
``S + 1`` (durably), and remove ``log.old``. A crash before the commit point leaves the old
state whole (a stray ``snapshot.recv`` is removed on open; while running, one is removed as
soon as the stored commit index or snapshot reaches its index: the node was caught up
otherwise and the rest never comes). After it, open finds the flagged
snapshot and a log that is either missing, new (``first == S + 1``: nothing to do), or old
(``first <= S``: the reset is redone); a ``log.old`` is removed. So every crash recovers to the
old state or to the new snapshot with an empty log — followed by whatever part of the same save's
entries (a prefix) and hard state had been written, in that order, as for any save. (A snapshot
given whole to :meth:`RaftStorage.save` is written the same way through ``snapshot.tmp``.)

A local compaction snapshot is written whole into ``snapshot.tmp``, fsynced, renamed over
``snapshot`` and the directory fsynced, without the flag (entries after it stay), and only then
are log segments below it dropped; ``drop_before`` keeps the log contiguous.

What cannot be repaired is reported: a log that starts after ``S + 1`` (entries missing), a
commit index beyond the durable log (acknowledged entries lost, the one loss the LogStore cannot
see by itself — native/FORMAT.md, Recovery), or a log directory missing or without a segment
beside a stored hard state or a snapshot, with no ``log.old`` (a log always keeps a segment once
made; while one is replaced, the old one stays in ``log.old`` until the new one exists, on open
too) raise :class:`InconsistentStateError`; a hard state
file missing beside a log or snapshot (it is made before them and never removed) is
:class:`engine.CorruptStateError`, never a restart with no vote.

Entries are durable before the hard state of the same save, so a crash between them can leave
entries of a term newer than the stored term. That term was never voted in from here (votes are
stored before they are sent), so :meth:`RaftStorage.initial_state` restores it with no vote.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from engine import errors
from engine._fs import fsync_directory, makedirs_durable, pread_all, pwrite_all, storage_error
from engine._native import crc32c, lib
from engine._resource import Resource
from engine.durable import DurableState
from engine.logstore import (
    DEFAULT_SEGMENT_SIZE,
    MAX_BATCH_SIZE,
    MAX_RECORD_SIZE,
    LogStats,
    LogStore,
)

from .core import RestoredState
from .types import (
    MAX_MEMBERS,
    NONE,
    ConfChangeError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftInvariantError,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
)

__all__ = [
    "FLAG_LOCAL",
    "FLAG_LOG_RESET",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "InconsistentStateError",
    "RaftStorage",
    "RaftStorageStats",
    "decode_entry",
    "decode_hard_state",
    "encode_entry",
    "encode_hard_state",
    "encode_snapshot_header",
]

SNAPSHOT_MAGIC = b"MERIDSNP"
SNAPSHOT_VERSION = 1
FLAG_LOG_RESET = 1  # a received snapshot: the log after it starts at index + 1
FLAG_LOCAL = 2  # a local snapshot: the state machine's own storage holds the state
HARD_STATE_VERSION = 1

_ENTRY = struct.Struct("<BQ")  # type, term
_HARD_STATE = struct.Struct("<BQQQ")  # version, term, vote, commit
_SNAP_FIXED = struct.Struct("<8sIIQQQII")  # magic, version, flags, index, term, n, v, l
_CRC = struct.Struct("<I")
_NO_MEMBERS = ConfState()
_U64_MAX = 2**64 - 1
_READ_CHUNK = 1 << 20
_MAX_ENTRY_DATA = MAX_RECORD_SIZE - _ENTRY.size

_HARD_STATE_FILE = "hardstate"
_LOG_DIR = "log"
_OLD_LOG_DIR = "log.old"
_SNAPSHOT_FILE = "snapshot"
_SNAPSHOT_TMP = "snapshot.tmp"
_SNAPSHOT_RECV = "snapshot.recv"


class InconsistentStateError(errors.CorruptionError, RaftInvariantError):
    """The files are each intact but together break a Raft invariant: entries between the
    snapshot and the log are missing, the commit index lies beyond the durable log (acknowledged
    entries were lost), or the log's terms go backwards.

    Both an :class:`engine.CorruptionError` (``path`` names the file or directory concerned) and
    a :class:`RaftInvariantError`: the node must stop, never continue on such a log.
    """


@dataclass(frozen=True, slots=True)
class RaftStorageStats:
    """A snapshot of a storage's counters.

    Invariant: ``snapshot_index <= first_index - 1 <= last_index`` and
    ``hard_state.commit <= last_index``.
    """

    log: LogStats  # the raw LogStore (it may still hold entries at or below snapshot_index)
    first_index: int  # snapshot_index + 1: the first entry the storage serves
    last_index: int  # the last entry (snapshot_index when the log after it is empty)
    snapshot_index: int  # 0 without a snapshot
    snapshot_term: int
    snapshot_bytes: int  # size of the snapshot file (0 without one)
    hard_state: HardState  # as stored
    failed: bool


@dataclass(frozen=True, slots=True)
class _SnapshotInfo:
    meta: SnapshotMeta
    flags: int
    header_size: int
    data_size: int


class _Receiving:
    """A snapshot being received into ``snapshot.recv``: its data goes after room for the
    header, which is written last (it holds the data's checksum)."""

    __slots__ = ("crc", "fd", "header_size", "meta", "size", "written")

    def __init__(self, meta: SnapshotMeta, size: int, fd: int) -> None:
        self.meta = meta
        self.size = size
        self.fd = fd
        self.header_size = _snapshot_header_size(meta.conf)
        self.written = 0  # bytes of data written so far
        self.crc = 0  # CRC-32C of those bytes


# ============================================================ encodings


def encode_entry(entry: Entry) -> bytes:
    """The log record of ``entry`` (its index is the record's position)."""
    return _ENTRY.pack(int(entry.type), entry.term) + bytes(entry.data)


def decode_entry(index: int, record: bytes, path: str = "") -> Entry:
    """The entry at ``index`` from its log record.

    Raises:
        CorruptLogError: the record is too short or names an unknown entry type.
    """
    if len(record) < _ENTRY.size:
        raise errors.CorruptLogError(
            f"log {path}: the record of entry {index} is {len(record)} bytes, shorter than an "
            f"entry header ({_ENTRY.size})",
            path,
        )
    kind, term = _ENTRY.unpack_from(record)
    try:
        entry_type = EntryType(kind)
    except ValueError:
        raise errors.CorruptLogError(
            f"log {path}: entry {index} has unknown type {kind}", path
        ) from None
    return Entry(term, index, record[_ENTRY.size :], entry_type)


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(HARD_STATE_VERSION, hs.term, hs.vote, hs.commit)


def decode_hard_state(payload: bytes | None, path: str = "") -> HardState:
    """The hard state from a DurableState payload (``None``: nothing stored yet).

    Raises:
        CorruptStateError: a payload of the wrong size or version.
    """
    if payload is None:
        return HardState()
    if len(payload) != _HARD_STATE.size or payload[0] != HARD_STATE_VERSION:
        raise errors.CorruptStateError(
            f"hard state file {path}: a {len(payload)}-byte payload of version "
            f"{payload[0] if payload else None}; this code reads {_HARD_STATE.size} bytes of "
            f"version {HARD_STATE_VERSION}",
            path,
        )
    _, term, vote, commit = _HARD_STATE.unpack(payload)
    return HardState(term, vote, commit)


def encode_snapshot_header(meta: SnapshotMeta, data: bytes, flags: int = 0) -> bytes:
    """The header of a snapshot file holding ``data`` (the data follows it)."""
    return _snapshot_header(meta, len(data), crc32c(data), flags)


def _snapshot_header(meta: SnapshotMeta, size: int, data_crc: int, flags: int) -> bytes:
    """The header of a snapshot file whose ``size`` bytes of data have the (unmasked) CRC-32C
    ``data_crc``."""
    conf = meta.conf
    body = _SNAP_FIXED.pack(
        SNAPSHOT_MAGIC,
        SNAPSHOT_VERSION,
        flags,
        meta.index,
        meta.term,
        size,
        len(conf.voters),
        len(conf.learners),
    ) + struct.pack(f"<{len(conf.voters) + len(conf.learners)}Q", *conf.voters, *conf.learners)
    body += _CRC.pack(_masked(data_crc))
    return body + _CRC.pack(_masked(crc32c(body)))


def _snapshot_header_size(conf: ConfState) -> int:
    return _SNAP_FIXED.size + 8 * (len(conf.voters) + len(conf.learners)) + 2 * _CRC.size


def _masked(crc: int) -> int:
    return lib.meridian_crc32c_mask(crc)


# ============================================================ the storage


class RaftStorage(Resource):
    """Durable storage for one Raft group: log entries, hard state and the latest snapshot.

    Example::

        with RaftStorage.open("/var/lib/meridian/group-7") as storage:
            core = RaftCore(config, rng, storage.initial_state(ConfState(voters=(1, 2, 3))))
            ...
            rd = core.ready()
            storage.save(snapshot=rd.snapshot, entries=rd.entries,
                         hard_state=rd.hard_state, sync=rd.must_sync)

    Thread-safety: none. Calls must be serialized by the caller (the driver runs them one at a
    time, in a worker thread through ``trio.to_thread.run_sync``); reading properties while a
    save runs in another thread is not supported either.

    Durability: every change is durable when :meth:`save` (with ``sync=True``, or with a hard
    state) or :meth:`save_snapshot` returns. A failure while writing leaves the files in a state
    that :meth:`open` recovers, but this handle no longer knows which: it refuses every further
    change with :class:`engine.StoreFailedError` until it is closed and opened again.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, segment_size: int = DEFAULT_SEGMENT_SIZE
    ) -> None:
        """Opens the storage in ``path``, creating it (with parents) or recovering it.

        Args:
            path: the group's directory.
            segment_size: bytes per log segment (see :class:`engine.LogStore`).

        Raises:
            StoreLockedError: another handle (in this or another process) has it open.
            CorruptStateError: the snapshot or hard state file is corrupt, or the hard state
                file is missing beside a log (``path`` names it).
            CorruptLogError: a log segment is corrupt.
            InconsistentStateError: the files disagree in a way that loses entries (the
                message says which).
            InvalidArgumentError: a bad ``segment_size``.
            StorageError: the file system refused.
        """
        self._path = os.fspath(path)
        if (
            isinstance(segment_size, bool)
            or not isinstance(segment_size, int)
            or not (lib.LS_MIN_SEGMENT_SIZE <= segment_size <= lib.LS_MAX_SEGMENT_SIZE)
        ):
            raise errors.InvalidArgumentError(
                f"segment_size {segment_size!r} is outside "
                f"{lib.LS_MIN_SEGMENT_SIZE}..{lib.LS_MAX_SEGMENT_SIZE} bytes"
            )
        self._segment_size = segment_size
        self._log: LogStore | None = None
        self._state: DurableState | None = None
        self._failed = False
        self._closed = False
        self._snap: _SnapshotInfo | None = None
        self._recv: _Receiving | None = None  # a snapshot being received (snapshot.recv)
        self._hard_state = HardState()
        # (index, term) of the last entry, once known: the term the next append must not go
        # below, without a read per save.
        self._last_term: tuple[int, int] | None = None
        try:
            makedirs_durable(self._path)
        except OSError as exc:
            raise storage_error(exc, f"cannot create {self._path}") from None
        # The hard state file is made before the log and never removed, so a log or snapshot
        # without it lost the term and vote: restarted with no vote, the node could vote twice
        # in a term. (Looked for in this order, a concurrent creator is never mistaken for it.)
        hard_state_file = self._file(_HARD_STATE_FILE)
        found = [n for n in (_LOG_DIR, _OLD_LOG_DIR, _SNAPSHOT_FILE)
                 if os.path.lexists(self._file(n))]
        if found and not os.path.lexists(hard_state_file):
            raise errors.CorruptStateError(
                f"hard state file {hard_state_file} is missing beside {', '.join(found)}: the "
                "term and vote it held are lost",
                hard_state_file,
            )
        # The hard state's lock is the lock of the whole directory: it is taken first and held
        # while the log is closed and recreated by a snapshot install.
        self._state = DurableState(hard_state_file)
        try:
            self._recover()
        except BaseException:
            self._close_handles(sync=False)
            raise

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hard_state(self) -> HardState:
        """The hard state as stored (see :meth:`initial_state` for the one to restore)."""
        self._open_handles()
        return self._hard_state

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        """The stored snapshot's metadata, or ``None`` without a snapshot."""
        self._open_handles()
        return None if self._snap is None else self._snap.meta

    @property
    def first_index(self) -> int:
        """The first entry the storage serves: the snapshot index + 1."""
        self._open_handles()
        return self._snapshot_index() + 1

    @property
    def last_index(self) -> int:
        """The last entry (the snapshot index when no entry follows the snapshot)."""
        log, _ = self._open_handles()
        return max(log.last_position, self._snapshot_index())

    def statistics(self) -> RaftStorageStats:
        log, _ = self._open_handles()
        snap = self._snap
        s = log.stats()
        return RaftStorageStats(
            log=s,
            first_index=self._snapshot_index() + 1,
            last_index=max(s.next_position - 1, self._snapshot_index()),
            snapshot_index=0 if snap is None else snap.meta.index,
            snapshot_term=0 if snap is None else snap.meta.term,
            snapshot_bytes=0 if snap is None else snap.header_size + snap.data_size,
            hard_state=self._hard_state,
            failed=self._failed or s.failed,
        )

    # ------------------------------------------------------------------ reading

    def initial_state(self, bootstrap: ConfState = _NO_MEMBERS, *,
                      snapshot_data: bool = True) -> RestoredState:
        """What the core restarts from: the hard state, the snapshot and the entries after it.

        Args:
            bootstrap: the membership to start with when there is no snapshot (returned as
                ``conf``; with a snapshot, the core takes the snapshot's).
            snapshot_data: False: a full snapshot's data is verified but left in its file
                (``data`` None; see :meth:`mapped_snapshot`), not read onto the heap.

        Returns:
            A :class:`raft.core.RestoredState` whose entries are contiguous from the snapshot
            index + 1 and carry their indexes. Its hard state is the stored one, except that the
            term is raised to the last entry's (or the snapshot's) if that is newer, with no vote
            (see the module doc), and the commit index is at least the snapshot index.

        Raises:
            CorruptStateError: the snapshot file is corrupt (``path`` names it).
            CorruptLogError: a log record is corrupt.
            InconsistentStateError: the log's terms go backwards, or disagree with the snapshot.
            TypeError: a ``bootstrap`` that is not a ConfState.
            StoreClosedError.
        """
        log, _ = self._open_handles()
        if not isinstance(bootstrap, ConfState):
            raise TypeError(
                f"the bootstrap membership must be a ConfState, not {type(bootstrap).__name__}")
        snapshot = self.read_snapshot(data=snapshot_data)
        s_index = 0 if snapshot is None else snapshot.meta.index
        s_term = 0 if snapshot is None else snapshot.meta.term
        entries: list[Entry] = []
        prev_term = s_term
        start = max(log.first_position, s_index + 1)
        if snapshot is not None and log.first_position <= s_index <= log.last_position:
            start = s_index  # the entry the snapshot ends with is still in the log: check it
        for pos, record in log.scan(start):
            entry = decode_entry(pos, record, log.path)
            if pos == s_index:
                if entry.term != s_term:
                    raise InconsistentStateError(
                        f"log {log.path}: entry {pos} has term {entry.term}, but the snapshot "
                        f"ending there has term {s_term}",
                        log.path,
                    )
                continue
            if entry.term < prev_term:
                raise InconsistentStateError(
                    f"log {log.path}: entry {pos} has term {entry.term}, below the term "
                    f"{prev_term} before it",
                    log.path,
                )
            prev_term = entry.term
            entries.append(entry)
        hs = self._hard_state
        if prev_term > hs.term:
            hs = HardState(prev_term, NONE, hs.commit)
        if hs.commit < s_index:
            hs = HardState(hs.term, hs.vote, s_index)
        return RestoredState(
            hard_state=hs, snapshot=snapshot, entries=tuple(entries), conf=bootstrap
        )

    def read_snapshot(self, *, data: bool = True) -> Snapshot | None:
        """The stored snapshot (metadata and data, checksums verified), or ``None``.

        With ``data`` False the data of a full snapshot is verified but not read (``data``
        None): a snapshot is as large as the state machine's state. A local marker's is.

        Raises:
            CorruptStateError: the file is corrupt (``path`` names it).
            StorageError, StoreClosedError.
        """
        self._open_handles()
        if self._snap is None:
            return None
        path = self._file(_SNAPSHOT_FILE)
        with_data = data or bool(self._snap.flags & FLAG_LOCAL)
        info, content = _read_snapshot(path, with_data=with_data)
        if info is None or info.meta != self._snap.meta:
            raise errors.CorruptStateError(
                f"snapshot file {path} changed while the storage was open", path
            )
        return Snapshot(info.meta, content if with_data else None, bool(info.flags & FLAG_LOCAL))

    @contextlib.contextmanager
    def mapped_snapshot(self) -> Iterator[memoryview]:
        """The stored snapshot's data (checksum verified), mapped read-only for the duration of
        the ``with`` block: the page cache holds it, not the heap, however large it is. Release
        every view taken from it before the block ends.

        Raises:
            InvalidArgumentError: there is no stored snapshot.
            CorruptStateError: the file is corrupt (``path`` names it).
            StorageError, StoreClosedError.
        """
        self._open_handles()
        snap = self._snap
        if snap is None:
            raise errors.InvalidArgumentError(f"raft storage {self._path} holds no snapshot")
        path = self._file(_SNAPSHOT_FILE)
        end = snap.header_size + snap.data_size
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != end:
                    raise errors.CorruptStateError(
                        f"snapshot file {path} changed while the storage was open", path)
                mapped = mmap.mmap(f.fileno(), end, access=mmap.ACCESS_READ)
        except OSError as exc:
            if isinstance(exc, errors.MeridianError):
                raise
            raise storage_error(exc, f"cannot read snapshot {path}") from None
        try:
            with memoryview(mapped) as whole, whole[snap.header_size:] as data:
                header = bytes(whole[: snap.header_size])
                (index,) = struct.unpack_from("<Q", header, 16)
                if index != snap.meta.index:
                    raise errors.CorruptStateError(
                        f"snapshot file {path} changed while the storage was open", path)
                (data_crc,) = _CRC.unpack_from(header, snap.header_size - 8)
                if _masked(crc32c(data)) != data_crc:
                    raise errors.CorruptStateError(
                        f"snapshot file {path}: data checksum mismatch", path, snap.header_size)
                yield data
        finally:
            mapped.close()

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """The entries with ``lo <= index < hi``, read from the log.

        Raises:
            PositionError: the range is not within ``first_index..last_index + 1``.
            TypeError: an index that is not an int.
            CorruptLogError, StoreClosedError.
        """
        log, _ = self._open_handles()
        if (isinstance(lo, bool) or not isinstance(lo, int)
                or isinstance(hi, bool) or not isinstance(hi, int)):
            raise TypeError(
                f"entry indexes must be ints, not {type(lo).__name__} and {type(hi).__name__}")
        first, end = self._snapshot_index() + 1, max(log.next_position, self._snapshot_index() + 1)
        if not first <= lo <= hi <= end:
            raise errors.PositionError(
                f"entries [{lo}, {hi}) are outside the storage's {first}..{end - 1}"
            )
        return [decode_entry(p, r, log.path) for p, r in log.scan(lo, hi)] if lo < hi else []

    # ------------------------------------------------------------------ writing

    def save(
        self,
        *,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        hard_state: HardState | None = None,
        sync: bool = True,
        snapshot_chunks: Sequence[SnapshotChunk] = (),
    ) -> None:
        """Persists one ``Ready``: the snapshot's chunks, the snapshot, then the entries, then
        the hard state.

        Args:
            snapshot: a snapshot received from the leader. It replaces the whole log: after it
                the log is empty and the next entry is ``snapshot.meta.index + 1``. It must be
                newer than the stored snapshot and not older than the stored commit index.
                With ``data`` None (as the core hands it over), it is the snapshot whose
                chunks this save's ``snapshot_chunks`` and earlier ones wrote, all of them;
                else ``data`` holds it whole.
            entries: entries with contiguous indexes, the first at most one past the last
                entry (after ``snapshot``) and after the snapshot index, and terms that never
                go below the term of the entry before them (or the snapshot's). Stored entries from
                ``entries[0].index`` on are removed first (conflict truncation; durable), which
                must not reach the commit index.
            hard_state: stored last, after the entries are synced (so a vote or commit is never
                durable ahead of the log it is based on); skipped when unchanged. Its commit
                index must lie within the log after this save, its term must not go back, and
                within the stored term a stored vote must stay.
            sync: make the entries durable before returning (one fdatasync for the whole batch).
                Without it, appended entries are durable only after a later save that syncs or
                stores a hard state, or :meth:`close`.
            snapshot_chunks: parts of a snapshot being received (``Ready.snapshot_chunks``),
                written first, in order, into ``snapshot.recv``; each follows the one before
                (of this save or an earlier one) or starts a transfer at offset 0. Never synced
                by themselves: the snapshot they make up is, when installed.

        Raises:
            InvalidArgumentError: entries that are not contiguous, leave a gap after the log,
                lie at or below the snapshot, or whose term is below the entry before them; a
                snapshot not newer than the stored one; a chunk
                that does not follow the one before; a snapshot with ``data`` None whose
                chunks were not all written. Nothing was written.
            RaftInvariantError: a change that would lose committed entries, a commit index beyond
                the log, a term going back, or a vote changed within its term. Nothing was
                written.
            RecordTooLargeError: an entry over the record limit. Nothing was written.
            StorageError (DiskFullError for ENOSPC): a write failed; the handle is failed.
            StoreFailedError, StoreClosedError, TypeError.

        Durability: in the order given; see the module doc for what a crash in between leaves.
        """
        log, state = self._usable()
        entries = _check_entries(entries)
        received = self._check_chunks(snapshot_chunks)
        s_index = self._snapshot_index()
        last = max(log.last_position, s_index)
        commit = self._hard_state.commit
        if snapshot is not None:
            _check_snapshot(snapshot, received=True)
            if snapshot.local:
                raise errors.InvalidArgumentError(
                    "a local snapshot is never installed from a leader")
            if snapshot.data is None and received != (snapshot.meta, True):
                raise errors.InvalidArgumentError(
                    f"the snapshot at index {snapshot.meta.index} was not received whole in "
                    "chunks")
            new_index = snapshot.meta.index
            if new_index <= s_index:
                raise errors.InvalidArgumentError(
                    f"a received snapshot at index {new_index} is not newer than the stored "
                    f"snapshot at {s_index}"
                )
            if new_index < commit:
                raise RaftInvariantError(
                    f"installing a snapshot at index {new_index} would discard committed "
                    f"entries up to the commit index {commit}"
                )
            s_index = last = new_index
        if entries:
            first = entries[0].index
            if first <= s_index:
                raise errors.InvalidArgumentError(
                    f"entries from index {first} lie at or below the snapshot index {s_index}"
                )
            if first > last + 1:
                raise errors.InvalidArgumentError(
                    f"entries from index {first} leave a gap after the last entry {last}"
                )
            if first <= last and first <= commit:
                raise RaftInvariantError(
                    f"entries from index {first} would replace committed entries (commit index "
                    f"{commit})"
                )
            lt = self._last_term
            if snapshot is not None:
                _check_follows(entries[0], snapshot.meta.term)
            elif lt is None or lt[0] != first - 1 or entries[0].term < lt[1]:
                _check_follows(entries[0], self._term_at(first - 1))
            last = entries[-1].index
        if hard_state is not None:
            _check_hard_state(hard_state)
            if hard_state.term < self._hard_state.term:
                raise RaftInvariantError(
                    f"hard state term {hard_state.term} is below the stored term "
                    f"{self._hard_state.term}"
                )
            stored_vote = self._hard_state.vote
            if (hard_state.term == self._hard_state.term and stored_vote != NONE
                    and hard_state.vote != stored_vote):
                raise RaftInvariantError(
                    f"hard state vote {hard_state.vote} in term {hard_state.term} replaces the "
                    f"stored vote {stored_vote} of the same term: a node votes once per term"
                )
            if hard_state.commit > last:
                raise RaftInvariantError(
                    f"hard state commit index {hard_state.commit} is beyond the last entry "
                    f"{last} the log will hold"
                )
        records = [encode_entry(e) for e in entries]
        store_hard_state = hard_state is not None and hard_state != self._hard_state
        try:
            for chunk in snapshot_chunks:
                self._write_chunk(chunk)
            if snapshot is not None:
                if snapshot.data is None:
                    self._install_received()
                else:
                    self._write_snapshot(snapshot, FLAG_LOG_RESET)
                self._reset_log(snapshot.meta.index + 1)
                log = self._log
            if entries:
                if entries[0].index <= log.last_position:
                    log.truncate_after(entries[0].index - 1)
                self._last_term = None
                for batch in _batches(records):
                    log.append(batch)
                self._last_term = (entries[-1].index, entries[-1].term)
            if sync or store_hard_state:
                log.sync()  # a no-op when nothing is unsynced
            if store_hard_state:
                state.store(encode_hard_state(hard_state))
                self._hard_state = hard_state
        except BaseException:
            self._failed = True
            raise
        self._drop_receiving_if_passed()

    def append_nowait(self, entries: Sequence[Entry]) -> bool:
        """:meth:`save` of entries alone (no snapshot, no hard state, no sync) for an event
        loop: one write system call, never an fsync. ``False``, with nothing written, when the
        entries do not simply follow the last one (a conflict truncation, which syncs) or need
        a new log segment (whose creation syncs): :meth:`save` them away from the loop. Durable
        once a sync covers them (:meth:`sync_begin`, or a :meth:`save` that syncs).

        Raises what :meth:`save` raises for entries.
        """
        log, _ = self._usable()
        entries = _check_entries(entries)
        if not entries:
            return True
        first = entries[0].index
        if first != max(log.last_position, self._snapshot_index()) + 1:
            return False
        lt = self._last_term
        if lt is None or lt[0] != first - 1 or entries[0].term < lt[1]:
            _check_follows(entries[0], self._term_at(first - 1))
        records = [encode_entry(e) for e in entries]
        framed = sum(map(len, records)) + lib.LS_RECORD_HEADER_SIZE * len(records)
        if framed > MAX_BATCH_SIZE:
            return False
        try:
            if log.append_nowait(records) is None:
                return False
            self._last_term = (entries[-1].index, entries[-1].term)
            return True
        except BaseException:
            self._failed = True
            raise

    def sync_begin(self) -> tuple[int, int] | None:
        """The descriptor to fdatasync to make the appended entries durable, and the last
        index that covers, or ``None`` when they are all durable: see
        :meth:`engine.logstore.LogStore.sync_begin`. Until :meth:`sync_end`, change nothing."""
        log, _ = self._usable()
        return log.sync_begin()

    def sync_end(self, upto: int, sys_errno: int) -> None:
        """Records the outcome of the fdatasync :meth:`sync_begin` asked for (0 or its errno);
        a failure fails the handle (StorageError), as a failed :meth:`save` does."""
        log, _ = self._usable()
        try:
            log.sync_end(upto, sys_errno)
        except BaseException:
            self._failed = True
            raise

    def save_snapshot(self, snapshot: Snapshot, keep: int = 0) -> None:
        """Stores a local compaction snapshot, then drops the log before it.

        The snapshot is durable first; then whole log segments whose entries all lie at or
        below ``snapshot.meta.index - keep`` are dropped (entries after the snapshot index are
        never dropped). A segment at a time: some entries at or below it may stay on disk.

        Args:
            snapshot: the state machine's snapshot at an index in the log (normally the applied
                index), not older than the stored snapshot; its term must be that entry's.
            keep: entries at or below the snapshot index to keep (for slow followers).

        Raises:
            InvalidArgumentError: an older snapshot, one beyond the log's last entry, or a
                negative ``keep``. Nothing was written.
            RaftInvariantError: the snapshot's term is not the term of its entry in the log.
            StorageError: a write failed; the handle is failed.
            StoreFailedError, StoreClosedError, TypeError.
        """
        log, _ = self._usable()
        _check_snapshot(snapshot)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise errors.InvalidArgumentError(f"keep must be an int >= 0, not {keep!r}")
        meta = snapshot.meta
        s_index = self._snapshot_index()
        last = max(log.last_position, s_index)
        if meta.index < s_index:
            raise errors.InvalidArgumentError(
                f"snapshot at index {meta.index} is older than the stored one at {s_index}"
            )
        if meta.index > last:
            raise errors.InvalidArgumentError(
                f"snapshot at index {meta.index} is beyond the last entry {last}: a local "
                "snapshot covers only entries in the log"
            )
        if meta.index == s_index:
            term = self._snap.meta.term if self._snap is not None else 0
        else:
            term = decode_entry(meta.index, log.read(meta.index), log.path).term
        if meta.term != term:
            raise RaftInvariantError(
                f"snapshot at index {meta.index} has term {meta.term}, but that entry's term is "
                f"{term}"
            )
        try:
            if log.synced_position < meta.index:
                log.sync()  # what the snapshot covers must outlive a crash before it is durable
            self._write_snapshot(snapshot, FLAG_LOCAL if snapshot.local else 0)
            log.drop_before(max(1, meta.index + 1 - keep))
        except BaseException:
            self._failed = True
            raise
        self._drop_receiving_if_passed()

    # ------------------------------------------------------------------ lifetime

    def close(self, *, sync: bool = True) -> None:
        """Syncs the log (unless ``sync=False`` or the handle failed) and closes everything,
        releasing the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_handles(sync=sync and not self._failed)

    def __repr__(self) -> str:
        if self._closed:
            return f"<RaftStorage {self._path!r} closed>"
        if self._log is None:  # a snapshot install failed between closing and making the log
            return f"<RaftStorage {self._path!r} failed, without a log: reopen it>"
        return (
            f"<RaftStorage {self._path!r} snapshot {self._snapshot_index()} "
            f"log ..{self.last_index} {self._hard_state}>"
        )

    # ------------------------------------------------------------------ internals

    def _file(self, name: str) -> str:
        return os.path.join(self._path, name)

    def _term_at(self, index: int) -> int:
        """The term of the entry at ``index``, the snapshot's index or an entry after it in
        the log (0 at index 0)."""
        if index == self._snapshot_index():
            return 0 if self._snap is None else self._snap.meta.term
        if self._last_term is not None and self._last_term[0] == index:
            return self._last_term[1]
        log = self._log
        term = decode_entry(index, log.read(index), log.path).term
        if index == log.last_position:
            self._last_term = (index, term)
        return term

    def _snapshot_index(self) -> int:
        return 0 if self._snap is None else self._snap.meta.index

    def _open_handles(self) -> tuple[LogStore, DurableState]:
        if self._closed or self._log is None or self._state is None:
            if self._closed:
                raise errors.StoreClosedError(f"raft storage {self._path} is closed")
            raise errors.StoreFailedError(
                f"raft storage {self._path} lost its log in a failed write; reopen it"
            )
        return self._log, self._state

    def _usable(self) -> tuple[LogStore, DurableState]:
        handles = self._open_handles()
        if self._failed:
            raise errors.StoreFailedError(
                f"raft storage {self._path} failed an earlier write; reopen it to recover"
            )
        return handles

    def _close_handles(self, *, sync: bool) -> None:
        log, self._log = self._log, None
        state, self._state = self._state, None
        self._drop_receiving()
        try:
            if log is not None:
                log.close(sync=sync)
        finally:
            if state is not None:
                state.close()

    def _recover(self) -> None:
        """Reads the files and finishes whatever a crash interrupted (module doc)."""
        payload = self._state.load()
        self._hard_state = decode_hard_state(payload, self._file(_HARD_STATE_FILE))
        for name in (_SNAPSHOT_TMP, _SNAPSHOT_RECV):
            tmp = self._file(name)
            if os.path.lexists(tmp):
                _unlink_durable(tmp, self._path)  # never renamed: not the snapshot
        info, _ = _read_snapshot(self._file(_SNAPSHOT_FILE), with_data=False)
        self._snap = info
        s_index = self._snapshot_index()
        old = self._file(_OLD_LOG_DIR)
        log_dir = self._file(_LOG_DIR)
        # A missing or empty log directory starts right after the snapshot when a crash
        # explains it: a fresh storage (nothing stored yet), or a log being replaced (the old
        # one is still in log.old, removed only once the new one exists). Otherwise the log was
        # lost, and with it entries this node may have acknowledged.
        if (not os.path.lexists(old) and (payload is not None or info is not None)
                and not _has_segments(log_dir)):
            held = [f"the hard state {self._hard_state}"] if payload is not None else []
            if info is not None:
                held.append(f"the snapshot at index {s_index}")
            raise InconsistentStateError(
                f"log {log_dir} is missing or holds no segment beside {' and '.join(held)}: "
                "the entries it held are lost",
                log_dir,
            )
        self._log = LogStore(
            log_dir, segment_size=self._segment_size, initial_position=s_index + 1
        )
        first, last = self._log.first_position, self._log.last_position
        if info is not None and info.flags & FLAG_LOG_RESET and first <= s_index:
            self._reset_log(s_index + 1)  # the old log of an install cut short (I3)
        elif first > s_index + 1:
            raise InconsistentStateError(
                f"log {log_dir} starts at index {first}, but the snapshot ends at {s_index}: "
                f"entries {s_index + 1}..{first - 1} are missing",
                log_dir,
            )
        elif last < s_index:
            # Every entry the log holds is covered by the snapshot and none follows it: restart
            # the log after the snapshot so that the next append lands at the right index.
            self._reset_log(s_index + 1)
        if os.path.lexists(old):
            _remove_tree_durable(old, self._path)  # a log replaced before a crash
        last = max(self._log.last_position, s_index)
        if self._hard_state.commit > last:
            raise InconsistentStateError(
                f"the hard state in {self._file(_HARD_STATE_FILE)} has commit index "
                f"{self._hard_state.commit}, but the durable log ends at {last} (snapshot "
                f"{s_index}): acknowledged entries were lost",
                log_dir,
            )

    def _write_snapshot(self, snapshot: Snapshot, flags: int) -> None:
        """Makes ``snapshot`` the stored one, durably: temporary file, fsync, rename, fsync of
        the directory (the rename replaces the older snapshot)."""
        data = bytes(snapshot.data) if not isinstance(snapshot.data, bytes) else snapshot.data
        header = encode_snapshot_header(snapshot.meta, data, flags)
        self._commit_snapshot(self._file(_SNAPSHOT_TMP), None, [(header, 0), (data, len(header))])
        self._snap = _SnapshotInfo(snapshot.meta, flags, len(header), len(data))

    def _commit_snapshot(self, tmp: str, fd: int | None,
                         writes: Sequence[tuple[bytes, int]]) -> None:
        """Writes ``writes`` (data, offset) into the file ``tmp`` (created, or already open as
        ``fd``, which this closes), then makes it the stored snapshot: fsync, rename over
        ``snapshot``, fsync of the directory — the commit point."""
        path = self._file(_SNAPSHOT_FILE)
        try:
            if fd is None:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                for data, offset in writes:
                    pwrite_all(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_directory(self._path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # up to a whole state's size, on a disk that may be full
            if isinstance(exc, errors.MeridianError):
                raise
            raise storage_error(exc, f"cannot write snapshot {path}") from None

    def _check_chunks(
        self, chunks: Sequence[SnapshotChunk]
    ) -> tuple[SnapshotMeta, bool] | None:
        """Checks that ``chunks`` continue the transfer received so far; returns the metadata
        of the transfer they leave and whether it is whole (None: none)."""
        recv = self._recv
        at = None if recv is None else (recv.meta, recv.size, recv.written)
        for c in chunks:
            if not isinstance(c, SnapshotChunk) or not isinstance(c.meta, SnapshotMeta):
                raise TypeError(f"expected a SnapshotChunk, not {type(c).__name__}")
            if not isinstance(c.data, (bytes, bytearray, memoryview)):
                raise TypeError(f"chunk data must be bytes, not {type(c.data).__name__}")
            _check_u64("chunk offset", c.offset)
            _check_u64("snapshot size", c.size)
            n = memoryview(c.data).nbytes
            if c.offset + n > c.size:
                raise errors.InvalidArgumentError(
                    f"a chunk of {n} bytes at offset {c.offset} ends beyond the snapshot's "
                    f"{c.size} bytes")
            if c.offset == 0:
                _check_snapshot(Snapshot(c.meta, b""))
            elif at is None or at != (c.meta, c.size, c.offset):
                raise errors.InvalidArgumentError(
                    f"a chunk at offset {c.offset} of the snapshot at index {c.meta.index} does "
                    "not follow the chunks written before it")
            at = (c.meta, c.size, c.offset + n)
        return None if at is None else (at[0], at[1] == at[2])

    def _write_chunk(self, chunk: SnapshotChunk) -> None:
        """Writes a chunk :meth:`_check_chunks` accepted into ``snapshot.recv``; offset 0
        starts the file again."""
        path = self._file(_SNAPSHOT_RECV)
        try:
            if chunk.offset == 0:
                self._drop_receiving()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                self._recv = _Receiving(chunk.meta, chunk.size, fd)
            recv = self._recv
            pwrite_all(recv.fd, chunk.data, recv.header_size + chunk.offset)
        except OSError as exc:
            self._drop_receiving()  # a later chunk must not continue a file with a hole
            with contextlib.suppress(OSError):
                os.unlink(path)  # up to a whole state's size, on a disk that may be full
            if isinstance(exc, errors.MeridianError):
                raise
            raise storage_error(exc, f"cannot write snapshot {path}") from None
        recv.crc = crc32c(chunk.data, recv.crc)
        recv.written += memoryview(chunk.data).nbytes

    def _install_received(self) -> None:
        """Makes the snapshot received whole in ``snapshot.recv`` (:meth:`save` checked that it
        is) the stored one, durably: its header, then :meth:`_commit_snapshot`."""
        recv, self._recv = self._recv, None
        header = _snapshot_header(recv.meta, recv.size, recv.crc, FLAG_LOG_RESET)
        self._commit_snapshot(self._file(_SNAPSHOT_RECV), recv.fd, [(header, 0)])
        self._snap = _SnapshotInfo(recv.meta, FLAG_LOG_RESET, recv.header_size, recv.size)

    def _drop_receiving(self) -> None:
        """Forgets the transfer being received (its file stays until the next one starts or
        the storage is opened again)."""
        recv, self._recv = self._recv, None
        if recv is not None:
            os.close(recv.fd)

    def _drop_receiving_if_passed(self) -> None:
        """Removes a transfer that can no longer complete: the core takes no chunk of a
        snapshot at or below its commit index, so once the stored commit index or snapshot
        reaches it (the node was caught up otherwise), the rest never comes."""
        recv = self._recv
        if recv is not None and recv.meta.index <= max(self._hard_state.commit,
                                                       self._snapshot_index()):
            self._drop_receiving()
            with contextlib.suppress(OSError):
                os.unlink(self._file(_SNAPSHOT_RECV))  # not renamed: never the snapshot

    def _reset_log(self, next_index: int) -> None:
        """Replaces the log by an empty one whose next entry is ``next_index``, durably: the
        old directory is renamed away before the new one is made, so a crash leaves the old
        log whole, no log, or the new one (module doc)."""
        log_dir, old = self._file(_LOG_DIR), self._file(_OLD_LOG_DIR)
        log, self._log = self._log, None
        self._last_term = None
        try:
            if log is not None:
                log.close(sync=False)  # its entries are being discarded
            if os.path.lexists(old):
                _remove_tree_durable(old, self._path)
            if os.path.lexists(log_dir):
                os.rename(log_dir, old)
                fsync_directory(self._path)
        except OSError as exc:
            if isinstance(exc, errors.MeridianError):
                raise
            raise storage_error(exc, f"cannot replace log {log_dir}") from None
        self._log = LogStore(
            log_dir, segment_size=self._segment_size, initial_position=next_index
        )
        if self._log.first_position != next_index:  # pragma: no cover - a fresh directory
            raise InconsistentStateError(
                f"new log {log_dir} starts at {self._log.first_position}, not {next_index}",
                log_dir,
            )
        _remove_tree_durable(old, self._path)


# ============================================================ helpers


def _check_entries(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    entries = tuple(entries)
    prev: Entry | None = None
    for e in entries:
        # The common case in a few comparisons (the leader checks every proposal here); the
        # checks below say what is wrong with any other.
        if (type(e) is Entry and type(e.term) is int and type(e.index) is int
                and type(e.data) is bytes and type(e.type) is EntryType
                and 1 <= e.index < 2**63 and 0 <= e.term <= _U64_MAX
                and len(e.data) <= _MAX_ENTRY_DATA
                and (prev is None or (e.index == prev.index + 1 and e.term >= prev.term))):
            prev = e
            continue
        if not isinstance(e, Entry):
            raise TypeError(f"expected an Entry, not {type(e).__name__}")
        for name in ("term", "index"):
            value = getattr(e, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"entry {name} must be an int, not {type(value).__name__}")
        if not (1 <= e.index < 2**63 and 0 <= e.term <= _U64_MAX):
            raise errors.InvalidArgumentError(f"entry index or term out of range: {e}")
        if not isinstance(e.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"entry data must be bytes, not {type(e.data).__name__}")
        try:
            EntryType(e.type)
        except ValueError:
            raise errors.InvalidArgumentError(
                f"entry {e.index} has unknown type {e.type!r}"
            ) from None
        if memoryview(e.data).nbytes > _MAX_ENTRY_DATA:
            raise errors.RecordTooLargeError(
                f"entry {e.index} holds {memoryview(e.data).nbytes} bytes; the limit is "
                f"{_MAX_ENTRY_DATA}"
            )
        if prev is not None:
            if e.index != prev.index + 1:
                raise errors.InvalidArgumentError(
                    f"entries are not contiguous: {prev.index} is followed by {e.index}"
                )
            if e.term < prev.term:
                raise errors.InvalidArgumentError(
                    f"entry {e.index} has term {e.term}, below the term {prev.term} before it"
                )
        prev = e
    return entries


def _check_follows(entry: Entry, prev_term: int) -> None:
    """Checks that ``entry`` may follow an entry of term ``prev_term``: terms never go back
    along the log (a log whose terms do is refused on open)."""
    if entry.term < prev_term:
        raise errors.InvalidArgumentError(
            f"entry {entry.index} has term {entry.term}, below the term {prev_term} of the "
            "entry before it"
        )


def _check_u64(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not (0 <= value <= _U64_MAX):
        raise errors.InvalidArgumentError(f"{name} {value} is outside 0..2**64-1")


def _check_hard_state(hs: HardState) -> None:
    if not isinstance(hs, HardState):
        raise TypeError(f"expected a HardState, not {type(hs).__name__}")
    _check_u64("hard state term", hs.term)
    _check_u64("hard state vote", hs.vote)
    _check_u64("hard state commit", hs.commit)


def _check_snapshot(snapshot: Snapshot, *, received: bool = False) -> None:
    """Checks a snapshot's types and ranges; ``received``: its data may be None (one received
    in chunks, see :meth:`RaftStorage.save`)."""
    if not isinstance(snapshot, Snapshot) or not isinstance(snapshot.meta, SnapshotMeta):
        raise TypeError(f"expected a Snapshot, not {type(snapshot).__name__}")
    meta = snapshot.meta
    _check_u64("snapshot index", meta.index)
    _check_u64("snapshot term", meta.term)
    if meta.index < 1 or meta.index >= 2**63:
        raise errors.InvalidArgumentError(f"snapshot index {meta.index} is not >= 1")
    if not isinstance(meta.conf, ConfState):
        raise TypeError(f"snapshot conf must be a ConfState, not {type(meta.conf).__name__}")
    members = (*meta.conf.voters, *meta.conf.learners)
    for node in members:
        _check_u64("node id", node)
    if len(members) > MAX_MEMBERS:
        raise errors.InvalidArgumentError(f"{len(members)} members; the limit is {MAX_MEMBERS}")
    if received and snapshot.data is None:
        return
    if not isinstance(snapshot.data, (bytes, bytearray, memoryview, mmap.mmap)):
        raise TypeError(f"snapshot data must be bytes, not {type(snapshot.data).__name__}")


def _batches(records: list[bytes]) -> Iterable[list[bytes]]:
    """Splits records into LogStore batches (each at most MAX_BATCH_SIZE framed bytes)."""
    batch: list[bytes] = []
    size = 0
    for r in records:
        framed = len(r) + lib.LS_RECORD_HEADER_SIZE
        if batch and size + framed > MAX_BATCH_SIZE:
            yield batch
            batch, size = [], 0
        batch.append(r)
        size += framed
    if batch:
        yield batch


def _read_snapshot(path: str, *, with_data: bool) -> tuple[_SnapshotInfo | None, bytes]:
    """Reads and verifies a snapshot file: its info (``None`` if there is no file) and, if
    ``with_data``, its data. Without it the data's checksum is still verified, a chunk at a
    time.

    Raises:
        CorruptStateError naming the file, StorageError.
    """

    def corrupt(why: str, offset: int = 0) -> errors.CorruptStateError:
        return errors.CorruptStateError(f"snapshot file {path}: {why}", path, offset)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, b""
    except OSError as exc:
        raise storage_error(exc, f"cannot open snapshot {path}") from None
    try:
        size = os.fstat(fd).st_size
        fixed = pread_all(fd, _SNAP_FIXED.size, 0)
        if len(fixed) < _SNAP_FIXED.size:
            raise corrupt(f"{size} bytes, shorter than a header")
        magic, version, flags, index, term, n, nv, nl = _SNAP_FIXED.unpack(fixed)
        if magic != SNAPSHOT_MAGIC:
            raise corrupt("bad magic")
        # Before anything laid out after it: another version's header may differ in size and
        # fields, so its member counts and checksums mean nothing to this code.
        if version != SNAPSHOT_VERSION:
            raise corrupt(f"format version {version}; this code reads {SNAPSHOT_VERSION}", 8)
        if nv + nl > MAX_MEMBERS:
            raise corrupt(f"{nv} voters and {nl} learners: a damaged header")
        header_size = _SNAP_FIXED.size + 8 * (nv + nl) + 2 * _CRC.size
        header = pread_all(fd, header_size, 0)
        if len(header) < header_size:
            raise corrupt(f"{size} bytes, shorter than its {header_size}-byte header")
        (data_crc,) = _CRC.unpack_from(header, header_size - 8)
        (header_crc,) = _CRC.unpack_from(header, header_size - 4)
        if header_crc != _masked(crc32c(header[: header_size - 4])):
            raise corrupt("header checksum mismatch")
        if flags & ~(FLAG_LOG_RESET | FLAG_LOCAL) or flags == FLAG_LOG_RESET | FLAG_LOCAL:
            raise corrupt(f"unknown flags {flags:#x}", 12)
        if index < 1:
            raise corrupt("index 0", 16)
        if index >= 2**63:
            raise corrupt(f"index {index} is beyond the largest log index {2**63 - 1}", 16)
        if size != header_size + n:
            raise corrupt(
                f"{size} bytes, but its header says {header_size} + {n} of data", header_size
            )
        ids = struct.unpack_from(f"<{nv + nl}Q", header, _SNAP_FIXED.size)
        try:
            conf = ConfState(tuple(ids[:nv]), tuple(ids[nv:]))
        except ConfChangeError as exc:
            raise corrupt(str(exc), _SNAP_FIXED.size) from None
        crc = 0
        chunks = []
        offset = header_size
        while offset < size:
            chunk = pread_all(fd, min(_READ_CHUNK, size - offset), offset)
            if not chunk:
                raise corrupt("the file shrank while being read", offset)
            crc = crc32c(chunk, crc)
            if with_data:
                chunks.append(chunk)
            offset += len(chunk)
        if _masked(crc) != data_crc:
            raise corrupt("data checksum mismatch", header_size)
    except OSError as exc:
        if isinstance(exc, errors.MeridianError):
            raise
        raise storage_error(exc, f"cannot read snapshot {path}") from None
    finally:
        os.close(fd)
    info = _SnapshotInfo(SnapshotMeta(index, term, conf), flags, header_size, n)
    return info, b"".join(chunks)


def _has_segments(log_dir: str) -> bool:
    """Whether the log directory holds a segment (``NNNN.log``, native/FORMAT.md): a log
    always keeps one once made, even when it holds no entry."""
    try:
        return any(name.endswith(".log") for name in os.listdir(log_dir))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise storage_error(exc, f"cannot list log {log_dir}") from None


def _unlink_durable(path: str, parent: str) -> None:
    try:
        os.unlink(path)
        fsync_directory(parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(exc, f"cannot remove {path}") from None


def _remove_tree_durable(path: str, parent: str) -> None:
    """Removes a discarded log directory. Its removal need not be durable to be safe (open
    removes it again), but the directory is synced so that it does not come back."""
    try:
        shutil.rmtree(path)
        fsync_directory(parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(exc, f"cannot remove {path}") from None
