"""The one thin layer over the C extension (STYLE §4).

It mirrors the C functions one to one: validate, call, turn a return code into a library
exception with :func:`check`, copy out. Nothing else in Meridian touches ``ffi`` or ``lib``.
"""

from __future__ import annotations

import errno as _errno
import os

import cffi

from . import errors

try:
    from _meridian_native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "Meridian's C extension (_meridian_native) is not built: install the package with "
        "`pip install .` (it needs a C compiler and the Python headers)"
    ) from exc

__all__ = ["ffi", "lib", "new_error", "check", "crc32c", "crc32c_masked", "Syncer", "write_back"]

# libc's sync_file_range, which the os module lacks, through cffi's ABI mode (no compiling).
_libc_ffi = cffi.FFI()
_libc_ffi.cdef("int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags);")
_libc = _libc_ffi.dlopen(None)
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER


def write_back(fd: int, offset: int, length: int) -> None:
    """Writes the file's dirty pages in ``[offset, offset + length)`` to the device and waits
    for them (``sync_file_range``, with Python's lock released): no metadata and no flush of
    the device's cache, so an fsync must still follow for durability. Writing a large
    backlog back a slice at a time keeps each slice's wait — and any other fsync queued on
    the same device meanwhile — short."""
    if _libc.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WAIT) != 0:
        code = _libc_ffi.errno
        raise OSError(code, os.strerror(code))


def new_error():
    """A fresh ``struct ls_error`` for one call."""
    return ffi.new("struct ls_error *")


def check(rc: int, err) -> None:
    """Raises the library exception matching a C return code (``LS_OK`` returns)."""
    if rc == lib.LS_OK:
        return
    message = ffi.string(err.message).decode("utf-8", "replace")
    path = ffi.string(err.path).decode("utf-8", "surrogateescape")
    if rc == lib.LS_ERR_IO:
        if err.sys_errno == _errno.ENOSPC:
            raise errors.DiskFullError(message)
        exc = errors.StorageError(err.sys_errno, message)
        exc.filename = path or None
        raise exc
    if rc == lib.LS_ERR_CORRUPT:
        raise errors.CorruptLogError(message, path, int(err.offset))
    if rc == lib.LS_ERR_LOCKED:
        raise errors.StoreLockedError(message)
    if rc == lib.LS_ERR_RANGE:
        raise errors.PositionError(message)
    if rc == lib.LS_ERR_TOO_LARGE:
        raise errors.RecordTooLargeError(message)
    if rc == lib.LS_ERR_NOMEM:
        raise MemoryError(message)
    if rc == lib.LS_ERR_FAILED:
        raise errors.StoreFailedError(message)
    if rc == lib.LS_ERR_INVAL:
        raise errors.InvalidArgumentError(message)
    raise errors.MeridianError(f"unexpected return code {rc}: {message}")  # pragma: no cover


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data``, extending ``crc`` (the CRC of what came before)."""
    return lib.meridian_crc32c_extend(crc, ffi.from_buffer("uint8_t[]", data), len(data))


def crc32c_masked(data: bytes) -> int:
    """The masked CRC-32C of ``data``, as stored on disk (LevelDB's mask)."""
    return lib.meridian_crc32c_mask(crc32c(data))


class Syncer:
    """A POSIX thread that runs fdatasync calls, one at a time, without Python's lock
    (``native/syncer.h``): :meth:`submit` a descriptor, wait until :attr:`done_fd` is readable,
    then :meth:`collect` the outcome. Not thread-safe: one caller (an event loop) drives it."""

    def __init__(self) -> None:
        out = ffi.new("struct ms_syncer **")
        e = lib.ms_syncer_open(out)
        if e:
            raise OSError(e, f"cannot start a syncer thread: {_errno.errorcode.get(e, e)}")
        self._s = out[0]
        self._out = ffi.new("int *")
        self.done_fd: int = lib.ms_syncer_done_fd(self._s)

    def submit(self, fd: int) -> None:
        """Starts ``fdatasync(fd)`` in the thread. Raises OSError (EBUSY: one in flight)."""
        e = lib.ms_syncer_submit(self._handle(), fd)
        if e:
            raise OSError(e, f"cannot submit a sync: {_errno.errorcode.get(e, e)}")

    def collect(self) -> int | None:
        """The errno of the submitted call once it has ended (0: synced), ``None`` while it
        runs. Raises OSError (EINVAL) when nothing was submitted."""
        e = lib.ms_syncer_collect(self._handle(), self._out)
        if e == _errno.EAGAIN:
            return None
        if e:
            raise OSError(e, "no sync was submitted")
        return self._out[0]

    def close(self) -> None:
        """Waits for a call in flight, then stops the thread. Idempotent."""
        s, self._s = self._s, None
        if s is not None:
            lib.ms_syncer_close(s)

    def _handle(self):
        if self._s is None:
            raise ValueError("the syncer is closed")
        return self._s

