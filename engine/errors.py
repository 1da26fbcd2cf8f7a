"""Meridian's exceptions.

Every error the library raises on purpose is a :class:`MeridianError`. Each also inherits the
builtin exception a caller would expect for the same situation (a closed store is a
``ValueError`` like a closed file, corruption is an ``OSError``), so generic handlers keep working
(STYLE §4).
"""

from __future__ import annotations

import errno as _errno


class MeridianError(Exception):
    """Base class of every error Meridian raises on purpose."""


class StoreClosedError(MeridianError, ValueError):
    """An operation on a store that was closed."""


class RecordTooLargeError(MeridianError, ValueError):
    """A record, batch, key or value over its size limit."""


class InvalidArgumentError(MeridianError, ValueError):
    """An argument outside its documented range (a segment size, a timestamp, ...)."""


class PositionError(MeridianError, IndexError):
    """A log position outside what the store holds."""


class StorageError(MeridianError, OSError):
    """An operating-system error while reading or writing a store (``errno`` is set)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class DiskFullError(StorageError):
    """The disk is full (ENOSPC). Nothing of the failed operation was applied, and everything
    synced before it is intact; the store stays usable once space is freed."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ENOSPC, message)


class StoreLockedError(StorageError):
    """Another handle, in this process or another, has the store's directory open."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EWOULDBLOCK, message)


class StoreFailedError(StorageError):
    """An earlier write or sync failed, so the store no longer knows what is on disk.

    Mutations are refused until the store is reopened (reopening re-reads the disk). This is the
    answer to "fsyncgate": after a failed fsync the kernel may have dropped dirty pages, so
    retrying the fsync could report success for data that is gone."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EIO, message)


class CorruptionError(StorageError):
    """Stored bytes fail a checksum or structure check.

    Attributes:
        path: the file concerned.
        offset: the byte offset in that file where the bad data starts.
    """

    def __init__(self, message: str, path: str = "", offset: int = 0) -> None:
        super().__init__(_errno.EIO, message)
        self.path = path
        self.offset = offset


class CorruptLogError(CorruptionError):
    """A log segment is corrupt (not a torn tail): the file and offset say where."""


class CorruptStateError(CorruptionError):
    """A durable state file or snapshot stream is corrupt."""
