"""The convergence checker (bench/convergence.py) against one hand-made history per anomaly,
valid histories with failed and indeterminate operations, and histories of a simulated
three-region keyspace running the real resolvers, with and without planted replication bugs
(FAULTS.md §5: a checker is trusted only after it has caught planted bugs)."""

from __future__ import annotations

import json
import random

import pytest

from bench import convergence
from bench.__main__ import main as bench_main
from bench.convergence import HistoryError, check
from engine import merge

US, EU, AP = "us-east", "eu-west", "ap-south"

# ------------------------------------------------------------------------------------ helpers


def op(process, f, key, value, region, call, ret, kind="ok", ts=None):
    """The events of one operation; ``ret=None`` leaves it without a completion. ``ts`` goes
    into an ok completion (the commit timestamp the database reported)."""
    events = [{"process": process, "type": "invoke", "f": f, "key": key, "value": value,
               "region": region, "time_ns": call}]
    if ret is not None:
        done = {"process": process, "type": kind, "f": f, "key": key, "value": value,
                "region": region, "time_ns": ret}
        if ts is not None:
            done["ts"] = ts
        events.append(done)
    return events


def write(process, key, value, region, call, ret, ts=None, kind="ok"):
    return op(process, "write", key, value, region, call, ret, kind, ts)


def final(process, key, region, value, at=1000, kind="ok"):
    """A final read of ``key`` in ``region`` that returned ``value``."""
    events = op(process, "final-read", key, None, region, at, at + 1, kind)
    if kind == "ok":
        events[1]["value"] = value
    return events


def finals(key, value, regions=(US, EU, AP), first_process=100):
    return [e for i, r in enumerate(regions) for e in final(first_process + i, key, r, value)]


def history(*ops):
    """The events in time order (a stable sort keeps each invoke before its completion)."""
    return sorted((e for o in ops for e in o), key=lambda e: e["time_ns"])


def kinds(result):
    return result["anomaly_types"]


# --------------------------------------------------------------------------------------- lww


def lww_good():
    """Concurrent writes in three regions, one failed, one indeterminate that lost."""
    return history(write(0, "x", 1, US, 0, 10, ts=5),
                   write(1, "x", 2, EU, 1, 11, ts=5),        # same ts: eu-west < us-east
                   write(2, "x", 3, AP, 2, 12, ts=4),
                   write(3, "x", 4, AP, 3, 13, kind="fail"),
                   write(4, "x", 5, EU, 4, None),            # info, never visible
                   write(0, "y", 7, US, 20, 30, ts=21),
                   finals("x", 1), finals("y", 7, first_process=200))


def test_lww_good_history_is_valid():
    result = check(lww_good())
    assert result["valid"] is True and kinds(result) == []
    s = result["stats"]
    assert (s["writes_ok"], s["writes_fail"], s["writes_info"]) == (4, 1, 1)
    assert s["final_reads"] == 6 and s["keys"] == 2 and s["regions"] == [AP, EU, US]
    assert s["anomaly_counts"] == {}


def test_lww_an_indeterminate_write_may_be_the_winner():
    h = history(write(0, "x", 1, US, 0, 10, ts=50),
                write(1, "x", 2, EU, 0, None),
                finals("x", 2))
    assert check(h)["valid"] is True


def test_lww_deletes_and_absent_keys():
    deleted = history(write(0, "x", 1, US, 0, 10, ts=5),
                      op(1, "delete", "x", None, EU, 20, 30, ts=25),
                      finals("x", None))
    assert check(deleted)["valid"] is True
    nulled = history(write(0, "x", 1, US, 0, 10, ts=5),
                     write(1, "x", None, EU, 20, 30, ts=25),   # a write of null deletes
                     finals("x", None))
    assert check(nulled)["valid"] is True
    maybe = history(write(0, "x", 1, US, 0, None), finals("x", None))
    assert check(maybe)["valid"] is True


def test_divergence():
    h = history(write(0, "x", 1, US, 0, 10, ts=5),
                write(1, "x", 2, EU, 0, 10, ts=6),
                final(100, "x", US, 1), final(101, "x", EU, 2), final(102, "x", AP, 2))
    result = check(h)
    assert "divergence" in kinds(result)
    (entry,) = result["anomalies"]["divergence"]
    assert entry["key"] == "x"
    assert {(r["region"], r["value"]) for r in entry["reads"]} == {(US, 1), (EU, 2), (AP, 2)}
    assert "final reads differ" in entry["explanation"]


