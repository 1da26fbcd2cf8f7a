"""``meridian shell`` (engine.shell) driven by scripts against an in-process cluster.

Integration tests: one single-node cluster runs in a background thread for the whole module;
each test feeds run_shell a script and checks what it printed.
"""

from __future__ import annotations

import io
import itertools
import os
import shlex
import subprocess
import sys
import timeit
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blocking import connect_blocking
from engine.local import free_base_port
from engine.shell import PROMPT, _split, run_shell, show

from clusterthread import ClusterThread


@pytest.fixture(scope="module")
def addresses():
    cluster = ClusterThread(seed=12)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_names = itertools.count()


@pytest.fixture
def ks(addresses) -> str:
    """A fresh keyspace name for the test (the cluster is shared by the module)."""
    return f"s{next(_names)}"


class ScriptedInput(io.StringIO):
    """Input lines, with actions run just before a given line is read (to act between two
    commands of the shell), and a switchable ``isatty``."""

    def __init__(self, lines: list[str | Callable[[], None]], *, tty: bool = False) -> None:
        super().__init__()
        self._items = list(lines)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def readline(self, size: int = -1) -> str:
        while self._items:
            item = self._items.pop(0)
            if callable(item):
                item()
                continue
            return item + "\n"
        return ""


def shell(addresses, script: str | list, *, tty: bool = False, code: int = 0) -> list[str]:
    """Runs a session that must end with exit status ``code``; returns its output lines."""
    lines = script.splitlines() if isinstance(script, str) else script
    out = io.StringIO()
    rc = run_shell(addresses, None, stdin=ScriptedInput(lines, tty=tty), stdout=out)
    assert rc == code, out.getvalue()
    return out.getvalue().splitlines()


# ---------------------------------------------------------------------- commands


def test_create_put_get_scan_delete(addresses, ks):
    out = shell(addresses, f"""
create-keyspace {ks}
keyspaces
put {ks} alice "Alice Liddell"
put {ks} bob 'Bob'
put {ks} carol C
get {ks} alice
get {ks} nobody
scan {ks}
scan {ks} b
scan {ks} alice carol
scan {ks} --limit 2 --reverse
delete {ks} bob
scan {ks}
drop-keyspace {ks}
""")
    assert out[0] == f"created keyspace {ks} (home us-east)"
    assert out[1].split() == ["NAME", "HOME", "MODE", "ID"]
    assert any(line.split()[:3] == [ks, "us-east", "global"] for line in out[2:4])
    rest = out[out.index("ok"):]
    assert rest == [
        "ok", "ok", "ok",
        "Alice Liddell",
        "(not found)",
        "alice = Alice Liddell", "bob = Bob", "carol = C", "(3 rows)",
        "bob = Bob", "carol = C", "(2 rows)",
        "alice = Alice Liddell", "bob = Bob", "(2 rows)",
        "carol = C", "bob = Bob", "(2 rows)",
        "ok",
        "alice = Alice Liddell", "carol = C", "(2 rows)",
        f"dropped keyspace {ks}",
    ]


def test_begin_commit_and_rollback(addresses, ks):
    out = shell(addresses, f"""
create-keyspace {ks}
begin
put {ks} a 1
get {ks} a
commit
begin serializable
put {ks} b 2
rollback
scan {ks}
begin
get {ks} a
commit
""")
    assert out[1:4] == ["begin (snapshot)", "ok", "1"]
    assert out[4].startswith("committed at ts ") and int(out[4].split()[-1]) > 0
    assert out[5:8] == ["begin (serializable)", "ok", "rolled back"]
    assert out[8:] == ["a = 1", "(1 row)", "begin (snapshot)", "1",
                       "committed (read only: nothing to write)"]


def test_writes_inside_begin_are_invisible_until_commit(addresses, ks):
    with connect_blocking(addresses) as db:
        seen: list[bytes | None] = []
        out = shell(addresses, [
            f"create-keyspace {ks}",
            "begin",
            f"put {ks} k pending",
            lambda: seen.append(db.read(ks, b"k")),
            "commit",
            lambda: seen.append(db.read(ks, b"k")),
        ])
    assert seen == [None, b"pending"]
    assert out[-1].startswith("committed at ts ")


