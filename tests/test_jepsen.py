"""Jepsen-style campaigns on real node processes in network namespaces (``python -m bench
jepsen``, bench/jepsen.py): every workload stays valid under faults (bank, append, register and
regional under partitions, kills and pauses; set under power losses and a vote split), and
every planted bug is caught (FAULTS.md §5: a harness that cannot fail proves nothing).

Integration tests: they start real clusters and need root, iproute2's network namespaces and
nftables (the power-loss campaign also FUSE). They skip where those are missing, unless
MERIDIAN_REQUIRE_NETNS=1 (and MERIDIAN_REQUIRE_FUSE=1 for FUSE), as CI sets, makes that a
failure. Each campaign runs as its own ``python -m bench jepsen`` process, bounded in time;
the long campaign (``--time 600 --nemesis all --workload all``) is opt-in: --run-slow.

The first tests need none of that: the analysis and the set and register checkers on
hand-made histories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import jepsen, plots
from bench.jepsen_cluster import ClusterSpec, LabCluster, unavailable_reason
from bench.jepsen_workloads import check_register, check_set

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN_TIMEOUT_S = 240


# ============================================================ no root needed


def test_parse_nodes():
    assert jepsen.parse_nodes("3") == (1, 3)
    assert jepsen.parse_nodes("3x3") == (3, 3)
    assert jepsen.parse_nodes("3X1") == (3, 1)
    with pytest.raises(ValueError):
        jepsen.parse_nodes("0")
    with pytest.raises(ValueError):
        jepsen.parse_nodes("axb")


def _ev(process, kind, f, value, t, **extra):
    return {"process": process, "type": kind, "f": f, "value": value, "time_ns": t, **extra}


def test_availability_and_recovery_from_a_history():
    s = 10**9
    events = [
        _ev(0, "invoke", "read", None, 0), _ev(0, "ok", "read", [], s // 10),
        _ev("nemesis", "info", "start-kill", {"nodes": [1]}, 1 * s),
        _ev(0, "invoke", "read", None, 2 * s), _ev(0, "fail", "read", None, 3 * s),
        _ev(1, "invoke", "read", None, 2 * s), _ev(1, "ok", "read", [], 3 * s),
        _ev("nemesis", "info", "stop-kill", {"started": [1]}, 4 * s),
        _ev(0, "invoke", "read", None, 5 * s), _ev(0, "ok", "read", [], 6 * s),
    ]
    windows = jepsen.fault_windows(events)
    assert [(w["family"], w["start_ns"], w["end_ns"]) for w in windows] == [("kill", s, 4 * s)]
    ops = jepsen._operations(events, ("read",))
    a = jepsen.availability(ops, windows)
    assert a["during_faults"] == 0.5 and a["outside_faults"] == 1.0
    assert a["by_family"]["kill"] == {"ok_fraction": 0.5, "ops": 2}
    assert jepsen.recovery_times(ops, events) == [
        {"heal": "stop-kill", "at_s": 4.0, "recovered_s": 2.0}]


def test_set_checker_finds_lost_unexpected_and_stale_elements():
    # The final phase begins at 35 ns (the final heal).
    ok = [_ev(0, "invoke", "add", 1, 0), _ev(0, "ok", "add", 1, 10),
          _ev(0, "invoke", "add", 2, 20), _ev(0, "ok", "add", 2, 30),
          _ev(1, "invoke", "read", None, 40), _ev(1, "ok", "read", [1, 2], 50)]
    assert check_set(ok, final_from_ns=35)["valid"] is True
    stale = ok[:4] + [_ev(1, "invoke", "read", None, 31), _ev(1, "ok", "read", [1], 32),
                      _ev(1, "invoke", "read", None, 60), _ev(1, "ok", "read", [1, 2], 70)]
    assert check_set(stale, final_from_ns=35)["anomaly_types"] == ["stale-read"]
    lost = ok[:4] + [_ev(1, "invoke", "read", None, 40), _ev(1, "ok", "read", [2], 50)]
    assert check_set(lost, final_from_ns=35)["anomaly_types"] == ["lost"]
    unexpected = ok[:4] + [_ev(1, "invoke", "read", None, 40),
                           _ev(1, "ok", "read", [1, 2, 9], 50)]
    assert check_set(unexpected, final_from_ns=35)["anomaly_types"] == ["unexpected"]


def test_set_checker_holds_elements_a_read_returned():
    # A read that returns an element proves its add took effect, even when the add's client
    # never heard back (info) or heard back only later: every read that begins after that
    # read ended must hold the element, the final one included.
    info_add_then_lost = [_ev(0, "invoke", "add", 1, 0), _ev(0, "info", "add", 1, 10),
                          _ev(1, "invoke", "read", None, 20), _ev(1, "ok", "read", [1], 30),
                          _ev(2, "invoke", "read", None, 40), _ev(2, "ok", "read", [], 50)]
    result = check_set(info_add_then_lost, final_from_ns=35)
    assert result["anomaly_types"] == ["lost"] and result["stats"]["lost"] == 1, result
    seen_then_missed = [_ev(0, "invoke", "add", 1, 0),
                        _ev(1, "invoke", "read", None, 5), _ev(1, "ok", "read", [1], 10),
                        _ev(2, "invoke", "read", None, 20), _ev(2, "ok", "read", [], 25),
                        _ev(0, "ok", "add", 1, 30),
                        _ev(3, "invoke", "read", None, 40), _ev(3, "ok", "read", [1], 50)]
    result = check_set(seen_then_missed, final_from_ns=35)
    assert result["anomaly_types"] == ["stale-read"], result
    assert result["anomalies"]["stale-read"][0]["read_process"] == 2
    # A read concurrent with the one that returned the element may miss it, and an info add
    # no read returned may be missing from the final read.
    concurrent = [_ev(0, "invoke", "add", 1, 0), _ev(0, "info", "add", 1, 10),
                  _ev(4, "invoke", "add", 2, 0), _ev(4, "info", "add", 2, 10),
                  _ev(1, "invoke", "read", None, 20), _ev(2, "invoke", "read", None, 21),
                  _ev(2, "ok", "read", [], 29), _ev(1, "ok", "read", [1], 30),
                  _ev(3, "invoke", "read", None, 40), _ev(3, "ok", "read", [1], 50)]
    assert check_set(concurrent, final_from_ns=35)["valid"] is True


def test_set_checker_finds_an_element_read_twice():
    # Each element is a key of its own: a scan that returns one twice is wrong, even when
    # nothing is lost.
    events = [_ev(0, "invoke", "add", 1, 0), _ev(0, "ok", "add", 1, 10),
              _ev(1, "invoke", "read", None, 20), _ev(1, "ok", "read", [1, 1], 30),
              _ev(2, "invoke", "read", None, 40), _ev(2, "ok", "read", [1], 50)]
    result = check_set(events, final_from_ns=35)
    assert result["valid"] is False and result["anomaly_types"] == ["duplicate"], result
    assert result["anomalies"]["duplicate"][0]["elements"] == [1]
    assert check_set(events[:2] + events[4:], final_from_ns=35)["valid"] is True


def test_register_checker_finds_a_stale_read():
    events = [_ev(0, "invoke", "write", 1, 0, key=1), _ev(0, "ok", "write", 1, 10, key=1),
              _ev(1, "invoke", "read", None, 20, key=1), _ev(1, "ok", "read", None, 30, key=1)]
    result = check_register(events)
    assert result["valid"] is False and result["anomaly_types"] == ["nonlinearizable"]
    assert check_register(events[:2])["valid"] is True


def test_fault_plots_are_pngs(tmp_path):
    ops = [{"type": t, "invoke_ns": i * 10**8, "done_ns": i * 10**8 + 5 * 10**6}
           for i, t in enumerate(["ok", "fail", "info", "ok"] * 10)]
    windows = [{"family": "partition", "start_ns": 10**9, "end_ns": 2 * 10**9}]
    paths = plots.plot_faults(str(tmp_path), ops, windows)
    assert [os.path.basename(p) for p in paths] == ["latency.png", "throughput.png"]
    for p in paths:
        assert open(p, "rb").read(8) == plots.PNG_MAGIC


def test_planted_bugs_are_refused_without_the_test_switch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MERIDIAN_ALLOW_PLANTED_BUGS"}
    out = subprocess.run([sys.executable, "-m", "bench", "jepsen", "--planted-bug",
                          "skip_adjudication", "--time", "1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert "MERIDIAN_ALLOW_PLANTED_BUGS=1" in out.stderr


# ============================================================ real clusters


def _require(*, faketime: bool = False, lossy: bool = False) -> None:
    why = unavailable_reason(faketime=faketime, lossy=lossy)
    if why is None:
        return
    if os.environ.get("MERIDIAN_REQUIRE_NETNS") or (
            lossy and os.environ.get("MERIDIAN_REQUIRE_FUSE") == "1"):
        pytest.fail(f"MERIDIAN_REQUIRE_NETNS/FUSE is set but {why}")
    pytest.skip(why)


def run_jepsen(out: Path, *args: str, planted: bool = False) -> tuple[dict, str, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("MERIDIAN_PLANTED_BUGS", None)
    if planted:
        env["MERIDIAN_ALLOW_PLANTED_BUGS"] = "1"
    else:
        env.pop("MERIDIAN_ALLOW_PLANTED_BUGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "jepsen", *args, "--prefix", f"mj{os.getpid() % 1000}",
         "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=CAMPAIGN_TIMEOUT_S)
    text = proc.stdout + proc.stderr
    path = out / "results.json"
    assert path.exists(), f"no results.json; output:\n{text[-4000:]}"
    return json.loads(path.read_text()), text, proc.returncode


def test_partitions_really_cut_and_heal(tmp_path):
    """The lab's nftables cut drops node-to-node traffic one way or both, and healing
    restores it (a nemesis that does nothing would make every campaign pass)."""
    _require()
    cluster = LabCluster(tmp_path / "lab", ClusterSpec(regions=("lab",), nodes_per_region=2),
                         prefix=f"mt{os.getpid() % 1000}")
    server = (
        "import socket,sys\n"
        "s=socket.socket(); s.bind((sys.argv[1], 7300)); s.listen(8); print('up', flush=True)\n"
        "while True:\n    c,_=s.accept(); c.close()\n")
    client = (
        "import socket,sys\n"
        "try:\n    socket.create_connection((sys.argv[1], 7300), timeout=1).close(); print('ok')\n"
        "except OSError:\n    print('cut')\n")
    try:
        cluster.setup()
        lab = cluster.lab
        srv = lab.popen("n2", [sys.executable, "-c", server, lab.addresses["n2"]],
                        stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "up"

        def probe() -> str:
            return lab.run("n1", [sys.executable, "-c", client, lab.addresses["n2"]],
                           timeout=20, capture_output=True, text=True).stdout.strip()

        assert probe() == "ok"
        cluster.cut({(1, 2)})  # one way: n1's packets to n2 are dropped
        assert probe() == "cut"
        cluster.heal_network()
        assert probe() == "ok"
        cluster.cut({(2, 1)})  # the other way: n2's answers are dropped
        assert probe() == "cut"
        cluster.heal_network()
        cluster.set_loss(100)
        assert probe() == "cut"
        cluster.heal_network()
        assert probe() == "ok"
    finally:
        cluster.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"mt{os.getpid() % 1000}-" not in listed


# The CI campaigns are short (a few faults each) and keep a 1 s quiet period after the final heal
# (the final read finishes what abandoned intents remain itself).
QUIET = ("--quiet", "1")
CAMPAIGN = ("--nemesis", "partition,kill,pause", "--time", "12", "--interval", "1.5,2.5",
            *QUIET)


# The set workload's valid campaigns on real clusters are the power-loss and vote-split ones
# below (and the long campaign's).
@pytest.mark.parametrize("workload", ["bank", "append", "register", "regional"])
def test_campaign_with_partitions_kills_and_pauses_is_valid(tmp_path, workload):
    _require()
    out = tmp_path / workload
    results, text, code = run_jepsen(out, "--workload", workload, "--seed", "3", *CAMPAIGN)
    assert results["valid"] is True, text[-6000:]
    assert code == 0
    assert results["final_read_ok"], text[-3000:]
    assert {"partition", "kill", "pause"} <= set(results["faults"]), results["faults"]
    assert results["counts"]["ok"] >= 30, results["counts"]
    assert results["availability"]["during_faults"] is not None
    for name in ("history.jsonl", "nemesis.jsonl", "summary.txt", "latency.png",
                 "throughput.png"):
        assert (out / name).exists(), name
    nemesis = [json.loads(line) for line in (out / "nemesis.jsonl").read_text().splitlines()]
    assert nemesis and all(e["process"] == "nemesis" for e in nemesis)
    assert nemesis[-1]["f"] == "heal-all"
    # Each node logs to its rotated log file (bounded on disk); its stdout and stderr file
    # has a mark per start: the killed nodes' restarts add to one per node.
    configs = sorted((out / "cluster").glob("node-*.toml"))
    assert configs
    starts = 0
    for node in configs:
        log = node.with_suffix(".log").read_text()
        assert "serving clients" in log, log[-2000:]
        starts += node.with_suffix(".out").read_text().count("=== start")
    assert starts > len(configs)


# Each planted bug with the workload and the (targeted) nemesis that exposes it.
PLANTED = {
    "skip_adjudication": ("--workload", "bank", "--nemesis", "partition",
                          "--accounts-per-region", "2", "--nodes", "3x1"),
    # One region of three voters: many transactions per second in one group, and a replication
    # round trip between a commit's proposal and its apply, so a read's snapshot often lands
    # above a commit still in flight (on three one-node regions such a read came once a run,
    # and some runs had none).
    "read_above_closed": ("--workload", "append", "--nemesis", "partition", "--nodes", "3"),
    "ack_before_decision": ("--workload", "bank", "--nemesis", "coordinator",
                            "--coordinator-kill-p", "0.5", "--nodes", "3x1"),
    # Every node of the (single) region loses power at once: what no replica fsynced is gone.
    "ack_before_fsync": ("--workload", "set", "--nemesis", "lossy", "--lossy-targets", "all",
                         "--nodes", "3"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(tmp_path, bug):
    _require(lossy="lossy" in PLANTED[bug])
    results, text, code = run_jepsen(tmp_path / bug, "--planted-bug", bug, "--seed", "2",
                                     "--time", "16", "--interval", "2,4", *QUIET,
                                     *PLANTED[bug], planted=True)
    assert results["valid"] is False, text[-4000:]
    assert code == 1
    assert results["planted_bugs"] == [bug]
    assert results["anomalies"], results["checker"]


def test_power_loss_campaign_without_planted_bugs_is_valid(tmp_path):
    """The same power losses as the ack_before_fsync campaign, on the correct node: valid, so
    what that campaign finds is the bug's doing, not the harness's."""
    _require(lossy=True)
    results, text, code = run_jepsen(tmp_path / "lossy", "--workload", "set", "--nemesis",
                                     "lossy", "--lossy-targets", "all", "--nodes", "3",
                                     "--seed", "2", "--time", "16", "--interval", "2,4", *QUIET)
    assert results["valid"] is True and code == 0, text[-4000:]
    assert results["faults"].get("lossy", 0) >= 2 and results["final_read_ok"]


# The targeted schedule for votes_without_persisting (bench/jepsen_targeted.py): one region of
# three nodes, the vote-split nemesis alone, one round (a round runs to its end, about 10 s,
# whatever --time says; a round that aborts early is tried again until --time).
VOTE_SPLIT = ("--workload", "set", "--nodes", "3", "--nemesis", "vote-split", "--time", "10",
              "--interval", "2,2", "--seed", "1", *QUIET)


def test_vote_split_catches_votes_without_persisting(tmp_path):
    """A replica that forgets its vote across a restart votes twice in one term: the schedule
    makes it, and two nodes then lead the data group in the same term (Raft's Election
    Safety, as the nodes' status answers show it)."""
    _require()
    started = time.monotonic()
    results, text, code = run_jepsen(tmp_path / "split", *VOTE_SPLIT, "--planted-bug",
                                     "votes_without_persisting", planted=True)
    assert results["valid"] is False and code == 1, text[-4000:]
    assert "two-leaders-in-one-term" in results["anomaly_types"], results["anomalies"]
    found = results["anomalies"]["two-leaders-in-one-term"][0]
    assert len(set(found["leaders"])) == 2, found
    assert time.monotonic() - started < 90


def test_vote_split_without_planted_bugs_is_valid(tmp_path):
    """The same schedule on the correct node: the restarted voter remembers its vote, so the
    second election is for a later term, and the campaign is valid."""
    _require()
    started = time.monotonic()
    results, text, code = run_jepsen(tmp_path / "split", *VOTE_SPLIT)
    assert results["valid"] is True and code == 0, text[-4000:]
    assert results["faults"].get("vote-split", 0) >= 1 and results["final_read_ok"]
    nemesis = [json.loads(line) for line in
               (tmp_path / "split" / "nemesis.jsonl").read_text().splitlines()]
    # The schedule ran to its end (the voter voted in T, the old leader led T).
    assert any(e["f"] == "vote-split-armed" for e in nemesis), nemesis
    assert time.monotonic() - started < 90


@pytest.mark.slow
def test_long_campaign_every_workload_every_nemesis(tmp_path):
    """Opt-in (--run-slow): ten minutes per workload, every nemesis family."""
    _require(faketime=True, lossy=True)
    env = dict(os.environ)
    env.pop("MERIDIAN_ALLOW_PLANTED_BUGS", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", "jepsen", "--time", "600",
                           "--nemesis", "all", "--workload", "all", "--out",
                           str(tmp_path / "long")], env=env, cwd=REPO, timeout=5 * 900)
    assert proc.returncode == 0, f"see {tmp_path / 'long'} ({time.monotonic() - started} s)"

