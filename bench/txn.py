"""``python -m bench txn``: transactions across regions on a local multi-process cluster.

The cluster is the one ``bench cluster`` uses: three regions × three node processes on this
machine, with simulated one-way WAN latencies of 35, 70 and 110 ms between the regions (the
client library adds them to each request and each reply). Each region has a keyspace homed
there, preloaded with 1,000 keys of 100 bytes. Clients in every region, all regions at once,
run closed-loop transactions:

- ``home``: read-modify-write of one key of the client's own region's keyspace;
- ``remote``: the same on the keyspace of the farthest region;
- ``two-region``: one key of the home keyspace and one of the farthest region's, read and
  both written (two-phase commit, the decision on the home region's group);
- ``three-region``: one key of each region's keyspace;
- ``regional``: blind writes to a keyspace created with ``mode="regional"`` (every region
  writes locally); skipped, with the reason, when the cluster refuses to create one. With it
  comes the replication lag: a key written in one region, polled with reads
  from a client in another until the value appears (the time after the commit returned);
- ``contention-<θ>``: two distinct keys of the home keyspace drawn from a zipfian
  distribution of parameter θ over its first 100 keys, read (one round trip) and written.

A conflict is retried by ``run_transaction`` and counted in ``abort_rate`` (aborted attempts
/ all attempts). ``p50_ms``/``p99_ms`` are per committed transaction, reads and retries
included; ``commit_p50_ms`` is the ``commit`` call alone (of the attempt that committed), and
``wan_rtts_per_commit`` divides it by the round-trip time to the farthest region the
transaction touches (0 when it touches only its own region).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

from engine.client import Database, Transaction, connect
from engine.config import ClusterConfig
from engine.errors import KeyspaceExistsError, MeridianError, TransactionConflictError
from engine.procs import ClusterProcesses, cluster_up, wait_ready

from . import _common
from .cluster import KEYS, _load

__all__ = ["add_parser", "main", "targets", "zipf_cdf", "zipf_sample"]

WORKLOADS = ("home", "remote", "two-region", "three-region", "regional")
CONCURRENCY = (1, 8)
THETAS_QUICK = (0.0, 0.5, 0.9, 0.99)
THETAS_FULL = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
CONTENTION_KEYS = 100
CONTENTION_CONCURRENCY = 8
REGIONAL_KEYSPACE = "bench-regional"
MAX_TXNS_PER_CLIENT = 1_000_000
"""A bound on one client's loop besides the clock."""
TAIL_S = 10.0
"""How long after the end of a run a transaction still in flight may finish before it is
cancelled (its retries' backoff is bounded by ``run_transaction``)."""
ERROR_PAUSE_S = 0.05
"""Pause after a transaction failed with something other than a conflict (no busy loop)."""
LAG_POLL_S = 0.005
LAG_TIMEOUT_S = 5.0
CROSS_REGION_RTTS = 1.5
CROSS_REGION_SLACK_MS = 10.0
REGIONAL_COMMIT_MS = 5.0
REGIONAL_LAG_SLACK_MS = 100.0

Body = Callable[[Transaction], Awaitable[None]]


def _home_keyspace(region: str) -> str:
    return f"bench-{region}"  # created and loaded by bench.cluster._load


def _key(i: int) -> bytes:
    return b"key-%06d" % i


def _bump(value: bytes | None) -> bytes:
    return (value or b"")[:99] + b"x"


# ------------------------------------------------------------------------------------ zipfian


def zipf_cdf(n: int, theta: float) -> list[float]:
    """Cumulative weights of ranks 0..n-1 with P(rank i) ∝ 1 / (i + 1)^θ (θ 0: uniform)."""
    if n < 1 or theta < 0:
        raise ValueError("zipf_cdf needs n >= 1 and theta >= 0")
    return list(itertools.accumulate(1.0 / (i + 1) ** theta for i in range(n)))


def zipf_sample(cdf: list[float], rng: random.Random) -> int:
    return min(len(cdf) - 1, bisect.bisect_right(cdf, rng.random() * cdf[-1]))


def _distinct_pair(cdf: list[float], rng: random.Random) -> list[int]:
    first = zipf_sample(cdf, rng)
    for _ in range(64):  # bounded: the hottest key of 100 has P < 0.2 at θ = 0.99
        second = zipf_sample(cdf, rng)
        if second != first:
            return [first, second]
    return [first, (first + 1) % len(cdf)]


