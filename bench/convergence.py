"""Convergence checker for histories of regional (multi-active) keyspaces.

``python -m bench.convergence HISTORY.jsonl --resolver lww`` checks a history of the
convergence workload (FAULTS.md §2): clients in several regions write the same keys
concurrently; after every fault is healed and a quiet period has passed, each key is read in
every region. The checker exits 1 when the regions disagree or the agreed value is not one that
the keyspace's resolver (engine/merge.py, ARCH §6) can produce from the acknowledged writes.

The history
-----------
One event per line (or per dict when called from Python), in the shape of FAULTS.md §4, with
two fields added for regional keyspaces:

* ``region`` on every operation's events: the region of the node the client talked to, which
  is the origin of the writes it commits;
* ``ts`` on the ``ok`` completion of a write: the commit timestamp the database reported. Only
  ``lww`` histories need it (the order of their writes is ``(ts, region)``).

::

    {"process": 0, "type": "invoke", "f": "write", "key": "k1", "value": 7,
     "region": "us-east", "time_ns": 1200}
    {"process": 0, "type": "ok", "f": "write", "key": "k1", "value": 7,
     "region": "us-east", "ts": 1699999999000001200, "time_ns": 1500}
    {"process": 9, "type": "invoke", "f": "final-read", "key": "k1", "value": null,
     "region": "eu-west", "time_ns": 90000}
    {"process": 9, "type": "ok", "f": "final-read", "key": "k1", "value": 7,
     "region": "eu-west", "time_ns": 90100}

Operations by resolver (other functions, such as reads during the main phase, and nemesis
events are skipped):

``lww``
    ``write`` of ``value`` (``null`` deletes the key), ``delete``. Written values should be
    unique per key (the workload's job), so that a final value names its write.
``counter``
    ``incr`` by ``value``, a signed integer.
``max``
    ``write`` of ``value``, an integer.
``add_wins_set``
    ``add`` and ``remove`` of the element ``value``.
all
    ``final-read`` of ``key`` in ``region``; the ``ok`` completion's ``value`` is what the read
    returned: the value (``null`` if absent), the counter or maximum (``null`` if the key has
    none), the set's elements as a list (``null`` for none). Final reads are made after the
    final heal and quiet period; a region may read a key more than once.

Each process has at most one open operation, closed by ``ok``, ``fail`` (it certainly did not
happen) or ``info`` (unknown: it may have happened, at any later time); an invoke never closed
counts as ``info``. Values are compared as JSON values.

The checks
----------
For each key with at least one ``ok`` final read:

* ``divergence``: two final reads of the key returned different values (in different regions,
  or in one region twice) — the regions did not converge. Every distinct value read is then
  checked on its own as below.
* ``lost-write`` (``lww``, ``max``): the value read is not the one the resolver must keep. For
  ``lww``: the greatest acknowledged write by ``(ts, region)`` must be in the final state, so
  the value must come from an ``ok`` write at least as great, or from an ``info`` write (whose
  timestamp is unknown: it may be the winner). Reading nothing is fine only if there is no
  ``ok`` write, or a delete could be the winner. For ``max``: the value must be at least the
  greatest acknowledged value.
* ``garbage`` (``lww``, ``max``): a value that no ``ok`` or ``info`` write wrote (the
  explanation says when a failed write did).
* ``counter-mismatch``: the value must equal the sum of the ``ok`` increments plus the sum of
  some subset of the ``info`` increments (each of which may or may not have been applied; a
  ``null`` read means none was, so it is wrong if any ``ok`` increment exists). With ``d`` the
  value minus the ``ok`` sum: ``d`` must lie between the sum of the negative and the sum of the
  positive ``info`` increments, and be a multiple of their greatest common divisor. Then exact
  subset-sum feasibility is decided by dynamic programming over the reachable sums, kept as
  the bits of one Python integer (one shift-or per increment), when that range spans at most
  ``MAX_SUBSET_SUM_BITS`` sums; beyond that only the range and divisibility are checked, and
  ``stats["counter_checks_inexact"]`` counts such keys.
* ``set-lost-add`` (``add_wins_set``): an element is missing although an ``ok`` add of it is
  not followed by any remove of it — no ``ok`` or ``info`` remove that completed (or may
  complete) after the add was invoked, or at the same ``time_ns`` (a tie counts as concurrent);
  only such a remove can have observed the add.
* ``set-garbage`` (``add_wins_set``): an element that no ``ok`` or ``info`` add added.
* ``set-lost-remove`` (``add_wins_set``): an element is present although an ``ok`` remove of
  it surely observed every add of it: each add that may have happened is ``ok``, was made in
  the remove's region and completed before the remove was invoked. A region's own
  acknowledged writes are visible to its later transactions, so the remove's tags cover
  every add, and no add is left to win. (Adds from other regions may not have arrived when
  the remove ran, so they are concurrent with it and win: such elements are not judged.)

A key written but never read by an ``ok`` final read is counted in
``stats["keys_without_final_read"]`` and not judged. The work is linear in the history, but
for the counter's subset sums.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench._common import comma_list
from bench.wgl import (HistoryError, _freeze, _thaw, _time, load_history, pair_operations,
                       run_checker)

__all__ = [
    "ANOMALY_TYPES",
    "DEFAULT_MAX_REPORTED",
    "HistoryError",
    "MAX_SUBSET_SUM_BITS",
    "RESOLVERS",
    "add_parser",
    "check",
    "load_history",
    "main",
    "run",
]

DEFAULT_MAX_REPORTED = 10
MAX_SUBSET_SUM_BITS = 1 << 22
RESOLVERS = ("lww", "counter", "max", "add_wins_set")  # engine.merge.RESOLVER_NAMES
ANOMALY_TYPES = ("divergence", "lost-write", "garbage", "counter-mismatch", "set-lost-add",
                 "set-garbage", "set-lost-remove", "missing-final-read")
FINAL_READ = "final-read"
WRITE_FUNCTIONS = {
    "lww": frozenset({"write", "delete"}),
    "counter": frozenset({"incr"}),
    "max": frozenset({"write"}),
    "add_wins_set": frozenset({"add", "remove"}),
}


@dataclass(frozen=True, slots=True)
class _Write:
    """One write operation that may have happened (``ok`` or ``info``; ``fail`` ones are kept
    apart). ``value`` is frozen (``_freeze``); ``ts`` is None when unknown."""

    f: str
    value: Any
    kind: str
    ts: int | None
    region: Any
    invoke_ns: Any
    complete_ns: Any
    summary: dict[str, Any]

    @property
    def version(self) -> tuple[int, str]:
        return (self.ts, self.region)


def _summary(start: int, invoke: Mapping[str, Any], end: int | None,
             completion: Mapping[str, Any] | None) -> dict[str, Any]:
    """An operation, as reports show it."""
    return {
        "process": invoke.get("process"),
        "f": invoke.get("f"),
        "type": "info" if completion is None else completion.get("type"),
        "key": invoke.get("key"),
        "value": (completion if completion is not None and invoke.get("f") == FINAL_READ
                  else invoke).get("value"),
        "region": invoke.get("region"),
        "ts": None if completion is None else completion.get("ts"),
        "invoke_at": start,
        "complete_at": end,
        "invoke_ns": invoke.get("time_ns"),
        "complete_ns": None if completion is None else completion.get("time_ns"),
    }


def _describe(op: Mapping[str, Any]) -> str:
    """One line such as ``p3 write 7 in us-east (ok, ts 1200)``."""
    ts = "" if op["ts"] is None else f", ts {op['ts']}"
    return (f"p{op['process']} {op['f']} {json.dumps(op['value'], default=repr)} in "
            f"{op['region']} ({op['type']}{ts})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Findings:
    def __init__(self, max_reported: int) -> None:
        self.max_reported = max_reported
        self.described: dict[str, list[dict[str, Any]]] = {}
        self.counts: dict[str, int] = {}

    def report(self, kind: str, key: Any, explanation: str, **details: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        entries = self.described.setdefault(kind, [])
        if len(entries) < self.max_reported:
            entries.append({"key": _thaw(key), "explanation": explanation, **details})


def check(
    history: Iterable[Mapping[str, Any]],
    resolver: str = "lww",
    *,
    max_reported: int = DEFAULT_MAX_REPORTED,
    regions: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Checks the final reads of a regional keyspace's history.

    Args:
        history: the events (module docstring).
        resolver: the keyspace's resolver, one of ``RESOLVERS``.
        max_reported: at most this many anomalies of each type are described.

    Returns:
        A JSON-ready dict: ``valid`` (no anomaly), ``resolver``, ``anomaly_types`` (sorted),
        ``anomalies`` (type → list of ``{"key", "explanation", ...details}``) and ``stats``
        (``keys`` written or read, ``regions``, ``writes_ok``, ``writes_fail``,
        ``writes_info``, ``final_reads``, ``final_reads_unknown``, ``keys_without_final_read``,
        ``counter_checks_inexact``, ``anomaly_counts``).

    Raises:
        HistoryError: the history is malformed (a region that is a list or an object, an
            ``ok`` lww write without an integer ``ts`` or a ``region``, a non-integer
            increment, a set read that is not a list, a missing ``time_ns`` where the set
            check needs one, ...).
        ValueError: unknown resolver.
    """
    if resolver not in WRITE_FUNCTIONS:
        raise ValueError(f"unknown resolver {resolver!r}; expected one of "
                         f"{', '.join(RESOLVERS)}")
    found = _Findings(max_reported)
    stats: dict[str, Any] = dict.fromkeys(
        ("writes_ok", "writes_fail", "writes_info", "final_reads", "final_reads_unknown",
         "keys_without_final_read", "counter_checks_inexact"), 0)
    writes: dict[Any, list[_Write]] = {}       # frozen key -> writes that may have happened
    failed: dict[Any, list[_Write]] = {}       # frozen key -> failed writes
    reads: dict[Any, list[tuple[Any, dict[str, Any]]]] = {}  # key -> (frozen value, summary)
    expected_regions = None if regions is None else sorted(set(regions))
    regions: set[str] = set()

    functions = WRITE_FUNCTIONS[resolver] | {FINAL_READ}
    for start, invoke, end, completion in pair_operations(history, functions, timed=False):
        kind = "info" if completion is None else completion["type"]
        key = _freeze(invoke.get("key"))
        region = invoke.get("region")
        # Regions name the readers of a key (``missing-final-read``), so they must be hashable.
        if isinstance(region, (list, dict)):
            raise HistoryError(f"event {start}: a region must be a string, not {region!r:.80}")
        if isinstance(region, str):
            regions.add(region)
        op = _summary(start, invoke, end, completion)
        if invoke["f"] == FINAL_READ:
            if kind != "ok":
                stats["final_reads_unknown"] += 1
                continue
            stats["final_reads"] += 1
            reads.setdefault(key, []).append(
                (_final_value(resolver, completion.get("value"), end), op))
            continue
        stats[f"writes_{kind}"] += 1
        value = None if invoke["f"] == "delete" else invoke.get("value")
        ts = None
        if resolver == "counter" and not _is_int(value):
            raise HistoryError(f"event {start}: an increment must be an integer, not {value!r}")
        if resolver == "max" and not _is_int(value):
            raise HistoryError(f"event {start}: a max write must be an integer, not {value!r}")
        if resolver == "lww" and kind == "ok":
            ts = completion.get("ts")
            if not _is_int(ts) or not isinstance(region, str):
                raise HistoryError(f"event {end}: an ok lww write needs an integer ts and a "
                                   f"region, not ts={ts!r} region={region!r}")
        invoke_ns = complete_ns = None
        if resolver == "add_wins_set":
            invoke_ns = _time(invoke, start)
            complete_ns = None if completion is None else _time(completion, end)
        w = _Write(invoke["f"], _freeze(value), kind, ts, region, invoke_ns, complete_ns, op)
        (failed if kind == "fail" else writes).setdefault(key, []).append(w)

    check_value = {"lww": _check_lww, "counter": _check_counter, "max": _check_max,
                   "add_wins_set": _check_set}[resolver]
    keys = set(writes) | set(failed) | set(reads)
    for key in sorted(keys, key=repr):
        key_reads = reads.get(key)
        if expected_regions is not None and (key in writes or key in reads):
            have = {op["region"] for _, op in key_reads or ()}
            silent = [r for r in expected_regions if r not in have]
            if silent:
                found.report("missing-final-read", key,
                             f"key {_show(key)}: no ok final read in {', '.join(silent)}, so "
                             f"convergence there is unverified", regions=silent)
        if not key_reads:
            if key in writes:
                stats["keys_without_final_read"] += 1
            continue
        by_value: dict[Any, list[dict[str, Any]]] = {}
        for value, op in key_reads:
            by_value.setdefault(value, []).append(op)
        if len(by_value) > 1:
            shown = [{"region": op["region"], "value": op["value"], "process": op["process"]}
                     for _, op in key_reads]
            found.report("divergence", key,
                         f"key {_show(key)}: final reads differ: " + "; ".join(
                             f"{r['region']} read {json.dumps(r['value'], default=repr)}"
                             for r in shown),
                         reads=shown)
        for value, ops in by_value.items():
            where = sorted({str(op["region"]) for op in ops})
            check_value(found, stats, key, value, where, writes.get(key, []),
                        failed.get(key, []))

    types = sorted(found.described)
    return {
        "valid": not types,
        "resolver": resolver,
        "anomaly_types": types,
        "anomalies": dict(sorted(found.described.items())),
        "stats": {"keys": len(keys), "regions": sorted(regions), **stats,
                  "anomaly_counts": dict(sorted(found.counts.items()))},
    }


