"""Unit tests of the YCSB harness's pure parts: workload generators, HdrHistogram percentiles,
open-loop accounting (on trio's MockClock: no real time passes), compare, plots, the JSON
figures and the load generator's self-test verdict."""

from __future__ import annotations

import collections
import math
import random

import pytest
import trio
import trio.testing

from bench import compare, hdr, plots, workloads
from bench.openloop import LoadSpec, Tally, merge_tallies, run_load
from bench.workloads import Op, OpGenerator, Zipfian, key_name
from bench.ycsb import selftest_verdict, summarize, targets

pytest.importorskip("hdrh")

# --------------------------------------------------------------------------- distributions


def _chi_square(observed: list[int], expected: list[float]) -> float:
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


# Upper 0.1 % points of the chi-square distribution (df = 99 and 49): a correct generator
# exceeds them once in a thousand seeds; the seeds here are fixed, so the tests are stable.
CHI2_999_DF99 = 148.2
CHI2_999_DF49 = 85.4


@pytest.mark.parametrize("theta", [0.0, 0.5, 0.99])
def test_zipfian_rank_frequencies_match_the_exact_distribution(theta):
    n, draws = 100, 100_000
    z = Zipfian(n, theta, scramble=False)
    rng = random.Random(42)
    counts = collections.Counter(z.next_rank(rng) for _ in range(draws))
    observed = [counts[i] for i in range(n)]
    expected = [z.probability(i) * draws for i in range(n)]
    assert _chi_square(observed, expected) < CHI2_999_DF99
    assert math.isclose(sum(z.probability(i) for i in range(n)), 1.0)


def test_zipfian_theta_skews_towards_the_hottest_record():
    rng = random.Random(7)
    draws = 50_000
    hot = {}
    for theta in (0.0, 0.5, 0.99):
        z = Zipfian(1000, theta, scramble=False)
        hot[theta] = sum(z.next_rank(rng) == 0 for _ in range(draws)) / draws
        p = z.probability(0)
        assert abs(hot[theta] - p) < 4 * math.sqrt(p * (1 - p) / draws) + 1e-4
    assert hot[0.0] < hot[0.5] < hot[0.99]
    # YCSB's constant: about 13 % of draws hit the hottest of 1,000 records at θ = 0.99.
    assert 0.11 < hot[0.99] < 0.15


def test_scrambled_zipfian_is_the_same_distribution_over_a_fixed_permutation():
    a = Zipfian(500, 0.99)
    b = Zipfian(500, 0.99)  # another load process builds the same permutation
    assert sorted(a.record_of_rank(i) for i in range(500)) == list(range(500))
    assert [a.record_of_rank(i) for i in range(500)] == [b.record_of_rank(i) for i in range(500)]
    assert [a.record_of_rank(i) for i in range(10)] != list(range(10))  # hot keys scattered
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [a.next(rng1) for _ in range(100)] == \
        [a.record_of_rank(a.next_rank(rng2)) for _ in range(100)]


def test_latest_prefers_the_newest_record_and_follows_inserts():
    newest = [999]
    latest = workloads.Latest(1000, 0.99, newest=lambda: newest[0])
    rng = random.Random(5)
    draws = [latest.next(rng) for _ in range(20_000)]
    counts = collections.Counter(draws)
    assert counts.most_common(1)[0][0] == 999
    assert all(0 <= d <= 999 for d in draws)
    # Age frequencies follow the zipfian over age (rank = newest - record).
    z = Zipfian(1000, 0.99, scramble=False)
    observed = [counts[999 - i] for i in range(50)]
    expected = [z.probability(i) * len(draws) for i in range(50)]
    rest_obs = len(draws) - sum(observed)
    rest_exp = len(draws) - sum(expected)
    assert _chi_square(observed + [rest_obs], expected + [rest_exp]) < CHI2_999_DF49 + 3
    newest[0] = 1500
    assert collections.Counter(latest.next(rng) for _ in range(5000)).most_common(1)[0][0] \
        == 1500


