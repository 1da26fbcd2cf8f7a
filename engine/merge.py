"""Deterministic conflict resolution for ``regional`` (multi-active) keyspaces (ARCH §6).

A regional keyspace is writable in every region. Each region commits locally and ships its
committed writes to the other regions, which apply them in whatever order they arrive. The
resolver of the keyspace decides what a key holds after any set of writes, and it must decide
the same in every region: for any two arrival orders of the same writes — duplicates included —
the resulting cells are equal byte for byte. Everything here is pure: no I/O, no clock, no
randomness (the convergence test takes an explicit seed).

Writes and their identity
-------------------------
Every write carries ``(ts, origin)``: its commit timestamp (an HLC reading in ns, ARCH §5.1) and
the region that committed it. Each entry of a group gets its own timestamp (engine/group.py),
so ``(key, ts, origin)`` identifies one write: a write seen twice is a duplicate and changes
nothing. Versions are ordered as the tuple ``(ts, origin)`` (origins compare as Python strings,
code point by code point), so two regions' writes at the same timestamp still order totally.

A :class:`RemoteWrite` may also carry ``prev``, the version its origin held for the key when it
committed. It is only used to tell a concurrent overwrite from a causal one (below): it is kept
in ``lww`` and application cells but never changes what a read returns.

Cells
-----
A key's stored *cell* (:class:`Cell`) holds the merged state plus its version: the greatest
``(ts, origin)`` of every write merged into it, which never decreases. A delete leaves a
tombstone cell with its own version, so an older write arriving later cannot resurrect the key,
and since the version lives inside the cell, it survives MVCC garbage collection and snapshot
compaction (ARCH §6: "an older remote write must never overwrite a newer value").

Encoding (:func:`encode_cell`), one msgpack array, canonical (equal cells encode to equal
bytes, so regions can compare checksums)::

    [1, kind, ts, origin, state]

``kind`` names the state layout: ``"lww"``, ``"counter"``, ``"max"``, ``"add_wins_set"``, or
``"app:<name>"`` for an :class:`ApplicationResolver`. ``state`` per kind:

* ``lww``: ``[value, prev]`` — the value (bin, or nil for a tombstone) and the ``[ts, origin]``
  its write replaced at its origin (nil if unknown);
* ``app:*``: ``[value, prev, holder]`` — as ``lww``, ``prev`` being the newest write's, and
  the ``[ts, origin]`` of the newest write whose value the cell holds (nil: the value is one
  the resolver made of several writes, no write's own);
* ``counter``: ``[[origin, base_ts, base_sum, [[ts, delta], ...]], ...]`` sorted by origin,
  contributions sorted by ts (``base_sum`` is an int, or a decimal string outside int64);
* ``max``: ``[value, ts, origin]`` — the maximum and the write that holds it;
* ``add_wins_set``: ``[[[elem, [[ts, origin], ...]], ...], [[elem, [[ts, origin], ...]],
  ...], [[origin, floor_ts], ...]]`` — live elements with their add tags, removed tags
  (tombstones) by element, per-origin floors; every list sorted.

:func:`decode_cell` accepts exactly these encodings and raises
:class:`~engine.errors.CorruptStateError` for anything else (including a non-canonical
encoding of a valid cell).

Resolvers
---------
``resolver_for(name)`` gives the built-ins; :class:`ApplicationResolver` wraps a function.

``lww`` — :class:`LastWriterWins` (the default). The greater ``(ts, origin)`` wins; a delete is
    a write like any other. Write op ``"put"``, value the new bytes or ``None`` (delete).
``counter`` — :class:`CounterAdd`. A multi-active counter. Write op ``"merge"``, payload a
    signed 64-bit increment in decimal ASCII (``b"5"``, ``b"-2"``; :func:`encode_int`). Reads
    return the sum in decimal ASCII.

    *Design*: an op-based counter with identified contributions, kept per origin. Each increment
    is stored under its identity ``(ts, origin)`` in its origin's entry, so a duplicate is
    recognised exactly whatever the arrival order, and the value is the sum of the distinct
    contributions. A state-based PN-counter (per-origin positive and negative totals merged by
    max) would need the whole origin total shipped with each write; here writes are deltas, so
    identity, not max, is what makes re-delivery harmless. To bound the state,
    :meth:`Resolver.compact` folds the contributions at or below an origin's replication
    watermark into ``(base_ts, base_sum)``; a later write from that origin at or below
    ``base_ts`` is then a duplicate by the watermark's contract.
``max`` — :class:`MaxValue`. Keeps the greatest integer written; equal integers are held by the
    greater ``(ts, origin)``. Op ``"merge"``, payload a signed 64-bit integer in decimal ASCII;
    reads return the maximum the same way.
``add_wins_set`` — :class:`AddWinsSet`. An observed-remove set of byte strings. Op ``"merge"``,
    payload msgpack ``["add", elem]`` (:func:`encode_set_add`) or ``["remove", elem,
    [[ts, origin], ...]]`` (:func:`encode_set_remove`), ``elem`` a bin. An add tags ``elem``
    with the write's ``(ts, origin)``; a remove removes exactly the tags it lists — those its
    origin observed (:meth:`AddWinsSet.observed_tags`), all older than the remove's own
    ``(ts, origin)`` (a newer one is refused) — so an add concurrent with a remove
    survives it. Removed tags are remembered (tombstones) so an add that arrives after its
    remove, or twice, stays removed. An origin's writes are ordered, so its newest tag of an
    element (added or removed) supersedes its older ones: a cell holds at most one tag per
    element and origin, however often an element is added again. Reads return a msgpack
    array of the elements, sorted (:func:`decode_set`).

Merge types (counter, max, set) cannot delete a key: a counter is reset by adding its negation,
a set is emptied by removing its elements; a write with ``value=None`` is refused.

Conflicts
---------
When a write is discarded or overwritten without its overwriter having seen it, ``merge``
returns a :class:`Conflict` for the conflict log. Two writes count as causally ordered (no
conflict) when they come from the same origin, or when the newer one's ``prev`` is the older one
or a later write of the older one's origin; otherwise they count as concurrent. This test never
calls a concurrent pair ordered, so a write that the final value's writer never saw is logged in
the region where that final writer committed (each region logs what it sees); with ``prev``
missing, or across several hops, it may also log an overwrite that was in fact causal. Merge
types combine rather than overwrite and produce no conflicts.

Application resolvers
---------------------
``ApplicationResolver(fn, name)`` calls ``fn(local, remote) -> Version`` for each arriving
write once the key has a value; ``local`` is the key's value with the version of the write
that wrote it (the cell keeps it, its *holder*: the cell's own version may be a newer write's
whose value lost). ``fn`` must be deterministic (no clock, randomness or state),
commutative (``fn(a, b)`` and ``fn(b, a)`` give the same value), associative and idempotent
(``fn(a, a)`` is ``a``): a join, so that every order and every duplicate yield the same value.
When it picks one of two versions it considers equal, it must break the tie by ``(ts,
origin)``, the greater winning, as the built-ins do. The merged cell's version is always the
greater of the two inputs' whatever ``fn`` puts in those fields. :func:`check_convergence` and
:func:`hypothesis_check_convergence` test these properties on an application's resolver.

A keyspace uses one as ``resolver="app:<name>"``, once every node has it in its
``[cluster.resolvers]`` (see :mod:`engine.config`); the nodes run ``fn`` on every write to the
keyspace, local or shipped from another region, on the node's event loop: it must be quick.
When ``fn`` fails on a pair -- it raises (``KeyboardInterrupt`` and ``MemoryError`` aside,
which stop the node: one replica alone may meet them), or does not return a :class:`Version`
whose value is bytes of at most :data:`MAX_APP_VALUE_SIZE`, or None -- a local write is
refused (the commit raises ``InvalidArgumentError`` saying why), and a write shipped from
another region is merged by last writer instead (:class:`ResolverFailedError`), and logged as
a conflict naming ``"lww (<name> failed)"`` if a value was dropped: refusing it would leave
the region that committed it with a value the others never take. A transaction reads its own
pending write as written, since ``fn`` runs where the commit is applied.
"""

