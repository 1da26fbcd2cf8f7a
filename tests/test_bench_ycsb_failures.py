"""``python -m bench ycsb`` and ``scale``: a run that fails costs its row, not the rows already
measured."""

from __future__ import annotations

import contextlib
import json

import pytest

pytest.importorskip("hdrh")


def test_a_ycsb_run_that_fails_costs_its_row_not_the_rows_measured(tmp_path, monkeypatch,
                                                                   capsys):
    # A load process that does not connect or report (a LoadError) used to end the
    # benchmark with a traceback, throwing away every row already measured.
    from bench import ycsb
    from bench.loadproc import LoadError
    from bench.targets import Target

    @contextlib.contextmanager
    def open_target(system, args, workdir, regions=("us-east",), *, wan=False, mix=False):
        yield Target(system, "fake", {"": {"system": system}})

    def measure(target, driver, workload, load, procs, rundir, *, label, seed):
        if target.system == "etcd" and (load.mode, load.clients) in (("closed", 4),
                                                                     ("open", 4)):
            raise LoadError(f"{label}: load process 0 exited early (status 1)")
        ops = 100.0 * load.clients if load.rate is None else load.rate
        return {"ops_per_s": ops, "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.0,
                "p999_ms": 3.0, "max_ms": 4.0, "abort_rate": 0.0, "errors": 0, "late": 0,
                "inserted_bytes": 0, "timeline": [], "server_cpu_s_per_1k_ops": None,
                ycsb.NEXT_FREE_RECORD: workload["first_insert"]}

    monkeypatch.setattr(ycsb, "open_target", open_target)
    monkeypatch.setattr(ycsb, "load_records", lambda *a, **k: 0.0)
    monkeypatch.setattr(ycsb, "measure", measure)
    monkeypatch.setattr(ycsb, "plots_dir", lambda args: None)
    out = tmp_path / "ycsb.json"
    parser = ycsb.add_parser(__import__("argparse").ArgumentParser().add_subparsers())
    args = parser.parse_args(
        ["--quick", "--no-selftest", "--systems", "meridian,etcd", "--clients", "1,4",
         "--open-fractions", "0.5", "--workdir", str(tmp_path), "--json", str(out)])
    assert ycsb.main(args) == 1
    doc = json.loads(out.read_text())
    assert [(r["system"], r["mode"], r["clients"]) for r in doc["results"]] == [
        ("meridian", "closed", 1), ("meridian", "closed", 4), ("etcd", "closed", 1),
        ("meridian", "open", 4)]
    assert [(f["system"], f["mode"], f["clients"]) for f in doc["failures"]] == [
        ("etcd", "closed", 4), ("etcd", "open", 4)]
    assert "load process 0 exited early" in doc["failures"][0]["error"]
    assert "exited early" in capsys.readouterr().out


def test_a_scale_point_that_fails_costs_its_point_not_the_points_measured(tmp_path,
                                                                          monkeypatch):
    from bench import scale
    from bench.loadproc import LoadError
    from bench.targets import Target

    @contextlib.contextmanager
    def open_target(system, args, workdir, regions=("us-east",), *, wan=False, mix=False):
        target = Target(system, "fake", {"": {"system": system}})
        target.drivers = {r: None for r in regions}
        yield target

    def measure(target, driver, workload, load, procs, rundir, *, label, seed):
        if label in ("etcd c=4", "meridian regions=2"):
            raise LoadError(f"{label}: load process 0 exited early (status 1)")
        return {"ops_per_s": 100.0 * load.clients, "p50_ms": 1.0, "p99_ms": 2.0}

    monkeypatch.setattr(scale, "open_target", open_target)
    monkeypatch.setattr(scale, "load_records", lambda *a, **k: 0.0)
    monkeypatch.setattr(scale, "measure", measure)
    monkeypatch.setattr(scale, "storage_figures", lambda *a: {})
    monkeypatch.setattr(scale, "plots_dir", lambda args: None)
    out = tmp_path / "scale.json"
    parser = scale.add_parser(__import__("argparse").ArgumentParser().add_subparsers())
    args = parser.parse_args(
        ["--quick", "--systems", "meridian,etcd", "--clients", "1,4", "--regions", "1,2",
         "--workdir", str(tmp_path), "--json", str(out)])
    assert scale.main(args) == 1
    doc = json.loads(out.read_text())
    assert [(r["system"], r["axis"], r["clients"], r["regions"]) for r in doc["results"]] == [
        ("meridian", "clients", 1, 1), ("meridian", "clients", 4, 1),
        ("etcd", "clients", 1, 1), ("meridian", "regions", doc["config"]["clients_per_region"],
                                    1)]
    assert [(f["system"], f["axis"]) for f in doc["failures"]] == [
        ("etcd", "clients"), ("meridian", "regions")]


