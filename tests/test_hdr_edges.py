"""Edge cases of the latency histograms (bench/hdr.py): latencies beyond the histogram's range,
values that are not durations, and histograms that travel between processes or merge."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("hdrh")

from bench import hdr  # noqa: E402

HOUR_US = hdr.HIGHEST_US


def _histogram(*values_us: float) -> hdr.Histogram:
    h = hdr.Histogram()
    for v in values_us:
        h.record_us(v)
    return h


# ------------------------------------------------------- beyond the range: counted, not hidden


def test_a_latency_beyond_the_range_is_counted_and_keeps_its_true_maximum():
    # Before: 5 hours was recorded as the one-hour clamp: the max read 3,600,810 ms, the mean
    # half of what it was, and nothing said that any value had been clamped.
    h = _histogram(100, 5 * HOUR_US)
    s = h.summary()
    assert s["count"] == 2 and h.clamped == 1 and s["clamped"] == 1
    assert s["max_ms"] == 5 * HOUR_US / 1000
    assert s["mean_ms"] == pytest.approx((100 + 5 * HOUR_US) / 2 / 1000, rel=1e-3)
    # A percentile among the clamped samples is the range's top: at least that, and never above
    # the maximum.
    assert HOUR_US / 1000 <= s["p99_ms"] <= s["max_ms"]
    assert s["p50_ms"] == pytest.approx(0.1)
    # The CDF ends at the true maximum.
    assert h.cdf(10)[-1] == [5 * HOUR_US / 1000, 1.0]


def test_a_histogram_without_clamped_values_says_none_were():
    h = _histogram(100, HOUR_US)  # the top of the range is in it
    assert h.clamped == 0 and h.summary()["clamped"] == 0
    assert h.max_ms() == pytest.approx(HOUR_US / 1000, rel=1e-3)


def test_clamped_values_survive_encoding_and_merging():
    # Before: the count of clamped values (had there been one) would have been lost on the way
    # from a load process to the parent: the encoded form carries only the HdrHistogram.
    a = _histogram(100, 2 * HOUR_US)
    b = _histogram(200, 3 * HOUR_US, 1.5 * HOUR_US)
    a2 = hdr.Histogram.decode(json.loads(json.dumps(a.encode())))
    b2 = hdr.Histogram.decode(json.loads(json.dumps(b.encode())))
    assert (a2.clamped, a2.max_ms()) == (1, 2 * HOUR_US / 1000)
    merged = hdr.Histogram()
    merged.add(a2)
    merged.add(b2)
    assert merged.count == 5 and merged.clamped == 3
    assert merged.max_ms() == 3 * HOUR_US / 1000
    assert merged.mean_ms() == pytest.approx((300 + 6.5 * HOUR_US) / 5 / 1000, rel=1e-3)
    # A histogram with nothing clamped encodes as HdrHistogram does: any reader of it reads it.
    plain = _histogram(100, 200).encode()
    assert ";" not in plain
    assert hdr.Histogram.decode(plain).count == 2


def test_merging_a_histogram_of_a_wider_range_counts_what_it_clamps():
    from hdrh.histogram import HdrHistogram

    wide = HdrHistogram(hdr.LOWEST_US, 24 * HOUR_US, hdr.SIG_FIGS)
    wide.record_value(2 * HOUR_US)
    merged = _histogram(5)
    merged.add(hdr.Histogram(wide))
    assert merged.count == 2 and merged.clamped == 1
    assert merged.max_ms() == pytest.approx(2 * HOUR_US / 1000, rel=1e-3)


# ------------------------------------------------------------ values that are not durations


@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf"), float("-inf")],
                         ids=["minus-one", "minus-half", "nan", "inf", "minus-inf"])
def test_a_value_that_is_not_a_duration_is_refused(value):
    # Before: a negative latency was recorded as 1 µs without a word, NaN raised "cannot
    # convert float NaN to integer" and infinity OverflowError.
    for h in (hdr.Histogram(), hdr.CoarseHistogram()):
        with pytest.raises(ValueError, match="not a duration"):
            h.record_us(value)
        assert h.count == 0
    with pytest.raises(ValueError, match="not a duration"):
        hdr.Histogram().record_s(value)


def test_durations_below_a_microsecond_are_still_recorded():
    h = _histogram(0, 0.4)
    assert h.count == 2 and h.clamped == 0 and h.max_ms() == pytest.approx(0.001)
    c = hdr.CoarseHistogram()
    c.record_us(0)
    assert c.count == 1 and c.percentile_ms(50) == pytest.approx(0.001)


@pytest.mark.parametrize("text", ["garbage!!", "SElTQ", "SElTQ;clamped=x", 7],
                         ids=["not-base64", "cut", "bad-suffix", "not-text"])
def test_decoding_what_is_not_an_encoded_histogram_says_so(text):
    # Before: the HdrHistogram package's own error ("Incorrect padding") from deep inside it.
    with pytest.raises(ValueError, match="not an encoded latency histogram"):
        hdr.Histogram.decode(text)


# ---------------------------------------------------------------- the coarse histogram


def test_coarse_histogram_keeps_values_beyond_an_hour():
    # Before: every value above an hour was counted as one hour: an interval whose operations
    # all took five hours had a p99 of 3,600 s.
    c = hdr.CoarseHistogram()
    for _ in range(10):
        c.record_us(5 * HOUR_US)
    p99 = c.percentile_ms(99)
    assert 5 * HOUR_US / 1000 <= p99 <= 5 * HOUR_US / 1000 * (1 + 1 / 32)
    assert not math.isinf(p99)
    back = hdr.CoarseHistogram.decode(json.loads(json.dumps(c.encode())))
    assert back.percentile_ms(99) == p99


@pytest.mark.parametrize("pairs", [None, [[1]], [["x", 1]], [[0, 1]], [[-5, 1]], [[5, -1]]],
                         ids=["none", "short-pair", "not-a-number", "zero", "negative-value",
                              "negative-count"])
def test_decoding_what_is_not_an_encoded_coarse_histogram_says_so(pairs):
    # Before: TypeError or ValueError from int() or unpacking, or (for a value of 0 or below,
    # or a negative count) a histogram whose percentiles were wrong or raised later.
    with pytest.raises(ValueError, match="not an encoded coarse latency histogram"):
        hdr.CoarseHistogram.decode(pairs)
    assert hdr.CoarseHistogram.decode([[5, 2], [100, 1]]).count == 3


@pytest.mark.parametrize("points", [0, -3, 2.5])
def test_a_cdf_of_no_points_is_refused_in_words(points):
    h = hdr.Histogram()
    h.record_us(100.0)
    with pytest.raises(ValueError, match="at least 1 point"):
        h.cdf(points)
    assert len(h.cdf(1)) == 3  # the percentiles asked for, and the maximum
