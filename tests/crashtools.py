"""A child process for crash tests: it reports progress a line at a time, the test reads as many
lines as it likes (each read bounded by a deadline, so a hung child fails the test instead of
hanging it), and leaving the ``with`` block SIGKILLs the child — our own, by its PID."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time


class KilledChild:
    def __init__(self, code: str, *args: str, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._buf = b""

    def line(self) -> bytes:
        """The next line the child wrote (without the newline)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the child reported nothing before the deadline")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    raise AssertionError(f"child exited early: {self.proc.stderr.read().decode()}")
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def __enter__(self) -> KilledChild:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if exc_type is None:
            assert self.proc.returncode == -signal.SIGKILL, "the child was dead before the kill"