def test_divergence_within_one_region():
    h = history(write(0, "x", 1, US, 0, 10, ts=5),
                write(1, "x", 2, EU, 0, None),
                final(100, "x", US, 1), final(101, "x", US, 2, at=2000))
    assert kinds(check(h)) == ["divergence"]


def test_lost_write():
    """Every region agrees on the older of two acknowledged writes."""
    h = history(write(0, "x", 1, US, 0, 10, ts=5),
                write(1, "x", 2, EU, 0, 10, ts=6),
                finals("x", 1))
    result = check(h)
    assert kinds(result) == ["lost-write"]
    (entry,) = result["anomalies"]["lost-write"]
    assert entry["lost"]["value"] == 2 and entry["lost"]["ts"] == 6
    assert entry["lost_count"] == 1 and entry["regions"] == sorted([US, EU, AP])


def test_lost_write_on_an_origin_tie():
    """Same timestamp: the greater origin must win."""
    h = history(write(0, "x", "from-us", US, 0, 10, ts=5),
                write(1, "x", "from-eu", EU, 0, 10, ts=5),
                finals("x", "from-eu"))
    assert kinds(check(h)) == ["lost-write"]


def test_lost_write_when_the_key_vanished():
    h = history(write(0, "x", 1, US, 0, 10, ts=5), finals("x", None))
    result = check(h)
    assert kinds(result) == ["lost-write"]
    assert "read nothing" in result["anomalies"]["lost-write"][0]["explanation"]
    # A delete older than the acknowledged write does not explain it either.
    h = history(op(1, "delete", "x", None, EU, 0, 5, ts=2),
                write(0, "x", 1, US, 0, 10, ts=5), finals("x", None))
    assert kinds(check(h)) == ["lost-write"]


def test_garbage():
    h = history(write(0, "x", 1, US, 0, 10, ts=5), finals("x", 99))
    result = check(h)
    assert kinds(result) == ["garbage"]
    (entry,) = result["anomalies"]["garbage"]
    assert entry["value"] == 99 and entry["failed_writes"] == []


def test_garbage_from_a_failed_write():
    h = history(write(0, "x", 1, US, 0, 10, ts=5),
                write(1, "x", 2, EU, 0, 10, kind="fail"),
                finals("x", 2))
    result = check(h)
    assert kinds(result) == ["garbage"]
    entry = result["anomalies"]["garbage"][0]
    assert "a failed write did" in entry["explanation"]
    assert entry["failed_writes"][0]["value"] == 2


def test_values_compare_as_json():
    h = history(write(0, "x", 1, US, 0, 10, ts=5), finals("x", True))
    assert kinds(check(h)) == ["garbage"]
    h = history(write(0, "x", {"a": [1, 2]}, US, 0, 10, ts=5), finals("x", {"a": [1, 2]}))
    assert check(h)["valid"] is True


def test_keys_without_final_reads_are_counted_not_judged():
    h = history(write(0, "x", 1, US, 0, 10, ts=5), final(100, "x", US, None, kind="info"))
    result = check(h)
    assert result["valid"] is True
    assert result["stats"]["keys_without_final_read"] == 1
    assert result["stats"]["final_reads_unknown"] == 1


def test_with_its_regions_named_a_region_that_never_read_a_key_makes_the_history_invalid():
    # A region still partitioned at the end never converged: told which regions there are,
    # the checker reports each key a region has no ok final read of.
    writes = [write(0, "x", 1, US, 0, 10, ts=5), write(1, "x", 2, EU, 0, 10, ts=6)]
    cases = [[final(100, "x", US, 2), final(101, "x", EU, None, kind="info")],
             [final(100, "x", US, None, kind="fail"), final(101, "x", EU, None, kind="fail")],
             []]
    for finals_ in cases:
        h = history(*writes, *finals_)
        assert check(h)["valid"] is True  # unchecked without the regions
        result = check(h, regions=[US, EU])
        assert result["valid"] is False
        assert result["anomaly_types"] == ["missing-final-read"]
    h = history(*writes, final(100, "x", US, 2), final(101, "x", EU, 2))
    assert check(h, regions=[US, EU])["valid"] is True


