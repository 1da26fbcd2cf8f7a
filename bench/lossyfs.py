"""LossyFS: a test-only FUSE file system that loses unsynced writes on a simulated power loss.

It backs the "losing unsynced writes" fault (FAULTS.md §3): mount it, run a store on it, cut the
power, and see what the store finds when it opens again. Everything lives in the memory of a
server process; nothing reaches a real disk.

Durability model
----------------
Per regular file, LossyFS keeps the *current* content (what reads see) and the *durable* content
(as of the last ``fsync``/``fdatasync`` of that file; both make the data and the size durable).
Per directory, it keeps the current entries and the *durable* entries (as of the last ``fsync``
of that directory). A power loss replaces the current state by the durable state:

- A file keeps only what its last sync made durable. Writes after it are gone.
- Creating, renaming and unlinking are durable only once the directory is fsynced (for a rename
  across directories, each side once its own directory is). A file whose data was synced but
  whose name never was is gone, as on a strict POSIX file system. (ext4 and XFS usually also
  persist a new name when the *file* is fsynced; this model does not, on purpose.)
- With ``torn=True`` (seeded), the loss is partial, the way a real disk writes back its page
  cache out of order: for every *unit* (4096 bytes by default; ``unit=512`` models sector-level
  tearing) written since the file's last sync, a coin decides whether the unit kept its durable
  content or any one of the contents it had after a write since (the first and the last three
  are remembered); the size is either the durable size or one the file had since. For each
  directory, a random prefix of the entry changes since its last fsync survives (metadata is
  journaled in order, data is not).

Nothing that was never written can appear (other than zeros where nothing was written yet),
and nothing a sync made durable is lost.

Open files survive a power loss only as dead handles: every operation on them, other than
closing, fails with EIO (the process that held them is gone). The test then closes its old
handles and opens the store again.

A power loss can also be *armed* to strike in the middle of what a store is doing: the server
counts mutating operations (create, mkdir, unlink, rmdir, rename, write, truncate, fallocate,
fsync of a file or a directory) and makes the N+1-th fail with EIO, having taken the durable
state at that instant; from then on every operation fails with EIO until :meth:`LossyFS.power_loss`
brings the file system back with that state.

Supported: open/create, pread/pwrite, ftruncate, fallocate (mode 0 and FALLOC_FL_KEEP_SIZE;
others are EOPNOTSUPP), fsync/fdatasync of files and directories, rename (no flags), unlink
(an open file stays readable, writable and syncable after it; only ``fstat`` of it fails with
ESTALE, a limit of libfuse's path-based API), mkdir, rmdir, readdir, getattr, chmod, utimens,
mmap for reading (through the kernel's page cache, which is invalidated on every open unless
``kernel_cache`` is on), and flock/fcntl locks (kept by the kernel, since LossyFS implements no
lock operations: a power loss does not release them, closing the old handles does). Not
supported: hard links, symlinks, xattrs, writable shared mmap.

Processes
---------
The FUSE server runs in its own process (``python lossyfs.py serve ...``), single-threaded for
FUSE requests, with one more thread answering a control socket. It must not be a thread of the
test process: a page fault on a mapped file of the mount, taken by the test process, would wait
for a thread that needs the test process's GIL. The server asks for SIGTERM when its parent dies,
and on SIGTERM libfuse unmounts.

Example::

    with LossyFS(tmp_path) as fs:
        state = DurableState(os.path.join(fs.mountpoint, "state"))
        state.store(b"v1")
        fs.power_loss(seed=7, torn=True)
        state.close()
        assert DurableState(os.path.join(fs.mountpoint, "state")).load() == b"v1"

Requirements: Linux, /dev/fuse, ``fusermount3`` (Debian ``fuse3``), PyPI ``mfusepy``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from ctypes.util import find_library
from pathlib import Path
from typing import Any

__all__ = [
    "LossyFS",
    "LossyModel",
    "LossyFSError",
    "LossyFSUnavailable",
    "unavailable_reason",
    "DEFAULT_UNIT",
]

DEFAULT_UNIT = 4096
_VERSIONS_KEPT = 4  # per unit: the first content after the last sync and the last three
_FALLOC_FL_KEEP_SIZE = 0x01


class LossyFSError(RuntimeError):
    """The LossyFS server failed or refused a control request."""


class LossyFSUnavailable(LossyFSError):
    """FUSE cannot be used here (no /dev/fuse, no fusermount3, no mfusepy/libfuse3, ...)."""


def _oserror(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


# ==================================================================================== the model


class _File:
    """A regular file. Invariant: ``durable`` plus the units in ``versions`` make ``data``."""

    __slots__ = ("data", "durable", "versions", "sizes", "mode", "mtime_ns", "ctime_ns")

    def __init__(self, mode: int) -> None:
        self.data = bytearray()  # what reads see
        self.durable = bytearray()  # as of the last fsync
        self.versions: dict[int, list[bytes]] = {}  # unit -> its contents after writes since
        self.sizes: list[int] = []  # sizes the file had since the last sync
        self.mode = stat.S_IFREG | (mode & 0o7777)
        self.mtime_ns = self.ctime_ns = time.time_ns()


class _Dir:
    """A directory: current entries, durable entries, and the changes in between, in order."""

    __slots__ = ("entries", "durable", "pending", "mode", "mtime_ns", "ctime_ns")

    def __init__(self, mode: int) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}
        # Each change is applied atomically: [(name, node or None for removal), ...].
        self.pending: list[list[tuple[str, _File | _Dir | None]]] = []
        self.mode = stat.S_IFDIR | (mode & 0o7777)
        self.mtime_ns = self.ctime_ns = time.time_ns()


class LossyModel:
    """The file system's state and its durability rules, with no FUSE in sight.

    Paths are absolute within the file system (``"/a/b"``). Errors are ``OSError`` with the
    errno a kernel file system would give. Not thread-safe: the server serializes calls.
    """

    def __init__(self, unit: int = DEFAULT_UNIT) -> None:
        if unit < 512 or unit & (unit - 1):
            raise ValueError(f"unit {unit} is not a power of two >= 512")
        self.unit = unit
        self.root = _Dir(0o755)
        self.epoch = 0  # bumped by each power loss: handles of older epochs are dead
        self._handles: dict[int, tuple[_File | _Dir, int]] = {}
        self._next_fh = 1
        self._armed: tuple[int, int, bool] | None = None  # (operations left, seed, torn)
        self._dead = False  # the power is out: everything fails until revive()
        self._pending_report: dict[str, Any] | None = None
        self.counters = {"mutations": 0, "syncs": 0, "power_losses": 0}

    # ---------------------------------------------------------------- names

    def _walk(self, path: str) -> tuple[_Dir, str]:
        """(parent directory, last name) of ``path``; the parent must exist."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise _oserror(errno.EINVAL, "the root has no parent")
        node: _File | _Dir = self.root
        for p in parts[:-1]:
            if not isinstance(node, _Dir):
                raise _oserror(errno.ENOTDIR, path)
            nxt = node.entries.get(p)
            if nxt is None:
                raise _oserror(errno.ENOENT, path)
            node = nxt
        if not isinstance(node, _Dir):
            raise _oserror(errno.ENOTDIR, path)
        return node, parts[-1]

    def lookup(self, path: str) -> _File | _Dir:
        self._alive()
        if path in ("", "/"):
            return self.root
        parent, name = self._walk(path)
        node = parent.entries.get(name)
        if node is None:
            raise _oserror(errno.ENOENT, path)
        return node

    def _change(self, parent: _Dir, change: list[tuple[str, _File | _Dir | None]]) -> None:
        for name, node in change:
            if node is None:
                parent.entries.pop(name, None)
            else:
                parent.entries[name] = node
        parent.pending.append(change)
        parent.mtime_ns = time.time_ns()

    def create(self, path: str, mode: int) -> _File:
        """Creates an empty file (or returns the existing one, as open(O_CREAT) does)."""
        self._alive()
        parent, name = self._walk(path)
        node = parent.entries.get(name)
        if node is not None:
            if isinstance(node, _Dir):
                raise _oserror(errno.EISDIR, path)
            return node
        self._mutation()
        node = _File(mode)
        self._change(parent, [(name, node)])
        return node

    def mkdir(self, path: str, mode: int) -> None:
        self._alive()
        parent, name = self._walk(path)
        if name in parent.entries:
            raise _oserror(errno.EEXIST, path)
        self._mutation()
        self._change(parent, [(name, _Dir(mode))])

    def unlink(self, path: str) -> None:
        self._alive()
        parent, name = self._walk(path)
        node = parent.entries.get(name)
        if node is None:
            raise _oserror(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _oserror(errno.EISDIR, path)
        self._mutation()
        self._change(parent, [(name, None)])

    def rmdir(self, path: str) -> None:
        self._alive()
        parent, name = self._walk(path)
        node = parent.entries.get(name)
        if node is None:
            raise _oserror(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _oserror(errno.ENOTDIR, path)
        if node.entries:
            raise _oserror(errno.ENOTEMPTY, path)
        self._mutation()
        self._change(parent, [(name, None)])

    def rename(self, old: str, new: str) -> None:
        self._alive()
        op, oname = self._walk(old)
        np, nname = self._walk(new)
        node = op.entries.get(oname)
        if node is None:
            raise _oserror(errno.ENOENT, old)
        target = np.entries.get(nname)
        if target is node:
            return
        if isinstance(node, _Dir):
            if self._is_ancestor(node, np):  # a directory may not move into its own subtree
                raise _oserror(errno.EINVAL, f"{old} -> {new}")
            if target is not None and not isinstance(target, _Dir):
                raise _oserror(errno.ENOTDIR, new)
        elif isinstance(target, _Dir):
            raise _oserror(errno.EISDIR, new)
        if isinstance(target, _Dir) and target.entries:
            raise _oserror(errno.ENOTEMPTY, new)
        self._mutation()
        if op is np:
            self._change(op, [(oname, None), (nname, node)])  # one atomic change
        else:
            self._change(np, [(nname, node)])
            self._change(op, [(oname, None)])

    def _is_ancestor(self, node: _Dir, d: _Dir) -> bool:
        """Whether ``node`` is ``d`` or one of its ancestors (searching from the root)."""
        if node is d:
            return True
        stack: list[_Dir] = [node]
        while stack:
            cur = stack.pop()
            for child in cur.entries.values():
                if child is d:
                    return True
                if isinstance(child, _Dir):
                    stack.append(child)
        return False

    def listdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not isinstance(node, _Dir):
            raise _oserror(errno.ENOTDIR, path)
        return sorted(node.entries)

    # ---------------------------------------------------------------- handles

    def open_handle(self, node: _File | _Dir) -> int:
        self._alive()
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (node, self.epoch)
        return fh

    def handle(self, fh: int) -> _File | _Dir:
        """The node of a live handle; EIO for one opened before the last power loss."""
        self._alive()
        try:
            node, epoch = self._handles[fh]
        except KeyError:
            raise _oserror(errno.EBADF) from None
        if epoch != self.epoch:
            raise _oserror(errno.EIO, "the file was opened before a power loss")
        return node

    def release(self, fh: int) -> None:
        """Forgets a handle. Never fails: closing is what a dead process's files get."""
        self._handles.pop(fh, None)

    # ---------------------------------------------------------------- data

    def _dirty(self, f: _File, start: int, stop: int) -> None:
        """Remembers the current content of the units overlapping ``[start, stop)``."""
        u = self.unit
        for i in range(start // u, (stop + u - 1) // u):
            versions = f.versions.setdefault(i, [])
            versions.append(bytes(f.data[i * u : (i + 1) * u]))
            if len(versions) > _VERSIONS_KEPT:
                del versions[1]  # keep the first and the latest ones
        f.mtime_ns = time.time_ns()

    def _resize(self, f: _File, size: int) -> None:
        old = len(f.data)
        if size == old:
            return
        if size < old:
            del f.data[size:]
        else:
            f.data.extend(bytes(size - old))
        f.sizes.append(size)
        if len(f.sizes) > _VERSIONS_KEPT:
            del f.sizes[1]
        self._dirty(f, min(old, size), max(old, size))

    def read(self, f: _File, offset: int, size: int) -> bytes:
        self._alive()
        return bytes(f.data[offset : offset + size])

    def write(self, f: _File, offset: int, data: bytes) -> int:
        self._alive()
        self._mutation()
        end = offset + len(data)
        if end > len(f.data):
            self._resize(f, end)
        f.data[offset:end] = data
        self._dirty(f, offset, end)
        return len(data)

    def truncate(self, f: _File, size: int) -> None:
        self._alive()
        if size < 0:
            raise _oserror(errno.EINVAL)
        self._mutation()
        self._resize(f, size)

    def fallocate(self, f: _File, mode: int, offset: int, length: int) -> None:
        self._alive()
        if offset < 0 or length <= 0:
            raise _oserror(errno.EINVAL)
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise _oserror(errno.EOPNOTSUPP, f"fallocate mode {mode:#x}")
        self._mutation()
        if not mode & _FALLOC_FL_KEEP_SIZE and offset + length > len(f.data):
            self._resize(f, offset + length)

    def fsync(self, node: _File | _Dir) -> None:
        """Makes a file's data and size, or a directory's entries, durable."""
        self._alive()
        self._mutation()
        self.counters["syncs"] += 1
        if isinstance(node, _Dir):
            node.durable = dict(node.entries)
            node.pending.clear()
            return
        u = self.unit
        if len(node.durable) > len(node.data):
            del node.durable[len(node.data) :]
        else:
            node.durable.extend(bytes(len(node.data) - len(node.durable)))
        for i in node.versions:
            node.durable[i * u : (i + 1) * u] = node.data[i * u : (i + 1) * u]
        node.versions.clear()
        node.sizes.clear()

    # ---------------------------------------------------------------- power

    def _alive(self) -> None:
        if self._dead:
            raise _oserror(errno.EIO, "the power is out")

    def _mutation(self) -> None:
        """Counts a mutating operation; the armed power loss strikes instead of it."""
        if self._armed is not None:
            left, seed, torn = self._armed
            if left <= 0:
                self._armed = None
                self._pending_report = self._lose_power(seed, torn)
                self._pending_report["struck"] = "armed"
                self._dead = True
                raise _oserror(errno.EIO, "the power went out")
            self._armed = (left - 1, seed, torn)
        self.counters["mutations"] += 1

    def arm(self, after_ops: int, seed: int, torn: bool) -> None:
        """Makes the power fail at the mutating operation after the next ``after_ops``."""
        self._alive()
        if after_ops < 0:
            raise ValueError("after_ops must be >= 0")
        self._armed = (after_ops, seed, torn)

    def disarm(self) -> None:
        """Cancels an armed power loss that has not struck yet."""
        self._armed = None

    @property
    def crashed(self) -> bool:
        return self._dead

    def power_loss(self, seed: int | None = None, torn: bool | None = None) -> dict[str, Any]:
        """Cuts the power now (or collects the armed loss that already struck) and restores it.

        Arguments left ``None`` take the armed values, else seed 0 and ``torn=False``.
        Returns a report: what was lost, kept and torn.
        """
        if self._dead:
            report = self._pending_report or {}
            self._pending_report = None
            self._dead = False
            return report
        if self._armed is not None:
            _, armed_seed, armed_torn = self._armed
            seed = armed_seed if seed is None else seed
            torn = armed_torn if torn is None else torn
            self._armed = None
        report = self._lose_power(0 if seed is None else seed, bool(torn))
        report["struck"] = "now"
        return report

    def _lose_power(self, seed: int, torn: bool) -> dict[str, Any]:
        rng = random.Random(seed)
        report: dict[str, Any] = {
            "seed": seed,
            "torn": torn,
            "after_mutations": self.counters["mutations"],
            "files": 0,
            "units_lost": 0,
            "units_kept": 0,
            "entry_changes_lost": 0,
            "entry_changes_kept": 0,
        }
        self.counters["power_losses"] += 1
        self.epoch += 1
        seen: set[int] = set()
        # Walk the tree as it will be after the loss, in name order so that a seed always
        # makes the same choices.
        stack: list[_Dir] = [self.root]
        seen.add(id(self.root))
        while stack:
            d = stack.pop()
            keep = rng.randint(0, len(d.pending)) if torn else 0
            for change in d.pending[:keep]:
                for name, node in change:
                    if node is None:
                        d.durable.pop(name, None)
                    else:
                        d.durable[name] = node
            report["entry_changes_kept"] += keep
            report["entry_changes_lost"] += len(d.pending) - keep
            d.pending = []
            d.entries = dict(d.durable)
            for name in sorted(d.entries, reverse=True):
                node = d.entries[name]
                if id(node) in seen:
                    continue  # reachable twice after a torn cross-directory rename
                seen.add(id(node))
                if isinstance(node, _Dir):
                    stack.append(node)
                else:
                    report["files"] += 1
                    self._lose_file_power(node, rng, torn, report)
        return report

    def _lose_file_power(self, f: _File, rng: random.Random, torn: bool, report: dict) -> None:
        u = self.unit
        if not torn or not f.versions:
            report["units_lost"] += len(f.versions)
        else:
            size = rng.choice([len(f.durable), *f.sizes])
            new = bytearray(f.durable[:size])
            new.extend(bytes(size - len(new)))
            for i in sorted(f.versions):
                if rng.random() < 0.5:
                    report["units_lost"] += 1
                    continue
                report["units_kept"] += 1
                content = rng.choice(f.versions[i])
                start = i * u
                if start >= size:
                    continue
                stop = min(size, start + u)
                new[start:stop] = content[: stop - start].ljust(stop - start, b"\0")
            f.durable = new
        f.data = bytearray(f.durable)
        f.versions.clear()
        f.sizes.clear()

    # ---------------------------------------------------------------- attributes

    def attributes(self, node: _File | _Dir) -> dict[str, int]:
        if isinstance(node, _Dir):
            nlink = 2 + sum(isinstance(n, _Dir) for n in node.entries.values())
            size = 4096
        else:
            nlink, size = 1, len(node.data)
        return {
            "st_mode": node.mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_mtime": node.mtime_ns,
            "st_ctime": node.ctime_ns,
            "st_atime": node.mtime_ns,
        }

    def stats(self) -> dict[str, Any]:
        files = dirs = data = durable = 0
        stack: list[_Dir] = [self.root]
        while stack:
            d = stack.pop()
            dirs += 1
            for node in d.entries.values():
                if isinstance(node, _Dir):
                    stack.append(node)
                else:
                    files += 1
                    data += len(node.data)
                    durable += len(node.durable)
        return dict(
            self.counters,
            files=files,
            dirs=dirs,
            bytes=data,
            durable_bytes=durable,
            open_handles=len(self._handles),
            crashed=self._dead,
            armed=self._armed is not None,
        )


# ==================================================================================== FUSE


def _operations_class():
    """The FUSE operations over a model; built on demand so that importing this module does
    not need mfusepy (or libfuse)."""
    import mfusepy

    class LossyOperations(mfusepy.Operations):
        use_ns = True
        flag_nullpath_ok = True  # with hard_remove, unlinked open files get a NULL path

        def __init__(self, model: LossyModel, lock: threading.Lock,
                     kernel_cache: bool = False) -> None:
            self.model = model
            self._mutex = lock
            self._kernel_cache = kernel_cache

        def init_with_config(self, conn, config) -> None:
            if config is not None:
                # No kernel caching of names and attributes: after a power loss, sizes and
                # names change behind the kernel's back. Page contents are dropped on open.
                config.entry_timeout = 0.0
                config.attr_timeout = 0.0
                config.negative_timeout = 0.0
                config.hard_remove = 1  # unlink really unlinks (no .fuse_hidden files)
                config.nullpath_ok = 1
                config.kernel_cache = 1 if self._kernel_cache else 0
                config.auto_cache = 0
                config.direct_io = 0  # mmap needs the page cache
            if conn is not None:
                conn.want &= ~(1 << 16)  # FUSE_CAP_WRITEBACK_CACHE: every write reaches us
                if self._kernel_cache:
                    # FUSE_CAP_AUTO_INVAL_DATA: the kernel would drop a file's pages when its
                    # modification time changes, as a power loss changes it.
                    conn.want &= ~(1 << 12)

        def _node(self, path, fh):
            if fh:
                return self.model.handle(fh)
            if path is None:
                raise _oserror(errno.ENOENT)
            return self.model.lookup(path)

        def _file(self, path, fh):
            node = self._node(path, fh)
            if isinstance(node, _Dir):
                raise _oserror(errno.EISDIR, path or "")
            return node

        def getattr(self, path, fh=None):
            with self._mutex:
                return self.model.attributes(self._node(path, fh))

        def access(self, path, amode):
            with self._mutex:
                self.model.lookup(path)
            return 0

        def statfs(self, path):
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": 1 << 24,
                "f_bfree": 1 << 23,
                "f_bavail": 1 << 23,
                "f_files": 1 << 20,
                "f_ffree": 1 << 19,
                "f_favail": 1 << 19,
                "f_namemax": 255,
            }

        def opendir(self, path):
            with self._mutex:
                node = self.model.lookup(path)
                if not isinstance(node, _Dir):
                    raise _oserror(errno.ENOTDIR, path)
                return self.model.open_handle(node)

        def readdir(self, path, fh):
            with self._mutex:
                node = self._node(path, fh)
                if not isinstance(node, _Dir):
                    raise _oserror(errno.ENOTDIR, path or "")
                return [".", "..", *sorted(node.entries)]

        def releasedir(self, path, fh):
            with self._mutex:
                self.model.release(fh)
            return 0

        def fsyncdir(self, path, datasync, fh):
            with self._mutex:
                self.model.fsync(self._node(path, fh))
            return 0

        def mkdir(self, path, mode):
            with self._mutex:
                self.model.mkdir(path, mode)
            return 0

        def rmdir(self, path):
            with self._mutex:
                self.model.rmdir(path)
            return 0

        def unlink(self, path):
            with self._mutex:
                self.model.unlink(path)
            return 0

        def rename(self, old, new):
            with self._mutex:
                self.model.rename(old, new)
            return 0

        def chmod(self, path, mode):
            with self._mutex:
                if path is not None:
                    node = self.model.lookup(path)
                    node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            return 0

        def chown(self, path, uid, gid):
            return 0

        def utimens(self, path, times=None):
            with self._mutex:
                if path is not None:
                    node = self.model.lookup(path)
                    node.mtime_ns = times[1] if times else time.time_ns()
            return 0

        def create(self, path, mode, flags=0):
            with self._mutex:
                node = self.model.create(path, mode)
                if flags & os.O_TRUNC and node.data:
                    self.model.truncate(node, 0)
                return self.model.open_handle(node)

        def open(self, path, flags):
            with self._mutex:
                node = self.model.lookup(path)
                if isinstance(node, _Dir):
                    raise _oserror(errno.EISDIR, path)
                if flags & os.O_TRUNC and node.data:
                    self.model.truncate(node, 0)
                return self.model.open_handle(node)

        def read(self, path, size, offset, fh):
            with self._mutex:
                return self.model.read(self._file(path, fh), offset, size)

        def write(self, path, data, offset, fh):
            with self._mutex:
                return self.model.write(self._file(path, fh), offset, data)

        def truncate(self, path, length, fh=None):
            with self._mutex:
                self.model.truncate(self._file(path, fh), length)
            return 0

        def fallocate(self, path, mode, offset, size, fh):
            with self._mutex:
                self.model.fallocate(self._file(path, fh), mode, offset, size)
            return 0

        def fsync(self, path, datasync, fh):
            with self._mutex:
                self.model.fsync(self._file(path, fh))
            return 0

        def flush(self, path, fh):
            return 0  # close() makes nothing durable

        def release(self, path, fh):
            with self._mutex:
                self.model.release(fh)
            return 0

    class LossyFUSE(mfusepy.FUSE):
        def truncate_fuse_3(self, path, length, fip):
            # mfusepy drops the file handle here; ftruncate of an unlinked file needs it.
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(
                None if path is None else path.decode(self.encoding, self.errors), length, fh
            )

        def rename_fuse_3(self, old, new, flags):
            if flags:  # RENAME_NOREPLACE / RENAME_EXCHANGE: not modelled, so refused
                return -errno.EINVAL
            return super().rename_fuse_3(old, new, flags)

    return LossyOperations, LossyFUSE


def _serve_control(sock: socket.socket, model: LossyModel, lock: threading.Lock) -> None:
    """Answers one JSON request per line: ping, arm, disarm, power_loss, stats."""
    while True:
        conn, _ = sock.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    req = json.loads(line)
                    cmd = req.get("cmd")
                    with lock:
                        if cmd == "ping":
                            out: Any = {"pid": os.getpid()}
                        elif cmd == "arm":
                            model.arm(int(req["after_ops"]), int(req["seed"]), bool(req["torn"]))
                            out = {}
                        elif cmd == "disarm":
                            model.disarm()
                            out = {}
                        elif cmd == "power_loss":
                            out = model.power_loss(req.get("seed"), req.get("torn"))
                        elif cmd == "stats":
                            out = model.stats()
                        else:
                            raise ValueError(f"unknown command {cmd!r}")
                    reply = {"ok": True, "result": out}
                except Exception as exc:  # reported to the client, which raises
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()


def _die_with_parent() -> None:
    """SIGTERM when the parent process dies (prctl PR_SET_PDEATHSIG): never a stale mount."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def serve(mountpoint: str, control: str, unit: int = DEFAULT_UNIT,
          kernel_cache: bool = False) -> None:
    """Runs a server in this process until unmounted (or SIGTERM)."""
    _die_with_parent()
    if os.getppid() == 1:  # the parent is already gone
        return
    LossyOperations, LossyFUSE = _operations_class()
    model = LossyModel(unit)
    lock = threading.Lock()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(control)
    sock.listen(4)
    threading.Thread(target=_serve_control, args=(sock, model, lock), daemon=True).start()
    LossyFUSE(
        LossyOperations(model, lock, kernel_cache),
        mountpoint,
        foreground=True,
        nothreads=True,
        fsname="lossyfs",
    )


# ==================================================================================== client


def unavailable_reason() -> str | None:
    """Why LossyFS cannot run here, or None if it should (mounting may still fail)."""
    if not sys.platform.startswith("linux"):
        return f"FUSE needs Linux, not {sys.platform}"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    if find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed (pip install mfusepy)"
    return None


class LossyFS:
    """A LossyFS mount: starts a server process, mounts, and tears both down on exit.

    Args:
        workdir: an existing directory for the mount point (``workdir/mnt``), the control
            socket and the server's log (``workdir/lossyfs.log``).
        unit: bytes per unit of torn writes (a power of two >= 512).
        kernel_cache: keep the kernel's cached pages of a file across opens and power losses
            (by default they are dropped on every open). This models a failed write-back
            rather than a power loss: after an fdatasync fails with EIO, Linux marks the
            pages clean and keeps them, so the data reads back as if it were on the disk,
            to this process and to any later one, until the pages are evicted. Arm a power
            loss to strike at the sync, then :meth:`power_loss`: the disk has only the
            durable state, the page cache still has what was written. A store that reopens
            on it must drop those pages (``posix_fadvise(POSIX_FADV_DONTNEED)`` after an
            fsync) to see the disk.
        start_timeout_s: how long to wait for the mount.

    Raises (from :meth:`start`):
        LossyFSUnavailable: FUSE cannot be used here, or the mount failed (the message
            carries the server's log).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        unit: int = DEFAULT_UNIT,
        kernel_cache: bool = False,
        start_timeout_s: float = 15.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.mountpoint = str(self.workdir / "mnt")
        self.unit = unit
        self.kernel_cache = kernel_cache
        self._control = str(self.workdir / "lossyfs.sock")
        self._log_path = self.workdir / "lossyfs.log"
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen | None = None

    # ---------------------------------------------------------------- lifetime

    def start(self) -> LossyFS:
        reason = unavailable_reason()
        if reason:
            raise LossyFSUnavailable(reason)
        os.makedirs(self.mountpoint, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "serve",
                    self.mountpoint,
                    self._control,
                    str(self.unit),
                    *(["kernel-cache"] if self.kernel_cache else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's ^C goes to the test, which unmounts
            )
        deadline = time.monotonic() + self._timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise LossyFSUnavailable(
                        f"the LossyFS server exited with status {self._proc.returncode} before "
                        f"mounting; its log:\n{self._log_tail()}"
                    )
                if os.path.ismount(self.mountpoint):
                    with contextlib.suppress(OSError, LossyFSError):
                        self._call("ping")
                        os.listdir(self.mountpoint)  # waits for FUSE_INIT
                        return self
                if time.monotonic() > deadline:
                    raise LossyFSUnavailable(
                        f"LossyFS did not mount {self.mountpoint} within {self._timeout} s; "
                        f"its log:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unmounts and stops the server (only the process this object started). Idempotent."""
        proc, self._proc = self._proc, None
        try:
            if os.path.ismount(self.mountpoint):
                r = subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True)
                if r.returncode != 0:  # busy: detach now, finish when the last file closes
                    subprocess.run(
                        ["fusermount3", "-u", "-z", self.mountpoint], capture_output=True
                    )
        finally:
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.terminate()  # libfuse unmounts on SIGTERM
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            if os.path.ismount(self.mountpoint):  # the server died without unmounting
                subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)

    def __enter__(self) -> LossyFS:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---------------------------------------------------------------- faults

    def power_loss(self, seed: int | None = None, torn: bool | None = None) -> dict[str, Any]:
        """Cuts the power and restores it with only the durable state (see the module doc).

        If an armed power loss already struck, this only restores the power (with the state
        taken when it struck); if one is armed but has not struck, it strikes now. ``seed`` and
        ``torn`` default to the armed values, else 0 and False. Handles opened before are dead:
        close them and open again. Returns what was lost and kept.
        """
        return self._call("power_loss", seed=seed, torn=torn)

    def arm(self, after_ops: int, *, seed: int = 0, torn: bool = False) -> None:
        """Makes the power fail instead of the mutating operation after the next ``after_ops``:
        that operation and every later one fail with EIO until :meth:`power_loss`."""
        self._call("arm", after_ops=after_ops, seed=seed, torn=torn)

    def disarm(self) -> None:
        """Cancels an armed power loss that has not struck yet."""
        self._call("disarm")

    @property
    def crashed(self) -> bool:
        """Whether an armed power loss has struck (and the power is still out)."""
        return bool(self.stats()["crashed"])

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    # ---------------------------------------------------------------- internals

    def _call(self, cmd: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            try:
                s.connect(self._control)
                s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                with s.makefile("rb") as f:
                    line = f.readline()
            except OSError as exc:
                raise LossyFSError(f"LossyFS control socket {self._control}: {exc}") from exc
        if not line:
            raise LossyFSError(
                f"the LossyFS server closed the connection; its log:\n{self._log_tail()}"
            )
        reply = json.loads(line)
        if not reply["ok"]:
            raise LossyFSError(reply["error"])
        return reply["result"]

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else DEFAULT_UNIT,
              kernel_cache=sys.argv[5:6] == ["kernel-cache"])
    else:
        sys.exit(f"usage: {sys.argv[0]} serve MOUNTPOINT CONTROL_SOCKET [UNIT [kernel-cache]]")
