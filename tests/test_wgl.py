"""The per-key linearizability checker (bench/wgl.py) against hand-made anomalies, histories that
are linearizable by construction, and a brute-force reference (FAULTS.md §5: a checker is
trusted only after it has caught planted bugs)."""

from __future__ import annotations

import json
import math
import random
import time

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from bench import wgl
from bench.__main__ import main as bench_main
from bench.wgl import HistoryError, check, check_per_key

# ------------------------------------------------------------------------------------ helpers


def _op(process, f, invoke_value, result_value, call, ret, kind, key):
    """The events of one operation; ``ret=None`` leaves it without a completion."""
    events = [{"process": process, "type": "invoke", "f": f, "key": key,
               "value": invoke_value, "time_ns": call}]
    if ret is not None:
        events.append({"process": process, "type": kind, "f": f, "key": key,
                       "value": result_value, "time_ns": ret})
    return events


def w(process, value, call, ret, kind="ok", key="k"):
    return _op(process, "write", value, value, call, ret, kind, key)


def r(process, value, call, ret, kind="ok", key="k"):
    """A read that returned ``value``."""
    return _op(process, "read", None, value, call, ret, kind, key)


def cas(process, expected, new, call, ret, kind="ok", key="k"):
    return _op(process, "cas", [expected, new], [expected, new], call, ret, kind, key)


def history(*ops):
    """The events of ``ops`` in time order (a stable sort keeps invoke before completion)."""
    return sorted((e for op in ops for e in op), key=lambda e: e["time_ns"])


def valid(*ops, initial=None):
    return check(history(*ops), initial).valid


# ----------------------------------------------------------------------- hand-made histories


def test_empty_history_is_linearizable():
    result = check([])
    assert result.valid is True and result.ops == 0 and result.keys == 0


def test_sequential_history_is_linearizable_and_witness_is_the_real_order():
    result = check(history(w(0, 1, 0, 1), r(1, 1, 2, 3), w(0, 2, 4, 5), r(1, 2, 6, 7)))
    assert result.valid is True
    [per_key] = check_per_key(history(w(0, 1, 0, 1), r(1, 1, 2, 3))).values()
    assert [(op.f, op.value) for op in per_key.linearized] == [("write", 1), ("read", 1)]


def test_stale_read_after_completed_write():
    h = history(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 40, 50))
    result = check(h)
    assert result.valid is False
    assert result.key == "k" and result.invalid_keys == ("k",)
    # Both writes can be linearized, then the read of 1 cannot.
    assert [op.value for op in result.linearized] == [1, 2]
    assert result.state == 2
    stuck = result.unlinearizable[0]
    assert (stuck.process, stuck.f, stuck.value, stuck.call_ns, stuck.return_ns) == \
        (1, "read", 1, 40, 50)
    text = result.explain()
    assert "NOT linearizable" in text and "p1 read -> 1 [40 .. 50]" in text


def test_read_concurrent_with_write_may_see_old_or_new_value():
    assert valid(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 1, 25, 50))
    assert valid(w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, 2, 25, 50))


def test_read_of_a_value_never_written():
    assert valid(w(0, 1, 0, 10), r(1, 7, 20, 30)) is False
    assert valid(w(0, 1, 0, 10), r(1, 7, 5, 30)) is False


def test_initial_value():
    assert valid(r(0, None, 0, 1))
    assert valid(r(0, 0, 0, 1)) is False
    assert valid(r(0, 0, 0, 1), initial=0)
    assert valid(r(0, None, 0, 1), initial=0) is False


def test_json_values_compare_as_json():
    result = check(history(w(0, True, 0, 1), r(1, 1, 2, 3)))
    assert result.valid is False and result.state is True
    assert valid(w(0, [1, {"a": 2}], 0, 1), r(1, [1, {"a": 2}], 2, 3))
    result = check(history(w(0, {"a": [1]}, 0, 1), r(1, [["a", [1]]], 2, 3)))
    assert result.valid is False and result.state == {"a": [1]}


def test_concurrent_writes_seen_in_inconsistent_orders():
    """Two concurrent writes; client 1 sees 1 then 2, client 2 sees 2 then 1."""
    writes = (w(0, 1, 0, 100), w(1, 2, 0, 100))
    assert valid(*writes, r(2, 1, 10, 20), r(2, 2, 30, 40),
                 r(3, 2, 10, 20), r(3, 1, 30, 40)) is False
    # Both clients seeing the same order is fine.
    assert valid(*writes, r(2, 1, 10, 20), r(2, 2, 30, 40), r(3, 1, 10, 20), r(3, 2, 30, 40))
    # After both writes completed, clients cannot disagree on the final value.
    assert valid(*writes, r(2, 1, 110, 120), r(3, 2, 110, 120)) is False


