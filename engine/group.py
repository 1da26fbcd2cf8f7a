"""A Raft group's state machine: MVCC data, the adjudicator and the closed timestamp (ARCH §5).

Every replica of a group applies the same log to a :class:`GroupStateMachine` and must reach the
same state, so every decision here is a function of the log alone: no clock, no randomness, no
replica-local history.

Commands
--------
An entry's data is one msgpack array whose first element says what it is:

``[COMMIT, txn_id, read_ts, proposed_ts, flags, writes, reads]``
    A one-phase commit (ARCH §5.5, the single-group path). ``writes`` is a list of
    ``[key, value]`` pairs (value ``nil`` deletes), ``reads`` a list of keys (checked only when
    ``flags & SERIALIZABLE``). ``read_ts`` 0 means "no snapshot read": the transaction only
    wrote blindly, and is validated as if its snapshot were everything applied before it. An
    optional eighth element, ``merges``, lists writes to regional keyspaces as ``[key,
    resolver, value]``: each is merged into the key's cell (see :mod:`engine.merge`) with
    this group's region as origin, and recorded in the group's *outbox* for the other regions.
    An optional ninth element (``merges`` then possibly empty), ``spans``, lists the ranges a
    serializable transaction scanned, ``[start, end, limit]``: the commit is refused when a
    key in one changed after ``read_ts`` or another transaction holds an intent there.
    ``flags & MOVE_COPY``: the commit is a keyspace move's copy into this group, which the
    keyspace's write fence (FENCE) does not refuse; ``flags >> 8`` is then the move's epoch.
``[CLOSE, proposed_ts(, lifetime)]``
    Closes timestamps up to ``proposed_ts`` and writes nothing. A leader proposes one when a
    read needs a stable snapshot above the current closed timestamp, and periodically while idle
    so that learners' reads at bounded staleness stay servable. With ``lifetime`` (nanoseconds,
    the proposing leader's configured maximum transaction lifetime), the group's lifetime
    becomes that from this entry on: the configuration may change between restarts, and the
    lifetime decides which transactions are too old, so every replica must take the change
    at the same entry.
``[PREPARE, txn_id, read_ts, proposed_ts, flags, writes, reads, locks, primary, deadline]``
    The first phase of a two-phase commit (ARCH §5.5, several groups). Validated like a COMMIT;
    if accepted, each written key gets an *intent* of the transaction at the entry's timestamp,
    the *prepare timestamp*, instead of a version, and each key of ``locks`` (and of ``reads``,
    when serializable) that it does not write, a *lock*: keys the transaction read and must keep
    unchanged until it finishes. A lock keeps writers out, not readers: any number of
    transactions may hold one on a key. ``primary`` is the group that holds the transaction's
    record, ``deadline`` the timestamp after which anyone may finish the transaction from that
    record. Preparing a transaction that is already prepared here answers the same prepare
    timestamp again. An optional eleventh element, ``spans``, is checked as a COMMIT's, and then
    locks those ranges against other transactions' writes until this one is resolved.
``[DECIDE, txn_id, proposed_ts, commit_ts(, since, participants)]``
    On the primary group only: writes the transaction's record — committed at ``commit_ts``,
    or aborted when ``commit_ts`` is 0 — unless a record exists already, in which case that
    record is the answer: the first decision in the log wins, which is what lets a reader that
    finds an abandoned intent abort it safely while its coordinator might still be trying to
    commit. The primary's own intents are resolved in the same step. The coordinator's
    decision also names ``since``, the transaction's earliest prepare timestamp, and its
    ``participants`` (groups): a commit decided more than :data:`DECISION_HORIZON_NS` after
    ``since`` is recorded as an abort instead (see FORGET), as is one of a transaction with
    no prepare here (a coordinator decides a commit only once it has prepared here too,
    and only a recorded fate resolves the primary group's own intents), and the
    participants are where the record's garbage collection checks that no intent is left.
``[FORGET, proposed_ts, txn_ids]``
    Deletes transaction records decided at least :data:`RECORD_RETENTION_NS` before this
    entry's timestamp (younger ones, and records that name no participants, stay). The leader
    proposes it only for aborts, and for commits once every participant has confirmed it holds
    no intent of the transaction. A transaction without a record counts as undecided, so a
    recovery would abort it: safe for a forgotten abort, and for a forgotten commit because no
    intent of it is left anywhere. A coordinator's commit arriving after its abort was
    forgotten comes more than the retention after its first prepare (a recovery aborts only
    after a prepare), and finds no prepare of it left on the primary (the abort removed it),
    so DECIDE records it as an abort, whatever ``since`` it names.
``[REMOTE, origin_group, proposed_ts, after_ts, up_to_ts, writes]``
    Regional keyspaces (ARCH §6): the committed writes of another region's group, as its
    outbox holds them, after the origin's timestamp ``after_ts`` and up to ``up_to_ts``. Each
    is merged into the key's cell by the keyspace's resolver (the cell is written as a version
    at this entry's timestamp); writes at or below the origin's *watermark* here were applied
    before and are skipped, so a batch delivered twice is applied once. A batch that starts
    after the watermark (``after_ts`` above it: an earlier batch is missing, overtaken in
    flight) is refused whole, as a ``gap``. The watermark becomes ``up_to_ts``. Writes to a
    keyspace fenced at level 2 or 3 here (being dropped) are skipped. A write that
    cannot be merged here (the key holds a plain value, or another resolver's cell: a client
    that broke the keyspace's contract) is left out and logged as a conflict whose resolver is
    ``"refused"``; the rest of the batch applies, so one bad write cannot stall its stream.
    A batch that would grow a cell over the value limit is refused whole, and applies when
    retried once other regions' writes have shrunk the cell: a write left out for its size
    would be kept in the regions it reached first (a local commit may grow a merge type's
    cell only to its region's share of the limit, so the converged cell fits).
``[DRAIN, proposed_ts, keys]``
    Removes conflict-log records (side-table keys starting with ``c``).
``[SHIPPED, proposed_ts, destination_group, watermark]``
    The ``destination_group`` (another region's group) has applied this group's regional
    writes up to ``watermark`` (its own watermark of this group, as it answered the leader
    shipping them). The outbox keeps each record until every destination has it (see
    "Regional keyspaces" below).
``[FENCE, proposed_ts, keyspace_id, level, available_from]`` (optionally ``+ [expect]``, or
``+ [expect or nil, epoch]``)
    Moving a keyspace to another group (its home region), or dropping it: level 1 refuses
    every commit and prepare that writes the keyspace (conflict ``moved``: the writer looks
    the keyspace up again), except the move's own copy (``MOVE_COPY``, taken only while the
    fence is ``(1, MAX_TS)``: the group closed to everything but the copy); level 2 refuses
    reads of it too (the node answers ``moved``); level 3 also lets PURGE erase its data
    here, once this group can never be its home again (the keyspace is being dropped, or
    its catalog record names another home): it is taken only from level 2 and is kept by
    a later level 2 (conflict ``fence_changed``); at levels 2 and 3 the entry's own
    timestamp is recorded as ``available_from``; level 0 lifts the fence; ``available_from``
    (the group receiving the keyspace sets it) refuses reads of it below that timestamp, where
    its copy is not complete, and commits and prepares that write it (or, serializable, read
    it) with a snapshot below that timestamp: the writes before it went to another group,
    which the adjudicator here cannot check them against (conflict ``moved``); a
    serializable transaction's read keys and scanned ranges are refused from level 2, like
    reads. With ``expect``, ``[level, available_from]``, the fence changes only if it is that
    when the entry is applied (else the conflict ``fence_changed``).
    ``epoch`` (0 if absent) is the keyspace's epoch in the catalog when the move or drop
    making the change began (engine.catalog, :attr:`Keyspace.epoch`): the fence keeps the
    highest epoch of the FENCE entries applied to it, changed by them or not, and refuses a
    change with a lower one (``fence_changed``), so a move or drop that a newer one has
    overtaken can no longer change it. At its own epoch, a move's or drop's changes only go
    forward (``_fence_rank``: ``(1, MAX_TS)``, ``(1, t)``, level 2, open, level 3): a late
    copy of an earlier one, or a joined drop's second level 2, is refused. A move's copy
    (``MOVE_COPY``) lands only while the fence is ``(1, MAX_TS)`` at the copy's own epoch.
``[PURGE, proposed_ts, keyspace_id, start, end, side_start, side_end, max_ts]``
    Erases a keyspace's data here, a range at a time (the leader chooses ranges of a bounded
    size): if the keyspace's fence is at level 3 (see FENCE), every version at or below
    ``max_ts`` and the group's low water of the keys ``start <= key < end``, and the
    conflict-log records (side-table keys) ``side_start <= skey < side_end``, each range
    clipped to the keyspace's keys. Versions above the low water stay (a later PURGE erases
    them): the adjudicator's table may still hold their commits, and every replica's table,
    rebuilt or not, must stay the same. At any other fence level it does nothing: a move
    bringing the keyspace back (level 1) copies it anew. Later entries read the store as
    the PURGE left it (a PURGE ends its apply call, see :meth:`GroupStateMachine.apply`).
``[RESOLVE, txn_id, proposed_ts, commit_ts]``
    Finishes the transaction's intents in this group: each becomes a version at
    ``commit_ts`` (or disappears, if ``commit_ts`` is 0). Resolving a transaction with no
    intents here does nothing, so the coordinator and a recovering reader may both send it.
    A commit below the prepare timestamp here is refused (INVALID) and writes nothing, but
    removes the intents: the prepare is a late copy of one resolved here already (a
    duplicated request), and they would otherwise stay for good.

Timestamps
----------
Each entry gets a timestamp when it is *applied*: ``ts = max(proposed_ts, closed + 1)``, and
the group's *closed timestamp* becomes ``ts``. So every entry closes everything at or below its
own timestamp: no commit at or below ``closed`` can ever appear later, whatever leader proposes
it, and a snapshot read at ``read_ts <= closed`` is stable on any replica that has applied that
far — leader or learner. ``proposed_ts`` is the proposing leader's hybrid-logical-clock reading,
which keeps commit timestamps close to real time; the bump above ``closed`` is what makes them
safe across leader changes. A commit's timestamp is therefore always above its ``read_ts``
(which was at most ``closed`` when the snapshot was read).

Validation
----------
The group's :class:`~engine.adjudicator.Adjudicator` (the C hot path) checks each commit against
the last commit timestamp of every key it writes (and reads, when serializable): a key
committed after ``read_ts`` is a conflict, first committer wins. Its table only needs commits
above the *low water* mark, ``closed - max_txn_lifetime``, because a transaction whose
``read_ts`` is below low water is rejected as too old anyway; the table is pruned as low water
rises, which bounds its memory by the write rate times the lifetime. After a restart or a
snapshot install the table is rebuilt from the MVCC store (the newest version of every key
above low water), which gives exactly the table the replica had at that applied index, so
decisions stay identical on every replica.

Intents and records
-------------------
Intents, prepared transactions and transaction records live in the MVCC store's side table,
written in the same LMDB transaction as the versions: ``i`` + key → the intent, ``l`` + key →
the read locks on the key (any number of transactions may hold one: reads never conflict with
reads, only with writes), ``p`` + be64(txn id) → the transaction's prepare timestamp, keys,
primary and deadline, ``t`` + be64(txn id) → its record (status, commit timestamp, the timestamp
it was decided at and the participants), ``T`` + be64(decided at) + be64(txn id) → nothing (the
records by age, for FORGET). A read at a timestamp at or above an intent's prepare timestamp
must wait for the intent to be resolved (its commit timestamp is at least the prepare timestamp,
and may be at or below the read's) -- unless it is a lock, which writes nothing: the key's value
is the same whatever the transaction's fate. DECIDE and RESOLVE close the group up to the commit
timestamp, so a snapshot taken after the resolution is at or above it.

Regional keyspaces
------------------
A regional key's versions hold encoded :class:`~engine.merge.Cell` values. Side-table keys:
``o`` + be64(ts) → the writes this group's region committed at ``ts`` (its outbox); ``w`` +
be32(origin group) → the origin's watermark; ``s`` + be32(destination group) → how far that
destination has applied this group's writes (SHIPPED); ``m`` + be32(destination group) → the
newest outbox record trimmed before that destination had it (see below); ``c`` + key +
be64(ts) + origin → a conflict-log record, one per write that lost a concurrent conflict here.
A record holds the losing write's value, so a regional write's value (a COMMIT's merge, a
REMOTE's write) may take at most ``MAX_VALUE_SIZE`` less 4 KiB, the room of the record's other
fields; a larger one makes the entry malformed.

An outbox record is trimmed (by CLOSE, SHIPPED and regional commits, a batch at a time) once
every destination has applied it, so a region cut off for hours catches up when it is back.
One still missing somewhere after :data:`OUTBOX_RETENTION_NS` of closed time is trimmed all
the same, to bound the outbox: that destination then needs a full copy. The trim records it
(``m``, :meth:`GroupStateMachine.missed`), as replicated state: every replica of the group
reports it (``engine.node``'s status), after restarts and changes of leader too, and nothing
clears it, since nothing brings the dropped writes back. "Had it" is as far as this group
knows, from its SHIPPED entries (which lag the destination by a second or so): a record
trimmed while its destination was applying it at that very moment may be counted as missed.

Durability
----------
The versions of all commits applied in one call, the applied index and this machine's own state
(closed timestamp, low water and lifetime) are written in one MVCC transaction (``app_state``),
so after a crash they agree; entries at or below the store's applied index are skipped on
replay.
"""

