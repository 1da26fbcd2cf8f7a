"""``meridian demo``: the storage core under crashes, shown step by step.

A writer process does what a Raft replica's storage does: it appends batches of entries to the
log store, syncs, acknowledges them (prints their last position), and applies them to the MVCC
state machine, whose applied index moves in the same LMDB transaction as the data. The demo
SIGKILLs the writer at seeded random moments, reopens both stores the way a restarted node
would — replaying log entries above the state machine's applied index — and checks that every
acknowledged entry is there byte for byte and that the state machine matches the log.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import __version__
from ._native import lib
from .logstore import LogStore
from .mvcc import MVCCStore

SEGMENT_SIZE = 1 << 20
KEYS = 100
MAX_WRITER_BATCHES = 1_000_000  # the writer stops by itself even if nobody kills it


def entry(pos: int) -> bytes:
    """The deterministic content of log position ``pos`` (so anyone can check it)."""
    size = 20 + (pos * 7919) % 300
    seed = hashlib.blake2b(pos.to_bytes(8, "little"), digest_size=16).digest()
    return (seed * (size // 16 + 1))[:size]


def key_of(pos: int) -> bytes:
    return b"key-%03d" % (pos % KEYS)


def apply_entries(mvcc: MVCCStore, entries: list[tuple[int, bytes]]) -> None:
    """Applies log entries to the state machine: entry at position p writes key_of(p) at
    commit timestamp p; the applied index moves with the data, so re-applying is a no-op."""
    if entries:
        last = entries[-1][0]
        # One LMDB transaction per batch; within a batch the newest write of a key wins.
        mvcc.apply([(key_of(p), e) for p, e in entries], commit_ts=last, applied_index=last)


def run_writer(directory: str) -> int:
    rng = random.Random(os.getpid())
    log = LogStore(os.path.join(directory, "log"), segment_size=SEGMENT_SIZE)
    mvcc = MVCCStore(os.path.join(directory, "mvcc"))
    pos = log.next_position
    start = time.perf_counter()
    for _ in range(MAX_WRITER_BATCHES):
        batch = [entry(p) for p in range(pos, pos + rng.randint(1, 32))]
        log.append(batch)
        log.sync()
        last = pos + len(batch) - 1
        sys.stdout.write(f"{last} {time.perf_counter() - start:.6f}\n")
        sys.stdout.flush()
        apply_entries(mvcc, list(zip(range(pos, last + 1), batch)))
        pos = last + 1
    return 0


def _recover(directory: str) -> tuple[int, int, int, int]:
    """Reopens like a restarted node. Returns (last log position, applied index before replay,
    entries replayed, keys checked)."""
    with LogStore(os.path.join(directory, "log"), segment_size=SEGMENT_SIZE) as log:
        last = log.last_position
        for pos, rec in log.scan():
            if rec != entry(pos):
                raise SystemExit(f"FAILED: log position {pos} holds bytes never written there")
        mvcc = MVCCStore(os.path.join(directory, "mvcc"))
        try:
            applied = mvcc.applied_index
            if applied > last:
                raise SystemExit(f"FAILED: state machine applied {applied} > log end {last}")
            replay = list(log.scan(applied + 1)) if applied < last else []
            for i in range(0, len(replay), 32):  # batches no larger than the writer's
                apply_entries(mvcc, replay[i : i + 32])
            checked = 0
            for k in range(min(KEYS, last + 1)):  # a log shorter than KEYS: keys 1..last
                newest = last - (last - k) % KEYS  # the last position that wrote key k
                if newest < 1:
                    continue
                if mvcc.get(key_of(newest), last) != entry(newest):
                    raise SystemExit(f"FAILED: {key_of(newest)!r} does not match position {newest}")
                checked += 1
        finally:
            mvcc.close()
    return last, applied, len(replay), checked


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_demo(*, directory: str | None, kills: int, batches: int, seed: int) -> int:
    """Runs the demo; returns the process exit code. Interrupted (Ctrl-C, SIGTERM, a closed
    terminal), it kills its writer, removes the data directory it made, and returns 130."""
    rng = random.Random(seed)
    # No more than a writer makes before it stops by itself: waiting for more, the demo would
    # take the writer's end for a failure.
    batches = min(batches, MAX_WRITER_BATCHES)
    owned = directory is None
    directory = directory or tempfile.mkdtemp(prefix="meridian-demo-")
    os.makedirs(directory, exist_ok=True)
    crc = "SSE4.2" if lib.meridian_crc32c_hardware() else "portable tables"
    print(f"Meridian {__version__} storage demo, data in {directory}")
    print(f"  log store: segments of {SEGMENT_SIZE >> 20} MiB, CRC-32C by {crc}")
    print("  state machine: MVCC versions on LMDB, applied index in the same transaction")
    acked_total, elapsed_total, acked = 0, 0.0, 0
    # SIGTERM and SIGHUP end the demo as Ctrl-C does: through the cleanup below, not around
    # it (the writer appends until it is killed, so its directory grows by the second).
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # Where the log ends before a writer starts: it appends from there, and what lies below
        # (a --dir used before, what the last writer wrote past its last acknowledgement read
        # here) is not its work.
        with LogStore(os.path.join(directory, "log"), segment_size=SEGMENT_SIZE) as log:
            log_end = log.last_position
        for crash in range(1, kills + 1):
            target = rng.randint(max(1, batches // 4), batches)
            start_acked, seen, elapsed = log_end, 0, 0.0
            child = None
            try:
                # Started inside the try: a signal that ends the demo as Popen returns must
                # still find the writer here, to kill it.
                child = subprocess.Popen(
                    [sys.executable, "-m", "engine.cli", "demo-writer", directory],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                while seen < target:
                    line = child.stdout.readline()
                    if not line:
                        err = child.stderr.read().decode(errors="replace")
                        raise SystemExit(f"FAILED: the writer exited early:\n{err}")
                    last, t = line.split()
                    acked, elapsed, seen = int(last), float(t), seen + 1
            finally:
                if child is not None:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    child.stdout.close()
                    child.stderr.close()
            n_acked = acked - start_acked
            acked_total += n_acked
            elapsed_total += elapsed
            print(
                f"crash {crash}/{kills}: writer pid {child.pid} acknowledged {seen} synced "
                f"batches ({n_acked} entries, up to position {acked}); SIGKILL"
            )
            last, applied, replayed, checked = _recover(directory)
            log_end = last
            if last < acked:
                raise SystemExit(f"FAILED: acknowledged position {acked} lost (log ends {last})")
            extra = last - acked
            print(
                f"  reopened: log holds 1..{last}, every acknowledged entry byte-identical"
                + (f" ({extra} unacknowledged also reached the disk)" if extra else "")
            )
            print(
                f"  state machine: applied index {applied}, replayed {replayed} entries from "
                f"the log, {checked} keys match the log"
            )
        rate = acked_total / elapsed_total if elapsed_total else 0.0
        print(
            f"OK: {kills} crashes, {acked_total} acknowledged entries, none lost or damaged; "
            f"the writer acknowledged {rate:,.0f} entries/s (one fdatasync per batch)"
        )
        return 0
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
