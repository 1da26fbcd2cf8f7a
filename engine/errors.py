"""Meridian's exceptions.

Every error the library raises on purpose is a :class:`MeridianError`. Each also inherits the
builtin exception a caller would expect for the same situation (a closed store is a
``ValueError`` like a closed file, corruption is an ``OSError``), so generic handlers keep working
(STYLE §4).
"""

from __future__ import annotations

import errno as _errno


def _reduce(exc: BaseException, *args: object) -> tuple:
    """What pickle and copy need to rebuild ``exc``: its class, the arguments its constructor
    takes (which differ from ``exc.args`` for the classes that use this), and its attributes.
    Without it, an error raised in another process (a process pool's worker) could not be sent
    back, nor could it be copied."""
    return type(exc), args, exc.__dict__ or None


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

    def __reduce__(self) -> tuple:
        return _reduce(self, self.strerror)


class StoreLockedError(StorageError):
    """Another handle, in this process or another, has the store's directory open."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EWOULDBLOCK, message)

    def __reduce__(self) -> tuple:
        return _reduce(self, self.strerror)


class StoreFailedError(StorageError):
    """An earlier write or sync failed, so the store no longer knows what is on disk.

    Mutations are refused until the store is reopened (reopening re-reads the disk). This is the
    answer to "fsyncgate": after a failed fsync the kernel may have dropped dirty pages, so
    retrying the fsync could report success for data that is gone."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EIO, message)

    def __reduce__(self) -> tuple:
        return _reduce(self, self.strerror)


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

    def __reduce__(self) -> tuple:
        return _reduce(self, self.strerror, self.path, self.offset)


class CorruptLogError(CorruptionError):
    """A log segment is corrupt (not a torn tail): the file and offset say where."""


class CorruptStateError(CorruptionError):
    """A durable state file or snapshot stream is corrupt."""


# ---------------------------------------------------------------------- transactions


class TransactionConflictError(MeridianError):
    """The transaction lost an optimistic-concurrency check and was not committed; run it again
    (ARCH §5.7, the equivalent of SQLSTATE 40001). Nothing it wrote is visible anywhere.

    Attributes:
        reason: ``"write_write"`` (a key it writes was committed by another transaction after
            its snapshot), ``"read_write"`` (serializable: a key it read was), ``"intent"``
            (another transaction is committing the key), ``"too_old"`` (it outlived the
            maximum transaction lifetime, or its snapshot was older than what the group still
            remembers), ``"aborted"`` (a transaction across groups whose record was found
            aborted when it came to decide: recovery had aborted it for being too slow),
            ``"moved"`` (a keyspace it uses moved to another home region or was dropped: it is
            looked up again; or is being moved: it takes no writes while its data is copied
            to its new home), ``"refresh"`` (it could not move its snapshot up to a newer
            group's without losing what it had read) or ``"catalog_changed"`` (a keyspace
            move or drop found the keyspace changed by another one meanwhile).
        key: the conflicting key, when there is one.
        retryable: always True; :meth:`Database.run_transaction` retries these.
    """

    retryable = True

    def __init__(self, message: str, reason: str, key: bytes | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key

    def __reduce__(self) -> tuple:
        return _reduce(self, self.args[0], self.reason, self.key)


class LimitExceededError(MeridianError, ValueError):
    """A transaction went over a configured limit (keys or bytes written), or a keyspace
    create found every keyspace id used. (A key or value over its size is a
    :class:`RecordTooLargeError`.) Running it again unchanged fails the
    same way. (A transaction that outlives the maximum lifetime is a
    :class:`TransactionConflictError`, reason ``"too_old"``: run again, it starts anew.)"""


class TransactionClosedError(MeridianError, ValueError):
    """An operation on a transaction that has already committed, rolled back or failed."""


class NotLeaderError(MeridianError):
    """This replica cannot serve the request because it is not its group's leader.

    Attributes:
        group: the group asked.
        leader: the node id of the leader this replica believes in, or 0 if it knows none.
    """

    retryable = True

    def __init__(self, message: str, group: int = 0, leader: int = 0) -> None:
        super().__init__(message)
        self.group = group
        self.leader = leader


class AmbiguousCommitError(MeridianError):
    """The commit's outcome is unknown: it may or may not have committed (the node serving it
    failed or lost track after proposing it). Read the data to find out; a blind retry may
    apply the transaction twice."""


class KeyspaceNotFoundError(InvalidArgumentError):
    """No keyspace of that name exists."""


class KeyspaceExistsError(InvalidArgumentError):
    """A keyspace of that name exists already."""


class ResolverUnavailableError(MeridianError):
    """A regional keyspace's application resolver (``"app:<name>"``) is not configured on this
    node, which cannot apply the keyspace's writes: applying them any other way could leave
    this replica with data unlike its group's. The group stops here until the node is
    restarted with the resolver in ``[cluster.resolvers]``."""


class UnavailableError(MeridianError, TimeoutError):
    """No replica that could serve the request answered in time (no leader, nodes down or
    unreachable). Nothing was committed by the request that raised it, unless it says the
    outcome is ambiguous."""
