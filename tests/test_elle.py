"""The list-append checker (bench/elle.py) against one hand-made history per anomaly class,
valid histories, and large histories executed serially at points inside their intervals
(FAULTS.md §5: a checker is trusted only after it has caught planted bugs)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from bench import elle
from bench.elle import HistoryError, check

MODELS = elle.CONSISTENCY_MODELS

# ------------------------------------------------------------------------------------ helpers


def a(key, value):
    return ("append", key, value)


def r(key, values):
    """A read that returned ``values`` (the invoke carries null)."""
    return ("r", key, values)


def txn(process, ops, call, ret, kind="ok"):
    """The events of one transaction; ``ret=None`` leaves it without a completion. A fail or
    info completion repeats the invoke's value, reads unknown."""
    invoke = [[f, k, None if f == "r" else v] for f, k, v in ops]
    events = [{"process": process, "type": "invoke", "f": "txn", "value": invoke,
               "time_ns": call}]
    if ret is not None:
        done = [[f, k, v] for f, k, v in ops] if kind == "ok" else invoke
        events.append({"process": process, "type": kind, "f": "txn", "value": done,
                       "time_ns": ret})
    return events


def history(*txns):
    """The events in time order (a stable sort keeps each invoke before its completion)."""
    return sorted((e for t in txns for e in t), key=lambda e: e["time_ns"])


def verdicts(h):
    """Model -> valid, for every consistency model."""
    return {model: check(h, consistency=model)["valid"] for model in MODELS}


ALL_INVALID = dict.fromkeys(MODELS, False)
ALL_VALID = dict.fromkeys(MODELS, True)

# ----------------------------------------------------------------------- one per anomaly class


def g0():
    """T0 and T1 append to x and y in opposite orders: a write cycle."""
    return history(txn(0, [a("x", 1), a("y", 1)], 0, 10),
                   txn(1, [a("x", 2), a("y", 2)], 0, 10),
                   txn(2, [r("x", [1, 2]), r("y", [2, 1])], 20, 30))


def g1a():
    """T1 reads an append of T0, which failed."""
    return history(txn(0, [a("x", 1)], 0, 10, kind="fail"),
                   txn(1, [r("x", [1])], 20, 30))


def g1b():
    """T1 reads x between T0's two appends."""
    return history(txn(0, [a("x", 1), a("x", 2)], 0, 10),
                   txn(1, [r("x", [1])], 0, 10))


def g1c():
    """T0 and T1 each read the other's append."""
    return history(txn(0, [a("x", 1), r("y", [1])], 0, 10),
                   txn(1, [a("y", 1), r("x", [1])], 0, 10))


def g_single():
    """Read skew: T1 reads x before T0 and y after it."""
    return history(txn(0, [a("x", 1), a("y", 1)], 0, 10),
                   txn(1, [r("x", []), r("y", [1])], 0, 10),
                   txn(2, [r("x", [1])], 20, 30))


def g2_item():
    """Write skew: T0 and T1 read both keys empty and each append to a different one."""
    return history(txn(0, [r("x", []), r("y", []), a("x", 1)], 0, 10),
                   txn(1, [r("x", []), r("y", []), a("y", 1)], 0, 10),
                   txn(2, [r("x", [1]), r("y", [1])], 20, 30))


def g_nonadjacent():
    """A long fork: T0 sees T3's append to y but not T1's to x, T2 sees T1's but not T3's.
    Two rw edges, never adjacent: no single order of snapshots explains it."""
    return history(txn(0, [r("x", []), r("y", [2])], 0, 10),
                   txn(1, [a("x", 1)], 1, 11),
                   txn(2, [r("x", [1]), r("y", [])], 2, 12),
                   txn(3, [a("y", 2)], 3, 13))


def lost_update():
    """T0 and T1 read the same (empty) version of x and both append to it."""
    return history(txn(0, [r("x", []), a("x", 1)], 0, 10),
                   txn(1, [r("x", []), a("x", 2)], 0, 10))


def internal():
    """T0 does not see its own append."""
    return history(txn(0, [a("x", 1), r("x", [])], 0, 10))


def duplicate_elements():
    return history(txn(0, [a("x", 1)], 0, 10),
                   txn(1, [r("x", [1, 1])], 20, 30))


