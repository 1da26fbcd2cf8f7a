"""Power loss: what LogStore and DurableState find after unsynced writes are lost (FAULTS.md §3).

Integration tests: the stores run on LossyFS (``bench/lossyfs.py``), a FUSE file system that keeps
writes in memory and, on a simulated power loss, keeps only what was synced — or, with
``torn=True``, a random mix of synced and unsynced pages, the way a disk writes back its page
cache out of order. Power losses strike between operations and, armed, in the middle of them.

The claims checked (ARCH §2.1, §2.2): every record at or below the last synced position survives
byte for byte; a record above it, if it survives, is exactly one that was appended at that
position; nothing removed by a completed ``truncate_after`` or ``drop_before`` comes back; the
store opens without error and takes new appends. A durable state loads the value of the last
``store`` that returned (or the one in flight when the power went).

The FUSE tests are skipped when FUSE cannot be mounted here (no /dev/fuse, no fusermount3 or
libfuse3 — Debian ``fuse3`` — or no ``mfusepy``); set ``MERIDIAN_REQUIRE_FUSE=1`` to make that a
failure instead. The file-system model tests at the top need no FUSE.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import random

import pytest

from bench.lossyfs import LossyFS, LossyModel, unavailable_reason
from engine import LogStore, MeridianError
from engine import durable as durable_module
from engine.durable import DurableState
from logtools import segments, zero_range

SEGMENT_SIZE = 16384  # segments roll every few appends
_REASON = unavailable_reason()
needs_fuse = pytest.mark.skipif(
    _REASON is not None and os.environ.get("MERIDIAN_REQUIRE_FUSE") != "1",
    reason=f"LossyFS needs FUSE: {_REASON}",
)


def make_durable_dir(parent: str, name: str) -> str:
    """mkdir + fsync of the parent: the directory itself survives a power loss."""
    path = os.path.join(parent, name)
    os.mkdir(path)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# ============================================================ the file system's model, no FUSE


def test_model_keeps_synced_data_and_loses_the_rest():
    m = LossyModel()
    m.mkdir("/d", 0o755)
    m.fsync(m.root)
    f = m.create("/d/f", 0o644)
    m.fsync(m.lookup("/d"))
    m.write(f, 0, b"synced")
    m.fsync(f)
    m.write(f, 0, b"UNSYNC")
    m.write(f, 10_000, b"far")
    g = m.create("/d/g", 0o644)  # named only in memory
    m.write(g, 0, b"data")
    m.fsync(g)
    report = m.power_loss(seed=1)
    assert report["struck"] == "now" and report["entry_changes_lost"] == 1
    assert m.listdir("/d") == ["f"]
    assert bytes(m.lookup("/d/f").data) == b"synced"


def test_model_names_are_durable_only_after_a_directory_fsync():
    m = LossyModel()
    m.create("/a", 0o644)
    m.fsync(m.root)
    m.create("/b", 0o644)
    m.rename("/a", "/c")
    m.unlink("/b")
    m.create("/b", 0o644)
    m.power_loss()
    assert m.listdir("/") == ["a"]


def test_model_a_rename_in_one_directory_is_atomic_under_torn_loss():
    for seed in range(40):
        m = LossyModel()
        f = m.create("/x.tmp", 0o644)
        m.write(f, 0, b"content")
        m.fsync(f)
        m.rename("/x.tmp", "/x")
        m.power_loss(seed=seed, torn=True)
        names = m.listdir("/")
        assert names in ([], ["x.tmp"], ["x"]), names  # never both, never a half rename
        for n in names:
            assert bytes(m.lookup("/" + n).data) == b"content"


def test_model_torn_loss_leaves_every_unit_old_or_as_once_written():
    """Nothing that was never written appears: each 512-byte unit after a torn loss is its
    synced content or a content it had after some write."""
    unit = 512
    for seed in range(30):
        rng = random.Random(seed)
        m = LossyModel(unit)
        f = m.create("/f", 0o644)
        m.fsync(m.root)
        seen: dict[int, set[bytes]] = {}

        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.7:
                off = rng.randrange(0, 8192)
                m.write(f, off, bytes([rng.randrange(1, 256)]) * rng.randint(1, 2000))
            elif r < 0.8:
                m.truncate(f, rng.randrange(0, 10_000))
            else:
                m.fsync(f)
                assert f.durable == f.data
                seen = {}
            for i in range(0, 12_000 // unit + 1):  # past the end a unit's content is b""
                seen.setdefault(i, set()).add(bytes(f.data[i * unit : (i + 1) * unit]))
        durable = bytes(f.durable)
        m.power_loss(seed=seed, torn=True)
        after = bytes(f.data)
        for i in range(0, (len(after) + unit - 1) // unit):
            got = after[i * unit : (i + 1) * unit]
            options = {durable[i * unit : (i + 1) * unit]} | seen.get(i, set())
            # A unit cut by the chosen size, or beyond every size it had, reads as a prefix.
            assert any(o[: len(got)].ljust(len(got), b"\0") == got for o in options), (seed, i)


def test_model_armed_power_loss_strikes_instead_of_an_operation():
    m = LossyModel()
    f = m.create("/f", 0o644)
    m.fsync(m.root)
    m.write(f, 0, b"one")
    m.fsync(f)
    m.arm(1, seed=0, torn=False)
    m.write(f, 0, b"two")  # the one operation allowed
    with pytest.raises(OSError) as info:
        m.fsync(f)  # the power goes out instead
    assert info.value.errno == errno.EIO and m.crashed
    with pytest.raises(OSError):
        m.lookup("/f")  # everything fails until power_loss() restores the power
    assert m.power_loss()["struck"] == "armed" and not m.crashed
    assert bytes(m.lookup("/f").data) == b"one"


# ============================================================ LossyFS through the kernel


@needs_fuse
def test_lossyfs_loses_unsynced_writes_through_the_mount(lossy):
    fs = lossy()
    d = make_durable_dir(fs.mountpoint, "d")
    path = os.path.join(d, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.pwrite(fd, b"synced", 0)
    os.fdatasync(fd)
    os.fsync(dfd)
    os.pwrite(fd, b"UNSYNCED and longer", 0)
    assert os.pread(fd, 100, 0) == b"UNSYNCED and longer"
    fs.power_loss(seed=0)
    with pytest.raises(OSError) as info:
        os.pread(fd, 10, 0)  # handles from before the loss are dead
    assert info.value.errno == errno.EIO
    os.close(fd)
    os.close(dfd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 6 and os.pread(fd, 100, 0) == b"synced"
        with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            assert mm[:] == b"synced"
    finally:
        os.close(fd)


@needs_fuse
def test_lossyfs_names_need_a_directory_fsync(lossy):
    fs = lossy()
    d = make_durable_dir(fs.mountpoint, "d")
    for name, sync_dir in (("named", True), ("unnamed", False)):
        fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.fsync(fd)
        os.close(fd)
        if sync_dir:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
    fs.power_loss()
    assert os.listdir(d) == ["named"]


@needs_fuse
def test_lossyfs_flock_fallocate_and_truncate(lossy):
    fs = lossy()
    path = os.path.join(fs.mountpoint, "f")
    a = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    b = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):  # the kernel keeps flock locks for FUSE
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(a, b"head", 0)
        os.posix_fallocate(a, 0, 10_000)
        assert os.fstat(a).st_size == 10_000 and os.pread(a, 8, 0) == b"head\0\0\0\0"
        os.ftruncate(a, 2)
        assert os.pread(b, 100, 0) == b"he"
    finally:
        os.close(a)
        os.close(b)


@needs_fuse
def test_lossyfs_an_unlinked_open_file_stays_usable(lossy):
    """What LogStore does when it drops a segment: unlink first, close later."""
    fs = lossy()
    path = os.path.join(fs.mountpoint, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"data", 0)
        os.unlink(path)
        assert os.listdir(fs.mountpoint) == []  # no .fuse_hidden file left behind
        os.pwrite(fd, b"more", 4)
        os.ftruncate(fd, 6)
        os.fsync(fd)
        assert os.pread(fd, 10, 0) == b"datamo"  # (fstat would say ESTALE: see the module)
    finally:
        os.close(fd)


@needs_fuse
def test_lossyfs_armed_power_loss_strikes_in_the_middle(lossy):
    fs = lossy()
    path = os.path.join(fs.mountpoint, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    dfd = os.open(fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.fsync(dfd)
    fs.arm(1)
    os.pwrite(fd, b"lost", 0)
    with pytest.raises(OSError) as info:
        os.fsync(fd)
    assert info.value.errno == errno.EIO and fs.crashed
    assert fs.power_loss()["struck"] == "armed"
    os.close(fd)
    os.close(dfd)
    assert os.path.getsize(path) == 0


# ============================================================ LogStore


def record(seed: int, incarnation: int, pos: int, size: int) -> bytes:
    """The payload appended at ``pos`` in ``incarnation`` (bumped whenever positions may be
    reused), so that a record found after recovery can be traced to exactly one append.
    One record in four is mostly zeros, as real payloads often are."""
    key = hashlib.blake2b(f"{seed}/{incarnation}/{pos}".encode(), digest_size=16).digest()
    if key[0] % 4 == 0:
        return (key + bytes(size))[:size]
    return random.Random(key).randbytes(size)


class LogModel:
    """What a log may hold after a crash, from the API's promises alone.

    Invariants: every position in ``[first, floor]`` must survive with ``durable[p]``; a
    surviving position ``p`` holds one of ``acceptable[p]``; after recovery ``first`` lies in
    ``[first, first_max]``.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.incarnation = 0
        self.first = self.first_max = 1
        self.next = 1
        self.floor = 0  # the last position a completed sync (or recovery) made durable
        self.latest: dict[int, bytes] = {}
        self.durable: dict[int, bytes] = {}
        self.acceptable: dict[int, set[bytes]] = {}
        self.unsynced_survivors = 0  # records above the floor found by the last recovery

    def step(self, log: LogStore, rng: random.Random, sync_p: float) -> str:
        """One random operation; ``sync_p`` is the chance that it is a sync."""
        r = rng.random()
        if r < sync_p:
            log.sync()
            for p in range(self.floor + 1, self.next):
                self.durable[p] = self.latest[p]
            self.floor = self.next - 1
            return "sync"
        r = rng.random()
        if r < 0.85:
            n = rng.randint(1, 4)
            batch = [
                record(self.seed, self.incarnation, self.next + i, rng.randint(0, 5000))
                for i in range(n)
            ]
            for i, rec in enumerate(batch):  # a failed append may still land
                self.acceptable.setdefault(self.next + i, set()).add(rec)
            got = log.append(batch)
            assert got == range(self.next, self.next + n)
            for i, rec in enumerate(batch):
                self.latest[self.next + i] = rec
            self.next += n
            return "append"
        if r < 0.94:
            pos = rng.randint(max(self.first - 1, self.next - 12), self.next - 1)
            self.floor = min(self.floor, pos)  # promises above pos end when the call starts
            log.truncate_after(pos)
            for p in range(pos + 1, self.next):
                self.latest.pop(p, None)
                self.durable.pop(p, None)
                self.acceptable.pop(p, None)
            self.next = pos + 1
            self.incarnation += 1
            return "truncate_after"
        pos = rng.randint(self.first, self.next)
        self.first_max = max(self.first_max, pos)
        log.drop_before(pos)
        self.first = self.first_max = log.first_position
        return "drop_before"

    def check_recovered(self, log: LogStore, context: str) -> None:
        first, nxt = log.first_position, log.next_position
        assert self.first <= first <= self.first_max, (
            f"{context}: first position {first}, expected {self.first}..{self.first_max}"
        )
        if self.floor >= first:
            assert nxt - 1 >= self.floor, (
                f"{context}: synced records lost: the log ends at {nxt - 1}, "
                f"position {self.floor} was synced"
            )
        got = dict(log.scan())
        assert list(got) == list(range(first, nxt))
        for p, rec in got.items():
            assert log.read(p) == rec
            if p <= self.floor:
                assert rec == self.durable[p], f"{context}: synced record {p} changed"
            assert rec in self.acceptable.get(p, ()), (
                f"{context}: position {p} holds {len(rec)} bytes that were never appended there"
            )
        # Recovery makes what it found durable, and the rest can never come back.
        self.unsynced_survivors = max(0, nxt - 1 - max(self.floor, first - 1))
        self.first = self.first_max = first
        self.next = nxt
        self.floor = nxt - 1
        self.latest = dict(got)
        self.durable = dict(got)
        self.acceptable = {p: {rec} for p, rec in got.items()}
        self.incarnation += 1


