"""Workload generators of the benchmark harness: key distributions and operation mixes.

Pure code (no I/O, no clock, no global random): every generator takes a seeded
``random.Random``, so a seed reproduces the same operation stream (with ``latest``, given
the inserts end in the same order).

Key distributions over ``n`` records (keys ``user000000000000`` ... in key order):

- ``uniform``: every record equally likely;
- ``zipfian``: record of popularity rank ``i`` (0-based) with probability ∝ 1 / (i + 1)^θ,
  sampled exactly by rejection-inversion in constant memory (``θ = 0`` is uniform; YCSB's
  default is ``θ = 0.99``). The ranks are scattered over the key space by a fixed permutation
  (YCSB's "scrambled zipfian"), so the hot records are not neighbours;
- ``latest``: YCSB's skewed-latest: rank 0 is the newest record, rank ``i`` the ``i``-th
  newest, with zipfian popularity over ranks (workload D reads what was just inserted).

Operation mixes (YCSB core workloads; ``read`` is a strong read, ``update`` a single-key
write transaction, ``rmw`` a read-modify-write transaction of one key):

==========  ==========================================  =============
workload    operations                                  distribution
==========  ==========================================  =============
A           50 % read, 50 % update                      zipfian
B           95 % read, 5 % update                       zipfian
C           100 % read                                  zipfian
D           95 % read, 5 % insert                       latest
E           95 % scan (1..max_scan keys), 5 % insert    zipfian
F           50 % read, 50 % rmw                         zipfian
bank        100 % transfer (two keys, read and written) uniform
regions     50 % home, 25 % cross, 25 % regional        uniform
==========  ==========================================  =============

``regions`` is a multi-region mix: one-key write transactions on a keyspace homed in the
client's region (*home*), on one homed in the farthest region (*cross*), and on a
``regional`` keyspace, which every region writes locally (*regional*).

Inserts of several load processes never collide: process ``p`` of ``P`` inserts records
``f + p``, ``f + p + P``, ... (``f``: ``first_insert``, the ``n`` records loaded unless a run
before this one inserted records: it then gives the record after the last of them, the
generator's :attr:`~OpGenerator.next_free_record`, so that every run inserts new records).
For ``latest`` a process counts as inserted only its own inserts, and only those that ended
(:meth:`~OpGenerator.finished`), with every one before them (YCSB's acknowledged inserts):
the other processes' counts drift apart from its own (and their shares of the load may
differ), and an insert still on its way has not written its record yet.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DISTRIBUTIONS",
    "WORKLOADS",
    "Latest",
    "Op",
    "OpGenerator",
    "Uniform",
    "Zipfian",
    "key_name",
    "make_chooser",
    "workload_mix",
]

DISTRIBUTIONS = ("uniform", "zipfian", "latest")
DEFAULT_THETA = 0.99
KEY_PREFIX = b"user"
KEY_DIGITS = 12
MAX_RECORDS = 10**KEY_DIGITS - 1
PERMUTATION_SEED = 20240611
"""Seeds the fixed permutation of a scrambled zipfian: the same in every load process."""


@dataclass(frozen=True)
class Mix:
    """One workload's operation mix (fractions summing to 1) and default distribution."""

    name: str
    ops: tuple[tuple[str, float], ...]
    distribution: str
    description: str


WORKLOADS: dict[str, Mix] = {
    "A": Mix("A", (("read", 0.5), ("update", 0.5)), "zipfian", "update heavy: 50/50"),
    "B": Mix("B", (("read", 0.95), ("update", 0.05)), "zipfian", "read mostly: 95/5"),
    "C": Mix("C", (("read", 1.0),), "zipfian", "read only"),
    "D": Mix("D", (("read", 0.95), ("insert", 0.05)), "latest", "read latest: 95/5 inserts"),
    "E": Mix("E", (("scan", 0.95), ("insert", 0.05)), "zipfian", "short scans: 95/5 inserts"),
    "F": Mix("F", (("read", 0.5), ("rmw", 0.5)), "zipfian", "read-modify-write: 50/50"),
    "bank": Mix("bank", (("transfer", 1.0),), "uniform", "transfers between two accounts"),
    "regions": Mix("regions", (("home", 0.5), ("cross", 0.25), ("regional", 0.25)), "uniform",
                   "multi-region mix: home-region, cross-region and regional-keyspace writes"),
}
OP_KINDS = ("read", "update", "insert", "scan", "rmw", "transfer", "home", "cross", "regional")