def test_cas_lost_update():
    """Two clients both succeed in replacing 0: one of the updates was lost."""
    assert valid(cas(0, 0, 1, 0, 10), cas(1, 0, 2, 5, 15), initial=0) is False
    assert valid(cas(0, 0, 1, 0, 10), cas(1, 0, 2, 20, 30), initial=0) is False
    # Correct behaviour: the second cas fails, or expects the first one's value.
    assert valid(cas(0, 0, 1, 0, 10), cas(1, 0, 2, 5, 15, kind="fail"), r(2, 1, 20, 30),
                 initial=0)
    assert valid(cas(0, 0, 1, 0, 10), cas(1, 1, 2, 5, 15), r(2, 2, 20, 30), initial=0)


def test_indeterminate_write_may_apply_late_or_never():
    base = (w(0, 1, 0, 10), w(1, 2, 20, 30, kind="info"))
    assert valid(*base, r(2, 1, 40, 50), r(2, 1, 60, 70))  # never applied
    assert valid(*base, r(2, 1, 40, 50), r(2, 2, 60, 70))  # applied between the reads
    assert valid(*base, r(2, 2, 40, 50), r(2, 2, 60, 70))
    assert valid(*base, r(2, 2, 40, 50), r(2, 1, 60, 70)) is False  # it cannot un-apply
    # Nor can it take effect before its invoke.
    assert valid(w(0, 1, 0, 10), r(2, 2, 12, 18), w(1, 2, 20, 30, kind="info")) is False


def test_invoke_without_completion_is_indeterminate():
    base = (w(0, 1, 0, 10), w(1, 2, 20, None))
    assert valid(*base, r(2, 1, 40, 50), r(2, 2, 60, 70))
    assert valid(*base, r(2, 2, 40, 50), r(2, 1, 60, 70)) is False


def test_indeterminate_cas_applies_only_if_it_could():
    base = (w(0, 1, 0, 10), cas(1, 1, 2, 20, 30, kind="info"))
    assert valid(*base, r(2, 2, 40, 50))
    assert valid(*base, r(2, 1, 40, 50), r(2, 2, 60, 70))
    # Its expected value never held after its invoke: it cannot have applied.
    assert valid(w(0, 5, 0, 10), cas(1, 1, 2, 20, 30, kind="info"), r(2, 2, 40, 50)) is False


def test_failed_operation_must_not_take_effect():
    assert valid(w(0, 1, 0, 10), w(1, 2, 20, 30, kind="fail"), r(2, 2, 40, 50)) is False
    assert valid(w(0, 1, 0, 10), w(1, 2, 20, 30, kind="fail"), r(2, 1, 40, 50))
    assert valid(cas(1, None, 2, 0, 10, kind="fail"), r(2, 2, 20, 30)) is False


def test_indeterminate_read_constrains_nothing():
    assert valid(w(0, 1, 0, 10), r(1, 99, 20, 30, kind="info"), r(2, 1, 40, 50))


def test_overlapping_ops_valid_only_in_one_order():
    # Chained cas all overlapping, invoked in the reverse of the only order that works.
    chain = (cas(0, 2, 3, 0, 100), cas(1, 1, 2, 1, 100), cas(2, 0, 1, 2, 100))
    result = check_per_key(history(*chain, r(3, 3, 110, 120)), 0)["k"]
    assert result.valid is True
    assert [op.value for op in result.linearized] == [[0, 1], [1, 2], [2, 3], 3]
    assert valid(*chain, r(3, 2, 110, 120), initial=0) is False
    # Three concurrent writes and reads pinning the order 3, 1, 2.
    writes = (w(0, 1, 0, 100), w(1, 2, 0, 100), w(2, 3, 0, 100))
    pinned = (r(3, 3, 10, 20), r(3, 1, 30, 40), r(3, 2, 110, 120))
    result = check_per_key(history(*writes, *pinned))["k"]
    assert result.valid is True
    assert [op.value for op in result.linearized if op.f == "write"] == [3, 1, 2]
    assert valid(*writes, *pinned, r(4, 3, 50, 60)) is False


