"""``python -m bench jepsen``: Jepsen-style fault campaigns against real multi-region clusters.

A campaign (FAULTS.md §1) starts a cluster of real node processes, each in its own network
namespace with its own address (:mod:`bench.jepsen_cluster`), regions apart by simulated WAN
latency; creates the workload's keyspaces and initial data; runs the workload's clients (in
their own namespace, talking to the nodes' addresses over the lab's bridge) for ``--time``
seconds while the nemesis (:mod:`bench.jepsen_nemesis`) alternates healthy periods and faults;
heals everything; waits until every node answers and every group has a leader, then a quiet
period; reads the final state; checks the history; writes its report; tears everything down.

Examples::

    python -m bench jepsen --workload bank --nemesis partition,kill,pause --time 60 --out DIR
    python -m bench jepsen --time 600 --nemesis all --workload all --out DIR
    MERIDIAN_ALLOW_PLANTED_BUGS=1 python -m bench jepsen --workload bank \\
        --planted-bug skip_adjudication --time 20 --out DIR

``--nemesis vote-split`` (with ``--nodes 3``) runs the targeted schedule of
:mod:`bench.jepsen_targeted` instead of random faults; a node's status answers showing two
leaders of one group in one term (Raft's Election Safety) make the campaign invalid
(anomaly ``two-leaders-in-one-term``), whatever the clients saw. So does an operation that
found one of the workload's keyspaces gone (``lost-keyspace``) or read bytes that no operation
writes (``garbage-read``), whatever the workload's checker says (see
:func:`bench.txnsim.client_anomalies`).

``--nodes``: ``3`` is one region of three nodes, ``RxN`` is R regions of N nodes (``3x3``, the
default; ``3x1``; ``2x3``). Regions are named us-east, eu-west, ap-south, then region-4, ...

Workloads (``WORKLOADS``): ``bank`` (transfers, total constant: :mod:`bench.bank`), ``append``
(Elle list-append, strong snapshot isolation or strict serializability: :mod:`bench.elle`),
``register`` (per-key read/write/cas, linearizable: :mod:`bench.wgl`), ``set`` (unique adds,
no lost, unexpected or stale elements), ``regional`` (multi-active keyspace, every region
converges: :mod:`bench.convergence`). The first three and ``regional`` are the workloads of
:mod:`bench.txnsim`, run by its runner's operation code, so histories have the same shape.

Outcomes: ``ok``; ``fail`` only when the operation certainly did not happen (a conflict, an
error before commit was sent, a refused overdraft or cas); ``info`` otherwise (a timeout or a
lost connection during commit). A process whose operation ended in ``info`` is retired.

Output, in ``--out DIR``:

``history.jsonl``
    every event, FAULTS.md §4: ``{"process", "type", "f", "value", "time_ns", ...}``, the
    nemesis's events included (``process: "nemesis"``); ``time_ns`` from the start of the
    main phase, on the runner's monotonic clock.
``nemesis.jsonl``
    the nemesis's events alone.
``results.json``
    ``valid`` (true, false or null for unknown: also when the campaign broke off (``error``),
    no final read succeeded, no operation of the main phase succeeded (``main_phase_ok``),
    a node process exited on its own (``node_exits``), a targeted schedule never armed
    (``targeted_not_armed``) or the nemesis injected no fault at all (``faults`` empty)),
    ``anomalies`` (type → instances with the transactions involved), ``checker`` (the
    checker's whole result), ``counts``,
    ``availability`` (the fraction of operations invoked during faults that were ``ok``, and
    outside them), ``recovery`` (seconds from each heal to the first ``ok`` operation invoked
    after it), ``faults``, the configuration and the phases' durations.
``latency.png``, ``throughput.png``
    latency and throughput over time with the fault windows shaded
    (:func:`bench.plots.plot_faults`; without matplotlib, ``results.json`` says how to get it).
``summary.txt``
    a short human summary.
``cluster/``
    the nodes' configurations and logs (their data directories are removed after a valid
    run, kept after an invalid or unknown one or with ``--keep-data``; on LossyFS mounts they
    are copied out before the mounts go).

The exit status is 0 when the history is valid, 1 when it is not, 2 when it could not be
judged (unknown) or the campaign could not run.

Planted bugs (:mod:`engine.planted`): ``--planted-bug NAME`` passes the switch to every node
(and to the clients, which coordinate two-phase commit), only when the environment has
``MERIDIAN_ALLOW_PLANTED_BUGS=1``: a campaign that runs one should report ``valid: false``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import _common, plots
from bench.hdr import MissingDependency
from bench.jepsen_cluster import ClusterSpec, LabCluster, in_namespace, unavailable_reason
from bench.jepsen_nemesis import FAMILIES, TARGETED_FAMILIES, TARGETS, Nemesis, check_targets
from bench.jepsen_targeted import TWO_LEADERS
from bench.jepsen_workloads import Register, SetWorkload
from bench.txnsim import (
    WAN_LATENCY_MS,
    FaultPlan,
    History,
    RunConfig,
    _Runner,
    _workload,
    with_client_anomalies,
    write_history,
)

__all__ = ["WORKLOADS", "CampaignConfig", "Campaign", "add_parser", "main", "parse_nodes",
           "run_campaign"]

WORKLOADS = ("bank", "append", "register", "set", "regional")
REGION_NAMES = ("us-east", "eu-west", "ap-south")
DEFAULT_PROCESSES = {"bank": 6, "append": 6, "register": 5, "set": 6, "regional": 6}
PLANTED_ENV = "MERIDIAN_PLANTED_BUGS"
ALLOW_ENV = "MERIDIAN_ALLOW_PLANTED_BUGS"


def parse_nodes(text: str) -> tuple[int, int]:
    """``"3"`` → (1, 3): one region of three; ``"3x3"`` → (3, 3): regions x nodes."""
    text = text.strip().lower()
    regions, sep, nodes = text.partition("x")
    try:
        r, n = (int(regions), int(nodes)) if sep else (1, int(regions))
    except ValueError:
        raise ValueError(f"--nodes: expected N or RxN, got {text!r}") from None
    if r < 1 or n < 1 or r * n > 20:
        raise ValueError(f"--nodes: {r} x {n} nodes is not between 1 and 20")
    return r, n


def region_names(count: int) -> tuple[str, ...]:
    return tuple(REGION_NAMES[i] if i < len(REGION_NAMES) else f"region-{i + 1}"
                 for i in range(count))


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """One campaign. See the module docstring and ``python -m bench jepsen --help``."""

    workload: str
    out: str
    nemesis: tuple[str, ...] = ("partition", "kill", "pause")
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    time_s: float = 60.0
    interval_s: tuple[float, float] = (8.0, 12.0)
    seed: int = 0
    regions: int = 3
    nodes_per_region: int = 3
    processes: int | None = None
    isolation: str = "snapshot"
    resolver: str = "lww"
    op_timeout_s: float = 5.0
    request_timeout_s: float = 4.0
    quiet_s: float = 3.0
    recovery_s: float = 60.0
    ready_timeout_s: float = 90.0
    tick_interval_ms: int = 50
    raft_snapshot_every: int = 10_000
    clock_max_s: float = 0.2
    coordinator_kill_p: float = 0.3
    planted_bugs: tuple[str, ...] = ()
    prefix: str = "mjep"
    accounts_per_region: int = 3
    think_s: float = 0.02
    keep_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = {k: list(v) for k, v in self.targets.items()}
        return d


class _Connector:
    """What :class:`bench.txnsim._Runner` calls ``cluster``: clients of a region connect to
    that region's nodes first, and to the others if none of them answers."""

    def __init__(self, cluster: LabCluster) -> None:
        self.cluster = cluster

    def connect(self, region: str, request_timeout_s: float):
        import engine

        ordered = self.cluster.client_addresses(region) + [
            a for a in self.cluster.client_addresses() if a not in
            self.cluster.client_addresses(region)]
        return engine.connect(ordered, region=region, request_timeout_s=request_timeout_s)


