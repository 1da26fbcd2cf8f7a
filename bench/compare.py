"""``python -m bench compare OLD.json NEW.json``: what changed between two result documents,
beyond the run-to-run noise.

Rows of the two documents are matched on their identifying fields (system, workload, mode,
clients, θ, value size, records loaded, axis, regions, ...). An open-loop row's offered load is
a fraction of its own run's best closed-loop throughput, so it differs from run to run: open-loop
rows are matched on that fraction (``offered_fraction``), or, in documents without it, on the
rank of their offered load among the rows otherwise alike (when both documents have as many).
Rows of one document that still share all of that (repetitions of one measurement, say) are
matched in the order they appear: the first of them with the first of the other document's, and
so on; the output says how many there are.
The output says how many rows of each document found no counterpart. For each matched row and
metric (throughput: higher is better; p50/p99 latency, in milliseconds or, in the storage and
adjudicator benchmarks' rows, microseconds: lower is better) the change is
``(new - old) / old``. The noise is measured, not assumed, wherever the documents allow it:
a row run with repetitions carries every repetition's figure (``ops_per_s_reps``,
``p99_ms_reps``; ``repetitions_records_per_s`` in the storage benchmark's rows), and its spread
is ``(max - min) / median``. A row measured once has no spread: ``--noise`` (default 25 %, the
run-to-run variation MEASURED.md reports on this kind of machine) stands in for it (the other
row's spread says nothing of it), and the output says so when that is what counts. The noise of
a comparison is the larger noise of the two rows. A change is flagged (``better`` / ``worse``)
only when it is larger than that noise (and than ``--min-change``); otherwise it is
``within noise``.

Failed operations are compared too: a row's ``error_rate`` (the failed share of its
operations) has no ratio when it was 0, so its change is the difference of the two rates, flagged
when it exceeds ``--error-change`` (default 0.1 percentage point): a run that got as fast but
fails operations it did not is worse.

Exit status: 0, or 1 with ``--fail-on-regression`` when any metric got worse beyond the noise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter

from . import _common

__all__ = ["add_parser", "compare_docs", "main", "match_rows", "repetitions", "row_key",
           "spread"]

KEY_FIELDS = ("benchmark", "system", "implementation", "workload", "mode", "clients",
              "concurrency", "theta", "value_size", "records", "axis", "regions", "regions_at_once",
              "region", "batch", "distribution", "sweep")
OFFERED = "offered_ops_per_s"
METRICS = (  # (field, higher is better)
    ("ops_per_s", True),
    ("txn_per_s", True),
    ("txns_per_s", True),
    ("records_per_s", True),
    ("p50_ms", False),
    ("p99_ms", False),
    ("p50_us", False),  # bench storage
    ("p99_us", False),
    ("batch_p50_us", False),  # bench adjudicator
    ("batch_p99_us", False),
)
DEFAULT_NOISE = 0.25
MIN_CHANGE = 0.02
ERROR_CHANGE = 0.001


def row_key(doc: dict, row: dict) -> tuple:
    """What identifies a row across runs (the benchmark and the row's own parameters), but
    the offered load of an open-loop row (see :func:`match_rows`)."""
    out = [("benchmark", doc.get("benchmark"))]
    for f in KEY_FIELDS[1:]:
        if f in row and row[f] is not None:
            out.append((f, row[f]))
    return tuple(out)


def _keys(doc: dict, by_fraction: bool) -> list[tuple]:
    """Every row's key: :func:`row_key`, plus, for a row with an offered load, its fraction
    (``by_fraction``) or its rank among the rows of the same :func:`row_key` (with how many
    there are, so that documents of different lengths never pair their rows by rank)."""
    rows = doc.get("results", [])
    base = [row_key(doc, r) for r in rows]
    offered: dict[tuple, list[float]] = {}
    for k, r in zip(base, rows):
        if r.get(OFFERED) is not None:
            offered.setdefault(k, []).append(r[OFFERED])
    out = []
    for k, r in zip(base, rows):
        if r.get(OFFERED) is None:
            out.append(k)
        elif by_fraction:
            out.append(k + (("offered_fraction", r["offered_fraction"]),))
        else:
            loads = sorted(offered[k])
            out.append(k + (("offered_rank", f"{loads.index(r[OFFERED]) + 1}/{len(loads)}"),))
    return out


SHARED = "occurrence"


def _numbered(keys: list[tuple], shared: set[tuple]) -> list[tuple]:
    """``keys``, each of ``shared`` with its occurrence among the keys alike (1, 2, ...)."""
    seen: dict[tuple, int] = {}
    out = []
    for k in keys:
        if k in shared:
            seen[k] = seen.get(k, 0) + 1
            k = k + ((SHARED, seen[k]),)
        out.append(k)
    return out


def _matching_keys(old: dict, new: dict) -> tuple[list[tuple], list[tuple]]:
    """Each row's key in ``old`` and in ``new`` (:func:`_keys`); a key that several rows of
    either document share gets each row's occurrence among them, so that rows alike are
    matched in order rather than one of them standing for all."""
    offered = [r for d in (old, new) for r in d.get("results", []) if r.get(OFFERED) is not None]
    by_fraction = all(r.get("offered_fraction") is not None for r in offered)
    old_keys, new_keys = _keys(old, by_fraction), _keys(new, by_fraction)
    shared = set()
    for keys in (old_keys, new_keys):
        seen: set[tuple] = set()
        for k in keys:
            (shared if k in seen else seen).add(k)
    return _numbered(old_keys, shared), _numbered(new_keys, shared)


def _shared_rows(keys: list[tuple]) -> int:
    """How many rows of a document (``keys``: their keys, as :func:`_matching_keys` gives them)
    share their key with another row of the same document."""
    base = Counter(tuple(f for f in k if f[0] != SHARED) for k in keys)
    return sum(n for n in base.values() if n > 1)


def match_rows(old: dict, new: dict) -> tuple[list[tuple[tuple, dict, dict]], int, int]:
    """``([(key, old row, new row), ...], unmatched rows of old, unmatched rows of new)``.

    Rows of a document that share their key are matched in the order they appear (see the
    module doc): none stands for another."""
    old_keys, new_keys = _matching_keys(old, new)
    old_rows = dict(zip(old_keys, old.get("results", [])))
    pairs = [(k, old_rows[k], r) for k, r in zip(new_keys, new.get("results", []))
             if k in old_rows]
    matched = set(new_keys)
    return (pairs, sum(k not in matched for k in old_keys),
            sum(k not in old_rows for k in new_keys))


def repetitions(row: dict, field: str) -> list | None:
    """Each repetition's figure of ``field`` in ``row``: the benchmarks name that list
    ``<field>_reps`` (ycsb) or ``repetitions_<field>`` (storage, adjudicator)."""
    for name in (f"{field}_reps", f"repetitions_{field}"):
        values = row.get(name)
        if isinstance(values, list):
            return values
    return None


def spread(values: list[float] | None) -> float | None:
    """``(max - min) / median`` of repetitions; None with fewer than two."""
    vals = [v for v in (values or []) if _number(v)]
    if len(vals) < 2:
        return None
    med = _common.median(vals)
    if med == 0:
        return None
    return (max(vals) - min(vals)) / abs(med)


def _number(v: object) -> bool:
    """A figure that can be compared: a finite number. (Python's JSON reader accepts NaN and
    Infinity, and a NaN change is neither within the noise nor outside it; and an integer of
    any size, which no float holds.)"""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


def _error_rate(row: dict, o: dict, r: dict, limit: float) -> dict | None:
    """The comparison of two rows' ``error_rate``: by difference, not ratio (see above)."""
    a, b = o.get("error_rate"), r.get("error_rate")
    if not _number(a) or not _number(b):
        return None
    change = b - a
    verdict = ("within noise" if abs(change) <= limit
               else "worse" if change > 0 else "better")
    return {"row": row, "metric": "error_rate", "old": a, "new": b,
            "change": round(change, 6), "noise": limit, "noise_measured": False,
            "absolute": True, "verdict": verdict}


def compare_docs(old: dict, new: dict, *, noise: float = DEFAULT_NOISE,
                 min_change: float = MIN_CHANGE,
                 error_change: float = ERROR_CHANGE) -> list[dict]:
    """One entry per (matched row, metric): old, new, change, noise, verdict."""
    out = []
    for key, o, r in match_rows(old, new)[0]:
        row = dict(key)
        if r.get(OFFERED) is not None:
            row[OFFERED] = {"old": o.get(OFFERED), "new": r[OFFERED]}
        for field, higher_better in METRICS:
            a, b = o.get(field), r.get(field)
            if not _number(a) or not _number(b) or a == 0:
                continue
            change = (b - a) / abs(a)
            spreads = [s for s in (spread(repetitions(o, field)), spread(repetitions(r, field)))
                       if s is not None]
            assumed = [noise] * (2 - len(spreads))  # for each row measured once
            largest = max(spreads + assumed)
            measured = largest not in assumed
            limit = max(largest, min_change)
            if abs(change) <= limit:
                verdict = "within noise"
            else:
                improved = change > 0 if higher_better else change < 0
                verdict = "better" if improved else "worse"
            out.append({
                "row": row, "metric": field, "old": a, "new": b,
                "change": round(change, 4), "noise": round(limit, 4),
                "noise_measured": measured, "verdict": verdict,
            })
        errors = _error_rate(row, o, r, error_change)
        if errors is not None:
            out.append(errors)
    return out


def _label(row: dict) -> str:
    parts = [str(row.get("system", row.get("implementation", "")))]
    for f in ("workload", "mode", "clients", "concurrency", "offered_fraction", "offered_rank",
              "theta", "axis", "regions", "regions_at_once", "region", "batch", SHARED):
        if f in row:
            parts.append(f"{f}={row[f]}")
    load = row.get(OFFERED)
    if isinstance(load, dict):
        parts.append(f"offered={load['old']:g}->{load['new']:g}/s")
    return " ".join(p for p in parts if p)


def _document_problem(doc: object) -> str | None:
    """What keeps ``doc`` from being compared as a result document (None if nothing): it must
    be an object of a schema this harness writes, whose ``results`` is a list of objects."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    if doc.get("schema", _common.SCHEMA) != _common.SCHEMA:
        return (f"schema {doc['schema']!r}, where this harness reads schema {_common.SCHEMA} "
                f"(rerun the benchmark with this version to compare)")
    name = doc.get("benchmark")
    if name is not None and not isinstance(name, str):
        return f"its benchmark is a {type(name).__name__}, not a name"
    if "results" not in doc:
        return "it has no 'results'"
    rows = doc["results"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return "its results are not a list of objects"
    # Rows are matched on their identifying fields and open-loop rows ordered by offered load:
    # a list or object there cannot be matched, and an offered load must be a number.
    for i, row in enumerate(rows):
        for f in KEY_FIELDS[1:] + ("offered_fraction",):
            if isinstance(row.get(f), (list, dict)):
                return f"row {i + 1} has a {type(row[f]).__name__} as its {f!r}"
        load = row.get(OFFERED)
        if load is not None and not _number(load):
            return f"row {i + 1} has {load!r} as its {OFFERED!r}, not a number"
        # A figure is a number, or None where nothing was measured (NaN is a number that is
        # never compared); anything else would be skipped as if it had not been measured.
        for f in [m for m, _ in METRICS] + ["error_rate"]:
            v = row.get(f)
            if v is not None and not (_number(v) or isinstance(v, float)):
                return f"row {i + 1} has {v!r:.60} as its {f!r}, not a number"
    return None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="compare two result JSON files; flag changes beyond measured noise",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("old", metavar="OLD.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                   help="relative noise assumed for rows without repetitions (default 0.25)")
    p.add_argument("--min-change", type=float, default=MIN_CHANGE,
                   help="never flag a change smaller than this (default 0.02)")
    p.add_argument("--error-change", type=float, default=ERROR_CHANGE,
                   help="flag an error rate that moved by more than this (a fraction of the "
                        "operations; default 0.001)")
    p.add_argument("--json", metavar="FILE", help="write the comparison here")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit with status 1 if any metric got worse beyond the noise")
    p.set_defaults(func=main, _parser=p)
    return p


def main(args: argparse.Namespace) -> int:
    parser = args._parser
    if not 0 <= args.noise < 10 or not 0 <= args.min_change < 10:
        parser.error("--noise and --min-change must be fractions in [0, 10)")
    if not 0 <= args.error_change < 1:
        parser.error("--error-change must be a fraction in [0, 1)")
    docs = []
    for path in (args.old, args.new):
        try:
            docs.append(_common.read_json(path))
        except OSError as exc:
            parser.error(f"cannot read {path}: {exc.strerror}")
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            parser.error(f"{path} is not JSON: {exc}")
        problem = _document_problem(docs[-1])
        if problem:
            parser.error(f"{path} is not a result document: {problem}")
    old, new = docs
    if old.get("benchmark") != new.get("benchmark"):
        parser.error(f"the files hold different benchmarks ({old.get('benchmark')!r} and "
                     f"{new.get('benchmark')!r})")
    rows = compare_docs(old, new, noise=args.noise, min_change=args.min_change,
                        error_change=args.error_change)
    pairs, unmatched_old, unmatched_new = match_rows(old, new)
    for path, doc, keys in zip((args.old, args.new), (old, new), _matching_keys(old, new)):
        if not doc.get("results"):
            print(f"{path} has no results (no run of it was measured)")
        shared = _shared_rows(keys)
        if shared:
            print(f"{shared} row(s) of {path} share their identifying fields with "
                  f"another row of it: they are compared in the order they appear "
                  f"({SHARED}=1, 2, ...)")
    if not pairs:
        print("no rows in common")
    # A matched row none of whose figures is a number in both files (0 in the old one: a
    # change from nothing has no ratio) is neither compared nor unmatched: say so.
    compared = {tuple((k, v) for k, v in c["row"].items() if k != OFFERED) for c in rows}
    blank = sum(key not in compared for key, _, _ in pairs)
    table = [[_label(c["row"]), c["metric"], f"{c['old']:g}", f"{c['new']:g}",
              f"{c['change']:+.1%}" + (" pt" if c.get("absolute") else ""),
              (f"±{c['noise']:.1%} pt" if c.get("absolute")
               else f"±{c['noise']:.0%}" + ("" if c["noise_measured"] else "*")),
              c["verdict"]] for c in rows]
    if table:
        print(_common.format_table(["row", "metric", "old", "new", "change", "noise", "verdict"],
                                   table, "lllrrrl"))
        if not all(c["noise_measured"] or c.get("absolute") for c in rows):
            print(f"* noise not measured (a single repetition): --noise {args.noise:g} assumed")
    worse = [c for c in rows if c["verdict"] == "worse"]
    better = [c for c in rows if c["verdict"] == "better"]
    print(f"{len(worse)} worse, {len(better)} better, "
          f"{len(rows) - len(worse) - len(better)} within noise")
    if blank:
        print(f"not compared (no figure measured in both files, or it is 0 in {args.old}): "
              f"{blank} row(s) in common")
    if unmatched_old or unmatched_new:
        print(f"not compared (no matching row in the other file): {unmatched_old} row(s) of "
              f"{args.old}, {unmatched_new} row(s) of {args.new}")
    if args.json:
        try:
            _common.write_json(args.json, {"schema": _common.SCHEMA, "benchmark": "compare",
                                           "old": args.old, "new": args.new,
                                           "comparisons": rows,
                                           "unmatched": {"old": unmatched_old,
                                                         "new": unmatched_new}})
        except OSError as exc:
            parser.error(f"cannot write {args.json}: {exc.strerror or exc}")
    return 1 if worse and args.fail_on_regression else 0


if __name__ == "__main__":
    from bench.__main__ import main as _bench_main

    sys.exit(_bench_main(["compare", *sys.argv[1:]]))
