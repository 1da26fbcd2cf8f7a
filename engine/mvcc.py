"""The MVCC store: versioned keys on LMDB, applied by a Raft group's state machine (ARCH §2.3).

A key has versions, one per commit timestamp; a read at ``ts`` sees, for each key, the newest
version with ``commit_ts <= ts``. A delete writes a *tombstone* version, so that reads at
earlier timestamps still see the old value. Raft applies each committed entry with
:meth:`MVCCStore.apply`, which writes the entry's versions and the entry's index (the *applied
index*) in one LMDB transaction: after a crash the store holds exactly the entries up to its
applied index, and re-applying the entries after it is idempotent.

Example::

    with MVCCStore("/var/lib/meridian/group-7/state") as store:
        store.apply([(b"k", b"v1")], commit_ts=10, applied_index=1)
        store.apply([(b"k", None)], commit_ts=20, applied_index=2)   # delete
        assert store.get(b"k", 15) == b"v1"
        assert store.get(b"k", 25) is None

Layout
------
One LMDB environment per store directory, with named sub-databases:

``versions``
    key ``enc(user_key) + be64(2**64 - 1 - commit_ts)``, value ``tag + payload``, where
    ``enc(k) = k.replace(b"\\x00", b"\\x00\\xff") + b"\\x00\\x01"``. The encoding preserves the
    order of user keys and no encoded key is a prefix of another, so the versions of one key are
    contiguous and sorted newest first, and "newest version <= ts" is a single
    ``set_range(enc(k) + be64(2**64 - 1 - ts))``. The tag byte is ``0x01`` for a value (the
    payload follows) and ``0x00`` for a tombstone (nothing follows); other tags are reserved so
    that the format can grow (an origin region, for instance).
``meta``
    ``b"format"`` (be64, :data:`FORMAT_VERSION`), ``b"applied_index"`` (be64),
    ``b"gc_watermark"`` (be64, the highest watermark :meth:`MVCCStore.gc` has been given) and
    ``b"app_state"`` (opaque bytes the state machine stores with each apply, such as its
    closed timestamp; absent means empty).
``side``
    key ``k`` (1..:data:`MAX_SIDE_KEY_SIZE` bytes, stored as is), value opaque bytes: the side
    table, small unversioned records the state machine keeps beside its versions (prepared
    intents of two-phase commits, transaction records, ARCH §5). It is written by
    :meth:`MVCCStore.apply_batch` in the same transaction as the versions and the applied index,
    read with :meth:`MVCCStore.side_get` and :meth:`MVCCStore.side_scan`, travels with
    snapshots, and is left alone by :meth:`MVCCStore.gc`. A store created before the table
    existed gets it, empty, when it is opened.

A ``LOCK`` file, held with ``flock``, keeps the directory to one open store at a time.

Durability
----------
With ``sync=False`` (the default) a commit reaches the operating system's page cache when
:meth:`MVCCStore.apply` returns: it survives the death of the process (SIGKILL included), not a
crash of the machine. Durability against power loss comes from the Raft log, which is synced
before entries are applied; :meth:`MVCCStore.checkpoint` flushes the store to disk and must
return before the log is compacted past the applied index. Caveat: LMDB without sync gives no
write ordering, so after a machine crash (a process crash is harmless) the environment itself
may be damaged, not just stale: such a node should rebuild from a Raft snapshot rather than trust
a store written with ``sync=False`` after its last checkpoint. With ``sync=True`` every commit is
durable (and the file consistent) when it returns, at the cost of an fsync per commit. After a
failed checkpoint the store refuses every checkpoint and write until it is reopened: the kernel
may have dropped the dirty pages, so a retried sync could succeed without them. It may also have
kept them in its cache, marked clean, where they read back as written though the disk does not
have them: opening a store therefore syncs its data file and drops the file's cached pages
before LMDB reads it, so every open reads the map from the disk.

Memory map
----------
LMDB needs a map at least as large as the file. The store starts at ``map_size`` and, when a
write transaction runs out of room, aborts it, grows the map (doubling, by at most
:data:`MAX_GROWTH_STEP`) and runs it again; ``lmdb.MapFullError`` never escapes. Growing
remaps the file, which is only allowed while no transaction is open in the process: reads
register in a gate that a resize closes for the moment it needs (see the class docstring). The
map is also grown early, after a commit that leaves less than half a growth step free, if no
read is in flight then; so a write rarely has to wait for a resize.

The store opens LMDB with ``writemap=True`` by default: commits then write pages in place in the
shared map instead of copying each dirty page with ``pwrite``, which doubles the apply rate for
scattered keys. The cost of a writable map is that running out of disk space while a page is
written would kill the process with SIGBUS; to turn that into :class:`DiskFullError`, the file
is preallocated (``posix_fallocate``) up to the map size before the map is grown, and before the
first write when the store is opened; ``lock.mdb``, which LMDB writes through a shared map with
either setting, is reserved before LMDB opens it. Disk usage is
therefore the map size: about twice the data while it is small, the data plus one
:data:`MAX_GROWTH_STEP` or less once it is large, and never below ``map_size``. Pass
``writemap=False`` for stores much larger than RAM (a writable map reads a page before
overwriting it) or on file systems without ``fallocate``.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import mmap
import os
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

import lmdb
import msgpack

from . import errors
from ._fs import drop_cached_pages, fsync_directory, makedirs_durable, storage_error
from ._native import crc32c, write_back
from ._resource import Resource

_WRITE_BACK_SLICE = 4 << 20  # bytes of the map written back at a time by a checkpoint

__all__ = [
    "MVCCStore",
    "MVCCStats",
    "GCResult",
    "SnapshotStream",
    "SnapshotInterruptedError",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "MAX_SIDE_KEY_SIZE",
    "MIN_TS",
    "MAX_TS",
    "DEFAULT_MAP_SIZE",
    "MIN_MAP_SIZE",
    "MAX_GROWTH_STEP",
    "FORMAT_VERSION",
    "SNAPSHOT_FORMAT_VERSION",
]

class SnapshotInterruptedError(errors.MeridianError):
    """An interruptible snapshot stream (``snapshot_chunks(interruptible=True)``) was ended
    early so that the store could grow its map; take a new one."""


MAX_KEY_SIZE = 250
"""Longest user key, in bytes. Encoded (every zero byte doubled, plus 2 + 8 bytes) it stays
within LMDB's 511-byte key limit."""
MAX_VALUE_SIZE = 4 << 20
MIN_TS = 1
"""Smallest commit or read timestamp. 0 is never a version's timestamp: ``be64(2**64 - 1 - 0)``
is the 'past every version of this key' seek target used by scans."""
MAX_TS = 2**64 - 2
"""Largest commit or read timestamp; ``get(key, MAX_TS)`` reads the newest version."""
DEFAULT_MAP_SIZE = 64 << 20
MIN_MAP_SIZE = 256 << 10
MAX_GROWTH_STEP = 1 << 30
FORMAT_VERSION = 1
SNAPSHOT_FORMAT_VERSION = 2
"""Format of the chunks :meth:`MVCCStore.snapshot_chunks` writes. Version 2 added the side
table; :meth:`MVCCStore.restore` also reads version 1 (a snapshot without side entries)."""
_READABLE_SNAPSHOT_FORMATS = (1, 2)
MAX_SIDE_KEY_SIZE = 500
"""Longest side-table key, in bytes (LMDB's key limit is 511)."""
SNAPSHOT_MAGIC = "meridian-mvcc-snapshot"
DEFAULT_SNAPSHOT_CHUNK_BYTES = 1 << 20
MAX_SNAPSHOT_CHUNK_BYTES = 64 << 20

_DB_VERSIONS = b"versions"
_DB_META = b"meta"
_DB_SIDE = b"side"
_DB_NAMES = frozenset((_DB_VERSIONS, _DB_META, _DB_SIDE))

_META_FORMAT = b"format"
_META_APPLIED = b"applied_index"
_META_GC_WATERMARK = b"gc_watermark"
_META_APP_STATE = b"app_state"

_INV = 2**64 - 1
_TAG_TOMBSTONE = 0
_TAG_VALUE = 1
_TOMBSTONE = b"\x00"
_VALUE_TAG = b"\x01"
_KEY_END = b"\x00\x01"
# Seek target just past the last version of a key: no version has commit_ts 0.
_PAST_VERSIONS = b"\xff" * 8
_MIN_VERSION_KEY_SIZE = 1 + len(_KEY_END) + 8
_MAX_VERSION_KEY_SIZE = 2 * MAX_KEY_SIZE + len(_KEY_END) + 8
_MAX_INDEX = 2**64 - 1

_be64 = struct.Struct(">Q")
_pack64 = _be64.pack
_unpack64 = _be64.unpack
_PAGE_SIZE = mmap.PAGESIZE
# Bytes of lock.mdb reserved before LMDB maps it: more than LMDB's reader table for the 126
# readers it is opened with (8 KiB with 4 KiB pages).
_LOCK_FILE_BYTES = 64 << 10

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GCResult:
    """What one :meth:`MVCCStore.gc` call did.

    Attributes:
        removed: versions deleted by this call.
        resume: the key to pass as ``start`` to continue, or None when the pass reached the end.
    """

    removed: int
    resume: bytes | None


@dataclass(frozen=True, slots=True)
class MVCCStats:
    """A snapshot of a store's counters.

    Invariant: ``used_bytes <= map_size``.
    """

    entries: int
    """Versions stored, tombstones included."""
    side_entries: int
    """Entries in the side table."""
    applied_index: int
    gc_watermark: int
    """The highest watermark given to :meth:`MVCCStore.gc` (0 if never): reads below it may
    miss versions."""
    map_size: int
    used_bytes: int
    """Bytes of the file LMDB has used so far (its high-water mark, free pages included)."""
    map_resizes: int
    """Times this handle grew the map."""
    writemap: bool
    sync: bool