class Campaign:
    """The phases of one campaign on a running :class:`LabCluster`."""

    def __init__(self, config: CampaignConfig, cluster: LabCluster) -> None:
        self.config = config
        self.cluster = cluster
        regions = cluster.spec.regions
        processes = config.processes or DEFAULT_PROCESSES[config.workload]
        base = "regional" if config.workload == "regional" else (
            "bank" if config.workload == "bank" else "append")
        self.run_config = RunConfig(
            workload=base, isolation=config.isolation, seed=config.seed, regions=regions,
            nodes_per_region=config.nodes_per_region, processes=processes,
            max_ops=10**9, time_limit_s=config.time_s, op_timeout_s=config.op_timeout_s,
            request_timeout_s=config.request_timeout_s, think_s=config.think_s,
            quiet_s=config.quiet_s, recovery_s=config.recovery_s,
            accounts_per_region=config.accounts_per_region, resolver=config.resolver,
            faults=frozenset())
        self.runner = _Runner(self.run_config, FaultPlan(kinds=frozenset()))
        if config.workload == "register":
            self.runner.workload = Register(self.run_config)
        elif config.workload == "set":
            self.runner.workload = SetWorkload(self.run_config)
        else:
            self.runner.workload = _workload(self.run_config)
        self.connector = _Connector(cluster)
        self.nemesis_events: list[dict[str, Any]] = []
        self.nemesis = Nemesis(cluster, self._record_nemesis, config.nemesis, config.seed,
                               interval_s=config.interval_s, targets=config.targets,
                               clock_max_s=config.clock_max_s,
                               coordinator_kill_p=config.coordinator_kill_p)
        self.phases: dict[str, float] = {}
        self.final_ok = False
        self.harness_errors: dict[str, int] = {}
        self.ready_after_heal_s: float | None = None

    def _record_nemesis(self, f: str, value: Any) -> None:
        self.runner.history.nemesis(f, value)
        self.nemesis_events.append(self.runner.history.events[-1])

    # ---------------------------------------------------------------- clients

    async def client(self, slot: int) -> None:
        """One worker (txnsim's client loop, plus reconnecting when no node of its region
        answers and surviving any error of the client library as ``info``)."""
        runner = self.runner
        regions = self.cluster.spec.regions
        region = regions[slot % len(regions)]
        rng = random.Random(f"client/{self.config.seed}/{slot}")
        process = slot
        while runner._more():
            in_flight: tuple[int, str, Any] | None = None
            with trio.CancelScope() as session:
                try:
                    async with self.connector.connect(
                            region, request_timeout_s=self.config.request_timeout_s) as db:
                        while runner._more():
                            f, value, writes = runner.workload.generate(rng)
                            kill = None
                            p = self.nemesis.kill_probability
                            if writes and p and rng.random() < p:
                                kill = rng.uniform(0.0, 0.3)
                            in_flight = (process, f, value)
                            outcome = await runner.operate(db, process, f, value, writes, rng,
                                                           kill=kill)
                            in_flight = None
                            if outcome == "info":
                                process = self._next_process()
                            if kill is not None:
                                self.nemesis.fired["coordinator"] += 1
                                session.cancel()
                                await trio.lowlevel.checkpoint()
                            await trio.sleep(rng.uniform(0.0, self.config.think_s))
                except Exception as exc:  # the client library failed: record, go on
                    label = f"client error: {type(exc).__name__}"
                    self.harness_errors[label] = self.harness_errors.get(label, 0) + 1
                    if in_flight is not None:
                        p_id, f, value = in_flight
                        runner.history.record(p_id, "info", f, None, region=region,
                                              error=f"{type(exc).__name__}: {exc}"[:300])
                        process = self._next_process()
                    await trio.sleep(0.5)
            if session.cancelled_caught and in_flight is not None:
                p_id, f, value = in_flight
                runner.history.record(p_id, "info", f, None, region=region,
                                      error="coordinator killed")
                process = self._next_process()

    def _next_process(self) -> int:
        p = self.runner.next_process
        self.runner.next_process += 1
        return p

    # ---------------------------------------------------------------- phases

    def _phase(self, name: str, started: float) -> float:
        now = time.monotonic()
        self.phases[name] = round(now - started, 3)
        return now

    async def run(self) -> None:
        config, cluster, runner = self.config, self.cluster, self.runner
        mark = time.monotonic()
        await cluster.wait_ready(config.ready_timeout_s)
        mark = self._phase("start", mark)
        async with self.connector.connect(cluster.spec.regions[0],
                                          request_timeout_s=20.0) as db:
            await runner.setup(db)
        mark = self._phase("setup", mark)
        runner.history = History()
        runner.stop_at = trio.current_time() + config.time_s
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.nemesis.run, runner.stop_at)
            async with trio.open_nursery() as clients:
                for slot in range(runner.config.processes):
                    clients.start_soon(self.client, slot)
        mark = self._phase("main", mark)
        await self.nemesis.heal_all()
        healed_at = trio.current_time()
        with contextlib.suppress(TimeoutError):
            await cluster.wait_ready(config.recovery_s)
            self.ready_after_heal_s = round(trio.current_time() - healed_at, 3)
        # Quiet period: abandoned intents pass their deadline and are finished (ARCH §5.5).
        await trio.sleep(config.quiet_s)
        mark = self._phase("heal", mark)
        if config.workload == "regional":
            self.final_ok = await runner.converge(self.connector)
        else:
            async with self.connector.connect(cluster.spec.regions[-1],
                                              request_timeout_s=config.request_timeout_s) as db:
                self.final_ok = await runner.final_read(db)
        self._phase("final", mark)


