"""Crash tests of RaftStorage: whatever a crash interrupts, the storage reopens to the state
before the interrupted call, the state after it, or one of the few states in between that the
order of writes allows — and never loses what a completed call made durable.

A seeded :class:`Workload` plays a follower's driver: appends (some replacing a conflicting
suffix), hard states, received snapshots that replace the log, and compactions. For each call it
knows every state a crash may leave (:attr:`Op.candidates`: the state before, the allowed
intermediates in write order, the state after). Three ways of crashing it:

- crash points (in process): every write the storage makes is a numbered point; for each
  point a copy of the storage runs the call up to it and is abandoned there, then reopened —
  and reopened again with a crash inside that recovery;
- SIGKILL: a child process runs the workload and reports each completed call; the parent kills
  it at random moments and checks the reopened state;
- power loss (LossyFS, FUSE): unsynced writes are lost or torn, between calls and inside them.

After every reopen the state must also restart a Raft core. Each checker is shown to catch a
planted bug.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest
from crashtools import KilledChild

from engine import DurableState, LogStore, MeridianError
from raft import storage as storage_module
from raft.core import Config, RaftCore
from raft.storage import RaftStorage
from raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
)

SEGMENT = 16 << 10
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
BOOTSTRAP = ConfState(voters=(1, 2, 3))


# ============================================================ the workload and its model


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class State:
    """What a storage holds, as far as Raft can tell: the snapshot, the entries after it and
    the hard state as stored."""

    snap: SnapshotMeta | None
    snap_digest: bytes | None
    entries: tuple[Entry, ...]
    hard_state: HardState

    @property
    def s_index(self) -> int:
        return 0 if self.snap is None else self.snap.index

    @property
    def last(self) -> int:
        return self.entries[-1].index if self.entries else self.s_index

    def describe(self) -> str:
        snap = "none" if self.snap is None else f"{self.snap.index}/{self.snap.term}"
        terms = "".join(str(e.term % 10) for e in self.entries)
        return (
            f"snapshot {snap}, entries {self.s_index + 1}..{self.last} terms {terms or '-'}, "
            f"{self.hard_state}"
        )


def observe(st: RaftStorage) -> State:
    snap = st.read_snapshot()
    return State(
        None if snap is None else snap.meta,
        None if snap is None else digest(snap.data),
        tuple(st.entries(st.first_index, st.last_index + 1)),
        st.hard_state,
    )


def check_restorable(st: RaftStorage, context: str) -> None:
    """The recovered state is self-consistent: it restarts a Raft core."""
    r = st.initial_state(BOOTSTRAP)
    s_index = 0 if r.snapshot is None else r.snapshot.meta.index
    assert [e.index for e in r.entries] == list(range(s_index + 1, s_index + 1 + len(r.entries)))
    assert r.hard_state.commit <= st.last_index, context
    assert st.statistics().log.first_position <= s_index + 1, context
    core = RaftCore(Config(id=1), random.Random(0), r)
    assert core.last_index == st.last_index and core.commit >= s_index, context


@dataclass(frozen=True)
class Op:
    """One storage call and every state a crash during it may leave: ``candidates[0]`` is the
    state before, ``candidates[-1]`` the state after."""

    kind: str
    kwargs: dict
    candidates: tuple[State, ...]

    def apply(self, st: RaftStorage) -> None:
        if self.kind == "compact":
            st.save_snapshot(**self.kwargs)
        else:
            st.save(**self.kwargs)

    def describe(self) -> str:
        kw = self.kwargs
        if self.kind == "compact":
            return f"compact at {kw['snapshot'].meta.index} keep {kw['keep']}"
        parts = [self.kind]
        if kw.get("snapshot") is not None:
            parts.append(f"snapshot {kw['snapshot'].meta.index}")
        if kw.get("entries"):
            parts.append(f"entries {kw['entries'][0].index}..{kw['entries'][-1].index}")
        if kw.get("hard_state") is not None:
            parts.append(str(kw["hard_state"]))
        return " ".join(parts) + f" sync={kw['sync']}"


@dataclass(frozen=True)
class Sizes:
    entry: tuple[int, ...] = (0, 16, 200, 1500)
    snapshot: tuple[int, ...] = (0, 1000, 30_000)


SMALL = Sizes(entry=(0, 16, 300), snapshot=(0, 500, 5000))
LARGE = Sizes(entry=(0, 16, 200, 1500, 20_000), snapshot=(0, 1000, 30_000, 200_000))


class Workload:
    """A follower's saves, generated from a seed and the state the storage holds: a pure
    function of both, so a parent can replay what its child did."""

    def __init__(self, seed: int, state: State, term: int, vote: int, *,
                 sizes: Sizes = Sizes(), always_sync: bool = False) -> None:
        self.rng = random.Random(seed)
        self.state = state
        self.term = term
        self.vote = vote
        self.sizes = sizes
        self.always_sync = always_sync

    @classmethod
    def resume(cls, st: RaftStorage, seed: int, **kwargs) -> Workload:
        hs = st.initial_state(BOOTSTRAP).hard_state
        return cls(seed, observe(st), hs.term, hs.vote, **kwargs)

    def next_op(self) -> Op:
        rng, s = self.rng, self.state
        commit = max(s.hard_state.commit, s.s_index)
        if rng.random() < 0.15:
            self.term += 1
            self.vote = rng.choice([0, 1, 2, 3])
        r = rng.random()
        if r < 0.12:
            op = self._install(s, commit)
        elif r < 0.24 and min(commit, s.last) > s.s_index:
            op = self._compact(s, commit)
        elif r < 0.32:
            op = self._hard_state_only(s, commit)
        else:
            op = self._append(s, commit)
        self.state = op.candidates[-1]
        return op

    def _sync(self) -> bool:
        return self.always_sync or self.rng.random() < 0.7

    def _data(self, sizes: tuple[int, ...]) -> bytes:
        return self.rng.randbytes(self.rng.choice(sizes))

    def _conf(self) -> ConfState:
        nodes = self.rng.sample(range(1, 8), self.rng.randint(1, 5))
        k = self.rng.randint(1, len(nodes))
        return ConfState(tuple(sorted(nodes[:k])), tuple(sorted(nodes[k:])))

    def _entries(self, first: int, n: int) -> tuple[Entry, ...]:
        return tuple(
            Entry(self.term, first + i, self._data(self.sizes.entry),
                  EntryType.CONF_CHANGE if self.rng.random() < 0.05 else EntryType.NORMAL)
            for i in range(n)
        )

    def _append(self, s: State, commit: int) -> Op:
        rng = self.rng
        lo, hi = max(commit, s.s_index) + 1, s.last + 1
        first = hi if rng.random() < 0.7 else rng.randint(lo, hi)
        new = self._entries(first, rng.randint(1, 6))
        kept = tuple(e for e in s.entries if e.index < first)
        hs = None
        if rng.random() < 0.8:
            hs = HardState(self.term, self.vote, rng.randint(commit, new[-1].index))
        cands = [s]
        # A truncation cut short (it removes from the end), then an append cut short.
        cands += [dataclasses.replace(s, entries=tuple(e for e in s.entries if e.index < g))
                  for g in range(s.last, first - 1, -1)]
        cands += [dataclasses.replace(s, entries=kept + new[:j]) for j in range(len(new) + 1)]
        cands.append(dataclasses.replace(s, entries=kept + new, hard_state=hs or s.hard_state))
        return Op("append", {"entries": new, "hard_state": hs, "sync": self._sync()}, tuple(cands))

    def _hard_state_only(self, s: State, commit: int) -> Op:
        hs = HardState(self.term, self.vote, self.rng.randint(commit, s.last))
        return Op("hard state", {"hard_state": hs, "sync": self._sync()},
                  (s, dataclasses.replace(s, hard_state=hs)))

    def _install(self, s: State, commit: int) -> Op:
        rng = self.rng
        index = rng.randint(max(commit, s.s_index) + 1, s.last + 5)
        data = self._data(self.sizes.snapshot)
        meta = SnapshotMeta(index, self.term, self._conf())
        new = self._entries(index + 1, rng.choice([0, 0, 1, 4]))
        hs = HardState(self.term, self.vote, rng.randint(index, index + len(new)))
        base = State(meta, digest(data), (), s.hard_state)
        cands = [s] + [dataclasses.replace(base, entries=new[:j]) for j in range(len(new) + 1)]
        cands.append(dataclasses.replace(base, entries=new, hard_state=hs))
        kwargs = {"entries": new, "hard_state": hs, "sync": True}
        if rng.random() < 0.5:  # received in chunks, as the driver saves it
            kwargs |= chunked(meta, data, rng.choice([1, 700, 1 << 20]))
        else:
            kwargs["snapshot"] = Snapshot(meta, data)
        return Op("install", kwargs, tuple(cands))

    def _compact(self, s: State, commit: int) -> Op:
        rng = self.rng
        index = rng.randint(s.s_index + 1, min(commit, s.last))
        term = s.entries[index - s.s_index - 1].term
        data = self._data(self.sizes.snapshot)
        meta = SnapshotMeta(index, term, self._conf())
        after = State(meta, digest(data), tuple(e for e in s.entries if e.index > index),
                      s.hard_state)
        kwargs = {"snapshot": Snapshot(meta, data), "keep": rng.randint(0, 6)}
        return Op("compact", kwargs, (s, after))


def chunked(meta: SnapshotMeta, data: bytes, size: int) -> dict:
    """The ``save`` arguments that install ``data`` received in chunks of ``size`` bytes."""
    chunks = [SnapshotChunk(meta, off, data[off:off + size], len(data))
              for off in range(0, len(data), size)] or [SnapshotChunk(meta, 0, b"", 0)]
    return {"snapshot": Snapshot(meta, None), "snapshot_chunks": chunks}


def check_candidates(got: State, op: Op | None, expected: State, context: str) -> None:
    candidates = op.candidates if op is not None else (expected,)
    if got not in candidates:
        lines = "\n  ".join(c.describe() for c in candidates)
        raise AssertionError(
            f"{context}: after a crash {'in ' + op.describe() if op else 'between calls'} the "
            f"storage holds\n  {got.describe()}\nbut only these are allowed:\n  {lines}"
        )


def test_the_model_agrees_with_the_storage_without_crashes(tmp_path):
    """The baseline the crash checks stand on: with no crash, the storage holds exactly the
    model's final state after every call, across reopens."""
    path = tmp_path / "g"
    st = RaftStorage.open(path, segment_size=SEGMENT)
    w = Workload.resume(st, 7, sizes=SMALL)
    kinds = set()
    try:
        for n in range(250):
            op = w.next_op()
            kinds.add(op.kind)
            op.apply(st)
            if n % 5 == 0:
                assert observe(st) == w.state, f"call {n}: {op.describe()}"
            if n % 40 == 39:
                st.close()
                st = RaftStorage.open(path, segment_size=SEGMENT)
                assert observe(st) == w.state
                check_restorable(st, f"call {n}")
    finally:
        st.close()
    assert kinds == {"append", "hard state", "install", "compact"}


