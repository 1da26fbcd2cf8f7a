"""The load generator's core: closed-loop and open-loop schedules, measured without
coordinated omission.

One call of :func:`run_load` drives one *driver* (an object whose ``execute(op)`` runs one
operation against a system; see ``bench/drivers.py``) with the operations of an
:class:`~bench.workloads.OpGenerator`, in one trio loop, and returns a :class:`Tally`. The load
processes of ``bench/loadproc.py`` each run one; the parent merges their tallies.

Schedules
---------
- **closed** (``clients`` workers): each worker runs an operation, waits for it, and runs the
  next at once. Latency is measured from the operation's start. An operation counts when it
  *completes* inside the measured window ``[warmup, warmup + duration)``; throughput is their
  number divided by ``duration``. One still running ``grace_s`` after the window is counted as
  *late*, with the latency it had reached by then. A closed loop slows down with the system it
  measures, so its latencies hide the waiting a real arrival process would have seen: use it
  for throughput.
- **open** (``rate`` operations per second, ``clients`` connections): operation ``i`` is
  *intended* to start at ``t0 + i / rate`` (or at Poisson arrival times); a
  dispatcher hands it to the next free connection at that time (at once, with every other
  operation already due, when the generator runs late), and if every connection is busy it
  waits in a queue. Latency is measured **from the intended start**, so the time an operation
  spent queued behind a stalled system is part of its latency (no coordinated omission: a stall
  of ``s`` seconds shows up as ``rate × s`` operations with latencies up to ``s``, not as one
  slow operation). Every operation intended inside the measured window is counted, however late it
  completes; one still unfinished (or not yet sent) ``grace_s`` after the window is counted
  as *late* with the latency it had reached by then (a lower bound). Throughput is the number
  of operations that completed inside the window, divided by ``duration``.

In both schedules the operations of the warm-up are executed but not recorded; the
time-line (``interval_s`` buckets by completion time, warm-up included) is kept for the
throughput-over-time plots. The loop is bounded by ``max_ops`` and by the clock.

Operation streams: ``ops.next()`` gives the next operation; ``ops.finished(op)``, if the
stream has it, is told when an operation ended, done or failed (``latest`` reads only
inserts that ended: see ``bench/workloads.py``).

Driver protocol: ``await driver.execute(op)`` returns the number of attempts it took (1 unless
the operation was retried after a conflict: ``attempts - 1`` aborts) or raises; any exception
but ``trio.Cancelled`` counts as an error (the operation is not in the latency figures). An
exception with an ``attempts`` attribute (the drivers' ``ConflictError``: the retries ran out)
adds that many attempts, all aborted, to the abort rate.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import trio

from .hdr import CoarseHistogram, Histogram

__all__ = ["LoadSpec", "Tally", "merge_tallies", "run_load"]

ERROR_PAUSE_S = 0.01
"""A closed-loop worker pauses this long after a failed operation (no busy loop)."""


@dataclass(frozen=True)
class LoadSpec:
    """What one load process runs (see the module docstring)."""

    mode: str
    clients: int
    duration_s: float
    warmup_s: float = 0.0
    rate: float | None = None
    arrival: str = "uniform"
    # Uniform arrivals of a share of one schedule (bench/loadproc.py): that schedule sends one
    # operation every ``len(slots) / (rate * cycle)`` seconds, operation ``j`` belonging to
    # slot ``j % cycle``, and this process sends those of ``slots`` (``rate`` is its own
    # share). The default, one slot of a cycle of one, is every operation at ``rate``.
    cycle: int = 1
    slots: tuple[int, ...] = (0,)
    interval_s: float = 1.0
    grace_s: float = 10.0
    max_ops: int = 50_000_000
    seed: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', not {self.mode!r}")
        if self.clients < 1:
            raise ValueError("clients must be at least 1")
        if not self.duration_s > 0 or self.warmup_s < 0:
            raise ValueError("duration must be > 0 and warm-up >= 0")
        if self.mode == "open" and not (self.rate and self.rate > 0):
            raise ValueError("an open loop needs a rate > 0")
        if self.arrival not in ("uniform", "poisson"):
            raise ValueError("arrival must be 'uniform' or 'poisson'")
        if not self.interval_s > 0 or self.grace_s < 0 or self.max_ops < 1:
            raise ValueError("interval_s must be > 0, grace_s >= 0, max_ops >= 1")
        slots = tuple(self.slots)  # a list, from JSON
        object.__setattr__(self, "slots", slots)
        if (self.cycle < 1 or not slots or list(slots) != sorted(set(slots))
                or slots[0] < 0 or slots[-1] >= self.cycle):
            raise ValueError("slots must be distinct, ascending, in 0..cycle-1")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Tally:
    """What one run measured; histograms in microseconds (see :class:`bench.hdr.Histogram`).

    ``latency`` holds every recorded operation, ``by_kind`` the same split by operation kind.
    ``completed`` counts operations that completed inside the window (throughput), ``recorded``
    those in the latency histogram (closed: the same; open: those intended inside the window).
    ``inserted_bytes`` is the keys and values of the inserts that succeeded, warm-up included
    (what the run added to the store); ``next_free_record`` the record after the last one the
    run's operation streams inserted (their ``next_free_record``, the highest of them; None
    for streams that do not say), where the inserts of a later run on the same store start.
    """

    latency: Histogram = field(default_factory=Histogram)
    by_kind: dict[str, Histogram] = field(default_factory=dict)
    # [completed, CoarseHistogram of their latencies] per interval: the time-line's throughput
    # and p99. A full Histogram per interval would hold ~184 KiB each, in every load process
    # and again in the parent.
    timeline: list[list] = field(default_factory=list)
    completed: int = 0
    recorded: int = 0
    attempts: int = 0
    aborts: int = 0
    errors: int = 0
    late: int = 0
    issued: int = 0
    inserted_bytes: int = 0
    max_dispatch_lag_ms: float = 0.0
    client_cpu_s: float | None = None
    last_error: str = ""
    next_free_record: int | None = None

    def bucket(self, index: int) -> list:
        while len(self.timeline) <= index:
            self.timeline.append([0, CoarseHistogram()])
        return self.timeline[index]

    def to_json(self) -> dict:
        return {
            "latency": self.latency.encode(),
            "by_kind": {k: h.encode() for k, h in self.by_kind.items()},
            "timeline": [[n, h.encode()] for n, h in self.timeline],
            "completed": self.completed, "recorded": self.recorded,
            "attempts": self.attempts, "aborts": self.aborts, "errors": self.errors,
            "late": self.late, "issued": self.issued, "inserted_bytes": self.inserted_bytes,
            "max_dispatch_lag_ms": self.max_dispatch_lag_ms,
            "client_cpu_s": self.client_cpu_s, "last_error": self.last_error,
            "next_free_record": self.next_free_record,
        }

    @classmethod
    def from_json(cls, doc: dict) -> Tally:
        t = cls(latency=Histogram.decode(doc["latency"]),
                by_kind={k: Histogram.decode(v) for k, v in doc["by_kind"].items()},
                timeline=[[n, CoarseHistogram.decode(h)] for n, h in doc["timeline"]])
        for name in ("completed", "recorded", "attempts", "aborts", "errors", "late", "issued",
                     "inserted_bytes", "max_dispatch_lag_ms", "client_cpu_s", "last_error"):
            setattr(t, name, doc[name])
        t.next_free_record = doc.get("next_free_record")
        return t


def merge_tallies(tallies: list[Tally]) -> Tally:
    """The tally of several load processes that ran the same window together."""
    out = Tally()
    cpu = 0.0
    for t in tallies:
        out.latency.add(t.latency)
        for k, h in t.by_kind.items():
            out.by_kind.setdefault(k, Histogram()).add(h)
        for i, (n, h) in enumerate(t.timeline):
            b = out.bucket(i)
            b[0] += n
            b[1].add(h)
        for name in ("completed", "recorded", "attempts", "aborts", "errors", "late", "issued",
                     "inserted_bytes"):
            setattr(out, name, getattr(out, name) + getattr(t, name))
        out.max_dispatch_lag_ms = max(out.max_dispatch_lag_ms, t.max_dispatch_lag_ms)
        if t.client_cpu_s is None:
            cpu = math.nan
        else:
            cpu += t.client_cpu_s
        out.last_error = t.last_error or out.last_error
        if t.next_free_record is not None:
            out.next_free_record = max(out.next_free_record or 0, t.next_free_record)
    out.client_cpu_s = None if math.isnan(cpu) else round(cpu, 3)
    return out


async def run_load(driver, ops, spec: LoadSpec, *, start_at: float | None = None) -> Tally:
    """Runs ``spec`` against ``driver`` with the operations of ``ops``; see the module doc.

    ``start_at`` (``trio.current_time()`` scale) is when the schedule starts (default: now).
    Returns when every worker has finished (at most ``grace_s`` after the window).
    """
    tally = Tally()
    start = trio.current_time() if start_at is None else start_at
    measure_from = start + spec.warmup_s
    measure_to = measure_from + spec.duration_s
    give_up = measure_to + spec.grace_s
    interval = spec.interval_s
    cpu_marks: list[float] = []

    def record(kind: str, began: float, done: float, attempts: int, counted: bool) -> None:
        latency_us = (done - began) * 1e6
        b = tally.bucket(max(0, int((done - start) / interval)))
        b[0] += 1
        b[1].record_us(latency_us)
        if measure_from <= done < measure_to:
            tally.completed += 1
        if counted:
            tally.recorded += 1
            tally.attempts += attempts
            tally.aborts += attempts - 1
            # ``tally.latency`` is the sum of these, added once at the end: one histogram
            # record fewer per operation (a record is most of the generator's own cost).
            h = tally.by_kind.get(kind)
            if h is None:
                h = tally.by_kind[kind] = Histogram()
            h.record_us(latency_us)

    finished = getattr(ops, "finished", None)

    def succeeded(op) -> None:
        if op.kind == "insert":
            tally.inserted_bytes += len(op.key) + len(op.value or b"")
        if finished is not None:
            finished(op)

    def failed(op, exc: BaseException, counted: bool) -> None:
        if finished is not None:
            finished(op)
        if counted:
            tally.errors += 1
            # An operation that gave up after conflicting on every attempt (the driver's
            # ConflictError says how many): each of them was an aborted attempt.
            aborted = getattr(exc, "attempts", 0)
            if isinstance(aborted, int) and aborted > 0:
                tally.attempts += aborted
                tally.aborts += aborted
        tally.last_error = f"{type(exc).__name__}: {exc}"[:300]

    async def cpu_meter() -> None:
        await trio.sleep_until(measure_from)
        cpu_marks.append(time.process_time())
        await trio.sleep_until(measure_to)
        cpu_marks.append(time.process_time())

    async def closed_worker(running: dict) -> None:
        # ``running`` maps a worker to the operation it is running (as ``pending`` does in
        # the open loop), so that one cut off at ``give_up`` is still counted, as late.
        me = object()
        await trio.sleep_until(start)
        while trio.current_time() < measure_to and tally.issued < spec.max_ops:
            op = ops.next()
            tally.issued += 1
            began = trio.current_time()
            running[me] = (began, op)
            try:
                attempts = await driver.execute(op)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                del running[me]
                done = trio.current_time()
                failed(op, exc, measure_from <= done < measure_to)
                await trio.sleep(ERROR_PAUSE_S)
                continue
            del running[me]
            done = trio.current_time()
            succeeded(op)
            record(op.kind, began, done, attempts, measure_from <= done < measure_to)

    def arrivals():
        """The intended start times of the open loop's operations, in order: those before the
        window's end, at most ``max_ops``."""
        rng = random.Random(spec.seed * 31 + 7)
        assert spec.rate is not None
        slots, cycle = spec.slots, spec.cycle
        # The gap between two operations of the whole schedule this process has a share of.
        gap = len(slots) / (spec.rate * cycle)
        intended = start
        for i in range(spec.max_ops):
            if spec.arrival == "poisson":
                intended += rng.expovariate(spec.rate)
            else:
                turn, k = divmod(i, len(slots))
                intended = start + (turn * cycle + slots[k]) * gap
            if intended >= measure_to:
                return
            yield intended

    schedule = arrivals()
    # The intended time the dispatcher took from ``schedule`` and has not sent yet (None when
    # there is none): with what is left in ``schedule``, what a cut must still account for.
    unsent: list[float | None] = [None]

    async def dispatcher(send) -> None:
        async with send:
            for intended in schedule:
                unsent[0] = intended
                now = trio.current_time()
                if now >= give_up:
                    return  # the cut counts this one and the rest
                if intended > now:
                    await trio.sleep_until(intended)
                    now = trio.current_time()
                # Otherwise the operation is already due (the generator fell behind, e.g. its
                # own CPU load delayed it): it is sent at once, with every other one due,
                # without yielding in between. Yielding after each one would let every worker
                # run before the next send, and a loaded generator would fall ever further
                # behind its schedule.
                lag_ms = (now - intended) * 1e3
                if lag_ms > tally.max_dispatch_lag_ms and intended >= measure_from:
                    tally.max_dispatch_lag_ms = lag_ms
                send.send_nowait((intended, ops.next()))
                unsent[0] = None
                tally.issued += 1

    async def open_worker(recv, pending: dict) -> None:
        # ``pending`` maps a worker to the operation it is running, so that one cut off at
        # ``give_up`` is still counted (as late) with the latency it had reached.
        me = object()
        async with recv:
            async for intended, op in recv:
                pending[me] = (intended, op)
                counted = measure_from <= intended < measure_to
                try:
                    attempts = await driver.execute(op)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    del pending[me]
                    failed(op, exc, counted)
                    continue
                del pending[me]
                succeeded(op)
                record(op.kind, intended, trio.current_time(), attempts, counted)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cpu_meter)
        with trio.move_on_at(give_up):
            if spec.mode == "closed":
                running: dict = {}
                try:
                    async with trio.open_nursery() as workers:
                        for _ in range(spec.clients):
                            workers.start_soon(closed_worker, running)
                finally:
                    # Operations still running when the grace period ran out (a system
                    # that stopped answering) are counted as late, with the latency they had
                    # reached by the cut (a lower bound), instead of vanishing.
                    cut = trio.current_time()
                    for began, op in list(running.values()):
                        tally.late += 1
                        record(op.kind, began, max(cut, began), 1, True)
            else:
                send, recv = trio.open_memory_channel(math.inf)
                pending: dict = {}
                try:
                    async with trio.open_nursery() as workers:
                        workers.start_soon(dispatcher, send)
                        for _ in range(spec.clients):
                            workers.start_soon(open_worker, recv.clone(), pending)
                finally:
                    # Operations still running or queued when the grace period ran out.
                    cut = trio.current_time()
                    late = list(pending.values())
                    while True:
                        try:
                            late.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                    recv.close()
                    # Operations intended inside the window that the dispatcher never got
                    # to send are late too: their latency at the cut is as real as that of
                    # one queued behind a busy connection.
                    not_sent = [] if unsent[0] is None else [unsent[0]]
                    not_sent.extend(schedule)
                    late.extend((intended, ops.next()) for intended in not_sent
                                if measure_from <= intended < measure_to)
                    for intended, op in late:
                        if measure_from <= intended < measure_to:
                            tally.late += 1
                            record(op.kind, intended, max(cut, intended), 1, True)
        if len(cpu_marks) < 2 and trio.current_time() < give_up:
            await trio.sleep_until(measure_to)  # the window's CPU mark, if the work ended early
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    if len(cpu_marks) == 2:
        tally.client_cpu_s = round(cpu_marks[1] - cpu_marks[0], 4)
    tally.next_free_record = getattr(ops, "next_free_record", None)
    for h in tally.by_kind.values():
        tally.latency.add(h)
    return tally

