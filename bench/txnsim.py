"""Transactional workloads under faults against an in-process cluster, with checkable histories.

``python -m bench.txnsim --workload append --isolation serializable --seed 7 --out DIR`` starts
an in-process cluster (:func:`engine.local.open_local_cluster`, three regions by default),
drives one of the workloads below through the client library while a nemesis injects faults,
heals, reads the final state, writes the history to ``DIR/history.jsonl`` in the shape of
FAULTS.md §4 and the checker's verdict to ``DIR/results.json``, and exits 1 when the verdict is
not valid. The command line runs with ``compact_storage()`` and ``engine.node.INTENT_TIMEOUT_S``
set to 0.5 s (``--intent-timeout``), which suit runs of seconds. From Python:
``result = await run(RunConfig(...))`` or ``run_sync(RunConfig(...))``.

A run follows FAULTS.md §1: setup (keyspaces, initial data, before any fault) → main phase
(``processes`` clients, bounded by ``max_ops`` operations and ``time_limit_s`` seconds, the
nemesis active) → heal (every stopped node started again) → quiet period → final reads →
check.

Workloads
---------
``bank`` (checked by :mod:`bench.bank`)
    ``accounts_per_region`` accounts in a keyspace homed in each region, ``initial_balance``
    each. A ``transfer`` reads two random accounts and moves a random amount from one to the
    other (usually two groups in two regions: two-phase commit); one that would overdraw the
    account is rolled back and recorded as ``fail``, so no balance may ever be negative. A
    ``read`` reads every account in one transaction, keyspaces in a random order. Every ``ok``
    read must sum to the constant total.
``append`` (checked by :mod:`bench.elle`, Elle's list-append)
    Transactions of 1 to ``max_txn_len`` micro-operations ``["append", k, v]`` and
    ``["r", k, null]`` over ``key_count`` active keys, key ``k`` stored in the keyspace of
    region ``k % len(regions)``. A list is stored as comma-separated decimal integers; an
    append is a read and a write of the key in the same transaction. Values are unique per key
    (a counter per key); a key that has received ``max_writes_per_key`` appends is retired and
    a fresh key takes its place, so lists stay short and versions many. Checked against
    ``strong-snapshot-isolation`` (isolation ``"snapshot"``: no G0, G1a, G1b, G1c, G-single,
    lost update, nor their -process and -realtime variants) or ``strict-serializable``
    (``"serializable"``: no cycle at all), the guarantees of ARCH §5 with its no-stale-reads
    promise.
``regional`` (checked by :mod:`bench.convergence`, plus the conflict logs)
    One keyspace created with ``mode="regional"`` and ``resolver`` ``"lww"`` or ``"counter"``
    (``--resolver``); clients in every region write ``regional_keys`` shared keys: a ``write``
    puts a value unique in the run (``tx.put``), an ``incr`` adds a signed amount
    (``tx.increment``). Every event carries the client's ``region`` and the ``key``; an ``ok``
    write carries ``ts``, its ``tx.commit_ts``. After the heal and the quiet period, every
    region reads every key (``db.read`` from a client of that region) in rounds until all
    regions agree or ``recovery_s`` has passed; the last round is recorded as
    ``final-read``, earlier ones as ``read`` (not judged). Then each region's conflict log
    (``db.conflicts``) is recorded as a ``conflict-log`` event. The check
    (:func:`check_regional`): the regions agree, on what the resolver makes of the
    acknowledged writes; for ``lww`` each logged loser is below its winner, no logged winner
    is above the write whose value the final reads returned, and once
    ``CONCURRENT_PAIRS_FOR_CONFLICT`` pairs of acknowledged writes of a key from two regions
    overlapped in real time, some region's log is not empty.

Outcomes, as FAULTS.md §1 defines them: ``ok`` when the commit returned (or the transaction
was read-only and its reads returned; a read-only one that fails with a conflict is run again
by its process, ``READ_ATTEMPTS`` times at most, each attempt recorded); ``fail`` when the
transaction certainly did not commit — :class:`~engine.errors.TransactionConflictError`, an
error or timeout before ``commit`` was called (writes are buffered in the client until then),
a refused overdraft; ``info`` when anything else interrupted ``commit`` (another error, the
operation's timeout, a coordinator kill). A process whose operation ended in ``info`` is
retired and its worker continues as a new process (the next unused id), as in Jepsen.

Faults (``FAULT_KINDS``)
------------------------
``kill-coordinator``
    With probability ``kill_probability``, the coordinator of a transaction that writes dies
    ``d`` seconds into its ``commit`` (``d`` uniform below ``kill_window_s``). Each client runs
    in *sessions*, each with its own connection to the cluster (own clock, own background
    tasks); the death cancels the commit if it has not returned by then (the operation is
    ``info``) and ends the session abruptly either way — no graceful drain, so the intents
    the client was still resolving in the background are left behind too — and the client
    starts a new session. The coordinator thus dies before, during or after the prepares or
    the decision, or just after acknowledging the commit; the participants finish what it
    left after ``engine.node.INTENT_TIMEOUT_S`` (shorten it for short runs).
``crash``
    Every few seconds one node is stopped (a crash: its connections drop, its data directory
    keeps what it synced), half the time the current leader of a data group, and started
    again after a short downtime. One node is down at a time, so with three nodes per region
    no group loses its majority; with one node per region the stopped node's region is
    unavailable until it restarts, which the clients wait out.
``clock-skew``
    Some nodes run with a wall-clock offset of at most ``max_skew_fraction`` (20 %) of the
    cluster's ``max_clock_offset``, either way; a crashed node may come back with a different
    offset (a clock that was stepped while the node was down).
``partition``
    After a healthy period (``partition_every_s``), the network is cut in two for
    ``partition_s`` (about 1–3 s), then healed: ``isolate-node`` (a random node),
    ``isolate-leader`` (the current leader of a random group), ``isolate-region`` (every node
    of a random region) or ``halves`` (the nodes shuffled and split in two), taking turns
    from ``PARTITION_SHAPES[seed % 4]`` on: a run of four partitions meets every shape, and
    so do four consecutive seeds, however short their runs. Raft messages and node-to-node
    requests across the cut are lost; clients still reach every node. A node
    restarted during a partition is put back on its side. The heal phase ends any partition.

``move-keyspace`` (``EXTRA_FAULT_KINDS``: only when ``config.faults`` names it)
    Every ``move_every_s`` one of the workload's keyspaces is moved to a region drawn at
    random (now and then the one it is in) by a client of a random region, one move at a
    time, while the workload runs: its writers meet ``moved`` conflicts and stale caches,
    and the other faults cut moves short. The first move takes a keyspace away from its
    home; the second, and a third of the later ones, are cancelled after a random time
    (below ``move_cut_s``), as a client's timeout would: the move undoes what it can in a
    bounded time (``engine.client.MOVE_ROLLBACK_S``) and leaves the rest to the next. After
    healing: if the main phase ended before the second move began (a slow machine, or
    faults that held the first one up), the second is made now, cut short as it would have
    been, so every run has a move cut short; each keyspace is moved to the home its catalog
    record names, which finishes or undoes a move left halfway, as an operator would; then
    the first move, if the faults stopped it or the main phase ended before it began, is
    made to the end, so every run's final read comes after a change of home. Not for the
    ``regional`` workload (a regional keyspace has no home to move).

``plan_faults(config)`` draws the mix from the seed (each kind of ``FAULT_KINDS`` present with
some probability, at least one of them) unless ``config.faults`` names the kinds. Nemesis
events are in the history as ``{"process": "nemesis", "type": "info", "f": "stop-node",
"value": 4, ...}`` (``f`` one of ``clock-offsets``, ``stop-node``, ``start-node``,
``partition`` — its value the shape, what it cut off and both ``sides`` —, ``heal``,
``move-keyspace`` and ``move-keyspace-end`` — the keyspace, the target region and, at the
end, the outcome —, ``finish-move``); the checkers skip them.

The history
-----------
One event per operation boundary, FAULTS.md §4::

    {"process": 3, "type": "invoke", "f": "transfer", "value": {"from": 1, "to": 4,
     "amount": 7}, "time_ns": 812000, "region": "eu-west"}
    {"process": 3, "type": "info", "f": "transfer", "value": {...}, "time_ns": 990000,
     "region": "eu-west", "error": "coordinator killed 0.084 s into commit"}

``time_ns`` counts from the start of the main phase on the runner's monotonic clock (the true
time of the test; the nodes' clocks may be skewed). ``region`` is the client's region;
``error`` says why an operation failed or is unknown.

Determinism
-----------
The seed fixes the fault plan (kinds, kill probability, clock offsets), each client's random
choices (operations, accounts, amounts, keys, think times, which of its commits are killed
and when), the nemesis's (when a node crashes, for how long, whether it is a leader) and the
cluster's own seeds (Raft election jitter, link models). The nodes and clients still run on
real sockets under trio's scheduler, so the interleaving depends on timing — and with it the
values clients append (drawn from shared counters) and which node leads when the nemesis
strikes. Running a seed again replays the same workload and fault schedule, not necessarily
the same history: a failing seed should be rerun a few times, and its history (``--out``) is
the evidence.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import bank as bank_checker
from bench import convergence, elle
from bench._common import pick
from engine.errors import (
    InvalidArgumentError,
    KeyspaceNotFoundError,
    LimitExceededError,
    MeridianError,
    TransactionClosedError,
    TransactionConflictError,
)
from engine.placement import META_GROUP

__all__ = [
    "ELLE_MODELS",
    "EXTRA_FAULT_KINDS",
    "FAULT_KINDS",
    "PARTITION_SHAPES",
    "REGIONAL_RESOLVERS",
    "ISOLATION_LEVELS",
    "REGIONS",
    "WAN_LATENCY_MS",
    "WORKLOADS",
    "FaultPlan",
    "History",
    "RunConfig",
    "RunResult",
    "add_parser",
    "check_history",
    "check_regional",
    "compact_storage",
    "main",
    "parse_seeds",
    "plan_faults",
    "run",
    "run_sync",
    "write_history",
]

WORKLOADS = ("bank", "append", "regional")
ISOLATION_LEVELS = ("snapshot", "serializable")
FAULT_KINDS = ("kill-coordinator", "crash", "clock-skew", "partition")
EXTRA_FAULT_KINDS = ("move-keyspace",)
"""Fault kinds a run has only when ``RunConfig.faults`` names them: ``plan_faults`` never
draws them, so that every seed drawn before they existed still replays its plan."""
MOVE_CUT_PROBABILITY = 1 / 3
MOVE_TIMEOUT_S = 15.0  # a move not cut short is given up after this long
REGIONAL_RESOLVERS = ("lww", "counter")
"""The resolvers the ``regional`` workload runs with (its keyspace's ``resolver``)."""
PARTITION_SHAPES = ("isolate-node", "isolate-leader", "isolate-region", "halves")
CONCURRENT_PAIRS_FOR_CONFLICT = 5
"""The ``regional`` (lww) check wants a non-empty conflict log once at least this many pairs
of acknowledged writes of one key, from two regions, overlapped in real time."""
REGIONS = ("us-east", "eu-west", "ap-south")
WAN_LATENCY_MS = {("us-east", "eu-west"): 20, ("us-east", "ap-south"): 30,
                  ("eu-west", "ap-south"): 40}
"""One-way latency per region pair, a scaled-down geo-distributed cluster."""
ELLE_MODELS = {"snapshot": "strong-snapshot-isolation", "serializable": "strict-serializable"}
"""The consistency model an ``append`` history is checked against, by isolation level: the
level's guarantee plus ARCH §5's real-time promise (no stale reads)."""
NEMESIS = "nemesis"
# An operation's error when one of the workload's keyspaces is gone (see client_anomalies).
LOST_KEYSPACE = "lost-keyspace"
# An operation's error when a read returned bytes that no operation of the workload writes
# (see parse_int): the database made them up, or damaged what was written.
GARBAGE_READ = "garbage-read"
CLIENT_ANOMALIES = (LOST_KEYSPACE, GARBAGE_READ)
"""The anomalies a client finds by itself, as an operation's error (see client_anomalies)."""


# --------------------------------------------------------------------------------- configuration


SMALL_SNAPSHOT_EVERY = 16  # a group of a short run under load still compacts several times
READ_ATTEMPTS = 4  # runs of a read-only operation that fails with a conflict
CONNECT_RETRY_S = 0.2  # a client that found no node of its region up tries again after this
DEFAULT_SNAPSHOT_EVERY = 10_000  # engine.config.ClusterConfig's


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run. Every field has a default but ``workload``.

    Attributes:
        workload: one of ``WORKLOADS``.
        isolation: ``"snapshot"`` or ``"serializable"``, for every transaction.
        seed: fixes every choice of the run (see the module docstring, Determinism).
        regions, nodes_per_region, wan_latency_ms, tick_interval_ms: the cluster.
        processes: concurrent clients, spread over the regions in turn.
        max_ops, time_limit_s: bounds of the main phase (whichever comes first; past
            ``max_ops`` only while a planned fault has not happened yet).
        op_timeout_s: one operation's deadline (then ``fail`` before commit, ``info`` during).
        request_timeout_s: the client library's retry budget per request.
        think_s: each client waits up to this long (uniformly) between operations.
        faults: the fault kinds to inject; None draws a mix from the seed.
        quiet_s: the quiet period between heal and final reads.
        recovery_s: how long the final read may keep failing after the quiet period.
        accounts_per_region, initial_balance, max_transfer: the bank workload.
        key_count, max_writes_per_key, max_txn_len: the append workload.
        resolver, regional_keys: the regional workload (its keyspace's resolver, one of
            ``REGIONAL_RESOLVERS``, and how many keys every region writes).
        raft_snapshot_every: entries between two compactions of a group's Raft log; None:
            the seed decides — about half the seeds compact every
            :data:`SMALL_SNAPSHOT_EVERY` entries (so that a run sees local compaction markers,
            snapshots built for followers that a crash or a partition left behind, and their
            installation), the others use the product's default.
    """

    workload: str
    isolation: str = "snapshot"
    seed: int = 0
    regions: tuple[str, ...] = REGIONS
    nodes_per_region: int = 3
    wan_latency_ms: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: dict(WAN_LATENCY_MS))
    tick_interval_ms: int = 20
    processes: int = 6
    max_ops: int = 300
    time_limit_s: float = 10.0
    op_timeout_s: float = 5.0
    request_timeout_s: float = 4.0
    think_s: float = 0.02
    faults: frozenset[str] | None = None
    quiet_s: float = 1.0
    recovery_s: float = 15.0
    accounts_per_region: int = 3
    initial_balance: int = 100
    max_transfer: int = 40
    key_count: int = 8
    max_writes_per_key: int = 16
    max_txn_len: int = 4
    resolver: str = "lww"
    regional_keys: int = 3
    raft_snapshot_every: int | None = None

    @property
    def snapshot_every(self) -> int:
        """:attr:`raft_snapshot_every`, or what the seed chose."""
        if self.raft_snapshot_every is not None:
            return self.raft_snapshot_every
        # A stream of its own, so that the seed's other draws stay what they were.
        small = random.Random(f"raft-snapshot-every/{self.seed}").random() < 0.5
        return SMALL_SNAPSHOT_EVERY if small else DEFAULT_SNAPSHOT_EVERY

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}, not {self.workload!r}")
        if self.isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation must be one of {ISOLATION_LEVELS}, "
                             f"not {self.isolation!r}")
        if self.resolver not in REGIONAL_RESOLVERS:
            raise ValueError(f"resolver must be one of {REGIONAL_RESOLVERS}, "
                             f"not {self.resolver!r}")
        if self.regional_keys < 1:
            raise ValueError("regional_keys must be positive")
        if self.faults is not None:
            unknown = set(self.faults) - set(FAULT_KINDS) - set(EXTRA_FAULT_KINDS)
            if unknown:
                raise ValueError(f"unknown fault kinds {sorted(unknown)}; "
                                 f"expected some of {FAULT_KINDS + EXTRA_FAULT_KINDS}")
            if "move-keyspace" in self.faults and self.workload == "regional":
                raise ValueError("move-keyspace needs a workload of global keyspaces: a "
                                 "regional keyspace has no home region to move")
        if self.processes < 1 or self.max_ops < 1 or self.nodes_per_region < 1:
            raise ValueError("processes, max_ops and nodes_per_region must be positive")
        if self.workload == "bank" and len(self.regions) * self.accounts_per_region < 2:
            raise ValueError("the bank workload needs at least two accounts")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regions"] = list(self.regions)
        d["wan_latency_ms"] = [[a, b, ms] for (a, b), ms in self.wan_latency_ms.items()]
        d["faults"] = None if self.faults is None else sorted(self.faults)
        d["snapshot_every"] = self.snapshot_every
        return d


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What the nemesis does in a run, drawn from the seed before it starts.

    Attributes:
        kinds: the fault kinds present (a subset of ``FAULT_KINDS``).
        kill_probability: chance that a committing transaction has its commit cancelled.
        kill_window_s: a killed commit is cancelled after uniform(0, this) seconds.
        crash_every_s: (low, high) seconds between one node's restart and the next crash.
        downtime_s: (low, high) seconds a crashed node stays down.
        clock_offsets_ns: node id → wall-clock offset at the start (clock-skew).
        max_skew_ns: the largest offset clock-skew gives any node, either way.
        partition_every_s: (low, high) seconds of healthy network between two partitions.
        partition_s: (low, high) seconds a partition lasts.
        move_every_s: (low, high) seconds between the end of one keyspace move and the
            start of the next (move-keyspace).
        move_cut_s: a move cut short is abandoned after uniform(0, this) seconds.
    """

    kinds: frozenset[str]
    kill_probability: float = 0.0
    kill_window_s: float = 0.0
    crash_every_s: tuple[float, float] = (1.0, 3.0)
    downtime_s: tuple[float, float] = (0.3, 1.2)
    clock_offsets_ns: Mapping[int, int] = field(default_factory=dict)
    max_skew_ns: int = 0
    partition_every_s: tuple[float, float] = (2.0, 4.0)
    partition_s: tuple[float, float] = (1.0, 2.5)
    move_every_s: tuple[float, float] = (0.3, 1.5)
    move_cut_s: float = 1.5

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": sorted(self.kinds), "kill_probability": self.kill_probability,
                "kill_window_s": self.kill_window_s, "crash_every_s": list(self.crash_every_s),
                "downtime_s": list(self.downtime_s),
                "clock_offsets_ns": {str(k): v for k, v in sorted(self.clock_offsets_ns.items())},
                "max_skew_ns": self.max_skew_ns,
                "partition_every_s": list(self.partition_every_s),
                "partition_s": list(self.partition_s),
                "move_every_s": list(self.move_every_s), "move_cut_s": self.move_cut_s}