from __future__ import annotations

import abc
import itertools
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import CorruptStateError, InvalidArgumentError
from .mvcc import MAX_TS, MAX_VALUE_SIZE, MIN_TS

__all__ = [
    "AddWinsSet",
    "ApplicationResolver",
    "CELL_FORMAT",
    "Cell",
    "Conflict",
    "CounterAdd",
    "LastWriterWins",
    "MERGE",
    "MaxValue",
    "PUT",
    "RESOLVER_NAMES",
    "RemoteWrite",
    "Resolver",
    "ResolverFailedError",
    "Version",
    "apply_writes",
    "check_convergence",
    "decode_cell",
    "decode_int",
    "decode_set",
    "encode_cell",
    "encode_int",
    "encode_set_add",
    "encode_set_remove",
    "hypothesis_check_convergence",
    "is_resolver_name",
    "reader_for",
    "resolver_for",
    "write_op",
    "writes_strategy",
]

PUT = "put"
"""Write op of ``lww`` and application resolvers: the value replaces (``None`` deletes)."""
MERGE = "merge"
"""Write op of the merge types: the value is the type's payload."""
CELL_FORMAT = 1
RESOLVER_NAMES = ("lww", "counter", "max", "add_wins_set")
"""The built-in resolvers; an application resolver is named ``"app:<name>"``."""
APP_PREFIX = "app:"
CONFLICT_RECORD_ROOM = 4096
"""Bytes a conflict-log record takes besides the losing write's value: three timestamps, two
origins (at most 255 characters each) and a resolver's name come to less."""
MAX_APP_VALUE_SIZE = MAX_VALUE_SIZE - CONFLICT_RECORD_ROOM
"""The largest value an application resolver may make: as large as a regional write's value
may be (it can lose a conflict and be logged in its turn, see engine.group)."""

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_MSGPACK_INT_MIN, _MSGPACK_INT_MAX = -(2**63), 2**64 - 1
_MAX_ORIGIN_CHARS = 255
_APP_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_PAYLOAD_INT = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_READ_INT = re.compile(rb"0|-?[1-9][0-9]*")
_MAX_SUM_CHARS = len(str(-(2**127)))
"""The longest decimal string an origin's folded counter sum can take: at most one int64
increment per timestamp, so its magnitude stays below 2**127."""

VersionId = tuple[int, str]


# ------------------------------------------------------------------------------ data types


def _check_ts(ts: object, what: str) -> int:
    if type(ts) is not int or not MIN_TS <= ts <= MAX_TS:
        raise InvalidArgumentError(f"{what} must be an int in [{MIN_TS}, {MAX_TS}], not {ts!r}")
    return ts


def _check_origin(origin: object, what: str) -> str:
    if not isinstance(origin, str) or not 0 < len(origin) <= _MAX_ORIGIN_CHARS:
        raise InvalidArgumentError(f"{what} must be a region name (a non-empty str of at most "
                                   f"{_MAX_ORIGIN_CHARS} characters), not {origin!r}")
    return origin


def _check_version(version: object, what: str) -> VersionId:
    if not (isinstance(version, (tuple, list)) and len(version) == 2):
        raise InvalidArgumentError(f"{what} must be a (ts, origin) pair, not {version!r}")
    return (_check_ts(version[0], f"{what} ts"), _check_origin(version[1], f"{what} origin"))


@dataclass(frozen=True, slots=True)
class RemoteWrite:
    """One committed write of a regional keyspace, as replication delivers it.

    Attributes:
        key: the key written.
        value: the new value (op ``"put"``; ``None`` deletes) or the merge type's payload
            (op ``"merge"``).
        ts: the commit timestamp, ``MIN_TS <= ts <= MAX_TS``.
        origin: the region that committed the write.
        op: ``PUT`` or ``MERGE``; each resolver accepts one of them.
        prev: ``(ts, origin)`` of the key's cell at the origin when the write committed, or
            None if the key had none there or it is unknown. Only used to tell concurrent
            overwrites from causal ones for the conflict log.

    ``(key, ts, origin)`` identifies the write: two deliveries with the same identity are the
    same write.

    Raises:
        InvalidArgumentError: a field of the wrong type or out of range.
    """

    key: bytes
    value: bytes | None
    ts: int
    origin: str
    op: str = PUT
    prev: VersionId | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise InvalidArgumentError(f"key must be bytes, not {type(self.key).__name__}")
        if self.value is not None and not isinstance(self.value, bytes):
            raise InvalidArgumentError(
                f"value must be bytes or None, not {type(self.value).__name__}")
        _check_ts(self.ts, "ts")
        _check_origin(self.origin, "origin")
        if self.op not in (PUT, MERGE):
            raise InvalidArgumentError(f"op must be {PUT!r} or {MERGE!r}, not {self.op!r}")
        if self.prev is not None:
            object.__setattr__(self, "prev", _check_version(self.prev, "prev"))

    @property
    def version(self) -> VersionId:
        return (self.ts, self.origin)

    def describe(self) -> str:
        """One line such as ``ts=5 origin='eu-west' put b'x'``."""
        prev = "" if self.prev is None else f" prev={self.prev[0]}/{self.prev[1]}"
        return f"ts={self.ts} origin={self.origin!r} {self.op} {self.value!r}{prev}"


@dataclass(frozen=True, slots=True)
class Cell:
    """The stored state of one key of a regional keyspace.

    Attributes:
        kind: the state layout: a built-in resolver's name or ``"app:<name>"``.
        ts, origin: the cell's version, the greatest ``(ts, origin)`` of every write merged
            into it. It never decreases.
        state: the kind's state as nested tuples, canonical (see the module docstring).

    Cells are built by resolvers and by :func:`decode_cell`; equal cells encode to equal bytes.
    """

    kind: str
    ts: int
    origin: str
    state: tuple

    @property
    def version(self) -> VersionId:
        return (self.ts, self.origin)


@dataclass(frozen=True, slots=True)
class Version:
    """A value with the version of the write that produced it, as application resolvers see
    it. ``value`` None is a deleted key."""

    value: bytes | None
    ts: int
    origin: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """A write that lost a concurrent conflict, for the conflict log (ARCH §6).

    Attributes:
        key: the key.
        winner: ``(ts, origin)`` of the version that was kept.
        loser: ``(ts, origin)`` of the write that lost.
        loser_value: what the losing write wrote (None: a delete).
        resolver: the name of the resolver that decided.
    """

    key: bytes
    winner: VersionId
    loser: VersionId
    loser_value: bytes | None
    resolver: str