from __future__ import annotations

import enum
import hashlib
import mmap
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import BinaryIO
from dataclasses import dataclass

import msgpack

from . import planted
from .adjudicator import MAX_TXN_KEYS, Adjudicator, ConflictReason, TxnRequest
from .errors import (
    CorruptStateError,
    InvalidArgumentError,
    ResolverUnavailableError,
    StoreClosedError,
)
from .merge import (
    MAX_APP_VALUE_SIZE,
    MERGE,
    PUT,
    RESOLVER_NAMES,
    Cell,
    Conflict,
    RemoteWrite,
    Resolver,
    ResolverFailedError,
    decode_cell,
    encode_cell,
    is_resolver_name,
    resolver_for,
    write_op,
)
from .mvcc import MAX_KEY_SIZE, MAX_SIDE_KEY_SIZE, MAX_TS, MAX_VALUE_SIZE, MVCCStore
from .placement import keyspace_bounds, user_key

__all__ = [
    "CMD_COMMIT",
    "CMD_CLOSE",
    "CMD_PREPARE",
    "CMD_DECIDE",
    "CMD_RESOLVE",
    "CMD_REMOTE",
    "CMD_DRAIN",
    "CMD_FENCE",
    "CMD_PURGE",
    "MAX_EPOCH",
    "MAX_KEYSPACE_ID",
    "CMD_FORGET",
    "DECISION_HORIZON_NS",
    "RECORD_RETENTION_NS",
    "Intent",
    "Outcome",
    "SERIALIZABLE",
    "MOVE_COPY",
    "CommitResult",
    "GroupStateMachine",
    "encode_commit",
    "encode_close",
    "encode_shipped",
    "encode_prepare",
    "encode_decide",
    "encode_resolve",
    "encode_remote",
    "encode_drain",
    "encode_fence",
    "encode_purge",
    "encode_forget",
]

CMD_COMMIT = 1
CMD_CLOSE = 2
CMD_PREPARE = 3
CMD_DECIDE = 4
CMD_RESOLVE = 5
CMD_REMOTE = 6
CMD_DRAIN = 7
CMD_FENCE = 8
CMD_FORGET = 9
CMD_SHIPPED = 10
CMD_PURGE = 11
SERIALIZABLE = 1
MOVE_COPY = 2
"""COMMIT flag: a keyspace move's copy, exempt from the write fence that keeps every other
writer of the keyspace out of the group receiving it until the move is done."""
OUTBOX_RETENTION_NS = 6 * 3600 * 10**9
"""The longest (in closed time) a group keeps a regional write that some other region has not
applied yet: a region cut off for longer needs a full copy."""
RECORD_RETENTION_NS = 600 * 10**9
"""How long (in closed time) a transaction record is kept at least before FORGET removes it."""
DECISION_HORIZON_NS = RECORD_RETENTION_NS // 2
"""A commit decided this long after the transaction's first prepare is recorded as an abort."""
INTENT_ROOM = 64
"""Bytes an intent's record takes beside the value it holds (the transaction's ids and
timestamps, with msgpack's framing): a value written by a two-phase commit is at most a stored
value's limit less this."""
MAX_PARTICIPANTS = (MAX_VALUE_SIZE - 64) // 5
"""Most participant groups a DECIDE may name: its record keeps them (a group id packs in at
most 5 bytes, the rest of the record in less than 64), and must fit in a stored value."""
MAX_KEY_LOCKS = 10_000
"""Most prepared transactions holding a read lock on one key at once: a prepare that would take
one more is refused (conflict ``intent``), so that the key's lock record stays well within a
side-table value."""

# Side-table key prefixes (see "Intents and records").
_INTENT = b"i"
_LOCK = b"l"  # + key -> msgpack [[txn id, prepare ts, primary, deadline], ...]: its read locks
_PREPARED = b"p"
_RECORD = b"t"
_RECORD_AGE = b"T"  # + be64(decided ts) + be64(txn id) -> b"": records, oldest first
_OUTBOX = b"o"
_WATERMARK = b"w"
_CONFLICT = b"c"
_KIND_PUT, _KIND_DELETE, _KIND_LOCK = 0, 1, 2
_REC_COMMITTED, _REC_ABORTED = 1, 2
_INTENT_END = b"j"
_LOCK_END = b"m"
_OUTBOX_END = b"p"
_OUTBOX_TRIMMED = b"O"  # be64: the newest outbox record trimmed so far
_FENCE = b"f"  # + be32 keyspace id -> msgpack [level, available_from]
_FENCE_END = b"g"
_SHIPPED = b"s"  # + be32 destination group -> be64: its watermark of this group
_MISSED = b"m"  # + be32 destination group -> be64: the newest record trimmed before it had it
_PREFIX = 4  # a stored key's keyspace prefix (engine.placement.KEY_PREFIX_SIZE)
MAX_KEYSPACE_ID = 2**32 - 2
"""The largest keyspace id a FENCE or PURGE may name (its keys' span must end in a prefix)."""
MAX_EPOCH = 2**55 - 1
"""The largest epoch of a keyspace's moves and drops (a copy carries it in its flags' upper
bits, see COMMIT)."""
_MAX_ORIGIN_IN_KEY = 32  # bytes of a conflict-log key that name the losing write's origin
_PREPARED_END = b"q"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_TRIM_BATCH = 1000

_REASONS = {
    ConflictReason.WRITE_WRITE: "write_write",
    ConflictReason.READ_WRITE: "read_write",
    ConflictReason.INTENT: "intent",
    ConflictReason.TOO_OLD: "too_old",
}


