"""``meridian shell``: an interactive prompt over the blocking client.

Example session::

    $ meridian shell --nodes 127.0.0.1:7101
    meridian> create-keyspace users
    created keyspace users (home us-east)
    meridian> put users alice "Alice Liddell"
    ok
    meridian> begin
    begin (snapshot)
    meridian> get users alice
    Alice Liddell
    meridian> put users bob Bob
    ok
    meridian> commit
    committed at ts 1795900109100793170

Lines are split like a POSIX shell (:mod:`shlex`), so quote values with spaces. Keys and values
are typed as text and stored as UTF-8; bytes of the input that are not UTF-8 are stored as they
are. A word that is a whole Python bytes literal -- ``b'\\x00\\xff'`` or ``b"it's"``, ASCII
characters and the escapes ``\\xHH``, ``\\n``, ``\\t``, ``\\\\``, ... -- is the bytes it spells, so
any key or value can be typed. Keys and values read back are shown as text when they are valid
UTF-8 without control characters (and neither ``(not found)``, what a missing key shows, nor text
that starts like a bytes literal), and as a Python bytes literal otherwise; a key shown as text
is quoted when it holds a space, a quote or a backslash. So every key the shell prints can be
typed back as it is printed. At a terminal a row of ``scan`` shows at most
:data:`SCAN_VALUE_CHARS` characters of its value, saying so (``get`` shows it whole).
Outside ``begin`` … ``commit`` every ``get``, ``put``, ``delete`` and ``scan`` is a transaction
of its own (retried on conflict); inside, they belong to the open transaction. An error prints
one line, ``error: <message>``, and the shell goes on. The prompt is shown only when the input
is a terminal, so scripts can be piped in; a script in which a command failed ends with exit
status 1. A piped line longer than any command can be (a key and a value of the largest sizes)
is an error too, skipped without being read into memory whole.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from typing import TextIO, cast

from .blocking import BlockingDatabase, BlockingTransaction, connect_blocking
from .client import ISOLATION_LEVELS, MAX_SCAN_LIMIT
from .errors import (AmbiguousCommitError, MeridianError, TransactionClosedError,
                     TransactionConflictError)
from .rpc import RemoteError

__all__ = ["run_shell", "PROMPT", "HELP", "show", "show_key"]

PROMPT = "meridian> "
NOT_FOUND = "(not found)"
# At a terminal, the most characters of a value that a row of scan shows: a value of a few MiB
# printed whole filled the screen's history many times over and buried the keys listed.
SCAN_VALUE_CHARS = 200
# The most rows a scan without --limit lists: the rows are read into memory before they are
# printed, and a scan of a whole large keyspace would read it all.
SCAN_ROWS = 1000

HELP = f"""\
commands:
  keyspaces                                  list the keyspaces
  create-keyspace NAME [HOME_REGION]         create a keyspace (home: this client's region)
  drop-keyspace NAME                         drop a keyspace
  get KS KEY                                 read a key
  put KS KEY VALUE                           write a key
  delete KS KEY                              delete a key
  scan KS [START [END]] [--limit N] [--reverse]
                                             list keys in [START, END) (up to {SCAN_ROWS}
                                             without --limit)
  read KS KEY [exact:S|bounded:S]            read outside any transaction, strong or stale
  begin [snapshot|serializable]              open a transaction
  commit                                     commit the open transaction
  rollback                                   discard the open transaction
  status                                     every node's groups: role, leader, term, ...
  help                                       this text
  quit | exit                                leave (an open transaction is rolled back)
Quote arguments with spaces: put users alice "Alice Liddell".
Write any bytes as a Python bytes literal, one whole word: put users b'\\x00\\x07' b"it's".
Keys and values that are not printable text are shown in that form, so a key that scan
prints can be typed back as it is printed; a key that starts with -- is given to scan
after --: scan users -- --key."""


class _UsageError(Exception):
    """A command typed wrongly; its message is printed as the error line."""


class _LineTooLong(Exception):
    """A line of the input longer than any command can be: skipped, never held whole."""


def _longest_line(limits: dict) -> int:
    """The most characters a command's line needs: a key and a value of the cluster's largest
    sizes written as bytes literals (four characters, ``\\xHH``, a byte), and room for the
    rest."""
    return 4 * (limits["max_key_size"] + limits["max_value_size"]) + 4096


_PIECE = re.compile(r"""
      ([^ \t\r\n'"\\]+)       # characters as they are
    | \\(.)                    # a backslash keeps the next character as it is
    | '([^']*)'                # single quotes keep every character as it is
    | "((?:[^"\\]+|\\.)*+)"    # double quotes: a backslash escapes only " and itself
    | ([ \t\r\n]+)             # the space between two words
    """, re.VERBOSE | re.DOTALL)
_ESCAPED_IN_QUOTES = re.compile(r'\\([\\"])')
_UNESCAPED_END = re.compile(r'"(?:[^"\\]+|\\.)*+\\', re.DOTALL)
# Possessive (*+): with a plain * a quote that nothing closes made the match try every way of
# cutting the rest of the line into runs, in time exponential in its length -- 30 characters
# after an unclosed " kept the shell busy for minutes.
# A word that is a whole bytes literal, as repr() prints one: up to the space after it.
_BYTES_LITERAL = re.compile(r"""b(?:'(?:[^'\\]+|\\.)*+'|"(?:[^"\\]+|\\.)*+")(?=[ \t\r\n]|\Z)""",
                            re.DOTALL)


