"""``python -m bench adjudicator``: the OCC adjudicator in C beside its Python reference.

Run it with ``python -m bench adjudicator [--quick] [--json FILE]``.

Workloads (ARCH §5.5), the same for both implementations in one run:

- ``write4``: batches of 64 transactions under snapshot isolation, each writing 4 keys, one-phase
  commit (``prepare=False``): the group's fast path.
- ``ser4r2w``: batches of 64 serializable transactions, each reading 4 keys and writing 2.

Keys are 16 bytes (``key:%012d``), drawn uniformly, with replacement, from a 100,000-key space.
Both adjudicators are loaded with every key first (``load``, untimed), so that their tables have
their steady-state size from the start. Every transaction takes the next commit timestamp and
reads at ``commit_ts - 256`` (four batches in flight), so a few percent are rejected
(WRITE_WRITE, READ_WRITE), as under real contention.

The timer covers ``adjudicate(batch)`` only, the whole Python call: checks, marshalling, the C
call and building the verdicts. The batch's :class:`~engine.adjudicator.TxnRequest` objects are
made before the timer starts; making them (validation, and the encoding the C path sends) is
measured on its own and reported as ``construct_us_per_txn``, and the speedup counting it
(``speedup_with_construction``) is reported beside the plain one.

Both implementations get the same request stream (same seed) from the same starting state, so
they must reach the same decisions: the benchmark compares the number of rejections in every
batch both of them ran and fails if they differ.

Noise control (MEASURED.md): every repetition measures every (workload, implementation) once,
the implementations alternating and the first one rotating between repetitions; the figure
reported is the median over repetitions, and ``speedup`` is the ratio of the two medians of the
same run. Each repetition's own ratio (its two measurements ran back to back) is reported too,
as ``speedup_per_repetition``.
Each measurement stops after ``duration_s`` or ``max_batches`` batches, whichever comes first.
The garbage collector is off while a measurement runs, for both implementations alike.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import _common

__all__ = ["TARGETS", "Config", "add_parser", "run_benchmark", "render_text"]

BATCH = 64
KEY_SIZE = 16
LAG = 256  # commit_ts - read_ts: four batches in flight
IMPLEMENTATIONS = ("c", "reference")
WORKLOADS = {
    # name: (writes, reads, serializable)
    "write4": (4, 0, False),
    "ser4r2w": (2, 4, True),
}
QUICK = {"repetitions": 3, "duration_s": 0.3}
FULL = {"repetitions": 7, "duration_s": 1.0}
DEFAULT_KEYS = 100_000
DEFAULT_MAX_BATCHES = 1_000_000  # per measurement; the time bound normally ends it first
WARMUP_BATCHES = 20
SPEEDUP_TARGET = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    threshold: float


TARGETS = tuple(
    Target(f"{w}_speedup", f"{w}: C txns/s / reference txns/s", SPEEDUP_TARGET) for w in WORKLOADS
)


@dataclass(frozen=True, slots=True)
class Config:
    """What one run measures. ``duration_s`` and ``max_batches`` bound every measurement."""

    quick: bool = False
    repetitions: int = FULL["repetitions"]
    duration_s: float = FULL["duration_s"]
    max_batches: int = DEFAULT_MAX_BATCHES
    keys: int = DEFAULT_KEYS
    seed: int = 1
    command: str = ""


class BenchError(RuntimeError):
    """The implementations disagreed, or one misbehaved."""


def key_of(i: int) -> bytes:
    """The 16-byte key number ``i``."""
    return b"key:%012d" % i


# ------------------------------------------------------------------------------------ workload


class Stream:
    """One implementation's adjudicator and its request stream (deterministic from the seed)."""

    def __init__(self, impl: str, workload: str, keys: list[bytes], seed: int) -> None:
        from engine.adjudicator import Adjudicator, ReferenceAdjudicator, TxnRequest

        self.impl = impl
        self.txn_request = TxnRequest
        cls = Adjudicator if impl == "c" else ReferenceAdjudicator
        self.adj = cls()
        self.adj.load([(k, 1) for k in keys])
        self.writes, self.reads, self.serializable = WORKLOADS[workload]
        self.keys = keys
        self.rng = random.Random(seed)
        self.ts = LAG + 1  # above the preloaded commits (ts 1)
        self.construct_ns = 0
        self.constructed = 0
        self.rejected_per_batch: list[int] = []

    def prepare(self) -> list:
        """The next batch of requests (untimed by the caller); times their construction."""
        per_txn = self.writes + self.reads
        drawn = self.rng.choices(self.keys, k=BATCH * per_txn)
        w, ser, make = self.writes, self.serializable, self.txn_request
        ts = self.ts
        t0 = time.perf_counter_ns()
        batch = [
            make(ts + i, ts + i - LAG, ts + i, drawn[j:j + w], drawn[j + w:j + per_txn], ser)
            for i, j in enumerate(range(0, BATCH * per_txn, per_txn))
        ]
        self.construct_ns += time.perf_counter_ns() - t0
        self.constructed += BATCH
        self.ts = ts + BATCH
        return batch

    def commit(self, batch: list) -> None:
        verdicts = self.adj.adjudicate(batch)
        self.rejected_per_batch.append(sum(not v.ok for v in verdicts))

    def close(self) -> None:
        self.adj.close()


