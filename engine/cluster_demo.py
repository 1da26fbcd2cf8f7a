"""``meridian demo``: a local three-region cluster under a global workload, then shut down.

The demo starts one ``meridian node`` process per node (three regions × three nodes by
default, with simulated one-way WAN latencies of 35, 70 and 110 ms between the regions), creates
one bank keyspace homed in each region, and runs clients in every region for a few seconds:

- transfers between accounts of the client's *home-region* keyspace (a commit inside the region),
- transfers in a *remote* keyspace (the commit crosses the WAN to that keyspace's home region),
- *stale reads* of remote accounts from the local learner (``bounded:1`` — no WAN round trip).

It shows progress every second, checks that every bank still holds exactly the money it started
with, prints throughput, latency percentiles per region and operation, conflicts, and how far
each region's learners lag behind their leaders, and stops every process it started — also when
interrupted.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import trio

from .client import connect
from .config import Limits
from .errors import InvalidArgumentError, KeyspaceExistsError, MeridianError
from .placement import placement
from .procs import (ClusterProcesses, cluster_up, describe_all, not_stopped_message,
                    wait_ready)

INITIAL_BALANCE = 1000
MAX_ACCOUNTS = Limits().max_txn_keys
"""The most accounts a bank may have: one transaction creates them all, within the default
limit on a transaction's keys."""
FINISH_S = 10.0  # how long the operations under way when the workload ends have to finish


def _percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1): the smallest value that a share ``q`` of
    the values do not exceed. The epsilon keeps a product that floating point rounds just
    above a whole rank on that rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[rank - 1]


class _Stats:
    def __init__(self) -> None:
        self.latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.conflicts: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.done = 0
        self.started = 0.0  # when the workload started, and its last operation ended
        self.last_end = 0.0


async def _client(db, region: str, home_ks: str, remote_ks: str, accounts: int, seed: int,
                  stats: _Stats, stop_at: float) -> None:
    rng = random.Random(seed)

    async def transfer(tx, ks):
        a, b = rng.sample(range(accounts), 2)
        ka, kb = b"acct-%04d" % a, b"acct-%04d" % b
        va, vb = (int(v) for v in await tx.get_many(ks, [ka, kb]))
        amount = rng.randint(1, 10)
        await tx.put(ks, ka, b"%d" % (va - amount))
        await tx.put(ks, kb, b"%d" % (vb + amount))

    failures = 0  # in a row
    while trio.current_time() < stop_at:
        roll = rng.random()
        op = "home txn" if roll < 0.6 else "remote txn" if roll < 0.8 else "stale read"
        started = trio.current_time()
        try:
            if op == "stale read":
                await db.read(remote_ks, b"acct-%04d" % rng.randrange(accounts),
                              staleness="bounded:1")
            else:
                ks = home_ks if op == "home txn" else remote_ks
                attempts = 0

                async def body(tx, ks=ks):
                    nonlocal attempts
                    attempts += 1
                    await transfer(tx, ks)

                try:
                    await db.run_transaction(body)
                finally:
                    # run_transaction retries conflicts only: every attempt before the last
                    # conflicted. The last one's conflict, when it gave up, was not retried:
                    # the transfer is not done, an error like any other below.
                    stats.conflicts[region] += max(0, attempts - 1)
        except MeridianError as exc:
            stats.errors[f"{region}: {type(exc).__name__}"] += 1
            # Backing off: an error that comes back at once (a region whose nodes are all
            # down, a keyspace gone) would otherwise keep this client in a tight loop.
            failures += 1
            await trio.sleep(min(0.01 * 2 ** min(failures - 1, 6), 0.5))
            continue
        failures = 0
        stats.last_end = trio.current_time()
        stats.latencies[(region, op)].append((stats.last_end - started) * 1e3)
        stats.done += 1