# ============================================================ crash points, in process


class Crash(Exception):
    """The process "dies" here: the write about to be made is not made."""


class CrashPoints:
    def __init__(self) -> None:
        self.armed: int | None = None
        self.count = 0

    def arm(self, k: int) -> None:
        self.armed, self.count = k, 0

    def disarm(self) -> None:
        self.armed = None

    def tick(self, what: str) -> None:
        if self.armed is None:
            return
        if self.count == self.armed:
            raise Crash(what)
        self.count += 1


@pytest.fixture
def crash_points(monkeypatch):
    """Makes every write of raft.storage (log calls, hard state stores, renames, fsyncs,
    directory creation and removal) a crash point."""
    cp = CrashPoints()

    class HookedLog(LogStore):
        def __init__(self, *args, **kwargs):
            cp.tick("open or create the log")
            super().__init__(*args, **kwargs)

        def append(self, records):
            cp.tick("append")
            return super().append(records)

        def sync(self):
            cp.tick("sync the log")
            super().sync()

        def truncate_after(self, position):
            cp.tick(f"truncate after {position}")
            super().truncate_after(position)

        def drop_before(self, position):
            cp.tick(f"drop before {position}")
            super().drop_before(position)

    class HookedState(DurableState):
        def store(self, payload):
            cp.tick("store the hard state")
            super().store(payload)

    class HookedOs:
        def __getattr__(self, name):
            return getattr(os, name)

        def rename(self, src, dst):
            cp.tick(f"rename {os.path.basename(src)} to {os.path.basename(dst)}")
            os.rename(src, dst)

        def fsync(self, fd):
            cp.tick("fsync a file")
            os.fsync(fd)

    real_fsync_directory = storage_module.fsync_directory
    real_remove = storage_module._remove_tree_durable

    def fsync_directory(path):
        cp.tick(f"fsync directory {os.path.basename(path)}")
        real_fsync_directory(path)

    def remove_tree(path, parent):
        cp.tick(f"remove {os.path.basename(path)}")
        real_remove(path, parent)

    monkeypatch.setattr(storage_module, "LogStore", HookedLog)
    monkeypatch.setattr(storage_module, "DurableState", HookedState)
    monkeypatch.setattr(storage_module, "os", HookedOs())
    monkeypatch.setattr(storage_module, "fsync_directory", fsync_directory)
    monkeypatch.setattr(storage_module, "_remove_tree_durable", remove_tree)
    return cp


