"""Per-key linearizability checker for register histories (the WGL algorithm).

``python -m bench.wgl HISTORY.jsonl`` checks a history written in the JSON-lines shape of
FAULTS.md §4 and exits 1 when it is not linearizable.

The history
-----------
One event per line (or per dict when called from Python)::

    {"process": 3, "type": "invoke", "f": "cas", "key": "k7", "value": [1, 2], "time_ns": 1200}
    {"process": 3, "type": "ok",     "f": "cas", "key": "k7", "value": [1, 2], "time_ns": 1500}

Each process has at most one open operation. An ``invoke`` is closed by the process's next
``ok`` (it happened), ``fail`` (it certainly did not happen: the operation is dropped) or
``info`` (unknown: it may take effect at any time after its invoke, or never; its return is
+infinity). An invoke that is never closed is treated like ``info``. Only ``read``, ``write`` and
``cas`` events are considered; nemesis events and other workloads in the same file are skipped.

The register model: ``write v`` sets the value; ``read`` returns it (the invoke carries
``None``, the ``ok`` the value read); ``cas [expected, new]`` sets ``new`` if and only if the
value equals ``expected``. An ``ok`` cas succeeded; a cas that found a different value must be
reported as ``fail``. A read that ended in ``info`` constrains nothing and is dropped. Values are
compared as JSON values (``true`` differs from ``1``; lists and objects compare structurally).

The algorithm
-------------
A history is linearizable if each operation can be given a point in time between its invoke
and its return such that the operations, applied in the order of those points, are a legal
sequential execution of the register (Herlihy & Wing 1990). Linearizability is local
("P-compositional"): a history over many registers is linearizable if and only if the
sub-history of every key is, so the history is partitioned by key first and each key is
checked on its own, which keeps every search small.

Each key is checked with the algorithm of Wing & Gong ("Testing and verifying concurrent
objects", J. Parallel Distrib. Comput. 17, 1993) with the memoization of Lowe ("Testing for
linearizability", Concurrency and Computation: Practice and Experience 29(4), 2017), as in
Knossos and Porcupine:

* the invoke ("call") and return events are kept in a doubly linked list ordered by time; an
  operation is a candidate to be linearized next if its call comes before the first return
  still in the list (every operation whose return precedes that call has been linearized);
* linearizing a candidate applies it to the model and removes ("lifts") its call and return
  from the list; the step is pushed on an explicit stack so that it can be undone
  ("unlifted"; the links are restored in reverse order, as in dancing links);
* when the scan reaches a return whose operation is not linearized, that operation could not
  be placed before its return: the search backtracks to the last choice and tries the next
  candidate;
* the pair (set of linearized operations as a bit set, model state) is cached: a pair seen
  before leads to the same sub-search, which has already failed, and is not explored again.
  The set is kept as the number of operations (in call order) that are all linearized and a
  bit set of those after them: operations are linearized nearly in call order, so the bit set
  spans the operations in flight, not the whole history, and a long history's cache does not
  grow by a bit set of its length per configuration.

The search is iterative, so long histories do not hit Python's recursion limit. It ends as soon
as every determinate (``ok``) operation is linearized: an indeterminate operation is linearized
only where it explains what others observed, and the ones left over are taken never to have
happened (Herlihy & Wing's definition lets a pending operation be completed or removed). An
indeterminate cas, where it is linearized, must succeed. Before the search, indeterminate
writes and compare-and-sets whose resulting value no later operation compares against are
removed (see ``_prune_unobserved``); with unique written values, as the register workload uses,
this discards almost every indeterminate operation, which would otherwise stay concurrent with
the rest of the key's history and multiply the search space.

Ties in time are resolved conservatively: an operation that returns at the same ``time_ns`` as
another one is invoked counts as concurrent with it.

The search is exponential in the worst case (checking linearizability is NP-complete, Gibbons &
Korach 1997); ``max_states`` (distinct cached configurations per key) and ``timeout`` bound it,
and a key whose search exceeds the budget is reported as ``valid=None`` ("unknown").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_MAX_STATES",
    "HistoryError",
    "Op",
    "Result",
    "add_parser",
    "aggregate",
    "check",
    "check_key",
    "check_per_key",
    "load_history",
    "main",
    "operations",
    "run",
]

DEFAULT_MAX_STATES = 1_000_000
REGISTER_FUNCTIONS = frozenset({"read", "write", "cas"})

# How many search steps pass between two looks at the clock.
_CLOCK_EVERY = 1024


class HistoryError(ValueError):
    """The history is malformed (an event out of place, a missing field, a bad cas value)."""


# ------------------------------------------------------------------------------- the history


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of the history, with the values as recorded.

    ``value`` is the value written (``write``), read (``read``) or ``[expected, new]``
    (``cas``). ``return_ns`` is None for an indeterminate operation (``info`` or never
    completed), whose return is +infinity.
    """

    process: Any
    f: str
    key: Any
    value: Any
    call_ns: int
    return_ns: int | None

    @property
    def indeterminate(self) -> bool:
        return self.return_ns is None

    def describe(self) -> str:
        """One line such as ``p3 cas 1->2 [1200 .. 1500]``."""
        if self.f == "read":
            what = f"read -> {_show(self.value)}"
        elif self.f == "cas":
            expected, new = self.value
            what = f"cas {_show(expected)}->{_show(new)}"
        else:
            what = f"{self.f} {_show(self.value)}"
        end = "?(indeterminate)" if self.return_ns is None else str(self.return_ns)
        return f"p{self.process} {what} [{self.call_ns} .. {end}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "call_ns": self.call_ns,
            "return_ns": self.return_ns,
        }


