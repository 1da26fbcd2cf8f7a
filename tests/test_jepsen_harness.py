"""The fault harness of ``python -m bench jepsen`` judged on its own, without real clusters:
verdicts of crafted histories and campaigns, what the nemesis does and records on fake
clusters, and what the lab cluster notes about its node processes (fake processes, no
namespaces). Each test covers a way the harness could report more than a run proved.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import trio
import trio.testing

import bench.jepsen_targeted as targeted
from bench import jepsen
from bench import jepsen_cluster
from bench.jepsen_cluster import ClusterSpec, LabCluster
from bench.jepsen_nemesis import LOSSY_REPORT_KEYS, Nemesis, partition_shapes_for
from bench.jepsen_workloads import SetWorkload, check_set
from bench.lossyfs import LossyModel
from bench.txnsim import RunConfig, _workload

REPO = Path(__file__).resolve().parent.parent


def _ev(process, kind, f, value, t, **extra):
    return {"process": process, "type": kind, "f": f, "value": value, "time_ns": t, **extra}


def _heal(t):
    return _ev("nemesis", "info", "heal-all", {"started": []}, t)


RUN_CONFIG = RunConfig(workload="append", isolation="snapshot", seed=0, regions=("a",),
                       nodes_per_region=3, processes=2, max_ops=10, time_limit_s=1,
                       faults=frozenset())


def _fake_report(tmp_path, workload, events, *, final_ok=True, node_exits=None,
                 nemesis=("partition",), fired=None, error=None):
    """``jepsen._report`` on a finished campaign that produced ``events``."""
    config = jepsen.CampaignConfig(workload="set", out=str(tmp_path / "out"), nemesis=nemesis)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    runner = types.SimpleNamespace(history=types.SimpleNamespace(events=events),
                                   workload=workload, errors={})
    campaign = types.SimpleNamespace(
        runner=runner, nemesis_events=[e for e in events if e["process"] == "nemesis"],
        final_ok=final_ok, phases={}, harness_errors={}, ready_after_heal_s=None,
        nemesis=types.SimpleNamespace(
            fired=dict.fromkeys(nemesis, 1) if fired is None else fired))
    cluster = types.SimpleNamespace(spec=ClusterSpec(), node_ids=[],
                                    directory=Path(config.out) / "cluster")
    return jepsen._report(config, campaign, cluster, node_exits or {}, error, 1.0)


# ============================================================ a final read that never succeeded


def test_append_without_a_successful_final_read_is_unknown(tmp_path):
    """An acknowledged append that no read saw, and the final read failed all through
    recovery: nothing shows the append survived, so the verdict cannot be valid."""
    events = [_ev(0, "invoke", "txn", [["append", 1, 1]], 1),
              _ev(0, "ok", "txn", [["append", 1, 1]], 2), _heal(5),
              _ev(2, "invoke", "txn", [["r", 1, None]], 10),
              _ev(2, "fail", "txn", [["r", 1, None]], 20)]
    assert _fake_report(tmp_path / "a", _workload(RUN_CONFIG), events,
                        final_ok=False)["valid"] is None
    assert _fake_report(tmp_path / "b", _workload(RUN_CONFIG), events[:2] + [
        _heal(5), _ev(2, "invoke", "txn", [["r", 1, None]], 10),
        _ev(2, "ok", "txn", [["r", 1, [1]]], 20)])["valid"] is True


def test_a_keyspace_found_gone_is_an_anomaly(tmp_path):
    """Every keyspace of a workload is created, acknowledged, before the run, and never
    dropped: an operation that finds one gone shows acknowledged data lost (a power loss
    that took the catalog with it). It used to escape as a client error, and the run was
    at best unknown."""
    from bench.txnsim import LOST_KEYSPACE, check_history

    events = [_ev(0, "invoke", "txn", [["append", 1, 1]], 1),
              _ev(0, "ok", "txn", [["append", 1, 1]], 2), _heal(5),
              _ev(2, "invoke", "txn", [["r", 1, None]], 10),
              _ev(2, "ok", "txn", [["r", 1, [1]]], 20)]
    assert check_history(RUN_CONFIG, events)["valid"] is True
    gone = [_ev(1, "invoke", "txn", [["r", 2, None]], 3),
            _ev(1, "fail", "txn", [["r", 2, None]], 4,
                error=f"{LOST_KEYSPACE}: keyspace 'append' does not exist")]
    events = events[:2] + gone + events[2:]
    checked = check_history(RUN_CONFIG, events)
    assert checked["valid"] is False and LOST_KEYSPACE in checked["anomalies"]
    report = _fake_report(tmp_path, _workload(RUN_CONFIG), events)
    assert report["valid"] is False and LOST_KEYSPACE in report["anomaly_types"]


async def test_an_operation_on_a_missing_keyspace_is_recorded_as_lost():
    from bench.txnsim import LOST_KEYSPACE, FaultPlan, History, _Runner
    from engine.errors import KeyspaceNotFoundError

    class GoneTxn:  # every read or write finds the workload's keyspace gone
        txn_id = 1

        def __getattr__(self, name):
            async def gone(*args, **kwargs):
                raise KeyspaceNotFoundError("keyspace 'append' does not exist")
            return gone

    class Gone:
        region = "a"

        def transaction(self, *args, **kwargs):
            return GoneTxn()

    runner = _Runner(RUN_CONFIG, FaultPlan(kinds=frozenset()))
    runner.history = History()
    try:
        outcome = await runner.operate(Gone(), 0, "txn", [["r", 1, None]], [], None, kill=None)
    except KeyspaceNotFoundError:
        pytest.fail("a keyspace found gone escaped the runner")
    assert outcome == "fail"
    assert runner.history.events[-1]["error"].startswith(LOST_KEYSPACE)


async def test_a_final_read_of_bytes_no_operation_writes_is_an_anomaly(autojump_clock):
    """The regional workload's final reads parse what they read too: a region holding bytes
    no write made used to end the run with a ValueError from ``int()``; it is a garbage read,
    recorded as such, and the regions never count as agreed."""
    from bench.txnsim import GARBAGE_READ, FaultPlan, History, _Runner, check_history

    config = RunConfig(workload="regional", seed=0, regions=("a", "b"), nodes_per_region=3,
                       processes=2, max_ops=10, time_limit_s=1, recovery_s=1.0,
                       regional_keys=1, faults=frozenset())

    class Db:
        def __init__(self, region):
            self.region = region

        async def read(self, ks, key):
            return b"\xff7" if self.region == "b" else b"7"

        async def conflicts(self, ks, limit):
            return []

    class Cluster:
        @contextlib.asynccontextmanager
        async def connect(self, region, **kwargs):
            yield Db(region)

    runner = _Runner(config, FaultPlan(kinds=frozenset()))
    runner.history = History()
    assert await runner.converge(Cluster()) is False
    finals = [e for e in runner.history.events
              if e.get("f") == "final-read" and e["type"] != "invoke"]
    assert [(e["region"], e["type"]) for e in finals] == [("a", "ok"), ("b", "fail")]
    assert finals[1]["error"].startswith(GARBAGE_READ + ":"), finals[1]
    checked = check_history(config, runner.history.events)
    assert checked["valid"] is False and GARBAGE_READ in checked["anomalies"]


async def test_a_read_of_bytes_no_operation_writes_is_an_anomaly(tmp_path):
    """A read that returns what no operation of the workload writes (damaged or made-up
    data) used to raise out of the workload's parsing: the client recorded it as an
    indeterminate operation, the checker never saw it, and the run could pass. It is an
    anomaly of its own now, in every workload that parses what it reads."""
    from bench.jepsen_workloads import Register
    from bench.txnsim import GARBAGE_READ, FaultPlan, GarbageRead, History, _Runner, \
        check_history

    class GarbageTxn:  # every read returns bytes no workload writes
        txn_id = 1

        async def get(self, ks, key):
            return b"\xffnot a number"

        async def get_many(self, ks, keys):
            return [b"1,2,\xff"] * len(keys)

        async def rollback(self):
            pass

    class Db:
        region = "a"

        def transaction(self, *args, **kwargs):
            return GarbageTxn()

    runner = _Runner(RUN_CONFIG, FaultPlan(kinds=frozenset()))
    runner.history = History()
    outcome = await runner.operate(Db(), 0, "txn", [["r", 1, None]], [], None, kill=None)
    assert outcome == "fail"
    error = runner.history.events[-1]["error"]
    assert error.startswith(GARBAGE_READ + ":") and "\\xff" in error, error
    checked = check_history(RUN_CONFIG, runner.history.events)
    assert checked["valid"] is False and GARBAGE_READ in checked["anomalies"]
    report = _fake_report(tmp_path, _workload(RUN_CONFIG), runner.history.events)
    assert report["valid"] is False and GARBAGE_READ in report["anomaly_types"]

    register = Register.__new__(Register)
    register._locate = lambda key: ("ks", b"k")
    with pytest.raises(GarbageRead, match="register 3"):
        await register.execute(GarbageTxn(), "read", {"key": 3, "value": None}, None)

    class Scan:
        async def scan(self, ks):
            return [(b"e1", b"1"), (b"x7", b"1")]

    sets = SetWorkload.__new__(SetWorkload)
    sets.keyspaces = ["set-0"]
    with pytest.raises(GarbageRead, match="x7"):
        await sets.execute(Scan(), "read", None, None)


def test_a_simulated_run_that_finds_a_keyspace_gone_is_not_valid(monkeypatch):
    """The simulation's own verdict (what its tests and command line judge) counts a keyspace
    found gone, as the fault campaign's does."""
    from bench import txnsim
    from engine.errors import KeyspaceNotFoundError

    execute, calls = txnsim._Bank.execute, [0]

    async def losing(self, tx, f, value, rng):
        calls[0] += 1
        if calls[0] == 3:  # one operation of the run finds its keyspace gone
            raise KeyspaceNotFoundError("keyspace 'bank-us-east' does not exist")
        return await execute(self, tx, f, value, rng)

    monkeypatch.setattr(txnsim._Bank, "execute", losing)
    config = txnsim.RunConfig(workload="bank", seed=1, nodes_per_region=1, processes=2,
                              max_ops=20, time_limit_s=2.0, faults=frozenset())
    with txnsim.compact_storage():
        result = txnsim.run_sync(config, plan=txnsim.FaultPlan(kinds=frozenset()))
    assert result.final_read_ok and calls[0] > 3
    assert not result.valid and txnsim.LOST_KEYSPACE in result.check["anomaly_types"]