def _max_clock_offset_ns(config: RunConfig) -> int:
    from engine.config import default_local_cluster

    cluster = default_local_cluster(config.regions, config.nodes_per_region, 10000,
                                    wan_latency_ms=config.wan_latency_ms)
    return cluster.max_clock_offset_ns


def plan_faults(config: RunConfig, *, max_skew_fraction: float = 0.2) -> FaultPlan:
    """The run's faults, from its seed alone (so a seed always replays the same plan).

    Without ``config.faults``, each kind is present with probability 0.6 (at least one)."""
    rng = random.Random(f"faults/{config.seed}")
    if config.faults is None:
        kinds = {k for k in FAULT_KINDS if rng.random() < 0.6}
        if not kinds:
            kinds = {rng.choice(FAULT_KINDS)}
    else:
        kinds = set(config.faults)
    node_ids = range(1, len(config.regions) * config.nodes_per_region + 1)
    max_skew_ns = int(_max_clock_offset_ns(config) * max_skew_fraction)
    offsets: dict[int, int] = {}
    if "clock-skew" in kinds:
        for node in node_ids:
            if rng.random() < 0.5:
                offsets[node] = rng.randint(-max_skew_ns, max_skew_ns)
        if not offsets:
            offsets[rng.choice(node_ids)] = rng.choice((-1, 1)) * max_skew_ns
    return FaultPlan(
        kinds=frozenset(kinds),
        kill_probability=round(rng.uniform(0.08, 0.25), 3) if "kill-coordinator" in kinds else 0,
        kill_window_s=round(rng.uniform(0.1, 0.4), 3) if "kill-coordinator" in kinds else 0,
        crash_every_s=(1.0, 3.0),
        downtime_s=(0.3, 1.2),
        clock_offsets_ns=offsets,
        max_skew_ns=max_skew_ns if "clock-skew" in kinds else 0)


