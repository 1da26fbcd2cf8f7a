"""Durable small state: a tiny double-buffered file for Raft's term, vote and commit (ARCH §2.2).

The file holds two fixed-size *slots*, like LMDB's two meta pages. Each :meth:`DurableState.store`
writes the slot that does *not* hold the current value, syncs it, and only then counts it as
current; on open the valid slot with the higher sequence number wins. A write torn by a crash
can only damage the slot being written, and the other slot still holds the value of the previous
store — exactly what the caller was last told was durable.

Slot format (all integers little-endian; slot ``i`` starts at byte ``i * slot_size``)::

    offset   size  field
    0        8     magic  b"MERIDSTA"
    8        4     format version, u32 (1)
    12       4     slot size in bytes, u32 (the same in both slots; fixed at creation)
    16       8     sequence number s, u64 (a slot with sequence s is slot s % 2)
    24       4     payload length n, u32: at most slot_size - 32, or 0xffffffff for "nothing
                   stored" (then there is no payload; only sequence 0 has it, and only it)
    28       n     payload
    28+n     4     masked CRC-32C (LevelDB's mask) of bytes [0, 28+n) of the slot
    32+n     ...   zero fill up to slot_size (not covered by the CRC; never read)

A slot is *valid* when its magic, version, slot size, sequence parity and length are right and
its CRC matches; *empty* when all of its ``slot_size`` bytes are zero; *bad* otherwise (torn,
short or damaged).

A new file is made whole before anyone can see it: written under ``NAME.tmp`` with slot 0 holding
sequence 0 ("nothing stored") and slot 1 empty, fsynced, renamed to ``NAME``, and the directory
fsynced. So a crash while creating leaves no file (or a stray ``NAME.tmp``, reused next time),
and a crash during the very first store leaves slot 0 to fall back on, like any later store.

Worked example: slot size 4096. The new file's slot 0::

    0000  4d 45 52 49 44 53 54 41  01 00 00 00 00 10 00 00   "MERIDSTA", version 1, 4096
    0010  00 00 00 00 00 00 00 00  ff ff ff ff 66 c5 eb 51   seq 0, nothing stored, CRC
    0020  00 00 ...                                           zeros to 0x0fff; slot 1 all zero

``store(b"term=3")`` gets sequence 1, so it goes to slot 1, at byte 4096 (0x1000)::

    1000  4d 45 52 49 44 53 54 41  01 00 00 00 00 10 00 00   "MERIDSTA", version 1, 4096
    1010  01 00 00 00 00 00 00 00  06 00 00 00 74 65 72 6d   seq 1, length 6, "term"
    1020  3d 33 f7 5c 03 40 00 00  ...                        "=3", CRC 0x40035cf7, zeros

The next store (sequence 2) overwrites slot 0 and leaves slot 1 alone; the one after (3)
overwrites slot 1, and so on.

On open: the valid slot with the higher sequence number is current. No valid slot at all is
:class:`CorruptStateError` naming the file — never a silent "nothing stored", which could make a
node forget its vote. A slot that is empty or bad beside a valid one is ignored (the next store
overwrites it).

Caveats. Two slots cannot tell a torn write from damage that happens later: if the newer slot is
damaged after its store returned, open falls back to the older value (LMDB has the same limit).
The slot size is fixed when the file is created; a multiple of 4096 (the default) keeps each
slot in pages of its own, so that writing one slot never rewrites a page of the other.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import NoReturn

from . import errors
from ._fs import drop_cached_pages, fsync_directory, pread_all, pwrite_all, storage_error
from ._native import crc32c_masked
from ._resource import Resource

__all__ = [
    "DurableState",
    "DEFAULT_SLOT_SIZE",
    "MIN_SLOT_SIZE",
    "MAX_SLOT_SIZE",
    "SLOT_HEADER_SIZE",
    "SLOT_OVERHEAD",
    "MAGIC",
    "FORMAT_VERSION",
    "encode_slot",
]

MAGIC = b"MERIDSTA"
FORMAT_VERSION = 1
DEFAULT_SLOT_SIZE = 4096
MIN_SLOT_SIZE = 512  # one disk sector
MAX_SLOT_SIZE = 16 << 20
NOTHING_STORED = 0xFFFFFFFF  # the payload length of sequence 0
_HEADER = struct.Struct("<8sIIQI")  # magic, version, slot size, sequence, payload length
SLOT_HEADER_SIZE = _HEADER.size  # 28
_CRC = struct.Struct("<I")
SLOT_OVERHEAD = SLOT_HEADER_SIZE + _CRC.size  # 32: the largest payload is slot size - 32
_MAX_SEQUENCE = 2**64 - 1


@dataclass(frozen=True, slots=True)
class _Slot:
    """One parsed slot.

    ``status`` is "valid", "empty", "bad", or "foreign" (written by another format version,
    whose layout past the version field this code cannot judge); ``sequence``, ``payload``
    (None: nothing stored) and ``slot_size`` only when valid.
    """

    status: str
    sequence: int = 0
    payload: bytes | None = None
    slot_size: int = 0
    why: str = ""


def _valid_slot_size(n: int) -> bool:
    return MIN_SLOT_SIZE <= n <= MAX_SLOT_SIZE and n % MIN_SLOT_SIZE == 0


def encode_slot(sequence: int, payload: bytes | None, slot_size: int) -> bytes:
    """The ``slot_size`` bytes of a slot (see the table); ``payload=None`` only for sequence 0."""
    if (sequence == 0) != (payload is None):
        raise errors.InvalidArgumentError("sequence 0, and only it, records 'nothing stored'")
    n = NOTHING_STORED if payload is None else len(payload)
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, slot_size, sequence, n) + (payload or b"")
    body += _CRC.pack(crc32c_masked(body))
    return body + bytes(slot_size - len(body))


def _parse_slot(data: bytes, index: int, slot_size: int | None) -> _Slot:
    """Classifies the bytes of slot ``index`` (``data`` may be short when the file is).

    ``slot_size`` is the file's slot size when known; ``None`` accepts the slot's own field
    (slot 0 is read before the slot size is known).
    """
    if len(data) >= SLOT_HEADER_SIZE:
        magic, version, size, seq, n = _HEADER.unpack_from(data)
        if magic == MAGIC:
            # The version before anything laid out after it: another version's slot may keep
            # its length and checksum elsewhere, and taken for a torn slot of this one it
            # would let the other slot's older value win. A torn write never changes the
            # version: it shares a sector with the magic, and both slots' writes carry ours.
            if version != FORMAT_VERSION:
                return _Slot("foreign", why=f"format version {version}")
            end = SLOT_HEADER_SIZE + (0 if n == NOTHING_STORED else n)
            if end + _CRC.size > len(data):
                return _Slot("bad", why="its length runs past the end of the slot")
            (crc,) = _CRC.unpack_from(data, end)
            if crc != crc32c_masked(data[:end]):
                return _Slot("bad", why="checksum mismatch")
            # From here on the bytes are as they were written.
            if not _valid_slot_size(size) or (slot_size is not None and size != slot_size):
                return _Slot("bad", why=f"slot size {size}, the file's is {slot_size}")
            if n != NOTHING_STORED and n > size - SLOT_OVERHEAD:
                return _Slot("bad", why="payload longer than the slot allows")
            if seq % 2 != index or (seq == 0) != (n == NOTHING_STORED):
                return _Slot("bad", why=f"sequence {seq} does not belong in slot {index}")
            payload = None if n == NOTHING_STORED else bytes(data[SLOT_HEADER_SIZE:end])
            return _Slot("valid", seq, payload, size)
    if slot_size is not None and len(data) == slot_size and not any(data):
        return _Slot("empty")
    if slot_size is not None and len(data) < slot_size:
        return _Slot("bad", why=f"only {len(data)} of its {slot_size} bytes are in the file")
    return _Slot("bad", why="no valid slot header")


class DurableState(Resource):
    """A small byte string that survives crashes: the last value :meth:`store` returned for.

    Example::

        with DurableState("/var/lib/meridian/raft-7/state") as state:
            if state.load() is None:
                state.store(msgpack.packb([0, None, 0]))   # term, vote, commit

    Thread-safety: methods may be called from any thread; calls are serialized by a lock.
    Durability: :meth:`store` returns only once the value is on disk (fdatasync); if a crash
    interrupts it, the file holds either the new value or the previous one.
    """

    def __init__(self, path: str | os.PathLike[str], *, slot_size: int | None = None) -> None:
        """Opens the state file at ``path``, creating it (not its directory) when missing.

        Args:
            path: the file. ``path + ".tmp"`` is used while creating it.
            slot_size: bytes per slot for a new file (default ``DEFAULT_SLOT_SIZE``; a multiple
                of 512 in ``MIN_SLOT_SIZE..MAX_SLOT_SIZE``). An existing file keeps the size it
                was created with; giving a different one is an error.

        Raises:
            StoreLockedError: another handle (in this or another process) has the file open.
            CorruptStateError: neither slot is valid; ``path`` and ``offset`` say which file
                and where a bad slot starts.
            InvalidArgumentError: a bad ``slot_size``, or one that differs from the file's.
            StorageError: the file system refused (``errno`` says why).
        """
        self._path = os.fspath(path)
        if slot_size is not None and (
            isinstance(slot_size, bool)
            or not isinstance(slot_size, int)
            or not _valid_slot_size(slot_size)
        ):
            raise errors.InvalidArgumentError(
                f"slot_size {slot_size!r} is not a multiple of {MIN_SLOT_SIZE} in "
                f"{MIN_SLOT_SIZE}..{MAX_SLOT_SIZE}"
            )
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._slot_size = slot_size or DEFAULT_SLOT_SIZE
        self._seq = 0
        self._value: bytes | None = None
        fd = self._open_or_create(slot_size or DEFAULT_SLOT_SIZE)
        try:
            self._recover(fd, slot_size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd


    # ------------------------------------------------------------------ state


    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def slot_size(self) -> int:
        return self._slot_size

    @property
    def max_payload(self) -> int:
        """The largest payload :meth:`store` accepts: ``slot_size - SLOT_OVERHEAD``."""
        return self._slot_size - SLOT_OVERHEAD

    @property
    def sequence(self) -> int:
        """The sequence number of the current value (0 while nothing was ever stored)."""
        return self._seq

    def load(self) -> bytes | None:
        """The value of the last :meth:`store` that returned, or ``None`` if there was none.

        Answers from memory: the file is read only when it is opened.

        Raises:
            StoreClosedError.
        """
        with self._lock:
            self._handle()
            return self._value

    # ------------------------------------------------------------------ writing

    def store(self, payload: bytes | bytearray | memoryview) -> None:
        """Durably replaces the value: writes the other slot, fdatasyncs, then flips.

        Args:
            payload: ``bytes``, ``bytearray`` or ``memoryview``, at most :attr:`max_payload`
                bytes.

        Raises:
            RecordTooLargeError: over :attr:`max_payload`; nothing was written.
            StorageError (DiskFullError for ENOSPC): the write or sync failed. The current value
                is unchanged, in memory and in its slot on disk (which was not touched), so the
                handle stays usable: a later :meth:`store` rewrites the same non-current slot
                whole. After a crash at that point either value may be found.
            StoreClosedError, TypeError (not bytes).
        """
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
        elif isinstance(payload, memoryview):
            data = payload.tobytes()
        else:
            raise TypeError(
                "a durable state payload is bytes, bytearray or memoryview, "
                f"not {type(payload).__name__}"
            )
        with self._lock:
            fd = self._handle()
            if len(data) > self.max_payload:
                raise errors.RecordTooLargeError(
                    f"payload of {len(data)} bytes is over the {self.max_payload}-byte limit of "
                    f"{self._path} (slot size {self._slot_size})"
                )
            if self._seq == _MAX_SEQUENCE:  # pragma: no cover - 2**64 stores
                raise errors.InvalidArgumentError(f"sequence numbers of {self._path} ran out")
            seq = self._seq + 1
            try:
                slot = encode_slot(seq, data, self._slot_size)
                pwrite_all(fd, slot, (seq % 2) * self._slot_size)
                os.fdatasync(fd)
            except OSError as exc:
                raise storage_error(exc, f"cannot store into {self._path}") from None
            # Only now is the new slot the current one (ARCH §2.2: fsync, then flip).
            self._seq = seq
            self._value = data

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Closes the file, releasing the lock. Idempotent. Nothing needs syncing."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            os.close(fd)

    def __repr__(self) -> str:
        if self._fd is None:
            return f"<DurableState {self._path!r} closed>"
        return f"<DurableState {self._path!r} sequence {self._seq} slot size {self._slot_size}>"

    # ------------------------------------------------------------------ internals

    def _handle(self) -> int:
        if self._fd is None:
            raise errors.StoreClosedError(f"durable state {self._path} is closed")
        return self._fd

    def _locked(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.StoreLockedError(
                f"state file {self._path} is locked: another handle (in this or another "
                "process) has it open"
            ) from None
        except OSError as exc:
            raise storage_error(exc, f"cannot lock {self._path}") from None

    def _open_or_create(self, slot_size: int) -> int:
        """An open, locked descriptor of the state file, which is created whole if missing."""
        tmp = self._path + ".tmp"
        while True:
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                if os.path.islink(self._path):
                    # A link to a missing file: a creator would find the name taken, for ever.
                    raise storage_error(exc, f"state file {self._path} is a symbolic link to "
                                             f"a missing file") from None
            except OSError as exc:
                raise storage_error(exc, f"cannot open state file {self._path}") from None
            else:
                try:
                    self._locked(fd)
                    # Its creator may have died between the rename and the directory fsync:
                    # make the name durable before any store() counts on it.
                    fsync_directory(os.path.dirname(os.path.abspath(self._path)))
                except BaseException as exc:
                    _close_and_raise(fd, exc, f"cannot open state file {self._path}")
                return fd
            # Create: the lock on NAME.tmp keeps two creators apart. Its holder renames it to
            # NAME still holding the lock, so a second creator either fails to lock the same
            # file or locks a fresh NAME.tmp and then finds NAME in place.
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise storage_error(exc, f"cannot create state file {tmp}") from None
            try:
                self._locked(fd)
                if os.path.lexists(self._path):
                    os.unlink(tmp)  # ours alone while we hold its lock
                    os.close(fd)
                    continue
                image = encode_slot(0, None, slot_size) + bytes(slot_size)
                os.ftruncate(fd, 0)
                pwrite_all(fd, image, 0)
                os.fsync(fd)
                os.rename(tmp, self._path)
                fsync_directory(os.path.dirname(os.path.abspath(self._path)))
            except BaseException as exc:
                _close_and_raise(fd, exc, f"cannot create state file {self._path}")
            return fd

    def _recover(self, fd: int, slot_size: int | None) -> None:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise errors.InvalidArgumentError(f"{self._path} is not a regular file")
            if st.st_size > 2 * MAX_SLOT_SIZE:
                raise errors.CorruptStateError(
                    f"state file {self._path} is {st.st_size} bytes, more than two slots of "
                    "the largest size",
                    self._path,
                    0,
                )
            # A slot whose sync failed may still be in the page cache, newer than the disk's
            # (see drop_cached_pages): read the disk.
            drop_cached_pages(fd)
            data = pread_all(fd, st.st_size)
        except errors.MeridianError:
            raise
        except OSError as exc:
            raise storage_error(exc, f"cannot read state file {self._path}") from None

        # Each valid slot records the slot size, and slot 1 starts at that offset: read it from
        # slot 0, or when slot 0 is damaged, from a valid slot 1 found where it says it starts.
        first = _parse_slot(data[:MAX_SLOT_SIZE], 0, None)
        size = first.slot_size if first.status == "valid" else _find_slot_1(data, slot_size)
        if size is None:
            size = slot_size or DEFAULT_SLOT_SIZE  # nothing valid: only names the damage
        elif slot_size is not None and slot_size != size:
            raise errors.InvalidArgumentError(
                f"state file {self._path} has {size}-byte slots, not {slot_size}"
            )
        slots = [_parse_slot(data[i * size : (i + 1) * size], i, size) for i in (0, 1)]
        for i, s in enumerate(slots):
            if s.status == "foreign":
                # Intact bytes of a format this code does not know: falling back to the other
                # slot would silently roll the state back.
                raise errors.CorruptStateError(
                    f"state file {self._path}: slot {i} has {s.why}; this code reads version "
                    f"{FORMAT_VERSION}",
                    self._path,
                    i * size,
                )
        valid = [s for s in slots if s.status == "valid"]
        if not valid:
            where = next((i for i, s in enumerate(slots) if s.status == "bad"), 0)
            raise errors.CorruptStateError(
                f"state file {self._path} has no valid slot: slot 0 is {_describe(slots[0])}, "
                f"slot 1 is {_describe(slots[1])}",
                self._path,
                where * size,
            )
        current = max(valid, key=lambda s: s.sequence)
        self._slot_size = size
        self._seq = current.sequence
        self._value = current.payload


def _find_slot_1(data: bytes, slot_size: int | None) -> int | None:
    """The slot size S such that a valid slot 1 recording S starts at byte S, or None."""
    sizes = (
        [slot_size]
        if slot_size is not None
        else range(MIN_SLOT_SIZE, min(len(data), MAX_SLOT_SIZE) + 1, MIN_SLOT_SIZE)
    )
    for size in sizes:
        if data[size : size + len(MAGIC)] == MAGIC and _parse_slot(
            data[size : 2 * size], 1, size
        ).status in ("valid", "foreign"):
            return size
    return None


def _describe(slot: _Slot) -> str:
    return "empty" if slot.status == "empty" else f"bad ({slot.why})"


def _close_and_raise(fd: int, exc: BaseException, message: str) -> NoReturn:
    """Closes ``fd`` and raises ``exc`` -- a system error as a StorageError saying ``message``."""
    os.close(fd)
    if isinstance(exc, OSError) and not isinstance(exc, errors.MeridianError):
        raise storage_error(exc, message) from None
    raise exc
