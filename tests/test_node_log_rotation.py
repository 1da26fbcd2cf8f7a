"""A node's log file, rotated by size: the ``log_file``, ``log_max_bytes`` and ``log_backups``
settings, the handler that bounds the files, a log file the node cannot open, and the files of a
``meridian cluster up`` directory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from functools import partial

import pytest
import trio

from engine.cli import node_log_handler
from engine.config import (
    ConfigError,
    NodeConfig,
    default_local_cluster,
    dump_node_config,
    load_node_config,
    parse_node_config,
)
from engine.local import free_base_port


def _config(**settings) -> NodeConfig:
    cluster = default_local_cluster(("east",), 1, free_base_port(2), wan_latency_ms={})
    return NodeConfig(node_id=1, data_dir="/var/lib/meridian", cluster=cluster, **settings)


def _text_with(line: str) -> str:
    """A configuration's TOML with ``line`` among its top-level keys."""
    text = dump_node_config(_config())
    return text.replace('raft_fsync = "async"\n', f'raft_fsync = "async"\n{line}\n', 1)


def test_the_defaults_log_to_stderr_with_bounded_rotation_settings():
    cfg = parse_node_config(dump_node_config(_config()))
    assert cfg.log_file is None and cfg.log_path is None
    assert cfg.log_max_bytes == 16 << 20 and cfg.log_backups == 3


def test_log_settings_are_read_and_written_back_alike():
    text = _text_with('log_file = "logs/node.log"').replace(
        "log_max_bytes = 16777216", "log_max_bytes = 65536").replace(
        "log_backups = 3", "log_backups = 0")
    cfg = parse_node_config(text)
    assert (cfg.log_file, cfg.log_max_bytes, cfg.log_backups) == ("logs/node.log", 65536, 0)
    assert parse_node_config(dump_node_config(cfg)) == cfg
    # A relative log_file is under data_dir, whatever the directory the node runs in.
    assert cfg.log_path == "/var/lib/meridian/logs/node.log"
    assert _config(log_file="/var/log/m.log").log_path == "/var/log/m.log"


@pytest.mark.parametrize("setting, message", [
    ("log_max_bytes = \"16M\"", 'log_max_bytes: expected an integer, got "16M"'),
    ("log_max_bytes = 1.5e6", "log_max_bytes: expected an integer, got 1500000.0"),
    ("log_max_bytes = -1", "log_max_bytes: must be at least 65536, got -1"),
    ("log_max_bytes = 65535", "log_max_bytes: must be at least 65536, got 65535"),
    ("log_backups = -1", "log_backups: must be in 0..100, got -1"),
    ("log_backups = 101", "log_backups: must be in 0..100, got 101"),
    ("log_backups = true", "log_backups: expected an integer, got true"),
    ("log_file = 7", "log_file: expected a string, got 7"),
    ('log_file = ""', "log_file: must not be empty"),
    ('log_file = "a\\u0000b"', "log_file: must not contain a NUL character"),
    ('log_files = "node.log"', "log_files: unknown key; did you mean 'log_file'?"),
])
def test_a_bad_log_setting_is_an_error_naming_its_field(setting, message):
    if setting.startswith(("log_max_bytes", "log_backups")):
        key = setting.split(" ", 1)[0]
        default = {"log_max_bytes": "16777216", "log_backups": "3"}[key]
        text = dump_node_config(_config()).replace(f"{key} = {default}", setting, 1)
    else:
        text = _text_with(setting)
    with pytest.raises(ConfigError) as caught:
        parse_node_config(text, source="node.toml")
    assert str(caught.value).startswith(f"node.toml: {message}"), str(caught.value)


def test_bad_log_settings_given_in_code_are_refused_too():
    for settings, field in (({"log_max_bytes": 1024}, "log_max_bytes"),
                            ({"log_backups": -2}, "log_backups"),
                            ({"log_file": b"node.log"}, "log_file")):
        with pytest.raises(ConfigError) as caught:
            _config(**settings)
        assert caught.value.field == field


def _write_records(path, max_bytes, backups, count=2000):
    handler = node_log_handler(str(path), max_bytes, backups)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger(f"test.rotation.{path}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(count):
            logger.info("record %05d %s", i, "x" * 60)
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_rotation_bounds_the_number_and_size_of_the_files(tmp_path):
    path = tmp_path / "logs" / "deeper" / "node.log"  # its directories are created
    _write_records(path, 1024, 2)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]
    for name in files:
        size = (path.parent / name).stat().st_size
        assert 0 < size <= 1024, (name, size)
    # The newest records are in node.log, those just before in node.log.1.
    assert "record 01999" in path.read_text()
    newest_before = path.with_name("node.log.1").read_text().splitlines()[-1]
    oldest_now = path.read_text().splitlines()[0]
    assert int(newest_before.split()[2]) + 1 == int(oldest_now.split()[2])
    # ~160 KB were written: all but the last ~3 KiB are gone.
    assert "record 00000" not in "".join((path.parent / n).read_text() for n in files)


