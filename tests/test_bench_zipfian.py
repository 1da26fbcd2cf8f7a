"""The zipfian key chooser: constant memory at any record count, the exact distribution, the
same stream for the same seed."""

from __future__ import annotations

import collections
import random
import tracemalloc

import pytest

from bench.workloads import OpGenerator, Zipfian

# Upper 0.1 % point of the chi-square distribution with 99 degrees of freedom.
CHI2_999_DF99 = 148.2


def _chi_square(observed, expected):
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


def test_zipfian_memory_does_not_grow_with_the_record_count():
    # Every load process builds one chooser: one float (and, scrambled, one int) per record
    # was 780 MB per process at 10 million records.
    tracemalloc.start()
    try:
        z = Zipfian(1_000_000, 0.99)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
    rng = random.Random(1)
    assert all(0 <= z.next(rng) < 1_000_000 for _ in range(1000))


@pytest.mark.parametrize("theta", [0.0, 0.5, 0.99, 1.0, 1.5, 2.0])
def test_scrambled_record_frequencies_match_the_exact_pmf(theta):
    n, draws = 100, 100_000
    z = Zipfian(n, theta)
    rng = random.Random(1234)
    counts = collections.Counter(z.next(rng) for _ in range(draws))
    observed = [counts[z.record_of_rank(i)] for i in range(n)]
    total = sum(1.0 / (i + 1) ** theta for i in range(n))
    expected = [draws / (i + 1) ** theta / total for i in range(n)]
    assert _chi_square(observed, expected) < CHI2_999_DF99
    assert sorted(z.record_of_rank(i) for i in range(n)) == list(range(n))


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 10_000_000])
def test_every_rank_and_record_is_in_range(n):
    z = Zipfian(n, 0.99)
    rng = random.Random(n)
    for _ in range(2000):
        rank = z.next_rank(rng)
        assert 0 <= rank < n and 0 <= z.record_of_rank(rank) < n
    if n <= 1000:
        assert sorted(z.record_of_rank(i) for i in range(n)) == list(range(n))


def test_same_seed_same_keys_in_every_process():
    g1, g2 = OpGenerator("C", 5_000_000, seed=3), OpGenerator("C", 5_000_000, seed=3)
    a = [g1.next().key for _ in range(300)]
    b = [g2.next().key for _ in range(300)]
    assert a == b
    assert len(set(a)) > 50  # skewed, yet not one key