def test_keys_are_independent():
    h = history(w(0, 1, 0, 10, key="a"), r(1, 1, 20, 30, key="a"),
                w(2, 1, 0, 10, key="b"), r(3, 2, 20, 30, key="b"),
                w(4, 1, 0, 10, key=["c", 1]), r(5, 1, 20, 30, key=["c", 1]))
    results = check_per_key(h)
    assert list(results) == ["a", "b", ("c", 1)]
    assert [res.valid for res in results.values()] == [True, False, True]
    total = check(h)
    assert (total.valid, total.key, total.keys, total.ops) == (False, "b", 3, 6)
    assert total.invalid_keys == ("b",)
    # A value read on one key says nothing about another.
    assert valid(w(0, 1, 0, 10, key="a"), r(1, 1, 20, 30, key="b")) is False


def test_nemesis_and_other_events_are_skipped():
    h = [{"process": "nemesis", "type": "info", "f": "start-partition", "value": "halves",
          "time_ns": 0},
         {"process": "nemesis", "type": "info", "f": {"odd": "function"}, "time_ns": 0}]
    h += history(w(0, 1, 1, 10), r(1, 1, 20, 30))
    h += [{"process": "nemesis", "type": "info", "f": "stop-partition", "time_ns": 40}]
    assert check(h).valid is True


@pytest.mark.parametrize("events, message", [
    ([{"process": 0, "type": "ok", "f": "read", "key": "k", "value": 1, "time_ns": 1}],
     "no open operation"),
    (w(0, 1, 0, None) + w(0, 2, 1, 2), "is open"),
    (cas(0, 1, 2, 0, 1)[:1] + [{"process": 0, "type": "ok", "f": "write", "time_ns": 2}],
     "completes the cas"),
    (_op(0, "cas", 5, 5, 0, 1, "ok", "k"), "must be \\[expected, new\\]"),
    ([{"process": 0, "type": "invoke", "f": "read", "key": "k"}], "time_ns"),
    # JSON's NaN and Infinity order nothing: read as times, they would invent real-time order.
    (w(0, 1, float("nan"), float("nan")) + r(1, None, 0, 10), "finite number"),
    (w(0, 1, float("-inf"), 0) + r(1, None, 5, 10), "finite number"),
    ([{"process": 0, "type": "begin", "f": "read", "key": "k", "time_ns": 1}], "unknown type"),
    # A process's clock going backwards (its next operation invoked before its last ended)
    # would read as a cycle of process and real-time order.
    (w(0, 1, 10, 20) + w(0, 2, 5, 8), "before its previous operation completed"),
    # JSON lists and objects cannot name a process (they are not hashable).
    ([{"process": [0], "type": "invoke", "f": "read", "key": "k", "time_ns": 1}],
     "a process must be"),
])
def test_malformed_histories_are_rejected(events, message):
    with pytest.raises(HistoryError, match=message):
        check(events)


# --------------------------------------------------------------------------------- the budget


def _hard_invalid_history(writers):
    """``writers`` concurrent writes and, after them, a read of a value never written: the
    search must try every subset of the writes before giving up."""
    return history(*(w(p, p, 0, 100) for p in range(writers)), r(writers, -1, 200, 300))


def test_max_states_budget_yields_unknown():
    h = _hard_invalid_history(10)
    assert check(h).valid is False
    result = check(h, max_states=50)
    assert result.valid is None
    assert result.unknown_keys == ("k",) and result.invalid_keys == ()
    assert "max_states=50" in result.reason
    assert result.states <= 51


def test_time_budget_yields_unknown():
    result = check(_hard_invalid_history(18), timeout=0.05)
    assert result.valid is None and "time" in result.reason


def test_invalid_key_wins_over_unknown_key():
    h = history(w(0, 1, 0, 10, key="a"), r(1, 2, 20, 30, key="a"))
    h += [dict(e, key="b", process=e["process"] + 100) for e in _hard_invalid_history(10)]
    total = check(h, max_states=50)
    assert (total.valid, total.key, total.invalid_keys, total.unknown_keys) == \
        (False, "a", ("a",), ("b",))


# -------------------------------------------------------------------- histories by construction


