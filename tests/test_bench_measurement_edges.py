"""Edge cases of the benchmark harness's figures: merging latency histograms of different
precision, and comparing result documents whose figures or identifying fields are not what the
harness writes (NaN, lists)."""

from __future__ import annotations

import argparse

import pytest


def _sample_histogram(sig_figs: int, value_us: int):
    pytest.importorskip("hdrh")
    from hdrh.histogram import HdrHistogram

    from bench import hdr

    h = hdr.Histogram(HdrHistogram(hdr.LOWEST_US, hdr.HIGHEST_US, sig_figs))
    h.record_us(value_us)
    return h


def test_merging_a_coarser_histogram_keeps_its_percentiles_at_or_above_its_samples():
    # Before: HdrHistogram's add counted each bucket of the coarser histogram at the bucket's
    # lowest value, so a sample of exactly 100 ms merged into a 3-digit histogram read as a
    # p50 and max of 99.903 ms, below the only sample recorded.
    from bench import hdr

    coarse = _sample_histogram(2, 100_000)
    merged = hdr.Histogram()
    merged.add(coarse)
    assert merged.count == 1
    assert merged.percentile_ms(50) >= 100.0
    assert merged.max_ms() >= 100.0
    # What the coarse histogram reports on its own is what the merge reports.
    assert merged.percentile_ms(50) == coarse.percentile_ms(50)
    assert merged.percentile_ms(99.9) == coarse.percentile_ms(99.9)


def test_merging_a_finer_histogram_keeps_its_percentiles_at_or_above_its_samples():
    # The other direction (a 3-digit histogram into a 2-digit one) was already right; kept so
    # that the merge stays conservative both ways.
    coarse = _sample_histogram(2, 5)  # values below 2^8 are exact at 2 digits
    coarse.add(_sample_histogram(3, 100_000))
    assert coarse.count == 2
    assert coarse.percentile_ms(50) == pytest.approx(0.005)
    assert coarse.percentile_ms(100) >= 100.0


def test_merging_a_histogram_of_a_wider_range_clamps_instead_of_raising():
    # Before: HdrHistogram's add raised IndexError ("The other histogram includes values that
    # do not fit") for a histogram holding a latency beyond the one-hour range.
    pytest.importorskip("hdrh")
    from hdrh.histogram import HdrHistogram

    from bench import hdr

    wide = HdrHistogram(hdr.LOWEST_US, 24 * hdr.HIGHEST_US, hdr.SIG_FIGS)
    wide.record_value(2 * hdr.HIGHEST_US)
    merged = hdr.Histogram()
    merged.record_us(5)
    merged.add(hdr.Histogram(wide))
    assert merged.count == 2
    assert merged.percentile_ms(50) == pytest.approx(0.005)
    assert merged.max_ms() >= hdr.HIGHEST_US / 1000.0  # clamped, as record_us clamps


def _doc(ops_per_s, p99_ms, **extra):
    from bench import _common

    row = {"system": "meridian", "workload": "a", "mode": "closed", "clients": 16,
           "ops_per_s": ops_per_s, "p99_ms": p99_ms, **extra}
    return {"schema": _common.SCHEMA, "benchmark": "ycsb", "results": [row]}


def test_compare_does_not_flag_a_figure_that_is_not_a_number():
    # Before: a NaN figure (Python's JSON reader accepts NaN) gave a NaN change, which is not
    # within any noise, so two identical documents compared as "worse" and
    # --fail-on-regression failed.
    from bench import compare

    doc = _doc(float("nan"), 10.0)
    verdicts = {c["metric"]: c["verdict"] for c in compare.compare_docs(doc, doc)}
    assert verdicts == {"p99_ms": "within noise"}
    # NaN or infinite repetitions are no measure of the spread either.
    assert compare.spread([10.0, float("nan"), 12.0, float("inf")]) == pytest.approx(2 / 11)


@pytest.mark.parametrize("extra, message", [
    # Before: TypeError: unhashable type: 'list' (a traceback) while matching rows.
    ({"clients": [16, 32]}, "row 1 has a list as its 'clients'"),
    ({"offered_ops_per_s": 1000.0, "offered_fraction": [0.5]},
     "row 1 has a list as its 'offered_fraction'"),
    # Before: ValueError: Unknown format code 'g' for object of type 'str' (a traceback)
    # while printing the row's label.
    ({"offered_ops_per_s": "1000", "offered_fraction": 0.5},
     "row 1 has '1000' as its 'offered_ops_per_s', not a number"),
])
def test_compare_command_rejects_rows_it_cannot_match(tmp_path, capsys, extra, message):
    from bench import _common, compare

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    _common.write_json(good, _doc(10_000.0, 10.0))
    _common.write_json(bad, _doc(10_000.0, 10.0, **extra))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    for paths in ([str(good), str(bad)], [str(bad), str(good)]):
        args = parser.parse_args(["compare", *paths])
        with pytest.raises(SystemExit) as exc:
            args.func(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{bad} is not a result document: {message}" in err, err
