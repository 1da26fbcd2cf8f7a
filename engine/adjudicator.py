"""The adjudicator: the optimistic-concurrency check a Raft group's state machine runs when it
applies commits and prepares (ARCH §5.5).

For every key the group has seen recently the adjudicator remembers the timestamp of its last commit
and, while a two-phase commit is in flight, the *intent* of the transaction that prepared it, and
the *locks* of the serializable transactions that prepared having read it. A transaction arrives as
a :class:`TxnRequest` — its snapshot ``read_ts``, its ``commit_ts`` (the prepare timestamp, for a
prepare) and its keys — and gets a :class:`Verdict`. The rules, in the order they are checked; the
first one that fails is the verdict:

1. ``read_ts < low_water`` → ``TOO_OLD``: the history needed to validate it was pruned.
2. For each written key, in order: another transaction's intent or lock → ``INTENT``; a commit
   newer than ``read_ts`` → ``WRITE_WRITE`` (first committer wins: no lost updates).
3. Serializable transactions only, for each read key, in order: another transaction's intent →
   ``INTENT``; a commit newer than ``read_ts`` → ``READ_WRITE`` (no write skew). Locks do not
   conflict with reads: reading a key never changes it.

An accepted commit (``prepare=False``, the one-group fast path) records ``commit_ts`` as the last
commit of each written key (keeping the larger); an accepted prepare installs its intent on each
written key instead, and a lock on each read key that does not carry its intent, to be finished
(released) by :meth:`Adjudicator.resolve`. A prepared serializable transaction's commit timestamp is
not known yet, so what it read must stay unchanged until it is resolved: a lock keeps writers out,
and any number of transactions may hold one on the same key. An ``INTENT`` verdict for a lock
reports the latest prepare timestamp of the locks taken on the key since it last had none. A
transaction's own intents and locks never conflict with it, so re-preparing is idempotent. A
rejected transaction changes nothing. In a batch, a transaction accepted earlier is visible to the
later ones, exactly as if each had been adjudicated alone and in order.

Invariant: every commit record is above ``low_water``. A transaction with ``read_ts >=
low_water`` can only conflict with commits above its ``read_ts``, so older records carry no
information: :meth:`~Adjudicator.prune` drops them (that is what bounds the adjudicator's memory,
with the maximum transaction lifetime, ARCH §5.8), and :meth:`~Adjudicator.load` and
:meth:`~Adjudicator.resolve` do not record them. Intents are never pruned.

Two implementations make the same decisions: :class:`Adjudicator`, a hash table in C
(``native/adjudicator.c``) that takes a whole batch in one call, and
:class:`ReferenceAdjudicator`, plain dictionaries — the readable specification, against which the
C one is tested operation by operation. The adjudicator's state is not durable; after a restart
it is rebuilt from the store (``load``) and the applied log.

Example::

    with Adjudicator(low_water=0) as adj:
        t1 = TxnRequest(txn_id=1, read_ts=10, commit_ts=20, writes=[b"x"])
        t2 = TxnRequest(txn_id=2, read_ts=10, commit_ts=21, writes=[b"x"])
        v1, v2 = adj.adjudicate([t1, t2])
        assert v1.ok and v2 == (False, ConflictReason.WRITE_WRITE, b"x", 20)
"""

from __future__ import annotations

import enum
import os
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from . import errors
from ._native import ffi, lib

__all__ = [
    "Adjudicator",
    "AdjudicatorStats",
    "ConflictReason",
    "ReferenceAdjudicator",
    "TxnRequest",
    "Verdict",
    "MAX_KEY_SIZE",
    "MAX_TXN_KEYS",
    "MAX_TS",
]

try:
    MAX_KEY_SIZE: int = lib.ADJ_MAX_KEY_SIZE
    """Longest key, in bytes (the MVCC store's limit too)."""
    MAX_TXN_KEYS: int = lib.ADJ_MAX_TXN_KEYS
    """Most keys in one request, writes and reads together."""
    _HEADER_SIZE: int = lib.ADJ_TXN_HEADER_SIZE
except AttributeError:  # pragma: no cover - only with an extension built before this module
    raise ImportError(
        "Meridian's C extension predates the adjudicator: rebuild it (`python native/build.py` "
        "in a source checkout, or `pip install .`)"
    ) from None