# -------------------------------------------------------------------------------------- history


class History:
    """The events of a run, in the order they happened (FAULTS.md §4)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._t0 = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def record(self, process: Any, kind: str, f: str, value: Any, **extra: Any) -> None:
        self.events.append({"process": process, "type": kind, "f": f, "value": value,
                            "time_ns": self.now_ns(), **extra})

    def nemesis(self, f: str, value: Any) -> None:
        self.record(NEMESIS, "info", f, value)


def write_history(events: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Writes ``events`` as JSON lines (the keys of a balance map become strings)."""
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------- workloads


class _Refused(Exception):
    """The workload chose not to commit (a transfer that would overdraw): certainly ``fail``."""


class GarbageRead(Exception):
    """A read returned a value that the workload never writes (:data:`GARBAGE_READ`)."""


_INT = re.compile(rb"-?[0-9]{1,19}")


def parse_int(raw: bytes, what: str) -> int:
    """An integer as the workloads write them (``b"%d"``); anything else is a garbage read,
    which must reach the verdict rather than end the client as an error of its own."""
    if _INT.fullmatch(raw) is None:
        raise GarbageRead(f"{what} holds {bytes(raw[:40])!r}"
                          + (f" ({len(raw)} bytes)" if len(raw) > 40 else ""))
    return int(raw)


def _parse_list(raw: bytes | None) -> list[int]:
    if not raw:
        return []
    return [parse_int(x, "a list element") for x in raw.split(b",")]


class _Workload:
    """What the runner asks of every workload beyond ``generate``/``execute``/``check``: how
    its keyspaces are created and how its operations appear in the history."""

    keyspaces: list[str]

    def home(self, keyspace: str) -> str:
        raise NotImplementedError

    def keyspace_options(self, keyspace: str) -> dict[str, Any]:
        return {"home_region": self.home(keyspace)}

    def invoke_fields(self, f: str, value: Any) -> dict[str, Any]:
        return {"value": value}

    def ok_fields(self, f: str, value: Any, result: Any, tx) -> dict[str, Any]:
        return {"value": value if result is None else result}

    def failed_fields(self, f: str, value: Any) -> dict[str, Any]:
        return {"value": None if f == "read" else value}

    def final_ops(self) -> list[tuple[str, Any, bool]]:
        """The operations of the final read, each ``(f, value, writes)``: by default the one
        ``final_op``, which reads everything the run wrote."""
        return [self.final_op()]