def garbage():
    """T0 reads a value nobody appended."""
    return history(txn(0, [r("x", [9])], 0, 10))


def incompatible_order():
    """T2 and T3 see x's two appends in opposite orders."""
    return history(txn(0, [a("x", 1)], 0, 10),
                   txn(1, [a("x", 2)], 0, 10),
                   txn(2, [r("x", [1, 2])], 20, 30),
                   txn(3, [r("x", [2, 1])], 20, 30))


def g_single_realtime():
    """A stale read: T1 starts after T0 committed its append to x and still reads x empty.
    Without real-time order this is serializable (T1 before T0)."""
    return history(txn(0, [a("x", 1)], 0, 10),
                   txn(1, [r("x", [])], 20, 30),
                   txn(2, [r("x", [1])], 40, 50))


def g_single_process():
    """The same stale read within one process, where the invoke comes at the very nanosecond
    of the previous completion: only process order exposes it."""
    return history(txn(0, [a("x", 1)], 0, 10),
                   txn(0, [r("x", [])], 10, 20),
                   txn(1, [r("x", [1])], 30, 40))


SI_ONLY = {"snapshot-isolation": True, "strong-snapshot-isolation": True,
           "serializable": False, "strict-serializable": False}
STALE = {"snapshot-isolation": True, "strong-snapshot-isolation": False,
         "serializable": True, "strict-serializable": False}

CASES = [
    (g0, "G0", ALL_INVALID),
    (g1a, "G1a", ALL_INVALID),
    (g1b, "G1b", ALL_INVALID),
    (g1c, "G1c", ALL_INVALID),
    (g_single, "G-single", ALL_INVALID),
    (g_nonadjacent, "G-nonadjacent", ALL_INVALID),
    (g2_item, "G2-item", SI_ONLY),
    (lost_update, "lost-update", ALL_INVALID),
    (internal, "internal", ALL_INVALID),
    (duplicate_elements, "duplicate-elements", ALL_INVALID),
    (garbage, "garbage", ALL_INVALID),
    (incompatible_order, "incompatible-order", ALL_INVALID),
    (g_single_realtime, "G-single-realtime", STALE),
    (g_single_process, "G-single-process", STALE),
]


@pytest.mark.parametrize("make, anomaly, expected", CASES, ids=[c[1] for c in CASES])
def test_each_anomaly_class_is_found_and_named(make, anomaly, expected):
    h = make()
    result = check(h, consistency="serializable")
    assert result["anomaly_types"] == [anomaly], result["anomalies"]
    (entry,) = result["anomalies"][anomaly]
    assert entry["txns"] and entry["explanation"]
    assert result["stats"]["anomaly_counts"] == {anomaly: 1}
    assert verdicts(h) == expected


def test_cycle_report_names_the_edges():
    result = check(g_single())
    (entry,) = result["anomalies"]["G-single"]
    edges = {(e["from"], e["to"]): e for e in entry["cycle"]}
    assert edges[(0, 1)] == {"from": 0, "to": 1, "type": "wr", "key": "y", "value": 1}
    assert edges[(1, 0)] == {"from": 1, "to": 0, "type": "rw", "key": "x", "read": [],
                             "next": 1}
    assert sorted(t["id"] for t in entry["txns"]) == [0, 1]
    assert "T1 read \"x\" = [] and T0 appended 1, the next element (rw)" in entry["explanation"]
    assert "read skew" in entry["explanation"]


def test_realtime_cycle_reports_the_realtime_edge():
    (entry,) = check(g_single_realtime())["anomalies"]["G-single-realtime"]
    kinds = sorted(e["type"] for e in entry["cycle"])
    assert kinds == ["realtime", "rw"]
    rt = next(e for e in entry["cycle"] if e["type"] == "realtime")
    assert (rt["from"], rt["to"], rt["complete_ns"], rt["invoke_ns"]) == (0, 1, 10, 20)