def _show(frozen: Any) -> str:
    return json.dumps(_thaw(frozen), default=repr)


def _final_value(resolver: str, value: Any, at: int | None) -> Any:
    """A final read's value, frozen so that equal reads compare equal."""
    if resolver in ("counter", "max"):
        if value is not None and not _is_int(value):
            raise HistoryError(f"event {at}: a {resolver} read must return an integer or "
                               f"null, not {value!r}")
        return value
    if resolver == "add_wins_set":
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise HistoryError(f"event {at}: a set read must return a list, not {value!r}")
        return frozenset(_freeze(e) for e in value)
    return _freeze(value)


# ------------------------------------------------------------------------- per-resolver checks


def _check_lww(found: _Findings, stats: dict[str, Any], key: Any, value: Any,
               where: list[str], writes: list[_Write], failed: list[_Write]) -> None:
    ok = [w for w in writes if w.kind == "ok"]
    best = max(ok, key=lambda w: w.version, default=None)
    candidates = [w for w in writes if w.value == value]
    shown = _show(value)
    if value is not None and not candidates:
        by_failed = [w.summary for w in failed if w.value == value]
        found.report("garbage", key,
                     f"key {_show(key)}: {', '.join(where)} read {shown}, which no write that "
                     f"may have happened wrote" + (" (a failed write did)" if by_failed else ""),
                     value=_thaw(value), regions=where, failed_writes=by_failed)
        return
    if best is None:
        return
    if any(w.kind == "info" or w.version >= best.version for w in candidates):
        return
    known = max((w.version for w in candidates), default=None)
    lost = [w for w in ok if known is None or w.version > known]
    source = ("nothing (no delete could be the last write)" if not candidates
              else f"{shown}, last written at ts {known[0]} in {known[1]}")
    found.report("lost-write", key,
                 f"key {_show(key)}: {', '.join(where)} read {source}, but the acknowledged "
                 f"{_describe(best.summary)} is greater by (ts, region); {len(lost)} "
                 f"acknowledged write(s) lost",
                 value=_thaw(value), regions=where, lost=best.summary, lost_count=len(lost),
                 final_writes=[w.summary for w in candidates])


