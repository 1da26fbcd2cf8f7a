"""Smoke runs of ``python -m bench ycsb`` / ``scale`` / ``compare`` and ``meridian bench``.

Integration tests: real node processes (and three etcd members when ``etcd`` is installed) on
loopback, runs of a second or so. They check that the commands run end to end and write the
documented JSON and plots; never how fast anything is (BENCHMARKS.md holds the figures).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("hdrh")
pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAVE_ETCD = shutil.which("etcd") is not None


def _run(args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, timeout=timeout)
    return proc


def _check_row(r):
    assert r["mode"] in ("open", "closed")
    assert r["ops_per_s"] > 0 and r["ops"] > 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
    assert 0 <= r["abort_rate"] < 1
    assert r["errors"] == 0, r["last_error"]


def test_ycsb_quick_smoke_writes_the_documented_json_and_plots(tmp_path):
    systems = "meridian,etcd" if HAVE_ETCD else "meridian"
    out = tmp_path / "ycsb-A.json"
    proc = _run(["ycsb", "--workload", "A", "--quick", "--duration", "1", "--warmup", "0.5",
                 "--records", "300", "--clients", "4", "--open-fractions", "0.5",
                 "--systems", systems, "--workdir", str(tmp_path), "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["benchmark"] == "ycsb"
    assert doc["machine"]["cores"] and doc["command"].startswith("python -m bench ycsb")
    rows = doc["results"]
    want = {(s, m) for s in systems.split(",") for m in ("closed", "open")}
    assert {(r["system"], r["mode"]) for r in rows} == want
    for r in rows:
        assert r["workload"] == "A"
        _check_row(r)
        assert set(r["by_kind"]) == {"read", "update"}
        assert r["server_cpu_s_per_1k_ops"] > 0 and r["server_rss_bytes"] > 0
        if r["mode"] == "open":
            assert r["offered_ops_per_s"] > 0
    m = doc["systems"]["meridian"]
    # One region: nothing crosses regions, and the figure says so (0, not missing).
    assert m["cross_region_bytes_per_txn"] == 0 and m["cross_region_bytes_reason"]
    assert m["storage"]["bytes_per_stored_byte"] > 0
    st = doc["loadgen_selftest"]
    assert st["ops_per_s"] > 0 and st["ratio"] == round(
        st["ops_per_s"] / st["meridian_best_ops_per_s"], 2)
    (target,) = doc["targets"]
    assert target["met"] in ((True, False) if HAVE_ETCD else (None,))
    assert len(doc["plots"]) == 3
    for p in doc["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    if not HAVE_ETCD:
        pytest.skip("etcd not installed (apt-get install etcd-server): ran Meridian only")


def test_scale_smoke_runs_both_axes(tmp_path):
    out = tmp_path / "scale.json"
    proc = _run(["scale", "--quick", "--systems", "meridian", "--clients", "2",
                 "--regions", "2", "--clients-per-region", "2", "--nodes-per-region", "1",
                 "--duration", "0.6", "--warmup", "0.3", "--records", "100",
                 "--workdir", str(tmp_path), "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "scale"
    assert [(r["axis"], r["clients"], r["regions"]) for r in doc["results"]] == [
        ("clients", 2, 1), ("regions", 4, 2)]
    for r in doc["results"]:
        assert r["ops_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert len(doc["plots"]) == 2


def test_compare_command_flags_changes(tmp_path):
    def doc(ops, p99):
        return {"schema": 1, "benchmark": "ycsb", "results": [
            {"system": "meridian", "workload": "A", "mode": "closed", "clients": 32,
             "ops_per_s": ops[1], "ops_per_s_reps": ops, "p99_ms": p99[1],
             "p99_ms_reps": p99}]}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(doc([990, 1000, 1010], [20, 20.5, 21])))
    new.write_text(json.dumps(doc([1590, 1600, 1610], [20, 20.5, 21])))
    proc = _run(["compare", str(old), str(new), "--fail-on-regression"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "better" in proc.stdout and "1 better" in proc.stdout
    proc = _run(["compare", str(new), str(old), "--fail-on-regression"], timeout=60)
    assert proc.returncode == 1 and "worse" in proc.stdout
    proc = _run(["compare", str(old), str(tmp_path / "missing.json")], timeout=60)
    assert proc.returncode == 2 and "cannot read" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["ycsb", "--workload", "Z"], "invalid choice"),
    (["ycsb", "--value-size", "5"], "value size 5 is not in 10..65536"),
    (["ycsb", "--value-size", "x"], "value size 'x' is not a whole number"),
    (["ycsb", "--clients", "0"], "'0' is not a whole number in 1..1024"),
    (["ycsb", "--systems", "mongodb"], "'mongodb' is not one of meridian,etcd"),
    (["ycsb", "--nodes", "nohost"], "host:port"),
    (["ycsb", "--nodes", "[::1"], "'[::1' is not host:port"),
    # Never cut to what parses: one value where one is wanted, whole numbers of clients.
    (["ycsb", "--theta", "0.5,0.9"], "argument --theta: one value only"),
    (["txn", "--concurrency", "1.5"], "argument --concurrency: '1.5' is not a whole number"),
    (["cluster", "--regions", ","], "argument --regions: give at least one value"),
    (["scale", "--axes", "sideways"], "--axes"),
])
def test_bad_arguments_are_refused_with_a_message(args, message):
    proc = _run(args, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_meridian_bench_passes_through_to_the_harness(capsys):
    from engine.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "ycsb", "--help"])
    assert exc.value.code == 0
    assert "--workload" in capsys.readouterr().out