def run_log_cycles(
    fs: LossyFS, seed: int, cycles: int, *, armed: bool, torn_p: float = 0.7
) -> dict:
    """Random appends, syncs, truncations and compactions on a LogStore, cut by ``cycles``
    power losses (torn or not, between operations or, when ``armed``, inside them), checking
    after each reopen. Returns counts of what happened, for the tests' sanity checks."""
    rng = random.Random(seed)
    logdir = make_durable_dir(fs.mountpoint, "log")
    model = LogModel(seed)
    log = LogStore(logdir, segment_size=SEGMENT_SIZE)
    seen = {"struck_inside": 0, "units_kept": 0, "segments_max": 0, "unsynced_survivors": 0}
    for cycle in range(cycles):
        torn = rng.random() < torn_p
        loss_seed = rng.randrange(2**32)
        context = f"seed {seed}, cycle {cycle}, power loss seed {loss_seed}, torn={torn}"
        if armed:
            fs.arm(rng.randint(0, 40), seed=loss_seed, torn=torn)
        ops = []
        sync_p = rng.choice([0.03, 0.1, 0.3])
        try:
            for _ in range(rng.randint(4, 30)):
                ops.append(model.step(log, rng, sync_p))
                seen["segments_max"] = max(seen["segments_max"], log.stats().segments)
        except (MeridianError, OSError) as exc:
            assert armed and fs.crashed, f"{context}: {type(exc).__name__}: {exc} after {ops}"
            seen["struck_inside"] += 1
        report = fs.power_loss(seed=loss_seed, torn=torn)
        seen["units_kept"] += report["units_kept"]
        log.close(sync=False)  # the process died with the power: nothing more reaches the disk
        context += f", after {ops}"
        if armed and rng.random() < 0.3:  # and once more, while recovering
            fs.arm(rng.randint(0, 3), seed=loss_seed + 1, torn=torn)
            try:
                LogStore(logdir, segment_size=SEGMENT_SIZE).close(sync=False)
                fs.disarm()
            except (MeridianError, OSError) as exc:
                if not fs.crashed:
                    raise AssertionError(
                        f"{context}: recovery failed: {type(exc).__name__}: {exc}"
                    ) from exc
                fs.power_loss()
        try:
            log = LogStore(logdir, segment_size=SEGMENT_SIZE)
        except MeridianError as exc:
            raise AssertionError(
                f"{context}: recovery failed: {type(exc).__name__}: {exc}"
            ) from exc
        model.check_recovered(log, context)
        seen["unsynced_survivors"] += model.unsynced_survivors
    # The store still takes appends after all that.
    pos = log.append([b"the end"])[0]
    log.sync()
    assert log.read(pos) == b"the end"
    log.close()
    return seen