async def _run(procs: ClusterProcesses, seconds: float, clients_per_region: int, accounts: int,
               seed: int, out) -> int:
    cluster = procs.load_cluster()
    regions = cluster.region_names
    print(f"waiting for {len(cluster.all_nodes())} nodes to elect leaders ...", file=out)
    await wait_ready(cluster, procs=procs)
    addresses = {r: [f"{n.client_host}:{n.client_port}" for n in cluster.nodes_in(r)]
                 for r in regions}
    stats = _Stats()
    async with connect(addresses[regions[0]], region=regions[0]) as admin:
        for r in regions:
            ks = f"bank-{r}"
            with contextlib.suppress(KeyspaceExistsError):  # a --dir reused from a run before
                await admin.create_keyspace(ks, home_region=r)
            keys = [b"acct-%04d" % i for i in range(accounts)]
            wanted = set(keys)
            async with admin.transaction() as tx:
                # The bank holds this run's accounts only: those of a run before with more
                # (a --dir reused) would count in its total.
                for key, _ in await tx.scan(ks):
                    if key not in wanted:
                        await tx.delete(ks, key)
                for key in keys:
                    await tx.put(ks, key, b"%d" % INITIAL_BALANCE)
        print(f"created {len(regions)} keyspaces of {accounts} accounts; running "
              f"{clients_per_region} clients per region for {seconds:g} s", file=out)
        async with trio.open_nursery() as nursery:
            dbs = {}
            for r in regions:
                dbs[r] = await nursery.start(_hold_client, addresses[r], r)
            stats.started = trio.current_time()
            stop_at = stats.started + seconds
            nursery.start_soon(_progress, stats, stop_at, out)
            async with trio.open_nursery() as clients:
                for i, r in enumerate(regions):
                    remote = f"bank-{regions[(i + 1) % len(regions)]}"
                    for c in range(clients_per_region):
                        clients.start_soon(_client, dbs[r], r, f"bank-{r}", remote, accounts,
                                           seed * 1000 + i * 100 + c, stats, stop_at)
                await trio.sleep_until(stop_at)
                lag = await _learner_lag(cluster)
                # No client starts an operation past stop_at. The ones under way are the
                # slowest: cut off, they would be missing from the tail of the percentiles.
                clients.cancel_scope.deadline = stop_at + FINISH_S
            nursery.cancel_scope.cancel()
        ok = True
        for r in regions:
            async with admin.transaction() as tx:
                rows = await tx.scan(f"bank-{r}")
            total = sum(int(v) for _, v in rows)
            want = INITIAL_BALANCE * accounts
            ok &= total == want
            print(f"bank-{r}: {len(rows)} accounts, total {total} "
                  f"({'ok' if total == want else f'WRONG, expected {want}'})", file=out)
    _report(stats, regions, seconds, lag, out)
    return 0 if ok else 1


async def _run_until_signal(pending: list[int], *args) -> int:
    """:func:`_run`, cancelled by SIGINT, SIGTERM or SIGHUP (then KeyboardInterrupt). An
    exception raised from a signal handler can land in the middle of trio's own bookkeeping
    (one ended a run with TrioInternalError); a signal received as a message cancels the run
    cleanly. ``pending`` holds the signals that came while the run was starting."""
    interrupted = bool(pending)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        if pending:
            raise KeyboardInterrupt
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            async def main() -> None:
                nonlocal code
                code = await _run(*args)
                nursery.cancel_scope.cancel()

            code = 1
            nursery.start_soon(watch)
            nursery.start_soon(main)
    if interrupted:
        raise KeyboardInterrupt
    return code


async def _hold_client(addresses, region, *, task_status):
    async with connect(addresses, region=region) as db:
        task_status.started(db)
        await trio.sleep_forever()


async def _progress(stats: _Stats, stop_at: float, out) -> None:
    last = 0
    start = trio.current_time()
    while trio.current_time() < stop_at:
        await trio.sleep(1.0)
        done = stats.done
        conflicts = sum(stats.conflicts.values())
        print(f"  t={trio.current_time() - start:4.1f}s  {done - last:5d} ops/s  "
              f"{done:6d} ops  {conflicts:4d} conflicts retried", file=out, flush=True)
        last = done


async def _learner_lag(cluster) -> dict[tuple[int, str], float]:
    """For each group and each region, how far (ms) the closed timestamp of the region's
    learners of the group trails the leader's (its voters, the home region's followers of a
    data group among them, are left out: they are not the replicas a stale read elsewhere
    is served by)."""
    status = await describe_all(cluster)
    groups = placement(cluster)
    leaders: dict[int, int] = {}
    by_node: dict[tuple[int, int], int] = {}
    for node_id, s in status.items():
        for gid, g in s.get("groups", {}).items():
            by_node[(int(gid), node_id)] = g["closed_ts"]
            if g["role"] == "leader":
                leaders[int(gid)] = node_id
    lag: dict[tuple[int, str], float] = {}
    for (gid, node_id), closed in by_node.items():
        leader = leaders.get(gid)
        if gid not in groups or node_id not in groups[gid].conf.learners:
            continue
        if leader is None or not closed or not by_node[(gid, leader)]:
            continue  # a replica (or leader) that has closed no timestamp yet: no lag to show
        region = cluster.node(node_id).region
        ms = max(0.0, (by_node[(gid, leader)] - closed) / 1e6)
        lag[(gid, region)] = max(lag.get((gid, region), 0.0), ms)
    return lag


def _report(stats: _Stats, regions, seconds: float, lag, out) -> None:
    total = sum(len(v) for v in stats.latencies.values())
    # Until the last operation ended: those started just before the end are counted.
    elapsed = max(seconds, stats.last_end - stats.started)
    print(f"\n{total} operations in {elapsed:.1f} s: {total / elapsed:.0f} ops/s", file=out)
    print(f"{'region':<10} {'operation':<11} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}", file=out)
    for r in regions:
        for op in ("home txn", "remote txn", "stale read"):
            v = sorted(stats.latencies.get((r, op), []))
            print(f"{r:<10} {op:<11} {len(v):>6} {_percentile(v, 0.5):>8.1f} "
                  f"{_percentile(v, 0.99):>8.1f} {(v[-1] if v else float('nan')):>8.1f}",
                  file=out)
    print("conflicts retried: " + ", ".join(f"{r} {stats.conflicts.get(r, 0)}"
                                            for r in regions), file=out)
    if stats.errors:
        print("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(stats.errors.items())),
              file=out)
    if lag:
        print("learner lag behind the leader (closed timestamp, ms): " + ", ".join(
            f"group {g} in {r} {ms:.0f}" for (g, r), ms in sorted(lag.items())), file=out)