def workload_mix(name: str) -> Mix:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") \
            from None


def key_name(i: int) -> bytes:
    """The key of record ``i`` (16 bytes, in record order)."""
    if not 0 <= i <= MAX_RECORDS:
        raise ValueError(f"record number {i} out of range")
    return KEY_PREFIX + b"%012d" % i


# ------------------------------------------------------------------------------ distributions


class Uniform:
    """Records 0..n-1, equally likely."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("a distribution needs at least one record")
        self.n = n

    def next(self, rng: random.Random) -> int:
        return rng.randrange(self.n)


class Zipfian:
    """Popularity rank ``i`` with probability ∝ 1/(i+1)^θ, exactly, in constant memory.

    Ranks are drawn by rejection-inversion (Hörmann & Derflinger, "Rejection-inversion to
    generate variates from monotone discrete distributions", ACM TOMACS 6(3), 1996): invert the
    integral of the continuous density x^-θ, round to a rank, and accept or draw again (fewer
    than 1.1 draws per rank on average). Unlike YCSB's generator (Gray et al., "Quickly
    generating billion-record synthetic databases", 1994), which approximates the tail, it
    samples the exact distribution; and unlike inverting the cumulative weights it needs no
    table, so a load process costs the same at ten records as at ten million.

    ``scramble`` maps ranks to records through a fixed pseudo-random permutation (YCSB's
    scrambled zipfian, but a bijection: every record keeps its own rank's probability);
    without it rank ``i`` is record ``i``.
    """

    def __init__(self, n: int, theta: float = DEFAULT_THETA, *, scramble: bool = True) -> None:
        if n < 1:
            raise ValueError("a distribution needs at least one record")
        if not 0.0 <= theta <= 2.0:
            raise ValueError(f"zipfian theta must be in [0, 2], not {theta}")
        self.n = n
        self.theta = theta
        self._total: float | None = None  # the normalising sum, computed when first asked
        # Ranks are 1-based in the method: rank k has weight h(k) = k^-θ, and the integral
        # H of h over [k - 1/2, k + 1/2] stands for it.
        self._h_lo = self._big_h(1.5) - 1.0
        self._h_hi = self._big_h(n + 0.5)
        self._s = 2.0 - self._big_h_inverse(self._big_h(2.5) - self._h(2.0))
        self._scramble = _Permutation(n) if scramble else None

    def _h(self, x: float) -> float:
        return math.exp(-self.theta * math.log(x))

    def _big_h(self, x: float) -> float:
        """∫ from 1 to x of t^-θ dt: (x^(1-θ) - 1) / (1-θ), or log x at θ = 1."""
        log_x = math.log(x)
        return _expm1_over((1.0 - self.theta) * log_x) * log_x

    def _big_h_inverse(self, y: float) -> float:
        t = max(-1.0, y * (1.0 - self.theta))  # at most rounding error below -1
        return math.exp(_log1p_over(t) * y)

    def probability(self, rank: int) -> float:
        """P(rank) under the exact distribution (for tests and reports; the first call sums
        ``n`` terms)."""
        if self._total is None:
            self._total = math.fsum(1.0 / (i + 1) ** self.theta for i in range(self.n))
        return (1.0 / (rank + 1) ** self.theta) / self._total

    def next_rank(self, rng: random.Random) -> int:
        n, h_hi = self.n, self._h_hi
        while True:
            u = h_hi + rng.random() * (self._h_lo - h_hi)  # uniform in (H(3/2) - 1, H(n + 1/2)]
            x = self._big_h_inverse(u)
            k = min(n, max(1, int(x + 0.5)))
            if k - x <= self._s or u >= self._big_h(k + 0.5) - self._h(k):
                return k - 1

    def record_of_rank(self, rank: int) -> int:
        return rank if self._scramble is None else self._scramble.apply(rank)

    def next(self, rng: random.Random) -> int:
        return self.record_of_rank(self.next_rank(rng))


def _expm1_over(x: float) -> float:
    """(e^x - 1) / x, continuous at 0."""
    return math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x / 2.0 * (1.0 + x / 3.0 * (1.0 + x / 4.0))


def _log1p_over(x: float) -> float:
    """log(1 + x) / x, continuous at 0."""
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))


class _Permutation:
    """A fixed pseudo-random permutation of 0..n-1 in constant memory, the same in every
    process: a keyed bijection of ``b``-bit numbers (multiply by an odd constant and add, then
    xor the high half into the low, three rounds), walked until it lands below ``n`` (cycle
    walking: Black & Rogaway, "Ciphers with arbitrary finite domains", CT-RSA 2002). 2^b < 2n,
    so it takes fewer than two walks on average."""

    ROUNDS = 3

    def __init__(self, n: int) -> None:
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self._mask = (1 << bits) - 1
        self._shift = (bits + 1) // 2
        rng = random.Random(PERMUTATION_SEED)
        self._keys = [(rng.getrandbits(bits) | 1, rng.getrandbits(bits))
                      for _ in range(self.ROUNDS)]

    def apply(self, x: int) -> int:
        mask, shift, n = self._mask, self._shift, self.n
        while True:
            for mul, add in self._keys:
                x = (x * mul + add) & mask
                x ^= x >> shift
            if x < n:
                return x


class Latest:
    """YCSB's skewed-latest: the newest record is the most popular (zipfian over age).

    ``newest()`` is asked on every draw, so inserts shift the popularity at once; the record
    of age ``i`` is ``newest() - i``. Where the records that exist are not one range,
    ``nth_newest(i)`` gives the record of age ``i`` (0: the newest) instead.
    """

    def __init__(self, n: int, theta: float = DEFAULT_THETA, *, newest=None, nth_newest=None,
                 window: int | None = None) -> None:
        # Ranks beyond ``window`` are never drawn (the zipfian tail is tiny there anyway);
        # records older than the window stay reachable only through other operations.
        self._zipf = Zipfian(window or n, theta, scramble=False)
        self._newest = newest if newest is not None else (lambda: n - 1)
        self._nth_newest = nth_newest if nth_newest is not None else self._behind_newest

    def _behind_newest(self, age: int) -> int:
        return max(0, self._newest() - age)

    def next(self, rng: random.Random) -> int:
        return self._nth_newest(self._zipf.next_rank(rng))


def make_chooser(distribution: str, n: int, theta: float = DEFAULT_THETA, *, newest=None,
                 nth_newest=None):
    if distribution == "uniform":
        return Uniform(n)
    if distribution == "zipfian":
        return Zipfian(n, theta)
    if distribution == "latest":
        return Latest(n, theta, newest=newest, nth_newest=nth_newest)
    raise ValueError(f"unknown distribution {distribution!r}; choose from "
                     f"{', '.join(DISTRIBUTIONS)}")


# -------------------------------------------------------------------------------- operations


class Op(NamedTuple):
    """One operation: ``kind`` (see OP_KINDS), its key(s), and the value to write if any."""

    kind: str
    key: bytes
    key2: bytes | None = None
    value: bytes | None = None
    scan_length: int = 0


class OpGenerator:
    """The operation stream of one load process.

    Args:
        workload: a name of WORKLOADS.
        records: records loaded before the run (keys 0..records-1).
        distribution: None for the workload's default, or one of DISTRIBUTIONS.
        theta: the zipfian parameter (zipfian and latest).
        value_size: bytes per value written.
        max_scan: scans read 1..max_scan keys (uniform).
        seed: seeds the operation stream.
        process, processes: this load process's number and the number of load processes
            (inserts are spread so that they never collide).
        first_insert: the first record inserts may write (default ``records``): the
            :attr:`next_free_record` of the runs before this one on the same store, whose
            inserted records are in it already.
    """

    def __init__(self, workload: str, records: int, *, distribution: str | None = None,
                 theta: float = DEFAULT_THETA, value_size: int = 100, max_scan: int = 100,
                 seed: int = 1, process: int = 0, processes: int = 1,
                 first_insert: int | None = None) -> None:
        if records < 2:
            raise ValueError("a workload needs at least two records")
        if value_size < 1:
            raise ValueError("value_size must be at least 1")
        if not 0 <= process < processes:
            raise ValueError("process must be in 0..processes-1")
        first_insert = records if first_insert is None else first_insert
        if not records <= first_insert <= MAX_RECORDS:
            raise ValueError(f"first_insert must be in {records}..{MAX_RECORDS}")
        self.first_insert = first_insert
        self.mix = workload_mix(workload)
        self.records = records
        self.distribution = distribution or self.mix.distribution
        self.rng = random.Random(seed * 1_000_003 + process)
        self._kinds = [k for k, _ in self.mix.ops]
        self._cum = list(itertools.accumulate(f for _, f in self.mix.ops))
        self.process = process
        self.processes = processes
        self.inserted = 0
        # Inserts that ended: the first ``acknowledged`` of them, and those of ``_ended``
        # (numbers in generation order) beyond a gap left by one still on its way.
        self.acknowledged = 0
        self._ended: set[int] = set()
        self.chooser = make_chooser(self.distribution, records, theta,
                                    nth_newest=self._nth_newest)
        self.max_scan = max(1, max_scan)
        # A small pool of random values: generating bytes per operation would cost more than
        # some operations do.
        pool_rng = random.Random(seed * 7919 + process)
        self._values = [pool_rng.randbytes(value_size) for _ in range(16)]

    def _nth_newest(self, age: int) -> int:
        """The record of age ``age`` among those this generator knows to exist: its own
        acknowledged inserts, newest first, then the records below ``first_insert`` (see the
        module docstring)."""
        if age < self.acknowledged:
            return (self.first_insert + self.process
                    + (self.acknowledged - 1 - age) * self.processes)
        return max(0, self.first_insert - 1 - (age - self.acknowledged))

    def finished(self, op: Op) -> None:
        """``op``, one of this generator's, ended (done or failed): an insert's record may
        be read (``latest``) once it and every insert before it have ended."""
        if op.kind != "insert":
            return
        record = int(op.key[len(KEY_PREFIX):])
        self._ended.add((record - self.first_insert - self.process) // self.processes)
        while self.acknowledged in self._ended:
            self._ended.remove(self.acknowledged)
            self.acknowledged += 1

    @property
    def next_free_record(self) -> int:
        """The record after the last one this generator inserted (``first_insert`` if none):
        where the inserts of a later run on the same store start."""
        if not self.inserted:
            return self.first_insert
        return self.first_insert + self.process + (self.inserted - 1) * self.processes + 1

    def _value(self) -> bytes:
        return self._values[self.rng.randrange(len(self._values))]

    def next_kind(self) -> str:
        u = self.rng.random() * self._cum[-1]
        return self._kinds[min(len(self._kinds) - 1, bisect.bisect_right(self._cum, u))]

    def next(self) -> Op:
        kind = self.next_kind()
        if kind == "insert":
            record = self.first_insert + self.process + self.inserted * self.processes
            self.inserted += 1
            return Op("insert", key_name(record), value=self._value())
        if kind == "transfer":
            a = self.chooser.next(self.rng)
            b = self.chooser.next(self.rng)
            for _ in range(64):  # bounded: two records at least, so a distinct one turns up
                if b != a:
                    break
                b = self.chooser.next(self.rng)
            else:
                b = (a + 1) % self.records
            return Op("transfer", key_name(a), key_name(b))
        key = key_name(self.chooser.next(self.rng))
        if kind == "read":
            return Op("read", key)
        if kind == "scan":
            return Op("scan", key, scan_length=self.rng.randint(1, self.max_scan))
        return Op(kind, key, value=self._value())  # update, rmw, home, cross, regional
