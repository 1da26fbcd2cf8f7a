"""The package's surface for applications that embed Meridian: what ``from engine import *``
brings, and the client's checks of its arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest

import engine
from engine.client import MAX_TS, _as_bytes, _parse_staleness
from engine.errors import InvalidArgumentError


def _run_fresh(script: str) -> list[str]:
    """Runs ``script`` in a fresh interpreter (here the lazy names may have been imported by
    other tests) and returns the lines it printed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_star_import_brings_every_public_name():
    assert _run_fresh(
        "import engine\n"
        "namespace = {}\n"
        "exec('from engine import *', namespace)\n"
        "print(sorted(set(engine.__all__) - set(namespace)))\n"
        "print(namespace['connect_blocking'] is engine.blocking.connect_blocking)\n"
    ) == ["[]", "True"]
    documented = {"connect", "connect_blocking", "open_local_cluster", "Database",
                  "Transaction", "Keyspace", "LogStore", "MVCCStore", "DurableState",
                  "MeridianError", "TransactionConflictError", "AmbiguousCommitError",
                  "UnavailableError", "KeyspaceNotFoundError", "LimitExceededError"}
    assert documented <= set(engine.__all__)
    assert set(engine._LAZY) <= set(engine.__all__)
    assert all(not name.startswith("_") for name in engine.__all__)


def test_every_error_class_is_exported():
    """Every MeridianError subclass of a public module is reachable as ``engine.<Name>``, so
    an application can catch what the client, the node runtime or the storage raises."""
    assert _run_fresh(
        "import importlib, inspect, pkgutil, engine\n"
        "missing = []\n"
        "for info in pkgutil.iter_modules(engine.__path__):\n"
        "    if info.name.startswith('_') or info.name in ('cli', 'shell', 'demo',\n"
        "                                                  'cluster_demo', 'planted'):\n"
        "        continue\n"
        "    module = importlib.import_module('engine.' + info.name)\n"
        "    for name, value in vars(module).items():\n"
        "        if (inspect.isclass(value) and issubclass(value, engine.MeridianError)\n"
        "                and value.__module__ == module.__name__ and not name.startswith('_')\n"
        "                and getattr(engine, name, None) is not value):\n"
        "            missing.append(module.__name__ + '.' + name)\n"
        "print(sorted(missing))\n"
    ) == ["[]"]


@pytest.mark.parametrize("staleness, expected", [
    ("exact:0", ("exact", 0)),
    ("bounded:5", ("bounded", 5_000_000_000)),
    ("bounded:0.25", ("bounded", 250_000_000)),
    ("bounded:.5", ("bounded", 500_000_000)),
    ("exact:2.", ("exact", 2_000_000_000)),
    ("exact:1e3", ("exact", 1_000_000_000_000)),
    ("bounded:25E-2", ("bounded", 250_000_000)),
])
def test_staleness_in_range_parses(staleness, expected):
    assert _parse_staleness(staleness) == expected


def test_the_largest_staleness_fits_a_timestamp():
    kind, ns = _parse_staleness(f"bounded:{MAX_TS // 10**9}")
    assert kind == "bounded" and 0 < ns <= MAX_TS


@pytest.mark.parametrize("staleness, fragment", [
    ("bounded:1e300", "with 0 <= seconds <= "),   # once OverflowError
    ("bounded:1e12", "with 0 <= seconds <= "),    # once a message encoding failure
    ("exact:1e12", "with 0 <= seconds <= "),
    (f"bounded:{MAX_TS // 10**9 + 1}", "with 0 <= seconds <= "),
    ("bounded:-1", "'bounded:<seconds>'"),
    ("exact:nan", "'exact:<seconds>'"),
    ("bounded:inf", "'exact:<seconds>'"),
    ("fresh:1", "'exact:<seconds>' or 'bounded:<seconds>'"),
    ("bounded:", "'bounded:<seconds>'"),
    ("bounded:1_0", "'bounded:<seconds>'"),      # once 10 s, as a Python literal
    ("bounded: 5", "'bounded:<seconds>'"),       # once 5 s
    ("exact:5\n", "'exact:<seconds>'"),
    ("exact:+5", "'exact:<seconds>'"),
    ("bounded:" + "9" * 400, "with 0 <= seconds <= "),
    (5, "staleness must be a str .*, not int"),    # once AttributeError
    (b"bounded:5", "staleness must be a str .*, not bytes"),
])
def test_bad_staleness_is_an_invalid_argument_naming_the_form_and_range(staleness, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment) as info:
        _parse_staleness(staleness)
    assert f"<= {MAX_TS // 10**9}" in str(info.value) and len(str(info.value)) < 200


@pytest.mark.parametrize("value, fragment", [
    ("k\udcff", "key is a str that is not valid Unicode text .* pass bytes"),  # once a
    # UnicodeEncodeError from deep inside
    (bytearray(b"k"), "key must be bytes or str, not bytearray"),
    (5, "key must be bytes or str, not int"),
])
def test_a_key_that_is_not_bytes_or_encodable_text_is_an_invalid_argument(value, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment):
        _as_bytes(value, "key")
    assert _as_bytes("ké", "key") == "ké".encode()