def _split(line: str) -> list[str]:
    """The words of ``line`` as ``shlex.split`` makes them (POSIX rules, no comments), in time
    linear in its length: shlex adds a word's characters one at a time, which takes time
    quadratic in the word's length -- a value of a few MiB kept the shell busy for minutes.

    Raises:
        ValueError: an unclosed quote, or a backslash at the end (shlex's messages).
    """
    return cast("list[str]", _words(line, bytes_literals=False))


_BYTES_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.?)", re.DOTALL)
_OCTAL = re.compile(r"[0-7]{1,3}")
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t", "v": "\v"}


def _bytes_literal(text: str) -> bytes:
    """The bytes a Python bytes literal (``b'...'`` or ``b"..."``, as :func:`_BYTES_LITERAL`
    matches it) spells, with Python's escapes and no others.

    Raises:
        ValueError: a character that is not ASCII, or an escape Python does not know.
    """
    if not text.isascii():
        raise ValueError("bad bytes literal: a character that is not ASCII (write its UTF-8 "
                         "bytes as \\xHH)")

    def unescape(match: re.Match) -> str:
        escape = match.group(1)
        if len(escape) == 3 and escape[0] == "x":
            return chr(int(escape[1:], 16))
        if _OCTAL.fullmatch(escape) and int(escape, 8) <= 0xff:
            return chr(int(escape, 8))
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        bad = "\\" + (escape if escape != "x" else match.string[match.end() - 1:][:3])
        raise ValueError(f"bad bytes literal: bad escape {bad} (escapes: \\xHH, \\n, \\r, "
                         f"\\t, \\\\, \\', \\\", ...)")

    # Latin-1 maps the characters 0..255 that the escapes made to the bytes 0..255.
    return _BYTES_ESCAPE.sub(unescape, text[2:-1]).encode("latin-1")


def _words(line: str, *, bytes_literals: bool = True) -> list[str | bytes]:
    """The words of ``line`` as :func:`_split` makes them, except that a word that is a whole
    bytes literal (``b'\\x00'``, ``b"it's"``) is the bytes it spells.

    Raises:
        ValueError: an unclosed quote, a backslash at the end, or a bad bytes literal.
    """
    words: list[str | bytes] = []
    word: list[str] | None = None  # the pieces of the word being read
    pos = 0
    while pos < len(line):
        if word is None and bytes_literals:
            literal = _BYTES_LITERAL.match(line, pos)
            if literal is not None:
                words.append(_bytes_literal(literal.group()))
                pos = literal.end()
                continue
        match = _PIECE.match(line, pos)
        if match is None:  # at a quote or backslash that nothing closes
            rest = line[pos:]
            if rest == "\\" or _UNESCAPED_END.fullmatch(rest):
                raise ValueError("No escaped character")
            raise ValueError("No closing quotation")
        pos = match.end()
        plain, escaped, single, double, space = match.groups()
        if space is not None:
            if word is not None:
                words.append("".join(word))
                word = None
            continue
        if word is None:
            word = []
        if double is not None:
            word.append(_ESCAPED_IN_QUOTES.sub(r"\1", double))
        else:
            word.append(plain or escaped or single or "")
    if word is not None:
        words.append("".join(word))
    return words


