"""``python -m bench ycsb``: YCSB-style workloads, Meridian and etcd side by side in one run.

Workload (``--workload``): YCSB's core workloads A (50 % read / 50 % update), B (95/5), C
(read only), D (read latest, 5 % inserts), E (short scans, 5 % inserts), F (50 % read / 50 %
read-modify-write), and ``bank`` (transfers between two accounts), over ``--records`` records
of ``--value-size`` bytes (10 B .. 64 KiB) with 16-byte keys, drawn ``uniform``, ``zipfian``
(θ = ``--theta``, 0.99 by default) or ``latest`` (``bench/workloads.py``). A read is a strong
read, an update a single-key write transaction, a read-modify-write a transaction that reads and
writes one key (``bench/drivers.py``). ``--sweep-theta 0,0.5,0.9,0.99`` repeats the closed loop
at each zipfian θ (a contention sweep). ``--workload regions`` is a multi-region mix, Meridian
only: three regions with simulated WAN latency (35/70/110 ms one way), clients in the first
region writing one key per transaction to its home keyspace (50 %), to the farthest region's
keyspace (25 %) and to a ``regional`` keyspace (25 %), latency reported per kind.

Systems, the same machine, the same run, one at a time: **meridian**, a local multi-process
cluster of one region with three nodes (``--target procs``; also ``inprocess``, or ``--nodes``
of a running cluster) and the keyspace homed in that region; **etcd**, three members of
Debian's etcd-server (``bench/raft_peers.py``), through its v3 HTTP/JSON gateway. Both get the
same load generator (``bench/openloop.py`` in ``--load-procs`` processes), the same operation
stream (same seeds) and the same client counts; each starts fresh and is loaded with the same
records before it is measured.

Measurements, per system: a closed loop at each ``--clients`` count (throughput), then, on a
fresh cluster, an open loop at fixed arrival rates (latency measured from each operation's
intended start time: no coordinated omission), the rates being fractions
(``--open-fractions``) of the highest closed-loop throughput any system reached, so that both
systems are offered the same loads and the curve shows where each saturates. Warm-up is
excluded. Latency percentiles come from HdrHistogram (p50/p90/p99/p99.9/max); abort rate is
aborted attempts / attempts; CPU seconds per 1,000 operations of the server processes (and of
the load processes) from /proc over the measured window; resident memory of the servers at the
end; bytes allocated on disk per byte stored (keys + values loaded or inserted) after the
runs. A load-generator self-test runs the same closed loop against a server that answers at
once (``noop``; the workers of a load process share one connection, as Meridian's client shares
one per node), first, before any cluster starts, and reports how many times Meridian's best
throughput the generator sustains. A run that cannot be measured (a load process that does not
connect or report, a cluster that does not start or answer) is listed under ``failures`` in
the results, the other rows are kept, and the command exits with status 1; a peer that is not
installed is listed under ``skipped``.

The issue's target: on YCSB A with a home-region keyspace, Meridian ≥ 3× etcd's throughput at
equal or lower p99 (closed loop, the largest client count), reported met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import trio

from . import _common
from .hdr import MissingDependency, require
from .openloop import LoadSpec, Tally
from .procstats import Progress, cpu_seconds, disk_usage, rss_bytes
from .workloads import DISTRIBUTIONS, WORKLOADS, key_name

__all__ = ["add_parser", "check_outputs", "main", "targets", "summarize",
           "parse_args_common"]

SYSTEMS = ("meridian", "etcd")
QUICK = {"clients": (32,), "duration": 3.0, "warmup": 1.0, "repeat": 1, "records": 10_000,
         "fractions": (0.1, 0.3, 0.5, 0.7, 0.9)}
FULL = {"clients": (1, 16, 64), "duration": 10.0, "warmup": 2.0, "repeat": 3,
        "records": 100_000, "fractions": (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
MIN_VALUE, MAX_VALUE = 10, 64 * 1024
LOAD_BATCH_BYTES = 512 * 1024
LOAD_BATCH_RECORDS = 100  # etcd refuses more than 128 operations per transaction
LOAD_CONCURRENCY = 4
TARGET_RATIO = 3.0
NEXT_FREE_RECORD = "_next_free_record"  # a key of measure()'s row, not of the results
MIX_REGIONS = ("us-east", "eu-west", "ap-south")
CROSS_REGION_REASON = (
    "bytes the nodes sent to nodes of other regions (Database.statistics()"
    "['cross_region_bytes']: Raft frames and node-to-node requests) per operation completed "
    "during a closed-loop run, warm-up included; the clients' own requests to other regions "
    "are not counted; 0 with one region")


def _cross_bytes(target) -> int | None:
    counter = getattr(target, "cross_region_bytes", None)
    if counter is None:
        return None
    try:
        return counter()
    except Exception as exc:  # a statistic: never the reason a run fails
        print(f"cross-region bytes unavailable: {exc}", file=sys.stderr)
        return None


def _per_op(before: int | None, after: int | None, row: dict) -> float | None:
    """Bytes per operation over the whole run (warm-up included, like the bytes)."""
    if before is None or after is None:
        return None
    interval = row["timeline"][0][0] if row.get("timeline") else 0
    ops = sum(t[1] for t in row.get("timeline", [])) * interval
    return round((after - before) / ops, 1) if ops else None


def _median_of(values) -> float | None:
    vs = sorted(v for v in values if v is not None)
    return vs[len(vs) // 2] if vs else None


# ------------------------------------------------------------------------------- arguments


_clients = _common.comma_list(int, valid=lambda c: 1 <= c <= 1024,
                               expect="a whole number in 1..1024")
_fractions = _common.comma_list(float, valid=lambda f: 0 < f <= 5,
                                expect="a number in (0, 5]")
_thetas = _common.comma_list(float, valid=lambda t: 0 <= t <= 2,
                             expect="a zipfian θ in [0, 2]")


def _theta(text: str) -> float:
    values = _thetas(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError("one value only (--sweep-theta takes a list)")
    return values[0]


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"{v} is not in (0, 3600]")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 3600]")
    return v


def _is_address(text: str) -> bool:
    from engine.config import ConfigError, parse_address

    try:
        parse_address(text, "--nodes")  # as the client will parse it
    except ConfigError:
        return False
    return True


_nodes = _common.comma_list(valid=_is_address, expect="host:port")


def parse_args_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``ycsb`` and ``scale``."""
    p.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    p.add_argument("--json", metavar="FILE", help="write the results document here")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots here (default: beside "
                   "--json; none without either)")
    p.add_argument("--duration", type=_positive_float, help="measured seconds per run")
    p.add_argument("--warmup", type=_nonneg_float, help="seconds excluded at the start")
    p.add_argument("--records", type=_common.int_range(2, 10_000_000), help="records loaded")
    p.add_argument("--value-size", type=_common.int_range(MIN_VALUE, MAX_VALUE, "value size"),
                   default=100, help=f"bytes per value, {MIN_VALUE}..{MAX_VALUE} (default 100)")
    p.add_argument("--load-procs", type=_common.int_range(1, 16),
                   help="load processes (default: 1 below 16 clients, else 2)")
    p.add_argument("--target", choices=("procs", "inprocess"), default="procs",
                   help="the Meridian cluster: local node processes (default) or in-process")
    p.add_argument("--nodes", type=_nodes, metavar="HOST:PORT,...",
                   help="use this running Meridian cluster instead of starting one (the "
                   "run's keyspaces, ycsb-<region>, are created and dropped again; a cluster "
                   "that has one of them already is refused)")
    p.add_argument("--nodes-per-region", type=_common.int_range(1, 7), default=3)
    p.add_argument("--workdir", help="where data directories go (default: a temporary "
                   "directory beside bench/results, on the same file system)")
    p.add_argument("--seed", type=int, default=1, help="seeds the operation streams")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ycsb", help="YCSB-style workloads: Meridian vs etcd, closed and open loop",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="A",
                   help="YCSB core workload (default A)")
    p.add_argument("--distribution", choices=DISTRIBUTIONS,
                   help="key distribution (default: the workload's)")
    p.add_argument("--theta", type=_theta, default=0.99,
                   help="zipfian θ, 0..2 (default 0.99)")
    p.add_argument("--sweep-theta", type=_thetas, metavar="θ,...",
                   help="contention sweep: repeat the closed loop at each zipfian θ")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   type=_common.comma_list(valid=SYSTEMS.__contains__,
                                           expect=f"one of {','.join(SYSTEMS)}"),
                   help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--clients", type=_clients, help="closed-loop client counts (default 32 "
                   "quick, 1,16,64 full)")
    p.add_argument("--open-fractions", type=_fractions,
                   help="open-loop rates as fractions of the best closed-loop throughput")
    p.add_argument("--no-open", action="store_true", help="skip the open-loop runs")
    p.add_argument("--arrival", choices=("uniform", "poisson"), default="uniform",
                   help="open-loop arrival process (default uniform)")
    p.add_argument("--repeat", type=_common.int_range(1, 20), help="repetitions (1 quick, 3 full)")
    p.add_argument("--max-scan", type=_common.int_range(1, 1000), default=100,
                   help="workload E scans 1..N keys (default 100)")
    p.add_argument("--no-selftest", action="store_true",
                   help="skip the load generator's self-test against a no-op server")
    p.add_argument("--py-spy", metavar="FILE", help="record the Meridian data leader with "
                   "py-spy (raw format) during the largest closed-loop run")
    parse_args_common(p)
    p.set_defaults(func=main)
    return p