def test_lost_update_with_observed_order_is_also_read_skew():
    """With a later read fixing x's order, the lost update also forms a ww + rw cycle."""
    h = lost_update() + txn(2, [r("x", [1, 2])], 20, 30)
    result = check(h)
    assert result["anomaly_types"] == ["G-single", "lost-update"]
    (entry,) = result["anomalies"]["lost-update"]
    assert sorted(t["id"] for t in entry["txns"]) == [0, 1] and entry["read"] == []


def test_unread_committed_appends_come_after_every_read_element():
    """Nobody reads x after T0's append, yet T1, invoked after T0 committed, read x empty:
    T0's append is in x's order after [], so T1 → T0 is an rw edge and the read is stale."""
    h = history(txn(0, [a("x", 1)], 0, 10),
                txn(1, [r("x", [])], 20, 30))
    result = check(h)
    assert result["anomaly_types"] == ["G-single-realtime"]
    (entry,) = result["anomalies"]["G-single-realtime"]
    assert "no read returned" in entry["explanation"]
    # Write skew whose appends nobody read afterwards.
    skew = g2_item()[:-2]
    assert check(skew, consistency="serializable")["anomaly_types"] == ["G2-item"]
    # An unread append after a read one: T2 read the latest version, T1's unread append is
    # later, and T1 committed before T2 began.
    h = history(txn(0, [a("x", 1)], 0, 10), txn(1, [a("x", 2)], 20, 30),
                txn(2, [r("x", [1])], 40, 50))
    assert check(h)["anomaly_types"] == ["G-single-realtime"]
    # The same appends, concurrent with the read: fine.
    h = history(txn(0, [a("x", 1)], 0, 10), txn(1, [a("x", 2)], 20, 50),
                txn(2, [r("x", [1])], 40, 50))
    assert check(h, consistency="strict-serializable")["anomaly_types"] == []


def test_internal_read_out_of_order_and_after_a_read():
    out_of_order = history(txn(0, [a("x", 1), a("x", 2), r("x", [2, 1])], 0, 10))
    assert check(out_of_order)["anomaly_types"] == ["internal"]
    after_read = history(txn(0, [a("x", 5)], 0, 10),
                         txn(1, [r("x", [5]), a("x", 6), r("x", [5])], 20, 30))
    result = check(after_read)
    assert result["anomaly_types"] == ["internal"]
    assert result["anomalies"]["internal"][0]["expected"] == [5, 6]
    fine = history(txn(0, [a("x", 5)], 0, 10),
                   txn(1, [r("x", [5]), a("x", 6), r("x", [5, 6]), a("x", 7)], 20, 30),
                   txn(2, [a("x", 8), r("x", [5, 6, 7, 8])], 40, 50))
    assert check(fine)["anomaly_types"] == []


def test_intermediate_read_is_not_also_read_skew():
    """T1's read ends in T0's first append and T2 reads T0's second: T1 read no version T0
    installed, so there is no rw edge T1 → T0 to close a cycle with T0 → T1 (wr)."""
    h = g1b() + txn(2, [r("x", [1, 2])], 20, 30)
    assert check(h)["anomaly_types"] == ["G1b"]


def test_g1b_only_for_the_last_element_of_another_transaction():
    """Reading past another transaction's intermediate append is fine; reading one's own
    intermediate state is too."""
    h = history(txn(0, [a("x", 1), a("x", 2)], 0, 10),
                txn(1, [r("x", [1, 2]), a("x", 3), r("x", [1, 2, 3]), a("x", 4)], 20, 30),
                txn(2, [r("x", [1, 2, 3, 4])], 40, 50))
    assert check(h)["anomaly_types"] == []


def test_fewest_anti_dependencies_win():
    """T0 and T1 form a cycle of two rw edges, but T1 → T2 → T0 (wr, wr) closes one with a
    single rw: the SCC is read skew, not write skew."""
    h = history(txn(0, [r("x", []), a("y", 1), r("w", [1])], 0, 10),
                txn(1, [r("y", []), a("x", 1), a("z", 1)], 0, 10),
                txn(2, [r("z", [1]), a("w", 1)], 0, 10),
                txn(3, [r("x", [1]), r("y", [1])], 20, 30))
    result = check(h, consistency="serializable")
    assert result["anomaly_types"] == ["G-single"]
    (entry,) = result["anomalies"]["G-single"]
    assert sorted(e["type"] for e in entry["cycle"]) == ["rw", "wr", "wr"]