class Outcome(enum.Enum):
    COMMITTED = "committed"
    PREPARED = "prepared"
    ABORTED = "aborted"
    RESOLVED = "resolved"
    CONFLICT = "conflict"
    INVALID = "invalid"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Intent:
    """A prepared transaction's intent on one key (see the module docstring)."""

    key: bytes
    txn_id: int
    prepare_ts: int
    primary: int
    deadline: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What applying a COMMIT entry decided.

    Attributes:
        outcome: committed, conflict (retryable), invalid (the command broke a rule that the
            proposer should have checked; nothing was written) or too large (a regional write
            would grow its key's merged cell over what a value may take; nothing was written).
        ts: the commit timestamp when committed, else the entry's timestamp.
        reason: for a conflict, ``write_write``/``read_write``/``intent``/``too_old``; for an
            invalid command, what was wrong.
        key: the conflicting key, if any.
        conflict_ts: the timestamp of the conflicting commit or intent (0 if none); for
            another region's batch (REMOTE), its origin's watermark before the batch: the
            batch applied its writes above it.
    """

    outcome: Outcome
    ts: int
    reason: str = ""
    key: bytes | None = None
    conflict_ts: int = 0

    @property
    def committed(self) -> bool:
        return self.outcome is Outcome.COMMITTED


def encode_commit(txn_id: int, read_ts: int, proposed_ts: int,
                  writes: Sequence[tuple[bytes, bytes | None]], reads: Sequence[bytes] = (),
                  *, serializable: bool = False,
                  merges: Sequence[tuple[bytes, str, bytes | None]] = (),
                  move_copy: bool = False, epoch: int = 0,
                  spans: Sequence[Sequence] = ()) -> bytes:
    """The entry data of a one-phase commit (see the module docstring); ``epoch``, for a
    move's copy, is the move's; ``spans``, ``[start, end, limit]`` ranges a serializable
    transaction scanned, validated like its read keys."""
    flags = (SERIALIZABLE if serializable else 0) | (MOVE_COPY | epoch << 8 if move_copy
                                                     else 0)
    # msgpack writes tuples and lists alike, as arrays: the pairs go in as they are.
    cmd = [CMD_COMMIT, txn_id, read_ts, proposed_ts, flags, writes, reads]
    if merges or spans:
        cmd.append(list(merges))
    if spans:
        cmd.append([list(sp) for sp in spans])
    return msgpack.packb(cmd, use_bin_type=True)


def encode_remote(origin_group: int, proposed_ts: int, after_ts: int, up_to_ts: int,
                  writes: list) -> bytes:
    """The entry data that applies another region's regional writes (``writes`` as its
    outbox holds them: ``[key, resolver, value, ts, origin, prev_ts, prev_origin]``)."""
    return msgpack.packb([CMD_REMOTE, origin_group, proposed_ts, after_ts, up_to_ts, writes],
                         use_bin_type=True)


def _fence_rank(level: int, available_from: int) -> int:
    """Where a fence is in the steps of one move or drop: a move's new home goes from
    (1, MAX_TS) to (1, copied_at) to open, or, rolled back, to level 2 and 3; its old home
    from (1, moved_ts) to level 2, then to 3 or, rolled back, to open; every group a drop
    fences to level 2 and 3."""
    if level == 1:
        return 1 if available_from == MAX_TS else 2
    return {2: 3, 0: 4, 3: 5}[level]


def encode_fence(proposed_ts: int, keyspace_id: int, level: int,
                 available_from: int = 0, expect: tuple[int, int] | None = None,
                 epoch: int = 0) -> bytes:
    """The entry data that fences a keyspace in this group (see the module docstring); with
    ``expect``, ``(level, available_from)``, only if that is the keyspace's fence when the
    entry is applied; ``epoch``: the move's or drop's (a change with an epoch lower than the
    fence's is refused)."""
    cmd = [CMD_FENCE, proposed_ts, keyspace_id, level, available_from]
    if expect is not None or epoch:
        cmd.append(None if expect is None else list(expect))
    if epoch:
        cmd.append(epoch)
    return msgpack.packb(cmd)


def encode_purge(proposed_ts: int, keyspace_id: int, start: bytes, end: bytes,
                 side_start: bytes = b"", side_end: bytes = b"", max_ts: int = MAX_TS) -> bytes:
    """The entry data that erases a dropped keyspace's versions at or below ``max_ts`` (and
    the low water) of ``[start, end)`` and its conflict-log records ``[side_start,
    side_end)`` in this group (see the module docstring)."""
    return msgpack.packb([CMD_PURGE, proposed_ts, keyspace_id, start, end, side_start,
                          side_end, max_ts], use_bin_type=True)


def conflict_log_bounds(keyspace_id: int) -> tuple[bytes, bytes]:
    """The side-table span ``[start, end)`` of a keyspace's conflict-log records."""
    lo, hi = keyspace_bounds(keyspace_id)
    return _CONFLICT + lo, _CONFLICT + hi


def encode_drain(proposed_ts: int, keys: Sequence[bytes]) -> bytes:
    """The entry data that removes conflict-log records."""
    return msgpack.packb([CMD_DRAIN, proposed_ts, list(keys)], use_bin_type=True)


def encode_shipped(proposed_ts: int, destination_group: int, watermark: int) -> bytes:
    """The entry data recording how far ``destination_group`` has applied this group's
    regional writes (see the module docstring)."""
    return msgpack.packb([CMD_SHIPPED, proposed_ts, destination_group, watermark],
                         use_bin_type=True)


def encode_close(proposed_ts: int, lifetime_ns: int | None = None) -> bytes:
    """A CLOSE entry's data; with ``lifetime_ns``, it also sets the group's maximum
    transaction lifetime."""
    cmd = [CMD_CLOSE, proposed_ts]
    if lifetime_ns is not None:
        cmd.append(lifetime_ns)
    return msgpack.packb(cmd, use_bin_type=True)


def encode_prepare(txn_id: int, read_ts: int, proposed_ts: int,
                   writes: Sequence[tuple[bytes, bytes | None]], reads: Sequence[bytes] = (),
                   locks: Sequence[bytes] = (), *, primary: int, deadline: int,
                   serializable: bool = False, spans: Sequence[Sequence] = ()) -> bytes:
    """The entry data of a prepare (the first phase of a two-phase commit); ``spans``: the
    ranges a serializable transaction scanned here, validated and locked against inserts
    until it is resolved."""
    cmd = [CMD_PREPARE, txn_id, read_ts, proposed_ts, SERIALIZABLE if serializable else 0,
           writes, reads, locks, primary, deadline]
    if spans:
        cmd.append([list(sp) for sp in spans])
    return msgpack.packb(cmd, use_bin_type=True)


def encode_decide(txn_id: int, proposed_ts: int, commit_ts: int, since: int = 0,
                  participants: Sequence[int] = ()) -> bytes:
    """The entry data of a decision (``commit_ts`` 0: abort) for the primary group; the
    coordinator's names its first prepare timestamp and the participant groups."""
    cmd = [CMD_DECIDE, txn_id, proposed_ts, commit_ts]
    if since or participants:
        cmd += [since, sorted(set(participants))]
    return msgpack.packb(cmd, use_bin_type=True)


def encode_forget(proposed_ts: int, txn_ids: Sequence[int]) -> bytes:
    """The entry data that deletes old transaction records."""
    return msgpack.packb([CMD_FORGET, proposed_ts, list(txn_ids)], use_bin_type=True)


def encode_resolve(txn_id: int, proposed_ts: int, commit_ts: int) -> bytes:
    """The entry data that resolves a transaction's intents (``commit_ts`` 0: abort)."""
    return msgpack.packb([CMD_RESOLVE, txn_id, proposed_ts, commit_ts], use_bin_type=True)


class _Malformed(Exception):
    pass


class GroupStateMachine:
    """The state machine of one group (``raft.driver.StateMachine``), over an open MVCC store.

    Reads go straight to :attr:`store` at a timestamp at or below :attr:`closed_ts`; this class
    only decides what is written and when a timestamp is closed.

    Args:
        store: the group's MVCC store (the caller opens and closes it).
        max_txn_lifetime_ns: the maximum transaction lifetime this node is configured with,
            in timestamp units (nanoseconds). The group's own lifetime (:attr:`lifetime_ns`),
            which decides which transactions are too old, is the one the last CLOSE entry that
            named one set, the same on every replica; this one until then (a new group's
            replicas start from one configuration).
        on_closed: called with the new closed timestamp after every apply that raised it.
        origin: the region whose writes this group commits (the origin of its regional
            writes); the same on every replica, learners in other regions included.
        destinations: the groups this group's regional writes go to (the other regions'),
            the same on every replica; its outbox keeps a record until all of them have it.
            None: not known, and a record is kept for :data:`OUTBOX_RETENTION_NS`.
    """

    def __init__(self, store: MVCCStore, *, max_txn_lifetime_ns: int,
                 on_closed: Callable[[int], None] | None = None, origin: str = "",
                 destinations: Sequence[int] | None = None,
                 resolvers: Mapping[str, Resolver] | None = None) -> None:
        if type(max_txn_lifetime_ns) is not int or max_txn_lifetime_ns <= 0:
            raise ValueError(f"max_txn_lifetime_ns must be a positive int, "
                             f"not {max_txn_lifetime_ns!r}")
        self.store = store
        self.origin = origin
        self.destinations = None if destinations is None else tuple(sorted(set(destinations)))
        # The application resolvers this node has (``"app:<name>"`` -> resolver; see
        # engine.config.application_resolvers).
        self.resolvers = dict(resolvers or {})
        self.configured_lifetime_ns = max_txn_lifetime_ns
        self._lifetime = max_txn_lifetime_ns
        self.on_closed = on_closed
        self.on_resolved: Callable[[list[int]], None] | None = None
        self.on_outbox: Callable[[], None] | None = None
        # Called once a snapshot install has ended, in the thread that ran :meth:`restore`:
        # the install changes the closed timestamp and the intents without an apply.
        self.on_restored: Callable[[], None] | None = None
        self._fences: dict[bytes, tuple[int, int]] = {}
        self._fence_epochs: dict[bytes, int] = {}  # the keyspaces whose epoch is not 0
        # Destination group -> its SHIPPED watermark as the store holds it (see shipped):
        # every regional commit's outbox trim asks for each destination's.
        self._shipped: dict[int, int] = {}
        self._shipped_lock = threading.Lock()  # a snapshot install empties it in a thread
        self._shipped_changes = 0  # counts the times the cache was emptied
        self._restores = 0  # counts the begins and ends of restore(): odd while one runs
        # Transactions prepared here and not resolved: while there are none, a read has no
        # intent to look for, and skips the side-table lookups.
        self._prepared_count = 0
        # Prepared serializable transactions' scanned ranges: txn id -> [[start, end], ...]:
        # no other transaction may write a key in them until the transaction is resolved.
        self._span_locks: dict[int, list[list[bytes]]] = {}
        self._closed = 0
        self._low_water = 0
        self._pruned_at = 0
        self._adj: Adjudicator | None = None
        self._load_state()

    # ------------------------------------------------------------------ state

    restore_in_thread = True
    """The Raft driver runs :meth:`restore` in its worker thread: installing a large snapshot
    takes seconds, and the node's other groups go on meanwhile. Readers of the store, which
    may run then, use :attr:`restore_generation`."""

    restore_from_buffer = True
    """The Raft driver hands :meth:`restore` a received snapshot as a mapped view of its file,
    not as bytes: it is read a store chunk at a time, never held on the heap whole."""

    @property
    def restore_generation(self) -> int:
        """Changes when a snapshot install begins and again when it ends; odd while one
        runs. A read that finds it even before it begins, and unchanged once it is done, saw
        no install: the store and this state machine's fields (closed timestamp, fences)
        changed under it otherwise."""
        return self._restores

    @property
    def closed_ts(self) -> int:
        """Every commit this group will ever make at or below this timestamp is applied here."""
        return self._closed

    @property
    def low_water(self) -> int:
        """Transactions whose snapshot is older than this are rejected as too old."""
        return self._low_water

    @property
    def lifetime_ns(self) -> int:
        """The group's maximum transaction lifetime: the low water is that far below the
        closed timestamp. Set by the log (see CLOSE), so the same on every replica."""
        return self._lifetime

    @property
    def applied_index(self) -> int:
        return self.store.applied_index

    @property
    def adjudicator(self) -> Adjudicator:
        assert self._adj is not None
        return self._adj

    def close(self) -> None:
        if self._adj is not None:
            self._adj.close()
            self._adj = None

    def _load_state(self) -> None:
        self._forget_shipped()
        fences = [(skey[1:], msgpack.unpackb(raw))
                  for skey, raw in self.store.side_scan(_FENCE, _FENCE_END)]
        self._fences = {prefix: (f[0], f[1]) for prefix, f in fences if f[0] or f[1]}
        self._fence_epochs = {prefix: f[2] for prefix, f in fences if len(f) > 2 and f[2]}
        raw = self.store.app_state
        state = msgpack.unpackb(raw) if raw else [0, 0]
        closed, low_water = state[:2]
        # A state written before the lifetime was recorded: the configured one, until a
        # CLOSE names one.
        lifetime = state[2] if len(state) > 2 else self.configured_lifetime_ns
        self._pruned_at = low_water
        if self._adj is not None:
            self._adj.close()
        adj = Adjudicator(low_water=0)  # raised below, once the prepares are back
        try:
            # Prepared transactions keep their intents across restarts and snapshots, at
            # their own prepare timestamps (what conflicts with them report). They are put
            # back first, into an empty table: a key may carry a commit above its intent's
            # prepare timestamp (a REMOTE merge ignores a serializable read's lock on a
            # regional key), and the prepare was validated when it was applied anyway.
            redo = []
            span_locks = {}
            for skey, raw in self.store.side_scan(_PREPARED, _PREPARED_END):
                rec = msgpack.unpackb(raw)
                prepare_ts, keys = rec[:2]
                txn_id = _U64.unpack(skey[1:])[0]
                if len(rec) > 4 and rec[4]:
                    span_locks[txn_id] = rec[4]
                written, locked = [], []
                for key in keys:
                    (written if self._writes_key(txn_id, key) else locked).append(key)
                redo.append(TxnRequest(txn_id=txn_id, read_ts=prepare_ts - 1,
                                       commit_ts=prepare_ts, writes=written, reads=locked,
                                       serializable=True, prepare=True))
            self._prepared_count = len(redo)
            if redo:
                for verdict in adj.adjudicate(redo):
                    # Two intents on one key: a store broken by hand, or the planted bug that
                    # accepts every prepare (its live replicas took them both, as here).
                    if not verdict.ok and not planted.enabled("skip_adjudication"):
                        raise CorruptStateError(
                            f"prepared transaction cannot be restored: {verdict}")
            adj.load(self.store.latest_versions(low_water))
            adj.prune(low_water)
            # Last: a reader that sees the new closed timestamp (a learner's read waiting for
            # it) finds everything else of the new state in place too.
            self._closed = closed
            self._low_water = low_water
            self._lifetime = lifetime
            self._span_locks = span_locks
        except BaseException:
            adj.close()
            raise
        self._adj = adj

    def _app_state(self) -> bytes:
        return msgpack.packb([self._closed, self._low_water, self._lifetime])

    # ------------------------------------------------------------------ StateMachine

    def apply(self, entries) -> list[object]:
        """Applies committed entries; returns one result per entry (a :class:`CommitResult`
        for a commit, prepare, decision or resolution, the closed timestamp for a close, None
        for an entry skipped on replay)."""
        # The store is written once per call, and entries read it (regional merges): a
        # PURGE, which erases what the store holds, ends a call of its own, so that what
        # follows it reads the store without what it erased, however the log is cut; and a
        # COMMIT or PREPARE with scanned ranges starts one, so that its range check reads a
        # store that holds every entry before it (see _Batch._check_spans).
        cut = sorted({i + 1 for i, e in enumerate(entries[:-1]) if _looks_like_purge(e.data)}
                     | {i for i, e in enumerate(entries) if i and _looks_like_spans(e.data)})
        if not cut:
            return self._apply(entries)
        results: list[object] = []
        for lo, hi in zip([0, *cut], [*cut, len(entries)]):
            results += self._apply(entries[lo:hi])
        return results

    def _apply(self, entries) -> list[object]:
        skip_to = self.store.applied_index
        results: list[object] = [None] * len(entries)
        batch = _Batch(self)
        last_index = 0
        closed_before = self._closed
        for slot, entry in enumerate(entries):
            if entry.index <= skip_to:
                continue
            last_index = entry.index
            try:
                cmd = _decode(entry.data)
            except _Malformed as exc:
                results[slot] = CommitResult(Outcome.INVALID, self._closed, str(exc))
                continue
            kind = cmd[0]
            if kind == CMD_CLOSE:
                if len(cmd) > 2:
                    self._lifetime = cmd[2]
                results[slot] = self._close(cmd[1])
                batch.trim_outbox()
            elif kind == CMD_REMOTE:
                batch.flush(results)
                # Closed up to the batch's last write at least: a local commit that read one
                # of its values lands above it (last writer wins keeps causal order).
                ts = self._close(max(cmd[2], cmd[4]))
                results[slot] = batch.remote(cmd[1], cmd[3], cmd[4], cmd[5], ts)
            elif kind == CMD_FENCE:
                ts = self._close(cmd[1])
                ks_id, level, available_from = cmd[2:5]
                prefix = _U32.pack(ks_id)
                epoch = cmd[6] if len(cmd) > 6 else 0
                fence_epoch = self.fence_epoch(prefix)
                if epoch < fence_epoch:
                    # A newer move or drop of the keyspace has changed this fence since the
                    # one proposing this began: it is no longer this one's to change.
                    results[slot] = CommitResult(Outcome.CONFLICT, ts, "fence_changed")
                elif epoch and epoch == fence_epoch and (
                        _fence_rank(level, available_from) <= _fence_rank(*self.fence(prefix))):
                    # One move's or drop's changes to a fence only go forward: a late copy of
                    # an earlier one (a retried call) must not undo a later one, and a drop
                    # that joined another does not stamp its level 2 again. (If every entry
                    # of this epoch here was refused, the fence is an older epoch's level 3,
                    # which no step of this one needs to go back from.)
                    results[slot] = CommitResult(Outcome.CONFLICT, ts, "fence_changed")
                elif (len(cmd) > 5 and cmd[5] is not None
                        and list(self.fence(prefix)) != cmd[5]):
                    # Conditional, and the fence is no longer what its proposer saw: a drop
                    # or another move changed it since (checked here, in log order, so that
                    # no change between the check and the entry can be overwritten).
                    results[slot] = CommitResult(Outcome.CONFLICT, ts, "fence_changed")
                elif level >= 2 and (self.fence(prefix)[0] == 3
                                     or level == 3 and self.fence(prefix)[0] != 2):
                    # Level 3 is only ever raised from 2, and stays until a move brings the
                    # keyspace back (level 1) or lifts it: a drop that fences a home it read
                    # in an old record must not take erasure away from it.
                    results[slot] = CommitResult(Outcome.CONFLICT, ts, "fence_changed")
                else:
                    if level >= 2:
                        # Stamped with this entry's timestamp: who set it can name exactly
                        # this fence in an expectation later, and PURGE waits a transaction
                        # lifetime after a level 3.
                        available_from = ts
                    if level or available_from:
                        self._fences[prefix] = (level, available_from)
                    else:  # lifted: reads and writes take their fast path again
                        self._fences.pop(prefix, None)
                    if epoch:
                        self._fence_epochs[prefix] = epoch
                    batch.side[_FENCE + prefix] = (
                        msgpack.packb([level, available_from, epoch]) if epoch
                        else msgpack.packb([level, available_from]) if level or available_from
                        else None)
                if results[slot] is None:
                    results[slot] = CommitResult(Outcome.RESOLVED, ts)
                elif epoch > fence_epoch:
                    # Refused (level 3 kept, or not the fence expected), but by a newer move or
                    # drop: the fence is that one's now, which no older one may change.
                    self._fence_epochs[prefix] = epoch
                    level, available_from = self.fence(prefix)
                    batch.side[_FENCE + prefix] = msgpack.packb([level, available_from, epoch])
            elif kind == CMD_PURGE:
                ts = self._close(cmd[1])
                results[slot] = CommitResult(Outcome.RESOLVED, ts)
                ks_id = cmd[2]
                if self.fence(_U32.pack(ks_id))[0] == 3:
                    batch.flush(results)  # what came before it in the log is erased too
                    batch.erase(ks_id, *cmd[3:7], min(cmd[7], self._low_water))
            elif kind == CMD_FORGET:
                ts = self._close(cmd[1])
                results[slot] = CommitResult(Outcome.RESOLVED, ts)
                for txn_id in cmd[2]:
                    batch.forget(txn_id, ts)
            elif kind == CMD_DRAIN:
                ts = self._close(cmd[1])
                for key in cmd[2]:
                    # Only conflict-log records; a key too long to be one (the store would
                    # refuse it, and with it the whole apply, at every replay) names none.
                    if key[:1] == _CONFLICT and len(key) <= MAX_SIDE_KEY_SIZE:
                        batch.side[key] = None
                results[slot] = CommitResult(Outcome.RESOLVED, ts)
            elif kind == CMD_SHIPPED:
                ts = self._close(cmd[1])
                _, _, destination, watermark = cmd
                skey = _SHIPPED + _U32.pack(destination)
                if watermark > batch.applied_by(destination):  # answers may come out of order
                    batch.side[skey] = _U64.pack(watermark)
                    batch.shipped_to.add(destination)
                results[slot] = CommitResult(Outcome.RESOLVED, ts)
                batch.trim_outbox()
            elif kind == CMD_COMMIT or kind == CMD_PREPARE:
                if _merges_of(cmd) or (
                        kind == CMD_PREPARE and (cmd[1] in batch.queued_prepares
                                                 or batch.near_lock_limit(cmd))) or (
                        self._span_locks or _spans_of(cmd)):
                    # Regional merges are planned against the cells as every earlier entry
                    # left them, before the adjudicator records anything; a second prepare
                    # of one transaction must see the first one installed.
                    batch.flush(results)
                ts = self._close(cmd[3])
                results[slot] = batch.validate(slot, cmd, ts)
                if kind == CMD_PREPARE and _spans_of(cmd):
                    # Its range locks are in place before the next entry is validated.
                    batch.flush(results)
            else:  # DECIDE or RESOLVE: every validation before it must be settled first
                batch.flush(results)
                txn_id, proposed_ts, commit_ts = cmd[1:4]
                ts = self._close(max(proposed_ts, commit_ts))
                if kind == CMD_DECIDE:
                    results[slot] = batch.decide(txn_id, commit_ts, ts, *cmd[4:])
                else:
                    if batch.resolve(txn_id, commit_ts):
                        results[slot] = CommitResult(Outcome.RESOLVED, ts)
                    else:
                        results[slot] = CommitResult(
                            Outcome.INVALID, ts, f"commit timestamp {commit_ts} is below the "
                            f"transaction's prepare timestamp in this group: its intents here "
                            f"were removed, nothing was written")
        if last_index == 0:
            return results
        batch.flush(results)
        self.store.apply_batch(batch.versions, last_index, app_state=self._app_state(),
                               side=list(batch.side.items()), erase=batch.erased,
                               side_erase=batch.side_erased)
        if batch.side_erased:
            self._forget_shipped()
        elif batch.shipped_to:
            self._forget_shipped(batch.shipped_to)
        if self._low_water - self._pruned_at >= self._lifetime // 4:
            self.adjudicator.prune(self._low_water)
            self._pruned_at = self._low_water
        if self._closed > closed_before and self.on_closed is not None:
            self.on_closed(self._closed)
        self._prepared_count += batch.installed - len(batch.resolved)
        if batch.resolved and self.on_resolved is not None:
            self.on_resolved(batch.resolved)
        if batch.shipped and self.on_outbox is not None:
            self.on_outbox()
        return results

    def _writes_key(self, txn_id: int, key: bytes) -> bool:
        """Whether the prepared transaction's intent on ``key`` is a write (not a read lock)."""
        raw = self.store.side_get(_INTENT + key)
        if raw is None:
            return False
        owner, _, kind = msgpack.unpackb(raw)[:3]
        return owner == txn_id and kind != _KIND_LOCK

    # ------------------------------------------------------------------ intents, for readers

    def intents(self, keys: Sequence[bytes], ts: int) -> list[Intent]:
        """The intents on ``keys`` whose prepare timestamp is at or below ``ts``: a read at
        ``ts`` must wait for them. Locks are not among them (see :func:`_write_intent`)."""
        if not self._prepared_count:
            return []
        out = []
        for key in keys:
            if not _is_key(key):
                continue  # no write could make it: the read gets the store's error for it
            raw = self.store.side_get(_INTENT + key)
            if raw is not None:
                intent = _write_intent(key, raw)
                if intent is not None and intent.prepare_ts <= ts:
                    out.append(intent)
        return out

    def intents_in(self, start: bytes, end: bytes | None, ts: int) -> list[Intent]:
        """Like :meth:`intents`, for every key in ``[start, end)``."""
        if not self._prepared_count:
            return []
        hi = _INTENT + end if end is not None else _INTENT_END
        out = []
        for skey, raw in self.store.side_scan(_INTENT + start, hi):
            intent = _write_intent(skey[1:], raw)
            if intent is not None and intent.prepare_ts <= ts:
                out.append(intent)
        return out

    def has_intents(self, start: bytes, end: bytes) -> bool:
        """Whether a prepared transaction holds an intent or a read lock on a key in ``[start,
        end)``; reads one side-table key, none of the records."""
        return bool(self._prepared_count
                    and (self.store.side_keys(_INTENT + start, _INTENT + end, limit=1)
                         or self.store.side_keys(_LOCK + start, _LOCK + end, limit=1)))

    def locks_in(self, start: bytes, end: bytes) -> list[Intent]:
        """What prepared serializable transactions read in ``[start, end)`` and hold until
        they are resolved: a lock per key read there (an :class:`Intent` on it), and one per
        transaction whose scanned range overlaps it (on the range's first key there). A
        keyspace moving away waits for them (see ``keyspace.unlocked`` in engine.node): the
        new home knows nothing of them, and would take writes that change what they read."""
        if not self._prepared_count:
            return []
        out = []
        for skey, raw in self.store.side_scan(_LOCK + start, _LOCK + end):
            for txn_id, prepare_ts, primary, deadline in msgpack.unpackb(raw):
                out.append(Intent(skey[1:], txn_id, prepare_ts, primary, deadline))
        for skey, raw in self.store.side_scan(_INTENT + start, _INTENT + end):
            txn_id, prepare_ts, kind, _, primary, deadline = msgpack.unpackb(raw)
            if kind == _KIND_LOCK:  # a lock in the older format, in an intent's place
                out.append(Intent(skey[1:], txn_id, prepare_ts, primary, deadline))
        for txn_id, spans in self._span_locks.items():
            overlap = [max(s, start) for s, e in spans if s < end and start < e]
            if overlap:
                prepare_ts, _, primary, deadline = msgpack.unpackb(
                    self.store.side_get(_PREPARED + _U64.pack(txn_id)))[:4]
                out.append(Intent(min(overlap), txn_id, prepare_ts, primary, deadline))
        return out

    def prepared(self, after: int = 0, limit: int | None = None,
                 max_bytes: int | None = None) -> list[Intent]:
        """One entry per transaction prepared here and not resolved yet (``key`` is its first
        key), in the order of their ids, of those with an id above ``after``: what a recovery
        sweep looks at. At most ``limit`` of them, and none after the one that brings their
        stored bytes to ``max_bytes`` (a record names every key of its transaction here)."""
        out = []
        start = _PREPARED + _U64.pack(after) + b"\0" if after else _PREPARED
        for skey, raw in self.store.side_scan(start, _PREPARED_END, limit=limit,
                                              max_bytes=max_bytes):
            prepare_ts, keys, primary, deadline = msgpack.unpackb(raw)[:4]
            out.append(Intent(keys[0] if keys else b"", _U64.unpack(skey[1:])[0], prepare_ts,
                              primary, deadline))
        return out

    def watermark(self, origin_group: int) -> int:
        """The origin group's timestamp up to which its regional writes are applied here."""
        raw = self.store.side_get(_WATERMARK + _U32.pack(origin_group))
        return _U64.unpack(raw)[0] if raw is not None else 0

    def shipped(self, destination_group: int) -> int:
        """How far ``destination_group`` has applied this group's regional writes, as far as
        this group knows (SHIPPED)."""
        known = self._shipped.get(destination_group)
        if known is not None:
            return known
        changes = self._shipped_changes
        raw = self.store.side_get(_SHIPPED + _U32.pack(destination_group))
        watermark = _U64.unpack(raw)[0] if raw is not None else 0
        with self._shipped_lock:
            # Not kept when the store changed it meanwhile (an apply, a snapshot install):
            # the value read may be the one from before.
            if changes == self._shipped_changes and not self._restores & 1:
                self._shipped[destination_group] = watermark
        return watermark

    def _forget_shipped(self, destinations: Iterable[int] | None = None) -> None:
        """Empties the cache of :meth:`shipped` (of ``destinations`` only, if given) once the
        store has changed their watermarks."""
        with self._shipped_lock:
            self._shipped_changes += 1
            if destinations is None:
                self._shipped = {}
            else:
                for destination in destinations:
                    self._shipped.pop(destination, None)

    def outbox_after(self, ts: int, limit: int = 256,
                     max_bytes: int | None = None) -> list[tuple[int, list]]:
        """This group's own regional writes committed after ``ts``: ``(commit_ts, writes)``
        in commit order, at most ``limit`` entries, and none after the one that brings their
        stored bytes to ``max_bytes`` (a record, one commit's writes, may take 4 MiB)."""
        out = []
        for skey, raw in self.store.side_scan(_OUTBOX + _U64.pack(ts + 1), _OUTBOX_END,
                                              limit=limit, max_bytes=max_bytes):
            out.append((_U64.unpack(skey[1:])[0], msgpack.unpackb(raw)))
        return out

    def fenced(self, read_ts: int, writes=(), reads=()) -> bytes | None:
        """The first key that a transaction with snapshot ``read_ts`` may not write or read
        here (conflict ``moved``): a written one (or merge ``[key, ...]``) of a keyspace
        fenced against writes, a read one of a keyspace fenced against reads (it moved
        away), or either of a keyspace that came here after ``read_ts``: its writes before
        that went to another group, so the transaction's snapshot cannot be checked here."""
        fences = self._fences
        for k in writes:
            key = k if type(k) is bytes else k[0]
            level, available_from = fences.get(key[:_PREFIX], (0, 0))
            if level >= 1 or read_ts < available_from:
                return key
        for key in reads:
            level, available_from = fences.get(key[:_PREFIX], (0, 0))
            if level >= 2 or read_ts < available_from:
                return key
        return None

    def erasable_keyspaces(self) -> list[tuple[int, int]]:
        """``(id, since)`` of the keyspaces fenced at level 3 here (dropped, or moved away)
        since the timestamp ``since``: their data here is never read again, and PURGE erases
        it."""
        return [(_U32.unpack(prefix)[0], since) for prefix, (level, since)
                in self._fences.items() if level == 3]

    def resolver(self, name: str) -> Resolver:
        """The resolver named ``name`` (a built-in one, or ``"app:<name>"`` of
        :attr:`resolvers`).

        Raises:
            ResolverUnavailableError: an application resolver this node does not have. Not a
                refusal: the other replicas may have it, and would apply the entry.
        """
        resolver = _BUILTIN_RESOLVERS.get(name) or self.resolvers.get(name)
        if resolver is None:
            raise ResolverUnavailableError(
                f"resolver {name!r} is not configured on this node: its regional writes cannot "
                f"be applied here; restart the node with {name[len('app:'):]!r} in "
                f"[cluster.resolvers], as on the other nodes")
        return resolver

    def fence(self, keyspace_prefix: bytes) -> tuple[int, int]:
        """The keyspace's fence here: (level, available_from); (0, 0) when unfenced."""
        return self._fences.get(keyspace_prefix, (0, 0))

    def fence_epoch(self, keyspace_prefix: bytes) -> int:
        """The highest epoch of the moves and drops whose FENCE entries for the keyspace
        were applied here, whether they changed the fence or not (0: none, or only ones from
        before epochs)."""
        return self._fence_epochs.get(keyspace_prefix, 0)

    def missed(self) -> dict[int, int]:
        """Destination group → the newest of this group's regional writes that the outbox
        dropped (after :data:`OUTBOX_RETENTION_NS`) before that destination had applied it:
        the destination lost writes and needs a full copy. Empty while none were lost."""
        return {_U32.unpack(skey[1:])[0]: _U64.unpack(raw)[0]
                for skey, raw in self.store.side_scan(_MISSED, _MISSED + b"\xff" * 5)}

    @property
    def outbox_trimmed(self) -> int:
        """The newest outbox timestamp already trimmed (0: none): a destination whose
        watermark is below it has missed writes."""
        raw = self.store.side_get(_OUTBOX_TRIMMED)
        return _U64.unpack(raw)[0] if raw is not None else 0

    def conflicts(self, start: bytes, end: bytes, limit: int = 100,
                  max_bytes: int | None = None) -> list[tuple[bytes, bytes, list]]:
        """Conflict-log records of keys in ``[start, end)``: ``(record id, key, [winner_ts,
        winner_origin, loser_ts, loser_origin, loser_value, resolver, logged_ts])``, at most
        ``limit``, and no more after the one that brings their stored bytes to ``max_bytes``
        (a record holds the losing write's value: a few can take many MiB)."""
        out = []
        for skey, raw in self.store.side_scan(_CONFLICT + start, _CONFLICT + end, limit=limit,
                                              max_bytes=max_bytes):
            rec = msgpack.unpackb(raw)
            tail = 8 + len(_origin_in_key(rec[3]))
            out.append((skey, skey[1:len(skey) - tail], rec))
        return out

    def record(self, txn_id: int) -> tuple[bool, int] | None:
        """This (primary) group's record of the transaction: (committed, commit_ts), or None
        while undecided."""
        raw = self.store.side_get(_RECORD + _U64.pack(txn_id))
        if raw is None:
            return None
        status, commit_ts = msgpack.unpackb(raw)[:2]
        return status == _REC_COMMITTED, commit_ts

    def is_prepared(self, txn_id: int) -> bool:
        """Whether the transaction still has intents here (prepared, not yet resolved)."""
        return self.store.side_get(_PREPARED + _U64.pack(txn_id)) is not None

    def old_records(self, limit: int = 1000,
                    after: int = 0) -> list[tuple[int, bool, int, list[int]]]:
        """Records old enough for FORGET at the current closed timestamp, oldest first, of
        those decided after timestamp ``after`` (every entry has a timestamp of its own, so
        a record's, :meth:`decided_at`, marks its place among them):
        ``(txn_id, committed, commit_ts, participants)``."""
        horizon = self._closed - RECORD_RETENTION_NS
        if horizon <= after:
            return []
        out = []
        for skey, _ in self.store.side_scan(_RECORD_AGE + _U64.pack(after + 1),
                                            _RECORD_AGE + _U64.pack(horizon + 1), limit=limit):
            txn_id = _U64.unpack_from(skey, 9)[0]
            raw = self.store.side_get(_RECORD + _U64.pack(txn_id))
            if raw is None:
                continue
            status, commit_ts, _, participants = msgpack.unpackb(raw)
            out.append((txn_id, status == _REC_COMMITTED, commit_ts, participants))
        return out

    def decided_at(self, txn_id: int) -> int | None:
        """The timestamp of the entry that recorded the transaction's fate here, or None
        while it has no record (or one from before records were aged)."""
        raw = self.store.side_get(_RECORD + _U64.pack(txn_id))
        rec = None if raw is None else msgpack.unpackb(raw)
        return rec[2] if rec is not None and len(rec) > 2 else None

    def record_count(self) -> int:
        """Transaction records held (those written since records are aged)."""
        return len(self.store.side_scan(_RECORD_AGE, _RECORD_AGE + b"\xff" * 17))

    def _close(self, proposed_ts: int) -> int:
        ts = max(proposed_ts, self._closed + 1)
        if ts > MAX_TS:
            ts = MAX_TS  # unreachable with real clocks; keeps the store's range
        self._closed = ts
        # Per entry, not per call: replicas apply the log in differently sized calls.
        if ts - self._lifetime > self._low_water:
            self._low_water = ts - self._lifetime
        return ts

    def snapshot(self) -> bytes:
        # The Raft log is compacted behind this snapshot: what it covers must not depend on
        # the store's unsynced writes any more (MVCCStore's ``sync=False``).
        self.store.checkpoint()
        with self.store.snapshot_chunks() as stream:
            return msgpack.packb([stream.applied_index, list(stream)], use_bin_type=True)

    # A durable state machine (raft.driver.DurableStateMachine): the Raft log is compacted
    # behind a local marker, and a full snapshot is built into a file only for a follower.

    def checkpoint(self) -> bytes:
        """The local snapshot marker for the index applied now (O(1): no data is copied);
        the state it stands for is durable once :meth:`sync` returns."""
        return msgpack.packb([self.store.applied_index, None])

    def sync(self) -> None:
        """Makes everything applied so far durable in the store (a flush of its map, from a
        thread of its own while applies go on: see :meth:`MVCCStore.checkpoint`)."""
        self.store.checkpoint()

    def begin_snapshot(self) -> SnapshotBuild:
        """A consistent view of the store as applied now, to write out as a full snapshot
        (in the format :meth:`snapshot` returns) from another thread."""
        return SnapshotBuild(self.store)

    def restore(self, data: bytes | memoryview) -> None:
        # The store's chunks are unpacked one at a time as the store takes them, not into a
        # list first, from a reader that copies only what is unpacked: a follower installing
        # a snapshot never holds it whole.
        reader = _BufferReader(data)
        try:
            self._restore(data, msgpack.Unpacker(reader, raw=False))
        finally:
            reader.close()

    def _restore(self, data: bytes | memoryview, unpacker: msgpack.Unpacker) -> None:
        """:meth:`restore` of ``data``, which ``unpacker`` reads."""

        def read(what: Callable[[], object]) -> object:
            try:
                return what()
            except (ValueError, msgpack.UnpackException) as exc:
                raise CorruptStateError(f"a malformed group snapshot: {exc}") from None

        index = read(unpacker.read_array_header) == 2 and read(unpacker.unpack)
        if type(index) is not int:  # (False: the header was not an array of two)
            raise CorruptStateError("a malformed group snapshot: not [index, chunks]")
        at = unpacker.tell()
        local = data[at:at + 1] == b"\xc0"  # nil: a local marker
        count = read(unpacker.unpack if local else unpacker.read_array_header)
        if index <= self.store.applied_index:
            # This replica already applied past the snapshot (a restart finds the snapshot it
            # took itself): its state includes the snapshot's, and replay skips what it has.
            return
        if local:
            raise CorruptStateError(
                f"the group's store has applied up to index {self.store.applied_index}, but "
                f"the Raft log was compacted behind its checkpoint at {index}: the store lost "
                f"writes it had made durable")

        def chunks():
            for _ in range(count):
                chunk = read(unpacker.unpack)
                if not isinstance(chunk, bytes):
                    raise CorruptStateError("a malformed group snapshot: a chunk is not bytes")
                yield chunk

        self._restores += 1
        self.store.restore(chunks())
        self._load_state()
        self._restores += 1  # not after a failure: the replica stops, reads stay refused
        if self.on_restored is not None:
            self.on_restored()


class _BufferReader:
    """A read-only file over a buffer, copying only what is read (``io.BytesIO`` copies any
    buffer but ``bytes`` whole). Close it to release the buffer: a mapping cannot be closed
    while a view of it is held."""

    __slots__ = ("_pos", "_view")

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else self._pos + n
        out = bytes(self._view[self._pos:end])
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._view.release()


class SnapshotBuild:
    """A full snapshot of a group's store, written out from a worker thread while the group
    goes on applying: the store's read transaction pins the state at :attr:`index`.

    The data is what :meth:`GroupStateMachine.snapshot` returns — a msgpack array of the
    applied index and the store's chunks — written a chunk at a time, so memory stays at one
    chunk whatever the store's size.
    """

    def __init__(self, store: MVCCStore) -> None:
        self._dir = store.path
        # Interruptible: the group goes on applying on the loop, and a write that must grow
        # the map ends this build (tried again later) rather than wait for it.
        self._stream = store.snapshot_chunks(interruptible=True)
        self.index = self._stream.applied_index
        self._cancelled = False

    def write(self, f: BinaryIO) -> int:
        """Writes the snapshot to ``f`` (a seekable binary file at offset 0) and returns its
        size. Raises :class:`engine.errors.StoreClosedError` once :meth:`cancel` was called
        (or the store was closed)."""
        packer = msgpack.Packer(use_bin_type=True)
        # An array of two: the index, then an array whose count (array 32) is filled in last.
        f.write(b"\x92" + packer.pack(self.index) + b"\xdd\0\0\0\0")
        count_at = f.tell() - 4
        count = 0
        try:
            for chunk in self._stream:
                if self._cancelled:
                    raise StoreClosedError("the snapshot build was cancelled")
                f.write(packer.pack(chunk))
                count += 1
        finally:
            self._stream.close()
        size = f.tell()
        f.seek(count_at)
        f.write(count.to_bytes(4, "big"))
        f.seek(size)
        f.flush()
        return size

    def run(self) -> mmap.mmap:
        """Writes the snapshot to an unnamed temporary file beside the store and returns it
        mapped read-only: the page cache holds it, not the heap, and the file is freed with
        the mapping."""
        with tempfile.TemporaryFile(dir=self._dir) as f:
            size = self.write(f)
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)

    def cancel(self) -> None:
        """Makes :meth:`write` stop at its next chunk (the node is closing)."""
        self._cancelled = True

    def close(self) -> None:
        self._stream.close()