# ---------------------------------------------------------------------------- cell encoding


def encode_cell(cell: Cell) -> bytes:
    """The canonical bytes of a cell (module docstring, "Cells").

    Raises:
        InvalidArgumentError: ``cell`` is not a well-formed :class:`Cell`.
    """
    if not isinstance(cell, Cell):
        raise InvalidArgumentError(f"not a Cell: {type(cell).__name__}")
    state = _normalize(cell.kind, cell.ts, cell.origin, cell.state, _invalid)
    return _pack(cell.kind, cell.ts, cell.origin, state)


def decode_cell(data: bytes) -> Cell:
    """The cell encoded in ``data``.

    Raises:
        CorruptStateError: ``data`` is not the canonical encoding of a well-formed cell.
        InvalidArgumentError: ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"a cell is decoded from bytes, not {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for bad input
        raise CorruptStateError(f"cell is not msgpack: {exc}") from None
    if not (isinstance(raw, list) and len(raw) == 5):
        raise CorruptStateError("cell is not a 5-element array")
    fmt, kind, ts, origin, state = raw
    if type(fmt) is not int or fmt != CELL_FORMAT:
        raise CorruptStateError(f"unknown cell format {fmt!r}")
    if not (type(ts) is int and MIN_TS <= ts <= MAX_TS and isinstance(origin, str)
            and 0 < len(origin) <= _MAX_ORIGIN_CHARS):
        raise CorruptStateError(f"bad cell version {ts!r}/{origin!r}")
    norm = _normalize(kind, ts, origin, state, _corrupt)
    if _pack(kind, ts, origin, norm) != bytes(data):
        raise CorruptStateError("cell encoding is not canonical")
    return Cell(kind, ts, origin, norm)


def _pack(kind: str, ts: int, origin: str, state: tuple) -> bytes:
    if kind == "counter":
        state = tuple((o, base_ts, _int_out(base_sum), contribs)
                      for o, base_ts, base_sum, contribs in state)
    return msgpack.packb([CELL_FORMAT, kind, ts, origin, state], use_bin_type=True)


def _int_out(n: int) -> int | str:
    return n if _MSGPACK_INT_MIN <= n <= _MSGPACK_INT_MAX else str(n)


def _invalid(message: str) -> None:
    raise InvalidArgumentError(f"malformed cell: {message}")


def _corrupt(message: str) -> None:
    raise CorruptStateError(f"corrupt cell: {message}")


def _is_ts(x: object) -> bool:
    return type(x) is int and MIN_TS <= x <= MAX_TS


def _is_origin(x: object) -> bool:
    return isinstance(x, str) and 0 < len(x) <= _MAX_ORIGIN_CHARS


def _is_seq(x: object, n: int | None = None) -> bool:
    return isinstance(x, (list, tuple)) and (n is None or len(x) == n)


def _is_tag(x: object) -> bool:
    return _is_seq(x, 2) and _is_ts(x[0]) and _is_origin(x[1])


def _strictly_sorted(items: Sequence[Any]) -> bool:
    return all(a < b for a, b in zip(items, items[1:]))


def _normalize(kind: object, ts: int, origin: str, state: object,
               fail: Callable[[str], None]) -> tuple:
    """The state as nested tuples, after checking its layout and invariants; ``fail`` raises
    the caller's error class."""
    if not _is_ts(ts) or not _is_origin(origin):
        fail(f"bad version {ts!r}/{origin!r}")
    version = (ts, origin)
    if not isinstance(kind, str):
        fail(f"kind is not a string: {kind!r}")
    app = kind.startswith("app:") and _APP_NAME.fullmatch(kind[4:]) is not None
    if kind == "lww" or app:
        if not _is_seq(state, 3 if app else 2):
            fail("an application state is [value, prev, holder]" if app
                 else "a version state is [value, prev]")
        value, prev = state[:2]
        if value is not None and not isinstance(value, bytes):
            fail("value is not bin or nil")
        if prev is not None:
            if not _is_tag(prev):
                fail(f"bad prev {prev!r}")
            prev = (prev[0], prev[1])
        if not app:
            return (value, prev)
        holder = state[2]
        if holder is not None:
            if not _is_tag(holder) or (holder[0], holder[1]) > version:
                fail(f"bad holder {holder!r}: not a version at or below the cell's")
            holder = (holder[0], holder[1])
        return (value, prev, holder)
    if kind == "counter":
        if not _is_seq(state):
            fail("a counter state is a list of origins")
        entries = []
        for entry in state:
            if not _is_seq(entry, 4):
                fail("a counter entry is [origin, base_ts, base_sum, contributions]")
            o, base_ts, base_sum, contribs = entry
            if not _is_origin(o) or type(base_ts) is not int or not 0 <= base_ts <= MAX_TS:
                fail(f"bad counter entry {o!r}/{base_ts!r}")
            if (isinstance(base_sum, str) and len(base_sum) <= _MAX_SUM_CHARS
                    and _READ_INT.fullmatch(base_sum.encode())):
                base_sum = int(base_sum)
                if _MSGPACK_INT_MIN <= base_sum <= _MSGPACK_INT_MAX:
                    fail("a counter sum in int range is stored as a string")
                if not -(2**127) < base_sum < 2**127:
                    fail(f"counter sum {base_sum} beyond what an origin can fold")
            elif type(base_sum) is not int:
                fail(f"bad counter sum {base_sum!r}")
            if not _is_seq(contribs):
                fail("counter contributions are a list")
            pairs = []
            for c in contribs:
                if not (_is_seq(c, 2) and _is_ts(c[0]) and type(c[1]) is int
                        and _I64_MIN <= c[1] <= _I64_MAX):
                    fail(f"bad counter contribution {c!r}")
                if c[0] <= base_ts or (c[0], o) > version:
                    fail(f"counter contribution {c[0]} outside ({base_ts}, cell version]")
                pairs.append((c[0], c[1]))
            if not _strictly_sorted([t for t, _ in pairs]):
                fail("counter contributions are not sorted by ts")
            entries.append((o, base_ts, base_sum, tuple(pairs)))
        if not _strictly_sorted([e[0] for e in entries]):
            fail("counter origins are not sorted")
        return tuple(entries)
    if kind == "max":
        if not (_is_seq(state, 3) and type(state[0]) is int and _I64_MIN <= state[0] <= _I64_MAX
                and _is_tag(state[1:])):
            fail("a max state is [value, ts, origin]")
        if (state[1], state[2]) > version:
            fail("the maximum's version is above the cell's")
        return (state[0], state[1], state[2])
    if kind == "add_wins_set":
        if not _is_seq(state, 3) or not all(_is_seq(part) for part in state):
            fail("a set state is [elements, tombstones, floors]")
        elements = []
        for item in state[0]:
            if not (_is_seq(item, 2) and isinstance(item[0], bytes) and _is_seq(item[1])
                    and item[1] and all(_is_tag(t) for t in item[1])):
                fail(f"bad set element {item!r}")
            tags = tuple((t[0], t[1]) for t in item[1])
            if not _strictly_sorted(tags) or tags[-1] > version:
                fail("set tags are not sorted or above the cell's version")
            elements.append((item[0], tags))
        if not _strictly_sorted([e for e, _ in elements]):
            fail("set elements are not sorted")
        tombstones = []
        for item in state[1]:
            if not (_is_seq(item, 2) and isinstance(item[0], bytes) and _is_seq(item[1])
                    and item[1] and all(_is_tag(t) for t in item[1])):
                fail(f"bad set tombstone {item!r}")
            tags = tuple((t[0], t[1]) for t in item[1])
            if not _strictly_sorted(tags) or tags[-1] > version:
                fail("set tombstone tags are not sorted or above the cell's version")
            tombstones.append((item[0], tags))
        if not _strictly_sorted([e for e, _ in tombstones]):
            fail("set tombstones are not sorted")
        removed = {(e, *tag) for e, tags in tombstones for tag in tags}
        if any((e, *tag) in removed for e, tags in elements for tag in tags):
            fail("a live set tag is also a tombstone")
        held = [(e, t[1]) for part in (elements, tombstones) for e, tags in part for t in tags]
        if len(set(held)) != len(held):
            fail("a set holds two tags of one element and origin")
        floors = []
        for item in state[2]:
            if not (_is_seq(item, 2) and _is_origin(item[0]) and _is_ts(item[1])):
                fail(f"bad set floor {item!r}")
            floors.append((item[0], item[1]))
        if not _strictly_sorted([o for o, _ in floors]):
            fail("set floors are not sorted")
        return (tuple(elements), tuple(tombstones), tuple(floors))
    fail(f"unknown kind {kind!r}")
    raise AssertionError("unreachable")


