"""``meridian cluster up|down|status``: a local multi-process cluster on this machine (ARCH §7).

``up`` writes one configuration file per node into the cluster directory and starts one
``meridian node`` process per node, each with its own data directory and log file, with
simulated WAN latency between regions in the Raft transport and in clients. The directory holds
everything about the running cluster::

    DIR/node-<id>.toml         each node's configuration
    DIR/node-<id>/             each node's data directory
    DIR/node-<id>.log          each node's log (its ``log_file``), rotated by size:
    DIR/node-<id>.log.1 ...    the earlier parts of it, newest first (``log_backups`` of them)
    DIR/node-<id>.out          the node's stdout and stderr since it last started: what it
                               says before its log is open (a bad configuration, a log file
                               it cannot open), a crash's traceback, why it stopped
    DIR/node-<id>.pid          each node's process id, while it runs

A node's log is bounded (``log_max_bytes`` and ``log_backups`` of its configuration, 16 MiB and
3 by default), and so is its ``.out`` file, emptied at each start and written to only when the
node cannot log or stops. A node whose configuration file cannot be read has no ``log_file``
to go by: what it says (one line, why) is appended to ``node-<id>.log``, as is the stdout and
stderr of the nodes of a directory written before nodes had a ``log_file`` -- unbounded, until
their configuration files are removed and written again by ``up``.

``down`` stops exactly the processes recorded in the pid files (after checking that each pid is
still a ``meridian node`` process of this directory, so a recycled pid is never signalled):
SIGTERM first, SIGKILL after a grace period. ``status`` asks every node for its view.
``up`` and ``down`` hold ``DIR/.lock`` while they start or stop processes, so that two of them
at once neither start a node twice nor stop one as it starts.

``up`` on a directory that already holds a cluster starts its nodes as configured; options
that would describe another cluster (regions, nodes per region, WAN latencies) are refused
rather than ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from .config import (
    DEFAULT_REGIONS,
    ClusterConfig,
    NodeAddress,
    NodeConfig,
    default_local_cluster,
    dump_node_config,
)
from ._fs import fsync_directory
from .errors import InvalidArgumentError, UnavailableError
from .local import free_base_port
from .rpc import connect_rpc

__all__ = ["ClusterProcesses", "cluster_up", "cluster_down", "cluster_status", "describe_all",
           "not_stopped_message", "wait_ready"]

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0  # how long `down` waits for a node to end after its SIGKILL
LOCK_WAIT_S = 30.0
STATUS_TIMEOUT_S = 3.0  # how long `status` waits for one node's answer (a paused node accepts)
EXEC_WAIT_S = 1.0  # how long a process may show no arguments while it execs (_command_line)
_UNSET: Any = object()


@contextlib.contextmanager
def _directory_lock(directory: Path):
    """Holds ``directory/.lock`` (flock) while the body starts or stops node processes."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:  # said once: a command that seems to hang says why
                    waited = True
                    print(f"waiting for {directory}: another `meridian cluster up` or `down` "
                          f"is starting or stopping its nodes (at most {LOCK_WAIT_S:g} s)",
                          file=sys.stderr, flush=True)
                if time.monotonic() >= deadline:
                    raise InvalidArgumentError(
                        f"{directory} is in use: another `meridian cluster up` or `down` has "
                        f"held it for {LOCK_WAIT_S:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


class ClusterProcesses:
    """The node processes of one cluster directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        # Absolute and canonical: node processes run with the directory as their cwd, and the
        # recycled-pid check compares command lines, so every spelling must give one path.
        self.directory = Path(directory).resolve()
        # The processes this object started: their handles (exit status) and where each one's
        # output begins in its files (which earlier runs' output precedes), see _output_marks.
        self._started: dict[int, tuple[subprocess.Popen, dict[Path, tuple[int, int]]]] = {}

    def config_path(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}.toml"

    def pid_path(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}.pid"

    def node_ids(self) -> list[int]:
        ids = []
        for p in self.directory.glob("node-*.toml"):
            try:
                ids.append(int(p.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(ids)

    def load_cluster(self) -> ClusterConfig:
        from .config import load_node_config

        ids = self.node_ids()
        if not ids:
            raise InvalidArgumentError(f"{self.directory} holds no cluster (no node-*.toml)")
        return load_node_config(self.config_path(ids[0])).cluster

    def running_pid(self, node_id: int) -> int | None:
        """The pid of the node's process if it is still the one we started."""
        started = self._started.get(node_id)
        if started is not None and started[0].poll() is None:
            return started[0].pid  # this process's child, not yet reaped: its pid is its own
        try:
            pid = int(self.pid_path(node_id).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        # Exactly the command start_node runs (any interpreter path): not merely some process
        # that mentions the file, such as an editor or `tail -f` of it.
        config = self.config_path(node_id)
        want = [b"-m", b"engine.cli", b"node", b"--config", str(config).encode()]
        have = _command_line(pid)[1:]
        if have == want:
            return pid
        if (have[:4] == want[:4] and len(have) == 5
                and os.path.basename(have[4]) == config.name.encode()
                and _cwd(pid) == self.directory):
            # The directory was renamed (or moved) since the node started: its command line
            # names the old path, but it runs in the directory, which its cwd follows.
            return pid
        return None  # gone, or the pid was recycled by an unrelated process

    def log_path(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}.log"

    def output_path(self, node_id: int) -> Path:
        return self.directory / f"node-{node_id}.out"

    def _output_marks(self, node_id: int) -> dict[Path, tuple[int, int]]:
        """Where each of the node's output files ends now: its inode and size."""
        marks = {}
        for path in (self.log_path(node_id), self.output_path(node_id)):
            try:
                st = path.stat()
            except OSError:
                continue
            marks[path] = (st.st_ino, st.st_size)
        return marks

    def last_log_line(self, node_id: int,
                      since: Mapping[Path, tuple[int, int]] | None = None) -> str:
        """The last non-empty line that the node wrote ("" if none): of its log and its
        stdout/stderr file, from whichever was written last -- a node that cannot log, crashes
        or fails says why on stderr last; one that stops, or is killed, last said something in
        its log. With ``since`` (the files' :meth:`_output_marks` when the node started), only
        what was written after it counts: a file since replaced (the log rotated) counts
        whole."""
        since = since or {}
        newest: tuple[int, str] | None = None
        for path in (self.log_path(node_id), self.output_path(node_id)):
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    inode, start = since.get(path, (st.st_ino, 0))
                    start = start if inode == st.st_ino else 0
                    f.seek(max(start, st.st_size - 4096))
                    lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines()
                             if ln.strip()]
            except OSError:
                continue
            # At a tie (file times are coarse, a few ms), stderr's: where the node says why it
            # stops, after logging it.
            if lines and (newest is None or st.st_mtime_ns >= newest[0]):
                newest = (st.st_mtime_ns, lines[-1])
        return newest[1] if newest else ""

    def log_files(self, node_id: int) -> str:
        """Where to read what the node said, for a message."""
        out = self.output_path(node_id)
        if out.exists():
            return f"its log: {self.log_path(node_id)}; its stdout and stderr: {out}"
        return f"its log: {self.log_path(node_id)}"

    def exited(self, node_id: int) -> str | None:
        """None while the node's process runs; once it has exited, why, as well as this
        can tell: for a process this object started, its exit status and the last line it
        wrote (not an earlier run's); for another, the last line of its log."""
        started = self._started.get(node_id)
        if started is None:
            return None if self.running_pid(node_id) is not None else self.last_log_line(node_id)
        proc, since = started
        code = proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                status = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"killed by signal {-code}"
        else:
            status = f"exit status {code}"
        said = self.last_log_line(node_id, since)
        return f"{said} ({status})" if said else f"{status}, nothing written to its log"

    def exits(self) -> dict[int, str]:
        """The nodes whose processes this object started and that have exited, with why (see
        :meth:`exited`)."""
        return {n: why for n in self._started if (why := self.exited(n)) is not None}

    def running_here(self) -> list[int]:
        """The running nodes that this process started (with any object of the directory):
        those whose process is its child, not those that an earlier ``up`` left running."""
        return [n for n in self.node_ids()
                if (pid := self.running_pid(n)) is not None and _parent_pid(pid) == os.getpid()]

    def start_node(self, node_id: int, *, die_with_parent: bool = False) -> int:
        if self.running_pid(node_id) is not None:
            raise InvalidArgumentError(f"node {node_id} is already running")
        from .config import ConfigError, load_node_config

        try:
            own_log = load_node_config(self.config_path(node_id)).log_file is not None
        except (ConfigError, OSError):
            own_log = False  # the node fails at once: what it says goes where it always went
        if own_log:  # the node writes its log; its stdout and stderr are this run's only
            log = open(self.output_path(node_id), "wb")
        else:  # a directory written before nodes had a log_file
            log = open(self.log_path(node_id), "ab")
        since = self._output_marks(node_id)
        # The node runs the same code as this process, installed or from a source tree.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # A node whose pid is not recorded is one `down` never stops: a Ctrl-C must not land
        # between its start and the pid file (nodes run in their own session, so it does not
        # reach them; it comes once the node is recorded).
        with _signals_held():
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "engine.cli", "node", "--config",
                     str(self.config_path(node_id))],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=str(self.directory), env=env,
                    preexec_fn=_die_with_parent if die_with_parent else None)
            finally:
                log.close()
            try:
                _write_whole(self.pid_path(node_id), f"{proc.pid}\n")
            except BaseException:  # a full disk: not recorded, the node must not run at all
                proc.kill()
                proc.wait()
                raise
            self._started[node_id] = (proc, since)
        return proc.pid

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        pid = self.running_pid(node_id)
        if pid is not None:
            os.kill(pid, sig)

    def stop(self, grace_s: float | None = None, *,
             nodes: Iterable[int] | None = None, lock: bool = True) -> list[int]:
        """SIGTERM to every running node (of ``nodes`` only, if given), SIGKILL to any still
        alive after ``grace_s`` (:data:`STOP_GRACE_S` by default); returns the node ids that
        were running. Those still running :data:`KILL_WAIT_S` after their SIGKILL (a process
        in uninterruptible I/O ends only once the I/O does) keep their pid files, so that a
        later ``stop`` finds them and no ``up`` starts another node beside them: they are
        the ones :meth:`running_pid` still finds. Without ``lock``, for nodes that are this
        process's children only, it does not wait for the directory's lock."""
        if not self.directory.is_dir():
            return []
        if not lock:
            return self._stop(STOP_GRACE_S if grace_s is None else grace_s,
                              self.node_ids() if nodes is None else nodes)
        with _directory_lock(self.directory):
            return self._stop(STOP_GRACE_S if grace_s is None else grace_s,
                              self.node_ids() if nodes is None else nodes)

    def _stop(self, grace_s: float, nodes: Iterable[int]) -> list[int]:
        running = {n: p for n in nodes if (p := self.running_pid(n)) is not None}
        for pid in running.values():
            _signal(pid, signal.SIGTERM)
        # Each pid is checked again for the node before it is signalled or waited for: once
        # the node has ended, its pid may name another program.
        def alive() -> list[int]:
            _reap(running.values())
            return [n for n, pid in running.items() if self.running_pid(n) == pid]

        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)
        for n in alive():
            _signal(running[n], signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and alive():
            time.sleep(0.02)
        for n in set(running) - set(alive()):
            self.pid_path(n).unlink(missing_ok=True)
        return sorted(running)


@contextlib.contextmanager
def _signals_held():
    """Holds SIGINT, SIGTERM and SIGHUP (Ctrl-C, ``kill``, a closed terminal) while the body
    runs, and raises them again after it, to whatever handled them before. Only the main
    thread runs signal handlers; elsewhere, and for a signal ignored or handled outside
    Python, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(sig)
        if handler is not None and handler is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


def _cwd(pid: int) -> Path | None:
    """The process's working directory (None if it is gone or not ours to see)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _command_line(pid: int) -> list[bytes]:
    """The process's arguments ([] if it is gone). A process in the middle of its exec shows
    none for a moment: the kernel sets them up after the exec's point of no return, when
    the parent's ``Popen`` has already returned. So an empty answer from a live process
    (not a zombie, whose arguments are gone for good) is read again, for up to
    ``EXEC_WAIT_S``."""
    deadline = time.monotonic() + EXEC_WAIT_S
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            if raw:
                return [a for a in raw.split(b"\0") if a]
            # The state follows the command name, which may hold spaces and parentheses.
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return []
        if state in ("Z", "X") or time.monotonic() >= deadline:
            return []
        time.sleep(0.005)


def _parent_pid(pid: int) -> int | None:
    """The pid of the process's parent (None if it is gone)."""
    try:
        # The parent follows the state, which follows the command name (see _command_line).
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _write_whole(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text``: whoever reads it, now or after a crash, finds the old
    content or the new, never a part of it."""
    part = path.with_name(path.name + ".part")
    with open(part, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
    fsync_directory(path.parent)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM this process when its parent dies (Linux)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def cluster_up(directory: str | os.PathLike[str], *,
               regions: Iterable[str] | None = None,
               nodes_per_region: int | None = None,
               wan_latency_ms: Mapping[Any, float] | None = _UNSET,
               base_port: int | None = None,
               die_with_parent: bool = False,
               refuse_running: bool = False) -> ClusterProcesses:
    """Writes the configuration and starts every node process; returns at once (see
    :func:`wait_ready`).

    A new cluster has ``regions`` (default us-east, eu-west, ap-south) of
    ``nodes_per_region`` nodes (default 3) and ``wan_latency_ms`` between them (not given or
    None: the default one-way latencies; ``{}``: none). A directory that holds a cluster
    already starts that cluster's nodes; with ``refuse_running``, one of whose nodes runs is
    refused (for a caller that stops every node of the directory at its end: none may be
    another's). The check is made under the directory's lock, so that an ``up`` on the same
    directory at the same moment cannot start nodes between it and the starts.

    Raises:
        InvalidArgumentError: the directory holds a cluster that the options given do not
            describe (they apply only to a new cluster), or a running node and
            ``refuse_running`` is given, another ``up``/``down`` holds it, or an address of a
            node to start is taken (then no node is started).
    """
    procs = ClusterProcesses(directory)
    with _directory_lock(procs.directory):
        if refuse_running and (running := [n for n in procs.node_ids()
                                           if procs.running_pid(n) is not None]):
            raise InvalidArgumentError(
                f"{directory} holds a running cluster (nodes {running}); stop it with "
                f"`meridian cluster down --dir {directory}` or give another --dir")
        if procs.node_ids():
            cluster = procs.load_cluster()
            _check_same_cluster(procs.directory, cluster, regions, nodes_per_region,
                                wan_latency_ms)
        else:
            names = tuple(regions) if regions is not None else DEFAULT_REGIONS
            per_region = nodes_per_region if nodes_per_region is not None else 3
            count = len(names) * per_region
            base = base_port if base_port is not None else free_base_port(2 * count)
            cluster = default_local_cluster(
                names, per_region, base,
                wan_latency_ms=None if wan_latency_ms is _UNSET else wan_latency_ms)
        # Each node's file is written whole or not at all, and one missing from a cluster's
        # directory is written again: an `up` interrupted while it wrote them left it out.
        for node in cluster.all_nodes():
            if not procs.config_path(node.id).exists():
                cfg = NodeConfig(node_id=node.id,
                                 data_dir=str(procs.directory / f"node-{node.id}"),
                                 log_file=str(procs.log_path(node.id)), cluster=cluster)
                _write_whole(procs.config_path(node.id), dump_node_config(cfg))
        stopped = [node for node in cluster.all_nodes() if procs.running_pid(node.id) is None]
        for node in stopped:  # all before any starts: none is left running for nothing
            _check_addresses_free(node)
        for node in stopped:
            procs.start_node(node.id, die_with_parent=die_with_parent)
    return procs


def _check_addresses_free(node: NodeAddress) -> None:
    """Raises InvalidArgumentError naming an address of ``node`` that something else holds:
    the node would fail to listen there, and whatever does listen might answer for it."""
    for what, host, port in (("peer", node.peer_host, node.peer_port),
                             ("client", node.client_host, node.client_port)):
        for family, type_, proto, _, sockaddr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            with socket.socket(family, type_, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node does
                try:
                    s.bind(sockaddr)
                except OSError as exc:
                    raise InvalidArgumentError(
                        f"node {node.id} cannot start: its {what} address {host}:{port} is "
                        f"taken ({exc.strerror}); stop what holds it") from None


def _check_same_cluster(directory: Path, cluster: ClusterConfig, regions, nodes_per_region,
                        wan_latency_ms) -> None:
    names = cluster.region_names
    per_region = {len(cluster.nodes_in(r)) for r in names}
    differ = []
    if regions is not None and tuple(regions) != tuple(names):
        differ.append(f"regions {','.join(regions)} (it has {','.join(names)})")
    if nodes_per_region is not None and per_region != {nodes_per_region}:
        differ.append(f"{nodes_per_region} nodes per region (it has "
                      f"{'/'.join(str(len(cluster.nodes_in(r))) for r in names)})")
    if wan_latency_ms is not _UNSET:
        wanted = default_local_cluster(names, max(per_region), 1,
                                       wan_latency_ms=wan_latency_ms).wan_latency_ms
        if dict(wanted) != dict(cluster.wan_latency_ms):
            differ.append("other WAN latencies")
    if differ:
        raise InvalidArgumentError(
            f"{directory} holds a cluster already, and the options asked for "
            f"{'; '.join(differ)}: they apply only to a new cluster (remove the directory, "
            f"or give another --dir)")


async def describe_all(cluster: ClusterConfig) -> dict[int, Any]:
    """Every node's ``status`` answer, or ``{"error": ...}`` for a node that gave none within
    :data:`STATUS_TIMEOUT_S` (a paused node's kernel still accepts connections), or whose
    answer came from another node (another cluster's, on a reused port)."""
    out: dict[int, Any] = {}

    async def one(node):
        try:
            async with connect_rpc(node.client_host, node.client_port,
                                   connect_timeout_s=1.0) as conn:
                answer = await conn.call(
                    "status", None, deadline=trio.current_time() + STATUS_TIMEOUT_S)
        except Exception as exc:  # report, whatever went wrong with that node
            out[node.id] = {"error": f"{type(exc).__name__}: {exc}"}
            return
        who = answer if isinstance(answer, dict) else {}
        if (who.get("node"), who.get("region"), who.get("cluster")) != (
                node.id, node.region, cluster.name):
            out[node.id] = {"error": f"not this node at {node.client_host}:{node.client_port}: "
                            f"node {who.get('node')} of region {who.get('region')!r} in "
                            f"cluster {who.get('cluster')!r} answers there"}
            return
        out[node.id] = answer

    async with trio.open_nursery() as nursery:
        for node in cluster.all_nodes():
            nursery.start_soon(one, node)
    return out


async def wait_ready(cluster: ClusterConfig, timeout_s: float = READY_TIMEOUT_S, *,
                     procs: ClusterProcesses | None = None) -> None:
    """Waits until every node answers and every group has a leader. With ``procs`` (the
    cluster's node processes), a node process that has exited ends the wait at once, with the
    last line of its log."""
    deadline = trio.current_time() + timeout_s
    last = "no answer yet"
    while trio.current_time() < deadline:
        status = await describe_all(cluster)
        down = [n for n, s in status.items() if "error" in s]
        if procs is not None:
            for n in down:
                if (why := procs.exited(n)) is not None:
                    raise UnavailableError(f"node {n} exited: {why} ({procs.log_files(n)})")
        leaders: dict[int, set[int]] = {}
        for s in status.values():
            for gid, g in s.get("groups", {}).items():
                if g["leader"]:
                    leaders.setdefault(int(gid), set()).add(g["leader"])
        groups = {int(g) for s in status.values() for g in s.get("groups", {})}
        if not down and groups and all(leaders.get(g) for g in groups):
            return
        last = (f"nodes not answering: {down}" if down else
                f"groups without a leader: {sorted(g for g in groups if not leaders.get(g))}")
        await trio.sleep(0.2)
    raise UnavailableError(f"cluster not ready after {timeout_s} s ({last})")


def cluster_down(directory: str | os.PathLike[str]) -> list[int]:
    return ClusterProcesses(directory).stop()


def cluster_status(directory: str | os.PathLike[str]) -> dict[int, Any]:
    cluster = ClusterProcesses(directory).load_cluster()
    return trio.run(describe_all, cluster)


def format_status(cluster: ClusterConfig, status: Mapping[int, Any]) -> str:
    lines = [f"{'node':>4} {'region':<10} {'group':>5} {'role':<9} {'leader':>6} {'term':>5} "
             f"{'applied':>8} {'closed (ms ago)':>15}"]
    now = time.time_ns()
    for node in cluster.all_nodes():
        s = status.get(node.id, {})
        if "error" in s:
            lines.append(f"{node.id:>4} {node.region:<10} {'-':>5} down: {s['error']}")
            continue
        for gid, g in sorted(s.get("groups", {}).items(), key=lambda kv: int(kv[0])):
            age = (now - g["closed_ts"]) / 1e6 if g["closed_ts"] else float("nan")
            lines.append(f"{node.id:>4} {node.region:<10} {gid:>5} {g['role']:<9} "
                         f"{g['leader']:>6} {g['term']:>5} {g['applied']:>8} {age:>15.1f}")
        if s.get("clock_problem"):  # it answers this, and refuses every read and write
            lines.append(f"{node.id:>4} {node.region:<10} {'-':>5} does not serve: "
                         f"{s['clock_problem']}")
    return "\n".join(lines)


def not_stopped_message(nodes: Iterable[int]) -> str:
    """What to tell of nodes that :meth:`ClusterProcesses.stop` could not end."""
    nodes = list(nodes)
    which, kept = ((f"node {nodes[0]} is", "its pid file is") if len(nodes) == 1 else
                   (f"nodes {', '.join(map(str, nodes))} are", "their pid files are"))
    return (f"{which} still running {KILL_WAIT_S:g} s after SIGKILL (in uninterruptible I/O: "
            f"a stalled disk?); {kept} kept: run `meridian cluster down` again once the I/O "
            f"ends")