# ----------------------------------------------------------------------------------- counter


def incr(process, key, delta, region, call, ret, kind="ok"):
    return op(process, "incr", key, delta, region, call, ret, kind)


def counter_history(final_value, regions=(US, EU, AP)):
    return history(incr(0, "c", 5, US, 0, 10),
                   incr(1, "c", -2, EU, 0, 10),
                   incr(2, "c", 3, AP, 0, 10, kind="fail"),
                   incr(3, "c", 7, AP, 0, None),          # info
                   incr(4, "c", -4, EU, 0, 10, kind="info"),
                   finals("c", final_value, regions))


@pytest.mark.parametrize("value", [3, 10, -1, 6])
def test_counter_ok_sum_plus_any_subset_of_info_increments_is_valid(value):
    result = check(counter_history(value), "counter")
    assert result["valid"] is True, result["anomalies"]
    assert result["stats"]["counter_checks_inexact"] == 0


@pytest.mark.parametrize("value", [2, 11, -2, 4, None])
def test_counter_mismatch(value):
    """Out of range (2, 11), in range but no subset sums to it (4: 3 + {0, 7, -4, 3}),
    below the range (-2), or nothing although increments were acknowledged."""
    result = check(counter_history(value), "counter")
    assert kinds(result) == ["counter-mismatch"]
    entry = result["anomalies"]["counter-mismatch"][0]
    assert entry["ok_sum"] == 3 and entry["range"] == [-1, 10]


def test_counter_subset_sum_respects_the_gcd_and_exact_sums():
    h = history(incr(0, "c", 4, US, 0, None), incr(1, "c", 6, EU, 0, None), finals("c", 5))
    assert kinds(check(h, "counter")) == ["counter-mismatch"]     # gcd 2
    h = history(incr(0, "c", 5, US, 0, None), incr(1, "c", 7, EU, 0, None), finals("c", 6))
    assert kinds(check(h, "counter")) == ["counter-mismatch"]     # sums 0, 5, 7, 12
    assert check(history(incr(0, "c", 5, US, 0, None), incr(1, "c", 7, EU, 0, None),
                         finals("c", 12)), "counter")["valid"] is True


def test_counter_range_only_when_the_sums_are_too_many():
    big = convergence.MAX_SUBSET_SUM_BITS * 3
    h = history(incr(0, "c", big + 1, US, 0, None), incr(1, "c", big, EU, 0, None),
                finals("c", big + 1))
    result = check(h, "counter")
    assert result["valid"] is True and result["stats"]["counter_checks_inexact"] == 1
    h = history(incr(0, "c", big + 1, US, 0, None), incr(1, "c", big, EU, 0, None),
                finals("c", 3 * big))
    assert kinds(check(h, "counter")) == ["counter-mismatch"]


def test_counter_divergence():
    h = history(incr(0, "c", 1, US, 0, 10), final(100, "c", US, 1), final(101, "c", EU, None))
    result = check(h, "counter")
    assert kinds(result) == ["counter-mismatch", "divergence"]


def test_counter_null_without_acknowledged_increments_is_valid():
    h = history(incr(0, "c", 1, US, 0, None), incr(1, "c", 2, EU, 0, 5, kind="fail"),
                finals("c", None))
    assert check(h, "counter")["valid"] is True


# --------------------------------------------------------------------------------------- max


def test_max():
    base = [write(0, "m", 3, US, 0, 10), write(1, "m", 9, EU, 0, 10),
            write(2, "m", 12, AP, 0, None), write(3, "m", 50, AP, 0, 10, kind="fail")]
    assert check(history(*base, finals("m", 9)), "max")["valid"] is True
    assert check(history(*base, finals("m", 12)), "max")["valid"] is True
    assert kinds(check(history(*base, finals("m", 3)), "max")) == ["lost-write"]
    assert kinds(check(history(*base, finals("m", None)), "max")) == ["lost-write"]
    assert kinds(check(history(*base, finals("m", 50)), "max")) == ["garbage"]
    assert kinds(check(history(*base, finals("m", 10)), "max")) == ["garbage"]


# --------------------------------------------------------------------------------------- set


def sadd(process, key, elem, region, call, ret, kind="ok"):
    return op(process, "add", key, elem, region, call, ret, kind)


