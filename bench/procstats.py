"""Resource figures of server processes, read from /proc: CPU time, resident memory, disk use.

- CPU: ``utime + stime`` of ``/proc/PID/stat`` (fields 14 and 15, in clock ticks of
  ``SC_CLK_TCK``), summed over a system's server processes; sampled at the start and the end of
  a measured window, the difference divided by the operations completed gives CPU seconds per
  1,000 operations.
- Memory: ``VmRSS`` of ``/proc/PID/status`` (resident set, bytes), summed.
- Disk: the space allocated to every file under a directory (``st_blocks × 512``, so
  preallocated or sparse files count for what they occupy), and the apparent size.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

__all__ = ["cpu_seconds", "disk_usage", "rss_bytes", "Progress"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU seconds of ``pids`` (None if any is gone or /proc is missing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # After the command name: state is field 3, so utime (14) and stime (15) are 11, 12.
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def rss_bytes(pids: Iterable[int]) -> int | None:
    """Summed resident set size of ``pids`` in bytes (None if any is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            return None
    return total


def disk_usage(paths: Iterable[str]) -> dict:
    """``{"allocated_bytes", "apparent_bytes", "files"}`` of every file under ``paths``."""
    allocated = apparent = files = 0
    for root in paths:
        for dirpath, _, names in os.walk(root):
            for name in names:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                allocated += st.st_blocks * 512
                apparent += st.st_size
                files += 1
    return {"allocated_bytes": allocated, "apparent_bytes": apparent, "files": files}


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total_s: float, *, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.total_s = max(total_s, 1e-9)
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        frac = min(1.0, (now - self.started) / self.total_s)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        self.stream.write(f"\r{self.label} [{bar}] {frac:4.0%} {note}"[:200].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
