"""The trio driver: runs one :class:`~raft.core.RaftCore` against real time, disk and network.

The driver is the only loop (STYLE §1) and it is short. Two tasks and a handler share one core:

- *receive*: the transport calls the node's handler (``Transport.set_handler``) from the task
  that read the messages, and each is stepped into the core at once;
- *tick*: every ``tick_interval`` seconds, one ``core.tick()`` (one ticker task per process
  ticks every node that has the same interval);
- *ready*: while the core has work, take a :class:`~raft.types.Ready` and handle it in the
  order the Ready documents — send ``messages``, persist (one fsync), send
  ``persisted_messages``, apply ``committed_entries``, then ``advance``.

A step, a tick or a :meth:`RaftNode.propose_nowait` that leaves a Ready while the ready loop is
idle has the Ready handled at once by the task that made it (the receiver, the ticker or the
proposer) when nothing in it has to wait — the usual case with the fsync on the loop's thread:
a follower's append persisted and acknowledged, a leader's new entries sent, appended and
fsynced, or the entries its acknowledgements committed applied — which saves a switch to the
ready loop's task per Ready. The transport hands over every message of a group that one read
brought in one call, so appends that arrived together still share one fsync (one call per frame
cost 10–30% of the Raft benchmark's throughput at 16 clients in alternating runs), and a server
that proposes once per wake-up (``bench.raftkv``) still proposes many requests as one entry.
A leader's Readies were first kept on the ready loop, so that what arrives while it waits to
run shares one Ready; once the transport delivered per read, handling them inline measured
better in five of six alternating pairs of the Raft benchmark at each of 1, 16 and 128
clients (one client p50 0.97–1.28 ms against 1.02–1.45, 128 clients 18,933–28,021 puts/s
against 14,942–24,932).
:meth:`RaftNode.propose` (a waiting task per proposal) still wakes the ready loop, where
concurrent proposals share a Ready.

**Persisting.** The usual Ready holds entries that follow the log and nothing else: they are
appended from the loop (one write to the page cache) and fdatasynced. By default
(``sync_in_loop=True``) the loop's own thread calls ``fdatasync``, the way etcd's Raft loop
saves its WAL: the process does nothing else for the fsync's duration (~0.2 ms on this kind of
disk; other threads run, the GIL is released), and a wake-up through the scheduler is saved per
fsync — on a two-core machine that is more than the fsync costs, see BENCHMARKS.md, "Cluster:
analysis". With ``sync_in_loop=False`` a native thread that never takes the GIL
(:class:`engine._native.Syncer`) runs it while the loop waits on its eventfd and keeps serving
other tasks — for a process whose disk may stall for long while other groups or clients must
still be served. Everything else — a snapshot, a term or vote change, a conflict truncation, a
new log segment — runs in one Python worker thread per node, as do snapshots and blocking state
machines.

**Asynchronous leader append** (``async_append``, with ``sync_in_loop``; Meridian's nodes'
default). A leader's usual Ready — entries that follow the log, nothing that must wait for
their fsync — is sent and appended from the loop as above, but its fdatasync runs in a native
thread (:class:`engine._native.Syncer`) while the loop goes on: it reads the followers'
acknowledgements and the clients' requests, and the next Readies' entries are sent and
appended behind the ones being synced, for the next fsync (one in flight at a time). The core
counts the leader's own entries towards a commit, and applies them, only once their fsync has
returned (``RaftCore.advance(rd, entries_durable=False)``, then ``RaftCore.persisted_to``), as
etcd's raft does with asynchronous storage writes: a majority of durable copies is still what
commits an entry, and a state machine never runs ahead of its own node's durable log.
Followers keep the fsync on the loop: their acknowledgement must wait for it anyway. Anything
else that touches the log (a truncation, a new segment, a snapshot) first waits for the fsync
in flight. Measured against the fsync on the loop in BENCHMARKS.md ("Asynchronous leader
append").

**Group commit.** While one Ready is being fsynced, proposals and messages keep arriving (in
the sockets, with ``sync_in_loop``; stepped into the core, without) and the next Ready carries
all of them, so every entry that became ready during one fsync shares the next one. Under load,
the fsync rate stays near the disk's and the entries per fsync grow with the offered load.

**Snapshots.** Every ``snapshot_every`` applied entries the log is compacted behind a
snapshot. A plain :class:`StateMachine` is copied (``snapshot()``) for it; a
:class:`DurableStateMachine` — one whose own storage is durable, as Meridian's groups over LMDB
are — only makes its state durable and leaves a local marker, and a full snapshot is built
(from a view taken between two applies, in a thread of its own, into a temporary file that the
core sends from a read-only mapping) only when the core reports that a follower needs one
(``RaftCore.snapshot_wanted``). A compaction waits, for at most four times
``snapshot_every`` entries, while a follower receives the snapshot held. A follower writes each
chunk of a snapshot it receives to its storage as it comes (``Ready.snapshot_chunks``), and its
state machine restores from the stored file: a received snapshot is never held in memory whole.

Clients call :meth:`RaftNode.propose` (resolves with the state machine's result for that entry
once it is applied), :meth:`RaftNode.linearizable_read` (ReadIndex, §6.4: resolves once the
state machine has applied everything committed before the read began) and
:meth:`RaftNode.wait_applied`. Timeouts are the caller's cancel scopes.

The hard state is written to storage when its term or vote changes (before any vote or
acknowledgement leaves, as the core requires); a change of commit index alone is not worth a
second fsync per batch and is written with the next term or vote change — after a restart the
commit index is simply learnt again from the leader. The exception is a Ready that appends or
applies a membership change: it stores the commit index too (see
:meth:`RaftNode._hard_state_to_store`).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import trio

from engine._native import Syncer

from .core import Config, RaftCore
from .types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    ProposalDroppedError,
    RaftError,
    Ready,
    Snapshot,
    SnapshotMeta,
    StateRole,
)
from .waitheap import WaitHeap

__all__ = [
    "StateMachine",
    "DurableStateMachine",
    "SnapshotBuilder",
    "RaftNode",
    "RaftNodeStats",
    "open_raft_node",
    "EntryLostError",
    "OutcomeUnknownError",
    "RaftTimeoutError",
    "UNSAFE_MODES",
]

log = logging.getLogger("meridian.raft")

# After a failed build of a snapshot for followers, seconds before the next try.
SNAPSHOT_BUILD_RETRY_S = 5.0
# A snapshot built for followers is dropped (a local marker kept) once none has received it
# for this long.
SNAPSHOT_RELEASE_S = 30.0

# Test-only ways to break durability (see ``open_raft_node``'s ``unsafe``).
UNSAFE_MODES = ("ack_before_fsync", "votes_without_persisting")

# The largest proposal accepted: well below the storage's record limit (raft.storage,
# ~64 MiB) and the transport's frame limit (raft.wire.DEFAULT_MAX_FRAME, 64 MiB of body, which
# must also hold the APPEND message around the entry). A larger one would be appended to the
# in-memory log and then fail the persist, stopping the replica.
MAX_PROPOSAL_BYTES = 32 << 20


def _check_proposal_size(data) -> None:
    size = memoryview(data).nbytes if isinstance(data, (bytes, bytearray, memoryview)) else 0
    if size > MAX_PROPOSAL_BYTES:
        raise ValueError(f"a proposal of {size} bytes is over the {MAX_PROPOSAL_BYTES}-byte "
                         "limit; nothing was written")


class EntryLostError(ProposalDroppedError):
    """The proposal's entry was overwritten by another leader's entry: it was not applied."""


class OutcomeUnknownError(RaftError):
    """This node cannot tell whether the proposal's entry was applied (it installed a snapshot
    that covers the entry's index). Read the state to find out; do not blindly retry."""


class RaftTimeoutError(RaftError):
    """The call's ``timeout`` passed first. For a proposal the outcome is unknown: the entry
    may still be applied later."""