# ------------------------------------------------------------------------------ measuring


def default_load_procs(clients: int) -> int:
    return 1 if clients < 16 else 2


def summarize(tally: Tally, *, duration: float, interval: float, warmup: float) -> dict:
    """The figures of one run's merged tally (throughput, percentiles, rates, time-line)."""
    s = tally.latency.summary()
    attempts = tally.attempts or 1
    row = {
        "ops_per_s": round(tally.completed / duration, 1),
        "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"],
        "p999_ms": s["p999_ms"], "max_ms": s["max_ms"], "mean_ms": s["mean_ms"],
        # Latencies beyond the histogram's hour: the percentiles among them are lower bounds.
        "clamped": s["clamped"],
        "ops": tally.recorded,
        "abort_rate": round(tally.aborts / attempts, 5),
        "retries_per_op": round(tally.aborts / max(1, tally.recorded), 5),
        "errors": tally.errors,
        "error_rate": round(tally.errors / max(1, tally.recorded + tally.errors), 5),
        "late": tally.late,
        "inserted_bytes": tally.inserted_bytes,
        "max_dispatch_lag_ms": round(tally.max_dispatch_lag_ms, 3),
        "last_error": tally.last_error or None,
        "by_kind": {k: h.summary() for k, h in sorted(tally.by_kind.items())},
        "cdf": tally.latency.cdf(120),
        "timeline": [[round((i + 1) * interval, 3), round(n / interval, 1),
                      h.percentile_ms(99) if n else None, (i + 1) * interval <= warmup]
                     for i, (n, h) in enumerate(tally.timeline)
                     # The last, partial interval holds only the drain after the window.
                     if (i + 1) * interval <= warmup + duration + 1e-9],
    }
    if tally.client_cpu_s is not None and tally.completed:
        row["client_cpu_s_per_1k_ops"] = round(tally.client_cpu_s / tally.completed * 1000, 4)
    else:
        row["client_cpu_s_per_1k_ops"] = None
    return row