# --------------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(prepare: Callable[[], list], commit: Callable[[list], None], duration_s: float,
            max_batches: int) -> list[int]:
    """Adjudicates batches until ``duration_s`` or ``max_batches``; returns each batch's time
    in nanoseconds (at least one batch). Only ``commit`` is timed."""
    clock = time.perf_counter_ns
    latencies: list[int] = []
    append = latencies.append
    with _gc_paused():
        deadline = clock() + int(duration_s * 1e9)
        for _ in range(max(1, max_batches)):
            batch = prepare()
            t0 = clock()
            commit(batch)
            t1 = clock()
            append(t1 - t0)
            if t1 >= deadline:
                break
    return latencies


@dataclass(slots=True)
class Series:
    """One (workload, implementation) over the repetitions of a run."""

    rates: list[float] = field(default_factory=list)  # txns/s per repetition
    latencies_ns: list[int] = field(default_factory=list)  # every batch of every repetition

    def add(self, latencies_ns: list[int]) -> float:
        rate = len(latencies_ns) * BATCH / (sum(latencies_ns) / 1e9)
        self.rates.append(rate)
        self.latencies_ns.extend(latencies_ns)
        return rate

    def pct_us(self, q: float) -> float:
        return round(_common.percentile(self.latencies_ns, q) / 1000.0, 2)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)