def test_logstore_recovers_when_the_sector_holding_the_synced_end_is_lost(tmp_path):
    """The smallest torn write LossyFS found (no FUSE needed to replay it).

    Record 1 is synced and ends at offset 141, inside sector 0. Records 2 and 3 are appended
    and not synced; the power fails after sector 1 ([512, 1024)) reached the disk but sector 0
    did not, so sector 0 holds what its last sync left: the header, record 1, then zeros. The
    hole before the surviving record 3 is 371 bytes, less than a whole sector; what marks the
    write as torn is that the rest of record 2's first sector is zero (FORMAT.md, Recovery).
    Records 2 and 3 are a torn tail, not corruption.
    """
    d = tmp_path / "log"
    log = LogStore(d, segment_size=SEGMENT_SIZE)
    log.append([b"a" * 100])  # [32, 141)
    log.sync()
    log.append([b"b" * 500, b"c" * 100])  # [141, 650) and [650, 759), never synced
    log.close(sync=False)
    zero_range(d / segments(d)[-1], 141, 512)  # sector 0 as of the sync
    with LogStore(d, segment_size=SEGMENT_SIZE) as log:
        assert list(log.scan()) == [(1, b"a" * 100)]
        log.append([b"next"])
        assert log.read(2) == b"next"


@needs_fuse
def test_logstore_synced_records_survive_in_a_directory_it_created(lossy):
    """LogStore(create=True) makes its directory; synced records in it must survive, which
    needs the new directory's entry in its parent to be durable (fsync of the parent)."""
    fs = lossy()
    logdir = os.path.join(fs.mountpoint, "node", "log")  # neither directory exists yet
    with LogStore(logdir, segment_size=SEGMENT_SIZE) as log:
        log.append([b"acknowledged"])
        log.sync()
        fs.power_loss()
        log.close(sync=False)
    assert os.path.isdir(logdir), "the log directory itself was lost"
    with LogStore(logdir, segment_size=SEGMENT_SIZE) as log:
        assert log.read(1) == b"acknowledged"