def test_set_final_read_is_the_one_after_the_final_heal(tmp_path):
    """A read of the main phase is not the final read: adds acknowledged after it are not
    lost when the final read failed (unknown), and are lost when the final read lacks them."""
    main = [_ev(0, "invoke", "add", 1, 1), _ev(0, "ok", "add", 1, 2),
            _ev(1, "invoke", "read", None, 3), _ev(1, "ok", "read", [1], 4),
            _ev(0, "invoke", "add", 2, 5), _ev(0, "ok", "add", 2, 6), _heal(8)]
    failed = main + [_ev(3, "invoke", "read", None, 10), _ev(3, "fail", "read", None, 20)]
    result = SetWorkload(RUN_CONFIG).check(failed)
    assert result["valid"] is None and result["anomaly_types"] == []
    report = _fake_report(tmp_path, SetWorkload(RUN_CONFIG), failed, final_ok=False)
    assert report["valid"] is None and "lost" not in report["anomalies"]
    lost = main + [_ev(3, "invoke", "read", None, 10), _ev(3, "ok", "read", [1], 20)]
    result = SetWorkload(RUN_CONFIG).check(lost)
    assert result["valid"] is False and result["anomaly_types"] == ["lost"]
    assert [e["element"] for e in result["anomalies"]["lost"]] == [2]
    whole = main + [_ev(3, "invoke", "read", None, 10), _ev(3, "ok", "read", [1, 2], 20)]
    assert SetWorkload(RUN_CONFIG).check(whole)["valid"] is True
    # Without a final phase, lost elements cannot be judged.
    assert check_set(main, final_from_ns=None)["valid"] is None


