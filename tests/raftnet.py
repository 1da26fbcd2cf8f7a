"""A synchronous, in-process network of pure Raft cores for unit tests (etcd ``raft_test.go``).

Each :class:`Node` wraps a :class:`RaftCore` together with an in-memory "disk" (:class:`Disk`) and a
toy state machine (the list of applied ``(index, data)`` pairs). It handles every ``Ready`` exactly
as the driver must (ARCH §3): send ``messages``, persist snapshot / entries / hard state, send
``persisted_messages``, install the snapshot and apply ``committed_entries``, ``advance``.

A :class:`Network` holds nodes by id and a FIFO queue of messages. ``deliver()`` steps messages
into their recipients, handling each recipient's Ready right away, until nothing moves. Faults are
filters applied when a message is sent: ``isolate(id)``, ``cut(a, b)``, ``drop(type, ...)``,
``add_filter(pred)``; ``recover()`` removes them all. ``crash(id)`` forgets a node's memory and
``restart(id)`` rebuilds it from its disk, so durability can be tested.

Every message that leaves a node is checked against that node's disk at the moment it leaves: a
vote request or a granted vote requires the term and vote to be durable, an append
acknowledgement requires the acknowledged entries to be durable (thesis §3.8). A core that put
such a message in ``Ready.messages`` (sent before the fsync) trips :class:`DurabilityViolation`.
A node may also be given a slow disk (``Node.slow_disk``): a Ready is begun, its ``messages``
leave, and the core keeps stepping input until ``Network.fsync(id)`` finishes the write — the
freedom a driver that persists in the background has.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Iterable

from raft.core import Config, RaftCore, RestoredState
from raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    StateRole,
)

MT = MessageType

__all__ = [
    "Disk",
    "Node",
    "Network",
    "DurabilityViolation",
    "encode_state",
    "decode_state",
    "make_core",
    "ents",
    "lone_node",
    "make_leader",
    "commit_noop",
]


class DurabilityViolation(AssertionError):
    """A vote (request or grant) or an append acknowledgement left before what it vouches for
    was durable."""


def encode_state(state: list[tuple[int, bytes]]) -> bytes:
    """The toy state machine's snapshot: its applied ``(index, data)`` pairs."""
    return json.dumps([[i, d.hex()] for i, d in state]).encode()


def decode_state(data: bytes) -> list[tuple[int, bytes]]:
    return [(i, bytes.fromhex(d)) for i, d in json.loads(data)] if data else []


class Disk:
    """What one node has made durable. A Ready is written all at once when it is finished, so a
    crash loses exactly the Readies not yet finished (and what the core had not handed out)."""

    def __init__(self, conf: ConfState):
        self.bootstrap = conf
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []  # contiguous; may start at or before the snapshot index
        self.receiving = bytearray()  # the snapshot being received, as its chunks came

    def save(self, rd: Ready) -> None:
        """Persists ``rd`` in the order the Ready documents: snapshot, entries, hard state."""
        hs = rd.hard_state
        durable_change = bool(rd.entries) or rd.snapshot is not None or (
            hs is not None and (hs.term, hs.vote) != (self.hard_state.term, self.hard_state.vote))
        if durable_change and not rd.must_sync:
            raise AssertionError(f"Ready {rd.number} changes durable state without must_sync")
        for c in rd.snapshot_chunks:
            if c.offset == 0:
                self.receiving = bytearray()
            if len(self.receiving) != c.offset:
                raise AssertionError(f"Ready {rd.number}: a snapshot chunk at {c.offset} after "
                                     f"{len(self.receiving)} bytes")
            self.receiving += c.data
        if rd.snapshot is not None:
            self.snapshot = Snapshot(rd.snapshot.meta, bytes(self.receiving))
            self.receiving = bytearray()
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            kept = [e for e in self.entries if e.index < first]
            if kept and kept[-1].index != first - 1:
                raise AssertionError(f"Ready entries from {first} leave a gap after "
                                     f"{kept[-1].index}")
            base = self.snapshot.meta.index if self.snapshot is not None else 0
            if not kept and first > base + 1:
                raise AssertionError(f"Ready entries from {first} leave a gap after {base}")
            self.entries = kept + list(rd.entries)
        if hs is not None:
            self.hard_state = hs

    def save_compaction(self, snap: Snapshot) -> None:
        if self.snapshot is None or snap.meta.index > self.snapshot.meta.index:
            self.snapshot = snap
            self.entries = [e for e in self.entries if e.index > snap.meta.index]

    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def restored(self) -> RestoredState:
        snap = self.snapshot
        after = snap.meta.index if snap is not None else 0
        return RestoredState(
            hard_state=self.hard_state,
            snapshot=snap,
            entries=tuple(e for e in self.entries if e.index > after),
            conf=self.bootstrap,
        )


