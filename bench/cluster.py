"""``python -m bench cluster``: transactions on a local multi-process cluster.

The cluster is the one ``meridian cluster up`` starts: three regions × three node processes on
this machine, with simulated one-way WAN latencies of 35, 70 and 110 ms between the regions.
Each region has a keyspace homed there, preloaded with 1,000 keys of 100 bytes. Clients in every
region run closed-loop read-modify-write transactions on their own region's keyspace (inside
the home region: no WAN on the path):

- ``single-key``: read one key, write it back changed, commit;
- ``4-key``: read four distinct keys, write all four, commit.

Keys are drawn uniformly, so conflicts are rare but possible; a conflict is retried by the
client library and counted in ``abort_rate`` (aborted attempts / all attempts). Latency is per
committed transaction, retries included. Each workload and concurrency (1 and 32 clients per
region) runs on the same cluster for ``--duration`` seconds after ``--warmup``, twice:

- each region alone (``regions_at_once`` 1), the others idle, one region after another: what
  a region's clients see when the region has machines of its own, as in a deployment;
- every region at once (``regions_at_once`` 3): here the nine node processes and the load of
  all three regions share this one machine's cores and disk. Each region's clients run in a
  load process of their own, as each region's application would on its own machines, all
  started at one instant.

The target (single-key p50 at concurrency 1, the worst region) is reported for both.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from engine.client import connect
from engine.errors import KeyspaceExistsError, TransactionConflictError
from engine.procs import ClusterProcesses, cluster_up, wait_ready

from . import _common
from .loadproc import FINISH_SLACK_S, READY_TIMEOUT_S

__all__ = ["add_parser", "main", "targets"]

WORKLOADS = ("single-key", "4-key")
CONCURRENCY = (1, 32)
KEYS = 1000
VALUE = b"v" * 100
START_DELAY_S = 0.5


async def _load(cluster, addresses) -> None:
    regions = cluster.region_names
    async with connect(addresses[regions[0]], region=regions[0]) as db:
        for r in regions:
            ks = f"bench-{r}"
            with contextlib.suppress(KeyspaceExistsError):
                await db.create_keyspace(ks, home_region=r)
            for lo in range(0, KEYS, 200):
                async with db.transaction() as tx:
                    for i in range(lo, min(KEYS, lo + 200)):
                        await tx.put(ks, b"key-%06d" % i, VALUE)


async def _measure(addresses, regions, workload: str, concurrency: int, duration: float,
                   warmup: float, seed: int, start: Callable[[], Awaitable[float]] | None = None,
                   ) -> list[dict]:
    """Runs ``regions``' clients in this process; their rows.

    ``start``: called once every region's clients are connected, returns the wall-clock
    instant (``time.time()``) at which they start; by default half a second later."""
    nkeys = 1 if workload == "single-key" else 4
    lat: dict[str, list[float]] = {r: [] for r in regions}
    attempts = {r: 0 for r in regions}
    aborts = {r: 0 for r in regions}
    go = trio.Event()
    start_at = measure_from = stop_at = math.inf

    async def client(db, region, rng):
        ks = f"bench-{region}"
        await go.wait()
        await trio.sleep_until(start_at)
        while trio.current_time() < stop_at:
            keys = [b"key-%06d" % k for k in rng.sample(range(KEYS), nkeys)]
            tries = 0

            async def body(tx):
                nonlocal tries
                tries += 1
                for k in keys:
                    v = await tx.get(ks, k)
                    await tx.put(ks, k, (v or b"")[:99] + b"x")

            t0 = time.perf_counter()
            now = trio.current_time()
            committed = False
            try:
                await db.run_transaction(body)
                committed = True
            except TransactionConflictError:
                pass  # every attempt conflicted: not a committed transaction
            if now >= measure_from and trio.current_time() <= stop_at:
                if committed:
                    lat[region].append((time.perf_counter() - t0) * 1e3)
                attempts[region] += tries
                aborts[region] += tries - (1 if committed else 0)

    async def region_clients(region, task_status=trio.TASK_STATUS_IGNORED):
        async with connect(addresses[region], region=region) as db:
            await db.keyspace(f"bench-{region}")
            task_status.started()
            async with trio.open_nursery() as n:
                for c in range(concurrency):
                    n.start_soon(client, db, region, random.Random(seed * 7919 + c))

    async with trio.open_nursery() as nursery:
        for r in regions:
            await nursery.start(region_clients, r)
        wall = await start() if start is not None else time.time() + START_DELAY_S
        start_at = trio.current_time() + max(0.0, wall - time.time())
        measure_from = start_at + warmup
        stop_at = measure_from + duration
        go.set()
    out = []
    for r in regions:
        v = lat[r]
        out.append({
            "workload": workload, "region": r, "concurrency": concurrency,
            "regions_at_once": len(regions),
            "txn_per_s": round(len(v) / duration, 1),
            "p50_ms": round(_common.percentile(v, 50), 3) if v else None,
            "p99_ms": round(_common.percentile(v, 99), 3) if v else None,
            "abort_rate": round(aborts[r] / attempts[r], 4) if attempts[r] else 0.0,
            "transactions": len(v),
        })
    return out


def _region_process(conn, addresses, region: str, workload: str, concurrency: int,
                    duration: float, warmup: float, seed: int) -> None:
    """A load process's body: ``region``'s clients, started when the parent says (see
    :func:`_measure_apart`). Sends ``("ready", None)`` once connected, then its rows, or an
    error's text."""

    async def start() -> float:
        conn.send(("ready", None))
        return await trio.to_thread.run_sync(conn.recv)  # the parent's start instant

    try:
        rows = trio.run(_measure, addresses, [region], workload, concurrency, duration, warmup,
                        seed, start)
        conn.send(("rows", rows))
    except BaseException as exc:  # reported to the parent, which raises it
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _receive(conn, proc, region: str, expect: str, timeout: float):
    if not conn.poll(timeout):
        raise RuntimeError(f"{region}'s load process sent nothing in {timeout:.0f} s")
    try:
        kind, value = conn.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"{region}'s load process ended (exit status {proc.exitcode}) "
                           f"without reporting") from None
    if kind == "error":
        raise RuntimeError(f"{region}'s load process failed: {value}")
    if kind != expect:
        raise RuntimeError(f"{region}'s load process sent {kind!r}, expected {expect!r}")
    return value