# ============================================================ nodes that exit on their own


class _FakeProc:
    """A node process as :class:`LabCluster` sees it; ``exit(code)`` ends it on its own."""

    next_pid = 1000

    def __init__(self, *args, **kwargs):
        _FakeProc.next_pid += 1
        self.pid = _FakeProc.next_pid
        self.returncode = None

    def poll(self):
        return self.returncode

    def exit(self, code):
        self.returncode = code

    def send_signal(self, sig):
        if self.returncode is None:
            self.returncode = -sig

    def kill(self):
        self.send_signal(9)

    def wait(self, timeout=None):
        return self.returncode


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """A LabCluster of one region of three nodes whose processes are fakes and whose network
    commands do nothing."""
    monkeypatch.setattr(jepsen_cluster.subprocess, "Popen", _FakeProc)
    cluster = LabCluster(tmp_path / "cluster", ClusterSpec(regions=("r",), nodes_per_region=3),
                         prefix="tjh")
    cluster.directory.mkdir(parents=True)
    monkeypatch.setattr(cluster.lab, "hub_run", lambda *a, **k: types.SimpleNamespace(
        returncode=0, stdout="", stderr=""))
    monkeypatch.setattr(cluster.lab, "close", lambda: None)
    yield cluster
    for log in cluster._logs.values():
        log.close()


def test_a_node_that_crashed_and_was_restarted_is_still_reported(fake_lab):
    cluster = fake_lab
    cluster.start_all()
    cluster.procs[3].exit(70)  # crashes on its own during the main phase
    assert cluster.heal_all() == [3]  # the final heal restarts it
    assert cluster.running(3)
    cluster.procs[2].exit(1)
    cluster.kill_node(2)  # already gone when the nemesis kills it
    cluster.start_node(2)
    cluster.kill_node(1)  # killed by the nemesis: not an exit of its own
    cluster.start_node(1)
    assert cluster.exited() == {3: [70], 2: [1]}
    assert cluster.exited() == {3: [70], 2: [1]}  # noted once, however often asked
    cluster.close()
    assert cluster.exited() == {3: [70], 2: [1]}