def make_core(id: int, disk: Disk, seed: int = 0, incarnation: int = 0, **config) -> RaftCore:
    cfg = Config(id=id, **config)
    return RaftCore(cfg, random.Random(f"{seed}-{id}-{incarnation}"), disk.restored())


class Node:
    """A core, its disk and its state machine; handles Ready like the driver does."""

    def __init__(self, core: RaftCore, disk: Disk):
        self.core = core
        self.disk = disk
        self.state: list[tuple[int, bytes]] = (
            decode_state(disk.snapshot.data) if disk.snapshot is not None else []
        )
        self.read_states: list[ReadState] = []
        self.applied_entries: list[Entry] = []  # every committed entry applied since start
        self.readies: list[Ready] = []
        self.record_readies = True
        self.slow_disk = False
        self.pending: Ready | None = None  # begun, not yet durable (slow disk)

    @property
    def id(self) -> int:
        return self.core.id

    def handle_ready(self) -> list[Message]:
        """Handles every pending Ready; returns the messages that left, in order.

        With ``slow_disk`` set, a Ready is only begun — its ``messages`` leave, the write is
        "in progress" — and the core keeps stepping input meanwhile; :meth:`fsync` finishes it
        (a driver that persists in a background thread). A crash loses an unfinished Ready.
        """
        out: list[Message] = []
        core = self.core
        if self.slow_disk:
            if self.pending is None and core.has_ready():
                self.pending = self._begin(core.ready(), out)
            return out
        if self.pending is not None:
            out += self.fsync()
        while core.has_ready():
            self._finish(self._begin(core.ready(), out), out)
        return out

    def fsync(self) -> list[Message]:
        """Finishes the Ready being written (slow disk); returns what then leaves."""
        out: list[Message] = []
        if self.pending is not None:
            rd, self.pending = self.pending, None
            self._finish(rd, out)
        return out

    def _begin(self, rd: Ready, out: list[Message]) -> Ready:
        if self.record_readies:
            self.readies.append(rd)
        for m in rd.messages:
            self._check_durable(m)
            out.append(m)
        return rd

    def _finish(self, rd: Ready, out: list[Message]) -> None:
        self.disk.save(rd)
        for m in rd.persisted_messages:
            self._check_durable(m)
            out.append(m)
        if rd.snapshot is not None:
            self.state = decode_state(self.disk.snapshot.data)
        for e in rd.committed_entries:
            self.applied_entries.append(e)
            if e.type is EntryType.NORMAL and e.data:
                self.state.append((e.index, e.data))
        self.read_states.extend(rd.read_states)
        self.core.advance(rd)
        if rd.snapshot is not None:
            self.core.offer_snapshot(self.disk.snapshot)  # to send on, should it lead

    def _check_durable(self, m: Message) -> None:
        """A vote request, a granted vote or an append acknowledgement of the node's current
        durable term leaves only once what it vouches for is on disk (thesis §3.8). One of an
        earlier term (made before the node moved on in the same batch of input) is stale: the
        node has durably left that term and can never act in it again."""
        hs = self.disk.hard_state
        vouches = (m.type is MT.VOTE or (m.type is MT.VOTE_RESP and not m.reject)
                   or (m.type is MT.APPEND_RESP and not m.reject and m.index > 0))
        if not vouches or hs.term > m.term:
            return
        if hs.term < m.term:
            raise DurabilityViolation(f"{m} sent while the disk holds {hs}")
        if m.type is MT.VOTE and hs.vote != m.frm:
            raise DurabilityViolation(f"vote request {m} sent while the disk holds {hs}")
        if m.type is MT.VOTE_RESP and hs.vote != m.to:
            raise DurabilityViolation(f"vote {m} sent while the disk holds {hs}")
        if m.type is MT.APPEND_RESP and self.disk.last_index() < m.index:
            raise DurabilityViolation(
                f"ack {m} sent while the disk ends at {self.disk.last_index()}")

    def step(self, *msgs: Message) -> list[Message]:
        """Steps ``msgs`` into the core and returns what it sends."""
        for m in msgs:
            self.core.step(m)
        return self.handle_ready()

    def tick(self, times: int = 1) -> list[Message]:
        out: list[Message] = []
        for _ in range(times):
            self.core.tick()
            out.extend(self.handle_ready())
        return out

    def log(self) -> list[Entry]:
        """The in-memory log after the compaction point."""
        return self.core.entries(self.core.first_index, self.core.last_index + 1)

    def compact(self, keep: int = 0) -> SnapshotMeta:
        """Snapshots the state machine at the applied index, like an application would."""
        data = encode_state(self.state)
        meta = self.core.compact(data, keep)
        if self.core.snapshot is not None and self.core.snapshot.meta == meta:
            self.disk.save_compaction(self.core.snapshot)
        return meta

    def applied_data(self) -> list[bytes]:
        return [d for _, d in self.state]


