"""Start, kill and restart a local cluster of :mod:`bench.raftkv` node processes.

Used by the real-process Raft tests and by ``python -m bench raft``. Every node listens on
127.0.0.1 only; every wait is bounded; :meth:`LocalCluster.close` (or leaving the ``with``
block) stops every process this object started, by PID, and nothing else.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

__all__ = ["LocalCluster", "free_ports", "ClusterError"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ClusterError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now, below the kernel's ephemeral
    range: a port taken by binding to port 0 lies in that range, where an outgoing connection
    (one member's to another) may take it before the member that was given it binds it."""
    from engine.local import free_base_port

    base = free_base_port(n)
    return list(range(base, base + n))


class LocalCluster:
    """``n`` raftkv nodes with data under ``workdir``; node ids are 1..n."""

    def __init__(self, workdir: str, n: int = 3, *, tick: float = 0.05,
                 start_timeout: float = 30.0):
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.workdir = workdir
        self.n = n
        self.tick = tick
        self.start_timeout = start_timeout
        ports = free_ports(2 * n)
        self.raft_ports = {i + 1: ports[i] for i in range(n)}
        self.client_ports = {i + 1: ports[n + i] for i in range(n)}
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, str] = {}

    @property
    def client_addrs(self) -> dict[int, tuple[str, int]]:
        return {i: ("127.0.0.1", p) for i, p in self.client_ports.items()}

    def __enter__(self) -> LocalCluster:
        try:
            self.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_all(self) -> None:
        for i in range(1, self.n + 1):
            self._spawn(i)
        for i in range(1, self.n + 1):
            self._wait_ready(i)

    def start(self, node: int) -> None:
        if node in self.procs and self.procs[node].poll() is None:
            raise ClusterError(f"node {node} is already running")
        self._spawn(node)
        self._wait_ready(node)

    def _spawn(self, node: int) -> None:
        peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in sorted(self.raft_ports.items()))
        data = os.path.join(self.workdir, f"node{node}")
        os.makedirs(data, exist_ok=True)
        log_path = os.path.join(self.workdir, f"node{node}.log")
        self.logs[node] = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        with open(log_path, "ab") as log:
            self.procs[node] = subprocess.Popen(
                [sys.executable, "-m", "bench.raftkv", "serve", "--id", str(node),
                 "--data", data, "--peers", peers,
                 "--client-port", str(self.client_ports[node]), "--tick", str(self.tick)],
                stdout=subprocess.PIPE, stderr=log, env=env, cwd=_ROOT,
            )

    def _wait_ready(self, node: int) -> None:
        proc = self.procs[node]
        deadline = time.monotonic() + self.start_timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise ClusterError(f"node {node} did not start within "
                                       f"{self.start_timeout} s; see {self.logs[node]}")
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    raise ClusterError(f"node {node} exited with {proc.wait()}; "
                                       f"see {self.logs[node]}")
                line += chunk
        if not line.startswith(b"READY"):
            raise ClusterError(f"node {node} said {line!r}")

    def kill(self, node: int) -> None:
        """SIGKILL: no clean shutdown, nothing flushed that was not already synced."""
        proc = self.procs.get(node)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, node: int, timeout: float = 10.0) -> None:
        proc = self.procs.get(node)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def running(self, node: int) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        for node in list(self.procs):
            try:
                self.stop(node)
            finally:
                proc = self.procs.pop(node)
                if proc.stdout is not None:
                    proc.stdout.close()