def test_a_node_exit_makes_a_valid_history_unknown(tmp_path):
    events = [_ev(0, "invoke", "add", 1, 1), _ev(0, "ok", "add", 1, 2), _heal(3),
              _ev(1, "invoke", "read", None, 4), _ev(1, "ok", "read", [1], 5)]
    assert _fake_report(tmp_path / "a", SetWorkload(RUN_CONFIG), events)["valid"] is True
    report = _fake_report(tmp_path / "b", SetWorkload(RUN_CONFIG), events,
                          node_exits={3: [70]})
    assert report["valid"] is None and report["node_exits"] == {"3": [70]}


@pytest.mark.parametrize("workload", ["set", "bank"])
def test_a_campaign_whose_main_phase_never_succeeded_is_unknown(tmp_path, workload):
    """Every operation of the main phase failed or ended unknown (a client library that
    raised at every call, a cluster that never served under the faults): the checker has
    only the final read, which agrees with nothing having happened. The campaign tested
    nothing and must not be reported valid (Jepsen's stats checker: unknown without ok
    operations); it used to be."""
    if workload == "set":
        w, f, v, final = SetWorkload(RUN_CONFIG), "add", 1, []
    else:
        w = _workload(RunConfig(workload="bank", regions=("a",), accounts_per_region=2,
                                faults=frozenset()))
        f, v, final = "transfer", {"from": 0, "to": 1, "amount": 5}, {0: 100, 1: 100}
    main = [_ev(0, "invoke", f, v, 1), _ev(0, "info", f, None, 2, error="client error"),
            _ev(2, "invoke", f, v, 3), _ev(2, "fail", f, v, 4)]
    finish = [_heal(5), _ev(3, "invoke", "read", None, 6), _ev(3, "ok", "read", final, 7)]
    report = _fake_report(tmp_path / "a", w, main + finish)
    assert report["valid"] is None and report["final_read_ok"] is True
    assert "no operation of the main phase succeeded" in (tmp_path / "a" / "out" /
                                                          "summary.txt").read_text()
    # One acknowledged operation is enough to judge.
    ok = [_ev(4, "invoke", "read", None, 4), _ev(4, "ok", "read", final, 4)]
    assert _fake_report(tmp_path / "b", w, main + ok + finish)["valid"] is True


# ============================================================ harness failures: exit status 2


@pytest.fixture
def no_lab(monkeypatch):
    """run_campaign with every lab operation a no-op; returns what close() was asked."""
    closed = []
    monkeypatch.setattr(jepsen, "unavailable_reason", lambda **k: None)
    monkeypatch.setattr(jepsen, "in_namespace", lambda path: contextlib.nullcontext())
    monkeypatch.setattr(LabCluster, "setup", lambda self: None)
    monkeypatch.setattr(LabCluster, "start_all", lambda self: None)
    monkeypatch.setattr(LabCluster, "close",
                        lambda self, keep_data=False: closed.append(keep_data))
    return closed


@pytest.mark.parametrize("failure", [
    trio.TooSlowError(), subprocess.CalledProcessError(1, ["nft"]),
    subprocess.TimeoutExpired(["ss"], 5), KeyError("groups")])
def test_a_harness_failure_is_reported_unknown_and_exits_2(tmp_path, no_lab, monkeypatch,
                                                           failure):
    async def run(self):
        raise failure

    monkeypatch.setattr(jepsen.Campaign, "run", run)
    out = tmp_path / "out"
    assert jepsen.main(["--workload", "set", "--nodes", "3", "--out", str(out)]) == 2
    results = json.loads((out / "results.json").read_text())
    assert results["valid"] is None
    assert results["error"].startswith(type(failure).__name__)


def test_a_campaign_that_cannot_start_writes_results_and_exits_2(tmp_path, no_lab,
                                                                monkeypatch):
    def setup(self):
        raise subprocess.CalledProcessError(1, ["ip", "netns", "add"])

    monkeypatch.setattr(LabCluster, "setup", setup)
    out = tmp_path / "out"
    assert jepsen.main(["--workload", "bank", "--nodes", "3", "--out", str(out)]) == 2
    results = json.loads((out / "results.json").read_text())
    assert results["valid"] is None and "CalledProcessError" in results["error"]


def test_the_cli_exits_2_on_any_unexpected_error(tmp_path, monkeypatch):
    def boom(config):
        raise ValueError("a bug in the harness")

    monkeypatch.setattr(jepsen, "run_campaign", boom)
    assert jepsen.main(["--workload", "bank", "--out", str(tmp_path / "out")]) == 2


def test_a_workload_that_cannot_run_hides_no_other_verdict(tmp_path, monkeypatch, capsys):
    """``--workload all``: a workload found not valid makes the status 1 even when a later
    one cannot run, and every workload still runs. The status used to be 2 (unknown), and
    the workloads after the one that could not run were never tried."""
    ran = []

    def campaign(config):
        ran.append(config.workload)
        if config.workload != "bank":
            raise RuntimeError("the campaign could not start: a harness failure")
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "summary.txt").write_text("verdict: NOT VALID\n")
        return {"valid": False}

    monkeypatch.setattr(jepsen, "run_campaign", campaign)
    assert jepsen.main(["--workload", "all", "--out", str(tmp_path / "out")]) == 1
    assert ran == list(jepsen.WORKLOADS)
    verdicts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["valid"]
    assert verdicts == {"bank": False, **dict.fromkeys(jepsen.WORKLOADS[1:])}