def sremove(process, key, elem, region, call, ret, kind="ok"):
    return op(process, "remove", key, elem, region, call, ret, kind)


def test_set_valid_histories():
    base = [sadd(0, "s", 1, US, 0, 10), sadd(1, "s", 2, EU, 0, 10),
            sremove(2, "s", 2, AP, 5, 15),              # concurrent with the add of 2
            sadd(3, "s", 3, AP, 0, None),               # info
            sadd(4, "s", 4, AP, 0, 3, kind="fail")]
    for final_value in ([1, 2], [2, 1, 3], [1]):
        assert check(history(*base, finals("s", final_value)), "add_wins_set")["valid"] is True


def test_set_lost_add():
    h = history(sadd(0, "s", 1, US, 0, 10), sadd(1, "s", 2, EU, 0, 10), finals("s", [2]))
    result = check(h, "add_wins_set")
    assert kinds(result) == ["set-lost-add"]
    (entry,) = result["anomalies"]["set-lost-add"]
    assert entry["element"] == 1 and entry["add"]["process"] == 0


def test_set_lost_add_is_not_excused_by_an_earlier_remove():
    """A remove that completed before the add was invoked cannot have observed it."""
    h = history(sremove(1, "s", 1, EU, 0, 5), sadd(0, "s", 1, US, 10, 20), finals("s", []))
    assert kinds(check(h, "add_wins_set")) == ["set-lost-add"]
    # An indeterminate remove may complete at any later time, so it may have removed it.
    h = history(sremove(1, "s", 1, EU, 0, None), sadd(0, "s", 1, US, 10, 20), finals("s", []))
    assert check(h, "add_wins_set")["valid"] is True
    # A failed one did nothing.
    h = history(sremove(1, "s", 1, EU, 15, 25, kind="fail"), sadd(0, "s", 1, US, 10, 20),
                finals("s", None))
    assert kinds(check(h, "add_wins_set")) == ["set-lost-add"]


def test_set_lost_add_is_excused_by_a_remove_that_returned_as_the_add_was_invoked():
    """A tie in time counts as concurrent: a remove that returned at the very time_ns the add
    was invoked may have observed it."""
    h = history(sremove(1, "s", 1, EU, 0, 10), sadd(0, "s", 1, US, 10, 20), finals("s", []))
    assert check(h, "add_wins_set")["valid"] is True
    h = history(sremove(1, "s", 1, EU, 0, 9), sadd(0, "s", 1, US, 10, 20), finals("s", []))
    assert kinds(check(h, "add_wins_set")) == ["set-lost-add"]

def test_set_lost_remove():
    """A remove made after every add of the element was acknowledged in its own region saw
    all their tags: the element must be gone."""
    ops = [sadd(0, "s", 1, US, 0, 10), sadd(1, "s", 1, US, 2, 12),
           sremove(2, "s", 1, US, 20, 30)]
    result = check(history(*ops, finals("s", [1])), "add_wins_set")
    assert kinds(result) == ["set-lost-remove"]
    (entry,) = result["anomalies"]["set-lost-remove"]
    assert entry["element"] == 1 and entry["remove"]["process"] == 2
    assert check(history(*ops, finals("s", [])), "add_wins_set")["valid"] is True
    # An add from another region, one still running or of unknown outcome, or a remove of
    # unknown outcome, may have escaped the remove: the element may stay.
    for other in (sadd(1, "s", 1, EU, 2, 12), sadd(1, "s", 1, US, 2, 25),
                  sadd(1, "s", 1, US, 2, None)):
        h = history(sadd(0, "s", 1, US, 0, 10), other, sremove(2, "s", 1, US, 20, 30),
                    finals("s", [1]))
        assert check(h, "add_wins_set")["valid"] is True, other
    h = history(sadd(0, "s", 1, US, 0, 10), sremove(2, "s", 1, US, 20, None), finals("s", [1]))
    assert check(h, "add_wins_set")["valid"] is True


def test_set_garbage():
    h = history(sadd(0, "s", 1, US, 0, 10), sadd(1, "s", 2, EU, 0, 10, kind="fail"),
                finals("s", [1, 2, 7]))
    result = check(h, "add_wins_set")
    assert kinds(result) == ["set-garbage"]
    entries = result["anomalies"]["set-garbage"]
    assert {e["element"] for e in entries} == {2, 7}
    assert [e["failed_adds"] != [] for e in entries] == [True, False]