class _Oversized(str):
    """Why a merged cell would not fit in a value (see :meth:`_Batch._plan_merges`): a local
    commit is refused as ``TOO_LARGE`` for it, not as ``INVALID``."""


class _Batch:
    """What one :meth:`GroupStateMachine.apply` call writes: versions, side-table changes
    (which later entries of the same call read back through :meth:`get`), and the commits and
    prepares not yet sent to the adjudicator (one C call for each run of them)."""

    def __init__(self, sm: GroupStateMachine) -> None:
        self.sm = sm
        self.versions: list[tuple[list, int]] = []
        self.side: dict[bytes, bytes | None] = {}
        self.resolved: list[int] = []
        self._requests: list[TxnRequest] = []
        self._pending: list[tuple[int, list, int, list[bytes], list]] = []
        self.queued_prepares: set[int] = set()  # txn ids of the prepares in _requests
        self._queued_locks: dict[bytes, int] = {}  # key -> locks taken by those prepares
        # The newest value of each key this call wrote, for merges later in it (the store
        # has none of this call's versions until the end): a cell, or a plain value's bytes.
        self._cells: dict[bytes, Cell | bytes | None] = {}
        self.shipped = False  # regional writes added to the outbox
        self.shipped_to: set[int] = set()  # destinations whose SHIPPED watermark this sets
        # The outbox as entry-by-entry application would see it (see trim_outbox): the keys
        # of the records this call added, oldest first, and the newest record it trimmed.
        self._outbox_added: list[bytes] = []
        self._trimmed_to = 0
        self.installed = 0  # transactions prepared by this call
        # PURGE ranges, erased from the store before this call's versions and side entries
        # are written (those written before the PURGE are dropped here instead).
        self.erased: list[tuple[bytes, bytes, int]] = []
        self.side_erased: list[tuple[bytes, bytes]] = []

    def get(self, skey: bytes) -> bytes | None:
        if skey in self.side:
            return self.side[skey]
        return self.sm.store.side_get(skey)

    def validate(self, slot: int, cmd: list, ts: int) -> CommitResult | None:
        """A COMMIT or PREPARE at ``ts``: decides now what needs no adjudicator (returns the
        result), or queues it for :meth:`flush` (returns None)."""
        prepare = cmd[0] == CMD_PREPARE
        txn_id, read_ts, flags, writes, reads = cmd[1], cmd[2], cmd[4], cmd[5], cmd[6]
        if prepare:
            existing = self.get(_PREPARED + _U64.pack(txn_id))
            if existing is not None:
                return CommitResult(Outcome.PREPARED, msgpack.unpackb(existing)[0])
            if self.get(_RECORD + _U64.pack(txn_id)) is not None:
                # Decided already (aborted by a recovery that overtook this prepare): an
                # intent installed now would have nobody left to resolve it.
                return CommitResult(Outcome.CONFLICT, ts, "aborted")
            # An intent keeps its value beside the transaction's ids (see _install): one the
            # store would refuse would stop every replica on this entry, for good.
            big = next((w[0] for w in writes
                        if w[1] is not None and len(w[1]) + INTENT_ROOM > MAX_VALUE_SIZE), None)
            if big is not None:
                return CommitResult(Outcome.TOO_LARGE, ts, f"the value of key "
                                    f"{user_key(big)!r:.80} is over {MAX_VALUE_SIZE - INTENT_ROOM}"
                                    f" bytes: a two-phase commit's intent keeps it with "
                                    f"{INTENT_ROOM} bytes of its own in one stored value")
        if read_ts == 0:
            read_ts = ts - 1  # a blind write: its snapshot is everything before it
        elif read_ts >= ts:
            # Its snapshot was never closed here: the proposer broke the protocol.
            return CommitResult(
                Outcome.INVALID, ts, f"read_ts {read_ts} is not below the commit "
                f"timestamp {ts}: the snapshot was not stable in this group")
        elif read_ts < self.sm.low_water:
            return CommitResult(Outcome.CONFLICT, ts, "too_old", conflict_ts=self.sm.low_water)
        keys = [w[0] for w in writes]
        if not prepare and flags & MOVE_COPY:
            # A move's copy lands only while the group receiving the keyspace is closed to
            # everything else, (1, MAX_TS): a batch delayed past the end of the copy (an
            # ambiguous one, retried) must not overwrite the keyspace once it is live.
            # And only that move's: one that a newer move overtook must not overwrite the
            # newer one's copy with its older snapshot.
            epoch = flags >> 8
            refused = next((k for k in keys if self.sm.fence(k[:_PREFIX]) != (1, MAX_TS)
                            or self.sm.fence_epoch(k[:_PREFIX]) != epoch), None)
            if refused is not None:
                return CommitResult(Outcome.CONFLICT, ts, "moved", refused)
        elif self.sm._fences:
            # A scanned range is read too: checked by the keyspace it starts in, as a refresh
            # checks it (a client's range never crosses keyspaces).
            moved = self.sm.fenced(read_ts, [*keys, *(cmd[7] if len(cmd) > 7 else ())],
                                   [*reads, *(sp[0] for sp in _spans_of(cmd))]
                                   if flags & SERIALIZABLE else ())
            if moved is not None:
                return CommitResult(Outcome.CONFLICT, ts, "moved", moved)
        merged: list = []
        if not prepare and _merges_of(cmd):
            if not self.sm.origin:
                return CommitResult(Outcome.INVALID, ts, "this group has no region: it holds "
                                    "no regional keyspace")
            # Every write of this commit has the identity (key, ts, origin): two to one key
            # would count as one write (a counter would keep one of two increments).
            merge_keys = [m[0] for m in cmd[7]]
            if len(set(merge_keys)) < len(merge_keys) or not set(merge_keys).isdisjoint(
                    w[0] for w in cmd[5]):
                return CommitResult(Outcome.INVALID, ts, "a regional key is written twice in "
                                    "one commit: merge its writes into one")
            # The caller flushed the queue: the cells are as every earlier entry left them.
            # A plan that fails (a payload, or a cell it cannot merge into) must fail before
            # the adjudicator records the commit.
            plan = self._plan_local(cmd[7], ts)
            if isinstance(plan, str):
                return CommitResult(Outcome.TOO_LARGE if isinstance(plan, _Oversized)
                                    else Outcome.INVALID, ts, plan)
            record = self._outbox_record(plan)
            if isinstance(record, str):
                return CommitResult(Outcome.INVALID, ts, record)
            merged = [plan, record]
            keys += [m[0] for m in cmd[7]]
        conflict = self._check_spans(txn_id, read_ts, keys, cmd, flags, ts)
        if conflict is not None:
            return conflict
        if not flags & SERIALIZABLE:
            reads = []  # not validated: the adjudicator never sees them
        locks = _lock_keys(cmd) if prepare else []
        if locks:
            # What a prepared transaction read here is locked until it is resolved (its
            # commit timestamp is not known yet): validated and locked as its reads, which
            # other readers share and writers conflict with. The prepares queued before it
            # hold few enough locks on these keys not to matter (see near_lock_limit).
            adj = self.sm.adjudicator
            full = next((k for k in locks if adj.locks(k) >= MAX_KEY_LOCKS), None)
            if full is not None:
                return CommitResult(Outcome.CONFLICT, ts, "intent", full)
            reads = locks
        if len(keys) + len(reads) > MAX_TXN_KEYS:
            # Checked here, not only by the proposer: the entry is in the log, and a request
            # the adjudicator refuses to take would stop every replica on it, for good.
            return CommitResult(Outcome.INVALID, ts, f"{len(keys) + len(reads)} keys written, "
                                f"locked and validated, over the limit of {MAX_TXN_KEYS} in "
                                f"one group")
        if prepare:
            # Likewise a record the store refuses to take (see _install).
            size = _record_size_bound([*keys, *locks], _spans_of(cmd))
            if size > MAX_VALUE_SIZE:
                return CommitResult(Outcome.TOO_LARGE, ts, f"the prepared transaction's record "
                                    f"(its keys written and locked, and its scanned ranges) "
                                    f"would take up to {size} bytes, over the {MAX_VALUE_SIZE}-"
                                    f"byte limit of a stored value")
        self._requests.append(TxnRequest(
            txn_id=txn_id, read_ts=read_ts, commit_ts=ts, writes=keys, reads=reads,
            serializable=bool(flags & SERIALIZABLE or locks), prepare=prepare))
        self._pending.append((slot, cmd, ts, keys + locks, merged))
        if prepare:
            self.queued_prepares.add(txn_id)
        for key in locks:
            self._queued_locks[key] = self._queued_locks.get(key, 0) + 1
        return None

    def near_lock_limit(self, cmd: list) -> bool:
        """Whether a PREPARE could take a lock over :data:`MAX_KEY_LOCKS` once the prepares
        queued before it are decided: they must be first (flushed), so that it is refused or
        not the same however the log is cut into calls."""
        adj = self.sm.adjudicator
        return any(key in self._queued_locks
                   and self._queued_locks[key] + adj.locks(key) >= MAX_KEY_LOCKS
                   for key in _lock_keys(cmd))

    def _check_spans(self, txn_id: int, read_ts: int, keys: list[bytes], cmd: list,
                     flags: int, ts: int) -> CommitResult | None:
        """Range checks the adjudicator cannot make (the queue is flushed when there is one
        to make): a key written inside another prepared serializable transaction's scanned
        range conflicts with it; a serializable transaction's own scanned ranges must hold
        what they held at its snapshot (no key inserted, changed or deleted there since, no
        intent there). An entry with scanned ranges starts an apply call of its own (see
        :meth:`GroupStateMachine.apply`), so the store holds every entry before it: its check
        reads the store alone, and decides the same however the log is cut into calls."""
        for other, spans in self.sm._span_locks.items():
            if other == txn_id:
                continue
            for key in keys:
                if any(start <= key < end for start, end in spans):
                    return CommitResult(Outcome.CONFLICT, ts, "intent", key)
        if not flags & SERIALIZABLE:
            return None
        store = self.sm.store
        for start, end, limit in _spans_of(cmd):
            if (store.scan(start, end, read_ts, limit=limit)
                    != store.scan(start, end, MAX_TS, limit=limit)):
                return CommitResult(Outcome.CONFLICT, ts, "read_write")
            for skey, raw in store.side_scan(_INTENT + start, _INTENT + end):
                owner, _, kind = msgpack.unpackb(raw)[:3]
                if owner != txn_id and kind != _KIND_LOCK:  # read locks are shared
                    return CommitResult(Outcome.CONFLICT, ts, "intent", skey[1:])
        return None

    def flush(self, results: list) -> None:
        """Adjudicates the queued commits and prepares, in log order, and records what they
        write."""
        if not self._requests:
            return
        verdicts = self.sm.adjudicator.adjudicate(self._requests)
        if planted.enabled("skip_adjudication"):
            verdicts = [v if v.ok else v._replace(ok=True) for v in verdicts]
        for (slot, cmd, ts, keys, merged), verdict in zip(self._pending, verdicts):
            if not verdict.ok:
                results[slot] = CommitResult(Outcome.CONFLICT, ts, _REASONS[verdict.reason],
                                             verdict.key, verdict.conflict_ts)
            elif cmd[0] == CMD_COMMIT:
                # A commit with merges is first in its queue (see apply): its plan, made
                # when it was queued, is still against the cells as they are now.
                if cmd[5]:
                    self._write(cmd[5], ts)
                if merged:
                    self._merge_local(*merged, ts)
                results[slot] = CommitResult(Outcome.COMMITTED, ts)
            else:
                results[slot] = self._install(cmd, ts, keys)
        self._requests = []
        self._pending = []
        self.queued_prepares.clear()
        self._queued_locks.clear()

    def _install(self, cmd: list, ts: int, keys: list[bytes]) -> CommitResult:
        txn_id, writes, primary, deadline = cmd[1], cmd[5], cmd[8], cmd[9]
        pkey = _PREPARED + _U64.pack(txn_id)
        earlier = self.get(pkey)
        if earlier is not None:  # the same prepare twice in one call: the first one stands
            return CommitResult(Outcome.PREPARED, msgpack.unpackb(earlier)[0])
        for key, value in writes:
            kind = _KIND_DELETE if value is None else _KIND_PUT
            self.side[_INTENT + key] = msgpack.packb(
                [txn_id, ts, kind, value, primary, deadline], use_bin_type=True)
        for key in keys[len(writes):]:
            raw = self.get(_LOCK + key)
            holders = msgpack.unpackb(raw) if raw is not None else []
            holders.append([txn_id, ts, primary, deadline])
            self.side[_LOCK + key] = msgpack.packb(holders)
        spans = [[sp[0], sp[1]] for sp in _spans_of(cmd)]
        self.side[pkey] = msgpack.packb([ts, keys, primary, deadline, spans] if spans
                                        else [ts, keys, primary, deadline], use_bin_type=True)
        if spans:
            self.sm._span_locks[txn_id] = spans
        self.installed += 1
        return CommitResult(Outcome.PREPARED, ts)

    def decide(self, txn_id: int, commit_ts: int, ts: int, since: int = 0,
               participants: Sequence[int] = ()) -> CommitResult:
        """DECIDE: the first decision recorded for a transaction is its fate."""
        rkey = _RECORD + _U64.pack(txn_id)
        raw = self.get(rkey)
        if raw is not None:
            status, decided_ts = msgpack.unpackb(raw)[:2]
            # The primary's own intents follow the record (if any are left: a recovery
            # that meets one here asks again).
            self.resolve(txn_id, decided_ts if status == _REC_COMMITTED else 0)
            return CommitResult(Outcome.COMMITTED if status == _REC_COMMITTED
                                else Outcome.ABORTED, decided_ts or ts)
        prepared = self.get(_PREPARED + _U64.pack(txn_id))
        if commit_ts and prepared is not None and msgpack.unpackb(prepared)[0] > commit_ts:
            return CommitResult(Outcome.INVALID, ts, f"commit timestamp {commit_ts} is below "
                                f"the transaction's prepare timestamp in this group")
        if commit_ts and since and ts - since > DECISION_HORIZON_NS:
            commit_ts = 0  # too late: its abort may have been recorded and forgotten
        if commit_ts and prepared is None:
            # A coordinator decides a commit only once every participant has prepared,
            # this primary group among them, and only a recorded fate resolves the
            # primary's intents: with neither a prepare nor a record left here, it was
            # aborted and the abort forgotten. Checked here as well as by the horizon,
            # which trusts the ``since`` that the request names.
            commit_ts = 0
        self.side[rkey] = msgpack.packb(
            [_REC_COMMITTED if commit_ts else _REC_ABORTED, commit_ts, ts, list(participants)])
        self.side[_RECORD_AGE + _U64.pack(ts) + _U64.pack(txn_id)] = b""
        self.resolve(txn_id, commit_ts)
        return CommitResult(Outcome.COMMITTED if commit_ts else Outcome.ABORTED,
                            commit_ts or ts)

    def forget(self, txn_id: int, ts: int) -> None:
        """FORGET of one record, if it is old enough and names its participants."""
        rkey = _RECORD + _U64.pack(txn_id)
        raw = self.get(rkey)
        if raw is None:
            return
        rec = msgpack.unpackb(raw)
        if len(rec) < 4 or ts - rec[2] < RECORD_RETENTION_NS:
            return
        if rec[0] == _REC_COMMITTED and not rec[3]:
            return  # nobody can tell whether intents of it are left
        self.side[rkey] = None
        self.side[_RECORD_AGE + _U64.pack(rec[2]) + _U64.pack(txn_id)] = None

    def resolve(self, txn_id: int, commit_ts: int) -> bool:
        """RESOLVE: the transaction's intents here become versions at ``commit_ts`` (or go).

        False for a commit below the prepare timestamp: its versions would appear under
        timestamps that reads were already served at, so nothing is written, and the intents
        go as if aborted. A coordinator commits at or above every prepare timestamp it was
        answered, and a prepare applied again while prepared answers its first timestamp: a
        prepare above the commit is a copy applied after the transaction was resolved here
        (its writes are versions already), which no decision could resolve otherwise."""
        pkey = _PREPARED + _U64.pack(txn_id)
        raw = self.get(pkey)
        if raw is None:
            return True  # never prepared here, or resolved already
        prepare_ts, keys = msgpack.unpackb(raw)[:2]
        below = bool(commit_ts) and commit_ts < prepare_ts
        if below:
            commit_ts = 0
        writes: list[tuple[bytes, bytes | None]] = []
        written: list[bytes] = []
        for key in keys:
            lraw = self.get(_LOCK + key)
            if lraw is not None:
                holders = msgpack.unpackb(lraw)
                others = [h for h in holders if h[0] != txn_id]
                if len(others) < len(holders):
                    self.side[_LOCK + key] = msgpack.packb(others) if others else None
            ikey = _INTENT + key
            iraw = self.get(ikey)
            if iraw is None:
                continue
            owner, _, kind, value, _, _ = msgpack.unpackb(iraw)
            if owner != txn_id:
                continue
            self.side[ikey] = None
            if kind != _KIND_LOCK:
                written.append(key)
                writes.append((key, value if kind == _KIND_PUT else None))
        adj = self.sm.adjudicator
        if commit_ts:
            if writes:
                self._write(writes, commit_ts)
            adj.resolve(txn_id, written, commit_ts)
            adj.resolve(txn_id, keys, None)  # the locks: released, not written
        else:
            adj.resolve(txn_id, keys, None)
        self.side[pkey] = None
        self.sm._span_locks.pop(txn_id, None)
        self.resolved.append(txn_id)
        return not below

    def erase(self, keyspace_id: int, start: bytes, end: bytes, side_start: bytes,
              side_end: bytes, max_ts: int) -> None:
        """PURGE: the keyspace's versions at or below ``max_ts`` of the keys in ``[start,
        end)``, and its conflict-log records in ``[side_start, side_end)``, both clipped to
        the keyspace, are erased -- in the store when the call ends (the PURGE is its last
        entry), and from what this call has written before it, so that the outcome is the
        same however the log is cut into calls."""
        lo, hi = keyspace_bounds(keyspace_id)
        start, end = max(start, lo), min(end, hi)
        if start < end and max_ts > 0:  # no version is at or below 0
            self.erased.append((start, end, max_ts))
            kept = []
            for writes, ts in self.versions:
                if ts <= max_ts:
                    writes = [w for w in writes if not start <= w[0] < end]
                kept.append((writes, ts))
            self.versions = kept
        side_lo, side_hi = conflict_log_bounds(keyspace_id)
        side_start, side_end = max(side_start, side_lo), min(side_end, side_hi)
        if side_start < side_end:
            self.side_erased.append((side_start, side_end))
            for skey in self.side:
                if side_start <= skey < side_end:
                    self.side[skey] = None

    # ------------------------------------------------------------------ regional keyspaces

    def _write(self, writes: list, ts: int) -> None:
        """Plain writes (a commit's, or a resolved transaction's) at ``ts``."""
        self.versions.append((writes, ts))
        for key, value in writes:
            self._cells[key] = value

    def _cell(self, key: bytes) -> Cell | None:
        """The key's cell as the entries before this one left it.

        Raises:
            CorruptStateError: the key holds a plain value (or a malformed cell).
        """
        if key in self._cells:
            cell = self._cells[key]
            return decode_cell(cell) if isinstance(cell, bytes) else cell
        raw = self.sm.store.get(key, MAX_TS)
        return None if raw is None else decode_cell(raw)

    def _plan_merges(self, writes, *, refuse_each: bool = False,
                     cells: dict[bytes, Cell | None] | None = None,
                     compact: bool = False, check_size: bool = True,
                     regions: int = 1) -> list | str:
        """Merges ``writes`` -- ``(key, resolver, write)``, in order; ``write`` a RemoteWrite,
        or a function of the key's cell before it that makes one -- into the keys' current
        cells without changing anything: ``(key, resolver, new cell, conflict, write, encoded
        cell)`` for each, for :meth:`_apply_merges`, or why one of them cannot be merged (a
        cell another resolver built, a plain value, a payload the resolver refuses). Applying
        must never raise on what a client sent: the entry is in the log, and every replica (and
        every restart) would stop on it.

        ``refuse_each`` (shipped writes, which committed in their region already): a write that
        cannot be merged is left out instead -- ``(key, resolver, None, conflict, write, None)``,
        the
        conflict naming ``"refused"`` as its resolver -- so that one bad write does not hold
        back the rest of its stream for good. ``cells``: the cells to start from, instead of
        the keys' current ones. ``compact``: every write of a write's origin below its
        timestamp is merged here before it (the writes come in their origin's commit order),
        so each new cell can be compacted (:meth:`Resolver.compact`) up to there; else a
        counter's or a set's cell grows with every write ever made to the key, until it no
        longer fits in a value.

        A merged cell over :data:`MAX_VALUE_SIZE` fails the whole plan, ``refuse_each`` or
        not: whether a cell fits depends on which writes reached it first, so a shipped write
        left out for its size would be kept in one region and lost in another; its batch
        waits instead (see :meth:`remote`). ``regions``: how many regions' writes a merge
        type's cell gathers; a local write that grows such a cell over its region's share,
        ``MAX_VALUE_SIZE // regions``, is refused. A converged cell holds little more than
        what each region's cell held after its last growing write, so if no region grows a
        cell past its share, the converged cell fits in every region, whatever the arrival
        order."""
        cells = {} if cells is None else dict(cells)
        merged = []
        for key, resolver_name, write in writes:
            before = None
            try:
                before = cells[key] if key in cells else self._cell(key)
                if not isinstance(write, RemoteWrite):
                    write = write(before)
                resolver = self.sm.resolver(resolver_name)
                try:
                    cell, conflict = resolver.merge(before, write)
                except ResolverFailedError as exc:
                    if not refuse_each:
                        raise  # a local write: refused, the caller told why
                    # Shipped: merged by last writer, as every region does with this pair.
                    cell, conflict = exc.fallback
                if compact:
                    cell = resolver.compact(cell, {write.origin: write.ts - 1})
                encoded = encode_cell(cell)  # written as is by _apply_merges
                if check_size and len(encoded) > MAX_VALUE_SIZE:
                    return _Oversized(f"the merged cell of key {user_key(key)!r} would take "
                                      f"{len(encoded)} bytes, over the {MAX_VALUE_SIZE}-byte "
                                      f"limit of a value")
                share = MAX_VALUE_SIZE // regions
                if (check_size and resolver.op == MERGE and len(encoded) > share
                        and (before is None or len(encoded) > len(encode_cell(before)))):
                    return _Oversized(f"the merged cell of key {user_key(key)!r} would take "
                                      f"{len(encoded)} bytes, over this region's share "
                                      f"({share} bytes) of the {MAX_VALUE_SIZE}-byte limit of "
                                      f"a value: the cell gathers {regions} regions' writes")
            except (InvalidArgumentError, CorruptStateError) as exc:
                if not refuse_each:
                    return f"bad {resolver_name} write to key {user_key(key)!r}: {exc}"
                kept = before.version if isinstance(before, Cell) else (0, "")
                merged.append((key, resolver_name, None,
                               Conflict(key, kept, (write.ts, write.origin), write.value,
                                        "refused"), write, None))
                continue
            cells[key] = cell
            merged.append((key, resolver_name, cell, conflict, write, encoded))
        return merged

    def _apply_merges(self, merged: list, ts: int) -> None:
        for key, _, cell, conflict, _, encoded in merged:
            if cell is not None:  # else refused (see _plan_merges): only logged
                self._cells[key] = cell
                self.versions.append(([(key, encoded)], ts))
            if conflict is not None:
                loser_ts, loser_origin = conflict.loser
                ckey = _CONFLICT + key + _U64.pack(loser_ts) + _origin_in_key(loser_origin)
                self.side[ckey] = msgpack.packb(
                    [conflict.winner[0], conflict.winner[1], loser_ts, loser_origin,
                     conflict.loser_value, conflict.resolver, ts], use_bin_type=True)

    def _plan_local(self, merges: list, ts: int) -> list | str:
        """A local commit's regional writes, each after the key's cell here (its ``prev``;
        see :meth:`_plan_merges`)."""
        origin = self.sm.origin

        def local(key, resolver_name, value):
            op = write_op(resolver_name)
            return lambda before: RemoteWrite(key, value, ts, origin, op,
                                              before.version if before is not None else None)

        # Every earlier local write is merged here, below ts: commit timestamps rise with the
        # log (see GroupStateMachine._close).
        return self._plan_merges([(key, resolver_name, local(key, resolver_name, value))
                                  for key, resolver_name, value in merges], compact=True,
                                 regions=1 + len(self.sm.destinations or ()))

    @staticmethod
    def _outbox_record(merged: list) -> bytes | str:
        """The outbox record shipping a local commit's merges, or why it cannot be stored:
        a transaction within the byte limit can still take more than a side value may once
        each write carries its resolver, timestamp, origin and predecessor."""
        shipped = [[w.key, resolver_name, w.value, w.ts, w.origin,
                    w.prev[0] if w.prev else 0, w.prev[1] if w.prev else ""]
                   for _, resolver_name, _, _, w, _ in merged]
        record = msgpack.packb(shipped, use_bin_type=True)
        if len(record) > MAX_VALUE_SIZE:
            return (f"the regional writes take {len(record)} bytes to ship, over the "
                    f"{MAX_VALUE_SIZE}-byte limit of one shipped commit; write less per "
                    f"transaction")
        return record

    def _merge_local(self, merged: list, record: bytes, ts: int) -> None:
        """A local commit's regional writes (planned by :meth:`_plan_local`): merged here,
        and ``record`` (their :meth:`_outbox_record`) put in the outbox."""
        self._apply_merges(merged, ts)
        self.side[_OUTBOX + _U64.pack(ts)] = record
        self._outbox_added.append(_OUTBOX + _U64.pack(ts))
        self.shipped = True
        self.trim_outbox(limit=2)

    def remote(self, origin_group: int, after_ts: int, up_to_ts: int, writes: list,
               ts: int) -> CommitResult:
        """REMOTE: another region's writes, applied once each (see the module docstring)."""
        wkey = _WATERMARK + _U32.pack(origin_group)
        raw = self.get(wkey)
        watermark = _U64.unpack(raw)[0] if raw is not None else 0
        if up_to_ts <= watermark:
            return CommitResult(Outcome.RESOLVED, ts, "duplicate", conflict_ts=watermark)
        if after_ts > watermark:
            return CommitResult(Outcome.CONFLICT, ts, "gap", conflict_ts=watermark)
        fresh = [
            (key, resolver_name, RemoteWrite(key, value, wts, origin, write_op(resolver_name),
                                             (prev_ts, prev_origin) if prev_ts else None))
            for key, resolver_name, value, wts, origin, prev_ts, prev_origin in writes
            if wts > watermark and not (self.sm._fences
                                        and self.sm.fence(key[:_PREFIX])[0] >= 2)]
        # A payload no cell could take (no honest origin commits one) refuses the batch: the
        # plan of that write alone, against no cell, fails on it. A write this group's cells
        # cannot take is refused alone (see _plan_merges).
        # (Payloads only: what size a cell grows to depends on the cells here, and on
        # compaction, neither of which this plan has; nor does it merge the batch's writes
        # to one key into each other, which an application resolver may fail on, as on any
        # pair a shipped write meets: that pair is merged by last writer, not refused.)
        for key, resolver_name, write in fresh:
            if self.sm.resolver(resolver_name).any_payload:
                continue  # no payload to check: the trial would only cost its time
            problem = self._plan_merges([(key, resolver_name, write)], cells={key: None},
                                        check_size=False)
            if isinstance(problem, str):
                return CommitResult(Outcome.INVALID, ts, problem)
        # The stream from one origin group carries its region's writes alone, in commit order,
        # each once (the watermark): every write of that origin below a write's timestamp is
        # merged here before it, and its cells can be compacted. A batch not in that order
        # (no honest origin sends one) is merged as it is, without compaction.
        in_order = (len({w.origin for _, _, w in fresh}) <= 1
                    and all(a[2].ts <= b[2].ts for a, b in zip(fresh, fresh[1:])))
        merged = self._plan_merges(fresh, refuse_each=True, compact=in_order)
        if isinstance(merged, str):
            # A cell that does not fit yet (see _plan_merges): the batch is applied once
            # other regions' writes have shrunk the cell (removes the origin had seen).
            return CommitResult(Outcome.INVALID, ts, merged)
        self._apply_merges(merged, ts)
        touched = [(key, ts) for key, _, cell, _, _, _ in merged if cell is not None]
        self.side[wkey] = _U64.pack(up_to_ts)
        if touched:
            # Local transactions that read these keys before now must not overwrite them
            # blindly: to the adjudicator this is a commit like any other.
            self.sm.adjudicator.load(touched)
        return CommitResult(Outcome.COMMITTED, ts, conflict_ts=watermark)

    def applied_by(self, destination: int) -> int:
        """How far ``destination`` has applied this group's regional writes (SHIPPED), as of
        this batch."""
        skey = _SHIPPED + _U32.pack(destination)
        if skey not in self.side:
            return self.sm.shipped(destination)
        return _U64.unpack(self.side[skey])[0]

    def trim_outbox(self, limit: int = _TRIM_BATCH) -> None:
        """Drops up to ``limit`` outbox records that every destination has applied, or that
        are older than the retention (a function of the log alone: CLOSE and SHIPPED entries
        trim a batch, regional commits a couple, so the outbox stays bounded whether the group
        is busy or idle)."""
        horizon = self.sm.closed_ts - OUTBOX_RETENTION_NS  # trimmed below this in any case
        destinations = self.sm.destinations
        if destinations is not None:
            # Every destination has the records at or below its watermark here; with none
            # (one region), no record waits for anybody.
            applied = min((self.applied_by(d) for d in destinations), default=self.sm.closed_ts)
            horizon = max(horizon, applied + 1)
        if horizon <= 0:
            return
        # What is trimmed must not depend on how the log was cut into apply calls (replicas
        # cut it differently): the records left are those in the store after the ones this
        # call trimmed already (it trims from the oldest), then the ones this call added, all
        # newer than any in the store. The store alone would hide the latter, and would show
        # the former again, using up the limit.
        start = _OUTBOX + _U64.pack(self._trimmed_to + 1) if self._trimmed_to else _OUTBOX
        end = _OUTBOX + _U64.pack(horizon)
        trimmed = self.sm.store.side_keys(start, end, limit=limit)  # records: up to 4 MiB
        trimmed += [k for k in self._outbox_added if start <= k < end][:limit - len(trimmed)]
        for skey in trimmed:
            self.side[skey] = None
        if trimmed:
            self._trimmed_to = _U64.unpack(trimmed[-1][1:])[0]
            self.side[_OUTBOX_TRIMMED] = _U64.pack(self._trimmed_to)
            for d in destinations or ():
                # Trimmed by the retention before this destination had it: its writes are
                # gone from here, and the destination will never apply them.
                if self.applied_by(d) < self._trimmed_to:
                    self.side[_MISSED + _U32.pack(d)] = _U64.pack(self._trimmed_to)