def test_sigterm_tears_the_lab_down_as_an_interrupt_does(tmp_path, no_lab, monkeypatch):
    """SIGTERM (``timeout(1)``, a CI job cancelled) ends a campaign as ^C does: its nodes
    stopped, namespaces and mounts removed, data kept. By default it ended the harness at
    once, leaving all of them (and nodes stopped by SIGSTOP) behind."""
    async def run(self):
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep(1)

    monkeypatch.setattr(jepsen.Campaign, "run", run)
    terminated = []

    def default(signum, frame):  # stands in for the default action: the process ends
        terminated.append(signum)

    previous = signal.signal(signal.SIGTERM, default)
    try:
        with pytest.raises(KeyboardInterrupt):
            jepsen.main(["--workload", "set", "--nodes", "3", "--out", str(tmp_path / "out")])
        assert signal.getsignal(signal.SIGTERM) is default
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert no_lab == [True] and terminated == []


@pytest.mark.parametrize("argv", [
    ["--time", "nan"], ["--time", "inf"], ["--time", "-5"], ["--quiet", "nan"],
    ["--clock-max", "nan"], ["--coordinator-kill-p", "1.5"], ["--processes", "0"],
    ["--tick-ms", "0"]])
def test_bad_numbers_are_refused_before_a_campaign_starts(tmp_path, monkeypatch, capsys, argv):
    """``--time nan`` (or ``inf``) used to start a campaign whose main phase never ended: the
    clients and the nemesis compare the clock with the end of the phase, and NaN is never
    reached. ``--processes 0`` silently ran the default number of clients."""
    monkeypatch.setattr(jepsen, "run_campaign", lambda config: pytest.fail("it ran"))
    with pytest.raises(SystemExit) as exit_:
        jepsen.main(["--workload", "bank", "--out", str(tmp_path / "out"), *argv])
    assert exit_.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, error", [
    (["--kill-targets", "leader,bogus"], "unknown kill targets ['bogus']"),
    (["--partition-targets", "nowhere"], "unknown partition targets ['nowhere']"),
    (["--nemesis", "vote-split"], "vote-split needs one region of three nodes"),
])
def test_bad_targets_are_refused_before_the_lab_is_built(tmp_path, monkeypatch, capsys, argv,
                                                         error):
    """A target no family knows, or vote-split on a cluster it cannot split, was refused by
    the nemesis only once the lab and every node had been started (and for vote-split, at
    its first fault, after a healthy period): now before anything is built."""
    monkeypatch.setattr(jepsen, "run_campaign", lambda config: pytest.fail("it ran"))
    assert jepsen.main(["--workload", "set", "--out", str(tmp_path / "out"), *argv]) == 2
    assert error in capsys.readouterr().err


# ============================================================ targeted schedules


class _VoteSplitCluster:
    spec = ClusterSpec(regions=("r",), nodes_per_region=3)
    node_ids = [1, 2, 3]
    paused: set = set()

    def heal_all(self):
        return []

    def heal_network(self):
        pass

    def running(self, node):
        return True

    async def wait_ready(self, timeout_s):
        return 0.0


@pytest.mark.parametrize("arms", [False, True])
def test_vote_split_counts_only_when_it_armed(monkeypatch, arms):
    async def attempt(self):
        if not arms:
            raise targeted._Abort("timed out waiting for O's connections to G and V")
        self.record("vote-split-armed", {})
        self.armed += 1

    monkeypatch.setattr(targeted.VoteSplit, "attempt", attempt)
    events = []

    async def main():
        nemesis = Nemesis(_VoteSplitCluster(), lambda f, v: events.append((f, v)),
                          ["vote-split"], seed=0)
        nemesis._stop_at = trio.current_time() + 100
        await nemesis.start("vote-split", "one")
        await nemesis.stop()
        return nemesis.fired["vote-split"]

    assert trio.run(main) == (1 if arms else 0)
    assert [f for f, _ in events].count("start-vote-split") == 1  # done, so recorded


def test_a_targeted_schedule_that_never_armed_makes_the_run_unknown(tmp_path):
    events = [_ev(0, "invoke", "add", 1, 1), _ev(0, "ok", "add", 1, 2), _heal(3),
              _ev(1, "invoke", "read", None, 4), _ev(1, "ok", "read", [1], 5)]
    report = _fake_report(tmp_path / "a", SetWorkload(RUN_CONFIG), events,
                          nemesis=("vote-split",), fired={"vote-split": 0})
    assert report["valid"] is None and report["targeted_not_armed"] == ["vote-split"]
    report = _fake_report(tmp_path / "b", SetWorkload(RUN_CONFIG), events,
                          nemesis=("vote-split",), fired={"vote-split": 1})
    assert report["valid"] is True


