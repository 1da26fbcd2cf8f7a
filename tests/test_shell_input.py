"""``meridian shell`` (engine.shell) fed awkward input: huge values, quoting, interrupts.

Integration tests against one single-node in-process cluster shared by the module, as in
test_shell.py; the line splitter is also checked against :func:`shlex.split` directly.
"""

from __future__ import annotations

import io
import itertools
import shlex
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blocking import connect_blocking
from engine.shell import _split, run_shell

from clusterthread import ClusterThread


@pytest.fixture(scope="module")
def addresses():
    cluster = ClusterThread(seed=13)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_names = itertools.count()


@pytest.fixture
def ks(addresses) -> str:
    return f"i{next(_names)}"


def shell(addresses, lines: list[str], *, code: int = 0) -> list[str]:
    """Runs a script session that must end with exit status ``code``; its output lines."""
    out = io.StringIO()
    rc = run_shell(addresses, None, stdin=io.StringIO("".join(f"{x}\n" for x in lines)),
                   stdout=out)
    assert rc == code, out.getvalue()[:2000]
    return out.getvalue().splitlines()


def test_a_value_of_the_largest_size_is_stored_and_shown_whole_at_once(addresses, ks):
    # The line was split with shlex, which builds a word one character at a time: a 1 MiB
    # value (the default max_value_size) took some 15 s of CPU before it was even sent, and
    # a value of several MiB, to be refused as too large, kept the shell busy for minutes.
    with connect_blocking(addresses) as db:
        size = db.limits["max_value_size"]
    value = "v" * size
    started = time.monotonic()
    out = shell(addresses, [f"create-keyspace {ks}", f"put {ks} k {value}", f"get {ks} k",
                            f'put {ks} q "{value} "', f"put {ks} big {value}vv"], code=1)
    elapsed = time.monotonic() - started
    assert out[1:3] == ["ok", value]
    assert out[3].startswith("error: ") and str(size) in out[3]  # one byte over
    assert out[4].startswith("error: ") and str(size) in out[4]
    assert len(out) == 5
    assert elapsed < 5, f"{elapsed:.1f} s"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="a \t\r'\"\\#\u2603\udcff\x00", max_size=16))
def test_lines_split_as_shlex_splits_them(line):
    try:
        expected: list[str] | str = shlex.split(line)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: list[str] | str = _split(line)
    except ValueError as exc:
        got = str(exc)
    assert got == expected
