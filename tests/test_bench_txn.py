"""``python -m bench txn`` runs on a small cluster and writes the results document it promises."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import trio
import trio.testing

from bench import report, txn
from bench.txn import zipf_cdf, zipf_sample

REGIONS = ("us-east", "eu-west", "ap-south")
RESULT_FIELDS = {"workload", "region", "concurrency", "txn_per_s", "p50_ms", "p99_ms",
                 "abort_rate", "wan_rtts_per_commit", "commit_p50_ms"}


def test_txn_benchmark_writes_its_results(tmp_path):
    out_file = tmp_path / "txn.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench", "txn", "--quick", "--duration", "1", "--warmup", "0",
         "--concurrency", "1,2", "--thetas", "0,0.99", "--contention-concurrency", "2",
         "--lag-samples", "2", "--regions", ",".join(REGIONS), "--nodes-per-region", "1",
         "--wan-latency-ms", "5,10,15", "--workdir", str(tmp_path), "--json", str(out_file)],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out_file.read_text())
    assert doc["schema"] == 1 and doc["benchmark"] == "txn"
    assert {"cpu_model", "cores", "python", "date"} <= set(doc["machine"])
    assert doc["wan_one_way_ms"] == {"us-east:eu-west": 5, "us-east:ap-south": 10,
                                     "eu-west:ap-south": 15}

    regional_ran = "regional" not in doc.get("skipped", {})
    workloads = ["home", "remote", "two-region", "three-region"]
    if regional_ran:
        workloads.append("regional")
    expected = {(w, r, c) for w in workloads for r in REGIONS for c in (1, 2)}
    expected |= {(f"contention-{t}", r, 2) for t in ("0", "0.99") for r in REGIONS}
    results = doc["results"]
    keys = [(r["workload"], r["region"], r["concurrency"]) for r in results]
    assert sorted(keys) == sorted(expected)  # one result each, none twice

    for r in results:
        assert set(r) >= RESULT_FIELDS
        assert r["txn_per_s"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"], r
        assert 0 < r["commit_p50_ms"] <= r["p50_ms"], r
        assert 0 <= r["abort_rate"] <= 1, r
        if r["workload"] in ("remote", "two-region", "three-region"):
            # At least one WAN round trip to the farthest participant region.
            assert r["wan_rtts_per_commit"] >= 0.9, r
        else:
            assert r["wan_rtts_per_commit"] == 0, r

    lag = doc["replication_lag_ms"]
    assert {"p50", "p99"} <= set(lag)
    if regional_ran:
        assert 0 <= lag["p50"] <= lag["p99"]
    else:
        assert doc["skipped"]["regional"]
        assert lag["p50"] is None and lag["p99"] is None
    assert {t["met"] for t in doc["targets"]} <= {True, False, None}
    assert "three-region" in out.stdout  # the table
    assert list(tmp_path.glob("bench-txn-*")) == []  # the cluster directory is removed

    md = report.render_markdown({"bench/results/txn.json": doc})
    assert "python -m bench txn" in md and "| three-region | us-east |" in md


def test_txn_benchmark_help():
    out = subprocess.run([sys.executable, "-m", "bench", "txn", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--json" in out.stdout


def test_zipf_sampler_skews_with_theta():
    rng = random.Random(7)
    uniform, skewed = zipf_cdf(100, 0.0), zipf_cdf(100, 0.99)
    hits_uniform = sum(zipf_sample(uniform, rng) == 0 for _ in range(20_000))
    hits_skewed = sum(zipf_sample(skewed, rng) == 0 for _ in range(20_000))
    assert 100 < hits_uniform < 320  # about 1 %
    assert 3200 < hits_skewed < 4400  # 1 / H(100, 0.99), about 19 %
    assert all(0 <= zipf_sample(skewed, rng) < 100 for _ in range(1000))


def _row(workload, region, commit_p50_ms, rtt=220.0):
    return {"workload": workload, "region": region, "concurrency": 1,
            "commit_p50_ms": commit_p50_ms, "farthest_rtt_ms": rtt}


def test_txn_targets_count_a_region_that_committed_nothing_as_not_met():
    # us-east and eu-west commit well inside their limits; ap-south committed no transaction
    # at all: the worst region did not meet the target.
    results = [_row("remote", "us-east", 200.0), _row("remote", "eu-west", 210.0),
               _row("remote", "ap-south", None),
               _row("regional", "us-east", 1.0, 0.0), _row("regional", "ap-south", None, 0.0)]
    lag = {"p50": 1.0, "p99": 2.0}
    remote, regional, _lag = txn.targets(results, lag, {"a:b": 35.0})
    assert remote["met"] is False and remote["value"] is None
    assert "ap-south" in remote["target"]
    assert regional["met"] is False and regional["value"] is None
    # Every region measured: the worst one decides; no regional run: not evaluated.
    ok = txn.targets(results[:2], lag, {"a:b": 35.0})
    assert [t["met"] for t in ok] == [True, None, True]


class _LaggingDatabase:
    """A client of one region over a shared map in which only the first two writes of each
    pair of regions ever become visible to a reader."""

    def __init__(self, region, visible):
        self.region = region
        self.visible = visible

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def keyspace(self, name):
        return name

    def transaction(self):
        db = self

        class Tx:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            async def put(self, ks, key, value):
                if int(key.rsplit(b"-", 1)[1]) < 2:
                    db.visible[key] = value

        return Tx()

    async def read(self, ks, key):
        await trio.sleep(0.001)
        return self.visible.get(key)

    async def statistics(self):
        return {"replication_lag_ms": {}}


def test_replication_lag_counts_writes_never_seen(monkeypatch):
    # Half of the writes never reach the other region: the p99 lag is at least the timeout,
    # and the target is not met.
    visible: dict = {}
    monkeypatch.setattr(txn, "connect", lambda addrs, region: _LaggingDatabase(region, visible))
    lag = trio.run(txn._replication_lag, {"a": [], "b": []}, ("a", "b"), 4,
                   clock=trio.testing.MockClock(autojump_threshold=0))
    assert lag["timeouts"] == 4 and lag["samples"] == 8
    assert lag["p99"] == txn.LAG_TIMEOUT_S * 1e3
    [verdict] = [t for t in txn.targets([], lag, {"a:b": 35.0}) if "lag" in t["target"]]
    assert verdict["met"] is False
