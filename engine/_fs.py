"""File-system helpers that make directory changes durable.

Creating a file or directory changes its parent directory, and on a file system that follows
POSIX to the letter that change survives a power loss only once the parent is fsynced. ext4's
journal usually hides the difference; we do not rely on it.
"""

from __future__ import annotations

import errno as _errno
import os

from . import errors


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsyncs a directory, making the creation, renaming and removal of its entries durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, then fsyncs the parent of each directory it made."""
    path = os.path.abspath(os.fspath(path))
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                # A file (or a dangling link) where a directory of the path must be: say
                # which, rather than "File exists" about the path asked for.
                raise NotADirectoryError(_errno.ENOTDIR, f"{d} exists and is not a directory",
                                         d) from None
        fsync_directory(os.path.dirname(d))
    if not missing:
        # It exists, but whoever made it may have died before syncing its parent.
        fsync_directory(os.path.dirname(path))


def drop_cached_pages(fd: int, length: int = 0) -> None:
    """Makes what the page cache holds of ``fd``'s file durable (fsync), then drops the cached
    pages of its first ``length`` bytes (0: all of it), so that what is read next comes from
    the disk.

    For a store opening its files: after an fsync fails with EIO, Linux marks the pages it
    could not write back clean and keeps them, so they read back as written -- to the process
    that failed, and to any later one, until they are evicted -- though the disk does not have
    them ("fsyncgate"). A store that has been stopped by such a failure must not find that data
    again on reopening and count it as durable. The fsync first: the pages a crashed process
    wrote but never synced are real writes, dirty, and made durable here (an error raises);
    only clean pages can be dropped.

    Raises:
        OSError: the fsync failed, or the file system refused the advice for another reason
            than not supporting it.
    """
    os.fsync(fd)
    try:
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        if exc.errno not in (_errno.ENOSYS, _errno.EOPNOTSUPP):
            raise


def storage_error(exc: OSError, message: str) -> errors.StorageError:
    """The engine's error for a failed file-system call: DiskFullError for ENOSPC, otherwise
    StorageError with the errno and file name kept."""
    if exc.errno == _errno.ENOSPC:
        return errors.DiskFullError(f"{message}: {os.strerror(exc.errno)}")
    err = errors.StorageError(exc.errno, f"{message}: {exc.strerror}")
    err.filename = exc.filename
    return err


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Writes all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:  # pragma: no cover - a file system that makes no progress
            raise OSError(_errno.EIO, "short write")
        view = view[n:]
        offset += n


def pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes from ``offset``: fewer only where the file ends."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break  # the file ends (or shrank under us): the caller parses what there is
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)
