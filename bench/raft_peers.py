"""The peers of the Raft benchmark: PySyncObj and etcd, three members each on 127.0.0.1.

The Raft benchmark runs Meridian itself and calls the functions here for the systems it is
compared with. Each call starts a fresh three-member cluster under ``workdir``, waits until it has
a leader that commits a put (bounded; :class:`PeerError` on timeout), runs the load, then stops
every process it started, by PID, and removes its files, on success and on error alike.

API::

    pysyncobj_available() -> bool
    etcd_available() -> bool
    run_pysyncobj(concurrency, *, batch, duration, warmup, workdir) -> dict
    run_etcd(concurrency, *, duration, warmup, workdir) -> dict | None

The result is ``{"system", "concurrency", "ops_per_s", "p50_ms", "p99_ms", "durable"}`` plus two
informative counts, ``ops`` (puts measured) and ``errors`` (puts the peer refused, in the whole
run). ``system`` is ``"pysyncobj"``, ``"pysyncobj-batch"`` or ``"etcd"``. ``run_etcd`` returns
None when etcd is not installed (``etcd_available()`` is false: "skipped: etcd-server not
installed"); ``run_pysyncobj`` raises :class:`PeerUnavailable`, whose message starts with
``skipped:``, when PySyncObj is not importable. ``python -m bench.raft_peers`` runs the peers on
their own and prints one JSON line per measurement (``--help``).

Workload. A replicated key-value map; every put writes a new 16-byte key with a 100-byte value.
``concurrency`` closed-loop clients each send a put, wait for the commit acknowledgement, and send
the next. Puts completing during the first ``warmup`` seconds are discarded; the puts that
complete in the following ``duration`` seconds give ``ops_per_s`` (their number divided by
``duration``) and the latency percentiles (``time.perf_counter_ns`` from send to acknowledgement,
pooled over all clients). The clients run in separate load processes (``bench/peers/loadgen.py``:
one epoll loop per process over non-blocking sockets, a few microseconds of Python per put), one
process below 16 clients and two from 16 on, so that the load generator is not the bottleneck;
the processes start together and their raw latencies are merged. All clients talk to the leader.

PySyncObj 0.3.17 (``bench/peers/pysyncobj_node.py``): three ``SyncObj`` processes, each with a
``ReplDict`` and PySyncObj's persistent configuration (``journalFile``, plus the ``fullDumpFile``
that log compaction writes); PySyncObj never fsyncs them, so ``durable`` is false.
``"pysyncobj"`` uses ``SyncObjConf(appendEntriesUseBatch=False)`` (entries are sent as soon as
they are submitted), ``"pysyncobj-batch"`` ``appendEntriesUseBatch=True`` (entries wait for the
next 0.1 s tick, MEASURED.md). PySyncObj has no client protocol, so each member also serves a
minimal loopback TCP protocol: a put is one fixed-size frame, which the member submits with
``ReplDict.set(key, value, callback=...)``; the callback, run by PySyncObj once the entry is
committed and applied, writes the one-byte answer. That is the path ``set(..., sync=True)`` takes,
without a blocked thread per outstanding request. The member runs PySyncObj with
``autoTick=False`` (its mode for embedding in an application's event loop) and registers the
request sockets with the poller its ``doTick`` waits on, so Raft, the dict and the request server
share one thread and do not fight over the interpreter lock; this measured faster than a separate
request thread beside PySyncObj's tick thread. Keeping the clients in processes of their own,
rather than inside the members, keeps them off the members' interpreter lock too. With batching
on, an entry waits for the next tick, so closed-loop clients cannot exceed about
``concurrency / 0.1 s`` puts per second.

etcd (Debian's ``etcd-server``, 3.4): three members started by hand with their own ``--data-dir``
and client and peer ports on 127.0.0.1 and ``--initial-cluster`` naming all three. The load goes
through the v3 HTTP/JSON gateway, ``POST /v3/kv/put`` with base64 key and value, over HTTP/1.1
keep-alive connections (one per client) to the leader. etcd fsyncs its WAL before acknowledging,
so ``durable`` is true; put its ``workdir`` on the disk being measured, not tmpfs.

Ports are found by binding to port 0 on 127.0.0.1 (all at once, so they are distinct), closing,
and passing them on; a port taken in between makes a member fail to start, and the start is
retried with new ports. Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

from . import _common
from .raftcluster import free_ports

__all__ = [
    "PeerError",
    "PeerUnavailable",
    "Procs",
    "make_result",
    "run_load",
    "etcd_available",
    "etcd_version",
    "pysyncobj_available",
    "pysyncobj_version",
    "run_etcd",
    "run_pysyncobj",
]

KEY_SIZE = 16
VALUE_SIZE = 100
MEMBERS = 3
PEERS_DIR = Path(__file__).resolve().parent / "peers"
NODE_SCRIPT = PEERS_DIR / "pysyncobj_node.py"
LOAD_SCRIPT = PEERS_DIR / "loadgen.py"

READY_TIMEOUT_S = 60.0       # a cluster has this long to elect a leader and commit a put
LOAD_START_TIMEOUT_S = 30.0  # a load process has this long to connect its clients
LOAD_GRACE_S = 30.0          # beyond warm-up + duration, for outstanding puts and reporting
STOP_TIMEOUT_S = 5.0         # SIGTERM, then SIGKILL
START_ATTEMPTS = 3           # fresh ports each time a member fails to start
MAX_ERROR_FRACTION = 0.01    # more refused puts than this makes the measurement invalid
TWO_LOAD_PROCESSES_FROM = 16


class PeerError(RuntimeError):
    """A peer failed to start, to elect a leader, or to serve the load."""


class PeerUnavailable(PeerError):
    """The peer is not installed; the message starts with ``skipped:``."""


class _StartFailed(PeerError):
    """A member exited while the cluster was starting (for example, its port was taken)."""


# ------------------------------------------------------------------------------- availability


def pysyncobj_available() -> bool:
    """True when PySyncObj can be imported by this interpreter (which runs the members)."""
    import importlib.util

    return importlib.util.find_spec("pysyncobj") is not None


def etcd_available() -> bool:
    """True when an ``etcd`` executable is on PATH (Debian: ``apt-get install etcd-server``)."""
    return shutil.which("etcd") is not None


def pysyncobj_version() -> str | None:
    """The installed PySyncObj's version, or None."""
    try:
        from importlib.metadata import version

        return version("pysyncobj")
    except Exception:  # noqa: BLE001 - not installed, or no metadata
        return None