def test_a_conflicting_commit_is_reported_and_rolled_back(addresses, ks):
    with connect_blocking(addresses) as db:
        def concurrent_writer():
            # Commits the key after the shell's transaction took its snapshot.
            db.run_transaction(lambda tx: tx.put(ks, b"x", b"theirs"))

        out = shell(addresses, [
            f"create-keyspace {ks}",
            f"put {ks} x 0",
            "begin",
            f"get {ks} x",
            f"put {ks} x mine",
            concurrent_writer,
            "commit",
            "commit",
            f"get {ks} x",
        ], code=1)
    assert out[1:] == [
        "ok",
        "begin (snapshot)",
        "0",
        "ok",
        "conflict (write_write on x): transaction rolled back",
        "error: no transaction is open",
        "theirs",
    ]


def test_a_conflict_names_the_whole_key(addresses, ks):
    """The key in the conflict line is the caller's key, in full (the client already took the
    keyspace prefix off it)."""
    with connect_blocking(addresses) as db:
        def concurrent_writer():
            db.run_transaction(lambda tx: tx.put(ks, b"alice-account", b"theirs"))

        out = shell(addresses, [
            f"create-keyspace {ks}",
            "begin",
            f"get {ks} alice-account",
            f"put {ks} alice-account mine",
            concurrent_writer,
            "commit",
        ], code=1)
    assert out[-1] == "conflict (write_write on alice-account): transaction rolled back"


def test_stale_and_strong_reads(addresses, ks):
    out = shell(addresses, f"""
create-keyspace {ks}
put {ks} k v
read {ks} k
read {ks} k bounded:5
read {ks} k exact:0
read {ks} k fresh:1
""", code=1)
    assert out[2] == "v" and out[3].startswith("(read at ts ")
    assert out[4] in ("v", "(not found)") and out[5].startswith("(read at ts ")
    assert out[6] == "v" and out[7].startswith("(read at ts ")
    assert out[8].startswith("error: staleness 'fresh:1'")


def test_status_table(addresses):
    out = shell(addresses, "status")
    assert out[0].split() == ["NODE", "REGION", "GROUP", "ROLE", "LEADER", "TERM", "APPLIED",
                              "CLOSED_TS"]
    rows = [line.split() for line in out[1:]]
    assert len(rows) == 2  # one node: the meta group and the region's data group
    for node, region, _group, role, leader, term, applied, closed_ts in rows:
        assert (node, region, role, leader) == ("1", "us-east", "leader", "1")
        assert int(term) >= 1 and int(applied) >= 1 and int(closed_ts) > 0


def test_values_that_are_not_utf8_print_as_bytes(addresses, ks):
    with connect_blocking(addresses) as db:
        db.create_keyspace(ks)
        db.run_transaction(lambda tx: tx.put(ks, b"bin", b"\xff\x00"))
        db.run_transaction(lambda tx: tx.put(ks, "snow", "\u2603"))
    out = shell(addresses, f"get {ks} bin\nget {ks} snow")
    assert out == ["b'\\xff\\x00'", "\u2603"]
    assert show(b"\xff") == "b'\\xff'" and show(None) == "(not found)"


def test_keys_and_values_with_control_characters_print_as_bytes(addresses, ks):
    # Binary keys are often valid UTF-8 (a small big-endian integer is all control
    # characters): printed as text, such a key showed as nothing at all, a newline broke a
    # scan's one line per row, and a carriage return or a terminal escape overwrote what was
    # printed before it on the screen.
    def load(tx):
        tx.put(ks, b"\x00\x00\x00\x07", b"seven")
        tx.put(ks, b"user\n7", b"real\r\x1b[2Kfake")

    with connect_blocking(addresses) as db:
        db.create_keyspace(ks)
        db.run_transaction(load)
    out = shell(addresses, f"scan {ks}")
    assert out == ["b'\\x00\\x00\\x00\\x07' = seven",
                   "b'user\\n7' = b'real\\r\\x1b[2Kfake'",
                   "(2 rows)"]
    assert show(b"Alice Liddell") == "Alice Liddell" and show("\u2603".encode()) == "\u2603"


