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
    wrote blindly, and is validated as if its snapshot were everything applied before it.
``[CLOSE, proposed_ts]``
    Closes timestamps up to ``proposed_ts`` and writes nothing. A leader proposes one when a
    read needs a stable snapshot above the current closed timestamp, and periodically while idle
    so that learners' reads at bounded staleness stay servable.

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

Durability
----------
The versions of all commits applied in one call, the applied index and this machine's own state
(closed timestamp and low water) are written in one MVCC transaction (``app_state``), so after a
crash they agree; entries at or below the store's applied index are skipped on replay.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgpack

from .adjudicator import Adjudicator, ConflictReason, TxnRequest
from .mvcc import MAX_KEY_SIZE, MAX_TS, MAX_VALUE_SIZE, MVCCStore

__all__ = [
    "CMD_COMMIT",
    "CMD_CLOSE",
    "SERIALIZABLE",
    "CommitResult",
    "GroupStateMachine",
    "encode_commit",
    "encode_close",
]

CMD_COMMIT = 1
CMD_CLOSE = 2
SERIALIZABLE = 1

_REASONS = {
    ConflictReason.WRITE_WRITE: "write_write",
    ConflictReason.READ_WRITE: "read_write",
    ConflictReason.INTENT: "intent",
    ConflictReason.TOO_OLD: "too_old",
}


class Outcome(enum.Enum):
    COMMITTED = "committed"
    CONFLICT = "conflict"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What applying a COMMIT entry decided.

    Attributes:
        outcome: committed, conflict (retryable) or invalid (the command broke a rule that the
            proposer should have checked; nothing was written).
        ts: the commit timestamp when committed, else the entry's timestamp.
        reason: for a conflict, ``write_write``/``read_write``/``intent``/``too_old``; for an
            invalid command, what was wrong.
        key: the conflicting key, if any.
        conflict_ts: the timestamp of the conflicting commit or intent (0 if none).
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
                  *, serializable: bool = False) -> bytes:
    """The entry data of a one-phase commit (see the module docstring)."""
    # msgpack writes tuples and lists alike, as arrays: the pairs go in as they are.
    return msgpack.packb(
        [CMD_COMMIT, txn_id, read_ts, proposed_ts, SERIALIZABLE if serializable else 0,
         writes, reads],
        use_bin_type=True)


def encode_close(proposed_ts: int) -> bytes:
    return msgpack.packb([CMD_CLOSE, proposed_ts], use_bin_type=True)


class _Malformed(Exception):
    pass


