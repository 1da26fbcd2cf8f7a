"""Meridian: a globally distributed transactional key-value database.

This package holds everything that decides about data (ARCH §1). The storage core so far:

- :class:`LogStore` — the segmented, checksummed append-only log (ARCH §2.1).
- :class:`DurableState` — small state in a double-buffered, checksummed file (ARCH §2.2).
- :class:`MVCCStore` — versioned keys on LMDB, the Raft groups' state machine (ARCH §2.3).
"""

from .errors import (
    CorruptionError as CorruptionError,
    CorruptLogError as CorruptLogError,
    CorruptStateError as CorruptStateError,
    DiskFullError as DiskFullError,
    InvalidArgumentError as InvalidArgumentError,
    MeridianError as MeridianError,
    PositionError as PositionError,
    RecordTooLargeError as RecordTooLargeError,
    StorageError as StorageError,
    StoreClosedError as StoreClosedError,
    StoreFailedError as StoreFailedError,
    StoreLockedError as StoreLockedError,
)
from .durable import DurableState as DurableState
from .logstore import LogStats as LogStats, LogStore as LogStore
from .mvcc import GCResult as GCResult, MVCCStats as MVCCStats, MVCCStore as MVCCStore

__version__ = "0.1.0"