def _origin_in_key(origin: str) -> bytes:
    """How a conflict-log key names a losing write's origin: as it is, or if longer than
    :data:`_MAX_ORIGIN_IN_KEY` bytes, its first half of that followed by a digest of the whole
    name. Cutting it alone would give two regions whose names share their first bytes one
    key for their writes at one timestamp: one record would overwrite the other, which one
    depending on the order the writes arrived in."""
    raw = origin.encode()
    if len(raw) <= _MAX_ORIGIN_IN_KEY:
        return raw
    half = _MAX_ORIGIN_IN_KEY // 2
    return raw[:half] + hashlib.blake2b(raw, digest_size=half).digest()


def _lock_keys(cmd: list) -> list[bytes]:
    """The keys a PREPARE locks: those it read here (``locks``, and ``reads`` when
    serializable) and does not write."""
    written = {w[0] for w in cmd[5]}
    reads = cmd[6] if cmd[4] & SERIALIZABLE else ()
    return [k for k in dict.fromkeys([*reads, *cmd[7]]) if k not in written]


def _write_intent(key: bytes, raw: bytes) -> Intent | None:
    """The intent stored as ``raw`` on ``key``, or None if it is a lock: a key that a
    serializable transaction read keeps its value until that transaction is resolved
    (writers conflict with the lock), and the resolution writes nothing to it, so a read
    of it has nothing to wait for."""
    txn_id, prepare_ts, kind, _, primary, deadline = msgpack.unpackb(raw)
    if kind == _KIND_LOCK:
        return None
    return Intent(key, txn_id, prepare_ts, primary, deadline)