def test_operation_mixes_follow_the_workload_definitions():
    for name, mix in workloads.WORKLOADS.items():
        gen = OpGenerator(name, 1000, seed=11, max_scan=10)
        n = 20_000
        kinds = collections.Counter(gen.next().kind for _ in range(n))
        for kind, frac in mix.ops:
            sigma = math.sqrt(frac * (1 - frac) / n)
            assert abs(kinds[kind] / n - frac) <= 4 * sigma + 1e-9, (name, kind)
        assert set(kinds) == {k for k, _ in mix.ops}


def test_operations_carry_valid_keys_values_and_scan_lengths():
    gen = OpGenerator("E", 1000, value_size=64, max_scan=7, seed=1)
    for _ in range(2000):
        op = gen.next()
        assert len(op.key) == 16 and op.key.startswith(b"user")
        if op.kind == "scan":
            assert 1 <= op.scan_length <= 7
        else:
            assert op.kind == "insert" and len(op.value) == 64
    bank = OpGenerator("bank", 10, seed=2)
    for _ in range(500):
        op = bank.next()
        assert op.kind == "transfer" and op.key != op.key2


def test_inserts_of_several_load_processes_never_collide():
    gens = [OpGenerator("D", 100, seed=1, process=p, processes=3) for p in range(3)]
    inserted = []
    for g in gens:
        for _ in range(3000):
            op = g.next()
            if op.kind == "insert":
                inserted.append(op.key)
    assert len(inserted) == len(set(inserted)) > 100
    assert min(inserted) == key_name(100)  # records start right after the loaded ones


def test_latest_reads_only_records_already_inserted_with_several_load_processes():
    # Workload D from two load processes, one with twice the other's share of the load (3
    # clients: 2 + 1); even at equal shares their insert counts drift apart. A process must
    # not take the other's records for inserted before they are: "read latest" would read
    # records that do not exist yet.
    records = 1000
    gens = [OpGenerator("D", records, seed=4, process=p, processes=2) for p in range(2)]
    inserted: set[bytes] = set()
    reads = 0
    for _ in range(6000):
        for p in (0, 0, 1):
            op = gens[p].next()
            if op.kind == "insert":
                inserted.add(op.key)
                gens[p].finished(op)
            elif op.key >= key_name(records):
                reads += 1
                assert op.key in inserted, (p, op.key)
    assert reads > 1000  # the newest records are read, and often


def test_latest_reads_an_insert_once_it_and_every_earlier_one_ended():
    gen = OpGenerator("D", 100, distribution="latest", seed=2)
    inserts = []
    while len(inserts) < 3:
        op = gen.next()
        if op.kind == "insert":
            inserts.append(op)
    assert [op.key for op in inserts] == [key_name(i) for i in (100, 101, 102)]
    newest = gen._nth_newest
    assert newest(0) == 99  # none ended: the newest record is the last one loaded
    gen.finished(inserts[1])
    assert newest(0) == 99  # 101 has, but 100 is still on its way
    gen.finished(inserts[0])
    assert (newest(0), newest(1), newest(2)) == (101, 100, 99)
    gen.finished(inserts[2])
    assert newest(0) == 102


def test_same_seed_same_stream_and_bad_arguments_refused():
    a = [OpGenerator("A", 100, seed=9).next() for _ in range(1)]
    g1, g2 = OpGenerator("A", 100, seed=9), OpGenerator("A", 100, seed=9)
    assert [g1.next() for _ in range(200)] == [g2.next() for _ in range(200)]
    assert a
    with pytest.raises(ValueError):
        OpGenerator("Z", 100)
    with pytest.raises(ValueError):
        OpGenerator("A", 1)
    with pytest.raises(ValueError):
        workloads.make_chooser("pareto", 10)
    with pytest.raises(ValueError):
        Zipfian(10, -0.5)


# ------------------------------------------------------------------------------ histograms


def _nearest_rank(sorted_values: list[float], q: float) -> float:
    """The naive reference: the smallest value with at least q % of samples at or below."""
    k = max(1, math.ceil(q / 100 * len(sorted_values) - 1e-9))  # 99.9 % of 20,000 is 19,980
    return sorted_values[k - 1]