def _sampler(pids: list[int]):
    def sample() -> dict:
        per = {pid: cpu_seconds([pid]) for pid in pids}
        total = None if not pids or None in per.values() else sum(per.values())
        return {"cpu_s": total, "per_pid": per, "t": time.monotonic()}
    return sample


def measure(target, driver: dict, workload: dict, load: LoadSpec, procs: int, rundir: str, *,
            label: str, seed: int) -> dict:
    """One run against ``target``: the summary row plus server CPU per 1,000 operations."""
    from .loadproc import run_processes

    progress = Progress(label, load.warmup_s + load.duration_s)
    try:
        tally, samples = run_processes(driver, workload, load, procs, rundir,
                                       sample=_sampler(target.pids), progress=progress,
                                       seed=seed)
    finally:
        progress.close()
    row = summarize(tally, duration=load.duration_s, interval=load.interval_s,
                    warmup=load.warmup_s)
    c0 = (samples.start or {}).get("cpu_s")
    c1 = (samples.end or {}).get("cpu_s")
    if c0 is not None and c1 is not None and tally.completed:
        row["server_cpu_s_per_1k_ops"] = round((c1 - c0) / tally.completed * 1000, 4)
        row["server_cpu_cores"] = round((c1 - c0) / load.duration_s, 3)
        # Per server process (the leader works hardest), in the order of target.pids.
        p0, p1 = samples.start["per_pid"], samples.end["per_pid"]
        row["server_cpu_s_per_1k_ops_per_process"] = [
            round((p1[pid] - p0[pid]) / tally.completed * 1000, 4) for pid in target.pids]
    else:
        row["server_cpu_s_per_1k_ops"] = None
        row["server_cpu_cores"] = None
    row["server_rss_bytes"] = rss_bytes(target.pids) if target.pids else None
    row["load_processes"] = max(1, min(procs, load.clients))
    # Where the inserts of the next run on this cluster start (main() takes it out of the
    # row): each run inserts records of its own, as YCSB's inserts are new records.
    row[NEXT_FREE_RECORD] = tally.next_free_record
    return row