# ------------------------------------------------------------------------------------ analysis


def _operations(events: Sequence[Mapping[str, Any]], functions: Sequence[str]
                ) -> list[dict[str, Any]]:
    """Completed operations: ``{"process", "f", "type", "invoke_ns", "done_ns"}``; an invoke
    never completed counts as info ending at the last event's time."""
    opened: dict[Any, Mapping[str, Any]] = {}
    ops = []
    end = max((e["time_ns"] for e in events), default=0)
    for e in events:
        if e.get("f") not in functions or e.get("process") == "nemesis":
            continue
        if e["type"] == "invoke":
            opened[e["process"]] = e
            continue
        inv = opened.pop(e["process"], None)
        if inv is not None:
            ops.append({"process": e["process"], "f": e["f"], "type": e["type"],
                        "invoke_ns": inv["time_ns"], "done_ns": e["time_ns"]})
    for p, inv in opened.items():
        ops.append({"process": p, "f": inv["f"], "type": "info", "invoke_ns": inv["time_ns"],
                    "done_ns": end})
    ops.sort(key=lambda o: o["invoke_ns"])
    return ops


def fault_windows(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"family", "start_ns", "end_ns", "value"}]`` from the nemesis's start/stop events."""
    windows = []
    current = None
    end = max((e["time_ns"] for e in events), default=0)
    for e in events:
        if e.get("process") != "nemesis":
            continue
        f = str(e["f"])
        if f.startswith("start-"):
            current = {"family": f[6:], "start_ns": e["time_ns"], "end_ns": None,
                       "value": e["value"]}
            windows.append(current)
        elif (f.startswith("stop-") or f == "heal-all") and current is not None:
            current["end_ns"] = e["time_ns"]
            current = None
    for w in windows:
        if w["end_ns"] is None:
            w["end_ns"] = end
    return windows