def _execute(rng, specs, initial=None):
    """Runs a register sequentially at the linearization points of ``specs`` and returns the
    history a client would have recorded.

    Each spec is ``[call, point, ret, f, arg, outcome]`` with ``call <= point <= ret``;
    ``outcome`` is "ok" or "info" (an info operation takes effect at ``point`` or never).
    """
    value = initial
    events = []
    # Processes: one per operation still open at a time; an info operation retires its own.
    free_at: dict[int, float] = {}
    for spec in sorted(specs, key=lambda s: s[0]):
        call, _point, ret = spec[:3]
        process = next((p for p, t in free_at.items() if t < call), len(free_at))
        free_at[process] = ret if spec[5] == "ok" else float("inf")
        spec.append(process)
    for call, point, ret, f, arg, outcome, process in sorted(specs, key=lambda s: s[1]):
        applied = outcome == "ok" or rng.random() < 0.5
        result, kind = arg, outcome
        if f == "read":
            result = value
        elif f == "write":
            if applied:
                value = arg
        elif value == arg[0]:
            if applied:
                value = arg[1]
        elif outcome == "ok":
            kind = "fail"  # the compare failed: the client is told so
        events.append({"process": process, "type": "invoke", "f": f, "key": "k",
                       "value": None if f == "read" else arg, "time_ns": call})
        if kind != "info" or rng.random() < 0.5:  # some indeterminate ops never complete
            events.append({"process": process, "type": kind, "f": f, "key": "k",
                           "value": result, "time_ns": ret})
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events


def random_execution(rng, n_max=30):
    """Specs for ``_execute``: random intervals, linearization points inside them, operations
    on a few values so that reads and cas often meet the same value, a quarter of them
    indeterminate."""
    specs = []
    n = rng.randint(1, n_max)
    spread = rng.choice([3, 5])  # about 7 or 4 operations in flight at a time
    for _ in range(n):
        call = rng.randint(0, spread * n)
        point = call + rng.randint(0, 20)
        ret = point + rng.randint(0, 20)
        f = rng.choice(["read", "write", "cas"])
        arg = rng.randint(0, 3)
        if f == "cas":
            arg = [rng.choice([None, 0, 1, 2, 3]), arg]
        specs.append([call, point, ret, f, arg, rng.choice(["ok", "ok", "ok", "info"])])
    return specs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_histories_of_a_real_register_are_linearizable(rng):
    h = _execute(rng, random_execution(rng))
    result = check(h)
    assert result.valid is True, result.explain()


@pytest.mark.parametrize("seed", range(3))
def test_many_histories_of_a_real_register_are_linearizable(seed):
    """The same property on more, larger histories than hypothesis affords in a few seconds."""
    rng = random.Random(seed)
    for _ in range(300):
        h = _execute(rng, random_execution(rng, n_max=50))
        result = check(h)
        assert result.valid is True, result.explain()


# --------------------------------------------------------------- against a brute-force reference


def reference(history_, initial=None):
    """Linearizability by exhaustive search, independent of bench.wgl: every subset of the
    indeterminate operations, every order consistent with real time (a before b when a returned
    strictly before b was invoked; indeterminate operations never return)."""
    opened, ops = {}, []
    for e in history_:
        if e["type"] == "invoke":
            opened[e["process"]] = e
            continue
        inv = opened.pop(e["process"])
        if e["type"] == "fail" or (e["type"] == "info" and e["f"] == "read"):
            continue
        ret = e["time_ns"] if e["type"] == "ok" else float("inf")
        ops.append((inv["f"], e["value"] if inv["f"] == "read" else inv["value"],
                    inv["time_ns"], ret))
    ops += [(inv["f"], inv["value"], inv["time_ns"], float("inf"))
            for inv in opened.values() if inv["f"] != "read"]

    def step(value, op):
        f, arg = op[0], op[1]
        if f == "read":
            return value == arg, value
        if f == "write":
            return True, arg
        return value == arg[0], arg[1]

    def search(todo, value):
        if not todo:
            return True
        for i in todo:
            if any(ops[j][3] < ops[i][2] for j in todo if j != i):
                continue  # something that must precede ops[i] is not placed yet
            ok, after = step(value, ops[i])
            if ok and search([j for j in todo if j != i], after):
                return True
        return False

    maybe = [i for i, op in enumerate(ops) if op[3] == float("inf")]
    sure = [i for i, op in enumerate(ops) if op[3] != float("inf")]
    for mask in range(1 << len(maybe)):
        chosen = [i for bit, i in enumerate(maybe) if mask >> bit & 1]
        if search(sure + chosen, initial):
            return True
    return False


