"""Latency histograms for the load generator: HdrHistogram, in microseconds.

Every latency the harness reports comes from an HdrHistogram (the ``hdrhistogram`` package,
module ``hdrh``): values from 1 µs to one hour at three significant digits, so a percentile is
exact to 0.1 % whatever the number of samples, and histograms of several load processes or
time intervals merge by adding counts (no sample is kept). Percentiles are nearest-rank: the
smallest recorded value (to the histogram's precision) such that at least ``q`` % of the
samples are at or below it. (The rank is computed here: HdrHistogram's own lookup rounds it.)

A latency beyond the hour is counted at the top of the range, and counted as clamped
(``clamped`` in the summary): a percentile that falls among those samples reads as the top of
the range, a lower bound; the maximum and the mean are kept true. A value that is not a duration
(negative, NaN, infinite) is refused with ValueError.

The package is an optional dependency (``pip install 'meridian-db[bench]'``);
:func:`require` raises :class:`MissingDependency` with the command to install it.
"""

from __future__ import annotations

import importlib.util
import math

__all__ = ["CoarseHistogram", "Histogram", "MissingDependency", "require", "LOWEST_US",
           "HIGHEST_US", "SIG_FIGS"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIG_FIGS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# At SIG_FIGS = 3 a bucket of HdrHistogram holds 2,048 sub-buckets: values below that are kept
# exactly, larger ones to 11 significant bits.
_SUB_BUCKET_BITS = 11
_EXACT_BELOW = 1 << _SUB_BUCKET_BITS
_INF = math.inf


def _not_a_duration(us: object) -> ValueError:
    return ValueError(f"a latency of {us!r} µs is not a duration (a finite number >= 0)")


def _percentile_rank(q: float, n: int) -> int | None:
    """The nearest rank of the ``q``-th percentile (0 < q <= 100) among ``n`` values; None when
    there are none."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    return _rank(q, n) if n else None


def _rank(q: float, n: int) -> int:
    """The nearest rank of the ``q``-th percentile of ``n`` samples: the smallest ``k`` with
    ``k >= q·n/100``. (HdrHistogram's own lookup rounds ``q·n/100`` to the nearest integer,
    which can land one sample short of ``q`` %: the p99 of 199 samples would be the 197th.)
    The epsilon keeps a product that floating point rounds just above an integer (99.9 % of
    20,000) on that integer."""
    return max(1, math.ceil(q * n / 100.0 - 1e-9))


class MissingDependency(RuntimeError):
    """An optional package the benchmark harness needs is not installed."""


def require(module: str, package: str | None = None) -> None:
    """Raises :class:`MissingDependency` (with the pip command) if ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        pkg = package or module
        raise MissingDependency(
            f"the benchmark harness needs the {pkg!r} package (module {module!r}): "
            f"pip install {pkg!r}, or pip install '.[bench]' from a source checkout")


class Histogram:
    """An HdrHistogram of latencies; record nanoseconds or microseconds, read milliseconds.

    Recording is the load generator's hot path, and the package's ``record_value`` is pure
    Python (a few microseconds): a record only counts the value, rounded down to the lowest
    value HdrHistogram's bucket for it holds (which is all the histogram keeps of it), in a
    dictionary; the counts go into the HdrHistogram before anything reads it. The rounding
    bounds the dictionary: at most 2,048 values below 2,048 µs and 1,024 per doubling above,
    about 24,000 up to the hour.

    Latencies beyond the hour are counted at the hour; besides, the histogram keeps how many
    they are (:attr:`clamped`), the largest of them and by how much they exceed the hour in
    all, so that the maximum and the mean stay true (see the module doc)."""

    __slots__ = ("_h", "_pending", "clamped", "_above_max", "_above_sum")

    def __init__(self, _h=None) -> None:
        if _h is None:
            require("hdrh", "hdrhistogram")
            from hdrh.histogram import HdrHistogram

            _h = HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)
        self._h = _h
        self._pending: dict[int, int] = {}
        self.clamped = 0  # samples above HIGHEST_US, counted at HIGHEST_US
        self._above_max = 0.0  # the largest of them (µs)
        self._above_sum = 0.0  # how far above HIGHEST_US they are, in all (µs)

    def record_us(self, us: float) -> None:
        """Records one latency in microseconds: below 1 µs as 1 µs, above the hour at the hour
        and counted as clamped (see :attr:`clamped`). ValueError if ``us`` is negative, NaN or
        infinite."""
        if not 0 <= us < _INF:
            raise _not_a_duration(us)
        if us > HIGHEST_US:
            self._clamp(us, 1)
            v = HIGHEST_US
        else:
            v = int(us)
        if v < LOWEST_US:
            v = LOWEST_US
        elif v >= _EXACT_BELOW:
            shift = v.bit_length() - _SUB_BUCKET_BITS
            v = v >> shift << shift
        pending = self._pending
        pending[v] = pending.get(v, 0) + 1

    def _clamp(self, us: float, n: int) -> None:
        """Counts ``n`` samples of ``us`` (above the range) as clamped."""
        self.clamped += n
        self._above_sum += (us - HIGHEST_US) * n
        if us > self._above_max:
            self._above_max = us

    def _flush(self):
        """The HdrHistogram, with every pending count added."""
        if self._pending:
            record = self._h.record_value
            for v, n in self._pending.items():
                record(v, n)
            self._pending = {}
        return self._h

    def record_s(self, seconds: float) -> None:
        self.record_us(seconds * 1e6)

    @property
    def count(self) -> int:
        return self._flush().get_total_count()

    def add(self, other: Histogram) -> None:
        """Adds ``other``'s counts to this histogram."""
        mine, theirs = self._flush(), other._flush()
        if other.clamped:
            self.clamped += other.clamped
            self._above_sum += other._above_sum
            self._above_max = max(self._above_max, other._above_max)
        if self._layout(mine) == self._layout(theirs):
            mine.add(theirs)
            return
        # A histogram of another layout (one decoded from another precision or range):
        # HdrHistogram's own add would record each of its buckets at the bucket's lowest
        # value, so a merged percentile could come out below the samples it stands for, and
        # it raises IndexError on a value beyond this histogram's range. Each bucket is
        # counted at its highest value instead (what a percentile of ``other`` reports),
        # clamped to the range as :meth:`record_us` clamps (and counted so).
        pending = self._pending
        for index in range(theirs.counts_len):
            n = theirs.get_count_at_index(index)
            if n:
                top = theirs.get_highest_equivalent_value(theirs.get_value_from_index(index))
                if top > HIGHEST_US:
                    self._clamp(min(top, theirs.get_max_value()), n)
                v = min(max(top, LOWEST_US), HIGHEST_US)
                pending[v] = pending.get(v, 0) + n

    @staticmethod
    def _layout(h) -> tuple[int, int, int]:
        """What two HdrHistograms must share for their counts to add index by index."""
        return h.sub_bucket_count, h.unit_magnitude, h.bucket_count

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (0 < q <= 100) in milliseconds; None when empty."""
        rank = _percentile_rank(q, self.count)
        return None if rank is None else self._values_at_ranks([rank])[0] / 1000.0

    def _values_at_ranks(self, ranks: list[int]) -> list[int]:
        """The values (µs; the highest equivalent value of their bucket, as HdrHistogram
        reports them) of the samples at ``ranks`` (1-based, ascending), in one walk over the
        counts."""
        h = self._flush()
        out: list[int] = []
        seen = 0
        for index in range(h.counts_len):
            c = h.get_count_at_index(index)
            if not c:
                continue
            seen += c
            while len(out) < len(ranks) and seen >= ranks[len(out)]:
                out.append(h.get_highest_equivalent_value(h.get_value_from_index(index)))
            if len(out) == len(ranks):
                break
        return out

    def _max_us(self) -> float:
        """The largest sample (µs): the largest clamped one's true value, if any was."""
        return self._above_max if self.clamped else self._h.get_max_value()

    def max_ms(self) -> float | None:
        return None if self.count == 0 else self._max_us() / 1000.0

    def mean_ms(self) -> float | None:
        n = self.count
        if n == 0:
            return None
        return (self._h.get_mean_value() + self._above_sum / n) / 1000.0

    def summary(self) -> dict:
        """``{"count", "clamped", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
        "mean_ms"}``; ``clamped`` counts the samples beyond the range (see the module doc)."""
        out = {"count": self.count, "clamped": self.clamped}
        for q, name in zip(PERCENTILES, ("p50_ms", "p90_ms", "p99_ms", "p999_ms")):
            v = self.percentile_ms(q)
            out[name] = None if v is None else round(v, 3)
        mx, mean = self.max_ms(), self.mean_ms()
        out["max_ms"] = None if mx is None else round(mx, 3)
        out["mean_ms"] = None if mean is None else round(mean, 3)
        return out

    def cdf(self, points: int = 200) -> list[list[float]]:
        """``[[latency_ms, fraction at or below], ...]`` for a CDF plot (log-spaced tail);
        ``points`` + 2 points, ``points`` at least 1 (else ValueError)."""
        if type(points) is not int or points < 1:
            raise ValueError(f"a CDF needs at least 1 point, not {points!r}")
        n = self.count
        if n == 0:
            return []
        # Percentiles 0..99.999 spaced so that the tail gets as many points as the body.
        qs = [min(max(100.0 * (1.0 - 10.0 ** (-5.0 * i / points)), 0.001), 100.0)
              for i in range(points + 1)]
        values = self._values_at_ranks([_rank(q, n) for q in qs])
        out = [[round(v / 1000.0, 4), round(q / 100.0, 6)] for v, q in zip(values, qs)]
        out.append([round(self._max_us() / 1000.0, 4), 1.0])
        return out

    def encode(self) -> str:
        """A compact text form (HdrHistogram's compressed base64) for another process; with
        samples beyond the range, followed by ``;clamped=N;above_max=US;above_sum=US``."""
        if self.count == 0:
            return ""
        data = self._h.encode()
        text = data.decode("ascii") if isinstance(data, bytes) else data
        if self.clamped:
            text += (f";clamped={self.clamped};above_max={self._above_max!r}"
                     f";above_sum={self._above_sum!r}")
        return text

    @classmethod
    def decode(cls, text: str) -> Histogram:
        """The histogram :meth:`encode` gave ``text`` for; ValueError if it is not one."""
        if not isinstance(text, str):
            raise ValueError(f"a {type(text).__name__} is not an encoded latency histogram")
        if not text:
            return cls()
        require("hdrh", "hdrhistogram")
        from hdrh.histogram import HdrHistogram

        data, *extra = text.split(";")
        try:
            fields = dict(item.split("=", 1) for item in extra)
            clamped = int(fields.pop("clamped", 0))
            above_max = float(fields.pop("above_max", 0.0))
            above_sum = float(fields.pop("above_sum", 0.0))
            if fields or clamped < 0:
                raise ValueError(f"unknown fields {sorted(fields)}")
            h = cls(HdrHistogram.decode(data.encode("ascii")))
        except Exception as exc:  # binascii, zlib and struct errors from the package too
            raise ValueError(f"{text[:40]!r} is not an encoded latency histogram: "
                             f"{type(exc).__name__}: {exc}") from exc
        h.clamped, h._above_max, h._above_sum = clamped, above_max, above_sum
        return h


