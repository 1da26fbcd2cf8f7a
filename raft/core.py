"""The pure Raft core: a deterministic state machine over messages, ticks and proposals.

Shaped after etcd-io/raft's ``raft.go`` (STYLE §1): all protocol state lives in one object whose
per-role behaviour is a step function swapped on role change; the core never sends, never
touches a disk and never reads a clock. Inputs are :meth:`RaftCore.step`, :meth:`RaftCore.tick`
and the client calls (:meth:`propose`, :meth:`read_index`, ...); output is a :class:`Ready`
batch that the driver persists, sends and applies, then hands back with :meth:`advance`.

Choices made here (the Raft thesis, Ongaro 2014, offers several):

- **Durability before acknowledgement** (§3.8): votes and append acknowledgements go in
  ``Ready.persisted_messages`` and leave only after the batch is fsynced. A candidate counts its
  own vote, and a leader its own log, only in :meth:`advance` — after they are durable.
- **Membership changes are one server at a time** (§4.1), effective when the change entry is
  *applied* (as etcd does), with at most one change pending, and refused until the leader has
  committed an entry of its own term — the "no-op in the new term" rule that fixes the bug in
  the original single-server algorithm (Ongaro, raft-dev, 2015). A new leader appends an empty
  no-op entry at once. Joint consensus is not used (``raft.quorum`` has its arithmetic).
- **PreVote** (§9.6) and **CheckQuorum** (§6.2): a node only starts a real election after a
  majority said it could win, and nodes that heard from a leader within the election timeout
  ignore vote requests (a leader lease), unless the candidate was told to campaign by the
  leader itself (leader transfer, §3.10).
- **Replication** is pipelined: per follower, PROBE / REPLICATE / SNAPSHOT states with a
  bounded window of in-flight appends (:mod:`raft.progress`), and fast backtracking with the
  follower's (index, term) hint.
- **Commitment** (§5.4.2): an index is committed by counting only if its entry is of the
  leader's current term.
- **Reads** (§6.4): ReadIndex — the leader records its commit index, confirms it is still
  leader with a heartbeat round, and hands out the index once a quorum answered. A read that
  another node forwarded is dropped if no quorum confirmed it within an election timeout (to
  its caller, as if the message had been lost: it retries on timeout); one asked here waits
  until answered or cancelled (:meth:`RaftCore.cancel_read`).
- **Snapshots** (§5): the application snapshots at its applied index (:meth:`compact`); a
  follower that is behind the compaction point receives the snapshot in chunks, one chunk in
  flight, resumable from the offset the follower acknowledges. The follower's core keeps only
  the transfer's position: each chunk goes out in ``Ready.snapshot_chunks`` for the driver to
  write, and is acknowledged once written, so memory stays at a chunk whatever the snapshot's
  size; once installed, the core holds a local marker for it. A durable state machine
  compacts with a *local* snapshot (a marker: its own storage holds the state) and builds a
  full one only when a follower needs it (:attr:`snapshot_wanted`, :meth:`offer_snapshot`),
  as CockroachDB truncates its log without a snapshot and sends one generated on demand.
- **Learners** receive the log but never vote nor count towards a quorum. One is promoted to
  voter only once it has caught up (replicating, heard from within an election timeout, and
  holding nine tenths of the leader's log, as etcd's server checks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import quorum
from .log import RaftLog
from .progress import Progress, ProgressState
from .types import (
    MAX_MEMBERS,
    NONE,
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDroppedError,
    RaftError,
    RaftInvariantError,
    ReadState,
    Ready,
    Snapshot,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
    StateRole,
)

if TYPE_CHECKING:  # the core is given a Random; it never imports the module's global one
    import random

__all__ = ["Config", "RestoredState", "RaftCore"]

MT = MessageType

# Context of a vote request sent because the leader asked us to take over (TimeoutNow): such a
# request must be granted even by nodes that still hear from the (old) leader.
CAMPAIGN_TRANSFER = b"transfer"

# Terms and indexes a correct peer sends stay below this: the storage takes no index from it
# on, and a node that adopted a term near 2**64 could not campaign (its next term would fit
# neither the wire format nor the storage's hard state).
_BOUND = 1 << 63


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_chunk_size: int = 1 << 20
    max_committed_size_per_ready: int = 16 << 20
    lazy_learners: bool = False
    """Replicate to learners only when they answer a heartbeat, not with every proposal: a
    learner then receives the log in batches, once per heartbeat interval, instead of one
    append (and one fsync) per proposal. Commits never wait for learners, so this trades
    learner lag (about a heartbeat interval) for much less work on every replica — the choice
    for asynchronous cross-region learners."""
    lazy_followers: bool = False
    """Send each new entry at once only to as many followers as a commit needs (a majority of
    the voters, the leader counted: one follower of two, two of four): those whose
    acknowledgements made the latest commit, the ones that hold the most of the log. The
    others receive the log in batches, as lazy learners do, when they answer a heartbeat.
    Nothing about what commits changes — a majority of durable copies — only how soon the
    other followers are sent what commits without them: each of them then reads, writes,
    fsyncs and acknowledges once per heartbeat interval instead of once per proposal, and the
    leader sends one append per proposal instead of one per follower. Followers kept waiting
    lag by about a heartbeat interval; when the chosen ones stop answering, a commit waits at
    most that long for the others' batch, whose acknowledgement then makes them the chosen
    ones. A follower being probed, sent a snapshot or made leader (a transfer) is sent to at
    once as usual."""
    broadcast_commit: bool = True
    """Send followers an append as soon as the commit index moves, even with no entries to
    carry (etcd's behaviour). With False, followers learn it from the next append or heartbeat:
    a follower applies up to a heartbeat interval later, and each commit costs two messages
    and a Ready less per follower. Choose False when reads are served by the leader."""
    lease_reads: bool = False
    """Answer ReadIndex at once while the leader holds a lease, instead of after a heartbeat
    round. The lease: a quorum of voters acknowledged a heartbeat the leader sent at tick
    ``t``; each of them resets its election timer on receipt and, with CheckQuorum, refuses to
    vote for anyone else for ``election_tick`` of its own ticks — and a node that has just
    (re)started refuses for its first ``election_tick`` ticks too. So no other leader can exist
    before ``t + election_tick``; the lease ends well before, at ``t + 3/4 election_tick - 1``,
    leaving room for tick-rate drift. It is void during a leader transfer (the target may
    campaign at once). Safe as long as ticks on different nodes advance at rates within ~25%
    of each other; requires ``check_quorum``."""
    learner_heartbeat_every: int = 1
    """Heartbeat learners only every this many heartbeat intervals. Learners never vote, so
    their heartbeats only carry the commit index and (with ``lazy_learners``) pace their
    replication: sending them less often saves work on every replica of a group with many
    learners, at the cost of learner lag."""
    idle_heartbeat_tick: int = 0
    """While the group is idle, heartbeat the voters only every this many ticks instead of
    every ``heartbeat_tick`` (0: never slow down). Idle: every voter holds the whole log and
    has been sent the commit index, and no read or leader transfer waits — then a heartbeat
    only holds off elections and renews CheckQuorum and the lease, which a few per election
    timeout do as well. An idle cluster of many groups spends most of its CPU on heartbeats
    and their answers (CockroachDB quiesces such groups altogether). Must be below
    ``election_tick``, and with ``lease_reads`` at most half the lease, so that the lease is
    renewed before it ends. Learners keep their own pace (``learner_heartbeat_every``)."""

    def __post_init__(self):
        if self.id <= 0:
            raise ValueError(f"node id must be positive, not {self.id}")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0 or self.max_size_per_msg <= 0:
            raise ValueError("max_inflight_msgs and max_size_per_msg must be positive")
        if self.snapshot_chunk_size <= 0:
            raise ValueError("snapshot_chunk_size must be positive")
        if self.learner_heartbeat_every <= 0:
            raise ValueError("learner_heartbeat_every must be positive")
        if self.idle_heartbeat_tick and not (
                self.heartbeat_tick <= self.idle_heartbeat_tick < self.election_tick):
            raise ValueError("idle_heartbeat_tick must be 0, or at least heartbeat_tick and "
                             "below election_tick")
        if self.lease_reads and (not self.check_quorum or self.lease_ticks() < 1):
            raise ValueError("lease_reads needs check_quorum and election_tick >= 4")
        if self.lease_reads and 2 * self.idle_heartbeat_tick > self.lease_ticks():
            raise ValueError(f"with lease_reads, idle_heartbeat_tick must be at most half the "
                             f"lease ({self.lease_ticks()} ticks for this election_tick)")

    def lease_ticks(self) -> int:
        """How long, in the leader's ticks, a lease lasts from the heartbeat that earned it."""
        return (3 * self.election_tick) // 4 - 1


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What a node finds in its storage at start: the input to :class:`RaftCore`."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    conf: ConfState = field(default_factory=ConfState)  # used when there is no snapshot


class _ReadRequest:
    __slots__ = ("index", "context", "frm", "acks", "asked_tick")

    def __init__(self, index: int, context: bytes, frm: int, asked_tick: int):
        self.index = index
        self.context = context
        self.frm = frm
        self.acks: dict[int, bool] = {}
        self.asked_tick = asked_tick  # when the leader received it (see _drop_stale_reads)


class RaftCore:
    """One replica of one Raft group. Not thread-safe; deterministic given its inputs."""

    def __init__(self, config: Config, rng: random.Random, state: RestoredState):
        self.config = config
        self.id = config.id
        self._rng = rng
        hs = state.hard_state
        snap = state.snapshot
        if snap is not None:
            self.log = RaftLog(snap.meta.index, snap.meta.term, state.entries, hs.commit)
            self.conf = snap.meta.conf
            self.snapshot: Snapshot | None = snap
        else:
            self.log = RaftLog(0, 0, state.entries, hs.commit)
            self.conf = state.conf
            self.snapshot = None
        self._commit_earlier_conf_changes()
        self.term = hs.term
        self.vote = hs.vote
        self.leader = NONE
        self.role = StateRole.FOLLOWER
        self._prev_hard_state = hs
        self._prev_soft_state = SoftState(NONE, StateRole.FOLLOWER)
        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_snapshot: Snapshot | None = None  # received, to be persisted
        # A follower needs a snapshot and the one held is local (see offer_snapshot).
        self.snapshot_wanted = False
        self._ready_number = 0
        self._outstanding: Ready | None = None
        self._stores_vote = False  # the outstanding Ready stores a term or vote
        # Messages dropped as malformed (see _malformed), and why the latest one was.
        self.malformed_messages = 0
        self.last_malformed = ""
        self._bcast_pending = False  # the leader owes every follower an append
        self._heartbeats = 0  # heartbeat rounds sent as leader (paces learners' heartbeats)
        self._voters_heartbeat_tick = 0  # when the voters were last sent a heartbeat
        self._voters_told_commit = 0  # the commit index at that heartbeat
        self._ticks = 0  # ticks since this core was made (a restart starts again at 0)
        self._hb_seq = 0  # the last heartbeat round numbered (lease_reads)
        self._hb_rounds: dict[int, tuple[int, set[int]]] = {}  # round -> (sent at tick, acks)
        self._lease_from = -1  # the tick of the latest heartbeat a quorum acknowledged
        # When a leader last reached us as a follower (append, heartbeat, snapshot). Kept across
        # term changes: learning a higher term from some other message must not end the
        # promise not to vote for an election timeout (thesis §4.2.3, the leader's lease).
        self._leader_heard_tick = -(1 << 62)
        self._timeout_now_sent = False  # this term: a transferee may win at any time
        # The tick a TimeoutNow of this term came that could not be acted on at once (see
        # _step_follower); -1: none.
        self._timeout_now_tick = -1
        # Per-role state.
        self._prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_tick
        self._lead_transferee = NONE
        self._transfer_started = 0  # the tick the transfer to _lead_transferee began
        # lazy_followers: the followers a leader sends new entries to at once (None: all).
        self._eager: frozenset[int] | None = None
        self._pending_conf_index = 0
        self._read_queue: deque[_ReadRequest] = deque()
        # Reads a new leader received before an entry of its term committed:
        # (context, from, tick received).
        self._reads_waiting_for_commit: list[tuple[bytes, int, int]] = []
        # A snapshot being received: (meta, size, bytes so far, (term, sender)). Its chunks are
        # not kept: each goes to the driver (_snapshot_chunks, then Ready.snapshot_chunks).
        self._incoming: tuple[SnapshotMeta, int, int, tuple[int, int]] | None = None
        self._incoming_tick = 0  # when a chunk of it last came
        self._snapshot_chunks: list[SnapshotChunk] = []  # received, to be written
        self._step = self._step_follower
        self._become_follower(self.term, NONE)

    def _commit_earlier_conf_changes(self) -> None:
        """Commits, on restart, every membership change in the log but the last one past the
        commit index. A leader proposes a change only once the one before it is applied, so
        whatever log holds a change holds the one before it committed. The stored commit index
        may not say so: the save that appends a change stores the commit index covering the
        one before after the entries, and a crash in between leaves both past it. Restarting
        there, this node would count votes under a configuration two changes old, whose
        majorities need not overlap the group's (etcd-io/etcd#7625)."""
        log = self.log
        changes = [e.index for e in log.entries(log.committed + 1, log.last_index + 1)
                   if e.type is EntryType.CONF_CHANGE]
        if len(changes) > 1:
            log.commit_to(changes[-2])

    # ================================================================ read-only state

    @property
    def commit(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        return self.log.applied

    @property
    def first_index(self) -> int:
        return self.log.first_index

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def persisted_index(self) -> int:
        return self.log.persisted

    def term_at(self, index: int) -> int | None:
        return self.log.term_at(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.log.entries(max(lo, self.log.first_index), hi)

    def is_voter(self) -> bool:
        return self.id in self.conf.voters

    def status(self) -> dict:
        return {
            "id": self.id,
            "term": self.term,
            "vote": self.vote,
            "role": self.role.value,
            "leader": self.leader,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "first_index": self.log.first_index,
            "last_index": self.log.last_index,
            "persisted": self.log.persisted,
            "voters": list(self.conf.voters),
            "learners": list(self.conf.learners),
            "lead_transferee": self._lead_transferee,
            "progress": {
                pid: {"match": p.match, "next": p.next, "state": p.state.value,
                      "inflight": len(p.inflights), "active": p.recent_active,
                      "heard_ago": self._ticks - p.heard_tick}
                for pid, p in sorted(self._prs.items())
            },
        }

    def __repr__(self) -> str:
        return (f"RaftCore(id={self.id}, term={self.term}, {self.role.value}, "
                f"leader={self.leader}, last={self.log.last_index}, commit={self.log.committed})")

    # ================================================================ role changes

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._rng.randrange(
            self.config.election_tick, 2 * self.config.election_tick
        )
        self._lead_transferee = NONE
        self._eager = None
        self._votes = {}
        self._hb_rounds.clear()
        self._lease_from = -1
        self._timeout_now_sent = False
        self._timeout_now_tick = -1
        self._read_queue.clear()
        self._reads_waiting_for_commit.clear()
        self._reset_progress()

    def _reset_progress(self) -> None:
        self._prs = {
            pid: Progress(self.log.last_index + 1, self.config.max_inflight_msgs)
            for pid in self.conf.members()
        }
        me = self._prs.get(self.id)
        if me is not None:
            me.match = self.log.persisted
            me.next = self.log.last_index + 1

    def _become_follower(self, term: int, leader: int) -> None:
        self._step = self._step_follower
        self._reset(term)
        self.leader = leader
        self.role = StateRole.FOLLOWER
        self.snapshot_wanted = False  # only a leader sends snapshots

    def _become_pre_candidate(self) -> None:
        if self.role is StateRole.LEADER:
            raise RaftInvariantError("leader cannot become pre-candidate")
        # Neither term nor vote changes: a pre-election disturbs nobody (§9.6).
        self._step = self._step_candidate
        self._votes = {}
        self.leader = NONE
        self.role = StateRole.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.role is StateRole.LEADER:
            raise RaftInvariantError("leader cannot become candidate")
        self._step = self._step_candidate
        self._reset(self.term + 1)
        self.vote = self.id  # counted in advance(), once durable
        self.role = StateRole.CANDIDATE

    def _become_leader(self) -> None:
        if self.role is StateRole.FOLLOWER:
            raise RaftInvariantError("follower cannot become leader without an election")
        self._step = self._step_leader
        self._reset(self.term)
        self.leader = self.id
        self.role = StateRole.LEADER
        for pr in self._prs.values():
            pr.recent_active = True
        # No membership change until the no-op below (or anything of this term) is committed.
        self._pending_conf_index = self.log.last_index
        self._append([Entry(self.term, self.log.last_index + 1)])

    # ================================================================ inputs

    def tick(self) -> None:
        """One unit of logical time."""
        self._ticks += 1
        if (self._incoming is not None
                and self._ticks - self._incoming_tick > self.config.election_tick):
            self._incoming = None  # idle: whatever comes next starts again from offset 0
        if self.role is StateRole.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_tick:
            self._election_elapsed = 0
            if self.config.check_quorum:
                if not self._quorum_active():
                    self._become_follower(self.term, NONE)
                    return
            self._drop_stale_reads()
        if (self._lead_transferee != NONE
                and self._ticks - self._transfer_started >= self.config.election_tick):
            self._lead_transferee = NONE  # the transfer timed out
        if self._heartbeat_elapsed >= self.config.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._heartbeats += 1
            learners = self._heartbeats % self.config.learner_heartbeat_every == 0
            idle = self.config.idle_heartbeat_tick
            voters = (not idle or self._ticks - self._voters_heartbeat_tick >= idle
                      or not self._idle())
            if voters or learners:
                ctx = self._read_queue[-1].context if self._read_queue else b""
                self._bcast_heartbeat(ctx, voters=voters, learners=learners)

    def _idle(self) -> bool:
        """Whether the voters need no heartbeat before ``idle_heartbeat_tick`` (see
        :class:`Config`): each holds the whole log and has been sent the commit index, and
        no read or transfer waits."""
        if (self._read_queue or self._lead_transferee != NONE
                or self._voters_told_commit != self.log.committed):
            return False
        last, learners = self.log.last_index, self.conf.learners
        return all(pr.match == last for pid, pr in self._prs.items() if pid not in learners)

    def campaign(self) -> None:
        """Starts an election now (as an expired election timeout would)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Appends ``data`` as a new entry on the leader; returns its (term, index).

        The entry is committed only if the log entry at that index still has that term when it
        is applied. Raises :class:`ProposalDroppedError` on a non-leader or during a transfer.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"proposal data must be bytes, not {type(data).__name__}")
        self._check_can_propose()
        index = self.log.last_index + 1
        self._append([Entry(self.term, index, bytes(data))])
        # Appends go out with the next Ready: proposals made in one loop turn share a message.
        self._bcast_pending = True
        return self.term, index

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        """Proposes one membership change; see the module docstring for the rules."""
        self._check_can_propose()
        if self._pending_conf_index > self.log.applied:
            raise ConfChangeError(
                f"a membership change is still pending (index {self._pending_conf_index}, "
                f"applied {self.log.applied})"
            )
        if self.log.term_at(self.log.committed) != self.term:
            raise ConfChangeError("the leader has not yet committed an entry of its term")
        self._validate_conf_change(cc)
        index = self.log.last_index + 1
        self._append([Entry(self.term, index, cc.encode(), EntryType.CONF_CHANGE)])
        self._pending_conf_index = index
        self._bcast_append()
        return self.term, index

    def _validate_conf_change(self, cc: ConfChange) -> None:
        if cc.node <= 0:
            raise ConfChangeError(f"bad node id {cc.node}")
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        if cc.type is ConfChangeType.ADD_VOTER and cc.node in voters:
            raise ConfChangeError(f"node {cc.node} is already a voter")
        if cc.type is ConfChangeType.ADD_LEARNER and cc.node in learners:
            raise ConfChangeError(f"node {cc.node} is already a learner")
        if cc.type is ConfChangeType.REMOVE and cc.node not in voters | learners:
            raise ConfChangeError(f"node {cc.node} is not a member")
        if cc.node in voters and cc.type is not ConfChangeType.ADD_VOTER and len(voters) == 1:
            raise ConfChangeError("cannot remove or demote the last voter")
        if cc.type is ConfChangeType.ADD_VOTER and cc.node in learners:
            self._check_caught_up(cc.node)

    def _check_caught_up(self, learner: int) -> None:
        """Refuses to promote a learner that has not caught up: as a voter it would count
        towards every majority before it holds the log, so that one more voter down would
        stop all commits until it caught up. Caught up, as etcd's server has it: its log
        matches ours (replicating, not probing nor waiting for a snapshot), it answered within
        an election timeout, and it holds at least nine tenths of our log."""
        pr, last = self._prs[learner], self._prs[self.id].match
        if (pr.state is not ProgressState.REPLICATE or 10 * pr.match < 9 * last
                or self._ticks - pr.heard_tick > self.config.election_tick):
            raise ConfChangeError(
                f"learner {learner} has not caught up with the leader (it holds the log up "
                f"to {pr.match} of {last}, {pr.state.value}): promote it once it has")

    def _check_can_propose(self) -> None:
        if self.role is not StateRole.LEADER:
            raise ProposalDroppedError(f"node {self.id} is not the leader", self.leader)
        if self._lead_transferee != NONE:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self._lead_transferee}", self.leader
            )

    def read_index(self, context: bytes) -> None:
        """Requests a linearizable read point; it arrives as a :class:`ReadState` with the same
        ``context`` in a later Ready (or never, if leadership is lost: retry on timeout)."""
        if self.role is StateRole.LEADER:
            self._leader_read_index(bytes(context), self.id)
        elif self.leader != NONE:
            self._send(Message(MT.READ_INDEX, self.leader, self.id, self.term,
                               context=bytes(context)))
        else:
            raise ProposalDroppedError("no leader known for a read index", NONE)

    def cancel_read(self, context: bytes) -> None:
        """Forgets a read asked here with :meth:`read_index` whose caller gave up before its
        ReadState came; nothing happens if there is none (answered, dropped, or forwarded to
        the leader). Without it, a leader that no quorum answers (and without CheckQuorum that
        may last) would keep every read of callers that timed out and retried until its term
        ends."""
        context = bytes(context)
        for n, req in enumerate(self._read_queue):
            if req.context == context and req.frm == self.id:
                # Later rounds carry the context of the newest read left (see _tick_heartbeat).
                del self._read_queue[n]
                return
        self._reads_waiting_for_commit = [
            w for w in self._reads_waiting_for_commit if w[:2] != (context, self.id)]

    def lease_read_index(self) -> int | None:
        """The read index a leader holding a lease would answer ``read_index`` with (its
        commit index), at once and with no state change; None when a read must go through
        :meth:`read_index` (not the leader, no lease, or no entry of its term committed yet)."""
        if (self.role is StateRole.LEADER and self._lease_valid()
                and self.log.term_at(self.log.committed) == self.term):
            return self.log.committed
        return None

    def lapse_lease(self) -> None:
        """Ends the lease now (the driver lost ticks: they no longer measure real time). The
        heartbeat rounds sent so far are forgotten too, so that a late acknowledgement of one
        cannot start a lease from before the gap; the next round a quorum acknowledges does."""
        self._lease_from = -1
        self._hb_rounds.clear()

    def transfer_leader(self, to: int) -> None:
        """Hands leadership to ``to`` (thesis §3.10): stop taking proposals, bring ``to`` up to
        date, then tell it to campaign at once. Aborted after an election timeout."""
        if self.role is not StateRole.LEADER:
            raise ProposalDroppedError(f"node {self.id} is not the leader", self.leader)
        if to not in self.conf.voters:
            raise ConfChangeError(f"node {to} is not a voter")
        if to == self.id or to == self._lead_transferee:
            return
        self._check_not_leaving(to)
        # The transfer gets an election timeout of its own. The quorum check keeps its pace:
        # restarting its count here would let transfers asked again and again (to changing
        # targets) keep a leader that no quorum answers from ever stepping down.
        self._lead_transferee = to
        self._transfer_started = self._ticks
        pr = self._prs[to]
        if pr.match == self.log.last_index:
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def _check_not_leaving(self, to: int) -> None:
        """Refuses a transfer to a voter that a membership change not yet applied removes or
        demotes: it holds that change, so once elected it would commit it and step down,
        leaving the group without a leader for an election timeout (or more: the others
        then still honour the lease of its last heartbeat)."""
        log = self.log
        if self._pending_conf_index <= log.applied:
            return
        for e in log.entries(max(log.applied, log.offset) + 1, self._pending_conf_index + 1):
            if e.type is EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                if cc.node == to and cc.type is not ConfChangeType.ADD_VOTER:
                    raise ConfChangeError(
                        f"node {to} is leaving the voters (membership change at index "
                        f"{e.index}, not yet applied)")

    def compact(self, data: bytes, keep: int = 0, *, local: bool = False) -> SnapshotMeta:
        """Records the application's snapshot taken at the applied index and drops log entries
        before ``applied - keep`` from memory. The caller persists the snapshot.

        ``local``: ``data`` is a durable state machine's marker (see :class:`Snapshot`), never
        sent; a full snapshot held at the same index stays, for the followers that need it.
        """
        index = self.log.applied
        if index == 0:
            raise RaftError("nothing applied yet: no snapshot to take")
        meta = SnapshotMeta(index, self.log.term_at(index), self.conf)
        if self.snapshot is None or self.snapshot.meta.index < index:
            if not isinstance(data, bytes):
                data = bytes(data)
            self.snapshot = Snapshot(meta, data, local)
        # Even when the snapshot held is not older, a smaller ``keep`` may free more log.
        self.log.compact(max(index - max(keep, 0), 0))
        return self.snapshot.meta

    def compact_at(self, meta: SnapshotMeta, data: bytes, keep: int = 0) -> SnapshotMeta | None:
        """:meth:`compact` for a local snapshot (``data``, a durable state machine's marker)
        of the state as applied when :meth:`snapshot_meta_at_applied` gave ``meta``, made
        durable since, while the log went on. Returns ``meta``, for the caller to persist with
        ``data``; None, doing nothing, when the log already starts past ``meta`` (a snapshot
        was installed meanwhile). A snapshot held at or past ``meta`` — a full one built for
        followers since, or the marker left in its place — stays held; the log is compacted
        all the same."""
        if meta.index <= self.log.offset:
            return None
        if meta.index > self.log.applied:
            raise RaftError(f"a snapshot at index {meta.index} is beyond the applied index "
                            f"{self.log.applied}")
        if self.log.term_at(meta.index) != meta.term:
            raise RaftError(f"a snapshot at index {meta.index} of term {meta.term}, but the "
                            f"entry there is of term {self.log.term_at(meta.index)}")
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.snapshot is None or self.snapshot.meta.index < meta.index:
            self.snapshot = Snapshot(meta, data, True)
        self.log.compact(max(meta.index - max(keep, 0), 0))
        return meta

    def snapshot_meta_at_applied(self) -> SnapshotMeta:
        """The metadata a snapshot of the state machine as applied now would carry (for a
        snapshot built over time from a consistent view taken now, see
        :meth:`offer_snapshot`)."""
        index = self.log.applied
        if index == 0:
            raise RaftError("nothing applied yet: no snapshot to take")
        return SnapshotMeta(index, self.log.term_at(index), self.conf)

    def offer_snapshot(self, snap: Snapshot) -> bool:
        """Holds ``snap`` (a full snapshot built for followers, its metadata from
        :meth:`snapshot_meta_at_applied`; or the data of a snapshot received and installed, for
        an application whose state machine cannot build one) for sending, in place of a local
        one or an older one.
        The log is not compacted: the snapshot needs no persisting. Clears
        :attr:`snapshot_wanted`. Returns whether ``snap`` is now the one held."""
        if snap.local:
            raise RaftError("a local snapshot cannot be sent to followers")
        self.snapshot_wanted = False
        held = self.snapshot
        if held is not None and (held.meta.index > snap.meta.index or (
                held.meta.index == snap.meta.index and not held.local)):
            return False
        if snap.meta.index > self.log.applied:
            raise RaftError(f"snapshot at {snap.meta.index} is beyond the applied index "
                            f"{self.log.applied}")
        self.snapshot = snap
        return True

    def hold_local_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replaces the snapshot held at ``meta`` (one offered for followers) by a local
        marker for the same index, freeing its data: the application's durable storage has
        the state. Nothing happens if another snapshot is held by then, or while a
        follower receives this one."""
        held = self.snapshot
        if held is not None and held.meta == meta and not held.local and (
                not self.sending_snapshot()):
            # (Elected meanwhile and sending it, this node keeps it until the transfer ends.)
            self.snapshot = Snapshot(meta, data, True)

    def sending_snapshot(self) -> bool:
        """Whether a follower is receiving the snapshot held (compacting now would replace
        it and restart the transfer): one in that state that has answered within the last
        election timeout. A follower that went silent mid-transfer does not count."""
        snap = self.snapshot
        return snap is not None and any(
            pr.state is ProgressState.SNAPSHOT and pr.pending_snapshot == snap.meta.index
            and self._ticks - pr.heard_tick <= self.config.election_tick
            for pr in self._prs.values())

    # ================================================================ step

    def step(self, m: Message) -> None:
        """Feeds one message received from the network. A malformed one (see
        :meth:`_malformed`) is dropped, counted in :attr:`malformed_messages` and described in
        :attr:`last_malformed`: what a peer sends must never stop this node, nor be
        acknowledged when it makes no sense."""
        if m.to != self.id:
            return
        problem = self._malformed(m)
        if problem is not None:
            self.malformed_messages += 1
            self.last_malformed = f"{m.type.name} from node {m.frm} in term {m.term}: {problem}"
            return
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                if self._in_lease() and m.context != CAMPAIGN_TRANSFER:
                    return  # we still hear from a leader: don't let a rogue node depose it
            if m.type is MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted for a term we have not entered yet
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            elif (m.type is MT.VOTE and self.role is not StateRole.LEADER
                  and not self.log.is_up_to_date(m.index, m.log_term)):
                # We will refuse this candidate: adopt its term but keep our election timer
                # running, deadline and all, as the paper's rules say (a timer restarts only
                # on hearing from a leader or granting a vote). Restarting it let a voter whose
                # log is behind, campaigning again each time it timed out, hold back the
                # up-to-date node that kept refusing it, and no one was elected (tikv/raft-rs
                # issue 14 proposes the same). A leader's count is its CheckQuorum period, not
                # an election timer: one that steps down starts a timer afresh.
                elapsed, timeout = self._election_elapsed, self._randomized_election_timeout
                self._become_follower(m.term, NONE)
                self._election_elapsed, self._randomized_election_timeout = elapsed, timeout
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT):
                # A stale leader: tell it our term so that it steps down (etcd does this when
                # pre-vote or check-quorum would otherwise keep the cluster from converging).
                self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term))
            elif m.type is MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
            return
        self._step(m)

    def _malformed(self, m: Message) -> str | None:
        """Why ``m`` cannot come from a correct peer, or None. The wire decoder checks each
        field's type and range; this checks what only makes sense together (and covers
        transports that pass messages without encoding them). An append whose entries do not
        follow its index one by one, or whose terms fall or pass the message's term, would
        otherwise enter the log at the wrong positions and be acknowledged — and the storage,
        which refuses such a log, would then stop the node; so would a term or an index it
        cannot store, or an acknowledgement that a leader's log cannot match."""
        if m.frm == self.id or m.frm == NONE:
            return "it names this node, or no node, as its sender"
        if m.term >= _BOUND or m.index >= _BOUND or m.log_term >= _BOUND or m.commit >= _BOUND:
            return "a term or an index of 2**63 or more"
        t = m.type
        if t is MT.APPEND:
            # (A previous entry of a term above the message's matches no entry here: refused.)
            ents = m.entries
            if len(ents) == 1:  # the common case, a quarter of the cost of the general one
                e = ents[0]
                if e.index != m.index + 1 or not m.log_term <= e.term <= m.term:
                    return (f"its entry {e.index} of term {e.term} does not follow index "
                            f"{m.index} of term {m.log_term} in term {m.term}")
                if e.index >= _BOUND:
                    return f"an entry at index {e.index}, beyond 2**63"
                if e.type is EntryType.CONF_CHANGE:
                    return self._malformed_conf_changes(ents)
            elif ents:
                # Comprehensions rather than one loop: about 10 us for an append of 100
                # entries, a tenth of what decoding it from the wire costs.
                if [e.index for e in ents] != list(range(m.index + 1, m.index + 1 + len(ents))):
                    return f"its entries do not follow index {m.index} one by one"
                terms = [e.term for e in ents]
                if terms[0] < m.log_term or terms[-1] > m.term or terms != sorted(terms):
                    return (f"its entries' terms fall, or leave [{m.log_term}, {m.term}] (the "
                            f"term before them, the message's term)")
                if ents[-1].index >= _BOUND:
                    return f"entries up to index {ents[-1].index}, beyond 2**63"
                if EntryType.CONF_CHANGE in [e.type for e in ents]:
                    problem = self._malformed_conf_changes(ents)
                    if problem is not None:
                        return problem
        elif t is MT.SNAPSHOT:
            meta = m.snapshot
            if meta is not None:
                if meta.term > m.term or meta.index >= _BOUND:
                    return (f"a snapshot at index {meta.index} of term {meta.term} (above the "
                            f"message's term, or an index beyond 2**63)")
                conf = meta.conf
                if not conf.voters or min(conf.voters + conf.learners) <= 0:
                    return f"a snapshot whose membership is not valid: {conf}"
                if len(conf.voters) + len(conf.learners) > MAX_MEMBERS:
                    # The storage would refuse to write it, which stops the node.
                    return (f"a snapshot of {len(conf.voters)} voters and "
                            f"{len(conf.learners)} learners, over {MAX_MEMBERS} members")
        elif (t is MT.APPEND_RESP and not m.reject and m.term == self.term
              and self.role is StateRole.LEADER and m.index > self.log.last_index):
            # A leader's log only grows during its term: no follower can hold more of it.
            return f"it acknowledges index {m.index}, beyond the last index {self.log.last_index}"
        return None

    @staticmethod
    def _malformed_conf_changes(entries: tuple[Entry, ...]) -> str | None:
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                try:
                    cc = ConfChange.decode(e.data)
                except ValueError as exc:  # ConfChangeError is one too
                    return f"entry {e.index} is not a membership change: {exc}"
                if cc.node <= 0:
                    return f"entry {e.index} changes the membership of node {cc.node}"
        return None

    def _in_lease(self) -> bool:
        """Whether this node still keeps its promise to a leader not to vote for anyone else
        (thesis §4.2.3, the leader's lease; see Config.lease_reads)."""
        return self.config.check_quorum and (
            (self.leader != NONE and self._election_elapsed < self.config.election_tick)
            # Heard from a leader within the timeout, even if a higher term learnt since
            # from a message that is not a vote (a late rejection) cleared it.
            or self._ticks - self._leader_heard_tick < self.config.election_tick
            # A node that just (re)started may have acknowledged a leader's lease before it
            # stopped: honour it for one election timeout.
            or (self.config.lease_reads and self._ticks < self.config.election_tick))

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            # A request of our own term passed no lease check in step(): a higher term learnt
            # from a message that is not a vote cleared the leader, not the promise.
            or (self.vote == NONE and self.leader == NONE
                and (m.context == CAMPAIGN_TRANSFER or not self._in_lease()))
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )
        resp = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Granted pre-votes carry the term asked for, so the pre-candidate can count them.
            self._send(Message(resp, m.frm, self.id, m.term))
            if m.type is MT.VOTE:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    # ---------------------------------------------------------------- follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MT.APPEND:
            self._election_elapsed = 0
            self.leader = m.frm
            self._leader_heard_tick = self._ticks
            self._handle_append(m)
        elif t is MT.HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._leader_heard_tick = self._ticks
            self.log.commit_to(min(m.commit, self.log.last_index))
            self._send(Message(MT.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context,
                               index=m.index))
        elif t is MT.SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._leader_heard_tick = self._ticks
            self._handle_snapshot_chunk(m)
        elif t is MT.TIMEOUT_NOW:
            # A membership change committed but not yet applied here (this node's own
            # promotion, say, which the leader has applied: the commit index and this message
            # came in one batch) keeps it from campaigning now: it does once the change is
            # applied (see advance), within the election timeout the leader's transfer lasts.
            self._timeout_now_tick = self._ticks
            self._hup(transfer=True)  # a campaign resets _timeout_now_tick
        elif t is MT.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        elif t is MT.READ_INDEX:
            if self.leader != NONE:  # forward to the leader we know
                self._send(Message(MT.READ_INDEX, self.leader, m.frm, self.term,
                                   context=m.context))
        # Stale responses (votes, appends) addressed to an earlier role are dropped.

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term,
                               index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term, index=last_new))
            return
        # Reject with a hint (etcd): the largest index <= m.index whose term is <= m.log_term.
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index), m.log_term)
        self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term, index=m.index,
                           reject=True, reject_hint=hint,
                           log_term=self.log.term_at(hint) or 0))

    def _handle_snapshot_chunk(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            return
        if meta.index <= self.log.committed or self.log.match_term(meta.index, meta.term):
            # We already have everything it holds: fast-forward the commit index instead.
            if self.log.match_term(meta.index, meta.term):
                self.log.commit_to(meta.index)
            self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term,
                               index=self.log.committed))
            return
        inc = self._incoming
        if (inc is None or inc[0] != meta or inc[1] != m.snapshot_size
                or inc[3] != (m.term, m.frm)):
            # A transfer is one leader's in one term: two snapshots with the same metadata
            # and size (a new leader's build, after GC ran on its replica) must never be
            # joined into one. (A transfer idle for an election timeout is forgotten, see
            # tick(), so that one leader's rebuild cannot be joined to its old one either.)
            if m.chunk_offset != 0:
                self._send(Message(MT.SNAPSHOT_RESP, m.frm, self.id, self.term,
                                   index=meta.index, chunk_offset=0, reject=True))
                return
            inc = (meta, m.snapshot_size, 0, (m.term, m.frm))
        _, size, received, source = inc
        self._incoming_tick = self._ticks
        if m.chunk_offset != received:
            # A duplicate (behind us): tell the leader where we are. A gap (the leader counts
            # more than we hold: what we hold was restarted meanwhile, e.g. by a delayed copy
            # of the first chunk after a restart): the leader ignores an answer below the
            # offset it has (it takes it for the answer to a duplicate), so refuse, which
            # sends it back to offset 0; our answer to that chunk then says where we are.
            self._incoming = inc
            if m.chunk_offset > received:
                self._send(Message(MT.SNAPSHOT_RESP, m.frm, self.id, self.term,
                                   index=meta.index, chunk_offset=0, reject=True))
            else:  # after the next persist: ``received`` may count chunks not yet written
                self._msgs_after_persist.append(Message(
                    MT.SNAPSHOT_RESP, m.frm, self.id, self.term, index=meta.index,
                    chunk_offset=received))
            return
        if received + len(m.chunk) > size:
            self._incoming = None
            self._send(Message(MT.SNAPSHOT_RESP, m.frm, self.id, self.term, index=meta.index,
                               chunk_offset=0, reject=True))
            return
        self._snapshot_chunks.append(SnapshotChunk(meta, received, m.chunk, size))
        received += len(m.chunk)
        if received < size:
            self._incoming = (meta, size, received, source)
            # Answered once the chunk is written: the leader's next chunk waits for it, so a
            # slow disk holds back the transfer instead of filling memory with chunks.
            self._msgs_after_persist.append(Message(
                MT.SNAPSHOT_RESP, m.frm, self.id, self.term, index=meta.index,
                chunk_offset=received))
            return
        self._incoming = None
        self._restore(meta)
        # Acknowledge as an append up to the snapshot, after the snapshot is durable.
        self._send(Message(MT.APPEND_RESP, m.frm, self.id, self.term, index=meta.index))

    def _restore(self, meta: SnapshotMeta) -> None:
        """Installs the snapshot whose chunks were all handed out: the driver persists it from
        what it wrote. Until the application offers its data (:meth:`offer_snapshot`), a
        local marker stands for it: the data is on the driver's side."""
        self.log.restore(meta.index, meta.term)
        self.log.applying = max(self.log.applying, meta.index)
        self.conf = meta.conf
        self.snapshot = Snapshot(meta, b"", True)
        self._pending_snapshot = Snapshot(meta, None)
        self._pending_conf_index = 0

    # ---------------------------------------------------------------- candidate

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        want = MT.PRE_VOTE_RESP if self.role is StateRole.PRE_CANDIDATE else MT.VOTE_RESP
        if t is want:
            self._votes[m.frm] = not m.reject
            result = quorum.vote_result(self.conf.voters, self._votes)
            if result is quorum.VoteResult.WON:
                if self.role is StateRole.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result is quorum.VoteResult.LOST:
                self._become_follower(self.term, NONE)
        elif t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # A leader exists in our term (§5.2): accept it.
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif t is MT.TIMEOUT_NOW:
            pass  # already campaigning

    def _promotable(self) -> bool:
        return self.id in self.conf.voters and self._pending_snapshot is None

    def _hup(self, transfer: bool) -> None:
        if self.role is StateRole.LEADER or not self._promotable():
            return
        # Do not campaign with committed membership changes not yet applied: we might count
        # votes under a configuration that is already obsolete. A snapshot restored but not yet
        # acknowledged (applied < offset) already set its configuration: look after it.
        lo = max(self.log.applied, self.log.offset) + 1
        for e in self.log.entries(lo, self.log.committed + 1):
            if e.type is EntryType.CONF_CHANGE:
                return
        self._campaign(pre=self.config.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            kind, term = MT.PRE_VOTE, self.term + 1
            self._votes[self.id] = True  # a pre-vote changes no durable state
        else:
            self._become_candidate()
            kind, term = MT.VOTE, self.term
        if pre and quorum.vote_result(self.conf.voters, self._votes) is quorum.VoteResult.WON:
            self._campaign(pre=False, transfer=transfer)
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for pid in self.conf.voters:
            if pid != self.id:
                self._send(Message(kind, pid, self.id, term, index=self.log.last_index,
                                   log_term=self.log.last_term, context=ctx))

    # ---------------------------------------------------------------- leader

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MT.READ_INDEX:
            self._leader_read_index(m.context, m.frm)
            return
        pr = self._prs.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        pr.heard_tick = self._ticks
        if t is MT.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif t is MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.is_paused():
                # A full window whose appends were all lost would never drain: free one slot
                # so that the next append goes out (its rejection then resets us to probing).
                # etcd does the same (FreeFirstOne).
                pr.inflights.popleft()
            if pr.state is ProgressState.SNAPSHOT:
                # A transfer has a chunk in flight nearly all the time: resend it only once it
                # has gone unanswered for two heartbeat intervals (it was lost, or the follower
                # restarted), not on every answer, which would send a chunk more per interval.
                # Well within the election timeout after which the follower gives it up.
                wait = min(2 * self.config.heartbeat_tick, self.config.election_tick // 2)
                if self._ticks - pr.snapshot_sent_tick >= wait:
                    self._send_snapshot_chunk(m.frm, pr)
            elif pr.match < self.log.last_index:
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.frm, m.context)
            if m.index and self.config.lease_reads:
                self._ack_lease(m.frm, m.index)
        elif t is MT.SNAPSHOT_RESP:
            pr.recent_active = True
            if pr.state is not ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
                return
            if not m.reject and m.chunk_offset <= pr.snapshot_offset:
                # The answer to a duplicate chunk (resent after a heartbeat): the chunk that
                # follows is already on its way. Answering it too would fork a second stream.
                return
            pr.snapshot_offset = 0 if m.reject else m.chunk_offset
            self._send_snapshot_chunk(m.frm, pr)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            if was_paused and not pr.is_paused():
                self._send_append(m.frm)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            if self.config.lazy_followers and (self._eager is None or m.frm not in self._eager):
                self._choose_eager()
            if self.config.broadcast_commit:
                self._bcast_pending = True  # tell everyone the new commit index, once per Ready
        elif not self._lazy(m.frm, pr):
            # A follower that was paused missed any commit broadcast made meanwhile: send it
            # the commit index even with no entries to carry (etcd does the same).
            self._send_append(m.frm, send_if_empty=was_paused)
        if m.frm == self._lead_transferee and pr.match == self.log.last_index:
            self._send_timeout_now(m.frm)

    def _send_timeout_now(self, to: int) -> None:
        # The target's forced votes ignore the followers' lease, and the message may arrive
        # long after the transfer is given up: no lease for the rest of this term.
        self._timeout_now_sent = True
        self._send(Message(MT.TIMEOUT_NOW, to, self.id, self.term))

    def _maybe_commit(self) -> bool:
        acked = {pid: pr.match for pid, pr in self._prs.items()}  # learners: not voters
        index = quorum.committed_index(self.conf.voters, acked)
        if index == quorum.UNBOUNDED or index <= self.log.committed:
            return False
        # §5.4.2: never commit an entry of an earlier term by counting replicas.
        if self.log.term_at(index) != self.term:
            return False
        self.log.commit_to(index)
        if self._reads_waiting_for_commit:
            waiting, self._reads_waiting_for_commit = self._reads_waiting_for_commit, []
            for ctx, frm, _ in waiting:
                self._leader_read_index(ctx, frm)
        return True

    def _append(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        # The leader's own copy counts once it is durable: see advance().

    def _bcast_append(self) -> None:
        me, prs = self.id, self._prs
        for pid in prs:
            if pid != me and not self._lazy(pid, prs[pid]):
                self._send_append(pid)

    def _lazy(self, pid: int, pr: Progress) -> bool:
        """Whether new entries wait for ``pid`` to answer a heartbeat (``lazy_learners``,
        ``lazy_followers``) instead of leaving at once."""
        if pid in self.conf.learners:
            return self.config.lazy_learners
        eager = self._eager
        return (eager is not None and pid not in eager and pr.state is ProgressState.REPLICATE
                and pid != self._lead_transferee)

    def _choose_eager(self) -> None:
        """(``lazy_followers``) After a commit that a follower outside the chosen ones made:
        choose again the followers that new entries go to at once — as many as a majority
        needs besides the leader, those holding the most of the log, the ones chosen before
        first among equals. A leader that is not a voter (its removal pending) counts for no
        commit: every follower is sent to at once."""
        voters = self.conf.voters
        if self.id not in voters:
            self._eager = None
            return
        old = self._eager or frozenset()
        prs = self._prs
        followers = sorted((v for v in voters if v != self.id),
                           key=lambda v: (-prs[v].match, v not in old, v))
        self._eager = frozenset(followers[:len(voters) // 2])

    def _send_append(self, to: int, send_if_empty: bool = True) -> None:
        pr = self._prs[to]
        while not pr.is_paused():
            prev_index = pr.next - 1
            prev_term = self.log.term_at(prev_index)
            if prev_term is None:
                self._start_snapshot(to, pr)
                return
            ents = self.log.entries(pr.next, self.log.last_index + 1,
                                    self.config.max_size_per_msg)
            if not ents and not send_if_empty:
                return
            self._send(Message(MT.APPEND, to, self.id, self.term, log_term=prev_term,
                               index=prev_index, entries=tuple(ents),
                               commit=self.log.committed))
            if not ents:
                if pr.state is ProgressState.PROBE:
                    pr.probe_sent = True
                return
            pr.sent_entries(ents[-1].index)
            send_if_empty = False

    def _start_snapshot(self, to: int, pr: Progress) -> None:
        if self.snapshot is None:
            raise RaftInvariantError(
                f"log compacted to {self.log.offset} but no snapshot is held"
            )
        if self.snapshot.local:
            # The application builds a full one (offer_snapshot); until then the follower
            # stays in probe, and the next heartbeat answer brings it here again.
            self.snapshot_wanted = True
            if pr.state is not ProgressState.PROBE:
                pr.become_probe()
            pr.probe_sent = True
            return
        pr.become_snapshot(self.snapshot.meta.index)
        self._send_snapshot_chunk(to, pr)

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snap = self.snapshot
        if snap is None or snap.meta.index != pr.pending_snapshot or snap.local:
            pr.become_probe()  # our snapshot moved on: start over from a probe
            return
        off = pr.snapshot_offset
        chunk = snap.data[off : off + self.config.snapshot_chunk_size]
        pr.snapshot_sent_tick = self._ticks
        self._send(Message(MT.SNAPSHOT, to, self.id, self.term, snapshot=snap.meta,
                           chunk_offset=off, chunk=chunk, snapshot_size=len(snap.data)))

    def _bcast_heartbeat(self, ctx: bytes, *, voters: bool = True, learners: bool = True
                         ) -> None:
        if voters:
            self._voters_heartbeat_tick = self._ticks
            self._voters_told_commit = self.log.committed
        learner_ids = self.conf.learners
        round_ = 0
        if self.config.lease_reads and voters:
            # Rounds are numbered so that an acknowledgement says which send it answers.
            self._hb_seq += 1
            round_ = self._hb_seq
            self._hb_rounds[round_] = (self._ticks, {self.id})
            while len(self._hb_rounds) > 16:
                del self._hb_rounds[next(iter(self._hb_rounds))]
        for pid, pr in self._prs.items():
            if pid != self.id and (learners if pid in learner_ids else voters):
                self._send(Message(MT.HEARTBEAT, pid, self.id, self.term, index=round_,
                                   commit=min(pr.match, self.log.committed), context=ctx))

    def _ack_lease(self, frm: int, round_: int) -> None:
        entry = self._hb_rounds.get(round_)
        if entry is None or frm not in self.conf.voters:
            return
        sent, acks = entry
        acks.add(frm)
        if sent > self._lease_from and quorum.vote_result(
                self.conf.voters, dict.fromkeys(acks, True)) is quorum.VoteResult.WON:
            self._lease_from = sent

    def _lease_valid(self) -> bool:
        return (self.config.lease_reads and self._lease_from >= 0
                and self._lead_transferee == NONE and not self._timeout_now_sent
                and self._ticks < self._lease_from + self.config.lease_ticks())

    def _quorum_active(self) -> bool:
        active = {pid: True for pid, pr in self._prs.items()
                  if pr.recent_active or pid == self.id}
        for pid, pr in self._prs.items():
            if pid != self.id:
                pr.recent_active = False
        return quorum.vote_result(self.conf.voters, active) is quorum.VoteResult.WON

    # ---------------------------------------------------------------- reads

    def _leader_read_index(self, ctx: bytes, frm: int) -> None:
        if self.log.term_at(self.log.committed) != self.term:
            # Our commit index may be behind the true one until an entry of our term commits.
            self._reads_waiting_for_commit.append((ctx, frm, self._ticks))
            return
        req = _ReadRequest(self.log.committed, ctx, frm, self._ticks)
        if self._lease_valid():
            self._release_read(req)
            return
        req.acks[self.id] = True
        if quorum.vote_result(self.conf.voters, req.acks) is quorum.VoteResult.WON:
            self._release_read(req)
            return
        self._read_queue.append(req)
        self._bcast_heartbeat(ctx, learners=False)  # learners' answers would not count

    def _ack_read(self, frm: int, ctx: bytes) -> None:
        for n, req in enumerate(self._read_queue):
            if req.context == ctx:
                if frm in self.conf.voters:
                    req.acks[frm] = True
                if quorum.vote_result(self.conf.voters, req.acks) is quorum.VoteResult.WON:
                    # This round confirmed leadership for every earlier request too.
                    for _ in range(n + 1):
                        self._release_read(self._read_queue.popleft())
                return

    def _drop_stale_reads(self) -> None:
        """Forgets the reads other nodes forwarded that have waited for an election timeout.

        A quorum that answers confirms a read within a heartbeat round; one that has not for
        this long is not answering (a leader without CheckQuorum may stay cut off for good),
        and the node that forwarded the read cannot cancel it: its caller has timed out and
        retried, and is told nothing either way, as if the request had been lost. Without
        this, every retry would stay queued until the term ends. Reads asked on this node stay
        until answered or cancelled (:meth:`cancel_read`)."""
        horizon = self._ticks - self.config.election_tick
        if any(r.frm != self.id and r.asked_tick < horizon for r in self._read_queue):
            self._read_queue = deque(r for r in self._read_queue
                                     if r.frm == self.id or r.asked_tick >= horizon)
        if self._reads_waiting_for_commit:
            self._reads_waiting_for_commit = [
                w for w in self._reads_waiting_for_commit if w[1] == self.id or w[2] >= horizon]

    def _release_read(self, req: _ReadRequest) -> None:
        if req.frm == self.id:
            self._read_states.append(ReadState(req.index, req.context))
        else:
            self._send(Message(MT.READ_INDEX_RESP, req.frm, self.id, self.term,
                               index=req.index, context=req.context))

    # ================================================================ output

    def _send(self, m: Message) -> None:
        if m.type in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.APPEND_RESP):
            # §3.8: an acknowledgement or a vote may leave only once what it vouches for is
            # durable. (Rejections need not wait, but keeping one rule is simpler to check.)
            # So may a vote request: a candidate that won before its new term was durable
            # could restart in the old term, win the same term again from the same voters and
            # append different entries at indexes it had already sent as leader.
            self._msgs_after_persist.append(m)
        else:
            self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        return bool(self._msgs) or self._has_work_besides_messages()

    def _has_work_besides_messages(self) -> bool:
        # Called after every step and tick: the states are compared field by field rather
        # than built (a frozen dataclass costs microseconds to construct).
        log = self.log
        hs = self._prev_hard_state
        ss = self._prev_soft_state
        return bool(
            self._bcast_pending
            or self._msgs_after_persist
            or self._read_states
            or self._pending_snapshot is not None
            or self._snapshot_chunks
            or log.unstable <= log.last_index
            or self.term != hs.term or self.vote != hs.vote or log.committed != hs.commit
            or self.leader != ss.leader or self.role != ss.role
            or min(log.committed, log.persisted) > log.applying
        )

    def take_messages(self) -> list[Message] | None:
        """The messages to send now, if they are all there is to do: then the caller sends
        them (in this order) and needs no Ready. None, leaving everything to the next Ready,
        when anything else is pending. Such messages never wait for persistence, so they may
        also be taken while a Ready is outstanding; they may then leave before that Ready's
        own messages (a driver may hand the Ready on to be handled later), as a network may
        reorder them anyway. This spares a driver the round through its ready loop for a
        heartbeat and its answer, most of what an idle group does."""
        if self._has_work_besides_messages():
            return None
        msgs, self._msgs = self._msgs, []
        return msgs

    def ready(self) -> Ready:
        """The next batch of work. Only one Ready may be outstanding: call :meth:`advance`
        before asking for another."""
        if self._outstanding is not None:
            raise RaftError("ready() called again before advance()")
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role is StateRole.LEADER:
                self._bcast_append()
        self._ready_number += 1
        hs = self._hard_state()
        ss = SoftState(self.leader, self.role)
        entries = tuple(self.log.unstable_entries())
        committed = tuple(self.log.next_committed(self.config.max_committed_size_per_ready))
        hard_state = hs if hs != self._prev_hard_state else None
        # A term or vote to store: durable before anything that follows it.
        self._stores_vote = hard_state is not None and (
            hs.term != self._prev_hard_state.term or hs.vote != self._prev_hard_state.vote)
        must_sync = bool(entries) or self._pending_snapshot is not None or self._stores_vote
        rd = Ready(
            number=self._ready_number,
            soft_state=ss if ss != self._prev_soft_state else None,
            hard_state=hard_state,
            entries=entries,
            snapshot=self._pending_snapshot,
            committed_entries=committed,
            messages=tuple(self._msgs),
            persisted_messages=tuple(self._msgs_after_persist),
            read_states=tuple(self._read_states),
            must_sync=must_sync,
            snapshot_chunks=tuple(self._snapshot_chunks),
        )
        self._snapshot_chunks = []
        self._msgs = []
        self._msgs_after_persist = []
        self._read_states = []
        self._pending_snapshot = None
        self._prev_hard_state = hs
        self._prev_soft_state = ss
        if entries:
            self.log.unstable = entries[-1].index + 1
        if committed:
            self.log.applying = committed[-1].index
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready, *, entries_durable: bool = True) -> None:
        """The driver has persisted, sent and applied ``rd``.

        ``entries_durable=False``: the driver has written ``rd.entries`` but their fsync is
        still running (an asynchronous append, as etcd's raft allows a leader): the entries
        count towards a commit, and are applied, only once :meth:`persisted_to` says they are
        durable. Meanwhile further Readies may be taken, and their entries written after these.
        Only for a Ready with nothing that must wait for the fsync: no ``persisted_messages``
        (acknowledgements and votes promise durability), no snapshot or snapshot chunks, and
        no term or vote to store.
        """
        if rd is not self._outstanding:
            raise RaftError(f"advance() with Ready {rd.number}, which is not the outstanding one")
        if not entries_durable and (rd.persisted_messages or rd.snapshot is not None
                                    or rd.snapshot_chunks or self._stores_vote):
            raise RaftError(f"Ready {rd.number} cannot be advanced before its fsync: it holds "
                            f"what must be durable first")
        self._outstanding = None
        log = self.log
        if rd.snapshot is not None:
            idx = rd.snapshot.meta.index
            if log.offset == idx:
                log.persisted = max(log.persisted, idx)
            log.applied = max(log.applied, idx)
        if rd.entries and entries_durable:
            last = rd.entries[-1]
            self._mark_persisted(last.index, last.term)
        for e in rd.committed_entries:
            # An entry at or below the log's offset here was overtaken by a snapshot restored
            # while this Ready was out: the snapshot's configuration already includes it.
            if e.type is EntryType.CONF_CHANGE and e.index > log.offset:
                self._apply_conf_change(ConfChange.decode(e.data))
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
            if (self._timeout_now_tick >= 0 and self.role is StateRole.FOLLOWER
                    and self._ticks - self._timeout_now_tick < self.config.election_tick):
                self._hup(transfer=True)
        # Our own vote and our own log count only now that they are durable.
        if rd.hard_state is not None and self.role is StateRole.CANDIDATE:
            if rd.hard_state.term == self.term and rd.hard_state.vote == self.id:
                self._step_candidate(Message(MT.VOTE_RESP, self.id, self.id, self.term))
        self._count_own_log()

    def persisted_to(self, index: int, term: int) -> None:
        """The entries up to ``(index, term)``, written by Readies advanced with
        ``entries_durable=False``, are durable now (an fsync that began after they were
        written has returned). Ignored if the log no longer holds that entry: a conflict
        replaced it meanwhile (its replacement is persisted by a Ready of its own), or cut
        it (the conflict's entries are then the ones the log hands out next)."""
        if index >= self.log.unstable and self.log.term_at(index) == term:
            raise RaftError(f"persisted_to({index}): the entry was never handed out "
                            f"(up to {self.log.unstable - 1})")
        self._mark_persisted(index, term)
        self._count_own_log()

    def _mark_persisted(self, index: int, term: int) -> None:
        # Still in our log? A conflict may have replaced it while it was being written. If
        # the term at its index is unchanged, so is everything before it (log matching).
        if self.log.term_at(index) == term:
            self.log.persisted = max(self.log.persisted, index)

    def _count_own_log(self) -> None:
        """A leader counts its own log towards a commit once it is durable."""
        if self.role is StateRole.LEADER:
            me = self._prs.get(self.id)
            if me is not None and me.maybe_update(self.log.persisted):
                if self._maybe_commit() and self.config.broadcast_commit:
                    self._bcast_pending = True

    def _apply_conf_change(self, cc: ConfChange) -> None:
        voters, learners = set(self.conf.voters), set(self.conf.learners)
        if cc.type is ConfChangeType.ADD_VOTER:
            learners.discard(cc.node)
            voters.add(cc.node)
        elif cc.type is ConfChangeType.ADD_LEARNER:
            voters.discard(cc.node)
            learners.add(cc.node)
        else:
            voters.discard(cc.node)
            learners.discard(cc.node)
        if not voters:
            raise RaftInvariantError(f"membership change {cc} leaves no voters")
        self.conf = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        if self.role is not StateRole.LEADER:
            return
        if self.id not in voters:
            # Removed (or demoted): let the others elect. They apply the change only once they
            # learn it is committed, and until then count votes under the configuration that
            # still holds this node -- in a group of two, for ever once this node is gone. Tell
            # them now: nothing else would (commits need not be broadcast, see Config).
            self._bcast_heartbeat(b"")
            self._become_follower(self.term, NONE)
            return
        for pid in list(self._prs):
            if pid not in voters and pid not in learners:
                del self._prs[pid]
        for pid in sorted(voters | learners):
            if pid not in self._prs:
                self._prs[pid] = Progress(self.log.last_index + 1, self.config.max_inflight_msgs)
        self._eager = None  # chosen again at the next commit, under the new voters
        if self._lead_transferee not in voters:
            self._lead_transferee = NONE
        self._maybe_commit()
        self._bcast_append()
