"""The log store: Meridian's segmented, checksummed, append-only log (ARCH §2.1).

The bytes are handled by C (``native/logstore.c``; the format is ``native/FORMAT.md``); this
module is the Python face of it. A record is an opaque byte string; positions are dense integers
handed out by :meth:`LogStore.append`, starting at ``initial_position`` (1 by default, the way
Raft numbers its entries).

Example::

    with LogStore.open("/var/lib/meridian/raft-7") as log:
        positions = log.append([b"a", b"b"])   # range(1, 3); one write system call
        log.sync()                             # durable from here on
        assert log.read(positions[0]) == b"a"
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from . import errors
from ._fs import makedirs_durable, storage_error
from ._native import check, ffi, lib, new_error
from ._resource import Resource

__all__ = ["LogStore", "LogStats", "DEFAULT_SEGMENT_SIZE", "MAX_RECORD_SIZE", "MAX_BATCH_SIZE"]

DEFAULT_SEGMENT_SIZE = 64 << 20
MAX_RECORD_SIZE: int = lib.LS_MAX_RECORD_SIZE
MAX_BATCH_SIZE: int = lib.LS_MAX_BATCH_SIZE
_SCAN_CHUNK_BYTES = 1 << 20
_SCAN_CHUNK_RECORDS = 8192


@dataclass(frozen=True, slots=True)
class LogStats:
    """A snapshot of a store's counters.

    Invariant: ``first_position - 1 <= synced_position <= next_position - 1``.
    """

    first_position: int
    next_position: int
    synced_position: int
    segments: int
    bytes: int
    failed: bool


class LogStore(Resource):
    """A directory of log segments, opened exclusively.

    Thread-safety: every method may be called from any thread; calls are serialized by a lock
    and run without the GIL while in C, so a blocking ``sync()`` in one thread lets others run.
    Durability: :meth:`append` is durable only once :meth:`sync` returns (or :meth:`close`);
    :meth:`truncate_after` and :meth:`drop_before` are durable when they return.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        initial_position: int = 1,
        create: bool = True,
    ) -> None:
        """Opens the log in ``path``, recovering it, or creates it.

        Args:
            path: the log's directory; created (with parents) when ``create`` is true.
            segment_size: bytes preallocated for each new segment
                (``MIN_SEGMENT_SIZE``..``MAX_SEGMENT_SIZE``).
            initial_position: position of the first record of a new, empty log (>= 1).
            create: whether a missing directory may be created.

        Raises:
            StoreLockedError: another handle has the directory open.
            CorruptLogError: a segment is corrupt (its ``path`` and ``offset`` say where);
                a torn tail is not corruption and is silently cut off.
            StorageError: the file system refused (``errno`` says why).
            InvalidArgumentError: a size or position out of range.
        """
        self._path = os.fspath(path)
        if not isinstance(segment_size, int) or not isinstance(initial_position, int):
            raise errors.InvalidArgumentError("segment_size and initial_position must be ints")
        if not (lib.LS_MIN_SEGMENT_SIZE <= segment_size <= lib.LS_MAX_SEGMENT_SIZE):
            raise errors.InvalidArgumentError(
                f"segment_size {segment_size} is outside "
                f"{lib.LS_MIN_SEGMENT_SIZE}..{lib.LS_MAX_SEGMENT_SIZE} bytes"
            )
        if not (1 <= initial_position < 2**63):
            raise errors.InvalidArgumentError(f"initial_position {initial_position} is not >= 1")
        if create:
            try:
                makedirs_durable(self._path)
            except OSError as exc:
                raise storage_error(exc, f"cannot create log directory {self._path}") from None
        self._lock = threading.Lock()
        # Scratch for calls made under the lock: allocating them per call costs more than the
        # append of a small batch.
        self._err = new_error()
        self._u64 = ffi.new("uint64_t *")
        self._u32 = ffi.new("uint32_t *")
        self._fd = ffi.new("int *")
        self._sbuf = ffi.new("struct ls_stats *")
        self._rbuf = ffi.new("uint8_t[]", 1 << 16)
        self._st = None
        out = ffi.new("struct ls_store **")
        err = new_error()
        check(lib.ls_open(os.fsencode(self._path), segment_size, initial_position, out, err), err)
        self._st = out[0]


    # ------------------------------------------------------------------ state


    @property
    def closed(self) -> bool:
        return self._st is None

    def stats(self) -> LogStats:
        """The store's counters now: first, next and synced positions, segments, bytes, and
        whether an earlier write or sync failed (see :class:`LogStats`)."""
        with self._lock:
            s = self._stats()
            return LogStats(
                s.first_pos, s.next_pos, s.synced_pos, s.segments, s.bytes, bool(s.failed)
            )

    @property
    def first_position(self) -> int:
        """The first readable position (== ``next_position`` when the log is empty)."""
        with self._lock:
            return self._stats().first_pos

    @property
    def next_position(self) -> int:
        """The position the next appended record will get."""
        with self._lock:
            return self._stats().next_pos

    @property
    def last_position(self) -> int:
        """The position of the last record (``first_position - 1`` when empty)."""
        return self.next_position - 1

    @property
    def synced_position(self) -> int:
        """Every record at or below this position is durable."""
        with self._lock:
            return self._stats().synced_pos

    def _stats(self):
        """The store's counters, in a buffer the next call reuses: read them under the lock."""
        st = self._handle()
        lib.ls_get_stats(st, self._sbuf)
        return self._sbuf

    def _handle(self):
        if self._st is None:
            raise errors.StoreClosedError(f"log store {self._path} is closed")
        return self._st

    # ------------------------------------------------------------------ writing

    def append(self, records: Iterable[bytes]) -> range:
        """Appends records with one write system call. Not durable until :meth:`sync`.

        Args:
            records: byte strings (``bytes``, ``bytearray`` or ``memoryview``), at most
                ``MAX_RECORD_SIZE`` bytes each and ``MAX_BATCH_SIZE`` framed in all.

        Returns:
            The positions the records got, in order.

        Raises:
            RecordTooLargeError, DiskFullError (nothing appended; the store stays usable),
            StorageError, StoreFailedError, StoreClosedError, TypeError (not bytes).
        """
        return self._append(records, lib.ls_append)

    def append_nowait(self, records: Iterable[bytes]) -> range | None:
        """:meth:`append` for an event loop: one write system call and never an fsync.

        Returns ``None``, having changed nothing, when the batch does not fit the last segment:
        :meth:`append` would sync that segment and create the next one, which blocks; call it
        away from the loop. Raises what :meth:`append` raises.
        """
        return self._append(records, lib.ls_append_nowait)

    def _append(self, records: Iterable[bytes], append_fn) -> range | None:
        if not isinstance(records, (list, tuple)):
            records = list(records)
        if not records:
            return range(self.next_position, self.next_position)
        data = b"".join(records)
        try:
            lens = array("I", map(len, records))
        except OverflowError:
            raise errors.RecordTooLargeError(
                f"a record is over the {MAX_RECORD_SIZE}-byte limit"
            ) from None
        if sum(lens) != len(data):  # memoryviews whose items are not bytes
            lens = array("I", (memoryview(r).nbytes for r in records))
        with self._lock:
            st = self._handle()
            rc = append_fn(
                st,
                ffi.from_buffer("uint8_t[]", data),
                ffi.from_buffer("uint32_t[]", lens),
                len(lens),
                self._u64,
                self._err,
            )
            if rc == lib.LS_ERR_AGAIN:
                return None
            if rc:
                check(rc, self._err)
            first = self._u64[0]
        return range(first, first + len(lens))

    def sync(self) -> None:
        """Makes every appended record durable (fdatasync).

        Raises:
            StorageError: the sync failed; the store is then failed (see StoreFailedError).
            StoreFailedError, StoreClosedError.
        """
        with self._lock:
            rc = lib.ls_sync(self._handle(), self._err)
            if rc:
                _check_sync(rc, self._err)

    def sync_begin(self) -> tuple[int, int] | None:
        """The first half of :meth:`sync`, for a caller that runs the fdatasync itself (in a
        thread of its own, see :class:`engine._native.Syncer`): the descriptor to fdatasync and
        the last position that makes durable, or ``None`` when everything is durable already.
        Until :meth:`sync_end`, append, truncate, drop and close nothing; reads are fine.

        Raises:
            StoreFailedError, StoreClosedError.
        """
        fd = self._fd
        with self._lock:
            rc = lib.ls_sync_begin(self._handle(), fd, self._u64, self._err)
            if rc:
                check(rc, self._err)
            upto = self._u64[0]
            fd = fd[0]
        return None if fd < 0 else (fd, upto)

    def sync_end(self, upto: int, sys_errno: int) -> None:
        """The second half of :meth:`sync`: records the fdatasync's outcome (0, or its errno).

        Raises:
            StorageError: ``sys_errno`` was not 0; the store is then failed, as after a failed
                :meth:`sync`.
            StoreFailedError, StoreClosedError, InvalidArgumentError (``upto`` beyond the log).
        """
        with self._lock:
            rc = lib.ls_sync_end(self._handle(), _position(upto), sys_errno, self._err)
            if rc:
                _check_sync(rc, self._err)

    def truncate_after(self, position: int) -> None:
        """Durably removes every record after ``position``.

        ``position`` may be ``first_position - 1`` (remove all) up to ``last_position`` (no-op).
        This is Raft's conflict truncation: removed records can never come back after a crash.
        """
        err = new_error()
        with self._lock:
            rc = lib.ls_truncate_after(self._handle(), _position(position), err)
        check(rc, err)

    def drop_before(self, position: int) -> None:
        """Durably removes whole segments all of whose records lie before ``position``.

        The segment holding ``position`` and the last segment stay, so ``first_position`` may
        remain below ``position``: compaction frees space a segment at a time.
        """
        err = new_error()
        with self._lock:
            rc = lib.ls_drop_before(self._handle(), _position(position), err)
        check(rc, err)

    # ------------------------------------------------------------------ reading

    def read(self, position: int) -> bytes:
        """The record at ``position``, checksum verified.

        Raises:
            PositionError: outside ``first_position..last_position``.
            CorruptLogError: the record's bytes changed on disk since they were written.
        """
        position = _position(position)
        err = self._err
        with self._lock:
            st = self._handle()
            check(lib.ls_record_len(st, position, self._u32, err), err)
            size = self._u32[0]
            if len(self._rbuf) < size:
                self._rbuf = ffi.new("uint8_t[]", size)
            check(lib.ls_read(st, position, self._rbuf, len(self._rbuf), err), err)
            return ffi.buffer(self._rbuf, size)[:]

    def scan(self, start: int | None = None, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Yields ``(position, record)`` for ``start <= position < end`` in order.

        ``start`` defaults to the first position and ``end`` to the end of the log as it is when
        each chunk is read (records appended during the scan are included). Records are read a
        chunk (about 1 MiB) at a time with one read system call per chunk.

        Raises:
            PositionError: ``start`` or ``end`` outside the log.
        """
        err = new_error()
        lens = ffi.new("uint32_t[]", _SCAN_CHUNK_RECORDS)
        n_out = ffi.new("size_t *")
        with self._lock:
            s = self._stats()
            pos = s.first_pos if start is None else _position(start)
            if end is not None and not (pos <= end <= s.next_pos):
                raise errors.PositionError(
                    f"scan end {end} is outside {pos}..{s.next_pos} (one past the last record)"
                )
            if pos > s.next_pos or (pos < s.first_pos and pos != s.next_pos):
                raise errors.PositionError(
                    f"scan start {pos} is outside the log ({s.first_pos}..{s.next_pos - 1})"
                )
        while True:
            with self._lock:
                st = self._handle()
                stop = self._stats().next_pos if end is None else end
                if pos >= stop:
                    return
                size = ffi.new("uint32_t *")
                check(lib.ls_record_len(st, pos, size, err), err)
                cap = max(_SCAN_CHUNK_BYTES, size[0])
                if len(self._rbuf) < cap:
                    self._rbuf = ffi.new("uint8_t[]", cap)
                want = min(stop - pos, _SCAN_CHUNK_RECORDS)
                rc = lib.ls_read_range(st, pos, want, self._rbuf, cap, lens, n_out, err)
                check(rc, err)
                count = n_out[0]
                sizes = ffi.unpack(lens, count)
                blob = ffi.buffer(self._rbuf, sum(sizes))[:]
            offset = 0
            for size_i in sizes:
                yield pos, blob[offset : offset + size_i]
                offset += size_i
                pos += 1

    # ------------------------------------------------------------------ lifetime

    def close(self, *, sync: bool = True) -> None:
        """Syncs (unless ``sync=False`` or the store has failed) and closes. Idempotent."""
        with self._lock:
            st = self._st
            if st is None:
                return
            try:
                if sync:
                    out = ffi.new("struct ls_stats *")
                    lib.ls_get_stats(st, out)
                    if not out.failed:
                        err = new_error()
                        check(lib.ls_sync(st, err), err)
            finally:
                self._st = None
                lib.ls_close(st)


    def __del__(self) -> None:
        st = getattr(self, "_st", None)
        if st is not None:
            self._st = None
            lib.ls_close(st)

    def __repr__(self) -> str:
        if self._st is None:
            return f"<LogStore {self._path!r} closed>"
        s = self.stats()
        return (
            f"<LogStore {self._path!r} positions {s.first_position}..{s.next_position - 1} "
            f"synced {s.synced_position}>"
        )


def _position(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a log position is an int, not {type(value).__name__}")
    if not (0 <= value < 2**64):
        raise errors.PositionError(f"position {value} is outside 0..2**64-1")
    return value


def _check_sync(rc: int, err) -> None:
    """check() for a sync: a failed fdatasync fails the store, even with ENOSPC, so it is a
    StorageError and never DiskFullError (whose contract is a store that stays usable)."""
    try:
        check(rc, err)
    except errors.DiskFullError as exc:
        raise errors.StorageError(exc.errno, str(exc)) from None