MAX_TS = 2**64 - 1
"""Largest timestamp and transaction id (they are unsigned 64-bit integers)."""


class ConflictReason(enum.IntEnum):
    """Why a transaction was rejected (the values are the C library's)."""

    WRITE_WRITE = 1
    """A written key has a commit newer than ``read_ts``."""
    READ_WRITE = 2
    """Serializable only: a read key has a commit newer than ``read_ts``."""
    INTENT = 3
    """A key (written, or read when serializable) carries another transaction's intent, or a
    written key another transaction's lock."""
    TOO_OLD = 4
    """``read_ts < low_water``: the history needed to validate it was pruned."""


if (ConflictReason.WRITE_WRITE, ConflictReason.READ_WRITE, ConflictReason.INTENT,
        ConflictReason.TOO_OLD) != (lib.ADJ_WRITE_WRITE, lib.ADJ_READ_WRITE, lib.ADJ_INTENT,
                                    lib.ADJ_TOO_OLD):  # pragma: no cover - a stale build
    raise ImportError("native/adjudicator.h and engine/adjudicator.py disagree on the reasons")

_REASONS: tuple[ConflictReason | None, ...] = (None, *ConflictReason)
_NO_KEY: int = lib.ADJ_NO_KEY
_FLAG_SERIALIZABLE: int = lib.ADJ_TXN_SERIALIZABLE
_FLAG_PREPARE: int = lib.ADJ_TXN_PREPARE

# The request record of native/adjudicator.h: txn_id, read_ts, commit_ts, nwrites, nreads,
# flags; native byte order, no padding (it never leaves the process).
_HEADER = struct.Struct("=QQQIIB")
if _HEADER.size != _HEADER_SIZE:  # pragma: no cover - a stale build
    raise ImportError("native/adjudicator.h and engine/adjudicator.py disagree on the record")

# Byte values that are not a valid key length: bytes.translate(None, _VALID_LENGTHS) deletes
# the valid ones, so what is left, if anything, is a bad length.
_VALID_LENGTHS = bytes(range(1, MAX_KEY_SIZE + 1))
_BYTES_ONLY = frozenset((bytes,))
_INT_ONLY = frozenset((int,))
_PAIR_TYPES = frozenset((tuple, list))


