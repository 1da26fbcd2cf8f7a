"""MVCCStore on a full disk: creating a store there is DiskFullError, never a SIGBUS that kills
the node. LMDB makes lock.mdb (and, with a writable map, data.mdb) as holes with ``ftruncate``
and writes them through shared maps, so every byte it touches there must be reserved first.

Each store is created by a child process, so that a SIGBUS shows as a failed test."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

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