def test_an_edge_of_several_kinds_counts_as_a_dependency():
    """T1 → T0 is both rw (on y) and wr (on z): the cycle with T0 → T1 (rw on x) has one rw."""
    h = history(txn(0, [r("x", []), a("y", 1), r("z", [1])], 0, 10),
                txn(1, [r("y", []), a("x", 1), a("z", 1)], 0, 10),
                txn(2, [r("x", [1]), r("y", [1])], 20, 30))
    assert check(h)["anomaly_types"] == ["G-single"]


def test_write_skew_and_a_stale_read_in_one_component_are_both_reported():
    """The write skew of T0 and T1, but T0 starts after T1 committed, so its read of y is also
    stale: snapshot isolation allows both cycles, strong snapshot isolation not the second."""
    h = history(txn(0, [r("x", []), r("y", []), a("x", 1)], 20, 30),
                txn(1, [r("x", []), r("y", []), a("y", 1)], 0, 10),
                txn(2, [r("x", [1]), r("y", [1])], 40, 50))
    result = check(h, consistency="strong-snapshot-isolation")
    assert result["anomaly_types"] == ["G-single-realtime", "G2-item"]
    assert result["stats"]["cycle_components"] == 1
    assert result["forbidden"] == ["G-single-realtime"] and result["valid"] is False
    assert verdicts(h) == STALE | {"serializable": False}


def test_info_transaction_ordered_by_real_time():
    """T1 is invoked after T0 committed and never completes; its append is seen before T0's,
    which real time forbids."""
    h = history(txn(0, [a("x", 1)], 0, 10),
                txn(1, [a("x", 2)], 20, None),
                txn(2, [r("x", [2, 1])], 30, 40))
    result = check(h)
    assert result["anomaly_types"] == ["G0-realtime"]
    assert verdicts(h) == STALE


def test_unread_append_of_an_observed_info_transaction_is_committed():
    """T0 ends in info, but T1 read its append to x, so T0 committed, its append to y too;
    T1 read y without it: a fractured read (wr on x, rw on y), whatever T0's outcome said."""
    h = history(txn(0, [a("x", 1), a("y", 1)], 0, None),
                txn(1, [r("x", [1]), r("y", [])], 5, 10))
    assert verdicts(h) == ALL_INVALID
    assert check(h)["anomaly_types"] == ["G-single"]
    # Ended in an explicit info: the same.
    h = history(txn(0, [a("x", 1), a("y", 1)], 0, 3, kind="info"),
                txn(1, [r("x", [1]), r("y", [])], 5, 10))
    assert check(h)["anomaly_types"] == ["G-single"]


def test_reports_are_capped_but_all_counted():
    pairs = [txn(2 * i, [a(f"x{i}", 1), r(f"y{i}", [1])], 0, 10) +
             txn(2 * i + 1, [a(f"y{i}", 1), r(f"x{i}", [1])], 0, 10) for i in range(15)]
    result = check(history(*pairs), max_reported=10)
    assert len(result["anomalies"]["G1c"]) == 10
    assert result["stats"]["anomaly_counts"] == {"G1c": 15}
    assert result["stats"]["cycle_components"] == 15



@pytest.mark.parametrize("make, anomaly, expected", CASES, ids=[c[1] for c in CASES])
def test_counted_only_when_none_is_described(make, anomaly, expected):
    """``max_reported=0`` describes nothing but still finds, names and counts every anomaly."""
    h = make()
    result = check(h, consistency="serializable", max_reported=0)
    assert result["anomaly_types"] == [anomaly]
    assert result["anomalies"] == {anomaly: []}
    assert result["stats"]["anomaly_counts"] == {anomaly: 1}
    assert {model: check(h, consistency=model, max_reported=0)["valid"]
            for model in MODELS} == expected


# --------------------------------------------------------------------------- valid histories


def test_empty_history_is_valid():
    result = check([])
    assert result["valid"] is True and result["anomaly_types"] == []
    assert result["stats"]["txns"] == 0