def _load_value(value_size: int, bank: bool) -> bytes:
    """The value every record is loaded with (bank: an account balance)."""
    return b"%d" % 1000 if bank else b"v" * value_size


async def _load_records(driver: dict, records: int, value_size: int, bank: bool) -> None:
    from .drivers import open_driver

    value = _load_value(value_size, bank)
    per_batch = max(1, min(LOAD_BATCH_RECORDS, LOAD_BATCH_BYTES // (16 + len(value))))
    batches = [range(lo, min(records, lo + per_batch)) for lo in range(0, records, per_batch)]
    async with open_driver(driver, connections=LOAD_CONCURRENCY) as d:
        send, recv = trio.open_memory_channel(len(batches))
        for b in batches:
            send.send_nowait(b)
        send.close()

        async def loader() -> None:
            async for b in recv:
                await d.load([(key_name(i), value) for i in b])

        async with trio.open_nursery() as n:
            for _ in range(LOAD_CONCURRENCY):
                n.start_soon(loader)


def load_records(driver: dict, records: int, value_size: int, bank: bool = False) -> float:
    """Writes the records a workload reads; returns the seconds it took."""
    t = time.monotonic()
    trio.run(_load_records, driver, records, value_size, bank)
    return round(time.monotonic() - t, 2)


@contextlib.contextmanager
def open_target(system: str, args, workdir: str, regions: tuple[str, ...] | None = None, *,
                wan: bool = False, mix: bool = False):
    from .targets import etcd_target, meridian_target

    if system == "etcd":
        with etcd_target(workdir) as t:
            yield t
    else:
        kind = "external" if args.nodes else args.target
        with meridian_target(kind, workdir=workdir, regions=regions,
                             nodes_per_region=args.nodes_per_region, nodes=args.nodes,
                             wan=wan, mix=mix) as t:
            yield t


def storage_figures(target, records: int, value_size: int, *, bank: bool = False,
                    inserted_bytes: int = 0) -> dict:
    """Bytes on disk per byte stored: the keys and values written, i.e. the records loaded
    (with the value :func:`load_records` wrote: ``bank`` loads balances, not ``value_size``
    bytes) plus ``inserted_bytes``, the keys and values the runs inserted (workloads D, E)."""
    if not target.data_dirs:
        return {"bytes_per_stored_byte": None, "reason": "no data directories (not started "
                "here)"}
    du = disk_usage(target.data_dirs)
    stored = records * (len(key_name(0)) + len(_load_value(value_size, bank))) + inserted_bytes
    return {**du, "stored_bytes": stored,
            "bytes_per_stored_byte": round(du["allocated_bytes"] / stored, 2),
            "apparent_bytes_per_stored_byte": round(du["apparent_bytes"] / stored, 2)}


@contextlib.contextmanager
def py_spy(pid: int | None, path: str | None, seconds: float):
    """Records ``pid`` with py-spy for ``seconds`` (raw format) while the block runs."""
    if not path or pid is None or shutil.which("py-spy") is None:
        yield None
        return
    # --nonblocking: py-spy reads the process's memory without pausing it (by default it
    # stops the process for every sample, which slows a busy server down several times).
    proc = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                             "--nonblocking", "--gil", "-f", "raw", "-o", path],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def selftest(clients: int, procs: int, duration: float, warmup: float, workload: dict,
             rundir: str, seed: int) -> dict:
    """The same closed loop against a server that answers at once: what the generator can do."""
    from .loadproc import run_processes

    server = subprocess.Popen([sys.executable, "-m", "bench.drivers", "noop-server"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=str(_common.REPO_ROOT), start_new_session=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"the no-op server did not start: {line!r}")
        load = LoadSpec("closed", clients, duration, warmup, grace_s=5.0)
        tally, _ = run_processes({"system": "noop", "port": int(line[1])}, workload, load, procs,
                                 rundir, seed=seed)
        return {"clients": clients, "load_processes": max(1, min(procs, clients)),
                "ops_per_s": round(tally.completed / duration, 1),
                "client_cpu_s_per_1k_ops": round(tally.client_cpu_s / tally.completed * 1000, 4)
                if tally.client_cpu_s is not None and tally.completed else None,
                "p50_ms": tally.latency.percentile_ms(50),
                "p99_ms": tally.latency.percentile_ms(99)}
    finally:
        with contextlib.suppress(OSError):
            server.stdin.close()  # type: ignore[union-attr]
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        if server.stdout is not None:
            server.stdout.close()


def selftest_verdict(selftest_row: dict | None, best_ops: float | None) -> dict | None:
    """The self-test ratio: generator capacity over Meridian's best throughput (≥ 5 to pass)."""
    if selftest_row is None:
        return None
    ratio = (round(selftest_row["ops_per_s"] / best_ops, 2) if best_ops else None)
    return {**selftest_row, "meridian_best_ops_per_s": best_ops, "ratio": ratio,
            "required_ratio": 5.0, "met": None if ratio is None else ratio >= 5.0}


def targets(results: list[dict], workload: str) -> list[dict]:
    """The issue's target on YCSB A: Meridian ≥ 3× etcd's throughput at ≤ p99 (closed loop,
    the largest client count both ran, default θ)."""
    if workload != "A":
        return []
    closed = [r for r in results if r["mode"] == "closed" and r.get("sweep") is None]
    by = {(r["system"], r["clients"]): r for r in closed}
    common = sorted({c for s, c in by if s == "meridian"} & {c for s, c in by if s == "etcd"})
    name = (f"YCSB A home-region: meridian ops/s >= {TARGET_RATIO:g} x etcd at equal or lower "
            f"p99")
    if not common:
        return [{"target": name, "value": None, "limit": TARGET_RATIO, "met": None,
                 "detail": "etcd or meridian not measured"}]
    c = common[-1]
    m, e = by[("meridian", c)], by[("etcd", c)]
    ratio = round(m["ops_per_s"] / e["ops_per_s"], 2) if e["ops_per_s"] else None
    p99_ok = (m["p99_ms"] is not None and e["p99_ms"] is not None
              and m["p99_ms"] <= e["p99_ms"])
    return [{"target": name, "value": ratio, "limit": TARGET_RATIO,
             "met": None if ratio is None else bool(ratio >= TARGET_RATIO and p99_ok),
             "clients": c, "meridian_p99_ms": m["p99_ms"], "etcd_p99_ms": e["p99_ms"],
             "p99_equal_or_lower": p99_ok}]


# ----------------------------------------------------------------------------------- main


def _median_row(rows: list[dict]) -> dict:
    """One row for the repetitions of a run: each numeric figure is the median of that
    figure over the repetitions (with an even number, the mean of the middle two), so that no
    figure of one repetition stands beside another's; what has no median (the CDF, the
    time-line, the per-kind summaries) is taken from the repetition of median throughput.
    What went wrong is not voted on: ``errors`` and ``late`` are the totals of every
    repetition, ``error_rate`` their errors' share of all their operations, and
    ``last_error`` comes from a repetition that had one."""
    rows = sorted(rows, key=lambda r: r["ops_per_s"])
    med = dict(rows[len(rows) // 2])
    for name in med:
        values = [r.get(name) for r in rows]
        values = [v for v in values if v is not None]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in values):
            continue
        m = _common.median(values)
        if all(isinstance(v, int) for v in values) and m == int(m):
            med[name] = int(m)
        else:
            med[name] = round(m, 6)
    for name in ("errors", "late"):
        if name in med:
            med[name] = sum(r.get(name) or 0 for r in rows)
    if "error_rate" in med:
        med["error_rate"] = round(
            med["errors"] / max(1, sum((r.get("ops") or 0) + (r.get("errors") or 0)
                                       for r in rows)), 5)
    if "last_error" in med:
        med["last_error"] = next((r["last_error"] for r in reversed(rows)
                                  if r.get("last_error")), None)
    med["ops_per_s"] = round(_common.median(r["ops_per_s"] for r in rows), 1)
    med["ops_per_s_reps"] = [r["ops_per_s"] for r in rows]
    med["p50_ms_reps"] = [r["p50_ms"] for r in rows]
    med["p99_ms_reps"] = [r["p99_ms"] for r in rows]
    med["repetitions"] = len(rows)
    return med


def check_dependencies(want_plots: bool) -> None:
    try:
        require("hdrh", "hdrhistogram")
        if want_plots:
            require("matplotlib")
    except MissingDependency as exc:
        raise SystemExit(f"error: {exc}") from None


def check_outputs(args) -> None:
    """Refuses, before anything runs, a ``--workdir``, ``--json`` or ``--plots`` that cannot
    be written: a run of many minutes must not end in a traceback that loses its results."""
    if args.json and os.path.isdir(args.json):
        raise SystemExit(f"error: --json {args.json} is a directory, not a file name")
    where = [("--workdir", args.workdir or str(_common.RESULTS_DIR.parent))]
    if args.json:
        where.append(("--json", os.path.dirname(os.path.abspath(args.json))))
    if plots_dir(args):
        where.append(("--plots", plots_dir(args)))
    for option, path in where:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"error: {option}: cannot create {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise SystemExit(f"error: {option}: cannot write in {path}")


def resolve_common(args, preset: dict) -> dict:
    duration = args.duration or preset["duration"]
    warmup = args.warmup if args.warmup is not None else preset["warmup"]
    return {"duration": duration, "warmup": warmup,
            "records": args.records or preset["records"],
            "interval": 1.0 if duration + warmup > 4 else 0.25}


def plots_dir(args) -> str | None:
    if args.plots:
        return args.plots
    if args.json:
        return os.path.dirname(os.path.abspath(args.json))
    return None


def main(args: argparse.Namespace) -> int:
    systems = args.systems
    if args.distribution == "latest" and args.workload not in ("D",):
        print("note: 'latest' reads what was inserted last; only workload D inserts",
              file=sys.stderr)
    skipped: dict[str, str] = {}
    # The multi-region mix runs on three regions with simulated WAN latency, Meridian only.
    mix = args.workload == "regions"
    # None: the target's default (a cluster started here: us-east; --nodes: the cluster's).
    regions = MIX_REGIONS if mix else None
    if mix and "etcd" in systems:
        systems = [s for s in systems if s != "etcd"]
        skipped["etcd"] = "not applicable: the multi-region mix needs regions"
        if not systems:
            raise SystemExit("error: the regions workload runs on Meridian only")
    want_plots = plots_dir(args) is not None
    check_dependencies(want_plots)
    check_outputs(args)
    preset = QUICK if args.quick else FULL
    common = resolve_common(args, preset)
    duration, warmup, records = common["duration"], common["warmup"], common["records"]
    clients = args.clients or list(preset["clients"])
    repeat = args.repeat or preset["repeat"]
    fractions = [] if args.no_open else (args.open_fractions or list(preset["fractions"]))
    thetas = args.sweep_theta or [args.theta]
    sweep = args.sweep_theta is not None
    base = args.workdir or str(_common.RESULTS_DIR.parent)
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-ycsb-", dir=base)
    grace = min(10.0, max(2.0, 2 * duration))
    started = time.time()
    machine = _common.describe_machine(base)
    results: list[dict] = []
    systems_info: dict[str, dict] = {}
    selftest_row = None
    bank = args.workload == "bank"

    def workload_spec(theta: float, first_insert: int | None = None) -> dict:
        return {"workload": args.workload, "records": records,
                "distribution": args.distribution, "theta": theta,
                "value_size": args.value_size, "max_scan": args.max_scan,
                "first_insert": first_insert}

    def inserted_up_to(row: dict, first_insert: int) -> int:
        """The first record the next run on the same cluster may insert."""
        return max(first_insert, row.pop(NEXT_FREE_RECORD, None) or first_insert)

    def row_meta(system: str, mode: str, c: int, theta: float) -> dict:
        return {"system": system, "workload": args.workload, "mode": mode, "clients": c,
                "distribution": args.distribution or WORKLOADS[args.workload].distribution,
                "theta": theta, "value_size": args.value_size, "records": records,
                "sweep": "theta" if sweep else None}

    from .loadproc import LoadError
    from .targets import DEFAULT_REGIONS, TargetError, TargetUnavailable

    failures: list[dict] = []
    regions_run = list(regions or DEFAULT_REGIONS)  # those of the Meridian cluster, once open
    unreached: set[str] = set()  # systems whose cluster did not start or answer

    def fail(system: str, mode: str, c: int, theta: float, rep: int, exc: Exception, *,
             rate: float | None = None) -> None:
        _common.note_failure(failures, exc, system=system, mode=mode, clients=c, theta=theta,
                             offered_ops_per_s=rate, repetition=rep + 1)

    try:
        # Load generator self-test: same clients and processes, a server that does nothing;
        # first, while no cluster runs or shuts down beside it.
        if not args.no_selftest:
            c = max(clients)
            selftest_row = selftest(c, args.load_procs or default_load_procs(c),
                                    min(duration, 3.0), min(warmup, 1.0),
                                    workload_spec(thetas[0]), workdir, args.seed)
            print(f"load generator self-test (no-op server): {selftest_row['ops_per_s']:.0f} "
                  f"ops/s", file=sys.stderr)
        # Phase 1: closed loops, each system on a fresh cluster.
        for si, system in enumerate(systems):
            try:
                with open_target(system, args, workdir, regions, wan=mix, mix=mix) as target:
                    if system == "meridian":
                        regions_run = list(target.drivers)
                    load_s = load_records(target.driver, records, args.value_size, bank)
                    print(f"{system}: loaded {records} records in {load_s} s", file=sys.stderr)
                    inserted = 0  # bytes the runs on this cluster inserted
                    first_insert = records  # records the runs before inserted come first
                    for theta in thetas:
                        for c in clients:
                            reps = []
                            for rep in range(repeat):
                                load = LoadSpec("closed", c, duration, warmup,
                                                interval_s=common["interval"], grace_s=grace)
                                procs = args.load_procs or default_load_procs(c)
                                label = f"{system} closed c={c} θ={theta:g} #{rep + 1}"
                                spy = (args.py_spy if system == "meridian" and c == max(clients)
                                       and rep == 0 and theta == thetas[0] else None)
                                xr0 = _cross_bytes(target)
                                try:
                                    with py_spy(target.leader_pid, spy,
                                                warmup + duration) as pr:
                                        row = measure(target, target.driver,
                                                      workload_spec(theta, first_insert),
                                                      load, procs, workdir, label=label,
                                                      seed=args.seed + rep)
                                except LoadError as exc:
                                    fail(system, "closed", c, theta, rep, exc)
                                    continue
                                first_insert = inserted_up_to(row, first_insert)
                                row["cross_region_bytes_per_op"] = _per_op(
                                    xr0, _cross_bytes(target), row)
                                row["profiled"] = pr is not None  # py-spy costs the leader
                                inserted += row["inserted_bytes"]
                                reps.append(row)
                                print(f"{label}: {row['ops_per_s']:.0f} ops/s p50 "
                                      f"{row['p50_ms']} p99 {row['p99_ms']} ms aborts "
                                      f"{row['abort_rate']:.2%} errors {row['errors']}",
                                      file=sys.stderr)
                            if reps:
                                results.append({**row_meta(system, "closed", c, theta),
                                                **_median_row(reps)})
                    systems_info[system] = {
                        "kind": target.kind, "version": target.version,
                        "processes": len(target.pids), "notes": target.notes,
                        "load_seconds": load_s,
                        "rss_bytes_end": rss_bytes(target.pids) if target.pids else None,
                        "storage": storage_figures(target, records, args.value_size,
                                                   bank=bank, inserted_bytes=inserted),
                        "cross_region_bytes_per_txn": _median_of(
                            r.get("cross_region_bytes_per_op") for r in results
                            if r["system"] == system and r["mode"] == "closed"),
                        "cross_region_bytes_reason": (
                            CROSS_REGION_REASON if system == "meridian" else
                            "single-region peer: not applicable"),
                    }
            except TargetUnavailable as exc:
                skipped[system] = str(exc)
                print(f"{system}: {exc}", file=sys.stderr)
            except TargetError as exc:
                _common.note_failure(failures, exc, system=system, mode="closed")
                unreached.add(system)
        best = {s: max((r["ops_per_s"] for r in results if r["system"] == s
                        and r["mode"] == "closed"), default=None) for s in systems}
        # Phase 2: open loops at the same absolute rates for every system.
        top = max((v for v in best.values() if v), default=None)
        # Each rate with the fraction it came from: compare matches open-loop rows of two
        # runs on the fraction, their rates depending on each run's own best throughput.
        offered: dict[float, float] = {}
        for f in sorted(fractions) if top else []:
            offered.setdefault(max(1.0, round(f * top, 0)), f)
        rates = sorted(offered)
        for system in systems:
            if system in skipped or system in unreached or not rates:
                continue
            try:
                with open_target(system, args, workdir, regions, wan=mix, mix=mix) as target:
                    load_records(target.driver, records, args.value_size, bank)
                    c = max(clients)
                    first_insert = records
                    for rate in rates:
                        load = LoadSpec("open", c, duration, warmup, rate=rate,
                                        arrival=args.arrival, interval_s=common["interval"],
                                        grace_s=grace)
                        procs = args.load_procs or default_load_procs(c)
                        label = f"{system} open {rate:.0f}/s"
                        try:
                            row = measure(target, target.driver,
                                          workload_spec(thetas[0], first_insert), load,
                                          procs, workdir, label=label, seed=args.seed)
                        except LoadError as exc:
                            fail(system, "open", c, thetas[0], 0, exc, rate=rate)
                            continue
                        first_insert = inserted_up_to(row, first_insert)
                        row["offered_ops_per_s"] = rate
                        row["offered_fraction"] = offered[rate]
                        results.append({**row_meta(system, "open", c, thetas[0]),
                                        **_median_row([row])})
                        print(f"{label}: {row['ops_per_s']:.0f} ops/s p50 {row['p50_ms']} "
                              f"p99 {row['p99_ms']} ms late {row['late']}", file=sys.stderr)
            except TargetError as exc:
                _common.note_failure(failures, exc, system=system, mode="open")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    doc = {
        "schema": _common.SCHEMA,
        "benchmark": "ycsb",
        "command": "python -m bench " + " ".join(getattr(args, "argv", []) or sys.argv[1:]),
        "machine": {**machine, "load_average_end": _common.load_average()},
        "config": {"quick": bool(args.quick), "workload": args.workload,
                   "mix": dict(WORKLOADS[args.workload].ops),
                   "distribution": args.distribution or WORKLOADS[args.workload].distribution,
                   "theta": args.theta, "sweep_theta": args.sweep_theta,
                   "records": records, "value_size": args.value_size, "key_size": 16,
                   "duration_s": duration, "warmup_s": warmup, "repeat": repeat,
                   "clients": clients, "open_fractions": fractions, "open_rates": rates
                   if results else [], "arrival": args.arrival,
                   "load_processes": args.load_procs or "auto (1 below 16 clients, else 2)",
                   "target": "external" if args.nodes else args.target,
                   "nodes_per_region": args.nodes_per_region, "systems": systems,
                   "regions": regions_run,
                   "wan_one_way_ms": "35/70/110 (us-east:eu-west, us-east:ap-south, "
                                     "eu-west:ap-south)" if mix else "none"},
        "systems": systems_info,
        "skipped": skipped,
        "failures": failures,
        "loadgen_selftest": selftest_verdict(selftest_row, best.get("meridian")
                                             if results else None),
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
        "targets": targets(results, args.workload),
    }
    print_results(doc)
    out_dir = plots_dir(args)
    if out_dir and results:
        from .plots import plot_ycsb, shown_path

        stem = os.path.splitext(os.path.basename(args.json))[0] if args.json else \
            f"ycsb-{args.workload}"
        doc["plots"] = [shown_path(x) for x in plot_ycsb(doc, out_dir, stem)]
        for p in doc["plots"]:
            print(f"wrote {p}")
    if args.json:
        _common.write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 1 if failures else 0


def print_results(doc: dict) -> None:
    print(f"{'system':<9} {'mode':<6} {'c':>4} {'offered':>8} {'ops/s':>9} {'p50':>8} "
          f"{'p99':>8} {'p99.9':>8} {'aborts':>7} {'srv cpu/1k':>10}")
    for r in doc["results"]:
        cpu = r.get("server_cpu_s_per_1k_ops")
        print(f"{r['system']:<9} {r['mode']:<6} {r['clients']:>4} "
              f"{r.get('offered_ops_per_s') or '':>8} {r['ops_per_s']:>9.0f} "
              f"{r['p50_ms'] or float('nan'):>8.2f} {r['p99_ms'] or float('nan'):>8.2f} "
              f"{r['p999_ms'] or float('nan'):>8.2f} {r['abort_rate']:>7.2%} "
              f"{'n/a' if cpu is None else f'{cpu:.3f} s':>10}")
    for r in doc["results"]:
        if r.get("errors") or r.get("late"):
            rate = f" at {r['offered_ops_per_s']:.0f}/s" if r.get("offered_ops_per_s") else ""
            print(f"  {r['system']} {r['mode']} c={r['clients']}{rate}: {r.get('errors') or 0} "
                  f"errors, {r.get('late') or 0} late (last error: {r.get('last_error')})")
    st = doc.get("loadgen_selftest")
    if st and st["ratio"] is None:  # no Meridian throughput to compare with
        print(f"  load generator self-test: {st['ops_per_s']:.0f} ops/s against a no-op server "
              f"(need >= 5x meridian's best: n/a, meridian not measured)")
    elif st:
        print(f"  load generator self-test: {st['ops_per_s']:.0f} ops/s against a no-op server "
              f"= {st['ratio']}x meridian's best (need >= 5: "
              f"{'met' if st['met'] else 'NOT met'})")
    for t in doc["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        print(f"  target {t['target']}: {t['value']} ({mark})")
    for f in doc.get("failures", ()):
        # A run's failure names the run; a target's (the cluster did not start or answer)
        # only the system and the phase.
        run = f"run {f['repetition']} of " if f.get("repetition") else ""
        clients = f" c={f['clients']}" if f.get("clients") else ""
        rate = f" at {f['offered_ops_per_s']:.0f}/s" if f.get("offered_ops_per_s") else ""
        print(f"  {run}{f['system']} {f['mode']}{clients}{rate} failed: {f['error']}")