class GroupStateMachine:
    """The state machine of one group (``raft.driver.StateMachine``), over an open MVCC store.

    Reads go straight to :attr:`store` at a timestamp at or below :attr:`closed_ts`; this class
    only decides what is written and when a timestamp is closed.

    Args:
        store: the group's MVCC store (the caller opens and closes it).
        max_txn_lifetime_ns: the maximum transaction lifetime, in timestamp units
            (nanoseconds). It must be the same on every replica of the group: it decides which
            transactions are too old.
        on_closed: called with the new closed timestamp after every apply that raised it.
    """

    def __init__(self, store: MVCCStore, *, max_txn_lifetime_ns: int,
                 on_closed: Callable[[int], None] | None = None) -> None:
        if type(max_txn_lifetime_ns) is not int or max_txn_lifetime_ns <= 0:
            raise ValueError(f"max_txn_lifetime_ns must be a positive int, "
                             f"not {max_txn_lifetime_ns!r}")
        self.store = store
        self._lifetime = max_txn_lifetime_ns
        self.on_closed = on_closed
        self._closed = 0
        self._low_water = 0
        self._pruned_at = 0
        self._adj: Adjudicator | None = None
        self._load_state()

    # ------------------------------------------------------------------ state

    @property
    def closed_ts(self) -> int:
        """Every commit this group will ever make at or below this timestamp is applied here."""
        return self._closed

    @property
    def low_water(self) -> int:
        """Transactions whose snapshot is older than this are rejected as too old."""
        return self._low_water

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
        raw = self.store.app_state
        if raw:
            closed, low_water = msgpack.unpackb(raw)
        else:
            closed = low_water = 0
        self._closed = closed
        self._low_water = low_water
        self._pruned_at = low_water
        if self._adj is not None:
            self._adj.close()
        adj = Adjudicator(low_water=low_water)
        try:
            adj.load(self.store.latest_versions(low_water))
        except BaseException:
            adj.close()
            raise
        self._adj = adj

    def _app_state(self) -> bytes:
        return msgpack.packb([self._closed, self._low_water])

    # ------------------------------------------------------------------ StateMachine

    def apply(self, entries) -> list[object]:
        """Applies committed entries; returns one result per entry (a :class:`CommitResult`
        for a commit, the closed timestamp for a close, None for an entry skipped on replay)."""
        skip_to = self.store.applied_index
        results: list[object] = [None] * len(entries)
        requests: list[TxnRequest] = []
        pending: list[tuple[int, int, list]] = []  # (result slot, ts, writes)
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
            ts = self._close(cmd[1] if cmd[0] == CMD_CLOSE else cmd[3])
            if cmd[0] == CMD_CLOSE:
                results[slot] = ts
                continue
            _, txn_id, read_ts, _, flags, writes, reads = cmd
            if read_ts == 0:
                read_ts = ts - 1  # a blind write: its snapshot is everything before it
            elif read_ts >= ts:
                # Its snapshot was never closed here: the proposer broke the protocol.
                results[slot] = CommitResult(
                    Outcome.INVALID, ts, f"read_ts {read_ts} is not below the commit "
                    f"timestamp {ts}: the snapshot was not stable in this group")
                continue
            elif read_ts < self._low_water:
                results[slot] = CommitResult(Outcome.CONFLICT, ts, "too_old",
                                             conflict_ts=self._low_water)
                continue
            requests.append(TxnRequest(
                txn_id=txn_id, read_ts=read_ts, commit_ts=ts,
                writes=[w[0] for w in writes], reads=reads,
                serializable=bool(flags & SERIALIZABLE)))
            pending.append((slot, ts, writes))
        if last_index == 0:
            return results
        batches = []
        if requests:
            verdicts = self.adjudicator.adjudicate(requests)
            for (slot, ts, writes), verdict in zip(pending, verdicts):
                if verdict.ok:
                    batches.append((writes, ts))
                    results[slot] = CommitResult(Outcome.COMMITTED, ts)
                else:
                    results[slot] = CommitResult(Outcome.CONFLICT, ts, _REASONS[verdict.reason],
                                                 verdict.key, verdict.conflict_ts)
        self.store.apply_batch(batches, last_index, app_state=self._app_state())
        if self._low_water - self._pruned_at >= self._lifetime // 4:
            self.adjudicator.prune(self._low_water)
            self._pruned_at = self._low_water
        if self._closed > closed_before and self.on_closed is not None:
            self.on_closed(self._closed)
        return results

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

    def restore(self, data: bytes) -> None:
        index, chunks = msgpack.unpackb(data, raw=False)
        if index <= self.store.applied_index:
            # This replica already applied past the snapshot (a restart finds the snapshot it
            # took itself): its state includes the snapshot's, and replay skips what it has.
            return
        self.store.restore(chunks)
        self._load_state()


def _decode(data: bytes) -> list:
    """Decodes and checks one command; anything malformed raises :class:`_Malformed`."""
    try:
        cmd = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise _Malformed(f"entry is not msgpack: {exc}") from None
    if not isinstance(cmd, list) or not cmd:
        raise _Malformed("entry is not a command array")
    kind = cmd[0]
    if kind == CMD_CLOSE:
        if len(cmd) != 2 or not _is_ts(cmd[1]):
            raise _Malformed("bad CLOSE command")
        return cmd
    if kind != CMD_COMMIT or len(cmd) != 7:
        raise _Malformed(f"unknown command {kind!r}")
    _, txn_id, read_ts, proposed_ts, flags, writes, reads = cmd
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
    return cmd


def _is_ts(v) -> bool:
    return type(v) is int and 0 < v <= MAX_TS


def _is_key(k) -> bool:
    return type(k) is bytes and 0 < len(k) <= MAX_KEY_SIZE