def _looks_like_purge(data: bytes) -> bool:
    """Whether an entry's data starts as a PURGE command does (an array, kind 11): a cheap
    test, before decoding, that may be wrong only for a malformed entry."""
    return len(data) > 1 and data[1] == CMD_PURGE and 0x90 <= data[0] <= 0x9f


def _looks_like_spans(data: bytes) -> bool:
    """Whether an entry may be a COMMIT or PREPARE with scanned ranges (an array of 9 or 11
    elements of kind COMMIT or PREPARE): their check compares the store's scans at two
    timestamps, which must see every earlier entry's versions, so such an entry starts an
    apply call of its own. Wrong only for a malformed entry (a call cut for nothing)."""
    return len(data) > 1 and ((data[0] == 0x99 and data[1] == CMD_COMMIT)
                              or (data[0] == 0x9b and data[1] == CMD_PREPARE))


def _decode(data: bytes) -> list:
    """Decodes and checks one command; anything malformed raises :class:`_Malformed`."""
    try:
        cmd = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise _Malformed(f"entry is not msgpack: {exc}") from None
    if not isinstance(cmd, list) or not cmd:
        raise _Malformed("entry is not a command array")
    kind = cmd[0]
    if type(kind) is not int:  # 1.0 and True compare equal to 1
        raise _Malformed(f"unknown command {kind!r}")
    if kind == CMD_CLOSE:
        lifetime_ok = len(cmd) == 2 or (len(cmd) == 3 and type(cmd[2]) is int
                                        and 0 < cmd[2] <= MAX_TS)
        if not lifetime_ok or not _is_ts(cmd[1]):
            raise _Malformed("bad CLOSE command")
        return cmd
    if kind == CMD_DECIDE or kind == CMD_RESOLVE:
        if not (len(cmd) == 4 and type(cmd[1]) is int and 0 < cmd[1] < 2**64
                and _is_ts(cmd[2]) and type(cmd[3]) is int and 0 <= cmd[3] <= MAX_TS):
            if not (kind == CMD_DECIDE and len(cmd) == 6 and type(cmd[1]) is int
                    and 0 < cmd[1] < 2**64 and _is_ts(cmd[2]) and type(cmd[3]) is int
                    and 0 <= cmd[3] <= MAX_TS and type(cmd[4]) is int
                    and 0 <= cmd[4] <= MAX_TS and isinstance(cmd[5], list)
                    and len(cmd[5]) <= MAX_PARTICIPANTS
                    and all(type(g) is int and 0 < g < 2**32 for g in cmd[5])):
                raise _Malformed("bad DECIDE or RESOLVE command")
        return cmd
    if kind == CMD_FORGET:
        if not (len(cmd) == 3 and _is_ts(cmd[1]) and isinstance(cmd[2], list)
                and all(type(t) is int and 0 < t < 2**64 for t in cmd[2])):
            raise _Malformed("bad FORGET command")
        return cmd
    if kind == CMD_REMOTE:
        if not (len(cmd) == 6 and type(cmd[1]) is int and 0 < cmd[1] < 2**32 and _is_ts(cmd[2])
                and type(cmd[3]) is int and 0 <= cmd[3] < MAX_TS and _is_ts(cmd[4])
                and isinstance(cmd[5], list)):
            raise _Malformed("bad REMOTE command")
        for w in cmd[5]:
            if not (isinstance(w, list) and len(w) == 7 and _is_key(w[0])
                    and is_resolver_name(w[1]) and _is_value(w[2]) and _is_ts(w[3])
                    and type(w[4]) is str and w[4] and type(w[5]) is int
                    and type(w[6]) is str):
                raise _Malformed("bad write in REMOTE")
            try:  # what Batch.remote builds of it (origin and prev are checked there)
                RemoteWrite(w[0], w[2], w[3], w[4], PUT, (w[5], w[6]) if w[5] else None)
            except InvalidArgumentError as exc:
                raise _Malformed(f"bad write in REMOTE: {exc}") from None
        return cmd
    if kind == CMD_FENCE:
        if not (len(cmd) in (5, 6, 7) and _is_ts(cmd[1]) and type(cmd[2]) is int
                and 0 <= cmd[2] <= MAX_KEYSPACE_ID and type(cmd[3]) is int
                and 0 <= cmd[3] <= 3 and type(cmd[4]) is int
                and 0 <= cmd[4] <= MAX_TS):
            raise _Malformed("bad FENCE command")
        if len(cmd) > 5 and not (cmd[5] is None and len(cmd) == 7
                                 or isinstance(cmd[5], list) and len(cmd[5]) == 2
                                 and all(type(v) is int for v in cmd[5])):
            raise _Malformed("bad FENCE expectation")
        if len(cmd) == 7 and not (type(cmd[6]) is int and 0 < cmd[6] <= MAX_EPOCH):
            raise _Malformed("bad FENCE epoch")
        return cmd
    if kind == CMD_PURGE:
        if not (len(cmd) == 8 and _is_ts(cmd[1]) and type(cmd[2]) is int
                and 0 <= cmd[2] <= MAX_KEYSPACE_ID and _is_ts(cmd[7])
                and all(type(b) is bytes and len(b) <= MAX_KEY_SIZE for b in cmd[3:5])
                and all(type(b) is bytes and len(b) <= MAX_SIDE_KEY_SIZE for b in cmd[5:7])):
            raise _Malformed("bad PURGE command")
        return cmd
    if kind == CMD_DRAIN:
        if not (len(cmd) == 3 and _is_ts(cmd[1]) and isinstance(cmd[2], list)
                and all(type(k) is bytes for k in cmd[2])):
            raise _Malformed("bad DRAIN command")
        return cmd
    if kind == CMD_SHIPPED:
        if not (len(cmd) == 4 and _is_ts(cmd[1]) and type(cmd[2]) is int
                and 0 < cmd[2] < 2**32 and type(cmd[3]) is int and 0 <= cmd[3] <= MAX_TS):
            raise _Malformed("bad SHIPPED command")
        return cmd
    if kind == CMD_PREPARE:
        if len(cmd) not in (10, 11) or (len(cmd) == 11 and not are_spans(cmd[10])):
            raise _Malformed("bad PREPARE command")
        _check_commit_body(cmd)
        locks, primary, deadline = cmd[7], cmd[8], cmd[9]
        if not (isinstance(locks, list) and all(_is_key(k) for k in locks)
                and type(primary) is int and primary > 0 and _is_ts(deadline)):
            raise _Malformed("bad PREPARE locks, primary or deadline")
        return cmd
    if kind != CMD_COMMIT or len(cmd) not in (7, 8, 9):
        raise _Malformed(f"unknown command {kind!r}")
    _check_commit_body(cmd)
    if len(cmd) == 9 and not (are_spans(cmd[8]) and isinstance(cmd[7], list)):
        raise _Malformed("bad spans in COMMIT")
    if len(cmd) == 8 or (len(cmd) == 9 and cmd[7]):
        if not isinstance(cmd[7], list) or not cmd[7]:
            raise _Malformed("bad merges in COMMIT")
        for m in cmd[7]:
            if not (isinstance(m, list) and len(m) == 3 and _is_key(m[0])
                    and is_resolver_name(m[1]) and _is_value(m[2])):
                raise _Malformed("bad merge in COMMIT")
    return cmd