# ---------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, init=False)
class TxnRequest:
    """One transaction to adjudicate. Validated, and immutable, from construction on.

    ``writes`` and ``reads`` are stored as tuples of ``bytes`` whatever sequence they were
    given as. Construction also encodes the request in the C library's record format (one
    pass over the keys, which validation has to make anyway), so that a batch reaches C as one
    ``b"".join``; the encoding is private.

    Raises (from the constructor):
        InvalidArgumentError: a field of the wrong type or out of range (the message names it).
        RecordTooLargeError: a key over :data:`MAX_KEY_SIZE` bytes, or more than
            :data:`MAX_TXN_KEYS` keys in all.
    """

    txn_id: int
    """Unique per transaction, 1..MAX_TS."""
    read_ts: int
    """The snapshot the transaction read at, 0..MAX_TS."""
    commit_ts: int
    """Its commit timestamp — for a prepare, the prepare timestamp. Above ``read_ts``."""
    writes: Sequence[bytes]
    """Keys written (may be empty; repeats are harmless). Keys are 1..MAX_KEY_SIZE bytes."""
    reads: Sequence[bytes] = ()
    """Keys read; validated against other commits (and locked, by a prepare) only when
    ``serializable``."""
    serializable: bool = False
    prepare: bool = False
    """False: a one-phase commit (records ``commit_ts``). True: install intents instead."""
    _wire: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __init__(self, txn_id: int, read_ts: int, commit_ts: int, writes: Sequence[bytes],
                 reads: Sequence[bytes] = (), serializable: bool = False,
                 prepare: bool = False) -> None:
        # Written by hand, not generated: a frozen dataclass's __init__ sets each field through
        # object.__setattr__, which made construction cost more than adjudication. The slots
        # are set through their descriptors instead, once each, after every check passed.
        if not (type(txn_id) is int and type(read_ts) is int and type(commit_ts) is int
                and 0 < txn_id <= MAX_TS and 0 <= read_ts < commit_ts <= MAX_TS):
            txn_id, read_ts, commit_ts = _check_header(txn_id, read_ts, commit_ts)
        if type(serializable) is not bool or type(prepare) is not bool:
            name, value = ("serializable", serializable) if type(serializable) is not bool \
                else ("prepare", prepare)
            raise errors.InvalidArgumentError(
                f"txn {txn_id}: {name} must be a bool, not {_describe(value)}")
        # The checks of _keys_and_lengths, inline for the usual case (a list or tuple of good
        # keys); anything else goes the slow way, which names the culprit.
        if type(writes) is not tuple:
            writes = tuple(writes) if type(writes) is list else _key_tuple(writes, txn_id, "writes")
        try:
            write_lens = bytes(map(len, writes))
        except (TypeError, ValueError):  # no length, or one over 255
            write_lens = None
        if write_lens is None or write_lens.translate(None, _VALID_LENGTHS) or \
                not _BYTES_ONLY.issuperset(map(type, writes)):
            writes, write_lens = _keys_and_lengths(writes, f"txn {txn_id}: writes")
        if (type(reads) is tuple or type(reads) is list) and not reads:
            reads, read_lens = (), b""
        else:
            reads, read_lens = _keys_and_lengths(reads, f"txn {txn_id}: reads")
        if len(writes) + len(reads) > MAX_TXN_KEYS:
            raise errors.RecordTooLargeError(
                f"txn {txn_id}: {len(writes) + len(reads)} keys (writes and reads), over the "
                f"limit of {MAX_TXN_KEYS}")
        # Unvalidated reads are not sent to C at all.
        if serializable:
            header = _HEADER.pack(txn_id, read_ts, commit_ts, len(writes), len(reads),
                                  _FLAG_SERIALIZABLE | (_FLAG_PREPARE if prepare else 0))
            wire = b"".join((header, write_lens, read_lens, *writes, *reads))
        else:
            header = _HEADER.pack(txn_id, read_ts, commit_ts, len(writes), 0,
                                  _FLAG_PREPARE if prepare else 0)
            wire = b"".join((header, write_lens, *writes))
        _set_txn_id(self, txn_id)
        _set_read_ts(self, read_ts)
        _set_commit_ts(self, commit_ts)
        _set_writes(self, writes)
        _set_reads(self, reads)
        _set_serializable(self, serializable)
        _set_prepare(self, prepare)
        _set_wire(self, wire)


# The slot descriptors' setters, which bypass the frozen __setattr__ (for __init__ only).
(_set_txn_id, _set_read_ts, _set_commit_ts, _set_writes, _set_reads, _set_serializable,
 _set_prepare, _set_wire) = (
    TxnRequest.__dict__[name].__set__
    for name in ("txn_id", "read_ts", "commit_ts", "writes", "reads", "serializable",
                 "prepare", "_wire"))


class Verdict(NamedTuple):
    """The decision on one transaction."""

    ok: bool
    reason: ConflictReason | None
    """None when ok."""
    key: bytes | None
    """The first conflicting key, in the order writes then reads (None when ok or TOO_OLD)."""
    conflict_ts: int
    """The conflicting commit or intent timestamp; the low water for TOO_OLD; 0 when ok."""


_OK = Verdict(True, None, None, 0)


@dataclass(frozen=True, slots=True)
class AdjudicatorStats:
    """A snapshot of an adjudicator's size."""

    keys: int
    """Keys tracked: with a commit record, an intent, or both (``len(adjudicator)``)."""
    intents: int
    """Keys carrying an intent, locks, or both."""
    low_water: int
    memory_bytes: int
    """Approximate bytes of memory held (implementation-specific)."""
    locks: int = 0
    """Locks held: one per key and transaction holding it."""


# --------------------------------------------------------------------------- the C table


_adj_adjudicate = lib.adj_adjudicate
_ROWS_KEEP = 16384  # verdict rows kept between calls (the C code's SCRATCH_KEEP)
_tuple_new = tuple.__new__