def _unreachable_targets():
    """An ``open_target`` whose Meridian cluster does not answer and whose etcd is absent."""
    from bench.targets import TargetError, TargetUnavailable

    @contextlib.contextmanager
    def open_target(system, args, workdir, regions=("us-east",), *, wan=False, mix=False):
        if system == "etcd":
            raise TargetUnavailable("skipped: etcd-server not installed")
        raise TargetError("cannot reach the cluster at 127.0.0.1:1: no node answered")
        yield  # pragma: no cover

    return open_target


def test_a_ycsb_run_whose_cluster_does_not_answer_fails(tmp_path, monkeypatch, capsys):
    # `--nodes` of a cluster that does not answer measured nothing and exited with status 0,
    # the cluster listed beside a peer that is merely not installed.
    from bench import ycsb

    monkeypatch.setattr(ycsb, "open_target", _unreachable_targets())
    monkeypatch.setattr(ycsb, "plots_dir", lambda args: None)
    out = tmp_path / "ycsb.json"
    parser = ycsb.add_parser(__import__("argparse").ArgumentParser().add_subparsers())
    args = parser.parse_args(
        ["--quick", "--no-selftest", "--nodes", "127.0.0.1:1", "--workdir", str(tmp_path),
         "--json", str(out)])
    assert ycsb.main(args) == 1
    doc = json.loads(out.read_text())
    assert doc["results"] == []
    assert [(f["system"], f["mode"]) for f in doc["failures"]] == [("meridian", "closed")]
    assert "cannot reach the cluster" in doc["failures"][0]["error"]
    assert list(doc["skipped"]) == ["etcd"]
    assert "meridian closed failed: cannot reach the cluster" in capsys.readouterr().out


def test_a_scale_run_whose_cluster_does_not_answer_fails(tmp_path, monkeypatch):
    from bench import scale

    monkeypatch.setattr(scale, "open_target", _unreachable_targets())
    monkeypatch.setattr(scale, "plots_dir", lambda args: None)
    out = tmp_path / "scale.json"
    parser = scale.add_parser(__import__("argparse").ArgumentParser().add_subparsers())
    args = parser.parse_args(
        ["--quick", "--clients", "1", "--axes", "clients", "--nodes", "127.0.0.1:1",
         "--workdir", str(tmp_path), "--json", str(out)])
    assert scale.main(args) == 1
    doc = json.loads(out.read_text())
    assert [(f["system"], f["axis"]) for f in doc["failures"]] == [("meridian", "clients")]
    assert list(doc["skipped"]) == ["etcd"]


@pytest.mark.parametrize("command", ["ycsb", "scale"])
@pytest.mark.parametrize("option, name, message", [
    ("--workdir", "file/work", "error: --workdir: cannot create "),
    ("--json", "file/out.json", "error: --json: cannot create "),
    ("--json", "", "is a directory, not a file name"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch,
                                                                    command, option, name,
                                                                    message):
    # A --workdir under a file ended in a traceback; a --json that could not be written
    # ended in one too, after the whole run, its results lost with it.
    import argparse

    from bench import scale, ycsb

    module = ycsb if command == "ycsb" else scale

    def never(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(module, "open_target", never)
    for m in (ycsb, scale):
        monkeypatch.setattr(m, "plots_dir", lambda args: None)
    (tmp_path / "file").write_text("")
    args = [option, str(tmp_path / name), "--no-selftest" if command == "ycsb" else "--quick"]
    if option == "--json":
        args += ["--workdir", str(tmp_path)]
    parsed = module.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(args)
    with pytest.raises(SystemExit, match=message):
        module.main(parsed)