class MVCCStore(Resource):
    """A multi-version key-value store on LMDB, one per directory (ARCH §2.3).

    Keys are ``bytes`` of 1..:data:`MAX_KEY_SIZE` bytes; values are ``bytes`` of up to
    :data:`MAX_VALUE_SIZE`; timestamps are ints in :data:`MIN_TS`..:data:`MAX_TS`.

    The side table (see the module docstring) holds unversioned ``(key, value)`` records beside
    the versions: written by :meth:`apply_batch`, read by :meth:`side_get` and :meth:`side_scan`.

    Thread-safety: every method may be called from any thread, concurrently. Each read (``get``,
    ``get_version``, ``scan``, ``side_get``, ``side_scan``, one chunk of a snapshot) runs in its
    own LMDB read transaction and does not wait for a write in progress (only, briefly, for a
    map resize or for the abort of a failed write transaction, both of which need a moment
    without reads). Writes (``apply``, ``apply_batch``, ``gc``, ``restore``) are serialized by a
    lock, and each LMDB write transaction begins and ends inside the one call, so they can be
    run with ``trio.to_thread.run_sync``.
    Growing the map needs an instant with no LMDB transaction open in the process: the grower
    first ends open interruptible :class:`SnapshotStream` objects (waiting only for a chunk in
    progress) and waits for the others to be closed (new snapshots wait meanwhile), then holds
    new reads back while in-flight ones finish (microseconds). So a write that must grow the
    map waits for open snapshots that are not interruptible; a thread must not write while it
    holds such a stream unfinished that nobody else will finish.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = False,
        writemap: bool = True,
        create: bool = True,
    ) -> None:
        """Opens the store in ``path``, or creates it.

        Args:
            path: the store's directory; created (with parents) when ``create`` is true.
            map_size: initial size of the memory map in bytes (at least :data:`MIN_MAP_SIZE`,
                rounded up to a page). An existing store keeps its larger map.
            sync: whether every commit is durable when it returns (see the module docstring).
            writemap: whether LMDB writes pages in place in a writable map (see the module
                docstring).
            create: whether a missing directory may be created.

        Raises:
            StoreLockedError: another handle, in this process or another, has the store open.
            CorruptStateError: the directory holds a store of an unknown format.
            DiskFullError: no space to reserve the map (``writemap=True``).
            StorageError: the file system or LMDB refused (``errno`` says why).
            InvalidArgumentError: ``map_size`` out of range.
        """
        self._path = os.fspath(path)
        if isinstance(map_size, bool) or not isinstance(map_size, int):
            raise errors.InvalidArgumentError(
                f"map_size must be an int, not {type(map_size).__name__}"
            )
        if not MIN_MAP_SIZE <= map_size <= 2**48:
            raise errors.InvalidArgumentError(
                f"map_size {map_size} is outside {MIN_MAP_SIZE}..{2**48} bytes"
            )
        self._sync = bool(sync)
        self._writemap = bool(writemap)
        self._env: lmdb.Environment | None = None
        self._lock_fd = -1
        self._data_fd = -1
        self._write_lock = threading.Lock()
        # The resize gate. `_active_readers` holds one entry per thread inside an LMDB read
        # transaction; list.append/pop are atomic under the GIL, which keeps the read path
        # to a few hundred nanoseconds (a Condition round trip would cost more than the read).
        # A grower or closer sets `_hold` *before* checking that the list is empty, and a
        # reader appends *before* checking `_hold`, so one of the two always sees the other.
        # Reentrant: a SnapshotStream collected by the garbage collector releases itself
        # through the gate, possibly in a thread that is inside the gate already.
        self._gate = threading.Condition(threading.RLock())
        self._active_readers: list[None] = []
        self._hold = False
        self._resize_wanted = False
        self._open_snapshots = 0
        # Interruptible snapshots that are open and between chunks: a grower ends them itself
        # rather than wait for their reader to come back for the next chunk. Weak: one that
        # is dropped unfinished is still collected (and releases itself).
        self._idle_snapshots: weakref.WeakSet[SnapshotStream] = weakref.WeakSet()
        self._map_size = 0
        self._map_resizes = 0
        # A checkpoint failed: the kernel may have dropped the dirty pages of the map and
        # marked them clean, so a retried sync could succeed without them ("fsyncgate").
        self._failed = False
        self._applied_index = 0
        self._gc_watermark = 0
        self._app_state = b""

        if create:
            try:
                makedirs_durable(self._path)
            except OSError as exc:
                raise _os_error(exc, f"cannot create store directory {self._path}") from None
        try:
            self._lock_fd = os.open(
                os.path.join(self._path, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise _os_error(exc, f"cannot open store directory {self._path}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            if isinstance(exc, BlockingIOError):
                raise errors.StoreLockedError(
                    f"MVCC store {self._path} is already open (in this process or another)"
                ) from None
            raise _os_error(exc, f"cannot lock store directory {self._path}") from None
        try:
            self._drop_cached_map()
            self._open_env(_round_to_page(map_size))
        except BaseException:
            self._release_files()
            raise

    def _drop_cached_map(self) -> None:
        """Before LMDB reads the data file: a checkpoint whose sync failed (which stopped the
        store that made it) may have left pages in the page cache that the disk does not have,
        and LMDB would take them -- a meta page among them -- for its own (see
        ``drop_cached_pages``). Every open reads the map from the disk, then."""
        data_path = os.path.join(self._path, "data.mdb")
        try:
            # Writable: the dirty pages a crashed process left are written back through it.
            fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # a new store
        except OSError as exc:
            raise _os_error(exc, f"cannot open {data_path}") from None
        try:
            drop_cached_pages(fd)
        except OSError as exc:
            raise _os_error(exc, f"cannot sync {data_path}") from None
        finally:
            os.close(fd)

    def _open_env(self, map_size: int) -> None:
        data_path = os.path.join(self._path, "data.mdb")
        try:
            # LMDB shrinks the map (and, with a writable map, the file) to the size asked for;
            # keep the size an earlier handle grew to, so that reopening does not undo growth.
            map_size = max(map_size, _round_to_page(os.stat(data_path).st_size))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, f"cannot stat {data_path}") from None
        self._reserve_lock_file()
        try:
            env = lmdb.open(
                self._path,
                subdir=True,
                map_size=map_size,
                max_dbs=8,
                sync=self._sync,
                metasync=self._sync,
                readahead=False,
                writemap=self._writemap,
                lock=True,
                # The C binding then keeps one finished read transaction for reuse, which
                # saves an allocation and a reader-table scan on every get.
                max_spare_txns=1,
            )
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"cannot open MVCC store {self._path}", self._path) from None
        try:
            # A data file without our meta table is a new store while it holds nothing but
            # our tables (each is made by a commit of its own: a first open may have been cut
            # short between them); one holding anything else is another program's LMDB
            # database, never adopted (the tables and the format record below would be
            # written into it). The first record not ours is enough to tell.
            with env.begin() as txn:
                foreign = None if txn.get(_DB_META) is not None else next(
                    (k for k in txn.cursor().iternext(values=False) if k not in _DB_NAMES),
                    None)
            if foreign is not None:
                raise errors.CorruptStateError(
                    f"cannot open MVCC store {self._path}: {data_path} is an LMDB database "
                    f"but no MVCC store (no {_DB_META.decode()} table; a record "
                    f"{bytes(foreign)[:40]!r})",
                    data_path,
                )
            if self._writemap:
                # LMDB has made the file as long as the map, but sparse, and the write
                # transactions below go through the map: reserve the space before them, so that
                # a full disk is DiskFullError rather than SIGBUS in the first commit.
                self._data_fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
                self._reserve(env.info()["map_size"])
            # We hold LOCK, so any reader slot in lock.mdb belongs to a dead process.
            env.reader_check()
            self._versions = env.open_db(_DB_VERSIONS)
            self._meta = env.open_db(_DB_META)
            self._side = env.open_db(_DB_SIDE)
            with env.begin(db=self._meta, write=True) as txn:
                fmt = txn.get(_META_FORMAT)
                if fmt is None:
                    if txn.stat(self._versions)["entries"]:
                        raise errors.CorruptStateError(
                            f"MVCC store {self._path} has versions but no format record",
                            data_path,
                        )
                    txn.put(_META_FORMAT, _pack64(FORMAT_VERSION))
                elif len(fmt) != 8 or _unpack64(fmt)[0] != FORMAT_VERSION:
                    have = _unpack64(fmt)[0] if len(fmt) == 8 else f"record {fmt.hex()}"
                    raise errors.CorruptStateError(
                        f"MVCC store {self._path} has format {have}; "
                        f"this code reads format {FORMAT_VERSION}",
                        data_path,
                    )
                self._applied_index = _get_u64(txn, _META_APPLIED, data_path)
                self._gc_watermark = _get_u64(txn, _META_GC_WATERMARK, data_path)
                self._app_state = bytes(txn.get(_META_APP_STATE) or b"")
            self._map_size = env.info()["map_size"]
            self._psize = env.stat()["psize"]
            # LMDB creates data.mdb (and lock.mdb) but never syncs their directory: a power
            # loss could take the file's name away, with every checkpoint written into it.
            fsync_directory(self._path)
        except BaseException as exc:
            env.close()
            if isinstance(exc, lmdb.Error):
                raise _lmdb_error(exc, f"cannot open MVCC store {self._path}", self._path) from None
            raise
        self._env = env


    # ------------------------------------------------------------------ state


    @property
    def closed(self) -> bool:
        return self._env is None

    @property
    def path(self) -> str:
        """The store's directory."""
        return self._path

    @property
    def applied_index(self) -> int:
        """Index of the last Raft entry applied (0 for a new store)."""
        self._live_env()
        return self._applied_index

    @property
    def gc_watermark(self) -> int:
        """The highest watermark given to :meth:`gc` (0 if never)."""
        self._live_env()
        return self._gc_watermark

    @property
    def app_state(self) -> bytes:
        """The state machine's own state as of :attr:`applied_index` (``b""`` if never set):
        the last ``app_state`` given to :meth:`apply` or :meth:`apply_batch`, or restored
        with a snapshot."""
        self._live_env()
        return self._app_state

    def stats(self) -> MVCCStats:
        """Counters of the store.

        Raises:
            StoreClosedError.
        """
        env = self._enter_read()
        try:
            with env.begin() as txn:
                entries = txn.stat(self._versions)["entries"]
                side_entries = txn.stat(self._side)["entries"]
            info = env.info()
            return MVCCStats(
                entries=entries,
                side_entries=side_entries,
                applied_index=self._applied_index,
                gc_watermark=self._gc_watermark,
                map_size=info["map_size"],
                used_bytes=(info["last_pgno"] + 1) * self._psize,
                map_resizes=self._map_resizes,
                writemap=self._writemap,
                sync=self._sync,
            )
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"stats of {self._path} failed", self._path) from None
        finally:
            self._exit_read()

    # ------------------------------------------------------------------ writing

    def apply(
        self,
        writes: Iterable[tuple[bytes, bytes | None]],
        commit_ts: int,
        applied_index: int,
        *,
        app_state: bytes | None = None,
        side: Iterable[tuple[bytes, bytes | None]] = (),
    ) -> bool:
        """Writes a batch of versions at ``commit_ts`` and records ``applied_index``, atomically.

        Versions, side-table changes and applied index go into one LMDB transaction, so after a
        crash either all are there or none. A ``(key, commit_ts)`` pair names one version:
        writing it again replaces it, and if a key appears twice in ``writes`` the last one wins.

        Args:
            writes: ``(key, value)`` pairs; a value of None deletes the key (a tombstone).
            commit_ts: the versions' timestamp (``MIN_TS..MAX_TS``). Reads at timestamps at or
                above a watermark already given to :meth:`gc` are only exact if later writes
                are above it.
            applied_index: the Raft index of the entry (>= 1).
            app_state: if given, replaces :attr:`app_state` in the same transaction — the
                state machine's own small state (a closed timestamp, say) that must move in
                step with the applied index.
            side: changes to the side table, ``(key, value)`` tuples (or two-item lists)
                applied in order, so for a key given twice the last pair wins: a value
                replaces the key's entry, None deletes it (deleting a missing key does
                nothing). Keys are ``bytes`` of 1..:data:`MAX_SIDE_KEY_SIZE` bytes, values
                ``bytes`` of up to :data:`MAX_VALUE_SIZE`.

        Returns:
            True if applied; False if ``applied_index`` is not above :attr:`applied_index` (the
            entry was applied before a crash, so nothing is done and neither ``writes`` nor
            ``side`` is read).

        Raises:
            InvalidArgumentError: a bad key, timestamp or index, or a bad side-table pair, key
                or value, over-long ones included (the message names it, e.g. "side key 3");
                nothing is written.
            RecordTooLargeError: a key or value of ``writes`` over its limit; nothing is written.
            DiskFullError: no space to grow the map (or, with ``writemap=False``, to write the
                pages); nothing is written.
            StorageError, StoreClosedError.

        Durability: see the module docstring (``sync``).
        """
        return self.apply_batch(
            ((writes, commit_ts),), applied_index, app_state=app_state, side=side
        )

    def apply_batch(
        self,
        batches: Iterable[tuple[Iterable[tuple[bytes, bytes | None]], int]],
        applied_index: int,
        *,
        app_state: bytes | None = None,
        side: Iterable[tuple[bytes, bytes | None]] = (),
        erase: Iterable[tuple[bytes, bytes, int]] = (),
        side_erase: Iterable[tuple[bytes, bytes]] = (),
    ) -> bool:
        """Like :meth:`apply` for several ``(writes, commit_ts)`` groups in one transaction.

        A Raft state machine applies every entry of one Ready this way: one LMDB commit instead
        of one per entry. ``applied_index`` is the index of the last entry covered, and ``side``
        holds the side-table changes of all of them, in order (see :meth:`apply`).

        ``erase`` removes data for good, in the same transaction and before anything of
        ``batches`` or ``side`` is written: for each ``(start, end, max_ts)``, every version
        of every key ``start <= key < end`` with ``commit_ts <= max_ts`` (unlike :meth:`gc`,
        reads at any timestamp see the keys change: the caller must know that nobody reads
        them); for each ``(start, end)`` of ``side_erase``, every side-table key in that
        range. Bounds are bytes (``start`` may be empty); the caller keeps each range small
        enough for one transaction (see :meth:`count_versions`).
        """
        if type(applied_index) is not int or not 0 < applied_index <= _MAX_INDEX:
            _check_index(applied_index)
        if app_state is not None and type(app_state) is not bytes:
            raise errors.InvalidArgumentError(
                f"app_state must be bytes or None, not {_describe(app_state)}"
            )
        if applied_index <= self._applied_index:
            self._live_env()
            return False
        # Everything is validated and encoded before the transaction begins, so a bad write
        # costs no LMDB work and the transaction stays short.
        items: list[tuple[bytes, bytes]] = []
        append = items.append
        for group in _iterable(batches, "batches", "(writes, commit_ts) pairs"):
            try:
                writes, commit_ts = group
            except (TypeError, ValueError):
                raise errors.InvalidArgumentError(
                    f"each batch must be a (writes, commit_ts) pair, not {_describe(group)}"
                ) from None
            if type(commit_ts) is not int or not 0 < commit_ts <= MAX_TS:
                _check_ts(commit_ts, "commit_ts")
            end = _KEY_END + _pack64(_INV - commit_ts)
            for write in _iterable(writes, "writes", "(key, value) pairs"):
                try:
                    key, value = write
                except (TypeError, ValueError):
                    raise errors.InvalidArgumentError(
                        f"each write must be a (key, value) pair, not {_describe(write)}"
                    ) from None
                if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
                    key = _check_key(key, "key")
                if value is None:
                    tagged = _TOMBSTONE
                elif type(value) is bytes and len(value) <= MAX_VALUE_SIZE:
                    tagged = _VALUE_TAG + value
                else:
                    tagged = _VALUE_TAG + _check_value(value)
                append((key.replace(b"\x00", b"\x00\xff") + end, tagged))
        side_items = _check_side(side)
        erase_items = _check_erase(erase)
        side_erase_items = _check_side_erase(side_erase)
        # LMDB inserts sorted keys with far fewer page touches (the cursor stays on its leaf);
        # the sort is stable, so for a repeated key the last write is still put last and wins.
        items.sort(key=itemgetter(0))
        applied_record = _pack64(applied_index)

        def write_batch(txn: lmdb.Transaction) -> None:
            for start_seek, end_enc, inv_max in erase_items:
                _erase_versions(txn.cursor(self._versions), start_seek, end_enc, inv_max)
            if items:
                txn.cursor(self._versions).putmulti(items)
            txn.put(_META_APPLIED, applied_record, db=self._meta)
            for start, end in side_erase_items:
                cur = txn.cursor(self._side)
                ok = cur.set_range(start)
                while ok and cur.key() < end:
                    cur.delete()  # moves to the next entry
                    ok = bool(cur.key())  # an unpositioned cursor has an empty key
            if side_items:
                side_db = self._side
                for key, value in side_items:
                    if value is None:
                        txn.delete(key, db=side_db)  # False, harmlessly, if it is missing
                    else:
                        txn.put(key, value, db=side_db)
            if app_state is not None:
                txn.put(_META_APP_STATE, app_state, db=self._meta)

        with self._write_lock:
            if applied_index <= self._applied_index:
                self._live_env()
                return False
            self._run_write(write_batch)
            self._applied_index = applied_index
            if app_state is not None:
                self._app_state = app_state
        return True

    def count_versions(self, start: bytes, end: bytes, *, max_ts: int = MAX_TS,
                       limit: int | None = None,
                       max_keys: int | None = None) -> tuple[int, bytes | None]:
        """How many versions the keys ``start <= key < end`` have at or below ``max_ts``.

        With ``limit``, counting stops before the first key whose versions would bring the
        count over ``limit`` (having looked at no more than ``limit + 1`` of them, however many
        it has), and with ``max_keys`` once that many keys were looked at: the answer is then
        ``(count, resume)``, the versions of the keys before ``resume`` — a range ``[start,
        resume)`` that :meth:`apply_batch` can ``erase`` in one bounded transaction — else
        ``(count, None)``. ``(0, resume)`` may mean that the key ``resume`` alone has more
        than ``limit``: :meth:`oldest_versions` bounds an erase inside it. One read
        transaction.

        Raises:
            InvalidArgumentError, StoreClosedError, StorageError.
        """
        start = _check_bound(start, "start")
        end = _check_bound(end, "end")
        if type(max_ts) is not int or not 0 < max_ts <= MAX_TS:
            _check_ts(max_ts, "max_ts")
        for name, bound in (("limit", limit), ("max_keys", max_keys)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)
                                      or bound < 1):
                raise errors.InvalidArgumentError(f"{name} must be None or an int >= 1, not "
                                                  f"{bound!r}")
        end_enc = _encode(end)
        inv_max = _pack64(_INV - max_ts)
        count = keys = 0
        env = self._enter_read()
        try:
            with env.begin(self._versions) as txn:
                cur = txn.cursor()
                ok = cur.set_range(_seek(start))
                while ok:
                    ekey = cur.key()[:-8]
                    if ekey >= end_enc:
                        break
                    if ((limit is not None and count >= limit)
                            or (max_keys is not None and keys >= max_keys)):
                        return count, _decode(ekey)
                    keys += 1
                    # This key's versions at or below max_ts, then on to the next key; a key
                    # that would go over the limit is left whole to the next range.
                    ok = cur.set_range(ekey + inv_max)
                    here = 0
                    while ok and cur.key()[:-8] == ekey:
                        here += 1
                        if limit is not None and count + here > limit:
                            return count, _decode(ekey)
                        ok = cur.next()
                    count += here
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"count_versions in {self._path} failed", self._path) from None
        finally:
            self._exit_read()
        return count, None

    def oldest_versions(self, key: bytes, n: int, *,
                        max_ts: int = MAX_TS) -> tuple[int, bytes | None] | None:
        """Where an erase of only the ``n`` oldest versions of ``key`` ends.

        Returns ``(ts, after)``: ``ts`` is the commit timestamp of the key's ``n``-th oldest
        version, and ``after`` the next key in the store (None if there is none), so that
        erasing ``[key, after)`` at or below ``ts`` (see :meth:`apply_batch`) erases exactly
        those ``n`` versions. None if the key has no more than ``n`` versions at or below
        ``max_ts`` (erase it whole then). Looks at ``n + 2`` entries at most, walking back from
        the key's oldest version. One read transaction.

        Raises:
            InvalidArgumentError, RecordTooLargeError, StoreClosedError, StorageError.
        """
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = _check_key(key, "key")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise errors.InvalidArgumentError(f"n must be an int >= 1, not {n!r}")
        if type(max_ts) is not int or not 0 < max_ts <= MAX_TS:
            _check_ts(max_ts, "max_ts")
        ekey = _encode(key)
        env = self._enter_read()
        try:
            with env.begin(self._versions) as txn:
                cur = txn.cursor()
                # Versions sort newest first: the oldest is just before the next key's.
                if cur.set_range(ekey + _PAST_VERSIONS):
                    after: bytes | None = _decode(cur.key()[:-8])
                    ok = cur.prev()
                else:
                    after = None
                    ok = cur.last()
                seen = nth = 0
                while seen <= n:  # the n oldest, and one more to show they are not all
                    vkey = cur.key() if ok else b""
                    if vkey[:-8] != ekey:
                        return None  # n versions or fewer
                    ts = _INV - _unpack64(vkey[-8:])[0]
                    if ts > max_ts:
                        return None  # n or fewer at or below max_ts
                    seen += 1
                    if seen == n:
                        nth = ts
                    ok = cur.prev()
                return nth, after
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"oldest_versions in {self._path} failed", self._path) from None
        finally:
            self._exit_read()

    def gc(self, watermark: int, *, start: bytes = b"", max_versions: int = 10_000) -> GCResult:
        """Removes versions that no read at ``ts >= watermark`` can see.

        For each key from ``start`` on, every version above ``watermark`` and the newest one at
        or below it are kept, and older ones are removed; if that newest one is a tombstone with
        nothing newer, it goes too (the key then reads as missing, as it did). Reads at
        ``ts >= watermark`` return the same values afterwards; ``get_version`` may report such a
        key as missing instead of ``(ts, None)``. Reads below the watermark may miss versions.

        The work per call is bounded: the call stops once it has examined ``max_versions``
        versions, at a key boundary or, for a key with more versions than that, inside the key
        (``resume`` is then that key again; every call removes at least one version or passes
        at least one key), and commits one LMDB write transaction. Call again with
        ``start=result.resume`` until it is None.

        Args:
            watermark: a timestamp (``MIN_TS..MAX_TS``), typically now minus the maximum
                transaction lifetime (ARCH §2.3).
            start: the first key to collect (``b""`` for the beginning).
            max_versions: the budget of versions examined (>= 1).

        Returns:
            A :class:`GCResult`.

        Raises:
            InvalidArgumentError, DiskFullError, StorageError, StoreClosedError.
        """
        if type(watermark) is not int or not 0 < watermark <= MAX_TS:
            _check_ts(watermark, "watermark")
        start = _check_bound(start, "start")
        if isinstance(max_versions, bool) or not isinstance(max_versions, int) or max_versions < 1:
            raise errors.InvalidArgumentError(
                f"max_versions must be an int >= 1, not {max_versions!r}"
            )
        inv_watermark = _pack64(_INV - watermark)

        def collect(txn: lmdb.Transaction) -> GCResult:
            cur = txn.cursor(self._versions)
            removed = examined = 0
            ok = cur.set_range(_seek(start)) if start else cur.first()
            while ok:
                vkey = cur.key()
                ekey = vkey[:-8]
                if examined >= max_versions:
                    return GCResult(removed, _decode(ekey))
                examined += 1
                newest = True
                if _INV - _unpack64(vkey[-8:])[0] > watermark:
                    # Versions above the watermark are kept: skip them in one seek.
                    newest = False
                    if not cur.set_range(ekey + inv_watermark):
                        break
                    if not cur.key().startswith(ekey):
                        ok = True
                        continue
                    examined += 1
                # The cursor is on the newest version <= watermark: kept, unless it is a
                # tombstone with nothing newer (the key reads as missing either way). Such a
                # tombstone goes last: a call whose budget runs out among the older versions
                # resumes at this key, and must find it still hiding them.
                tombstone = cur.key() if newest and cur.value() == _TOMBSTONE else None
                cur.next()
                # Every older version of the key is invisible at ts >= watermark.
                while cur.key().startswith(ekey):
                    cur.delete()  # moves to the next entry
                    removed += 1
                    examined += 1
                    if examined >= max_versions and cur.key().startswith(ekey):
                        return GCResult(removed, _decode(ekey))
                if tombstone is not None:
                    cur.set_range(tombstone)
                    cur.delete()
                    removed += 1
                ok = bool(cur.key())  # an unpositioned cursor has an empty key
            return GCResult(removed, None)

        def write_gc(txn: lmdb.Transaction) -> GCResult:
            result = collect(txn)
            if watermark > before:
                txn.put(_META_GC_WATERMARK, _pack64(watermark), db=self._meta)
            return result

        with self._write_lock:
            # Published before the deletions commit: a reader that checks gc_watermark after
            # its read (see engine.replica) cannot have read collected data unnoticed.
            before = self._gc_watermark
            self._gc_watermark = max(before, watermark)
            try:
                result = self._run_write(write_gc)
            except BaseException:
                self._gc_watermark = before
                raise
        return result

    # ------------------------------------------------------------------ reading

    def get(self, key: bytes, ts: int) -> bytes | None:
        """The value of ``key`` as of ``ts``: its newest version with ``commit_ts <= ts``.

        Returns:
            The value, or None if the key has no version at or before ``ts`` or that version is
            a tombstone.

        Raises:
            InvalidArgumentError, RecordTooLargeError (key over the limit), StoreClosedError,
            StorageError.
        """
        # This is the hottest path of the store: the gate is inlined (see __init__) and
        # validation takes the slow path only for bad arguments.
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = _check_key(key, "key")
        if type(ts) is not int or not 0 < ts <= MAX_TS:
            _check_ts(ts, "ts")
        ekey = key.replace(b"\x00", b"\x00\xff") + _KEY_END
        readers = self._active_readers
        readers.append(None)
        try:
            if self._hold:
                self._wait_gate()
            env = self._env
            if env is None:
                raise errors.StoreClosedError(f"MVCC store {self._path} is closed")
            txn = env.begin(self._versions)
            try:
                cur = txn.cursor()
                if not cur.set_range(ekey + _pack64(_INV - ts)):
                    return None
                # key() and value() are cheaper than item() in py-lmdb.
                vkey = cur.key()
                value = cur.value()
            finally:
                txn.abort()
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"get from {self._path} failed", self._path) from None
        finally:
            readers.pop()
            if self._hold:
                self._notify_gate()
        # No encoded key is a prefix of another, so a version key that starts with enc(key)
        # is a version of this key.
        if value[0] == 1 and vkey.startswith(ekey):  # 1: _TAG_VALUE
            return value[1:]
        return None

    def get_version(self, key: bytes, ts: int) -> tuple[int, bytes | None] | None:
        """The newest version of ``key`` with ``commit_ts <= ts``.

        Returns:
            ``(commit_ts, value)`` with value None for a tombstone, or None if there is no such
            version. After ``gc(watermark)``, a tombstone at or below the watermark with nothing
            newer may have been removed: the key then reads as None here.

        Raises:
            InvalidArgumentError, RecordTooLargeError, StoreClosedError, StorageError.
        """
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = _check_key(key, "key")
        if type(ts) is not int or not 0 < ts <= MAX_TS:
            _check_ts(ts, "ts")
        ekey = key.replace(b"\x00", b"\x00\xff") + _KEY_END
        env = self._enter_read()
        try:
            txn = env.begin(self._versions)
            try:
                cur = txn.cursor()
                if not cur.set_range(ekey + _pack64(_INV - ts)):
                    return None
                vkey = cur.key()
                value = cur.value()
            finally:
                txn.abort()
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"get_version from {self._path} failed", self._path) from None
        finally:
            self._exit_read()
        if not vkey.startswith(ekey):
            return None
        commit_ts = _INV - _unpack64(vkey[-8:])[0]
        return (commit_ts, value[1:] if value[0] == _TAG_VALUE else None)

    def latest_versions(self, since_ts: int = 0) -> Iterator[tuple[bytes, int]]:
        """``(key, commit_ts)`` of every key whose newest version is above ``since_ts``.

        Tombstones count: a delete is a commit. Keys come in key order. This is how a state
        machine rebuilds in-memory indexes of recent commits (the adjudicator's last-commit
        table) after a restart or a snapshot install; it reads every key's newest version
        once, in pages of a few thousand keys (listed or not), each page in its own read
        transaction, so it never holds one open for long (a concurrent write may or may not
        be seen).

        Raises:
            InvalidArgumentError, StoreClosedError, StorageError.
        """
        if type(since_ts) is not int or not 0 <= since_ts <= MAX_TS:
            raise errors.InvalidArgumentError(f"since_ts must be an int in 0..{MAX_TS}, "
                                              f"not {_describe(since_ts)}")
        seek = b""
        while True:
            page: list[tuple[bytes, int]] = []
            env = self._enter_read()
            try:
                with env.begin(self._versions) as txn:
                    cur = txn.cursor()
                    found = cur.set_range(seek)
                    # A page is the keys looked at, not the keys listed: with few of them
                    # above since_ts, one page would otherwise walk the whole store.
                    for _ in range(4096):
                        if not found:
                            break
                        vkey = cur.key()
                        ekey = vkey[:-8]
                        ts = _INV - _unpack64(vkey[-8:])[0]
                        if ts > since_ts:
                            page.append((_decode(ekey), ts))
                        # The newest version comes first; skip the key's older ones.
                        seek = ekey + _PAST_VERSIONS
                        found = cur.set_range(seek)
                    done = not found
            except lmdb.Error as exc:
                raise _lmdb_error(exc, f"latest_versions in {self._path} failed",
                                  self._path) from None
            finally:
                self._exit_read()
            yield from page
            if done:
                return

    def scan(
        self,
        start: bytes,
        end: bytes | None,
        ts: int,
        *,
        limit: int | None = None,
        reverse: bool = False,
        max_bytes: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The live keys in ``[start, end)`` as of ``ts``, in key order.

        For each key, the newest version with ``commit_ts <= ts`` is taken; keys whose version
        is a tombstone (or that have none) are skipped. The cost is a few cursor seeks per key
        in the range, whatever the number of versions of each.

        Args:
            start: the smallest key (``b""`` for the beginning). A bound may be one byte
                longer than the longest key, so that ``last + b"\\x00"`` continues a paged
                scan after any key.
            end: one past the largest key, or None for no upper bound.
            ts: the read timestamp.
            limit: at most this many pairs (None for no limit).
            reverse: descending key order (the first pairs are those just below ``end``).
            max_bytes: stop after the pair that brings the keys and values returned to this
                many bytes or more (None for no bound); a page of a larger scan, to be
                continued from just past its last key.

        Returns:
            ``[(key, value), ...]``.

        Raises:
            InvalidArgumentError, StoreClosedError, StorageError.
        """
        start = _check_bound(start, "start")
        if end is not None:
            end = _check_bound(end, "end")
        if type(ts) is not int or not 0 < ts <= MAX_TS:
            _check_ts(ts, "ts")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise errors.InvalidArgumentError(f"limit must be None or an int >= 0, not {limit!r}")
        if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
            raise errors.InvalidArgumentError(f"max_bytes must be None or an int >= 1, not "
                                              f"{max_bytes!r}")
        if limit == 0 or (end is not None and end <= start):
            self._live_env()
            return []
        inv_ts = _pack64(_INV - ts)
        # Version keys compare with encoded bounds directly: a version of a key k >= end has
        # vkey >= enc(end), a version of k < start has vkey < enc(start) (prefix-freeness).
        start_enc = _encode(start) if start else b""
        end_enc = _encode(end) if end is not None else None
        # Where a forward scan begins: start's newest version <= ts, unless start is longer
        # than any key (then it has none; see _seek).
        if start and len(start) <= MAX_KEY_SIZE:
            start_seek = start_enc + inv_ts
        else:
            start_seek = _seek(start) if start else b""
        out: list[tuple[bytes, bytes]] = []
        env = self._enter_read()
        try:
            with env.begin(self._versions) as txn:
                cur = txn.cursor()
                if reverse:
                    self._scan_reverse(cur, start_enc, end, end_enc, inv_ts, limit, max_bytes,
                                       out)
                else:
                    self._scan_forward(cur, start_seek, end_enc, ts, inv_ts, limit, max_bytes,
                                       out)
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"scan of {self._path} failed", self._path) from None
        finally:
            self._exit_read()
        return out

    def side_get(self, key: bytes) -> bytes | None:
        """The side table's entry for ``key``, or None if it has none.

        Raises:
            InvalidArgumentError: ``key`` is not bytes of 1..:data:`MAX_SIDE_KEY_SIZE` bytes.
            StoreClosedError, StorageError.
        """
        key = _check_side_key(key, "side key")
        env = self._enter_read()
        try:
            with env.begin(self._side) as txn:
                value = txn.get(key)
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"side_get from {self._path} failed", self._path) from None
        finally:
            self._exit_read()
        return value

    def side_scan(
        self, start: bytes = b"", end: bytes | None = None, *, limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The side table's entries with ``start <= key < end``, in ascending key order.

        The entries are read in one LMDB read transaction (a consistent view); the side table
        is meant for small records, so ask for a ``limit`` and continue from just past the last
        key returned (``last + b"\\x00"``) when it may be large.

        Args:
            start: the smallest key (``b""`` for the beginning).
            end: one past the largest key, or None for no upper bound.
            limit: at most this many pairs (None for no limit).
            max_bytes: stop after the pair that brings the keys and values returned to this
                many bytes or more (None for no bound), as :meth:`scan` does.

        Returns:
            ``[(key, value), ...]``.

        Raises:
            InvalidArgumentError: a bound that is not bytes or is more than one byte longer
                than any side key (:data:`MAX_SIDE_KEY_SIZE`), or a bad ``limit`` or
                ``max_bytes``.
            StoreClosedError, StorageError.
        """
        return self._side_walk(start, end, limit, True, max_bytes)

    def side_keys(self, start: bytes = b"", end: bytes | None = None, *,
                  limit: int | None = None) -> list[bytes]:
        """The keys :meth:`side_scan` would return, without reading their values (which
        may be large)."""
        return self._side_walk(start, end, limit, False)

    def _side_walk(self, start, end, limit, values: bool, max_bytes=None) -> list:
        start = _check_side_key(start, "start", bound=True)
        if end is not None:
            end = _check_side_key(end, "end", bound=True)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise errors.InvalidArgumentError(f"limit must be None or an int >= 0, not {limit!r}")
        if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
            raise errors.InvalidArgumentError(f"max_bytes must be None or an int >= 1, not "
                                              f"{max_bytes!r}")
        budget = max_bytes
        if limit == 0 or (end is not None and end <= start):
            self._live_env()
            return []
        out: list = []
        env = self._enter_read()
        try:
            with env.begin(self._side) as txn:
                cur = txn.cursor()
                ok = cur.set_range(start) if start else cur.first()
                while ok:
                    key = cur.key()
                    if end is not None and key >= end:
                        break
                    value = cur.value() if values else b""
                    out.append((key, value) if values else key)
                    if limit is not None and len(out) >= limit:
                        break
                    if budget is not None:
                        budget -= len(key) + len(value)
                        if budget <= 0:
                            break
                    ok = cur.next()
        except lmdb.Error as exc:
            raise _lmdb_error(exc, f"side_scan of {self._path} failed", self._path) from None
        finally:
            self._exit_read()
        return out

    @staticmethod
    def _scan_forward(cur, start_seek, end_enc, ts, inv_ts, limit, max_bytes, out) -> None:
        budget = max_bytes
        ok = cur.set_range(start_seek) if start_seek else cur.first()
        while ok:
            vkey = cur.key()
            if end_enc is not None and vkey >= end_enc:
                return
            ekey = vkey[:-8]
            if _INV - _unpack64(vkey[-8:])[0] > ts:
                # Landed on a key's newest versions, above ts: seek to its newest <= ts (or,
                # if it has none, to the next key).
                ok = cur.set_range(ekey + inv_ts)
                continue
            value = cur.value()
            if value[0] == _TAG_VALUE:
                key = _decode(ekey)
                out.append((key, value[1:]))
                if limit is not None and len(out) >= limit:
                    return
                if budget is not None:
                    budget -= len(key) + len(value) - 1
                    if budget <= 0:
                        return
            ok = cur.set_range(ekey + _PAST_VERSIONS)

    @staticmethod
    def _scan_reverse(cur, start_enc, end, end_enc, inv_ts, limit, max_bytes, out) -> None:
        budget = max_bytes
        if end_enc is None:
            ok = cur.last()
        else:
            ok = cur.prev() if cur.set_range(_seek(end)) else cur.last()
        while ok:
            vkey = cur.key()
            if vkey < start_enc:
                return
            # The cursor is on some version (usually the oldest) of the key ekey.
            ekey = vkey[:-8]
            if cur.set_range(ekey + inv_ts) and cur.key().startswith(ekey):
                value = cur.value()
                if value[0] == _TAG_VALUE:
                    key = _decode(ekey)
                    out.append((key, value[1:]))
                    if limit is not None and len(out) >= limit:
                        return
                    if budget is not None:
                        budget -= len(key) + len(value) - 1
                        if budget <= 0:
                            return
            # Step to the previous key: onto this key's newest version, then one back.
            cur.set_range(ekey)
            ok = cur.prev()

    # ------------------------------------------------------------------ snapshots

    def snapshot_chunks(self, chunk_bytes: int = DEFAULT_SNAPSHOT_CHUNK_BYTES, *,
                        interruptible: bool = False) -> SnapshotStream:
        """A consistent snapshot of the whole store as a stream of chunks (for Raft).

        The snapshot is taken now, in one LMDB read transaction that stays open until the
        stream is exhausted or closed: close it (or use it as a context manager) if you stop
        early. While it is open, LMDB cannot reuse pages freed after it began, and a write that
        must grow the map waits for it — unless it is ``interruptible``: then such a write
        ends it (its next chunk raises :class:`SnapshotInterruptedError`), and waits only for
        the chunk in progress, if any, never for the reader to come back for the next one. A
        stream read by a thread of its own while another thread writes must be interruptible:
        the writer could otherwise wait for it for as long as the whole snapshot takes (or for
        good, if nothing reads it). The chunks are self-describing msgpack maps (format
        :data:`SNAPSHOT_FORMAT_VERSION`), and :meth:`restore` verifies all of it:

        - a header: ``kind`` ``"header"``, ``magic``, ``format``, ``applied_index``,
          ``gc_watermark``, ``app_state``, ``entries`` (versions) and ``side_entries``;
        - data chunks ``{"kind": "data", "db": db, "pairs": [k0, v0, k1, v1, ...]}`` of raw
          entries in key order, every ``"versions"`` chunk before every ``"side"`` chunk, each
          with at least one entry;
        - a trailer: ``kind`` ``"trailer"``, ``chunks`` (the number of chunks before it),
          ``entries``, ``side_entries`` and ``crc32c``, the CRC-32C of every preceding chunk.

        Format 1 had no ``side_entries`` fields and no ``"side"`` chunks.

        Args:
            chunk_bytes: the approximate size of a data chunk (4 KiB..64 MiB); a chunk holds
                at least one entry, so a large value makes a larger chunk.
            interruptible: see above.

        Returns:
            A :class:`SnapshotStream` (an iterator of ``bytes``); its ``applied_index`` says
            which Raft index the snapshot covers.

        Raises:
            InvalidArgumentError, StoreClosedError, StorageError.
        """
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int):
            raise errors.InvalidArgumentError(
                f"chunk_bytes must be an int, not {type(chunk_bytes).__name__}"
            )
        if not 4096 <= chunk_bytes <= MAX_SNAPSHOT_CHUNK_BYTES:
            raise errors.InvalidArgumentError(
                f"chunk_bytes {chunk_bytes} is outside 4096..{MAX_SNAPSHOT_CHUNK_BYTES}"
            )
        return SnapshotStream(self, chunk_bytes, interruptible)

    def restore(self, chunks: Iterable[bytes]) -> int:
        """Replaces the whole content of the store with a snapshot from :meth:`snapshot_chunks`.

        The chunks are first read to the end and verified (into a temporary file in the store's
        directory, so memory stays bounded and no write transaction is held while the caller
        produces chunks); then the old content — versions and side table alike — is replaced
        in one LMDB write transaction: a side entry absent from the snapshot is gone afterwards.
        The applied index, GC watermark and :attr:`app_state` become the snapshot's. Snapshots
        of the previous format (1, written before the side table existed) are accepted and
        leave the side table empty.

        Args:
            chunks: the snapshot's chunks, in order.

        Returns:
            The snapshot's applied index.

        Raises:
            CorruptStateError: the stream is truncated, reordered, altered or of an unknown
                format; the store is unchanged.
            DiskFullError, StorageError, StoreClosedError.
        """
        self._live_env()
        try:
            spool = tempfile.TemporaryFile(dir=self._path, prefix="restore-")
        except OSError as exc:
            raise _os_error(exc, f"cannot create a temporary file in {self._path}") from None
        try:
            header = _spool_snapshot(chunks, spool)
            applied_index = header["applied_index"]
            watermark = header["gc_watermark"]
            app_state = header.get("app_state", b"")

            def replace(txn: lmdb.Transaction) -> None:
                txn.drop(self._versions, delete=False)
                txn.drop(self._side, delete=False)
                cursors = {"versions": txn.cursor(self._versions), "side": txn.cursor(self._side)}
                for db, pairs in _read_spool(spool):
                    it = iter(pairs)
                    consumed, added = cursors[db].putmulti(zip(it, it), append=True)
                    if added != consumed:
                        # append=True refuses a key not above the last one: the verified stream
                        # was not in key order, so it was not written by snapshot_chunks.
                        what = "versions" if db == "versions" else "side-table entries"
                        raise errors.CorruptStateError(f"snapshot {what} are not in key order")
                txn.put(_META_APPLIED, _pack64(applied_index), db=self._meta)
                txn.put(_META_GC_WATERMARK, _pack64(watermark), db=self._meta)
                txn.put(_META_APP_STATE, app_state, db=self._meta)

            with self._write_lock:
                self._run_write(replace)
                self._applied_index = applied_index
                self._gc_watermark = watermark
                self._app_state = app_state
        finally:
            _close_spool(spool)
        return applied_index

    # ------------------------------------------------------------------ durability, lifetime

    def checkpoint(self) -> None:
        """Makes every applied entry durable (an fsync of the map), whatever ``sync`` is.

        Call it, and let it return, before compacting the Raft log past :attr:`applied_index`.

        Raises:
            StorageError: the checkpoint failed; the store is then failed: every later
                checkpoint and write raises StoreFailedError until it is reopened.
            StoreFailedError, StoreClosedError.
        """
        self._live_env()
        self._refuse_if_failed()
        # The map's dirty pages are written back a slice at a time first: one sync of a large
        # backlog would keep the device busy for as long, and every fsync queued behind it —
        # the Raft log's, on its event loop — would wait as long. That runs outside the
        # reader gate, on a descriptor of its own (the store may close, or grow its map, which
        # waits for readers, meanwhile); only the final sync, with little left to write,
        # holds the gate.
        env = self._enter_read()
        try:
            fd = os.dup(self._data_fd) if self._data_fd >= 0 else -1
        except OSError as exc:
            raise storage_error(exc, f"checkpoint of {self._path} failed") from None
        finally:
            self._exit_read()
        if fd >= 0:
            try:
                size = os.fstat(fd).st_size
                for offset in range(0, size, _WRITE_BACK_SLICE):
                    write_back(fd, offset, _WRITE_BACK_SLICE)
            except OSError as exc:
                self._failed = True
                raise storage_error(exc, f"checkpoint of {self._path} failed") from None
            finally:
                os.close(fd)
        env = self._enter_read()
        try:
            env.sync(True)
        except lmdb.Error as exc:
            self._failed = True
            raise _lmdb_error(exc, f"checkpoint of {self._path} failed", self._path) from None
        finally:
            self._exit_read()

    def close(self) -> None:
        """Closes the store; idempotent. Open snapshot streams fail on their next chunk.

        Waits for a write in progress and for reads in flight.
        """
        with self._write_lock:
            env = self._env
            if env is None:
                return
            with self._gate:
                self._hold = True
                while self._active_readers:
                    self._gate.wait()
                try:
                    self._env = None
                    env.close()
                finally:
                    self._hold = False
                    self._gate.notify_all()
                    self._release_files()

    def _release_files(self) -> None:
        if self._data_fd >= 0:
            os.close(self._data_fd)
            self._data_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


    def __del__(self) -> None:
        # No other thread can be using an unreferenced store, so no gate is needed.
        env = getattr(self, "_env", None)
        if env is not None:
            self._env = None
            env.close()
        if getattr(self, "_lock_fd", -1) >= 0 or getattr(self, "_data_fd", -1) >= 0:
            self._release_files()

    def __repr__(self) -> str:
        if self._env is None:
            return f"<MVCCStore {self._path!r} closed>"
        return f"<MVCCStore {self._path!r} applied {self._applied_index}>"

    # ------------------------------------------------------------------ internals

    def _live_env(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise errors.StoreClosedError(f"MVCC store {self._path} is closed")
        return env

    def _refuse_if_failed(self) -> None:
        if self._failed:
            raise errors.StoreFailedError(
                f"MVCC store {self._path} failed an earlier checkpoint; reopen it to recover"
            )

    def _enter_read(self) -> lmdb.Environment:
        """Registers a read in the gate and returns the open environment.

        Every successful call must be paired with :meth:`_exit_read` (also when this raises
        StoreClosedError, the registration is already undone).
        """
        self._active_readers.append(None)
        if self._hold:
            self._wait_gate()
        env = self._env
        if env is None:
            self._exit_read()
            raise errors.StoreClosedError(f"MVCC store {self._path} is closed")
        return env

    def _exit_read(self) -> None:
        self._active_readers.pop()
        if self._hold:
            self._notify_gate()

    def _wait_gate(self) -> None:
        """Slow path of a read that found the gate held: step out, wait, step back in."""
        with self._gate:
            self._active_readers.pop()
            self._gate.notify_all()
            while self._hold:
                self._gate.wait()
            self._active_readers.append(None)

    def _notify_gate(self) -> None:
        with self._gate:
            self._gate.notify_all()

    def _run_write(self, body: Callable[[lmdb.Transaction], _T]) -> _T:
        """Runs ``body`` in a write transaction and commits, growing the map as needed.

        The caller holds ``_write_lock``. On MapFullError the transaction is aborted, the map
        grown and ``body`` run again from the start, so ``body`` must not have other effects.
        """
        env = self._live_env()
        self._refuse_if_failed()
        while True:
            try:
                txn = env.begin(write=True)
            except lmdb.Error as exc:
                raise _lmdb_error(exc, f"cannot begin a write transaction in {self._path}",
                                  self._path) from None
            try:
                result = body(txn)
                txn.commit()
            except lmdb.MapFullError:
                self._abort_write(txn)
                self._grow(wait=True)
                continue
            except lmdb.Error as exc:
                self._abort_write(txn)
                if self._disk_full(exc):
                    raise errors.DiskFullError(
                        f"write to {self._path} failed: no space left on device"
                    ) from None
                raise _lmdb_error(exc, f"write to {self._path} failed", self._path) from None
            except BaseException:
                self._abort_write(txn)
                raise
            break
        self._maybe_grow_early(env)
        return result

    def _disk_full(self, exc: lmdb.Error) -> bool:
        """Whether a failed write transaction ran out of disk space. LMDB reports a short
        ``pwrite`` as EIO ("short write, filesystem full?"): without a writable map the file
        grows as pages are written, so a full disk shows up that way, in the commit."""
        if getattr(exc, "code", 0) != _errno.EIO:
            return False
        try:
            st = os.statvfs(self._path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < self._psize

    def _abort_write(self, txn: lmdb.Transaction) -> None:
        """Aborts a write transaction once no read is in flight.

        py-lmdb's C binding aborts a write transaction under an environment-wide lock that
        every cursor operation also takes, shared: with a few threads reading without pause,
        the abort can wait forever. Holding new reads back for the moment avoids that.
        """
        with self._gate:
            self._hold = True
            try:
                while self._active_readers:
                    self._gate.wait()
                _abort_quietly(txn)
            finally:
                self._hold = False
                self._gate.notify_all()

    def _maybe_grow_early(self, env: lmdb.Environment) -> None:
        """Grows the map when less than half a growth step is left, if that needs no waiting.

        Never raises: it runs after a commit, which must not be reported as failed. A failure
        here (no disk space, say) shows again, and is reported, by the write that needs room.
        """
        try:
            used = (env.info()["last_pgno"] + 1) * self._psize
            # The threshold follows the step (not the map size) so that a large map keeps about
            # one step of headroom rather than doubling the disk it reserves.
            if self._map_size - used < min(self._map_size, MAX_GROWTH_STEP) // 2:
                self._grow(wait=False)
        except (errors.StorageError, lmdb.Error):
            pass

    def _grow(self, *, wait: bool) -> None:
        """Doubles the map (by at most MAX_GROWTH_STEP). The caller holds ``_write_lock``
        and has no transaction open.

        With ``wait`` false it gives up at once if a snapshot is open or a read in flight.
        """
        new_size = _round_to_page(self._map_size + min(self._map_size, MAX_GROWTH_STEP))
        env = self._live_env()
        with self._gate:
            if wait:
                # A snapshot's transaction would be invalidated by the remap: let open ones
                # finish, and keep new ones from starting so that they cannot starve us. An
                # interruptible one is ended now if it is between chunks, else at the end of
                # its chunk in progress (SnapshotStream._park).
                self._resize_wanted = True
                try:
                    while self._open_snapshots:
                        # Not pop(): a stream being collected is dead in the set for a moment
                        # before it leaves it (then it releases itself), and pop() would raise.
                        for stream in list(self._idle_snapshots):
                            stream._interrupt()
                        if self._open_snapshots:
                            self._gate.wait()
                finally:
                    self._resize_wanted = False
            elif self._open_snapshots:
                return
            self._hold = True
            try:
                if self._active_readers:
                    if not wait:
                        return
                    while self._active_readers:
                        self._gate.wait()
                # Reserve the disk space first: with a writable map, a page written into an
                # unreserved hole on a full disk would raise SIGBUS instead of an error.
                self._reserve(new_size)
                try:
                    env.set_mapsize(new_size)
                except lmdb.Error as exc:
                    raise _lmdb_error(exc, f"cannot grow the map of {self._path} to {new_size} "
                                      "bytes", self._path) from None
                self._map_size = env.info()["map_size"]
                self._map_resizes += 1
            finally:
                self._hold = False
                self._gate.notify_all()

    def _reserve(self, size: int) -> None:
        if self._data_fd < 0:
            return
        _fallocate(self._data_fd, size, f"the map of {self._path}")

    def _reserve_lock_file(self) -> None:
        """Gives lock.mdb its disk blocks before LMDB maps it. LMDB makes the file with
        ``ftruncate`` (a hole) and writes its reader table through a shared map, so on a full
        disk opening a new store would die of SIGBUS; reserved, the full disk is DiskFullError
        here. A file longer than LMDB's own size only gives it more reader slots."""
        path = os.path.join(self._path, "lock.mdb")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"cannot open {path}") from None
        try:
            _fallocate(fd, _LOCK_FILE_BYTES, path)
        finally:
            os.close(fd)


class SnapshotStream:
    """An iterator over the chunks of one consistent snapshot (see
    :meth:`MVCCStore.snapshot_chunks`).

    It owns an LMDB read transaction from its creation until it is exhausted, closed or
    garbage collected. Chunks may be taken from different threads, one at a time.

    Attributes:
        applied_index: the Raft index the snapshot covers.
        gc_watermark: the store's GC watermark when the snapshot was taken.
        app_state: the store's :attr:`MVCCStore.app_state` when the snapshot was taken.
        entries: the number of versions in the snapshot.
        side_entries: the number of side-table entries in the snapshot.
    """

    def __init__(self, store: MVCCStore, chunk_bytes: int, interruptible: bool = False) -> None:
        self._interruptible = interruptible
        self._interrupted = False  # ended by a grower; the next chunk raises
        self._path = store._path
        self._store: MVCCStore | None = None
        self._txn: lmdb.Transaction | None = None
        self._chunk_bytes = chunk_bytes
        self._state = "header"
        self._crc = 0
        self._chunks = 0
        self._pairs = 0
        self._side_pairs = 0
        self._iter: Iterator[tuple[bytes, bytes]] | None = None
        self._side_iter: Iterator[tuple[bytes, bytes]] | None = None
        self.applied_index = 0
        self.gc_watermark = 0
        self.app_state = b""
        self.entries = 0
        self.side_entries = 0
        gate = store._gate
        with gate:
            while store._resize_wanted:
                gate.wait()
            store._open_snapshots += 1
        self._store = store
        try:
            env = store._enter_read()
            try:
                self._txn = env.begin(store._versions)
                self.entries = self._txn.stat(store._versions)["entries"]
                self.side_entries = self._txn.stat(store._side)["entries"]
                # The applied index is read from the same transaction as the data, not from
                # the store's cache, so that the two agree.
                self.applied_index = _get_u64(self._txn, _META_APPLIED, store._path, store._meta)
                self.gc_watermark = _get_u64(
                    self._txn, _META_GC_WATERMARK, store._path, store._meta
                )
                self.app_state = bytes(self._txn.get(_META_APP_STATE, db=store._meta) or b"")
                self._iter = self._txn.cursor().iternext()
                self._side_iter = self._txn.cursor(store._side).iternext()
            finally:
                store._exit_read()
            if interruptible:
                with gate:
                    self._park()
        except lmdb.Error as exc:
            self.close()
            raise _lmdb_error(exc, f"cannot begin a snapshot of {self._path}", self._path) from None
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> SnapshotStream:
        return self

    def __next__(self) -> bytes:
        store = self._store
        if self._interruptible and store is not None:
            # Take the stream out of the idle list, so that a grower leaves it to this chunk,
            # unless a grower wants it ended (or has ended it) already.
            with store._gate:
                if self._store is not None:
                    if store._resize_wanted:
                        self._interrupt()
                    else:
                        store._idle_snapshots.discard(self)
        if self._interrupted:
            self._interrupted = False
            raise SnapshotInterruptedError(
                f"snapshot of {self._path} interrupted: the store is growing its map")
        if store is None or self._state == "done":
            raise StopIteration
        try:
            store._enter_read()
        except BaseException:
            self._finish()
            raise
        try:
            if self._state == "header":
                chunk = _pack_chunk(
                    {
                        "kind": "header",
                        "magic": SNAPSHOT_MAGIC,
                        "format": SNAPSHOT_FORMAT_VERSION,
                        "applied_index": self.applied_index,
                        "gc_watermark": self.gc_watermark,
                        "app_state": self.app_state,
                        "entries": self.entries,
                        "side_entries": self.side_entries,
                    }
                )
                self._state = "versions"
            elif self._state != "trailer":
                chunk = self._data_chunk()
            else:
                chunk = self._trailer()
        except lmdb.Error as exc:
            self._state = "done"
            store._exit_read()
            self._finish()
            raise _lmdb_error(exc, f"snapshot read of {self._path} failed", self._path) from None
        except BaseException:
            self._state = "done"
            store._exit_read()
            self._finish()
            raise
        store._exit_read()
        if self._state == "done":
            self._finish()
        else:
            self._crc = crc32c(chunk, self._crc)
            self._chunks += 1
            if self._interruptible:
                with store._gate:
                    self._park()
        return chunk

    def _data_chunk(self) -> bytes:
        """The next data chunk: the versions first, then the side table; then the trailer.

        A data chunk holds entries of one sub-database only, and at least one entry.
        """
        limit = self._chunk_bytes
        while self._state != "trailer":
            db = self._state
            flat: list[bytes] = []
            size = 0
            for key, value in self._iter if db == "versions" else self._side_iter:
                flat.append(key)
                flat.append(value)
                size += len(key) + len(value) + 10  # about msgpack's per-item overhead
                if size >= limit:
                    break
            else:
                self._state = "side" if db == "versions" else "trailer"
            if flat:
                if db == "versions":
                    self._pairs += len(flat) // 2
                else:
                    self._side_pairs += len(flat) // 2
                return _pack_chunk({"kind": "data", "db": db, "pairs": flat})
        return self._trailer()

    def _trailer(self) -> bytes:
        """The last chunk: counts and the CRC-32C of every chunk before it."""
        self._state = "done"
        return _pack_chunk(
            {
                "kind": "trailer",
                "chunks": self._chunks,
                "entries": self._pairs,
                "side_entries": self._side_pairs,
                "crc32c": self._crc,
            }
        )

    def close(self) -> None:
        """Ends the snapshot's read transaction; idempotent."""
        self._state = "done"
        self._finish()
        # After: a grower may end the stream while close() waits for the gate in _finish(),
        # and a stream its owner closed ends quietly.
        self._interrupted = False

    def _park(self) -> None:
        """Steps an interruptible stream out of a chunk (or out of its creation): it is ended
        now if a grower waits, else left where a grower can end it. The caller holds the
        gate."""
        if self._store._resize_wanted:
            self._interrupt()
        else:
            self._store._idle_snapshots.add(self)

    def _interrupt(self) -> None:
        """Ends the stream for a grower; its next chunk raises SnapshotInterruptedError. The
        caller holds the gate, and the stream is between chunks."""
        self._interrupted = True
        self._state = "done"
        self._finish()

    def _finish(self) -> None:
        # Under the gate: a grower may end an idle interruptible stream from its own thread.
        store = self._store
        if store is None:
            return
        with store._gate:
            if self._store is None:
                return
            self._store = None
            txn, self._txn = self._txn, None
            self._iter = self._side_iter = None
            if txn is not None:
                _abort_quietly(txn)
            store._idle_snapshots.discard(self)
            store._open_snapshots -= 1
            store._gate.notify_all()

    def __enter__(self) -> SnapshotStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_store", None) is not None:
            self._finish()


# ---------------------------------------------------------------------- snapshot verification


def _pack_chunk(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _spool_snapshot(chunks: Iterable[bytes], spool) -> dict[str, Any]:
    """Verifies a snapshot stream while copying its entries to ``spool``; returns the header.

    Each data chunk is written to the spool as one msgpack array ``[db, pairs]`` (``db`` is
    ``"versions"`` or ``"side"``). A header of format 1 (before the side table) gets
    ``side_entries`` 0.
    """

    def corrupt(why: str) -> errors.CorruptStateError:
        return errors.CorruptStateError(f"snapshot rejected: {why}")

    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    crc = 0
    count = 0
    entries = 0
    side_entries = 0
    in_side = False  # a side chunk was seen: no versions chunk may follow
    packer = msgpack.Packer(use_bin_type=True)
    for raw in chunks:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise corrupt(f"chunk {count} is {type(raw).__name__}, not bytes")
        if trailer is not None:
            raise corrupt("chunks follow the trailer")
        try:
            chunk = msgpack.unpackb(raw, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # msgpack reports bad input with several types (FormatError, ExtraData, ...).
            raise corrupt(f"chunk {count} is not msgpack ({exc})") from None
        if not isinstance(chunk, dict):
            raise corrupt(f"chunk {count} is not a map")
        kind = chunk.get("kind")
        if header is None:
            if kind != "header" or chunk.get("magic") != SNAPSHOT_MAGIC:
                raise corrupt("the first chunk is not a snapshot header")
            fmt = chunk.get("format")
            if type(fmt) is not int or fmt not in _READABLE_SNAPSHOT_FORMATS:
                raise corrupt(
                    f"format {fmt!r} is not one of {list(_READABLE_SNAPSHOT_FORMATS)}"
                )
            fields = ["applied_index", "gc_watermark", "entries"]
            if fmt >= 2:
                fields.append("side_entries")
            else:
                chunk["side_entries"] = 0
            for field in fields:
                value = chunk.get(field)
                # The watermark is a timestamp: one above MAX_TS would put every valid read
                # timestamp below it, so that no read could be served from the store again.
                highest = MAX_TS if field == "gc_watermark" else _MAX_INDEX
                if type(value) is not int or not 0 <= value <= highest:
                    raise corrupt(f"header field {field} is {value!r}")
            if type(chunk.get("app_state", b"")) is not bytes:
                raise corrupt(f"header field app_state is {chunk.get('app_state')!r}")
            header = chunk
        elif kind == "data":
            db = chunk.get("db")
            pairs = chunk.get("pairs")
            if not isinstance(pairs, list) or len(pairs) % 2:
                raise corrupt(f"data chunk {count} is malformed")
            if db == "versions":
                if in_side:
                    raise corrupt(f"data chunk {count} holds versions after side entries")
                for i in range(0, len(pairs), 2):
                    _check_snapshot_entry(pairs[i], pairs[i + 1], count, corrupt)
                entries += len(pairs) // 2
            elif db == "side" and header["format"] >= 2:
                for i in range(0, len(pairs), 2):
                    _check_snapshot_side_entry(pairs[i], pairs[i + 1], count, corrupt)
                side_entries += len(pairs) // 2
                in_side = True
            else:
                raise corrupt(f"data chunk {count} is for an unknown table {db!r}")
            _spool_write(spool, packer.pack([db, pairs]))
        elif kind == "trailer":
            if chunk.get("crc32c") != crc:
                raise corrupt("checksum mismatch")
            if chunk.get("chunks") != count or chunk.get("entries") != entries:
                raise corrupt(
                    f"the trailer counts {chunk.get('chunks')!r} chunks and "
                    f"{chunk.get('entries')!r} entries, the stream had {count} and {entries}"
                )
            if header["format"] >= 2 and chunk.get("side_entries") != side_entries:
                raise corrupt(
                    f"the trailer counts {chunk.get('side_entries')!r} side entries, "
                    f"the stream had {side_entries}"
                )
            trailer = chunk
        else:
            raise corrupt(f"chunk {count} has unexpected kind {kind!r}")
        crc = crc32c(raw, crc)
        count += 1
    if header is None:
        raise corrupt("the stream is empty")
    if trailer is None:
        raise corrupt("the stream is truncated (no trailer)")
    if entries != header["entries"]:
        raise corrupt(f"the header announces {header['entries']} entries, the stream had {entries}")
    if side_entries != header["side_entries"]:
        raise corrupt(
            f"the header announces {header['side_entries']} side entries, "
            f"the stream had {side_entries}"
        )
    _spool_write(spool, None)
    return header


def _spool_write(spool, data: bytes | None) -> None:
    """Writes ``data`` to the spool, or flushes it (None).

    Only the spool's own I/O errors become StorageError: an OSError raised by the caller's
    chunk source (a dropped connection, say) passes through unchanged.
    """
    try:
        if data is None:
            spool.flush()
        else:
            spool.write(data)
    except OSError as exc:
        raise _os_error(exc, "cannot spool the snapshot") from None


def _close_spool(spool) -> None:
    """Closes the restore spool. Its content has been read or is abandoned by then, so what
    close() may still fail to flush of it is lost harmlessly: on a full disk that failure must
    not replace the DiskFullError being raised (nor fail a restore that has committed)."""
    try:
        spool.close()
    except OSError:
        pass


def _check_snapshot_entry(key: Any, value: Any, chunk: int, corrupt) -> None:
    if (
        type(key) is not bytes
        or type(value) is not bytes
        or not _MIN_VERSION_KEY_SIZE <= len(key) <= _MAX_VERSION_KEY_SIZE
        or key[-10:-8] != _KEY_END
        # In an encoded key body every zero byte is followed by 0xff.
        or b"\x00" in key[:-10].replace(b"\x00\xff", b"")
        # The user key (each "\x00\xff" one byte of it) is within the limit: the size
        # bounds above also let through keys of up to twice it without zero bytes.
        or len(key) - 10 - key[:-10].count(b"\x00\xff") > MAX_KEY_SIZE
        or not value
        or len(value) > 1 + MAX_VALUE_SIZE
        or not (value == _TOMBSTONE or value[0] == _TAG_VALUE)
        or key[-8:] == _PAST_VERSIONS
        or key[-8:] == b"\x00" * 8
    ):
        raise corrupt(f"data chunk {chunk} holds a malformed entry")


def _check_snapshot_side_entry(key: Any, value: Any, chunk: int, corrupt) -> None:
    if (
        type(key) is not bytes
        or type(value) is not bytes
        or not 0 < len(key) <= MAX_SIDE_KEY_SIZE
        or len(value) > MAX_VALUE_SIZE
    ):
        raise corrupt(f"data chunk {chunk} holds a malformed side entry")


def _read_spool(spool) -> Iterator[tuple[str, list[bytes]]]:
    """The spooled data chunks, as ``(db, pairs)``."""
    spool.seek(0)
    unpacker = msgpack.Unpacker(spool, raw=False, max_buffer_size=0)
    for db, pairs in unpacker:
        yield db, pairs


# ---------------------------------------------------------------------- encoding, validation


def _encode(key: bytes) -> bytes:
    return key.replace(b"\x00", b"\x00\xff") + _KEY_END


def _decode(ekey: bytes) -> bytes:
    # In the encoded body every zero byte is followed by 0xff, so replacing left to right
    # is unambiguous.
    return ekey[:-2].replace(b"\x00\xff", b"\x00")


def _fallocate(fd: int, size: int, what: str) -> None:
    """Reserves the disk blocks of the first ``size`` bytes of ``fd`` (DiskFullError when
    the disk is full); a file system that cannot reserve is left to go on without.

    A failed reservation gives back what it took: ext4 and XFS keep the blocks allocated
    before the disk ran out, and the longer file, which would take the disk's last free space
    from every other file of the node. Only what lies past the file's old end is cut off: no
    page of the map is there (the map is grown after its space is reserved).
    """
    try:
        before = os.fstat(fd).st_size
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (_errno.EOPNOTSUPP, _errno.EINVAL, _errno.ENOSYS):
            return  # the file system cannot reserve; nothing better to do than go on
        try:
            if os.fstat(fd).st_size > before:
                os.ftruncate(fd, before)
        except OSError:
            pass  # the reservation's error is the one to report
        raise _os_error(exc, f"cannot reserve {size} bytes for {what}") from None


def _round_to_page(size: int) -> int:
    return -(-size // _PAGE_SIZE) * _PAGE_SIZE


def _get_u64(txn: lmdb.Transaction, name: bytes, path: str, db=None) -> int:
    raw = txn.get(name, db=db) if db is not None else txn.get(name)
    if raw is None:
        return 0
    if len(raw) != 8:
        raise errors.CorruptStateError(
            f"meta record {name.decode()} of {path} is {raw.hex()}", path
        )
    return _unpack64(raw)[0]


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_key(key: object, name: str) -> bytes:
    """Slow path of key validation: returns the key as bytes or raises."""
    if not isinstance(key, bytes):
        raise errors.InvalidArgumentError(f"{name} must be bytes, not {_describe(key)}")
    if not key:
        raise errors.InvalidArgumentError(f"{name} must not be empty")
    if len(key) > MAX_KEY_SIZE:
        raise errors.RecordTooLargeError(
            f"{name} is {len(key)} bytes, over the {MAX_KEY_SIZE}-byte limit"
        )
    return bytes(key)


def _check_bound(bound: object, name: str) -> bytes:
    """Validates a key-range bound: bytes of up to :data:`MAX_KEY_SIZE` ``+ 1``, so that
    ``key + b"\\x00"`` (the bound just past ``key``, where a paged scan continues) is one for
    every key. Seek with :func:`_seek`, which also takes the longer ones."""
    if not isinstance(bound, bytes):
        raise errors.InvalidArgumentError(f"{name} must be bytes, not {_describe(bound)}")
    if len(bound) > MAX_KEY_SIZE + 1:
        raise errors.InvalidArgumentError(
            f"{name} is {len(bound)} bytes, over the longest key ({MAX_KEY_SIZE}) plus one"
        )
    return bytes(bound)


def _seek(bound: bytes) -> bytes:
    """The versions-table seek target of a bound: ``set_range`` on it lands on the newest
    version of the first key ``>= bound``. A bound longer than any key is no key (its
    encoding may not even fit LMDB's key limit): the keys at or above it are those above its
    first :data:`MAX_KEY_SIZE` bytes, so the seek goes past that key's versions."""
    if len(bound) <= MAX_KEY_SIZE:
        return _encode(bound)
    return _encode(bound[:MAX_KEY_SIZE]) + _PAST_VERSIONS


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise errors.InvalidArgumentError(
            f"a value must be bytes or None (delete), not {_describe(value)}"
        )
    if len(value) > MAX_VALUE_SIZE:
        raise errors.RecordTooLargeError(
            f"a value is {len(value)} bytes, over the {MAX_VALUE_SIZE}-byte limit"
        )
    return bytes(value)


def _check_side(side: object) -> list[tuple[bytes, bytes | None]]:
    """Validates the side-table changes given to ``apply_batch``; returns them as a list."""
    try:
        pairs = iter(side)
    except TypeError:
        raise errors.InvalidArgumentError(
            f"side must be an iterable of (key, value) pairs, not {_describe(side)}"
        ) from None
    out: list[tuple[bytes, bytes | None]] = []
    for i, pair in enumerate(pairs):
        # A tuple or list only: a two-byte bytes object would unpack into two ints.
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise errors.InvalidArgumentError(
                f"side pair {i} must be a (key, value) tuple, not {_describe(pair)}"
            )
        key, value = pair
        if not isinstance(key, bytes):
            raise errors.InvalidArgumentError(f"side key {i} must be bytes, not {_describe(key)}")
        if not 0 < len(key) <= MAX_SIDE_KEY_SIZE:
            raise errors.InvalidArgumentError(
                f"side key {i} is {len(key)} bytes, outside 1..{MAX_SIDE_KEY_SIZE}"
            )
        if value is not None:
            if not isinstance(value, bytes):
                raise errors.InvalidArgumentError(
                    f"side value {i} must be bytes or None (delete), not {_describe(value)}"
                )
            if len(value) > MAX_VALUE_SIZE:
                raise errors.InvalidArgumentError(
                    f"side value {i} is {len(value)} bytes, over the {MAX_VALUE_SIZE}-byte limit"
                )
            value = bytes(value)
        out.append((bytes(key), value))
    return out


def _erase_versions(cur, start_seek: bytes, end_enc: bytes, inv_max: bytes) -> None:
    """Deletes, with a cursor of the versions table, every version at or below a timestamp
    (``inv_max``, inverted) of the keys from the one ``start_seek`` (see :func:`_seek`) lands
    on to those whose encodings are below ``end_enc``."""
    ok = cur.set_range(start_seek)
    while ok:
        ekey = cur.key()[:-8]
        if ekey >= end_enc:
            return
        # Newer versions first: seek past them, then delete to the key's end.
        ok = cur.set_range(ekey + inv_max)
        while ok and cur.key()[:-8] == ekey:
            cur.delete()  # moves to the next entry
            ok = bool(cur.key())  # an unpositioned cursor has an empty key


def _check_erase(erase: object) -> list[tuple[bytes, bytes, bytes]]:
    """Validates ``apply_batch``'s version ranges; returns ``(start, end, max_ts)``
    encoded for the versions table (the bounds encoded, the timestamp inverted)."""
    out = []
    for i, item in enumerate(_ranges(erase, "erase", 3)):
        start, end, max_ts = item
        start = _check_bound(start, f"erase range {i} start")
        end = _check_bound(end, f"erase range {i} end")
        if type(max_ts) is not int or not 0 < max_ts <= MAX_TS:
            _check_ts(max_ts, f"erase range {i} max_ts")
        out.append((_seek(start), _encode(end), _pack64(_INV - max_ts)))
    return out


def _check_side_erase(side_erase: object) -> list[tuple[bytes, bytes]]:
    return [(_check_side_key(start, f"side_erase range {i} start", bound=True),
             _check_side_key(end, f"side_erase range {i} end", bound=True))
            for i, (start, end) in enumerate(_ranges(side_erase, "side_erase", 2))]


def _ranges(ranges: object, name: str, size: int) -> list[tuple]:
    try:
        items = list(ranges)  # type: ignore[call-overload]
    except TypeError:
        raise errors.InvalidArgumentError(
            f"{name} must be an iterable of tuples, not {_describe(ranges)}") from None
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != size:
            raise errors.InvalidArgumentError(
                f"{name} range {i} must be a tuple of {size}, not {_describe(item)}")
    return items


def _check_side_key(key: object, name: str, *, bound: bool = False) -> bytes:
    """Validates a side-table key (or, with ``bound``, a scan bound, which may be empty, and
    one byte longer than any key: ``last + b"\\x00"`` continues after the longest one; it
    still fits LMDB's key limit)."""
    if not isinstance(key, bytes):
        raise errors.InvalidArgumentError(f"{name} must be bytes, not {_describe(key)}")
    if len(key) > MAX_SIDE_KEY_SIZE + bound:
        raise errors.InvalidArgumentError(
            f"{name} is {len(key)} bytes, longer than any side key ({MAX_SIDE_KEY_SIZE})"
            + (" plus one" if bound else "")
        )
    if not key and not bound:
        raise errors.InvalidArgumentError(f"{name} must not be empty")
    return bytes(key)


def _iterable(items: object, name: str, what: str) -> Iterator[Any]:
    """An iterator over ``items``, or InvalidArgumentError naming ``name`` if it has none."""
    try:
        return iter(items)  # type: ignore[call-overload]
    except TypeError:
        raise errors.InvalidArgumentError(
            f"{name} must be an iterable of {what}, not {_describe(items)}"
        ) from None


def _check_ts(ts: object, name: str) -> None:
    """Slow path of timestamp validation: always raises, saying why ``ts`` was refused."""
    # The fast paths take only exact ints, so an int subclass (an IntEnum, say) ends up here
    # even when in range: it must be refused for its type, not for a range it is inside of.
    if type(ts) is not int:
        raise errors.InvalidArgumentError(f"{name} must be an int, not {_describe(ts)}")
    raise errors.InvalidArgumentError(f"{name} {ts} is outside {MIN_TS}..{MAX_TS}")


def _check_index(index: object) -> None:
    """Slow path of applied-index validation: always raises (see :func:`_check_ts`)."""
    if type(index) is not int:
        raise errors.InvalidArgumentError(f"applied_index must be an int, not {_describe(index)}")
    raise errors.InvalidArgumentError(f"applied_index {index} is outside 1..{_MAX_INDEX}")


# ---------------------------------------------------------------------- errors


def _abort_quietly(txn: lmdb.Transaction) -> None:
    try:
        txn.abort()
    except lmdb.Error:
        pass  # already invalidated (a failed commit, or the environment was closed)


def _lmdb_error(exc: lmdb.Error, what: str, path: str) -> errors.MeridianError:
    """The engine's error for a failed LMDB call on the store in directory ``path``; ``what``
    names the store too (a node has one per group)."""
    code = getattr(exc, "code", 0) or 0
    if code == _errno.ENOSPC:
        return errors.DiskFullError(f"{what}: {exc}")
    # InvalidError: data.mdb is not an LMDB file; VersionMismatchError, or the binding's plain
    # Error naming the "LMDB data format" it found on open: it is one of a format this LMDB
    # does not read; IncompatibleError: it is one, but a table of ours is something else in it.
    unknown_format = "LMDB data format" in str(exc)
    if unknown_format or isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError
                                    | lmdb.PanicError | lmdb.InvalidError
                                    | lmdb.VersionMismatchError | lmdb.IncompatibleError):
        return errors.CorruptStateError(f"{what}: {exc}", os.path.join(path, "data.mdb"))
    if "closed/deleted/dropped" in str(exc):
        return errors.StoreClosedError(f"{what}: the store is closed")
    return errors.StorageError(code if code > 0 else _errno.EIO, f"{what}: {exc}")


def _os_error(exc: OSError, what: str) -> errors.StorageError:
    if exc.errno == _errno.ENOSPC:
        return errors.DiskFullError(f"{what}: {exc.strerror}")
    err = errors.StorageError(exc.errno or _errno.EIO, f"{what}: {exc.strerror or exc}")
    err.filename = exc.filename
    return err
