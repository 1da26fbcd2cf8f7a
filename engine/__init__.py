"""Meridian: a globally distributed transactional key-value database.

This package holds everything that decides about data (ARCH §1), and its public API is
re-exported here:

- the client: :func:`connect` (async), :class:`Database`, :class:`Transaction`,
  :class:`Keyspace`; for non-async code :func:`connect_blocking`, :class:`BlockingDatabase`,
  :class:`BlockingTransaction`;
- an in-process cluster for tests: :func:`open_local_cluster`, :class:`LocalCluster`;
- the node runtime: :class:`Node`, its configuration (:func:`load_node_config`,
  :class:`NodeConfig`, :class:`ClusterConfig`, :class:`Limits`) and :class:`HybridClock`;
- the storage core: :class:`LogStore` (ARCH §2.1) and its :class:`LogStats`,
  :class:`DurableState` (§2.2), :class:`MVCCStore` (§2.3) with :class:`MVCCStats` and
  :class:`GCResult`;
- every error class (all are :class:`MeridianError`).
"""

from .errors import (
    AmbiguousCommitError as AmbiguousCommitError,
    CorruptionError as CorruptionError,
    CorruptLogError as CorruptLogError,
    CorruptStateError as CorruptStateError,
    DiskFullError as DiskFullError,
    InvalidArgumentError as InvalidArgumentError,
    KeyspaceExistsError as KeyspaceExistsError,
    KeyspaceNotFoundError as KeyspaceNotFoundError,
    LimitExceededError as LimitExceededError,
    MeridianError as MeridianError,
    NotLeaderError as NotLeaderError,
    PositionError as PositionError,
    RecordTooLargeError as RecordTooLargeError,
    ResolverUnavailableError as ResolverUnavailableError,
    StorageError as StorageError,
    StoreClosedError as StoreClosedError,
    StoreFailedError as StoreFailedError,
    StoreLockedError as StoreLockedError,
    TransactionClosedError as TransactionClosedError,
    TransactionConflictError as TransactionConflictError,
    UnavailableError as UnavailableError,
)
from .durable import DurableState as DurableState
from .logstore import LogStats as LogStats, LogStore as LogStore
from .mvcc import GCResult as GCResult, MVCCStats as MVCCStats, MVCCStore as MVCCStore

__version__ = "0.1.0"

# The rest of the API is imported on first use: the node runtime depends on ``raft``, whose
# storage depends on this package's storage core, so importing it eagerly here would be a cycle
# (and would make every ``import engine`` pay for trio and the network stack).
_LAZY = {
    "Keyspace": "catalog",
    "Database": "client",
    "Transaction": "client",
    "connect": "client",
    "BlockingDatabase": "blocking",
    "BlockingTransaction": "blocking",
    "connect_blocking": "blocking",
    "ClusterConfig": "config",
    "ConfigError": "config",
    "Limits": "config",
    "NodeConfig": "config",
    "load_node_config": "config",
    "ClockOffsetError": "hlc",
    "HybridClock": "hlc",
    "ResolverFailedError": "merge",
    "LocalCluster": "local",
    "open_local_cluster": "local",
    "Node": "node",
    "SnapshotInterruptedError": "mvcc",
    "CallTimeoutError": "rpc",
    "ConnectTimeoutError": "rpc",
    "ConnectionLostError": "rpc",
    "NotSentError": "rpc",
    "RemoteError": "rpc",
    "RpcWireError": "rpc",
}


# What ``from engine import *`` brings: the storage core and the errors above, and the lazy
# names (a star import imports their modules).
__all__ = [
    "AmbiguousCommitError",
    "CorruptionError",
    "CorruptLogError",
    "CorruptStateError",
    "DiskFullError",
    "InvalidArgumentError",
    "KeyspaceExistsError",
    "KeyspaceNotFoundError",
    "LimitExceededError",
    "MeridianError",
    "NotLeaderError",
    "PositionError",
    "RecordTooLargeError",
    "ResolverUnavailableError",
    "StorageError",
    "StoreClosedError",
    "StoreFailedError",
    "StoreLockedError",
    "TransactionClosedError",
    "TransactionConflictError",
    "UnavailableError",
    "DurableState",
    "LogStats",
    "LogStore",
    "GCResult",
    "MVCCStats",
    "MVCCStore",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
