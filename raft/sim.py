"""Deterministic simulation of a Raft group (ARCH §3, STYLE §2), in the manner of FoundationDB.

A whole cluster — pure :class:`~raft.core.RaftCore` replicas, their disks, the network between
them, the clients and a nemesis — runs inside one process, on simulated time, from one seed::

    result = run(seed)                  # SimResult: trace hash, counts, simulated duration
    python -m raft.sim --seed 17        # replay one seed, verbosely (--trace: every event)
    python -m raft.sim --seeds 1000     # many seeds; every failure prints its replay command

Determinism. One ``random.Random(seed)`` makes every choice; each core gets its own generator
seeded from it when it starts. Work waits in a heap ordered by (simulated ms, sequence number):
nothing is ordered by ``id()``, by a ``set`` or by the wall clock, so a seed replays the same
events. Every event is folded into a running sha256 (the *trace hash*), and so, at the end, is
every live node's state machine hash chain (which covers the data of every entry applied);
running a seed twice must give the same hash.

Model.

- *Nodes* tick every ``tick_ms`` (give or take one: clocks drift). Each handles its Ready batches
  exactly as ``raft/types.py`` prescribes: ``messages`` leave at once; the snapshot, entries and
  hard state go to the node's disk; after a simulated fsync latency the disk is synced,
  ``persisted_messages`` leave, committed entries are applied, then ``advance``. While the fsync
  is in flight the node keeps receiving messages and ticking; it asks for the next Ready only
  after ``advance``.
- *Asynchronous appends* (knob ``async_append``, as etcd's raft lets a leader write): a
  leader's Ready that is a plain append — entries, and no acknowledgement or vote to send, no
  snapshot or chunks, no term or vote to store, no membership change — is handled at once: its
  messages leave, its entries are written after those pending, its committed entries are
  applied and the core advances it with ``entries_durable=False``, so that the node takes the
  next Ready while the entries are not durable yet. A log fsync, begun when none is in flight
  (latency as above), makes durable exactly the entries written before it began; when it
  returns the core learns it (``RaftCore.persisted_to``: only now does the leader count its own
  log towards a commit, and apply what is committed), and the next log fsync begins if entries
  were written meanwhile. Any other Ready taken during a log fsync (the node stepped down and
  votes, or truncates its log for a new leader, or receives a snapshot) is held, not written,
  until that fsync returns — nothing but a plain append touches the log while it is synced — and
  its own fsync then makes every pending entry durable. The hard state is stored as
  ``raft.driver`` stores it: with a change of term or vote, or of the commit index with a Ready
  that appends or applies a membership change (such Readies are never appended
  asynchronously); a commit index alone is not stored, so a restart never finds one beyond its
  durable log. Crashes are aimed at log fsyncs too, so that leaders often crash with entries
  they wrote, sent and advanced but never made durable. Without the knob every Ready is
  handled as above, and every hard state stored (the model older seeds were recorded with).
- *Disk* (:class:`SimDisk`): a synced part (hard state, snapshot, entries after it) and a pending
  part written since the last fsync (with asynchronous appends, several batches, of which a log
  fsync syncs a prefix). A crash loses the pending part, or tears it: a received snapshot
  survives or not as a whole, then a prefix of the pending entries survives, and the new hard
  state survives (or not, as a whole) only if all of the pending entries did — the order
  ``raft.storage`` writes in. Conflict truncation and local compaction snapshots are durable at
  once, as they are in ``LogStore`` and ``RaftStorage.save_snapshot``. A restarted node is a fresh
  core built from the synced part (:class:`~raft.core.RestoredState`).
- *State machine* (:class:`KVStateMachine`): a key-value map; entry data is
  ``client|seq|key|value``. It also keeps a hash chain over every applied entry, so that two
  nodes agree on their applied prefix exactly when their chains agree at its last index. Every
  ``compact_every`` applied entries a node snapshots it and calls ``core.compact``; followers
  behind the compaction point receive it as chunked SNAPSHOT messages (small
  ``snapshot_chunk_size``). With the knob ``durable_sm`` the state machine is durable, as
  Meridian's groups over LMDB are (``raft.driver.DurableStateMachine``): a compaction
  checkpoints it (its state at that index survives crashes) and leaves a local marker, a
  leader whose follower needs a snapshot builds a full one from a view taken at once and
  offers it after a while (a random build time, during which it may crash or be deposed), a
  compaction waits while a follower receives the snapshot held, and a node that installed
  one keeps a marker in its place.
- *Clients* write through whichever node they believe leads (following ``ProposalDroppedError``
  hints). A write is *acknowledged* when the node it was proposed to applies the entry at the
  (term, index) that ``propose`` returned. Clients also read with ReadIndex; a read served at
  read index *i* must reflect every write acknowledged before the read was requested. Clients
  *roam* (knob ``roam``): a share of operations goes to a random node — reads reach followers,
  which forward them, and leaders deposed behind a partition — and a client that times out
  forgets its guess, so that clients keep working on both sides of a cut.
- *Faults* (``faults=True``). Each seed draws its own *knobs* (FoundationDB's "buggify"): rates
  of message drop, duplication, long delays and replays, the delay and fsync latency ranges,
  how often the nemesis acts, how often crashes are aimed at fsync windows, whether PreVote and
  CheckQuorum are on, how often the state machine snapshots. ``SimConfig.knobs`` pins some of
  them (``--set knobs=pre_vote=0,drop=0.1``) without changing the others' draws. A *replay*
  delivers again a message sent at least an election timeout before, taken from a small
  sample of the messages sent: a vote response or an append response from an earlier term, an
  append or a heartbeat from a deposed leader, arriving after some elections, as a stale
  buffer flushed by a reconnect would deliver it. The nemesis partitions the nodes into
  random halves, builds a bridge (two halves that only one node joins), isolates a node
  (with roaming clients, a partition or an isolation is mostly aimed at the leader: cut off
  from a majority of its voters for a few election timeouts, it still believes it leads
  while the others elect a new one), clogs one direction of a link, heals
  the network, crashes a node (keeping a majority up most of the time) and restarts it later,
  changes membership (adds a fresh learner, promotes it, demotes or removes a voter, removes a
  learner — always through ``propose_conf_change`` on the leader, never below two voters and
  rarely below three) and transfers leadership. Crashes are also aimed at the moments that
  matter: while a batch is being synced, while or just after a vote for another node is
  synced, late in a candidate's sync of its own vote, and (``async_append``) while a leader's
  log fsync runs. After ``fault_ms`` every fault heals,
  every node restarts and the clients stop starting new work.

Checks, after every event (a breach raises :class:`SimulationFailure`):

- election safety (§5.2): at most one leader per term; and no node leads one term in two
  incarnations (it forgot its term, and could append different entries at indexes it already
  sent as leader: the leader append-only property); a leader is a voter of its own
  configuration (a learner or a removed node never leads); a leader appends a membership change
  only once it has committed an entry of its term and every earlier change (thesis §4.1);
- log matching (§5.3): an (index, term) pair names one entry everywhere — same data, same
  previous term. Checked incrementally: each entry is compared with a global record when it
  first appears in a node's log (a node's log is re-examined from the last index whose term is
  unchanged, so an edit below it that keeps the term at that index goes unnoticed here, though
  the state machine check below still sees it once applied); and no log ever drops an entry
  known committed anywhere (applied, or at some node's commit index), though its own commit
  index may not cover it yet;
- leader completeness (§5.4): a new leader of term T holds every entry known committed in an
  earlier term (applied anywhere, or covered by any node's commit index); no two nodes ever
  commit different terms at one index; a leader moves its commit index only to an entry of its
  own term (§5.4.2: the Figure 8 schedule that would then lose an entry is too rare to wait for);
- state machine safety: every node applies a contiguous sequence whose hash chain matches the
  global one at every index, a restored snapshot included; applied <= commit; a live node's
  commit index never decreases; an acknowledged write is the entry its client proposed;
- linearizable reads, as above;
- durability (§3.8): a restarted node still holds the last vote it granted and the highest
  entry it acknowledged — not merely the latest acknowledgement, which may answer a stale or
  duplicated append — unless a newer leader made it drop that entry (then the promise falls
  to the entry below the cut); a leader's own synced entries count as acknowledged;
- no message storm: a seed that needs more than ``max_events`` events is a failure (a normal one
  needs a few thousand);
- liveness, after the heal: within ``liveness_ms`` a leader is elected and every member of its
  configuration (voters and learners) has applied everything it committed, which covers every
  acknowledged write ("no acknowledged write lost after recovery").

Planted bugs (``plant=``, off by default). Each must be caught (tests/test_raft_sim.py), by the
durability check at once and, all but the last, by the protocol checks alone when that check is
off:
``forget-vote`` (the disk drops the vote on restart), ``ack-before-fsync`` (persisted_messages
leave with messages, before the data they vouch for is durable), ``lose-synced-tail`` (a
restarted disk has lost the tail of its synced log, and the commit index with it — corruption),
``async-persist-early`` (with ``async_append``, a leader reports its entries durable to the core
when they are written rather than when their fsync returns, so that it counts itself towards
commits it cannot vouch for), ``lose-acked-tail`` (a restarted disk keeps only what the latest
acknowledgement vouched for, losing entries an earlier, higher one acknowledged; only the
durability check sees it). Bugs
planted in the core itself (a leader answering ReadIndex without confirming its leadership; a
follower dropping the entries after an append's own, where nothing conflicts) are tested by
patching the core in the tests.

Limits. Messages are Python objects and never encoded (``raft.wire`` is tested on its own); the
disk is a model of the write order ``raft.storage`` promises, not its files; one Raft group;
no byzantine faults (corrupt messages, a disk that lies beyond the planted bugs); time is whole
milliseconds and events at one instant run in the order they were scheduled. Each client has
one operation in flight; an operation whose fate is unknown (timeout, crash) is simply dropped,
so only acknowledged writes are checked (a read that times out is cancelled where it was
asked, ``RaftCore.cancel_read``, as the driver does). Removed nodes keep running (they must not
disturb the cluster) and node ids are never reused.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import shlex
import sys
from collections import deque
from dataclasses import dataclass, fields, replace

from .core import Config, RaftCore, RestoredState
from .types import (
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
    Ready,
    ReadState,
    Snapshot,
    SnapshotMeta,
    StateRole,
)

__all__ = [
    "PLANTS",
    "SimConfig",
    "SimResult",
    "SimulationFailure",
    "SimDisk",
    "KVStateMachine",
    "Simulation",
    "run",
    "replay_command",
    "parse_args",
    "main",
]

PLANTS = ("forget-vote", "ack-before-fsync", "lose-synced-tail", "async-persist-early",
          "lose-acked-tail")

MT = MessageType


@dataclass(frozen=True)
class SimConfig:
    """The shape of one simulated run. Zero means "let the seed choose" where noted."""

    nodes: int = 0  # initial voters (0: 3 to 5)
    fault_ms: int = 2000  # simulated ms of faults and client load before everything heals
    liveness_ms: int = 3000  # after the heal: bound for electing a leader and catching up
    tick_ms: int = 10
    election_tick: int = 10
    heartbeat_tick: int = 2
    clients: int = 4
    keys: int = 5
    faults: bool = True  # network, disk and membership faults; False: a clean run
    snapshot_chunk_size: int = 64
    max_size_per_msg: int = 160
    max_inflight_msgs: int = 4
    max_nodes: int = 8  # node ids ever created, fresh learners included
    check_durability: bool = True  # votes and acknowledgements must survive a crash
    max_events: int = 50_000  # more is a message storm (a normal seed needs under 10,000)
    knobs: str = ""  # pins for per-seed knobs, "name=value,..." (see _KNOBS)
    plant: str = ""  # comma-separated names from PLANTS

    def __post_init__(self):
        for name in self.planted():
            if name not in PLANTS:
                raise ValueError(f"unknown planted bug {name!r}; known: {', '.join(PLANTS)}")
        self.pinned_knobs()  # raises on a bad pin
        if self.nodes < 0 or self.tick_ms <= 0 or self.fault_ms < 0 or self.liveness_ms <= 0:
            raise ValueError(f"bad simulation shape: {self}")

    def planted(self) -> tuple[str, ...]:
        return tuple(p for p in self.plant.split(",") if p)

    def pinned_knobs(self) -> dict[str, float]:
        pins = {}
        for item in self.knobs.split(","):
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep or name not in _KNOBS:
                raise ValueError(f"bad knob pin {item!r}; knobs: {', '.join(_KNOBS)}")
            number = float(value)
            pins[name] = int(number) if number == int(number) and "." not in value else number
        return pins


@dataclass(frozen=True)
class SimResult:
    """What one seed did. Everything but the trace hash is for reports."""

    seed: int
    trace_hash: str
    sim_ms: int  # simulated duration
    events: int
    messages: int  # sent (duplicates counted once)
    dropped: int
    elections: int  # terms that had a leader
    crashes: int
    commits: int  # highest commit index reached
    acked_writes: int
    reads: int  # linearizable reads checked
    snapshots_sent: int  # SNAPSHOT chunks sent
    snapshots_installed: int
    conf_changes: int  # membership changes applied (each counted once)
    members: tuple[int, ...]  # the final configuration
    snapshots_built: int = 0  # durable_sm: full snapshots built for followers and offered
    replayed: int = 0  # old messages delivered again (the "replay" knob)
    async_appends: int = 0  # async_append: leader Readies advanced before their fsync
    async_crashes: int = 0  # ... and crashes of a node holding such entries not yet synced

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.sim_ms} ms simulated, {self.events} events, "
                f"{self.messages} msgs ({self.dropped} dropped), {self.elections} elections, "
                f"{self.crashes} crashes, commit {self.commits}, {self.acked_writes} acked "
                f"writes, {self.reads} reads, {self.snapshots_sent} snapshot chunks sent, "
                f"{self.snapshots_installed} installed ({self.snapshots_built} built), "
                f"{self.replayed} replayed, {self.async_appends} async appends "
                f"({self.async_crashes} crashes before their fsync), "
                f"{self.conf_changes} conf changes, "
                f"members {list(self.members)}, trace {self.trace_hash[:16]}")


class SimulationFailure(AssertionError):
    """A safety or liveness check failed. The message names the seed and the one-line command
    that replays it (``replay``)."""

    def __init__(self, seed: int, config: SimConfig, at_ms: int, message: str):
        self.seed = seed
        self.config = config
        self.at_ms = at_ms
        self.replay = replay_command(seed, config)
        super().__init__(f"seed {seed} at {at_ms} ms: {message}\n  replay: {self.replay}")


def replay_command(seed: int, config: SimConfig = SimConfig()) -> str:
    """The shell command that replays ``seed`` under ``config``, verbosely."""
    parts = ["python -m raft.sim", f"--seed {seed}"]
    default = SimConfig()
    for f in fields(SimConfig):
        value = getattr(config, f.name)
        if value != getattr(default, f.name):
            if f.name == "plant":
                parts.append(f"--plant {shlex.quote(value)}")
            else:
                value = int(value) if isinstance(value, bool) else value
                parts.append(f"--set {shlex.quote(f'{f.name}={value}')}")
    return " ".join(parts)


# ==================================================================== disk

_READY = object()  # SimDisk.write: the hard state to write is the Ready's own


class SimDisk:
    """One node's storage: a synced part that survives crashes and a pending part that may not.

    Invariant: ``entries`` is contiguous and follows ``snapshot`` (or index 0); so do
    ``pending_entries`` (several batches, each appended after the ones pending) follow
    ``entries``, unless a snapshot is pending, which they then follow.
    """

    __slots__ = ("hard_state", "snapshot", "entries", "pending_snapshot", "pending_entries",
                 "pending_hard_state", "truncated_from", "receiving")

    def __init__(self):
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.pending_snapshot: Snapshot | None = None
        self.pending_entries: list[Entry] = []
        self.pending_hard_state: HardState | None = None
        # The lowest index from which durable entries were dropped (truncated, or replaced by a
        # received snapshot) since the owner last looked; None if none were.
        self.truncated_from: int | None = None
        # A snapshot being received, as its chunks were written: (meta, size, data so far).
        # Never synced by itself: a crash loses it (the leader sends it again).
        self.receiving: tuple[SnapshotMeta, int, bytearray] | None = None

    @property
    def offset(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def term_at(self, index: int) -> int | None:
        """The term of the durable entry at ``index`` (None if absent or compacted)."""
        pos = index - self.offset - 1
        return self.entries[pos].term if 0 <= pos < len(self.entries) else None

    def _dropped_from(self, index: int) -> None:
        if self.truncated_from is None or index < self.truncated_from:
            self.truncated_from = index

    @property
    def last_hard_state(self) -> HardState:
        """The hard state written last, synced or not."""
        return self.pending_hard_state if self.pending_hard_state is not None else \
            self.hard_state

    def write(self, rd: Ready, hard_state=_READY) -> str | None:
        """Step 2 of Ready handling, before the fsync: ``rd``'s snapshot, entries (after those
        pending, or cutting them or the synced log where they conflict) and ``hard_state``
        (by default the Ready's own; None: none). Returns a complaint about the batch (a core
        bug) or None."""
        if hard_state is _READY:
            hard_state = rd.hard_state
        for c in rd.snapshot_chunks:
            if c.offset == 0:
                self.receiving = (c.meta, c.size, bytearray())
            rec = self.receiving
            if rec is None or rec[:2] != (c.meta, c.size) or len(rec[2]) != c.offset:
                return f"a snapshot chunk at {c.offset} does not follow the chunks written"
            rec[2].extend(c.data)
        if rd.snapshot is not None:
            rec, self.receiving = self.receiving, None
            if rec is None or rec[0] != rd.snapshot.meta or len(rec[2]) != rec[1]:
                return f"the snapshot at {rd.snapshot.meta.index} was not received whole"
            # Replaces the whole log once synced.
            self.pending_snapshot = Snapshot(rd.snapshot.meta, bytes(rec[2]))
            self.pending_entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = self.pending_snapshot.meta.index if self.pending_snapshot else self.offset
            if first <= base:
                return f"entries from {first} written at or below the snapshot at {base}"
            # Conflict truncation is durable at once (LogStore truncates in place).
            if self.pending_snapshot is None:
                synced = self.offset + len(self.entries)
                end = synced + len(self.pending_entries)
                if first > end + 1:
                    return f"entries from {first} written after a log ending at {end}: a gap"
                if first <= synced:
                    self._dropped_from(first)
                    del self.entries[first - self.offset - 1 :]
                    self.pending_entries = []
                else:
                    del self.pending_entries[first - synced - 1 :]
            elif first != base + 1:
                return f"entries from {first} written after a snapshot at {base}"
            self.pending_entries.extend(rd.entries)
        if hard_state is not None:
            self.pending_hard_state = hard_state
        return None

    def sync_entries(self, index: int) -> None:
        """An fsync of the log alone, begun when the pending entries ended at ``index``: those
        up to it are durable; later ones, and the hard state, stay pending."""
        if self.pending_snapshot is not None:
            raise ValueError("a log fsync while a received snapshot is pending")
        kept = [e for e in self.pending_entries if e.index <= index]
        self.entries.extend(kept)
        del self.pending_entries[: len(kept)]

    def sync(self) -> None:
        if self.pending_snapshot is not None:
            self._install(self.pending_snapshot)
        self.entries.extend(self.pending_entries)
        if self.pending_hard_state is not None:
            self.hard_state = self.pending_hard_state
        self._drop_pending()

    def crash(self, rng: random.Random, tear: bool) -> str:
        """Loses (``tear`` False) or tears the pending part; returns what survived."""
        self.receiving = None
        if not tear:
            self._drop_pending()
            return "pending lost"
        complete = True
        kept = 0
        if self.pending_snapshot is not None:
            if rng.random() < 0.5:
                self._install(self.pending_snapshot)
            else:
                complete = False
        if complete and self.pending_entries:
            kept = rng.randint(0, len(self.pending_entries))
            self.entries.extend(self.pending_entries[:kept])
            complete = kept == len(self.pending_entries)
        hs = False
        if complete and self.pending_hard_state is not None and rng.random() < 0.5:
            self.hard_state = self.pending_hard_state
            hs = True
        self._drop_pending()
        return f"torn: {kept} entries kept, hard state {'new' if hs else 'old'}"

    def _install(self, snap: Snapshot) -> None:
        """A received snapshot replaces the whole log."""
        self._dropped_from(snap.meta.index + 1)
        self.snapshot = snap
        self.entries = []

    def save_snapshot(self, snap: Snapshot) -> None:
        """A local compaction snapshot: durable at once; the log before it is dropped (and any
        pending entry it covers: applied, so durable, unless a plant says otherwise)."""
        drop = snap.meta.index - self.offset
        self.snapshot = snap
        del self.entries[: max(drop, 0)]
        if self.pending_entries and self.pending_entries[0].index <= snap.meta.index:
            self.pending_entries = [e for e in self.pending_entries
                                    if e.index > snap.meta.index]

    def restored(self, bootstrap: ConfState) -> RestoredState:
        return RestoredState(hard_state=self.hard_state, snapshot=self.snapshot,
                             entries=tuple(self.entries), conf=bootstrap)

    def _drop_pending(self) -> None:
        self.pending_snapshot = None
        self.pending_entries = []
        self.pending_hard_state = None


# ==================================================================== state machine


def encode_write(client: int, seq: int, key: str, value: str) -> bytes:
    return f"{client}|{seq}|{key}|{value}".encode()


def decode_write(data: bytes) -> tuple[int, int, str, str]:
    client, seq, key, value = data.decode().split("|")
    return int(client), int(seq), key, value


class KVStateMachine:
    """A key-value map applying entries in order, with a hash chain over everything applied."""

    __slots__ = ("index", "term", "chain", "kv")

    def __init__(self):
        self.index = 0
        self.term = 0
        self.chain = bytes(32)
        self.kv: dict[str, tuple[str, int]] = {}  # key -> (value, index of the write)

    def apply(self, e: Entry) -> None:
        self.chain = hashlib.sha256(
            self.chain + f"{e.index}:{e.term}:{int(e.type)}:".encode() + e.data
        ).digest()
        self.index = e.index
        self.term = e.term
        if e.type is EntryType.NORMAL and e.data:
            _, _, key, value = decode_write(e.data)
            self.kv[key] = (value, e.index)

    def snapshot(self) -> bytes:
        return json.dumps(
            {"index": self.index, "term": self.term, "chain": self.chain.hex(),
             "kv": sorted([k, v, i] for k, (v, i) in self.kv.items())},
            separators=(",", ":"),
        ).encode()

    def restore(self, data: bytes) -> None:
        d = json.loads(data)
        self.index = d["index"]
        self.term = d["term"]
        self.chain = bytes.fromhex(d["chain"])
        self.kv = {k: (v, i) for k, v, i in d["kv"]}


def _has_conf_change(rd: Ready) -> bool:
    """Whether ``rd`` appends or applies a membership change."""
    return any(e.type is EntryType.CONF_CHANGE
               for entries in (rd.entries, rd.committed_entries) for e in entries)


def _marker(index: int) -> bytes:
    """A durable state machine's local snapshot: what it checks on a restart."""
    return b"local %d" % index