def random_small_history(rng):
    """Up to 7 operations with arbitrary (often impossible) results, one process each, and an
    initial value."""
    events = []
    for p in range(rng.randint(1, 7)):
        f = rng.choice(["read", "write", "cas"])
        call = rng.randint(0, 12)
        ret = call + rng.randint(0, 8)
        kind = rng.choice(["ok", "ok", "ok", "info", "fail", "none"])
        value = rng.randint(0, 2)
        if f == "cas":
            value = [rng.randint(0, 2), value]
        events.append({"process": p, "type": "invoke", "f": f, "key": "k",
                       "value": None if f == "read" else value, "time_ns": call})
        if kind != "none":
            events.append({"process": p, "type": kind, "f": f, "key": "k", "value": value,
                           "time_ns": ret})
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events, rng.choice([None, 0])


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_agrees_with_brute_force_reference(rng):
    events, initial = random_small_history(rng)
    assert check(events, initial).valid is reference(events, initial)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force_reference_on_many_histories(seed):
    """More cases than hypothesis affords in a few seconds; both verdicts must be common."""
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(1000):
        events, initial = random_small_history(rng)
        expected = reference(events, initial)
        assert check(events, initial).valid is expected, (events, initial)
        verdicts[expected] += 1
    assert min(verdicts.values()) > 200, verdicts


def test_reference_sees_both_verdicts():
    """The random comparison is only meaningful if the reference says both yes and no."""
    assert reference(history(w(0, 1, 0, 1), r(1, 1, 2, 3))) is True
    assert reference(history(w(0, 1, 0, 1), r(1, 2, 2, 3))) is False


# ------------------------------------------------------------------------------- performance


