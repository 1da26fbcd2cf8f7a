"""``python -m bench compaction``: the command runs both modes and writes its document."""

from __future__ import annotations

import json
import subprocess
import sys

from bench._common import REPO_ROOT


def test_compaction_benchmark_runs_both_modes_and_writes_its_json(tmp_path):
    out = tmp_path / "compaction.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compaction", "--mb", "2", "--every", "20",
         "--repetitions", "1", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["benchmark"] == "compaction"
    assert doc["config"]["mb"] == 2 and doc["config"]["every"] == 20
    assert doc["command"].startswith("python -m bench compaction --mb 2")
    rows = {r["mode"]: r for r in doc["results"]}
    assert set(rows) == {"local", "copy"}
    for row in rows.values():
        assert row["txns"] == 40
        # Every replica compacted at least once (40 entries, every 20).
        assert row["snapshots_taken"] >= 3
        assert 0 < row["commit_p50_ms"] <= row["commit_p99_ms"] <= row["commit_max_ms"]
        assert row["peak_rss_mb"] > 0
    assert set(doc["summary"]) == {"local", "copy"}
    assert "local" in proc.stdout and "copy" in proc.stdout


def test_compaction_benchmark_refuses_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "bench", "compaction", "--mb", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "argument --mb: 0 is not in 1..1000000" in proc.stderr
