"""``python -m bench raft``: durable replicated puts, Meridian's Raft against its peers.

Workload (the same for every system, in one run): three member processes on 127.0.0.1, a
replicated key-value map, 16-byte keys and 100-byte values, closed-loop clients at concurrency
1, 16 and 128 each sending put after put to the leader and waiting for its acknowledgement. The
load comes from ``bench/peers/loadgen.py`` (one epoll loop per load process, two processes from
16 clients on), which speaks each system's own protocol, so every system is measured by the same
client code.

- **meridian**: three ``bench.raftkv`` nodes (``raft.driver`` over ``raft.storage``: every
  acknowledged put is fsynced on a majority; followers learn the commit index from the next
  append or heartbeat, ``broadcast_commit=False``; each new entry goes at once to the follower
  a commit needs, the other follower receives its batch at each heartbeat,
  ``lazy_followers=True``), client protocol of ``bench.raftkv``;
- **pysyncobj** / **pysyncobj-batch**: PySyncObj 0.3.x with its journal file, batching off /
  on (``bench.raft_peers``); it never fsyncs, so its puts are not durable;
- **etcd**: three Debian ``etcd-server`` members, v3 HTTP/JSON gateway (fsyncs: durable).

Every system and concurrency runs ``--repeat`` times, round-robin; throughput is the median over
repetitions; p50/p99 come from the repetition with the median throughput. ``--quick`` runs one
short repetition. A run that cannot be measured (a member that does not start) is listed under
``failures`` in the results, the other rows are kept, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import trio

from . import _common, raft_peers
from .raftcluster import ClusterError, LocalCluster
from .raftkv import KVClient

__all__ = ["add_parser", "main", "run_meridian", "targets"]

SYSTEMS = ("meridian", "pysyncobj", "pysyncobj-batch", "etcd")
CONCURRENCY = (1, 16, 128)


async def _find_leader(cluster: LocalCluster, timeout: float = 30.0) -> int:
    async with KVClient(cluster.client_addrs) as client:
        with trio.fail_after(timeout):
            while True:
                for node in range(1, cluster.n + 1):
                    try:
                        with trio.move_on_after(1):
                            st = await client.status(node)
                            if st["role"] == "leader":
                                # Warm the path: one committed put before measuring.
                                await client.put(b"warmup-key-00000", b"v" * 100)
                                return node
                    except (OSError, EOFError, trio.BrokenResourceError):
                        pass
                await trio.sleep(0.05)


def run_meridian(concurrency: int, *, duration: float, warmup: float, workdir: str) -> dict:
    """One measurement of Meridian: a fresh three-node cluster, closed-loop puts at its leader."""
    rundir = tempfile.mkdtemp(prefix="meridian-", dir=workdir)
    procs = raft_peers.Procs(rundir)
    try:
        with LocalCluster(rundir, 3) as cluster:
            leader = trio.run(_find_leader, cluster)
            latencies, ops, errors = raft_peers.run_load(
                procs, "raftkv", cluster.client_ports[leader], concurrency, duration, warmup,
                rundir)
        return raft_peers.make_result("meridian", concurrency, duration, True, latencies, ops,
                                  errors)
    finally:
        procs.stop_all()
        shutil.rmtree(rundir, ignore_errors=True)


def _run_one(system: str, concurrency: int, duration: float, warmup: float,
             workdir: str) -> dict | None:
    if system == "meridian":
        return run_meridian(concurrency, duration=duration, warmup=warmup, workdir=workdir)
    if system in ("pysyncobj", "pysyncobj-batch"):
        if not raft_peers.pysyncobj_available():
            return None
        return raft_peers.run_pysyncobj(concurrency, batch=system == "pysyncobj-batch",
                                        duration=duration, warmup=warmup, workdir=workdir)
    if system == "etcd":
        if not raft_peers.etcd_available():
            return None
        return raft_peers.run_etcd(concurrency, duration=duration, warmup=warmup,
                                   workdir=workdir)
    raise ValueError(f"unknown system {system!r}")


def targets(results: list[dict]) -> list[dict]:
    """The issue's targets, evaluated on one run's results (missing peers: not evaluated)."""
    by = {(r["system"], r["concurrency"]): r for r in results}
    out = []

    def add(name, value, limit, ok):
        out.append({"target": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(ok)})

    m1 = by.get(("meridian", 1))
    p1 = by.get(("pysyncobj", 1))
    if m1:
        add("c=1 meridian p50 <= 1.0 ms", m1["p50_ms"], 1.0, m1["p50_ms"] <= 1.0)
        if p1:
            ratio = m1["p50_ms"] / p1["p50_ms"]
            add("c=1 meridian p50 <= 1.5 x pysyncobj p50", round(ratio, 2), 1.5, ratio <= 1.5)
    m128 = by.get(("meridian", 128))
    if m128:
        best_pso = max((by[(s, 128)]["ops_per_s"] for s in ("pysyncobj", "pysyncobj-batch")
                        if (s, 128) in by), default=None)
        if best_pso:
            ratio = m128["ops_per_s"] / best_pso
            add("c=128 meridian ops/s >= 1.5 x best pysyncobj", round(ratio, 2), 1.5,
                ratio >= 1.5)
        etcd = by.get(("etcd", 128))
        if etcd:
            ratio = m128["ops_per_s"] / etcd["ops_per_s"]
            add("c=128 meridian ops/s >= 3 x etcd", round(ratio, 2), 3.0, ratio >= 3.0)
        add("c=128 meridian p99 <= 25 ms", m128["p99_ms"], 25.0, m128["p99_ms"] <= 25.0)
        add("moonshot: >= 15,000 durable commits/s", m128["ops_per_s"], 15000,
            m128["ops_per_s"] >= 15000)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "raft",
        help="durable replicated puts: Meridian's Raft vs PySyncObj and etcd",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--quick", action="store_true",
                   help="one short repetition (about a minute for all systems)")
    p.add_argument("--json", metavar="FILE", help="write the results document here")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   type=_common.comma_list(valid=SYSTEMS.__contains__,
                                           expect=f"one of {','.join(SYSTEMS)}"),
                   help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                   type=_common.comma_list(int, valid=lambda c: 1 <= c <= 1024,
                                           expect="a whole number in 1..1024"),
                   help="comma-separated client counts (default 1,16,128)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 3 quick, "
                   "8 full)")
    p.add_argument("--warmup", type=float, help="seconds excluded at the start (default 1/2)")
    p.add_argument("--repeat", type=int, help="repetitions (default 1 quick, 3 full)")
    p.add_argument("--workdir", help="where data directories go (default: a temporary "
                   "directory on the same file system as bench/results)")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    systems, levels = args.systems, args.concurrency
    duration = args.duration or (3.0 if args.quick else 8.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    repeat = args.repeat or (1 if args.quick else 3)
    if duration <= 0 or warmup < 0 or repeat < 1:
        raise SystemExit("--duration must be > 0, --warmup >= 0, --repeat >= 1")
    base = args.workdir or str(_common.RESULTS_DIR.parent)
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-raft-", dir=base)
    runs: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[str, str] = {}
    failures: list[dict] = []
    started = time.time()
    try:
        for rep in range(repeat):
            order = systems[rep % len(systems):] + systems[: rep % len(systems)]
            for c in levels:
                for system in order:
                    if system in skipped:
                        continue
                    print(f"[{rep + 1}/{repeat}] {system} c={c} ...", end=" ", flush=True,
                          file=sys.stderr)
                    try:
                        r = _run_one(system, c, duration, warmup, workdir)
                    except raft_peers.PeerUnavailable as exc:
                        skipped[system] = str(exc)
                        print(str(exc), file=sys.stderr)
                        continue
                    except (raft_peers.PeerError, ClusterError, OSError) as exc:
                        _common.note_failure(failures, exc, system=system, concurrency=c,
                                             repetition=rep + 1)
                        continue
                    if r is None:
                        skipped[system] = "skipped: not installed"
                        print("skipped: not installed", file=sys.stderr)
                        continue
                    runs.setdefault((system, c), []).append(r)
                    print(f"{r['ops_per_s']:.0f} ops/s p50 {r['p50_ms']} ms "
                          f"p99 {r['p99_ms']} ms", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = []
    for (system, c), rs in runs.items():
        rs = sorted(rs, key=lambda r: r["ops_per_s"])
        med = dict(rs[len(rs) // 2])
        med["ops_per_s"] = round(_common.median(r["ops_per_s"] for r in rs), 1)
        med["repetitions"] = len(rs)
        results.append(med)
    results.sort(key=lambda r: (r["concurrency"], SYSTEMS.index(r["system"])))
    doc = {
        "schema": _common.SCHEMA,
        "benchmark": "raft",
        "command": "python -m bench raft " + " ".join(getattr(args, "argv", [])[1:]),
        "machine": _common.describe_machine(base),
        "config": {"quick": bool(args.quick), "duration_s": duration, "warmup_s": warmup,
                   "repeat": repeat, "systems": systems, "concurrency": levels},
        "versions": {"pysyncobj": raft_peers.pysyncobj_version(),
                     "etcd": raft_peers.etcd_version()},
        "skipped": skipped,
        "failures": failures,
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
        "targets": targets(results),
    }
    for r in results:
        print(f"{r['system']:>16} c={r['concurrency']:<4} {r['ops_per_s']:>9.0f} ops/s  "
              f"p50 {r['p50_ms']:>7.3f} ms  p99 {r['p99_ms']:>7.3f} ms  "
              f"durable={r['durable']}")
    for t in doc["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        print(f"  target {t['target']}: {t['value']} ({mark})")
    for f in failures:
        print(f"  run {f['repetition']} of {f['system']} c={f['concurrency']} failed: "
              f"{f['error']}")
    if args.json:
        _common.write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 1 if failures else 0