def test_a_value_ending_in_whitespace_other_than_a_separator_is_stored_whole(addresses, ks):
    # The line was stripped of every Unicode blank before it was split: "v" plus a no-break
    # space was stored as "v", and a space escaped at the end was an error.
    out = shell(addresses, [f"create-keyspace {ks}", f"put {ks} nbsp v\u00a0",
                            f"put {ks} unit v\x1f", f"put {ks} space v\\ ", "  # a comment",
                            f"put {ks} crlf v\r"])
    assert out[1:] == ["ok"] * 4
    with connect_blocking(addresses) as db:
        assert dict(db.run_transaction(lambda tx: tx.scan(ks))) == {
            b"nbsp": "v\u00a0".encode(), b"unit": b"v\x1f", b"space": b"v ", b"crlf": b"v"}


def test_bytes_that_are_not_utf8_typed_or_piped_in_are_stored_as_they_are(addresses, ks):
    # A script piped in with a byte that is not UTF-8 (stdin decoding strictly, as it does in
    # an en_US.UTF-8 locale) used to end the shell with a UnicodeDecodeError traceback; with a
    # surrogateescape stdin (a C.UTF-8 locale) it was a UnicodeEncodeError line instead.
    script = f"create-keyspace {ks}\nput {ks} k\xff v\xfe\nget {ks} k\xff\nscan {ks}\n"
    stdin = io.TextIOWrapper(io.BytesIO(script.encode("latin-1")), encoding="utf-8",
                             errors="strict")
    out = io.StringIO()
    assert run_shell(addresses, None, stdin=stdin, stdout=out) == 0
    assert out.getvalue().splitlines()[1:] == [
        "ok", "b'v\\xfe'", "b'k\\xff' = b'v\\xfe'", "(1 row)"]
    with connect_blocking(addresses) as db:
        assert db.run_transaction(lambda tx: tx.get(ks, b"k\xff")) == b"v\xfe"


# ---------------------------------------------------------------------- errors


def test_errors_print_one_line_and_the_shell_goes_on(addresses, ks):
    out = shell(addresses, f"""
frobnicate
get
get no-such-keyspace k
put no-such-keyspace k v
scan no-such-keyspace
drop-keyspace no-such-keyspace
create-keyspace "Bad Name"
put {ks} "unclosed
scan {ks} --limit
scan {ks} --limit ²
scan {ks} --sideways
begin chaos
commit
rollback
create-keyspace {ks}
create-keyspace {ks}
create-keyspace {ks}-x mars
get {ks} ""
# a comment, then a blank line

get {ks} k
""", code=1)
    assert out == [
        "error: unknown command 'frobnicate' (type 'help')",
        "error: usage: get KS KEY",
        "error: keyspace 'no-such-keyspace' does not exist",
        "error: keyspace 'no-such-keyspace' does not exist",
        "error: keyspace 'no-such-keyspace' does not exist",
        "error: keyspace 'no-such-keyspace' does not exist",
        out[6],
        "error: No closing quotation",
        "error: --limit needs a whole number",
        "error: --limit needs a whole number",
        "error: unknown option '--sideways' for scan",
        "error: isolation must be one of snapshot, serializable",
        "error: no transaction is open",
        "error: no transaction is open",
        f"created keyspace {ks} (home us-east)",
        f"error: keyspace '{ks}' already exists",
        out[16],
        "error: keys must not be empty",
        "(not found)",
    ]
    assert out[6].startswith("error: bad keyspace name 'Bad Name'")
    assert out[16].startswith("error: ") and "mars" in out[16]
    assert not any("Traceback" in line for line in out)


def test_an_empty_home_region_is_refused(addresses, ks):
    # It was taken for no region given: the keyspace was made in this client's region.
    out = shell(addresses, f"create-keyspace {ks} ''\nkeyspaces", code=1)
    assert out[0] == "error: home_region must be None or one of us-east, not ''"
    assert not any(line.startswith(f"{ks} ") for line in out[1:])


def test_unknown_keyspace_inside_a_transaction_keeps_it_open(addresses, ks):
    out = shell(addresses, f"""
create-keyspace {ks}
begin
put {ks} a 1
get nope a
commit
get {ks} a
""", code=1)
    assert out[1:] == ["begin (snapshot)", "ok", "error: keyspace 'nope' does not exist",
                       out[4], "1"]
    assert out[4].startswith("committed at ts ")