def _show(value: Any) -> str:
    return json.dumps(value, default=repr)


def load_history(path: str) -> list[dict[str, Any]]:
    """The events of a JSON-lines history file (blank lines are skipped)."""
    events = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                raise HistoryError(f"{path}:{lineno}: not JSON: {e}") from None
            if not isinstance(event, dict):
                raise HistoryError(f"{path}:{lineno}: an event must be a JSON object")
            events.append(event)
    return events


def pair_operations(
    history: Iterable[Mapping[str, Any]], functions: Iterable[str], *, timed: bool = True,
) -> list[tuple[int, Mapping[str, Any], int | None, Mapping[str, Any] | None]]:
    """Pairs each process's invokes with their completions (FAULTS.md §4), for every checker.

    Only events whose ``f`` is in ``functions`` take part (nemesis events and other workloads
    are skipped). Returns ``(invoke index, invoke, completion index, completion)`` in invoke
    order; the completion is None for an operation never completed (as good as ``info``).
    With ``timed``, every event needs a numeric ``time_ns`` and a completion may not come before
    its invoke.

    Raises:
        HistoryError: an event that is not an object, a process that is a list or an object, a
            process invokes while it has an open operation, a completion has no open operation
            or completes another function, an unknown event type, or (timed) a bad or
            backwards ``time_ns``.
    """
    wanted = frozenset(functions)
    open_ops: dict[Any, tuple[int, Mapping[str, Any]]] = {}
    last_done: dict[Any, tuple[int, Any]] = {}  # process -> (event, time) of its last completion
    paired: list[tuple[int, Mapping[str, Any], int | None, Mapping[str, Any] | None]] = []
    for at, event in enumerate(history):
        # load_history only yields objects, but histories also come from Python callers.
        if not isinstance(event, Mapping):
            raise HistoryError(f"event {at}: an event must be an object, not {event!r:.80}")
        f = event.get("f")
        if isinstance(f, (list, dict)) or f not in wanted:
            continue
        kind = event.get("type")
        process = event.get("process")
        if isinstance(process, (list, dict)):
            raise HistoryError(f"event {at}: a process must be a number or a string, not "
                               f"{process!r}")
        if kind == "invoke":
            if process in open_ops:
                raise HistoryError(f"event {at}: process {process!r} invokes {f} while its "
                                   f"operation invoked at event {open_ops[process][0]} is open")
            if timed:
                t = _time(event, at)
                prior = last_done.get(process)
                if prior is not None and t < prior[1]:
                    raise HistoryError(f"event {at}: process {process!r} invokes at {t}, before "
                                       f"its previous operation completed (event {prior[0]})")
            open_ops[process] = (at, event)
        elif kind in ("ok", "fail", "info"):
            if process not in open_ops:
                raise HistoryError(f"event {at}: {kind} {f} of process {process!r}, which has "
                                   f"no open operation")
            start, invoke = open_ops.pop(process)
            if invoke["f"] != f:
                raise HistoryError(f"event {at}: {kind} {f} completes the {invoke['f']} "
                                   f"invoked at event {start}")
            if timed and _time(event, at) < _time(invoke, start):
                raise HistoryError(f"event {at}: completes before its invoke (event {start})")
            if timed:
                last_done[process] = (at, _time(event, at))
            paired.append((start, invoke, at, event))
        else:
            raise HistoryError(f"event {at}: unknown type {kind!r}")
    paired.extend((start, invoke, None, None) for start, invoke in open_ops.values())
    paired.sort(key=lambda item: item[0])
    return paired


