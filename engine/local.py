"""An in-process cluster for applications' own tests (and for Meridian's).

Example::

    async with engine.open_local_cluster(regions=("us-east", "eu-west"),
                                         nodes_per_region=3) as cluster:
        async with cluster.connect(region="eu-west") as db:
            await db.create_keyspace("orders", home_region="us-east")
            ...

Every node runs in the caller's trio loop, with its own data directory and real loopback
sockets, exactly as a node process would (same code: :class:`engine.node.Node`); only the
processes are missing. Nodes can be stopped and started again (:meth:`LocalCluster.stop_node`,
:meth:`LocalCluster.start_node`) to test failover and restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import random
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .client import connect
from .config import ClusterConfig, Limits, NodeConfig, default_local_cluster
from .errors import InvalidArgumentError
from .mvcc import MAX_TS
from .node import Node

__all__ = ["LocalCluster", "open_local_cluster", "free_base_port"]

LOCAL_ELECTION_TICKS = 20
LOCAL_HEARTBEAT_TICKS = 2
"""Raft timing of in-process clusters, in ticks of their ``tick_interval_ms`` (20 ms unless
given): with the default tick, heartbeats every 40 ms and elections after 0.4–0.8 s."""

START_ATTEMPTS = 5
"""Times :func:`open_local_cluster` starts its nodes on newly chosen ports when a port it chose
was taken before its node could bind it."""


_LOW_PORT = 10000
_EPHEMERAL_PORT = 32768


def free_base_port(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port ``p`` such that ``p .. p + count - 1`` could be bound on ``host`` just now.

    Raises:
        InvalidArgumentError: ``count`` ports do not fit in the range searched.
        OSError: no such ports were free in ``attempts`` tries.
    """
    rng = random.Random()
    # Below Linux's ephemeral range (32768..60999): a port there may be taken between this
    # check and the bind by an outgoing connection, such as one node's to another.
    if count >= _EPHEMERAL_PORT - _LOW_PORT:
        raise InvalidArgumentError(
            f"{count} consecutive ports do not fit in {_LOW_PORT}..{_EPHEMERAL_PORT - 1}, "
            f"below the ephemeral ports (a local cluster takes two per node: at most "
            f"{(_EPHEMERAL_PORT - _LOW_PORT - 1) // 2} nodes)")
    for _ in range(attempts):
        base = rng.randrange(_LOW_PORT, _EPHEMERAL_PORT - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {count} consecutive free ports found on {host}")


def _check_clock_offset(node_id: int, offset: Any) -> None:
    """Refuses an offset the node's hybrid clock would refuse at its first reading (only
    then, in the middle of serving a client, and again at every reading after)."""
    if type(offset) is not int or not 0 <= time.time_ns() + offset <= MAX_TS:
        raise InvalidArgumentError(
            f"clock offset of node {node_id} must be an int of nanoseconds that keeps its "
            f"clock in 0..{MAX_TS} ns after the epoch, got {offset!r}")


class LocalCluster:
    """A running in-process cluster (see :func:`open_local_cluster`)."""

    def __init__(self, nursery: trio.Nursery, config: ClusterConfig, directory: Path,
                 seed: int | None, *, raft_fsync: str = "async") -> None:
        self._nursery = nursery
        self.config = config
        self.directory = directory
        self._seed = seed
        self._raft_fsync = raft_fsync
        self.nodes: dict[int, Node] = {}
        self._scopes: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        self._starting: set[int] = set()  # nodes a start_node is starting (not yet in _scopes)
        self._ended = False  # the cluster's block has ended: no node starts any more
        # The partition in force ({node id: the node ids it cannot reach}), kept here rather
        # than only in the running nodes so that a node started later is cut as well.
        self._cut: dict[int, frozenset[int]] = {}

    def client_addresses(self, region: str | None = None) -> list[str]:
        """The nodes' client addresses, ``"host:port"`` (of ``region`` only, if given): what
        :func:`engine.client.connect` and :func:`engine.blocking.connect_blocking` take."""
        return [f"{n.client_host}:{n.client_port}" for n in self.config.all_nodes()
                if region is None or n.region == region]

    def connect(self, region: str | None = None, **kwargs: Any):
        """``async with cluster.connect(region=...) as db``: a client of this cluster.

        Raises:
            InvalidArgumentError: ``region`` is not one of the cluster's.
        """
        region = region or self.config.region_names[0]
        self.config.nodes_in(region)  # names the unknown region and the cluster's regions
        return connect(self.client_addresses(region), region=region, **kwargs)

    async def start_node(self, node_id: int, *, clock_offset_ns: int = 0) -> Node:
        """Starts (or restarts) a node; ``clock_offset_ns`` skews its wall clock. A
        partition in force (:meth:`partition`) applies to it too.

        Raises:
            InvalidArgumentError: no such node in the cluster, or it is running (or starting)
                already, or a ``clock_offset_ns`` that is not an int or takes the clock out of
                range, or the cluster's ``async with`` block has ended.
        """
        self.config.node(node_id)  # names the unknown node and the cluster's node ids
        _check_clock_offset(node_id, clock_offset_ns)
        while True:
            if self._ended:
                raise InvalidArgumentError("the local cluster has ended (its async with block "
                                           "is over): no node starts any more")
            if node_id in self._starting:
                raise InvalidArgumentError(f"node {node_id} is running")
            if node_id not in self._scopes:
                break
            scope, done = self._scopes[node_id]
            if not scope.cancel_called:
                raise InvalidArgumentError(f"node {node_id} is running")
            # A stop_node that was itself cancelled: the node is still closing, and holds
            # its data directory until it has.
            await done.wait()
        self._starting.add(node_id)
        try:
            return await self._start(node_id, clock_offset_ns)
        finally:
            self._starting.discard(node_id)

    async def _start(self, node_id: int, clock_offset_ns: int) -> Node:
        cfg = NodeConfig(node_id=node_id, data_dir=str(self.directory / f"node-{node_id}"),
                         cluster=self.config, raft_fsync=self._raft_fsync)
        physical = None
        if clock_offset_ns:
            def physical() -> int:
                return time.time_ns() + clock_offset_ns
        node = Node(cfg, seed=None if self._seed is None else self._seed + node_id,
                    physical_clock=physical)
        scope = trio.CancelScope()
        done = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                done.set()
                # Forgotten only once it has closed everything: until then it still holds
                # its data directory and ports, and stop_node can wait for it again.
                if self._scopes.get(node_id) == (scope, done):
                    del self._scopes[node_id]
                    self.nodes.pop(node_id, None)

        # Cut before it starts (requests to other groups' leaders) and once it has started
        # (its transport exists only then): the others already drop what they send to it.
        node.isolate_from(self._cut.get(node_id, ()))
        await self._nursery.start(run)
        node.isolate_from(self._cut.get(node_id, ()))
        if not done.is_set():  # not if it has ended already (the cluster is closing)
            self._scopes[node_id] = (scope, done)
            self.nodes[node_id] = node
        return node

    def partition(self, *sides) -> None:
        """Cuts the network between ``sides`` (iterables of node ids; nodes in no side form
        one more side): Raft messages and node-to-node requests across a cut are lost, in
        both directions. Clients still reach every node. It replaces any partition in force,
        applies to every node of the cluster, stopped ones included, and lasts across restarts
        until :meth:`heal`.

        Raises:
            InvalidArgumentError: a node id that is not the cluster's, or one in two sides.
        """
        try:
            sides = [set(side) for side in sides]
        except TypeError:
            raise InvalidArgumentError(
                f"sides must be iterables of node ids, such as {{1}}, {{2, 3}}; got "
                f"{', '.join(repr(side) for side in sides)}") from None
        seen: set = set()
        for side in sides:
            for node_id in side:
                self.config.node(node_id)
                if node_id in seen:
                    raise InvalidArgumentError(f"node {node_id} is in more than one side")
            seen |= side
        every = {n.id for n in self.config.all_nodes()}
        rest = every - set().union(*sides)
        if rest:
            sides.append(rest)
        side_of = {n: i for i, side in enumerate(sides) for n in side}
        self._cut = {node_id: frozenset(o for o in every if side_of[o] != side_of[node_id])
                     for node_id in every}
        for node_id, node in self.nodes.items():
            node.isolate_from(self._cut[node_id])

    def heal(self) -> None:
        """Ends every partition."""
        self._cut = {}
        for node in self.nodes.values():
            node.isolate_from(())

    async def stop_node(self, node_id: int) -> None:
        """Stops a node and waits until it has closed everything. To the network this is a
        crash (connections drop, nothing is said); its data directory keeps what it synced.
        If this call is cancelled, the node goes on closing: :meth:`stop_node` waits for it
        again, and :meth:`start_node` waits before it starts the node anew.

        Raises:
            InvalidArgumentError: no such node in the cluster, or it is not running.
        """
        self.config.node(node_id)  # names the unknown node and the cluster's node ids
        if node_id not in self._scopes:
            raise InvalidArgumentError(f"node {node_id} is not running")
        scope, done = self._scopes[node_id]
        scope.cancel()
        await done.wait()  # the node's task forgets it once it has closed


@asynccontextmanager
async def open_local_cluster(
    regions: Iterable[str] = ("us-east", "eu-west", "ap-south"),
    nodes_per_region: int = 3,
    *,
    directory: str | None = None,
    wan_latency_ms: Mapping[Any, float] | None = None,
    tick_interval_ms: int = 20,
    limits: Limits | None = None,
    seed: int | None = None,
    clock_offsets_ns: Mapping[int, int] | None = None,
    raft_fsync: str = "async",
    raft_snapshot_every: int = 10_000,
    resolvers: Mapping[str, Any] | None = None,
) -> AsyncIterator[LocalCluster]:
    """Runs a cluster of ``regions`` × ``nodes_per_region`` nodes in this trio loop.

    Args:
        directory: where the nodes keep their data (default: a temporary directory, removed
            afterwards).
        wan_latency_ms: one-way latency per region pair (default: none — set it to simulate a
            geo-distributed cluster, e.g. ``{("us-east", "eu-west"): 35}``).
        tick_interval_ms: Raft tick: heartbeats every :data:`LOCAL_HEARTBEAT_TICKS` ticks,
            elections after :data:`LOCAL_ELECTION_TICKS` to twice that without one (short, so
            that tests of failures run fast).
        limits: transaction limits.
        seed: seeds Raft election jitter and link models (None: random).
        clock_offsets_ns: ``{node_id: offset}`` skews those nodes' wall clocks by ``offset``
            nanoseconds, an int (for tests of clock-offset detection).
        raft_fsync: every node's ``raft_fsync`` setting (``"async"``, ``"loop"`` or
            ``"thread"``, see :class:`engine.config.NodeConfig`).
        raft_snapshot_every: entries between two compactions of a group's Raft log (see
            :class:`engine.config.ClusterConfig`; small values exercise snapshots in tests).
        resolvers: application resolvers, ``{name: function or "module:function"}``, for
            regional keyspaces created with ``resolver="app:<name>"`` (see
            :class:`engine.config.ClusterConfig` and :mod:`engine.merge`).

    Raises:
        InvalidArgumentError: ``regions`` a single string, ``nodes_per_region`` not a positive
            int, a ``seed`` that is neither None nor an int, a node id in
            ``clock_offsets_ns`` that is not the cluster's or an offset that is not an int.
        engine.config.ConfigError: another bad argument (a region name, a WAN latency, a
            tick interval, limits: see :func:`engine.config.default_local_cluster`). Both
            subclass ``ValueError``.
    """
    # Checked before anything is built from them: tuple("eu") would be the regions "e" and "u".
    if isinstance(regions, str):
        raise InvalidArgumentError(
            f"regions must be a sequence of region names, not the string {regions!r}")
    if type(nodes_per_region) is not int or nodes_per_region < 1:
        raise InvalidArgumentError(
            f"nodes_per_region must be a positive int, got {nodes_per_region!r}")
    # Each node's seed is this one plus its id: anything but an int failed there, as a
    # TypeError from inside the first node's start, once the directory was made.
    if seed is not None and type(seed) is not int:
        raise InvalidArgumentError(f"seed must be None or an int, got {seed!r:.80}")
    names = tuple(regions)
    count = len(names) * nodes_per_region

    def make_config() -> ClusterConfig:
        cluster = default_local_cluster(names, nodes_per_region, free_base_port(2 * count),
                                        wan_latency_ms=wan_latency_ms or {})
        return dataclasses.replace(
            cluster, tick_interval_ms=tick_interval_ms, election_ticks=LOCAL_ELECTION_TICKS,
            heartbeat_ticks=LOCAL_HEARTBEAT_TICKS, limits=limits or cluster.limits,
            raft_snapshot_every=raft_snapshot_every, resolvers=resolvers or {})

    cluster = make_config()
    # Checked before any node starts: an unknown id would skew no node at all, silently.
    offsets = dict(clock_offsets_ns or {})
    for node_id, offset in offsets.items():
        cluster.node(node_id)  # names the unknown node and the cluster's node ids
        _check_clock_offset(node_id, offset)
    with (contextlib.nullcontext(directory) if directory is not None
          else tempfile.TemporaryDirectory(prefix="meridian-local-")) as path:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # A file where the directory, or one of its parents, should be: "File exists"
            # alone did not say which argument was wrong.
            raise InvalidArgumentError(f"directory {str(path)!r:.200} is not a directory: a "
                                       f"file of that name, or of one of its parents, exists"
                                       ) from None
        for attempt in range(1, START_ATTEMPTS + 1):
            async with trio.open_nursery() as nursery:
                lc = LocalCluster(nursery, cluster, Path(path), seed, raft_fsync=raft_fsync)
                try:
                    for node in cluster.all_nodes():
                        await lc.start_node(node.id, clock_offset_ns=offsets.get(node.id, 0))
                except OSError as exc:
                    # The ports were free when chosen, and something else (another cluster
                    # starting at the same time) bound one since: start again on others.
                    # The nodes' data directories do not depend on their ports.
                    if exc.errno != errno.EADDRINUSE or attempt == START_ATTEMPTS:
                        raise
                    nursery.cancel_scope.cancel()
                    cluster = make_config()
                    continue
                try:
                    yield lc
                finally:
                    lc._ended = True
                    nursery.cancel_scope.cancel()
            return