def are_spans(spans) -> bool:
    """``[[start, end, limit or nil], ...]``: the ranges a serializable transaction scanned,
    each bound at most one byte longer than a key (what a scan of the store takes: the
    range check must never raise where the entry is applied)."""
    return isinstance(spans, list) and all(
        isinstance(sp, list) and len(sp) == 3 and type(sp[0]) is bytes
        and type(sp[1]) is bytes and len(sp[0]) <= MAX_KEY_SIZE + 1
        and len(sp[1]) <= MAX_KEY_SIZE + 1
        and (sp[2] is None or type(sp[2]) is int and sp[2] >= 0)
        for sp in spans)


def _record_size_bound(keys: Sequence[bytes], spans: Sequence[Sequence]) -> int:
    """At least the packed size of a prepared transaction's record holding ``keys`` and the
    ranges ``spans`` (see :meth:`_Batch._install`): msgpack frames a key in at most 5 bytes, a
    range in at most 11, and the rest of the record in less than 64."""
    return 64 + sum(len(k) + 5 for k in keys) + sum(len(sp[0]) + len(sp[1]) + 11 for sp in spans)


def _spans_of(cmd: list) -> list:
    """A COMMIT's or PREPARE's scanned ranges (empty if it has none)."""
    if cmd[0] == CMD_PREPARE:
        return cmd[10] if len(cmd) > 10 else []
    return cmd[8] if len(cmd) > 8 else []