def operations(history: Iterable[Mapping[str, Any]]) -> list[Op]:
    """Pairs invokes with their completions and returns the operations that may have happened.

    ``fail`` operations and indeterminate reads are left out; the result is in invoke order.
    Raises HistoryError on a malformed history.
    """
    done: list[Op] = []
    for at, invoke, _, completion in pair_operations(history, REGISTER_FUNCTIONS):
        kind = "info" if completion is None else completion["type"]
        if kind == "fail":
            continue
        f = invoke["f"]
        determinate = kind == "ok"
        if f == "read":
            if not determinate:
                continue  # an indeterminate read constrains nothing
            value = completion.get("value")
        else:
            value = invoke.get("value")
            if f == "cas" and not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise HistoryError(f"event {at}: a cas value must be [expected, new], "
                                   f"not {value!r}")
        return_ns = _time(completion, at) if determinate else None
        done.append(Op(invoke.get("process"), f, invoke.get("key"), value,
                       _time(invoke, at), return_ns))
    return done


def _time(event: Mapping[str, Any], at: int) -> int | float:
    """An event's ``time_ns``: a finite number (JSON's NaN and Infinity order nothing)."""
    t = event.get("time_ns")
    if (not isinstance(t, (int, float)) or isinstance(t, bool)
            or isinstance(t, float) and not math.isfinite(t)):
        raise HistoryError(f"event {at}: time_ns must be a finite number, not {t!r}")
    return t


# ------------------------------------------------------------------------ values as model state


@dataclass(frozen=True, slots=True)
class _Bool:
    """A JSON boolean: unlike Python's bool, never equal to the numbers 0 and 1."""

    value: bool


class _Object(frozenset):
    """A JSON object, frozen (never equal to a frozen list, which is a tuple)."""


def _freeze(value: Any) -> Any:
    """A hashable value that is equal to the frozen form of another value if and only if the
    two are equal JSON values."""
    if isinstance(value, bool):
        return _Bool(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _Object((k, _freeze(v)) for k, v in value.items())
    return value


def _thaw(value: Any) -> Any:
    """The JSON value of a frozen one (the inverse of ``_freeze``)."""
    if isinstance(value, _Bool):
        return value.value
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, _Object):
        return {k: _thaw(v) for k, v in value}
    return value