class CoarseHistogram:
    """A small histogram for figures that a few percent of precision serve, such as the p99
    of each interval of a run's time-line: an HdrHistogram's counts take 184 KiB, and a run
    of an hour at one-second intervals would keep thousands of them.

    Values are kept in microseconds to 6 significant bits (below 64 µs exactly, from 1 µs; none
    is clamped at the top), which puts a percentile within 1/32 (3.1 %) above the sample's
    value; at most 32 values per doubling are counted, a few hundred for any realistic spread of
    latencies, whatever the number of samples. A value that is not a duration (negative, NaN,
    infinite) is refused with ValueError. Percentiles are nearest-rank, reported as the highest
    value of the sample's bucket (as :class:`Histogram` reports them)."""

    BITS = 6
    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = counts if counts is not None else {}

    def record_us(self, us: float) -> None:
        if not 0 <= us < _INF:
            raise _not_a_duration(us)
        v = max(int(us), LOWEST_US)
        shift = v.bit_length() - self.BITS
        if shift > 0:
            v = v >> shift << shift  # the lowest value of its bucket
        self.counts[v] = self.counts.get(v, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, other: CoarseHistogram) -> None:
        for v, n in other.counts.items():
            self.counts[v] = self.counts.get(v, 0) + n

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (0 < q <= 100) in milliseconds; None when empty."""
        rank = _percentile_rank(q, self.count)
        if rank is None:
            return None
        seen = 0
        for v in sorted(self.counts):
            seen += self.counts[v]
            if seen >= rank:
                break
        shift = v.bit_length() - self.BITS
        return (v + (1 << shift) - 1 if shift > 0 else v) / 1000.0

    def encode(self) -> list[list[int]]:
        """``[[value_us, count], ...]``: a JSON-ready form for another process."""
        return [[v, n] for v, n in sorted(self.counts.items())]

    @classmethod
    def decode(cls, pairs: list[list[int]]) -> CoarseHistogram:
        """The histogram :meth:`encode` gave ``pairs`` for; ValueError if it is not one."""
        try:
            counts = {int(v): int(n) for v, n in pairs}
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{str(pairs)[:40]!r} is not an encoded coarse latency histogram: "
                             f"{type(exc).__name__}: {exc}") from exc
        if any(v < LOWEST_US or n < 0 for v, n in counts.items()):
            raise ValueError(f"{str(pairs)[:40]!r} is not an encoded coarse latency histogram: "
                             f"a value below {LOWEST_US} µs or a negative count")
        return cls(counts)