class Adjudicator:
    """The adjudicator on a C hash table (see the module docstring for the rules).

    Memory: a 32-byte slot per tracked key in a table kept between 1/8 and 3/4 full (so 43 to
    256 bytes a key; 85 for 100,000 keys), plus the length of keys over 16 bytes, plus 64 bytes
    per intent; :meth:`prune` and :meth:`resolve` free what they drop, and what a batch reserved
    but did not use. Every call that can grow the table reserves the room first, so running out
    of memory raises ``MemoryError`` and changes nothing.

    Thread-safety: every method may be called from any thread; calls are serialized by a lock
    (the C code runs without the GIL).
    """

    def __init__(self, *, low_water: int = 0, seed: int | None = None) -> None:
        """A new, empty adjudicator.

        Args:
            low_water: the initial horizon (see :meth:`prune`), 0..MAX_TS.
            seed: the key of the table's hash, 0..2**128-1; None (the default) draws one from
                ``os.urandom``. Keys come from users: with a secret seed nobody can choose
                keys that collide. A fixed seed only makes the table's layout reproducible;
                decisions never depend on it.

        Raises:
            InvalidArgumentError, MemoryError.
        """
        low_water = _check_u64(low_water, "low_water")
        k0, k1 = _hash_key(seed)
        self._t = None
        self._lock = threading.Lock()
        # Scratch for calls made under the lock: allocating per call costs more than a batch.
        self._err = ffi.new("struct adj_error *")
        self._size = ffi.new("size_t *")
        self._u64 = ffi.new("uint64_t[4]")
        self._stats = ffi.new("struct adj_stats *")
        self._rows = 0
        self._rows_for(256)
        out = ffi.new("struct adj_table **")
        rc = lib.adj_new(k0, k1, low_water, out, self._err)
        if rc:
            _raise(rc, self._err)
        self._t = out[0]

    # ------------------------------------------------------------------ deciding

    def adjudicate(self, batch: Sequence[TxnRequest]) -> list[Verdict]:
        """Validates the transactions in order and records the accepted ones.

        A transaction accepted earlier in the batch is visible to the later ones, exactly as if
        this were called once per transaction. The whole batch crosses into C in one call.

        Args:
            batch: :class:`TxnRequest` objects (any iterable; a list or tuple is fastest).

        Returns:
            One :class:`Verdict` per transaction, in order.

        Raises:
            InvalidArgumentError: an element is not a TxnRequest (nothing is adjudicated).
            MemoryError: the table could not grow (nothing is adjudicated).
            StoreClosedError.
        """
        if self._t is None:
            self._handle()
        if type(batch) is not list and type(batch) is not tuple:
            batch = _check_batch(batch)
        n = len(batch)
        try:
            # A comprehension, not map(attrgetter): its attribute load is specialized for the
            # slot, three times faster than a generic getattr.
            reqs = b"".join([txn._wire for txn in batch])
        except (AttributeError, TypeError):
            _check_batch(batch)  # names the element that is not a request
            raise  # pragma: no cover - _check_batch raised
        with self._lock:
            t = self._t
            if t is None:
                self._handle()
            rows_out = self._out if n <= self._rows else self._rows_for(n)
            rc = _adj_adjudicate(t, reqs, len(reqs), n, rows_out, self._size, self._err)
            if rc:
                _raise(rc, self._err)
            rows = self._size[0]
            if not rows:
                return [_OK] * n
            out = ffi.unpack(rows_out, 2 * rows)
        verdicts = [_OK] * n
        for row in range(0, 2 * rows, 2):
            word = out[row]
            i = word & 0xFFFFFFFF
            k = word >> 40
            if k == _NO_KEY:
                key = None
            else:
                txn = batch[i]
                writes = txn.writes
                key = writes[k] if k < len(writes) else txn.reads[k - len(writes)]
            # tuple.__new__ skips Verdict.__new__, a Python-level function: one frame less.
            verdicts[i] = _tuple_new(Verdict, (False, _REASONS[(word >> 32) & 0xFF], key,
                                               out[row + 1]))
        return verdicts

    def resolve(self, txn_id: int, keys: Sequence[bytes], commit_ts: int | None) -> None:
        """Finishes a prepared transaction on some of its keys.

        Releases ``txn_id``'s lock on each key it locked, and removes its intent from each key that
        carries it (keys with no intent or with another transaction's are ignored) and, if
        ``commit_ts`` is not None, records it as the last commit of those keys (keeping the larger;
        not at all if it is at or below the low water, see the module docstring).

        Raises:
            InvalidArgumentError, RecordTooLargeError: a bad argument (nothing is changed).
            StoreClosedError.
        """
        self._handle()
        txn_id = _check_txn_id(txn_id)
        has_commit = commit_ts is not None
        commit_ts = _check_u64(commit_ts, "commit_ts") if has_commit else 0
        keys, lens = _keys_and_lengths(keys, f"resolve of txn {txn_id}: keys")
        blob = b"".join(keys)
        with self._lock:
            rc = lib.adj_resolve(self._handle(), txn_id, blob, len(blob), lens, len(keys),
                                 has_commit, commit_ts, self._size, self._err)
            if rc:  # pragma: no cover - the arguments were checked above
                _raise(rc, self._err)

    def load(self, items: Iterable[tuple[bytes, int]]) -> None:
        """Records commit timestamps in bulk: rebuilds the table after a restart.

        Each ``(key, ts)`` sets the key's last commit to the larger of ``ts`` and what it has;
        timestamps at or below the low water are skipped (they carry no information). All or
        nothing: every item is checked before any is recorded.

        Raises:
            InvalidArgumentError, RecordTooLargeError: a bad item (nothing is recorded).
            MemoryError: the table could not grow (nothing is recorded).
            StoreClosedError.
        """
        self._handle()
        keys, lens, stamps = _check_items(items)
        blob = b"".join(keys)
        ts = array("Q", stamps)
        with self._lock:
            rc = lib.adj_load(self._handle(), blob, len(blob), lens,
                              ffi.from_buffer("uint64_t[]", ts), len(keys), self._err)
            if rc:
                _raise(rc, self._err)

    def prune(self, low_water: int) -> int:
        """Raises the low water to ``low_water`` and drops every commit record at or below it.

        A lower value than the current one changes nothing (the low water never goes down).
        Keys left with neither a commit record nor an intent are forgotten; intents are never
        pruned. Transactions with ``read_ts`` below the new low water are rejected from now on
        (TOO_OLD).

        Returns:
            The number of commit records dropped.

        Raises:
            InvalidArgumentError, StoreClosedError.
        """
        self._handle()
        low_water = _check_u64(low_water, "low_water")
        dropped = self._u64
        with self._lock:
            lib.adj_prune(self._handle(), low_water, dropped)
            return int(dropped[0])

    # ------------------------------------------------------------------ looking

    def last_commit_ts(self, key: bytes) -> int:
        """The key's last commit timestamp; 0 if none is known (or it was pruned)."""
        return self._lookup(key)[0]

    def intent(self, key: bytes) -> tuple[int, int] | None:
        """``(txn_id, prepare_ts)`` of the intent on the key, or None."""
        _, txn_id, ts, _ = self._lookup(key)
        return (txn_id, ts) if txn_id else None

    def locks(self, key: bytes) -> int:
        """How many transactions hold a lock on the key."""
        return self._lookup(key)[3]

    def _lookup(self, key: bytes) -> tuple[int, int, int, int]:
        self._handle()
        key = _check_key(key, "key")
        out = self._u64
        with self._lock:
            lib.adj_lookup(self._handle(), key, len(key), out, out + 1, out + 2, out + 3)
            return out[0], out[1], out[2], out[3]

    @property
    def low_water(self) -> int:
        """Transactions with ``read_ts`` below it are rejected (TOO_OLD)."""
        return self.stats().low_water

    def stats(self) -> AdjudicatorStats:
        with self._lock:
            s = self._stats
            lib.adj_get_stats(self._handle(), s)
            return AdjudicatorStats(s.keys, s.intents, s.low_water, s.memory_bytes, s.locks)

    def __len__(self) -> int:
        return self.stats().keys

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        return self._t is None

    def close(self) -> None:
        """Frees the table. Idempotent; any later call but ``close`` raises StoreClosedError."""
        with self._lock:
            t, self._t = self._t, None
            if t is not None:
                lib.adj_free(t)

    def __enter__(self) -> Adjudicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        t = getattr(self, "_t", None)
        if t is not None:
            self._t = None
            lib.adj_free(t)

    def __repr__(self) -> str:
        if self._t is None:
            return "<Adjudicator closed>"
        s = self.stats()
        return f"<Adjudicator {s.keys} keys, {s.intents} intents, low water {s.low_water}>"

    def _handle(self):
        if self._t is None:
            raise errors.StoreClosedError("the adjudicator is closed")
        return self._t

    def _rows_for(self, n: int):
        """Room for the verdict rows of a batch of ``n`` (two words per rejected request): the
        buffer kept between calls, grown up to _ROWS_KEEP rows; a larger batch gets one of its
        own, freed with it, as the C code frees a huge batch's scratch."""
        if n > _ROWS_KEEP:
            return ffi.new("uint64_t[]", 2 * n)
        rows = min(max(n, 2 * self._rows), _ROWS_KEEP)
        self._out = ffi.new("uint64_t[]", 2 * rows)
        self._rows = rows
        return self._out