# --------------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class Result:
    """The verdict for one key, or for a whole history (see ``aggregate``).

    ``valid`` is True (linearizable), False (not linearizable) or None (unknown: the search
    exceeded its budget). ``ops`` and ``states`` count the operations checked and the distinct
    (linearized set, register value) configurations explored.

    For one key: when valid, ``linearized`` is a witness, a legal order of all determinate
    operations (and of the indeterminate ones that had to take effect). Otherwise it is the
    longest linearizable prefix the search found, ``state`` the register value after it, and
    ``unlinearizable`` the operations that were candidates to come next, none of which could:
    the first of them is the one whose return was reached without it being linearized.

    For a whole history the explanation fields are those of the first key (in order of first
    appearance) that is not linearizable, or else unknown; ``ops`` and ``states`` are totals.
    """

    valid: bool | None
    key: Any = None
    ops: int = 0
    states: int = 0
    linearized: tuple[Op, ...] = ()
    state: Any = None
    unlinearizable: tuple[Op, ...] = ()
    reason: str = ""
    keys: int = 1
    invalid_keys: tuple[Any, ...] = ()
    unknown_keys: tuple[Any, ...] = ()
    seconds: float = field(default=0.0, compare=False)

    @property
    def verdict(self) -> str:
        return {True: "linearizable", False: "NOT linearizable", None: "unknown"}[self.valid]

    def explain(self, max_prefix: int = 20) -> str:
        """A readable account of the verdict; the prefix is cut to its last ``max_prefix``."""
        lines = [f"key {_show(self.key)}: {self.verdict} ({self.ops} operations, "
                 f"{self.states} states explored)"]
        if self.valid:
            return lines[0]
        if self.reason:
            lines.append(self.reason)
        prefix = self.linearized
        lines.append(f"longest linearizable prefix found: {len(prefix)} operations, "
                     f"after which the register holds {_show(self.state)}")
        if len(prefix) > max_prefix:
            lines.append(f"  ... {len(prefix) - max_prefix} earlier operations")
            prefix = prefix[-max_prefix:]
        lines.extend(f"  {op.describe()}" for op in prefix)
        if self.unlinearizable:
            lines.append("none of these could be linearized next:")
            lines.extend(f"  {op.describe()}" for op in self.unlinearizable)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``valid`` is true, false or null for unknown)."""
        return {
            "valid": self.valid,
            "key": self.key,
            "ops": self.ops,
            "states": self.states,
            "keys": self.keys,
            "invalid_keys": list(self.invalid_keys),
            "unknown_keys": list(self.unknown_keys),
            "reason": self.reason,
            "state": self.state,
            "linearized": [op.to_dict() for op in self.linearized],
            "unlinearizable": [op.to_dict() for op in self.unlinearizable],
            "seconds": round(self.seconds, 6),
        }


# --------------------------------------------------------------------------------- the search

# Model operations: how each operation acts on the register.
_READ, _WRITE, _CAS = range(3)


def _prune_unobserved(ops: list[Op]) -> list[Op]:
    """Drops the indeterminate writes and compare-and-sets whose resulting value nothing that
    may come after them compares against.

    Let X be an indeterminate operation that would set the value v, such that every ok read
    of v and every cas expecting v returned before X was invoked. Take a linearization that
    includes X. An operation placed after X has its linearization point, hence its return,
    at or after X's invoke, so it is neither a read of v nor a cas expecting v: the operation
    right after X, if any, is a write, which ignores the value it overwrites. Removing X
    leaves a linearization, so X can be dropped (as an operation that never took effect).
    Removing X adds no comparisons, so one pass suffices.
    """
    last_compare: dict[Any, float] = {}  # value -> latest return of an op comparing with it
    for op in ops:
        if op.f == "write":
            continue
        value = _freeze(op.value if op.f == "read" else op.value[0])
        ret = math.inf if op.return_ns is None else op.return_ns
        if ret > last_compare.get(value, -math.inf):
            last_compare[value] = ret
    kept = []
    for op in ops:
        if op.return_ns is None:
            new = _freeze(op.value[1] if op.f == "cas" else op.value)
            if last_compare.get(new, -math.inf) < op.call_ns:
                continue
        kept.append(op)
    return kept


def check_key(
    ops: list[Op],
    initial: Any = None,
    *,
    max_states: int = DEFAULT_MAX_STATES,
    deadline: float | None = None,
    key: Any = None,
) -> Result:
    """Checks the operations of one register (all of them, whatever their ``key``).

    ``initial`` is the register's value before the history. ``deadline`` is a
    ``time.monotonic()`` value after which the search gives up with ``valid=None``, as it does
    after exploring more than ``max_states`` configurations.
    """
    started = time.monotonic()
    if key is None and ops:
        key = ops[0].key
    original = ops
    ops = sorted(_prune_unobserved(ops), key=lambda op: op.call_ns)
    n = len(ops)

    # The model, one entry per operation.
    code = [0] * n
    arg = [None] * n
    new_value = [None] * n
    determinate = 0
    for i, op in enumerate(ops):
        if op.f == "read":
            code[i], arg[i] = _READ, _freeze(op.value)
        elif op.f == "write":
            code[i], arg[i] = _WRITE, _freeze(op.value)
        else:
            code[i] = _CAS
            arg[i], new_value[i] = _freeze(op.value[0]), _freeze(op.value[1])
        if op.return_ns is not None:
            determinate += 1
    is_info = [op.return_ns is None for op in ops]

    # The entry list: 0 is the head, 1..2n the calls and returns by time (a call before a
    # return at the same time), 2n+1 the tail. The list always ends with a return while
    # determinate operations remain, so the scan never reaches the tail.
    stamped = []
    for i, op in enumerate(ops):
        stamped.append((op.call_ns, 0, i))
        stamped.append((math.inf if op.return_ns is None else op.return_ns, 1, i))
    stamped.sort()
    size = 2 * n + 2
    is_call = bytearray(size)
    op_of = [0] * size
    match = [0] * size  # call entry -> its return entry
    call_entry = [0] * n
    for entry, (_, is_return, i) in enumerate(stamped, 1):
        op_of[entry] = i
        if is_return:
            match[call_entry[i]] = entry
        else:
            is_call[entry] = 1
            call_entry[i] = entry
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))

    head = 0
    entry = nxt[head]
    state = _freeze(initial)
    # The linearized operations: every i < low, and low + k for each bit k of ``window``
    # (whose bit 0 is clear: operation ``low`` is not linearized).
    low = 0
    window = 0
    remaining = determinate
    cache: set[tuple[int, int, Any]] = set()
    stack: list[int] = []  # call entries of the linearized operations, in order
    states: list[Any] = []  # the register value before each of them
    # The deepest dead end seen: the stack then (its first ``same`` entries are still those of
    # ``stack``, so a deeper one copies only what was pushed since), the register value and
    # the candidates in front of the blocking return. best_depth < 0: none yet.
    best_depth = -1
    best_path: list[int] = []
    same = 0
    best_state: Any = None
    best_candidates: list[int] = []
    steps = 0
    outcome: bool | None = True
    reason = ""

    def candidates_before(at: int) -> list[int]:
        """The operations whose calls are in front of entry ``at``, its own first."""
        candidates = []
        e = nxt[head]
        while e != at:
            candidates.append(op_of[e])
            e = nxt[e]
        blocked = op_of[at]
        candidates.sort(key=lambda i: (i != blocked, i))
        return candidates

    while remaining:
        steps += 1
        if deadline is not None and steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            outcome, reason = None, "unknown: the time budget ran out"
            break
        if is_call[entry]:
            i = op_of[entry]
            c = code[i]
            if c == _READ:
                if state != arg[i]:
                    entry = nxt[entry]
                    continue
                after = state
            elif c == _WRITE:
                after = arg[i]
            else:
                if state != arg[i]:
                    entry = nxt[entry]
                    continue
                after = new_value[i]
            d = i - low  # >= 0: every operation before ``low`` is linearized
            new_low, new_window = low, window | (1 << d)
            if d == 0:  # shift out the run of linearized operations now at the start
                run = (~new_window & (new_window + 1)).bit_length() - 1
                new_low, new_window = low + run, new_window >> run
            config = (new_low, new_window, after)
            if config in cache:
                entry = nxt[entry]
                continue
            cache.add(config)
            if len(cache) > max_states:
                outcome = None
                reason = f"unknown: more than max_states={max_states} states to explore"
                break
            stack.append(entry)
            states.append(state)
            state = after
            low, window = new_low, new_window
            if not is_info[i]:
                remaining -= 1
            # Lift the call and its return out of the list.
            ret = match[entry]
            p, q = prv[entry], nxt[entry]
            nxt[p] = q
            prv[q] = p
            p, q = prv[ret], nxt[ret]
            nxt[p] = q
            prv[q] = p
            entry = nxt[head]
        else:
            # The return of an operation that is not linearized: backtrack.
            if len(stack) > best_depth:
                del best_path[same:]
                best_path.extend(stack[same:])
                same = best_depth = len(stack)
                best_state, best_candidates = state, candidates_before(entry)
            if not stack:
                outcome = False
                break
            entry = stack.pop()
            same = min(same, len(stack))
            state = states.pop()
            i = op_of[entry]
            if i > low:
                window ^= 1 << (i - low)
            else:  # i < low: operations i+1 .. low-1 stay linearized
                d = low - i
                low, window = i, window << d | ((1 << d) - 2)
            if not is_info[i]:
                remaining += 1
            # Unlift: restore the return, then the call (the reverse of lifting).
            ret = match[entry]
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]

    elapsed = time.monotonic() - started
    if outcome:
        return Result(True, key=key, ops=len(original), states=len(cache),
                      linearized=tuple(ops[op_of[e]] for e in stack), state=_thaw(state),
                      seconds=elapsed)
    if outcome is None and len(stack) > best_depth:
        best_path, best_state, best_candidates = stack, state, []
    path = [op_of[e] for e in best_path]
    candidates = best_candidates
    if outcome is False:
        blocked = ops[candidates[0]]
        reason = (f"{blocked.describe()} cannot take effect before its return, whatever the "
                  f"order of the operations concurrent with it")
    return Result(
        outcome,
        key=key,
        ops=len(original),
        states=len(cache),
        linearized=tuple(ops[i] for i in path),
        state=_thaw(best_state),
        unlinearizable=tuple(ops[i] for i in candidates),
        reason=reason,
        invalid_keys=(key,) if outcome is False else (),
        unknown_keys=(key,) if outcome is None else (),
        seconds=elapsed,
    )


def check_per_key(
    history: Iterable[Mapping[str, Any]],
    initial: Any = None,
    *,
    max_states: int = DEFAULT_MAX_STATES,
    timeout: float | None = None,
) -> dict[Any, Result]:
    """Checks every key of ``history`` as an independent register (P-compositionality).

    Keys are returned in order of first appearance; a key that is a JSON list or object is
    returned in frozen (hashable) form. ``initial`` is every register's value before the
    history. ``max_states`` bounds each key's search and ``timeout`` (seconds) the whole call;
    keys left when the time runs out are reported as unknown.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    by_key: dict[Any, list[Op]] = {}
    for op in operations(history):
        by_key.setdefault(_freeze(op.key), []).append(op)
    return {
        key: check_key(ops, initial, max_states=max_states, deadline=deadline, key=key)
        for key, ops in by_key.items()
    }


