"""The nemesis of ``python -m bench jepsen``: faults on a schedule, recorded in the history.

Jepsen's default rhythm (FAULTS.md §1): a healthy period, then one fault of a family drawn from
the seed (each family once per round, in a seeded order, so that families mix), held for a
while, then healed; again until the main phase ends; then everything is
healed. Every fault and every heal is one event in the history (``process: "nemesis"``,
``type: "info"``, ``f: "start-<family>"`` / ``"stop-<family>"``, ``value``: what was done).

Families (``FAMILIES``) and their targets:

``partition``
    nftables rules on the bridge (:meth:`LabCluster.cut`), one of ``PARTITION_SHAPES``:
    ``halves`` (nodes 1..n/2 against the rest), ``random-halves``, ``isolate-node``,
    ``isolate-leader`` (the leader of a random data group), ``majorities-ring`` (every node
    sees a majority, no two the same one), ``bridge`` (two halves joined by one node that sees
    both), ``one-way`` (one node's outgoing packets dropped, incoming delivered), ``region``
    (a whole region cut off from the others). A shape that would cut no pair of nodes on the
    cluster (a region cut with one region, a ring of majorities on three nodes) is left out of
    the defaults, and when drawn anyway another allowed shape is drawn; a partition fault with
    no shape that cuts anything is not done, recorded or counted.
``kill``
    SIGKILL, restarted at the heal, of ``KILL_TARGETS``: ``one``, ``minority`` (fewer than
    half the nodes), ``region`` (every node of one region), ``all``, ``leader``.
``pause``
    SIGSTOP, SIGCONT at the heal; the same targets but ``all``.
``clock``
    libfaketime offsets: ``bump`` (some nodes' wall clocks jump by up to ``clock_max_s``
    either way) or ``strobe`` (one node's clock flips between +d and -d every 50–200 ms).
    Offsets stay within half the cluster's clock-skew bound (``max_clock_offset_ms``) of the
    true time, so that no two nodes are further apart than the bound: skew beyond it is
    outside the failure model (nodes refuse to serve, ARCH §9), not a fault to survive.
``loss``
    10–40 % of the packets between nodes dropped.
``lossy``
    a power loss: the targets are killed and lose every write they had not fsynced
    (LossyFS), then restarted at the heal; targets as ``kill``.
``coordinator``
    while active, a writing transaction's coordinator (the client session) dies with
    probability ``coordinator_kill_p`` during or right after its commit (the client is the
    two-phase-commit coordinator, ARCH §5.5).

``vote-split`` (targeted, never part of ``all``; one region of three nodes)
    the scripted schedule of :mod:`bench.jepsen_targeted`: a restarted voter asked to vote a
    second time in a term it already voted in; two leaders of one term are recorded as
    ``two-leaders-in-one-term``, which the campaign reports as an anomaly. It counts as a
    fault only when an attempt armed the window (``vote-split-armed``).

A targeted schedule (``targets``) fixes the choice of each family: for example
``{"kill": ["region"]}`` kills whole regions only. The seed fixes every choice; the nodes'
timing (who leads when the fault strikes) still varies from run to run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from bench._common import pick
from bench.jepsen_cluster import LabCluster, sides_to_pairs
from bench.jepsen_targeted import TARGETED, VoteSplit

__all__ = ["FAMILIES", "PARTITION_SHAPES", "KILL_TARGETS", "CLOCK_MODES", "Nemesis",
           "check_targets", "partition_shapes_for"]

FAMILIES = ("partition", "kill", "pause", "clock", "loss", "lossy", "coordinator")
PARTITION_SHAPES = ("halves", "random-halves", "isolate-node", "isolate-leader",
                    "majorities-ring", "bridge", "one-way", "region")
KILL_TARGETS = ("one", "minority", "region", "all", "leader")
PAUSE_TARGETS = ("one", "minority", "region", "leader")
CLOCK_MODES = ("bump", "strobe")
# What a power loss's record keeps of LossyFS's report (bench.lossyfs.LossyFS.power_loss):
# write units (and directory-entry changes) lost and kept, and the files they were in.
LOSSY_REPORT_KEYS = ("units_lost", "units_kept", "files", "entry_changes_lost",
                     "entry_changes_kept")
# Targeted schedules (bench.jepsen_targeted): named alone, never part of ``all``.
TARGETED_FAMILIES = TARGETED
TARGETS = {"partition": PARTITION_SHAPES, "kill": KILL_TARGETS, "pause": PAUSE_TARGETS,
           "clock": CLOCK_MODES, "loss": ("random",), "lossy": KILL_TARGETS,
           "coordinator": ("random",), "vote-split": ("one",)}


def partition_shapes_for(nodes: int, regions: int) -> tuple[str, ...]:
    """The partition shapes that cut at least one pair of nodes on a cluster of ``nodes``
    nodes in ``regions`` regions. A ring of majorities needs four nodes (with three, every
    node's majority is the whole cluster), a bridge three (two sides and the bridge), a region
    cut two regions; the others two nodes."""
    needs = {"majorities-ring": nodes >= 4, "bridge": nodes >= 3, "region": regions >= 2}
    return tuple(s for s in PARTITION_SHAPES if nodes >= 2 and needs.get(s, True))


def check_targets(targets: Mapping[str, Sequence[str]]) -> None:
    """Raises ValueError naming a target (shape, mode) its family does not know."""
    for f, allowed in targets.items():
        bad = set(allowed) - set(TARGETS[f])
        if bad:
            raise ValueError(f"unknown {f} targets {sorted(bad)}; known: {TARGETS[f]}")


class Nemesis:
    """Injects and heals faults on ``cluster`` and records them.

    Args:
        cluster: the lab cluster.
        record: ``record(f, value)`` appends a nemesis event to the history.
        families: the families to draw from.
        seed: fixes every choice.
        interval_s: (low, high) seconds of a healthy period, and of a fault.
        targets: family → the targets (or shapes, modes) allowed; default all.
        clock_max_s: largest clock offset either way (capped at half the cluster's
            ``max_clock_offset_ms``).
    """

    def __init__(self, cluster: LabCluster, record, families: Sequence[str], seed: int, *,
                 interval_s: tuple[float, float] = (8.0, 12.0),
                 targets: Mapping[str, Sequence[str]] | None = None,
                 clock_max_s: float = 0.2, coordinator_kill_p: float = 0.3) -> None:
        unknown = set(families) - set(FAMILIES) - set(TARGETED_FAMILIES)
        if unknown:
            raise ValueError(f"unknown nemesis families {sorted(unknown)}; known: {FAMILIES}")
        self.cluster = cluster
        self.record = record
        self.families = list(families)
        self.rng = random.Random(f"nemesis/{seed}")
        self.interval_s = interval_s
        self.targets = {f: list((targets or {}).get(f) or TARGETS[f])
                        for f in FAMILIES + TARGETED_FAMILIES}
        if not (targets or {}).get("partition"):
            # By default only the shapes that cut something on this cluster (a shape that
            # cuts nothing is re-drawn anyway; see _start_partition).
            fitting = partition_shapes_for(len(cluster.node_ids), len(cluster.spec.regions))
            self.targets["partition"] = list(fitting or PARTITION_SHAPES)
        check_targets(self.targets)
        # Each offset is within ±bound/2 of the true clock (which every unskewed node keeps),
        # so any two nodes are at most the bound apart: inside the failure model.
        self.clock_max_s = min(clock_max_s, cluster.spec.max_clock_offset_ms / 2000.0)
        self.coordinator_kill_p = coordinator_kill_p
        self.kill_probability = 0.0  # read by the clients (family ``coordinator``)
        self.fired: dict[str, int] = dict.fromkeys(FAMILIES + TARGETED_FAMILIES, 0)
        self._stop_at = 0.0
        self._active: tuple[str, dict[str, Any]] | None = None
        self._strobe: tuple[trio.CancelScope, trio.Event] | None = None

    # ---------------------------------------------------------------- schedule

    async def run(self, stop_at: float) -> None:
        """Alternates healthy periods and faults until trio time ``stop_at`` (a fault in
        force then is healed)."""
        if not self.families:
            return
        self._stop_at = stop_at
        order: list[str] = []
        try:
            while True:
                quiet = self.rng.uniform(*self.interval_s)
                if trio.current_time() + quiet >= stop_at - 1.0:
                    break
                await trio.sleep(quiet)
                if not order:  # every family once, in a seeded order, then again
                    order = self.families[:]
                    self.rng.shuffle(order)
                family = order.pop()
                target = self.rng.choice(self.targets[family])
                await self.start(family, target)
                hold = self.rng.uniform(*self.interval_s)
                await trio.sleep(max(0.0, min(hold, stop_at - trio.current_time())))
                await self.stop()
                if trio.current_time() >= stop_at:
                    break
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()

    async def start(self, family: str, target: str) -> bool:
        """Injects a fault of ``family``; returns whether one was injected. A fault that
        would change nothing on this cluster (no partition shape that cuts a pair of nodes)
        is neither done nor recorded."""
        detail = await getattr(self, f"_start_{family.replace('-', '_')}")(target)
        if detail is None:
            return False
        self._active = (family, detail)
        # A targeted schedule counts only when it armed its window; an attempt that gave up
        # at every try tested nothing.
        if family not in TARGETED_FAMILIES or detail.get("armed"):
            self.fired[family] += 1
        self.record(f"start-{family}", {"target": target, **detail})
        return True

    async def stop(self) -> None:
        """Heals the fault in force, if any."""
        if self._active is None:
            return
        family, detail = self._active
        self._active = None
        healed = await getattr(self, f"_stop_{family.replace('-', '_')}")(detail)
        self.record(f"stop-{family}", healed or None)

    async def heal_all(self) -> list[int]:
        """The final heal: the fault in force, then anything left (network, clocks, paused
        and stopped nodes)."""
        await self.stop()
        self.kill_probability = 0.0
        started = self.cluster.heal_all()
        self.record("heal-all", {"started": started})
        return started

    # ---------------------------------------------------------------- choices

    def _nodes(self) -> list[int]:
        return list(self.cluster.node_ids)

    async def _pick(self, target: str) -> list[int]:
        nodes = self._nodes()
        if target == "one":
            return [self.rng.choice(nodes)]
        if target == "minority":
            return sorted(self.rng.sample(nodes, max(1, (len(nodes) - 1) // 2)))
        if target == "region":
            return self.cluster.nodes_in(self.rng.choice(self.cluster.spec.regions))
        if target == "all":
            return nodes
        if target == "leader":
            return [await self._leader()]
        raise ValueError(target)

    async def _leader(self) -> int:
        """The leader of a random data group (group ids 100 and up), or a random node when no
        leader is known. Either way it takes one number from the seed's stream, drawn before
        asking: who leads (timing) must not change what the rest of the schedule draws."""
        u = self.rng.random()
        leaders = await self.cluster.leaders()
        pool = [n for _, n in sorted((g, n) for g, n in leaders.items() if g >= 100)]
        pool = pool or self._nodes()
        return pick(pool, u)

    # ---------------------------------------------------------------- partition

    async def _start_partition(self, shape: str) -> dict[str, Any] | None:
        """The partition ``shape``; when it would cut no pair of nodes here, another of the
        allowed shapes (in a seeded order) that does; None when none does."""
        candidates = [shape]
        while candidates:
            candidate = candidates.pop(0)
            sides, pairs = await self._partition(candidate)
            if pairs:
                self.cluster.cut(pairs)
                return {"target": candidate, "shape": candidate, "sides": sides,
                        "cut": len(pairs)}
            if candidate == shape:  # drawn only when needed: the seed's other choices stay
                candidates = [s for s in self.targets["partition"] if s != shape]
                self.rng.shuffle(candidates)
        return None

    async def _partition(self, shape: str) -> tuple[list[list[int]], set[tuple[int, int]]]:
        """(sides, directed pairs to cut) of ``shape`` on this cluster."""
        nodes = self._nodes()
        n = len(nodes)
        if shape == "halves":
            sides = [nodes[:n // 2], nodes[n // 2:]]
            pairs = sides_to_pairs(sides)
        elif shape == "random-halves":
            shuffled = nodes[:]
            self.rng.shuffle(shuffled)
            sides = [sorted(shuffled[:n // 2]), sorted(shuffled[n // 2:])]
            pairs = sides_to_pairs(sides)
        elif shape in ("isolate-node", "isolate-leader"):
            victim = (await self._leader() if shape == "isolate-leader"
                      else self.rng.choice(nodes))
            sides = [[victim], [x for x in nodes if x != victim]]
            pairs = sides_to_pairs(sides)
        elif shape == "region":
            region = self.rng.choice(self.cluster.spec.regions)
            inside = self.cluster.nodes_in(region)
            sides = [inside, [x for x in nodes if x not in inside]]
            pairs = sides_to_pairs(sides)
        elif shape == "majorities-ring":
            ring = nodes[:]
            self.rng.shuffle(ring)
            reach = (n // 2) // 2 + ((n // 2) % 2)  # each node sees 2*reach + 1 >= majority
            pairs = set()
            for i, a in enumerate(ring):
                for j, b in enumerate(ring):
                    d = min(abs(i - j), n - abs(i - j))
                    if d > reach:
                        pairs.add((a, b))
            sides = [ring]
        elif shape == "bridge":
            shuffled = nodes[:]
            self.rng.shuffle(shuffled)
            bridge = shuffled[0]
            rest = shuffled[1:]
            a, b = sorted(rest[:len(rest) // 2]), sorted(rest[len(rest) // 2:])
            sides = [a, [bridge], b]
            pairs = sides_to_pairs([a, b])
        elif shape == "one-way":
            victim = self.rng.choice(nodes)
            sides = [[victim], [x for x in nodes if x != victim]]
            pairs = {(victim, x) for x in nodes if x != victim}
        else:
            raise ValueError(shape)
        return sides, pairs

    async def _stop_partition(self, detail: dict[str, Any]) -> dict[str, Any]:
        self.cluster.heal_network()
        return {"healed": "network"}

    # ---------------------------------------------------------------- processes

    async def _start_kill(self, target: str) -> dict[str, Any]:
        victims = await self._pick(target)
        for node in victims:
            self.cluster.kill_node(node)
        return {"nodes": victims}

    async def _stop_kill(self, detail: dict[str, Any]) -> dict[str, Any]:
        started = [n for n in detail["nodes"] if not self.cluster.running(n)]
        for node in started:
            self.cluster.start_node(node)
        return {"started": started}

    async def _start_lossy(self, target: str) -> dict[str, Any]:
        victims = await self._pick(target)
        lost = {}
        for node in victims:
            report = self.cluster.power_loss(node, seed=self.rng.randrange(2**32))
            if report is not None:
                lost[str(node)] = {k: report[k] for k in LOSSY_REPORT_KEYS if k in report}
        return {"nodes": victims, "lost": lost}

    async def _stop_lossy(self, detail: dict[str, Any]) -> dict[str, Any]:
        return await self._stop_kill(detail)

    async def _start_pause(self, target: str) -> dict[str, Any]:
        victims = await self._pick(target)
        for node in victims:
            self.cluster.pause_node(node)
        return {"nodes": victims}

    async def _stop_pause(self, detail: dict[str, Any]) -> dict[str, Any]:
        for node in detail["nodes"]:
            self.cluster.resume_node(node)
        return {"resumed": detail["nodes"]}

    # ---------------------------------------------------------------- clocks

    async def _start_clock(self, mode: str) -> dict[str, Any]:
        nodes = self._nodes()
        if mode == "bump":
            victims = sorted(self.rng.sample(nodes, self.rng.randint(1, max(1, len(nodes) // 2))))
            offsets = {}
            for node in victims:
                offset = round(self.rng.uniform(-self.clock_max_s, self.clock_max_s), 3)
                self.cluster.set_clock(node, offset)
                offsets[str(node)] = offset
            return {"offsets_s": offsets}
        victim = self.rng.choice(nodes)
        delta = round(self.rng.uniform(self.clock_max_s / 2, self.clock_max_s), 3)
        period = self.rng.uniform(0.05, 0.2)
        scope, done = trio.CancelScope(), trio.Event()
        self._strobe = scope, done

        async def strobe() -> None:
            sign = 1
            try:
                with scope:
                    while True:
                        self.cluster.set_clock(victim, sign * delta)
                        sign = -sign
                        await trio.sleep(period)
            finally:
                done.set()

        trio.lowlevel.spawn_system_task(strobe)
        return {"node": victim, "delta_s": delta, "period_s": round(period, 3)}

    async def _stop_clock(self, detail: dict[str, Any]) -> dict[str, Any]:
        if self._strobe is not None:
            # The strobe may set the clock once more before it sees the cancellation (when it
            # had not run yet, or its sleep had just ended): reset only after it has ended.
            scope, done = self._strobe
            self._strobe = None
            scope.cancel()
            await done.wait()
        reset = [n for n, off in self.cluster.clock_offsets_s.items() if off]
        for node in reset:
            self.cluster.set_clock(node, 0.0)
        return {"reset": reset}

    # ---------------------------------------------------------------- targeted

    async def _start_vote_split(self, target: str) -> dict[str, Any]:
        schedule = VoteSplit(self.cluster, self.record)
        return await schedule.run(deadline=self._stop_at - 2.0)

    async def _stop_vote_split(self, detail: dict[str, Any]) -> dict[str, Any]:
        self.cluster.heal_network()
        resumed = sorted(self.cluster.paused)
        for node in resumed:
            self.cluster.resume_node(node)
        started = [n for n in self.cluster.node_ids if not self.cluster.running(n)]
        for node in started:
            self.cluster.start_node(node)
        return {"resumed": resumed, "started": started}

    # ---------------------------------------------------------------- packets, coordinators

    async def _start_loss(self, target: str) -> dict[str, Any]:
        percent = self.rng.randint(10, 40)
        self.cluster.set_loss(percent)
        return {"percent": percent}

    async def _stop_loss(self, detail: dict[str, Any]) -> dict[str, Any]:
        self.cluster.set_loss(0)
        return {"healed": "loss"}

    async def _start_coordinator(self, target: str) -> dict[str, Any]:
        self.kill_probability = self.coordinator_kill_p
        return {"kill_probability": self.kill_probability}

    async def _stop_coordinator(self, detail: dict[str, Any]) -> dict[str, Any]:
        self.kill_probability = 0.0
        return {"kill_probability": 0.0}