def _raise(rc: int, err) -> None:
    message = ffi.string(err.message).decode("utf-8", "replace")
    if rc == lib.ADJ_ERR_NOMEM:
        raise MemoryError(message)
    if rc == lib.ADJ_ERR_TOO_LARGE:
        raise errors.RecordTooLargeError(message)
    if rc == lib.ADJ_ERR_INVAL:
        raise errors.InvalidArgumentError(message)
    raise errors.MeridianError(f"unexpected return code {rc}: {message}")  # pragma: no cover


# ------------------------------------------------------------------------ the specification


class ReferenceAdjudicator:
    """The adjudicator in plain dictionaries: the readable specification of
    :class:`Adjudicator`, with the same interface and the same decisions (the tests compare them
    operation by operation). ``seed`` is checked and otherwise ignored: Python's dict hashes
    ``bytes`` with its own secret key.

    Thread-safety: none; it is a specification, not a server component.
    """

    def __init__(self, *, low_water: int = 0, seed: int | None = None) -> None:
        self._low_water = _check_u64(low_water, "low_water")
        _hash_key(seed)
        # Invariant: every value of _commits is above _low_water.
        self._commits: dict[bytes, int] = {}  # key -> last commit ts
        self._intents: dict[bytes, tuple[int, int]] = {}  # key -> (txn_id, prepare ts)
        self._locks: dict[bytes, dict[int, int]] = {}  # key -> {txn_id: prepare ts}
        # key -> the latest prepare ts of the locks taken since the key had none
        self._lock_ts: dict[bytes, int] = {}
        self._closed = False

    def adjudicate(self, batch: Sequence[TxnRequest]) -> list[Verdict]:
        self._check_open()
        batch = _check_batch(batch)
        return [self._adjudicate_one(txn) for txn in batch]

    def _adjudicate_one(self, txn: TxnRequest) -> Verdict:
        conflict = self._find_conflict(txn)
        if conflict is not None:
            return conflict
        for key in txn.writes:
            if txn.prepare:
                self._intents[key] = (txn.txn_id, txn.commit_ts)
            else:
                self._commits[key] = max(self._commits.get(key, 0), txn.commit_ts)
        if txn.prepare and txn.serializable:
            for key in txn.reads:
                intent = self._intents.get(key)
                if intent is not None and intent[0] == txn.txn_id:
                    continue  # its intent covers it
                self._locks.setdefault(key, {})[txn.txn_id] = txn.commit_ts
                self._lock_ts[key] = max(self._lock_ts.get(key, 0), txn.commit_ts)
        return _OK

    def _find_conflict(self, txn: TxnRequest) -> Verdict | None:
        if txn.read_ts < self._low_water:
            return Verdict(False, ConflictReason.TOO_OLD, None, self._low_water)
        for key in txn.writes:
            conflict = self._check_key(txn, key, ConflictReason.WRITE_WRITE)
            if conflict is not None:
                return conflict
        if txn.serializable:
            for key in txn.reads:
                conflict = self._check_key(txn, key, ConflictReason.READ_WRITE)
                if conflict is not None:
                    return conflict
        return None

    def _check_key(self, txn: TxnRequest, key: bytes, reason: ConflictReason) -> Verdict | None:
        intent = self._intents.get(key)
        if intent is not None and intent[0] != txn.txn_id:
            return Verdict(False, ConflictReason.INTENT, key, intent[1])
        if reason == ConflictReason.WRITE_WRITE and set(self._locks.get(key, ())) - {txn.txn_id}:
            return Verdict(False, ConflictReason.INTENT, key, self._lock_ts[key])
        last = self._commits.get(key, 0)
        if last > txn.read_ts:
            return Verdict(False, reason, key, last)
        return None

    def resolve(self, txn_id: int, keys: Sequence[bytes], commit_ts: int | None) -> None:
        self._check_open()
        txn_id = _check_txn_id(txn_id)
        if commit_ts is not None:
            commit_ts = _check_u64(commit_ts, "commit_ts")
        keys, _ = _keys_and_lengths(keys, f"resolve of txn {txn_id}: keys")
        for key in keys:
            holders = self._locks.get(key, {})
            if holders.pop(txn_id, None) is not None and not holders:
                del self._locks[key]
                del self._lock_ts[key]
            intent = self._intents.get(key)
            if intent is None or intent[0] != txn_id:
                continue
            del self._intents[key]
            if commit_ts is not None and commit_ts > self._low_water:
                self._commits[key] = max(self._commits.get(key, 0), commit_ts)

    def load(self, items: Iterable[tuple[bytes, int]]) -> None:
        self._check_open()
        keys, _, stamps = _check_items(items)
        for key, ts in zip(keys, stamps):
            if ts > self._low_water:
                self._commits[key] = max(self._commits.get(key, 0), ts)

    def prune(self, low_water: int) -> int:
        self._check_open()
        low_water = _check_u64(low_water, "low_water")
        if low_water <= self._low_water:
            return 0
        self._low_water = low_water
        old = [key for key, ts in self._commits.items() if ts <= low_water]
        for key in old:
            del self._commits[key]
        return len(old)

    def last_commit_ts(self, key: bytes) -> int:
        self._check_open()
        return self._commits.get(_check_key(key, "key"), 0)

    def intent(self, key: bytes) -> tuple[int, int] | None:
        self._check_open()
        return self._intents.get(_check_key(key, "key"))

    def locks(self, key: bytes) -> int:
        self._check_open()
        return len(self._locks.get(_check_key(key, "key"), ()))

    @property
    def low_water(self) -> int:
        self._check_open()
        return self._low_water

    def stats(self) -> AdjudicatorStats:
        self._check_open()
        held = self._intents.keys() | self._locks.keys()
        keys = self._commits.keys() | held
        memory = (sys.getsizeof(self._commits) + sys.getsizeof(self._intents)
                  + sys.getsizeof(self._locks) + sum(map(sys.getsizeof, keys)))
        locks = sum(map(len, self._locks.values()))
        return AdjudicatorStats(len(keys), len(held), self._low_water, memory, locks)

    def __len__(self) -> int:
        return self.stats().keys

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._commits = {}
        self._intents = {}
        self._locks = {}
        self._lock_ts = {}

    def __enter__(self) -> ReferenceAdjudicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.StoreClosedError("the adjudicator is closed")