def availability(ops: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]],
                 main_end_ns: int | None = None) -> dict[str, Any]:
    """The fraction of operations that were ``ok``, among those invoked during a fault
    window, outside, and overall (main phase only when ``main_end_ns`` is given); and per
    family."""
    def inside(t: int) -> Mapping[str, Any] | None:
        return next((w for w in windows if w["start_ns"] <= t < w["end_ns"]), None)

    tally = {k: [0, 0] for k in ("during_faults", "outside_faults", "overall")}
    per_family: dict[str, list[int]] = {}
    for op in ops:
        if main_end_ns is not None and op["invoke_ns"] > main_end_ns:
            continue
        w = inside(op["invoke_ns"])
        ok = op["type"] == "ok"
        for k in ("overall", "during_faults" if w else "outside_faults"):
            tally[k][0] += ok
            tally[k][1] += 1
        if w:
            fam = per_family.setdefault(w["family"], [0, 0])
            fam[0] += ok
            fam[1] += 1
    out: dict[str, Any] = {k: (round(a / n, 4) if n else None) for k, (a, n) in tally.items()}
    out["ops"] = {k: n for k, (_, n) in tally.items()}
    out["by_family"] = {f: {"ok_fraction": round(a / n, 4) if n else None, "ops": n}
                        for f, (a, n) in sorted(per_family.items())}
    return out