def ents(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms, at indexes ``start``, ``start + 1``, ..."""
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def lone_node(id: int = 1, voters: Iterable[int] = (1, 2, 3), learners: Iterable[int] = (), *,
              entries: Iterable[Entry] = (), term: int = 0, vote: int = NONE, commit: int = 0,
              seed: int = 0, **config) -> Node:
    """One node of a larger cluster, driven by hand (etcd's ``newTestRaft``)."""
    disk = Disk(ConfState(tuple(sorted(voters)), tuple(sorted(learners))))
    disk.entries = list(entries)
    disk.hard_state = HardState(term, vote, commit)
    node = Node(make_core(id, disk, seed, **config), disk)
    node.handle_ready()
    return node


def make_leader(node: Node) -> list[Message]:
    """Campaigns and grants ``node`` every (pre-)vote it asks for; returns what it sent."""
    core = node.core
    out: list[Message] = []
    if core.role is not StateRole.CANDIDATE:
        core.campaign()
        out += node.handle_ready()
    if core.role is StateRole.PRE_CANDIDATE:
        out += node.step(*[Message(MT.PRE_VOTE_RESP, core.id, v, core.term + 1)
                           for v in core.conf.voters if v != core.id])
    out += node.step(*[Message(MT.VOTE_RESP, core.id, v, core.term)
                       for v in core.conf.voters if v != core.id])
    assert core.role is StateRole.LEADER, core
    return out


def commit_noop(node: Node) -> list[Message]:
    """Every follower acknowledges the leader's log: commits its no-op and puts the followers in
    REPLICATE (etcd's ``commitNoopEntry``)."""
    core = node.core
    out = node.step(*[Message(MT.APPEND_RESP, core.id, p, core.term, index=core.last_index)
                      for p in core.conf.members() if p != core.id])
    assert core.commit == core.last_index, core
    return out


Filter = Callable[[Message], bool]  # True: drop the message


class Network:
    """Nodes by id, a FIFO of messages in flight, and fault filters.

    Args:
        voters, learners: the bootstrap membership; every node starts with it.
        seed: seeds each node's ``random.Random`` (its election jitter).
        down: members whose disk exists but which are not started (see :meth:`restart`).
        **config: :class:`Config` fields shared by all nodes (``election_tick``, ``pre_vote``, ...).
    """

    def __init__(self, voters: Iterable[int] = (1, 2, 3), learners: Iterable[int] = (), *,
                 seed: int = 0, down: Iterable[int] = (), **config):
        self.conf = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        self.seed = seed
        self.config = config
        self.nodes: dict[int, Node] = {}
        self.disks: dict[int, Disk] = {}
        self.incarnations: dict[int, int] = {}
        self.queue: deque[Message] = deque()
        self.filters: list[Filter] = []
        self.delivered: list[Message] = []
        self.dropped: list[Message] = []
        self.record = True
        down = set(down)
        for nid in self.conf.members():
            self.add_node(nid, start=nid not in down)

    # ------------------------------------------------------------ membership of the network

    def add_node(self, nid: int, conf: ConfState | None = None, start: bool = True,
                 **config) -> Node | None:
        """Creates node ``nid`` with an empty disk (bootstrap membership ``conf``)."""
        self.disks[nid] = Disk(self.conf if conf is None else conf)
        self.incarnations[nid] = 0
        if start:
            return self.restart(nid, **config)
        return None

    def crash(self, nid: int) -> None:
        """Forgets everything ``nid`` had not persisted; its disk stays."""
        self.nodes.pop(nid)

    def crash_mid_ready(self, nid: int) -> None:
        """Steps the next message queued for ``nid`` (or ticks it), lets the resulting Ready's
        ``messages`` leave, then crashes ``nid`` before anything of that Ready is persisted —
        the worst moment for a core that put a durability-dependent message in ``messages``."""
        node = self.nodes[nid]
        node.slow_disk = True
        for k, m in enumerate(self.queue):
            if m.to == nid:
                del self.queue[k]
                node.core.step(m)
                break
        else:
            node.core.tick()
        self._flush(nid)
        self.crash(nid)

    def fsync(self, nid: int) -> None:
        """Finishes ``nid``'s Ready in progress (slow disk) and queues what then leaves."""
        node = self.nodes[nid]
        self._enqueue(node.fsync())
        self._flush(nid)

    def restart(self, nid: int, **config) -> Node:
        self.incarnations[nid] += 1
        core = make_core(nid, self.disks[nid], self.seed, self.incarnations[nid],
                         **{**self.config, **config})
        node = Node(core, self.disks[nid])
        self.nodes[nid] = node
        self._flush(nid)
        return node

    def core(self, nid: int) -> RaftCore:
        return self.nodes[nid].core

    # ------------------------------------------------------------ faults

    def add_filter(self, pred: Filter) -> Filter:
        self.filters.append(pred)
        return pred

    def isolate(self, nid: int) -> None:
        self.add_filter(lambda m: m.frm == nid or m.to == nid)

    def cut(self, a: int, b: int) -> None:
        self.add_filter(lambda m: {m.frm, m.to} == {a, b})

    def drop(self, type: MessageType, *, frm: int | None = None, to: int | None = None) -> None:
        """Drops every message of ``type`` (optionally only from ``frm`` / to ``to``)."""
        self.add_filter(lambda m: m.type is type and frm in (None, m.frm) and to in (None, m.to))

    ignore = drop

    def recover(self) -> None:
        self.filters.clear()

    def _filtered(self, m: Message) -> bool:
        return any(f(m) for f in self.filters)

    # ------------------------------------------------------------ moving messages

    def _enqueue(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if self._filtered(m):
                if self.record:
                    self.dropped.append(m)
            else:
                self.queue.append(m)

    def _flush(self, nid: int) -> None:
        node = self.nodes.get(nid)
        if node is not None:
            self._enqueue(node.handle_ready())

    def flush(self) -> None:
        """Handles every node's pending Ready; what they send is queued (or filtered)."""
        for nid in sorted(self.nodes):
            self._flush(nid)

    def deliver(self, limit: int | None = None) -> int:
        """Steps queued messages into their recipients until the network is quiet (or ``limit``
        messages were delivered). Messages to a crashed node are lost. Returns the count."""
        self.flush()
        n = 0
        while self.queue and (limit is None or n < limit):
            m = self.queue.popleft()
            node = self.nodes.get(m.to)
            if node is None:
                if self.record:
                    self.dropped.append(m)
                continue
            node.core.step(m)
            if self.record:
                self.delivered.append(m)
            n += 1
            if n > 200_000:
                raise AssertionError("the network does not quiesce")
            self._flush(m.to)
        return n

    def take(self) -> list[Message]:
        """Flushes every node and removes all queued messages without delivering them (to
        reorder, duplicate or inspect them; then :meth:`send` some)."""
        self.flush()
        out = list(self.queue)
        self.queue.clear()
        return out

    def send(self, *msgs: Message) -> int:
        """Queues ``msgs`` (through the filters) and delivers until quiet."""
        self._enqueue(msgs)
        return self.deliver()

    def step(self, m: Message) -> list[Message]:
        """Steps one message into its recipient and returns what it sends (not queued)."""
        node = self.nodes[m.to]
        node.core.step(m)
        if self.record:
            self.delivered.append(m)
        return node.handle_ready()

    # ------------------------------------------------------------ inputs

    def tick(self, *nids: int, times: int = 1, deliver: bool = True) -> None:
        """Ticks ``nids`` (default: every live node) ``times`` times, delivering after each."""
        for _ in range(times):
            for nid in (nids or sorted(self.nodes)):
                if nid in self.nodes:
                    self.nodes[nid].core.tick()
                    self._flush(nid)
            if deliver:
                self.deliver()

    def campaign(self, nid: int) -> None:
        self.nodes[nid].core.campaign()
        self.deliver()

    def propose(self, nid: int, data: bytes) -> tuple[int, int]:
        res = self.nodes[nid].core.propose(data)
        self.deliver()
        return res

    def elect(self, nid: int) -> None:
        """Campaigns ``nid`` and asserts that it won."""
        self.campaign(nid)
        core = self.nodes[nid].core
        assert core.role is StateRole.LEADER, f"{core!r} did not win the election"

    # ------------------------------------------------------------ inspection

    def leaders(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.core.role is StateRole.LEADER)

    def leader(self) -> int:
        """The leader of the highest term among live nodes (a deposed leader that has not
        heard of it yet may still think it leads an earlier term); 0 if there is none."""
        ls = self.leaders()
        if not ls:
            return NONE
        terms = {self.nodes[i].core.term for i in ls}
        assert len(terms) == len(ls), f"two leaders in one term: {ls}"
        return max(ls, key=lambda i: self.nodes[i].core.term)

    def roles(self) -> dict[int, StateRole]:
        return {i: n.core.role for i, n in sorted(self.nodes.items())}

    def terms(self) -> dict[int, int]:
        return {i: n.core.term for i, n in sorted(self.nodes.items())}

    def delivered_of(self, type: MessageType, frm: int | None = None,
                to: int | None = None) -> list[Message]:
        """Delivered messages of ``type`` (optionally from / to)."""
        return [m for m in self.delivered
                if m.type is type and frm in (None, m.frm) and to in (None, m.to)]


# ------------------------------------------------------------------ bare cores, an instant disk


def core_cluster(n: int = 3, **config) -> dict[int, RaftCore]:
    """``n`` fresh cores (ids 1..n, all voters), without disks: for tests that drive Readies
    themselves (see :func:`drain_cores`)."""
    ids = tuple(range(1, n + 1))
    return {i: RaftCore(Config(i, **config), random.Random(i), RestoredState(conf=ConfState(ids)))
            for i in ids}


def drain_cores(cores: dict[int, RaftCore], drop: Callable[[Message], bool] = lambda m: False):
    """Runs every Ready to completion (an instant disk) and delivers messages in order."""
    queue: list[Message] = []
    moved = True
    while moved:
        moved = False
        for core in cores.values():
            while core.has_ready():
                rd = core.ready()
                queue.extend(rd.messages)
                queue.extend(rd.persisted_messages)
                core.advance(rd)
                moved = True
        while queue:
            m = queue.pop(0)
            if not drop(m):
                cores[m.to].step(m)
            moved = True