# ==================================================================== simulation

# Event kinds. The heap holds (time_ms, seq, kind, a, b); seq is unique, so the payload is never
# compared.
(_TICK, _DELIVER, _FSYNC, _CLIENT, _TIMEOUT, _NEMESIS, _CRASH, _RESTART, _HEAL, _LIVENESS,
 _BUILT, _SYNCED, _LOG_FSYNC) = range(13)

_OP_TIMEOUT_MS = 400
# With roaming clients (the "roam" knob) a client gives up sooner on a node that does not
# answer, after about one election timeout, so that it moves on while a cut-off leader serves.
_ROAM_OP_TIMEOUT_MS = 120

# The per-seed knobs: name -> (choices, whether it is a fault that faults=False turns off).
_KNOBS: dict[str, tuple[tuple, bool]] = {
    "nodes": ((3, 3, 4, 5), False),  # initial voters, unless SimConfig.nodes says
    "compact_every": ((6, 15, 40), False),  # applied entries between local snapshots
    "keep": ((0, 0, 2, 5), False),  # entries kept in memory below a snapshot
    "drop": ((0.0, 0.01, 0.05, 0.15), True),  # message loss rate
    "dup": ((0.0, 0.02, 0.1), True),  # message duplication rate
    "long_delay": ((0.0, 0.01, 0.05), True),  # rate of 50-400 ms delays (reordering)
    "delay_max_ms": ((2, 5, 15, 40), False),  # network delay is 1..this
    "fsync_max_ms": ((1, 4, 12, 40), False),  # fsync latency is 1..this
    "nemesis_ms": ((40, 100, 250), False),  # mean time between nemesis actions, roughly
    # Rates of crashes aimed at a batch being synced (see _maybe_aim_crash): any batch, ...
    "fsync_crash": ((0.0, 0.002, 0.01), True),
    "vote_crash": ((0.0, 0.1, 0.3), True),  # ... one with a vote granted to another node ...
    "campaign_crash": ((0.0, 0.1, 0.3), True),  # ... one with a candidate's vote for itself
    "pre_vote": ((1, 1, 1, 0), False),
    "check_quorum": ((1, 1, 1, 0), False),
    "lazy_learners": ((0, 1), False),
    "learner_heartbeat_every": ((1, 1, 3), False),
    "broadcast_commit": ((1, 1, 0), False),
    "lease_reads": ((0, 1), False),  # only where check_quorum is on
    "idle_heartbeat_tick": ((0, 0, 3), False),  # voters' heartbeats while the group is idle
    # Share of operations a client sends to a random node rather than to the node it believes
    # leads (see _on_client); roaming clients also read more, give up sooner and forget their
    # guess on a timeout, and the nemesis aims its cuts at the leader. 0, only by a pin, is the
    # model older seeds were recorded with, draw for draw.
    "roam": ((0.3, 0.5, 0.7), False),
    # A durable state machine: local compaction markers, snapshots built on demand (see the
    # module docstring). 0, only by a pin, is the model older seeds were recorded with.
    "durable_sm": ((0, 1), False),
    # Rate (per message sent) of replaying an old message, one sent at least an election
    # timeout ago, from a small sample (_sample_and_replay): a stale buffer flushed by a
    # reconnect. 0 is the model older seeds were recorded with, draw for draw.
    "replay": ((0.0, 0.005, 0.02, 0.05), True),
    # A leader appends asynchronously (etcd raft's asynchronous storage writes): it sends and
    # advances a plain append at once, before its fsync, which makes its entries durable later
    # (RaftCore.persisted_to); see the module docstring. 0 is the model older seeds were
    # recorded with, draw for draw.
    "async_append": ((0, 1), False),
    # Leaders send new entries at once only to the followers a commit needs (see
    # Config.lazy_followers). 0 is the model older seeds were recorded with, draw for draw.
    "lazy_followers": ((0, 1), False),
}
# Knobs added after seeds were recorded (see REGRESSION_SEEDS in the tests) draw from a stream
# of their own, so that every older draw — and so every older seed — stays as it was.
_LATER_KNOBS = ("idle_heartbeat_tick", "roam", "durable_sm", "replay", "async_append",
                "lazy_followers")