def etcd_version() -> str | None:
    """The version ``etcd --version`` reports, or None."""
    exe = shutil.which("etcd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.lower().startswith("etcd version:"):
            return line.split(":", 1)[1].strip()
    return None


# ---------------------------------------------------------------------------------- processes


class Procs:
    """The processes one run started; :meth:`stop_all` ends them by PID and reaps them."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._stop_signal: dict[int, int] = {}
        self._logs: list = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              stdin_pipe: bool = True, stdout_pipe: bool = True,
              stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        log = open(os.path.join(self.logdir, f"{name}.log"), "wb")  # noqa: SIM115 - kept open
        self._logs.append(log)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            env=env,
            cwd=self.logdir,
            start_new_session=True,  # the terminal's Ctrl-C reaches the parent only
        )
        self.procs.append((name, proc))
        self._stop_signal[proc.pid] = stop_signal
        return proc

    def log_tail(self, name: str, limit: int = 2000) -> str:
        try:
            with open(os.path.join(self.logdir, f"{name}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        for name, proc in self.procs:
            if (names is None or name in names) and proc.poll() is not None:
                raise _StartFailed(f"{name} exited with status {proc.returncode}:\n"
                                   f"{self.log_tail(name)}")

    def stop(self, procs: Sequence[subprocess.Popen]) -> None:
        """Its stop signal to each, wait, SIGKILL to the survivors, wait; never raises."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(self._stop_signal.get(proc.pid, signal.SIGTERM))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_S)
        for proc in procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def stop_all(self) -> None:
        self.stop([p for _, p in self.procs])
        self.procs.clear()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
        self._logs.clear()


def _read_line(proc: subprocess.Popen, deadline: float, what: str) -> str:
    """One line from ``proc``'s stdout before ``deadline`` (time.monotonic)."""
    try:
        data = _common.read_line(proc, deadline, poll_s=0.5)
    except EOFError:
        raise _StartFailed(f"{what}: the process exited (status {proc.poll()})") from None
    if data is None:
        raise PeerError(f"timed out waiting for {what}")
    line, _, rest = data.partition(b"\n")
    if rest:
        raise PeerError(f"{what}: unexpected output {rest[:200]!r}")
    return line.decode("utf-8", "replace").strip()


# --------------------------------------------------------------------------------------- load


def _load_processes(concurrency: int) -> int:
    return 1 if concurrency < TWO_LOAD_PROCESSES_FROM else 2


def run_load(procs: Procs, protocol: str, port: int, concurrency: int, duration: float,
              warmup: float, rundir: str) -> tuple[array, int, int]:
    """Runs the closed-loop load; returns (latencies in ns, puts measured, puts refused)."""
    _need_script(LOAD_SCRIPT)
    n_proc = min(_load_processes(concurrency), concurrency)
    shares = [concurrency // n_proc + (1 if i < concurrency % n_proc else 0)
              for i in range(n_proc)]
    started = []
    try:
        for i, conns in enumerate(shares):
            out = os.path.join(rundir, f"latencies-{i}.bin")
            proc = procs.start(f"load-{i}", [
                sys.executable, str(LOAD_SCRIPT), "--protocol", protocol, "--port", str(port),
                "--connections", str(conns), "--duration", repr(duration),
                "--warmup", repr(warmup), "--process", str(i), "--out", out,
            ])
            started.append((i, proc, out))
        deadline = time.monotonic() + LOAD_START_TIMEOUT_S
        for i, proc, _ in started:
            try:
                line = _read_line(proc, deadline, f"load process {i} to connect")
            except PeerError as exc:
                raise PeerError(f"{exc}\n{procs.log_tail(f'load-{i}')}") from None
            if line != "READY":
                raise PeerError(f"load process {i}: unexpected {line!r}")
        for _, proc, _ in started:
            assert proc.stdin is not None
            proc.stdin.write(b"GO\n")
            proc.stdin.flush()
        deadline = time.monotonic() + warmup + duration + LOAD_GRACE_S
        latencies = array("q")
        ops = errors = late = 0
        for i, proc, out in started:
            try:
                summary = json.loads(_read_line(proc, deadline, f"load process {i} to finish"))
            except (PeerError, ValueError) as exc:
                raise PeerError(f"load process {i} failed: {exc}\n"
                                f"{procs.log_tail(f'load-{i}')}") from None
            ops += summary["ops"]
            errors += summary["errors"]
            late += summary["late"]
            with open(out, "rb") as f:
                latencies.frombytes(f.read())
        if late:
            raise PeerError(f"{late} puts were still unanswered {LOAD_GRACE_S:g} s after the end")
        return latencies, ops, errors
    finally:
        procs.stop([p for _, p, _ in started])


def make_result(system: str, concurrency: int, duration: float, durable: bool,
            latencies: array, ops: int, errors: int) -> dict:
    if ops == 0 or not latencies:
        raise PeerError(f"{system}: no put completed in the {duration:g} s window "
                        f"({errors} refused)")
    if errors > MAX_ERROR_FRACTION * ops:
        raise PeerError(f"{system}: {errors} puts refused against {ops} acknowledged")
    samples = latencies.tolist()
    return {
        "system": system,
        "concurrency": concurrency,
        "ops_per_s": round(ops / duration, 1),
        "p50_ms": round(_common.percentile(samples, 50) / 1e6, 3),
        "p99_ms": round(_common.percentile(samples, 99) / 1e6, 3),
        "durable": durable,
        "ops": ops,
        "errors": errors,
    }


def _need_script(path: Path) -> None:
    if not path.is_file():
        raise PeerError(f"{path} is missing: run the benchmark from a source checkout")


def _check_args(concurrency: int, duration: float, warmup: float) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    if duration <= 0 or warmup < 0:
        raise ValueError("duration must be positive and warmup not negative")


def _child_env() -> dict[str, str]:
    # etcd reads its flags from ETCD_* variables too; none may leak in from the caller.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}


# ---------------------------------------------------------------------------------- PySyncObj


def _pysyncobj_status(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(b"S")
        return s.recv(1)


def _pysyncobj_put(port: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"P" + b"ready-check-key!" + bytes(VALUE_SIZE))
        return s.recv(1)


def _start_pysyncobj(procs: Procs, rundir: str, batch: bool) -> int:
    """Starts the three members; returns the leader's request port once it commits a put."""
    _need_script(NODE_SCRIPT)
    raft_ports = free_ports(MEMBERS)
    addrs = [f"127.0.0.1:{p}" for p in raft_ports]
    names = [f"pysyncobj-{i}" for i in range(MEMBERS)]
    members = []
    for i, addr in enumerate(addrs):
        argv = [sys.executable, str(NODE_SCRIPT), "--self", addr,
                "--journal", os.path.join(rundir, f"member-{i}.journal")]
        for other in addrs:
            if other != addr:
                argv += ["--partner", other]
        if batch:
            argv.append("--batch")
        members.append(procs.start(names[i], argv, env=_child_env()))
    deadline = time.monotonic() + READY_TIMEOUT_S
    ports = []
    for name, proc in zip(names, members):
        line = _read_line(proc, deadline, f"{name} to listen")
        if not line.startswith("READY "):
            raise PeerError(f"{name}: unexpected {line!r}")
        ports.append(int(line.split()[1]))
    states: list[bytes] = []
    while time.monotonic() < deadline:
        procs.check_alive(names)
        states = []
        for port in ports:
            try:
                states.append(_pysyncobj_status(port))
            except OSError:
                states.append(b"?")
        if states.count(b"L") == 1 and states.count(b"F") == MEMBERS - 1:
            leader = ports[states.index(b"L")]
            try:
                answer = _pysyncobj_put(leader, max(0.1, deadline - time.monotonic()))
            except OSError as exc:
                raise PeerError(f"PySyncObj: the first put failed: {exc}") from None
            if answer == b"K":
                return leader
        time.sleep(0.1)
    raise PeerError(f"PySyncObj: no leader committing puts within {READY_TIMEOUT_S:g} s "
                    f"(member states {states!r})")


def run_pysyncobj(concurrency: int, *, batch: bool, duration: float, warmup: float,
                  workdir: str) -> dict:
    """Runs the put workload against a fresh three-member PySyncObj cluster.

    ``batch`` selects ``appendEntriesUseBatch`` (system ``"pysyncobj-batch"``, else
    ``"pysyncobj"``). Raises :class:`PeerUnavailable` if PySyncObj is not installed and
    :class:`PeerError` if the cluster does not start or serve the load.
    """
    _check_args(concurrency, duration, warmup)
    if not pysyncobj_available():
        raise PeerUnavailable("skipped: pysyncobj not installed (pip install pysyncobj)")
    system = "pysyncobj-batch" if batch else "pysyncobj"
    for attempt in range(1, START_ATTEMPTS + 1):
        rundir = tempfile.mkdtemp(prefix=f"{system}-", dir=workdir)
        procs = Procs(rundir)
        try:
            try:
                leader = _start_pysyncobj(procs, rundir, batch)
            except _StartFailed:
                if attempt == START_ATTEMPTS:
                    raise
                continue
            latencies, ops, errors = run_load(procs, "pysyncobj", leader, concurrency,
                                               duration, warmup, rundir)
            return make_result(system, concurrency, duration, False, latencies, ops, errors)
        finally:
            procs.stop_all()
            shutil.rmtree(rundir, ignore_errors=True)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------- etcd


def _etcd_post(port: int, path: str, body: dict, timeout: float) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {"raw": data[:200].decode("utf-8", "replace")}
        return resp.status, doc
    finally:
        conn.close()


def _start_etcd(procs: Procs, rundir: str) -> int:
    """Starts the three members; returns the leader's client port once it commits a put."""
    ports = free_ports(2 * MEMBERS)
    client_ports, peer_ports = ports[:MEMBERS], ports[MEMBERS:]
    names = [f"etcd-{i}" for i in range(MEMBERS)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports))
    token = f"meridian-bench-{os.getpid()}-{time.monotonic_ns()}"
    exe = shutil.which("etcd")
    assert exe is not None
    # setpriv makes the kernel kill the member should this process die without cleaning up.
    prefix = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
    for i, name in enumerate(names):
        client = f"http://127.0.0.1:{client_ports[i]}"
        peer = f"http://127.0.0.1:{peer_ports[i]}"
        procs.start(name, [
            *prefix, exe,
            "--name", name,
            "--data-dir", os.path.join(rundir, name),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ], env=_child_env(), stdin_pipe=False, stdout_pipe=False,
           # A member stopped with SIGTERM waits several seconds for the others; the data is
           # thrown away, so the members are killed outright.
           stop_signal=signal.SIGKILL)
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        procs.check_alive(names)
        leaders, ids = set(), {}
        for port in client_ports:
            try:
                status, doc = _etcd_post(port, "/v3/maintenance/status", {}, 2.0)
            except OSError as exc:
                last = f"127.0.0.1:{port}: {exc}"
                break
            if status != 200:
                last = f"127.0.0.1:{port}: HTTP {status} {doc}"
                break
            leaders.add(str(doc.get("leader", "0")))
            ids[str(doc.get("header", {}).get("member_id", ""))] = port
        else:
            leader_id = next(iter(leaders)) if len(leaders) == 1 else None
            if leader_id not in (None, "0") and leader_id in ids:
                leader = ids[leader_id]
                key = b"ready-check-key!"
                body = {"key": base64.b64encode(key).decode(),
                        "value": base64.b64encode(bytes(VALUE_SIZE)).decode()}
                try:
                    status, doc = _etcd_post(leader, "/v3/kv/put", body,
                                             max(0.1, deadline - time.monotonic()))
                except OSError as exc:
                    raise PeerError(f"etcd: the first put failed: {exc}") from None
                if status == 200:
                    return leader
                last = f"first put: HTTP {status} {doc}"
            else:
                last = f"leaders reported {sorted(leaders)}"
        time.sleep(0.2)
    raise PeerError(f"etcd: no leader committing puts within {READY_TIMEOUT_S:g} s ({last})")


def run_etcd(concurrency: int, *, duration: float, warmup: float, workdir: str) -> dict | None:
    """Runs the put workload against a fresh three-member etcd cluster.

    Returns None (skipped: etcd-server not installed) when there is no ``etcd`` executable;
    raises :class:`PeerError` if the cluster does not start or serve the load.
    """
    _check_args(concurrency, duration, warmup)
    if not etcd_available():
        return None
    for attempt in range(1, START_ATTEMPTS + 1):
        rundir = tempfile.mkdtemp(prefix="etcd-", dir=workdir)
        procs = Procs(rundir)
        try:
            try:
                leader = _start_etcd(procs, rundir)
            except _StartFailed:
                if attempt == START_ATTEMPTS:
                    raise
                continue
            latencies, ops, errors = run_load(procs, "etcd", leader, concurrency, duration,
                                               warmup, rundir)
            return make_result("etcd", concurrency, duration, True, latencies, ops, errors)
        finally:
            procs.stop_all()
            shutil.rmtree(rundir, ignore_errors=True)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.raft_peers``: runs the peers on their own and prints one line each."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.raft_peers", description=main.__doc__)
    p.add_argument("--system", action="append", choices=("pysyncobj", "pysyncobj-batch", "etcd"),
                   help="repeat to run several (default: all three)")
    p.add_argument("--concurrency", type=int, action="append",
                   help="repeat to run several (default: 1, 16 and 128)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="discarded seconds (default 1)")
    p.add_argument("--dir", default=".", help="where the members' files go (not tmpfs)")
    args = p.parse_args(argv)
    systems = args.system or ["pysyncobj", "pysyncobj-batch", "etcd"]
    for system in systems:
        for c in args.concurrency or [1, 16, 128]:
            try:
                if system == "etcd":
                    r = run_etcd(c, duration=args.duration, warmup=args.warmup, workdir=args.dir)
                else:
                    r = run_pysyncobj(c, batch=system == "pysyncobj-batch",
                                      duration=args.duration, warmup=args.warmup,
                                      workdir=args.dir)
            except PeerUnavailable as exc:
                r = None
                print(f"{system}: {exc}", flush=True)
                continue
            if r is None:
                print(f"{system}: skipped: etcd-server not installed", flush=True)
                continue
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