_Word = str | bytes  # a word of a command; bytes when written as a bytes literal


def _raw(word: _Word) -> bytes:
    """A key or value as typed: the bytes of a bytes literal; text as UTF-8, and any input byte
    that is not UTF-8 as itself (the input is read with ``surrogateescape``, see
    :func:`run_shell`)."""
    if isinstance(word, bytes):
        return word
    return word.encode("utf-8", "surrogateescape")


def _text(word: _Word) -> str:
    """A word that is not a key or value (a keyspace, an option): never a bytes literal."""
    if isinstance(word, bytes):
        raise _UsageError(f"only keys and values can be bytes literals, not {word!r:.40}")
    return word


def show(data: bytes | None) -> str:
    """How the shell prints a key or value: text when it is UTF-8 and printable, a bytes
    literal when not -- a control character printed as it is would show as nothing, break the
    one line per row, or (a carriage return, a terminal escape) overwrite what came before.
    Text that reads as what the shell shows for something else (a missing key, a bytes
    literal) is shown as a bytes literal too."""
    if data is None:
        return NOT_FOUND
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)
    if text == NOT_FOUND or text.startswith(("b'", 'b"')):
        return repr(data)
    return text if text.isprintable() else repr(data)


_NEEDS_QUOTES = re.compile(r"""[ '"\\]""")  # the parser's separator, quotes and escape


def show_key(key: bytes) -> str:
    """How the shell prints a key where other words follow it (a scan's rows, a conflict's
    line): as :func:`show` does, and quoted when it holds a character that the parser takes for
    the end of the word, a quote or an escape -- printed bare, ``a b`` or ``it's`` could not be
    typed back. What is printed, typed as a word, is the key."""
    shown = show(key)
    # show() prints no text that starts like a bytes literal: this one is a literal.
    if shown.startswith(("b'", 'b"')) or not _NEEDS_QUOTES.search(shown):
        return shown
    if "'" not in shown:
        return f"'{shown}'"
    return repr(key)  # a quote of each kind: the bytes literal keeps the reading simple


def _limit(word: _Word | None) -> int:
    """The N of ``scan --limit N``: a whole number the client takes (0 lists no rows)."""
    if not (isinstance(word, str) and word.isascii() and word.isdigit()):  # not "²" or "-1"
        raise _UsageError("--limit needs a whole number")
    # Not int(word) first: it refuses more than 4300 digits with a message about
    # sys.set_int_max_str_digits.
    digits = word.lstrip("0") or "0"
    if len(digits) > len(str(MAX_SCAN_LIMIT)) or int(digits) > MAX_SCAN_LIMIT:
        raise _UsageError(f"--limit must be at most {MAX_SCAN_LIMIT}")
    return int(digits)


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return exc.message or exc.code
    if isinstance(exc, MeridianError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _conflict_line(exc: TransactionConflictError) -> str:
    reason = exc.reason or "conflict"
    # The client reports the caller's key (it strips the keyspace prefix the node sent).
    if isinstance(exc.key, bytes):
        reason += f" on {show_key(exc.key)}"
    return f"conflict ({reason}): transaction rolled back"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in [header, *rows]]