# ----------------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class _Topology:
    regions: tuple[str, ...]
    one_way_ms: dict[tuple[str, str], float]

    @classmethod
    def of(cls, cluster: ClusterConfig, regions: tuple[str, ...]) -> _Topology:
        return cls(regions, {(a, b): cluster.latency_ms(a, b) for a in regions for b in regions})

    def by_distance(self, region: str) -> list[str]:
        """The other regions, nearest first (ties in configuration order)."""
        others = [r for r in self.regions if r != region]
        return sorted(others, key=lambda r: (self.one_way_ms[(region, r)],
                                             self.regions.index(r)))

    def participants(self, workload: str, region: str) -> list[str]:
        """The regions whose keyspaces a transaction of ``workload`` from ``region`` uses,
        in the order it reads them."""
        far = self.by_distance(region)
        if workload == "remote":
            return [far[-1]]
        if workload == "two-region":
            return [region, far[-1]]
        if workload == "three-region":
            return [region, *far[-2:]]
        return [region]

    def rtt_ms(self, region: str, participants: list[str]) -> float:
        return 2 * max(self.one_way_ms[(region, p)] for p in participants)

    def pairs(self) -> dict[str, float]:
        return {f"{a}:{b}": self.one_way_ms[(a, b)]
                for i, a in enumerate(self.regions) for b in self.regions[i + 1:]}


def _make_body(workload: str, topo: _Topology, region: str, rng: random.Random,
               cdf: list[float] | None) -> Body:
    """The transaction one client runs next (keys drawn once, the same on every retry)."""
    if workload == "regional":
        key, value = _key(rng.randrange(KEYS)), b"r" * 100

        async def regional(tx: Transaction) -> None:
            await tx.put(REGIONAL_KEYSPACE, key, value)

        return regional
    if workload.startswith("contention-"):
        assert cdf is not None
        ks = _home_keyspace(region)
        keys = [_key(i) for i in _distinct_pair(cdf, rng)]

        async def contention(tx: Transaction) -> None:
            values = await tx.get_many(ks, keys)
            for k, v in zip(keys, values):
                await tx.put(ks, k, _bump(v))

        return contention
    touched = [(_home_keyspace(r), _key(rng.randrange(KEYS)))
               for r in topo.participants(workload, region)]

    async def rmw(tx: Transaction) -> None:
        values = [await tx.get(ks, k) for ks, k in touched]
        for (ks, k), v in zip(touched, values):
            await tx.put(ks, k, _bump(v))

    return rmw


# -------------------------------------------------------------------------------- measurement


@dataclass
class _Tally:
    latency_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    attempts: int = 0
    aborts: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class _Window:
    measure_from: float = 0.0
    stop_at: float = 0.0


async def _run_clients(db: Database, workload: str, topo: _Topology, concurrency: int,
                       window: _Window, go: trio.Event, seed: int, isolation: str,
                       cdf: list[float] | None, tally: _Tally) -> None:
    region = db.region

    async def client(rng: random.Random) -> None:
        await go.wait()
        with trio.move_on_at(window.stop_at + TAIL_S):
            for _ in range(MAX_TXNS_PER_CLIENT):
                if trio.current_time() >= window.stop_at:
                    break
                fn = _make_body(workload, topo, region, rng, cdf)
                tries = 0
                body_done = 0.0

                async def body(tx: Transaction) -> None:
                    nonlocal tries, body_done
                    tries += 1
                    await fn(tx)
                    # run_transaction calls tx.commit() right after this returns.
                    body_done = time.perf_counter()

                began = trio.current_time()
                t0 = time.perf_counter()
                committed = False
                error = ""
                try:
                    await db.run_transaction(body, isolation=isolation)
                    committed = True
                except TransactionConflictError:
                    pass  # every attempt conflicted
                except MeridianError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                if began >= window.measure_from and trio.current_time() <= window.stop_at:
                    tally.attempts += tries
                    tally.aborts += tries - (1 if committed else 0) - (1 if error else 0)
                    if committed:
                        tally.latency_ms.append((t1 - t0) * 1e3)
                        tally.commit_ms.append((t1 - body_done) * 1e3)
                    if error:
                        tally.errors += 1
                        tally.last_error = error
                if error:
                    await trio.sleep(ERROR_PAUSE_S)

    async with trio.open_nursery() as nursery:
        for c in range(concurrency):
            nursery.start_soon(client, random.Random(seed * 7919 + c))


