"""``python -m bench cluster`` runs and writes the JSON the node-runtime issue describes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_cluster_benchmark_writes_its_results(tmp_path):
    out_file = tmp_path / "cluster.json"
    out = subprocess.run(
        [sys.executable, "-m", "bench", "cluster", "--quick", "--duration", "0.5", "--warmup",
         "0", "--concurrency", "1,2", "--regions", "us-east,eu-west", "--nodes-per-region", "1",
         "--workdir", str(tmp_path), "--json", str(out_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out_file.read_text())
    results = doc["results"]
    assert {(r["workload"], r["region"], r["concurrency"]) for r in results} == {
        (w, reg, c) for w in ("single-key", "4-key") for reg in ("us-east", "eu-west")
        for c in (1, 2)}
    for r in results:
        assert set(r) >= {"workload", "region", "concurrency", "txn_per_s", "p50_ms", "p99_ms",
                          "abort_rate"}
        assert r["txn_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert 0 <= r["abort_rate"] < 1
    assert doc["targets"][0]["limit"] == 3.0
    assert list(tmp_path.glob("bench-cluster-*")) == []  # the cluster directory is removed
