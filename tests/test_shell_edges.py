"""``meridian shell`` (engine.shell) at its edges: keys that are not plain text, malformed lines.

Integration tests against one single-node in-process cluster shared by the module, and unit
tests of the pure line parsing and printing.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blocking import connect_blocking
from engine.client import MAX_SCAN_LIMIT
from engine.shell import PROMPT, SCAN_VALUE_CHARS, _words, run_shell, show_key

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
    """A fresh keyspace name for the test (the cluster is shared by the module)."""
    return f"e{next(_names)}"


def shell(addresses, lines: list[str], *, code: int = 0) -> list[str]:
    """Runs a script (a real text stream, as piped in) that must end with exit status ``code``;
    returns its output lines."""
    script = "".join(line + "\n" for line in lines)
    stdin = io.TextIOWrapper(io.BytesIO(script.encode("utf-8", "surrogateescape")),
                             encoding="utf-8", errors="surrogateescape")
    out = io.StringIO()
    rc = run_shell(addresses, None, stdin=stdin, stdout=out)
    assert rc == code, out.getvalue()[:2000]
    return out.getvalue().splitlines()


_AWKWARD_KEYS = [
    b"\x00\xff", b"\x00\x00\x00\x07", b"user\n7", b"tab\tkey", "a b".encode(), b"it's",
    b'say "hi"', b"a\\b", b"both ' and \"", b"b'x'", b'b"y"', b"(not found)",
    "\u2603 snow".encode(), b"k\xff", b"--x", b"#hash", b"plain",
]


# ---------------------------------------------------------------------- typing keys back


def test_every_key_scan_prints_can_be_typed_back(addresses, ks):
    # A binary key was printed as b'\x00\xff', which the parser read as the text
    # "b\x00\xff": a key read from scan could not be given to get, put or delete. Text keys
    # with a space, a quote or a backslash were printed bare, and typed back as printed they
    # were split in two, or refused, or lost their backslash.
    with connect_blocking(addresses) as db:
        db.create_keyspace(ks)
        db.run_transaction(lambda tx: [tx.put(ks, key, b"v%d" % i)
                                       for i, key in enumerate(_AWKWARD_KEYS)])
    rows = shell(addresses, [f"scan {ks}"])
    assert rows[-1] == f"({len(_AWKWARD_KEYS)} rows)"
    shown = [row.rsplit(" = ", 1)[0] for row in rows[:-1]]
    got = shell(addresses, [f"get {ks} {key}" for key in shown]
                + [f"put {ks} {key} again" for key in shown])
    expected = {key: b"v%d" % i for i, key in enumerate(_AWKWARD_KEYS)}
    assert got[:len(shown)] == [f"v{_AWKWARD_KEYS.index(key)}" for key in sorted(expected)]
    assert got[len(shown):] == ["ok"] * len(shown)
    shell(addresses, [f"delete {ks} {key}" for key in shown])
    with connect_blocking(addresses) as db:
        assert db.run_transaction(lambda tx: tx.scan(ks)) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=12)
       | st.text(min_size=1, max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_a_printed_key_read_as_a_word_is_the_key(key):
    command, keyspace, word = _words(f"get ks {show_key(key)}")
    typed = word if isinstance(word, bytes) else word.encode("utf-8", "surrogateescape")
    assert typed == key


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12))
def test_the_bytes_literal_of_any_bytes_reads_back_as_them(data):
    assert _words(f"put ks {data!r} {data!r}") == ["put", "ks", data, data]


def test_a_bytes_literal_is_the_bytes_it_spells(addresses, ks):
    out = shell(addresses, [
        f"create-keyspace {ks}",
        f"put {ks} b'\\x00\\xff' b\"it's \\t\\\\\"",
        f"get {ks} b'\\x00\\xff'",
        f"put {ks} b'\\x00\\xfe' b'b\\'x\\''",
        f"scan {ks} b'\\x00' b'\\x00\\xff'",
        f"scan {ks} b'\\x00\\xff'",
    ])
    assert out[1:] == ["ok", "b\"it's \\t\\\\\"", "ok", "b'\\x00\\xfe' = b\"b'x'\"", "(1 row)",
                       "b'\\x00\\xff' = b\"it's \\t\\\\\"", "(1 row)"]
    with connect_blocking(addresses) as db:
        assert db.run_transaction(lambda tx: tx.get(ks, b"\x00\xff")) == b"it's \t\\"


def test_a_bad_bytes_literal_is_one_error_line(addresses, ks):
    out = shell(addresses, [
        f"create-keyspace {ks}",
        f"put {ks} b'\\q' v",
        f"put {ks} b'\u00e9' v",
        f"put {ks} b'\\x0' v",
        f"put b'{ks}' k v",
        f"scan {ks} --limit b'1'",
        f"scan {ks}",
    ], code=1)
    escapes = "(escapes: \\xHH, \\n, \\r, \\t, \\\\, \\', \\\", ...)"
    assert out[1:] == [
        f"error: bad bytes literal: bad escape \\q {escapes}",
        "error: bad bytes literal: a character that is not ASCII (write its UTF-8 bytes as "
        "\\xHH)",
        f"error: bad bytes literal: bad escape \\x0 {escapes}",
        f"error: only keys and values can be bytes literals, not b'{ks}'",
        "error: --limit needs a whole number",
        "(0 rows)",
    ]


def test_a_binary_value_of_the_largest_size_can_be_typed(addresses, ks):
    # A line is refused as too long past twice the largest key and value: a value of the
    # largest size written as a bytes literal takes four characters a byte.
    with connect_blocking(addresses) as db:
        size = db.limits["max_value_size"]
    literal = "b'" + "\\xff" * size + "'"
    out = shell(addresses, [f"create-keyspace {ks}", f"put {ks} k {literal}"])
    assert out[1:] == ["ok"]
    with connect_blocking(addresses) as db:
        assert db.run_transaction(lambda tx: tx.get(ks, b"k")) == b"\xff" * size


# ---------------------------------------------------------------------- malformed lines


def test_an_unclosed_double_quote_is_refused_at_once():
    # The parser tried every way of cutting the text after an unclosed " into runs, in time
    # exponential in its length: `put users bio "Alice was beginning to get very tired`
    # kept the shell busy for hours. A child process, so that the old behaviour fails the
    # test at its timeout rather than hanging the run.
    code = ("from engine.shell import _split\n"
            "for line in ('put users bio \"' + 'a' * 64, 'put users bio \"' + 'a' * 64 + '\\\\'):\n"
            "    try:\n"
            "        _split(line)\n"
            "    except ValueError as exc:\n"
            "        print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.splitlines() == ["No closing quotation", "No escaped character"], done


@pytest.mark.parametrize("limit", [str(MAX_SCAN_LIMIT + 1), "9" * 20, "9" * 5000],
                         ids=["one-over", "20-digits", "5000-digits"])
def test_a_limit_too_large_is_one_plain_error_line(addresses, ks, limit):
    # 5000 digits printed int()'s "ValueError: Exceeds the limit (4300 digits) for integer
    # string conversion ... use sys.set_int_max_str_digits()", and 20 digits the client's
    # "limit must be None or an int in 0..".
    out = shell(addresses, [f"create-keyspace {ks}", f"scan {ks} --limit {limit}",
                            f"scan {ks} --limit 000{MAX_SCAN_LIMIT}"], code=1)
    assert out[1:] == [f"error: --limit must be at most {MAX_SCAN_LIMIT}", "(0 rows)"]


# ---------------------------------------------------------------------- long values


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_scan_at_a_terminal_cuts_long_values_and_says_so(addresses, ks):
    # A scan at a terminal printed every value whole: a few values of 1 MiB filled the
    # screen's history many times over and the keys listed were lost in them.
    with connect_blocking(addresses) as db:
        size = db.limits["max_value_size"]
        db.create_keyspace(ks)
        db.run_transaction(lambda tx: (tx.put(ks, b"big", b"v" * size),
                                       tx.put(ks, b"small", b"s")))
    out = io.StringIO()
    script = _Terminal(f"scan {ks}\nget {ks} big\n")
    assert run_shell(addresses, None, stdin=script, stdout=out) == 0
    lines = [line.removeprefix(PROMPT) for line in out.getvalue().splitlines()[1:]]
    assert lines[:3] == [f"big = {'v' * SCAN_VALUE_CHARS}... (cut: {size} bytes; get shows "
                         f"all of it)", "small = s", "(2 rows)"]
    assert lines[3] == "v" * size  # get shows the whole value
    # A script's output is exact.
    assert shell(addresses, [f"scan {ks}"])[0] == "big = " + "v" * size


# ---------------------------------------------------------------------- many rows


def test_a_scan_without_a_limit_lists_a_bounded_page_and_says_more_follow(addresses, ks):
    from engine.shell import SCAN_ROWS

    with connect_blocking(addresses) as db:
        db.create_keyspace(ks)
        keys = [b"k%05d" % i for i in range(SCAN_ROWS + 5)]
        for i in range(0, len(keys), 500):
            def write(tx, chunk=keys[i:i + 500]):
                for k in chunk:
                    tx.put(ks, k, b"v")
            db.run_transaction(write)
    out = shell(addresses, [f"scan {ks}", f"scan {ks} --reverse",
                            f"scan {ks} --limit {SCAN_ROWS + 5}", f"scan {ks} k01000"])
    first = out[:SCAN_ROWS + 1]
    assert first[:2] == ["k00000 = v", "k00001 = v"] and first[SCAN_ROWS - 1] == "k00999 = v"
    assert first[-1].startswith(f"({SCAN_ROWS} rows shown; there are more")
    assert "START just after the last key shown" in first[-1]
    backwards = out[SCAN_ROWS + 1:2 * SCAN_ROWS + 2]
    assert backwards[0] == f"k{SCAN_ROWS + 4:05d} = v" and "END the last key" in backwards[-1]
    rest = out[2 * SCAN_ROWS + 2:]
    assert rest[SCAN_ROWS + 5] == f"({SCAN_ROWS + 5} rows)"  # all, with a limit that large
    assert rest[SCAN_ROWS + 6:] == [f"k{i:05d} = v" for i in range(1000, SCAN_ROWS + 5)] + [
        "(5 rows)"]


def test_a_limit_given_twice_is_refused(addresses, ks):
    out = shell(addresses, [f"create-keyspace {ks}", f"scan {ks} --limit 1 --limit 2"],
                code=1)
    assert out[1:] == ["error: --limit is given twice"]