# -------------------------------------------------------------------------------- payloads


def encode_int(n: int) -> bytes:
    """The payload of a counter increment or a max write: ``n`` in decimal ASCII.

    Raises:
        InvalidArgumentError: ``n`` is not an int within signed 64 bits.
    """
    if type(n) is not int or not _I64_MIN <= n <= _I64_MAX:
        raise InvalidArgumentError(f"expected an int within signed 64 bits, not {n!r}")
    return str(n).encode()


def decode_int(value: bytes) -> int:
    """The integer a counter or max read returned (decimal ASCII, beyond 64 bits for a
    counter: at most :data:`_MAX_SUM_CHARS` characters).

    Raises:
        InvalidArgumentError: ``value`` is not a decimal integer of that size.
    """
    if (not isinstance(value, bytes) or len(value) > _MAX_SUM_CHARS
            or not _READ_INT.fullmatch(value)):
        raise InvalidArgumentError(f"not a decimal integer a counter or max holds: "
                                   f"{value!r:.80}")
    return int(value)


def encode_set_add(elem: bytes) -> bytes:
    """The payload that adds ``elem`` to an add-wins set: msgpack ``["add", elem]``."""
    if not isinstance(elem, bytes):
        raise InvalidArgumentError(f"a set element is bytes, not {type(elem).__name__}")
    return msgpack.packb(["add", elem], use_bin_type=True)


def encode_set_remove(elem: bytes, observed: Iterable[VersionId]) -> bytes:
    """The payload that removes ``elem``'s ``observed`` add tags (``AddWinsSet.observed_tags``
    of the local cell): msgpack ``["remove", elem, [[ts, origin], ...]]``, tags sorted."""
    if not isinstance(elem, bytes):
        raise InvalidArgumentError(f"a set element is bytes, not {type(elem).__name__}")
    tags = sorted({_check_version(t, "tag") for t in observed})
    return msgpack.packb(["remove", elem, tags], use_bin_type=True)