def test_serial_execution_is_valid():
    h = history(txn(0, [a("x", 1), r("x", [1])], 0, 10),
                txn(1, [r("x", [1]), a("x", 2), a("y", 1)], 20, 30),
                txn(0, [r("x", [1, 2]), r("y", [1])], 40, 50),
                txn(1, [r("y", [1]), a("y", 2), r("y", [1, 2])], 60, 70))
    assert verdicts(h) == ALL_VALID
    assert check(h)["anomaly_types"] == []


def test_concurrent_non_conflicting_transactions_are_valid():
    h = history(*(txn(p, [a(f"k{p}", p), r(f"k{p}", [p])], 0, 10) for p in range(5)),
                *(txn(p, [r(f"k{p}", [p])], 20 + p, 40) for p in range(5)))
    assert verdicts(h) == ALL_VALID


def test_info_and_failed_transactions():
    h = history(txn(0, [a("x", 1)], 0, 10, kind="info"),       # observed: it committed
                txn(1, [a("x", 2)], 0, None),                    # never completed, observed
                txn(2, [a("x", 3)], 0, 10, kind="info"),       # never observed
                txn(3, [a("y", 1)], 0, 10, kind="fail"),       # never observed
                txn(4, [r("x", [1, 2]), r("y", [])], 20, 30))
    result = check(h, consistency="strict-serializable")
    assert result["valid"] is True and result["anomaly_types"] == []
    s = result["stats"]
    assert (s["txns"], s["ok"], s["fail"], s["info"], s["info_observed"]) == (5, 1, 1, 3, 2)


def test_nemesis_and_other_events_are_skipped():
    h = [{"process": "nemesis", "type": "info", "f": "partition", "value": None,
          "time_ns": 0}] + g_single()
    assert check(h)["anomaly_types"] == ["G-single"]


# -------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("events, message", [
    (txn(0, [a("x", 1)], 0, None) + txn(0, [a("x", 2)], 1, None), "is open"),
    ([{"process": 0, "type": "ok", "f": "txn", "value": [], "time_ns": 0}],
     "no open operation"),
    (txn(0, [a("x", 1)], 0, 10) + txn(1, [a("x", 1)], 0, 10), "unique"),
    (txn(0, [("put", "x", 1)], 0, 10), "micro-operation"),
    (txn(0, [r("x", 5)], 0, 10), "must return a list"),
    (txn(0, [a("x", 1)], 10, 5), "before its invoke"),
    ([{"process": 0, "type": "invoke", "f": "txn", "value": [], "time_ns": None}], "time_ns"),
    # JSON's NaN and Infinity order nothing: read as times, they would invent real-time order.
    (txn(0, [a("x", 1)], float("nan"), float("nan")) + txn(1, [r("x", [])], 0, 10),
     "finite number"),
    (txn(0, [a("x", 1)], float("-inf"), 0) + txn(1, [r("x", [])], 5, 10), "finite number"),
])
def test_malformed_histories_are_rejected(events, message):
    with pytest.raises(HistoryError, match=message):
        check(events)


def test_unknown_consistency_model_is_rejected():
    with pytest.raises(ValueError, match="consistency"):
        check([], consistency="read-your-writes")


# -------------------------------------------------------------------- histories by construction


def random_history(rng, n_txns, *, keys=10, processes=5, fail_rate=0.05, info_rate=0.03):
    """A list-append history executed atomically at a point inside each transaction's
    interval, hence strict serializable. Failed transactions take no effect; an info one takes
    effect or not (its process then retires, as a client would); some never complete."""
    specs = []
    next_value = 0
    process_ids = list(range(processes))
    clock = [0] * processes  # per slot: when its current process is free again
    for _ in range(n_txns):
        slot = rng.randrange(processes)
        call = clock[slot] + rng.randint(1, 20)
        point = call + rng.randint(0, 20)
        ret = point + rng.randint(0, 20)
        clock[slot] = ret
        ops = []
        for _ in range(rng.randint(1, 4)):
            key = f"k{rng.randrange(keys)}"
            if rng.random() < 0.5:
                next_value += 1
                ops.append(["append", key, next_value])
            else:
                ops.append(["r", key, None])
        roll = rng.random()
        kind = "fail" if roll < fail_rate else "info" if roll < fail_rate + info_rate else "ok"
        specs.append((point, process_ids[slot], call, ret, kind, ops))
        if kind == "info":
            process_ids[slot] = max(process_ids) + 1
    state: dict[str, list[int]] = {}
    events = []
    for point, process, call, ret, kind, ops in sorted(specs, key=lambda s: s[0]):
        applied = kind == "ok" or (kind == "info" and rng.random() < 0.5)
        done = []
        scratch = {k: list(v) for k, v in state.items()} if applied else None
        for f, key, arg in ops:
            if applied and f == "append":
                scratch.setdefault(key, []).append(arg)
            if f == "r" and kind == "ok":
                arg = list(scratch.get(key, []))
            done.append([f, key, arg])
        if applied:
            state.update(scratch)
        invoke = [[f, k, None if f == "r" else v] for f, k, v in ops]
        events.append({"process": process, "type": "invoke", "f": "txn", "value": invoke,
                       "time_ns": call})
        if kind != "info" or rng.random() < 0.5:
            events.append({"process": process, "type": kind, "f": "txn",
                           "value": done if kind == "ok" else invoke, "time_ns": ret})
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events