def _check_max(found: _Findings, stats: dict[str, Any], key: Any, value: Any,
               where: list[str], writes: list[_Write], failed: list[_Write]) -> None:
    ok = [w for w in writes if w.kind == "ok"]
    best = max(ok, key=lambda w: w.value, default=None)
    if value is None:
        if best is not None:
            found.report("lost-write", key,
                         f"key {_show(key)}: {', '.join(where)} read nothing, but "
                         f"{_describe(best.summary)} was acknowledged",
                         value=None, regions=where, lost=best.summary)
        return
    if not any(w.value == value for w in writes):
        by_failed = [w.summary for w in failed if w.value == value]
        found.report("garbage", key,
                     f"key {_show(key)}: {', '.join(where)} read {value}, which no write that "
                     f"may have happened wrote" + (" (a failed write did)" if by_failed else ""),
                     value=value, regions=where, failed_writes=by_failed)
    if best is not None and value < best.value:
        found.report("lost-write", key,
                     f"key {_show(key)}: {', '.join(where)} read {value}, below the "
                     f"acknowledged {_describe(best.summary)}",
                     value=value, regions=where, lost=best.summary)


def _check_counter(found: _Findings, stats: dict[str, Any], key: Any, value: Any,
                   where: list[str], writes: list[_Write], failed: list[_Write]) -> None:
    ok_sum = sum(w.value for w in writes if w.kind == "ok")
    ok_count = sum(1 for w in writes if w.kind == "ok")
    maybe = [w.value for w in writes if w.kind == "info" and w.value != 0]
    low = sum(d for d in maybe if d < 0)
    high = sum(d for d in maybe if d > 0)
    details = {"value": value, "regions": where, "ok_sum": ok_sum, "ok_increments": ok_count,
               "info_increments": len(maybe), "range": [ok_sum + low, ok_sum + high]}
    if value is None:
        if ok_count:
            found.report("counter-mismatch", key,
                         f"key {_show(key)}: {', '.join(where)} read nothing, but {ok_count} "
                         f"increment(s) were acknowledged", **details)
        return
    feasible, exact = _subset_sum_feasible(maybe, value - ok_sum)
    if not exact:
        stats["counter_checks_inexact"] += 1
    if not feasible:
        found.report("counter-mismatch", key,
                     f"key {_show(key)}: {', '.join(where)} read {value}, which is not the "
                     f"acknowledged sum {ok_sum} plus a subset of the {len(maybe)} "
                     f"indeterminate increment(s) (possible range {ok_sum + low}.."
                     f"{ok_sum + high})", **details)