def run_benchmark(cfg: Config) -> dict:
    """Runs the whole benchmark; returns the result document (schema 1)."""
    started = time.monotonic()
    machine = _common.describe_machine(_common.REPO_ROOT)
    keys = [key_of(i) for i in range(cfg.keys)]
    streams: dict[tuple[str, str], Stream] = {}
    series = {(w, i): Series() for w in WORKLOADS for i in IMPLEMENTATIONS}
    try:
        for w in WORKLOADS:
            for impl in IMPLEMENTATIONS:
                streams[(w, impl)] = s = Stream(impl, w, keys, cfg.seed)
                # Warm-up: code paths and caches; the same batches for both, not timed.
                for _ in range(min(WARMUP_BATCHES, cfg.max_batches)):
                    s.commit(s.prepare())
        _progress(f"adjudicator benchmark: {cfg.repetitions} repetitions, {cfg.duration_s:g} s "
                  f"per measurement, {cfg.keys:,} keys, batches of {BATCH}")
        for rep in range(cfg.repetitions):
            line = []
            for w in WORKLOADS:
                order = IMPLEMENTATIONS if rep % 2 == 0 else IMPLEMENTATIONS[::-1]
                for impl in order:
                    s = streams[(w, impl)]
                    lat = measure(s.prepare, s.commit, cfg.duration_s, cfg.max_batches)
                    rate = series[(w, impl)].add(lat)
                    line.append(f"{w}/{impl}={_common.format_rate(rate)}")
            _progress(f"rep {rep + 1}/{cfg.repetitions}: " + " ".join(line))
    finally:
        for s in streams.values():
            with contextlib.suppress(Exception):
                s.close()

    for w in WORKLOADS:
        a = streams[(w, "c")].rejected_per_batch
        b = streams[(w, "reference")].rejected_per_batch
        common = min(len(a), len(b))
        if a[:common] != b[:common]:
            first = next(i for i in range(common) if a[i] != b[i])
            raise BenchError(f"{w}: the implementations disagree on batch {first}: "
                             f"{a[first]} vs {b[first]} rejections")

    results = []
    for w in WORKLOADS:
        for impl in IMPLEMENTATIONS:
            ser, s = series[(w, impl)], streams[(w, impl)]
            results.append({
                "implementation": impl,
                "workload": w,
                "txns_per_s": round(_common.median(ser.rates), 1),
                "batch_p50_us": ser.pct_us(50),
                "batch_p99_us": ser.pct_us(99),
                "batches": len(ser.latencies_ns),
                "abort_rate": round(sum(s.rejected_per_batch)
                                    / (BATCH * len(s.rejected_per_batch)), 4),
                "construct_us_per_txn": round(s.construct_ns / s.constructed / 1000.0, 3),
                "repetitions_txns_per_s": [round(r, 1) for r in ser.rates],
            })

    def cell(w: str, impl: str) -> dict:
        return next(r for r in results if r["workload"] == w and r["implementation"] == impl)

    speedup = {}
    per_repetition = {}
    with_construction = {}
    for w in WORKLOADS:
        c, ref = cell(w, "c"), cell(w, "reference")
        speedup[w] = _ratio(c["txns_per_s"], ref["txns_per_s"])
        # The two implementations of one repetition ran back to back, so their ratio is less
        # exposed to the machine's drift than the ratio of medians (reported as "speedup").
        per_repetition[w] = [_ratio(a, b) for a, b in zip(series[(w, "c")].rates,
                                                           series[(w, "reference")].rates)]
        # Per transaction: making the request (the same class for both) plus adjudicating it.
        construct_s = (c["construct_us_per_txn"] + ref["construct_us_per_txn"]) / 2 / 1e6
        with_construction[w] = _ratio(1 / (construct_s + 1 / c["txns_per_s"]),
                                      1 / (construct_s + 1 / ref["txns_per_s"]))
    targets = {}
    for t in TARGETS:
        v = speedup[t.name.removesuffix("_speedup")]
        targets[t.name] = {
            "description": t.description,
            "value": v,
            "threshold": t.threshold,
            "met": v is not None and v >= t.threshold,
        }
    machine["load_average_end"] = _common.load_average()
    return {
        "schema": _common.SCHEMA,
        "benchmark": "adjudicator",
        "command": cfg.command,
        "config": {
            "quick": cfg.quick,
            "repetitions": cfg.repetitions,
            "duration_s": cfg.duration_s,
            "max_batches_per_measurement": cfg.max_batches,
            "batch": BATCH,
            "keys": cfg.keys,
            "key_bytes": KEY_SIZE,
            "read_lag": LAG,
            "workloads": {w: {"writes": wr, "reads": rd, "serializable": ser}
                          for w, (wr, rd, ser) in WORKLOADS.items()},
            "seed": cfg.seed,
        },
        "machine": machine,
        "results": results,
        "speedup": speedup,
        "speedup_per_repetition": per_repetition,
        "speedup_with_construction": with_construction,
        "decisions_agree": True,
        "targets": targets,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


# ------------------------------------------------------------------------------------ output


def render_text(doc: dict) -> str:
    """The result document as plain-text tables (what the command prints)."""
    m = doc["machine"]
    cfg = doc["config"]
    out = [
        (f"Adjudicator benchmark ({'quick' if cfg['quick'] else 'full'}): "
         f"{cfg['repetitions']} repetitions x {cfg['duration_s']:g} s, batches of "
         f"{cfg['batch']}, {cfg['keys']:,} keys of {cfg['key_bytes']} bytes; medians over "
         "repetitions"),
        (f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
         f"{m['python']}"),
        "",
    ]
    rows = [
        [r["workload"], r["implementation"], _common.format_rate(r["txns_per_s"]),
         r["batch_p50_us"], r["batch_p99_us"], f"{100 * r['abort_rate']:.1f}%",
         r["construct_us_per_txn"]]
        for r in doc["results"]
    ]
    out.append(_common.format_table(
        ["workload", "implementation", "txns/s", "p50 us/batch", "p99 us/batch", "aborts",
         "construct us/txn"], rows, "llrrrrr"))
    out.append("")
    srows = [[w, f"{v:.2f}x", f"{_common.median(doc['speedup_per_repetition'][w]):.2f}x",
              f"{doc['speedup_with_construction'][w]:.2f}x"]
             for w, v in doc["speedup"].items()]
    out.append(_common.format_table(
        ["workload", "speedup", "median per repetition", "with construction"], srows, "lrrr"))
    out.append("")
    met = sum(t["met"] for t in doc["targets"].values())
    out.append(f"{met}/{len(doc['targets'])} targets met (C >= {SPEEDUP_TARGET:g}x the "
               f"reference); decisions agree; {doc['elapsed_s']} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "adjudicator",
        help="the OCC adjudicator: C against the Python reference",
        description="Adjudicator.adjudicate (C) beside ReferenceAdjudicator.adjudicate (pure "
                    "Python) on batches of 64 transactions: 4 writes each (snapshot isolation) "
                    "and 4 reads + 2 writes (serializable), 16-byte keys from a 100,000-key "
                    "space. Side by side in one run, medians over interleaved repetitions.",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"short run ({QUICK['repetitions']} repetitions x "
                        f"{QUICK['duration_s']} s per measurement)")
    p.add_argument("--json", metavar="FILE", help="write the result document to FILE")
    tuning = p.add_argument_group("tuning (defaults depend on --quick)")
    tuning.add_argument("--repetitions", type=int, metavar="N",
                        help=f"repetitions (default {FULL['repetitions']}, "
                             f"quick {QUICK['repetitions']})")
    tuning.add_argument("--duration-s", type=float, metavar="S",
                        help=f"seconds per measurement (default {FULL['duration_s']}, "
                             f"quick {QUICK['duration_s']})")
    tuning.add_argument("--max-batches", type=int, default=DEFAULT_MAX_BATCHES, metavar="N",
                        help="at most N batches per measurement; small values make a smoke test")
    tuning.add_argument("--keys", type=int, default=DEFAULT_KEYS, metavar="N",
                        help=f"key space, preloaded (default {DEFAULT_KEYS:,})")
    tuning.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    mode = QUICK if args.quick else FULL
    repetitions = args.repetitions if args.repetitions is not None else mode["repetitions"]
    duration_s = args.duration_s if args.duration_s is not None else mode["duration_s"]
    if repetitions < 1 or duration_s < 0 or args.max_batches < 1 or args.keys < 8:
        raise SystemExit("--repetitions and --max-batches must be positive, --duration-s not "
                         "negative, --keys at least 8")
    cfg = Config(
        quick=args.quick,
        repetitions=repetitions,
        duration_s=duration_s,
        max_batches=args.max_batches,
        keys=args.keys,
        seed=args.seed,
        command="python -m bench " + shlex.join(getattr(args, "argv", None) or sys.argv[1:]),
    )
    doc = run_benchmark(cfg)
    if args.json:
        _common.write_json(args.json, doc)
    print(render_text(doc))
    if args.json:
        print(f"wrote {args.json}")
    return 0
