"""The systems a YCSB-style benchmark runs against, started (and stopped) here.

Each target is a context manager yielding a :class:`Target`: the driver spec the load
processes use (``bench/drivers.py``), the server processes' PIDs (for CPU and memory), their
data directories (for bytes on disk) and, for Meridian, the PID of the data group's leader
(what to profile). Everything a target starts is stopped, by PID, and its files removed when the
``with`` block ends, on success and on error alike.

- ``meridian`` (``kind="procs"``): a local multi-process cluster (``engine.procs.cluster_up``):
  ``regions`` × ``nodes_per_region`` ``meridian node`` processes, no simulated WAN latency
  unless asked, and one keyspace per region homed there (``ycsb-<region>``).
- ``meridian`` (``kind="inprocess"``): ``engine.open_local_cluster`` in a thread of this
  process; the servers share the harness's process, so their CPU and memory are not reported.
- ``meridian`` (``kind="external"``): ``--nodes host:port,...`` of a running cluster, in the
  regions asked for or, by default, in the region of the first node that answers (the
  cluster's own region names); the keyspaces are created for the run and dropped after it,
  and a cluster that has a keyspace of one of their names already is refused (its data is
  not the benchmark's to overwrite); no process figures.
- ``etcd``: three members of Debian's ``etcd-server`` on 127.0.0.1, started by
  ``bench/raft_peers.py``; clients talk to the leader.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

__all__ = ["Target", "TargetError", "TargetUnavailable", "etcd_target", "keyspace_for",
           "meridian_target"]


class TargetError(RuntimeError):
    """A target could not be started or reached: its runs fail."""


class TargetUnavailable(TargetError):
    """A target this machine does not have (a peer not installed): its runs are skipped."""


DEFAULT_REGIONS = ("us-east",)
"""The region of a cluster started here when no regions are asked for."""


def keyspace_for(region: str) -> str:
    return f"ycsb-{region}"


@dataclass
class Target:
    system: str
    kind: str
    drivers: dict[str, dict]  # region (or "" for a peer) -> driver spec
    pids: list[int] = field(default_factory=list)
    data_dirs: list[str] = field(default_factory=list)
    leader_pid: int | None = None
    notes: list[str] = field(default_factory=list)
    version: str | None = None
    # Meridian: bytes the nodes of each region sent to other regions so far (summed), from
    # the nodes' statistics; None for systems that do not count them.
    cross_region_bytes: Callable[[], int] | None = None

    @property
    def driver(self) -> dict:
        """The driver of the first (home) region."""
        return next(iter(self.drivers.values()))


REGIONAL_KEYSPACE = "ycsb-regional"


def _cross_region_counter(nodes: list[str], region: str) -> Callable[[], int]:
    """A function returning the bytes Meridian's nodes sent across regions so far."""
    import engine

    async def total() -> int:
        async with engine.connect(nodes, region=region) as db:
            return sum((await db.statistics())["cross_region_bytes"].values())

    return lambda: trio.run(total)


async def _create_keyspaces(nodes: list[str], region: str, regions: tuple[str, ...],
                            regional: bool = False, *, exist_ok: bool = True,
                            created: list[str] | None = None) -> None:
    """Creates the benchmark's keyspaces, appending each one created to ``created``; without
    ``exist_ok``, one that exists already raises KeyspaceExistsError."""
    import engine
    from engine.errors import KeyspaceExistsError

    wanted = [(keyspace_for(r), {"home_region": r}) for r in regions]
    if regional:
        wanted.append((REGIONAL_KEYSPACE, {"mode": "regional"}))
    async with engine.connect(nodes, region=region) as db:
        for name, options in wanted:
            try:
                await db.create_keyspace(name, **options)
            except KeyspaceExistsError:
                if not exist_ok:
                    raise
                continue
            if created is not None:
                created.append(name)


async def _drop_keyspaces(nodes: list[str], region: str, names: list[str]) -> None:
    import engine

    async with engine.connect(nodes, region=region) as db:
        for name in names:
            await db.drop_keyspace(name)


def _drivers(addresses: dict[str, list[str]], regions: tuple[str, ...], mix: bool) -> dict:
    """One driver spec per region; with ``mix``, the keyspaces of the multi-region mix too
    (home: the client's region's; cross: the last region's, the farthest by default)."""
    out = {}
    for r in regions:
        spec = {"system": "meridian", "nodes": addresses[r], "region": r,
                "keyspace": keyspace_for(r)}
        if mix:
            far = [x for x in regions if x != r][-1] if len(regions) > 1 else r
            spec["keyspaces"] = {"home": keyspace_for(r), "cross": keyspace_for(far),
                                 "regional": REGIONAL_KEYSPACE}
        out[r] = spec
    return out