# --------------------------------------------------------------------------------- checking


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_u64(value: object, name: str) -> int:
    if type(value) is int and 0 <= value <= MAX_TS:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgumentError(f"{name} must be an int, not {_describe(value)}")
    # An int subclass counts as its int value, whatever its own __int__ or comparisons say:
    # the value checked is the value used.
    value = int.__index__(value)
    if not 0 <= value <= MAX_TS:
        raise errors.InvalidArgumentError(f"{name} {value} is outside 0..2**64-1")
    return value


def _check_txn_id(value: object) -> int:
    txn_id = _check_u64(value, "txn_id")
    if txn_id == 0:
        raise errors.InvalidArgumentError("txn_id must be > 0")
    return txn_id


def _check_header(txn_id: object, read_ts: object, commit_ts: object) -> tuple[int, int, int]:
    """Slow path of TxnRequest's timestamp checks: returns them as ints or raises."""
    txn_id = _check_txn_id(txn_id)
    read_ts = _check_u64(read_ts, f"txn {txn_id}: read_ts")
    commit_ts = _check_u64(commit_ts, f"txn {txn_id}: commit_ts")
    if commit_ts <= read_ts:
        raise errors.InvalidArgumentError(
            f"txn {txn_id}: commit_ts {commit_ts} is not above read_ts {read_ts}")
    return txn_id, read_ts, commit_ts