@needs_fuse
def test_logstore_reopened_after_a_failed_sync_reads_the_disk_not_the_cache(lossy):
    """fsyncgate: after an fdatasync fails, Linux marks the pages it could not write back
    clean and keeps them, so they read back as written -- to a reopened store, or a restarted
    process -- though the disk never had them. A reopened log must not count such records
    as its own (it would acknowledge them as durable): it drops the cached pages of its
    tail and reads the disk."""
    fs = lossy(kernel_cache=True)
    logdir = os.path.join(fs.mountpoint, "log")
    size = 1 << 20  # one segment for all of it
    with LogStore(logdir, segment_size=size) as log:
        durable = log.append([b"synced-%d" % i for i in range(5)])
        log.sync()
        log.append([b"lost-%d" % i for i in range(5)])  # in the page cache: writes succeed
        segment = os.path.join(logdir, segments(logdir)[-1])
        with open(segment, "rb") as f:
            # Whole pages in the cache, as a local file system has them after a write (FUSE
            # caches a page written in part only once it has been read).
            assert b"lost-4" in f.read()
        fs.arm(0)  # the next mutating operation, the sync, fails: its write-back is lost
        with pytest.raises(MeridianError):
            log.sync()
        log.close(sync=False)
    fs.power_loss()  # the disk as the failed sync left it; the kernel keeps its pages
    with open(segment, "rb") as f:  # the premise: the cache still shows the lost records
        assert b"lost-4" in f.read()
    with LogStore(logdir, segment_size=size) as log:
        assert log.last_position == durable[-1]
        assert [log.read(p) for p in durable] == [b"synced-%d" % i for i in range(5)]
    assert_a_synced_append_survives(fs, logdir, size)


