"""Isolation checker for list-append transaction histories, after Elle.

``python -m bench.elle HISTORY.jsonl`` checks a history of the list-append workload (FAULTS.md
§2) and exits 1 when it shows an anomaly that the chosen consistency model forbids. The method
is that of Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from Experimental
Observations" (PVLDB 14(3), 2020), with the anomaly names of Adya ("Weak Consistency", 1999).

The history
-----------
One event per line (or per dict when called from Python), in the shape of FAULTS.md §4::

    {"process": 2, "type": "invoke", "f": "txn", "value": [["append", "x", 7], ["r", "y", null]],
     "time_ns": 1200}
    {"process": 2, "type": "ok", "f": "txn", "value": [["append", "x", 7], ["r", "y", [3, 5]]],
     "time_ns": 1900}

A transaction is a list of micro-operations ``[op, key, arg]``: ``append`` adds ``arg`` to the
end of the list stored at ``key`` (every value appended to a key is unique: a value appended
twice to one key is a malformed history); ``r`` reads the whole list (``null`` in the invoke,
the list in the ``ok`` completion; a ``null`` read in the completion is the empty list).

Each process has at most one open transaction. An ``invoke`` is closed by the process's next
``ok`` (it committed), ``fail`` (it certainly did not commit) or ``info`` (unknown: it may have
committed, and its appends may be observed; what it read is unknown). An invoke that is never
closed counts as ``info``. Events whose ``f`` is not ``txn`` (nemesis events, other workloads)
are skipped.

The algorithm
-------------
1. **Version orders.** Because values are unique and a read returns the whole list, every read
   of a key is a prefix of the key's version order, which is thus known exactly as far as it was
   observed: it is the longest read of the key. Reads that are not prefixes of it are reported
   as ``incompatible-order``, and so is a version order that holds a transaction's append to
   a key without each of its earlier appends to that key before it (a transaction's appends
   enter the list in the order it made them). An append of a committed transaction (``ok``,
   or ``info`` with another append that a read returned) that no read returned still belongs
   to the order, after every element that was read; where among those unread appends is
   unknown.

2. **Anomalies of single reads and transactions** (no graph needed): a read containing a value
   twice (``duplicate-elements``) or a value nobody appended to that key (``garbage``); a read
   containing a value appended by a failed transaction (``G1a``, aborted read); a read whose
   last element is an append of another transaction that was not that transaction's last
   append to the key (``G1b``, intermediate read); a transaction whose read of a key does not
   end with its own earlier appends, in order, or differs from what its earlier read and
   appends imply (``internal``); two committed transactions that read the same version of a
   key and both appended to it (``lost-update``).

3. **The dependency graph** has a node per committed transaction and per ``info`` transaction
   some of whose appends were read (it must then have committed); its reads are unknown, so it
   only has edges as a writer. Only a transaction's *external* read of a key (one made before
   the transaction appended to that key) and its appends count. Edges, after Adya:

   * ``ww`` T1 → T2: T2 appended the element right after one T1 appended, in a key's order;
   * ``wr`` T1 → T2: T2 read a list whose last element T1 appended;
   * ``rw`` T1 → T2: T1 read a version of a key and T2 appended the next element
     (an anti-dependency);
   * and from the unread appends of committed transactions: ``ww`` from the writer of a key's
     last element read to each such transaction, and ``rw`` from each reader of that last
     version to each of them (at most ``_MAX_UNREAD_LINKS`` per read). Each stands for a path
     through the unknown order of the unread appends with the same number of rw edges, so the
     cycles they close are real. Two readers of that version that both made unread appends get
     no rw edge between them: a ww edge of unknown direction joins them too, and the cycle is
     surely a G-single, which rw edges alone would misname G2-item; the pair is reported as a
     lost update. A read ending in another transaction's intermediate append (G1b) gives no rw
     edge to that transaction, since it read none of its versions;
   * ``realtime`` T1 → T2: T1 completed before T2 was invoked. Only a transitive reduction is
     built: scanning invokes and completions in time order, a "frontier" holds the completed
     transactions not yet followed by a completed successor; an invoked transaction gets an
     edge from each member of the frontier, and its completion removes those members from it.
     Frontier members overlap in time, so the frontier is no larger than the concurrency and
     the edges number O(n × concurrency);
   * ``process`` T1 → T2: T2 is the next transaction of T1's process after T1 committed.

   An edge between two transactions may carry several of these kinds.

4. **Cycles.** Strongly connected components of the whole graph are found with Tarjan's
   algorithm (iteratively, so long histories do not hit the recursion limit). Within each, the
   search looks first at dependency edges only (ww, wr, rw), then adds process edges, then
   realtime edges; at each stage it looks for the cycle with the fewest anti-dependencies:

   * a cycle of ww edges only — ``G0`` (write cycle);
   * a cycle of ww and wr edges — ``G1c`` (circular information flow);
   * a cycle with exactly one rw edge — ``G-single`` (read skew): for each rw edge a → b,
     whether b reaches a over the other edges is answered from reachability bit sets over the
     condensation of the graph without rw edges;
   * any other cycle — ``G2-item`` (write skew); a 0-1 breadth-first search finds one with as
     few rw edges as it can.

   A cycle that needs a process edge is named with ``-process`` (``G-single-process``), one
   that needs a realtime edge with ``-realtime``. A later stage reports a cycle only when it
   is of a lower class (in the order above) than every cycle the earlier stages found in the
   same part of the component, so each cycle is named with as few ordering assumptions as
   expose it, and a component still yields, say, both a G2-item and the G-single-realtime
   that real time reveals in it.

Consistency models (``FORBIDDEN``): every model forbids the anomalies of step 2 and G0, G1c
and G-single. Snapshot isolation allows G2-item; strong snapshot isolation (no stale reads)
also forbids the -process and -realtime variants of what snapshot isolation forbids;
serializable forbids G2-item too, but no -process or -realtime cycle; strict serializable
forbids every cycle. (Process order is
implied by real-time order, so a model that respects real time respects process order.)

The checker is sound (every anomaly it reports is real, provided reads are prefixes of a
version order, which ``incompatible-order`` checks) but not complete. Among what it does not
see: cycles whose only evidence is the order among appends that no read returned.

Reports are bounded: at most ``max_reported`` anomalies of each type are described, all
counted in ``stats["anomaly_counts"]``. A cycle class is counted once per strongly connected
component of its own edges for G0 and G1c, once per rw edge that closes a cycle for G-single,
and once per component searched for G2-item (whose cycles are too many to count).

The work is linear in the size of the history and of its graph, but for the reachability bit
sets (quadratic in bits, so small for a few thousand transactions) and the reads, each of
which is compared with its key's order element by element (at C speed). A history of 2,000
transactions is checked in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.wgl import HistoryError, _freeze, _thaw, _time, load_history, pair_operations

__all__ = [
    "CONSISTENCY_MODELS",
    "CYCLE_CLASSES",
    "DEFAULT_MAX_REPORTED",
    "FORBIDDEN",
    "HistoryError",
    "MicroOp",
    "NON_CYCLE_ANOMALIES",
    "Txn",
    "add_parser",
    "check",
    "describe_txn",
    "load_history",
    "main",
    "run",
    "transactions",
]

DEFAULT_MAX_REPORTED = 10

# Edge kinds, as bits: an edge between two transactions may carry several kinds.
WW, WR, RW, PROCESS, REALTIME = 1, 2, 4, 8, 16
DATA = WW | WR | RW
ALL_EDGES = DATA | PROCESS | REALTIME
EDGE_NAMES = {WW: "ww", WR: "wr", RW: "rw", PROCESS: "process", REALTIME: "realtime"}
# The kind a cycle names an edge by, when the edge carries several that the search allows: a
# dependency before an ordering constraint, and rw last, so that no cycle is said to have more
# anti-dependencies than it needs.
_LABEL_PREFERENCE = (WW, WR, PROCESS, REALTIME, RW)

# Cycle classes by rank: G0 is proscribed by every isolation level of Adya's, G2-item only by
# serializability.
CYCLE_CLASSES = ("G0", "G1c", "G-single", "G-nonadjacent", "G2-item")
_CLASS_NOTES = {
    "G0": "a write cycle (ww edges only)",
    "G1c": "circular information flow (ww and wr edges)",
    "G-single": "read skew (a cycle with exactly one anti-dependency)",
    "G-nonadjacent": "a cycle whose anti-dependencies are never adjacent (e.g. a long fork), "
                     "which snapshot isolation forbids",
    "G2-item": "write skew (a cycle with two or more anti-dependencies)",
}
_NO_CYCLE = 5  # the rank of "no cycle found", above every class

NON_CYCLE_ANOMALIES = ("G1a", "G1b", "internal", "duplicate-elements", "garbage",
                       "incompatible-order", "lost-update")


def _variants(classes: Iterable[str]) -> frozenset[str]:
    return frozenset(f"{c}{suffix}" for c in classes for suffix in ("-process", "-realtime"))


_SI = frozenset(NON_CYCLE_ANOMALIES) | {"G0", "G1c", "G-single", "G-nonadjacent"}
_SER = _SI | {"G2-item"}
FORBIDDEN: dict[str, frozenset[str]] = {
    "snapshot-isolation": _SI,
    "strong-snapshot-isolation": _SI | _variants(("G0", "G1c", "G-single", "G-nonadjacent")),
    "serializable": _SER,
    "strict-serializable": _SER | _variants(CYCLE_CLASSES),
}
CONSISTENCY_MODELS = tuple(FORBIDDEN)


# ------------------------------------------------------------------------------- the history


@dataclass(frozen=True, slots=True)
class MicroOp:
    """One micro-operation. ``key`` and ``value`` are in frozen (hashable) form.

    ``value`` is the appended value for ``append``; for ``r`` it is the tuple of elements read,
    or None when the read's result is unknown (the transaction did not complete ``ok``).
    """

    f: str
    key: Any
    value: Any

    def to_list(self) -> list[Any]:
        if self.f == "append":
            return ["append", _thaw(self.key), _thaw(self.value)]
        return ["r", _thaw(self.key), None if self.value is None else _thaw(self.value)]


@dataclass(frozen=True, slots=True)
class Txn:
    """One transaction of the history.

    ``id`` is the transaction's rank in invoke order (``T<id>`` in reports). ``type`` is "ok",
    "fail" or "info" (a transaction never completed is "info"). ``ops`` are those of the ok
    completion, with the values read; for fail and info they are those of the invoke, reads
    unknown. ``complete_ns`` and ``complete_at`` (event index) are None for info transactions.
    """

    id: int
    process: Any
    type: str
    ops: tuple[MicroOp, ...]
    invoke_ns: int
    complete_ns: int | None
    invoke_at: int
    complete_at: int | None

    @property
    def name(self) -> str:
        return f"T{self.id}"

    def describe(self) -> str:
        """One line such as ``T3 p1 ok [100 .. 250]: append "x" 4, r "y" [1, 2]``."""
        return describe_txn(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "process": self.process,
            "type": self.type,
            "value": [op.to_list() for op in self.ops],
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "invoke_at": self.invoke_at,
            "complete_at": self.complete_at,
        }


def describe_txn(t: Mapping[str, Any]) -> str:
    """One line for a transaction as ``Txn.to_dict`` (and so a report) gives it; a long read
    is cut to its last elements."""
    end = "?" if t["complete_ns"] is None else t["complete_ns"]
    ops = ", ".join(
        f"r {_show(k)} {'?' if v is None else _show_list(tuple(_freeze(e) for e in v))}"
        if f == "r" else f"{f} {_show(k)} {_show(v)}"
        for f, k, v in t["value"])
    return f"T{t['id']} p{t['process']} {t['type']} [{t['invoke_ns']} .. {end}]: {ops}"


def _show(value: Any) -> str:
    return json.dumps(value, default=repr)


def _show_list(elements: tuple[Any, ...], tail: int = 6) -> str:
    """A read list, cut to its last ``tail`` elements when longer."""
    shown = [_show(_thaw(e)) for e in elements[-tail:]]
    if len(elements) > tail:
        shown.insert(0, f"...{len(elements) - tail} more")
    return "[" + ", ".join(shown) + "]"


def transactions(history: Iterable[Mapping[str, Any]]) -> list[Txn]:
    """Pairs the ``txn`` invokes with their completions, in invoke order.

    Raises HistoryError on a malformed history (an invoke while the process has an open
    transaction, a completion without an invoke, a bad micro-operation, a completion before
    its invoke).
    """
    paired = pair_operations(history, ("txn",))

    txns = []
    for tid, (start, invoke, end, completion) in enumerate(paired):
        kind = "info" if completion is None else completion["type"]
        if kind == "ok":
            ops = _micro_ops(completion.get("value"), end, reads_known=True)
            complete_ns = _time(completion, end)
        else:
            ops = _micro_ops(invoke.get("value"), start, reads_known=False)
            complete_ns = None if kind == "info" else _time(completion, end)
        txns.append(Txn(tid, invoke.get("process"), kind, ops, _time(invoke, start),
                        complete_ns, start, None if kind == "info" else end))
    return txns


# Types whose values are their own frozen form (bool is not one: True == 1 in Python).
_PLAIN = frozenset({int, str, float, type(None)})


def _micro_ops(value: Any, at: int, *, reads_known: bool) -> tuple[MicroOp, ...]:
    if not isinstance(value, (list, tuple)):
        raise HistoryError(f"event {at}: a txn value must be a list of micro-operations, "
                           f"not {value!r}")
    ops = []
    for mop in value:
        if not (isinstance(mop, (list, tuple)) and len(mop) == 3 and mop[0] in ("append", "r")):
            raise HistoryError(f"event {at}: a micro-operation must be [\"append\"|\"r\", key, "
                               f"arg], not {mop!r}")
        f, key, arg = mop
        if f == "append":
            ops.append(MicroOp(f, _freeze(key), _freeze(arg)))
        elif not reads_known:
            ops.append(MicroOp(f, _freeze(key), None))
        elif arg is None or isinstance(arg, (list, tuple)):
            elements = tuple(arg or ())
            if not all(type(e) in _PLAIN for e in elements):  # the common case: ints
                elements = tuple(_freeze(e) for e in elements)
            ops.append(MicroOp(f, _freeze(key), elements))
        else:
            raise HistoryError(f"event {at}: a read must return a list, not {arg!r}")
    return tuple(ops)


# ------------------------------------------------------------------------------ the findings


@dataclass(slots=True)
class _Read:
    """A read of a committed transaction. ``external``: made before the transaction appended
    to the key (only the first such read of a key counts). ``compatible``: a prefix of the
    key's version order."""

    txn: Txn
    key: Any
    elements: tuple[Any, ...]
    external: bool
    compatible: bool = True