def recovery_times(ops: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    """For each heal (``stop-*`` or ``heal-all``): seconds until the first ``ok`` operation
    invoked after it completed (None if none did)."""
    out = []
    for e in events:
        if e.get("process") != "nemesis":
            continue
        f = str(e["f"])
        if not (f.startswith("stop-") or f == "heal-all"):
            continue
        t = e["time_ns"]
        first = min((op["done_ns"] for op in ops if op["type"] == "ok" and op["invoke_ns"] >= t),
                    default=None)
        out.append({"heal": f, "at_s": round(t / 1e9, 3),
                    "recovered_s": None if first is None else round((first - t) / 1e9, 3)})
    return out


def _anomalies(check: Mapping[str, Any], limit: int = 10) -> dict[str, list[Any]]:
    """The checker's anomalies, at most ``limit`` of each type (each with the transactions or
    operations involved, as the checker gives them)."""
    return {k: list(v)[:limit] for k, v in (check.get("anomalies") or {}).items()}


def summarize(config: CampaignConfig, results: Mapping[str, Any]) -> str:
    c = results["counts"]
    a = results["availability"]
    lines = [
        f"workload {config.workload}, nemesis {','.join(config.nemesis) or 'none'}, "
        f"seed {config.seed}, {results['cluster']}, {config.time_s:g} s",
        f"planted bugs: {', '.join(config.planted_bugs) or 'none'}",
        f"operations: {sum(c.values())} ({c['ok']} ok, {c['fail']} fail, {c['info']} info)",
        "faults: " + (", ".join(f"{k} {n}" for k, n in results["faults"].items() if n)
                       or "none"),
        f"availability (ok fraction): during faults {a['during_faults']}, outside "
        f"{a['outside_faults']}, overall {a['overall']}",
        "recovery after heals (s): " + (", ".join(
            f"{r['heal']}@{r['at_s']}: {r['recovered_s']}" for r in results["recovery"])
            or "no heals"),
        f"final read: {'ok' if results['final_read_ok'] else 'FAILED'}",
        "verdict: " + {True: "valid", None: "unknown"}.get(results["valid"], "NOT VALID"),
    ]
    if results["allowed_anomaly_types"]:
        lines.append(f"anomalies the model allows: {', '.join(results['allowed_anomaly_types'])}")
    if results["anomaly_types"]:
        lines.append(f"anomalies: {', '.join(results['anomaly_types'])}")
        for kind, found in results["anomalies"].items():
            if kind not in results["anomaly_types"]:
                continue
            for entry in found[:3]:
                text = entry.get("explanation", "") if isinstance(entry, Mapping) else entry
                lines.append(f"  {kind}: {str(text)[:400]}")
    if results.get("main_phase_ok") == 0:
        lines.append("no operation of the main phase succeeded: nothing was tested")
    if results.get("error"):
        lines.append(f"the campaign broke off: {results['error'][:400]}")
    if results.get("node_exits"):
        lines.append(f"node processes that exited on their own (id: exit codes): "
                     f"{results['node_exits']}")
    if config.nemesis and not results["faults"]:
        lines.append("no fault was injected: nothing was tested under faults")
    if results.get("targeted_not_armed"):
        lines.append(f"targeted schedules that never armed: "
                     f"{', '.join(results['targeted_not_armed'])}")
    if results.get("harness_errors"):
        lines.append(f"client errors: {results['harness_errors']}")
    lines.append(f"plots: {results['plots']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ running


def run_campaign(config: CampaignConfig) -> dict[str, Any]:
    """Runs one campaign and writes its report into ``config.out``; returns results.json's
    content. Raises RuntimeError when the campaign cannot run here."""
    from engine import planted

    if config.planted_bugs and os.environ.get(ALLOW_ENV) != "1":
        raise RuntimeError(f"--planted-bug needs {ALLOW_ENV}=1 in the environment: planted "
                           f"bugs break the database's guarantees on purpose")
    faketime = "clock" in config.nemesis
    lossy = "lossy" in config.nemesis
    why = unavailable_reason(faketime=faketime, lossy=lossy)
    if why is not None:
        raise RuntimeError(why)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("history.jsonl", "nemesis.jsonl", "results.json", "summary.txt",
                 "latency.png", "throughput.png"):
        (out / name).unlink(missing_ok=True)
    # An earlier run's nodes (kept after an invalid or unknown run, or with --keep-data) would
    # start again from their data directories: the workload would find its keyspaces there.
    shutil.rmtree(out / "cluster", ignore_errors=True)
    spec = ClusterSpec(regions=region_names(config.regions),
                       nodes_per_region=config.nodes_per_region,
                       wan_latency_ms=_wan(region_names(config.regions)),
                       tick_interval_ms=config.tick_interval_ms,
                       raft_snapshot_every=config.raft_snapshot_every)
    node_env = {}
    if config.planted_bugs:
        node_env = {PLANTED_ENV: ",".join(config.planted_bugs), ALLOW_ENV: "1"}
    cluster = LabCluster(out / "cluster", spec, prefix=config.prefix, node_env=node_env,
                         faketime=faketime, lossy=lossy)
    started = time.monotonic()
    campaign: Campaign | None = None
    error: str | None = None
    results: dict[str, Any] | None = None
    planted.plant(set(config.planted_bugs), allow=bool(config.planted_bugs))
    with _sigterm_interrupts():
        try:
            try:
                cluster.setup()
                cluster.start_all()
                campaign = Campaign(config, cluster)
                with in_namespace(cluster.client_netns):
                    trio.run(campaign.run)
            except Exception as exc:  # whatever broke the run, it is reported (unknown), not lost
                error = f"{type(exc).__name__}: {exc}"
            finally:
                planted.plant(None)
            # The nodes stop before the check, but the cluster is closed only after it: the
            # verdict decides whether data directories on LossyFS mounts are copied out first.
            for node_id in list(cluster.procs):
                cluster.kill_node(node_id)
            node_exits = cluster.exited()
            stop_s = round(time.monotonic() - started, 3)
            if campaign is None:
                _write_results(out, {"valid": None, "error": error, "config": config.to_dict()})
                raise RuntimeError(f"the campaign could not start: {error}")
            results = _report(config, campaign, cluster, node_exits, error, stop_s)
            return results
        finally:
            keep = config.keep_data or results is None or results["valid"] is not True
            cluster.close(keep_data=keep)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Makes SIGTERM (``timeout(1)``, a cancelled CI job) interrupt the block as ^C does: trio
    raises KeyboardInterrupt where that is safe, and the campaign's teardown runs (by default
    SIGTERM ends the process at once, leaving its nodes, namespaces and mounts behind).
    Signal handlers belong to the main thread: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wan(regions: Sequence[str]) -> dict[tuple[str, str], float]:
    out = {}
    default = list(WAN_LATENCY_MS.values())
    k = 0
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            out[(a, b)] = WAN_LATENCY_MS.get((a, b), default[min(k, len(default) - 1)])
            k += 1
    return out


def _write_results(out: Path, results: Mapping[str, Any]) -> None:
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=repr)
        f.write("\n")


