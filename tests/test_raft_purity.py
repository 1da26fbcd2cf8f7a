"""The Raft core is pure (ARCH §1, §3): it imports no trio, sockets, files-and-clocks machinery,
global random, or engine. Every module of ``raft/`` is core unless it is one of the driver
modules named here, so a new core module is checked without anyone remembering to add it."""

from __future__ import annotations

import os
import subprocess
import sys

RAFT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raft")
DRIVER_MODULES = {"driver", "transport", "tcp", "poller", "wire", "storage", "sim", "kvnode"}  # I/O
FORBIDDEN = ["trio", "socket", "selectors", "asyncio", "threading", "engine", "lmdb", "random",
             "time"]


def core_modules() -> list[str]:
    names = []
    for file in sorted(os.listdir(RAFT_DIR)):
        name, ext = os.path.splitext(file)
        if ext == ".py" and name != "__init__" and name not in DRIVER_MODULES:
            names.append(f"raft.{name}")
    return names


def test_core_modules_import_with_io_and_randomness_blocked():
    modules = ["raft", *core_modules()]
    assert "raft.quorum" in modules
    code = (
        "import sys\n"
        f"for name in {FORBIDDEN!r}:\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_check_catches_a_core_module_that_imports_trio(tmp_path):
    (tmp_path / "leaky.py").write_text("import trio\n")
    code = "import sys\nsys.modules['trio'] = None\nsys.path.insert(0, %r)\nimport leaky\n" % str(
        tmp_path
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "import of trio halted" in out.stderr