def test_set_divergence_ignores_element_order():
    h = history(sadd(0, "s", 1, US, 0, 10), sadd(1, "s", 2, EU, 0, 10),
                final(100, "s", US, [1, 2]), final(101, "s", EU, [2, 1]),
                final(102, "s", AP, [2]))
    assert kinds(check(h, "add_wins_set")) == ["divergence", "set-lost-add"]


# ------------------------------------------------------------------------------ malformed input


@pytest.mark.parametrize("resolver, events", [
    ("lww", write(0, "x", 1, US, 0, 10)),                          # ok write without ts
    ("lww", write(0, "x", 1, None, 0, 10, ts=5)),                  # ... or region
    ("counter", incr(0, "c", "5", US, 0, 10)),
    ("counter", incr(0, "c", 1.5, US, 0, 10)),
    ("max", write(0, "m", None, US, 0, 10)),
    ("counter", final(0, "c", US, "3")),
    ("add_wins_set", final(0, "s", US, {"a": 1})),
    ("lww", write(0, "x", 1, US, 0, 10, ts=5)[1:]),                # completion without invoke
])
def test_malformed_histories(resolver, events):
    with pytest.raises(HistoryError):
        check(events, resolver)


def test_set_operations_need_times():
    events = sadd(0, "s", 1, US, 0, 10)
    del events[0]["time_ns"]
    with pytest.raises(HistoryError, match="time_ns"):
        check(events, "add_wins_set")
    events = sadd(0, "s", 1, US, float("nan"), 10)
    with pytest.raises(HistoryError, match="finite number"):
        check(events, "add_wins_set")


def test_unknown_resolver():
    with pytest.raises(ValueError, match="lww, counter, max, add_wins_set"):
        check([], "last-writer")


def test_resolver_names_match_the_engine():
    assert convergence.RESOLVERS == merge.RESOLVER_NAMES


def test_other_events_are_skipped_and_reports_are_bounded():
    h = [{"process": "nemesis", "type": "info", "f": "partition", "value": None,
          "time_ns": 0}]
    h += op(50, "read", "x", None, US, 1, 2)
    for i in range(15):
        h += history(write(i, f"k{i}", 1, US, 0, 10, ts=5), write(20 + i, f"k{i}", 2, EU, 0,
                                                                     10, ts=6),
                     final(100 + i, f"k{i}", US, 1))
    result = check(h, max_reported=4)
    assert kinds(result) == ["lost-write"]
    assert len(result["anomalies"]["lost-write"]) == 4
    assert result["stats"]["anomaly_counts"] == {"lost-write": 15}


# ----------------------------------------------------------------------------------- the CLI