def test_a_campaign_whose_nemesis_injected_nothing_is_unknown(tmp_path):
    """A main phase shorter than the nemesis's first healthy period (``--time 8`` with the
    default interval of 8 to 12 s), or partitions of a one-node cluster: no fault was
    injected, so the run tested the healthy database only. It used to be reported valid, as
    if the database had come through the faults the campaign names."""
    events = [_ev(0, "invoke", "add", 1, 1), _ev(0, "ok", "add", 1, 2), _heal(3),
              _ev(1, "invoke", "read", None, 4), _ev(1, "ok", "read", [1], 5)]
    report = _fake_report(tmp_path / "a", SetWorkload(RUN_CONFIG), events,
                          nemesis=("partition", "kill"), fired={"partition": 0, "kill": 0})
    assert report["valid"] is None and report["faults"] == {}
    assert "no fault was injected" in (tmp_path / "a" / "out" / "summary.txt").read_text()
    report = _fake_report(tmp_path / "b", SetWorkload(RUN_CONFIG), events,
                          nemesis=("partition", "kill"), fired={"partition": 0, "kill": 1})
    assert report["valid"] is True
    # Without a nemesis, none was asked for: the healthy run is what was meant.
    assert _fake_report(tmp_path / "c", SetWorkload(RUN_CONFIG), events,
                        nemesis=())["valid"] is True


# ============================================================ the nemesis on fake clusters


class _FakeCluster:
    def __init__(self, regions=("us-east",), per_region=3, max_clock_offset_ms=250):
        self.spec = ClusterSpec(regions=regions, nodes_per_region=per_region,
                                max_clock_offset_ms=max_clock_offset_ms)
        self.node_ids = list(range(1, len(regions) * per_region + 1))
        self.cuts: list[set] = []
        self.clock_offsets_s: dict[int, float] = {}
        self.power_losses: list[dict] = []

    def nodes_in(self, region):
        i, p = self.spec.regions.index(region), self.spec.nodes_per_region
        return list(range(i * p + 1, i * p + p + 1))

    def cut(self, pairs):
        self.cuts.append(set(pairs))

    def heal_network(self):
        pass

    async def leaders(self):
        return {}

    def set_clock(self, node, offset):
        self.clock_offsets_s[node] = offset

    def power_loss(self, node, seed=0):
        # What LossyFS reports: a file with one synced write unit and ten unsynced ones.
        model = LossyModel()
        f = model.create("/wal", 0o644)
        model.write(f, 0, b"x" * model.unit)
        model.fsync(f)
        model.fsync(model.root)
        model.write(f, model.unit, b"y" * 10 * model.unit)
        report = model.power_loss(seed=seed, torn=False)
        self.power_losses.append(report)
        return report

    def running(self, node):
        return False

    def start_node(self, node):
        pass


def _start_stop(cluster, family, target, **kwargs):
    events = []

    async def main():
        nemesis = Nemesis(cluster, lambda f, v: events.append((f, v)), [family], seed=1,
                          **kwargs)
        started = await nemesis.start(family, target)
        await nemesis.stop()
        return nemesis, started

    nemesis, started = trio.run(main)
    return nemesis, started, events


@pytest.mark.parametrize("shape", ["region", "majorities-ring"])
def test_a_partition_shape_that_cuts_nothing_is_redrawn(shape):
    """With one region of three nodes, a region cut and a ring of majorities cut no pair:
    another shape is drawn, and what is recorded is what was cut."""
    cluster = _FakeCluster()
    nemesis, started, events = _start_stop(cluster, "partition", shape)
    assert started and nemesis.fired["partition"] == 1
    assert len(cluster.cuts) == 1 and cluster.cuts[0]
    f, value = events[0]
    assert f == "start-partition" and value["cut"] == len(cluster.cuts[0]) > 0
    assert value["shape"] == value["target"] != shape


def test_a_partition_with_nothing_to_cut_is_not_a_fault():
    cluster = _FakeCluster()
    nemesis, started, events = _start_stop(cluster, "partition", "region",
                                           targets={"partition": ["region"]})
    assert not started and nemesis.fired["partition"] == 0
    assert cluster.cuts == [] and events == []


def test_default_partition_shapes_fit_the_cluster():
    assert Nemesis(_FakeCluster(), None, ["partition"], 0).targets["partition"] == [
        "halves", "random-halves", "isolate-node", "isolate-leader", "bridge", "one-way"]
    assert "majorities-ring" in partition_shapes_for(5, 1)
    assert "region" not in partition_shapes_for(5, 1)
    assert set(partition_shapes_for(9, 3)) == set(jepsen.TARGETS["partition"])
    for shape in partition_shapes_for(3, 1):  # every default shape cuts something
        cluster = _FakeCluster()
        _start_stop(cluster, "partition", shape, targets={"partition": [shape]})
        assert cluster.cuts and cluster.cuts[0], shape