def _check_key(key: object, name: str) -> bytes:
    if type(key) is bytes and 0 < len(key) <= MAX_KEY_SIZE:
        return key
    if not isinstance(key, bytes):
        raise errors.InvalidArgumentError(f"{name} must be bytes, not {_describe(key)}")
    # A bytes subclass counts as its bytes, whatever its own __bytes__ or __len__ say: the key
    # checked is the key used.
    key = bytes.__bytes__(key)
    if not key:
        raise errors.InvalidArgumentError(f"{name} is empty (a key is 1..{MAX_KEY_SIZE} bytes)")
    if len(key) > MAX_KEY_SIZE:
        raise errors.RecordTooLargeError(
            f"{name} is {len(key)} bytes, over the {MAX_KEY_SIZE}-byte key limit")
    return key


def _key_tuple(keys: object, txn_id: int, name: str) -> tuple:
    """``keys`` (not a list or tuple) as a tuple, or InvalidArgumentError."""
    return _keys_and_lengths(keys, f"txn {txn_id}: {name}")[0]


def _keys_and_lengths(keys: object, name: str) -> tuple[tuple[bytes, ...], bytes]:
    """Checks a sequence of keys; returns it as a tuple of bytes, and the keys' lengths as one
    byte each (the C library's key-length array). ``name`` says where, e.g. "txn 7: writes"."""
    if type(keys) is list:
        keys = tuple(keys)
    elif type(keys) is not tuple:
        if isinstance(keys, (bytes, bytearray, memoryview, str)):
            raise errors.InvalidArgumentError(
                f"{name} must be a sequence of keys, not {_describe(keys)}")
        try:
            keys = tuple(keys)  # type: ignore[arg-type]
        except TypeError:
            raise errors.InvalidArgumentError(
                f"{name} must be a sequence of keys, not {_describe(keys)}") from None
    try:
        lens = bytes(map(len, keys))
    except (TypeError, ValueError):  # no length, or one over 255
        lens = None
    if lens is None or lens.translate(None, _VALID_LENGTHS) or \
            not _BYTES_ONLY.issuperset(map(type, keys)):
        keys = tuple(_check_key(key, f"{name}[{i}]") for i, key in enumerate(keys))
        lens = bytes(map(len, keys))
    return keys, lens


