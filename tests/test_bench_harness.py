"""Accounting of the benchmark harness's load generator and figures: every operation a
schedule intends is counted, abort rates, the arrival phases of several load processes,
nearest-rank percentiles, the time-line's memory, storage figures, repetitions and compare.

Time runs on trio's MockClock: a test's "CPU load" is a jump of the clock made without
yielding, so no test depends on the speed of the machine."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bench.openloop import LoadSpec, Tally, run_load
from bench.workloads import Op


class Ops:
    """A stream of one operation (a read), each costing ``cost_s`` of (mock) CPU time."""

    def __init__(self, cost_s: float = 0.0, op: Op = Op("read", b"k")) -> None:
        self.cost_s = cost_s
        self.op = op

    @classmethod
    def update(cls) -> Ops:
        return cls(op=Op("update", b"k", value=b"v"))

    def next(self) -> Op:
        if self.cost_s:
            trio.lowlevel.current_clock().jump(self.cost_s)
        return self.op


def _run(driver, spec: LoadSpec, ops=None) -> Tally:
    async def main():
        return await run_load(driver, ops or Ops(), spec)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# ---------------------------------------------------------------- open loop: nothing vanishes


class CpuHeavyDriver:
    """A client library that costs ``cpu_s`` of CPU per operation (the server answers at
    once): the load process itself cannot keep up with a rate above ``1 / cpu_s``."""

    def __init__(self, cpu_s: float) -> None:
        self.cpu_s = cpu_s

    async def execute(self, op: Op) -> int:
        await trio.sleep(0)
        trio.lowlevel.current_clock().jump(self.cpu_s)  # busy, without yielding
        return 1


def test_open_loop_counts_every_intended_operation_when_the_generator_is_overloaded():
    # 3,000 ops/s offered, 1,000 ops/s of CPU: the generator falls behind its schedule. Every
    # operation intended in the window is dispatched (at once when already due), and those
    # not finished at the cut are late, with the latency they reached.
    spec = LoadSpec("open", 8, duration_s=1.0, rate=3000.0, interval_s=0.25, grace_s=0.5)
    t = _run(CpuHeavyDriver(0.001), spec)
    assert t.issued == 3000
    assert t.recorded + t.errors == 3000
    assert t.late >= 1000  # about 1,500 could run in 1.5 s
    # The last operations waited from their intended start to the cut: at least the grace.
    assert t.latency.max_ms() >= 500


def test_open_loop_counts_operations_never_sent_as_late():
    # The generator needs 20 ms of CPU per operation, twice the 10 ms between arrivals: it
    # is always behind, so it never yields to the workers, and by the cut (1.5 s) it has
    # sent about 75 of the window's 100 operations. All 100 are late, with latency = cut -
    # intended: the unsent ones as much as those queued.
    spec = LoadSpec("open", 4, duration_s=1.0, rate=100.0, interval_s=0.25, grace_s=0.5)
    t = _run(CpuHeavyDriver(0.0), spec, Ops(cost_s=0.02))
    assert 70 <= t.issued <= 76
    assert t.recorded == t.late == 100 and t.errors == 0
    assert sum(h.count for h in t.by_kind.values()) == 100
    assert 1490 <= t.latency.max_ms() <= 1510  # intended at 0 s
    assert 500 <= t.latency.percentile_ms(1) <= 530  # intended at 0.99 s


# ----------------------------------------------------------- abort rate: retries that ran out


class ConflictingTransaction:
    def __init__(self, db) -> None:
        self.db = db
        self._state = "open"  # run_transaction reads it: did the function commit it?

    async def put(self, keyspace, key, value) -> None:
        await trio.sleep(0)

    async def get(self, keyspace, key):
        return None

    async def commit(self) -> None:
        from engine.errors import TransactionConflictError

        await trio.sleep(0.001)  # a round trip
        if self.db.conflicting:
            raise TransactionConflictError("conflict", "write_write")

    def _ended(self) -> bool:
        return False

    def _discard(self) -> None:
        pass


class FakeDatabase:
    """Meridian's own retry loop (Database.run_transaction) over transactions that conflict
    at commit while ``conflicting`` is set."""

    def __init__(self) -> None:
        import random

        from engine.client import Database

        self._rng = random.Random(0)
        self.run_transaction = Database.run_transaction.__get__(self)
        self.conflicting = False

    def transaction(self, isolation: str = "snapshot") -> ConflictingTransaction:
        return ConflictingTransaction(self)


def test_meridian_driver_reports_the_attempts_of_a_transaction_that_gave_up(monkeypatch):
    from engine.errors import TransactionConflictError

    from bench import drivers
    from bench.drivers import MAX_ATTEMPTS, ConflictError, _MeridianDriver

    # No backoff between attempts: a failed operation takes 20 round trips, well inside the run.
    monkeypatch.setattr(drivers, "BASE_DELAY_S", 0.0)
    monkeypatch.setattr(drivers, "MAX_DELAY_S", 0.0)

    db = FakeDatabase()
    driver = _MeridianDriver(db, "ks", {})

    class EveryOtherConflicts:
        """Operations 1, 3, 5, ... conflict on every attempt."""

        n = 0

        async def execute(self, op: Op) -> int:
            db.conflicting = self.n % 2 == 1
            self.n += 1
            return await driver.execute(op)

    async def one() -> None:
        db.conflicting = True
        try:
            await driver.execute(Op("update", b"k", value=b"v"))
        except ConflictError as exc:
            assert exc.attempts == MAX_ATTEMPTS
            assert isinstance(exc.__cause__, TransactionConflictError)
        else:
            raise AssertionError("no ConflictError")

    trio.run(one, clock=trio.testing.MockClock(autojump_threshold=0))
    t = _run(EveryOtherConflicts(),
             LoadSpec("closed", 1, duration_s=1.0, interval_s=0.25, grace_s=1.0),
             Ops.update())
    assert t.errors > 0 and t.recorded > 0
    # A failed operation's attempts all aborted; a successful one took a single attempt.
    assert t.aborts == MAX_ATTEMPTS * t.errors
    assert t.attempts == t.recorded + MAX_ATTEMPTS * t.errors


def test_etcd_driver_reports_the_attempts_of_a_transaction_that_gave_up():
    from bench.drivers import MAX_ATTEMPTS, ConflictError, _EtcdDriver

    class Conn:
        async def post(self, path: str, body: dict) -> dict:
            if "compare" in body:
                return {"succeeded": False}  # someone else wrote the key meanwhile
            return {"responses": [{"response_range": {"kvs": [
                {"mod_revision": "7", "value": ""}]}}]}

    class Lease:
        async def __aenter__(self):
            return Conn()

        async def __aexit__(self, *exc) -> bool:
            return False

    class Pool:
        def take(self) -> Lease:
            return Lease()

    async def main() -> None:
        try:
            await _EtcdDriver(Pool()).execute(Op("rmw", b"k", value=b"v"))
        except ConflictError as exc:
            assert exc.attempts == MAX_ATTEMPTS
        else:
            raise AssertionError("no ConflictError")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class PooledConn:
    """A connection of the etcd driver's pool to a fake etcd: ``server["up"]`` says whether
    it answers (and accepts connections); every compare of a transaction fails."""

    host, port = "127.0.0.1", 2379

    def __init__(self, server: dict) -> None:
        self.server = server
        self.broken = False
        server["opened"] = server.get("opened", 0) + 1

    async def reopen(self) -> PooledConn:
        await trio.sleep(0.001)
        if not self.server["up"]:
            raise ConnectionRefusedError("connection refused")
        return PooledConn(self.server)

    async def close(self) -> None:
        pass

    async def post(self, path: str, body: dict) -> dict:
        await trio.sleep(0.001)
        if not self.server["up"]:
            raise ConnectionResetError("connection reset by peer")
        if "compare" in body:
            return {"succeeded": False}
        return {"responses": [{"response_range": {"kvs": []}}]}


def test_etcd_transaction_that_gave_up_keeps_its_connection():
    # Its answers were read whole: the connection is as good as before, and reopening it
    # would add a reconnection to etcd's figures under contention.
    from bench.drivers import ConflictError, _EtcdDriver, _Pool

    server = {"up": True}
    conn = PooledConn(server)
    pool = _Pool([conn])

    async def main() -> None:
        with pytest.raises(ConflictError):
            await _EtcdDriver(pool).execute(Op("rmw", b"k", value=b"v"))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert server["opened"] == 1 and pool.conns == [conn] and not conn.broken


def test_etcd_pool_reconnects_once_the_server_is_back():
    # A connection that broke while the server was down, and could not be reopened then, is
    # reopened by the next operation that takes it: the load comes back with the server
    # instead of waiting for a connection that is gone.
    from bench.drivers import _EtcdDriver, _Pool

    server = {"up": True}
    driver = _EtcdDriver(_Pool([PooledConn(server)]))
    read = Op("read", b"k")

    async def main() -> None:
        server["up"] = False
        for _ in range(2):
            with trio.fail_after(60), pytest.raises(OSError):
                await driver.execute(read)
        server["up"] = True
        with trio.fail_after(60):
            assert await driver.execute(read) == 1
            assert await driver.execute(read) == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert server["opened"] == 2


# ------------------------------------------------------- several load processes: one schedule


def test_load_processes_interleave_uniform_arrivals():
    from bench.loadproc import process_load

    rate, duration = 600.0, 1.0
    load = LoadSpec("open", 8, duration_s=duration, rate=rate, grace_s=1.0)
    for processes in (1, 2, 3, 4):
        arrivals: list[float] = []

        class Recorder:
            async def execute(self, op: Op) -> int:
                arrivals.append(trio.current_time())
                return 1

        async def main():
            start = trio.current_time() + 1.0  # the GO instant every process is given
            async with trio.open_nursery() as nursery:
                for i in range(processes):
                    spec = process_load(load, processes, i)
                    # Each its share of the rate, as of the connections (8 = 3 + 3 + 2).
                    assert abs(spec.rate - rate * spec.clients / 8) < 1e-9
                    nursery.start_soon(lambda s=spec: run_load(Recorder(), Ops(), s,
                                                                start_at=start))
            return start

        start = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        # Together the processes send one operation every 1 / rate, as one process would:
        # no two at the same instant.
        assert len(arrivals) == rate * duration
        for j, t in enumerate(sorted(arrivals)):
            assert abs(t - (start + j / rate)) < 1e-6, (processes, j)


def test_load_processes_share_the_rate_in_proportion_to_their_connections():
    # 3 connections over 2 load processes (2 + 1), offered 250 ops/s of a server that takes
    # 10 ms per operation on each connection: 300 ops/s fit, so nothing should queue. A process
    # given half the rate on one connection (125/s of a 100/s capacity) would queue without
    # bound and report a saturated system.
    from bench.loadproc import process_load, shares
    from bench.openloop import merge_tallies

    class TenMs:
        async def execute(self, op: Op) -> int:
            await trio.sleep(0.01)
            return 1

    rate, clients, processes = 250.0, 3, 2
    load = LoadSpec("open", clients, duration_s=2.0, rate=rate, grace_s=1.0)
    specs = [process_load(load, processes, i) for i in range(processes)]
    for spec, c in zip(specs, shares(clients, processes)):
        assert spec.clients == c and abs(spec.rate - rate * c / clients) < 1e-9

    async def main():
        start = trio.current_time() + 1.0
        tallies = [None] * processes

        async def one(i):
            tallies[i] = await run_load(TenMs(), Ops(), specs[i], start_at=start)

        async with trio.open_nursery() as nursery:
            for i in range(processes):
                nursery.start_soon(one, i)
        return merge_tallies(tallies)

    t = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert t.recorded == rate * 2.0 and t.late == 0
    assert t.latency.percentile_ms(99) <= 11.0


# A load process that keeps the protocol of bench.loadproc: READY, then at GO waits for the
# end of the window, writes an empty tally, says DONE and exits at once.
FAKE_LOAD_PROCESS = """
import json, sys, time
spec = json.load(open(sys.argv[1]))
print("READY", flush=True)
t0 = float(sys.stdin.readline().split()[1])
load = spec["load"]
time.sleep(max(0.0, t0 + load["warmup_s"] + load["duration_s"] - time.time()))
json.dump(TALLY, open(spec["out"], "w"))
print("DONE", flush=True)
"""


def test_a_load_process_that_ends_with_the_window_has_not_exited_early(tmp_path, monkeypatch):
    # The parent looks at its load processes after each of its sleeps; when the last one ends
    # late (a busy machine), a process that finished with the window has exited already: it
    # did not exit early, and its tally is there to read.
    import json
    import subprocess
    import sys
    import time

    from bench import loadproc

    script = FAKE_LOAD_PROCESS.replace("TALLY", repr(Tally().to_json()))
    real_popen, real_sleep = subprocess.Popen, time.sleep

    def popen(args, **kwargs):
        assert args[1:3] == ["-m", "bench.loadproc"]
        return real_popen([sys.executable, "-c", script, *args[3:]], **kwargs)

    monkeypatch.setattr(loadproc.subprocess, "Popen", popen)
    monkeypatch.setattr(loadproc.time, "sleep", lambda s: real_sleep(s + 0.2))
    load = LoadSpec("closed", 2, duration_s=0.1, grace_s=1.0)
    tally, samples = loadproc.run_processes({"system": "noop", "port": 1}, {}, load, 2,
                                            str(tmp_path))
    assert tally.completed == 0 and samples.start == {} and samples.end == {}
    assert json.loads((tmp_path / "tally-1.json").read_text())["completed"] == 0


# ------------------------------------------------------------------ compare: open-loop rows


def _ycsb_doc(best: float, open_p99: float, fractions=(0.1, 0.5, 0.9), with_fraction=True):
    """A ycsb document: one closed-loop row, and open-loop rows at fractions of ``best``."""
    base = {"system": "meridian", "workload": "A", "clients": 64, "theta": 0.99,
            "value_size": 100, "sweep": None, "p50_ms": 2.0}
    rows = [{**base, "mode": "closed", "ops_per_s": best, "p99_ms": 9.0}]
    for f in fractions:
        row = {**base, "mode": "open", "offered_ops_per_s": max(1.0, round(f * best)),
               "ops_per_s": f * best, "p99_ms": open_p99}
        if with_fraction:
            row["offered_fraction"] = f
        rows.append(row)
    return {"benchmark": "ycsb", "results": rows}


def test_compare_matches_open_loop_rows_on_their_offered_fraction():
    from bench import compare

    # 1 % more throughput (so every offered rate differs), and an open-loop p99 ten times worse.
    old, new = _ycsb_doc(10_000.0, 10.0), _ycsb_doc(10_100.0, 100.0)
    verdicts = {(c["row"]["mode"], c["row"].get("offered_fraction"), c["metric"]): c["verdict"]
                for c in compare.compare_docs(old, new)}
    for f in (0.1, 0.5, 0.9):
        assert verdicts[("open", f, "p99_ms")] == "worse"
        assert verdicts[("open", f, "ops_per_s")] == "within noise"
    assert verdicts[("closed", None, "ops_per_s")] == "within noise"
    assert compare.match_rows(old, new)[1:] == (0, 0)
    # Other fractions: only the common ones are compared; the others are counted.
    other = _ycsb_doc(10_100.0, 100.0, fractions=(0.1, 0.25, 0.5))
    pairs, unmatched_old, unmatched_new = compare.match_rows(old, other)
    assert sorted(k[-1] for k, _, _ in pairs if k[-1][0] == "offered_fraction") == [
        ("offered_fraction", 0.1), ("offered_fraction", 0.5)]
    assert (unmatched_old, unmatched_new) == (1, 1)


def test_compare_matches_open_loop_rows_by_rank_without_fractions():
    from bench import compare

    old = _ycsb_doc(10_000.0, 10.0, with_fraction=False)
    new = _ycsb_doc(10_100.0, 100.0, with_fraction=False)
    open_p99 = [c for c in compare.compare_docs(old, new)
                if c["row"]["mode"] == "open" and c["metric"] == "p99_ms"]
    assert sorted(c["row"]["offered_rank"] for c in open_p99) == ["1/3", "2/3", "3/3"]
    assert {c["verdict"] for c in open_p99} == {"worse"}
    # A different number of rates: ranks would pair different loads; nothing is paired.
    fewer = _ycsb_doc(10_100.0, 100.0, fractions=(0.1, 0.5), with_fraction=False)
    assert compare.match_rows(old, fewer)[1:] == (3, 2)


def test_compare_does_not_pair_rows_measured_over_different_data_sets():
    from bench import compare

    # A quick run loads 10,000 records, a full run 100,000: other data, other contention.
    small, large = _ycsb_doc(10_000.0, 10.0), _ycsb_doc(10_000.0, 10.0)
    for doc, records in ((small, 10_000), (large, 100_000)):
        for row in doc["results"]:
            row["records"] = records
    assert compare.match_rows(small, large) == ([], 4, 4)
    assert len(compare.match_rows(small, small)[0]) == 4


def test_compare_command_reports_rows_it_could_not_match(tmp_path, capsys):
    import argparse

    from bench import _common, compare

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _common.write_json(old, _ycsb_doc(10_000.0, 10.0))
    _common.write_json(new, _ycsb_doc(10_100.0, 100.0, fractions=(0.1, 0.25)))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", str(old), str(new), "--fail-on-regression"])
    assert args.func(args) == 1  # the open-loop p99 at 10 % got worse
    out = capsys.readouterr().out
    assert f"2 row(s) of {old}, 1 row(s) of {new}" in out


def test_compare_command_says_which_rows_it_could_not_compare(tmp_path, capsys):
    import argparse

    from bench import _common, compare

    def doc(ops_per_s: float, p99_ms: float | None) -> dict:
        return {"benchmark": "ycsb", "results": [
            {"system": "etcd", "workload": "A", "mode": "closed", "clients": 32,
             "ops_per_s": ops_per_s, "p50_ms": p99_ms, "p99_ms": p99_ms}]}

    broken, fixed, empty = (tmp_path / f"{n}.json" for n in ("broken", "fixed", "empty"))
    _common.write_json(broken, doc(0.0, None))  # no operation completed
    _common.write_json(fixed, doc(5000.0, 3.0))
    _common.write_json(empty, {"benchmark": "ycsb", "results": []})
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", str(broken), str(fixed)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    # The rows match: a change from nothing has no ratio, and the output says so.
    assert "no rows in common" not in out
    assert f"not compared (no figure measured in both files, or it is 0 in {broken}): " \
           f"1 row(s) in common" in out
    args = parser.parse_args(["compare", str(empty), str(fixed)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{empty} has no results" in out and "no rows in common" in out
    assert f"{fixed} has no results" not in out


def test_compare_command_names_the_region_of_each_row(tmp_path, capsys):
    import argparse

    from bench import _common, compare

    # bench cluster and txn: one row per region, the regions' figures side by side.
    def doc(txn_per_s: float) -> dict:
        return {"benchmark": "cluster", "results": [
            {"workload": "single-key", "region": region, "concurrency": 8,
             "txn_per_s": txn_per_s if region == "eu-west" else 100.0}
            for region in ("us-east", "eu-west")]}

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    _common.write_json(old, doc(100.0))
    _common.write_json(new, doc(50.0))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", str(old), str(new)])
    assert args.func(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "txn_per_s" in line]
    [worse] = [line for line in rows if line.endswith("worse")]
    [same] = [line for line in rows if line.endswith("within noise")]
    assert "region=eu-west" in worse and "region=us-east" in same


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is not a result document: a JSON list, not an object"),
    ('{"schema": 2, "benchmark": "ycsb", "results": []}', "schema 2, where this harness reads"),
    ('{"benchmark": "ycsb", "results": "rows"}', "its results are not a list of objects"),
    ('{"benchmark": "ycsb", "results": [1]}', "its results are not a list of objects"),
    ("{", "is not JSON"),
])
def test_compare_command_rejects_what_is_not_a_result_document(tmp_path, capsys, content,
                                                                message):
    import argparse

    from bench import _common, compare

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    _common.write_json(good, {"schema": _common.SCHEMA, **_ycsb_doc(10_000.0, 10.0)})
    bad.write_text(content, encoding="utf-8")
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    for paths in ([str(good), str(bad)], [str(bad), str(good)]):
        args = parser.parse_args(["compare", *paths])
        with pytest.raises(SystemExit) as exc:
            args.func(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{bad}" in err and message in err, err


def test_compare_ignores_repetitions_that_are_not_numbers():
    from bench import compare

    assert compare.spread([10.0, "n/a", None, True, 12.0]) == pytest.approx(2 / 11)


def test_report_skips_files_that_are_not_result_documents(tmp_path, capsys):
    from bench import _common, report

    _common.write_json(tmp_path / "good.json", {"schema": _common.SCHEMA, **_ycsb_doc(1.0, 1.0)})
    (tmp_path / "cut.json").write_text('{"schema": 1, "bench', encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    docs = report.load_results(tmp_path)
    assert [doc["benchmark"] for doc in docs.values()] == ["ycsb"]
    err = capsys.readouterr().err
    assert "skipping" in err and "cut.json" in err and "list.json" not in err


# ----------------------------------------------------------------- nearest-rank percentiles


def test_percentiles_are_nearest_rank_when_the_rank_is_not_whole():
    import math
    import random

    from bench import hdr

    # 199 samples, 2 of them (1.005 %) slow: the p99 is a slow one (rank ceil(197.01) = 198).
    h = hdr.Histogram()
    for v in [1000] * 197 + [100_000] * 2:
        h.record_us(v)
    assert abs(h.percentile_ms(99) - 100.0) <= 0.1
    rng = random.Random(3)
    for n in (7, 199, 1001, 20_001):
        samples = sorted(int(rng.lognormvariate(7, 1.5)) + 1 for _ in range(n))
        h = hdr.Histogram()
        for v in samples:
            h.record_us(v)
        for q in (1, 33.3, 50, 90, 99, 99.9, 100):
            want = samples[max(1, math.ceil(q * n / 100 - 1e-9)) - 1] / 1000
            assert abs(h.percentile_ms(q) - want) <= want * 0.001 + 0.001, (n, q)
        # The CDF's points hold the same: at least that fraction at or below each latency.
        for ms, fraction in h.cdf(50):
            at_or_below = sum(v <= ms * 1000 for v in samples)
            assert at_or_below >= fraction * n - 1e-6, (n, ms, fraction)


# ------------------------------------------------------------- storage: the bytes written


def test_storage_figures_count_the_bytes_actually_written(tmp_path, monkeypatch):
    import contextlib

    import bench.drivers
    from bench import ycsb
    from bench.openloop import merge_tallies
    from bench.workloads import OpGenerator

    written: list[tuple[bytes, bytes]] = []

    class Loader:
        async def load(self, pairs) -> None:
            written.extend(pairs)

    @contextlib.asynccontextmanager
    async def open_driver(spec, *, connections=1):
        yield Loader()

    monkeypatch.setattr(bench.drivers, "open_driver", open_driver)
    records, value_size = 1000, 100
    ycsb.load_records({"system": "fake"}, records, value_size, bank=True)
    assert len(written) == records and all(v == b"1000" for _, v in written)  # not 100 bytes

    # Workload D inserts records while it runs: they are stored too.
    inserted: list[Op] = []

    class Store:
        async def execute(self, op: Op) -> int:
            await trio.sleep(0.001)
            if op.kind == "insert":
                inserted.append(op)
            return 1

    t = _run(Store(), LoadSpec("closed", 2, duration_s=1.0, interval_s=0.25),
             OpGenerator("D", records, value_size=value_size, seed=4))
    t = merge_tallies([Tally.from_json(t.to_json())])  # as the parent gets it
    assert len(inserted) > 20
    assert t.inserted_bytes == sum(len(op.key) + len(op.value) for op in inserted)
    row = ycsb.summarize(t, duration=1.0, interval=0.25, warmup=0.0)
    assert row["inserted_bytes"] == t.inserted_bytes

    # A store that holds exactly what was written takes one byte per byte stored.
    data = tmp_path / "node"
    data.mkdir()
    actual = sum(len(k) + len(v) for k, v in written) + t.inserted_bytes
    (data / "f").write_bytes(b"x" * actual)

    class Target:
        data_dirs = [str(data)]

    fig = ycsb.storage_figures(Target(), records, value_size, bank=True,
                               inserted_bytes=row["inserted_bytes"])
    assert fig["stored_bytes"] == actual
    assert fig["apparent_bytes_per_stored_byte"] == 1.0


# ---------------------------------------------------------------- the time-line's memory


def test_timeline_keeps_a_small_summary_per_interval():
    import json
    import math
    import random
    import tracemalloc

    from bench import hdr
    from bench.openloop import merge_tallies
    from bench.ycsb import summarize

    rng = random.Random(8)
    intervals, per = 100, 500
    samples = [[rng.lognormvariate(8, 1.0) for _ in range(per)] for _ in range(intervals)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = Tally()
        for i, values in enumerate(samples):
            b = t.bucket(i)
            for us in values:
                b[0] += 1
                b[1].record_us(us)
        doc = json.dumps(t.to_json())
        # The parent: each load process's tally decoded, and their merge.
        merged = merge_tallies([Tally.from_json(json.loads(doc)) for _ in range(2)])
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Four copies of the time-line (one process, two decoded, the merge): a few KiB per
    # interval each, where a full HdrHistogram takes ~184 KiB.
    assert used / (4 * intervals) < 16 * 1024, used
    row = summarize(merged, duration=intervals * 0.5, interval=0.5, warmup=0.0)
    assert len(row["timeline"]) == intervals
    for (_, ops_per_s, p99, _), values in zip(row["timeline"], samples):
        assert ops_per_s == 2 * per / 0.5
        want = sorted(values)[math.ceil(0.99 * per) - 1] / 1000
        assert want * 0.999 <= p99 <= want * (1 + 1 / 32) + 0.001  # 6 significant bits
    # Bounded whatever is recorded: at most 32 values per doubling.
    h = hdr.CoarseHistogram()
    for _ in range(100_000):
        h.record_us(rng.uniform(0, 4e9))
    h.record_us(0.2)
    assert len(h.counts) <= 64 + 32 * 26 and h.count == 100_001


# ---------------------------------------------------- closed loop: stalled operations count


def test_closed_loop_counts_operations_still_running_at_the_cut_as_late():
    class StopsAnswering:
        """Answers in 1 ms, and never from 0.6 s on."""

        async def execute(self, op: Op) -> int:
            if trio.current_time() >= 0.6:
                await trio.sleep_forever()
            await trio.sleep(0.001)
            return 1

    async def main():
        spec = LoadSpec("closed", 4, duration_s=1.0, warmup_s=0.2, interval_s=0.25,
                        grace_s=0.5)
        return await run_load(StopsAnswering(), Ops(), spec, start_at=0.0)

    t = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # The four workers' last operations, started at 0.6 s, were cut off at 1.7 s.
    assert t.late == 4
    assert t.recorded == t.completed + 4
    assert abs(t.latency.max_ms() - 1100) <= 2
    assert t.latency.percentile_ms(99.9) >= 1000  # 4 of about 1,600 operations


# -------------------------------------------------------------------------- repetitions


def test_median_row_takes_each_figures_own_median():
    from bench.ycsb import _median_row

    rows = [{"ops_per_s": 1000.0, "p50_ms": 5.0, "p99_ms": 80.0, "server_cpu_s_per_1k_ops": 2.0,
             "errors": 3, "last_error": "a", "timeline": [[1, 2]]},
            {"ops_per_s": 3000.0, "p50_ms": 1.0, "p99_ms": 10.0, "server_cpu_s_per_1k_ops": 0.5,
             "errors": 1, "last_error": "b", "timeline": [[3, 4]]}]
    m = _median_row(rows)
    assert (m["ops_per_s"], m["p50_ms"], m["p99_ms"], m["server_cpu_s_per_1k_ops"]) == (
        2000.0, 3.0, 45.0, 1.25)
    assert m["errors"] == 4 and isinstance(m["errors"], int)  # a total, never a median
    assert m["p99_ms_reps"] == [80.0, 10.0] and m["repetitions"] == 2
    assert m["timeline"] == [[3, 4]]  # no median: the upper middle repetition's
    # An odd number: each figure's middle value, whichever repetition it came from.
    rows.append({"ops_per_s": 2000.0, "p50_ms": 9.0, "p99_ms": 20.0,
                 "server_cpu_s_per_1k_ops": None, "errors": 0, "last_error": None,
                 "timeline": []})
    m = _median_row(rows)
    assert (m["ops_per_s"], m["p50_ms"], m["p99_ms"], m["errors"]) == (2000.0, 5.0, 20.0, 4)
    assert m["server_cpu_s_per_1k_ops"] == 1.25  # of the repetitions that measured it


def test_list_options_take_every_item_or_refuse_the_list():
    """The benchmarks' comma-separated options (one parser, ``_common.comma_list``): each
    item converted and checked, never a list cut to the items that parse; the options'
    messages are in test_bench_ycsb_smoke.py."""
    import argparse

    import pytest

    from bench import _common

    parse = _common.comma_list(int, valid=lambda c: 1 <= c <= 8, expect="in 1..8", unique=True)
    assert parse(" 4, 1,,4 ") == [1, 4]
    for bad, says in (("1,x", "'x' is not in 1..8"), ("1,9", "'9' is not in 1..8"),
                      (" , ", "give at least one value")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse(bad)
    assert _common.comma_list()("b, a") == ["b", "a"]


def test_storage_figures_count_each_inserted_record_once_over_several_runs(tmp_path,
                                                                            monkeypatch):
    """Workload D on one cluster: the closed loops at every client count and repetition
    insert records, which stay in the store; every run inserts new records (as YCSB's
    inserts are), so that the bytes stored are the bytes the store holds."""
    import contextlib

    import bench.loadproc
    from bench import ycsb
    from bench.__main__ import build_parser
    from bench.loadproc import WindowSamples, process_load
    from bench.openloop import merge_tallies
    from bench.targets import Target
    from bench.workloads import OpGenerator, key_name

    store: dict[bytes, bytes] = {}

    class Store:
        async def load(self, pairs) -> None:
            store.update(pairs)

        async def execute(self, op: Op) -> int:
            await trio.sleep(0.001)
            if op.kind == "insert":
                store[op.key] = op.value
            return 1

    @contextlib.contextmanager
    def open_target(system, args, workdir, regions=("us-east",), *, wan=False, mix=False):
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        yield Target(system=system, kind="fake", drivers={"": {"system": "fake"}},
                     data_dirs=[str(data)])

    def load_records(driver, records, value_size, bank=False):
        trio.run(Store().load, [(key_name(i), b"v" * value_size) for i in range(records)])
        return 0.0

    def run_processes(driver, workload, load, processes, rundir, *, sample=None,
                      progress=None, seed=1):
        processes = max(1, min(processes, load.clients))

        async def main():
            tallies = [None] * processes

            async def one(i):
                ops = OpGenerator(**{**workload, "process": i, "processes": processes,
                                     "seed": seed * 100 + i})
                tallies[i] = await run_load(Store(), ops, process_load(load, processes, i,
                                                                       seed))

            async with trio.open_nursery() as nursery:
                for i in range(processes):
                    nursery.start_soon(one, i)
            return merge_tallies([Tally.from_json(t.to_json()) for t in tallies])

        samples = WindowSamples()
        samples.start = samples.end = sample() if sample else {}
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), samples

    monkeypatch.setattr(ycsb, "open_target", open_target)
    monkeypatch.setattr(ycsb, "load_records", load_records)
    monkeypatch.setattr(bench.loadproc, "run_processes", run_processes)
    records, value_size = 200, 50
    args = build_parser().parse_args([
        "ycsb", "--workload", "D", "--systems", "meridian", "--records", str(records),
        "--value-size", str(value_size), "--clients", "1,16", "--repeat", "2",
        "--duration", "0.5", "--warmup", "0.1", "--no-open", "--no-selftest",
        "--workdir", str(tmp_path), "--json", str(tmp_path / "d.json")])
    args.argv = []
    assert ycsb.main(args) == 0
    doc = _json_of(tmp_path / "d.json")
    inserted_in_runs = sum(r["inserted_bytes"] for r in doc["results"])
    assert inserted_in_runs > 0
    assert not any(k.startswith("_") for r in doc["results"] for k in r)
    held = sum(len(k) + len(v) for k, v in store.items())
    assert doc["systems"]["meridian"]["storage"]["stored_bytes"] == held


def _json_of(path):
    import json

    return json.loads(path.read_text())


class SlowInserts:
    """A store where an insert takes 50 ms, a read 1 ms; it counts the reads of records
    beyond the ``records`` loaded that were not inserted (yet)."""

    def __init__(self, records: int) -> None:
        from bench.workloads import key_name

        self.first_new = key_name(records)
        self.keys: set[bytes] = set()
        self.reads_of_new = self.reads_of_missing = 0

    async def execute(self, op: Op) -> int:
        if op.kind == "insert":
            await trio.sleep(0.05)
            self.keys.add(op.key)
        else:
            await trio.sleep(0.001)
            if op.key >= self.first_new:
                self.reads_of_new += 1
                self.reads_of_missing += op.key not in self.keys
        return 1


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_latest_reads_no_insert_still_on_its_way(mode):
    # Workload D with 16 clients: while an insert is on its way, the other clients go on, and
    # "read latest" must not read its record before the store has it (YCSB's acknowledged
    # inserts), or the newest records are read as missing ones.
    from bench.workloads import OpGenerator

    store = SlowInserts(1000)
    spec = LoadSpec(mode, 16, duration_s=1.0, rate=2000.0 if mode == "open" else None,
                    grace_s=1.0)
    t = _run(store, spec, OpGenerator("D", 1000, seed=3))
    assert t.errors == t.late == 0
    assert store.reads_of_new > 500 and store.reads_of_missing == 0
