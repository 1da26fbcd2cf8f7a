"""Edge inputs of the history checkers (bench/elle.py, bench/bank.py, bench/convergence.py,
bench/wgl.py): malformed or extreme histories and arguments must give a clear error (a
ValueError, which the command lines turn into exit status 2) or a verdict, never a traceback."""

from __future__ import annotations

import json

import pytest

from bench import bank, convergence, elle, wgl
from bench.wgl import HistoryError

# ------------------------------------------------------------------------------------ helpers


def bank_read(process, balances, call=0, ret=1):
    return [{"process": process, "type": "invoke", "f": "read", "value": None, "time_ns": call},
            {"process": process, "type": "ok", "f": "read", "value": balances, "time_ns": ret}]


def final_read(process, key, value, region, call=0, ret=1):
    return [{"process": process, "type": "invoke", "f": "final-read", "key": key,
             "value": None, "region": region, "time_ns": call},
            {"process": process, "type": "ok", "f": "final-read", "key": key, "value": value,
             "region": region, "time_ns": ret}]


def write_lines(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------- events of any shape


@pytest.mark.parametrize("run", [
    lambda h: elle.check(h),
    lambda h: bank.check(h, accounts=[0, 1], total=10),
    lambda h: wgl.check(h),
    lambda h: convergence.check(h, "lww"),
], ids=["elle", "bank", "wgl", "convergence"])
def test_an_event_that_is_not_an_object_is_a_history_error(run):
    # Before: AttributeError ('int' object has no attribute 'get') from pairing the events,
    # for every checker called from Python with such a history.
    with pytest.raises(HistoryError, match="event 0: an event must be an object"):
        run([5])


# --------------------------------------------------------------------------------------- bank


@pytest.mark.parametrize("total", [None, "10", True, float("nan"), float("inf")])
def test_bank_total_that_is_not_a_finite_number_is_rejected(total):
    # Before: None and "10" raised TypeError from math.isclose at the first read; True was
    # taken as 1, and NaN or infinity made every read a wrong total.
    with pytest.raises(ValueError, match="total must be a finite number"):
        bank.check(bank_read(0, {"0": 5, "1": 5}), accounts=[0, 1], total=total)


def test_bank_cli_total_that_is_not_a_number_exits_2(tmp_path, capsys):
    # Before: a TypeError traceback and exit status 1, as if the history were invalid.
    path = write_lines(tmp_path / "bank.jsonl", bank_read(0, {"0": 5, "1": 5}))
    assert bank.main([path, "--accounts", "0,1", "--total", "null"]) == 2
    assert "total must be a finite number" in capsys.readouterr().err


def test_bank_integer_balance_beyond_float_range_with_a_float_balance():
    # Before: OverflowError (int too large to convert to float) while summing the balances.
    result = bank.check(bank_read(0, {"0": 10 ** 400, "1": 0.5}), accounts=[0, 1], total=10)
    assert result["anomaly_types"] == ["wrong-total"]
    # The same balances compared exactly: these do sum to the total.
    balances = {"0": 10 ** 400, "1": 5.0, "2": 5 - 10 ** 400}
    result = bank.check(bank_read(0, balances), accounts=[0, 1, 2], total=10)
    assert result["anomaly_types"] == ["negative-balance"]


# -------------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("region", [["us-east"], {"name": "us-east"}])
def test_convergence_region_that_is_a_list_or_object_is_a_history_error(region):
    # Before: TypeError (unhashable type) when the regions that read the key were collected.
    with pytest.raises(HistoryError, match="a region must be a string"):
        convergence.check(final_read(0, "k", None, region), "lww", regions=["us-east"])


def test_convergence_cli_region_that_is_a_list_exits_2(tmp_path, capsys):
    # Before: a TypeError traceback and exit status 1, as if the history were invalid.
    path = write_lines(tmp_path / "convergence.jsonl", final_read(0, "k", None, ["us-east"]))
    assert convergence.main([path, "--resolver", "lww", "--regions", "us-east"]) == 2
    assert "a region must be a string" in capsys.readouterr().err