def run_demo(*, directory: str | None = None, seconds: float = 10.0,
             regions: tuple[str, ...] = ("us-east", "eu-west", "ap-south"),
             nodes_per_region: int = 3, clients_per_region: int = 4, accounts: int = 50,
             wan: bool = True, wan_latency_ms=None, seed: int = 1, out=sys.stdout) -> int:
    """Runs the demo; returns the process exit code. Nothing it started outlives it.

    Raises:
        InvalidArgumentError: ``accounts`` not in 2..:data:`MAX_ACCOUNTS` (a transfer takes
            two; one transaction creates them all), before anything is started.
    """
    if type(accounts) is not int or not 2 <= accounts <= MAX_ACCOUNTS:
        raise InvalidArgumentError(
            f"accounts must be an int in 2..{MAX_ACCOUNTS} (a transfer takes two; one "
            f"transaction creates them all), got {accounts!r}")
    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="meridian-demo-")
        directory = tmp
    procs = ClusterProcesses(directory)
    pending: list[int] = []  # signals held for the trio run, which must not be raised into

    def interrupt(signum, frame):
        # SIGTERM, SIGHUP (terminal closed), and SIGINT while trio is not running: stop the
        # nodes as on Ctrl-C. The workload's trio run receives them itself (_run_until_signal),
        # and the cleanup below, once begun, is not interrupted: a KeyboardInterrupt raised
        # from it would leave the nodes running and the directory behind.
        if in_trio or cleaning_up:
            pending.append(signum)
        else:
            raise KeyboardInterrupt

    in_trio = False
    cleaning_up = False
    started_nothing = False
    previous = {s: signal.signal(s, interrupt)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"starting {len(regions)} regions x {nodes_per_region} nodes in {directory}"
              + (" with simulated WAN latency" if wan else ""), file=out)
        try:
            # Refused, a cluster running in the directory (`meridian cluster up`, another
            # demo) is not ours to stop; and an up refused for any reason started nothing.
            procs = cluster_up(directory, regions=regions, nodes_per_region=nodes_per_region,
                               wan_latency_ms=wan_latency_ms if wan else {},
                               die_with_parent=True, refuse_running=True)
        except InvalidArgumentError as exc:
            print(f"demo failed: {exc}", file=out)
            started_nothing = True
            return 1
        in_trio = True
        code = trio.run(_run_until_signal, pending, procs, seconds, clients_per_region,
                        accounts, seed, out)
        in_trio = False
        if pending:  # came as the run ended
            raise KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        print("interrupted", file=out)
        return 130
    except Exception as exc:  # one of Meridian's errors, or one the workload did not expect
        if isinstance(exc, OSError) and not isinstance(exc, MeridianError):
            raise  # the command line names what the environment refused, in one line
        what = exc if isinstance(exc, MeridianError) else f"{type(exc).__name__}: {exc}"
        print(f"demo failed: {what}", file=out)
        # Each node's log, and its stdout and stderr (a traceback, what it said before its
        # log was open): see engine.procs.
        for log in sorted([*Path(directory).glob("node-*.log"),
                           *Path(directory).glob("node-*.out")]):
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            if tail:
                print(f"  {log.name}: " + "\n    ".join(tail), file=out)
        return 1
    finally:
        cleaning_up = True
        try:
            if not started_nothing:
                # A node that died is named: the workload saw only a node that did not answer
                # (or, the others answering for it, nothing at all), and its log does not say
                # it ended.
                exited = procs.exits()
                # Only the nodes it started: one interrupted (or failed) as its `up` waited
                # for the directory's lock finds the nodes of the `up` that held it running
                # there. They are stopped before anything is printed: an output that went
                # away (`meridian demo | head`) fails the printing, not the stop.
                nodes = procs.running_here()
                try:
                    stopped, busy = procs.stop(nodes=nodes), None
                except InvalidArgumentError as exc:
                    # Another `up` or `down` holds the directory: the nodes are this
                    # process's own children, none of another's to start, and they must not
                    # outlive it.
                    stopped, busy = procs.stop(nodes=nodes, lock=False), exc
                for n, why in exited.items():
                    print(f"node {n} exited during the demo: {why}", file=out)
                if busy is not None:
                    print(f"{busy}; stopped the demo's nodes without it", file=out)
                print(f"stopped {len(stopped)} node processes", file=out)
                if left := [n for n in stopped if procs.running_pid(n) is not None]:
                    print(not_stopped_message(left), file=out)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
