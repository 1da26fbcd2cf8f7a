"""The list-append checker (bench/elle.py) on reads that contain a transaction's later append
to a key without its earlier one: no execution produces them, since a transaction's appends to
one key enter the list in the order it made them."""

from __future__ import annotations

import pytest

from bench import elle
from bench.elle import check


def _txn(process, ops, call, ret):
    invoke = [[f, k, None if f == "r" else v] for f, k, v in ops]
    return [{"process": process, "type": "invoke", "f": "txn", "value": invoke, "time_ns": call},
            {"process": process, "type": "ok", "f": "txn", "value": [list(o) for o in ops],
             "time_ns": ret}]


def _history(*txns):
    return sorted((e for t in txns for e in t), key=lambda e: e["time_ns"])


# T0 appends 1 then 2 to x; T2 appends 3 after both.
_WRITES = (_txn(0, [("append", "x", 1), ("append", "x", 2)], 0, 10),
           _txn(2, [("append", "x", 3)], 20, 30))


@pytest.mark.parametrize("read", [[2], [2, 3], [2, 1, 3]],
                         ids=["later-only", "later-then-another", "reversed-then-another"])
def test_a_read_with_a_later_append_and_not_the_earlier_one_is_reported(read):
    h = _history(*_WRITES, _txn(1, [("r", "x", read)], 40, 50))
    for model in elle.CONSISTENCY_MODELS:
        result = check(h, consistency=model)
        assert "incompatible-order" in result["forbidden"], (model, result["anomalies"])
        assert not result["valid"]
    (entry,) = check(h)["anomalies"]["incompatible-order"]
    assert sorted(t["id"] for t in entry["txns"]) == [0, 2]  # T0 (writer), T2 (the reader)
    assert "T0" in entry["explanation"] and "1" in entry["explanation"]


def test_reads_that_keep_each_transactions_append_order_are_valid():
    h = _history(*_WRITES, _txn(1, [("r", "x", [1])], 40, 50),
                 _txn(3, [("r", "x", [1, 2, 3])], 60, 70))
    assert check(h, consistency="strict-serializable")["anomaly_types"] == ["G1b"]
    h = _history(*_WRITES, _txn(3, [("r", "x", [1, 2, 3])], 60, 70),
                 _txn(4, [("r", "x", [1, 2])], 15, 25))
    assert check(h, consistency="strict-serializable")["anomaly_types"] == []