@needs_fuse
def test_logstore_opening_makes_the_directory_it_found_durable(lossy):
    """A process that died between removing a segment (conflict truncation, compaction, a
    roll's rename) and the directory fsync leaves a change that is visible but not durable.
    The next process's open must make the directory as it found it durable before anything
    is synced on top of it: else a power loss brings truncated records back (behind newer,
    acknowledged ones) or loses a segment that synced records live in."""
    fs = lossy()
    logdir = os.path.join(fs.mountpoint, "log")
    with LogStore(logdir, segment_size=SEGMENT_SIZE) as log:
        while log.stats().segments < 2:
            log.append([b"old" * 1000])
        log.sync()
        second = segments(logdir)[1]
    first_segment_end = int(second[:-len(".log")]) - 1  # a segment is named by its first
    # The dead process's truncation: the second segment unlinked, the directory not synced.
    os.unlink(os.path.join(logdir, second))
    with LogStore(logdir, segment_size=SEGMENT_SIZE) as log:
        assert log.last_position == first_segment_end
    assert_a_synced_append_survives(fs, logdir, SEGMENT_SIZE)


def assert_a_synced_append_survives(fs, logdir: str, segment_size: int) -> None:
    """Opens the log, appends one record and syncs it: it must be the log's last after a
    power loss."""
    with LogStore(logdir, segment_size=segment_size) as log:
        acked = log.append([b"acknowledged"])[0]
        log.sync()
    fs.power_loss()
    with LogStore(logdir, segment_size=segment_size) as log:
        assert log.last_position == acked
        assert log.read(acked) == b"acknowledged"