@contextlib.contextmanager
def meridian_target(kind: str, *, workdir: str, regions: tuple[str, ...] | None = None,
                    nodes_per_region: int = 3, nodes: list[str] | None = None,
                    wan: bool = False, mix: bool = False) -> Iterator[Target]:
    """Starts (or reaches) a Meridian cluster with a ``ycsb-<region>`` keyspace per region.

    ``regions``: default :data:`DEFAULT_REGIONS` for a cluster started here; for an external
    one, the region of the first of ``nodes`` that answers (the client's default region).
    ``wan``: simulated WAN latency between regions (the local cluster's default one-way
    latencies: 35, 70 and 110 ms); ``mix``: also a regional keyspace, and driver specs for
    the multi-region mix.
    """
    if kind == "procs":
        yield from _meridian_procs(workdir, regions or DEFAULT_REGIONS, nodes_per_region, wan,
                                   mix)
    elif kind == "inprocess":
        yield from _meridian_inprocess(regions or DEFAULT_REGIONS, nodes_per_region, wan, mix)
    elif kind == "external":
        if not nodes:
            raise TargetError("an external cluster needs --nodes host:port,...")
        yield from _meridian_external(nodes, regions, mix)
    else:
        raise TargetError(f"unknown target kind {kind!r}")


START_ATTEMPTS = 2  # a cluster whose nodes did not come up is started again on fresh ports


def _meridian_procs(workdir, regions, nodes_per_region, wan, mix) -> Iterator[Target]:
    from engine.errors import MeridianError
    from engine.procs import ClusterProcesses, cluster_up, wait_ready

    for attempt in range(1, START_ATTEMPTS + 1):
        rundir = tempfile.mkdtemp(prefix="meridian-", dir=workdir)
        procs = ClusterProcesses(rundir)
        try:
            procs = cluster_up(rundir, regions=regions, nodes_per_region=nodes_per_region,
                               wan_latency_ms=None if wan else {})
            cluster = procs.load_cluster()
            try:
                trio.run(wait_ready, cluster)
                addresses = {r: [f"{n.client_host}:{n.client_port}"
                                 for n in cluster.nodes_in(r)] for r in regions}
                trio.run(_create_keyspaces, addresses[regions[0]], regions[0], regions, mix)
                leader = trio.run(_data_leader, cluster, regions[0])
            except MeridianError as exc:
                if attempt < START_ATTEMPTS:
                    print(f"meridian cluster did not start ({exc}); trying again",
                          file=sys.stderr)
                    continue
                raise TargetError(f"meridian cluster did not start: {exc}\n"
                                  f"{_log_tails(procs)}") from exc
            pids = [p for n in procs.node_ids() if (p := procs.running_pid(n)) is not None]
            yield Target(
                system="meridian", kind="procs",
                drivers=_drivers(addresses, regions, mix), pids=pids,
                data_dirs=[str(procs.directory / f"node-{n}") for n in procs.node_ids()],
                leader_pid=procs.running_pid(leader) if leader else None,
                cross_region_bytes=_cross_region_counter(addresses[regions[0]], regions[0]))
            return
        finally:
            procs.stop()
            shutil.rmtree(rundir, ignore_errors=True)


def _log_tails(procs, limit: int = 1500) -> str:
    """The end of every node's log and of its stdout and stderr (why a node did not start:
    said in its log, or before the log was open, or in a traceback)."""
    out = []
    for n in procs.node_ids():
        for path in (procs.log_path(n), procs.output_path(n)):
            try:
                tail = path.read_bytes()[-limit:]
            except OSError:
                continue
            if tail.strip():
                out.append(f"--- node {n}, {path.name}:\n" + tail.decode("utf-8", "replace"))
    return "\n".join(out)


async def _data_leader(cluster, region: str) -> int | None:
    """The node leading ``region``'s data group (the group of a keyspace homed there)."""
    import engine

    nodes = [f"{n.client_host}:{n.client_port}" for n in cluster.nodes_in(region)]
    async with engine.connect(nodes, region=region) as db:
        ks = await db.keyspace(keyspace_for(region))
        group = db.group_of(ks)
        for _ in range(50):
            status = await db.status()
            for node_id, st in status.items():
                g = (st.get("groups") or {}).get(group) or (st.get("groups") or {}).get(
                    str(group))
                if g and g.get("role") == "leader":
                    return int(node_id)
            await trio.sleep(0.1)
    return None