# async_append: the rate (per log fsync, while faults last) of crashes aimed at the window in
# which a leader's entries are written and advanced but not yet durable.
_LOG_FSYNC_CRASH = 0.02
# Old messages kept for replay, in each of two samples (see _sample_and_replay), and the share
# of sent messages that enter one, the replication sample or the election sample (each
# replacing a random one once it is full, so that some stay for many election timeouts).
_REPLAY_SAMPLE = 8
_REPLAY_KEEP = 0.05
_REPLAY_KEEP_ELECTION = 0.5
_ELECTION = frozenset((MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP, MT.TIMEOUT_NOW))
# What a replay aimed at the sender of a message delivers: old answers to what it asks now.
_ANSWERS = {
    MT.VOTE: (MT.VOTE_RESP,), MT.PRE_VOTE: (MT.PRE_VOTE_RESP,),
    MT.APPEND: (MT.APPEND_RESP,), MT.HEARTBEAT: (MT.HEARTBEAT_RESP, MT.APPEND_RESP),
    MT.SNAPSHOT: (MT.SNAPSHOT_RESP, MT.APPEND_RESP),
}


class _Node:
    __slots__ = ("id", "alive", "incarnation", "core", "disk", "sm", "ready", "commit_floor",
                 "lm_last", "lm_terms", "props", "reads", "read_states", "tick_ms", "applied",
                 "snap_index", "vote_promise", "log_promise", "last_ack", "conf_seen",
                 "sm_checkpoint", "building", "syncing", "synced", "held", "stored_hs",
                 "ready_hs", "log_fsync", "unsynced")

    def __init__(self, node_id: int, tick_ms: int):
        self.id = node_id
        self.alive = False
        self.incarnation = 0
        self.core: RaftCore | None = None
        self.disk = SimDisk()
        self.sm = KVStateMachine()
        self.ready: Ready | None = None  # the Ready whose fsync is in flight
        self.commit_floor = 0  # the commit index must not fall below this while alive
        self.lm_last = 0  # log matching: entries up to here were checked ...
        self.lm_terms: dict[int, int] = {}  # ... and had these terms
        self.props: dict[int, list[tuple[_Op, int]]] = {}  # index -> (write, term) proposed
        self.reads: dict[bytes, _Op] = {}  # ReadIndex context -> read requested here
        self.read_states: list[ReadState] = []  # granted, waiting for the applied index
        self.tick_ms = tick_ms
        self.applied: list[tuple[int, int, bytes]] = []  # (index, term, data), this incarnation
        self.snap_index = 0
        # Durability (§3.8): the last vote granted, (term, candidate), and the highest entry
        # acknowledged, (index, term), still standing. Both must survive a crash.
        self.vote_promise: tuple[int, int] | None = None
        self.log_promise: tuple[int, int] | None = None  # the highest acknowledged
        self.last_ack = 0  # the index of the latest APPEND_RESP (for the lose-acked-tail plant)
        self.conf_seen = ConfState()  # the configuration at the last check
        # durable_sm: the state machine's own durable state, as of its last checkpoint (a
        # local compaction or an installed snapshot; survives crashes), and whether a full
        # snapshot is being built for followers.
        self.sm_checkpoint: bytes | None = None
        self.building = False
        self.syncing = False  # a checkpoint's sync is in flight (raft.driver: in a thread)
        self.synced: tuple[SnapshotMeta, bytes] | None = None  # done, not yet compacted behind
        # async_append. ``ready`` may be a Ready taken while a log fsync was in flight, held
        # (not yet written: nothing but a plain append touches the log then) until it returns;
        # the hard state the driver stores with it (see _hard_state_to_store) and the core's
        # latest one; the last entry (index, term) that the log fsync in flight makes durable,
        # and the last one written asynchronously after it began (None: none).
        self.held = False
        self.stored_hs: HardState | None = None
        self.ready_hs = HardState()
        self.log_fsync: tuple[int, int] | None = None
        self.unsynced: tuple[int, int] | None = None


class _Op:
    __slots__ = ("id", "client", "kind", "key", "data", "node", "incarnation", "term", "index",
                 "ctx", "required", "key_required", "done", "roaming")

    def __init__(self, op_id: int, client: int, kind: str, key: str):
        self.id = op_id
        self.client = client
        self.kind = kind  # "w" or "r"
        self.key = key
        self.data = b""
        self.node = NONE
        self.incarnation = 0
        self.term = 0
        self.index = 0
        self.ctx = b""
        self.required = 0  # reads: the highest acknowledged write index when requested ...
        self.key_required = 0  # ... and the highest acknowledged write index of this key
        self.done = False
        self.roaming = False  # sent to a random node rather than the leader the client guesses


class _Client:
    __slots__ = ("id", "seq", "guess", "op", "wake")

    def __init__(self, client_id: int):
        self.id = client_id
        self.seq = 0
        self.guess = NONE
        self.op: _Op | None = None
        self.wake = 0  # only the latest scheduled wake-up counts: one thread of control