class StateMachine(Protocol):
    """What a Raft group replicates. ``apply`` is called with committed entries in log order,
    exactly once per entry between a ``restore`` and the next (restart replays from the last
    snapshot). Entries with empty data are leader no-ops and are not passed in."""

    def apply(self, entries: Sequence[Entry]) -> list[object]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None:
        """Replaces the state with a snapshot's. Called on the event loop, unless the state
        machine has a true ``restore_in_thread`` attribute: then in the node's worker thread
        (a large snapshot takes seconds to install, and the loop serves other groups
        meanwhile), with no ``apply`` until it returns, while other tasks may still read the
        state machine -- it must make sure they never see half of the change.

        ``data`` is ``bytes``, unless the state machine has a true ``restore_from_buffer``
        attribute: then a snapshot received from the leader comes as a read-only
        ``memoryview`` of the stored snapshot file, mapped (a snapshot is as large as the
        state: the page cache holds it, not the heap). It is valid only during the call: keep
        no view of it."""


class SnapshotBuilder(Protocol):
    """A full snapshot being built from a consistent view taken when it was begun."""

    index: int  # the applied index the view holds

    def run(self) -> bytes:
        """Builds it (in a worker thread) and returns its data: bytes, or a read-only mmap."""

    def cancel(self) -> None:
        """Makes a running :meth:`run` stop soon, raising (the node is closing)."""

    def close(self) -> None:
        """Releases the view without building."""


class DurableStateMachine(StateMachine, Protocol):
    """A state machine whose own storage is durable (Meridian's groups: LMDB). Its driver
    compacts the log without copying the state — behind a small *local* snapshot
    (``raft.types.Snapshot.local``, from :meth:`checkpoint`) that ``restore`` accepts on this
    node only, once :meth:`sync` has made the state it stands for durable — and builds a full
    snapshot, off the loop, only when a follower needs one (:meth:`begin_snapshot`). A state
    machine has these three methods or none; ``snapshot`` is then unused by the driver."""

    def checkpoint(self) -> bytes:
        """The local snapshot marker for the state as applied now (called on the loop,
        between applies; O(1)). The driver stores it, and compacts the log behind it, only
        once :meth:`sync` has returned."""

    def sync(self) -> None:
        """Makes durable every change applied before the call. Runs in a thread of its own
        while applies go on."""

    def begin_snapshot(self) -> SnapshotBuilder:
        """Takes a consistent view of the state as applied now (called on the loop, between
        applies); the builder may then run in another thread while applies go on."""


@dataclass(frozen=True, slots=True)
class RaftNodeStats:
    group: int
    id: int
    role: str
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    readies: int
    readies_inline: int
    """Of ``readies``, those handled by the task that stepped (see the module docstring)."""
    fsyncs: int
    entries_persisted: int
    entries_applied: int
    proposals: int
    proposals_pending: int
    reads: int
    snapshots_taken: int
    snapshots_installed: int
    snapshots_built: int  # full snapshots built for followers (durable state machines)
    messages_sent: int
    messages_received: int
    messages_malformed: int
    """Received messages the core dropped as malformed (``RaftCore.step``); the first is
    logged."""
    storage_busy: bool = False
    """A call is running in the node's storage thread (a persist, a snapshot install, a
    blocking apply), or an fsync in its sync thread (``sync_in_loop=False``, or a leader's
    asynchronous append) has not returned: with ``fsyncs`` not moving, what a node that makes
    no progress waits on."""
    failure: str | None = None
    """Why the node stopped (a step, a storage call or the state machine raised), or None."""


class _Unsynced(NamedTuple):
    """Entries a leader appended asynchronously: the last one's index and term, and how many."""

    index: int
    term: int
    count: int