async def _measure(addresses: dict[str, list[str]], topo: _Topology, workload: str,
                   concurrency: int, duration: float, warmup: float, seed: int,
                   isolation: str, cdf: list[float] | None) -> list[dict]:
    """One run: ``concurrency`` clients in every region at once; one result per region."""
    regions = topo.regions
    tallies = {r: _Tally() for r in regions}
    window = _Window()
    go = trio.Event()

    async def region_clients(region: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with connect(addresses[region], region=region) as db:
            names = {_home_keyspace(r) for r in regions}
            if workload == "regional":
                names = {REGIONAL_KEYSPACE}
            for name in sorted(names):
                await db.keyspace(name)  # the catalog lookup is not part of a transaction
            task_status.started()
            await _run_clients(db, workload, topo, concurrency, window, go,
                               seed * 31 + regions.index(region), isolation, cdf,
                               tallies[region])

    async with trio.open_nursery() as nursery:
        for r in regions:
            await nursery.start(region_clients, r)
        # Every region is connected: start them together.
        window.measure_from = trio.current_time() + warmup
        window.stop_at = window.measure_from + duration
        go.set()
    out = []
    for r in regions:
        t = tallies[r]
        parts = topo.participants(workload, r)
        rtt = topo.rtt_ms(r, parts)
        commit_p50 = _common.percentile(t.commit_ms, 50) if t.commit_ms else None
        row = {
            "workload": workload, "region": r, "concurrency": concurrency,
            "txn_per_s": round(len(t.latency_ms) / duration, 1),
            "p50_ms": _round(_common.percentile(t.latency_ms, 50) if t.latency_ms else None),
            "p99_ms": _round(_common.percentile(t.latency_ms, 99) if t.latency_ms else None),
            "abort_rate": round(t.aborts / t.attempts, 4) if t.attempts else 0.0,
            "wan_rtts_per_commit": (0.0 if rtt == 0 else None if commit_p50 is None
                                    else round(commit_p50 / rtt, 3)),
            "commit_p50_ms": _round(commit_p50),
            "commit_p99_ms": _round(_common.percentile(t.commit_ms, 99) if t.commit_ms
                                    else None),
            "transactions": len(t.latency_ms),
            "attempts": t.attempts,
            "errors": t.errors,
            "participants": parts,
            "farthest_rtt_ms": rtt,
        }
        if t.last_error:
            row["last_error"] = t.last_error
        out.append(row)
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


# ------------------------------------------------------------------------------------ regional


async def _create_regional(addresses: dict[str, list[str]], region: str) -> str | None:
    """Creates the regional keyspace; the reason it could not be, or None."""
    async with connect(addresses[region], region=region) as db:
        try:
            await db.create_keyspace(REGIONAL_KEYSPACE, mode="regional")
        except KeyspaceExistsError:
            pass
        except MeridianError as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


async def _replication_lag(addresses: dict[str, list[str]], regions: tuple[str, ...],
                           samples: int) -> dict:
    """Lag from a write's commit in one region to its visibility in another (a strong read
    there: a regional keyspace is read in the reader's own region), ``samples`` per ordered
    pair of regions, one pair at a time: the reader polls every 5 ms, and six pollers at once
    would load the cluster they measure. A write not seen within ``LAG_TIMEOUT_S`` counts
    as that long in the percentiles, and in ``timeouts``. (The nodes' own measure under the
    workloads' load is reported beside it, as ``server_by_pair``.)"""
    lags: dict[str, list[float]] = {}
    timeouts = 0

    async def pair(writer: Database, reader: Database) -> None:
        nonlocal timeouts
        name = f"{writer.region}:{reader.region}"
        lags[name] = []
        for i in range(samples):
            key = b"lag-%s-%s-%d" % (writer.region.encode(), reader.region.encode(), i)
            value = os.urandom(8).hex().encode()
            async with writer.transaction() as tx:
                await tx.put(REGIONAL_KEYSPACE, key, value)
            acked = time.perf_counter()
            seen = None
            with trio.move_on_after(LAG_TIMEOUT_S):
                for _ in range(int(LAG_TIMEOUT_S / LAG_POLL_S) + 1):
                    with contextlib.suppress(MeridianError):
                        got = await reader.read(REGIONAL_KEYSPACE, key)
                        if got == value:
                            seen = time.perf_counter()
                            break
                    await trio.sleep(LAG_POLL_S)
            if seen is None:
                # Not seen within the timeout: its lag is at least that (a lower bound), and
                # leaving it out would make the percentiles look better the more writes fail
                # to replicate.
                timeouts += 1
                lags[name].append(LAG_TIMEOUT_S * 1e3)
            else:
                lags[name].append((seen - acked) * 1e3)

    async with contextlib.AsyncExitStack() as stack:
        dbs = {r: await stack.enter_async_context(connect(addresses[r], region=r))
               for r in regions}
        for db in dbs.values():
            await db.keyspace(REGIONAL_KEYSPACE)
        for w in regions:
            for r in regions:
                if w != r:
                    await pair(dbs[w], dbs[r])
        # The nodes' own measure: origin commit timestamp to the destination's apply, over
        # every regional write they applied (the regional workload's too), unperturbed by
        # the polling above.
        server = (await dbs[regions[0]].statistics())["replication_lag_ms"]
    every = [v for vs in lags.values() for v in vs]
    return {
        "server_by_pair": server,
        "p50": _round(_common.percentile(every, 50)) if every else None,
        "p99": _round(_common.percentile(every, 99)) if every else None,
        "samples": len(every),
        "timeouts": timeouts,
        "by_pair_p50": {k: _round(_common.percentile(v, 50)) if v else None
                        for k, v in lags.items()},
    }


# ------------------------------------------------------------------------------------- targets


def targets(results: list[dict], lag: dict, wan_one_way_ms: dict[str, float]) -> list[dict]:
    """Commit latency against the WAN round trips it needs, at the lowest concurrency (worst
    region per workload); the regional write and its replication lag."""
    out = []
    lowest = min((r["concurrency"] for r in results), default=0)
    for workload in ("remote", "two-region", "three-region"):
        rows = [r for r in results if r["workload"] == workload and r["concurrency"] == lowest]
        if not rows:
            continue
        # A region that committed nothing is the worst: its commit latency is not a number.
        worst = max(rows, key=lambda r: math.inf if r["commit_p50_ms"] is None
                    else r["commit_p50_ms"] - _cross_limit(r))
        limit = round(_cross_limit(worst), 1)
        value = worst["commit_p50_ms"]
        out.append({
            "target": f"{workload} commit p50 <= {CROSS_REGION_RTTS:g} WAN RTT to the farthest "
                      f"participant + {CROSS_REGION_SLACK_MS:g} ms (c={lowest}, worst region "
                      f"{worst['region']})",
            "value": value, "limit": limit,
            "met": value is not None and value <= limit,
        })
    rows = [r for r in results if r["workload"] == "regional" and r["concurrency"] == lowest]
    commits = [r["commit_p50_ms"] for r in rows]
    worst_commit = None if None in commits else max(commits, default=None)
    out.append({
        "target": f"regional write commit p50 <= {REGIONAL_COMMIT_MS:g} ms (c={lowest}, worst "
                  f"region)",
        "value": worst_commit, "limit": REGIONAL_COMMIT_MS,
        "met": (None if not rows else worst_commit is not None
                and worst_commit <= REGIONAL_COMMIT_MS),
    })
    one_way = max(wan_one_way_ms.values(), default=0.0)
    lag_limit = one_way + REGIONAL_LAG_SLACK_MS
    out.append({
        "target": f"regional replication lag p99 <= one-way WAN ({one_way:g} ms) + "
                  f"{REGIONAL_LAG_SLACK_MS:g} ms",
        "value": lag.get("p99"), "limit": lag_limit,
        "met": None if lag.get("p99") is None else lag["p99"] <= lag_limit,
    })
    return out


def _cross_limit(row: dict) -> float:
    return CROSS_REGION_RTTS * row["farthest_rtt_ms"] + CROSS_REGION_SLACK_MS


# ----------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "txn",
        help="cross-region transactions (2PC), regional writes and contention on a local 3x3 "
             "cluster with simulated WAN",
        description=__doc__.partition("\n\n")[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short runs (under two minutes)")
    p.add_argument("--json", metavar="FILE", help="write the results document here")
    p.add_argument("--duration", type=float, help="measured seconds per run (3 quick, 10 full)")
    p.add_argument("--warmup", type=float, help="seconds excluded at the start (1 quick, 2 full)")
    p.add_argument("--concurrency",
                   type=_common.comma_list(int, valid=lambda c: 1 <= c <= 256,
                                           expect="a whole number in 1..256"),
                   help="comma-separated clients per region (default 1,8; full run 1,8,32)")
    p.add_argument("--workloads", default=",".join(WORKLOADS + ("contention",)),
                   type=_common.comma_list(valid=(*WORKLOADS, "contention").__contains__,
                       expect=f"one of {','.join(WORKLOADS + ('contention',))}"),
                   help="comma-separated subset of "
                        f"{','.join(WORKLOADS + ('contention',))} (default: all)")
    p.add_argument("--thetas", type=_common.comma_list(float,
                                                       valid=lambda t: 0 <= t <= 10,
                                                       expect="a number in [0, 10]"),
                   help="comma-separated zipfian θ of the contention sweep "
                   f"(quick {','.join(map(str, THETAS_QUICK))}; "
                   f"full {','.join(map(str, THETAS_FULL))})")
    p.add_argument("--contention-keys", type=int, default=CONTENTION_KEYS,
                   help=f"keys the contention sweep draws from (default {CONTENTION_KEYS})")
    p.add_argument("--contention-concurrency", type=int, default=CONTENTION_CONCURRENCY,
                   help=f"clients per region in the contention sweep "
                        f"(default {CONTENTION_CONCURRENCY})")
    p.add_argument("--isolation", choices=("snapshot", "serializable"), default="snapshot")
    p.add_argument("--lag-samples", type=int,
                   help="replication-lag samples per ordered pair of regions (20 quick, 50 full)")
    p.add_argument("--regions", default="us-east,eu-west,ap-south",
                   type=_common.comma_list())
    p.add_argument("--nodes-per-region", type=int, default=3)
    p.add_argument("--wan-latency-ms", metavar="MS,MS,...",
                   type=_common.comma_list(float, valid=lambda m: m >= 0,
                                           expect="a number >= 0"),
                   help="one-way latency of each pair of regions, in the order (1st,2nd), "
                        "(1st,3rd), ..., (2nd,3rd), ... (default 35,70,110)")
    p.add_argument("--workdir", help="where the cluster directory goes (default: beside "
                   "bench/results, on the same file system)")
    p.set_defaults(func=main)
    return p


@contextlib.contextmanager
def _running_cluster(base: str, regions: tuple[str, ...], nodes_per_region: int,
                     wan: dict | None) -> Iterator[ClusterConfig]:
    """The local cluster, ready (every group has a leader), stopped and removed on exit."""
    workdir = tempfile.mkdtemp(prefix="bench-txn-", dir=base)
    procs = ClusterProcesses(workdir)
    try:
        procs = cluster_up(workdir, regions=regions, nodes_per_region=nodes_per_region,
                           wan_latency_ms=wan)
        cluster = procs.load_cluster()
        trio.run(wait_ready, cluster)
        yield cluster
    finally:
        procs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    quick = bool(args.quick)
    levels = args.concurrency or ([1, 8] if quick else [1, 8, 32])
    thetas = args.thetas or list(THETAS_QUICK if quick else THETAS_FULL)
    wanted = args.workloads
    regions = tuple(args.regions)
    if len(regions) < 2:
        raise SystemExit("--regions needs at least two regions")
    wan = None
    if args.wan_latency_ms:
        ms = args.wan_latency_ms
        pairs = [(a, b) for i, a in enumerate(regions) for b in regions[i + 1:]]
        if len(ms) != len(pairs):
            raise SystemExit(f"--wan-latency-ms needs {len(pairs)} values >= 0 (one per pair "
                             f"of regions)")
        wan = dict(zip(pairs, ms))
    duration = args.duration or (3.0 if quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    lag_samples = args.lag_samples or (20 if quick else 50)
    if duration <= 0 or warmup < 0 or lag_samples < 1:
        raise SystemExit("--duration must be > 0, --warmup >= 0, --lag-samples >= 1")
    if not 2 <= args.contention_keys <= KEYS or not 1 <= args.contention_concurrency <= 256:
        raise SystemExit(f"--contention-keys must be in 2..{KEYS}, --contention-concurrency "
                         f"in 1..256")

    base = args.workdir or str(_common.RESULTS_DIR.parent)
    os.makedirs(base, exist_ok=True)
    machine = _common.describe_machine(base)
    started = time.time()
    results: list[dict] = []
    skipped: dict[str, str] = {}
    lag: dict = {"p50": None, "p99": None}
    if "three-region" in wanted and len(regions) < 3:
        skipped["three-region"] = "needs three regions"
    plan: list[tuple[str, int, list[float] | None]] = [
        (w, c, None) for w in WORKLOADS if w in wanted and w not in skipped for c in levels]
    if "contention" in wanted:
        plan += [(f"contention-{t:g}", args.contention_concurrency,
                  zipf_cdf(args.contention_keys, t)) for t in thetas]
    with _running_cluster(base, regions, args.nodes_per_region, wan) as cluster:
        topo = _Topology.of(cluster, regions)
        addresses = {r: [f"{n.client_host}:{n.client_port}" for n in cluster.nodes_in(r)]
                     for r in regions}
        trio.run(_load, cluster, addresses)
        if "regional" in wanted:
            reason = trio.run(_create_regional, addresses, regions[0])
            if reason is not None:
                skipped["regional"] = reason
                print(f"regional: skipped ({reason})", file=sys.stderr)
        for workload, c, cdf in plan:
            if workload in skipped:
                continue
            print(f"{workload} c={c} ...", end=" ", flush=True, file=sys.stderr)
            rs = trio.run(_measure, addresses, topo, workload, c, duration, warmup,
                          len(results) + 1, args.isolation, cdf)
            if workload == "regional" and not any(r["transactions"] for r in rs) and any(
                    r["errors"] for r in rs):
                skipped["regional"] = next(r["last_error"] for r in rs if r["errors"])
                print(f"skipped ({skipped['regional']})", file=sys.stderr)
                continue
            results.extend(rs)
            print("  ".join(f"{r['region']} {r['txn_per_s']:.0f}/s p50 {r['p50_ms']} ms"
                            for r in rs), file=sys.stderr)
        if "regional" in wanted and "regional" not in skipped:
            print("replication lag ...", end=" ", flush=True, file=sys.stderr)
            lag = trio.run(_replication_lag, addresses, regions, lag_samples)
            print(f"p50 {lag['p50']} ms p99 {lag['p99']} ms", file=sys.stderr)
    machine["load_average_end"] = _common.load_average()
    wan_one_way = topo.pairs()
    doc = {
        "schema": _common.SCHEMA,
        "benchmark": "txn",
        "command": "python -m bench txn " + " ".join(getattr(args, "argv", [])[1:]),
        "machine": machine,
        "config": {"quick": quick, "duration_s": duration, "warmup_s": warmup,
                   "regions": list(regions), "nodes_per_region": args.nodes_per_region,
                   "concurrency": levels, "workloads": wanted, "isolation": args.isolation,
                   "thetas": thetas, "contention_keys": args.contention_keys,
                   "contention_concurrency": args.contention_concurrency,
                   "keys_per_keyspace": KEYS, "value_bytes": 100,
                   "lag_samples_per_pair": lag_samples},
        "elapsed_s": round(time.time() - started, 1),
        "wan_one_way_ms": wan_one_way,
        "results": results,
        "replication_lag_ms": lag,
        "skipped": skipped,
        "targets": targets(results, lag, wan_one_way),
    }
    print(format_results(doc))
    if args.json:
        _common.write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def format_results(doc: dict) -> str:
    """The results document as a plain-text table, with the targets."""
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    rows = [[r["workload"], r["region"], r["concurrency"], f"{r['txn_per_s']:.1f}",
             ms(r["p50_ms"]), ms(r["p99_ms"]), ms(r["commit_p50_ms"]),
             "n/a" if r["wan_rtts_per_commit"] is None else f"{r['wan_rtts_per_commit']:.2f}",
             f"{r['abort_rate']:.1%}", r["errors"]]
            for r in doc["results"]]
    lines = [
        "WAN one-way ms: " + ", ".join(f"{k} {v:g}" for k, v in doc["wan_one_way_ms"].items()),
        _common.format_table(["workload", "region", "c", "txn/s", "p50 ms", "p99 ms",
                              "commit p50", "WAN RTTs", "aborts", "errors"], rows,
                             "llrrrrrrrr"),
    ]
    lag = doc["replication_lag_ms"]
    lines.append(f"replication lag: p50 {ms(lag['p50'])} ms, p99 {ms(lag['p99'])} ms")
    for name, reason in doc["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    for t in doc["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  target {t['target']}: {t['value']} (limit {t['limit']}: {mark})")
    return "\n".join(lines)