def test_hdr_percentiles_agree_with_a_naive_reference():
    rng = random.Random(1)
    samples_us = [int(rng.lognormvariate(7, 1.2)) + 1 for _ in range(20_000)]
    h = hdr.Histogram()
    for v in samples_us:
        h.record_us(v)
    ordered = sorted(samples_us)
    for q in (50, 90, 99, 99.9, 100):
        want = _nearest_rank(ordered, q) / 1000.0
        got = h.percentile_ms(q)
        # Three significant digits: equal to within 0.1 % (HdrHistogram reports the highest
        # value equivalent to the sample's bucket).
        assert abs(got - want) <= want * 0.001 + 0.001, q
    assert h.count == len(samples_us)
    assert abs(h.max_ms() - ordered[-1] / 1000) <= ordered[-1] / 1000 * 0.001 + 0.001


def test_hdr_merge_and_encoding_keep_every_count():
    a, b, both = hdr.Histogram(), hdr.Histogram(), hdr.Histogram()
    for i in range(1, 3000):
        (a if i % 2 else b).record_us(i * 7)
        both.record_us(i * 7)
    merged = hdr.Histogram.decode(a.encode())
    merged.add(hdr.Histogram.decode(b.encode()))
    assert merged.count == both.count
    for q in (50, 99, 99.9):
        assert merged.percentile_ms(q) == both.percentile_ms(q)
    assert hdr.Histogram.decode("").count == 0
    assert hdr.Histogram().summary()["p99_ms"] is None


def test_hdr_counting_records_is_the_same_as_recording_each_value():
    """Histogram.record_us counts values (rounded to HdrHistogram's bucket) and adds them in
    bulk: every figure must equal recording each value into an HdrHistogram directly."""
    from hdrh.histogram import HdrHistogram

    rng = random.Random(5)
    direct = HdrHistogram(hdr.LOWEST_US, hdr.HIGHEST_US, hdr.SIG_FIGS)
    counted = hdr.Histogram()
    for _ in range(50_000):
        us = rng.lognormvariate(8, 2.5)  # ~1 µs to beyond the hour clamp
        direct.record_value(min(max(int(us), hdr.LOWEST_US), hdr.HIGHEST_US))
        counted.record_us(us)
        if rng.random() < 1e-4:  # reads between records flush what was pending
            assert counted.count == direct.get_total_count()
    assert counted.count == direct.get_total_count() == 50_000
    for q in (1, 50, 90, 99, 99.9, 100):
        assert counted.percentile_ms(q) == direct.get_value_at_percentile(q) / 1000.0
    assert counted.max_ms() == direct.get_max_value() / 1000.0
    assert math.isclose(counted.mean_ms(), direct.get_mean_value() / 1000.0, rel_tol=1e-9)
    # What is pending stays small whatever is recorded: one count per bucket.
    many = hdr.Histogram()
    for v in range(1, 200_000):
        many.record_us(v * 37)
    assert len(many._pending) <= 2048 + 1024 * 12 and many.count == 199_999


def test_missing_dependency_gives_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hdrh" else real(name, *a))
    with pytest.raises(hdr.MissingDependency, match="pip install"):
        hdr.require("hdrh", "hdrhistogram")
    from bench import ycsb

    with pytest.raises(SystemExit, match="hdrhistogram"):
        ycsb.check_dependencies(False)


# ----------------------------------------------------------------------- open-loop accounting


class StallingServer:
    """A fake server: every operation takes ``service_s``; operation ``stall_at`` (0-based)
    takes ``stall_s`` instead (a stop-the-world pause)."""

    def __init__(self, service_s: float, stall_at: int, stall_s: float) -> None:
        self.service_s, self.stall_at, self.stall_s = service_s, stall_at, stall_s
        self.calls = 0
        self.lock = trio.Lock()  # one operation at a time, like a single-threaded server

    async def execute(self, op: Op) -> int:
        async with self.lock:
            n = self.calls
            self.calls += 1
            await trio.sleep(self.stall_s if n == self.stall_at else self.service_s)
        return 1


class Ops:
    def next(self) -> Op:
        return Op("read", b"k")


