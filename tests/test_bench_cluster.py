"""``python -m bench cluster`` runs and writes the JSON the node-runtime issue describes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest
import trio
import trio.testing

from bench import cluster
from engine.errors import TransactionConflictError


def test_cluster_benchmark_writes_its_results(tmp_path):
    out_file = tmp_path / "cluster.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench", "cluster", "--quick", "--duration", "0.5", "--warmup",
         "0", "--concurrency", "1", "--regions", "us-east,eu-west", "--nodes-per-region", "1",
         "--workdir", str(tmp_path), "--json", str(out_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out_file.read_text())
    results = doc["results"]
    # Each region alone, then both at once: every row once.
    keys = [(r["workload"], r["region"], r["concurrency"], r["regions_at_once"]) for r in results]
    assert sorted(keys) == sorted(
        (w, reg, c, n) for w in ("single-key", "4-key") for reg in ("us-east", "eu-west")
        for c in (1,) for n in (1, 2))
    for r in results:
        assert set(r) >= {"workload", "region", "concurrency", "txn_per_s", "p50_ms", "p99_ms",
                          "abort_rate"}
        assert r["txn_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert 0 <= r["abort_rate"] < 1
    alone, at_once = doc["targets"]
    assert "alone" in alone["target"] and "at once" in at_once["target"]
    assert alone["limit"] == at_once["limit"] == 3.0
    for t, n in ((alone, 1), (at_once, 2)):
        assert t["value"] == max(r["p50_ms"] for r in results if r["workload"] == "single-key"
                                 and r["concurrency"] == 1 and r["regions_at_once"] == n)
    assert list(tmp_path.glob("bench-cluster-*")) == []  # the cluster directory is removed


class _ConflictingDatabase:
    """A client whose every transaction conflicts on each of its three attempts."""

    attempts = 3

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def keyspace(self, name):
        return name

    async def run_transaction(self, body):
        class Tx:
            async def get(self, ks, key):
                return None

            async def put(self, ks, key, value):
                pass

        for _ in range(self.attempts):
            await body(Tx())
            await trio.sleep(0.01)  # the commit's round trip
        raise TransactionConflictError("conflict", "write_write")


def test_cluster_measure_does_not_count_conflicted_transactions(monkeypatch):
    # A transaction whose every attempt conflicted was not committed: it has no commit
    # latency, is not throughput, and all of its attempts aborted.
    monkeypatch.setattr(cluster, "connect", lambda addrs, region: _ConflictingDatabase())
    rows = trio.run(cluster._measure, {"us-east": ["x:1"]}, ("us-east",), "single-key", 1,
                    1.0, 0.0, 1, clock=trio.testing.MockClock(autojump_threshold=0))
    [row] = rows
    assert row["transactions"] == 0 and row["txn_per_s"] == 0
    assert row["p50_ms"] is None and row["p99_ms"] is None
    assert row["abort_rate"] == 1.0


def test_cluster_target_counts_a_region_that_committed_nothing_as_not_met():
    rows = [{"workload": "single-key", "region": r, "concurrency": 1, "regions_at_once": 1,
             "p50_ms": p50}
            for r, p50 in (("us-east", 1.5), ("eu-west", None))]
    [t] = cluster.targets(rows)
    assert t["met"] is False and t["value"] is None
    [t] = cluster.targets(rows[:1])
    assert t["met"] is True and t["value"] == 1.5


def test_cluster_target_is_judged_apart_for_regions_alone_and_at_once():
    rows = [{"workload": "single-key", "region": r, "concurrency": 1, "regions_at_once": n,
             "p50_ms": p50}
            for r, n, p50 in (("us-east", 1, 2.0), ("eu-west", 1, 2.5), ("us-east", 2, 4.0),
                              ("eu-west", 2, 3.5))]
    rows.append({"workload": "4-key", "region": "us-east", "concurrency": 1,
                 "regions_at_once": 1, "p50_ms": 9.0})
    alone, at_once = cluster.targets(rows)
    assert (alone["value"], alone["met"]) == (2.5, True)
    assert (at_once["value"], at_once["met"]) == (4.0, False)


def test_cluster_regions_at_once_run_in_processes_of_their_own_and_report_a_failure():
    # Every region at once: each region's clients in a load process of their own. One that
    # cannot start is reported with its region and its error, and no load process is left.
    addresses = {"us-east": ["not an address"], "eu-west": ["not an address either"]}
    with pytest.raises(RuntimeError, match="us-east's load process failed: "
                                           "InvalidArgumentError: .*not an address"):
        cluster._measure_apart(addresses, ["us-east", "eu-west"], "single-key", 1, 0.5, 0.0, 1)
    assert multiprocessing.active_children() == []