class _Shell:
    """The command interpreter: one instance per session, fed one line at a time."""

    def __init__(self, db: BlockingDatabase, out: TextIO, *, cut_values: bool = False) -> None:
        self.db = db
        self.out = out
        self.cut_values = cut_values  # scan rows show SCAN_VALUE_CHARS of a value at most
        self.tx: BlockingTransaction | None = None
        self.failed = False  # a command printed an error or conflict line
        self.commands: dict[str, tuple[Callable[[list[_Word]], None], str]] = {
            "help": (self.do_help, "help"),
            "keyspaces": (self.do_keyspaces, "keyspaces"),
            "create-keyspace": (self.do_create_keyspace, "create-keyspace NAME [HOME_REGION]"),
            "drop-keyspace": (self.do_drop_keyspace, "drop-keyspace NAME"),
            "get": (self.do_get, "get KS KEY"),
            "put": (self.do_put, "put KS KEY VALUE"),
            "delete": (self.do_delete, "delete KS KEY"),
            "scan": (self.do_scan, "scan KS [START [END]] [--limit N] [--reverse]"),
            "read": (self.do_read, "read KS KEY [exact:S|bounded:S]"),
            "begin": (self.do_begin, "begin [snapshot|serializable]"),
            "commit": (self.do_commit, "commit"),
            "rollback": (self.do_rollback, "rollback"),
            "status": (self.do_status, "status"),
        }

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def fail(self, text: str) -> None:
        """Prints the line saying why a command failed."""
        self.failed = True
        self.print(text)

    # ------------------------------------------------------------------ driving

    def execute(self, line: str) -> bool:
        """Runs one line; False when the session should end."""
        # Not str.strip(): it would also take a value's last characters when they are other
        # whitespace (a no-break space, \x1f), or the space a backslash at the end escapes.
        line = line.rstrip("\r\n")  # the end of the line, not a character a backslash keeps
        if line.lstrip(" \t").startswith("#"):
            return True
        try:
            words = _words(line)
        except ValueError as exc:  # an unclosed quote, a bad bytes literal
            self.fail(f"error: {exc}")
            return True
        if not words:
            return True
        name, args = words[0], words[1:]
        if name in ("quit", "exit"):
            if not args:
                return False
            self.fail(f"error: usage: {name}")
            return True
        entry = self.commands.get(name)
        if entry is None:
            self.fail(f"error: unknown command {name!r} (type 'help')")
            return True
        handler, usage = entry
        try:
            handler(args)
        except _UsageError as exc:
            self.fail(f"error: {exc}" if str(exc) else f"error: usage: {usage}")
        except TransactionConflictError as exc:
            self.tx = None
            self.fail(_conflict_line(exc))
        except TransactionClosedError as exc:
            self.tx = None
            self.fail(f"error: {_error_message(exc)}")
        except Exception as exc:  # any failure is one line; the session goes on
            self.fail(f"error: {_error_message(exc)}")
        return True

    def finish(self) -> None:
        """At the end of the session: an open transaction is rolled back."""
        if self.tx is not None:
            tx, self.tx = self.tx, None
            try:
                tx.rollback()
            except MeridianError:
                pass  # only local state would have been discarded
            self.print("open transaction rolled back")

    # ------------------------------------------------------------------ helpers

    def _run(self, fn: Callable[[BlockingTransaction], object]) -> object:
        """``fn(tx)`` in the open transaction, or in one of its own (committed, retried)."""
        if self.tx is not None:
            return fn(self.tx)
        return self.db.run_transaction(fn)

    @staticmethod
    def _arity(args: list[_Word], low: int, high: int | None = None) -> None:
        if not low <= len(args) <= (low if high is None else high):
            raise _UsageError()

    # ------------------------------------------------------------------ commands

    def do_help(self, args: list[_Word]) -> None:
        self._arity(args, 0)
        self.print(HELP)

    def do_keyspaces(self, args: list[_Word]) -> None:
        self._arity(args, 0)
        spaces = sorted(self.db.list_keyspaces(), key=lambda k: k.name)
        if not spaces:
            self.print("(no keyspaces)")
            return
        for line in _table(["NAME", "HOME", "MODE", "ID"],
                           [[k.name, k.home, k.mode, str(k.id)] for k in spaces]):
            self.print(line)

    def do_create_keyspace(self, args: list[_Word]) -> None:
        self._arity(args, 1, 2)
        ks = self.db.create_keyspace(_text(args[0]),
                                     home_region=_text(args[1]) if len(args) > 1 else None)
        self.print(f"created keyspace {ks.name} (home {ks.home})")

    def do_drop_keyspace(self, args: list[_Word]) -> None:
        self._arity(args, 1)
        name = _text(args[0])
        self.db.drop_keyspace(name)
        self.print(f"dropped keyspace {name}")

    def do_get(self, args: list[_Word]) -> None:
        self._arity(args, 2)
        ks, key = _text(args[0]), _raw(args[1])
        self.print(show(self._run(lambda tx: tx.get(ks, key))))

    def do_put(self, args: list[_Word]) -> None:
        self._arity(args, 3)
        ks, key, value = _text(args[0]), _raw(args[1]), _raw(args[2])
        self._run(lambda tx: tx.put(ks, key, value))
        self.print("ok")

    def do_delete(self, args: list[_Word]) -> None:
        self._arity(args, 2)
        ks, key = _text(args[0]), _raw(args[1])
        self._run(lambda tx: tx.delete(ks, key))
        self.print("ok")

    def do_scan(self, args: list[_Word]) -> None:
        positional: list[_Word] = []
        limit: int | None = None
        reverse = False
        it = iter(args)
        for word in it:
            if word == "--reverse":
                reverse = True
            elif word == "--limit":
                if limit is not None:
                    raise _UsageError("--limit is given twice")
                limit = _limit(next(it, None))
            elif word == "--":
                positional.extend(it)
            elif isinstance(word, str) and word.startswith("--"):
                raise _UsageError(f"unknown option {word!r} for scan")
            else:
                positional.append(word)
        self._arity(positional, 1, 3)
        ks = _text(positional[0])
        start = _raw(positional[1]) if len(positional) > 1 else b""
        end = _raw(positional[2]) if len(positional) > 2 else None
        fetch = SCAN_ROWS + 1 if limit is None else limit
        rows = self._run(lambda tx: tx.scan(ks, start, end, limit=fetch, reverse=reverse))
        more = limit is None and len(rows) > SCAN_ROWS
        if more:
            rows = rows[:SCAN_ROWS]
        for key, value in rows:
            shown = show(value)
            if self.cut_values and len(shown) > SCAN_VALUE_CHARS:
                # Said at the end of the row, so a value cut is not taken for a value.
                shown = (f"{shown[:SCAN_VALUE_CHARS]}... (cut: {len(value)} bytes; get "
                         f"shows all of it)")
            self.print(f"{show_key(key)} = {shown}")
        if more:
            on = ("END the last key shown" if reverse
                  else "START just after the last key shown")
            self.print(f"({SCAN_ROWS} rows shown; there are more: give --limit N for up to N, "
                       f"or scan again with {on})")
        else:
            self.print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")

    def do_read(self, args: list[_Word]) -> None:
        self._arity(args, 2, 3)
        staleness = _text(args[2]) if len(args) > 2 else None
        value, ts = self.db.read_version(_text(args[0]), _raw(args[1]), staleness=staleness)
        self.print(show(value))
        self.print(f"(read at ts {ts})")

    def do_begin(self, args: list[_Word]) -> None:
        self._arity(args, 0, 1)
        isolation = _text(args[0]) if args else "snapshot"
        if isolation not in ISOLATION_LEVELS:
            raise _UsageError(f"isolation must be one of {', '.join(ISOLATION_LEVELS)}")
        if self.tx is not None:
            raise _UsageError("a transaction is already open (commit or rollback first)")
        self.tx = self.db.transaction(isolation)
        self.print(f"begin ({isolation})")

    def do_commit(self, args: list[_Word]) -> None:
        self._arity(args, 0)
        if self.tx is None:
            raise _UsageError("no transaction is open")
        tx, self.tx = self.tx, None  # whatever happens, this transaction is over
        try:
            tx.commit()
        except KeyboardInterrupt:
            # Cut short once sent, a commit may still be applied: "interrupted" alone reads
            # as if it had not been.
            raise KeyboardInterrupt("the transaction may or may not have committed") from None
        except (TransactionConflictError, AmbiguousCommitError):
            raise  # their lines say what became of the transaction
        except MeridianError as exc:
            # Nothing was committed, and the transaction cannot be committed again: without
            # saying so, the line reads as if it were still open to retry.
            self.fail(f"error: {_error_message(exc)}: transaction rolled back")
            return
        self.print(f"committed at ts {tx.commit_ts}" if tx.commit_ts
                   else "committed (read only: nothing to write)")

    def do_rollback(self, args: list[_Word]) -> None:
        self._arity(args, 0)
        if self.tx is None:
            raise _UsageError("no transaction is open")
        tx, self.tx = self.tx, None
        tx.rollback()
        self.print("rolled back")

    def do_status(self, args: list[_Word]) -> None:
        self._arity(args, 0)
        rows: list[list[str]] = []
        notes: list[str] = []
        for node_id, view in sorted(self.db.status().items()):
            if "error" in view:
                notes.append(f"node {node_id}: error: {view['error']}")
                continue
            if view.get("clock_problem"):
                notes.append(f"node {node_id}: clock problem: {view['clock_problem']}")
            for group, g in sorted(view.get("groups", {}).items()):
                rows.append([str(node_id), str(view.get("region", "")), str(group),
                             str(g.get("role", "")), str(g.get("leader", "")),
                             str(g.get("term", "")), str(g.get("applied", "")),
                             str(g.get("closed_ts", ""))])
        if rows:
            for line in _table(["NODE", "REGION", "GROUP", "ROLE", "LEADER", "TERM",
                                "APPLIED", "CLOSED_TS"], rows):
                self.print(line)
        for note in notes:
            self.print(note)