def _run(driver, spec: LoadSpec) -> Tally:
    async def main():
        return await run_load(driver, Ops(), spec)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_open_loop_latency_includes_the_queueing_behind_a_stall():
    # 100 ops/s for 5 s; the server answers in 1 ms but pauses 1 s at the 200th operation.
    server = StallingServer(0.001, 200, 1.0)
    t = _run(server, LoadSpec("open", 4, duration_s=5.0, rate=100.0, grace_s=5.0))
    assert t.recorded == 500  # every intended operation counted, however late
    assert t.late == 0 and t.errors == 0
    lat_ms = t.latency
    # The ~100 operations that arrived during the pause waited for it: their latency,
    # measured from their intended start, spreads from ~1 s down to ~0: p99 near 1 s, and
    # more than 10 % of operations over 100 ms.
    assert 900 <= lat_ms.max_ms() <= 1010
    assert lat_ms.percentile_ms(99) >= 800
    assert lat_ms.percentile_ms(85) >= 100
    assert lat_ms.percentile_ms(50) <= 2


def test_closed_loop_hides_the_same_stall_coordinated_omission():
    server = StallingServer(0.001, 200, 1.0)
    t = _run(server, LoadSpec("closed", 1, duration_s=5.0, grace_s=5.0))
    # One worker waited through the pause and sent nothing meanwhile: one slow operation.
    assert t.latency.max_ms() >= 999
    assert t.latency.percentile_ms(99) <= 2
    assert t.completed == t.recorded and 3900 <= t.completed <= 4001


def test_open_loop_counts_operations_cut_off_by_the_grace_period_as_late():
    server = StallingServer(0.001, 10, 1e6)  # the 11th operation never answers
    t = _run(server, LoadSpec("open", 1, duration_s=1.0, rate=100.0, grace_s=2.0))
    assert t.recorded == 100
    assert t.late == 90  # the stalled one and the 89 queued behind it
    # A late operation is recorded with the latency it had reached at the cut (a lower bound).
    assert t.latency.max_ms() >= 2900
    assert t.completed == 10


def test_warmup_is_excluded_and_throughput_counts_the_window_only():
    server = StallingServer(0.01, -1, 0)  # 10 ms per op, one at a time: 100 ops/s
    t = _run(server, LoadSpec("closed", 1, duration_s=2.0, warmup_s=1.0, interval_s=0.5))
    assert 199 <= t.completed <= 201  # 10 ms steps on a float clock: the edges may round
    assert len(t.timeline) >= 6 and sum(n for n, _ in t.timeline) >= 299
    row = summarize(t, duration=2.0, interval=0.5, warmup=1.0)
    assert 99 <= row["ops_per_s"] <= 100.5
    assert [p[3] for p in row["timeline"][:3]] == [True, True, False]
    for field in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "abort_rate", "cdf",
                  "by_kind", "errors", "client_cpu_s_per_1k_ops"):
        assert field in row
    assert row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"] <= row["max_ms"]


def test_tallies_of_several_processes_merge():
    server = StallingServer(0.001, -1, 0)
    a = _run(server, LoadSpec("closed", 1, duration_s=1.0))
    b = _run(StallingServer(0.002, -1, 0), LoadSpec("closed", 1, duration_s=1.0))
    m = merge_tallies([Tally.from_json(a.to_json()), Tally.from_json(b.to_json())])
    assert m.completed == a.completed + b.completed
    assert m.latency.count == a.latency.count + b.latency.count
    assert m.latency.percentile_ms(99) >= 1.9


def test_load_spec_refuses_nonsense():
    with pytest.raises(ValueError):
        LoadSpec("open", 4, duration_s=1.0)  # no rate
    with pytest.raises(ValueError):
        LoadSpec("sideways", 4, duration_s=1.0)
    with pytest.raises(ValueError):
        LoadSpec("closed", 0, duration_s=1.0)


# --------------------------------------------------------------------- verdicts and compare