class _Findings:
    """The anomalies found, at most ``max_reported`` described per type, all counted."""

    def __init__(self, max_reported: int) -> None:
        self.max_reported = max_reported
        self.described: dict[str, list[dict[str, Any]]] = {}
        self.counts: dict[str, int] = {}

    def tally(self, kind: str, n: int) -> None:
        """Counts ``n`` more anomalies of ``kind`` that are not described."""
        self.counts[kind] = self.counts.get(kind, 0) + n

    def add(self, kind: str, txns: Iterable[Txn], explanation: str,
            cycle: list[dict[str, Any]] | None = None, **details: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        entries = self.described.setdefault(kind, [])
        if len(entries) < self.max_reported:
            entry = {"txns": [t.to_dict() for t in txns], "cycle": cycle or [],
                     "explanation": explanation}
            entry.update(details)
            entries.append(entry)


# ------------------------------------------------------------------- checks without the graph


def _check_reads(reads: list[_Read], writer: dict[tuple[Any, Any], Txn],
                 final_append: dict[tuple[int, Any], Any], found: _Findings) -> None:
    """duplicate-elements, garbage, G1a (aborted read) and G1b (intermediate read)."""
    appended: dict[Any, set[Any]] = {}  # key -> every value appended to it
    failed: dict[Any, set[Any]] = {}    # key -> the values failed transactions appended
    for (key, value), w in writer.items():
        appended.setdefault(key, set()).add(value)
        if w.type == "fail":
            failed.setdefault(key, set()).add(value)
    for r in reads:
        t, key, elements = r.txn, r.key, r.elements
        k = _show(_thaw(key))
        # Set operations first: reads are long and almost always clean.
        if len(set(elements)) != len(elements):
            seen: set[Any] = set()
            duplicates = [e for e in elements if e in seen or seen.add(e)]
            found.add("duplicate-elements", [t],
                      f"{t.name} read {k} = {_show_list(elements)}, which contains "
                      f"{_show(_thaw(duplicates))} more than once",
                      key=_thaw(key), read=_thaw(elements), duplicates=_thaw(duplicates))
        if not appended.get(key, set()).issuperset(elements):
            garbage = [e for e in elements if (key, e) not in writer]
            found.add("garbage", [t],
                      f"{t.name} read {k} = {_show_list(elements)}, but nobody appended "
                      f"{_show(_thaw(garbage))} to {k}",
                      key=_thaw(key), read=_thaw(elements), values=_thaw(garbage))
        if not failed.get(key, set()).isdisjoint(elements):
            aborted: dict[int, list[Any]] = {}
            for e in elements:
                w = writer.get((key, e))
                if w is not None and w.type == "fail":
                    aborted.setdefault(w.id, []).append(e)
            for values in aborted.values():
                w = writer[(key, values[0])]
                found.add("G1a", [t, w],
                          f"{t.name} read {k} = {_show_list(elements)}, which contains "
                          f"{_show(_thaw(values))} appended by {w.name}, which failed",
                          key=_thaw(key), values=_thaw(values))
        if r.elements:
            last = r.elements[-1]
            w = writer.get((key, last))
            if w is not None and w is not t and w.type != "fail":
                final = final_append[(w.id, key)]
                if final != last:
                    found.add("G1b", [t, w],
                              f"{t.name} read {k} = {_show_list(r.elements)}, ending in "
                              f"{_show(_thaw(last))}, an intermediate append of {w.name}, "
                              f"whose last append to {k} was {_show(_thaw(final))}",
                              key=_thaw(key), value=_thaw(last), final=_thaw(final))


def _check_internal(t: Txn, found: _Findings) -> None:
    """A committed transaction must see its own appends, in order, and what it read before."""
    known: dict[Any, list[Any]] = {}    # key -> the list as the txn must now see it
    pending: dict[Any, list[Any]] = {}  # key -> own appends, the list before them unknown
    for op in t.ops:
        if op.f == "append":
            if op.key in known:
                known[op.key].append(op.value)
            else:
                pending.setdefault(op.key, []).append(op.value)
            continue
        read = list(op.value)
        k = _show(_thaw(op.key))
        if op.key in known:
            expected = known[op.key]
            if read != expected:
                found.add("internal", [t],
                          f"{t.name} read {k} = {_show_list(tuple(read))}, but its earlier "
                          f"reads and appends imply {_show_list(tuple(expected))}",
                          key=_thaw(op.key), read=_thaw(read), expected=_thaw(expected))
        else:
            mine = pending.pop(op.key, [])
            if len(read) < len(mine) or read[len(read) - len(mine):] != mine:
                found.add("internal", [t],
                          f"{t.name} appended {_show(_thaw(mine))} to {k} and then read "
                          f"{_show_list(tuple(read))}, which does not end with those appends",
                          key=_thaw(op.key), read=_thaw(read), expected_suffix=_thaw(mine))
        known[op.key] = read


def _version_orders(reads: list[_Read], found: _Findings) -> dict[Any, tuple[Any, ...]]:
    """Each key's version order (its longest read); reads not a prefix of it are
    incompatible-order, and marked so."""
    by_key: dict[Any, list[_Read]] = {}
    for r in reads:
        by_key.setdefault(r.key, []).append(r)
    orders = {}
    for key, key_reads in by_key.items():
        longest = max(key_reads, key=lambda r: len(r.elements))  # the first of the longest
        order = longest.elements
        reported: set[tuple[Any, ...]] = set()
        for r in key_reads:
            if order[:len(r.elements)] == r.elements:
                continue
            r.compatible = False
            if r.elements in reported:
                continue
            reported.add(r.elements)
            k = _show(_thaw(key))
            found.add("incompatible-order", [longest.txn, r.txn],
                      f"{longest.txn.name} read {k} = {_show_list(order)} and {r.txn.name} "
                      f"read {_show_list(r.elements)}: neither is a prefix of the other",
                      key=_thaw(key), reads=[_thaw(order), _thaw(r.elements)])
        orders[key] = order
    return orders


def _check_append_orders(reads: list[_Read], orders: dict[Any, tuple[Any, ...]],
                         writer: dict[tuple[Any, Any], Txn],
                         appends_of: dict[tuple[int, Any], list[Any]],
                         found: _Findings) -> None:
    """incompatible-order of a key's version order with one transaction's own appends to the
    key: a transaction's appends enter the list in the order it made them, so no read holds
    one of them without each earlier one, before it. Every read compatible with the version
    order is a prefix of it, so checking the order finds each such read; the shortest read
    of another transaction that shows the first break is reported (a transaction's reads of
    its own appends are checked as ``internal``)."""
    by_key: dict[Any, list[_Read]] = {}
    for r in reads:
        if r.compatible:
            by_key.setdefault(r.key, []).append(r)
    for key, order in orders.items():
        taken: dict[int, int] = {}  # txn id -> how many of its appends the order holds so far
        for i, e in enumerate(order):
            w = writer.get((key, e))
            if w is None:
                continue  # garbage, reported as such
            mine = appends_of[(w.id, key)]
            done = taken.get(w.id, 0)
            if done < len(mine) and mine[done] == e:
                taken[w.id] = done + 1
                continue
            if e in mine[:done]:
                continue  # a second copy: duplicate-elements, reported as such
            witnesses = [r for r in by_key.get(key, ()) if len(r.elements) > i and r.txn is not w]
            if not witnesses:
                break  # only the writer's own reads show it: internal
            r = min(witnesses, key=lambda r: len(r.elements))
            k = _show(_thaw(key))
            found.add("incompatible-order", [r.txn, w],
                      f"{r.txn.name}'s read of {k}, {_show_list(r.elements[:i + 1])} up to "
                      f"position {i}, holds {w.name}'s append of {_show(_thaw(e))} without, "
                      f"before it, its earlier append of {_show(_thaw(mine[done]))}: "
                      f"{w.name} appended {_show(_thaw(mine))} to {k} in that order",
                      key=_thaw(key), read=_thaw(r.elements), writer_appends=_thaw(mine))
            break


def _check_lost_updates(reads: list[_Read], appended: set[tuple[int, Any]],
                        found: _Findings) -> None:
    """Two committed transactions that read the same version of a key and both appended."""
    groups: dict[tuple[Any, tuple[Any, ...]], list[Txn]] = {}
    for r in reads:
        if r.external and (r.txn.id, r.key) in appended:
            groups.setdefault((r.key, r.elements), []).append(r.txn)
    for (key, version), txns in groups.items():
        if len(txns) < 2:
            continue
        k = _show(_thaw(key))
        names = ", ".join(t.name for t in txns[:-1]) + f" and {txns[-1].name}"
        found.add("lost-update", txns,
                  f"{names} each read {k} = {_show_list(version)} and then appended to it, "
                  f"and all committed: each later one appended to a version it had not read",
                  key=_thaw(key), read=_thaw(version))


# --------------------------------------------------------------------------------- the graph


class _Graph:
    """Edges between transaction ids: ``succ[a][b]`` is the set of kinds (bits) of a → b, and
    ``why[(a, b, kind)]`` the evidence for the first edge of that kind."""

    def __init__(self, n: int) -> None:
        self.succ: list[dict[int, int]] = [{} for _ in range(n)]
        self.why: dict[tuple[int, int, int], dict[str, Any]] = {}

    def link(self, a: int, b: int, kind: int, **why: Any) -> None:
        if a == b:
            return
        kinds = self.succ[a].get(b, 0)
        if not kinds & kind:
            self.succ[a][b] = kinds | kind
            self.why[(a, b, kind)] = why

    def count(self, kind: int) -> int:
        return sum(1 for s in self.succ for kinds in s.values() if kinds & kind)


# A read of a key's latest observed version gets an rw edge to at most this many of the
# committed transactions whose appends to the key nobody read (the first ones invoked): any
# subset of these edges is sound, and the cap keeps a history whose reads lag far behind its
# appends from growing a quadratic number of edges.
_MAX_UNREAD_LINKS = 64


def _build_graph(txns: list[Txn], nodes: set[int], reads: list[_Read],
                 orders: dict[Any, tuple[Any, ...]], observed: dict[Any, set[Any]],
                 writer: dict[tuple[Any, Any], Txn]) -> _Graph:
    g = _Graph(len(txns))

    def node_writer(key: Any, value: Any) -> int | None:
        w = writer.get((key, value))
        return w.id if w is not None and w.id in nodes else None

    for key, order in orders.items():
        for before, after in zip(order, order[1:]):
            a, b = node_writer(key, before), node_writer(key, after)
            if a is not None and b is not None:
                g.link(a, b, WW, key=key, value=before, next=after)
    # Committed appends that no read returned come after every element that one did (step 1).
    # An info transaction some of whose appends were read committed too (it is a node), so its
    # unread appends are as certain as those of an ok one.
    later: dict[Any, list[tuple[int, Any]]] = {}  # key -> (writer, its first such append)
    for t in txns:
        if t.id not in nodes:
            continue
        seen: set[Any] = set()
        for op in t.ops:
            if (op.f == "append" and op.key in orders and op.key not in seen
                    and op.value not in observed[op.key]):
                seen.add(op.key)
                later.setdefault(op.key, []).append((t.id, op.value))
    unread_appenders = {(u, key) for key, writers in later.items() for u, _ in writers}
    racers: dict[Any, set[int]] = {}  # key -> readers of its latest version with unread appends
    for r in reads:
        if (r.external and r.compatible and len(r.elements) == len(orders[r.key])
                and (r.txn.id, r.key) in unread_appenders):
            racers.setdefault(r.key, set()).add(r.txn.id)
    for key, writers in later.items():
        order = orders[key]
        if order:
            w = node_writer(key, order[-1])
            if w is not None:
                for u, value in writers:
                    g.link(w, u, WW, key=key, value=order[-1], next=value, unread=True)

    for r in reads:
        if not r.external:
            continue
        t = r.txn.id
        if r.elements:
            w = node_writer(r.key, r.elements[-1])
            if w is not None:
                g.link(w, t, WR, key=r.key, value=r.elements[-1])
        order = orders[r.key]
        if not r.compatible:
            continue
        # A read that ends in another transaction's intermediate append (G1b, reported above)
        # read no version of that writer: it gives no rw edge to it.
        last_writer = node_writer(r.key, r.elements[-1]) if r.elements else None
        if len(r.elements) < len(order):
            w = node_writer(r.key, order[len(r.elements)])
            if w is not None and w != last_writer:
                g.link(t, w, RW, key=r.key, read=r.elements, next=order[len(r.elements)])
        else:
            # Two transactions that both read this version and made unread appends (a lost
            # update, reported as such) have rw edges both ways, and a ww edge of unknown
            # direction: the rw edges alone would make a two-rw cycle of what is surely a
            # one-rw cycle, so neither is drawn.
            racing = racers.get(r.key, ()) if t in racers.get(r.key, ()) else ()
            for u, value in later.get(r.key, ())[:_MAX_UNREAD_LINKS]:
                if u != last_writer and u not in racing:
                    g.link(t, u, RW, key=r.key, read=r.elements, next=value, unread=True)

    # process: from the last committed transaction of a process to each later one
    last_ok: dict[Any, Txn] = {}
    for t in txns:
        if t.id not in nodes:
            continue
        prior = last_ok.get(t.process)
        if prior is not None:
            g.link(prior.id, t.id, PROCESS, process=t.process)
        if t.type == "ok":
            last_ok[t.process] = t

    # realtime: a transitive reduction through the frontier (see the module docstring). At
    # equal times the invoke is taken first: an edge needs completion < invoke, strictly.
    events = []
    for t in txns:
        if t.id in nodes:
            events.append((t.invoke_ns, 0, t.id))
            if t.complete_ns is not None:
                events.append((t.complete_ns, 1, t.id))
    events.sort()
    frontier: dict[int, None] = {}  # an ordered set
    preds: dict[int, tuple[int, ...]] = {}
    for _, completes, tid in events:
        if not completes:
            preds[tid] = tuple(frontier)
            for p in preds[tid]:
                g.link(p, tid, REALTIME, complete_ns=txns[p].complete_ns,
                       invoke_ns=txns[tid].invoke_ns)
        else:
            for p in preds[tid]:
                frontier.pop(p, None)
            frontier[tid] = None
    return g


# ----------------------------------------------------------------------------------- cycles


def _sccs(nodes: Iterable[int], succ: list[dict[int, int]], mask: int,
          within: set[int] | frozenset[int]) -> list[list[int]]:
    """Tarjan's strongly connected components of the edges with a kind in ``mask`` between
    ``within``'s nodes, in reverse topological order (a component comes after every component
    it reaches). Iterative."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[list[int]] = []

    def successors(v: int) -> Iterable[int]:
        return (w for w, kinds in succ[v].items() if kinds & mask and w in within)

    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors(root)))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(successors(w))))
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    if low[v] < low[u]:
                        low[u] = low[v]
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    out.append(component)
    return out


def _nontrivial(components: list[list[int]]) -> list[list[int]]:
    # No edge links a transaction to itself, so a component of one node has no cycle.
    return [sorted(c) for c in components if len(c) > 1]


def _path(src: int, dst: int, succ: list[dict[int, int]], mask: int,
          within: set[int] | frozenset[int]) -> list[int] | None:
    """A shortest path src → ... → dst (breadth first); with src == dst, a shortest cycle."""
    parent: dict[int, int] = {}
    queue = deque([src])
    seen = {src}
    while queue:
        v = queue.popleft()
        for w, kinds in succ[v].items():
            if not kinds & mask or w not in within:
                continue
            if w == dst:
                path = [w, v]
                while v != src:
                    v = parent[v]
                    path.append(v)
                path.reverse()
                return path
            if w not in seen:
                seen.add(w)
                parent[w] = v
                queue.append(w)
    return None


def _fewest_rw_path(src: int, dst: int, succ: list[dict[int, int]], allowed: int,
                    within: set[int] | frozenset[int]) -> tuple[int, list[int]] | None:
    """A path src → ... → dst with as few edges that are only rw as possible (0-1 BFS)."""
    free = allowed & ~RW
    dist = {src: 0}
    parent: dict[int, int] = {}
    queue = deque([src])
    done: set[int] = set()
    while queue:
        v = queue.popleft()
        if v in done:
            continue
        done.add(v)
        if v == dst:
            path = [v]
            while v != src:
                v = parent[v]
                path.append(v)
            path.reverse()
            return dist[dst], path
        for w, kinds in succ[v].items():
            if not kinds & allowed or w not in within:
                continue
            cost = dist[v] + (0 if kinds & free else 1)
            if cost < dist.get(w, cost + 1):
                dist[w] = cost
                parent[w] = v
                if kinds & free:
                    queue.appendleft(w)
                else:
                    queue.append(w)
    return None


# How many candidate rw edges the G-single and G2-item searches try, keeping the shortest cycle.
_CANDIDATES = 16


def _rw_edges(within: list[int], succ: list[dict[int, int]], within_set: set[int]):
    for a in within:
        for b, kinds in succ[a].items():
            if kinds & RW and b in within_set:
                yield a, b


def _single_rw_cycles(within: list[int], within_set: set[int], succ: list[dict[int, int]],
                      allowed: int, limit: int) -> tuple[list[list[int]], int]:
    """Cycles with exactly one rw edge (first node repeated at the end), the caller having
    made sure there is none with fewer, and how many rw edges close one.

    The cycles are the shortest through each rw edge that closes one; of the first
    ``max(limit, _CANDIDATES)`` such edges, the ``limit`` shortest cycles are returned.
    """
    flow = allowed & ~RW
    components = _sccs(within, succ, flow, within_set)
    comp_of = {v: c for c, comp in enumerate(components) for v in comp}
    reach = [0] * len(components)  # bit c: reaches component c over non-rw edges
    for c, comp in enumerate(components):
        bits = 1 << c
        for v in comp:
            for w, kinds in succ[v].items():
                if kinds & flow and w in within_set:
                    bits |= reach[comp_of[w]]
        reach[c] = bits
    closing = [(a, b) for a, b in _rw_edges(within, succ, within_set)
               if reach[comp_of[b]] >> comp_of[a] & 1]
    cycles = [[a] + _path(b, a, succ, flow, within_set)
              for a, b in closing[:max(limit, _CANDIDATES)]]
    cycles.sort(key=len)
    return cycles[:limit], len(closing)


def _any_cycle(within: list[int], within_set: set[int], succ: list[dict[int, int]],
               allowed: int) -> list[int] | None:
    """A cycle (first node repeated at the end) through one of the first rw edges, with the
    fewest rw edges found."""
    best = None
    for i, (a, b) in enumerate(_rw_edges(within, succ, within_set)):
        if i >= _CANDIDATES:
            break
        found = _fewest_rw_path(b, a, succ, allowed, within_set)
        if found is not None and (best is None or (found[0], len(found[1])) < best[0]):
            best = ((found[0], len(found[1])), [a] + found[1])
    return None if best is None else best[1]


def _nonadjacent_cycle(within: list[int], within_set: set[int], succ: list[dict[int, int]],
                       allowed: int) -> list[int] | None:
    """A closed walk (first node repeated at the end) whose rw edges are never adjacent
    (cyclically), or None: a cycle of the relation (dependency ; rw?), which snapshot isolation
    keeps acyclic (Cerone & Gotsman, "Analysing snapshot isolation"; Elle's G-nonadjacent).

    Linear: the strongly connected components of a graph of states (transaction ``v`` as
    ``2v``, or ``2v + 1`` when entered by an rw edge, which no rw edge may leave); an rw step
    inside one component lies on such a walk."""
    free = allowed & ~RW
    step_free, step_rw = 1, 2
    states: dict[int, dict[int, int]] = {}
    for v in within:
        out: dict[int, int] = {}
        for w, kinds in succ[v].items():
            if w not in within_set:
                continue
            if kinds & free:
                out[2 * w] = step_free
            if kinds & RW & allowed:
                out[2 * w + 1] = step_rw
        states[2 * v] = out
        states[2 * v + 1] = {s: k for s, k in out.items() if k == step_free}
    every = set(states)
    for component in _sccs(list(states), states, step_free | step_rw, every):
        if len(component) < 2:
            continue
        inside = set(component)
        for s in component:
            for t, kind in states[s].items():
                if kind == step_rw and t in inside:
                    back = _path(t, s, states, step_free | step_rw, inside)
                    return [x // 2 for x in [s, *back]]
    return None


def _label(kinds: int, allowed: int) -> int:
    for kind in _LABEL_PREFERENCE:
        if kinds & allowed & kind:
            return kind
    raise AssertionError("an edge of a cycle carries no allowed kind")


def _classify(labels: list[int]) -> tuple[int, str]:
    """(rank, name) of a cycle from the kinds its edges are named by."""
    rw = labels.count(RW)
    if rw == 0:
        rank = 1 if WR in labels else 0
    elif rw == 1:
        rank = 2
    else:
        adjacent = any(a == RW and b == RW for a, b in zip(labels, labels[1:] + labels[:1]))
        rank = 4 if adjacent else 3
    name = CYCLE_CLASSES[rank]
    if REALTIME in labels:
        name += "-realtime"
    elif PROCESS in labels:
        name += "-process"
    return rank, name


def _best_cycles(component: list[int], succ: list[dict[int, int]], extra: int,
                 better_than: int, limit: int) -> tuple[int, list[list[int]], int, int] | None:
    """Cycles of the lowest class below rank ``better_than`` among ``component``'s nodes,
    over dependency edges and the ``extra`` kinds: (rank, up to ``limit`` example cycles, how
    many were found, the edge kinds to name their edges by), each cycle listing its first node
    again at the end.

    How many: for G0 and G1c, the strongly connected components of their edges; for G-single,
    the rw edges that close a cycle; for G2-item, one (the component).
    """
    within = set(component)
    allowed = DATA | extra
    for rank, mask in ((0, WW | extra), (1, WW | WR | extra)):
        if rank >= better_than:
            return None
        inner = _nontrivial(_sccs(component, succ, mask, within))
        if inner:
            return (rank, [_path(c[0], c[0], succ, mask, set(c)) for c in inner[:limit]],
                    len(inner), mask)
    if better_than > 2:
        cycles, count = _single_rw_cycles(component, within, succ, allowed, limit)
        if cycles:
            return 2, cycles, count, allowed
    if better_than > 3:
        cycle = _nonadjacent_cycle(component, within, succ, allowed)
        if cycle is not None:
            return 3, [cycle], 1, allowed
    if better_than > 4:
        cycle = _any_cycle(component, within, succ, allowed)
        if cycle is not None:
            return 4, [cycle], 1, allowed
    return None


def _find_cycles(txns: list[Txn], nodes: set[int], g: _Graph, found: _Findings) -> int:
    """Reports the cycles of each strongly connected component; returns how many nontrivial
    components the whole graph has."""
    components = _nontrivial(_sccs(sorted(nodes), g.succ, ALL_EDGES, nodes))
    # At least one example cycle, even when none is described: it names the class found.
    limit = max(found.max_reported, 1)
    for component in components:
        within = set(component)
        ranks: list[tuple[int, int]] = []  # (a node of a sub-component, best rank in it)
        for extra in (0, PROCESS):
            stage: list[tuple[int, int]] = []
            for sub in _nontrivial(_sccs(component, g.succ, DATA | extra, within)):
                sub_set = set(sub)
                prior = min((rank for v, rank in ranks if v in sub_set), default=_NO_CYCLE)
                result = _best_cycles(sub, g.succ, extra, prior, limit)
                if result is not None:
                    _report_cycles(txns, g, result, found)
                    stage.append((sub[0], result[0]))
            ranks += stage
        prior = min((rank for _, rank in ranks), default=_NO_CYCLE)
        result = _best_cycles(component, g.succ, PROCESS | REALTIME, prior, limit)
        if result is not None:
            _report_cycles(txns, g, result, found)
    return len(components)


def _report_cycles(txns: list[Txn], g: _Graph, result: tuple[int, list[list[int]], int, int],
                   found: _Findings) -> None:
    rank, cycles, count, allowed = result
    name = ""
    for cycle in cycles:
        labels = [_label(g.succ[a][b], allowed) for a, b in zip(cycle, cycle[1:])]
        label_rank, name = _classify(labels)
        assert label_rank == rank, (cycle, labels)
        edges = []
        sentences = []
        for (a, b), kind in zip(zip(cycle, cycle[1:]), labels):
            why = g.why[(a, b, kind)]
            edges.append({"from": a, "to": b, "type": EDGE_NAMES[kind],
                          **{k: _thaw(v) for k, v in why.items()}})
            sentences.append(_explain_edge(txns[a], txns[b], kind, why))
        rw = labels.count(RW)
        note = _CLASS_NOTES[CYCLE_CLASSES[rank]]
        if REALTIME in labels:
            note += ", which needs real-time order"
        elif PROCESS in labels:
            note += ", which needs process order"
        explanation = (f"{'; '.join(sentences)}. A cycle of {len(cycle) - 1} transactions "
                       f"with {rw} rw edge{'s' if rw != 1 else ''}: {note}.")
        found.add(name, [txns[v] for v in cycle[:-1]], explanation, cycle=edges)
    found.tally(name, count - len(cycles))


def _explain_edge(a: Txn, b: Txn, kind: int, why: Mapping[str, Any]) -> str:
    if kind == WW and why.get("unread"):
        k = _show(_thaw(why["key"]))
        return (f"{a.name} appended {_show(_thaw(why['value']))} to {k}, the last element "
                f"read, and {b.name} committed an append of {_show(_thaw(why['next']))} that "
                f"no read returned, so came later (ww)")
    if kind == WW:
        k = _show(_thaw(why["key"]))
        return (f"{a.name} appended {_show(_thaw(why['value']))} to {k} and {b.name} appended "
                f"{_show(_thaw(why['next']))} right after it (ww)")
    if kind == WR:
        k = _show(_thaw(why["key"]))
        return (f"{b.name} read {k} ending in {_show(_thaw(why['value']))}, which {a.name} "
                f"appended (wr)")
    if kind == RW and why.get("unread"):
        k = _show(_thaw(why["key"]))
        return (f"{a.name} read {k} = {_show_list(why['read'])}, the latest version read, and "
                f"{b.name} committed an append of {_show(_thaw(why['next']))} that no read "
                f"returned, so came later (rw)")
    if kind == RW:
        k = _show(_thaw(why["key"]))
        return (f"{a.name} read {k} = {_show_list(why['read'])} and {b.name} appended "
                f"{_show(_thaw(why['next']))}, the next element (rw)")
    if kind == PROCESS:
        return (f"{a.name} committed before process {why['process']!r} invoked {b.name} "
                f"(process)")
    return (f"{a.name} completed at {why['complete_ns']} ns, before {b.name} was invoked at "
            f"{why['invoke_ns']} ns (realtime)")


# -------------------------------------------------------------------------------- the check


def check(
    history: Iterable[Mapping[str, Any]],
    *,
    consistency: str = "strong-snapshot-isolation",
    max_reported: int = DEFAULT_MAX_REPORTED,
) -> dict[str, Any]:
    """Checks a list-append history against a consistency model.

    Args:
        history: the events (FAULTS.md §4); events whose ``f`` is not ``txn`` are skipped.
        consistency: one of ``CONSISTENCY_MODELS``; ``FORBIDDEN[consistency]`` are the anomaly
            types that make the history invalid.
        max_reported: at most this many anomalies of each type are described.

    Returns:
        A JSON-ready dict: ``valid`` (no forbidden anomaly), ``consistency``,
        ``anomaly_types`` (every type found, sorted, allowed ones included), ``forbidden``
        (those of them the model forbids), ``anomalies`` (type → list of
        ``{"txns": [...], "cycle": [edges], "explanation": str, ...}``; the transactions
        summarised by ``Txn.to_dict``, the edges as ``{"from", "to", "type", ...evidence}``)
        and ``stats``.

    Raises:
        HistoryError: the history is malformed.
        ValueError: unknown consistency model.
    """
    if consistency not in FORBIDDEN:
        raise ValueError(f"unknown consistency model {consistency!r}; "
                         f"expected one of {', '.join(CONSISTENCY_MODELS)}")
    started = time.perf_counter()
    txns = transactions(history)
    found = _Findings(max_reported)

    writer: dict[tuple[Any, Any], Txn] = {}        # (key, value) -> the txn that appended it
    final_append: dict[tuple[int, Any], Any] = {}  # (txn id, key) -> its last append there
    appends_of: dict[tuple[int, Any], list[Any]] = {}  # (txn id, key) -> its appends there
    for t in txns:
        for op in t.ops:
            if op.f != "append":
                continue
            other = writer.get((op.key, op.value))
            if other is not None:
                raise HistoryError(f"{_show(_thaw(op.value))} is appended to "
                                   f"{_show(_thaw(op.key))} by both {other.name} (event "
                                   f"{other.invoke_at}) and {t.name} (event {t.invoke_at}); "
                                   f"appended values must be unique per key")
            writer[(op.key, op.value)] = t
            final_append[(t.id, op.key)] = op.value
            appends_of.setdefault((t.id, op.key), []).append(op.value)

    reads: list[_Read] = []
    for t in txns:
        if t.type != "ok":
            continue
        _check_internal(t, found)
        touched: set[Any] = set()
        for op in t.ops:
            if op.f == "r":
                reads.append(_Read(t, op.key, op.value, external=op.key not in touched))
            touched.add(op.key)
    _check_reads(reads, writer, final_append, found)
    orders = _version_orders(reads, found)
    _check_append_orders(reads, orders, writer, appends_of, found)
    _check_lost_updates(reads, set(final_append), found)

    # Nodes: committed transactions, and info transactions some of whose appends were read.
    observed = {key: set(order) for key, order in orders.items()}  # key -> values read
    for r in reads:
        if not r.compatible:
            observed[r.key].update(r.elements)
    nodes = {t.id for t in txns
             if t.type == "ok" or (t.type == "info" and any(
                 op.f == "append" and op.value in observed.get(op.key, ()) for op in t.ops))}
    graph = _build_graph(txns, nodes, reads, orders, observed, writer)
    components = _find_cycles(txns, nodes, graph, found)

    types = sorted(found.described)
    forbidden = [kind for kind in types if kind in FORBIDDEN[consistency]]
    return {
        "valid": not forbidden,
        "consistency": consistency,
        "anomaly_types": types,
        "forbidden": forbidden,
        "anomalies": dict(sorted(found.described.items())),
        "stats": {
            "txns": len(txns),
            **{kind: sum(t.type == kind for t in txns) for kind in ("ok", "fail", "info")},
            "info_observed": sum(t.type == "info" for t in txns if t.id in nodes),
            "keys": len({op.key for t in txns for op in t.ops}),
            "reads": len(reads),
            "appends": len(writer),
            "edges": {name: graph.count(kind) for kind, name in EDGE_NAMES.items()},
            "cycle_components": components,
            "anomaly_counts": dict(sorted(found.counts.items())),
            "seconds": round(time.perf_counter() - started, 6),
        },
    }


# ------------------------------------------------------------------------------------ the CLI


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("history", metavar="HISTORY.jsonl",
                        help="history in the JSON-lines shape of FAULTS.md §4")
    parser.add_argument("--consistency", choices=CONSISTENCY_MODELS,
                        default="strong-snapshot-isolation",
                        help="the model to check against (default: %(default)s)")
    parser.add_argument("--max-reported", type=int, default=DEFAULT_MAX_REPORTED, metavar="N",
                        help="describe at most N anomalies of each type (default: %(default)s)")
    parser.add_argument("--show", type=int, default=2, metavar="K",
                        help="print at most K anomalies of each type (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.set_defaults(func=run)
    return parser


_DESCRIPTION = ("Checks a JSON-lines history of list-append transactions for isolation "
                "anomalies (Elle's method). Exit status: 0 valid, 1 an anomaly the consistency "
                "model forbids, 2 unreadable history.")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``elle`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "elle", help="check a list-append history for isolation anomalies",
        description=_DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    """Checks ``args.history``; returns 0 (valid), 1 (invalid) or 2 (bad input)."""
    try:
        result = check(load_history(args.history), consistency=args.consistency,
                       max_reported=args.max_reported)
    except (OSError, ValueError) as e:
        print(f"{args.history}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=repr))
        return 0 if result["valid"] else 1
    s = result["stats"]
    print(f"{args.history}: {s['txns']} transactions ({s['ok']} ok, {s['fail']} fail, "
          f"{s['info']} info) on {s['keys']} keys; {sum(s['edges'].values())} edges, "
          f"{s['cycle_components']} cyclic components; {s['seconds']:.2f} s")
    allowed = [k for k in result["anomaly_types"] if k not in result["forbidden"]]
    verdict = "valid" if result["valid"] else "NOT valid"
    line = f"{verdict} under {result['consistency']}"
    if result["forbidden"]:
        line += f": {', '.join(result['forbidden'])}"
    if allowed:
        line += f" (also found, allowed: {', '.join(allowed)})"
    print(line)
    for kind in result["anomaly_types"]:
        entries = result["anomalies"][kind]
        print(f"\n{kind}: {s['anomaly_counts'][kind]} found")
        for entry in entries[:args.show]:
            for t in entry["txns"]:
                print(f"  {describe_txn(t)}")
            print(f"  -> {entry['explanation']}")
        if s["anomaly_counts"][kind] > args.show:
            print(f"  ... and {s['anomaly_counts'][kind] - args.show} more")
    return 0 if result["valid"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m bench.elle",
                                                description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