# ---------------------------------------------------------------------- the session


def test_quit_exit_and_eof_end_the_session(addresses, ks):
    assert shell(addresses, "help\nquit\nget x y")[0] == "commands:"
    assert shell(addresses, "exit\nfrobnicate") == []
    assert shell(addresses, "") == []
    # EOF with a transaction open rolls it back.
    out = shell(addresses, f"create-keyspace {ks}\nbegin\nput {ks} k v")
    assert out[-1] == "open transaction rolled back"
    assert shell(addresses, f"get {ks} k") == ["(not found)"]


def test_quit_exit_and_help_with_arguments_are_usage_errors(addresses):
    # The arguments were ignored: "quit now" ended the session, "help foo" printed the help.
    out = shell(addresses, "help foo bar\nquit now\nexit 0\nkeyspaces\nquit", code=1)
    assert out[:3] == ["error: usage: help", "error: usage: quit", "error: usage: exit"]
    assert len(out) > 3  # the session went on to list the keyspaces


def test_a_script_in_which_a_command_failed_exits_1(addresses, ks):
    # `meridian shell < script` used to exit 0 whatever failed in the script -- a commit lost
    # to a conflict, a mistyped command -- so a job running it carried on as if every write
    # had been made. The rest of the script still runs.
    out = shell(addresses, f"create-keyspace {ks}\ncommit\nput {ks} b 2", code=1)
    assert out == [f"created keyspace {ks} (home us-east)", "error: no transaction is open",
                   "ok"]
    assert shell(addresses, f"get {ks} b") == ["2"]  # a script without a failure: 0
    # At a terminal each error was seen as it happened: leaving is no failure.
    assert shell(addresses, "commit", tty=True)[1] == PROMPT + "error: no transaction is open"


def test_prompt_only_on_a_terminal(addresses):
    assert shell(addresses, "keyspaces", tty=False)[0].split()[0] == "NAME"
    out = "\n".join(shell(addresses, "keyspaces", tty=True))
    assert out.startswith("connected to cluster 'local' in region us-east")
    assert out.count(PROMPT) == 2  # before the command and before the end of input


def test_cannot_connect_prints_an_error_and_returns_1():
    out = io.StringIO()
    port = free_base_port(1)  # nothing listens there
    rc = run_shell([f"127.0.0.1:{port}"], None, stdin=io.StringIO("keyspaces\n"), stdout=out,
                   request_timeout_s=0.5)
    assert rc == 1
    assert out.getvalue().startswith("error: cannot connect: no node answered")
    assert out.getvalue().count("\n") == 1


def test_a_node_address_that_is_not_utf8_is_one_error_line():
    # `meridian shell --nodes $'h\xff:1'` with a strict UTF-8 stdout (an en_US.UTF-8 locale):
    # the error naming the address held the byte as it came, and printing it raised a
    # UnicodeEncodeError traceback.
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    rc = run_shell(["h\udcff:1"], None, stdin=io.StringIO("keyspaces\n"), stdout=out)
    out.flush()
    assert rc == 1
    assert raw.getvalue().decode() == (
        "error: cannot connect: bad node address: expected a host name or IP address "
        "(letters, digits, '.', '-', ':', '%'), got \"h\\udcff\"\n")


def test_ctrl_c_while_connecting_exits_130_with_one_line(monkeypatch, capsys):
    """``meridian shell`` interrupted before its prompt (still connecting): no traceback."""
    import engine.shell
    from engine.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.shell, "connect_blocking", interrupted)
    try:
        rc = main(["shell", "--nodes", "127.0.0.1:1"])
    except KeyboardInterrupt:  # would end the whole test run
        pytest.fail("the KeyboardInterrupt escaped (a traceback)")
    assert rc == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "meridian shell: interrupted\n"


def test_bad_staleness_is_one_error_line(addresses, ks):
    out = shell(addresses, f"""
create-keyspace {ks}
read {ks} k bounded:1e300
read {ks} k exact:1e12
read {ks} k bounded:5
""", code=1)
    assert out[1].startswith("error: staleness 'bounded:1e300': expected 'exact:<seconds>' or "
                             "'bounded:<seconds>' with 0 <= seconds <= ")
    assert out[2].startswith("error: staleness 'exact:1e12': expected")
    assert out[3] == "(not found)"