def random_small_history(rng):
    """Two to four transactions on one or two keys, run in a random order but some reading an
    older snapshot than their turn, some with a corrupted read, at random intervals (so real
    time is often violated), each in its own process."""
    n = rng.randint(2, 4)
    keys = ["x", "y"][:rng.randint(1, 2)]
    value = 0
    specs = []
    for _ in range(n):
        ops = []
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            if rng.random() < 0.5:
                value += 1
                ops.append(["append", key, value])
            else:
                ops.append(["r", key, None])
        specs.append(ops)
    order = list(range(n))
    rng.shuffle(order)
    states = [{}]
    kinds, done = {}, {}
    for position, i in enumerate(order):
        kinds[i] = rng.choice(["ok", "ok", "ok", "ok", "info", "fail"])
        applied = kinds[i] == "ok" or (kinds[i] == "info" and rng.random() < 0.5)
        snapshot = states[rng.randint(0, position) if rng.random() < 0.3 else position]
        view = {k: list(v) for k, v in snapshot.items()}
        after = {k: list(v) for k, v in states[position].items()}
        done[i] = []
        for f, key, arg in specs[i]:
            if f == "append":
                view.setdefault(key, []).append(arg)
                if applied:
                    after.setdefault(key, []).append(arg)
            else:
                arg = list(view.get(key, []))
            done[i].append([f, key, arg])
        reads = [op for op in done[i] if op[0] == "r"]
        if reads and rng.random() < 0.1:
            op = rng.choice(reads)
            op[2] = rng.choice([op[2][1:], op[2] + op[2][-1:], op[2] + [99], op[2][::-1]])
        states.append(after if applied else states[position])
    events = []
    for i in range(n):
        call = rng.randint(0, 20)
        invoke = [[f, k, None if f == "r" else v] for f, k, v in specs[i]]
        events.append({"process": i, "type": "invoke", "f": "txn", "value": invoke,
                       "time_ns": call})
        if kinds[i] != "info" or rng.random() < 0.5:
            events.append({"process": i, "type": kinds[i], "f": "txn",
                           "value": done[i] if kinds[i] == "ok" else invoke,
                           "time_ns": call + rng.randint(0, 20)})
    events.sort(key=lambda e: (e["time_ns"], e["type"] != "invoke"))
    return events


def reference(events, strict):
    """Serializability by exhaustive search, independent of bench.elle: some subset of the
    info transactions and some order of it and the ok ones (respecting real time if
    ``strict``) in which every ok read returns the list as it then is."""
    opened, txns = {}, []
    for e in events:
        if e["type"] == "invoke":
            opened[e["process"]] = e
            continue
        invoke = opened.pop(e["process"])
        if e["type"] == "ok":
            txns.append((e["value"], invoke["time_ns"], e["time_ns"], True))
        elif e["type"] == "info":
            txns.append((invoke["value"], invoke["time_ns"], float("inf"), False))
    txns += [(inv["value"], inv["time_ns"], float("inf"), False) for inv in opened.values()]
    sure = [t for t in txns if t[3]]
    maybe = [t for t in txns if not t[3]]
    for mask in range(1 << len(maybe)):
        chosen = sure + [t for bit, t in enumerate(maybe) if mask >> bit & 1]
        for order in itertools.permutations(chosen):
            if strict and any(later[2] < earlier[1] for i, earlier in enumerate(order)
                              for later in order[i + 1:]):
                continue
            state = {}
            if all(_replay(state, ops, determinate) for ops, _, _, determinate in order):
                return True
    return False


