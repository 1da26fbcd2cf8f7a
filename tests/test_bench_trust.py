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


def test_compare_flags_a_run_as_fast_that_fails_operations(tmp_path, capsys):
    # Same speed, but 5 % of the operations failed where none did: worse, and
    # --fail-on-regression says so; a rate that moved by less than the step is noise.
    import argparse

    from bench import _common, compare

    def doc(error_rate: float) -> dict:
        return {"schema": _common.SCHEMA, "benchmark": "ycsb",
                "results": [{"system": "meridian", "workload": "A", "mode": "closed",
                             "clients": 32, "ops_per_s": 1000.0, "p50_ms": 1.0,
                             "p99_ms": 5.0, "error_rate": error_rate}]}

    verdicts = {c["metric"]: c["verdict"] for c in compare.compare_docs(doc(0.0), doc(0.05))}
    assert verdicts == {"ops_per_s": "within noise", "p50_ms": "within noise",
                        "p99_ms": "within noise", "error_rate": "worse"}
    [errors] = [c for c in compare.compare_docs(doc(0.0), doc(0.0005))
                if c["metric"] == "error_rate"]
    assert errors["verdict"] == "within noise"
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _common.write_json(old, doc(0.0))
    _common.write_json(new, doc(0.05))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", str(old), str(new), "--fail-on-regression"])
    assert args.func(args) == 1
    assert "+5.0% pt" in capsys.readouterr().out