def test_rotation_without_backups_still_bounds_the_file(tmp_path):
    # The standard RotatingFileHandler never rotates with backupCount=0: the file grew forever.
    path = tmp_path / "node.log"
    _write_records(path, 1024, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log"]
    assert 0 < path.stat().st_size <= 1024
    assert "record 01999" in path.read_text()


def test_rotation_appends_to_the_file_of_an_earlier_run(tmp_path):
    path = tmp_path / "node.log"
    path.write_text("an earlier run\n")
    _write_records(path, 1 << 20, 3, count=3)
    lines = path.read_text().splitlines()
    assert lines[0] == "an earlier run" and len(lines) == 4


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_a_log_file_the_node_cannot_open_is_one_line_and_exit_status_2(tmp_path, where):
    (tmp_path / "plain").write_text("not a directory\n")
    log_file = tmp_path / "plain" / "node.log" if where == "under a file" else tmp_path
    cfg = _config(log_file=str(log_file))
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "data"), cluster=cfg.cluster,
                     log_file=cfg.log_file)
    config = tmp_path / "node.toml"
    config.write_text(dump_node_config(cfg))
    run = subprocess.run([sys.executable, "-m", "engine.cli", "node", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    reason = "Not a directory" if where == "under a file" else "Is a directory"
    assert run.stderr == (f"meridian node: {config}: log_file: cannot open {log_file}: "
                          f"{reason}\n")
    assert not (tmp_path / "data").exists()  # the node did not start


# ---------------------------------------------------------------------------------------------
# A cluster directory.


def _one_node_cluster(directory):
    """A one-node cluster in ``directory``, started once (until it is ready) and stopped."""
    from engine.procs import cluster_up, wait_ready

    procs = cluster_up(directory, regions=("east",), nodes_per_region=1, wan_latency_ms={})
    try:
        trio.run(partial(wait_ready, procs.load_cluster(), procs=procs))
    finally:
        assert procs.stop() == [1]
    return procs


def _wait_exited(procs, node_id, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    try:
        while (why := procs.exited(node_id)) is None:
            assert time.monotonic() < deadline, "the node did not exit"
            time.sleep(0.02)
    finally:
        procs.stop()  # whatever failed: leave no node running
    return why


def test_cluster_nodes_log_to_a_rotated_file_and_output_to_a_bounded_one(tmp_path):
    directory = tmp_path / "c"
    procs = _one_node_cluster(directory)
    cfg = load_node_config(directory / "node-1.toml")
    assert cfg.log_path == str(procs.log_path(1)) == str(directory.resolve() / "node-1.log")
    log = procs.log_path(1).read_text()
    assert " node-1 INFO " in log and log.rstrip().endswith("stopped"), log
    assert procs.output_path(1).read_text() == ""  # a node that logs says nothing there
    assert procs.last_log_line(1).endswith("stopped")
    # Each start empties the output file: it holds one run's output, never a growing history.
    procs.output_path(1).write_text("an earlier run's traceback\n")
    from engine.procs import wait_ready

    procs.start_node(1)
    try:
        trio.run(partial(wait_ready, procs.load_cluster(), procs=procs))
    finally:
        assert procs.stop() == [1]
    assert procs.output_path(1).read_text() == ""
    assert procs.log_path(1).read_text().count("stopped") == 2


def test_a_cluster_node_that_exits_at_once_says_why(tmp_path):
    # The node refuses the data directory of another cluster when it opens it: after its log
    # is open, so the reason is in its log and its output, and `exited` gives it.
    from engine.procs import ClusterProcesses

    directory = tmp_path / "c"
    _one_node_cluster(directory)
    config = directory / "node-1.toml"
    config.write_text(config.read_text().replace('name = "local"', 'name = "other"', 1))
    procs = ClusterProcesses(directory)
    procs.start_node(1)
    why = _wait_exited(procs, 1)
    said = procs.output_path(1).read_text().strip()
    assert said.startswith("meridian node: data directory ") and "'local'" in said, said
    assert why == f"{said} (exit status 1)"
    logged = procs.log_path(1).read_text().strip().splitlines()[-1]
    assert " node-1 ERROR " in logged and logged.endswith(said.removeprefix("meridian node: "))


def test_a_cluster_node_whose_configuration_is_bad_says_why(tmp_path):
    # Refused before any log is open: the reason is on stderr only.
    from engine.procs import ClusterProcesses

    directory = tmp_path / "c"
    _one_node_cluster(directory)
    config = directory / "node-1.toml"
    config.write_text(config.read_text().replace("log_backups = 3", "log_backups = 1000", 1))
    procs = ClusterProcesses(directory)
    procs.start_node(1)
    why = _wait_exited(procs, 1)
    assert "log_backups: must be in 0..100, got 1000" in why and why.endswith(
        "(exit status 2)"), why


def test_a_cluster_node_that_cannot_open_its_log_says_why(tmp_path):
    from engine.procs import ClusterProcesses

    directory = tmp_path / "c"
    _one_node_cluster(directory)
    os.replace(directory / "node-1.log", directory / "kept.log")
    (directory / "node-1.log").mkdir()
    procs = ClusterProcesses(directory)
    procs.start_node(1)
    why = _wait_exited(procs, 1)
    assert "log_file: cannot open" in why and "Is a directory" in why, why
    assert why.endswith("(exit status 2)"), why
    assert "Is a directory" in procs.output_path(1).read_text()
