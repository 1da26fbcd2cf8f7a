"""The public surface and the command line, as the README promises them."""

from __future__ import annotations

import subprocess
import sys

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


def test_bad_arguments_are_one_clear_line():
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--kills", "zero"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "'zero' is not a whole number" in out.stderr and "Traceback" not in out.stderr


def test_demo_crashes_the_writer_and_verifies_every_acknowledged_entry(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--kills", "2", "--batches", "20",
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum("SIGKILL" in line for line in lines) == 2
    assert lines[-1].startswith("OK: 2 crashes")
    assert (tmp_path / "demo" / "log").is_dir()  # --dir is kept
