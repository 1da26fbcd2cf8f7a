"""The command line, the shell and the demo when something goes wrong: one clear line, a
meaningful exit status, and nothing left running."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import tempfile

import pytest

from engine import cluster_demo, shell
from engine import procs as procs_module
from engine.errors import MeridianError
from engine.procs import ClusterProcesses
from test_api_cli import _processes_mentioning


def test_a_demo_whose_directory_another_up_holds_at_its_end_still_stops_its_nodes(
        tmp_path, monkeypatch):
    # (about 3 s: a one-node cluster started and stopped) A `cluster up` or `down` on the
    # demo's --dir holding the directory's lock as the demo ends: the demo's stop, waiting
    # for the lock, raised out of its cleanup -- a traceback, its node left running, and the
    # rest of the cleanup skipped.
    monkeypatch.setattr(procs_module, "LOCK_WAIT_S", 0.2)
    held = []

    async def another_up_takes_the_lock(procs, *args):
        fd = os.open(procs.directory / ".lock", os.O_RDWR | os.O_CLOEXEC)
        held.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return 0

    monkeypatch.setattr(cluster_demo, "_run", another_up_takes_the_lock)
    directory = tmp_path / "cluster"
    out = io.StringIO()
    escaped = None
    try:
        code = cluster_demo.run_demo(directory=str(directory), seconds=0.2, regions=("east",),
                                     nodes_per_region=1, clients_per_region=1, accounts=2,
                                     wan=False, out=out)
    except MeridianError as exc:
        escaped = exc
    finally:
        for fd in held:
            os.close(fd)
        left = _processes_mentioning(str(directory))
        for pid in left:  # the demo's node, left running: end it
            os.kill(pid, signal.SIGKILL)
    assert escaped is None, f"{escaped!r} escaped the demo's cleanup\n" + out.getvalue()
    assert left == [], out.getvalue()
    assert list(directory.glob("*.pid")) == []
    assert code == 0 and "stopped 1 node processes" in out.getvalue(), out.getvalue()
    assert "is in use" in out.getvalue(), out.getvalue()


def test_a_demo_that_fails_unexpectedly_says_so_in_one_line(tmp_path, monkeypatch):
    # A failure that is not one of Meridian's own (a balance that is not a number, in a bank
    # of a --dir reused after someone wrote to it) ended the demo with a traceback.
    directory = tmp_path / "cluster"

    def up_nothing(directory, **kwargs):
        return ClusterProcesses(directory)

    async def bank_not_a_number(procs, *args):
        int(b"lots")

    monkeypatch.setattr(cluster_demo, "cluster_up", up_nothing)
    monkeypatch.setattr(cluster_demo, "_run", bank_not_a_number)
    # What the nodes said is shown: their logs, and their stdout and stderr (a traceback).
    directory.mkdir()
    (directory / "node-1.log").write_text("2026-12-05 node-1 INFO meridian.node: serving\n")
    (directory / "node-1.out").write_text("Traceback (most recent call last):\nMemoryError\n")
    out = io.StringIO()
    code = cluster_demo.run_demo(directory=str(directory), seconds=0.2, regions=("east",),
                                 nodes_per_region=1, clients_per_region=1, accounts=2,
                                 wan=False, out=out)
    text = out.getvalue()
    assert code == 1, text
    assert "demo failed: ValueError: invalid literal for int()" in text, text
    assert "node-1.log: 2026-12-05 node-1 INFO meridian.node: serving" in text, text
    assert "node-1.out: Traceback (most recent call last):\n    MemoryError" in text, text
    assert "stopped 0 node processes" in text, text


class _Transaction:
    def __init__(self, rows: dict) -> None:
        self.rows = rows

    def get(self, keyspace, key):
        return self.rows.get(key)

    def scan(self, keyspace, start, end, *, limit=None, reverse=False):
        return sorted(self.rows.items())


class _Database:
    def __init__(self, rows: dict) -> None:
        self.rows = rows

    def run_transaction(self, fn):
        return fn(_Transaction(self.rows))


def test_the_shell_tells_a_stored_value_from_a_missing_key():
    # A value whose text is "(not found)" (or looks like a bytes literal) was shown exactly as
    # a missing key (or another value) is: the two could not be told apart.
    out = io.StringIO()
    sh = shell._Shell(_Database({b"k": b"(not found)", b"l": b"b'\\x00'", b"m": b"\x00"}), out)
    for line in ("get ks k", "get ks missing", "get ks l", "get ks m"):
        assert sh.execute(line)
    found, missing, literal, binary = out.getvalue().splitlines()
    assert missing == "(not found)"
    assert found != missing
    assert literal != binary


def test_a_crash_demo_asking_for_more_batches_than_a_writer_makes_is_not_a_failure(
        tmp_path, monkeypatch, capsys):
    # The writer stops by itself after MAX_WRITER_BATCHES batches: a --batches above that
    # let the demo wait for acknowledgements that never came, then report "FAILED: the
    # writer exited early" -- a storage failure that was none.
    import subprocess
    import sys

    from engine import demo

    monkeypatch.setattr(demo, "MAX_WRITER_BATCHES", 5)
    real_popen = subprocess.Popen

    def writer_of_five(command, **kwargs):  # the writer, with the same limit
        assert command[-2:-1] == ["demo-writer"]
        writer = ("import sys; from engine import demo; demo.MAX_WRITER_BATCHES = 5; "
                  "sys.exit(demo.run_writer(sys.argv[1]))")
        return real_popen([sys.executable, "-c", writer, command[-1]], **kwargs)

    monkeypatch.setattr(demo.subprocess, "Popen", writer_of_five)
    code = demo.run_demo(directory=str(tmp_path / "d"), kills=2, batches=100, seed=1)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1].startswith("OK: 2 crashes"), out


class _ClosedPipe(io.StringIO):
    """An output whose reader went away after its first line (`meridian demo | head -1`)."""

    def write(self, text: str) -> int:
        if "\n" in self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_demo_whose_output_goes_away_still_removes_its_directory(tmp_path, monkeypatch):
    # `meridian demo | head -1`: the line the cleanup printed failed as well, and the rest of
    # the cleanup was skipped -- the demo's temporary directory left behind, and its signal
    # handlers left installed.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's own dir goes

    def up_nothing(directory, **kwargs):
        return ClusterProcesses(directory)

    async def workload(procs, seconds, clients, accounts, seed, out):
        print("waiting for 1 nodes to elect leaders ...", file=out)
        return 0

    monkeypatch.setattr(cluster_demo, "cluster_up", up_nothing)
    monkeypatch.setattr(cluster_demo, "_run", workload)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(BrokenPipeError):
        cluster_demo.run_demo(seconds=0.2, regions=("east",), nodes_per_region=1,
                              clients_per_region=1, accounts=2, wan=False, out=_ClosedPipe())
    assert list(tmp_path.glob("meridian-demo-*")) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_command_whose_output_goes_away_stops_quietly(tmp_path):
    # `meridian cluster status | true`: the status table's write failed, and the command
    # printed "meridian cluster: Broken pipe" and exited 1 like an error of its own.
    import subprocess
    import sys

    from engine.config import NodeConfig, default_local_cluster, dump_node_config

    cluster = default_local_cluster(("east",), 1, 1, wan_latency_ms={})
    (node,) = cluster.all_nodes()
    (tmp_path / f"node-{node.id}.toml").write_text(dump_node_config(
        NodeConfig(node_id=node.id, data_dir=str(tmp_path / "n"), cluster=cluster)))
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads the output
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "cluster", "status", "--dir", str(tmp_path)],
            stdout=writer, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(writer)
    assert done.stderr == b"", done.stderr
    assert done.returncode == 1