class _Waiter:
    __slots__ = ("event", "value", "error")

    def __init__(self):
        self.event = trio.Event()
        self.value = None
        self.error: BaseException | None = None

    def set(self, value=None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.event.set()

    async def wait(self):
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.value


class _Callback:
    """A proposal's outcome delivered to a plain function instead of a waiting task."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[object, BaseException | None], None]):
        self.fn = fn

    def set(self, value=None, error: BaseException | None = None) -> None:
        try:
            self.fn(value, error)
        except Exception:  # a caller's bug must not stop the replica
            log.exception("proposal callback %r raised", self.fn)


class _BuildJob:
    """A snapshot build running in its own thread; ``done`` is set on the loop when it ends
    (with ``data`` or ``error``)."""

    def __init__(self, build: SnapshotBuilder, token: trio.lowlevel.TrioToken) -> None:
        self.build = build
        self.data = b""
        self.error: BaseException | None = None
        self.done = trio.Event()
        self._token = token

    def run(self) -> None:
        try:
            self.data = self.build.run()
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self.build.close()
            except BaseException as exc:  # the loop must hear of the end whatever happens
                self.error = self.error or exc
            try:
                self._token.run_sync_soon(self.done.set)
            except trio.RunFinishedError:
                pass


class _WorkerThread:
    """One thread per node for its blocking calls (persist, snapshot, a blocking apply), run
    one at a time, woken and answered through eventfds the event loop waits on.

    ``trio.to_thread.run_sync`` would do the same job, but its round trip (thread cache, locks,
    ``run_sync_soon``) measured 400 µs on the two-core VMs Meridian is benchmarked on, against
    80 µs for this: on a commit's critical path, which holds one persist per replica, that is
    most of a millisecond.
    """

    def __init__(self, name: str):
        self._request = os.eventfd(0)  # blocking: the thread sleeps in a read of it
        self._done = os.eventfd(0, os.EFD_NONBLOCK)
        self._job: tuple | None = None
        self._result: tuple[bool, object] | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                os.eventfd_read(self._request)
            except InterruptedError:
                # A signal (SIGTERM, SIGINT) handled on this thread: os.eventfd_read, unlike
                # os.read, does not retry by itself, and the thread must not die of it.
                continue
            job = self._job
            if job is None:
                return
            fn, args = job
            try:
                self._result = (True, fn(*args))
            except BaseException as exc:  # handed to the caller, which raises it
                self._result = (False, exc)
            os.eventfd_write(self._done, 1)

    async def run(self, fn, *args):
        """Runs ``fn(*args)`` in the thread and returns its result (or raises its exception).
        Not cancellable once started: a cancelled caller still waits for the call to end, so
        that storage calls never overlap."""
        if self._busy:
            raise RaftError("worker thread called while busy")
        self._busy = True
        try:
            self._job = (fn, args)
            self._result = None
            os.eventfd_write(self._request, 1)
            with trio.CancelScope(shield=True):
                while True:
                    await trio.lowlevel.wait_readable(self._done)
                    try:
                        os.eventfd_read(self._done)
                        break
                    except BlockingIOError:
                        continue
        finally:
            self._busy = False
        ok, value = self._result
        self._result = None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Stops the thread (after the call it is running, if any) and frees the eventfds."""
        if self._thread.is_alive():
            self._job = None
            os.eventfd_write(self._request, 1)
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            os.close(self._request)
            os.close(self._done)


class _Ticker:
    """Ticks every Raft node of this trio run that has one tick interval, from one task.

    A node hosting many groups would otherwise run one timer per group; here all of them tick
    in the same loop turn from one wakeup (and their heartbeats to a peer leave together).
    Ticks fall on a grid of the interval. The ticker is a system task of the run; it ends when
    its last node unregisters.
    """

    _by_run: trio.lowlevel.RunVar = trio.lowlevel.RunVar("meridian_raft_tickers")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.nodes: dict[int, RaftNode] = {}  # by id(), in registration order

    @classmethod
    def _tickers(cls) -> dict[float, _Ticker]:
        try:
            return cls._by_run.get()
        except LookupError:
            tickers: dict[float, _Ticker] = {}
            cls._by_run.set(tickers)
            return tickers

    @classmethod
    def register(cls, node: RaftNode) -> None:
        tickers = cls._tickers()
        ticker = tickers.get(node._tick_interval)
        if ticker is None:
            ticker = tickers[node._tick_interval] = cls(node._tick_interval)
            trio.lowlevel.spawn_system_task(ticker._run, name="raft-ticker")
        ticker.nodes[id(node)] = node

    @classmethod
    def unregister(cls, node: RaftNode) -> None:
        ticker = cls._tickers().get(node._tick_interval)
        if ticker is not None:
            ticker.nodes.pop(id(node), None)

    async def _run(self) -> None:
        interval = self.interval
        point = None  # the grid point of the last tick
        try:
            while self.nodes:
                # The point we are on, rounded as RaftNode._grid_now does: woken exactly on a
                # point, the quotient may fall just below it (2.15 / 0.05 = 42.999...), and
                # the point we are on would be taken for the next one and ticked again (at
                # once, and with a virtual clock, which stands still while a task runs,
                # forever).
                now = math.floor(trio.current_time() / interval + 1e-6)
                point = now if point is None else max(now, point)
                await trio.sleep_until((point + 1) * interval)
                point += 1
                for node in list(self.nodes.values()):
                    node._on_tick()
        finally:
            tickers = self._tickers()
            if tickers.get(interval) is self:
                del tickers[interval]


class RaftNode:
    """One replica of one group, driven by trio. Create it with :func:`open_raft_node`."""

    def __init__(self, group: int, config: Config, storage, transport,
                 state_machine: StateMachine, *, bootstrap: ConfState, seed: int | None,
                 tick_interval: float, snapshot_every: int, snapshot_keep: int,
                 apply_in_thread: bool, sync_in_loop: bool = True,
                 async_append: bool = False, unsafe: frozenset[str] = frozenset()):
        if tick_interval <= 0 or not math.isfinite(tick_interval):
            raise ValueError(f"tick_interval must be a positive number, not {tick_interval!r}")
        if snapshot_every < 0 or snapshot_keep < 0:
            raise ValueError("snapshot_every and snapshot_keep must be >= 0")
        self.group = group
        self.id = config.id
        self._storage = storage
        self._transport = transport
        self._sm = state_machine
        self._tick_interval = tick_interval
        self._snapshot_every = snapshot_every
        self._snapshot_keep = snapshot_keep
        self._apply_in_thread = apply_in_thread
        self._restore_in_thread = getattr(state_machine, "restore_in_thread", False) is True
        self._restore_from_buffer = getattr(state_machine, "restore_from_buffer", False) is True
        unknown = set(unsafe) - set(UNSAFE_MODES)
        if unknown:
            raise ValueError(f"unknown unsafe mode(s) {sorted(unknown)}; known: {UNSAFE_MODES}")
        self._ack_before_fsync = "ack_before_fsync" in unsafe
        self._votes_without_persisting = "votes_without_persisting" in unsafe
        self._durable_sm = all(callable(getattr(state_machine, name, None))
                               for name in ("checkpoint", "sync", "begin_snapshot"))
        # A durable state machine restores a full snapshot (one received before a restart)
        # from the stored file, as when it was received: it is never on the heap whole.
        state = storage.initial_state(bootstrap, snapshot_data=not self._durable_sm)
        snap = state.snapshot
        if snap is not None:
            if snap.local and not self._durable_sm:
                raise RaftError(
                    f"group {group}: the storage holds a local snapshot (the state machine's "
                    f"own storage had the state), but this state machine is not durable")
            if snap.data is None:
                self._install_snapshot()
                # The state machine's storage has the state now: the core holds a marker,
                # as after an install, and a follower that needs a snapshot gets one built.
                state = replace(state, snapshot=Snapshot(snap.meta, b"", True))
            else:
                state_machine.restore(snap.data)
        rng = random.Random(seed if seed is not None else random.SystemRandom().getrandbits(64))
        self._core = RaftCore(config, rng, state)
        self._stored_hs: HardState = state.hard_state
        self._ready_hs: HardState = state.hard_state  # the core's, as of the latest Ready
        self._snapshot_index = snap.meta.index if snap else 0
        # A full snapshot being built for followers (durable state machines), and when a
        # failed build may be tried again.
        self._build: SnapshotBuilder | None = None
        self._build_retry_at = -math.inf
        self._built_at: float | None = None  # a built snapshot held: when last in use
        self._built_data = None  # that snapshot's data (see _close_built)
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._proposals: dict[int, tuple[int, _Waiter]] = {}
        # Older proposals of this node displaced from _proposals by a newer one at the same
        # index (it lost and regained leadership before applying that index). Their entry may
        # still commit via another node, so they resolve like the others: when the index is
        # applied, by term.
        self._displaced: dict[int, list[tuple[int, _Waiter]]] = {}
        # The term of the entry at the applied index when pending proposals were last checked
        # for one of an earlier term behind it (see _wake_applied).
        self._applied_term = 0
        # ctx -> (waiter, term, leader when asked): the core forgets a read when its term or
        # leader changes, so such reads are failed then (see _fail_stale_reads).
        self._reads: dict[bytes, tuple[_Waiter, int, int]] = {}
        # A read's context must be unique in the group, across restarts: the leader queues a
        # follower's read under the follower's context and confirms the queued read whose
        # context a heartbeat's answer carries, and a follower releases the read whose context
        # a leader's answer carries. Contexts numbered per node would collide between nodes
        # (an answer to a round sent for one node's read, before another's was asked, would
        # confirm the other) and between incarnations of one node (a late answer to the
        # previous one's read would release the new one's): this node's id, a random
        # incarnation, then a count.
        self._read_prefix = config.id.to_bytes(8, "big") + os.urandom(8)
        self._read_ids = itertools.count(1)
        self._applied_waiters: WaitHeap[_Waiter] = WaitHeap()
        self._waiter_ids = itertools.count()
        # Proposals with a timeout: (deadline, tie-breaker, index, waiter), a heap.
        self._deadlines: list[tuple[float, int, int, _Waiter]] = []
        self._closed = False
        self._failed: BaseException | None = None
        self._step_error: BaseException | None = None  # raised by the core on a message
        self._malformed_logged = False  # the first malformed message received was logged
        # The point of the tick grid (trio time / tick interval) of the last tick; None
        # until the node runs. A gap of more than one interval means ticks were lost.
        self._tick_grid: int | None = None
        self._counts = dict.fromkeys(
            ("readies", "readies_inline", "fsyncs", "entries_persisted", "entries_applied",
             "proposals", "reads", "snapshots_taken", "snapshots_installed", "snapshots_built",
             "messages_sent", "messages_received"), 0)
        # Storage that can append from the loop is fsynced from the loop or by a native thread
        # that never takes the GIL (see _persist_fast); anything else goes through the worker.
        self._fast_persist = hasattr(storage, "append_nowait")
        self._syncer = Syncer() if self._fast_persist and not sync_in_loop else None
        self._syncing = False  # waiting for the syncer's fsync (see _persist_fast)
        # A leader's appends fsynced by a native thread of their own while the loop goes on
        # (see _appended_async): the fsync in flight, as (log position, the last entry it
        # covers); the entries appended since it began, as (index, term) of the last one and
        # their number; and an event set whenever neither is left.
        self._async_syncer = (Syncer() if async_append and self._fast_persist
                              and self._syncer is None and not unsafe else None)
        self._async_inflight: tuple[int, _Unsynced] | None = None
        self._async_unsynced: _Unsynced | None = None
        self._async_idle = trio.Event()
        self._async_idle.set()
        # Readies handled by the task that made them (see _ready_inline) when none of their
        # usual steps has to wait. _busy: a task is handling Readies (the ready loop, maybe
        # waiting, or _ready_inline); _handoff: a Ready _ready_inline left to the ready loop.
        self._inline = (self._fast_persist and sync_in_loop and not apply_in_thread
                        and not unsafe)
        self._busy = False
        self._handoff: Ready | None = None
        self._handoff_sent = False  # the handed-off Ready's messages were sent
        # A durable state machine's checkpoint: its storage syncing in a thread
        # (_checkpointing), then synced, waiting for the ready loop to compact behind it.
        self._checkpointing = False
        self._synced: tuple[SnapshotMeta, bytes] | None = None
        try:
            self._worker = _WorkerThread(f"raft-{group}-{config.id}-storage")
        except BaseException:
            for syncer in (self._syncer, self._async_syncer):
                if syncer is not None:
                    syncer.close()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def core(self) -> RaftCore:
        """The core, for inspection (tests, status). Do not call its methods directly."""
        return self._core

    @property
    def sync_in_loop(self) -> bool:
        """Whether the usual Ready's fdatasync runs on the loop's thread (see the module
        docstring); False also for storage that has no fast path (all through the worker)."""
        return self._fast_persist and self._syncer is None

    @property
    def async_append(self) -> bool:
        """Whether a leader's appends are fsynced while its loop goes on (see
        :meth:`_appended_async`)."""
        return self._async_syncer is not None

    @property
    def is_leader(self) -> bool:
        return self._core.role is StateRole.LEADER

    @property
    def leader(self) -> int:
        return self._core.leader

    async def propose(self, data: bytes, *, timeout: float | None = None) -> object:
        """Replicates ``data`` and returns the state machine's result for it.

        ``timeout`` (seconds) bounds the wait, to within a tick, without a cancel scope per
        call (the ticker checks the oldest deadline): a server proposing on every request saves
        that scope's cost.

        Raises:
            ProposalDroppedError: this node is not the leader (``.leader`` hints who is), or a
                transfer is under way; nothing was written.
            EntryLostError: the entry was appended but overwritten by a new leader: not
                applied.
            RaftTimeoutError: ``timeout`` passed first; the outcome is unknown.
        If the caller is cancelled while waiting, the outcome is unknown: the entry may still
        be applied.
        """
        self._check_open()
        _check_proposal_size(data)
        term, index = self._core.propose(data)
        return await self._wait_entry(term, index, timeout)

    def propose_nowait(self, data: bytes,
                       on_done: Callable[[object, BaseException | None], None]) -> None:
        """Like :meth:`propose`, without a waiting task: ``on_done(result, error)`` is called
        exactly once, from the node's loop, when the outcome is known (``error`` is None on
        success). A server answering many requests per connection uses this.

        Raises ProposalDroppedError at once (and does not call ``on_done``) if this node
        cannot take the proposal.
        """
        self._check_open()
        _check_proposal_size(data)
        term, index = self._core.propose(data)
        self._register_proposal(term, index, _Callback(on_done))
        self._send_or_kick()

    async def propose_conf_change(self, cc: ConfChange) -> None:
        """One membership change (see :mod:`raft.core`); returns once it is applied here."""
        self._check_open()
        term, index = self._core.propose_conf_change(cc)
        await self._wait_entry(term, index)

    def _register_proposal(self, term: int, index: int, waiter) -> None:
        old = self._proposals.get(index)
        if old is not None:
            self._displaced.setdefault(index, []).append(old)
        self._proposals[index] = (term, waiter)
        self._counts["proposals"] += 1

    def _unregister(self, index: int, waiter) -> None:
        if self._proposals.get(index, (None, None))[1] is waiter:
            del self._proposals[index]
        elif index in self._displaced:
            rest = [p for p in self._displaced[index] if p[1] is not waiter]
            if rest:
                self._displaced[index] = rest
            else:
                del self._displaced[index]

    async def _wait_entry(self, term: int, index: int, timeout: float | None = None):
        waiter = _Waiter()
        self._register_proposal(term, index, waiter)
        if timeout is not None:
            heapq.heappush(self._deadlines, (trio.current_time() + timeout,
                                             next(self._waiter_ids), index, waiter))
        self._kick()
        try:
            return await waiter.wait()
        finally:
            self._unregister(index, waiter)

    def transfer_leader(self, to: int) -> None:
        self._check_open()
        self._core.transfer_leader(to)
        self._kick()

    async def read_index(self) -> int:
        """A linearizable read point (§6.4): an index such that every write acknowledged
        before this call is at or below it. Raises ProposalDroppedError with no leader."""
        self._check_open()
        self._check_tick_gap()
        ctx = self._read_prefix + next(self._read_ids).to_bytes(8, "big")
        waiter = _Waiter()
        self._reads[ctx] = (waiter, self._core.term, self._core.leader)
        self._counts["reads"] += 1
        try:
            self._core.read_index(ctx)
            self._kick()
            return await waiter.wait()
        finally:
            self._reads.pop(ctx, None)
            if not waiter.event.is_set():
                # The caller gave up (a timeout, a cancellation): the core would keep the
                # read queued until its term ends, and a cut-off leader's term may not.
                self._core.cancel_read(ctx)

    async def linearizable_read(self, *, timeout: float | None = None) -> int:
        """Waits until the state machine reflects every write acknowledged before the call;
        returns the read index. Read the state machine right after it returns.

        A leader holding a lease (``Config.lease_reads``) takes its commit index at once,
        without a round through the ready loop, and waits only for its own apply to reach
        it; it returns without a checkpoint (nor the cost of a cancel scope) if that index
        is applied already.

        Raises:
            ProposalDroppedError: no leader to ask.
            RaftTimeoutError: ``timeout`` (seconds) passed first -- the round to the other
                voters, or the wait for this node's own apply, which can lag its commit
                index for as long as its disk takes (the leader applies only what it made
                durable).
        """
        self._check_open()
        self._check_tick_gap()
        index = self._core.lease_read_index()
        if index is not None:
            self._counts["reads"] += 1
            if self._core.applied >= index:
                return index
        with trio.CancelScope(deadline=math.inf if timeout is None
                              else trio.current_time() + timeout) as scope:
            if index is None:
                index = await self.read_index()
            await self.wait_applied(index)
            return index
        assert scope.cancelled_caught
        raise RaftTimeoutError(f"raft node {self.id} (group {self.group}) could not confirm a "
                               f"read point within {timeout} s")

    async def wait_applied(self, index: int) -> None:
        """Returns once entries up to ``index`` are applied to the state machine here."""
        self._check_open()
        if self._core.applied >= index:
            return
        waiter = _Waiter()
        waiter_id = self._applied_waiters.push(index, waiter)
        try:
            await waiter.wait()
        finally:
            if not waiter.event.is_set():
                # The caller gave up (a read's timeout): an apply that is stuck, or far
                # behind, must not keep one entry per abandoned wait until it catches up.
                self._applied_waiters.leave(waiter_id)

    def statistics(self) -> RaftNodeStats:
        c = self._core
        return RaftNodeStats(
            group=self.group, id=self.id, role=c.role.value, term=c.term, leader=c.leader,
            commit=c.commit, applied=c.applied, last_index=c.last_index,
            snapshot_index=self._snapshot_index,
            proposals_pending=len(self._proposals) + sum(map(len, self._displaced.values())),
            messages_malformed=c.malformed_messages,
            storage_busy=(self._worker._busy or self._syncing
                          or self._async_inflight is not None),
            failure=None if (self._failed or self._step_error) is None
            else repr(self._failed or self._step_error)[:300],
            **self._counts,
        )

    def _check_open(self) -> None:
        # A step (or tick) that raised left the core as the exception found it, possibly half
        # changed: the node is stopping, and nothing may change that core any more.
        failed = self._failed if self._failed is not None else self._step_error
        if failed is not None:
            raise RaftError(f"raft node {self.id} stopped: {failed!r}") from failed
        if self._closed:
            raise RaftError(f"raft node {self.id} is closed")

    def _kick(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------ tasks

    def _on_tick(self) -> None:
        """Called by the process's ticker (see :class:`_Ticker`) once per tick interval."""
        if self._step_error is not None:
            return
        if self._deadlines:
            self._expire_proposals()
        try:
            self._tick_grid = self._check_tick_gap()
            self._core.tick()
            if self._built_at is not None:
                self._release_built()
        except BaseException as exc:  # surfaces in the ready loop, which stops the node
            self._step_error = exc
        self._send_or_kick()

    def _grid_now(self) -> int:
        return math.floor(trio.current_time() / self._tick_interval + 1e-6)

    def _check_tick_gap(self) -> int:
        """Ends the core's lease if ticks were lost: the ticker skips the grid points that
        passed while the loop stood still (a paused process, a long fsync on the loop's
        thread), so the leader's ticks fell behind real time while the other voters' did
        not -- they may have elected another leader already. Called before the core answers
        a read or steps messages, and on each tick; returns the current grid point."""
        grid = self._grid_now()
        if self._tick_grid is not None and grid - self._tick_grid > 1:
            self._core.lapse_lease()
        return grid

    def _send_or_kick(self) -> None:
        """After a tick, a step or a proposal: send the messages if they are all the core has
        to do (a heartbeat, its answer); else handle the Ready from this task if the ready loop
        is idle and nothing in it needs waiting (see :meth:`_ready_inline`); else wake the
        ready loop."""
        if self._core.snapshot_wanted and self._build_due():
            self._kick()  # the ready loop starts the build
        if self._step_error is None:
            msgs = self._core.take_messages()
            if msgs is not None:
                if msgs:
                    try:
                        self._send(msgs)
                    except BaseException as exc:
                        # Raised in the ticker or the transport's receiving task, which serve
                        # other nodes too: it stops this node, through the ready loop.
                        self._step_error = exc
                        self._kick()
                return
            if self._inline and not self._busy and self._failed is None:
                self._ready_inline()
                return
        self._kick()

    def _ready_inline(self) -> None:
        """Handles the core's Readies from the calling task — the transport's receiver, the
        ticker or a proposer — while each needs no waiting: with the fsync on the loop's
        thread, the usual Ready (entries that follow the log, messages, commits to apply) does
        not, and handling it here saves the switch to the ready loop's task, one scheduler
        round per Ready. A Ready that must wait (a hard state, a snapshot, a truncation or a
        new segment, all persisted through the worker) goes to the ready loop untouched, as
        does a snapshot that has become due. An error stops the node, as in the ready loop."""
        core = self._core
        self._busy = True
        try:
            while core.has_ready():
                if not self._handle_ready_now(core.ready()):
                    break
        except BaseException as exc:  # surfaces in the ready loop, which stops the node
            self._step_error = exc
        if self._handoff is not None or self._step_error is not None or self._snapshot_due():
            self._kick()  # the ready loop clears _busy once it has taken over
        else:
            self._busy = False

    def _handle_ready_now(self, rd: Ready) -> bool:
        """:meth:`_handle_ready` for a Ready that needs no waiting; else False, leaving the
        Ready to the ready loop (``_handoff``). The usual Ready's messages leave before its
        entries are written — a leader's appends reach the followers a write system call
        sooner — so a Ready whose entries turn out to need the general path (a new segment)
        is left with its messages sent (``_handoff_sent``)."""
        hs = self._hard_state_to_store(rd)
        persist = (rd.snapshot is not None or bool(rd.snapshot_chunks) or bool(rd.entries)
                   or hs is not None)
        asynchronous = persist and self._async_possible(rd, hs)
        if persist and not asynchronous and (not self._fast_path_possible(rd, hs)
                                             or not self._async_idle.is_set()):
            self._handoff, self._handoff_sent = rd, False
            return False
        if rd.messages:
            self._send(rd.messages)
        if persist and not self._storage.append_nowait(rd.entries):
            self._handoff, self._handoff_sent = rd, True
            return False
        self._counts["readies"] += 1
        self._counts["readies_inline"] += 1
        if asynchronous:
            self._appended_async(rd)
        elif persist:
            self._sync_appended(rd)
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        self._release_reads(rd)
        if rd.committed_entries:
            self._apply_now(rd.committed_entries)
        self._core.advance(rd, entries_durable=not asynchronous)
        self._wake_applied()
        return True

    async def _ready_loop(self) -> None:
        core = self._core
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._step_error is not None:
                raise self._step_error
            self._busy = True
            try:
                rd, self._handoff = self._handoff, None
                if rd is not None:
                    await self._handle_ready(rd, messages_sent=self._handoff_sent)
                while True:
                    if self._step_error is not None:
                        # A step (or tick) raised while this loop waited (for the disk, or
                        # between Readies): the core is as the exception left it, possibly
                        # half changed. Nothing more of it may be persisted or sent.
                        raise self._step_error
                    if self._snapshot_due():
                        await self._take_snapshot()
                    if not core.has_ready():
                        break
                    if not await self._handle_ready(core.ready()) and core.has_ready():
                        # Let the receivers run between Readies. Only if there is another:
                        # the wait for the next kick lets them run too, and a checkpoint
                        # here would cost each proposal an extra pass of the scheduler.
                        await trio.lowlevel.checkpoint()
            finally:
                self._busy = False

    def _snapshot_due(self) -> bool:
        """A follower needs a full snapshot built, or ``snapshot_every`` entries were applied
        since the last compaction. A compaction waits while a follower receives the
        snapshot held (or one is being built): it would replace that snapshot and restart
        the transfer, which may then never finish while the log grows faster than the
        snapshot travels. The wait is bounded (four times ``snapshot_every``): a follower
        that stopped answering mid-transfer must not keep the log from being compacted."""
        core = self._core
        if core.applied < core.first_index - 1:
            # A snapshot received (restored in the core: the log starts after it) awaits the
            # Ready that installs it: the state machine is still at the applied index, behind
            # the log. Nothing can be taken from it or compacted until that Ready is handled
            # (core.compact would pair its state with the received snapshot's metadata).
            return False
        if core.snapshot_wanted and self._build_due():
            return True
        if self._synced is not None:
            return True  # a checkpoint is durable: compact behind it
        if not self._snapshot_every or self._checkpointing:
            return False
        return core.applied - self._snapshot_index >= self._snapshot_every \
            and not self._compaction_held()

    def _compaction_held(self) -> bool:
        behind = self._core.applied - self._snapshot_index
        return (self._build is not None or self._core.sending_snapshot()) \
            and behind < 4 * self._snapshot_every

    def _build_due(self) -> bool:
        return (self._durable_sm and self._build is None and self._nursery is not None
                and trio.current_time() >= self._build_retry_at)

    def _hard_state_to_store(self, rd: Ready) -> HardState | None:
        """The hard state to store with ``rd``: the Ready's if its term or vote changed (a
        commit index alone is not worth a write, see the module docstring), and the latest one
        when ``rd`` appends or applies a membership change.

        Changes take effect when applied, and a restarted replica applies only what its stored
        commit index covers. A leader proposes a change only once the one before is applied,
        so whoever appends a change knows the one before is committed (an append carries the
        leader's commit index): storing that index with the change keeps a restarted replica
        at most one change behind its log (a crash between that save's entries and its hard
        state is covered by the core: see ``RaftCore._commit_earlier_conf_changes``). Without
        it, a replica restarted with two changes in its log would campaign under the
        configuration before both, whose majorities need not overlap the cluster's
        (etcd-io/etcd#7625: apply-time changes need this). Stored
        with an applied change, it brings a restarted replica back in the configuration it
        had: a group shrunk to one voter could otherwise never elect again once restarted."""
        if rd.hard_state is not None:
            self._ready_hs = rd.hard_state
        if self._votes_without_persisting:
            return None
        hs, stored = self._ready_hs, self._stored_hs
        if hs.term != stored.term or hs.vote != stored.vote or (
                hs.commit > stored.commit and any(
                    e.type is EntryType.CONF_CHANGE
                    for e in itertools.chain(rd.entries, rd.committed_entries))):
            return hs
        return None

    def _release_reads(self, rd: Ready) -> None:
        for rs in rd.read_states:
            pending = self._reads.get(rs.context)
            if pending is not None:
                pending[0].set(rs.index)
        if self._reads and (rd.soft_state is not None or rd.hard_state is not None):
            self._fail_stale_reads()

    def _fail_stale_reads(self) -> None:
        """Fails the reads asked in another term or of another leader: the core dropped them
        (``RaftCore.read_index``: "or never, if leadership is lost"), so nothing else would."""
        core = self._core
        for ctx, (waiter, term, leader) in list(self._reads.items()):
            if not waiter.event.is_set() and (term, leader) != (core.term, core.leader):
                del self._reads[ctx]
                waiter.set(error=ProposalDroppedError(
                    f"node {self.id}: leadership changed while the read was pending; retry",
                    core.leader))

    async def _handle_ready(self, rd: Ready, *, messages_sent: bool = False) -> bool:
        """Handles one Ready (its ``messages`` already sent if ``messages_sent``); True if that
        waited for the disk (and so let other tasks run)."""
        core = self._core
        waited = False
        self._counts["readies"] += 1
        if rd.messages and not messages_sent:
            self._send(rd.messages)
        hs = self._hard_state_to_store(rd)
        if self._ack_before_fsync and rd.persisted_messages:
            self._send(rd.persisted_messages)  # unsafe: acknowledged before it is durable
        asynchronous = False
        if rd.snapshot is not None or rd.snapshot_chunks or rd.entries or hs is not None:
            asynchronous = (self._async_possible(rd, hs)
                            and self._storage.append_nowait(rd.entries))
            if asynchronous:
                self._appended_async(rd)
            elif not self._async_idle.is_set():
                await self._async_synced()
                waited = True
            handled = asynchronous or self._persist_in_loop(rd, hs)
            if not handled:
                if not await self._persist_fast(rd, hs):
                    await self._worker.run(self._persist, rd, hs)
                waited = True
        if rd.persisted_messages and not self._ack_before_fsync:
            self._send(rd.persisted_messages)
        sendable = None
        if rd.snapshot is not None:
            if self._restore_in_thread:
                sendable = await self._worker.run(self._install_snapshot)
                waited = True
            else:
                sendable = self._install_snapshot()
            self._snapshot_index = rd.snapshot.meta.index
            self._counts["snapshots_installed"] += 1
        self._release_reads(rd)
        if rd.committed_entries:
            await self._apply(rd.committed_entries)
        core.advance(rd, entries_durable=not asynchronous)
        if sendable is not None:
            core.offer_snapshot(Snapshot(rd.snapshot.meta, sendable))
        self._wake_applied()
        return waited

    def _install_snapshot(self) -> bytes | None:
        """Restores the state machine from the snapshot the storage just installed, read from
        its file: mapped, for a state machine that restores from a buffer, so that the
        snapshot is never on the heap whole. Returns its data for the core to send on should
        this node lead (a state machine that cannot build snapshots), else None: the core holds
        a local marker for it (a durable state machine's storage holds the state now, and a
        full snapshot is built when a follower needs one)."""
        with self._storage.mapped_snapshot() as view:
            data = view if self._restore_from_buffer else bytes(view)
            self._sm.restore(data)
            if self._durable_sm:
                return None
            return data if isinstance(data, bytes) else bytes(view)

    def _fast_path_possible(self, rd: Ready, hs: HardState | None) -> bool:
        """The Ready persists entries alone (no snapshot, no hard state), so its entries may be
        appended from the loop if they follow the log (see :meth:`_fast_path`)."""
        return (self._fast_persist and rd.snapshot is None and not rd.snapshot_chunks
                and hs is None and rd.must_sync and not self._ack_before_fsync)

    def _fast_path(self, rd: Ready, hs: HardState | None) -> bool:
        """Appends the common Ready's entries — entries that follow the log, nothing else — from
        the loop (one write to the page cache); False, having written nothing, when this Ready
        needs the general path (a snapshot, a hard state, a truncation or a new segment: all of
        them sync on their own)."""
        return self._fast_path_possible(rd, hs) and self._storage.append_nowait(rd.entries)

    def _persist_in_loop(self, rd: Ready, hs: HardState | None) -> bool:
        """The common Ready's persist with ``sync_in_loop``: appended and fdatasynced by the
        loop's own thread, which blocks for the fsync (the GIL released). False when the
        Ready needs another path."""
        if self._syncer is not None or not self._fast_path(rd, hs):
            return False
        self._sync_appended(rd)
        return True

    def _sync_appended(self, rd: Ready) -> None:
        """fdatasyncs the entries :meth:`_fast_path` appended, from the loop's thread."""
        storage = self._storage
        target = storage.sync_begin()
        if target is not None:
            fd, upto = target
            try:
                os.fdatasync(fd)
                result = 0
            except OSError as exc:
                result = exc.errno or errno.EIO
            storage.sync_end(upto, result)
            self._counts["fsyncs"] += 1
        self._counts["entries_persisted"] += len(rd.entries)

    async def _persist_fast(self, rd: Ready, hs: HardState | None) -> bool:
        """The common Ready's persist without ``sync_in_loop`` and without the worker thread:
        appended from the loop, fdatasynced by the native syncer thread while the loop waits on
        its eventfd. The worker thread runs Python around its fsync, so it takes the GIL from
        the loop to start and to finish; the syncer never does. False when this Ready needs the
        general path."""
        syncer = self._syncer
        if syncer is None or not self._fast_path(rd, hs):
            return False
        storage = self._storage
        target = storage.sync_begin()
        if target is not None:
            fd, upto = target
            syncer.submit(fd)
            self._syncing = True
            # Not cancellable: the storage must not change under the fsync in flight.
            try:
                with trio.CancelScope(shield=True):
                    while True:
                        await trio.lowlevel.wait_readable(syncer.done_fd)
                        result = syncer.collect()
                        if result is not None:
                            break
            finally:
                self._syncing = False
            storage.sync_end(upto, result)
            self._counts["fsyncs"] += 1
        self._counts["entries_persisted"] += len(rd.entries)
        return True

    def _async_possible(self, rd: Ready, hs: HardState | None) -> bool:
        """A leader's usual Ready — entries that may follow the log, no hard state, nothing
        that waits for their fsync, no membership change — whose entries may be made durable
        while the loop goes on (see :meth:`_appended_async`)."""
        return (self._async_syncer is not None and not rd.persisted_messages
                and self._core.role is StateRole.LEADER and self._fast_path_possible(rd, hs)
                and not any(e.type is EntryType.CONF_CHANGE
                            for e in itertools.chain(rd.entries, rd.committed_entries)))

    def _appended_async(self, rd: Ready) -> None:
        """The leader's entries of ``rd``, appended from the loop, become durable by the
        native syncer thread's fdatasync while the loop goes on (etcd raft's asynchronous
        storage writes): the core counts them towards a commit, and applies them, only once
        that fsync returns (:meth:`_collect_async_syncs`). Meanwhile the loop reads the
        followers' acknowledgements and the clients' requests, and the next Readies' entries
        are sent and appended behind these, for the next fsync. Followers keep the usual
        path: an acknowledgement must wait for its fsync anyway."""
        last = rd.entries[-1]
        earlier = self._async_unsynced.count if self._async_unsynced is not None else 0
        count = earlier + len(rd.entries)
        self._async_unsynced = _Unsynced(last.index, last.term, count)
        self._async_idle = trio.Event() if self._async_idle.is_set() else self._async_idle
        if self._async_inflight is None:
            self._start_async_sync()

    def _start_async_sync(self) -> None:
        """Starts the fsync of every entry appended asynchronously so far."""
        upto = self._async_unsynced
        assert upto is not None and self._async_syncer is not None
        self._async_unsynced = None
        target = self._storage.sync_begin()
        # Never None: these entries were appended after the previous fsync began, and nothing
        # else syncs the log while asynchronous appends wait (see _async_synced).
        assert target is not None, "asynchronously appended entries found durable already"
        fd, position = target
        self._async_syncer.submit(fd)
        self._async_inflight = (position, upto)
        self._counts["fsyncs"] += 1

    def _async_persisted(self, upto: _Unsynced) -> None:
        self._core.persisted_to(upto.index, upto.term)
        self._counts["entries_persisted"] += upto.count

    async def _async_synced(self) -> None:
        """Waits until no asynchronous fsync runs or waits to run: nothing but a plain append
        may touch the log while one does (a truncation, a new segment, a snapshot)."""
        await self._async_idle.wait()
        if self._step_error is not None:
            raise self._step_error

    async def _collect_async_syncs(self) -> None:
        """Runs with the node: ends each asynchronous fsync (see :meth:`_appended_async`),
        tells the core, starts the next one if more entries were appended meanwhile, and
        handles the Readies that made (the entries' commit, their applying). A failed fsync
        stops the node, as a failed write does anywhere else."""
        syncer = self._async_syncer
        assert syncer is not None
        while True:
            await trio.lowlevel.wait_readable(syncer.done_fd)
            result = syncer.collect()
            if result is None or self._async_inflight is None:
                continue
            (position, upto), self._async_inflight = self._async_inflight, None
            if self._step_error is not None:  # the node stops: its core is as the error left it
                self._async_idle.set()
                return
            try:
                self._storage.sync_end(position, result)
                self._async_persisted(upto)
                if self._async_unsynced is not None:
                    self._start_async_sync()
                else:
                    self._async_idle.set()
            except BaseException as exc:  # the ready loop stops the node
                self._step_error = exc
                self._async_idle.set()  # nothing will sync any more: let waiters see it
                self._kick()
                return
            self._send_or_kick()

    def _persist(self, rd: Ready, hs: HardState | None) -> None:
        sync = rd.must_sync and not self._ack_before_fsync
        self._storage.save(snapshot=rd.snapshot, entries=rd.entries, hard_state=hs, sync=sync,
                           snapshot_chunks=rd.snapshot_chunks)
        if hs is not None:
            self._stored_hs = hs
        if sync:
            self._counts["fsyncs"] += 1
        self._counts["entries_persisted"] += len(rd.entries)

    async def _apply(self, entries: Sequence[Entry]) -> None:
        if not self._apply_in_thread:
            self._apply_now(entries)
            return
        normal = [e for e in entries if e.type is EntryType.NORMAL and e.data]
        results = await self._worker.run(self._sm.apply, normal) if normal else []
        self._applied(entries, normal, results)

    def _apply_now(self, entries: Sequence[Entry]) -> None:
        normal = [e for e in entries if e.type is EntryType.NORMAL and e.data]
        self._applied(entries, normal, self._sm.apply(normal) if normal else [])

    def _applied(self, entries: Sequence[Entry], normal: list[Entry],
                 results: Sequence[object]) -> None:
        """Resolves the proposals of applied ``entries`` (``results``: the state machine's,
        one per entry of ``normal``)."""
        if len(results) != len(normal):
            raise RaftError(f"state machine returned {len(results)} results for "
                            f"{len(normal)} entries")
        self._counts["entries_applied"] += len(normal)
        if not self._proposals and not self._displaced:
            return  # a follower's usual case
        by_index = {e.index: r for e, r in zip(normal, results)}
        for e in entries:
            pending = self._proposals.pop(e.index, None)
            if pending is not None:
                self._resolve(e, by_index, *pending)
            if self._displaced:
                for term, waiter in self._displaced.pop(e.index, ()):
                    self._resolve(e, by_index, term, waiter)

    def _resolve(self, e: Entry, by_index: dict, term: int, waiter) -> None:
        if term == e.term:
            waiter.set(by_index.get(e.index))
        else:
            waiter.set(error=EntryLostError(
                f"entry {e.index} of term {term} was replaced by one of term {e.term}",
                self._core.leader))

    def _expire_proposals(self) -> None:
        """Fails the proposals whose ``timeout`` has passed; drops the settled ones at the
        front (deadlines are nearly in proposal order, so few wait to be dropped)."""
        deadlines = self._deadlines
        now = trio.current_time()
        while deadlines:
            deadline, _, index, waiter = deadlines[0]
            if waiter.event.is_set():
                heapq.heappop(deadlines)
                continue
            if deadline > now:
                return
            heapq.heappop(deadlines)
            # Registered or displaced (see _displaced): past its deadline, never left waiting.
            self._unregister(index, waiter)
            waiter.set(error=RaftTimeoutError(
                f"raft node {self.id} (group {self.group}): entry {index} was not applied "
                f"within the proposal's timeout; its outcome is unknown"))

    def _wake_applied(self) -> None:
        applied = self._core.applied
        for waiter in self._applied_waiters.pop_up_to(applied):
            waiter.set()
        # Proposals below the applied index that were never applied here (their entry was
        # replaced while this node was installing a snapshot) can no longer resolve.
        covered = []
        if self._proposals and min(self._proposals) <= applied:
            covered += [(i, self._proposals.pop(i)) for i in list(self._proposals) if i <= applied]
        if self._displaced and min(self._displaced) <= applied:
            covered += [(i, p) for i in list(self._displaced) if i <= applied
                        for p in self._displaced.pop(i)]
        for index, (_, waiter) in covered:
            waiter.set(error=OutcomeUnknownError(
                f"entry {index} is covered by an installed snapshot: whether it was applied "
                f"is unknown to this node"))
        if self._proposals or self._displaced:
            self._fail_superseded(applied)

    def _fail_superseded(self, applied: int) -> None:
        """Fails the proposals of a term below that of the entry applied at ``applied``: terms
        never fall along a log, so none of them can follow it (a new leader's log may not
        reach their indexes for long, in an idle group). A node never proposes in a term
        below one it has applied, so this is checked once per applied term."""
        term = self._core.term_at(applied)
        if term is None or term <= self._applied_term:
            return
        self._applied_term = term
        lost = [(i, self._proposals.pop(i))
                for i in [i for i, (t, _) in self._proposals.items() if t < term]]
        for i in list(self._displaced):
            pending = self._displaced.pop(i)
            lost += [(i, p) for p in pending if p[0] < term]
            rest = [p for p in pending if p[0] >= term]
            if rest:
                self._displaced[i] = rest
        for index, (old, waiter) in lost:
            waiter.set(error=EntryLostError(
                f"entry {index} of term {old} will never be applied: entry {applied} before "
                f"it is of the later term {term}", self._core.leader))

    async def _take_snapshot(self) -> None:
        core = self._core
        if core.snapshot_wanted and self._build_due():
            self._start_build()
            return
        if self._synced is not None:
            (meta, data), self._synced = self._synced, None
            if self._compaction_held():  # a follower began receiving the snapshot held
                return
            meta = core.compact_at(meta, data, keep=self._snapshot_keep)
            if meta is None:  # the log starts past it: a snapshot was installed meanwhile
                return
            local = True
        elif self._durable_sm and self._nursery is not None:
            # The state is in the state machine's own storage: the log is compacted behind a
            # marker once the storage has synced (in a thread, while the log goes on).
            meta = core.snapshot_meta_at_applied()
            data = self._sm.checkpoint()
            self._checkpointing = True
            self._nursery.start_soon(self._run_checkpoint, meta, data)
            return
        else:
            data, local = self._sm.snapshot(), False
            meta = core.compact(data, keep=self._snapshot_keep, local=local)
        snap = Snapshot(meta, data, local)
        await self._async_synced()
        await self._worker.run(self._storage.save_snapshot, snap, self._snapshot_keep)
        self._snapshot_index = meta.index
        self._counts["snapshots_taken"] += 1

    async def _run_checkpoint(self, meta: SnapshotMeta, data: bytes) -> None:
        """Syncs the state machine's storage in a thread (a full flush of what was written
        since the last one: a fraction of a second on a busy store, which the loop does not
        wait for), then leaves the checkpoint to the ready loop to compact behind. A node
        closing waits for the sync: the storage may close only after it."""
        try:
            await trio.to_thread.run_sync(self._sm.sync)
        except Exception as exc:  # the node stops, as when any write to its storage fails
            if not self._closed and self._step_error is None:
                self._step_error = exc
                self._kick()
            return
        finally:
            self._checkpointing = False
        if not self._closed and self._step_error is None:
            self._synced = (meta, data)
            self._kick()

    def _start_build(self) -> None:
        """Begins a full snapshot of the state as applied now, for the followers that need
        one. It is built in a thread of its own, started here, before the loop goes on: the
        storage worker serves every group of the node, a build takes as long as writing out
        the whole state, and the view it holds must always have a thread to end it (a store
        that must grow its map waits for open views, or interrupts them)."""
        core = self._core
        try:
            meta = core.snapshot_meta_at_applied()
            build = self._sm.begin_snapshot()
        except Exception as exc:
            self._build_failed(exc)
            return
        if build.index > meta.index:  # below is fine: leader no-ops are not applied to it
            with contextlib.suppress(Exception):
                build.close()
            self._build_failed(RaftError(
                f"the state machine's view is at index {build.index}, beyond the core's "
                f"applied index {meta.index}"))
            return
        job = _BuildJob(build, trio.lowlevel.current_trio_token())
        self._build = build
        assert self._nursery is not None
        self._nursery.start_soon(self._run_build, job, meta)
        try:
            threading.Thread(target=job.run, name=f"raft-{self.group}-{self.id}-snapshot",
                             daemon=True).start()
        except Exception as exc:  # no thread to be had: a failed build, tried again later
            job.error = exc
            with contextlib.suppress(Exception):
                build.close()
            job.done.set()

    async def _run_build(self, job: _BuildJob, meta: SnapshotMeta) -> None:
        try:
            await job.done.wait()
        finally:
            if not job.done.is_set():
                # The node is closing or failed: stop the build, and wait for its thread to
                # release the view (the state machine's storage may close only after).
                job.build.cancel()
                with trio.CancelScope(shield=True):
                    await job.done.wait()
            self._build = None
        if job.error is not None:
            if not self._closed:
                self._build_failed(job.error)
            return
        if self._closed or self._step_error is not None:
            return
        data = job.data
        self._core.offer_snapshot(Snapshot(meta, data))
        self._built_data = data
        self._built_at = trio.current_time()
        self._counts["snapshots_built"] += 1
        log.info("group %d node %d: built a snapshot at index %d (%d bytes) for followers",
                 self.group, self.id, meta.index, len(data))

    def _release_built(self) -> None:
        """Called on ticks while a snapshot built for followers is held: once no follower
        has received it for SNAPSHOT_RELEASE_S, keeps a local marker instead (the built
        snapshot is a file the size of the state; an idle group would hold it for good)."""
        core = self._core
        snap = core.snapshot
        if snap is None or snap.local or snap.data is not self._built_data:
            # Replaced (by a compaction's marker, an installed snapshot) or never taken: the
            # built one is no longer sent, and its file would hold its disk space until the
            # next build or the node's close.
            self._built_at = None
            self._close_built()
            return
        now = trio.current_time()
        if core.sending_snapshot() or core.snapshot_wanted:
            self._built_at = now
        elif now - self._built_at >= SNAPSHOT_RELEASE_S:
            # The marker held in memory is never sent nor stored (a compaction stores the one
            # its own checkpoint returns): no need to sync the store from the ticker for it.
            core.hold_local_snapshot(snap.meta, b"")
            self._built_at = None
            self._close_built()

    def _build_failed(self, exc: BaseException) -> None:
        log.warning("group %d node %d: cannot build a snapshot for followers (trying again in "
                    "%.0f s): %s", self.group, self.id, SNAPSHOT_BUILD_RETRY_S, exc)
        self._build_retry_at = trio.current_time() + SNAPSHOT_BUILD_RETRY_S

    def _close_built(self) -> None:
        """Closes the snapshot built for followers, if one is held (a mapping of an unnamed
        file the size of the state), once it is no longer sent and when the node closes: the
        node sits in reference cycles, and the file's descriptor and disk space would otherwise
        stay until the garbage collector runs. One still exported (a slice a transport has yet
        to send) is left to it."""
        data, self._built_data = self._built_data, None
        close = getattr(data, "close", None)
        if close is not None:
            with contextlib.suppress(BufferError):
                close()

    def _cancel_build(self) -> None:
        if self._build is not None:
            self._build.cancel()

    def _send(self, msgs) -> None:
        self._counts["messages_sent"] += len(msgs)
        try:
            self._transport.send(self.group, msgs)
        except trio.ClosedResourceError:
            # The process is shutting down and its transport closed first: to the peers this
            # is the network losing the messages, which Raft tolerates.
            pass

    def _on_messages(self, msgs) -> None:
        """The transport's handler: step a received batch from the receiving task itself."""
        if self._step_error is not None:
            return
        self._check_tick_gap()
        core = self._core
        self._counts["messages_received"] += len(msgs)
        try:
            for m in msgs:
                core.step(m)
        except BaseException as exc:  # surfaces in the ready loop, which stops the node
            self._step_error = exc
        if core.malformed_messages and not self._malformed_logged:
            # Once per node: a peer that sends one may well send a stream of them.
            self._malformed_logged = True
            log.warning("raft node %d (group %d) dropped a malformed message: %s (the count "
                        "is in its statistics)", self.id, self.group, core.last_malformed)
        self._send_or_kick()

    async def _run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        transport = self._transport
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._tick_grid = self._grid_now()
                transport.set_handler(self.group, self._on_messages)
                _Ticker.register(self)
                nursery.start_soon(self._ready_loop)
                if self._async_syncer is not None:
                    nursery.start_soon(self._collect_async_syncs)
                task_status.started()
        except BaseException as exc:
            self._cancel_build()
            self._failed = exc
            self._fail_waiters(exc)
            raise
        finally:
            _Ticker.unregister(self)
            with contextlib.suppress(trio.ClosedResourceError):
                transport.set_handler(self.group, None)

    def _fail_waiters(self, exc: BaseException) -> None:
        err = RaftError(f"raft node {self.id} stopped")
        err.__cause__ = exc
        for _, waiter in self._proposals.values():
            waiter.set(error=err)
        for displaced in self._displaced.values():
            for _, waiter in displaced:
                waiter.set(error=err)
        self._displaced.clear()
        for waiter, _, _ in self._reads.values():
            waiter.set(error=err)
        for waiter in self._applied_waiters.drain():
            waiter.set(error=err)
        self._proposals.clear()
        self._reads.clear()
        self._deadlines.clear()


@asynccontextmanager
async def open_raft_node(
    group: int,
    config: Config,
    storage,
    transport,
    state_machine: StateMachine,
    *,
    bootstrap: ConfState = ConfState(),
    seed: int | None = None,
    tick_interval: float = 0.05,
    snapshot_every: int = 10_000,
    snapshot_keep: int = 1_000,
    apply_in_thread: bool = False,
    sync_in_loop: bool = True,
    async_append: bool = False,
    unsafe: frozenset[str] = frozenset(),
) -> AsyncIterator[RaftNode]:
    """Runs a replica until the block exits.

    Args:
        group: the group id its messages carry on the transport.
        config: the core's settings (``config.id`` is this node).
        storage: a :class:`raft.storage.RaftStorage` (or any object with its methods), already
            open; the caller closes it.
        transport: a :class:`raft.transport.Transport` shared by every group of this node.
        state_machine: what the log is applied to.
        bootstrap: the membership of a brand-new group (ignored once storage has a snapshot).
        seed: seeds election-timeout jitter (None: from the OS).
        tick_interval: seconds per core tick (election after 10–20 ticks by default).
        snapshot_every: take a snapshot and compact after this many applied entries (0: never).
        snapshot_keep: log entries kept behind a snapshot, for followers slightly behind.
        apply_in_thread: run ``state_machine.apply`` in a worker thread (for blocking ones).
        sync_in_loop: fdatasync the usual Ready's entries from the loop's thread, blocking the
            process for the fsync (the default: the fewest wake-ups), or, when False, from a
            native thread while the loop serves other tasks (see the module docstring).
        async_append: with ``sync_in_loop``, a leader's appends are fsynced by a native
            thread while the loop goes on, and count only once that fsync returns (see
            :meth:`RaftNode._appended_async`); followers still fsync from the loop.
        unsafe: names from :data:`UNSAFE_MODES` that break durability on purpose, for showing
            that fault tests notice: ``ack_before_fsync`` (entries are never fsynced and
            acknowledged before they are written), ``votes_without_persisting`` (term and vote
            are never stored, so a restarted node can vote twice in one term). Never in
            production: a node refuses them unless its planted-bug switch allows it.
    """
    node = RaftNode(group, config, storage, transport, state_machine, bootstrap=bootstrap,
                    seed=seed, tick_interval=tick_interval, snapshot_every=snapshot_every,
                    snapshot_keep=snapshot_keep, apply_in_thread=apply_in_thread,
                    sync_in_loop=sync_in_loop, async_append=async_append,
                    unsafe=frozenset(unsafe))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node._run)
            try:
                yield node
            finally:
                node._closed = True
                node._cancel_build()
                node._fail_waiters(RaftError("node closed"))
                nursery.cancel_scope.cancel()
    finally:
        node._worker.close()
        for syncer in (node._syncer, node._async_syncer):
            if syncer is not None:
                syncer.close()  # waits for an fsync in flight: the caller closes the storage
        node._close_built()
