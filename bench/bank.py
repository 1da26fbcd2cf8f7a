"""Checker for bank histories: every read of the accounts sums to the constant total.

``python -m bench.bank HISTORY.jsonl --accounts 0,1,2,3 --total 100`` checks a history of the
bank workload (FAULTS.md §2) and exits 1 when some read is wrong.

The history
-----------
One event per line (or per dict when called from Python), in the shape of FAULTS.md §4::

    {"process": 0, "type": "invoke", "f": "transfer", "value": {"from": 1, "to": 2,
     "amount": 5}, "time_ns": 1200}
    {"process": 0, "type": "ok", "f": "transfer", "value": {"from": 1, "to": 2, "amount": 5},
     "time_ns": 1500}
    {"process": 1, "type": "invoke", "f": "read", "value": null, "time_ns": 1300}
    {"process": 1, "type": "ok", "f": "read", "value": {"0": 25, "1": 20, "2": 30, "3": 25},
     "time_ns": 1600}

A transfer moves ``amount`` from one account to another inside one transaction; a read reads
every account inside one transaction. Each process has at most one open operation, closed by
``ok``, ``fail`` (did not happen) or ``info`` (unknown); an invoke never closed counts as info.
Events whose ``f`` is neither ``transfer`` nor ``read`` are skipped.

Accounts are named by JSON values; since the keys of a JSON object are strings, an account
matches a key of a read when their ``str`` forms are equal (account 3 is the key ``"3"``).

The checks
----------
Transfers conserve money, so whatever order the transfers committed in, a snapshot of all the
accounts sums to the initial total: a read whose balances do not saw a transfer half applied,
or parts of two different states (read skew). No transfer is allowed to overdraw an account, so a
negative balance is a write that was applied against a stale balance (a lost update or a
write skew), unless the workload allows overdrafts (``allow_negative``). The check is per read
and needs no search, so it is linear in the history.

For every ``ok`` read:

* ``missing-account``: an account of ``accounts`` is absent from the read, or its balance is
  ``null``;
* ``unexpected-account``: the read has a key that is not one of ``accounts``;
* ``wrong-total``: the balances of ``accounts`` do not sum to ``total`` (checked only when
  none is missing; a float sum is compared with a relative tolerance of 1e-9);
* ``negative-balance``: a balance below zero, unless ``allow_negative``.

A transfer that names an account outside ``accounts`` is also reported as
``unexpected-account``. Reads that failed or whose outcome is unknown say nothing and are only
counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from bench._common import comma_list
from bench.wgl import HistoryError, load_history, pair_operations, run_checker

__all__ = [
    "ANOMALY_TYPES",
    "DEFAULT_MAX_REPORTED",
    "HistoryError",
    "add_parser",
    "check",
    "load_history",
    "main",
    "run",
]

DEFAULT_MAX_REPORTED = 10
ANOMALY_TYPES = ("missing-account", "unexpected-account", "wrong-total", "negative-balance")
BANK_FUNCTIONS = frozenset({"transfer", "read"})


def _operations(history: Iterable[Mapping[str, Any]]
                ) -> list[tuple[int, Mapping[str, Any], int | None, Mapping[str, Any] | None]]:
    """(invoke index, invoke, completion index, completion) of each transfer and read, in
    invoke order; the completion is None for an operation never closed. Raises HistoryError
    on a malformed history."""
    return pair_operations(history, BANK_FUNCTIONS, timed=False)


def _summary(start: int, invoke: Mapping[str, Any], end: int | None,
             completion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The offending operation, as reports show it."""
    return {
        "process": invoke.get("process"),
        "f": invoke.get("f"),
        "type": "info" if completion is None else completion.get("type"),
        "value": (completion or invoke).get("value"),
        "invoke_at": start,
        "complete_at": end,
        "invoke_ns": invoke.get("time_ns"),
        "complete_ns": None if completion is None else completion.get("time_ns"),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sum_matches(balances: list[int | float], total: int | float) -> tuple[int | float, bool]:
    """The sum of a read's balances and whether it is ``total``: exactly when every number is
    an integer, else within a relative tolerance of 1e-9 (float sums round)."""
    if isinstance(total, int) and all(isinstance(b, int) for b in balances):
        found = sum(balances)
        return found, found == total
    try:
        found = sum(balances)
        return found, math.isclose(found, total, rel_tol=1e-9, abs_tol=1e-9)
    except OverflowError:
        pass
    # An integer beyond the range of floats met a float: compare as exact fractions instead,
    # with the same tolerance. A balance that is infinite or NaN never sums to a finite total.
    if any(isinstance(b, float) and not math.isfinite(b) for b in balances):
        return sum(b for b in balances if isinstance(b, float)), False
    exact = sum(Fraction(b) for b in balances)
    expected = Fraction(total)
    tolerance = max(Fraction(1e-9) * max(abs(exact), abs(expected)), Fraction(1e-9))
    return round(exact), abs(exact - expected) <= tolerance


def check(
    history: Iterable[Mapping[str, Any]],
    *,
    accounts: Sequence[Any],
    total: int | float,
    allow_negative: bool = False,
    max_reported: int = DEFAULT_MAX_REPORTED,
) -> dict[str, Any]:
    """Checks a bank history.

    Args:
        history: the events (FAULTS.md §4).
        accounts: every account; a read must hold exactly these.
        total: what the balances of every read sum to.
        allow_negative: whether a balance may be below zero.
        max_reported: at most this many anomalies of each type are described.

    Returns:
        A JSON-ready dict: ``valid`` (no anomaly), ``anomaly_types`` (sorted),
        ``anomalies`` (type → list of ``{"op": {...}, "explanation": str, ...details}``, the
        op being the offending read or transfer) and ``stats`` (``reads`` checked,
        ``reads_fail``, ``reads_info``, ``transfers_ok``, ``transfers_fail``,
        ``transfers_info``, ``anomaly_counts``).

    Raises:
        HistoryError: the history is malformed (a read that returned no object, a balance
            that is not a number, a transfer without from or to).
        ValueError: accounts that are not distinct, or a total that is not a finite number.
    """
    # Checked here, not per read: a total that is not a number would make every comparison
    # fail with a TypeError (or, for NaN, every read a wrong total).
    if not _is_number(total) or isinstance(total, float) and not math.isfinite(total):
        raise ValueError(f"total must be a finite number, not {total!r:.80}")
    by_name = {str(a): a for a in accounts}
    if len(by_name) != len(accounts):
        raise ValueError(f"accounts must be distinct: {list(accounts)!r}")
    described: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    stats = dict.fromkeys(("reads", "reads_fail", "reads_info", "transfers_ok",
                           "transfers_fail", "transfers_info"), 0)

    def report(kind: str, op: dict[str, Any], explanation: str, **details: Any) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        entries = described.setdefault(kind, [])
        if len(entries) < max_reported:
            entries.append({"op": op, "explanation": explanation, **details})

    for start, invoke, end, completion in _operations(history):
        kind = "info" if completion is None else completion["type"]
        op = _summary(start, invoke, end, completion)
        if invoke["f"] == "transfer":
            stats[f"transfers_{kind}"] += 1
            value = invoke.get("value")
            if not (isinstance(value, Mapping) and "from" in value and "to" in value):
                raise HistoryError(f"event {start}: a transfer value must be an object with "
                                   f"from, to and amount, not {value!r}")
            strangers = [value[side] for side in ("from", "to") if str(value[side]) not in by_name]
            if strangers:
                report("unexpected-account", op,
                       f"process {op['process']!r} transferred between {value['from']!r} and "
                       f"{value['to']!r}, but {strangers!r} is not an account",
                       accounts=strangers)
            continue
        if kind != "ok":
            stats[f"reads_{kind}"] += 1
            continue
        stats["reads"] += 1
        balances = completion.get("value")
        if not isinstance(balances, Mapping):
            raise HistoryError(f"event {end}: a read must return an object of balances, not "
                               f"{balances!r}")
        for name, balance in balances.items():
            if balance is not None and not _is_number(balance):
                raise HistoryError(f"event {end}: the balance of {name!r} is not a number: "
                                   f"{balance!r}")
        read = {str(name): balance for name, balance in balances.items()}
        where = f"the read by process {op['process']!r} at event {end}"
        missing = [a for name, a in by_name.items() if read.get(name) is None]
        if missing:
            report("missing-account", op, f"{where} has no balance for {missing!r}",
                   accounts=missing)
        unexpected = [name for name in balances if str(name) not in by_name]
        if unexpected:
            report("unexpected-account", op,
                   f"{where} has balances for {unexpected!r}, which are not accounts",
                   accounts=unexpected)
        if not missing:
            found, matches = _sum_matches([read[name] for name in by_name], total)
            if not matches:
                report("wrong-total", op, f"{where} sums to {found!r}, not {total!r}",
                       total=found, expected=total)
        negative = {name: b for name, b in balances.items() if b is not None and b < 0}
        if negative and not allow_negative:
            report("negative-balance", op, f"{where} has negative balances {negative!r}",
                   balances=negative)

    types = sorted(described)
    return {
        "valid": not types,
        "anomaly_types": types,
        "anomalies": dict(sorted(described.items())),
        "stats": {**stats, "anomaly_counts": dict(sorted(counts.items()))},
    }


# ------------------------------------------------------------------------------------ the CLI


def _account(text: str) -> Any:
    """An account named on the command line: a JSON value if it parses as one (``3``), else
    the text itself (``alice``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("history", metavar="HISTORY.jsonl",
                        help="history in the JSON-lines shape of FAULTS.md §4")
    parser.add_argument("--accounts", required=True, metavar="A,B,...",
                        type=comma_list(_account),
                        help="every account, comma-separated")
    parser.add_argument("--total", required=True, type=json.loads, metavar="N",
                        help="the sum of all balances")
    parser.add_argument("--allow-negative", action="store_true",
                        help="balances may go below zero")
    parser.add_argument("--max-reported", type=int, default=DEFAULT_MAX_REPORTED, metavar="N",
                        help="describe at most N anomalies of each type (default: %(default)s)")
    parser.add_argument("--show", type=int, default=3, metavar="K",
                        help="print at most K anomalies of each type (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.set_defaults(func=run)
    return parser


_DESCRIPTION = ("Checks a JSON-lines bank history: every read holds every account and sums to "
                "the total, and no balance is negative. Exit status: 0 valid, 1 invalid, "
                "2 unreadable history.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``bank`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "bank", help="check a bank history", description=_DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Checks ``args.history``; returns 0 (valid), 1 (invalid) or 2 (bad input)."""
    return run_checker(
        args,
        lambda history: check(history, accounts=args.accounts, total=args.total,
                              allow_negative=args.allow_negative,
                              max_reported=args.max_reported),
        lambda s: (f"{s['reads']} reads checked ({s['reads_fail']} failed, {s['reads_info']} "
                   f"unknown); transfers: {s['transfers_ok']} ok, {s['transfers_fail']} "
                   f"failed, {s['transfers_info']} unknown"))


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m bench.bank",
                                                description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