def _replay(state, ops, determinate):
    for f, key, arg in ops:
        if f == "append":
            state.setdefault(key, []).append(arg)
        elif determinate and state.get(key, []) != arg:
            return False
    return True


@pytest.mark.parametrize("seed", range(2))
def test_sound_against_brute_force_reference(seed):
    """Whatever the checker forbids under (strict) serializability, no (strict) serial order
    explains; and it misses few of the histories that none explains."""
    rng = random.Random(seed)
    tally = {}
    for _ in range(1500):
        h = random_small_history(rng)
        for model, strict in (("serializable", False), ("strict-serializable", True)):
            expected = reference(h, strict)
            got = check(h, consistency=model)["valid"]
            assert got or not expected, (model, h, check(h, consistency=model))
            tally[(model, expected, got)] = tally.get((model, expected, got), 0) + 1
    for model in ("serializable", "strict-serializable"):
        caught = tally.get((model, False, False), 0)
        missed = tally.get((model, False, True), 0)
        assert caught > 100 and tally[(model, True, True)] > 1000, tally
        assert missed <= 0.05 * caught, tally


@pytest.mark.parametrize("seed", range(20))
def test_small_random_executions_are_strict_serializable(seed):
    rng = random.Random(seed)
    h = random_history(rng, rng.randint(1, 60), keys=rng.choice([1, 3]),
                       processes=rng.choice([2, 4]))
    result = check(h, consistency="strict-serializable")
    assert result["anomaly_types"] == [], result["anomalies"]


def test_two_thousand_transactions_and_a_planted_stale_read():
    rng = random.Random(2024)
    h = random_history(rng, 2000)
    result = check(h, consistency="strict-serializable")
    assert result["valid"] is True, result["anomalies"]
    s = result["stats"]
    assert s["txns"] == 2000 and s["ok"] > 1800
    # The realtime edges are a reduction: a few per transaction, not one per pair.
    assert s["edges"]["realtime"] < 5 * s["txns"]

    # After everything, one client reads key k0 whole, then another drops its last element.
    end = max(e["time_ns"] for e in h) + 100
    full = list(result_state(h, "k0"))
    assert full
    h = h + txn("reader", [r("k0", full)], end, end + 10) \
        + txn("stale", [r("k0", full[:-1])], end + 20, end + 30)
    result = check(h, consistency="strict-serializable")
    assert result["anomaly_types"] == ["G-single-realtime"], result["anomaly_types"]
    assert result["valid"] is False
    assert check(h, consistency="serializable")["valid"] is True


def result_state(h, key):
    """The longest list any ok read of ``key`` returned."""
    best = []
    for e in h:
        if e["type"] == "ok":
            for f, k, v in e["value"]:
                if f == "r" and k == key and len(v) > len(best):
                    best = v
    return best


# ------------------------------------------------------------------------------------- the CLI


def test_cli_exit_status_and_summary(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(e) + "\n" for e in g_single_realtime()))
    bad.write_text("".join(json.dumps(e) + "\n" for e in g2_item()) + "\n")
    assert len(elle.load_history(str(bad))) == 6
    assert elle.main([str(good), "--consistency", "serializable"]) == 0
    out = capsys.readouterr().out
    assert "valid under serializable" in out and "also found, allowed: G-single-realtime" in out
    assert elle.main([str(good)]) == 1
    out = capsys.readouterr().out
    assert "NOT valid under strong-snapshot-isolation: G-single-realtime" in out
    assert "realtime" in out and "T1 p1 ok [20 .. 30]: r \"x\" []" in out
    assert elle.main([str(bad), "--consistency", "snapshot-isolation"]) == 0
    capsys.readouterr()
    assert elle.main([str(bad), "--consistency", "serializable", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and doc["forbidden"] == ["G2-item"]
    assert elle.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