def aggregate(results: Mapping[Any, Result]) -> Result:
    """The verdict of a whole history from the verdicts of its keys: not linearizable if some
    key is not, else unknown if some key is unknown, else linearizable."""
    invalid = tuple(k for k, r in results.items() if r.valid is False)
    unknown = tuple(k for k, r in results.items() if r.valid is None)
    valid = False if invalid else None if unknown else True
    total_ops = sum(r.ops for r in results.values())
    total_states = sum(r.states for r in results.values())
    seconds = sum(r.seconds for r in results.values())
    common = dict(ops=total_ops, states=total_states, keys=len(results), invalid_keys=invalid,
                  unknown_keys=unknown, seconds=seconds)
    if valid:
        return Result(True, **common)
    first = results[(invalid or unknown)[0]]
    return Result(valid, key=first.key, linearized=first.linearized, state=first.state,
                  unlinearizable=first.unlinearizable, reason=first.reason, **common)


def check(
    history: Iterable[Mapping[str, Any]],
    initial: Any = None,
    *,
    max_states: int = DEFAULT_MAX_STATES,
    timeout: float | None = None,
) -> Result:
    """Checks a history of registers, one per key; see ``check_per_key`` and ``aggregate``."""
    return aggregate(check_per_key(history, initial, max_states=max_states, timeout=timeout))