def _line_reader(stdin: TextIO, stdout: TextIO, interactive: bool,
                 longest: int) -> Callable[[], str | None]:
    """A function returning the next line, or None at the end of the input; it raises
    :class:`_LineTooLong` for a line of more than ``longest`` characters, read a piece at a
    time and dropped (a file without line ends piped in would otherwise fill the memory)."""
    if interactive and stdin is sys.stdin and stdout is sys.stdout:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

        def read_tty() -> str | None:
            try:
                return input(PROMPT)
            except EOFError:
                stdout.write("\n")
                return None

        return read_tty

    def read_stream() -> str | None:
        if interactive:
            stdout.write(PROMPT)
            stdout.flush()
        line = stdin.readline(longest + 1)
        if not line:
            if interactive:
                stdout.write("\n")
            return None
        if len(line) > longest and not line.endswith("\n"):
            # In pieces far smaller than a line: skipping must not hold more than reading does.
            while (rest := stdin.readline(1 << 16)) and not rest.endswith("\n"):
                pass
            raise _LineTooLong(f"a line of more than {longest} characters: skipped")
        return line

    return read_stream


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def run_shell(nodes: list[str], region: str | None, *, stdin: TextIO = sys.stdin,
              stdout: TextIO = sys.stdout, request_timeout_s: float = 10.0) -> int:
    """Runs the shell until ``quit``, ``exit`` or the end of ``stdin``.

    Args:
        nodes: ``"host:port"`` client addresses to learn the cluster from.
        region: the client's region (default: the region of the node that answers).
        stdin: where commands are read, one per line.
        stdout: where results and error lines go.

    Returns:
        0; 1 when no connection could be made (after printing an error line), or when
        ``stdin`` is not a terminal (a script) and one of its commands failed: the rest of
        the script still runs, but whatever runs it must not take it for a success. 130 when
        a script is interrupted (Ctrl-C): the rest of it does not run.
    """
    interactive = _is_tty(stdin)
    if isinstance(stdin, io.TextIOWrapper) and stdin.errors != "surrogateescape":
        # A byte that is not UTF-8 (a binary key piped in) is a key's byte, not the end of
        # the session with a UnicodeDecodeError; input() reads sys.stdin's setting too.
        stdin.reconfigure(errors="surrogateescape")
    try:
        db = connect_blocking(nodes, region=region, request_timeout_s=request_timeout_s)
    except Exception as exc:
        stdout.write(f"error: cannot connect: {_error_message(exc)}\n")
        stdout.flush()
        return 1
    with db:
        # A script's output is exact; a person at a terminal is not shown megabytes of a
        # value in a listing (get shows a value whole).
        shell = _Shell(db, stdout, cut_values=interactive)
        if interactive:
            shell.print(f"connected to cluster {db.cluster!r} in region {db.region} "
                        f"(type 'help')")
        read_line = _line_reader(stdin, stdout, interactive, _longest_line(db.limits))
        interrupted = False
        while True:
            try:
                line = read_line()
                if line is None or not shell.execute(line):
                    break
            except _LineTooLong as exc:
                shell.fail(f"error: {exc}")
            except KeyboardInterrupt as exc:
                # Ctrl-C drops the line being typed, or stops waiting for a command (which
                # may still complete: a commit interrupted so has an unknown outcome).
                message = f"interrupted: {exc}" if str(exc) else "interrupted"
                if not interactive:
                    # A script is stopped, not just its current command: no one is at a
                    # prompt to stop the rest of it.
                    shell.fail(message)
                    interrupted = True
                    break
                shell.print("")  # ends the line where the terminal echoed ^C
                shell.fail(message)
            stdout.flush()
        shell.finish()
        stdout.flush()
    if interrupted:
        return 130
    return 1 if shell.failed and not interactive else 0