def _merges_of(cmd: list) -> list:
    """A COMMIT's regional merges (empty if it has none)."""
    return cmd[7] if cmd[0] == CMD_COMMIT and len(cmd) > 7 else []


def _check_commit_body(cmd: list) -> None:
    _, txn_id, read_ts, proposed_ts, flags, writes, reads = cmd[:7]
    if not (type(txn_id) is int and 0 < txn_id < 2**64 and _is_ts(proposed_ts)
            and type(read_ts) is int and 0 <= read_ts <= MAX_TS and type(flags) is int
            and isinstance(writes, list) and isinstance(reads, list)):
        raise _Malformed("bad COMMIT header")
    for w in writes:
        if not (isinstance(w, list) and len(w) == 2 and _is_key(w[0])
                and (w[1] is None or (type(w[1]) is bytes and len(w[1]) <= MAX_VALUE_SIZE))):
            raise _Malformed("bad write in COMMIT")
    for k in reads:
        if not _is_key(k):
            raise _Malformed("bad read key in COMMIT")


def _is_ts(v) -> bool:
    return type(v) is int and 0 < v <= MAX_TS


def _is_value(v) -> bool:
    """Whether ``v`` may be a regional write's value: a write that loses a conflict is logged
    with its value, and its record (``engine.merge.CONFLICT_RECORD_ROOM`` more) must fit in a
    side-table value as well (the store would refuse the whole apply, at every replay)."""
    return v is None or (type(v) is bytes and len(v) <= MAX_APP_VALUE_SIZE)


_BUILTIN_RESOLVERS = {name: resolver_for(name) for name in RESOLVER_NAMES}


def _is_key(k) -> bool:
    return type(k) is bytes and 0 < len(k) <= MAX_KEY_SIZE