def _report(config: CampaignConfig, campaign: Campaign, cluster: LabCluster,
            node_exits: Mapping[int, Sequence[int]], error: str | None, wall_s: float
            ) -> dict[str, Any]:
    out = Path(config.out)
    runner = campaign.runner
    events = runner.history.events
    t = time.monotonic()
    try:
        check = with_client_anomalies(runner.workload.check(events), events)
    except Exception as exc:  # a malformed history is a harness bug: report it, unknown
        check = {"valid": None, "anomaly_types": [], "anomalies": {},
                 "error": f"{type(exc).__name__}: {exc}"}
    check_s = round(time.monotonic() - t, 3)
    functions = runner.workload.functions
    ops = _operations(events, functions)
    counts = dict.fromkeys(("ok", "fail", "info"), 0)
    for op in ops:
        counts[op["type"]] += 1
    windows = fault_windows(events)
    main_end = next((e["time_ns"] for e in events if e.get("f") == "heal-all"), None)
    valid = check.get("valid")
    if valid is True and (error is not None or not campaign.final_ok):
        # The campaign broke off, or no final read succeeded: what the checker saw proves
        # nothing lost (an acknowledged write that no read observed goes unnoticed).
        valid = None
    # Operations of the main phase (invoked before the final heal) that succeeded: without
    # any, the checker judged only the final read, which agrees with nothing having happened
    # (Jepsen's stats checker says unknown then too).
    main_ok = sum(op["type"] == "ok" for op in ops
                  if main_end is None or op["invoke_ns"] < main_end)
    if valid is True and not main_ok:
        valid = None
    if valid is True and node_exits:
        # A node process ended on its own (a crash, an invariant check): the run is outside
        # the fault model it claims to have tested, whatever the clients saw.
        valid = None
    # A targeted schedule that never armed its window did not test what it is for.
    unarmed = [f for f in config.nemesis
               if f in TARGETED_FAMILIES and not campaign.nemesis.fired.get(f)]
    if valid is True and unarmed:
        valid = None
    # Nor did a nemesis that injected nothing (a main phase shorter than its first healthy
    # period, partitions of a single node): the run saw the healthy cluster only.
    if valid is True and config.nemesis and not any(campaign.nemesis.fired.values()):
        valid = None
    anomaly_types = list(check["forbidden"] if "forbidden" in check
                         else check.get("anomaly_types") or [])
    anomalies = _anomalies(check)
    # Raft's Election Safety (at most one leader per group and term), as the nodes' own
    # status answers showed it to the nemesis: a violation is an anomaly of the database
    # even when no client happened to see its effects.
    split = [e["value"] for e in campaign.nemesis_events if e.get("f") == TWO_LEADERS]
    if split:
        anomalies[TWO_LEADERS] = split[:10]
        anomaly_types.append(TWO_LEADERS)
        valid = False
    results: dict[str, Any] = {
        "valid": valid,
        "workload": config.workload,
        "nemesis": list(config.nemesis),
        "seed": config.seed,
        "cluster": f"{len(cluster.spec.regions)} region(s) x {cluster.spec.nodes_per_region} "
                   f"node(s)",
        "planted_bugs": list(config.planted_bugs),
        # Elle also names anomalies the model allows (G2-item under snapshot isolation).
        "anomaly_types": anomaly_types,
        "allowed_anomaly_types": sorted(set(check.get("anomaly_types") or [])
                                        - set(check.get("forbidden") or [])
                                        ) if "forbidden" in check else [],
        "anomalies": anomalies,
        "counts": counts,
        "main_phase_ok": main_ok,
        "availability": availability(ops, windows, main_end),
        "recovery": recovery_times(ops, events),
        "ready_after_final_heal_s": campaign.ready_after_heal_s,
        "faults": {k: n for k, n in campaign.nemesis.fired.items() if n},
        "fault_windows": [{**w, "start_s": round(w["start_ns"] / 1e9, 3),
                           "end_s": round(w["end_ns"] / 1e9, 3)} for w in windows],
        "final_read_ok": campaign.final_ok,
        "errors": dict(sorted(runner.errors.items())),
        "harness_errors": campaign.harness_errors,
        "error": error,
        "node_exits": {str(k): list(v) for k, v in node_exits.items()},
        "targeted_not_armed": unarmed,
        "phases_s": {**campaign.phases, "check": check_s, "wall": wall_s},
        "config": config.to_dict(),
        "checker": check,
    }
    write_history(events, out / "history.jsonl")
    write_history(campaign.nemesis_events, out / "nemesis.jsonl")
    try:
        plots.plot_faults(str(out), ops, windows)
        results["plots"] = "latency.png, throughput.png"
    except MissingDependency as exc:
        results["plots"] = f"none: {exc}"
    _write_results(out, results)
    (out / "summary.txt").write_text(summarize(config, results))
    if valid is True and not config.keep_data:
        for node_id in cluster.node_ids:
            shutil.rmtree(cluster.directory / f"node-{node_id}", ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------ the CLI


def _families(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    if text == "all":
        return FAMILIES
    fams = tuple(f for f in text.split(",") if f)
    bad = set(fams) - set(FAMILIES) - set(TARGETED_FAMILIES)
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown nemesis families {sorted(bad)}; known: "
            f"{', '.join(FAMILIES + TARGETED_FAMILIES)}, all, none")
    return fams


def _interval(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(",")
    try:
        a = float(lo)
        b = float(hi) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW,HIGH, got {text!r}") from None
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError("interval: 0 < LOW <= HIGH")
    return a, b


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--workload", default="bank",
                        help=f"one of {', '.join(WORKLOADS)}, or all (default: bank)")
    parser.add_argument("--nemesis", type=_families, default=("partition", "kill", "pause"),
                        help=f"comma-separated families of {', '.join(FAMILIES)}; all; none "
                             f"(default: partition,kill,pause)")
    for family, choices in TARGETS.items():
        if len(choices) > 1:
            parser.add_argument(f"--{family}-targets", default=None, metavar="LIST",
                                help=f"restrict the {family} family to these, of "
                                     f"{','.join(choices)}")
    parser.add_argument("--time", type=_common.float_range(0, 30 * 86400), default=60.0,
                        metavar="SECONDS",
                        help="main phase per workload (default: 60)")
    parser.add_argument("--interval", type=_interval, default=(8.0, 12.0), metavar="LOW,HIGH",
                        help="seconds of each healthy period and of each fault "
                             "(default: 8,12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", default="3x3",
                        help="N (one region of N nodes) or RxN (R regions of N; default 3x3)")
    parser.add_argument("--processes", type=_common.int_range(1, 1000), default=None,
                        help="clients (default: 5 for register, else 6)")
    parser.add_argument("--isolation", choices=("snapshot", "serializable"), default="snapshot")
    parser.add_argument("--resolver", choices=("lww", "counter"), default="lww",
                        help="the regional workload's resolver")
    parser.add_argument("--accounts-per-region", type=int, default=3)
    parser.add_argument("--tick-ms", type=_common.int_range(1, 10_000), default=50,
                        help="Raft tick (default 50)")
    parser.add_argument("--raft-snapshot-every", type=_common.int_range(1, 1_000_000_000),
                        default=10_000, metavar="N",
                        help="entries between two compactions of a group's Raft log (default "
                             "10000; small values put snapshots under the faults)")
    parser.add_argument("--quiet", type=_common.float_range(0, 3600), default=3.0,
                        metavar="SECONDS",
                        help="quiet period after the final heal (default 3)")
    parser.add_argument("--clock-max", type=_common.float_range(0, 3600), default=0.2,
                        metavar="SECONDS",
                        help="largest clock offset the clock nemesis sets (default 0.2; "
                             "at most half the cluster's clock-skew bound of 250 ms)")
    parser.add_argument("--coordinator-kill-p", type=_common.float_range(0, 1), default=0.3,
                        help="chance a committing client dies, while the coordinator fault "
                             "is active (default 0.3)")
    parser.add_argument("--planted-bug", action="append", default=[], metavar="NAME",
                        help=f"turn on a planted bug in nodes and clients (needs {ALLOW_ENV}=1)")
    parser.add_argument("--prefix", default="mjep",
                        help="names of the lab's network namespaces (default mjep)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the nodes' data directories after a valid run")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.set_defaults(func=cli)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``jepsen`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "jepsen", help="Jepsen-style fault campaigns on real node processes in namespaces",
        description="Runs a workload against a real multi-region cluster (node processes in "
                    "network namespaces) while a nemesis injects partitions, kills, pauses, "
                    "clock skew, packet loss and power loss; checks the history; writes "
                    "history.jsonl, nemesis.jsonl, results.json, plots and summary.txt into "
                    "--out. Exit status 1 when the history is not valid."))


def cli(args: argparse.Namespace) -> int:
    try:
        regions, per_region = parse_nodes(args.nodes)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    workloads = WORKLOADS if args.workload == "all" else (args.workload,)
    if any(w not in WORKLOADS for w in workloads):
        print(f"--workload: one of {', '.join(WORKLOADS)} or all", file=sys.stderr)
        return 2
    targets = {}
    for family in TARGETS:
        raw = getattr(args, f"{family}_targets", None)
        if raw:
            targets[family] = tuple(t for t in raw.split(",") if t)
    try:
        check_targets(targets)  # before anything is built (the nemesis checks after the lab)
    except ValueError as exc:
        print(f"--*-targets: {exc}", file=sys.stderr)
        return 2
    nemesis = args.nemesis
    if "vote-split" in nemesis and (regions, per_region) != (1, 3):
        print("--nemesis vote-split needs one region of three nodes (--nodes 3)",
              file=sys.stderr)
        return 2
    notes = []
    if "lossy" in nemesis:
        from bench.lossyfs import unavailable_reason as fuse_reason

        if fuse_reason() is not None and len(nemesis) > 1:
            notes.append(f"lossy nemesis left out: {fuse_reason()}")
            nemesis = tuple(f for f in nemesis if f != "lossy")
    status = 0
    verdicts = {}
    for workload in workloads:
        out = Path(args.out) / workload if len(workloads) > 1 else Path(args.out)
        config = CampaignConfig(
            workload=workload, out=str(out), nemesis=nemesis, targets=targets,
            time_s=args.time, interval_s=args.interval, seed=args.seed, regions=regions,
            nodes_per_region=per_region, processes=args.processes, isolation=args.isolation,
            resolver=args.resolver, tick_interval_ms=args.tick_ms,
            raft_snapshot_every=args.raft_snapshot_every, quiet_s=args.quiet,
            clock_max_s=args.clock_max, coordinator_kill_p=args.coordinator_kill_p,
            planted_bugs=tuple(args.planted_bug), prefix=args.prefix,
            accounts_per_region=args.accounts_per_region, keep_data=args.keep_data)
        try:
            results = run_campaign(config)
            print((out / "summary.txt").read_text(), end="")
        except Exception as exc:  # could not run, or a harness failure: never "not valid"
            what = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
            print(f"jepsen {workload}: {what}", file=sys.stderr)
            # Unknown, as a campaign that broke off: an earlier workload found not valid
            # still makes the status 1, and the others still run.
            results = {"valid": None}
        else:
            for note in notes:
                print(note)
        verdicts[workload] = results["valid"]
        if results["valid"] is False:
            status = 1
        elif results["valid"] is None and status == 0:
            status = 2
    if len(workloads) > 1:
        print(json.dumps({"valid": verdicts}))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m bench.jepsen"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