@needs_fuse
def test_a_state_file_and_a_directory_found_made_durable_on_open(lossy):
    """DurableState and makedirs_durable meeting a name whose creator died before the
    directory fsync: they sync it before a store counts on it."""
    from engine._fs import makedirs_durable

    fs = lossy()
    root = make_durable_dir(fs.mountpoint, "node")
    # A state file renamed into place, its directory never synced.
    path = os.path.join(root, "hardstate")
    with DurableState(os.path.join(fs.mountpoint, "scratch")) as scratch:
        scratch.store(b"-")
    os.rename(os.path.join(fs.mountpoint, "scratch"), path)
    with DurableState(path) as state:
        state.store(b"term=7 vote=3")
    # A directory made, its parent never synced.
    os.mkdir(os.path.join(root, "log"))
    makedirs_durable(os.path.join(root, "log"))
    fd = os.open(os.path.join(root, "log", "f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.fsync(fd)
    os.close(fd)
    fsync_dir(os.path.join(root, "log"))
    fs.power_loss()
    with DurableState(path) as state:
        assert state.load() == b"term=7 vote=3"
    assert os.listdir(os.path.join(root, "log")) == ["f"]


@needs_fuse
def test_an_mvcc_checkpoint_survives_power_loss_in_a_new_store(lossy):
    """A group compacts its Raft log behind the store's checkpoint (raft.driver's local
    snapshots): what the checkpoint covers must survive a power loss, the name of the store's
    data file included — LMDB creates it and never syncs the directory."""
    from engine.mvcc import MAX_TS, MVCCStore

    fs = lossy()
    path = os.path.join(fs.mountpoint, "node", "store")
    store = MVCCStore(path, map_size=1 << 20)
    store.apply([(b"k", b"checkpointed")], 10, 7)
    store.checkpoint()
    store.apply([(b"k", b"later")], 20, 8)  # not checkpointed: may be lost
    # Closed first: the map's pages it dirtied stay in the kernel's cache, and the next open
    # writes them back and syncs them (a crashed process's writes). Had the process lived
    # through the power loss, their write-back would fail, and the next open would say so.
    store.close()
    fs.power_loss()
    with MVCCStore(path, map_size=1 << 20) as again:
        assert again.applied_index in (7, 8), "the checkpoint was lost"
        assert again.get(b"k", 10) == b"checkpointed"
        assert again.get(b"k", MAX_TS) in (b"checkpointed", b"later")


@needs_fuse
def test_an_mvcc_store_reopened_after_a_failed_checkpoint_reads_the_disk(lossy):
    """fsyncgate for the MVCC store: the pages of a checkpoint whose sync failed stay in the
    page cache (a meta page among them), newer than the disk. A reopened store must read the
    disk: it must not report an applied index that no checkpoint made durable (the Raft log
    would be compacted behind data that is not there)."""
    from engine.mvcc import MAX_TS, MVCCStore

    fs = lossy(kernel_cache=True)
    path = os.path.join(fs.mountpoint, "node", "store")
    store = MVCCStore(path, map_size=1 << 20)
    store.apply([(b"k", b"checkpointed")], 10, 7)
    store.checkpoint()
    store.apply([(b"k", b"lost")], 20, 8)
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        f.read()  # whole pages in the cache, as a local file system keeps them after writes
    fs.arm(0)  # the next mutating operation, the checkpoint's sync, fails
    with pytest.raises(MeridianError):
        store.checkpoint()
    store.close()
    fs.power_loss()  # the disk as the failed sync left it; the kernel keeps its pages
    with open(os.path.join(path, "data.mdb"), "rb") as f:  # the premise: the cache shows it
        assert b"lost" in f.read()
    with MVCCStore(path, map_size=1 << 20) as again:
        assert again.applied_index == 7
        assert again.get(b"k", MAX_TS) == b"checkpointed"


@needs_fuse
def test_a_state_file_reopened_after_a_failed_store_reads_the_disk(lossy):
    """fsyncgate for the Raft hard state: a slot whose sync failed stays in the page cache
    with a higher sequence than the disk's; reopened, the file must give the value last made
    durable, not a vote that never was."""
    fs = lossy(kernel_cache=True)
    path = os.path.join(make_durable_dir(fs.mountpoint, "node"), "hardstate")
    with DurableState(path) as state:
        state.store(b"term=3 vote=1")
        fs.arm(1)  # the slot's write succeeds, its sync fails
        with pytest.raises(MeridianError):
            state.store(b"term=4 vote=2")
    fs.power_loss()
    with open(path, "rb") as f:  # the premise: the cache still shows the newer slot
        assert b"term=4 vote=2" in f.read()
    with DurableState(path) as state:
        assert state.load() == b"term=3 vote=1"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@needs_fuse
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_logstore_power_loss_between_operations(lossy, seed):
    fs = lossy()
    seen = run_log_cycles(fs, seed, cycles=20, armed=False)
    assert seen["segments_max"] >= 3 and seen["unsynced_survivors"] > 0


@needs_fuse
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_logstore_power_loss_inside_operations(lossy, seed):
    fs = lossy()
    seen = run_log_cycles(fs, seed, cycles=20, armed=True)
    assert seen["struck_inside"] > 0


@needs_fuse
def test_logstore_power_loss_whole_pages_regression(lossy):
    """Seed 11, whole 4 KiB pages, between operations: the sector holding the end of the last
    sync was lost while a later page landed (cycle 17)."""
    run_log_cycles(lossy(), 11, cycles=20, armed=False)


@needs_fuse
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
def test_logstore_power_loss_campaign_long(lossy, seed):
    """Opt-in (--run-slow): many more seeds, both unit sizes, inside and between operations."""
    run_log_cycles(lossy(unit=512 if seed % 2 else 4096), seed, cycles=40, armed=seed % 3 == 0)


@needs_fuse
@pytest.mark.parametrize("seed", [21, 22])
def test_logstore_power_loss_with_sector_sized_tears(lossy, seed):
    """512-byte units: a write may tear inside a page, as FORMAT.md allows."""
    fs = lossy(unit=512)
    run_log_cycles(fs, seed, cycles=20, armed=True)


@needs_fuse
def test_the_log_check_catches_a_store_that_does_not_sync(lossy, monkeypatch):
    """A checker that never fails proves nothing (FAULTS.md §5): with sync() a no-op, synced
    records are lost and the check says so."""
    monkeypatch.setattr(LogStore, "sync", lambda self: None)
    fs = lossy()
    with pytest.raises(AssertionError, match="synced record"):
        run_log_cycles(fs, 5, cycles=10, armed=False, torn_p=0.0)


# ============================================================ DurableState


def run_state_cycles(fs: LossyFS, seed: int, cycles: int) -> dict:
    """Stores cut by power losses (armed, torn or not); after each, load() must return the
    value of the last store that returned, or of the one the power cut."""
    rng = random.Random(seed)
    path = os.path.join(make_durable_dir(fs.mountpoint, f"raft-{seed}"), "state")
    seen = {"struck_inside": 0, "in_flight_won": 0, "fell_back": 0}
    last: bytes | None = None
    state = None
    for cycle in range(cycles):
        torn = rng.random() < 0.8
        loss_seed = rng.randrange(2**32)
        context = f"seed {seed}, cycle {cycle}, power loss seed {loss_seed}, torn={torn}"
        fs.arm(rng.randint(0, 12), seed=loss_seed, torn=torn)
        in_flight = None
        try:
            if state is None:  # the first cycle: the power may go while creating the file
                state = DurableState(path)
            for _ in range(rng.randint(1, 8)):
                in_flight = rng.randbytes(rng.randint(0, 3000))
                state.store(in_flight)
                last, in_flight = in_flight, None
        except (MeridianError, OSError) as exc:
            assert fs.crashed, f"{context}: {type(exc).__name__}: {exc}"
            seen["struck_inside"] += 1
        fs.power_loss(seed=loss_seed, torn=torn)
        if state is not None:
            state.close()
        try:
            state = DurableState(path)
        except MeridianError as exc:
            raise AssertionError(
                f"{context}: reopening failed: {type(exc).__name__}: {exc}"
            ) from exc
        got = state.load()
        if in_flight is not None and got == in_flight:
            seen["in_flight_won"] += 1
        else:
            assert got == last, f"{context}: loaded {got!r:.40}, the last store was {last!r:.40}"
            seen["fell_back"] += in_flight is not None
        last = got
    state.close()
    return seen


@needs_fuse
@pytest.mark.parametrize("unit", [4096, 512])
def test_durable_state_survives_power_loss(lossy, unit):
    fs = lossy(unit=unit)
    seen = {"struck_inside": 0, "in_flight_won": 0, "fell_back": 0}
    for seed in range(4):
        for k, v in run_state_cycles(fs, 100 * unit + seed, cycles=8).items():
            seen[k] += v
    assert seen["struck_inside"] > 0 and seen["fell_back"] > 0


@needs_fuse
def test_durable_state_creation_survives_power_loss_at_every_step(lossy):
    fs = lossy()
    for k in range(8):
        d = make_durable_dir(fs.mountpoint, f"d{k}")
        path = os.path.join(d, "state")
        fs.arm(k, seed=k, torn=True)
        try:
            with DurableState(path) as s:
                s.store(b"value")
            stored = True
        except (MeridianError, OSError):
            stored = False
        if not fs.crashed:
            fs.disarm()
        fs.power_loss(seed=k, torn=True)
        with DurableState(path) as s:
            assert s.load() == b"value" if stored else s.load() in (None, b"value")


@needs_fuse
def test_the_state_check_catches_a_store_that_does_not_sync(lossy, monkeypatch):
    """With fdatasync a no-op, an acknowledged value is lost and the check says so."""
    monkeypatch.setattr(durable_module.os, "fdatasync", lambda fd: None)
    fs = lossy()
    with pytest.raises(AssertionError, match="the last store was"):
        for seed in range(4):
            run_state_cycles(fs, seed, cycles=8)
