"""Helpers shared by the benchmarks: the machine description, statistics, JSON output.

Benchmarks on this kind of machine are noisy (MEASURED.md): every benchmark compares systems side
by side in one run, reports the median over repetitions and quotes ratios. These helpers keep
that bookkeeping in one place.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "SCHEMA",
    "comma_list",
    "describe_machine",
    "filesystem_of",
    "float_range",
    "format_rate",
    "format_table",
    "int_range",
    "median",
    "percentile",
    "pick",
    "read_json",
    "write_json",
]

SCHEMA = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# File systems on which fdatasync does not reach a disk: figures measured there are meaningless.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})


# ---------------------------------------------------------------------------------- arguments


def int_range(lo: int, hi: int, what: str = ""):
    """An argparse ``type`` for a whole number in ``lo..hi``, with a clear error otherwise
    (naming ``what`` the number is, when given)."""
    return _number_in(int, "a whole number", lo, hi, what, str)


def float_range(lo: float, hi: float, what: str = ""):
    """An argparse ``type`` for a number in ``lo..hi`` (never NaN or infinite), with a clear
    error otherwise (naming ``what`` the number is, when given)."""
    return _number_in(float, "a number", lo, hi, what, lambda x: f"{x:g}")


def _number_in(parse, kind: str, lo, hi, what: str, show):
    name = f"{what} " if what else ""

    def conv(text: str):
        try:
            v = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}{text!r} is not {kind}") from None
        if not lo <= v <= hi:  # NaN compares false: refused too
            raise argparse.ArgumentTypeError(f"{name}{v} is not in {show(lo)}..{show(hi)}")
        return v
    return conv


def comma_list(conv: Callable[[str], Any] = str, *,
               valid: Callable[[Any], bool] | None = None, expect: str = "",
               unique: bool = False):
    """An argparse ``type`` for a comma-separated list (``1,8,32``): each item through
    ``conv`` (a ValueError from it is a bad item) and then ``valid``; with ``unique``, sorted
    without repeats. The error for a bad item says what each must be (``expect``); an empty
    list is an error too. (argparse names the option.)"""

    def parse(text: str) -> list:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        values = []
        for item in items:
            try:
                value = conv(item)
            except ValueError:
                value, ok = None, False
            else:
                ok = valid is None or valid(value)
            if not ok:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not {expect or 'valid'} (in {text!r})")
            values.append(value)
        return sorted(set(values)) if unique else values
    return parse


# ---------------------------------------------------------------------------------- statistics


def read_line(proc: subprocess.Popen, deadline: float, poll_s: float = 0.25) -> bytes | None:
    """What ``proc`` wrote to its stdout (a pipe) up to and including its first newline,
    read before ``deadline`` (time.monotonic); None if the deadline passed first.

    Raises:
        EOFError: the process closed its stdout (exited) before a whole line.
    """
    import selectors
    import time

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if sel.select(min(left, poll_s)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"exited (status {proc.poll()})")
                data += chunk
    return bytes(data)


def pick(seq: Sequence, u: float):
    """The element of ``seq`` (not empty) that ``u``, a number in [0, 1) drawn beforehand,
    points at. A fault schedule draws its numbers before it looks at the cluster, so that the
    cluster's state (who leads: timing) changes only what is picked, never what is drawn
    next: a seed then replays the same schedule."""
    return seq[min(int(u * len(seq)), len(seq) - 1)]


def note_failure(failures: list[dict], exc: BaseException, **where: Any) -> None:
    """Records a run that could not be measured (a member that did not start, a load process
    that did not connect or report): it costs its row, not the rows measured. ``where`` names
    the row; the error is printed too, and the command exits 1 at its end."""
    failures.append({**where, "error": str(exc)})
    print(f"failed: {exc}", file=sys.stderr)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, interpolating linearly between ranks.

    ``samples`` need not be sorted. Raises ValueError on an empty sequence.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return float(ordered[lo])
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50.0)


# ------------------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def filesystem_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """The mount that holds ``path``: mount point, file system type, device and options."""
    target = os.path.realpath(path)
    best: dict[str, str] = {}
    best_len = -1
    for line in _read("/proc/self/mountinfo").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 6 or len(rfields) < 2:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best_len:
            best_len = len(mount_point)
            best = {
                "path": target,
                "mount_point": mount_point,
                "type": rfields[0],
                "device": rfields[1],
                "options": fields[5],
            }
    if not best:
        best = {"path": target, "mount_point": "?", "type": "unknown", "device": "?", "options": ""}
    return best


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe_machine(bench_dir: str | os.PathLike[str]) -> dict:
    """What a figure was measured on: CPU, cores, memory, kernel, Python, file system, date."""
    memory = _memory_bytes()
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable_cores = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "memory_bytes": memory,
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "filesystem": filesystem_of(bench_dir),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_start": load_average(),
        "git_commit": _git_commit(),
        "argv": [os.path.basename(sys.executable), *sys.argv],
    }


# ----------------------------------------------------------------------------------------- I/O


def write_json(path: str | os.PathLike[str], data: object) -> None:
    """Writes ``data`` as indented JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        # A document that cannot be encoded, a full disk: no half-written file left behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str | os.PathLike[str]) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------- display


def format_rate(value: float | None) -> str:
    """A rate with thousands separators and no false precision (``1,234,567``; ``12.3``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 align: str | None = None) -> str:
    """A plain-text table; ``align`` holds one 'l' or 'r' per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))
    lines = []
    for n, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