def _measure_apart(addresses, regions, workload: str, concurrency: int, duration: float,
                   warmup: float, seed: int) -> list[dict]:
    """Every region at once, each region's clients in a load process of their own, started at
    one wall-clock instant: as in a deployment, where each region's application runs on its
    own machines, no region's clients wait for another's to be served by a shared Python
    interpreter (one process for all three added 6-11 % to the single-key p50 here).
    Stops every process it started."""
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    try:
        for region in regions:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_region_process, name=f"bench-cluster-{region}",
                               args=(child_end, addresses, region, workload, concurrency,
                                     duration, warmup, seed), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        for region, conn, proc in zip(regions, conns, procs):
            _receive(conn, proc, region, "ready", READY_TIMEOUT_S)
        wall = time.time() + START_DELAY_S
        for conn in conns:
            conn.send(wall)
        rows: list[dict] = []
        for region, conn, proc in zip(regions, conns, procs):
            rows += _receive(conn, proc, region, "rows",
                             START_DELAY_S + warmup + duration + FINISH_SLACK_S)
        for row in rows:
            row["regions_at_once"] = len(regions)
        return rows
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def targets(results: list[dict]) -> list[dict]:
    """The single-key p50 target at concurrency 1, for each region alone and for every region
    at once."""
    c1 = [r for r in results if r["workload"] == "single-key" and r["concurrency"] == 1]
    out = []
    for how, rows in (("each region alone", [r for r in c1 if r["regions_at_once"] == 1]),
                      ("every region at once, on this one machine",
                       [r for r in c1 if r["regions_at_once"] > 1])):
        if not rows:
            continue
        # A region that committed nothing is the worst: its latency is not a number.
        p50s = [r["p50_ms"] for r in rows]
        worst = None if None in p50s else max(p50s)
        out.append({"target": f"home-region single-key p50 <= 3 ms at concurrency 1 (worst "
                              f"region; {how})",
                    "value": worst, "limit": 3.0, "met": worst is not None and worst <= 3.0})
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cluster",
        help="transactions on a local 3x3 multi-process cluster with simulated WAN",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--quick", action="store_true", help="short runs (about two minutes)")
    p.add_argument("--json", metavar="FILE", help="write the results document here")
    p.add_argument("--duration", type=float, help="measured seconds per run (3 quick, 10 full)")
    p.add_argument("--warmup", type=float, help="seconds excluded at the start (1 quick, 2 full)")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                   type=_common.comma_list(int, valid=lambda c: 1 <= c <= 256,
                                           expect="a whole number in 1..256"),
                   help="comma-separated clients per region (default 1,32)")
    p.add_argument("--regions", default="us-east,eu-west,ap-south",
                   type=_common.comma_list())
    p.add_argument("--nodes-per-region", type=int, default=3)
    p.add_argument("--workdir", help="where the cluster directory goes (default: beside "
                   "bench/results, on the same file system)")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    levels, regions = args.concurrency, tuple(args.regions)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if duration <= 0 or warmup < 0:
        raise SystemExit("--duration must be > 0 and --warmup >= 0")
    base = args.workdir or str(_common.RESULTS_DIR.parent)
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-cluster-", dir=base)
    procs = ClusterProcesses(workdir)
    started = time.time()
    results: list[dict] = []
    try:
        procs = cluster_up(workdir, regions=regions, nodes_per_region=args.nodes_per_region)
        cluster = procs.load_cluster()
        addresses = {r: [f"{n.client_host}:{n.client_port}" for n in cluster.nodes_in(r)]
                     for r in regions}
        trio.run(wait_ready, cluster)
        trio.run(_load, cluster, addresses)
        runs = [[r] for r in regions] + ([list(regions)] if len(regions) > 1 else [])
        for workload in WORKLOADS:
            for c in levels:
                for at_once in runs:
                    print(f"{workload} c={c} {'+'.join(at_once)} ...", end=" ", flush=True,
                          file=sys.stderr)
                    if len(at_once) > 1:
                        rs = _measure_apart(addresses, at_once, workload, c, duration, warmup,
                                            len(results) + 1)
                    else:
                        rs = trio.run(_measure, addresses, at_once, workload, c, duration,
                                      warmup, len(results) + 1)
                    results.extend(rs)
                    print("  ".join(f"{r['region']} {r['txn_per_s']:.0f}/s p50 {r['p50_ms']} ms"
                                    for r in rs), file=sys.stderr)
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    doc = {
        "schema": _common.SCHEMA,
        "benchmark": "cluster",
        "command": "python -m bench cluster " + " ".join(getattr(args, "argv", [])[1:]),
        "machine": _common.describe_machine(base),
        "config": {"quick": bool(args.quick), "duration_s": duration, "warmup_s": warmup,
                   "regions": list(regions), "nodes_per_region": args.nodes_per_region,
                   "concurrency": levels, "keys_per_keyspace": KEYS,
                   "value_bytes": len(VALUE), "wan_latency_ms": "35/70/110 one-way"},
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
        "targets": targets(results),
    }
    print(f"{'workload':<11} {'region':<9} {'c':>3} {'at once':>7} {'txn/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'aborts':>7}")
    for r in results:
        print(f"{r['workload']:<11} {r['region']:<9} {r['concurrency']:>3} "
              f"{r['regions_at_once']:>7} "
              f"{r['txn_per_s']:>8.1f} {r['p50_ms'] or float('nan'):>8.2f} "
              f"{r['p99_ms'] or float('nan'):>8.2f} {r['abort_rate']:>7.2%}")
    for t in doc["targets"]:
        print(f"  target {t['target']}: {t['value']} ({'met' if t['met'] else 'NOT met'})")
    if args.json:
        _common.write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0