def _register_workload(rng, keys, ops_per_key, clients):
    """A linearizable history of ``keys`` registers with ``clients`` concurrent clients each."""
    specs_by_key = {}
    for k in range(keys):
        specs = []
        for c in range(clients):
            t = rng.randrange(0, 50)
            for _ in range(ops_per_key // clients):
                call = t + rng.randrange(1, 30)
                ret = call + rng.randrange(1, 100)
                point = rng.randint(call, ret)
                f = rng.choice(["read", "read", "write", "cas"])
                arg = rng.randrange(5)
                if f == "cas":
                    arg = [rng.randrange(5), arg]
                specs.append([call, point, ret, f, arg, "ok"])
                t = ret
        specs_by_key[f"key{k}"] = specs
    events = []
    for key, specs in specs_by_key.items():
        for e in _execute(rng, specs):
            e["key"] = key
            e["process"] = f"{key}/{e['process']}"
            events.append(e)
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events


def test_ten_thousand_operations_over_a_hundred_keys():
    rng = random.Random(7)
    events = _register_workload(rng, keys=100, ops_per_key=100, clients=5)
    started = time.process_time()  # CPU time: robust to other load on the machine
    result = check(events)
    elapsed = time.process_time() - started
    assert result.valid is True, result.explain()
    assert sum(e["type"] == "invoke" for e in events) == 10_000
    assert result.keys == 100 and result.ops > 7_000  # failed cas are dropped
    assert elapsed < 5, f"{elapsed:.1f} s of CPU time"
    # One stale read planted at the end of one key is found.
    last = max(e["time_ns"] for e in events)
    events += r("late", -1, last + 10, last + 20, key="key42")
    result = check(events)
    assert (result.valid, result.invalid_keys) == (False, ("key42",))
    assert result.unlinearizable[0].process == "late"


# ------------------------------------------------------- the search's bookkeeping, kept compact


def plain_check_key(ops, initial=None, *, max_states=wgl.DEFAULT_MAX_STATES):
    """The search of ``wgl.check_key`` in its plainest form, as a reference for the compact
    bookkeeping: the linearized set as a bit set of every operation, the deepest dead end
    copied whole each time it grows. Returns the fields of a Result that the search decides."""
    ops = sorted(wgl._prune_unobserved(ops), key=lambda op: op.call_ns)
    freeze = wgl._freeze

    def apply(op, value):
        if op.f == "read":
            return value if value == freeze(op.value) else None, value == freeze(op.value)
        if op.f == "write":
            return freeze(op.value), True
        return freeze(op.value[1]), value == freeze(op.value[0])

    stamped = sorted([(op.call_ns, 0, i) for i, op in enumerate(ops)]
                     + [(math.inf if op.return_ns is None else op.return_ns, 1, i)
                        for i, op in enumerate(ops)])
    size = 2 * len(ops) + 2
    op_of, is_call, match, call_entry = [0] * size, [0] * size, [0] * size, {}
    for entry, (_, is_return, i) in enumerate(stamped, 1):
        op_of[entry] = i
        if is_return:
            match[call_entry[i]] = entry
        else:
            is_call[entry], call_entry[i] = 1, entry
    nxt, prv = list(range(1, size + 1)), list(range(-1, size - 1))
    state, linearized, cache, stack, states = freeze(initial), 0, set(), [], []
    remaining = sum(op.return_ns is not None for op in ops)
    entry, best, outcome = nxt[0], None, True

    def unlink(e):
        nxt[prv[e]], prv[nxt[e]] = nxt[e], prv[e]

    def relink(e):
        nxt[prv[e]] = prv[nxt[e]] = e

    while remaining:
        if is_call[entry]:
            i = op_of[entry]
            after, legal = apply(ops[i], state)
            config = (linearized | 1 << i, after)
            if not legal or config in cache:
                entry = nxt[entry]
                continue
            cache.add(config)
            if len(cache) > max_states:
                outcome = None
                break
            stack.append(entry)
            states.append(state)
            state, linearized = after, config[0]
            remaining -= ops[i].return_ns is not None
            unlink(entry)
            unlink(match[entry])
            entry = nxt[0]
        else:
            if best is None or len(stack) > len(best[0]):
                candidates, e = [], nxt[0]
                while e != entry:
                    candidates.append(op_of[e])
                    e = nxt[e]
                candidates.sort(key=lambda i: (i != op_of[entry], i))
                best = ([op_of[c] for c in stack], state, candidates)
            if not stack:
                outcome = False
                break
            entry, state = stack.pop(), states.pop()
            i = op_of[entry]
            linearized ^= 1 << i
            remaining += ops[i].return_ns is not None
            relink(match[entry])
            relink(entry)
            entry = nxt[entry]
    if outcome:
        return True, len(cache), [ops[op_of[e]] for e in stack], state, []
    if outcome is None and (best is None or len(stack) > len(best[0])):
        best = ([op_of[e] for e in stack], state, [])
    path, best_state, candidates = best
    return (outcome, len(cache), [ops[i] for i in path], best_state,
            [ops[i] for i in candidates])


@pytest.mark.parametrize("seed", range(3))
def test_search_agrees_with_its_plain_form(seed):
    """Verdict, states explored, witness or deepest prefix, and the blocked candidates are
    those of the plain search, on valid, invalid and over-budget histories."""
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0, None: 0}
    for n in range(300):
        if n % 3 == 0:
            events, initial = random_small_history(rng)
        else:
            events, initial = _execute(rng, random_execution(rng, n_max=60)), None
            reads = [e for e in events if e["type"] == "ok" and e["f"] == "read"]
            if n % 3 == 2 and reads:
                rng.choice(reads)["value"] = rng.randint(0, 3)
        max_states = rng.choice([5, 50, wgl.DEFAULT_MAX_STATES])
        ops = wgl.operations(events)
        result = wgl.check_key(ops, initial, max_states=max_states)
        expected = plain_check_key(ops, initial, max_states=max_states)
        assert (result.valid, result.states, list(result.linearized),
                wgl._freeze(result.state), list(result.unlinearizable)) == expected, events
        verdicts[result.valid] += 1
    assert min(verdicts.values()) > 20, verdicts



# ------------------------------------------------------------------------------------- the CLI


def test_cli_exit_status_and_summary(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(e) + "\n"
                            for e in history(w(0, 1, 0, 10), r(1, 1, 20, 30))))
    bad.write_text("".join(json.dumps(e) + "\n"
                           for e in history(w(0, 1, 0, 10), r(1, 2, 20, 30))))
    assert wgl.load_history(str(good))[1]["value"] == 1
    assert wgl.main([str(good)]) == 0
    assert "linearizable" in capsys.readouterr().out
    assert wgl.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "NOT linearizable" in out and "p1 read -> 2 [20 .. 30]" in out
    assert wgl.main([str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and doc["failures"][0]["key"] == "k"
    assert wgl.main([str(good), "--initial", "5"]) == 0
    assert wgl.main([str(tmp_path / "missing.jsonl")]) == 2
    capsys.readouterr()
    # A bad --initial is a usage error that names the option, not a fault of the history.
    with pytest.raises(SystemExit) as exit_info:
        wgl.main([str(good), "--initial", "{oops"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--initial" in err and str(good) not in err
    # The same as a subcommand of the harness, as add_parser says.
    capsys.readouterr()
    assert bench_main(["wgl", str(bad)]) == 1
    assert "NOT linearizable" in capsys.readouterr().out
