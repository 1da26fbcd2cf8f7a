"""Smoke test of ``python -m bench storage``: it runs end to end and writes the documented JSON.

Integration test: it runs the benchmark in a subprocess on the real file system, in a tiny mode
(a few records per measurement). It checks the shape of the result, never the speed — the speed
targets are the benchmark's business (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _common, report

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {"meridian", "lmdb", "lmdb-seq", "sqlite", "raw-fdatasync"}
BATCHES = {1, 16, 256}
TARGETS = {
    "batch1_meridian_vs_raw_syncs",
    "batch1_meridian_vs_lmdb_syncs",
    "batch256_meridian_vs_lmdb_records",
    "batch256_meridian_vs_sqlite_records",
    "append_nosync_records_per_s",
    "mvcc_apply_versions_per_s",
    "mvcc_get_per_s",
}


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "storage.json"
    work = tmp / "work"
    work.mkdir()
    cmd = [
        sys.executable, "-m", "bench", "storage", "--quick", "--json", str(out),
        "--dir", str(work), "--repetitions", "2", "--duration-s", "0.05",
        "--records", "600", "--mvcc-keys", "1500",
    ]
    pythonpath = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout, work


def test_json_has_the_documented_schema(quick_result: tuple[dict, str, Path]) -> None:
    doc, _, _ = quick_result
    assert doc["schema"] == 1
    assert doc["benchmark"] == "storage"
    for key in ("cpu_model", "cores", "memory_bytes", "kernel", "python", "filesystem", "date"):
        assert doc["machine"][key], key
    assert doc["machine"]["filesystem"]["type"]

    cells = {(r["system"], r["batch"]): r for r in doc["results"]}
    assert set(cells) == {(s, b) for s in SYSTEMS for b in BATCHES}
    for (system, batch), r in cells.items():
        for key in ("records_per_s", "syncs_per_s", "p50_us", "p99_us"):
            assert _positive(r[key]), (system, batch, key, r[key])
        assert r["p50_us"] <= r["p99_us"]
        assert r["records_per_s"] == pytest.approx(r["syncs_per_s"] * batch, rel=1e-3)

    assert _positive(doc["append_nosync_records_per_s"])
    assert _positive(doc["mvcc"]["apply_versions_per_s"])
    assert _positive(doc["mvcc"]["get_per_s"])


def test_ratios_and_targets_are_computed(quick_result: tuple[dict, str, Path]) -> None:
    doc, _, _ = quick_result
    assert set(doc["ratios"]) == {t for t in TARGETS if t.startswith("batch")}
    for name, value in doc["ratios"].items():
        assert _positive(value), name
    assert set(doc["targets"]) == TARGETS
    for name, t in doc["targets"].items():
        assert _positive(t["value"]) and _positive(t["threshold"]), name
        assert t["met"] == (t["value"] >= t["threshold"]), name
    cells = {(r["system"], r["batch"]): r for r in doc["results"]}
    expected = cells[("meridian", 1)]["syncs_per_s"] / cells[("lmdb", 1)]["syncs_per_s"]
    assert doc["ratios"]["batch1_meridian_vs_lmdb_syncs"] == pytest.approx(expected, rel=1e-2)


def test_prints_a_table_and_cleans_up(quick_result: tuple[dict, str, Path]) -> None:
    _, stdout, work = quick_result
    assert "raw-fdatasync" in stdout and "targets met" in stdout
    assert list(work.iterdir()) == []  # the temporary stores are gone


def test_report_renders_the_result(quick_result: tuple[dict, str, Path], tmp_path: Path) -> None:
    doc, _, _ = quick_result
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# B\n\nkept above\n\n{report.BEGIN}\nold\n{report.END}\n\nkept below\n")
    report.update_file(md, report.render_markdown({"bench/results/x.json": doc}))
    text = md.read_text()
    assert "kept above" in text and "kept below" in text and "\nold\n" not in text
    assert "python -m bench storage --quick" in text
    assert "| meridian | 256 |" in text


def test_help_lists_the_storage_subcommand() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "storage" in proc.stdout


def test_percentile_interpolates_between_ranks() -> None:
    assert _common.percentile([3, 1, 2], 50) == 2
    assert _common.percentile([1, 2, 3, 4], 50) == 2.5
    assert _common.percentile(list(range(101)), 99) == 99
    assert _common.percentile([7], 99) == 7
    with pytest.raises(ValueError):
        _common.percentile([], 50)