class _Bank(_Workload):
    functions = ("transfer", "read")

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        per = config.accounts_per_region
        self.accounts = list(range(len(config.regions) * per))
        self.total = len(self.accounts) * config.initial_balance
        self._where = {a: (f"bank-{config.regions[a // per]}", b"acct-%d" % a)
                       for a in self.accounts}
        self.keyspaces = sorted({ks for ks, _ in self._where.values()})

    def home(self, keyspace: str) -> str:
        return keyspace.removeprefix("bank-")

    async def setup(self, tx) -> None:
        for a in self.accounts:
            ks, key = self._where[a]
            await tx.put(ks, key, b"%d" % self.config.initial_balance)

    def generate(self, rng: random.Random) -> tuple[str, Any, bool]:
        """(f, value, writes) of the next operation."""
        if rng.random() < 0.3:
            return "read", None, False
        a, b = rng.sample(self.accounts, 2)
        return "transfer", {"from": a, "to": b,
                            "amount": rng.randint(1, self.config.max_transfer)}, True

    async def execute(self, tx, f: str, value: Any, rng: random.Random) -> Any:
        if f == "read":
            balances: dict[int, int | None] = {}
            order = list(self.keyspaces)
            rng.shuffle(order)
            for ks in order:
                mine = [a for a in self.accounts if self._where[a][0] == ks]
                raws = await tx.get_many(ks, [self._where[a][1] for a in mine])
                for a, raw in zip(mine, raws):
                    balances[a] = None if raw is None else parse_int(raw, f"account {a}")
            return {a: balances[a] for a in self.accounts}
        src, dst, amount = value["from"], value["to"], value["amount"]
        (ks_s, key_s), (ks_d, key_d) = self._where[src], self._where[dst]
        raw_s = await tx.get(ks_s, key_s)
        raw_d = await tx.get(ks_d, key_d)
        if raw_s is None or raw_d is None:
            raise _Refused(f"account {src if raw_s is None else dst} not found")
        s, d = parse_int(raw_s, f"account {src}"), parse_int(raw_d, f"account {dst}")
        if s < amount:
            raise _Refused(f"insufficient funds: account {src} holds {s} < {amount}")
        await tx.put(ks_s, key_s, b"%d" % (s - amount))
        await tx.put(ks_d, key_d, b"%d" % (d + amount))
        return value

    def final_op(self) -> tuple[str, Any, bool]:
        return "read", None, False

    def check(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return bank_checker.check(events, accounts=self.accounts, total=self.total)


class _Append(_Workload):
    functions = ("txn",)

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.keyspaces = [f"append-{r}" for r in config.regions]
        self.active = list(range(config.key_count))
        self.next_key = config.key_count
        self.used: set[int] = set()
        self._next_value: dict[int, int] = {}
        self._writes: dict[int, int] = {}

    def home(self, keyspace: str) -> str:
        return keyspace.removeprefix("append-")

    def _locate(self, k: int) -> tuple[str, bytes]:
        return self.keyspaces[k % len(self.keyspaces)], b"k%d" % k

    async def setup(self, tx) -> None:
        return None  # lists start empty

    def generate(self, rng: random.Random) -> tuple[str, Any, bool]:
        ops: list[list[Any]] = []
        writes = False
        for _ in range(rng.randint(1, self.config.max_txn_len)):
            k = rng.choice(self.active)
            self.used.add(k)
            if rng.random() < 0.5:
                ops.append(["r", k, None])
                continue
            v = self._next_value.get(k, 1)
            self._next_value[k] = v + 1
            self._writes[k] = self._writes.get(k, 0) + 1
            ops.append(["append", k, v])
            writes = True
            if self._writes[k] >= self.config.max_writes_per_key:
                self.active[self.active.index(k)] = self.next_key
                self.next_key += 1
        return "txn", ops, writes

    async def execute(self, tx, f: str, value: Any, rng: random.Random) -> Any:
        if all(op == "r" for op, _, _ in value):
            # Reads only (the final read among them): one round trip per keyspace, not per
            # key — the final read of a long run reads hundreds of keys, two thirds of them
            # across the WAN, which one key at a time outlasts any operation timeout.
            # The values are the same: one snapshot, whatever the order of the reads.
            by_ks: dict[str, dict[int, bytes]] = {}
            for _, k, _ in value:
                ks, key = self._locate(k)
                by_ks.setdefault(ks, {})[k] = key
            found: dict[int, list[int]] = {}
            for ks, keys in by_ks.items():
                raws = await tx.get_many(ks, list(keys.values()))
                found.update(zip(keys, map(_parse_list, raws)))
            return [["r", k, found[k]] for _, k, _ in value]
        done = []
        for op, k, v in value:
            ks, key = self._locate(k)
            current = _parse_list(await tx.get(ks, key))
            if op == "r":
                done.append(["r", k, current])
            else:
                current.append(v)
                await tx.put(ks, key, b",".join(b"%d" % x for x in current))
                done.append(["append", k, v])
        return done

    def final_op(self) -> tuple[str, Any, bool]:
        return "txn", [["r", k, None] for k in sorted(self.used)], False

    def check(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return elle.check(events, consistency=ELLE_MODELS[self.config.isolation])


class _Regional(_Workload):
    """Writes of a few shared keys of one regional keyspace from every region (see the module
    docstring); the final reads are the runner's (``_Runner.converge``)."""

    functions = ("write", "incr", convergence.FINAL_READ)

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.keyspaces = [f"regional-{config.resolver}"]
        self.keys = [f"r{i}" for i in range(config.regional_keys)]
        self._next_value = 0

    def home(self, keyspace: str) -> str:
        return self.config.regions[0]

    def keyspace_options(self, keyspace: str) -> dict[str, Any]:
        return {"mode": "regional", "resolver": self.config.resolver}

    async def setup(self, tx) -> None:
        return None  # keys start absent

    def generate(self, rng: random.Random) -> tuple[str, Any, bool]:
        key = rng.choice(self.keys)
        if self.config.resolver == "counter":
            return "incr", {"key": key, "value": rng.choice((-1, 1, 1, 1)) * rng.randint(1, 9)}, \
                True
        self._next_value += 1  # unique per run, so a final value names its write
        return "write", {"key": key, "value": self._next_value}, True

    async def execute(self, tx, f: str, value: Any, rng: random.Random) -> Any:
        ks = self.keyspaces[0]
        if f == "incr":
            await tx.increment(ks, value["key"], value["value"])
        else:
            await tx.put(ks, value["key"], b"%d" % value["value"])
        return None

    def invoke_fields(self, f: str, value: Any) -> dict[str, Any]:
        return dict(value)

    def ok_fields(self, f: str, value: Any, result: Any, tx) -> dict[str, Any]:
        return {**value, "ts": tx.commit_ts}

    def failed_fields(self, f: str, value: Any) -> dict[str, Any]:
        return dict(value)

    def check(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return check_regional(events, self.config.resolver, regions=self.config.regions)


CONFLICT_LOG = "conflict-log"


def _concurrent_write_pairs(events: Sequence[Mapping[str, Any]]) -> int:
    """Pairs of ``ok`` writes of one key from two regions whose invoke–completion intervals
    overlap in real time."""
    open_: dict[Any, Mapping[str, Any]] = {}
    by_key: dict[Any, list[tuple[int, int, str]]] = {}
    for e in events:
        if e["f"] not in ("write", "incr"):
            continue
        if e["type"] == "invoke":
            open_[e["process"]] = e
            continue
        invoke = open_.pop(e["process"], None)
        if invoke is not None and e["type"] == "ok":
            by_key.setdefault(e.get("key"), []).append(
                (invoke["time_ns"], e["time_ns"], e["region"]))
    pairs = 0
    for spans in by_key.values():
        spans.sort()
        for i, (a0, a1, ar) in enumerate(spans):
            for b0, _b1, br in spans[i + 1:]:
                if b0 >= a1:
                    break
                pairs += ar != br
    return pairs


def _final_versions(events: Sequence[Mapping[str, Any]]) -> dict[str, set[tuple[int, str]]]:
    """Key -> the ``(ts, region)`` of each ``ok`` write whose value an ``ok`` final read of
    the key returned (values are unique per run, so a value names its write; a value of a
    write whose outcome is unknown names no known version and is left out)."""
    written: dict[tuple[str, Any], tuple[int, str]] = {}
    final: list[tuple[str, Any]] = []
    opened: dict[Any, Mapping[str, Any]] = {}
    for e in events:
        if e["f"] not in ("write", convergence.FINAL_READ):
            continue
        if e["type"] == "invoke":
            opened[e["process"]] = e
            continue
        invoke = opened.pop(e["process"], None)
        if invoke is None or e["type"] != "ok" or e.get("value") is None:
            continue
        if e["f"] == "write":
            written[(str(e.get("key")), e["value"])] = (e["ts"], e["region"])
        else:
            final.append((str(e.get("key")), e["value"]))
    versions: dict[str, set[tuple[int, str]]] = {}
    for key, value in final:
        if (key, value) in written:
            versions.setdefault(key, set()).add(written[(key, value)])
    return versions


def _text(key: Any) -> str:
    """A conflict record's key as the history names it (bytes in memory, text once saved)."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def check_regional(events: Sequence[Mapping[str, Any]], resolver: str, *,
                   regions: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`bench.convergence.check` (``regions``: each must have read each key at the end),
    plus (``lww``) the conflict logs the runner read after
    the final reads (``conflict-log`` events, one per region): each record's winner is
    greater than its loser by ``(ts, origin)``; no record's winner is greater than the
    version of a value the final reads returned (``conflict-winner-lost``: a winner was in
    some region's cell, an lww cell only moves to greater versions and every region receives
    every write, so the converged version is at least the winner; this catches a lost
    winner whose client never heard back, which :mod:`bench.convergence` cannot judge); and
    the logs are not all empty when writes of one key from two regions overlapped
    (``CONCURRENT_PAIRS_FOR_CONFLICT`` pairs or more) — some of them were concurrent, and the
    loser of each is logged (ARCH §6)."""
    result = convergence.check(events, resolver, regions=regions)
    logs = [e for e in events if e["f"] == CONFLICT_LOG]
    pairs = _concurrent_write_pairs(events)
    logged = sum(len(e["value"]) for e in logs if isinstance(e["value"], list))
    result["stats"].update(concurrent_write_pairs=pairs, conflicts_logged=logged,
                           conflict_logs_read=sum(isinstance(e["value"], list) for e in logs))
    if resolver != "lww":
        return result
    found: dict[str, list[dict[str, Any]]] = {}
    final = _final_versions(events)
    for e in logs:
        for rec in e["value"] if isinstance(e["value"], list) else ():
            if tuple(rec["winner"]) <= tuple(rec["loser"]):
                found.setdefault("conflict-order", []).append(
                    {"explanation": f"{e['region']} logged a loser {rec['loser']} not below its "
                                    f"winner {rec['winner']}", "record": rec})
            key = _text(rec["key"])
            for version in sorted(final.get(key, ())):
                if tuple(rec["winner"]) > version:
                    found.setdefault("conflict-winner-lost", []).append(
                        {"explanation": f"{e['region']} logged {rec['winner']} as the winner of "
                                        f"a conflict on key {key!r}, yet the final reads "
                                        f"returned the value written at {list(version)}, "
                                        f"an older version", "record": rec})
    if logs and pairs >= CONCURRENT_PAIRS_FOR_CONFLICT and logged == 0 and all(
            isinstance(e["value"], list) for e in logs):
        found["conflict-log-empty"] = [{
            "explanation": f"{pairs} pairs of acknowledged writes of one key from two regions "
                           f"overlapped, yet no region's conflict log holds a record"}]
    if found:
        result["valid"] = False
        result["anomaly_types"] = sorted({*result["anomaly_types"], *found})
        result["anomalies"].update(found)
    return result


def _workload(config: RunConfig) -> _Bank | _Append | _Regional:
    if config.workload == "regional":
        return _Regional(config)
    return _Bank(config) if config.workload == "bank" else _Append(config)


def client_anomalies(events: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The errors of operations that met an anomaly by themselves, by kind
    (:data:`CLIENT_ANOMALIES`): a keyspace gone (each was created, and the creation
    acknowledged, before the run, and none is dropped: :data:`LOST_KEYSPACE`), or a read of
    bytes no operation writes (:data:`GARBAGE_READ`). Each is an anomaly whatever the
    workload's checker says (such an operation is recorded as failed: the checker does not
    see it)."""
    found: dict[str, list[str]] = {}
    for e in events:
        if e.get("type") == "fail":
            error = str(e.get("error", ""))
            kind = next((k for k in CLIENT_ANOMALIES if error.startswith(k + ":")), None)
            if kind is not None:
                found.setdefault(kind, []).append(error)
    return found


def with_client_anomalies(check: dict[str, Any], events: Sequence[Mapping[str, Any]]
                          ) -> dict[str, Any]:
    """``check`` (a checker's result), not valid and naming each kind of
    :func:`client_anomalies` the operations met."""
    found = client_anomalies(events)
    if not found:
        return check
    check = dict(check)
    check["valid"] = False
    check["anomaly_types"] = [*(check.get("anomaly_types") or []), *found]
    if "forbidden" in check:
        check["forbidden"] = [*check["forbidden"], *found]
    check["anomalies"] = {**(check.get("anomalies") or {}),
                          **{kind: errors[:10] for kind, errors in found.items()}}
    return check


def check_history(config: RunConfig, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The checker's verdict on a history of ``config``'s workload (see the module docstring:
    bench.bank for ``bank``, bench.elle with ``ELLE_MODELS[isolation]`` for ``append``,
    :func:`check_regional` for ``regional``), and any anomaly an operation met by itself
    (:func:`client_anomalies`)."""
    return with_client_anomalies(_workload(config).check(events), events)


# --------------------------------------------------------------------------------------- result


@dataclass(slots=True)
class RunResult:
    """What a run did and what the checker found.

    Attributes:
        config, plan: the run's configuration and fault plan.
        history: every event (FAULTS.md §4), nemesis events included.
        counts: ``{"ok": n, "fail": n, "info": n}`` over the workload's operations (final
            reads included).
        faults_fired: how many of each fault actually happened: ``kill-coordinator``
            (coordinators killed), ``kill-coordinator-in-commit`` (of those, the ones that
            cancelled a commit before it returned), ``crash`` (nodes stopped), ``clock-skew``
            (nodes whose clock was offset at some point).
        errors: error text → how many operations ended with it.
        (``partition`` in ``faults_fired`` counts partitions.)
        check: the checker's result (``valid``, anomalies, stats).
        seconds: wall time of the whole run; ``main_s`` of the main phase.
        phases_s: wall time of each phase (``start``, ``setup``, ``main``, ``heal``,
            ``final``, ``stop``, ``check``).
        final_read_ok: whether the final read succeeded.
        stop_errors: errors nodes raised while being stopped (see ``_recording_stop_errors``).
        diagnostics: when the final read failed, the cluster's state right after (see
            ``_Runner.cluster_state``); else None.
        snapshots: Raft snapshot counters (``taken``, ``built``, ``installed``) summed over
            every node's groups: a node's as it was stopped, the others' at the end.
    """

    config: RunConfig
    plan: FaultPlan
    history: list[dict[str, Any]]
    counts: dict[str, int]
    faults_fired: dict[str, int]
    errors: dict[str, int]
    check: dict[str, Any]
    seconds: float
    main_s: float
    phases_s: dict[str, float]
    final_read_ok: bool
    stop_errors: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] | None = None
    snapshots: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return bool(self.check.get("valid"))

    def summary(self) -> str:
        """One line: the run, its counts, faults and verdict."""
        c = self.config
        fired = ", ".join(f"{k} {n}" for k, n in sorted(self.faults_fired.items()) if n)
        snaps = "/".join(str(self.snapshots.get(k, 0)) for k in ("taken", "built", "installed"))
        verdict = "valid" if self.valid else "NOT valid: " + ", ".join(
            self.check.get("forbidden") or self.check.get("anomaly_types") or ["?"])
        return (f"{c.workload}/{c.isolation} seed {c.seed}: {sum(self.counts.values())} ops "
                f"({self.counts['ok']} ok, {self.counts['fail']} fail, {self.counts['info']} "
                f"info) in {self.main_s:.1f} s of {self.seconds:.1f} s; faults "
                f"[{', '.join(sorted(self.plan.kinds))}] fired: {fired or 'none'}; Raft log "
                f"compacted every {c.snapshot_every} entries, snapshots {snaps} "
                f"taken/built/installed; {verdict}"
                + ("" if self.final_read_ok else "; the final read failed after healing")
                + (f"; {len(self.stop_errors)} error(s) while stopping nodes"
                   if self.stop_errors else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "summary": self.summary(), "config": self.config.to_dict(),
                "plan": self.plan.to_dict(), "counts": self.counts,
                "faults_fired": self.faults_fired, "errors": self.errors,
                "seconds": round(self.seconds, 3), "main_s": round(self.main_s, 3),
                "phases_s": {k: round(v, 3) for k, v in self.phases_s.items()},
                "final_read_ok": self.final_read_ok, "stop_errors": self.stop_errors,
                "diagnostics": self.diagnostics, "snapshots": self.snapshots,
                "check": self.check}

    def write(self, directory: str | Path) -> Path:
        """Writes ``history.jsonl`` and ``results.json`` into ``directory`` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_history(self.history, out / "history.jsonl")
        with open(out / "results.json", "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, default=repr)
            f.write("\n")
        return out


# ------------------------------------------------------------------------------------ storage


@contextlib.contextmanager
def compact_storage(segment_size: int = 4 << 20, map_size: int = 4 << 20) -> Iterator[None]:
    """Nodes started inside this block preallocate ``segment_size``-byte Raft log segments and
    ``map_size``-byte MVCC maps instead of the product's 64 MiB each (both still grow: new
    segments, a larger map). A 3 × 3 cluster hosts 36 group replicas; at the defaults they
    write and later delete about 4.6 GB, which dominates a short run's start and stop.

    It replaces ``engine.node.RaftStorage`` and ``engine.node.MVCCStore`` for the duration, so
    it affects every node started in this process meanwhile.
    """
    import engine.node
    from engine.mvcc import MVCCStore
    from raft.storage import RaftStorage

    saved = engine.node.RaftStorage, engine.node.MVCCStore
    engine.node.RaftStorage = functools.partial(RaftStorage, segment_size=segment_size)
    engine.node.MVCCStore = functools.partial(MVCCStore, map_size=map_size)
    try:
        yield
    finally:
        engine.node.RaftStorage, engine.node.MVCCStore = saved


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@contextlib.contextmanager
def _recording_stop_errors(errors: list[str]) -> Iterator[None]:
    """Nodes started inside this block (by :mod:`engine.local`) that raise while they are
    being stopped have the error appended to ``errors`` instead of failing the whole
    in-process cluster.

    Stopping a node of an in-process cluster cancels its tasks and runs its shutdown code; a
    real crash (SIGKILL) runs none. An error raised on that path says nothing about what the
    run checks, but it would otherwise propagate through the cluster's nursery and abort the
    run, so it is counted (``RunResult.stop_errors``) and reported instead. An error raised
    while the node was not being stopped still propagates.
    """
    import engine.local

    base = engine.local.Node

    class _Node(base):  # type: ignore[misc, valid-type]
        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await base.run(self, task_status=task_status)
            except* Exception as group:
                if trio.current_effective_deadline() != -math.inf:
                    raise  # not being stopped: a real failure
                for exc in _leaves(group):
                    errors.append(f"node {self.id}: {type(exc).__name__}: {exc}")

    engine.local.Node = _Node
    try:
        yield
    finally:
        engine.local.Node = base


# ------------------------------------------------------------------------------------ the runner


class _Runner:
    def __init__(self, config: RunConfig, plan: FaultPlan) -> None:
        self.config = config
        self.plan = plan
        self.workload = _workload(config)
        self.history = History()
        self.rng = random.Random(f"run/{config.seed}")
        self.ops_left = config.max_ops
        self.fired = dict.fromkeys(FAULT_KINDS + EXTRA_FAULT_KINDS, 0)
        self.fired["clock-skew"] = len(plan.clock_offsets_ns)
        self.skewed = set(plan.clock_offsets_ns)
        self.errors: dict[str, int] = {}
        self.down: set[int] = set()
        self.next_process = config.processes
        self.stop_at = float("inf")  # no operation starts after this (trio time)
        self.diagnostics: dict[str, Any] | None = None
        self.killed_in_commit = 0  # coordinator kills that cancelled a commit (info)
        self.sessions_killed = 0
        self.partition_sides: list[list[int]] | None = None  # the partition in force
        # The run's first keyspace move (keyspace, target) until it has ended "ok".
        self.first_move_pending: tuple[str, str] | None = None
        self.moved_keyspaces: list[str] = []  # the keyspace of each move begun, in order
        # Raft snapshot counters summed over the nodes' groups, each node's as it stops.
        self.snapshots = dict.fromkeys(("taken", "built", "installed"), 0)

    def count_snapshots(self, node) -> None:
        """Adds a node's Raft snapshot counters (it is about to stop, or the run ends)."""
        for replica in node.replicas.values():
            st = replica.node.statistics()
            self.snapshots["taken"] += st.snapshots_taken
            self.snapshots["built"] += st.snapshots_built
            self.snapshots["installed"] += st.snapshots_installed

    # ---------------------------------------------------------------- one operation

    async def operate(self, db, process: int, f: str, value: Any, writes: bool,
                      rng: random.Random, *, kill: float | None) -> str:
        """Runs one operation as a transaction and records it; returns its outcome type.

        ``kill``: the coordinator dies this many seconds into ``commit`` — the commit is
        cancelled there if it has not returned by then (``info``), and the client session is
        dropped either way (see ``client``), so it also dies right after an acknowledgement
        that came sooner.

        A read-only operation that fails with a conflict leaves nothing behind, and is run
        again by the same process, as an application would (``run_transaction``), up to
        ``READ_ATTEMPTS`` times, so that audits under heavy contention still get through.
        Each attempt is recorded as an operation of its own: one spanning all of them would
        widen its real-time window, and hide a stale read from the checker."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            outcome, conflict = await self._attempt(db, process, f, value, writes, rng,
                                                    kill=kill)
            if writes or not conflict or attempt == READ_ATTEMPTS:
                return outcome
            await trio.sleep(rng.uniform(0.005, 0.05))
        raise AssertionError("unreachable")

    async def _attempt(self, db, process: int, f: str, value: Any, writes: bool,
                       rng: random.Random, *, kill: float | None) -> tuple[str, bool]:
        """One transaction of :meth:`operate`, recorded: its outcome type, and whether it
        failed with a conflict."""
        region = db.region
        fields = self.workload.invoke_fields(f, value)
        self.history.record(process, "invoke", f, fields.pop("value"), region=region, **fields)
        tx = db.transaction(self.config.isolation)
        committing = False  # from here on, a write may have reached a group
        result: Any = None
        outcome, error, label = "ok", "", ""
        conflict = False
        with trio.move_on_after(self.config.op_timeout_s) as deadline:
            try:
                result = await self.workload.execute(tx, f, value, rng)
                committing = writes
                if kill is None:
                    await tx.commit()
                else:
                    self.fired["kill-coordinator"] += 1
                    with trio.move_on_after(kill) as killed:
                        await tx.commit()
                    if killed.cancelled_caught:
                        self.killed_in_commit += 1
                        outcome, label = "info", "coordinator killed"
                        error = f"coordinator killed {kill:.3f} s into commit"
            except _Refused as exc:
                await tx.rollback()
                outcome, error, label = "fail", str(exc), str(exc).split(":")[0]
            except TransactionConflictError as exc:
                outcome, error = "fail", f"conflict ({exc.reason}): {exc}"
                label, conflict = f"conflict ({exc.reason})", True
            except KeyspaceNotFoundError as exc:
                # Every keyspace a workload uses was created, acknowledged, before the run
                # began, and none is dropped: one that is gone is acknowledged data lost
                # (see client_anomalies), not a misuse of the client.
                outcome, label = "fail", LOST_KEYSPACE
                error = f"{LOST_KEYSPACE}: {exc}"
            except GarbageRead as exc:
                await tx.rollback()
                outcome, label = "fail", GARBAGE_READ
                error = f"{GARBAGE_READ}: {exc}"
            except (InvalidArgumentError, TransactionClosedError, LimitExceededError):
                raise  # the workload misused the client: a bug of the runner, not a fault
            except (MeridianError, OSError) as exc:
                outcome = "info" if committing else "fail"
                error, label = f"{type(exc).__name__}: {exc}", type(exc).__name__
        if deadline.cancelled_caught:
            outcome = "info" if committing else "fail"
            label = "timed out" + (" in commit" if committing else "")
            error = f"{label} after {self.config.op_timeout_s} s"
        txn = f"{tx.txn_id:#x}"
        if outcome == "ok":
            fields = self.workload.ok_fields(f, value, result, tx)
            self.history.record(process, "ok", f, fields.pop("value"), region=region,
                                txn_id=txn, **fields)
        else:
            fields = self.workload.failed_fields(f, value)
            self.history.record(process, outcome, f, fields.pop("value"), region=region,
                                txn_id=txn, error=error, **fields)
            key = f"{outcome}: {label}"
            self.errors[key] = self.errors.get(key, 0) + 1
        return outcome, conflict

    # ---------------------------------------------------------------- clients

    def _more(self) -> bool:
        if trio.current_time() >= self.stop_at:
            return False
        if self.ops_left > 0:
            return True
        # The operations are spent before a planned fault happened (a fast machine, or a
        # crash drawn late): go on, up to the time limit, so that every planned fault meets a
        # running workload instead of a finished one.
        return self._kill_in_commit_pending() or any(
            not self.fired[kind] for kind in self.plan.kinds)

    def _kill_in_commit_pending(self) -> bool:
        """Whether the plan kills coordinators and none has died in a commit yet: one that
        dies after the commit was acknowledged only leaves the resolution of its intents
        behind, never a transaction whose outcome is unknown."""
        return "kill-coordinator" in self.plan.kinds and not self.killed_in_commit

    async def client(self, slot: int, cluster) -> None:
        """One client: sessions (each its own connection, clock and background tasks) in the
        region ``slot`` is assigned to, one after another; a session ends when its
        coordinator dies."""
        region = self.config.regions[slot % len(self.config.regions)]
        rng = random.Random(f"client/{self.config.seed}/{slot}")
        # How many draws an operation takes (a read run again after a conflict, the order of
        # its keyspaces each time) depends on timing: a stream of its own, so that ``rng``
        # draws the same operations, kills and think times whatever happens.
        attempts_rng = random.Random(f"client-attempts/{self.config.seed}/{slot}")
        process = slot
        while self._more():
            with trio.CancelScope() as session:
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        db = await stack.enter_async_context(cluster.connect(
                            region, request_timeout_s=self.config.request_timeout_s))
                    except (MeridianError, OSError):
                        # No node of the region answered (one node per region, stopped by
                        # the nemesis and not started yet): the client waits it out.
                        await trio.sleep(CONNECT_RETRY_S)
                        continue
                    while self._more():
                        self.ops_left -= 1
                        f, value, writes = self.workload.generate(rng)
                        kill = None
                        if writes and self.plan.kill_probability:
                            # Both numbers are drawn whatever the other clients did.
                            dies = rng.random() < self.plan.kill_probability
                            after = rng.uniform(0.0, self.plan.kill_window_s)
                            # The writing transactions of process slot 0 lose their
                            # coordinator until one has died in a commit, so that a plan with
                            # kills always has one.
                            if dies or (slot == 0 and self._kill_in_commit_pending()):
                                kill = after
                        outcome = await self.operate(db, process, f, value, writes,
                                                     attempts_rng, kill=kill)
                        if outcome == "info":
                            process = self.next_process
                            self.next_process += 1
                        if kill is not None:
                            # The coordinator process is gone: its connections close and the
                            # intents it was still resolving in the background are left to
                            # the participants' recovery. Cancelling skips the client's
                            # graceful drain.
                            session.cancel()
                            await trio.lowlevel.checkpoint()
                        await trio.sleep(rng.uniform(0.0, self.config.think_s))
            if session.cancelled_caught:
                self.sessions_killed += 1

    # ---------------------------------------------------------------- nemesis

    async def nemesis(self, cluster) -> None:
        """Crashes and restarts one node at a time, partitions the network now and then, and
        moves keyspaces, forever (cancelled by the caller)."""
        async with trio.open_nursery() as nursery:
            if "crash" in self.plan.kinds:
                nursery.start_soon(self.crashes, cluster)
            if "partition" in self.plan.kinds:
                nursery.start_soon(self.partitions, cluster)
            if "move-keyspace" in self.plan.kinds:
                nursery.start_soon(self.moves, cluster)

    async def moves(self, cluster) -> None:
        """Moves a keyspace of the workload's to a region drawn at random, one move at a
        time, forever; some are cut short (see ``move-keyspace`` in the module docstring)."""
        rng = random.Random(f"moves/{self.config.seed}")
        for number in itertools.count():
            first = number == 0
            await trio.sleep(rng.uniform(*self.plan.move_every_s))
            if first:  # away from its home, to the end: every run has a real move
                keyspace, to = self._first_move(rng)
            else:
                keyspace = rng.choice(self.workload.keyspaces)
                to = rng.choice(self.config.regions)
            region = rng.choice(self.config.regions)
            # The second move is always cut short, so that every run that gets that far
            # has one; a third of the later ones are.
            drawn = not first and rng.random() < MOVE_CUT_PROBABILITY
            cut = (round(rng.uniform(0.0, self.plan.move_cut_s), 3)
                   if drawn or number == 1 else None)
            if first:
                self.first_move_pending = (keyspace, to)
            outcome = await self._recorded_move(cluster, region, keyspace, to, cut)
            if first and outcome == "ok":
                self.first_move_pending = None

    def _first_move(self, rng: random.Random,
                    keyspaces: list[str] | None = None) -> tuple[str, str]:
        """A move away from home, (keyspace, target): a keyspace drawn by ``rng`` (of
        ``keyspaces``, default all the workload's), to a region other than the one it was
        created in."""
        keyspace = rng.choice(keyspaces or self.workload.keyspaces)
        home = self.workload.home(keyspace)
        return keyspace, rng.choice([r for r in self.config.regions if r != home] or [home])

    async def _recorded_move(self, cluster, region: str, keyspace: str, to: str,
                             cut: float | None) -> str:
        """:meth:`_move`, with its start and end in the history."""
        self.moved_keyspaces.append(keyspace)
        self.history.nemesis("move-keyspace", {"keyspace": keyspace, "to": to,
                                               "client_region": region, "cut_after_s": cut})
        self.fired["move-keyspace"] += 1
        outcome = await self._move(cluster, region, keyspace, to, cut)
        self.history.nemesis("move-keyspace-end", {"keyspace": keyspace, "to": to,
                                                   "outcome": outcome})
        return outcome

    async def _move(self, cluster, region: str, keyspace: str, to: str | None,
                    cut: float | None, timeout_s: float = MOVE_TIMEOUT_S) -> str:
        """One move by a client of ``region`` to ``to`` (None: the home the keyspace's
        catalog record names; the client is a fresh one, so its lookup is not a cached one),
        cut short after ``cut`` seconds, else given up after ``timeout_s``: ``"ok"``, or why
        it did not finish."""
        with trio.move_on_after(timeout_s if cut is None else cut):
            try:
                async with cluster.connect(
                        region, request_timeout_s=self.config.request_timeout_s) as db:
                    target = to if to is not None else (await db.keyspace(keyspace)).home
                    await db.move_keyspace(keyspace, target)
                return "ok"
            except (MeridianError, OSError) as exc:
                return f"{type(exc).__name__}: {exc}"
        return "timed out" if cut is None else "cut short"

    async def finish_moves(self, cluster) -> bool:
        """After healing: the second move, cut short, if the main phase ended before it began
        (the first move took it all); each keyspace moved to the home its catalog record
        names, which finishes or undoes a move left halfway (and is quick when none was);
        then the run's first move, if the faults stopped it or the main phase ended before
        it began, made (again) to the end, so that every run's final reads come after a real
        change of home. Each move but the one cut short is retried until it succeeds or
        ``recovery_s`` have passed; returns whether every one got through."""
        give_up = trio.current_time() + self.config.recovery_s
        region = self.config.regions[0]
        if not self.moved_keyspaces:
            # The main phase ended before its first move began: it is made at the end, like
            # one the faults stopped.
            self.first_move_pending = self._first_move(
                random.Random(f"late-first-move/{self.config.seed}"))
        if len(self.moved_keyspaces) < 2:
            await self._late_cut_move(cluster, region)
        for keyspace in self.workload.keyspaces:
            if not await self._retry_move(cluster, region, keyspace, None, give_up):
                return False
        if self.first_move_pending is None:
            return True
        keyspace, to = self.first_move_pending
        self.history.nemesis("move-keyspace", {"keyspace": keyspace, "to": to,
                                               "client_region": region, "cut_after_s": None})
        if not await self._retry_move(cluster, region, keyspace, to, give_up):
            return False
        self.first_move_pending = None
        return True

    async def _late_cut_move(self, cluster, region: str) -> None:
        """The run's second move, which is always cut short, made after healing: a keyspace
        the first move left where it was created, moved away from there, cut after a random
        time (below ``move_cut_s``), so that every run has a move cut short for the
        finishing pass to finish or undo."""
        rng = random.Random(f"late-cut-move/{self.config.seed}")
        keyspace, to = self._first_move(rng, [k for k in self.workload.keyspaces
                                              if k not in self.moved_keyspaces])
        cut = round(rng.uniform(0.0, self.plan.move_cut_s), 3)
        await self._recorded_move(cluster, region, keyspace, to, cut)

    async def _retry_move(self, cluster, region: str, keyspace: str, to: str | None,
                          give_up: float) -> bool:
        """:meth:`_move` again and again until it succeeds or ``give_up`` (trio time) has
        passed. Each attempt is in the history: ``finish-move`` for the catalog home,
        ``move-keyspace-end`` for a target."""
        while True:
            outcome = await self._move(cluster, region, keyspace, to, None,
                                       timeout_s=max(0.0, give_up - trio.current_time()))
            if to is None:
                self.history.nemesis("finish-move", {"keyspace": keyspace, "outcome": outcome})
            else:
                self.history.nemesis("move-keyspace-end", {"keyspace": keyspace, "to": to,
                                                           "outcome": outcome})
            if outcome == "ok":
                return True
            if trio.current_time() >= give_up:
                return False
            await trio.sleep(0.2)

    async def partitions(self, cluster) -> None:
        """A partition of a random shape (``PARTITION_SHAPES``) for ``plan.partition_s``, then
        a healthy network for ``plan.partition_every_s``, and again."""
        rng = random.Random(f"partition/{self.config.seed}")
        for number in itertools.count():
            await trio.sleep(rng.uniform(*self.plan.partition_every_s))
            shape, detail, side = self._partition_shape(cluster, rng, number)
            everyone = sorted(n.id for n in cluster.config.all_nodes())
            sides = [sorted(side), [n for n in everyone if n not in side]]
            self.history.nemesis("partition", {"shape": shape, **detail, "sides": sides})
            self.partition_sides = sides
            cluster.partition(*sides)
            self.fired["partition"] += 1
            await trio.sleep(rng.uniform(*self.plan.partition_s))
            self.heal_partition(cluster)

    def heal_partition(self, cluster) -> None:
        if self.partition_sides is not None:
            cluster.heal()
            self.partition_sides = None
            self.history.nemesis("heal", None)

    def _partition_shape(self, cluster, rng: random.Random, number: int
                         ) -> tuple[str, dict[str, Any], set[int]]:
        """(shape, what it cut off, the nodes on one side of the cut) of the run's partition
        ``number`` (from 0). The shapes take turns from the seed's: a short run has one or
        two partitions, and shapes drawn at random left some to no CI seed at all."""
        nodes = cluster.config.all_nodes()
        shape = PARTITION_SHAPES[(self.config.seed + number) % len(PARTITION_SHAPES)]
        if shape == "isolate-leader":
            # Two numbers drawn whatever the cluster looks like now: who leads (timing) must
            # not change what the rest of the schedule draws.
            pick_group, pick_node = rng.random(), rng.random()
            groups = sorted({gid for node in cluster.nodes.values() for gid in node.replicas})
            group = pick(groups, pick_group) if groups else None
            leaders = [node_id for node_id, node in sorted(cluster.nodes.items())
                       if group in node.replicas and node.replicas[group].node.is_leader]
            if leaders:
                return shape, {"group": group, "node": leaders[0]}, {leaders[0]}
            # The group has no leader just now.
            victim = pick(nodes, pick_node).id
            return "isolate-node", {"node": victim}, {victim}
        if shape == "isolate-region":
            region = rng.choice(self.config.regions)
            return shape, {"region": region}, {n.id for n in nodes if n.region == region}
        if shape == "halves":
            ids = [n.id for n in nodes]
            rng.shuffle(ids)
            return shape, {}, set(ids[:len(ids) // 2])
        victim = rng.choice([n.id for n in nodes])
        return "isolate-node", {"node": victim}, {victim}

    async def crashes(self, cluster) -> None:
        """Crashes and restarts one node at a time, forever."""
        rng = random.Random(f"nemesis/{self.config.seed}")
        while True:
            await trio.sleep(rng.uniform(*self.plan.crash_every_s))
            running = sorted(cluster.nodes)
            leaders = sorted(
                node_id for node_id in running
                for gid, replica in cluster.nodes[node_id].replicas.items()
                if gid != META_GROUP and replica.node.is_leader)
            # Both numbers are drawn whatever the cluster looks like now: who leads (timing)
            # must not change when the next crashes come or how long they last.
            want_leader, u = rng.random() < 0.5, rng.random()
            pool = leaders if want_leader and leaders else running
            victim = pick(pool, u)
            self.history.nemesis("stop-node", victim)
            self.down.add(victim)
            self.count_snapshots(cluster.nodes[victim])
            with trio.CancelScope(shield=True):
                await cluster.stop_node(victim)
            self.fired["crash"] += 1
            await trio.sleep(rng.uniform(*self.plan.downtime_s))
            await self.restart(cluster, victim, rng)

    async def restart(self, cluster, node_id: int, rng: random.Random | None) -> None:
        offset = self.plan.clock_offsets_ns.get(node_id, 0)
        if rng is not None and "clock-skew" in self.plan.kinds and rng.random() < 0.5:
            # The clock was stepped while the node was down.
            offset = rng.randint(-self.plan.max_skew_ns, self.plan.max_skew_ns)
        if offset and node_id not in self.skewed:
            self.skewed.add(node_id)
            self.fired["clock-skew"] += 1
        self.history.nemesis("start-node", {"node": node_id, "clock_offset_ns": offset})
        with trio.CancelScope(shield=True):
            await cluster.start_node(node_id, clock_offset_ns=offset)
        if self.partition_sides is not None:
            # A node starts connected to every other: the partition in force covers it again.
            cluster.partition(*self.partition_sides)
        self.down.discard(node_id)

    # ---------------------------------------------------------------- phases

    async def setup(self, db) -> None:
        homes = list(self.workload.keyspaces)
        with trio.fail_after(60):
            for ks in homes:
                await db.create_keyspace(ks, **self.workload.keyspace_options(ks))

            async def init(tx):
                await self.workload.setup(tx)

            await db.run_transaction(init, isolation=self.config.isolation, max_attempts=50)

    def cluster_state(self, cluster) -> dict[str, Any]:
        """Each running node's view of its groups, for the report of a run whose final read
        failed (who leads, Raft progress, closed timestamps, transactions still prepared)."""
        state: dict[str, Any] = {"time_ns": self.history.now_ns(), "nodes": {}}
        for node_id, node in sorted(cluster.nodes.items()):
            now = node.clock.now()
            groups = {}
            for gid, replica in sorted(node.replicas.items()):
                st = replica.node.statistics()
                prepared = replica.sm.prepared()
                groups[gid] = {
                    "role": st.role, "term": st.term, "leader": st.leader, "commit": st.commit,
                    "applied": st.applied, "proposals_pending": st.proposals_pending,
                    "closed_ts": replica.closed_ts, "prepared": len(prepared),
                    "prepared_sample": [
                        {"txn_id": f"{i.txn_id:#x}", "primary": i.primary,
                         "deadline_in_s": round((i.deadline - now) / 1e9, 3)}
                        for i in prepared[:5]]}
            state["nodes"][node_id] = {"region": node.region,
                                       "clock_problem": node.clock_problem, "groups": groups}
        return state

    async def final_read(self, db) -> bool:
        """Reads the final state (each of the workload's ``final_ops`` in turn), retrying
        each (each attempt recorded) until it succeeds, a keyspace is found lost, or
        ``recovery_s`` have passed: after healing, the cluster must make progress again
        within a bounded time (ARCH §9)."""
        give_up = trio.current_time() + self.config.recovery_s
        lost = f"fail: {LOST_KEYSPACE}"
        for f, value, writes in self.workload.final_ops():
            while True:
                if trio.current_time() >= give_up:
                    return False
                process = self.next_process
                self.next_process += 1
                lost_before = self.errors.get(lost, 0)
                if await self.operate(db, process, f, value, writes, self.rng,
                                      kill=None) == "ok":
                    break
                if self.errors.get(lost, 0) > lost_before:
                    # The catalog answered that a keyspace the workload created is gone:
                    # data lost, which no amount of waiting brings back.
                    return False
                await trio.sleep(0.2)
        return True


    async def converge(self, cluster) -> bool:
        """The ``regional`` workload's final reads: every key read in every region (by a
        client of that region, one read at a time), in rounds until all regions agree on every
        key or ``recovery_s`` have passed. The rounds before the last are recorded as ``read``
        (which the checker skips), the last as ``final-read``. Then each region's conflict
        log is read and recorded (``conflict-log``). Returns whether the regions agreed."""
        ks = self.workload.keyspaces[0]
        give_up = trio.current_time() + self.config.recovery_s
        agreed = False
        async with contextlib.AsyncExitStack() as stack:
            dbs = {region: await stack.enter_async_context(cluster.connect(
                region, request_timeout_s=self.config.request_timeout_s))
                for region in self.config.regions}
            while True:
                reads = []
                for region, db in dbs.items():
                    for key in self.workload.keys:
                        invoked = self.history.now_ns()
                        value, error = None, ""
                        with trio.move_on_after(self.config.op_timeout_s) as deadline:
                            try:
                                raw = await db.read(ks, key)
                                value = None if raw is None else parse_int(
                                    raw, f"key {key!r} in {region}")
                            except GarbageRead as exc:
                                error = f"{GARBAGE_READ}: {exc}"
                            except (MeridianError, OSError) as exc:
                                error = f"{type(exc).__name__}: {exc}"
                        if deadline.cancelled_caught:
                            error = f"timed out after {self.config.op_timeout_s} s"
                        reads.append((region, key, invoked, self.history.now_ns(), value, error))
                agreed = all(not r[5] for r in reads) and all(
                    len({r[4] for r in reads if r[1] == key}) == 1 for key in self.workload.keys)
                final = agreed or trio.current_time() >= give_up
                for region, key, invoked, completed, value, error in reads:
                    process = self.next_process
                    self.next_process += 1
                    f = convergence.FINAL_READ if final else "read"
                    base = {"process": process, "f": f, "key": key, "region": region}
                    self.history.events.append(
                        {**base, "type": "invoke", "value": None, "time_ns": invoked})
                    done = {**base, "type": "fail" if error else "ok", "value": value,
                            "time_ns": completed}
                    if error:
                        done["error"] = error
                        label = f"fail: {error.split(':')[0]}"
                        self.errors[label] = self.errors.get(label, 0) + 1
                    self.history.events.append(done)
                if final:
                    break
                await trio.sleep(0.3)
            for region, db in dbs.items():
                records: Any = None
                with trio.move_on_after(self.config.op_timeout_s):
                    try:
                        records = [
                            {"key": r.key, "winner": list(r.winner), "loser": list(r.loser),
                             "loser_value": r.loser_value}
                            for r in await db.conflicts(ks, limit=10_000)]
                    except (MeridianError, OSError) as exc:
                        records = f"{type(exc).__name__}: {exc}"
                self.history.record("conflicts", "info", CONFLICT_LOG,
                                    "timed out" if records is None else records, region=region)
        return agreed


async def _run_cluster(config: RunConfig, plan: FaultPlan, runner: _Runner, phase) -> bool:
    """The run's phases on a fresh cluster; returns whether the final read succeeded."""
    from engine.local import open_local_cluster

    async with open_local_cluster(
            config.regions, config.nodes_per_region, wan_latency_ms=config.wan_latency_ms,
            tick_interval_ms=config.tick_interval_ms, seed=config.seed,
            clock_offsets_ns=plan.clock_offsets_ns,
            raft_snapshot_every=config.snapshot_every) as cluster:
        phase("start")
        async with cluster.connect(config.regions[0],
                                   request_timeout_s=config.request_timeout_s) as first, \
                cluster.connect(config.regions[-1],
                                request_timeout_s=config.request_timeout_s) as last:
            await runner.setup(first)
            phase("setup")
            runner.history = History()  # time counts from the main phase
            if plan.clock_offsets_ns:
                runner.history.nemesis("clock-offsets", {str(k): v for k, v in
                                                         sorted(plan.clock_offsets_ns.items())})
            async with trio.open_nursery() as nursery:
                nemesis_scope = trio.CancelScope()

                async def nemesis() -> None:
                    with nemesis_scope:
                        await runner.nemesis(cluster)

                nursery.start_soon(nemesis)
                # Operations in flight at the time limit finish (within op_timeout_s) and are
                # recorded; none starts after it.
                runner.stop_at = trio.current_time() + config.time_limit_s
                async with trio.open_nursery() as clients:
                    for slot in range(config.processes):
                        clients.start_soon(runner.client, slot, cluster)
                nemesis_scope.cancel()
            phase("main")
            # Heal, then a quiet period long enough for abandoned intents to be recovered.
            runner.heal_partition(cluster)
            for node_id in sorted(runner.down):
                await runner.restart(cluster, node_id, None)
            await trio.sleep(config.quiet_s)
            phase("heal")
            if config.workload == "regional":
                final_ok = await runner.converge(cluster)
            else:
                final_ok = ("move-keyspace" not in plan.kinds
                            or await runner.finish_moves(cluster))
                final_ok = final_ok and await runner.final_read(last)
            if not final_ok:
                runner.diagnostics = runner.cluster_state(cluster)
            for node in cluster.nodes.values():
                runner.count_snapshots(node)
            phase("final")
    return final_ok


async def run(config: RunConfig, *, plan: FaultPlan | None = None,
              directory: str | Path | None = None) -> RunResult:
    """Runs ``config``: setup, main phase under faults, heal, quiet period, final reads, check.

    Args:
        config: the run.
        plan: the faults to inject (default: ``plan_faults(config)``, drawn from the seed).
        directory: where to write ``history.jsonl`` and ``results.json`` (nothing if None).

    Returns:
        The :class:`RunResult`, whatever the verdict.

    Cancellation: the cluster is stopped; nothing is written.
    """
    started = time.monotonic()
    if plan is None:
        plan = plan_faults(config)
    runner = _Runner(config, plan)
    phases: dict[str, float] = {}
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = now - mark
        mark = now

    stop_errors: list[str] = []
    with _recording_stop_errors(stop_errors):
        final_ok = await _run_cluster(config, plan, runner, phase)
    phase("stop")
    events = runner.history.events
    check = with_client_anomalies(runner.workload.check(events), events)
    phase("check")
    counts = dict.fromkeys(("ok", "fail", "info"), 0)
    functions = set(runner.workload.functions)
    for event in events:
        if event["f"] in functions and event["type"] in counts:
            counts[event["type"]] += 1
    # Operations never completed (none, unless the runner was interrupted) count as info.
    counts["info"] += sum(e["type"] == "invoke" for e in events if e["f"] in functions) - sum(
        counts.values())
    result = RunResult(config=config, plan=plan, history=events, counts=counts,
                       faults_fired={**runner.fired,
                                     "kill-coordinator-in-commit": runner.killed_in_commit},
                       errors=dict(sorted(runner.errors.items())),
                       check=check, seconds=time.monotonic() - started,
                       main_s=phases["main"], phases_s=phases, final_read_ok=final_ok,
                       stop_errors=stop_errors, diagnostics=runner.diagnostics,
                       snapshots=dict(runner.snapshots))
    if directory is not None:
        result.write(directory)
    return result


def run_sync(config: RunConfig, *, plan: FaultPlan | None = None,
             directory: str | Path | None = None) -> RunResult:
    """:func:`run` in a fresh trio loop."""
    return trio.run(lambda: run(config, plan=plan, directory=directory))


# ------------------------------------------------------------------------------------ the CLI


def parse_seeds(text: str) -> list[int]:
    """Seeds written as ``7``, ``1,5,9``, ``10-19`` or a mix (``1,5,10-19``). Raises
    ValueError when ``text`` names no seed (``19-10``): a run of no seed would pass."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if part:
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise ValueError(f"no seed in {text!r}")
    return seeds


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--isolation", choices=ISOLATION_LEVELS, default="snapshot")
    parser.add_argument("--seed", type=parse_seeds, default=[0], metavar="SEEDS",
                        help="a seed, a list 1,5,9 or a range 10-19 (default: 0)")
    parser.add_argument("--resolver", choices=REGIONAL_RESOLVERS, default="lww",
                        help="the regional workload's resolver (default: %(default)s)")
    parser.add_argument("--nodes-per-region", type=int, default=3)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--max-ops", type=int, default=300)
    parser.add_argument("--time-limit", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--faults", default=None, metavar="KINDS",
                        help=f"comma-separated subset of "
                             f"{','.join(FAULT_KINDS + EXTRA_FAULT_KINDS)}, or 'none' "
                             f"(default: a mix of {','.join(FAULT_KINDS)} drawn from the "
                             f"seed)")
    parser.add_argument("--intent-timeout", type=float, default=0.5, metavar="SECONDS",
                        help="engine.node.INTENT_TIMEOUT_S for the run (default: %(default)s; "
                             "the product's default suits longer runs)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write history.jsonl and results.json here (DIR/seed-N/ when "
                             "several seeds are given)")
    parser.set_defaults(func=cli)
    return parser


_DESCRIPTION = ("Runs a transactional workload (bank, list-append or regional convergence) "
                "against an in-process three-region cluster under coordinator kills, node "
                "crashes, clock skew and network partitions, and checks the history. Exit "
                "status: 0 every run valid and its final read served after healing, 1 "
                "otherwise, 2 arguments that describe no run.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``txnsim`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "txnsim", help="transactional workloads under faults, checked",
        description=_DESCRIPTION))


def cli(args: argparse.Namespace) -> int:
    import engine.node

    faults = None
    if args.faults is not None:
        faults = frozenset() if args.faults == "none" else frozenset(
            f for f in args.faults.split(",") if f)
    try:  # every run's configuration, checked before the first starts
        configs = [RunConfig(workload=args.workload, isolation=args.isolation, seed=seed,
                             resolver=args.resolver, nodes_per_region=args.nodes_per_region,
                             processes=args.processes, max_ops=args.max_ops,
                             time_limit_s=args.time_limit, faults=faults)
                   for seed in args.seed]
    except ValueError as exc:
        print(f"txnsim: error: {exc}", file=sys.stderr)
        return 2
    engine.node.INTENT_TIMEOUT_S = args.intent_timeout
    status = 0
    for config in configs:
        out = None
        if args.out is not None:
            out = (Path(args.out) / f"seed-{config.seed}" if len(configs) > 1
                   else Path(args.out))
        with compact_storage():
            result = run_sync(config, directory=out)
        print(result.summary())
        for error in result.stop_errors:
            print(f"  while stopping {error}")
        if not (result.valid and result.final_read_ok):
            status = 1
            if not result.valid:
                print(json.dumps({k: result.check.get(k)
                                  for k in ("forbidden", "anomaly_types")}))
            if out is not None:
                print(f"  history: {out / 'history.jsonl'}, report: {out / 'results.json'}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m bench.txnsim",
                                                description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