@pytest.fixture
def scratch(tmp_path):
    """A directory for the crash-point tests. They crash the process, not the machine, so
    fsync buys nothing there: a tmpfs (where it is free) is used when there is one."""
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="raft-storage-crash-", dir=shm)
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def open_checked(path, context: str) -> RaftStorage:
    try:
        return RaftStorage.open(path, segment_size=SEGMENT)
    except MeridianError as exc:
        raise AssertionError(f"{context}: recovery failed: {type(exc).__name__}: {exc}") from exc


def run_crash_points(cp: CrashPoints, base, work, op: Op, seen: dict) -> None:
    """Runs ``op`` on copies of the storage in ``base``, crashing at each write in turn, and
    checks each reopened copy (and a copy whose recovery crashed too). Leaves the completed
    run in ``work``."""
    for k in itertools.count():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        st = RaftStorage.open(work, segment_size=SEGMENT)
        where = None
        cp.arm(k)
        try:
            op.apply(st)
        except Crash as exc:
            where = str(exc)
        finally:
            cp.disarm()
            st.close(sync=False)
        context = f"{op.describe()}, crash at point {k} ({where or 'none: completed'})"
        for j in itertools.count():  # and crash while recovering, at each of its writes
            again = f"{work}-recovering"
            shutil.rmtree(again, ignore_errors=True)
            shutil.copytree(work, again)
            cp.arm(j)
            try:
                RaftStorage.open(again, segment_size=SEGMENT).close(sync=False)
                break
            except Crash:
                seen["recovery crashes"] += 1
            finally:
                cp.disarm()
            with open_checked(again, context + f", and in recovery at point {j}") as st:
                check_candidates(observe(st), op, op.candidates[-1], context)
        with open_checked(work, context) as st:
            got = observe(st)
            check_candidates(got, op, op.candidates[-1], context)
            check_restorable(st, context)
        if got not in (op.candidates[0], op.candidates[-1]):
            seen["intermediate"] += 1
        seen["points"] += 1
        if where is None:
            assert got == op.candidates[-1], context
            return


