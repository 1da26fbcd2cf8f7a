"""The bank checker (bench/bank.py) against one hand-made bad history per anomaly, good
histories, and histories of a simulated bank with a planted non-atomic transfer (FAULTS.md §5:
a checker is trusted only after it has caught planted bugs)."""

from __future__ import annotations

import json
import random

import pytest

from bench import bank
from bench.bank import HistoryError, check

ACCOUNTS = [0, 1, 2]
TOTAL = 30

# ------------------------------------------------------------------------------------ helpers


def transfer(process, src, dst, amount, call, ret, kind="ok"):
    """The events of one transfer; ``ret=None`` leaves it without a completion."""
    value = {"from": src, "to": dst, "amount": amount}
    events = [{"process": process, "type": "invoke", "f": "transfer", "value": value,
               "time_ns": call}]
    if ret is not None:
        events.append({"process": process, "type": kind, "f": "transfer", "value": value,
                       "time_ns": ret})
    return events


def read(process, balances, call, ret, kind="ok"):
    """A read that returned ``balances`` (a dict, keys as a JSON decoder gives them)."""
    events = [{"process": process, "type": "invoke", "f": "read", "value": None,
               "time_ns": call}]
    if ret is not None:
        events.append({"process": process, "type": kind, "f": "read",
                       "value": balances if kind == "ok" else None, "time_ns": ret})
    return events


def history(*ops):
    return sorted((e for op in ops for e in op), key=lambda e: e["time_ns"])


def run(h, **kwargs):
    return check(h, accounts=ACCOUNTS, total=TOTAL, **kwargs)


def good_history():
    """Two transfers, one failed, one unknown, and reads that see consistent states."""
    return history(read(0, {"0": 10, "1": 10, "2": 10}, 0, 5),
                   transfer(1, 0, 1, 5, 10, 20),
                   read(0, {"0": 5, "1": 15, "2": 10}, 25, 30),
                   transfer(1, 1, 2, 15, 30, 40, kind="fail"),
                   transfer(2, 2, 0, 3, 30, None),
                   read(0, {"0": 8, "1": 15, "2": 7}, 50, 60),
                   read(3, None, 50, 55, kind="fail"),
                   read(4, None, 50, None))


# ------------------------------------------------------------------------------- good histories


def test_good_history_is_valid_and_counted():
    result = run(good_history())
    assert result["valid"] is True and result["anomaly_types"] == []
    assert result["stats"] == {"reads": 3, "reads_fail": 1, "reads_info": 1,
                               "transfers_ok": 1, "transfers_fail": 1, "transfers_info": 1,
                               "anomaly_counts": {}}


def test_empty_history_is_valid():
    assert run([])["valid"] is True


def test_accounts_match_json_object_keys_and_other_events_are_skipped():
    h = [{"process": "nemesis", "type": "info", "f": "kill", "value": None, "time_ns": 0}]
    h += read(0, {0: 10, "1": 10, 2: 10}, 1, 2)
    assert run(h)["valid"] is True
    named = check(read(0, {"alice": 3, "bob": 4}, 0, 1), accounts=["alice", "bob"], total=7)
    assert named["valid"] is True


# ----------------------------------------------------------------------- one per anomaly type


def test_wrong_total():
    h = good_history() + read(5, {"0": 5, "1": 10, "2": 10}, 100, 110)
    result = run(h)
    assert result["anomaly_types"] == ["wrong-total"]
    (entry,) = result["anomalies"]["wrong-total"]
    assert (entry["total"], entry["expected"]) == (25, 30)
    assert entry["op"]["process"] == 5 and entry["op"]["value"] == {"0": 5, "1": 10, "2": 10}
    assert entry["op"]["invoke_ns"] == 100 and entry["op"]["complete_ns"] == 110
    assert "sums to 25, not 30" in entry["explanation"]


def test_float_totals_are_compared_with_a_tolerance():
    h = read(0, {"0": 0.1, "1": 0.2, "2": 29.7}, 0, 1)
    assert run(h)["valid"] is True
    assert run(read(0, {"0": 0.1, "1": 0.2, "2": 29.8}, 0, 1))["anomaly_types"] == \
        ["wrong-total"]


def test_negative_balance():
    h = read(0, {"0": -5, "1": 20, "2": 15}, 0, 1)
    result = run(h)
    assert result["anomaly_types"] == ["negative-balance"]
    assert result["anomalies"]["negative-balance"][0]["balances"] == {"0": -5}
    assert run(h, allow_negative=True)["valid"] is True


def test_missing_account():
    result = run(read(0, {"0": 15, "1": 15}, 0, 1) + read(1, {"0": 15, "1": 15, "2": None},
                                                          0, 1))
    assert result["anomaly_types"] == ["missing-account"]  # and no wrong-total
    assert [e["accounts"] for e in result["anomalies"]["missing-account"]] == [[2], [2]]


def test_unexpected_account_in_a_read():
    result = run(read(0, {"0": 10, "1": 10, "2": 10, "3": 0}, 0, 1))
    assert result["anomaly_types"] == ["unexpected-account"]
    assert result["anomalies"]["unexpected-account"][0]["accounts"] == ["3"]