def test_node_addresses_listed_with_spaces_are_the_addresses(monkeypatch):
    """``--nodes "a:1, b:2"``: the client tried to resolve the host " b" and, after its
    connect timeout, said no node answered ("Name or service not known")."""
    import engine.shell
    from engine.cli import main

    seen = []

    def connect(nodes, **kwargs):
        seen.append(nodes)
        raise KeyboardInterrupt  # ends the shell at once

    monkeypatch.setattr(engine.shell, "connect_blocking", connect)
    assert main(["shell", "--nodes", "127.0.0.1:7101, 127.0.0.1:7103 ,"]) == 130
    assert seen == [["127.0.0.1:7101", "127.0.0.1:7103"]]


def test_a_commit_cut_short_by_ctrl_c_says_its_outcome_is_unknown(addresses, ks, monkeypatch):
    # The commit was sent, and applied, when Ctrl-C came: the shell said only "interrupted",
    # which reads as if nothing had been written.
    from engine.blocking import BlockingTransaction

    commit = BlockingTransaction.commit

    def commit_then_interrupted(tx):
        commit(tx)
        monkeypatch.undo()  # the first commit only
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockingTransaction, "commit", commit_then_interrupted)
    out = shell(addresses, [f"create-keyspace {ks}", "begin", f"put {ks} k v", "commit",
                            "commit", f"get {ks} k"], tty=True)
    lines = [line.removeprefix(PROMPT) for line in out]
    assert lines[-5:] == ["", "interrupted: the transaction may or may not have committed",
                          "error: no transaction is open", "v", ""]


def test_a_commit_that_fails_says_the_transaction_is_over(addresses, ks, monkeypatch):
    # No node answered the commit: nothing was committed and the transaction is over, but
    # the line gave only the node's error, as if the commit could be tried again.
    from engine.blocking import BlockingTransaction
    from engine.errors import UnavailableError

    def unanswered(tx):
        tx.rollback()
        monkeypatch.undo()  # the first commit only
        raise UnavailableError("group 100 did not answer 'commit' within 1.0 s")

    monkeypatch.setattr(BlockingTransaction, "commit", unanswered)
    out = shell(addresses, [f"create-keyspace {ks}", "begin", f"put {ks} k v", "commit",
                            f"get {ks} k"], code=1)
    assert out[1:] == [
        "begin (snapshot)", "ok",
        "error: group 100 did not answer 'commit' within 1.0 s: transaction rolled back",
        "(not found)"]


def test_ctrl_c_stops_a_script(addresses, ks):
    # `meridian shell < script`: Ctrl-C dropped only the command running and the script went
    # on -- here committing the transaction the user meant to stop -- with no way to stop
    # it short of killing the process.
    def ctrl_c():
        raise KeyboardInterrupt

    out = shell(addresses, [f"create-keyspace {ks}", "begin", f"put {ks} k v", ctrl_c,
                            "commit", f"put {ks} other x"], code=130)
    assert out[-3:] == ["ok", "interrupted", "open transaction rolled back"]
    with connect_blocking(addresses) as db:
        assert db.run_transaction(lambda tx: tx.scan(ks)) == []


def _meridian_shell(addresses, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "shell", "--nodes", addresses[0]],
                          stderr=subprocess.PIPE, text=True, timeout=60, **kwargs)


def test_a_closed_stdin_is_one_error_line(addresses):
    # `meridian shell <&-` ended with an AttributeError traceback (sys.stdin is None).
    done = _meridian_shell(addresses, stdout=subprocess.DEVNULL,
                           preexec_fn=lambda: os.close(0))
    assert done.returncode == 2
    assert done.stderr == "meridian shell: its standard input and output must be open\n"