def _meridian_inprocess(regions, nodes_per_region, wan, mix) -> Iterator[Target]:
    from engine.config import DEFAULT_WAN_LATENCY_MS
    from engine.local import open_local_cluster

    ready = threading.Event()
    stop = threading.Event()
    box: dict = {}

    latency: dict = {}
    if wan:  # the local cluster's defaults, as engine.config.default_local_cluster sets them
        pairs = [(0, 1), (0, 2), (1, 2)]
        latency = {(regions[i], regions[j]): ms for (i, j), ms in zip(pairs, DEFAULT_WAN_LATENCY_MS)
                   if j < len(regions)}

    async def main() -> None:
        async with open_local_cluster(regions, nodes_per_region,
                                      wan_latency_ms=latency) as cluster:
            box["addresses"] = {r: cluster.client_addresses(r) for r in regions}
            await _create_keyspaces(box["addresses"][regions[0]], regions[0], regions, mix)
            ready.set()
            await trio.to_thread.run_sync(stop.wait)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="bench-inprocess-cluster", daemon=True)
    thread.start()
    try:
        ready.wait(120)
        if "error" in box or "addresses" not in box:
            raise TargetError(f"in-process cluster did not start: {box.get('error')!r}")
        addresses = box["addresses"]
        yield Target(
            system="meridian", kind="inprocess",
            drivers=_drivers(addresses, regions, mix),
            notes=["in-process cluster: the nodes share the harness's process, so their CPU, "
                   "memory and disk use are not reported"])
    finally:
        stop.set()
        thread.join(60)


def _meridian_external(nodes: list[str], regions: tuple[str, ...] | None,
                       mix: bool) -> Iterator[Target]:
    import engine
    from engine.errors import KeyspaceExistsError, MeridianError

    async def describe() -> tuple[str, tuple[str, ...]]:
        async with engine.connect(nodes) as db:
            return db.region, db.regions

    try:
        region, known = trio.run(describe)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the same to the user
        raise TargetError(f"cannot reach the cluster at {','.join(nodes)}: {exc}") from exc
    regions = regions or (region,)
    missing = [r for r in regions if r not in known]
    if missing:
        raise TargetError(f"the cluster has no region(s) {missing} (it has {list(known)})")
    created: list[str] = []
    try:
        try:
            trio.run(functools.partial(_create_keyspaces, nodes, regions[0], regions, mix,
                                       exist_ok=False, created=created))
        except KeyspaceExistsError as exc:
            raise TargetError(
                f"the cluster has a keyspace the benchmark would load its records into: "
                f"{exc}; the benchmark uses keyspaces of its own, dropped after the run, and "
                f"leaves the cluster's data alone (drop that keyspace, or use another "
                f"cluster)") from exc
        yield Target(
            system="meridian", kind="external",
            drivers=_drivers({r: nodes for r in regions}, regions, mix),
            notes=["external cluster: no process figures (CPU, memory, disk) are taken"])
    finally:
        if created:
            try:
                trio.run(_drop_keyspaces, nodes, regions[0], created)
            except MeridianError as exc:
                print(f"meridian: could not drop the benchmark's keyspaces {created}: {exc}",
                      file=sys.stderr)


@contextlib.contextmanager
def etcd_target(workdir: str) -> Iterator[Target]:
    """Three fresh etcd members (``bench/raft_peers.py``); raises TargetError if absent."""
    from . import raft_peers

    if not raft_peers.etcd_available():
        raise TargetUnavailable("skipped: etcd-server not installed (apt-get install etcd-server)")
    last: Exception | None = None
    for _ in range(raft_peers.START_ATTEMPTS):
        rundir = tempfile.mkdtemp(prefix="etcd-", dir=workdir)
        procs = raft_peers.Procs(rundir)
        try:
            try:
                leader = raft_peers._start_etcd(procs, rundir)
            except raft_peers._StartFailed as exc:
                last = exc
                continue
            except raft_peers.PeerError as exc:
                raise TargetError(str(exc)) from exc
            yield Target(
                system="etcd", kind="procs",
                drivers={"": {"system": "etcd", "endpoints": [f"127.0.0.1:{leader}"]}},
                pids=[p.pid for _, p in procs.procs],
                data_dirs=[os.path.join(rundir, f"etcd-{i}") for i in range(raft_peers.MEMBERS)],
                version=raft_peers.etcd_version())
            return
        finally:
            procs.stop_all()
            shutil.rmtree(rundir, ignore_errors=True)
    raise TargetError(f"etcd did not start: {last}")
