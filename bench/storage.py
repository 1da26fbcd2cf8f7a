"""The storage benchmark: Meridian's log store and MVCC store beside LMDB, SQLite and raw fdatasync.

Run it with ``python -m bench storage [--quick] [--json FILE]``.

Workload. Records are 100 bytes; the key-value stores get 16-byte keys. For each
batch size in 1, 16, 256 every system makes one batch durable at a time:

- ``meridian``: ``LogStore.append(batch)`` then ``LogStore.sync()`` (default 64 MiB segments,
  preallocated by the store).
- ``lmdb``: ``sync=True`` (its defaults otherwise), one write transaction per batch,
  ``Cursor.putmulti`` of the batch's (key, value) pairs, commit. The keys are random 16-byte
  strings, as a key-value store's keys usually are (hashes, UUIDs), and as in MEASURED.md's
  LMDB figures; the targets are set against this row.
- ``lmdb-seq``: the same with increasing keys, LMDB's best case (its B-tree only ever appends);
  reported beside it so that nobody mistakes the ratio for more than it is.
- ``sqlite``: WAL, ``synchronous=FULL``, one transaction per batch, ``executemany`` of
  ``INSERT INTO t(v) VALUES (?)`` into ``t(id INTEGER PRIMARY KEY, v BLOB)`` (rowid order).
- ``raw-fdatasync``: the physical limit. The batch's records, each framed with a 9-byte header
  like the log store's (so ``n * 109`` bytes), are written with one ``os.write`` to a plain file
  opened ``O_APPEND``, then one ``os.fdatasync``. The file grows with every write, whereas the
  log store overwrites preallocated segments (cheaper to sync, MEASURED.md).

The batch is built before its timer starts; the timer covers the append/commit and the sync. A
system's throughput in one repetition is its records divided by the summed batch times.

Also measured: ``append_nosync_records_per_s``, LogStore appends of 1000 prebuilt 100-byte records
per call without syncing; and the MVCC store (``engine.mvcc.MVCCStore``, ``sync=False`` as
designed): ``apply`` of 1000 versions per call (random keys out of a preloaded key space,
increasing commit timestamp and applied index) and point ``get(key, ts)`` of random existing keys
at the newest timestamp, one call at a time.

Noise control (MEASURED.md): every repetition runs every measurement once, the systems
round-robin within each batch size and the starting system rotating between repetitions; the
figure reported is the median over repetitions; latency percentiles pool the batches of all
repetitions; ratios are taken between the medians of one run. Every measurement stops after
``duration_s`` or ``records`` records, whichever comes first. The garbage collector is off while
a measurement runs (as in ``timeit``), for every system alike. Files live in a temporary
directory under ``--dir`` (default: ``bench/results/tmp/`` in a source checkout, else the current
directory), removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import random
import shlex
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import _common

__all__ = ["TARGETS", "Config", "add_parser", "run_benchmark"]

RECORD_SIZE = 100
KEY_SIZE = 16
RAW_HEADER_SIZE = 9  # the log store's record header (native/logstore.h LS_RECORD_HEADER_SIZE)
BATCH_SIZES = (1, 16, 256)
SYSTEMS = ("meridian", "lmdb", "lmdb-seq", "sqlite", "raw-fdatasync")
NOSYNC_BATCH = 1000
MVCC_BATCH = 1000
GET_CHUNK = 1000
VALUE_POOL = 4096
LMDB_MAP_SIZE = 16 << 30
MVCC_MAP_SIZE = 1 << 30  # the store preallocates its map (writemap); it grows if needed

# Per-mode defaults: (repetitions, seconds per measurement). The quick run finishes in well under
# a minute on the reference machine; the full run in about two.
QUICK = {"repetitions": 3, "duration_s": 0.4}
FULL = {"repetitions": 7, "duration_s": 1.0}
DEFAULT_RECORDS = 5_000_000  # per measurement; the time bound normally ends it first
DEFAULT_MVCC_KEYS = 100_000
WARMUP_S = 0.05
WARMUP_BATCHES = 20


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    description: str
    threshold: float


TARGETS = (
    Target("batch1_meridian_vs_raw_syncs",
           "batch 1: meridian syncs/s / raw-fdatasync syncs/s", 0.9),
    Target("batch1_meridian_vs_lmdb_syncs",
           "batch 1: meridian syncs/s / lmdb syncs/s", 1.3),
    Target("batch256_meridian_vs_lmdb_records",
           "batch 256: meridian records/s / lmdb records/s", 5.0),
    Target("batch256_meridian_vs_sqlite_records",
           "batch 256: meridian records/s / sqlite records/s", 3.0),
    Target("append_nosync_records_per_s",
           "LogStore.append without sync, 1000 records per call (records/s)", 1_000_000),
    Target("mvcc_apply_versions_per_s",
           "MVCCStore.apply, 1000 versions per call (versions/s)", 150_000),
    Target("mvcc_get_per_s",
           "MVCCStore.get, one call at a time (gets/s)", 200_000),
)


@dataclass(frozen=True, slots=True)
class Config:
    """What one run measures. ``duration_s`` and ``records`` bound every single measurement."""

    quick: bool = False
    repetitions: int = FULL["repetitions"]
    duration_s: float = FULL["duration_s"]
    records: int = DEFAULT_RECORDS
    mvcc_keys: int = DEFAULT_MVCC_KEYS
    bench_dir: str = "."
    keep: bool = False
    seed: int = 1
    command: str = ""


class BenchError(RuntimeError):
    """A system under test misbehaved (for example, refused a write)."""


# ------------------------------------------------------------------------------------ workload


def key_of(i: int) -> bytes:
    """The 16-byte key number ``i``."""
    return b"key:%012d" % i


class Payloads:
    """A pool of distinct random 100-byte values, sliced without wrapping."""

    def __init__(self, seed: int, max_batch: int) -> None:
        rng = random.Random(seed)
        values = [rng.randbytes(RECORD_SIZE) for _ in range(VALUE_POOL)]
        self.values = values + values[:max_batch]
        header = struct.pack("<IIB", 0x5A5A5A5A, RECORD_SIZE, 1)
        assert len(header) == RAW_HEADER_SIZE
        self.framed = [header + v for v in self.values]

    def start(self, counter: int) -> int:
        return counter % VALUE_POOL


# ------------------------------------------------------------------------- systems under test
#
# Each system has prepare(n) -> payload (untimed: builds the batch) and commit(payload) (timed:
# write the batch and make it durable).


class MeridianLog:
    name = "meridian"

    def __init__(self, root: str, payloads: Payloads, *, directory: str = "meridian") -> None:
        from engine.logstore import DEFAULT_SEGMENT_SIZE, LogStore

        self.log = LogStore(os.path.join(root, directory), segment_size=DEFAULT_SEGMENT_SIZE)
        self.values = payloads.values
        self.payloads = payloads
        self.counter = 0

    def prepare(self, n: int) -> list[bytes]:
        s = self.payloads.start(self.counter)
        self.counter += n
        return self.values[s : s + n]

    def commit(self, records: list[bytes]) -> None:
        self.log.append(records)
        self.log.sync()

    def close(self) -> None:
        self.log.close()


class MeridianLogNoSync(MeridianLog):
    name = "meridian-nosync"

    def __init__(self, root: str, payloads: Payloads) -> None:
        super().__init__(root, payloads, directory="meridian-nosync")

    def commit(self, records: list[bytes]) -> None:
        self.log.append(records)

    def flush(self) -> None:
        self.log.sync()


class LMDBStore:
    """LMDB with increasing keys (``lmdb-seq``)."""

    name = "lmdb-seq"

    def __init__(self, root: str, payloads: Payloads) -> None:
        import lmdb

        self.env = lmdb.open(os.path.join(root, self.name), map_size=LMDB_MAP_SIZE, sync=True)
        self.values = payloads.values
        self.payloads = payloads
        self.counter = 0

    def prepare(self, n: int) -> list[tuple[bytes, bytes]]:
        s = self.payloads.start(self.counter)
        c = self.counter
        self.counter += n
        return [(key_of(c + i), v) for i, v in enumerate(self.values[s : s + n])]

    def commit(self, items: list[tuple[bytes, bytes]]) -> None:
        txn = self.env.begin(write=True)
        try:
            txn.cursor().putmulti(items)
        except BaseException:
            txn.abort()
            raise
        txn.commit()

    def close(self) -> None:
        self.env.close()


class LMDBRandomStore(LMDBStore):
    """LMDB with random 16-byte keys (``lmdb``)."""

    name = "lmdb"

    def __init__(self, root: str, payloads: Payloads) -> None:
        super().__init__(root, payloads)
        self.rng = random.Random(0x4C4D4442)

    def prepare(self, n: int) -> list[tuple[bytes, bytes]]:
        s = self.payloads.start(self.counter)
        self.counter += n
        # putmulti wants no particular order; random keys dirty random B-tree pages.
        return [(self.rng.randbytes(16), v) for v in self.values[s : s + n]]


class SQLiteStore:
    name = "sqlite"

    def __init__(self, root: str, payloads: Payloads) -> None:
        self.conn = sqlite3.connect(os.path.join(root, "sqlite.db"), isolation_level=None)
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise BenchError(f"SQLite refused WAL mode (got {mode!r})")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        self.values = payloads.values
        self.payloads = payloads
        self.counter = 0

    def prepare(self, n: int) -> list[tuple[bytes]]:
        s = self.payloads.start(self.counter)
        self.counter += n
        return [(v,) for v in self.values[s : s + n]]

    def commit(self, rows: list[tuple[bytes]]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO t(v) VALUES (?)", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class RawFdatasync:
    name = "raw-fdatasync"

    def __init__(self, root: str, payloads: Payloads) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(os.path.join(root, "raw.log"), flags, 0o644)
        self.framed = payloads.framed
        self.payloads = payloads
        self.counter = 0

    def prepare(self, n: int) -> bytes:
        s = self.payloads.start(self.counter)
        self.counter += n
        return b"".join(self.framed[s : s + n])

    def commit(self, data: bytes) -> None:
        done = os.write(self.fd, data)
        while done < len(data):  # a short write: finish it, as a log would
            done += os.write(self.fd, memoryview(data)[done:])
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


SYSTEM_CLASSES = {
    "meridian": MeridianLog,
    "lmdb": LMDBRandomStore,
    "lmdb-seq": LMDBStore,
    "sqlite": SQLiteStore,
    "raw-fdatasync": RawFdatasync,
}


class MVCCBench:
    """The MVCC store under a write workload (apply) and a read workload (get)."""

    name = "mvcc"

    def __init__(self, root: str, payloads: Payloads, key_count: int, rng: random.Random) -> None:
        from engine.mvcc import MVCCStore

        self.store = MVCCStore(os.path.join(root, "mvcc"), map_size=MVCC_MAP_SIZE, sync=False)
        self.payloads = payloads
        self.key_count = key_count
        self.keys = [key_of(i) for i in range(key_count)]
        self.rng = rng
        self.counter = 0
        self.commit_ts = 1 << 40  # an HLC-sized timestamp
        self.applied_index = 0
        self.written = bytearray(key_count)
        self.existing: list[int] = []

    def _batch(self, indices: list[int]) -> tuple[list[tuple[bytes, bytes]], int, int]:
        s = self.payloads.start(self.counter)
        self.counter += len(indices)
        keys = self.keys
        writes = list(zip([keys[i] for i in indices], self.payloads.values[s : s + len(indices)]))
        for i in indices:
            if not self.written[i]:
                self.written[i] = 1
                self.existing.append(i)
        self.commit_ts += 1
        self.applied_index += 1
        return writes, self.commit_ts, self.applied_index

    def preload(self) -> None:
        """Writes every key once, in key order, so that reads and updates meet a full store."""
        for lo in range(0, self.key_count, MVCC_BATCH):
            self.commit(self._batch(list(range(lo, min(lo + MVCC_BATCH, self.key_count)))))
        self.flush()

    def prepare(self, n: int) -> tuple[list[tuple[bytes, bytes]], int, int]:
        return self._batch(self.rng.sample(range(self.key_count), min(n, self.key_count)))

    def commit(self, batch: tuple[list[tuple[bytes, bytes]], int, int]) -> None:
        writes, commit_ts, applied_index = batch
        if not self.store.apply(writes, commit_ts, applied_index):
            raise BenchError(f"MVCCStore.apply refused applied_index {applied_index}")

    def flush(self) -> None:
        # sync=False leaves dirty pages behind; write them out (untimed) so that they do not
        # slow down whatever is measured next.
        checkpoint = getattr(self.store, "checkpoint", None)
        if checkpoint is not None:
            checkpoint()
        else:
            os.sync()

    def close(self) -> None:
        self.store.close()


# --------------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure_batches(prepare: Callable[[int], object], commit: Callable[[object], None],
                    batch: int, duration_s: float, max_records: int) -> list[int]:
    """Commits batches of ``batch`` records until ``duration_s`` or ``max_records`` is reached.

    Returns the time of every batch in nanoseconds (at least one batch).
    """
    max_batches = max(1, max_records // batch)
    clock = time.perf_counter_ns
    latencies: list[int] = []
    append = latencies.append
    with _gc_paused():
        deadline = clock() + int(duration_s * 1e9)
        for _ in range(max_batches):
            payload = prepare(batch)
            t0 = clock()
            commit(payload)
            t1 = clock()
            append(t1 - t0)
            if t1 >= deadline:
                break
    return latencies


def measure_gets(mv: MVCCBench, duration_s: float, max_calls: int) -> tuple[int, int, int]:
    """Point gets of random existing keys at the newest timestamp. Returns (calls, ns, misses)."""
    pool_size = min(max(max_calls, GET_CHUNK), 65_536)
    picks = mv.rng.choices(mv.existing, k=pool_size)
    pool = [mv.keys[i] for i in picks]
    pool += pool[:GET_CHUNK]
    ts = mv.commit_ts
    get = mv.store.get
    clock = time.perf_counter_ns
    calls = total_ns = misses = 0
    offset = 0
    with _gc_paused():
        deadline = clock() + int(duration_s * 1e9)
        while calls < max_calls:
            chunk = pool[offset : offset + min(GET_CHUNK, max_calls - calls)]
            offset = (offset + GET_CHUNK) % pool_size
            t0 = clock()
            for k in chunk:
                if get(k, ts) is None:
                    misses += 1
            t1 = clock()
            total_ns += t1 - t0
            calls += len(chunk)
            if t1 >= deadline:
                break
    return calls, total_ns, misses


@dataclass(slots=True)
class Series:
    """One measured quantity over the repetitions of a run."""

    unit_per_batch: int = 1
    rates: list[float] = field(default_factory=list)  # per repetition
    latencies_ns: list[int] = field(default_factory=list)  # every batch of every repetition

    def add(self, latencies_ns: list[int]) -> float:
        rate = len(latencies_ns) * self.unit_per_batch / (sum(latencies_ns) / 1e9)
        self.rates.append(rate)
        self.latencies_ns.extend(latencies_ns)
        return rate

    def median(self) -> float | None:
        return _common.median(self.rates) if self.rates else None

    def pct_us(self, q: float) -> float | None:
        if not self.latencies_ns:
            return None
        return round(_common.percentile(self.latencies_ns, q) / 1000.0, 1)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rotate(seq: tuple[str, ...], k: int) -> tuple[str, ...]:
    k %= len(seq)
    return seq[k:] + seq[:k]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def run_benchmark(cfg: Config) -> dict:
    """Runs the whole benchmark in a temporary directory under ``cfg.bench_dir``; returns the
    result document (schema 1)."""
    started = time.monotonic()
    os.makedirs(cfg.bench_dir, exist_ok=True)
    fs = _common.filesystem_of(cfg.bench_dir)
    if fs["type"] in _common.MEMORY_FILESYSTEMS:
        _progress(f"WARNING: {cfg.bench_dir} is on {fs['type']}: fdatasync reaches no disk, "
                  f"so the sync figures mean nothing; pass --dir on a real file system")
    machine = _common.describe_machine(cfg.bench_dir)
    rng = random.Random(cfg.seed)
    payloads = Payloads(cfg.seed, max(max(BATCH_SIZES), NOSYNC_BATCH, MVCC_BATCH))

    try:
        importlib.import_module("engine.mvcc")
        have_mvcc = True
    except ImportError as exc:
        have_mvcc = False
        _progress(f"WARNING: engine.mvcc is not importable ({exc}); the MVCC figures are skipped")

    root = tempfile.mkdtemp(prefix="meridian-bench-storage-", dir=cfg.bench_dir)
    systems: dict[str, object] = {}
    series = {(s, b): Series(unit_per_batch=b) for s in SYSTEMS for b in BATCH_SIZES}
    nosync = Series(unit_per_batch=NOSYNC_BATCH)
    apply = Series(unit_per_batch=MVCC_BATCH)
    get_rates: list[float] = []
    get_calls = get_misses = 0
    nosync_log: MeridianLogNoSync | None = None
    mv: MVCCBench | None = None
    try:
        for name in SYSTEMS:
            systems[name] = SYSTEM_CLASSES[name](root, payloads)
        nosync_log = MeridianLogNoSync(root, payloads)
        mv = MVCCBench(root, payloads, cfg.mvcc_keys, rng) if have_mvcc else None

        _progress(f"storage benchmark in {root} ({fs['type']} on {fs['device']}): "
                  f"{cfg.repetitions} repetitions, {cfg.duration_s:g} s per measurement")
        # Warm-up: open files, first pages, caches, code paths. Not recorded.
        for batch in BATCH_SIZES:
            for name in SYSTEMS:
                s = systems[name]
                measure_batches(s.prepare, s.commit, batch, WARMUP_S,
                                min(cfg.records, WARMUP_BATCHES * batch))
        measure_batches(nosync_log.prepare, nosync_log.commit, NOSYNC_BATCH, WARMUP_S,
                        min(cfg.records, WARMUP_BATCHES * NOSYNC_BATCH))
        nosync_log.flush()
        if mv is not None:
            mv.preload()

        for rep in range(cfg.repetitions):
            order = _rotate(SYSTEMS, rep)
            line = []
            for batch in BATCH_SIZES:
                for name in order:
                    s = systems[name]
                    lat = measure_batches(s.prepare, s.commit, batch, cfg.duration_s, cfg.records)
                    rate = series[(name, batch)].add(lat)
                    line.append(f"{name}/{batch}={_common.format_rate(rate)}")
            lat = measure_batches(nosync_log.prepare, nosync_log.commit, NOSYNC_BATCH,
                                  cfg.duration_s, cfg.records)
            line.append(f"nosync={_common.format_rate(nosync.add(lat))}")
            nosync_log.flush()  # untimed
            if mv is not None:
                lat = measure_batches(mv.prepare, mv.commit, MVCC_BATCH, cfg.duration_s,
                                      cfg.records)
                line.append(f"apply={_common.format_rate(apply.add(lat))}")
                mv.flush()  # untimed
                calls, ns, misses = measure_gets(mv, cfg.duration_s, cfg.records)
                get_rates.append(calls / (ns / 1e9))
                get_calls += calls
                get_misses += misses
                line.append(f"get={_common.format_rate(get_rates[-1])}")
            _progress(f"rep {rep + 1}/{cfg.repetitions}: " + " ".join(line))
    finally:
        for obj in [*systems.values(), nosync_log, mv]:
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        if cfg.keep:
            _progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    if get_misses:
        raise BenchError(f"MVCCStore.get found nothing for {get_misses} of {get_calls} keys that "
                         "were written")

    results = []
    for batch in BATCH_SIZES:
        for name in SYSTEMS:
            ser = series[(name, batch)]
            rec = ser.median()
            results.append({
                "system": name,
                "batch": batch,
                "records_per_s": round(rec, 1),
                "syncs_per_s": round(rec / batch, 1),
                "p50_us": ser.pct_us(50),
                "p99_us": ser.pct_us(99),
                "batches": len(ser.latencies_ns),
                "repetitions_records_per_s": [round(r, 1) for r in ser.rates],
            })

    def med(name: str, batch: int, what: str) -> float:
        return next(r[what] for r in results if r["system"] == name and r["batch"] == batch)

    mvcc: dict[str, object] = {"apply_versions_per_s": None, "get_per_s": None}
    if have_mvcc:
        mvcc = {
            "apply_versions_per_s": round(apply.median(), 1),
            "get_per_s": round(_common.median(get_rates), 1),
            "apply_batch": MVCC_BATCH,
            "keys": cfg.mvcc_keys,
            "apply_p50_us": apply.pct_us(50),
            "apply_p99_us": apply.pct_us(99),
            "repetitions_apply_versions_per_s": [round(r, 1) for r in apply.rates],
            "repetitions_get_per_s": [round(r, 1) for r in get_rates],
            "gets": get_calls,
        }
    nosync_rate = round(nosync.median(), 1)
    ratios = {
        "batch1_meridian_vs_raw_syncs": _ratio(med("meridian", 1, "syncs_per_s"),
                                               med("raw-fdatasync", 1, "syncs_per_s")),
        "batch1_meridian_vs_lmdb_syncs": _ratio(med("meridian", 1, "syncs_per_s"),
                                                med("lmdb", 1, "syncs_per_s")),
        "batch256_meridian_vs_lmdb_records": _ratio(med("meridian", 256, "records_per_s"),
                                                    med("lmdb", 256, "records_per_s")),
        "batch256_meridian_vs_sqlite_records": _ratio(med("meridian", 256, "records_per_s"),
                                                      med("sqlite", 256, "records_per_s")),
    }
    values = dict(ratios)
    values["append_nosync_records_per_s"] = nosync_rate
    values["mvcc_apply_versions_per_s"] = mvcc["apply_versions_per_s"]
    values["mvcc_get_per_s"] = mvcc["get_per_s"]
    targets = {}
    for t in TARGETS:
        v = values[t.name]
        targets[t.name] = {
            "description": t.description,
            "value": v,
            "threshold": t.threshold,
            "met": v is not None and v >= t.threshold,
        }
    machine["load_average_end"] = _common.load_average()
    return {
        "schema": _common.SCHEMA,
        "benchmark": "storage",
        "command": cfg.command,
        "config": {
            "quick": cfg.quick,
            "repetitions": cfg.repetitions,
            "duration_s": cfg.duration_s,
            "records_per_measurement": cfg.records,
            "batch_sizes": list(BATCH_SIZES),
            "record_bytes": RECORD_SIZE,
            "key_bytes": KEY_SIZE,
            "raw_bytes_per_record": RECORD_SIZE + RAW_HEADER_SIZE,
            "nosync_batch": NOSYNC_BATCH,
            "mvcc_batch": MVCC_BATCH,
            "mvcc_keys": cfg.mvcc_keys,
            "seed": cfg.seed,
        },
        "machine": machine,
        "results": results,
        "append_nosync_records_per_s": nosync_rate,
        "append_nosync": {
            "batch": NOSYNC_BATCH,
            "p50_us": nosync.pct_us(50),
            "p99_us": nosync.pct_us(99),
            "repetitions_records_per_s": [round(r, 1) for r in nosync.rates],
        },
        "mvcc": mvcc,
        "ratios": ratios,
        "targets": targets,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


# ------------------------------------------------------------------------------------ output


def render_text(doc: dict) -> str:
    """The result document as plain-text tables (what the command prints)."""
    m = doc["machine"]
    out = [
        (f"Storage benchmark ({'quick' if doc['config']['quick'] else 'full'}): "
         f"{doc['config']['repetitions']} repetitions x {doc['config']['duration_s']:g} s, "
         "medians over repetitions, percentiles over all batches"),
        (f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
         f"{m['python']}, {m['filesystem']['type']} on {m['filesystem']['device']}"),
        "",
    ]
    rows = [
        [r["system"], r["batch"], _common.format_rate(r["records_per_s"]),
         _common.format_rate(r["syncs_per_s"]), r["p50_us"], r["p99_us"]]
        for r in doc["results"]
    ]
    out.append(_common.format_table(
        ["system", "batch", "records/s", "syncs/s", "p50 us", "p99 us"], rows, "lrrrrr"))
    out.append("")
    mv = doc["mvcc"]
    out.append(_common.format_table(["measurement", "median"], [
        ["LogStore.append, no sync, 1000 records/call (records/s)",
         _common.format_rate(doc["append_nosync_records_per_s"])],
        ["MVCCStore.apply, 1000 versions/call (versions/s)",
         _common.format_rate(mv["apply_versions_per_s"])],
        ["MVCCStore.get, one at a time (gets/s)", _common.format_rate(mv["get_per_s"])],
    ], "lr"))
    out.append("")
    trows = []
    for name, t in doc["targets"].items():
        v = t["value"]
        is_ratio = name.startswith("batch")
        shown = "n/a" if v is None else (f"{v:.2f}x" if is_ratio else _common.format_rate(v))
        need = (f">= {t['threshold']:g}x" if is_ratio
                else f">= {_common.format_rate(t['threshold'])}")
        trows.append([t["description"], shown, need, "met" if t["met"] else "MISSED"])
    out.append(_common.format_table(["target", "value", "threshold", ""], trows, "lrrl"))
    met = sum(t["met"] for t in doc["targets"].values())
    out.append("")
    out.append(f"{met}/{len(doc['targets'])} targets met; {doc['elapsed_s']} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "storage",
        help="log store and MVCC store vs LMDB, SQLite and raw fdatasync",
        description="Meridian's log store beside LMDB, SQLite (WAL, synchronous=FULL) and raw "
                    "write+fdatasync at batch sizes 1, 16 and 256; LogStore appends without "
                    "sync; MVCCStore apply and get. Side by side in one run, medians over "
                    "interleaved repetitions.",
    )
    p.add_argument("--quick", action="store_true",
                   help=f"short run ({QUICK['repetitions']} repetitions x "
                        f"{QUICK['duration_s']} s per measurement; under a minute)")
    p.add_argument("--json", metavar="FILE", help="write the result document to FILE")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="where the temporary stores are made; it must be on the disk being "
                        "measured, not tmpfs (default: bench/results/tmp/ in a source checkout, "
                        "which git ignores; otherwise the current directory)")
    tuning = p.add_argument_group("tuning (defaults depend on --quick)")
    tuning.add_argument("--repetitions", type=int, metavar="N",
                        help=f"repetitions (default {FULL['repetitions']}, "
                             f"quick {QUICK['repetitions']})")
    tuning.add_argument("--duration-s", type=float, metavar="S",
                        help=f"seconds per measurement (default {FULL['duration_s']}, "
                             f"quick {QUICK['duration_s']})")
    tuning.add_argument("--records", type=int, default=DEFAULT_RECORDS, metavar="N",
                        help="at most N records (or gets) per measurement; small values make "
                             "a smoke test")
    tuning.add_argument("--mvcc-keys", type=int, default=DEFAULT_MVCC_KEYS, metavar="N",
                        help=f"MVCC key space, preloaded (default {DEFAULT_MVCC_KEYS:,})")
    tuning.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    tuning.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=main)
    return p


def default_bench_dir() -> str:
    """bench/results/tmp/ when running from a source checkout (git ignores it), else ``.``."""
    if (_common.REPO_ROOT / ".git").exists():
        return str(_common.RESULTS_DIR / "tmp")
    return os.getcwd()


def main(args: argparse.Namespace) -> int:
    mode = QUICK if args.quick else FULL
    repetitions = args.repetitions if args.repetitions is not None else mode["repetitions"]
    duration_s = args.duration_s if args.duration_s is not None else mode["duration_s"]
    if repetitions < 1 or duration_s <= 0 or args.records < 1 or args.mvcc_keys < 1:
        raise SystemExit("--repetitions, --duration-s, --records and --mvcc-keys must be positive")
    cfg = Config(
        quick=args.quick,
        repetitions=repetitions,
        duration_s=duration_s,
        records=args.records,
        mvcc_keys=args.mvcc_keys,
        bench_dir=os.path.abspath(args.dir if args.dir is not None else default_bench_dir()),
        keep=args.keep,
        seed=args.seed,
        command="python -m bench " + shlex.join(getattr(args, "argv", None) or sys.argv[1:]),
    )
    # Turn SIGTERM into an exit so that the temporary directory is removed.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        doc = run_benchmark(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        _common.write_json(args.json, doc)
    print(render_text(doc))
    if args.json:
        print(f"wrote {args.json}")
    return 0
