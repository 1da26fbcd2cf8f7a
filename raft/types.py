"""The plain data the Raft core consumes and produces (ARCH §3, STYLE §1).

Everything here is an immutable value: messages in and out, log entries, the hard state that must
be durable before votes and acknowledgements leave, snapshots, and the :class:`Ready` batch that
tells the driver what to persist, send and apply. Nothing here does I/O; the wire encoding of these
values lives in :mod:`raft.wire`.

Node ids are positive integers; 0 means "none" (no vote, no known leader).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "NONE",
    "MessageType",
    "EntryType",
    "Entry",
    "HardState",
    "ConfState",
    "ConfChangeType",
    "ConfChange",
    "SnapshotMeta",
    "Snapshot",
    "SnapshotChunk",
    "Message",
    "ReadState",
    "Ready",
    "StateRole",
    "SoftState",
    "RaftError",
    "RaftInvariantError",
    "ProposalDroppedError",
    "ConfChangeError",
    "MAX_MEMBERS",
]

NONE = 0  # "no node": no vote cast, no leader known
# Voters and learners a membership may hold: the storage's snapshot header takes no more (a
# larger count there is taken for corruption), so a snapshot naming more cannot be stored.
MAX_MEMBERS = 1 << 16


class RaftError(Exception):
    """Base class of errors raised by the Raft core and driver."""


class RaftInvariantError(RaftError, AssertionError):
    """A protocol invariant broke (a bug, or storage that lost acknowledged state).

    Never caught and logged: the node must stop rather than continue on a broken log.
    """


class ProposalDroppedError(RaftError):
    """A proposal was not appended: this node is not the leader, or leadership is being
    transferred. ``leader`` is the leader this node knows of (0 if none).

    Retryable: nothing was written.
    """

    def __init__(self, message: str, leader: int = NONE):
        super().__init__(message)
        self.leader = leader


class ConfChangeError(RaftError, ValueError):
    """A membership change was refused (another is pending, the leader has not yet committed an
    entry of its term, or the change itself is invalid)."""


class MessageType(enum.IntEnum):
    """Message kinds. ``LOCAL_*`` never cross the network; the rest do."""

    APPEND = 1  # AppendEntries (index/log_term = the entry before ``entries``)
    APPEND_RESP = 2  # index = last matching index; on reject, reject_hint/log_term = hint
    VOTE = 3  # RequestVote (index/log_term = the candidate's last entry)
    VOTE_RESP = 4
    PRE_VOTE = 5  # thesis §9.6: term is the term the sender *would* campaign in
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # commit = min(leader commit, follower match); context = ReadIndex ctx
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # one chunk of a snapshot (snapshot carries meta + chunk)
    SNAPSHOT_RESP = 10  # index = bytes received so far; reject = restart from offset 0
    TIMEOUT_NOW = 11  # leader transfer: campaign now (thesis §3.10)
    READ_INDEX = 12  # follower → leader: ask for a read index for ``context``
    READ_INDEX_RESP = 13  # leader → follower: index = the read index


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data is an encoded ConfChange


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a vote or an append acknowledgement leaves (thesis §3.8)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership: who votes and who only learns. Disjoint sets, sorted tuples."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def __post_init__(self):
        if set(self.voters) & set(self.learners):
            raise ConfChangeError(f"a node cannot be both voter and learner: {self}")

    def members(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # add a voter, or promote a learner
    ADD_LEARNER = 1  # add a learner, or demote a voter
    REMOVE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One server at a time (thesis §4.1); see :mod:`raft.core` for the rule that makes it safe."""

    type: ConfChangeType
    node: int

    def encode(self) -> bytes:
        return bytes([int(self.type)]) + self.node.to_bytes(8, "little")

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) != 9:
            raise ConfChangeError(f"bad conf change encoding ({len(data)} bytes)")
        return cls(ConfChangeType(data[0]), int.from_bytes(data[1:], "little"))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Which log prefix a snapshot replaces, and the membership as of its last entry."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine's snapshot at ``meta.index``.

    ``data`` is bytes-like (``bytes``, or a read-only ``mmap`` for a large snapshot built into
    a file); ``None`` in a :class:`Ready`'s snapshot received from the leader, whose data came
    in ``Ready.snapshot_chunks``. A ``local`` snapshot is a marker a durable state machine
    leaves for its own restarts: its own storage already holds everything up to
    ``meta.index``, so ``data`` is only what its ``restore`` needs to check that, and it is
    never sent to another node (a follower that needs a snapshot gets one built for it, see
    ``RaftCore.snapshot_wanted``).
    """

    meta: SnapshotMeta
    data: bytes | None = b""
    local: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Part of a snapshot being received from the leader, for the driver to write into its
    storage as it arrives (the core never holds a received snapshot whole: a snapshot is as
    large as the state machine's state).

    Invariants: chunks of one transfer come in order, each starting where the one before
    ended; ``offset`` 0 begins a transfer and discards any chunks written before it;
    ``offset + len(data) <= size``. When ``offset + len(data) == size`` the transfer is whole
    and the same :class:`Ready`, or a later one, carries its ``snapshot``.
    """

    meta: SnapshotMeta
    offset: int  # where ``data`` starts within the snapshot's data
    data: bytes
    size: int  # the snapshot's data length, in bytes


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    # SNAPSHOT chunks: meta of the whole snapshot, this chunk's offset and bytes, and whether it
    # is the last chunk. ``snapshot_size`` is the total size in bytes.
    snapshot: SnapshotMeta | None = None
    chunk_offset: int = 0
    chunk: bytes = b""
    snapshot_size: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index reaches ``index``."""

    index: int
    context: bytes


class StateRole(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (not persisted): who leads, and our role."""

    leader: int
    role: StateRole


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. Handle it in this order (STYLE §1):

    1. send ``messages`` (they do not depend on local durability);
    2. write ``snapshot_chunks`` (no fsync of their own), persist ``snapshot``, then
       ``entries`` (truncating any suffix from ``entries[0].index`` first), then
       ``hard_state``; fsync if ``must_sync``;
    3. send ``persisted_messages`` (votes and append acknowledgements, thesis §3.8; the
       answers to received snapshot chunks, so that the leader sends the next chunk only once
       this one is written);
    4. apply ``committed_entries`` in order (after installing ``snapshot`` if there is one);
    5. call ``advance(ready)``.

    A leader's Ready with nothing that must wait for its fsync (no ``persisted_messages``,
    snapshot or term/vote change) may be advanced once its entries are written, before their
    fsync returns: ``advance(ready, entries_durable=False)``, then
    ``RaftCore.persisted_to(index, term)`` when they are durable (see ``RaftCore.advance``).

    ``snapshot`` is always one received from the leader; its ``data`` is ``None``: the data is
    what the ``snapshot_chunks`` of this Ready and earlier ones wrote, from the latest chunk at
    offset 0 on. Once it is installed, the core holds a local marker for it (see
    ``RaftCore.offer_snapshot`` to let the node send it on as a leader).
    """

    number: int
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    persisted_messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()
