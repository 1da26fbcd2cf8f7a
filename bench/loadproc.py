"""Multi-process load generation: the load processes, and the parent that runs them together.

One Python process saturates one core at a few tens of thousands of operations per second, and
a system's client library may cost more than that; so the load of one measurement is split over
``processes`` load processes (``python -m bench.loadproc SPEC``), each running the same
generator (``bench/openloop.py``) with its share of the clients (closed loop) or of the
arrival rate (open loop), on its own seed.

Protocol with the parent: the process opens its driver (connections included), prints
``READY``, and waits for ``GO <unix time>`` on stdin: all processes start their schedules at
that same wall-clock instant. At the end it writes its tally (histograms encoded) to the
spec's ``out`` file and prints ``DONE``. The parent samples the servers' CPU time at the start
and at the end of the measured window, draws the progress bar, merges the tallies, and stops
every load process it started, by PID, on success and on error alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import _common
from .openloop import LoadSpec, Tally, merge_tallies

__all__ = ["LoadError", "WindowSamples", "process_load", "run_processes", "shares"]

READY_TIMEOUT_S = 60.0
FINISH_SLACK_S = 30.0
START_DELAY_S = 0.3
REPO_ROOT = Path(__file__).resolve().parent.parent


class LoadError(RuntimeError):
    """A load process failed to start, to connect, or to report."""


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares (the first ones larger)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def process_load(load: LoadSpec, processes: int, i: int, seed: int = 1) -> LoadSpec:
    """Load process ``i``'s part of ``load`` split over ``processes``: its share of the
    clients, the same share of the arrival rate, and its own seed.

    The rate follows the connections: a process with fewer of them than another (clients
    that do not divide evenly) must not get as many arrivals, or it queues while the other
    idles, and the run shows a saturation the system never reached. Uniform arrivals take
    turns: operation ``j`` of the one schedule (intended at ``start + j / rate``) is sent by
    the process that holds the connection ``j % clients``, connection ``c`` being held by
    process ``c % processes`` (which gives process ``i`` its ``shares`` of them): together,
    one arrival every ``1 / rate``, as one process would send them."""
    if load.rate is None:
        return dataclasses.replace(load, clients=shares(load.clients, processes)[i],
                                   seed=seed * 100 + i)
    assert load.cycle == 1 and load.slots == (0,), "a load already split"
    slots = tuple(range(i, load.clients, processes))
    return dataclasses.replace(load, clients=len(slots),
                               rate=load.rate * len(slots) / load.clients,
                               cycle=load.clients, slots=slots, seed=seed * 100 + i)


class WindowSamples:
    """What the parent sampled at the measured window's start and end (``sample()`` dicts)."""

    def __init__(self) -> None:
        self.start: dict | None = None
        self.end: dict | None = None


def _read_line(proc: subprocess.Popen, deadline: float, what: str, log: Path) -> str:
    try:
        data = _common.read_line(proc, deadline)
    except EOFError:
        raise LoadError(f"{what}: the load process exited (status {proc.poll()})\n"
                        f"{_tail(log)}") from None
    if data is None:
        raise LoadError(f"timed out waiting for {what}\n{_tail(log)}")
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_bytes()[-limit:].decode("utf-8", "replace")
    except OSError:
        return ""


def run_processes(driver: dict | list[dict], workload: dict, load: LoadSpec, processes: int,
                  rundir: str, *,
                  sample: Callable[[], dict] | None = None, progress=None,
                  seed: int = 1) -> tuple[Tally, WindowSamples]:
    """Runs ``load`` split over ``processes`` load processes; returns the merged tally and
    the samples ``sample()`` took at the window's start and end.

    ``driver`` is a :func:`bench.drivers.open_driver` spec, or a list of them (load process
    ``i`` uses ``driver[i % len(driver)]``: clients of several regions); ``workload`` the
    keyword arguments of :class:`bench.workloads.OpGenerator` (``process``/``processes``/
    ``seed`` are set here).
    """
    drivers = driver if isinstance(driver, list) else [driver]
    processes = max(1, min(processes, load.clients))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    started: list[tuple[subprocess.Popen, Path, Path]] = []
    samples = WindowSamples()
    try:
        for i in range(processes):
            spec = {
                "driver": drivers[i % len(drivers)],
                "workload": {**workload, "process": i, "processes": processes,
                             "seed": seed * 100 + i},
                "load": process_load(load, processes, i, seed).to_json(),
                "out": os.path.join(rundir, f"tally-{i}.json"),
            }
            spec_path = Path(rundir) / f"load-{i}.json"
            spec_path.write_text(json.dumps(spec))
            log_path = Path(rundir) / f"load-{i}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.loadproc", str(spec_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                    cwd=str(REPO_ROOT), start_new_session=True)
            started.append((proc, Path(spec["out"]), log_path))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for i, (proc, _, log) in enumerate(started):
            line = _read_line(proc, deadline, f"load process {i} to connect", log)
            if line != "READY":
                raise LoadError(f"load process {i}: unexpected {line!r}\n{_tail(log)}")
        t0 = time.time() + START_DELAY_S
        for proc, _, _ in started:
            assert proc.stdin is not None
            proc.stdin.write(f"GO {t0!r}\n".encode())
            proc.stdin.flush()
        window_start = t0 + load.warmup_s
        window_end = window_start + load.duration_s
        while time.time() < window_end:
            now = time.time()
            if samples.start is None and now >= window_start:
                samples.start = sample() if sample else {}
            if progress is not None:
                progress.update()
            target = window_start if samples.start is None else window_end
            time.sleep(max(0.0, min(0.1, target - time.time())))
            # One that exits once the window is over has finished (it says so below): this
            # sleep may have ended late.
            ended = time.time() >= window_end
            for i, (proc, _, log) in enumerate(started):
                if proc.poll() is not None and not ended:
                    raise LoadError(f"load process {i} exited early (status {proc.returncode})"
                                    f"\n{_tail(log)}")
        if samples.start is None:
            samples.start = sample() if sample else {}
        samples.end = sample() if sample else {}
        deadline = time.monotonic() + load.grace_s + FINISH_SLACK_S
        tallies = []
        for i, (proc, out, log) in enumerate(started):
            line = _read_line(proc, deadline, f"load process {i} to finish", log)
            if line != "DONE":
                raise LoadError(f"load process {i}: unexpected {line!r}\n{_tail(log)}")
            tallies.append(Tally.from_json(json.loads(out.read_text())))
        return merge_tallies(tallies), samples
    finally:
        for proc, _, _ in started:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin,):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()


# --------------------------------------------------------------------------- a load process


def _child_main(spec_path: str) -> int:
    import trio

    from .drivers import open_driver
    from .openloop import run_load
    from .workloads import OpGenerator

    spec = json.loads(Path(spec_path).read_text())
    load = LoadSpec(**spec["load"])
    ops = OpGenerator(**spec["workload"])

    async def main() -> None:
        async with open_driver(spec["driver"], connections=load.clients) as driver:
            print("READY", flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            word, _, when = line.strip().partition(" ")
            if word != "GO":
                raise SystemExit(f"expected GO, got {line!r}")
            start_at = trio.current_time() + max(0.0, float(when) - time.time())
            tally = await run_load(driver, ops, load, start_at=start_at)
        tmp = spec["out"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(tally.to_json(), f)
        os.replace(tmp, spec["out"])
        print("DONE", flush=True)

    trio.run(main)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.loadproc SPEC.json (run by the benchmarks)")
    sys.exit(_child_main(sys.argv[1]))