# ------------------------------------------------------------------------------------ the CLI

def run_checker(args: argparse.Namespace, check_history: Callable[[list], dict[str, Any]],
                summary: Callable[[dict[str, Any]], str]) -> int:
    """The body of a checker's command line: loads ``args.history``, checks it, prints the
    result (``--json``, or ``summary(stats)``, the verdict and up to ``args.show`` anomalies of
    each kind); returns 0 (valid), 1 (invalid) or 2 (unreadable history)."""
    try:
        result = check_history(load_history(args.history))
    except (OSError, ValueError) as e:
        print(f"{args.history}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=repr))
        return 0 if result["valid"] else 1
    s = result["stats"]
    print(f"{args.history}: {summary(s)}")
    print("valid" if result["valid"] else f"NOT valid: {', '.join(result['anomaly_types'])}")
    for kind in result["anomaly_types"]:
        count = s["anomaly_counts"][kind]
        print(f"\n{kind}: {count} found")
        for entry in result["anomalies"][kind][:args.show]:
            print(f"  {entry['explanation']}")
        if count > args.show:
            print(f"  ... and {count - args.show} more")
    return 0 if result["valid"] else 1



def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("history", metavar="HISTORY.jsonl",
                        help="history in the JSON-lines shape of FAULTS.md §4")
    parser.add_argument("--initial", default="null", type=json.loads, metavar="JSON",
                        help="every register's value before the history (default: null)")
    parser.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES, metavar="N",
                        help="give up on a key after N search states (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up on the keys left after this long (default: none)")
    parser.add_argument("--show", type=int, default=3, metavar="K",
                        help="explain at most K keys that are not linearizable (default: 3)")
    parser.add_argument("--json", action="store_true",
                        help="print the verdict as JSON (aggregate and failing keys)")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``wgl`` as a subcommand of ``python -m bench``."""
    return _configure(subparsers.add_parser(
        "wgl",
        help="check a register history for linearizability, key by key",
        description="Checks a JSON-lines history of read/write/cas operations for "
                    "linearizability (WGL search per key). Exit status: 0 linearizable, "
                    "1 not linearizable, 2 unknown or unreadable.",
    ))


def run(args: argparse.Namespace) -> int:
    """Checks ``args.history``; returns 0 (linearizable), 1 (not) or 2 (unknown, bad input)."""
    try:
        results = check_per_key(load_history(args.history), args.initial,
                                max_states=args.max_states, timeout=args.timeout)
    except (OSError, ValueError) as e:
        print(f"{args.history}: {e}", file=sys.stderr)
        return 2
    total = aggregate(results)
    bad = [results[k] for k in total.invalid_keys + total.unknown_keys]
    if args.json:
        doc = total.to_dict()
        doc["failures"] = [r.to_dict() for r in bad]
        print(json.dumps(doc, indent=2, default=repr))
    else:
        print(f"{args.history}: {total.ops} operations on {total.keys} keys, {total.states} "
              f"states explored in {total.seconds:.2f} s")
        print(f"{total.verdict}: {len(total.invalid_keys)} keys not linearizable, "
              f"{len(total.unknown_keys)} unknown")
        for r in bad[:args.show]:
            print()
            print(r.explain())
        if len(bad) > args.show:
            print(f"\n... and {len(bad) - args.show} more keys")
    return {True: 0, False: 1, None: 2}[total.valid]


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(
        prog="python -m bench.wgl",
        description="Checks a JSON-lines history of read/write/cas operations for "
                    "linearizability (WGL search per key). Exit status: 0 linearizable, "
                    "1 not linearizable, 2 unknown or unreadable.",
    ))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