def test_unexpected_account_in_a_transfer():
    result = run(transfer(0, 0, 7, 5, 0, 1, kind="fail"))
    assert result["anomaly_types"] == ["unexpected-account"]
    (entry,) = result["anomalies"]["unexpected-account"]
    assert entry["accounts"] == [7] and entry["op"]["f"] == "transfer"


def test_money_moved_to_an_unexpected_account_shows_as_both():
    result = run(read(0, {"0": 5, "1": 10, "2": 10, "9": 5}, 0, 1))
    assert result["anomaly_types"] == ["unexpected-account", "wrong-total"]


def test_reports_are_capped_but_all_counted():
    h = history(*(read(p, {"0": 1, "1": 1, "2": 1}, p, p + 1) for p in range(15)))
    result = run(h, max_reported=4)
    assert len(result["anomalies"]["wrong-total"]) == 4
    assert result["stats"]["anomaly_counts"] == {"wrong-total": 15}


@pytest.mark.parametrize("events, message", [
    (read(0, [10, 10, 10], 0, 1), "object of balances"),
    (read(0, {"0": "ten", "1": 10, "2": 10}, 0, 1), "not a number"),
    (transfer(0, 0, 1, 5, 0, 1) + transfer(0, 0, 1, 5, 0, 1)[1:], "no open operation"),
    (transfer(0, 0, 1, 5, 0, None) + read(0, {}, 1, 2), "is open"),
    ([{"process": 0, "type": "invoke", "f": "transfer", "value": 5, "time_ns": 0}],
     "from, to and amount"),
])
def test_malformed_histories_are_rejected(events, message):
    with pytest.raises(HistoryError, match=message):
        run(events)


# ---------------------------------------------------------------------- a simulated bank


def simulated_bank(rng, n_ops, *, accounts=5, initial=20, processes=4, torn=False):
    """A history of a bank executed atomically at a point inside each operation's interval:
    transfers never overdraw, reads return the state at their point. With ``torn``, a read
    lands between the debit and the credit of one transfer (a non-atomic commit)."""
    balances = dict.fromkeys(range(accounts), initial)
    clock = [0] * processes
    specs = []
    for _ in range(n_ops):
        p = rng.randrange(processes)
        call = clock[p] + rng.randint(1, 20)
        point = call + rng.randint(0, 20)
        clock[p] = ret = point + rng.randint(0, 20)
        specs.append((point, p, call, ret, rng.random() < 0.6))
    events = []
    planted = False
    for point, p, call, ret, is_transfer in sorted(specs):
        if is_transfer:
            src, dst = rng.sample(range(accounts), 2)
            amount = rng.randint(1, 10)
            kind = "ok" if balances[src] >= amount else "fail"
            if kind == "ok":
                balances[src] -= amount
                if torn and not planted:
                    planted = True
                    events += read(f"torn-{p}", {str(a): b for a, b in balances.items()},
                                   point, point)
                balances[dst] += amount
            events += transfer(p, src, dst, amount, call, ret, kind)
        else:
            events += read(p, {str(a): b for a, b in balances.items()}, call, ret)
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events


@pytest.mark.parametrize("seed", range(5))
def test_simulated_bank_is_valid_and_a_torn_transfer_is_caught(seed):
    accounts, total = list(range(5)), 5 * 20
    h = simulated_bank(random.Random(seed), 1000)
    result = check(h, accounts=accounts, total=total)
    assert result["valid"] is True, result["anomalies"]
    assert result["stats"]["reads"] > 300 and result["stats"]["transfers_ok"] > 300
    h = simulated_bank(random.Random(seed), 1000, torn=True)
    result = check(h, accounts=accounts, total=total)
    assert result["anomaly_types"] == ["wrong-total"]
    (entry,) = result["anomalies"]["wrong-total"]
    assert str(entry["op"]["process"]).startswith("torn-") and entry["total"] < total


# ------------------------------------------------------------------------------------- the CLI


def test_cli_exit_status_and_summary(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(e) + "\n" for e in good_history()))
    bad.write_text("".join(json.dumps(e) + "\n"
                           for e in good_history() + read(5, {"0": -1, "1": 1, "2": 30}, 99,
                                                          100)))
    args = ["--accounts", "0,1,2", "--total", "30"]
    assert bank.main([str(good), *args]) == 0
    out = capsys.readouterr().out
    assert "3 reads checked" in out and "valid" in out
    assert bank.main([str(bad), *args]) == 1
    out = capsys.readouterr().out
    assert "NOT valid: negative-balance" in out and "{'0': -1}" in out
    assert bank.main([str(bad), *args, "--allow-negative"]) == 0
    capsys.readouterr()
    assert bank.main([str(bad), *args, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and doc["anomaly_types"] == ["negative-balance"]
    assert bank.main([str(good), "--accounts", "0,1", "--total", "30"]) == 1
    assert "missing-account" not in capsys.readouterr().out  # account 2 is unexpected
    assert bank.main([str(tmp_path / "missing.jsonl"), *args]) == 2