def _check_batch(batch: object) -> list[TxnRequest] | tuple[TxnRequest, ...]:
    if type(batch) is not list and type(batch) is not tuple:
        if isinstance(batch, (bytes, bytearray, memoryview, str, TxnRequest)):
            raise errors.InvalidArgumentError(
                f"batch must be a sequence of TxnRequest, not {_describe(batch)}")
        try:
            batch = list(batch)  # type: ignore[call-overload]
        except TypeError:
            raise errors.InvalidArgumentError(
                f"batch must be a sequence of TxnRequest, not {_describe(batch)}") from None
    for i, txn in enumerate(batch):
        if not isinstance(txn, TxnRequest):
            raise errors.InvalidArgumentError(
                f"batch[{i}] must be a TxnRequest, not {_describe(txn)}")
    return batch


def _check_items(items: object) -> tuple[tuple[bytes, ...], bytes, list[int]]:
    """Checks the (key, ts) pairs of a load; returns the keys, their lengths and the stamps."""
    if isinstance(items, (bytes, bytearray, memoryview, str)):
        raise errors.InvalidArgumentError(
            f"load takes (key, ts) pairs, not {_describe(items)}")
    try:
        items = list(items)  # type: ignore[call-overload]
    except TypeError:
        raise errors.InvalidArgumentError(
            f"load takes an iterable of (key, ts) pairs, not {_describe(items)}") from None
    if not _PAIR_TYPES.issuperset(map(type, items)) or not set(map(len, items)) <= {2}:
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise errors.InvalidArgumentError(
                    f"load: item {i} must be a (key, ts) pair, not {_describe(item)}")
    keys = list(map(itemgetter(0), items))
    stamps = list(map(itemgetter(1), items))
    keys, lens = _keys_and_lengths(keys, "load: key")
    if not _INT_ONLY.issuperset(map(type, stamps)) or \
            (stamps and not 0 <= min(stamps) <= max(stamps) <= MAX_TS):
        stamps = [_check_u64(ts, f"load: item {i}: ts") for i, ts in enumerate(stamps)]
    return keys, lens, stamps


def _hash_key(seed: object) -> tuple[int, int]:
    """The table's 128-bit hash key as two 64-bit halves."""
    if seed is None:
        raw = os.urandom(16)
        return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise errors.InvalidArgumentError(f"seed must be an int or None, not {_describe(seed)}")
    seed = int.__index__(seed)  # an int subclass: its int value (see _check_u64)
    if not 0 <= seed < 2**128:
        raise errors.InvalidArgumentError(f"seed {seed} is outside 0..2**128-1")
    return seed & MAX_TS, seed >> 64
