"""The public surface and the command line, as the README promises them."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import engine
from engine import errors
from engine.cli import main


def test_engine_exports_the_documented_names():
    promised = {
        "LogStore", "LogStats", "DurableState", "MVCCStore", "MVCCStats", "GCResult",
        "MeridianError", "CorruptionError", "CorruptLogError", "CorruptStateError",
        "DiskFullError", "InvalidArgumentError", "PositionError", "RecordTooLargeError",
        "StorageError", "StoreClosedError", "StoreFailedError", "StoreLockedError",
    }
    missing = {name for name in promised if not hasattr(engine, name)}
    assert not missing
    assert engine.LogStore.__module__ == "engine.logstore"


def test_every_library_error_is_a_meridian_error_and_a_builtin():
    cases = {
        errors.CorruptLogError: OSError,
        errors.DiskFullError: OSError,
        errors.StoreLockedError: OSError,
        errors.StoreFailedError: OSError,
        errors.StoreClosedError: ValueError,
        errors.RecordTooLargeError: ValueError,
        errors.InvalidArgumentError: ValueError,
        errors.PositionError: IndexError,
    }
    for cls, builtin in cases.items():
        assert issubclass(cls, errors.MeridianError) and issubclass(cls, builtin)
    e = errors.CorruptLogError("bad record at offset 7 of f", "f", 7)
    assert str(e) == "bad record at offset 7 of f" and (e.path, e.offset) == ("f", 7)


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"meridian {engine.__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_bench_usage_and_errors_name_meridian_bench(capsys):
    # They named "python -m bench": a user following the usage line ran another command.
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: meridian bench [-h] COMMAND")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "nosuch"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "meridian bench: error: argument COMMAND" in err and "python -m" not in err


def test_bad_arguments_are_one_clear_line():
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "crash-demo", "--kills", "zero"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "'zero' is not a whole number" in out.stderr and "Traceback" not in out.stderr


def test_crash_demo_kills_the_writer_and_verifies_every_acknowledged_entry(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "crash-demo", "--kills", "2", "--batches", "20",
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum("SIGKILL" in line for line in lines) == 2
    assert lines[-1].startswith("OK: 2 crashes")
    assert (tmp_path / "demo" / "log").is_dir()  # --dir is kept


def test_crash_demo_counts_only_the_entries_its_writer_acknowledged(tmp_path):
    # A --dir used before: the writer appends after the entries already in the log, which
    # used to count as acknowledged by it (and in the entries/s the demo printed).
    def run() -> str:
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "crash-demo", "--kills", "1", "--batches", "4",
             "--dir", str(tmp_path / "demo")],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    before = int(re.search(r"log holds 1\.\.(\d+)", run()).group(1))
    second = run()
    entries, last = map(int, re.search(r"\((\d+) entries, up to position (\d+)\)",
                                       second).groups())
    assert entries == last - before, second
    assert f"OK: 1 crashes, {entries} acknowledged entries" in second


def test_crash_demo_checks_the_newest_entry_of_a_short_log(tmp_path):
    # A log of fewer entries than the demo has keys: the key the last entry wrote was left out
    # of the check, so a state machine that lost (or garbled) that entry passed it.
    from engine import demo
    from engine.logstore import LogStore
    from engine.mvcc import MVCCStore

    with LogStore(str(tmp_path / "log"), segment_size=demo.SEGMENT_SIZE) as log:
        log.append([demo.entry(p) for p in range(1, 51)])
        log.sync()
    mvcc = MVCCStore(str(tmp_path / "mvcc"))
    try:
        demo.apply_entries(mvcc, [(p, demo.entry(p)) for p in range(1, 50)]
                           + [(50, b"not the entry at position 50")])
    finally:
        mvcc.close()
    with pytest.raises(SystemExit, match="does not match position 50"):
        demo._recover(str(tmp_path))


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_demo_runs_a_three_region_cluster_end_to_end_and_leaves_nothing_running(tmp_path):
    directory = tmp_path / "cluster"
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--seconds", "3", "--dir", str(directory)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "starting 3 regions x 3 nodes" in text
    for region in ("us-east", "eu-west", "ap-south"):
        assert f"bank-{region}: 50 accounts, total 50000 (ok)" in text
        for op in ("home txn", "remote txn", "stale read"):
            assert any(line.startswith(region) and op in line for line in text.splitlines())
    assert "learner lag" in text
    assert "stopped 9 node processes" in text
    # Nothing the demo started is left: no node process of this directory, no pid files.
    assert _processes_mentioning(str(directory)) == []
    assert list(directory.glob("*.pid")) == []


def test_node_with_a_bad_config_says_which_field(tmp_path):
    bad = tmp_path / "node.toml"
    bad.write_text('node_id = 1\ndata_dir = "d"\n[cluster]\nname = "x"\ntick_interval_ms = -5\n')
    out = subprocess.run([sys.executable, "-m", "engine.cli", "node", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cluster.regions: missing" in out.stderr and "Traceback" not in out.stderr


def test_a_node_interrupted_before_it_serves_stops_with_one_line(tmp_path):
    # Ctrl-C while the node is still reading its configuration (here a FIFO nobody has
    # written yet), before it takes SIGINT over: it used to end with a KeyboardInterrupt
    # traceback.
    fifo = tmp_path / "node.toml"
    os.mkfifo(fifo)
    node = subprocess.Popen([sys.executable, "-m", "engine.cli", "node", "--config", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # until the node has opened the file: then it waits in its read
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:  # ENXIO: no reader yet
                assert time.monotonic() < deadline and node.poll() is None
                time.sleep(0.01)
        node.send_signal(signal.SIGINT)
        # A signal that comes between its open and its read is only seen once the read
        # returns (CPython runs signal handlers between bytecodes): the end of the file ends it.
        os.close(writer)
        _, err = node.communicate(timeout=30)
    finally:
        node.kill()
        node.wait()
    assert node.returncode == 130
    assert err == "meridian node: interrupted\n"


def test_a_node_whose_groups_fail_together_says_so_in_one_line_each(tmp_path, monkeypatch,
                                                                  capsys):
    # A disk that fails (EIO) or fills fails every group writing to it at the same moment:
    # the node then ends with several storage errors at once (a trio MultiError), which
    # `meridian node` used to let out as a traceback instead of its one-line message.
    import trio

    import engine.node
    from engine.config import NodeConfig, default_local_cluster, dump_node_config

    async def two_groups_fail(cfg, **kwargs):
        async def fail(exc):
            raise exc  # with no checkpoint before: both fail, as groups failing at once do

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, errors.StorageError(5, "cannot sync groups/1/raft/log"))
            nursery.start_soon(fail, errors.DiskFullError("cannot write groups/100/snapshot"))

    monkeypatch.setattr(engine.node, "run_node", two_groups_fail)
    config = tmp_path / "node.toml"
    config.write_text(dump_node_config(NodeConfig(
        node_id=1, data_dir=str(tmp_path / "data"),
        cluster=default_local_cluster(("r1",), 1, 20000))))
    assert main(["node", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert sorted(err.splitlines()) == ["meridian node: cannot sync groups/1/raft/log",
                                        "meridian node: cannot write groups/100/snapshot"], err


def test_cluster_up_status_down_with_custom_latencies(tmp_path):
    # A relative --dir (the default is one) for up, another spelling of it for down.
    directory = tmp_path / "c"
    up = subprocess.run(
        [sys.executable, "-m", "engine.cli", "cluster", "up", "--dir", "c",
         "--regions", "east,west", "--nodes-per-region", "1", "--wan-latency-ms", "east:west=5"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cluster up" in up.stdout and "2 nodes" in up.stdout
        assert "[cluster.wan_latency_ms]" in (directory / "node-1.toml").read_text()
        status = subprocess.run(
            [sys.executable, "-m", "engine.cli", "cluster", "status", "--dir", str(directory)],
            capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("leader") >= 3  # meta group and two data groups
        # The demo will not take over (and at its end stop) a cluster it did not start.
        demo = subprocess.run(
            [sys.executable, "-m", "engine.cli", "demo", "--seconds", "1", "--dir", str(directory)],
            capture_output=True, text=True, timeout=60)
        assert demo.returncode == 1 and "holds a running cluster" in demo.stdout
        assert len(_processes_mentioning(str(directory))) == 2
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "engine.cli", "cluster", "down", "--dir", "./c/../c"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert down.returncode == 0 and "stopped 2 node processes" in down.stdout
    assert _processes_mentioning(str(directory)) == []
    bad = subprocess.run(
        [sys.executable, "-m", "engine.cli", "cluster", "up", "--wan-latency-ms", "east=5"],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "REGION:REGION=MILLISECONDS" in bad.stderr


def test_cluster_down_never_signals_a_process_it_did_not_start(tmp_path):
    # A stale pid file whose pid now belongs to another process that merely names the node's
    # config (an editor, `tail -f`): not a node of this cluster.
    from engine.procs import ClusterProcesses

    procs = ClusterProcesses(tmp_path)
    procs.config_path(1).write_text("")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              str(procs.config_path(1))])
    try:
        procs.pid_path(1).write_text(f"{other.pid}\n")
        assert procs.running_pid(1) is None
        assert procs.stop() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _stand_in_node(tmp_path, procs, node_id, on_sigterm, *, via_shell=False, cwd=None):
    """A process that ``procs`` takes for node ``node_id`` (its command line is a node's),
    recorded in its pid file; ``on_sigterm`` is the Python it runs on SIGTERM. With
    ``via_shell``, a shell starts it and waits for it: it is not this process's child, as
    the nodes of another process's ``up`` are not. It runs in ``cwd`` (default: beside its
    stand-in package). Returns its handle (the shell's, with ``via_shell``) once it has set
    that up."""
    package = tmp_path / "stand-in" / "engine"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(
        "import os, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: ({on_sigterm}))\n"
        "print('ready', os.getpid(), flush=True)\n"
        "time.sleep(60)\n")
    command = [sys.executable, "-m", "engine.cli", "node", "--config",
               str(procs.config_path(node_id))]
    if via_shell:
        command = ["sh", "-c", '"$@"; :', "sh", *command]  # `; :`: no exec, sh stays
    proc = subprocess.Popen(command, cwd=cwd or package.parent,
                            env={**os.environ, "PYTHONPATH": str(package.parent)},
                            stdout=subprocess.PIPE)
    ready, pid = proc.stdout.readline().split()
    assert ready == b"ready"
    procs.pid_path(node_id).write_text(f"{int(pid)}\n")
    return proc


def test_cluster_down_does_not_kill_what_a_stopped_nodes_pid_has_become(tmp_path):
    # The node ends on SIGTERM, and before the grace period is over its pid names another
    # program (here the same process after an exec, as a recycled pid would): the SIGKILL
    # for nodes still running after the grace period used to reach that program.
    from engine.procs import ClusterProcesses

    procs = ClusterProcesses(tmp_path / "c")
    procs.directory.mkdir()
    procs.config_path(1).write_text("")
    node = _stand_in_node(tmp_path, procs, 1, "os.execvp('sleep', ['sleep', '30'])")
    try:
        assert procs.running_pid(1) == node.pid
        started = time.monotonic()
        assert procs.stop(grace_s=3) == [1]
        assert node.poll() is None, "the program the pid now names was killed"
        assert time.monotonic() - started < 2  # the node was gone: no wait for the grace period
    finally:
        node.kill()
        node.wait()


def test_cluster_down_finds_the_nodes_of_a_renamed_directory(tmp_path):
    # The nodes' command lines name the directory as it was when they started; `down` in
    # the directory under its new name said "nothing running" and left them running.
    from engine.procs import ClusterProcesses

    procs = ClusterProcesses(tmp_path / "c")
    procs.directory.mkdir()
    procs.config_path(1).write_text("")
    node = _stand_in_node(tmp_path, procs, 1, "sys.exit(0)", cwd=procs.directory)
    try:
        os.rename(tmp_path / "c", tmp_path / "renamed")
        renamed = ClusterProcesses(tmp_path / "renamed")
        assert renamed.running_pid(1) == node.pid
        # Not a node of another directory that has a node-1.toml too.
        elsewhere = ClusterProcesses(tmp_path / "other")
        elsewhere.directory.mkdir()
        elsewhere.config_path(1).write_text("")
        elsewhere.pid_path(1).write_text(f"{node.pid}\n")
        assert elsewhere.running_pid(1) is None
        assert renamed.stop(grace_s=10) == [1]
        assert node.wait(timeout=10) == 0
    finally:
        node.kill()
        node.wait()


def test_a_node_that_outlives_its_sigkill_keeps_its_pid_file(tmp_path, monkeypatch, capsys):
    # A process in uninterruptible I/O (a stalled disk) ends only once the I/O does, SIGKILL
    # or not. `down` removed the pid file anyway: the next `down` said "nothing running" and
    # the next `up` started a second node on the same data directory beside it.
    from engine import cli, procs as procs_module
    from engine.procs import ClusterProcesses

    procs = ClusterProcesses(tmp_path / "c")
    procs.directory.mkdir()
    procs.config_path(1).write_text("")
    node = _stand_in_node(tmp_path, procs, 1, "None")  # ignores SIGTERM
    real_signal = procs_module._signal
    monkeypatch.setattr(procs_module, "_signal",  # SIGKILL without effect, as in D state
                        lambda pid, sig: sig != signal.SIGKILL and real_signal(pid, sig))
    monkeypatch.setattr(procs_module, "STOP_GRACE_S", 0.2)
    monkeypatch.setattr(procs_module, "KILL_WAIT_S", 0.2)
    try:
        assert cli.main(["cluster", "down", "--dir", str(procs.directory)]) == 1
        err = capsys.readouterr().err
        assert "node 1 is still running" in err and "SIGKILL" in err, err
        assert procs.running_pid(1) == node.pid  # still known: a later down finds it
        monkeypatch.setattr(procs_module, "_signal", real_signal)
        assert cli.main(["cluster", "down", "--dir", str(procs.directory)]) == 0
        assert node.wait(timeout=10) is not None
        assert not procs.pid_path(1).exists()
    finally:
        node.kill()
        node.wait()


def test_a_demo_ended_by_sigterm_stops_its_nodes(tmp_path):
    directory = tmp_path / "cluster"
    demo = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", "--seconds", "60", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list(directory.glob("node-*.pid"))) < 9:  # every node started
            assert time.monotonic() < deadline and demo.poll() is None
            time.sleep(0.05)
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = _processes_mentioning(str(directory))
        for pid in left:  # the demo's nodes, left running: end them
            os.kill(pid, signal.SIGKILL)
    assert left == []


def _stopped_one_node_cluster(directory):
    """A one-node cluster in ``directory``, started once and stopped; and the command that
    runs ``meridian cluster``."""
    base = [sys.executable, "-m", "engine.cli", "cluster"]
    up = subprocess.run(base + ["up", "--dir", str(directory), "--regions", "east",
                                "--nodes-per-region", "1", "--no-wan"],
                        capture_output=True, text=True, timeout=120)
    down = subprocess.run(base + ["down", "--dir", str(directory)],
                          capture_output=True, text=True, timeout=60)
    assert up.returncode == 0 and down.returncode == 0, up.stderr + down.stderr
    return directory, base


def test_cluster_up_refuses_options_that_describe_another_cluster(tmp_path):
    # The directory's cluster is started as configured: --regions and friends used to be
    # ignored without a word, and the user got a cluster other than the one asked for.
    directory, base = _stopped_one_node_cluster(tmp_path / "c")
    for options, named in ((["--regions", "east,west"], "regions east,west (it has east)"),
                           (["--nodes-per-region", "3"], "3 nodes per region (it has 1)"),
                           (["--wan-latency-ms", "east:west=5"], "")):
        again = subprocess.run(base + ["up", "--dir", str(directory), *options],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode != 0, options
        assert named in again.stderr and "holds a cluster already" in again.stderr or (
            not named and "west" in again.stderr), again.stderr
        assert _processes_mentioning(str(directory)) == []


def test_cluster_up_names_a_taken_address_and_starts_nothing(tmp_path):
    # A node's port held by another program: `up` used to start the nodes anyway. When that
    # program was another cluster's node, it answered for ours, and `up` reported the cluster
    # up while our node had failed to listen; otherwise the user got "node N exited: Address
    # already in use" without knowing which of its two addresses.
    import socket

    from engine import procs
    from engine.config import NodeConfig, default_local_cluster, dump_node_config
    from engine.local import free_base_port

    directory = tmp_path / "c"
    directory.mkdir()
    cluster = default_local_cluster(("east",), 2, free_base_port(4), wan_latency_ms={})
    for node in cluster.all_nodes():
        (directory / f"node-{node.id}.toml").write_text(dump_node_config(
            NodeConfig(node_id=node.id, data_dir=str(directory / f"node-{node.id}"),
                       cluster=cluster)))
    taken = cluster.all_nodes()[1]
    with socket.socket() as holder:
        holder.bind((taken.client_host, taken.client_port))
        holder.listen()
        try:
            with pytest.raises(errors.InvalidArgumentError) as caught:
                procs.cluster_up(directory)
        finally:
            procs.ClusterProcesses(directory).stop()  # whatever it started
    assert (f"node {taken.id} cannot start: its client address "
            f"{taken.client_host}:{taken.client_port} is taken") in str(caught.value)
    assert list(directory.glob("node-*.pid")) == []  # no node was started


def test_cluster_up_and_down_wait_for_each_other(tmp_path, monkeypatch, capsys):
    import fcntl

    from engine import procs
    monkeypatch.setattr(procs, "LOCK_WAIT_S", 0.2)
    directory = tmp_path / "c"
    directory.mkdir()
    with open(directory / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another `up` or `down`, starting or stopping nodes
        for action in (lambda: procs.cluster_up(directory, regions=("east",),
                                                nodes_per_region=1, wan_latency_ms={}),
                       lambda: procs.ClusterProcesses(directory).stop()):
            with pytest.raises(errors.InvalidArgumentError, match="in use"):
                action()
            # Said at once, and once: a command waiting in silence looked hung.
            assert capsys.readouterr().err == (
                f"waiting for {directory}: another `meridian cluster up` or `down` is starting "
                f"or stopping its nodes (at most 0.2 s)\n")
    assert list(directory.glob("node-*")) == []


def test_cluster_up_reports_a_node_that_exits_at_once(tmp_path):
    # A node that cannot start (here its config was broken after a first run) ends the wait
    # for the cluster with its own message, instead of a minute of "not ready".
    directory, base = _stopped_one_node_cluster(tmp_path / "c")
    config = directory / "node-1.toml"
    # Another cluster's name: the node refuses the data directory of "local" when it opens it.
    config.write_text(config.read_text().replace('name = "local"', 'name = "other"', 1))
    started = time.monotonic()
    again = subprocess.run(base + ["up", "--dir", str(directory)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert "node 1 exited" in again.stderr and "local" in again.stderr, again.stderr
    assert "(exit status 1)" in again.stderr, again.stderr
    assert time.monotonic() - started < 30  # not the full readiness timeout (60 s)
    assert _processes_mentioning(str(directory)) == []


def test_cluster_up_completes_a_directory_that_an_interrupted_up_left_half_written(
        tmp_path, monkeypatch):
    # A Ctrl-C while `up` wrote the nodes' configuration files left some out, and every
    # later `up` of the directory failed on them ("node 2 exited: cannot read node-2.toml").
    from engine import procs
    from engine.config import load_node_config

    started = []
    monkeypatch.setattr(procs.ClusterProcesses, "start_node",
                        lambda self, node_id, **_: started.append(node_id))
    real_dump = procs.dump_node_config
    written = []

    def interrupted_dump(cfg):
        if len(written) == 1:
            raise KeyboardInterrupt  # Ctrl-C after the first node's file
        written.append(cfg.node_id)
        return real_dump(cfg)

    directory = tmp_path / "c"
    monkeypatch.setattr(procs, "dump_node_config", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        procs.cluster_up(directory, regions=("east",), nodes_per_region=2, wan_latency_ms={})
    assert sorted(p.name for p in directory.glob("node-*")) == ["node-1.toml"]
    monkeypatch.setattr(procs, "dump_node_config", real_dump)
    procs.cluster_up(directory)
    assert started == [1, 2]
    first, second = (load_node_config(directory / f"node-{n}.toml") for n in (1, 2))
    assert second.node_id == 2 and second.cluster == first.cluster
    assert second.data_dir == str(directory.resolve() / "node-2")
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "node-1.toml", "node-2.toml"]


def test_a_node_that_dies_without_a_word_is_not_reported_with_an_earlier_runs_words(tmp_path):
    # The node's log holds earlier runs' output (the last line "stopped"): the report of a
    # node killed before it wrote anything gives how it ended, and nothing older. The kill
    # comes right after the start, while the process may still be in its exec (when
    # /proc/PID/cmdline reads empty: the node used to be taken for gone, and reported as
    # exited, with the earlier run's last line).
    from engine.procs import ClusterProcesses

    directory, _ = _stopped_one_node_cluster(tmp_path / "c")
    procs = ClusterProcesses(directory)
    assert procs.last_log_line(1).endswith("stopped")
    assert procs.exited(1) == procs.last_log_line(1)  # not started here: all there is
    procs.start_node(1)
    try:
        assert procs.exited(1) is None and procs.running_pid(1) is not None
        procs.kill_node(1)
        deadline = time.monotonic() + 30
        while (why := procs.exited(1)) is None:
            assert time.monotonic() < deadline, "the node was not killed"
            time.sleep(0.01)
    finally:
        procs.stop()  # whatever failed above: leave no node running
    assert "killed by SIGKILL" in why and "stopped" not in why, why
    assert _processes_mentioning(str(directory)) == []


def test_a_second_signal_during_shutdown_still_stops_the_node_cleanly(tmp_path):
    # `meridian node` used to take only the first signal: one more arriving while the node
    # shut down (a second SIGTERM, a Ctrl-C) stayed pending in trio's receiver and was
    # delivered again when it closed -- a KeyboardInterrupt traceback and exit status -2
    # (or death by SIGTERM) instead of a clean stop.
    import trio

    from engine.config import (ClusterConfig, NodeAddress, NodeConfig, RegionConfig,
                               dump_node_config)
    from engine.local import free_base_port
    from engine.rpc import connect_rpc

    peer_port = free_base_port(2)
    client_port = peer_port + 1
    cluster = ClusterConfig(name="sig", regions=(RegionConfig("r1", (
        NodeAddress(1, "r1", "127.0.0.1", peer_port, "127.0.0.1", client_port),)),))
    config = tmp_path / "node.toml"
    config.write_text(dump_node_config(NodeConfig(node_id=1, data_dir=str(tmp_path / "data"),
                                                  cluster=cluster)))
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "node", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def wait_serving():
            with trio.fail_after(60):
                while True:
                    try:
                        async with connect_rpc("127.0.0.1", client_port) as conn:
                            await conn.call("ping")
                            return
                    except OSError:
                        await trio.sleep(0.05)

        trio.run(wait_serving)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert "Traceback" not in text, text
    assert proc.returncode == 0, text
    assert "stopped" in text, text


def test_a_ctrl_c_while_the_demo_stops_its_nodes_leaves_nothing_behind(tmp_path, monkeypatch):
    # An impatient Ctrl-C while the demo, its workload done, waits for its nodes to stop: the
    # KeyboardInterrupt used to escape from the cleanup itself -- a traceback, the nodes not
    # stopped (they died only with the demo), and the temporary directory left behind.
    import io
    import tempfile

    from engine import cluster_demo
    from engine.procs import ClusterProcesses

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's own dir goes
    real_stop = ClusterProcesses.stop

    def impatient_stop(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the nodes are being stopped
        return real_stop(self, *args, **kwargs)

    monkeypatch.setattr(ClusterProcesses, "stop", impatient_stop)
    out = io.StringIO()
    escaped = None
    try:
        code = cluster_demo.run_demo(seconds=0.5, regions=("east",), nodes_per_region=1,
                                     clients_per_region=1, accounts=2, wan=False, out=out)
    except KeyboardInterrupt as exc:  # caught here: it would end the whole test run
        escaped = exc
    finally:
        left = _processes_mentioning(str(tmp_path))
        for pid in left:  # the demo's node, left running: end it
            os.kill(pid, signal.SIGKILL)
    assert escaped is None, "the KeyboardInterrupt escaped the demo's cleanup\n" + out.getvalue()
    assert left == []
    assert list(tmp_path.glob("meridian-demo-*")) == []
    assert code == 0 and "stopped 1 node processes" in out.getvalue(), out.getvalue()


def test_a_percentile_is_a_value_at_least_that_share_of_the_samples_do_not_exceed():
    # Rounding q·(n-1) to an index could land a sample short: of 199 latencies, 2 slow
    # (1.005 %), the p99 printed was a fast one, under which lay only 98.99 % of them.
    from engine.cluster_demo import _percentile

    samples = sorted([1.0] * 197 + [100.0] * 2)
    assert _percentile(samples, 0.99) == 100.0
    for n in range(1, 400):
        samples = [float(i) for i in range(1, n + 1)]
        for q in (0.5, 0.9, 0.99):
            value = _percentile(samples, q)
            at_or_below = sum(1 for s in samples if s <= value)
            assert at_or_below >= q * n - 1e-9, (n, q, value)
            assert at_or_below - 1 < q * n - 1e-9, (n, q, value)  # the smallest such value


def test_a_dir_that_cannot_be_used_is_one_clear_line(tmp_path):
    # `--dir` naming a file (or a directory that cannot be written) used to end `cluster up`,
    # `demo` and `crash-demo` with a FileExistsError traceback from deep inside.
    taken = tmp_path / "a-file"
    taken.write_text("not a directory\n")
    for command in (["cluster", "up"], ["demo", "--seconds", "1"], ["crash-demo"]):
        out = subprocess.run([sys.executable, "-m", "engine.cli", *command, "--dir", str(taken)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, command
        assert "Traceback" not in out.stderr, out.stderr
        assert f"meridian {command[0]}: File exists: {taken}" in out.stderr, out.stderr
    assert taken.read_text() == "not a directory\n"


def test_a_demo_with_fewer_than_two_accounts_is_refused_before_it_starts(tmp_path):
    # A transfer takes two accounts: `demo --accounts 1` used to start the cluster, then end
    # with an ExceptionGroup traceback from every client (random.sample of 2 out of 1).
    from engine.cluster_demo import run_demo

    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--accounts", "1", "--dir",
         str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--accounts: 1 is too few: a transfer needs 2 accounts" in out.stderr, out.stderr
    with pytest.raises(errors.InvalidArgumentError, match=r"in 2\.\.1000"):
        run_demo(directory=str(tmp_path / "c"), accounts=1)
    assert not (tmp_path / "c").exists()


def test_a_demo_with_more_accounts_than_one_transaction_creates_is_refused_before_it_starts(
        tmp_path):
    # One transaction creates every account: `demo --accounts 5000` used to start the cluster,
    # then end on the transaction's key limit.
    from engine.cluster_demo import MAX_ACCOUNTS, run_demo

    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--accounts", str(MAX_ACCOUNTS + 1),
         "--dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"is too many: one transaction creates them all, at most {MAX_ACCOUNTS}" \
        in out.stderr, out.stderr
    help_text = subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert f"2 to {MAX_ACCOUNTS}" in " ".join(help_text.split()), help_text
    with pytest.raises(errors.InvalidArgumentError, match=f"in 2..{MAX_ACCOUNTS}"):
        run_demo(directory=str(tmp_path / "c"), accounts=MAX_ACCOUNTS + 1)
    assert not (tmp_path / "c").exists()


def test_cluster_status_reports_a_node_that_accepts_and_never_answers(monkeypatch):
    # A paused node (SIGSTOP) still has its connections accepted by the kernel: `meridian
    # cluster status` waited for its answer for ever.
    import socket

    import trio

    import engine.procs
    from engine.config import default_local_cluster
    from engine.local import free_base_port

    monkeypatch.setattr(engine.procs, "STATUS_TIMEOUT_S", 0.2)
    base = free_base_port(2)
    cluster = default_local_cluster(("us-east",), 1, base_port=base)
    with socket.socket() as paused:
        paused.bind(("127.0.0.1", base + 1))  # node 1's client port
        paused.listen()
        started = time.monotonic()
        status = trio.run(engine.procs.describe_all, cluster)
        assert time.monotonic() - started < 10
    assert set(status) == {1} and "error" in status[1], status


def test_cluster_status_does_not_take_another_node_at_a_nodes_address_for_it():
    # Whatever answered `status` at a node's client address was shown as that node: another
    # cluster's node on a reused port (or a copied cluster directory) passed for it, up.
    import trio

    import engine.procs
    from engine import open_local_cluster
    from engine.config import default_local_cluster

    async def main():
        async with open_local_cluster(("us-east",), 1, seed=3) as other:
            node = other.config.all_nodes()[0]
            # A cluster of its own whose node 1 is configured at that node's address.
            mine = default_local_cluster(("eu-west",), 1, base_port=node.client_port - 1)
            assert mine.all_nodes()[0].client_port == node.client_port
            with trio.fail_after(30):
                return await engine.procs.describe_all(mine)

    status = trio.run(main)
    assert set(status) == {1} and "error" in status[1], status
    assert "node 1 of region 'us-east'" in status[1]["error"]


def _end_missed(started) -> None:
    """Ends the node processes of ``started`` that ``down`` missed (a test that failed)."""
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_ctrl_c_while_cluster_up_starts_a_node_leaves_it_for_down_to_stop(tmp_path, monkeypatch):
    # A Ctrl-C reaching `cluster up` while it started a node -- most often while Popen waits
    # for the node's exec -- left that node running with no pid file: `cluster down` said
    # "nothing running" and the node kept its ports and data directory until killed by hand.
    from engine import procs

    started = []
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the node is being started
        return proc

    monkeypatch.setattr(procs.subprocess, "Popen", popen_then_ctrl_c)
    directory = tmp_path / "c"
    try:
        with pytest.raises(KeyboardInterrupt):
            procs.cluster_up(directory, regions=("east",), nodes_per_region=1,
                             wan_latency_ms={})
        monkeypatch.undo()
        assert len(started) == 1
        assert procs.ClusterProcesses(directory).stop() == [1]
        assert started[0].wait(timeout=10) is not None
    finally:
        _end_missed(started)
    assert _processes_mentioning(str(directory)) == []


def test_a_node_whose_pid_cannot_be_recorded_is_not_left_running(tmp_path, monkeypatch):
    # The pid file could not be written (a full disk): the node kept running unrecorded, so
    # `cluster down` said "nothing running" and the next `up` found its ports taken.
    import errno

    from engine import procs

    started = []
    real_popen = subprocess.Popen

    def popen_a_stand_in(args, **kwargs):  # a node that runs until it is stopped
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                  **kwargs))
        return started[-1]

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(procs.subprocess, "Popen", popen_a_stand_in)
    monkeypatch.setattr(procs, "_write_whole", disk_full)
    cluster = procs.ClusterProcesses(tmp_path)
    try:
        with pytest.raises(OSError, match="No space left"):
            cluster.start_node(1)
        assert len(started) == 1 and started[0].poll() is not None
    finally:
        _end_missed(started)


def test_a_cluster_too_large_for_the_local_ports_is_one_clear_line(tmp_path, capsys):
    # Two ports per node, below the ephemeral range: `--nodes-per-region 5000` used to end
    # `cluster up` (and `demo`) with a ValueError traceback from random.randrange.
    from engine.cluster_demo import run_demo

    directory = tmp_path / "c"
    code = main(["cluster", "up", "--dir", str(directory), "--nodes-per-region", "5000"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("meridian cluster up: 30000 consecutive ports"), err
    assert list(directory.glob("node-*")) == []
    assert run_demo(directory=str(directory), nodes_per_region=5000, out=io.StringIO()) == 1
    assert list(directory.glob("node-*")) == []


def test_cluster_status_fails_when_a_node_does_not_answer(tmp_path, capsys):
    # `meridian cluster status` printed "down" for every node of a stopped cluster and still
    # exited 0, so a script or health check asking it took a dead cluster for a healthy one.
    from engine.config import NodeConfig, default_local_cluster, dump_node_config
    from engine.local import free_base_port
    from engine.procs import ClusterProcesses

    cluster = default_local_cluster(("east",), 1, free_base_port(2), wan_latency_ms={})
    procs = ClusterProcesses(tmp_path)
    procs.config_path(1).write_text(dump_node_config(
        NodeConfig(node_id=1, data_dir=str(tmp_path / "node-1"), cluster=cluster)))
    assert main(["cluster", "status", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "down:" in out.splitlines()[1], out


def test_cluster_status_fails_when_a_node_does_not_serve(tmp_path, capsys, monkeypatch):
    # A node whose clock its peers do not vouch for answers `status` and refuses every read
    # and write: it was listed like any other, a follower of its groups, and the status was 0.
    import engine.procs
    from engine.config import NodeConfig, default_local_cluster, dump_node_config
    from engine.procs import ClusterProcesses

    cluster = default_local_cluster(("east",), 1, 20000, wan_latency_ms={})
    procs = ClusterProcesses(tmp_path)
    procs.config_path(1).write_text(dump_node_config(
        NodeConfig(node_id=1, data_dir=str(tmp_path / "node-1"), cluster=cluster)))
    problem = "node 1: its clock is 900 ms from nodes 2, 3"
    group = {"role": "follower", "leader": 2, "term": 3, "applied": 10, "closed_ts": 0}

    async def described(cluster):
        return {1: {"node": 1, "region": "east", "groups": {"0": group},
                    "clock_problem": problem}}

    monkeypatch.setattr(engine.procs, "describe_all", described)
    assert main(["cluster", "status", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].split() == ["1", "east", "-", "does", "not", "serve:", *problem.split()]


def test_a_crash_demo_ended_by_ctrl_c_or_sigterm_cleans_up_after_itself(tmp_path):
    # SIGTERM left the demo's temporary data directory behind (gigabytes after a long run: the
    # writer appends until it is killed), and Ctrl-C ended the demo with a traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        demo = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "crash-demo", "--kills", "1000",
             "--batches", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmp_path)})
        try:
            while not demo.stdout.readline().startswith(b"crash 1/"):  # a writer ran
                assert demo.poll() is None
            if sig == signal.SIGINT:
                os.killpg(demo.pid, sig)  # Ctrl-C: the demo and its writer alike
            else:
                demo.send_signal(sig)
            out, err = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        assert demo.returncode == 130, err
        assert b"Traceback" not in err and out.endswith(b"interrupted\n"), out + err
        assert list(tmp_path.glob("meridian-demo-*")) == []
        assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("command", ["cluster up", "demo"])
def test_no_wan_and_wan_latencies_together_are_refused(command, capsys):
    # Once, --no-wan won without a word and the latencies asked for were not simulated.
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--no-wan", "--wan-latency-ms", "a:b=5"])
    assert exit_.value.code == 2
    assert "not allowed with argument --no-wan" in capsys.readouterr().err


def test_a_failed_cluster_up_says_which_nodes_it_leaves_running(tmp_path, monkeypatch, capsys):
    from engine import procs

    async def never_ready(*args, **kwargs):
        raise errors.UnavailableError("group 1 has no leader")

    monkeypatch.setattr(procs, "wait_ready", never_ready)
    directory = tmp_path / "c"
    try:
        assert main(["cluster", "up", "--dir", str(directory), "--regions", "east",
                     "--nodes-per-region", "1", "--no-wan"]) == 1
        err = capsys.readouterr().err
        assert "group 1 has no leader; 1 node process it started keeps running" in err, err
        assert f"meridian cluster down --dir {directory}" in err
    finally:
        assert procs.ClusterProcesses(directory).stop() == [1]
    assert _processes_mentioning(str(directory)) == []


def test_a_cluster_up_that_cannot_start_a_node_says_which_it_leaves_running(tmp_path, monkeypatch,
                                                                           capsys):
    # A node that could not be started (no process left to fork, a log that cannot be opened)
    # ended `cluster up` with the bare OS error: the nodes it had started kept running, their
    # ports and data directories taken, and nothing said so.
    import errno

    from engine import procs

    real_popen = subprocess.Popen
    started = []

    def popen_once(*args, **kwargs):
        if started:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(procs.subprocess, "Popen", popen_once)
    directory = tmp_path / "c"
    try:
        assert main(["cluster", "up", "--dir", str(directory), "--regions", "east",
                     "--nodes-per-region", "2", "--no-wan"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"meridian cluster: {os.strerror(errno.EAGAIN)}; 1 node process "
                              f"it started keeps running"), err
        assert f"meridian cluster down --dir {directory}" in err
        monkeypatch.undo()
        assert procs.ClusterProcesses(directory).stop() == [1]
    finally:
        _end_missed(started)
    assert _processes_mentioning(str(directory)) == []



def test_a_demo_does_not_take_over_a_cluster_started_in_its_dir_as_it_starts(tmp_path,
                                                                            monkeypatch):
    # Another demo (or `cluster up`) on the same --dir can start its nodes after this demo
    # found none running and before it takes the directory's lock: the demo then ran its
    # workload on that cluster and, at its end, stopped nodes that were not its own.
    from engine import cluster_demo
    from engine.procs import cluster_up

    directory = tmp_path / "cluster"
    other = []

    def up_second(*args, **kwargs):
        other.append(cluster_up(directory, regions=("east",), nodes_per_region=1,
                                wan_latency_ms={}))
        return cluster_up(*args, **kwargs)

    monkeypatch.setattr(cluster_demo, "cluster_up", up_second)
    out = io.StringIO()
    try:
        code = cluster_demo.run_demo(directory=str(directory), seconds=0.2, regions=("east",),
                                     nodes_per_region=1, clients_per_region=1, accounts=2,
                                     wan=False, out=out)
        still_running = other[0].running_pid(1) is not None
    finally:
        for procs in other:
            procs.stop(grace_s=3)
    assert code == 1 and "holds a running cluster (nodes [1])" in out.getvalue(), out.getvalue()
    assert still_running, "the demo stopped a node it did not start\n" + out.getvalue()


def test_a_demo_interrupted_as_it_waits_to_start_leaves_the_nodes_of_another_up_running(
        tmp_path, monkeypatch):
    # A Ctrl-C as the demo's `up` waits for the directory's lock, which a `cluster up` on the
    # same --dir holds while it starts its nodes: the demo's cleanup then stopped every node
    # running in the directory -- that `up`'s, not one of them the demo's.
    from engine import cluster_demo
    from engine.procs import ClusterProcesses

    procs = ClusterProcesses(tmp_path / "cluster")
    procs.directory.mkdir()
    procs.config_path(1).write_text("")
    shell = _stand_in_node(tmp_path, procs, 1, "os._exit(0)", via_shell=True)
    node = procs.running_pid(1)

    def interrupted_up(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C, as it waits for the lock

    monkeypatch.setattr(cluster_demo, "cluster_up", interrupted_up)
    out = io.StringIO()
    try:
        code = cluster_demo.run_demo(directory=str(procs.directory), seconds=0.2,
                                     regions=("east",), nodes_per_region=1, clients_per_region=1,
                                     accounts=2, wan=False, out=out)
        still_running = procs.running_pid(1) == node
    finally:
        if shell.poll() is None:  # the node may run (its shell waits for it)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node, signal.SIGKILL)
        shell.wait(timeout=10)
    assert code == 130 and "stopped 0 node processes" in out.getvalue(), out.getvalue()
    assert still_running, "the demo stopped a node it did not start\n" + out.getvalue()


@pytest.mark.parametrize("fails", [True, False])
def test_a_demo_names_a_node_that_died_during_it(tmp_path, monkeypatch, fails):
    # A node killed during the workload: the demo failed with "group 101 did not answer
    # 'scan'" and the last lines of the logs, none of which said that a node had died; or,
    # its region's other nodes answering for it, reported success and "stopped 8 node
    # processes" of nine, without a word.
    import trio

    from engine import cluster_demo
    from engine.errors import UnavailableError

    async def node_dies(procs, *args):
        procs.kill_node(1)
        with trio.fail_after(10):
            while procs.exited(1) is None:
                await trio.sleep(0.01)
        if fails:
            raise UnavailableError("group 1 did not answer 'scan' within 10.0 s")
        return 0

    monkeypatch.setattr(cluster_demo, "_run", node_dies)
    out = io.StringIO()
    code = cluster_demo.run_demo(directory=str(tmp_path / "cluster"), seconds=0.2,
                                 regions=("east",), nodes_per_region=1, clients_per_region=1,
                                 accounts=2, wan=False, out=out)
    assert code == (1 if fails else 0), out.getvalue()
    assert "node 1 exited during the demo: killed by SIGKILL" in out.getvalue(), out.getvalue()
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_refused_cluster_up_does_not_claim_the_running_nodes_as_its_own(tmp_path, capsys):
    # (about 3 s: a one-node cluster started and stopped) A second `up` refused for options
    # that describe another cluster said "1 node process it started keeps running": it had
    # started nothing, the node was the first `up`'s.
    directory = tmp_path / "c"
    up = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "up", "--dir",
                         str(directory), "--regions", "east", "--nodes-per-region", "1",
                         "--no-wan"], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        assert main(["cluster", "up", "--dir", str(directory), "--nodes-per-region", "2"]) == 1
        err = capsys.readouterr().err
        assert "holds a cluster already" in err and "keeps running" not in err, err
    finally:
        from engine import procs

        assert procs.ClusterProcesses(directory).stop() == [1]
    assert _processes_mentioning(str(directory)) == []