def test_cli(tmp_path, capsys):
    good, bad, broken = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "x.jsonl"
    good.write_text("\n".join(json.dumps(e) for e in lww_good()) + "\n")
    bad.write_text("\n".join(json.dumps(e) for e in counter_history(4)) + "\n")
    broken.write_text("{not json\n")
    assert convergence.main([str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    assert convergence.main([str(bad), "--resolver", "counter"]) == 1
    assert "counter-mismatch: 1 found" in capsys.readouterr().out
    assert convergence.main([str(bad), "--resolver", "counter", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["valid"] is False
    assert convergence.main([str(broken)]) == 2
    # The same as a subcommand of the harness, as add_parser says.
    capsys.readouterr()
    assert bench_main(["convergence", str(bad), "--resolver", "counter"]) == 1
    assert "counter-mismatch: 1 found" in capsys.readouterr().out


# ----------------------------------------------------- a simulated regional keyspace (engine)


REGIONS = (US, EU, AP)


def simulate(resolver_name, seed, *, bug=None, keys=10, ops=60):
    """Runs a regional keyspace of three regions with engine.merge's resolver: clients write
    in every region, each region merges its own writes at once and receives the others' in a
    random order with duplicates; then every region reads every key. Returns the history.

    ``bug`` plants a replication fault: ``"drop"`` (eu-west resumes ap-south's stream from a
    wrong watermark and misses its writes of the last quarter of the run)
    or ``"arrival-wins"`` (remote writes overwrite whatever is there, as if unresolved).
    """
    rng = random.Random(seed)
    resolver = merge.resolver_for(resolver_name)
    cells = {r: {} for r in REGIONS}
    shipped = []
    events = []
    now = 0
    unique = iter(range(1, 10**6))
    for i in range(ops):
        region = rng.choice(REGIONS)
        key = f"k{rng.randrange(keys)}"
        kb = key.encode()
        now += 10
        ts = now * 1000 + REGIONS.index(region)
        local = cells[region].get(kb)
        if resolver_name == "lww":
            value = next(unique)
            f, hv, payload = "write", value, str(value).encode()
            w = merge.RemoteWrite(kb, payload, ts, region, merge.PUT,
                                  None if local is None else local.version)
        elif resolver_name == "counter":
            delta = rng.randint(-5, 9)
            f, hv = "incr", delta
            w = merge.RemoteWrite(kb, merge.encode_int(delta), ts, region, merge.MERGE)
        else:
            elem = rng.randrange(4)
            eb = bytes([elem])
            if rng.random() < 0.3:
                f, payload = "remove", merge.encode_set_remove(
                    eb, merge.AddWinsSet.observed_tags(local, eb))
            else:
                f, payload = "add", merge.encode_set_add(eb)
            hv = elem
            w = merge.RemoteWrite(kb, payload, ts, region, merge.MERGE)
        outcome = rng.choices(["ok", "fail", "info"], weights=[8, 1, 1])[0]
        process = i
        events.append({"process": process, "type": "invoke", "f": f, "key": key, "value": hv,
                       "region": region, "time_ns": now})
        if outcome != "fail":
            cells[region][kb], _ = resolver.merge(local, w)
            shipped.append(w)
        if outcome != "info":
            done = {"process": process, "type": outcome, "f": f, "key": key, "value": hv,
                    "region": region, "time_ns": now + 5}
            if outcome == "ok":
                done["ts"] = ts
            events.append(done)
    for region in REGIONS:
        incoming = [w for w in shipped if w.origin != region]
        incoming += rng.sample(incoming, len(incoming) // 3)        # duplicates
        rng.shuffle(incoming)
        if bug == "drop" and region == EU:
            incoming = [w for w in incoming if w.origin != AP or w.ts <= now * 750]
        for w in incoming:
            cell = cells[region].get(w.key)
            if bug == "arrival-wins" and region == EU:
                cells[region][w.key] = merge.Cell("lww", w.ts, w.origin, (w.value, None))
            else:
                cells[region][w.key], _ = resolver.merge(cell, w)
    process = 10_000
    for k in range(keys):
        key = f"k{k}"
        for region in REGIONS:
            raw = resolver.value_of(cells[region].get(key.encode()))
            if raw is None:
                value = None
            elif resolver_name == "lww":
                value = int(raw)
            elif resolver_name == "counter":
                value = merge.decode_int(raw)
            else:
                value = [e[0] for e in merge.decode_set(raw)]
            now += 10
            events += final(process, key, region, value, at=now)
            process += 1
    return events


@pytest.mark.parametrize("resolver", ["lww", "counter", "add_wins_set"])
def test_simulated_keyspace_histories_are_valid(resolver):
    for seed in range(20):
        result = check(simulate(resolver, seed), resolver)
        assert result["valid"] is True, (seed, result["anomalies"])


def final_reads_differ(events):
    seen = {}
    for e in events:
        if e["f"] == "final-read" and e["type"] == "ok":
            seen.setdefault(e["key"], set()).add(json.dumps(e["value"], sort_keys=True))
    return any(len(values) > 1 for values in seen.values())


@pytest.mark.parametrize("resolver", ["lww", "counter", "add_wins_set"])
def test_a_dropped_replication_stream_is_caught(resolver):
    """Whenever the missed writes change what eu-west reads, the checker says so; a seed where
    they change nothing (overwritten, or an element added again) passes."""
    caught = 0
    for seed in range(20):
        events = simulate(resolver, seed, bug="drop")
        result = check(events, resolver)
        assert ("divergence" in result["anomaly_types"]) == final_reads_differ(events)
        caught += not result["valid"]
    assert caught >= 15


def test_arrival_order_instead_of_resolution_is_caught():
    results = [check(simulate("lww", seed, bug="arrival-wins"), "lww") for seed in range(10)]
    assert all(not r["valid"] for r in results)
    assert all("divergence" in r["anomaly_types"] for r in results)