def test_output_read_by_a_command_that_stops_reading_ends_quietly(addresses):
    # `meridian shell < script | head -1`: when head had its line the shell printed "Broken
    # pipe" and, with output still buffered, the interpreter an "Exception ignored ...
    # BrokenPipeError" report on its way out.
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = _meridian_shell(addresses, input="keyspaces\nstatus\n", stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


# ------------------------------------------------------------------ splitting lines into words


def test_a_value_of_the_largest_size_is_stored_and_shown_whole(addresses, ks):
    # A value of max_value_size is stored and read back whole; one byte more is refused.
    with connect_blocking(addresses) as db:
        size = db.limits["max_value_size"]
    value = "v" * size
    out = shell(addresses, [f"create-keyspace {ks}", f"put {ks} k {value}", f"get {ks} k",
                            f'put {ks} q "{value} "', f"put {ks} big {value}vv"], code=1)
    assert out[1:3] == ["ok", value]
    assert out[3].startswith("error: ") and str(size) in out[3]  # one byte over
    assert out[4].startswith("error: ") and str(size) in out[4]
    assert len(out) == 5


class _EndlessLine(io.RawIOBase):
    """``size`` bytes of one line without its end, made as they are read, then ``tail``."""

    def __init__(self, size: int, tail: bytes) -> None:
        self._left = size
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left > 0:
            n = min(len(buffer), self._left)
            buffer[:n] = b"v" * n
            self._left -= n
            return n
        n = min(len(buffer), len(self._tail))
        buffer[:n], self._tail = self._tail[:n], self._tail[n:]
        return n


def test_a_line_longer_than_any_command_is_skipped_without_being_held(addresses, ks):
    # `meridian shell < file` with a file that has no line ends (binary data, /dev/zero): the
    # shell read the whole of it as one line before it said anything, its memory growing
    # with the file's size.
    import tracemalloc

    size = 64 << 20
    stdin = io.TextIOWrapper(io.BufferedReader(_EndlessLine(
        size, f"\ncreate-keyspace {ks}\nget {ks} k\n".encode())), encoding="utf-8")
    out = io.StringIO()
    tracemalloc.start()
    try:
        rc = run_shell(addresses, None, stdin=stdin, stdout=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = out.getvalue().splitlines()
    assert rc == 1
    assert lines[0].startswith("error: a line of more than ") and lines[0].endswith(
        " characters: skipped")
    assert lines[1:] == [f"created keyspace {ks} (home us-east)", "(not found)"]
    assert peak < size // 4, peak


def test_splitting_a_line_takes_time_linear_in_its_length():
    # shlex builds a word one character at a time, in time quadratic in its length: a 1 MiB
    # value took some 15 s of CPU before it was even sent. A ratio of two sizes, not a time:
    # 16 times the line takes ~16 times as long when linear, ~256 times when quadratic.
    def cost(n: int) -> float:
        line = "put ks k " + "v" * n
        return min(timeit.repeat(lambda: _split(line), number=1, repeat=3))

    small, big = cost(1 << 16), cost(1 << 20)
    assert big < 64 * small, (small, big)


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


def test_a_shell_for_a_default_cluster_that_is_not_running_says_so_at_once(
        tmp_path, monkeypatch, capsys):
    # Connecting to nodes that are all down retries for the whole request timeout (10 s)
    # and then names only the addresses; the cluster `meridian cluster up` made is known to
    # be down from its pid files, and what to do is known too.
    from engine.cli import DEFAULT_CLUSTER_DIR, main
    from engine.config import NodeConfig, default_local_cluster, dump_node_config

    import engine.shell

    directory = tmp_path / DEFAULT_CLUSTER_DIR
    directory.mkdir()
    cluster = default_local_cluster(("east",), 1, 1, wan_latency_ms={})
    (node,) = cluster.all_nodes()
    (directory / f"node-{node.id}.toml").write_text(dump_node_config(
        NodeConfig(node_id=node.id, data_dir=str(directory / "n"), cluster=cluster)))

    def connects(*args, **kwargs):
        pytest.fail("the shell tried to connect to a cluster none of whose nodes runs")

    monkeypatch.setattr(engine.shell, "connect_blocking", connects)
    monkeypatch.chdir(tmp_path)
    assert main(["shell"]) == 1
    err = capsys.readouterr().err
    assert "no node of the cluster in .meridian-cluster is running" in err, err
    assert "meridian cluster up" in err, err