@pytest.mark.parametrize("seed", [1, 2])
def test_a_crash_at_any_write_recovers_to_an_allowed_state(scratch, crash_points, seed):
    base, work = scratch / "base", scratch / "work"
    st = RaftStorage.open(base, segment_size=SEGMENT)
    w = Workload.resume(st, seed, sizes=SMALL)
    st.close()
    seen = {"points": 0, "intermediate": 0, "recovery crashes": 0}
    kinds = set()
    for _ in range(35):
        op = w.next_op()
        kinds.add(op.kind)
        run_crash_points(crash_points, base, work, op, seen)
        shutil.rmtree(base)
        os.rename(work, base)
    assert kinds == {"append", "hard state", "install", "compact"}
    assert seen["intermediate"] > 0 and seen["recovery crashes"] > 0, seen


def scripted_install(chunk_size: int = 0) -> tuple[State, Op]:
    """A follower with entries 1..20 of term 1 (commit 4) receives a snapshot at 12, term 3:
    entries 5..20 must all go. With ``chunk_size``, the snapshot comes in chunks."""
    old = State(None, None, tuple(Entry(1, i, b"old %d" % i) for i in range(1, 21)),
                HardState(1, 0, 4))
    data = b"the leader's state"
    meta = SnapshotMeta(12, 3, BOOTSTRAP)
    new = (Entry(3, 13, b"new 13"),)
    base = State(meta, digest(data), (), old.hard_state)
    final = State(meta, digest(data), new, HardState(3, 0, 12))
    kwargs = {"snapshot": Snapshot(meta, data), "entries": new,
              "hard_state": final.hard_state, "sync": True}
    if chunk_size:
        kwargs |= chunked(meta, data, chunk_size)
    op = Op("install", kwargs, (old, base, dataclasses.replace(base, entries=new), final))
    return old, op


def prepare(path, state: State) -> None:
    with RaftStorage.open(path, segment_size=SEGMENT) as st:
        st.save(entries=state.entries, hard_state=state.hard_state)


