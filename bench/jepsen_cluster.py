"""The cluster under test of ``python -m bench jepsen``: real node processes in namespaces.

:class:`LabCluster` runs one ``meridian node`` process per node (through
:mod:`bench.jepsen_node`), each in its own network namespace with its own address on a private
bridge (:class:`bench.netns.NetnsLab`, FAULTS.md §3), plus one more namespace, ``client``, for
the test's clients. Regions are separated by the simulated WAN latency of the nodes'
configuration (``[cluster.wan_latency_ms]``: the Raft transport and the clients add it).

Faults it can inject (all undone by :meth:`LabCluster.heal_all` and by :meth:`close`):

- the network, in the hub namespace, as one nftables ``bridge`` table that drops forwarding
  between chosen bridge ports (any partition shape, one-way cuts included) and drops a random
  share of the packets between nodes (``numgen random mod 100 < N``); the kernel has no netem;
- processes: SIGKILL and restart from the data directory, SIGSTOP / SIGCONT;
- clocks: every node runs under libfaketime (when ``faketime=True``) with its own timestamp
  file, monotonic time not faked (FAULTS.md §3); writing ``+0.2`` to the file moves the node's
  wall clock 200 ms ahead at once;
- disks: with ``lossy=True`` each node's data directory is a LossyFS mount
  (:mod:`bench.lossyfs`); :meth:`LabCluster.power_loss` kills the node and drops everything
  it wrote but did not fsync.

Set-up is idempotent: leftovers of an earlier run with the same prefix (namespaces, the node
processes still inside them, LossyFS mounts under ``/tmp/<prefix>-lossyfs``) are removed first,
and :meth:`close` removes everything it made, also after a failure. Traffic goes only to addresses
inside the lab's namespaces. Needs root, iproute2 and nftables; faketime and FUSE when asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.netns import NetnsLab, netns_available
from engine.config import ClusterConfig, NodeAddress, NodeConfig, RegionConfig, dump_node_config
from engine.rpc import connect_rpc

__all__ = ["ClusterSpec", "LabCluster", "FAKETIME_LIB", "unavailable_reason", "in_namespace"]

REPO = Path(__file__).resolve().parent.parent
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1")
FAKETIME_LIB = next((p for p in FAKETIME_LIBS if os.path.exists(p)), FAKETIME_LIBS[0])
NFT_TABLE = "meridian_jepsen"
PEER_PORT = 7100
CLIENT_PORT = 7101
CLONE_NEWNET = 0x40000000


def unavailable_reason(*, faketime: bool = False, lossy: bool = False) -> str | None:
    """None if a lab cluster can run here; otherwise why not."""
    why = netns_available()
    if why is not None:
        return why
    if shutil.which("nft") is None:
        return "nftables' nft command is not installed (Debian package nftables)"
    if faketime and not os.path.exists(FAKETIME_LIB):
        return f"libfaketime is not installed ({FAKETIME_LIB}; Debian package faketime)"
    if lossy:
        from bench.lossyfs import unavailable_reason as fuse_reason

        return fuse_reason()
    return None


@contextlib.contextmanager
def in_namespace(path: str):
    """Moves the calling thread into the network namespace at ``path`` (``/var/run/netns/X``)
    for the block: sockets it opens there stay there. Restores the thread's namespace after."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The shape of the cluster under test.

    Attributes:
        regions: region names; nodes get ids region by region, from 1.
        nodes_per_region: nodes in every region.
        wan_latency_ms: one-way latency per region pair (simulated by nodes and clients).
        tick_interval_ms, election_ticks, heartbeat_ticks: Raft timing.
        max_clock_offset_ms: the cluster's clock-skew bound.
        raft_snapshot_every: entries between two compactions of a group's Raft log.
    """

    regions: tuple[str, ...] = ("us-east", "eu-west", "ap-south")
    nodes_per_region: int = 3
    wan_latency_ms: Mapping[tuple[str, str], float] = field(default_factory=dict)
    tick_interval_ms: int = 50
    election_ticks: int = 20
    heartbeat_ticks: int = 2
    max_clock_offset_ms: int = 250
    raft_snapshot_every: int = 10_000

    def cluster(self, addresses: Mapping[str, str], name: str = "jepsen") -> ClusterConfig:
        regions = []
        next_id = 1
        for region in self.regions:
            nodes = []
            for _ in range(self.nodes_per_region):
                host = addresses[f"n{next_id}"]
                nodes.append(NodeAddress(next_id, region, host, PEER_PORT, host, CLIENT_PORT))
                next_id += 1
            regions.append(RegionConfig(region, tuple(nodes)))
        latency = {pair: ms for pair, ms in self.wan_latency_ms.items()
                   if pair[0] in self.regions and pair[1] in self.regions}
        return ClusterConfig(name=name, regions=tuple(regions), wan_latency_ms=latency,
                             tick_interval_ms=self.tick_interval_ms,
                             election_ticks=self.election_ticks,
                             heartbeat_ticks=self.heartbeat_ticks,
                             max_clock_offset_ms=self.max_clock_offset_ms,
                             raft_snapshot_every=self.raft_snapshot_every)

    @property
    def node_count(self) -> int:
        return len(self.regions) * self.nodes_per_region


class LabCluster:
    """Node processes in network namespaces, and the faults that can be done to them.

    Args:
        directory: the run's cluster directory (configurations, data, logs, clock files).
        spec: the cluster's shape.
        prefix: names the lab's namespaces and interfaces (at most 6 letters or digits).
        node_env: extra environment for node processes (planted-bug switches).
        faketime: run every node under libfaketime with its own clock file.
        lossy: put every node's data directory on its own LossyFS mount.
    """

    def __init__(self, directory: str | os.PathLike[str], spec: ClusterSpec, *,
                 prefix: str = "mjep", node_env: Mapping[str, str] | None = None,
                 faketime: bool = False, lossy: bool = False, subnet: str = "10.78.0") -> None:
        self.directory = Path(directory)
        self.spec = spec
        self.node_ids = list(range(1, spec.node_count + 1))
        self.lab = NetnsLab(prefix, [f"n{i}" for i in self.node_ids] + ["client"], subnet)
        self.config: ClusterConfig = spec.cluster(self.lab.addresses)
        self.node_env = dict(node_env or {})
        self.faketime = faketime
        self.lossy = lossy
        self.procs: dict[int, subprocess.Popen] = {}
        # Every node process found ended that this object did not kill, in the order found:
        # (node id, exit code). Kept across restarts, so that a node that crashed on its own
        # and was restarted by a heal is still reported.
        self.exits: list[tuple[int, int]] = []
        self._noted: set[subprocess.Popen] = set()  # the ended processes already in ``exits``
        self.paused: set[int] = set()
        self.clock_offsets_s: dict[int, float] = {}
        self.blocked: set[tuple[int, int]] = set()  # (from node, to node) dropped
        self.loss_percent = 0
        self.filesystems: dict[int, Any] = {}
        # LossyFS's control socket needs a short path (AF_UNIX): its mounts live here.
        self.lossy_root = Path("/tmp") / f"{prefix}-lossyfs"
        self._logs: dict[int, Any] = {}

    # ------------------------------------------------------------------ layout

    def region_of(self, node_id: int) -> str:
        return self.config.node(node_id).region

    def nodes_in(self, region: str) -> list[int]:
        return [n.id for n in self.config.nodes_in(region)]

    def client_addresses(self, region: str | None = None) -> list[str]:
        nodes = self.config.nodes_in(region) if region else self.config.all_nodes()
        return [f"{n.client_host}:{n.client_port}" for n in nodes]

    def data_dir(self, node_id: int) -> Path:
        if self.lossy:
            return self.lossy_root / f"n{node_id}" / "mnt" / "data"
        return self.directory / f"node-{node_id}"

    def config_path(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}.toml"

    def clock_path(self, node_id: int) -> Path:
        return self.directory / f"clock-{node_id}"

    def log_path(self, node_id: int) -> Path:
        """The node's log (its ``log_file``: rotated by size, bounded on disk)."""
        return self.directory / f"node-{node_id}.log"

    def out_path(self, node_id: int) -> Path:
        """The node process's stdout and stderr (a traceback the log could not take), kept
        across its restarts, each start marked."""
        return self.directory / f"node-{node_id}.out"

    @property
    def client_netns(self) -> str:
        return f"/var/run/netns/{self.lab.ns('client')}"

    # ------------------------------------------------------------------ lifetime

    def setup(self) -> None:
        """Removes leftovers, builds the namespaces, mounts, writes configurations. Nodes are
        started by :meth:`start_all`."""
        self.remove_leftovers()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lab.setup()
        if self.lossy:
            from bench.lossyfs import LossyFS

            for node_id in self.node_ids:
                workdir = self.lossy_root / f"n{node_id}"
                workdir.mkdir(parents=True, exist_ok=True)
                fs = LossyFS(workdir)
                self.filesystems[node_id] = fs
                fs.start()
        for node_id in self.node_ids:
            # The log outside the data directory, which LossyFS may hold in memory (and
            # lose with a simulated crash).
            cfg = NodeConfig(node_id=node_id, data_dir=str(self.data_dir(node_id)),
                             log_file=str(self.log_path(node_id)), cluster=self.config)
            self.config_path(node_id).write_text(dump_node_config(cfg))
            if self.faketime:
                self.clock_path(node_id).write_text("+0\n")
                self.clock_offsets_s[node_id] = 0.0

    def remove_leftovers(self) -> None:
        """Stops node processes left inside this prefix's namespaces by an earlier run (only
        processes running this harness's node or client code), unmounts LossyFS mounts left
        below the directory, and deletes the namespaces."""
        for ns in self.lab.leftover_namespaces():
            for pid in self.lab.namespace_pids(ns):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"engine.cli" in cmdline or b"bench.jepsen" in cmdline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.startswith("lossyfs ")]
        for mnt in mounts:
            if mnt.startswith(str(self.lossy_root) + "/"):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        shutil.rmtree(self.lossy_root, ignore_errors=True)
        self.lab.close()

    def close(self, keep_data: bool = False) -> None:
        """Stops every node, heals everything, unmounts, deletes namespaces and clock files.

        With ``keep_data`` and ``lossy``, each node's data directory is first copied from its
        mount (which goes away) to ``node-N`` in the cluster directory, where it lies without
        LossyFS; without ``lossy`` it is there already and stays."""
        try:
            for node_id in list(self.procs):
                self.kill_node(node_id)
        finally:
            try:
                if keep_data:
                    self._copy_lossy_data()
            finally:
                self._release()

    def _copy_lossy_data(self) -> None:
        """Copies what each LossyFS mount holds now (its nodes are stopped) into ``node-N``.
        A test cluster's data is small enough to copy whole. A copy that fails is reported on
        stderr and does not stop the others or the teardown."""
        for node_id in self.filesystems:
            source = self.data_dir(node_id)
            if not source.is_dir():
                continue
            try:
                shutil.copytree(source, self.directory / f"node-{node_id}", dirs_exist_ok=True)
            except OSError as exc:
                print(f"node {node_id}: data not kept: {exc}", file=sys.stderr)

    def _release(self) -> None:
        """Unmounts, closes the logs, deletes namespaces and clock files."""
        try:
            for fs in self.filesystems.values():
                fs.close()
        finally:
            if self.filesystems:
                shutil.rmtree(self.lossy_root, ignore_errors=True)
            self.filesystems.clear()
            for log in self._logs.values():
                log.close()
            self._logs.clear()
            self.lab.close()
            for node_id in self.node_ids:
                self.clock_path(node_id).unlink(missing_ok=True)

    def __enter__(self) -> LabCluster:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ processes

    def start_node(self, node_id: int) -> int:
        """Starts the node (from its data directory); returns its pid."""
        if self.running(node_id):
            raise RuntimeError(f"node {node_id} is already running")
        self._note_exit(node_id)  # the process this one replaces may have ended on its own
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.pop("MERIDIAN_PLANTED_BUGS", None)
        env.pop("MERIDIAN_ALLOW_PLANTED_BUGS", None)
        env.update(self.node_env)
        if self.faketime:
            env.update(LD_PRELOAD=FAKETIME_LIB,
                       FAKETIME_TIMESTAMP_FILE=str(self.clock_path(node_id)),
                       FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
        log = self._logs.get(node_id)
        if log is None:
            log = self._logs[node_id] = open(self.out_path(node_id), "ab")
        log.write(f"=== start {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        # ``ip netns exec`` execs the node: the pid is the node's own.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns(f"n{node_id}"), sys.executable, "-m",
             "bench.jepsen_node", "--config", str(self.config_path(node_id))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(self.directory), env=env)
        self.procs[node_id] = proc
        self.paused.discard(node_id)
        return proc.pid

    def start_all(self) -> None:
        for node_id in self.node_ids:
            if not self.running(node_id):
                self.start_node(node_id)

    def running(self, node_id: int) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def kill_node(self, node_id: int) -> None:
        """SIGKILL (a crash: nothing the node did not write is written). Waits for the exit."""
        self._note_exit(node_id)  # already gone before the signal: it ended on its own
        proc = self.procs.pop(node_id, None)
        self.paused.discard(node_id)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def power_loss(self, node_id: int, seed: int = 0) -> dict[str, Any] | None:
        """Kills the node and, with ``lossy``, drops whatever it had not fsynced."""
        self.kill_node(node_id)
        if not self.lossy:
            return None
        return self.filesystems[node_id].power_loss(seed=seed, torn=False)

    def pause_node(self, node_id: int) -> None:
        if self.running(node_id) and node_id not in self.paused:
            self.procs[node_id].send_signal(signal.SIGSTOP)
            self.paused.add(node_id)

    def resume_node(self, node_id: int) -> None:
        if node_id in self.paused:
            self.paused.discard(node_id)
            if self.running(node_id):
                self.procs[node_id].send_signal(signal.SIGCONT)

    def _note_exit(self, node_id: int) -> int | None:
        """Records the node's process in :attr:`exits` if it has ended (and was not recorded
        yet); returns its exit code, or None while it runs (or there is none)."""
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is None:
            return None
        if proc not in self._noted:
            self._noted.add(proc)
            self.exits.append((node_id, proc.returncode))
        return proc.returncode

    def dead(self) -> dict[int, int]:
        """Nodes whose current process has ended without being killed by this object:
        id → exit code (recorded in :attr:`exits` too)."""
        found = {n: self._note_exit(n) for n in list(self.procs)}
        return {n: code for n, code in found.items() if code is not None}

    def exited(self) -> dict[int, list[int]]:
        """Every node whose process ended without being killed by this object during the
        cluster's life, restarted since or not: id → exit codes, in order."""
        self.dead()
        out: dict[int, list[int]] = {}
        for node_id, code in self.exits:
            out.setdefault(node_id, []).append(code)
        return out

    # ------------------------------------------------------------------ network

    def cut(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Adds directed cuts: traffic from the first node to the second is dropped."""
        self.blocked |= {(a, b) for a, b in pairs if a != b}
        self._apply_network()

    def set_loss(self, percent: int) -> None:
        """Drops ``percent`` % of the packets between nodes (0 stops)."""
        self.loss_percent = max(0, min(100, int(percent)))
        self._apply_network()

    def heal_network(self) -> None:
        self.blocked.clear()
        self.loss_percent = 0
        self._apply_network()

    def _apply_network(self) -> None:
        self.lab.hub_run(["nft", "delete", "table", "bridge", NFT_TABLE])
        if not self.blocked and not self.loss_percent:
            return
        lines = [f"table bridge {NFT_TABLE} {{", "  chain forward {",
                 "    type filter hook forward priority 0; policy accept;"]
        for a, b in sorted(self.blocked):
            lines.append(f'    iifname "{self.lab.port(f"n{a}")}" '
                         f'oifname "{self.lab.port(f"n{b}")}" drop')
        if self.loss_percent:
            ports = ", ".join(f'"{self.lab.port(f"n{n}")}"' for n in self.node_ids)
            chance = ("" if self.loss_percent >= 100
                      else f"numgen random mod 100 < {self.loss_percent} ")
            lines.append(f"    iifname {{ {ports} }} oifname {{ {ports} }} {chance}drop")
        lines += ["  }", "}"]
        out = self.lab.hub_run(["nft", "-f", "-"], input="\n".join(lines) + "\n")
        if out.returncode != 0:
            raise RuntimeError(f"nft refused the rules: {out.stderr.strip()}")

    # ------------------------------------------------------------------ clocks

    def set_clock(self, node_id: int, offset_s: float) -> None:
        """Moves the node's wall clock to ``offset_s`` from the true time (needs faketime)."""
        if not self.faketime:
            raise RuntimeError("the cluster runs without faketime")
        tmp = self.clock_path(node_id).with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+.3f}\n")
        os.replace(tmp, self.clock_path(node_id))
        self.clock_offsets_s[node_id] = offset_s

    # ------------------------------------------------------------------ heal

    def heal_all(self) -> list[int]:
        """Heals the network and the clocks, resumes paused nodes and starts stopped ones;
        returns the nodes started."""
        self.heal_network()
        for node_id in list(self.paused):
            self.resume_node(node_id)
        if self.faketime:
            for node_id in self.node_ids:
                if self.clock_offsets_s.get(node_id):
                    self.set_clock(node_id, 0.0)
        started = [n for n in self.node_ids if not self.running(n)]
        for node_id in started:
            self.start_node(node_id)
        return started

    # ------------------------------------------------------------------ status (async)

    async def status(self, node_id: int, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The node's ``status`` answer, or None (down, paused, cut off, slow)."""
        node = self.config.node(node_id)
        with trio.move_on_after(timeout_s):
            try:
                async with connect_rpc(node.client_host, node.client_port,
                                       connect_timeout_s=timeout_s) as conn:
                    return await conn.call("status", None)
            except Exception:  # any failure means: no usable answer from that node
                return None
        return None

    async def statuses(self, timeout_s: float = 1.0) -> dict[int, dict[str, Any] | None]:
        out: dict[int, dict[str, Any] | None] = {}

        async def one(node_id: int) -> None:
            out[node_id] = await self.status(node_id, timeout_s)

        async with trio.open_nursery() as nursery:
            for node_id in self.node_ids:
                if self.running(node_id) and node_id not in self.paused:
                    nursery.start_soon(one, node_id)
        return out

    async def leaders(self) -> dict[int, int]:
        """Group id → the node that leads it now, as the nodes themselves say (a node that
        claims the leader role for the highest term it reports)."""
        best: dict[int, tuple[int, int]] = {}
        for node_id, st in (await self.statuses()).items():
            for gid, g in (st or {}).get("groups", {}).items():
                if g.get("role") == "leader":
                    term = int(g.get("term", 0))
                    if int(gid) not in best or term > best[int(gid)][0]:
                        best[int(gid)] = (term, node_id)
        return {gid: node for gid, (_, node) in best.items()}

    async def wait_ready(self, timeout_s: float) -> float:
        """Waits until every running node answers and every group has a leader; returns the
        seconds it took. Raises TimeoutError with what was missing."""
        start = trio.current_time()
        deadline = start + timeout_s
        last = "no answer yet"
        while trio.current_time() < deadline:
            crashed = self.dead()
            if crashed:
                raise RuntimeError(f"nodes exited: {crashed}; see {self.directory}/node-*.log "
                                   "and node-*.out")
            status = await self.statuses()
            down = sorted(n for n, s in status.items() if s is None)
            groups = {int(g) for s in status.values() if s for g in s.get("groups", {})}
            led = {int(g) for s in status.values() if s
                   for g, v in s.get("groups", {}).items() if v.get("leader")}
            if status and not down and groups and groups <= led:
                return trio.current_time() - start
            last = (f"nodes not answering: {down}" if down else
                    f"groups without a leader: {sorted(groups - led)}")
            await trio.sleep(0.2)
        raise TimeoutError(f"cluster not ready after {timeout_s} s ({last})")


def sides_to_pairs(sides: Sequence[Iterable[int]]) -> set[tuple[int, int]]:
    """The directed pairs a partition into ``sides`` cuts (both ways)."""
    groups = [set(s) for s in sides]
    pairs = set()
    for i, a in enumerate(groups):
        for j, b in enumerate(groups):
            if i != j:
                pairs |= {(x, y) for x in a for y in b}
    return pairs