def test_a_power_loss_records_what_was_lost():
    cluster = _FakeCluster()
    _, _, events = _start_stop(cluster, "lossy", "one")
    f, value = events[0]
    assert f == "start-lossy"
    (node,) = value["nodes"]
    report = cluster.power_losses[0]
    assert value["lost"][str(node)] == {k: report[k] for k in LOSSY_REPORT_KEYS}
    assert value["lost"][str(node)]["units_lost"] == 10
    assert value["lost"][str(node)]["files"] == 1


def test_a_clock_strobe_is_healed_by_the_stop_that_follows_it():
    """The strobe flips a node's clock from a task of its own: the stop must leave every
    clock true and record the node it reset, also when it comes before that task first ran
    (trio runs ready tasks in a random order: a few tries). It used to reset nothing, and
    the task then skewed the clock after the heal."""
    for _ in range(20):
        cluster = _FakeCluster()
        _, _, events = _start_stop(cluster, "clock", "strobe")
        (_, started), (_, stopped) = events
        assert not any(cluster.clock_offsets_s.values()), events
        assert stopped["reset"] == [started["node"]]


@pytest.mark.parametrize("bound_ms", [250, 100])
def test_clock_offsets_keep_nodes_within_the_clusters_skew_bound(bound_ms):
    """Any two nodes (a skewed node's clock against another's, or the true one) are at most
    the cluster's max_clock_offset apart, whatever --clock-max asks."""
    bound_s = bound_ms / 1000
    worst = 0.0
    for seed in range(200):
        cluster = _FakeCluster(regions=("a", "b", "c"), max_clock_offset_ms=bound_ms)

        async def main(cluster=cluster, seed=seed):
            nemesis = Nemesis(cluster, lambda f, v: None, ["clock"], seed, clock_max_s=1.0)
            await nemesis.start("clock", "bump")
            return nemesis

        trio.run(main)
        offsets = list(cluster.clock_offsets_s.values()) + [0.0]
        worst = max(worst, max(offsets) - min(offsets))
    assert bound_s / 2 < worst <= bound_s
    cluster = _FakeCluster(max_clock_offset_ms=bound_ms)
    nemesis = Nemesis(cluster, lambda f, v: None, ["clock"], 0, clock_max_s=1.0)
    assert nemesis.clock_max_s == bound_s / 2  # the strobe's swing is bounded the same way


def test_a_seed_fixes_the_schedule_whoever_leads():
    """The seed fixes every choice of the nemesis: when each fault strikes, its family, its
    target and how long it lasts. Only the victim of a leader-targeted fault depends on who
    leads at that moment. Finding a leader or not used to take a different amount from the
    seed's stream, so that everything after the first such fault changed with the timing."""
    def schedule(leaders, seed):
        cluster = _FakeCluster(regions=("a", "b", "c"))

        async def current_leaders():
            return leaders

        cluster.leaders = current_leaders
        cluster.kill_node = cluster.pause_node = cluster.resume_node = lambda node: None
        events = []

        async def main():
            nemesis = Nemesis(cluster, lambda f, v: events.append((trio.current_time(), f)),
                              ["partition", "kill", "pause"], seed, interval_s=(1.0, 2.0),
                              targets={"kill": ["leader"], "partition": ["isolate-leader"]})
            await nemesis.run(trio.current_time() + 60)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return events

    for seed in range(4):
        assert schedule({}, seed) == schedule({100: 4, 101: 7, 102: 1}, seed), seed


# ============================================================ data kept from LossyFS mounts


class _FakeMount:
    """A LossyFS mount: its files vanish when it is closed."""

    def __init__(self, root: Path):
        self.root = root

    def close(self):
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.parametrize("keep", [True, False])
def test_lossy_data_is_copied_out_before_unmounting_when_kept(tmp_path, fake_lab, keep):
    cluster = fake_lab
    cluster.lossy = True
    cluster.lossy_root = tmp_path / "lossyfs"
    for node in cluster.node_ids:
        data = cluster.data_dir(node)
        (data / "raft").mkdir(parents=True)
        (data / "raft" / "log").write_bytes(b"entry %d" % node)
        cluster.filesystems[node] = _FakeMount(cluster.lossy_root / f"n{node}")
    cluster.start_all()
    cluster.close(keep_data=keep)
    assert not cluster.lossy_root.exists()
    for node in cluster.node_ids:
        kept = cluster.directory / f"node-{node}" / "raft" / "log"
        assert kept.exists() == keep
        if keep:
            assert kept.read_bytes() == b"entry %d" % node