@pytest.mark.parametrize("chunk_size", [0, 5], ids=["whole", "chunks"])
def test_every_crash_point_of_a_snapshot_install(scratch, crash_points, chunk_size):
    old, op = scripted_install(chunk_size)
    prepare(scratch / "base", old)
    seen = {"points": 0, "intermediate": 0, "recovery crashes": 0}
    run_crash_points(crash_points, scratch / "base", scratch / "work", op, seen)
    assert seen["points"] >= 10 and seen["intermediate"] > 0, seen


def test_the_crash_point_check_catches_an_install_that_does_not_mark_its_snapshot(
    scratch, crash_points, monkeypatch
):
    """A checker is trusted only once it has caught a planted bug: without the LOG_RESET flag,
    recovery cannot tell the old log from one written after the install, and keeps it."""
    monkeypatch.setattr(storage_module, "FLAG_LOG_RESET", 0)
    old, op = scripted_install(5)
    prepare(scratch / "base", old)
    seen = {"points": 0, "intermediate": 0, "recovery crashes": 0}
    with pytest.raises(AssertionError, match="only these are allowed"):
        run_crash_points(crash_points, scratch / "base", scratch / "work", op, seen)


def test_the_crash_point_check_catches_a_hard_state_stored_before_the_entries(
    scratch, crash_points, monkeypatch
):
    real_save = RaftStorage.save

    def hard_state_first(self, *, snapshot=None, entries=(), hard_state=None, sync=True):
        if hard_state is not None:
            self._state.store(storage_module.encode_hard_state(hard_state))
        real_save(self, snapshot=snapshot, entries=entries, hard_state=hard_state, sync=sync)

    monkeypatch.setattr(RaftStorage, "save", hard_state_first)
    old = State(None, None, tuple(Entry(1, i, b"%d" % i) for i in range(1, 6)),
                HardState(1, 0, 2))
    new = tuple(Entry(2, i, b"new %d" % i) for i in range(4, 8))
    hs = HardState(2, 1, 6)
    cands = [old] + [dataclasses.replace(old, entries=old.entries[:3] + new[:j])
                     for j in range(5)]
    op = Op("append", {"entries": new, "hard_state": hs, "sync": True},
            (*cands, dataclasses.replace(old, entries=old.entries[:3] + new, hard_state=hs)))
    prepare(scratch / "base", old)
    seen = {"points": 0, "intermediate": 0, "recovery crashes": 0}
    with pytest.raises(AssertionError, match="recovery failed|only these are allowed"):
        run_crash_points(crash_points, scratch / "base", scratch / "work", op, seen)


