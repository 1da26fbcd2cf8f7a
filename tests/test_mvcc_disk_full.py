"""MVCCStore on a full disk: creating a store there is DiskFullError, never a SIGBUS that kills
the node. LMDB makes lock.mdb (and, with a writable map, data.mdb) as holes with ``ftruncate``
and writes them through shared maps, so every byte it touches there must be reserved first.

Each store is created by a child process, so that a SIGBUS shows as a failed test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from engine import DiskFullError, MVCCStore

CHILD = r"""
import os, sys
from engine import DiskFullError, MVCCStore
from engine.mvcc import MIN_MAP_SIZE
mnt, free, writemap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
filler = os.path.join(mnt, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
try:
    while True:
        os.write(fd, bytes(1 << 16))
except OSError:
    pass  # the disk is full
os.ftruncate(fd, max(0, os.fstat(fd).st_size - free))
os.close(fd)
try:
    store = MVCCStore(os.path.join(mnt, "store"), map_size=MIN_MAP_SIZE, writemap=writemap)
    store.apply([(b"k", b"v")], commit_ts=1, applied_index=1)
    store.close()
    print("opened")
except DiskFullError:
    print("disk full")
"""


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("1m")


@pytest.mark.parametrize("writemap", [True, False])
@pytest.mark.parametrize("free_kib", [0, 16, 32])
def test_creating_a_store_on_a_full_disk_is_disk_full_not_sigbus(tiny_fs, writemap, free_kib):
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_fs), str(free_kib << 10), str(int(writemap))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != -signal.SIGBUS, "creating the store killed the process with SIGBUS"
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "disk full"


def _free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(mnt, leave: int) -> None:
    """Takes the free space of ``mnt`` but about ``leave`` bytes."""
    fd = os.open(os.path.join(mnt, "filler"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, _free_bytes(mnt) - leave)
    finally:
        os.close(fd)


def test_a_map_growth_that_finds_the_disk_full_gives_back_what_it_reserved(ext4):
    """ext4 keeps the blocks a failed ``posix_fallocate`` got before it ran out (and the
    longer file): a map growth refused for want of space must not take the disk's last free
    bytes from every other file of the node (its Raft log, the other groups' stores)."""
    mnt = ext4(32)
    with MVCCStore(os.path.join(mnt, "store"), map_size=4 << 20) as store:
        data = os.path.join(mnt, "store", "data.mdb")
        size = os.stat(data).st_size
        _fill(mnt, 1 << 20)
        free = _free_bytes(mnt)
        values = [(b"k%03d" % i, bytes([i]) * (100 << 10)) for i in range(40)]  # over the map
        with pytest.raises(DiskFullError, match="cannot reserve"):
            store.apply(values, commit_ts=1, applied_index=1)
        assert os.stat(data).st_size == size
        assert _free_bytes(mnt) >= free - (64 << 10)
        store.apply([(b"k", b"v")], commit_ts=2, applied_index=2)  # what fits still goes in
        assert store.get(b"k", 2) == b"v"


def test_a_write_without_a_writable_map_that_finds_the_disk_full_is_disk_full(tiny_fs):
    """Without a writable map the file grows as LMDB writes pages, so a full disk shows in the
    commit, which LMDB reports as EIO (a short write): it is DiskFullError, and the store
    takes writes again once there is space."""
    path = os.path.join(tiny_fs, "store")
    with MVCCStore(path, map_size=256 << 10, writemap=False) as store:
        store.apply([(b"k", b"v")], commit_ts=1, applied_index=1)
        _fill(tiny_fs, 64 << 10)
        with pytest.raises(DiskFullError, match="store"):
            store.apply([(b"big", bytes(200 << 10))], commit_ts=2, applied_index=2)
        assert store.applied_index == 1 and store.get(b"big", 2) is None
        os.unlink(os.path.join(tiny_fs, "filler"))
        assert store.apply([(b"big", bytes(200 << 10))], commit_ts=2, applied_index=2)
    with MVCCStore(path, map_size=256 << 10, writemap=False) as store:
        assert store.applied_index == 2 and store.get(b"big", 2) == bytes(200 << 10)


def test_an_early_map_growth_that_finds_the_disk_full_leaves_the_free_space(ext4):
    """The growth tried after a commit that leaves the map half full ignores a failure (the
    commit stands): it must leave the disk's free space as it found it."""
    mnt = ext4(32)
    with MVCCStore(os.path.join(mnt, "store"), map_size=4 << 20) as store:
        _fill(mnt, 1 << 20)
        free = _free_bytes(mnt)
        for i in range(30):  # 3 MiB: more than half of the map, so the growth is tried
            store.apply([(b"k%03d" % i, bytes([i]) * (100 << 10))], commit_ts=i + 1,
                        applied_index=i + 1)
        assert store.stats().map_size == 4 << 20  # the growth failed
        assert _free_bytes(mnt) >= free - (64 << 10)


def test_a_restore_that_finds_the_disk_full_is_disk_full_and_changes_nothing(tiny_fs, tmp_path):
    """The snapshot is spooled to a temporary file first; when the disk fills, what that file
    still holds unflushed must not turn the DiskFullError into a bare OSError on its way out."""
    with MVCCStore(tmp_path / "source", map_size=4 << 20) as source:
        for i in range(1, 11):
            source.apply([(b"k%03d-%02d" % (i, j), bytes([j]) * 700) for j in range(40)], i, i)
        chunks = list(source.snapshot_chunks(4096))
    with MVCCStore(os.path.join(tiny_fs, "store"), map_size=256 << 10) as store:
        store.apply([(b"k", b"v")], commit_ts=1, applied_index=1)
        _fill(tiny_fs, 10 << 10)  # room for a chunk and a piece of the next
        with pytest.raises(DiskFullError, match="spool"):
            store.restore(chunks)
        assert store.applied_index == 1 and store.get(b"k", 1) == b"v"
        os.unlink(os.path.join(tiny_fs, "filler"))
        assert store.restore(chunks) == 10