def test_an_invalid_run_keeps_its_data(tmp_path, no_lab, monkeypatch):
    """The campaign's verdict decides whether the data is copied out of the mounts."""
    async def lost_add(self):
        h = self.runner.history
        h.record(0, "invoke", "add", 1)
        h.record(0, "ok", "add", 1)
        h.nemesis("heal-all", {"started": []})
        h.record(1, "invoke", "read", None)
        h.record(1, "ok", "read", [])
        self.final_ok = True

    monkeypatch.setattr(jepsen.Campaign, "run", lost_add)
    out = tmp_path / "out"
    assert jepsen.main(["--workload", "set", "--nodes", "3", "--out", str(out)]) == 1
    assert no_lab == [True]


def test_a_run_into_the_same_directory_starts_from_empty_data(tmp_path, no_lab, monkeypatch):
    """The data an earlier run into the same --out kept (an invalid or unknown run, or
    --keep-data) is not the new run's: its nodes started from it, and the workload's setup
    found its keyspaces there already (the run broke off, unknown)."""
    out = tmp_path / "out"
    stale = out / "cluster" / "node-1" / "catalog"
    stale.mkdir(parents=True)
    seen = []

    async def run(self):
        seen.append(stale.exists())
        raise RuntimeError("stop here")

    monkeypatch.setattr(jepsen.Campaign, "run", run)
    assert jepsen.main(["--workload", "set", "--nodes", "3", "--out", str(out)]) == 2
    assert seen == [False]


# ============================================================ nothing outlives the harness

# bench.jepsen_node as the lab starts it, with the node itself replaced by a process that
# says it is up and then waits.
_NODE = ("import sys, time\n"
         "import engine.cli\n"
         "from bench import jepsen_node\n"
         "engine.cli.main = lambda argv: (print('up', flush=True), time.sleep(30))\n"
         "sys.exit(jepsen_node.main(['--config', 'node-1.toml']))\n")
# The harness: starts the node in a session of its own (as LabCluster.start_node does) and
# prints its pid once it is up.
_HARNESS = ("import subprocess, sys\n"
            "proc = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
            "stdout=subprocess.PIPE, text=True, start_new_session=True)\n"
            "assert proc.stdout.readline() == 'up\\n'\n"
            "print(proc.pid, flush=True)\n"
            "proc.wait()\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_node_ends_with_the_harness_that_started_it():
    """A harness killed outright (SIGKILL: a test's or a CI job's timeout) runs no clean-up:
    its node processes, each in a session of its own and some stopped (SIGSTOP), must not
    run on for ever inside their namespaces."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    harness = subprocess.Popen([sys.executable, "-c", _HARNESS, _NODE], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, text=True)
    node = int(harness.stdout.readline())
    try:
        os.kill(node, signal.SIGSTOP)  # a paused node
        harness.kill()
        harness.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(node) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(node)
    finally:
        harness.stdout.close()
        if _alive(node):
            os.kill(node, signal.SIGKILL)


# ============================================================ the register's final read


class _Store:
    """A database of registers in a dict: each transaction reads the dict and commits its
    buffered writes into it."""

    region = "a"

    def __init__(self):
        self.data = {}

    def transaction(self, isolation):
        store, writes = self, {}

        class Txn:
            txn_id = 1

            async def get(self, ks, key):
                return writes.get((ks, key), store.data.get((ks, key)))

            async def put(self, ks, key, value):
                writes[(ks, key)] = value

            async def commit(self):
                store.data.update(writes)

            async def rollback(self):
                writes.clear()

        return Txn()


async def test_the_register_final_read_reads_every_key_used():
    """An acknowledged write that the database loses on a key no later operation touched
    shows only in the final read: it must read every key the run used. It read only the
    last key first used, so a write lost on any other key (keys are retired after a few
    dozen operations, and nothing reads them again) left the run valid."""
    from bench.jepsen_workloads import Register, check_register
    from bench.txnsim import FaultPlan, History, _Runner

    runner = _Runner(RUN_CONFIG, FaultPlan(kinds=frozenset()))
    runner.workload = Register(RUN_CONFIG, key_count=4, ops_per_key=5)
    runner.history = History()
    db, rng = _Store(), random.Random(3)
    for _ in range(40):  # one client, one operation at a time
        f, value, writes = runner.workload.generate(rng)
        await runner.operate(db, 0, f, value, writes, rng, kill=None)
    written = [e["key"] for e in runner.history.events if e["type"] == "ok"
               and e["f"] in ("write", "cas")]
    lost = next(k for k in written if k != runner.workload.used[-1])
    del db.data[("reg-a", b"r%d" % lost)]  # the database loses that key's writes
    runner.history.nemesis("heal-all", {"started": []})
    assert await runner.final_read(db)
    finals = [e["key"] for e in runner.history.events
              if e["f"] == "read" and e["type"] == "ok" and e["process"] != 0]
    assert sorted(finals) == sorted(runner.workload.used)
    result = check_register(runner.history.events)
    assert result["valid"] is False and [str(lost)] == result["stats"]["invalid_keys"]
