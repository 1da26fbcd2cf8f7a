"""What the benchmark harness reports must not hide what went wrong: the errors and late
operations of a run measured with repetitions."""

from __future__ import annotations

from bench.ycsb import _median_row


def _rep(ops_per_s: float, errors: int, late: int = 0, last_error: str | None = None) -> dict:
    return {"ops_per_s": ops_per_s, "p50_ms": 1.0, "p99_ms": 5.0, "ops": 1000,
            "errors": errors, "error_rate": round(errors / (1000 + errors), 5), "late": late,
            "last_error": last_error, "timeline": []}


def test_errors_of_one_repetition_are_not_outvoted_by_the_others():
    # Three repetitions; the fastest failed 500 operations and cut 7 off as late. A median
    # would report none of it.
    rows = [_rep(900.0, 0), _rep(1000.0, 0), _rep(1100.0, 500, late=7, last_error="Timeout")]
    m = _median_row(rows)
    assert m["ops_per_s"] == 1000.0 and m["repetitions"] == 3
    assert m["errors"] == 500 and m["late"] == 7
    assert m["error_rate"] == round(500 / 3500, 5)
    assert m["last_error"] == "Timeout"


def test_a_clean_run_with_repetitions_reports_no_errors():
    m = _median_row([_rep(900.0, 0), _rep(1000.0, 0)])
    assert (m["errors"], m["late"], m["error_rate"], m["last_error"]) == (0, 0, 0.0, None)