def decode_set(value: bytes) -> list[bytes]:
    """The elements an add-wins set read returned, sorted.

    Raises:
        InvalidArgumentError: ``value`` is not a msgpack array of bin.
    """
    try:
        elems = msgpack.unpackb(value, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise InvalidArgumentError(f"not a set value: {exc}") from None
    if not isinstance(elems, list) or not all(isinstance(e, bytes) for e in elems):
        raise InvalidArgumentError("not a set value: expected an array of bin")
    return elems


def _parse_payload_int(write: RemoteWrite, what: str) -> int:
    if write.value is None or not _PAYLOAD_INT.fullmatch(write.value):
        raise InvalidArgumentError(f"{what} payload must be a decimal int64, "
                                   f"not {write.value!r}")
    n = int(write.value)
    if not _I64_MIN <= n <= _I64_MAX:
        raise InvalidArgumentError(f"{what} payload outside signed 64 bits: {write.value!r}")
    return n


# ------------------------------------------------------------------------------- resolvers


def _happened_before(older: VersionId, newer: VersionId, newer_prev: VersionId | None) -> bool:
    """Whether ``older`` is known to have been applied at ``newer``'s origin before ``newer``
    committed: the same origin (its log orders them), or ``newer``'s prev is ``older`` or a
    later write of ``older``'s origin. Never true of a concurrent pair."""
    if older[1] == newer[1]:
        return True
    return newer_prev is not None and newer_prev[1] == older[1] and older <= newer_prev


def _concurrent(a: VersionId, a_prev: VersionId | None,
                b: VersionId, b_prev: VersionId | None) -> bool:
    if a == b:
        return False
    if a < b:
        return not _happened_before(a, b, b_prev)
    return not _happened_before(b, a, a_prev)


class Resolver(abc.ABC):
    """How a regional keyspace merges writes (ARCH §6). Pure and deterministic.

    Attributes:
        name: the resolver's name (``resolver_for`` accepts the built-ins' names).
        kind: the layout of the cells it builds (``Cell.kind``).
        op: the write op it accepts (``PUT`` or ``MERGE``).
        any_payload: every payload a :class:`RemoteWrite` may carry merges, into no cell or
            any cell of this kind: a shipped batch's writes need no trial merge first.
    """

    name: str
    kind: str
    op: str
    any_payload = False

    def merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        """Merges one write into a key's cell.

        Args:
            cell: the key's cell, or None if the key has none yet.
            write: a write to the key, local or remote, new or a duplicate.

        Returns:
            The new cell and, if a write lost a concurrent conflict, its :class:`Conflict`.
            The new cell's version is the greater of the cell's and the write's.

        Raises:
            InvalidArgumentError: the write's op or payload is not this resolver's, or the
                cell was built by another kind of resolver.
        """
        if not isinstance(write, RemoteWrite):
            raise InvalidArgumentError(f"not a RemoteWrite: {type(write).__name__}")
        if write.op != self.op:
            raise InvalidArgumentError(
                f"resolver {self.name!r} takes {self.op!r} writes, not {write.op!r}")
        self._check_cell(cell)
        return self._merge(cell, write)

    def value_of(self, cell: Cell | None) -> bytes | None:
        """What a read of the key returns: None if the key has no cell or is deleted."""
        if cell is None:
            return None
        self._check_cell(cell)
        return self._value(cell)

    def compact(self, cell: Cell, stable: Mapping[str, int]) -> Cell:
        """The cell with bookkeeping folded away, reading the same.

        Args:
            cell: the key's cell.
            stable: origin → ts such that every write from that origin with a timestamp at or
                below it has already been merged into ``cell`` (the persisted per-origin
                replication watermark, ARCH §6). After compaction a write from that origin at
                or below it is taken as a duplicate.

        ``lww``, ``max`` and application cells have nothing to fold: tombstones and versions
        are kept whatever the watermarks.
        """
        self._check_cell(cell)
        return cell

    def _check_cell(self, cell: Cell | None) -> None:
        if cell is not None and (not isinstance(cell, Cell) or cell.kind != self.kind):
            raise InvalidArgumentError(
                f"resolver {self.name!r} cannot use a cell of kind "
                f"{getattr(cell, 'kind', type(cell).__name__)!r}")

    @abc.abstractmethod
    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        ...

    @abc.abstractmethod
    def _value(self, cell: Cell) -> bytes | None:
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _max_version(cell: Cell, write: RemoteWrite) -> VersionId:
    return max(cell.version, write.version)


def _value_key(value: bytes | None) -> tuple[int, bytes]:
    return (0, b"") if value is None else (1, value)


def _prev_key(prev: VersionId | None) -> tuple[int, int, str]:
    return (0, 0, "") if prev is None else (1, prev[0], prev[1])


class LastWriterWins(Resolver):
    """The write with the greater ``(ts, origin)`` wins; deletes leave tombstones.

    A cell holds one version: the winner's value (None: tombstone) and ``prev``. Two
    deliveries of one write are equal and change nothing. (Two *different* writes can only share
    a ``(ts, origin)`` if an origin broke the identity rule; the greater value then wins, so
    regions still converge.)
    """

    name = "lww"
    kind = "lww"
    op = PUT
    any_payload = True  # the value, bytes or None, as the RemoteWrite checked

    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        new = Cell(self.kind, write.ts, write.origin, (write.value, write.prev))
        if cell is None:
            return new, None
        value, prev = cell.state
        mine = (cell.ts, cell.origin, _value_key(value), _prev_key(prev))
        theirs = (write.ts, write.origin, _value_key(write.value), _prev_key(write.prev))
        if theirs == mine:
            return cell, None
        concurrent = _concurrent(cell.version, prev, write.version, write.prev)
        if theirs > mine:
            conflict = Conflict(write.key, write.version, cell.version, value, self.name)
            return new, conflict if concurrent else None
        conflict = Conflict(write.key, cell.version, write.version, write.value, self.name)
        return cell, conflict if concurrent else None

    def _value(self, cell: Cell) -> bytes | None:
        return cell.state[0]


class CounterAdd(Resolver):
    """A multi-active counter of signed increments (module docstring: "counter").

    State per origin: ``(base_ts, base_sum, contributions)``, where ``contributions`` maps the
    timestamp of each increment above ``base_ts`` to its delta. The value is the sum of every
    ``base_sum`` and delta, whatever the order and duplicates the increments arrived in.
    """

    name = "counter"
    kind = "counter"
    op = MERGE

    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        delta = _parse_payload_int(write, "a counter")
        entries = list(cell.state) if cell is not None else []
        version = write.version if cell is None else _max_version(cell, write)
        for i, (o, base_ts, base_sum, contribs) in enumerate(entries):
            if o != write.origin:
                continue
            if write.ts <= base_ts:
                return cell, None  # folded in by compaction: a duplicate
            merged = dict(contribs)
            old = merged.get(write.ts)
            if old is not None and old >= delta:
                return cell, None  # a duplicate
            merged[write.ts] = delta
            entries[i] = (o, base_ts, base_sum, tuple(sorted(merged.items())))
            break
        else:
            entries.append((write.origin, 0, 0, ((write.ts, delta),)))
            entries.sort(key=lambda e: e[0])
        return Cell(self.kind, version[0], version[1], tuple(entries)), None

    def _value(self, cell: Cell) -> bytes:
        total = sum(base_sum + sum(d for _, d in contribs)
                    for _, _, base_sum, contribs in cell.state)
        return str(total).encode()

    def compact(self, cell: Cell, stable: Mapping[str, int]) -> Cell:
        self._check_cell(cell)
        entries = []
        for o, base_ts, base_sum, contribs in cell.state:
            watermark = stable.get(o, 0)
            if watermark > base_ts:
                _check_ts(watermark, f"watermark of {o!r}")
                base_sum += sum(d for t, d in contribs if t <= watermark)
                contribs = tuple((t, d) for t, d in contribs if t > watermark)
                base_ts = watermark
            entries.append((o, base_ts, base_sum, contribs))
        return Cell(self.kind, cell.ts, cell.origin, tuple(entries))


class MaxValue(Resolver):
    """Keeps the greatest integer written; equal integers are held by the greater
    ``(ts, origin)``. Order and duplicates cannot matter: the state is the maximum of the
    writes' ``(value, ts, origin)``."""

    name = "max"
    kind = "max"
    op = MERGE

    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        n = _parse_payload_int(write, "a max")
        if cell is None:
            return Cell(self.kind, write.ts, write.origin, (n, write.ts, write.origin)), None
        holder = max(cell.state, (n, write.ts, write.origin))
        version = _max_version(cell, write)
        if holder == cell.state and version == cell.version:
            return cell, None
        return Cell(self.kind, version[0], version[1], holder), None

    def _value(self, cell: Cell) -> bytes:
        return str(cell.state[0]).encode()


class AddWinsSet(Resolver):
    """An observed-remove set of byte strings in which a concurrent add wins.

    State: ``elements`` (each live element with the tags of the adds that put it there),
    ``tombstones`` (per element, the ``(ts, origin)`` of each removed tag not yet below
    its origin's floor) and ``floors`` (per origin: every add of that origin at or below it
    has been merged, set by :meth:`compact`). An element is present while it has a tag. A
    remove lists the tags its origin observed and removes only those, so an add its origin
    had not seen survives (add wins); the tombstones make "remove, then the add it removed"
    and duplicate adds come out as "add, then remove". Per element and origin only the newest
    tag is kept (see :meth:`_merge`), so re-adding an element does not grow the cell.
    """

    name = "add_wins_set"
    kind = "add_wins_set"
    op = MERGE

    @staticmethod
    def parse(payload: bytes | None) -> tuple[str, bytes, tuple[VersionId, ...]]:
        """``("add", elem, ())`` or ``("remove", elem, tags)`` from a write's payload.

        Raises:
            InvalidArgumentError: not a set payload.
        """
        if payload is None:
            raise InvalidArgumentError("a set write needs a payload (sets are not deleted)")
        try:
            op = msgpack.unpackb(payload, raw=False)
        except Exception as exc:  # msgpack raises several types for bad input
            raise InvalidArgumentError(f"set payload is not msgpack: {exc}") from None
        if isinstance(op, list) and len(op) == 2 and op[0] == "add" \
                and isinstance(op[1], bytes):
            return "add", op[1], ()
        if isinstance(op, list) and len(op) == 3 and op[0] == "remove" \
                and isinstance(op[1], bytes) and isinstance(op[2], list):
            return "remove", op[1], tuple(sorted({_check_version(t, "tag") for t in op[2]}))
        raise InvalidArgumentError(f"set payload must be ['add', elem] or ['remove', elem, "
                                   f"tags], not {op!r}")

    @staticmethod
    def observed_tags(cell: Cell | None, elem: bytes) -> tuple[VersionId, ...]:
        """The tags of ``elem`` in ``cell``: what a remove committed against it must list."""
        if cell is None:
            return ()
        for e, tags in cell.state[0]:
            if e == elem:
                return tags
        return ()

    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        op, elem, observed = self.parse(write.value)
        if observed and observed[-1] >= write.version:
            # A remove lists tags its origin had merged, all older than the remove itself. A
            # newer one would become a tombstone that supersedes every add of the element by
            # that origin up to the tag's timestamp, adds made after the remove included:
            # they would vanish in every region.
            raise InvalidArgumentError(
                f"a set remove names the tag {list(observed[-1])}, not older than the remove "
                f"itself ({write.ts}/{write.origin}): it can only name tags it observed")
        # (element, origin) -> (ts, removed): the newest tag of that origin's adds of the
        # element known here, and whether it is removed. An origin's writes are ordered, so
        # its newer tag supersedes its older ones: whoever observed (listed) the newer one had
        # merged the older ones too. Keeping only the newest is a join (the greatest
        # ``(ts, removed)``), so order and duplicates still do not matter, and a cell holds
        # at most one tag per element and origin however often an element is added again.
        newest: dict[tuple[bytes, str], tuple[int, bool]] = {}
        floors: dict[str, int] = {}
        version = write.version
        if cell is not None:
            for removed, part in ((False, cell.state[0]), (True, cell.state[1])):
                for e, tags in part:
                    for ts, origin in tags:
                        entry = newest.get((e, origin))
                        if entry is None or entry < (ts, removed):
                            newest[(e, origin)] = (ts, removed)
            floors = dict(cell.state[2])
            version = _max_version(cell, write)
        events = [(write.ts, write.origin)] if op == "add" else observed
        for ts, origin in events:
            entry = newest.get((elem, origin))
            if ts <= floors.get(origin, 0):
                # Every add of that origin up to its floor was merged here: an add is a
                # duplicate, and a remove of a tag still live drops it without a tombstone.
                if op == "remove" and entry == (ts, False):
                    del newest[(elem, origin)]
            elif entry is None or entry < (ts, op == "remove"):
                newest[(elem, origin)] = (ts, op == "remove")
        elements: dict[bytes, list[VersionId]] = {}
        tombstones: list[tuple[bytes, int, str]] = []
        for (e, origin), (ts, removed) in newest.items():
            if removed:
                tombstones.append((e, ts, origin))
            else:
                elements.setdefault(e, []).append((ts, origin))
        state = self._state(elements, tombstones, floors)
        if cell is not None and state == cell.state and version == cell.version:
            return cell, None
        return Cell(self.kind, version[0], version[1], state), None

    @staticmethod
    def _state(elements: Mapping[bytes, Iterable[VersionId]],
               tombstones: Iterable[tuple[bytes, int, str]], floors: Mapping[str, int]) -> tuple:
        # Tombstones are grouped by element: the element's bytes are held once, not once
        # per removed tag (an element added many times would otherwise multiply its size).
        removed: dict[bytes, list[VersionId]] = {}
        for e, ts, origin in sorted(tombstones):
            removed.setdefault(e, []).append((ts, origin))
        return (tuple((e, tuple(sorted(tags))) for e, tags in sorted(elements.items()) if tags),
                tuple((e, tuple(tags)) for e, tags in removed.items()),
                tuple(sorted(floors.items())))

    def _value(self, cell: Cell) -> bytes:
        return msgpack.packb([e for e, _ in cell.state[0]], use_bin_type=True)

    def compact(self, cell: Cell, stable: Mapping[str, int]) -> Cell:
        self._check_cell(cell)
        floors = dict(cell.state[2])
        for o, watermark in stable.items():
            if watermark > floors.get(o, 0):
                floors[o] = _check_ts(watermark, f"watermark of {o!r}")
        tombstones = [(e, *t) for e, tags in cell.state[1] for t in tags
                      if t[0] > floors.get(t[1], 0)]
        return Cell(self.kind, cell.ts, cell.origin,
                    self._state(dict(cell.state[0]), tombstones, floors))


class ApplicationResolver(Resolver):
    """A resolver made from an application's function (module docstring, "Application
    resolvers").

    Args:
        fn: ``fn(local, remote) -> Version``: ``local`` is the key's current version, ``remote``
            the arriving write. Must be deterministic, commutative, associative and
            idempotent; ties are broken by ``(ts, origin)``. Only the returned ``value`` is
            used.
        name: 1-64 characters from ``[a-z0-9_-]``, starting with a letter; the cells' kind is
            ``"app:" + name``.

    A key's first write is stored as it is, without calling ``fn``. ``local`` carries the
    ``(ts, origin)`` of the write whose value the cell holds (of the newest such write), or,
    for a value ``fn`` made of several writes, the cell's version. A conflict is reported
    when the result is exactly one input's value and the other input's value differed (it was
    discarded) and the two were concurrent; it names the write whose value was discarded.

    Raises:
        InvalidArgumentError: ``fn`` is not callable or ``name`` is malformed; from ``merge``,
            ``fn`` returned something other than a :class:`Version` with bytes or None.
    """

    op = PUT

    def __init__(self, fn: Callable[[Version, Version], Version], name: str) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be callable, not {fn!r}")
        if not isinstance(name, str) or not _APP_NAME.fullmatch(name):
            raise InvalidArgumentError(f"bad resolver name {name!r}: 1-64 characters from "
                                       f"a-z, 0-9, '_' and '-', starting with a letter")
        self.fn = fn
        self.name = name
        self.kind = "app:" + name

    def _merge(self, cell: Cell | None, write: RemoteWrite) -> tuple[Cell, Conflict | None]:
        if cell is None:
            return Cell(self.kind, write.ts, write.origin,
                        (write.value, write.prev, write.version)), None
        value, prev, holder = cell.state
        # ``fn`` sees the held value with its own write's version, not the cell's: the
        # cell's newest write may be one whose value lost, and a tie broken by the cell's
        # version would then depend on the arrival order.
        local = Version(value, *(holder or cell.version))
        remote = Version(write.value, write.ts, write.origin)
        problem = None
        try:
            result = self.fn(local, remote)
        except (KeyboardInterrupt, MemoryError):
            raise  # not the function's answer: one replica alone may meet them
        except BaseException as exc:  # noqa: BLE001 - the function's answer, on every replica
            problem = f"raised {type(exc).__name__}: {_shown(exc, str)}"
        else:
            if not isinstance(result, Version) or not (
                    result.value is None or isinstance(result.value, bytes)):
                problem = (f"returned {_shown(result, repr):.200}, not a Version with a bytes "
                           f"or None value")
            elif result.value is not None and len(result.value) > MAX_APP_VALUE_SIZE:
                problem = (f"returned a value of {len(result.value)} bytes, over the "
                           f"{MAX_APP_VALUE_SIZE}-byte limit")
        if problem is not None:
            raise ResolverFailedError(
                f"resolver {self.name!r} {problem}"[:500],
                self._by_last_writer(cell, write, local, remote))
        # The holder is the newest write whose value the result is, of those merged here:
        # the same whatever the arrival order, for a resolver that is a join.
        if result.value == value and result.value == write.value:
            new_holder = max(holder or write.version, write.version)
        elif result.value == value:
            new_holder = holder
        elif result.value == write.value:
            new_holder = write.version
        else:
            new_holder = None  # a value the resolver made: nothing was discarded whole
        if write.version > cell.version:
            new = Cell(self.kind, write.ts, write.origin, (result.value, write.prev, new_holder))
        else:
            new = Cell(self.kind, cell.ts, cell.origin, (result.value, prev, new_holder))
        conflict = None
        if holder is not None and value != write.value:
            # Only the cell's newest write has its prev here: with another holder, the pair
            # counts as concurrent unless the write's own prev shows it causal.
            holder_prev = prev if holder == cell.version else None
            if _concurrent(holder, holder_prev, write.version, write.prev):
                if result.value == write.value:
                    conflict = Conflict(write.key, write.version, holder, value, self.name)
                elif result.value == value:
                    conflict = Conflict(write.key, holder, write.version, write.value,
                                        self.name)
        return new, conflict

    def _by_last_writer(self, cell: Cell, write: RemoteWrite, local: Version,
                        remote: Version) -> tuple[Cell, Conflict | None]:
        """What the merge of ``write`` into ``cell`` gives when ``fn`` fails on them: the
        greater ``(ts, origin)`` of the two values wins, as in ``lww`` -- the same in every
        region for the same pair, where refusing the write would leave the regions apart (the
        one that holds it keeps it). The value that lost, if it differed, is logged as a
        conflict naming ``"lww"`` and the failure."""
        (keep, kept), (drop, dropped) = sorted(
            [(local, (local.ts, local.origin)), (remote, (remote.ts, remote.origin))],
            key=lambda pair: pair[1], reverse=True)
        if write.version > cell.version:
            new = Cell(self.kind, write.ts, write.origin, (keep.value, write.prev, kept))
        else:
            new = Cell(self.kind, cell.ts, cell.origin, (keep.value, cell.state[1], kept))
        conflict = None
        if drop.value != keep.value:
            conflict = Conflict(write.key, kept, dropped, drop.value,
                                f"lww ({self.name} failed)")
        return new, conflict

    def _value(self, cell: Cell) -> bytes | None:
        return cell.state[0]


def _shown(obj: object, show: Callable[[object], str]) -> str:
    """``show(obj)``, or the object's type if that raises: an application's exception or
    answer shows itself with the application's code, which fails like any other (raising
    out of a merge would stop every replica that applies the write, at every restart)."""
    try:
        return show(obj)
    except Exception:  # noqa: BLE001 - whatever the application's code raises
        return f"<{type(obj).__name__}, which cannot be shown>"


class ResolverFailedError(InvalidArgumentError):
    """An application resolver's function raised, or did not answer a :class:`Version` with
    a value within :data:`MAX_APP_VALUE_SIZE`.

    Attributes:
        fallback: ``(cell, conflict)``: the merge by last writer instead (see
            ``ApplicationResolver._by_last_writer``), which a write shipped from another
            region takes (the same in every region); a local write is refused instead.
    """

    def __init__(self, message: str, fallback: tuple[Cell, Conflict | None]) -> None:
        super().__init__(message)
        self.fallback = fallback


_BUILTINS: dict[str, type[Resolver]] = {
    "lww": LastWriterWins,
    "counter": CounterAdd,
    "max": MaxValue,
    "add_wins_set": AddWinsSet,
}


def resolver_for(spec: str) -> Resolver:
    """The built-in resolver named ``spec`` (a keyspace's ``resolver`` setting).

    Raises:
        InvalidArgumentError: no built-in resolver has that name.
    """
    cls = _BUILTINS.get(spec) if isinstance(spec, str) else None
    if cls is None:
        raise InvalidArgumentError(f"unknown resolver {spec!r}; expected one of "
                                   f"{', '.join(RESOLVER_NAMES)}")
    return cls()


def is_resolver_name(name: object) -> bool:
    """Whether ``name`` is a built-in resolver's or has the form of an application
    resolver's (``"app:<name>"``; whether one of that name is configured is the node's
    business)."""
    return name in RESOLVER_NAMES or (type(name) is str and name.startswith(APP_PREFIX)
                                      and _APP_NAME.fullmatch(name, len(APP_PREFIX)) is not None)


def write_op(name: str) -> str:
    """The write op of resolver ``name`` (:data:`PUT` or :data:`MERGE`), which only its kind
    decides: an application resolver's writes are puts."""
    return PUT if name == "lww" or name.startswith(APP_PREFIX) else MERGE


def _runs_on_the_nodes(local: Version, remote: Version) -> Version:
    raise InvalidArgumentError("an application resolver runs on the nodes, where it is "
                               "configured, not in the client")


def reader_for(spec: str) -> Resolver:
    """A resolver that reads (:meth:`Resolver.value_of`) the cells of ``spec``, a built-in
    resolver's name or ``"app:<name>"`` (whose function is not needed to read a cell)."""
    if isinstance(spec, str) and spec.startswith(APP_PREFIX):
        return ApplicationResolver(_runs_on_the_nodes, spec[len(APP_PREFIX):])
    return resolver_for(spec)


def apply_writes(resolver: Resolver, writes: Iterable[RemoteWrite], cell: Cell | None = None
                 ) -> tuple[Cell | None, list[Conflict]]:
    """Merges ``writes`` into ``cell`` in order; returns the cell and the conflicts."""
    conflicts = []
    for w in writes:
        cell, conflict = resolver.merge(cell, w)
        if conflict is not None:
            conflicts.append(conflict)
    return cell, conflicts


# ---------------------------------------------------------------------- convergence testing


def _fold(resolver: Resolver, writes: Iterable[RemoteWrite]) -> Cell | None:
    return apply_writes(resolver, writes)[0]


def _show_cell(resolver: Resolver, cell: Cell | None) -> str:
    if cell is None:
        return "no cell (reads None)"
    return f"{cell!r}, reads {resolver.value_of(cell)!r}"


def _diverges(resolver: Resolver, a: Sequence[RemoteWrite], b: Sequence[RemoteWrite]) -> bool:
    ca, cb = _fold(resolver, a), _fold(resolver, b)
    if ca is None or cb is None:
        return ca is not cb
    return encode_cell(ca) != encode_cell(cb) or resolver.value_of(ca) != resolver.value_of(cb)


def _shrink(resolver: Resolver, a: list[int], b: list[int], writes: Sequence[RemoteWrite]
            ) -> tuple[list[int], list[int]]:
    """Greedily drops writes (everywhere) and duplicate deliveries while the two orders still
    diverge, so that the report shows a small counterexample."""

    def differ(x: list[int], y: list[int]) -> bool:
        return _diverges(resolver, [writes[i] for i in x], [writes[i] for i in y])

    for i in sorted(set(a)):
        x, y = [j for j in a if j != i], [j for j in b if j != i]
        if differ(x, y):
            a, b = x, y
    progress = True
    while progress:
        progress = False
        for order in (0, 1):
            seq = (a, b)[order]
            for pos in range(len(seq)):
                if seq.count(seq[pos]) < 2:
                    continue
                shorter = seq[:pos] + seq[pos + 1:]
                x, y = (shorter, b) if order == 0 else (a, shorter)
                if differ(x, y):
                    a, b = x, y
                    progress = True
                    break
            if progress:
                break
    return a, b


def _explain(resolver: Resolver, writes: Sequence[RemoteWrite], a: list[int], b: list[int],
             what: str) -> str:
    a, b = _shrink(resolver, a, b, writes)
    used = sorted(set(a) | set(b))
    lines = [f"resolver {resolver.name!r} does not converge ({what}):"]
    lines += [f"  w{i}: {writes[i].describe()}" for i in used]
    lines.append(f"  order A: {', '.join(f'w{i}' for i in a)}")
    lines.append(f"  order B: {', '.join(f'w{i}' for i in b)}")
    lines.append(f"  state A: {_show_cell(resolver, _fold(resolver, [writes[i] for i in a]))}")
    lines.append(f"  state B: {_show_cell(resolver, _fold(resolver, [writes[i] for i in b]))}")
    return "\n".join(lines)


def check_convergence(resolver: Resolver, writes: Iterable[RemoteWrite], *, orders: int = 100,
                      seed: int = 0) -> Cell | None:
    """Checks that ``resolver`` reaches the same cell from ``writes`` in any order and with
    duplicates — the property a regional keyspace needs (ARCH §6).

    Tries, in turn: each write delivered twice (idempotence), each pair in both orders
    (commutativity), then ``orders`` random permutations in which about a third of the
    writes are delivered twice (associativity and the rest), each compared with the writes in
    the given order. The first divergence found is shrunk by dropping writes and duplicate
    deliveries that do not matter to it.

    Args:
        resolver: the resolver under test.
        writes: writes to one key, with distinct ``(ts, origin)``, valid for the resolver.
        orders: how many random orders to try.
        seed: seeds the orders (the same seed tries the same orders).

    Returns:
        The converged cell (None if ``writes`` is empty).

    Raises:
        AssertionError: two orders give different cells or reads; the message lists the
            writes, the two orders and the two states.
        InvalidArgumentError: ``writes`` are not writes to one key with distinct versions, or
            the resolver refuses one of them.
    """
    writes = list(writes)
    if not all(isinstance(w, RemoteWrite) for w in writes):
        raise InvalidArgumentError("writes must be RemoteWrite instances")
    if len({w.key for w in writes}) > 1:
        raise InvalidArgumentError("check_convergence takes writes to one key")
    if len({w.version for w in writes}) != len(writes):
        raise InvalidArgumentError("two writes share a (ts, origin): each write must be "
                                   "listed once (the check adds duplicates itself)")
    n = len(writes)
    given = list(range(n))
    for i in given:
        if _diverges(resolver, [writes[i]], [writes[i], writes[i]]):
            raise AssertionError(_explain(resolver, writes, [i], [i, i],
                                          "a duplicate changes the state"))
    for i, j in itertools.combinations(given, 2):
        if _diverges(resolver, [writes[i], writes[j]], [writes[j], writes[i]]):
            raise AssertionError(_explain(resolver, writes, [i, j], [j, i],
                                          "two writes in either order"))
    reference = _fold(resolver, writes)
    rng = random.Random(seed)
    for _ in range(orders):
        order = given + [i for i in given if rng.random() < 1 / 3]
        rng.shuffle(order)
        if _diverges(resolver, writes, [writes[i] for i in order]):
            raise AssertionError(_explain(resolver, writes, given, order,
                                          "a reordering with duplicates"))
    return reference


DEFAULT_ORIGINS = ("us-east", "eu-west", "ap-south")


def writes_strategy(resolver: Resolver, values: Any = None, *,
                    origins: Sequence[str] = DEFAULT_ORIGINS, max_writes: int = 8,
                    key: bytes = b"k") -> Any:
    """A hypothesis strategy of write lists for ``check_convergence(resolver, ...)``: up to
    ``max_writes`` writes to ``key`` with distinct ``(ts, origin)``, small timestamps (so that
    ties on ``ts`` across origins are common) and ``prev`` drawn from the earlier writes.

    Args:
        values: strategy of the writes' values: bytes or None for ``lww`` and application
            resolvers (default: short byte strings, and None for ``lww``), ints for
            ``counter`` and ``max`` (default: small ints), elements (bytes) for
            ``add_wins_set`` (default: three elements). Add-wins-set writes are adds and
            removes, each remove listing some of the tags of earlier adds of its element.

    Needs hypothesis (a test dependency), imported on call.
    """
    from hypothesis import strategies as st

    if values is None:
        if isinstance(resolver, (CounterAdd, MaxValue)):
            values = st.integers(-10, 10)
        elif isinstance(resolver, AddWinsSet):
            values = st.sampled_from([b"a", b"b", b"c"])
        elif isinstance(resolver, LastWriterWins):
            values = st.none() | st.binary(max_size=3)
        else:
            values = st.binary(max_size=3)
    origins = list(origins)

    @st.composite
    def write_lists(draw: Any) -> list[RemoteWrite]:
        versions = draw(st.lists(st.tuples(st.integers(1, 3 * max(1, max_writes)),
                                           st.sampled_from(origins)),
                                 max_size=max_writes, unique=True))
        writes: list[RemoteWrite] = []
        adds: list[tuple[bytes, VersionId]] = []
        for ts, origin in versions:
            # Indexes rather than sampled_from(list): hypothesis caches integer strategies.
            earlier = sorted(w.version for w in writes if w.version < (ts, origin))
            pick = draw(st.integers(-1, len(earlier) - 1))
            prev = earlier[pick] if pick >= 0 else None
            value = draw(values)
            if isinstance(resolver, (CounterAdd, MaxValue)):
                writes.append(RemoteWrite(key, encode_int(value), ts, origin, MERGE, prev))
            elif isinstance(resolver, AddWinsSet):
                seen = [tag for elem, tag in adds if elem == value and tag < (ts, origin)]
                if seen and draw(st.booleans()):
                    picks = draw(st.lists(st.integers(0, len(seen) - 1), max_size=len(seen)))
                    payload = encode_set_remove(value, [seen[i] for i in picks])
                else:
                    payload = encode_set_add(value)
                    adds.append((value, (ts, origin)))
                writes.append(RemoteWrite(key, payload, ts, origin, MERGE, prev))
            else:
                writes.append(RemoteWrite(key, value, ts, origin, PUT, prev))
        return writes

    return write_lists()


def hypothesis_check_convergence(resolver: Resolver, values: Any = None, *,
                                 max_examples: int = 100, orders: int = 20,
                                 origins: Sequence[str] = DEFAULT_ORIGINS, max_writes: int = 8,
                                 derandomize: bool = True) -> None:
    """Runs :func:`check_convergence` on ``max_examples`` write lists that hypothesis draws
    from :func:`writes_strategy` (``values`` as there), and shrinks a failure.

    Call it from an application's test suite::

        def test_my_resolver_converges():
            hypothesis_check_convergence(ApplicationResolver(my_merge, "mine"),
                                         st.binary(max_size=8))

    Call it from a plain test function, not from inside another ``@given`` test.
    ``derandomize`` (default) makes the run the same every time; no example database is
    written.

    Raises:
        AssertionError: a write list on which the resolver does not converge (hypothesis adds
            the shrunk example to the message).
    """
    from hypothesis import Phase, given, settings
    from hypothesis import strategies as st

    strategy = writes_strategy(resolver, values, origins=origins, max_writes=max_writes)

    # Phase.explain is left out: it replays the failing example hundreds of times only to
    # annotate lines of the test function, which here is one call.
    @settings(max_examples=max_examples, deadline=None, database=None,
              derandomize=derandomize,
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @given(strategy, st.integers(0, 2**32 - 1))
    def converges(writes: list[RemoteWrite], seed: int) -> None:
        check_convergence(resolver, writes, orders=orders, seed=seed)

    converges()