# ============================================================ SIGKILL


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from test_raft_storage_crash import child_main
child_main(sys.argv[2], int(sys.argv[3]))
"""


def child_main(path: str, seed: int) -> None:
    """Runs the workload forever, printing the number of completed calls after each."""
    st = RaftStorage.open(path, segment_size=SEGMENT)
    w = Workload.resume(st, seed, sizes=LARGE)
    for n in itertools.count(1):
        w.next_op().apply(st)
        sys.stdout.write(f"{n}\n")
        sys.stdout.flush()


def kill_and_count(child: KilledChild, reported: int) -> int:
    """SIGKILLs the child and returns how many calls it reported completed in all: those it
    reported before (``reported``) and whatever more it wrote before it died."""
    if child.proc.poll() is not None:
        raise AssertionError(f"the child died by itself: {child.proc.stderr.read().decode()}")
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait()
    rest = child._buf + child.proc.stdout.read()
    done = [line for line in rest.split(b"\n")[:-1] if line]  # a last line cut short: not done
    return int(done[-1]) if done else reported


def run_sigkill_campaign(tmp_path, seed: int, kills: int, deadline_s: float) -> dict:
    rng = random.Random(seed)
    path = tmp_path / "group"
    end = time.monotonic() + deadline_s
    op: Op | None = None
    expected: State | None = None
    seen = {"mid-call": 0, "calls": 0}
    for k in range(kills):
        assert time.monotonic() < end, f"seed {seed}: out of time after {k} kills"
        context = f"seed {seed}, kill {k}"
        with open_checked(path, context) as st:
            if expected is not None:
                got = observe(st)
                check_candidates(got, op, expected, context)
                seen["mid-call"] += got != op.candidates[-1]
            check_restorable(st, context)
            child_seed = rng.randrange(2**32)
            w = Workload.resume(st, child_seed, sizes=LARGE)
        with KilledChild(CHILD, TESTS_DIR, str(path), str(child_seed), deadline=end) as child:
            for _ in range(rng.randint(1, 15)):
                reported = int(child.line())
            done = kill_and_count(child, reported)
        seen["calls"] += done
        ops = [w.next_op() for _ in range(done + 1)]
        op, expected = ops[done], ops[done].candidates[0]
    with open_checked(path, f"seed {seed}, at the end") as st:
        check_candidates(observe(st), op, expected, f"seed {seed}, last kill")
        check_restorable(st, f"seed {seed}, at the end")
    return seen


def test_sigkill_never_loses_a_completed_save(tmp_path):
    """Reference: ARCH §2 and §9 (crash-recover with durable disks)."""
    seen = run_sigkill_campaign(tmp_path, seed=20261201, kills=10, deadline_s=120)
    assert seen["calls"] > 10, seen


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_campaign_long(tmp_path, seed):
    run_sigkill_campaign(tmp_path, seed=seed, kills=100, deadline_s=900)


# ============================================================ power loss (LossyFS)


def run_power_loss_cycles(fs, seed: int, cycles: int, *, armed: bool) -> dict:
    """Workload calls (all synced) cut by power losses, torn or not, between calls or (armed)
    inside them and inside recovery; after each, the state must be one the interrupted call
    allows — exactly the last completed call's state when the loss struck between calls."""
    rng = random.Random(seed)
    path = os.path.join(fs.mountpoint, "group")
    st = RaftStorage.open(path, segment_size=SEGMENT)
    w = Workload.resume(st, rng.randrange(2**32), sizes=SMALL, always_sync=True)
    seen = {"struck inside": 0, "mid-call": 0}
    for cycle in range(cycles):
        torn = rng.random() < 0.7
        loss_seed = rng.randrange(2**32)
        context = f"seed {seed}, cycle {cycle}, power loss seed {loss_seed}, torn={torn}"
        if armed:
            fs.arm(rng.randint(0, 60), seed=loss_seed, torn=torn)
        op = None
        try:
            for _ in range(rng.randint(1, 6)):
                op = w.next_op()
                op.apply(st)
                op = None
        except (MeridianError, OSError) as exc:
            assert armed and fs.crashed, f"{context}: {type(exc).__name__}: {exc}"
            seen["struck inside"] += 1
        fs.power_loss(seed=loss_seed, torn=torn)
        st.close(sync=False)  # the process died with the power
        context += f", in {op.describe() if op else 'no call'}"
        if armed and rng.random() < 0.3:  # and once more, while recovering
            fs.arm(rng.randint(0, 8), seed=loss_seed + 1, torn=torn)
            try:
                RaftStorage.open(path, segment_size=SEGMENT).close(sync=False)
                fs.disarm()
            except (MeridianError, OSError) as exc:
                if not fs.crashed:
                    raise AssertionError(f"{context}: recovery failed: {exc}") from exc
                fs.power_loss()
        st = open_checked(path, context)
        got = observe(st)
        check_candidates(got, op, w.state, context)
        seen["mid-call"] += op is not None and got != op.candidates[-1]
        check_restorable(st, context)
        w = Workload.resume(st, rng.randrange(2**32), sizes=SMALL, always_sync=True)
    st.close()
    return seen


def test_power_loss_between_calls_loses_nothing_synced(lossy):
    fs = lossy()
    for seed in (1, 2, 3):
        run_power_loss_cycles(fs, seed, cycles=25, armed=False)


def test_power_loss_inside_calls_recovers_to_an_allowed_state(lossy):
    fs = lossy(unit=512)
    seen = {"struck inside": 0, "mid-call": 0}
    for seed in (11, 12, 13):
        for key, value in run_power_loss_cycles(fs, seed, cycles=25, armed=True).items():
            seen[key] += value
    assert seen["struck inside"] > 0, seen


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 120))
def test_power_loss_campaign_long(lossy, seed):
    run_power_loss_cycles(lossy(unit=512 if seed % 2 else 4096), seed, cycles=40,
                          armed=seed % 3 != 0)


def test_the_power_loss_check_catches_a_storage_that_does_not_sync_its_directory(
    lossy, monkeypatch
):
    """Without the directory fsync after the rename, a compaction snapshot can vanish in a
    power loss while the log segments it allowed to drop stay dropped."""
    monkeypatch.setattr(storage_module, "fsync_directory", lambda path: None)
    fs = lossy()
    with pytest.raises(AssertionError):
        for seed in (1, 2, 3):
            run_power_loss_cycles(fs, seed, cycles=12, armed=False)