def _subset_sum_feasible(deltas: list[int], target: int) -> tuple[bool, bool]:
    """(whether some subset of ``deltas`` sums to ``target``, whether that answer is exact).
    Inexact answers are True (only the range and gcd were checked)."""
    low = sum(d for d in deltas if d < 0)
    high = sum(d for d in deltas if d > 0)
    if not low <= target <= high:
        return False, True
    g = 0
    for d in deltas:
        g = math.gcd(g, d)
    if g == 0:
        return target == 0, True
    if target % g:
        return False, True
    width = (high - low) // g
    if width > MAX_SUBSET_SUM_BITS:
        return True, False
    # Bit i of ``reachable`` is set when the sum low + i*g is reachable; the empty subset sums
    # to 0.
    reachable = 1 << (-low // g)
    mask = (1 << (width + 1)) - 1
    for d in deltas:
        step = d // g
        reachable |= (reachable << step) & mask if step > 0 else reachable >> -step
    return bool(reachable >> ((target - low) // g) & 1), True


def _check_set(found: _Findings, stats: dict[str, Any], key: Any, value: frozenset,
               where: list[str], writes: list[_Write], failed: list[_Write]) -> None:
    added = {w.value for w in writes if w.f == "add"}
    for elem in sorted(value - added, key=repr):
        by_failed = [w.summary for w in failed if w.f == "add" and w.value == elem]
        found.report("set-garbage", key,
                     f"key {_show(key)}: {', '.join(where)} read element {_show(elem)}, which "
                     f"no add that may have happened added" +
                     (" (a failed add did)" if by_failed else ""),
                     element=_thaw(elem), regions=where, failed_adds=by_failed)
    removes: dict[Any, list[_Write]] = {}
    adds: dict[Any, list[_Write]] = {}
    for w in writes:
        (removes if w.f == "remove" else adds).setdefault(w.value, []).append(w)
    for elem in sorted(value & removes.keys() & adds.keys(), key=repr):
        for r in removes[elem]:
            if r.kind == "ok" and all(a.kind == "ok" and a.region == r.region
                                      and a.complete_ns < r.invoke_ns for a in adds[elem]):
                found.report("set-lost-remove", key,
                             f"key {_show(key)}: {', '.join(where)} read element "
                             f"{_show(elem)}, although {_describe(r.summary)} came after "
                             f"every add of it, all acknowledged in {r.region}",
                             element=_thaw(elem), regions=where, remove=r.summary)
                break
    reported: set[Any] = set()
    for w in writes:
        if w.f != "add" or w.kind != "ok" or w.value in value or w.value in reported:
            continue
        if any(r.complete_ns is None or r.complete_ns >= w.invoke_ns
               for r in removes.get(w.value, ())):
            continue
        reported.add(w.value)
        found.report("set-lost-add", key,
                     f"key {_show(key)}: {', '.join(where)} read no element "
                     f"{_show(w.value)}, although {_describe(w.summary)} was acknowledged and "
                     f"no remove of it could have observed it",
                     element=_thaw(w.value), regions=where, add=w.summary)


# ------------------------------------------------------------------------------------ the CLI


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("history", metavar="HISTORY.jsonl",
                        help="history in the JSON-lines shape of FAULTS.md §4")
    parser.add_argument("--resolver", choices=RESOLVERS, default="lww",
                        help="the keyspace's resolver (default: %(default)s)")
    parser.add_argument("--regions", type=comma_list(),
                        default=None, metavar="A,B,...",
                        help="every region: each must read each key written (default: not checked)")
    parser.add_argument("--max-reported", type=int, default=DEFAULT_MAX_REPORTED, metavar="N",
                        help="describe at most N anomalies of each type (default: %(default)s)")
    parser.add_argument("--show", type=int, default=3, metavar="K",
                        help="print at most K anomalies of each type (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.set_defaults(func=run)
    return parser


_DESCRIPTION = ("Checks a JSON-lines history of a regional keyspace: after the final heal, "
                "every region reads the same value of every key, and that value is what the "
                "resolver makes of the acknowledged writes. Exit status: 0 valid, 1 invalid, "
                "2 unreadable history.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``convergence`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "convergence", help="check a regional keyspace's history for convergence",
        description=_DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Checks ``args.history``; returns 0 (valid), 1 (invalid) or 2 (bad input)."""
    return run_checker(
        args,
        lambda history: check(history, args.resolver, max_reported=args.max_reported,
                              regions=args.regions),
        lambda s: (f"{s['keys']} keys in {len(s['regions'])} regions; writes: "
                   f"{s['writes_ok']} ok, {s['writes_fail']} failed, {s['writes_info']} "
                   f"unknown; {s['final_reads']} final reads ({s['final_reads_unknown']} "
                   f"unknown); {s['keys_without_final_read']} keys not read"))


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m bench.convergence",
                                                description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
