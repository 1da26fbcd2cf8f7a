"""The short variant of ``python -m bench raft`` runs and writes the documented JSON.

An integration test (real processes on loopback); it checks the shape of the results, never
their speed — speed targets live in the benchmark itself (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def test_bench_raft_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "raft.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "raft", "--quick", "--systems", "meridian",
         "--concurrency", "1,4", "--duration", "1", "--warmup", "0.3",
         "--workdir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "raft"
    rows = doc["results"]
    assert [(r["system"], r["concurrency"]) for r in rows] == [("meridian", 1), ("meridian", 4)]
    for r in rows:
        assert r["durable"] is True
        assert r["ops_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert any(t["target"].startswith("c=1 meridian p50") for t in doc["targets"])


def test_bench_raft_rejects_bad_arguments():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "raft", "--systems", "nosuch"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "'nosuch' is not one of meridian," in proc.stderr


def test_a_run_that_fails_costs_its_row_not_the_rows_measured(tmp_path, monkeypatch, capsys):
    # A member that does not start (here: every pysyncobj run) used to end the benchmark with
    # a traceback, throwing away every row already measured.
    from bench import raft, raft_peers

    def run_one(system, c, duration, warmup, workdir):
        if system == "pysyncobj":
            raise raft_peers.PeerError("pysyncobj: no leader within 30 s")
        return {"system": system, "concurrency": c, "ops_per_s": 100.0 * c, "p50_ms": 1.0,
                "p99_ms": 2.0, "durable": True}

    monkeypatch.setattr(raft, "_run_one", run_one)
    out = tmp_path / "raft.json"
    args = raft.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
        ["--quick", "--systems", "meridian,pysyncobj", "--concurrency", "1,4",
         "--workdir", str(tmp_path), "--json", str(out)])
    assert raft.main(args) == 1
    doc = json.loads(out.read_text())
    assert [(r["system"], r["concurrency"]) for r in doc["results"]] == [
        ("meridian", 1), ("meridian", 4)]
    assert [(f["system"], f["concurrency"]) for f in doc["failures"]] == [
        ("pysyncobj", 1), ("pysyncobj", 4)]
    assert "no leader within 30 s" in capsys.readouterr().out