def test_selftest_ratio_and_target_verdicts():
    v = selftest_verdict({"ops_per_s": 6000.0, "clients": 32}, 1000.0)
    assert v["ratio"] == 6.0 and v["met"] is True
    v = selftest_verdict({"ops_per_s": 3000.0, "clients": 32}, 1000.0)
    assert v["ratio"] == 3.0 and v["met"] is False
    assert selftest_verdict({"ops_per_s": 3000.0}, None)["met"] is None
    rows = [{"system": "meridian", "mode": "closed", "clients": 32, "ops_per_s": 3100.0,
             "p99_ms": 20.0},
            {"system": "etcd", "mode": "closed", "clients": 32, "ops_per_s": 1000.0,
             "p99_ms": 25.0}]
    (t,) = targets(rows, "A")
    assert t["value"] == 3.1 and t["met"] is True
    rows[0]["p99_ms"] = 30.0
    assert targets(rows, "A")[0]["met"] is False  # faster, but a worse tail
    assert targets(rows[:1], "A")[0]["met"] is None
    assert targets(rows, "B") == []


def _doc(rows):
    return {"benchmark": "ycsb", "results": rows}


def _row(ops_reps, p99_reps, clients=32):
    return {"system": "meridian", "workload": "A", "mode": "closed", "clients": clients,
            "ops_per_s": sorted(ops_reps)[len(ops_reps) // 2], "ops_per_s_reps": ops_reps,
            "p99_ms": sorted(p99_reps)[len(p99_reps) // 2], "p99_ms_reps": p99_reps,
            "p50_ms": 5.0}


def test_compare_flags_a_real_change_and_not_noise():
    old = _doc([_row([1000, 1080, 950], [20, 22, 19])])
    noise = _doc([_row([1040, 990, 1060], [21, 19.5, 22])])
    faster = _doc([_row([1500, 1480, 1530], [20, 21, 19])])
    slower_tail = _doc([_row([1010, 1000, 1050], [45, 44, 47])])
    by = lambda rs: {c["metric"]: c["verdict"] for c in rs}  # noqa: E731
    assert set(by(compare.compare_docs(old, noise)).values()) == {"within noise"}
    assert by(compare.compare_docs(old, faster))["ops_per_s"] == "better"
    assert by(compare.compare_docs(old, slower_tail))["p99_ms"] == "worse"
    assert by(compare.compare_docs(old, slower_tail))["ops_per_s"] == "within noise"
    # The threshold is the measured spread: 13 % here, so a 10 % change is noise ...
    c = compare.compare_docs(old, _doc([_row([1100, 1100, 1100], [20, 20, 20])]))
    assert by(c)["ops_per_s"] == "within noise" and c[0]["noise_measured"]
    # ... while with tight repetitions the same 10 % is a change.
    tight = _doc([_row([1000, 1001, 999], [20, 20, 20])])
    assert by(compare.compare_docs(tight, _doc([_row([1100, 1101, 1099], [20, 20, 20])])))[
        "ops_per_s"] == "better"
    # Rows that do not match (other client count) are not compared.
    assert compare.compare_docs(old, _doc([_row([1, 2], [1, 2], clients=64)])) == []


def test_compare_without_repetitions_uses_the_stated_noise():
    old = _doc([_row([1000], [20])])
    new = _doc([_row([1200], [20])])
    (c, *_rest) = compare.compare_docs(old, new, noise=0.25)
    assert c["verdict"] == "within noise" and not c["noise_measured"]
    assert compare.compare_docs(old, new, noise=0.1)[0]["verdict"] == "better"


def test_compare_assumes_the_stated_noise_for_a_row_measured_once():
    # Three tight repetitions against one run: the single run's noise is unknown, so the
    # stated --noise stands in for it; the other row's tight spread does not vouch for it.
    tight = _doc([_row([1000, 1001, 999], [20, 20, 20])])
    once = _doc([_row([900], [20])])
    for old, new in ((tight, once), (once, tight)):
        c = compare.compare_docs(old, new, noise=0.25)[0]
        assert c["metric"] == "ops_per_s"
        assert c["verdict"] == "within noise" and not c["noise_measured"]
        assert c["noise"] == 0.25
    # A wide spread still counts when it is the larger.
    wide = _doc([_row([600, 1000, 1400], [20, 20, 20])])
    c = compare.compare_docs(wide, once, noise=0.25)[0]
    assert c["noise"] == 0.8 and c["noise_measured"]


def test_compare_measures_the_noise_of_repetitions_named_repetitions_field():
    # bench storage (and adjudicator) keep each repetition's figure as
    # ``repetitions_<metric>``: that spread is the noise, not the assumed --noise.
    def storage(reps):
        return {"benchmark": "storage", "results": [
            {"system": "meridian", "batch": 1, "records_per_s": sorted(reps)[len(reps) // 2],
             "repetitions_records_per_s": reps}]}

    wide = storage([4921.2, 9668.5, 8420.4, 8177.6, 5599.8, 6811.4, 9786.7])  # ~60 % spread
    (c,) = compare.compare_docs(wide, storage([5000.0, 6000.0, 7000.0]))  # -27 %
    assert c["noise_measured"] and c["verdict"] == "within noise"
    tight = storage([1000.0, 1001.0, 999.0])
    (c,) = compare.compare_docs(tight, storage([880.0, 881.0, 879.0]))  # -12 %, spread 0.2 %
    assert c["noise_measured"] and c["verdict"] == "worse"


def test_compare_pairs_and_compares_the_adjudicator_rows():
    # bench adjudicator: one row per (implementation, workload), throughput in txns_per_s.
    def adjudicator(c_reps, ref_reps):
        return {"benchmark": "adjudicator", "results": [
            {"implementation": impl, "workload": "write4",
             "txns_per_s": sorted(reps)[len(reps) // 2], "repetitions_txns_per_s": reps}
            for impl, reps in (("c", c_reps), ("reference", ref_reps))]}

    old = adjudicator([1_800_000.0, 1_810_000.0, 1_790_000.0], [190_000.0, 191_000.0, 189_000.0])
    new = adjudicator([1_200_000.0, 1_210_000.0, 1_190_000.0], [190_500.0, 191_000.0, 189_500.0])
    pairs, unmatched_old, unmatched_new = compare.match_rows(old, new)
    assert [(o["implementation"], n["implementation"]) for _, o, n in pairs] == [
        ("c", "c"), ("reference", "reference")]
    assert (unmatched_old, unmatched_new) == (0, 0)
    verdicts = {(c["row"]["implementation"], c["metric"]): c["verdict"]
                for c in compare.compare_docs(old, new)}
    assert verdicts == {("c", "txns_per_s"): "worse", ("reference", "txns_per_s"): "within noise"}


# ------------------------------------------------------------ what went wrong, in the report


def _ycsb_doc() -> dict:
    row = {"system": "meridian", "workload": "A", "mode": "closed", "clients": 32,
           "ops_per_s": 1000.0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 5.0, "p999_ms": 9.0,
           "max_ms": 20.0, "abort_rate": 0.0, "errors": 0, "error_rate": 0.0, "late": 0,
           "last_error": None}
    return {"schema": 1, "benchmark": "ycsb", "command": "python -m bench ycsb --quick",
            "machine": {}, "elapsed_s": 10.0,
            "config": {"workload": "A", "quick": True, "mix": {"read": 0.5, "update": 0.5},
                       "distribution": "zipfian", "theta": 0.99, "records": 100,
                       "value_size": 100, "duration_s": 3.0, "warmup_s": 1.0, "repeat": 1},
            "results": [row,
                        {**row, "system": "etcd", "errors": 250, "error_rate": 0.2, "late": 3,
                         "last_error": "TimeoutError: deadline"}],
            "failures": [{"system": "etcd", "mode": "open", "clients": 32,
                          "offered_ops_per_s": 900.0, "repetition": 1,
                          "error": "load process 0 exited early (status 1)"}]}


def test_report_names_the_errors_late_operations_and_failed_runs(capsys):
    from bench import report
    from bench.ycsb import print_results

    doc = _ycsb_doc()
    md = report.render_ycsb(doc, "bench/results/ycsb-A.json")
    line = next(x for x in md.splitlines() if x.startswith("- etcd closed c=32"))
    assert "250 errors (20.0% of operations)" in line and "3 late" in line
    assert "TimeoutError: deadline" in line
    assert "- run 1 of etcd open c=32 at 900/s failed" in md
    assert "- meridian" not in md  # a clean row is not listed
    print_results({**doc, "targets": []})
    out = capsys.readouterr().out
    assert "etcd closed c=32: 250 errors, 3 late" in out


def test_printed_selftest_verdict_is_not_applicable_without_meridian(capsys):
    from bench.ycsb import print_results

    # Only etcd ran: there is no Meridian throughput to hold the generator's against.
    doc = {**_ycsb_doc(), "targets": [], "failures": []}
    doc["loadgen_selftest"] = selftest_verdict({"ops_per_s": 3000.0, "clients": 32}, None)
    print_results(doc)
    line = next(x for x in capsys.readouterr().out.splitlines() if "self-test" in x)
    assert "NOT met" not in line and "None" not in line and "n/a" in line
    doc["loadgen_selftest"] = selftest_verdict({"ops_per_s": 3000.0, "clients": 32}, 1000.0)
    print_results(doc)
    line = next(x for x in capsys.readouterr().out.splitlines() if "self-test" in x)
    assert "= 3.0x meridian's best (need >= 5: NOT met)" in line


def test_report_of_a_clean_run_has_no_problem_lines():
    from bench import report

    doc = {**_ycsb_doc(), "failures": []}
    doc["results"] = doc["results"][:1]
    assert "failed or were late" not in report.render_ycsb(doc, "bench/results/ycsb-A.json")


def test_scale_report_names_the_errors_of_a_point():
    from bench import report
    from bench.scale import _row

    row = _row("meridian", "regions", 48, 3, {"ops_per_s": 900.0, "p50_ms": 1.0,
                                              "p99_ms": 5.0, "p999_ms": 9.0, "errors": 12,
                                              "error_rate": 0.01, "late": 0,
                                              "last_error": "ConnectionError: gone"})
    doc = {"schema": 1, "benchmark": "scale", "command": "python -m bench scale --quick",
           "machine": {}, "config": {"records": 100, "value_size": 100, "duration_s": 3.0,
                                     "warmup_s": 1.0}, "results": [row], "failures": []}
    md = report.render_scale(doc, "bench/results/scale.json")
    assert "- regions meridian closed c=48 regions=3: 12 errors (1.0% of operations); 0 late; " \
           "last error: `ConnectionError: gone`" in md


# ----------------------------------------------------------------------------------- plots


def test_plots_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    h = hdr.Histogram()
    for v in range(100, 5000, 7):
        h.record_us(v)
    base = {"workload": "A", "p50_ms": 1.0, "p99_ms": 4.0, "cdf": h.cdf(50),
            "timeline": [[0.5, 100.0, 3.0, True], [1.0, 120.0, 4.0, False]], "sweep": None}
    rows = [
        {**base, "system": "meridian", "mode": "closed", "clients": 32},
        {**base, "system": "etcd", "mode": "closed", "clients": 32},
        {**base, "system": "meridian", "mode": "open", "clients": 32, "offered_ops_per_s": 100},
        {**base, "system": "meridian", "mode": "open", "clients": 32, "offered_ops_per_s": 200},
        {**base, "system": "etcd", "mode": "open", "clients": 32, "offered_ops_per_s": 100},
    ]
    paths = plots.plot_ycsb({"config": {"workload": "A"}, "results": rows}, str(tmp_path), "y")
    assert sorted(p.rsplit("-", 1)[1] for p in paths) == ["cdf.png", "saturation.png",
                                                          "timeline.png"]
    scale_rows = [{"system": "meridian", "axis": a, "clients": c, "regions": r,
                   "ops_per_s": 100.0 * c, "p99_ms": 5.0}
                  for a, c, r in (("clients", 1, 1), ("clients", 8, 1), ("regions", 16, 1),
                                  ("regions", 32, 2))]
    paths += plots.plot_scale({"results": scale_rows}, str(tmp_path), "s")
    assert len(paths) == 5
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == plots.PNG_MAGIC


def test_multi_region_mix_drivers_name_home_cross_and_regional_keyspaces():
    from bench.targets import REGIONAL_KEYSPACE, _drivers

    regions = ("us-east", "eu-west", "ap-south")
    specs = _drivers({r: [f"127.0.0.1:{i}"] for i, r in enumerate(regions, 7000)}, regions,
                     True)
    home = specs["us-east"]
    assert home["keyspace"] == "ycsb-us-east" and home["region"] == "us-east"
    assert home["keyspaces"] == {"home": "ycsb-us-east", "cross": "ycsb-ap-south",
                                 "regional": REGIONAL_KEYSPACE}
    assert "keyspaces" not in _drivers({"us-east": ["h:1"]}, ("us-east",), False)["us-east"]
    gen = OpGenerator("regions", 100, seed=3)
    kinds = collections.Counter(gen.next().kind for _ in range(1000))
    assert set(kinds) == {"home", "cross", "regional"}


# --------------------------------------------------------------------------- no-op driver


@pytest.fixture
def noop_server():
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "bench.drivers", "noop-server"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        word, port = server.stdout.readline().decode().split()
        assert word == "READY"
        yield server, int(port)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
        server.stdout.close()


async def test_noop_driver_answers_every_worker_on_one_connection(noop_server):
    """Many workers share one connection; a worker cancelled while waiting leaves its answer
    unclaimed, and every other worker still gets exactly one answer per request."""
    from bench.drivers import open_driver

    _, port = noop_server
    done = collections.Counter()
    op = Op("update", b"user1", value=b"v" * 100)
    async with open_driver({"system": "noop", "port": port}) as driver:
        async def worker(i: int) -> None:
            for _ in range(50):
                assert await driver.execute(op) == 1
                done[i] += 1

        async def cancelled() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()  # cancelled at its first checkpoint: while it waits
                await driver.execute(op)
            done["cancelled"] += 1

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(worker, i)
                if i % 10 == 0:
                    nursery.start_soon(cancelled)
        assert all(cell[0] is None for cell in driver.mux.waiting)  # only the cancelled
    assert done == {**{i: 50 for i in range(40)}, "cancelled": 4}


async def test_noop_driver_fails_waiting_workers_when_the_server_goes(noop_server):
    from bench.drivers import open_driver

    server, port = noop_server
    op = Op("read", b"user1", None)
    with pytest.raises(BaseException) as info:  # noqa: B017 - the nursery's group or the error
        async with open_driver({"system": "noop", "port": port}) as driver:
            await driver.execute(op)
            server.kill()
            with trio.fail_after(10):
                await driver.execute(op)
    errors = (info.value.exceptions if isinstance(info.value, BaseExceptionGroup)
              else [info.value])
    assert any(isinstance(e, ConnectionError) for e in errors), errors


def test_compare_flags_the_latency_of_storage_and_adjudicator_rows():
    # bench storage reports latency in microseconds (p50_us, p99_us), bench adjudicator per
    # batch (batch_p50_us, batch_p99_us): a tail ten times worse at the same throughput is a
    # regression, whatever the unit the figure is kept in.
    def storage(p99_us):
        return {"benchmark": "storage", "results": [
            {"system": "meridian", "batch": 1, "records_per_s": 5000.0, "p50_us": 150.0,
             "p99_us": p99_us, "repetitions_records_per_s": [4990.0, 5000.0, 5010.0]}]}

    verdicts = {c["metric"]: c["verdict"]
                for c in compare.compare_docs(storage(400.0), storage(4000.0))}
    assert verdicts == {"records_per_s": "within noise", "p50_us": "within noise",
                        "p99_us": "worse"}

    def adjudicator(batch_p99_us):
        return {"benchmark": "adjudicator", "results": [
            {"implementation": "c", "workload": "write4", "txns_per_s": 1_800_000.0,
             "batch_p50_us": 90.0, "batch_p99_us": batch_p99_us}]}

    verdicts = {c["metric"]: c["verdict"]
                for c in compare.compare_docs(adjudicator(120.0), adjudicator(30.0))}
    assert verdicts == {"txns_per_s": "within noise", "batch_p50_us": "within noise",
                        "batch_p99_us": "better"}