class Simulation:
    """One seeded run. Use :func:`run`; the object stays inspectable afterwards (tests)."""

    def __init__(self, seed: int, config: SimConfig = SimConfig(), *, trace=None):
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        self.now = 0
        self._heap: list = []
        self._seq = 0
        self._hash = hashlib.sha256(f"meridian-raft-sim/1 {seed}".encode())
        self._trace = trace
        self.recent: deque[str] = deque(maxlen=40)  # the last events, for failure reports
        self._plants = frozenset(config.planted())
        self.nodes: dict[int, _Node] = {}
        self.clients: list[_Client] = []
        self._next_op = 0
        self._blocked: dict[tuple[int, int], bool] = {}  # directed links that lose everything
        self._healed = False
        self._done = False
        self._hold_ms = 0  # the nemesis's next action waits at least this long
        # Global records for the checks.
        self._leaders: dict[int, tuple[int, int]] = {}  # term -> (node, incarnation)
        # applied index -> the configuration of the first node seen there: every node that
        # has applied through an index holds the same membership (it follows from the log).
        self._conf_at: dict[int, ConfState] = {}
        self._entries: dict[tuple[int, int], tuple[bytes, int, int]] = {}  # (i, t) -> data..
        self._committed: dict[int, int] = {}  # index -> term, for every index known committed
        self._chain: dict[int, tuple[int, bytes]] = {}  # index -> (term, chain hash)
        self.acked: list[tuple[int, int, bytes]] = []
        self._max_acked = 0
        self._key_acked: dict[str, int] = {}
        # Counters.
        self.events = 0
        self.messages = 0
        self.dropped = 0
        self.crashes = 0
        self.reads = 0
        self.snapshots_sent = 0
        self.snapshots_installed = 0
        self.conf_changes = 0  # membership changes applied (first time anywhere)
        self.replayed = 0
        self.async_appends = 0
        self.async_crashes = 0
        # Old messages that may be delivered again, long after they were sent: (sent at, m),
        # those of replication, then those of elections. Their choices draw from a stream of
        # their own, so that a seed without replays draws from self.rng exactly as it did
        # before there were any.
        self._past: tuple[list[tuple[int, Message]], ...] = ([], [])
        self._replay_rng = random.Random(f"meridian-raft-sim/replay {seed}")
        self._pick_knobs()

    # ---------------------------------------------------------------- set-up

    def _pick_knobs(self) -> None:
        """Per-seed knobs (FoundationDB's "buggify": each seed explores one corner). Every knob
        is drawn whatever the pins say, so pinning one leaves the others' draws unchanged."""
        rng, cfg = self.rng, self.cfg
        knobs = {}
        later = random.Random(f"meridian-raft-sim/later-knobs {self.seed}")
        for name, (choices, _) in _KNOBS.items():
            knobs[name] = (later if name in _LATER_KNOBS else rng).choice(choices)
        knobs["nodes"] = cfg.nodes or knobs["nodes"]
        for name, value in cfg.pinned_knobs().items():
            knobs[name] = value
        if not cfg.faults:
            for name, (_, fault) in _KNOBS.items():
                if fault:
                    knobs[name] = 0
            knobs["delay_max_ms"] = 3
        self.knobs = knobs
        self.n_initial = knobs["nodes"]
        self.compact_every = knobs["compact_every"]
        self.durable_sm = bool(knobs["durable_sm"])
        self.snapshots_built = 0
        self.keep = knobs["keep"]
        self.drop_rate = knobs["drop"]
        self.dup_rate = knobs["dup"]
        self.long_delay_rate = knobs["long_delay"]
        self.delay_max_ms = knobs["delay_max_ms"]
        self.fsync_max_ms = knobs["fsync_max_ms"]
        self.nemesis_ms = knobs["nemesis_ms"]
        self.fsync_crash_rate = knobs["fsync_crash"]
        self.vote_crash_rate = knobs["vote_crash"]
        self.campaign_crash_rate = knobs["campaign_crash"]
        self.pre_vote = bool(knobs["pre_vote"])
        self.check_quorum = bool(knobs["check_quorum"])
        self.lazy_learners = bool(knobs["lazy_learners"])
        self.lazy_followers = bool(knobs["lazy_followers"])
        self.learner_heartbeat_every = knobs["learner_heartbeat_every"]
        self.broadcast_commit = bool(knobs["broadcast_commit"])
        self.lease_reads = bool(knobs["lease_reads"])
        self.idle_heartbeat_tick = knobs["idle_heartbeat_tick"]
        self.roam = knobs["roam"]
        self.replay_rate = knobs["replay"]
        self.async_append = bool(knobs["async_append"])

    def _schedule(self, at: int, kind: int, a=None, b=None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, a, b))

    def _event(self, desc: str) -> None:
        line = f"{self.now:>7} {desc}"
        self._hash.update(line.encode() + b"\n")
        self.recent.append(line)
        if self._trace is not None:
            self._trace(line)

    def fail(self, message: str) -> SimulationFailure:
        return SimulationFailure(self.seed, self.cfg, self.now, message)

    def _core_config(self, node_id: int) -> Config:
        c = self.cfg
        idle, lease = self.idle_heartbeat_tick, self.lease_reads and self.check_quorum
        if idle and not (c.heartbeat_tick <= idle < c.election_tick and (
                not lease or 2 * idle <= Config(1, election_tick=c.election_tick).lease_ticks())):
            idle = 0  # no room for it between this run's heartbeat and election timeouts
        return Config(node_id, election_tick=c.election_tick, heartbeat_tick=c.heartbeat_tick,
                      max_size_per_msg=c.max_size_per_msg,
                      max_inflight_msgs=c.max_inflight_msgs, pre_vote=self.pre_vote,
                      check_quorum=self.check_quorum, snapshot_chunk_size=c.snapshot_chunk_size,
                      lazy_learners=self.lazy_learners, lazy_followers=self.lazy_followers,
                      learner_heartbeat_every=self.learner_heartbeat_every,
                      broadcast_commit=self.broadcast_commit,
                      lease_reads=lease, idle_heartbeat_tick=idle)

    def _add_node(self, node_id: int) -> _Node:
        drift = self.rng.choice((-1, 0, 0, 1))
        node = _Node(node_id, max(1, self.cfg.tick_ms + drift))
        self.nodes[node_id] = node
        self._start(node)
        return node

    # ---------------------------------------------------------------- the loop

    def run(self) -> SimResult:
        try:
            self._run()
        except SimulationFailure:
            raise
        except Exception as e:  # a core invariant, or any crash: report it with its seed
            raise self.fail(f"{type(e).__name__}: {e}") from e
        return self._result()

    def _run(self) -> None:
        self.bootstrap = ConfState(tuple(range(1, self.n_initial + 1)))
        for node_id in self.bootstrap.voters:
            self._add_node(node_id)
        for cid in range(1, self.cfg.clients + 1):
            self.clients.append(_Client(cid))
            self._wake(self.clients[-1], self.rng.randint(0, 50))
        if self.cfg.faults:
            self._schedule(self.nemesis_ms, _NEMESIS)
        self._schedule(self.cfg.fault_ms, _HEAL)
        handlers = {
            _TICK: self._on_tick, _DELIVER: self._on_deliver, _FSYNC: self._on_fsync,
            _CLIENT: self._on_client, _TIMEOUT: self._on_timeout, _NEMESIS: self._on_nemesis,
            _CRASH: self._on_crash, _RESTART: self._on_restart, _HEAL: self._on_heal,
            _LIVENESS: self._on_liveness, _BUILT: self._on_built, _SYNCED: self._on_synced,
            _LOG_FSYNC: self._on_log_fsync,
        }
        heap = self._heap
        limit = self.cfg.max_events
        while heap and not self._done:
            at, _, kind, a, b = heapq.heappop(heap)
            self.now = at
            self.events += 1
            if self.events > limit:
                raise self.fail(f"message storm: {limit} events in {self.now} ms "
                                f"({self.messages} messages)")
            handlers[kind](a, b)

    # ---------------------------------------------------------------- node lifecycle

    def _start(self, node: _Node) -> None:
        state = node.disk.restored(self.bootstrap)
        if self.cfg.check_durability:
            self._check_promises(node, state)
        node.incarnation += 1
        node.alive = True
        node.core = RaftCore(self._core_config(node.id), random.Random(self.rng.getrandbits(64)),
                             state)
        node.sm = KVStateMachine()
        node.snap_index = 0
        node.applied = []
        node.building = False
        node.syncing = False
        node.synced = None
        if state.snapshot is not None:
            self._restore_sm(node, state.snapshot)
            node.snap_index = state.snapshot.meta.index
        node.ready = None
        node.held = False
        node.ready_hs = state.hard_state
        node.log_fsync = node.unsynced = None
        node.commit_floor = node.core.commit
        node.lm_last = node.core.first_index - 1  # re-check the whole restored log
        node.lm_terms = {}
        node.props = {}
        node.reads = {}
        node.read_states = []
        self._event(f"start {node.id}#{node.incarnation} term={state.hard_state.term} "
                    f"vote={state.hard_state.vote} commit={state.hard_state.commit} "
                    f"snap={node.disk.offset} log={len(state.entries)}")
        self._schedule(self.now + self.rng.randint(1, node.tick_ms), _TICK, node.id,
                       node.incarnation)
        self._after(node)

    def _check_promises(self, node: _Node, state: RestoredState) -> None:
        """What a node told others before it crashed must be in what it restarts from."""
        hs = state.hard_state
        if node.vote_promise is not None:
            term, candidate = node.vote_promise
            if hs.term < term or (hs.term == term and hs.vote != candidate):
                raise self.fail(f"durability: node {node.id} granted its vote to {candidate} in "
                                f"term {term}, but restarts with term {hs.term}, vote {hs.vote}")
        if node.log_promise is not None:
            index, term = node.log_promise
            if index > node.disk.offset and node.disk.term_at(index) != term:
                raise self.fail(f"durability: node {node.id} acknowledged entries up to "
                                f"({index}, {term}), but restarts with a log that ends at "
                                f"{node.disk.offset + len(node.disk.entries)} without it")

    def _note_ack(self, node: _Node, index: int) -> None:
        """An APPEND_RESP accepting the log up to ``index`` leaves ``node``: raise its promise.

        The promise is the *highest* entry acknowledged, not the last: replies to stale or
        duplicated appends, and replies at the commit index to appends below it, vouch for
        less than an earlier reply did, and the leader may already have counted that earlier
        one towards a commit. Only a truncation lowers the promise (:meth:`_note_truncation`).
        """
        node.last_ack = index
        if index <= node.disk.offset:
            return  # inside the node's snapshot: durable as long as the snapshot is
        promise = node.log_promise
        if promise is not None and index <= promise[0]:
            return
        # The acknowledged entry as the disk holds it; if the disk does not hold it yet
        # (acknowledged too early), as the log in memory does.
        term = node.disk.term_at(index)
        if term is None:
            term = node.core.term_at(index)
        if term is not None:
            node.log_promise = (index, term)

    def _note_truncation(self, node: _Node) -> None:
        """Acknowledgements of entries that a newer leader made us drop (a conflict truncation,
        or a received snapshot replacing the log) no longer stand; those of the entries below
        the cut still do. Every entry below the cut is unchanged since it was acknowledged
        (an earlier cut would have lowered the promise beneath it), so the promise falls to
        the durable entry just below the cut, or lapses if the snapshot covers that."""
        cut = node.disk.truncated_from
        if cut is None:
            return
        node.disk.truncated_from = None
        promise = node.log_promise
        if promise is not None and promise[0] >= cut:
            term = node.disk.term_at(cut - 1)
            node.log_promise = None if term is None else (cut - 1, term)

    def _crash(self, node: _Node) -> None:
        tear = self.rng.random() < 0.5
        if node.log_fsync is not None or node.unsynced is not None:
            self.async_crashes += 1  # entries written and advanced, not yet durable
        what = node.disk.crash(self.rng, tear)
        self._note_truncation(node)
        node.alive = False
        node.core = None
        node.ready = None
        node.held = False
        node.log_fsync = node.unsynced = None
        self.crashes += 1
        self._event(f"crash {node.id}#{node.incarnation} ({what})")
        for client in self.clients:
            op = client.op
            if op is not None and op.node == node.id and op.incarnation == node.incarnation:
                self._finish_op(client, op, "node crashed")
        if "lose-synced-tail" in self._plants:
            self._corrupt_tail(node)
        if "lose-acked-tail" in self._plants:
            self._lose_acked_tail(node)

    def _corrupt_tail(self, node: _Node) -> None:
        """Planted bug: the synced log loses its last entries (commit clamped to match, as a
        disk that lost both would present it)."""
        disk = node.disk
        if not disk.entries:
            return
        lost = self.rng.randint(1, len(disk.entries))
        del disk.entries[len(disk.entries) - lost :]
        last = disk.offset + len(disk.entries)
        hs = disk.hard_state
        if hs.commit > last:
            disk.hard_state = HardState(hs.term, hs.vote, last)
        self._event(f"corrupt {node.id}: lost {lost} synced entries")

    def _lose_acked_tail(self, node: _Node) -> None:
        """Planted bug: a disk that, on recovery, keeps only what the node's latest
        acknowledgement vouched for. The synced entries above the index of its last APPEND_RESP
        are lost, though an earlier, higher APPEND_RESP may have acknowledged them (the last
        reply answered a stale or duplicated append); the commit index is clamped to match."""
        disk = node.disk
        last = disk.offset + len(disk.entries)
        keep = node.last_ack
        if keep <= disk.offset or keep >= last:
            return
        del disk.entries[keep - disk.offset :]
        hs = disk.hard_state
        if hs.commit > keep:
            disk.hard_state = HardState(hs.term, hs.vote, keep)
        self._event(f"corrupt {node.id}: lost synced entries {keep + 1}..{last}, above its "
                    f"last acknowledgement")

    def _restored_hard_state_hook(self, node: _Node) -> None:
        if "forget-vote" in self._plants:
            hs = node.disk.hard_state
            node.disk.hard_state = HardState(hs.term, NONE, hs.commit)

    # ---------------------------------------------------------------- Ready handling

    def _after(self, node: _Node) -> None:
        """Drains the node's Ready batches (as far as the disk allows), then checks."""
        self._pump(node)
        if node.alive:
            self._check_node(node)

    def _pump(self, node: _Node) -> None:
        while node.alive and node.ready is None and node.core.has_ready():
            core = node.core
            rd = core.ready()
            self._send(node, rd.messages)
            if not self.async_append:
                self._write_ready(node, rd, rd.hard_state)
                continue
            hs = self._hard_state_to_store(node, rd)
            if self._appends_async(node, rd, hs):
                self._append_async(node, rd)
            elif node.log_fsync is not None and (
                    rd.must_sync or rd.snapshot_chunks or hs is not None):
                # Nothing but a plain append may touch the log while its fsync runs.
                node.ready, node.held, node.stored_hs = rd, True, hs
                self._event(f"hold {node.id} ready={rd.number} until the log fsync")
            else:
                self._write_ready(node, rd, hs)
        if (node.alive and node.ready is None and node.log_fsync is None
                and node.unsynced is not None):
            self._start_log_fsync(node)

    def _write_ready(self, node: _Node, rd: Ready, hs: HardState | None) -> None:
        """Step 2 (the snapshot, the entries and ``hs`` written), then either the fsync begins
        or, if the Ready needs none, steps 3-5 at once."""
        complaint = node.disk.write(rd, hs)
        if complaint is not None:
            raise self.fail(f"node {node.id} Ready {rd.number}: {complaint}")
        self._note_truncation(node)
        if rd.entries:
            # Written after (or over) the asynchronous appends still unsynced: this Ready's
            # fsync makes them durable, and its advance says so (or they were cut).
            node.unsynced = None
        if "ack-before-fsync" in self._plants:
            self._send(node, rd.persisted_messages)
        node.read_states.extend(rd.read_states)
        if rd.must_sync:
            node.ready = rd
            latency = self.rng.randint(1, self.fsync_max_ms)
            self._schedule(self.now + latency, _FSYNC, node.id, node.incarnation)
            self._maybe_aim_crash(node, rd.hard_state, latency)
            return
        self._finish_ready(node, rd)

    def _hard_state_to_store(self, node: _Node, rd: Ready) -> HardState | None:
        """async_append: the hard state written with ``rd``, as ``raft.driver`` chooses it
        (``RaftNode._hard_state_to_store``): the core's latest when its term or vote changed,
        or when ``rd`` appends or applies a membership change and the commit index moved; a
        change of commit index alone is not stored (a restarted node learns it again)."""
        if rd.hard_state is not None:
            node.ready_hs = rd.hard_state
        hs, stored = node.ready_hs, node.disk.last_hard_state
        if (hs.term, hs.vote) != (stored.term, stored.vote) or (
                hs.commit > stored.commit and _has_conf_change(rd)):
            return hs
        return None

    def _appends_async(self, node: _Node, rd: Ready, hs: HardState | None) -> bool:
        """async_append: whether ``rd`` is a leader's plain append, which may be advanced
        before its fsync: entries, and nothing that must be durable before it counts — no
        acknowledgement or vote to send, no snapshot, no hard state to store (no term or vote
        change, no membership change)."""
        return (node.core.role is StateRole.LEADER and rd.must_sync and bool(rd.entries)
                and not rd.persisted_messages and rd.snapshot is None
                and not rd.snapshot_chunks and hs is None and not _has_conf_change(rd))

    def _append_async(self, node: _Node, rd: Ready) -> None:
        """A leader's plain append: written after the entries pending, applied as far as the
        core allows (its durable log), advanced at once; a log fsync makes it durable later."""
        complaint = node.disk.write(rd, None)
        if complaint is not None:
            raise self.fail(f"node {node.id} Ready {rd.number}: {complaint}")
        self._note_truncation(node)
        last = rd.entries[-1]
        node.unsynced = (last.index, last.term)
        self.async_appends += 1
        self._event(f"append {node.id} ready={rd.number} entries={len(rd.entries)} "
                    f"to {last.index} before its fsync")
        node.read_states.extend(rd.read_states)
        for e in rd.committed_entries:
            self._apply(node, e)
        node.core.advance(rd, entries_durable=False)
        if "async-persist-early" in self._plants:
            node.core.persisted_to(last.index, last.term)
        self._serve_reads(node)
        self._maybe_compact(node)

    def _start_log_fsync(self, node: _Node) -> None:
        """An fsync of the log, which makes durable what was written before it began."""
        node.log_fsync, node.unsynced = node.unsynced, None
        latency = self.rng.randint(1, self.fsync_max_ms)
        self._schedule(self.now + latency, _LOG_FSYNC, node.id,
                       (node.incarnation,) + node.log_fsync)
        if (self.cfg.faults and not self._healed and self.rng.random() < _LOG_FSYNC_CRASH):
            self._schedule(self.now + self.rng.randint(0, latency), _CRASH, node.id,
                           node.incarnation)

    def _on_log_fsync(self, node_id: int, payload) -> None:
        incarnation, index, term = payload
        node = self.nodes[node_id]
        if not node.alive or node.incarnation != incarnation:
            return  # crashed meanwhile: the disk kept what it kept
        node.log_fsync = None
        self._event(f"fsync {node_id} log to {index}")
        node.disk.sync_entries(index)
        self._persisted(node, index, term)
        if node.held:
            # The Ready held behind this fsync is written now; its own fsync, if it has
            # one, makes the rest of the log durable too (no other fsync may run meanwhile).
            rd, node.ready, node.held = node.ready, None, False
            self._write_ready(node, rd, node.stored_hs)
        self._after(node)

    def _persisted(self, node: _Node, index: int, term: int) -> None:
        """The entries written up to (index, term) asynchronously are durable: the core may
        count and apply them; a leader has acknowledged them to itself (see _finish_ready)."""
        node.core.persisted_to(index, term)
        if node.core.role is StateRole.LEADER and node.core.term_at(index) == term:
            self._note_ack(node, index)

    def _maybe_aim_crash(self, node: _Node, hs: HardState | None, latency: int) -> None:
        """Now and then crashes the node while this batch is being synced; if the batch holds
        a vote for another node, possibly just after (when a forgotten vote would do harm)."""
        if self._healed:
            return
        old = node.disk.hard_state
        new_vote = hs is not None and hs.vote != NONE and (hs.term, hs.vote) != (old.term,
                                                                                 old.vote)
        if new_vote and hs.vote != node.id:
            rate = self.vote_crash_rate
        elif new_vote:
            rate = self.campaign_crash_rate
        else:
            rate = self.fsync_crash_rate
        if not rate or self.rng.random() >= rate:
            return
        if new_vote and hs.vote != node.id and self.rng.random() < 0.5:
            delay = latency + self.rng.randint(0, 10)
        elif new_vote:
            # A candidate late in its fsync: it may have won on the others' votes meanwhile.
            delay = self.rng.randint(latency // 2, latency - 1) if latency > 1 else 0
        else:
            delay = self.rng.randint(0, latency)
        self._schedule(self.now + delay, _CRASH, node.id, node.incarnation)

    def _on_fsync(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if (not node.alive or node.incarnation != incarnation or node.ready is None
                or node.held):
            return
        rd = node.ready
        self._event(f"fsync {node_id} ready={rd.number} entries={len(rd.entries)}")
        node.disk.sync()
        self._note_truncation(node)
        if node.unsynced is not None:  # appended asynchronously before rd, synced with it
            (index, term), node.unsynced = node.unsynced, None
            self._persisted(node, index, term)
        self._finish_ready(node, rd)
        self._after(node)

    def _finish_ready(self, node: _Node, rd: Ready) -> None:
        """Steps 3-5: acknowledgements leave, the state machine applies, the core advances."""
        if "ack-before-fsync" not in self._plants:
            self._send(node, rd.persisted_messages)
        installed = node.disk.snapshot if rd.snapshot is not None else None
        if installed is not None:
            if installed.meta != rd.snapshot.meta:
                raise self.fail(f"node {node.id}: Ready {rd.number} installs the snapshot at "
                                f"{rd.snapshot.meta.index}, the disk holds {installed.meta}")
            self._restore_sm(node, installed)
            node.snap_index = installed.meta.index
            self.snapshots_installed += 1
            if self.durable_sm:  # its own storage holds the state now (the core a marker)
                node.sm_checkpoint = node.sm.snapshot()
        for e in rd.committed_entries:
            self._apply(node, e)
        node.core.advance(rd)
        if installed is not None and not self.durable_sm:
            node.core.offer_snapshot(installed)  # to send on, should this node lead
        if rd.entries and node.core.role is StateRole.LEADER:
            # A leader counts its own synced entries towards a commit, as if it had
            # acknowledged them to itself: the same promise.
            last = rd.entries[-1]
            if node.core.term_at(last.index) == last.term:
                self._note_ack(node, last.index)
        node.ready = None
        self._serve_reads(node)
        self._maybe_compact(node)

    def _restore_sm(self, node: _Node, snap: Snapshot) -> None:
        sm = node.sm
        if snap.local:
            if not self.durable_sm or snap.data != _marker(snap.meta.index):
                raise self.fail(f"node {node.id}: local snapshot {snap.data!r} at "
                                f"{snap.meta.index} restored (durable_sm={self.durable_sm})")
            if node.sm_checkpoint is None:
                raise self.fail(f"node {node.id}: a local snapshot at {snap.meta.index} but "
                                f"the state machine never checkpointed")
            sm.restore(node.sm_checkpoint)  # the state machine's own durable state
        else:
            sm.restore(snap.data)
        if sm.index != snap.meta.index or sm.term != snap.meta.term:
            raise self.fail(f"node {node.id}: snapshot meta ({snap.meta.index}, "
                            f"{snap.meta.term}) but its data is at ({sm.index}, {sm.term})")
        self._check_chain(node, sm.index, sm.term, sm.chain, "restored a snapshot")

    def _apply(self, node: _Node, e: Entry) -> None:
        sm = node.sm
        if e.index != sm.index + 1:
            raise self.fail(f"node {node.id} applies entry {e.index} after {sm.index}: "
                            f"applied entries must be contiguous")
        sm.apply(e)
        node.applied.append((e.index, e.term, e.data))
        if self._check_chain(node, e.index, e.term, sm.chain, "applied"):
            if e.type is EntryType.CONF_CHANGE:
                self.conf_changes += 1
        self._mark_committed(e.index, e.term, f"node {node.id} applied it")
        ops = node.props.pop(e.index, None)
        if ops:
            for op, term in ops:
                client = self.clients[op.client - 1]
                if op.done or client.op is not op or (op.node, op.term) != (node.id, term):
                    continue  # finished, or proposed again elsewhere since
                if e.term == term:
                    if e.data != op.data:
                        raise self.fail(f"node {node.id} applied ({e.index}, {e.term}) = "
                                        f"{e.data!r}, but proposed {op.data!r} there")
                    self.acked.append((e.index, e.term, e.data))
                    self._max_acked = max(self._max_acked, e.index)
                    self._key_acked[op.key] = max(self._key_acked.get(op.key, 0), e.index)
                    self._finish_op(client, op, f"acked at ({e.index}, {e.term})")
                else:
                    self._finish_op(client, op, f"lost: ({e.index}, {e.term}) applied instead")

    def _check_chain(self, node: _Node, index: int, term: int, chain: bytes, what: str) -> bool:
        """Checks a node's applied prefix against the global one; True if ``index`` is new."""
        rec = self._chain.get(index)
        if rec is None:
            self._chain[index] = (term, chain)
            return True
        if rec != (term, chain):
            raise self.fail(
                f"state machine safety: node {node.id} {what} up to ({index}, {term}), "
                f"which differs from the sequence applied elsewhere (term {rec[0]} there, "
                f"chain {rec[1].hex()[:12]} vs {chain.hex()[:12]})")
        return False

    def _maybe_compact(self, node: _Node) -> None:
        sm, core = node.sm, node.core
        if self.durable_sm:
            self._maybe_build(node)
            if node.synced is not None:
                self._compact_synced(node)
        if sm.index - node.snap_index < self.compact_every or core.applied != sm.index:
            return
        if self.durable_sm:
            if node.syncing or self._compaction_held(node):
                return
            # The state machine syncs its storage (raft.driver: in a thread, while the log goes
            # on); the log is compacted behind the marker once that is done (_on_synced).
            node.syncing = True
            meta = core.snapshot_meta_at_applied()
            self._schedule(self.now + self.rng.randint(1, 40), _SYNCED, node.id,
                           (node.incarnation, meta, sm.snapshot()))
            self._event(f"checkpoint {node.id} at {meta.index}")
            return
        data = sm.snapshot()
        meta = core.compact(data, keep=self.keep)
        if meta.index != sm.index:
            return  # the core already holds a newer snapshot (received one)
        node.disk.save_snapshot(Snapshot(meta, data))
        node.snap_index = meta.index
        self._event(f"compact {node.id} at {meta.index}")

    def _compaction_held(self, node: _Node) -> bool:
        """A follower is receiving the snapshot held (raft.driver waits too), for a while."""
        return (node.building or node.core.sending_snapshot()) and (
            node.sm.index - node.snap_index < 4 * self.compact_every)

    def _on_synced(self, node_id: int, payload) -> None:
        incarnation, meta, state = payload
        node = self.nodes[node_id]
        if not node.alive or node.incarnation != incarnation:
            return  # crashed while syncing: the checkpoint is lost, its marker never stored
        node.syncing = False
        node.synced = (meta, state)
        if node.ready is None:  # else once the Ready in flight is done (the driver's loop too)
            self._compact_synced(node)
            self._after(node)

    def _compact_synced(self, node: _Node) -> None:
        (meta, state), node.synced = node.synced, None
        if self._compaction_held(node):
            return
        marker = _marker(meta.index)
        if node.core.compact_at(meta, marker, keep=self.keep) is None:
            self._event(f"checkpoint {node.id} at {meta.index} overtaken")
            return
        node.sm_checkpoint = state  # durable now, with the marker stored next
        node.disk.save_snapshot(Snapshot(meta, marker, local=True))
        node.snap_index = meta.index
        self._event(f"compact {node.id} at {meta.index} (local)")

    def _maybe_build(self, node: _Node) -> None:
        """durable_sm: a leader whose follower needs a snapshot takes a view now and offers
        the snapshot built from it after a random build time."""
        core = node.core
        if not core.snapshot_wanted or node.building or core.applied != node.sm.index:
            return
        node.building = True
        meta = core.snapshot_meta_at_applied()
        self._schedule(self.now + self.rng.randint(1, 60), _BUILT, node.id,
                       (node.incarnation, Snapshot(meta, node.sm.snapshot())))
        self._event(f"build {node.id} at {meta.index}")

    def _on_built(self, node_id: int, payload) -> None:
        incarnation, snap = payload
        node = self.nodes[node_id]
        if not node.alive or node.incarnation != incarnation:
            return  # crashed while building: the view is gone
        node.building = False
        offered = node.core.offer_snapshot(snap)
        self.snapshots_built += 1
        self._event(f"built {node.id} at {snap.meta.index} offered={offered}")
        self._after(node)

    # ---------------------------------------------------------------- network

    def _send(self, node: _Node, msgs) -> None:
        rng = self.rng
        for m in msgs:
            self.messages += 1
            if m.type is MT.SNAPSHOT:
                self.snapshots_sent += 1
            elif m.type is MT.VOTE_RESP and not m.reject:
                node.vote_promise = (m.term, m.to)
            elif m.type is MT.APPEND_RESP and not m.reject:
                self._note_ack(node, m.index)
            if m.to not in self.nodes:
                continue
            if self.replay_rate:
                self._sample_and_replay(m)
            if self.drop_rate and rng.random() < self.drop_rate:
                self.dropped += 1
                continue
            copies = 2 if self.dup_rate and rng.random() < self.dup_rate else 1
            for _ in range(copies):
                delay = rng.randint(1, self.delay_max_ms)
                if self.long_delay_rate and rng.random() < self.long_delay_rate:
                    delay += rng.randint(50, 400)
                self._schedule(self.now + delay, _DELIVER, m)

    def _sample_and_replay(self, m: Message) -> None:
        """Keeps a small sample of the messages sent and now and then delivers one of them
        again, at least an election timeout after it was first sent: a vote or an append
        response from an earlier term, an append from a deposed leader, arriving after some
        elections (a stale buffer flushed by a reconnect). Each is replayed once at most.

        Replays are aimed, mostly, at the sender of ``m``, with old answers to what it asks
        now: a candidate asking for votes receives old vote responses while it counts, a leader
        sending appends old append responses while it tracks its followers. A campaign
        replays more often."""
        rng = self._replay_rng
        # The few messages of elections have a sample of their own, so that they stay in it
        # for a few elections rather than be pushed out by replication traffic at once.
        election = m.type in _ELECTION
        past = self._past[election]
        if rng.random() < (_REPLAY_KEEP_ELECTION if election else _REPLAY_KEEP):
            if len(past) < _REPLAY_SAMPLE:
                past.append((self.now, m))
            else:
                past[rng.randrange(_REPLAY_SAMPLE)] = (self.now, m)
        rate = self.replay_rate
        if m.type in (MT.VOTE, MT.PRE_VOTE):
            rate = min(0.5, 10 * rate)
        if rng.random() >= rate:
            return
        horizon = self.now - self.cfg.election_tick * self.cfg.tick_ms
        old = [(p, k) for p in self._past for k, (sent, _) in enumerate(p) if sent <= horizon]
        answers = _ANSWERS.get(m.type, ())
        aimed = [(p, k) for p, k in old if p[k][1].to == m.frm and p[k][1].type in answers]
        if aimed and rng.random() < 0.75:
            old = aimed
        if not old:
            return
        p, k = old[rng.randrange(len(old))]
        sent, replayed = p.pop(k)
        self.replayed += 1
        self._event(f"replay {replayed.frm}>{replayed.to} {replayed.type.name} "
                    f"t={replayed.term} sent at {sent}")
        self._schedule(self.now + rng.randint(1, self.delay_max_ms), _DELIVER, replayed)

    def _on_deliver(self, m: Message, _b) -> None:
        node = self.nodes[m.to]
        if not node.alive or (m.frm, m.to) in self._blocked:
            self.dropped += 1
            return
        self._event(f"deliver {m.frm}>{m.to} {m.type.name} t={m.term} i={m.index} "
                    f"lt={m.log_term} c={m.commit} n={len(m.entries)} r={int(m.reject)} "
                    f"off={m.chunk_offset}")
        node.core.step(m)
        self._after(node)

    def _on_tick(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if not node.alive or node.incarnation != incarnation:
            return
        node.core.tick()
        core = node.core
        self._event(f"tick {node_id} {core.role.value} t={core.term} c={core.commit}")
        self._after(node)
        self._schedule(self.now + node.tick_ms, _TICK, node_id, incarnation)

    # ---------------------------------------------------------------- checks

    def _check_node(self, node: _Node) -> None:
        core = node.core
        # Election safety (§5.2), and a leader never forgets what it appended (§5.3).
        if core.role is StateRole.LEADER:
            who = (node.id, node.incarnation)
            prev = self._leaders.get(core.term)
            if prev is None:
                self._leaders[core.term] = who
                self._event(f"leader {node.id} term={core.term}")
                self._check_leader_completeness(node)
            elif prev != who:
                if prev[0] != node.id:
                    raise self.fail(f"election safety: nodes {prev[0]} and {node.id} both "
                                    f"lead term {core.term}")
                raise self.fail(f"node {node.id} leads term {core.term} again after a restart "
                                f"(incarnation {prev[1]} then {node.incarnation}): it "
                                f"forgot its term, and may rewrite entries it sent as leader")
            if node.id not in core.conf.voters:
                raise self.fail(f"membership: node {node.id} leads term {core.term} but is not "
                                f"a voter of its configuration: voters {list(core.conf.voters)}, "
                                f"learners {list(core.conf.learners)}")
        # Commit and apply bounds.
        commit = core.commit
        if commit < node.commit_floor:
            raise self.fail(f"node {node.id}: commit index fell from {node.commit_floor} to "
                            f"{commit} while alive")
        if commit != node.commit_floor:
            if core.role is StateRole.LEADER and core.term_at(commit) != core.term:
                # §5.4.2 (Figure 8): a leader commits only by counting replicas of an entry of
                # its own term. An entry of an earlier term on a majority may still be replaced
                # by a later leader; the schedule that shows that is rare, the rule is not.
                raise self.fail(f"commit rule: leader {node.id} of term {core.term} moved its "
                                f"commit index from {node.commit_floor} to {commit}, an entry "
                                f"of term {core.term_at(commit)}")
            node.commit_floor = commit
            self._mark_committed(commit, core.term_at(commit), f"node {node.id}'s commit index")
            if core.role is StateRole.LEADER and self.cfg.check_durability:
                self._check_durable_quorum(node)
        if core.applied > commit or node.sm.index > commit:
            raise self.fail(f"node {node.id}: applied {core.applied} (state machine "
                            f"{node.sm.index}) beyond commit {commit}")
        self._check_log(node)
        # The index its configuration stands at: what it applied, or a snapshot it took in
        # since (the snapshot's configuration holds at once; applying waits for a Ready). A
        # node that has applied nothing holds whatever it was started with.
        at = max(core.applied, core.first_index - 1)
        first = self._conf_at.setdefault(at, core.conf) if at else core.conf
        if first != core.conf:
            raise self.fail(f"configuration: node {node.id} has applied through {at} "
                            f"with voters {list(core.conf.voters)} and learners "
                            f"{list(core.conf.learners)}; another node there had "
                            f"{list(first.voters)} and {list(first.learners)}")
        node.conf_seen = core.conf

    def _check_durable_quorum(self, node: _Node) -> None:
        """What a leader commits is durable on a majority of its voters (§3.8, §5.3): of the
        configuration before this event or after it, since applying a membership change in the
        same event may have replaced the one the commit was counted in."""
        core = node.core
        index, term = core.commit, core.term_at(core.commit)
        holders = []
        for voter in sorted(set(core.conf.voters) | set(node.conf_seen.voters)):
            disk = self.nodes[voter].disk
            if disk.offset >= index or disk.term_at(index) == term:
                holders.append(voter)
        for conf in (node.conf_seen, core.conf):
            if 2 * len([v for v in holders if v in conf.voters]) > len(conf.voters):
                return
        raise self.fail(f"durability: leader {node.id} committed ({index}, {term}), but only "
                        f"{holders} of voters {list(core.conf.voters)} hold it durably")

    def _check_log(self, node: _Node) -> None:
        """Log matching (§5.3), incrementally: see the module docstring."""
        core = node.core
        first, last = core.first_index, core.last_index
        terms = node.lm_terms
        i = min(node.lm_last, last)
        while i >= first and terms.get(i) != core.term_at(i):
            i -= 1
        i = max(i, first - 1)
        # Whatever the log held above i, as last checked, was replaced or dropped since: by a
        # newer leader's conflicting entries or a snapshot, neither of which ever removes a
        # committed entry (§5.4). The node's own commit index may lag; the global record not.
        for k in range(node.lm_last, i, -1):
            if k in terms and self._committed.get(k) == terms[k]:
                raise self.fail(f"log matching: node {node.id} dropped the committed entry "
                                f"({k}, {terms[k]}); its log now ends at {last} with term "
                                f"{core.term_at(min(k, last))} at {min(k, last)}")
        if i < last:
            prev = core.term_at(i)
            for e in core.entries(i + 1, last + 1):
                key = (e.index, e.term)
                val = (e.data, int(e.type), prev)
                rec = self._entries.get(key)
                if rec is None:
                    self._entries[key] = val
                    if e.type is EntryType.CONF_CHANGE:
                        self._check_conf_change_appended(node, e)
                elif rec != val:
                    raise self.fail(
                        f"log matching: node {node.id} holds entry ({e.index}, {e.term}) with "
                        f"data {e.data[:40]!r} after term {prev}, but another log has "
                        f"{rec[0][:40]!r} after term {rec[2]}")
                terms[e.index] = e.term
                prev = e.term
        node.lm_last = last

    def _check_conf_change_appended(self, node: _Node, e: Entry) -> None:
        """Single-server membership changes (thesis §4.1): the leader that appends one has
        committed an entry of its term, and every change before it, so that any two
        configurations that may count votes or commits at once share a majority."""
        core = node.core
        if core.role is not StateRole.LEADER or e.term != core.term:
            return  # not appended by this leader now: checked where it was
        if core.term_at(core.commit) != core.term:
            raise self.fail(f"membership: leader {node.id} appended a change at ({e.index}, "
                            f"{e.term}) before committing an entry of its term (commit "
                            f"{core.commit})")
        lo = max(core.commit, core.first_index - 1) + 1
        for earlier in core.entries(lo, e.index):
            if earlier.type is EntryType.CONF_CHANGE:
                raise self.fail(f"membership: leader {node.id} appended a change at "
                                f"({e.index}, {e.term}) while the change at {earlier.index} "
                                f"was not committed (commit {core.commit})")

    def _mark_committed(self, index: int, term: int | None, why: str) -> None:
        if index == 0:
            return
        if term is None:
            raise self.fail(f"{why}: index {index} is committed but its term is unknown")
        prev = self._committed.get(index)
        if prev is None:
            self._committed[index] = term
        elif prev != term:
            raise self.fail(f"two entries committed at index {index}: terms {prev} and {term} "
                            f"({why})")

    def _check_leader_completeness(self, node: _Node) -> None:
        """§5.4: the new leader of term T holds every entry committed in a term before T."""
        core = node.core
        best, best_term = 0, 0
        for index, term in self._committed.items():
            if term < core.term and index > best:
                best, best_term = index, term
        if best == 0 or best <= core.first_index - 1:
            return  # nothing known, or inside the leader's own snapshot
        have = core.term_at(best)
        if have != best_term:
            raise self.fail(
                f"leader completeness: node {node.id} leads term {core.term} but its log has "
                f"{'no entry' if have is None else f'term {have}'} at index {best}, which was "
                f"committed in term {best_term} (its last index is {core.last_index})")

    # ---------------------------------------------------------------- clients

    def _wake(self, client: _Client, delay_ms: int) -> None:
        client.wake += 1
        self._schedule(self.now + delay_ms, _CLIENT, client.id, client.wake)

    def _on_client(self, cid: int, wake: int) -> None:
        client = self.clients[cid - 1]
        if wake != client.wake:
            return  # superseded
        if client.op is None:
            if self._healed:
                return  # no new work after the heal: let the cluster converge
            self._next_op += 1
            client.seq += 1
            key = f"k{self.rng.randrange(self.cfg.keys)}"
            # Roaming clients read more: a stale read needs a read on the far side of a cut.
            kind = "w" if self.rng.random() < (0.5 if self.roam else 0.7) else "r"
            op = _Op(self._next_op, cid, kind, key)
            if kind == "w":
                op.data = encode_write(cid, client.seq, key, f"v{cid}.{client.seq}")
            else:
                op.ctx = f"read {cid}.{op.id}".encode()
                op.required = self._max_acked
                op.key_required = self._key_acked.get(key, 0)
            if self.roam and self.rng.random() < self.roam:
                # Some operations go to any node, as from a client behind a load balancer:
                # reads reach followers (which forward them to the leader they know) and a
                # deposed leader that has not noticed yet, on either side of a partition.
                op.roaming = True
            client.op = op
            timeout = _ROAM_OP_TIMEOUT_MS if self.roam else _OP_TIMEOUT_MS
            self._schedule(self.now + timeout, _TIMEOUT, cid, op.id)
        self._attempt(client, client.op)

    def _attempt(self, client: _Client, op: _Op) -> None:
        live = [n for n in sorted(self.nodes) if self.nodes[n].alive]
        target = client.guess
        roaming = op.roaming
        op.roaming = False  # only the first attempt: a refusal's leader hint is followed
        if roaming or target not in live:
            if not live:
                self._wake(client, 20)
                return
            target = self.rng.choice(live)
        node = self.nodes[target]
        try:
            if op.kind == "w":
                op.term, op.index = node.core.propose(op.data)
                node.props.setdefault(op.index, []).append((op, op.term))
                what = f"propose ({op.term}, {op.index})"
            else:
                node.core.read_index(op.ctx)
                node.reads[op.ctx] = op
                what = "read index"
        except ProposalDroppedError as e:
            client.guess = e.leader if e.leader in self.nodes else NONE
            self._event(f"client {client.id} op {op.id} refused by {target} "
                        f"(leader hint {e.leader})")
            self._wake(client, self.rng.randint(5, 30))
            return
        op.node, op.incarnation = target, node.incarnation
        if not roaming:
            client.guess = target
        self._event(f"client {client.id} op {op.id} {what} at {target}")
        self._after(node)

    def _serve_reads(self, node: _Node) -> None:
        if not node.read_states:
            return
        waiting = []
        for rs in node.read_states:
            if rs.index > node.sm.index:
                waiting.append(rs)
                continue
            op = node.reads.pop(rs.context, None)
            if op is None or op.done:
                continue
            if rs.index < op.required:
                raise self.fail(f"linearizability: read {op.ctx!r} at node {node.id} got read "
                                f"index {rs.index}, but a write at index {op.required} was "
                                f"acknowledged before the read was requested")
            _, windex = node.sm.kv.get(op.key, ("", 0))
            if windex < op.key_required:
                raise self.fail(f"linearizability: read of {op.key} at node {node.id} sees the "
                                f"write at index {windex}, but the write at index "
                                f"{op.key_required} was acknowledged before the read started")
            self.reads += 1
            self._finish_op(self.clients[op.client - 1], op, f"read at {rs.index}")
        node.read_states = waiting

    def _on_timeout(self, cid: int, op_id: int) -> None:
        client = self.clients[cid - 1]
        if client.op is not None and client.op.id == op_id:
            if self.roam:
                # The node it guessed did not answer: it may be down, cut off, or a leader
                # deposed behind a partition. Try another one next.
                client.guess = NONE
            op = client.op
            node = self.nodes.get(op.node)
            if (op.kind == "r" and node is not None and node.alive
                    and node.incarnation == op.incarnation):
                # The client gives up, as the driver's caller does: the read leaves the core.
                node.core.cancel_read(op.ctx)
                node.reads.pop(op.ctx, None)
            self._finish_op(client, op, "timed out")

    def _finish_op(self, client: _Client, op: _Op, outcome: str) -> None:
        op.done = True
        client.op = None
        self._event(f"client {client.id} op {op.id} {outcome}")
        self._wake(client, self.rng.randint(1, 20))

    # ---------------------------------------------------------------- nemesis

    def _leader(self) -> _Node | None:
        best = None
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.alive and node.core.role is StateRole.LEADER:
                if best is None or node.core.term > best.core.term:
                    best = node
        return best

    def _on_nemesis(self, _a, _b) -> None:
        if self._healed:
            return
        rng = self.rng
        action = rng.choices(
            ("partition", "bridge", "isolate", "clog", "heal-net", "crash", "membership",
             "transfer"),
            weights=(2, 1, 2, 2, 3, 3, 3, 1),
        )[0]
        self._hold_ms = 0
        getattr(self, "_nemesis_" + action.replace("-", "_"))()
        delay = rng.randint(1, 2 * self.nemesis_ms)
        self._schedule(self.now + max(delay, self._hold_ms), _NEMESIS)

    def _aimed_leader(self) -> _Node | None:
        """With roaming clients, three times in four: the leader, for the nemesis to cut off. A
        leader in a minority keeps serving until it notices (CheckQuorum), or for good (without
        it), while the majority elects another: the window in which a leader that answers reads
        without confirming its leadership returns stale data. The cut then holds long enough
        for an election and some traffic on both sides."""
        if not self.roam or self.rng.random() >= 0.75:
            return None
        leader = self._leader()
        if leader is not None:
            election_ms = self.cfg.election_tick * self.cfg.tick_ms
            self._hold_ms = self.rng.randint(3 * election_ms, 6 * election_ms)
        return leader

    def _nemesis_partition(self) -> None:
        ids = sorted(self.nodes)
        self.rng.shuffle(ids)
        self._blocked.clear()  # a new partition replaces the old one
        half = ids[: len(ids) // 2]
        leader = self._aimed_leader()
        if leader is not None:
            # The leader with fewer than half of its voters, so that the others can elect a
            # new one; the nodes that do not vote fall on either side.
            voters = leader.core.conf.voters
            peers = [n for n in ids if n in voters and n != leader.id]
            rest = [n for n in ids if n not in voters]
            with_leader = self.rng.randint(0, max(0, (len(voters) - 1) // 2 - 1))
            half = [leader.id] + peers[:with_leader] + rest[: len(rest) // 2]
        other = [n for n in ids if n not in half]
        for a in half:
            for b in other:
                self._blocked[(a, b)] = self._blocked[(b, a)] = True
        self._event(f"nemesis partition {sorted(half)} | {sorted(other)}")

    def _nemesis_bridge(self) -> None:
        """Two halves that cannot talk, and one node that talks to both (Jepsen's bridge)."""
        ids = sorted(self.nodes)
        self.rng.shuffle(ids)
        self._blocked.clear()
        bridge, rest = ids[0], ids[1:]
        half, other = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        for a in half:
            for b in other:
                self._blocked[(a, b)] = self._blocked[(b, a)] = True
        self._event(f"nemesis bridge {bridge} between {sorted(half)} | {sorted(other)}")

    def _nemesis_isolate(self) -> None:
        victim = self.rng.choice(sorted(self.nodes))
        leader = self._aimed_leader()
        if leader is not None:
            victim = leader.id
        self._blocked.clear()
        for other in sorted(self.nodes):
            if other != victim:
                self._blocked[(victim, other)] = self._blocked[(other, victim)] = True
        self._event(f"nemesis isolate {victim}")

    def _nemesis_clog(self) -> None:
        a, b = self.rng.sample(sorted(self.nodes), 2)
        self._blocked[(a, b)] = True
        self._event(f"nemesis clog {a}>{b}")

    def _nemesis_heal_net(self) -> None:
        self._blocked.clear()
        self._event("nemesis heal network")

    def _nemesis_crash(self) -> None:
        live = [n for n in sorted(self.nodes) if self.nodes[n].alive]
        down = len(self.nodes) - len(live)
        # Mostly keep a majority of the nodes up, so that the cluster makes progress between
        # faults; now and then take down more (a full outage must be survived too).
        if not live or (down >= (len(self.nodes) - 1) // 2 and self.rng.random() < 0.9):
            return
        node = self.nodes[self.rng.choice(live)]
        self._crash(node)
        self._schedule(self.now + self.rng.randint(5, 200), _RESTART, node.id)

    def _on_crash(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.alive and node.incarnation == incarnation and not self._healed:
            self._crash(node)
            self._schedule(self.now + self.rng.randint(1, 20), _RESTART, node.id)

    def _on_restart(self, node_id: int, _b) -> None:
        node = self.nodes[node_id]
        if not node.alive:
            self._restored_hard_state_hook(node)
            self._start(node)

    def _nemesis_membership(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        conf = leader.core.conf
        options: list[tuple[ConfChangeType, int]] = []
        if len(self.nodes) < self.cfg.max_nodes:
            options.append((ConfChangeType.ADD_LEARNER, max(self.nodes) + 1))
        for learner in conf.learners:
            options.append((ConfChangeType.ADD_VOTER, learner))
            options.append((ConfChangeType.REMOVE, learner))
        # Keep at least three voters, but now and then go down to two.
        if len(conf.voters) > 3 or (len(conf.voters) > 2 and self.rng.random() < 0.1):
            for voter in conf.voters:
                options.append((ConfChangeType.REMOVE, voter))
                options.append((ConfChangeType.ADD_LEARNER, voter))
        if not options:
            return
        kind, target = self.rng.choice(options)
        cc = ConfChange(kind, target)
        try:
            term, index = leader.core.propose_conf_change(cc)
        except (ConfChangeError, ProposalDroppedError) as e:
            self._event(f"nemesis {kind.name} {target} refused: {e}")
            return
        self._event(f"nemesis {kind.name} {target} proposed at ({term}, {index})")
        if target not in self.nodes:
            self._add_node(target)
        self._after(leader)

    def _nemesis_transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        others = [v for v in leader.core.conf.voters if v != leader.id]
        if not others:
            return
        to = self.rng.choice(others)
        try:
            leader.core.transfer_leader(to)
        except (ConfChangeError, ProposalDroppedError) as e:
            self._event(f"nemesis transfer {leader.id}>{to} refused: {e}")
            return
        self._event(f"nemesis transfer {leader.id}>{to}")
        self._after(leader)

    # ---------------------------------------------------------------- heal and liveness

    def _on_heal(self, _a, _b) -> None:
        self._healed = True
        self._blocked.clear()
        self.drop_rate = self.dup_rate = self.long_delay_rate = self.replay_rate = 0.0
        self.delay_max_ms = min(self.delay_max_ms, 5)
        self._event("heal")
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if not node.alive:
                self._restored_hard_state_hook(node)
                self._start(node)
        self._heal_deadline = self.now + self.cfg.liveness_ms
        self._schedule(self.now + self.cfg.tick_ms, _LIVENESS)

    def _on_liveness(self, _a, _b) -> None:
        problem = self._converged()
        if problem is None:
            self._event("converged")
            self._done = True
            return
        if self.now >= self._heal_deadline:
            status = "; ".join(
                f"{n}: " + (repr(self.nodes[n].core) + f" applied={self.nodes[n].sm.index} "
                            f"conf={self.nodes[n].core.conf}" if self.nodes[n].alive else "down")
                for n in sorted(self.nodes))
            raise self.fail(f"liveness: {self.cfg.liveness_ms} ms after the heal, {problem}. "
                            f"Nodes: {status}")
        self._schedule(self.now + self.cfg.tick_ms, _LIVENESS)

    def _converged(self) -> str | None:
        """None once a leader has committed an entry of its term and every member of its
        configuration has applied everything it committed; else what is missing."""
        leader = self._leader()
        if leader is None:
            return "no leader"
        core = leader.core
        if core.term_at(core.commit) != core.term:
            return f"leader {leader.id} has not committed an entry of term {core.term}"
        if core.applied != core.commit:
            return f"leader {leader.id} has applied {core.applied} of {core.commit}"
        if core.commit < self._max_acked:
            return f"leader {leader.id} commit {core.commit} < acked write {self._max_acked}"
        for member in core.conf.members():
            node = self.nodes.get(member)
            if node is None or not node.alive:
                return f"member {member} is missing"
            if node.sm.index < core.commit:
                return f"member {member} has applied {node.sm.index} of {core.commit}"
        return None

    def _result(self) -> SimResult:
        leader = self._leader()
        members = leader.core.conf.members() if leader is not None else ()
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.alive:
                # The state machine's hash chain covers the data of every entry applied, so
                # the trace hash tells apart two runs that differ only in what was written.
                self._event(f"final {node_id} {node.core.role.value} t={node.core.term} "
                            f"c={node.core.commit} a={node.sm.index} "
                            f"chain={node.sm.chain.hex()}")
        return SimResult(
            seed=self.seed,
            trace_hash=self._hash.hexdigest(),
            sim_ms=self.now,
            events=self.events,
            messages=self.messages,
            dropped=self.dropped,
            elections=len(self._leaders),
            crashes=self.crashes,
            commits=max((n.core.commit for n in self.nodes.values() if n.alive), default=0),
            acked_writes=len(self.acked),
            reads=self.reads,
            snapshots_sent=self.snapshots_sent,
            snapshots_installed=self.snapshots_installed,
            snapshots_built=self.snapshots_built,
            replayed=self.replayed,
            async_appends=self.async_appends,
            async_crashes=self.async_crashes,
            conf_changes=self.conf_changes,
            members=members,
        )


def run(seed: int, config: SimConfig = SimConfig(), *, trace=None) -> SimResult:
    """Simulates one seed; raises :class:`SimulationFailure` if a check fails.

    Args:
        seed: chooses everything.
        config: the run's shape; planted bugs are off by default.
        trace: if given, called with one line per event.

    Returns:
        The run's :class:`SimResult`; the same seed and config always give the same
        ``trace_hash``.
    """
    return Simulation(seed, config, trace=trace).run()


# ==================================================================== command line


def _parse_set(config: SimConfig, assignments: list[str]) -> SimConfig:
    kinds = {f.name: f.type for f in fields(SimConfig)}
    changes = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or name not in kinds:
            raise SystemExit(f"--set expects FIELD=VALUE with FIELD one of {', '.join(kinds)}")
        kind = kinds[name]
        if kind in (bool, "bool"):
            changes[name] = value.lower() in ("1", "true", "yes")
        elif kind in (int, "int"):
            changes[name] = int(value)
        else:
            changes[name] = value
    return replace(config, **changes)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SimConfig]:
    """The command line (see the module docstring) as arguments and the SimConfig they mean."""
    p = argparse.ArgumentParser(prog="python -m raft.sim",
                                description="Deterministic simulation of a Raft group.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=int, help="replay one seed, verbosely")
    what.add_argument("--seeds", type=int, help="run this many seeds")
    p.add_argument("--start", type=int, default=0, help="first seed of --seeds")
    p.add_argument("--trace", action="store_true", help="print every event (with --seed)")
    p.add_argument("--plant", default="", help=f"planted bugs: {', '.join(PLANTS)}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a SimConfig field (knobs=name=value,... pins seed knobs)")
    args = p.parse_args(argv)
    try:
        return args, _parse_set(SimConfig(plant=args.plant), args.set)
    except ValueError as e:  # an unknown plant or knob, a number that is not one
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    import time  # reports only: the simulation itself never reads a clock

    args, config = parse_args(argv)

    if args.seed is not None:
        sim = Simulation(args.seed, config, trace=print if args.trace else None)
        print(f"seed {args.seed}: knobs {sim.knobs}")
        try:
            result = sim.run()
        except SimulationFailure as e:
            if not args.trace:
                print("last events:")
                print("\n".join(sim.recent))
            print(f"FAILED {e}")
            return 1
        print(result.summary())
        return 0

    started = time.perf_counter()
    failures = []
    for seed in range(args.start, args.start + args.seeds):
        try:
            run(seed, config)
        except SimulationFailure as e:
            failures.append(e)
            print(f"FAILED {e}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"{args.seeds} seeds from {args.start}: {len(failures)} failed, {elapsed:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
