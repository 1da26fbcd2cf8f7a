"""The node runtime: one process, one data directory, replicas of several groups (ARCH §7).

A :class:`Node` hosts a replica of every group the cluster's placement gives it (see
:mod:`engine.placement`: the meta group, its own region's data group as a voter, and at most a
few other groups, as a spread group's voter or as another region's learner there). All its
groups share one Raft transport (one TCP connection per node pair, :mod:`raft.tcp`) and one
hybrid logical clock; clients and other nodes reach it through one msgpack RPC server
(:mod:`engine.rpc`) whose frames all carry that clock.

Data directory
--------------
::

    DIR/IDENTITY                   a DurableState holding msgpack {"cluster": name, "node": id,
                                   "groups": [[group, kind, region, voters, learners], ...],
                                   "opened": true once the node has made its groups}:
                                   a directory is never reused by another node or cluster by
                                   mistake, nor restarted with a group's data lost, and its
                                   flock keeps it to one node process
    DIR/groups/<id>/raft/          the group's Raft log, hard state and snapshot
    DIR/groups/<id>/state/         the group's MVCC store

Restarting a node on the same directory recovers every group from it. The groups and their
members (the placement, a function of the cluster configuration's regions and nodes) must be
those the directory was made for: a group's Raft membership is bootstrapped from the placement,
so a node restarted under a configuration with other nodes or regions would elect and commit
under a membership its peers do not share -- two leaders, and acknowledged writes lost. Such a
start is refused; addresses, latencies and limits may change freely.

Methods served
--------------
``ping``, ``describe``, ``status``; catalog: ``keyspace.create``, ``keyspace.get``,
``keyspace.list``, and the steps of moves and drops, ``keyspace.begin``, ``keyspace.rehome``,
``keyspace.settle`` and ``keyspace.drop`` (meta group leader), and
``keyspace.fence`` and ``keyspace.copy`` (a data group: moving or dropping a keyspace); data:
``read``, ``scan`` (a page at a time, see :data:`SCAN_PAGE_ITEMS`) and ``commit`` on a group,
``close`` (between nodes: a replica's stale read asks its group's leader to close time);
two-phase commit: ``prepare``, ``decide``
(primary group), ``resolve``, and ``refresh`` (may a transaction's reads move to a newer
snapshot?); regional keyspaces:
``remote.apply`` and ``remote.watermark`` (between nodes: another region's writes),
``conflicts.list`` and ``conflicts.drain``. Errors are :class:`~engine.rpc.RemoteError` codes:
``not_leader`` (details: group, leader), ``conflict`` (details: reason, key), ``restart``
(details: ts — the reader must move its snapshot to ts), ``moved`` (the keyspace lives in
another group now: look it up again), ``ambiguous``, ``invalid_argument``, ``too_large``
(a key or value over its size limit), ``limit_exceeded`` (a transaction over a limit),
``not_found``, ``already_exists``, ``unknown_group``, ``not_closed`` (a stale read's timestamp
was not reached in time), ``clock_offset`` (this node measured its clock beyond the allowed
offset from a majority of its peers and refuses to serve until that heals).

Background work
---------------
Per group, on every replica: MVCC garbage collection below the group's low water. Per data
group, while this node leads it: the closer (idle groups close time), the intent
sweep (prepared transactions past their deadline are finished from their record), and one
shipper per other region that pushes the group's regional writes there (ARCH §6).

Clock offset
------------
Every second the node pings every other node and feeds a
:class:`~engine.hlc.ClockOffsetMonitor`; while a majority of peers are further away than
``max_clock_offset`` (after subtracting half the round trip), the node answers every data and
catalog request with ``clock_offset``, proposes nothing of its own, and logs why — serving
would break the guarantees of ARCH §5, which assume bounded skew. The first check comes before
the node opens its groups, once every peer has answered a first ping or failed to: a node
started with its clock far off stops before it serves a request or stamps an entry. A node
with peers serves only once one of them has measured its clock (a node restarted while cut off
from all of them waits, answering ``clock_offset``); a node alone in its cluster has nobody to
ask and serves at once. Until the pings notice, a wall clock that jumps forward is not
followed by the node's timestamps (:class:`~engine.hlc.HybridClock`): they follow it again once
pings all taken after the jump find it right.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import resource
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

import msgpack
import trio

from raft.core import Config as RaftConfig
from raft.driver import UNSAFE_MODES, open_raft_node
from raft.storage import RaftStorage
from raft.tcp import TcpOptions, serve_tcp_transport
from raft.transport import LinkModel

from . import catalog as cat
from . import planted
from ._fs import makedirs_durable, storage_error
from .config import MAX_TXN_BYTES, Limits, NodeConfig, application_resolvers
from .durable import DurableState
from .errors import (
    AmbiguousCommitError,
    CorruptStateError,
    InvalidArgumentError,
    LimitExceededError,
    MeridianError,
    NotLeaderError,
    RecordTooLargeError,
    StoreLockedError,
    TransactionConflictError,
)
from .adjudicator import MAX_TXN_KEYS
from .client import Database
from .group import (
    GroupStateMachine,
    Intent,
    MAX_EPOCH,
    MAX_KEYSPACE_ID,
    Outcome,
    are_spans,
    conflict_log_bounds,
    encode_commit,
    encode_drain,
    encode_fence,
    encode_remote,
    encode_shipped,
)
from .merge import MAX_APP_VALUE_SIZE, RESOLVER_NAMES, is_resolver_name
from .hlc import ClockOffsetError, ClockOffsetMonitor, HybridClock
from .mvcc import MAX_KEY_SIZE, MAX_SIDE_KEY_SIZE, MAX_TS, MAX_VALUE_SIZE, MVCCStore
from .placement import (
    KEY_PREFIX_SIZE,
    META_GROUP,
    check_catalog_survives_a_region,
    data_group,
    keyspace_bounds,
    placement,
    spread_group,
    user_key,
)
from .replica import GroupReplica
from .rpc import DEFAULT_MAX_CONNECTIONS, RemoteError, connect_rpc, serve_rpc

__all__ = ["Node", "run_node"]

log = logging.getLogger("meridian.node")

PING_INTERVAL_S = 1.0
UNMEASURED_RETRY_S = 0.05
"""The first wait before a node no peer has measured yet connects to a peer again (doubling
up to :data:`PING_INTERVAL_S`)."""
UNMEASURED_WARN_ROUNDS = 10
"""Rounds of pings after which a node no peer has measured yet says so as a warning."""
STALE_READ_WAIT_S = 5.0
CLOSE_ASK_AFTER_S = 0.2
"""How long a replica that is not its group's leader waits for a stale read's timestamp to
close by itself before it asks the leader to close it (an idle group closes time only every
second, a spread group every five: a bound shorter than that would otherwise wait for it)."""
INTENT_TIMEOUT_S = 2.0
"""A prepared transaction whose coordinator has not finished it this long after its prepare
may be finished by anyone who meets one of its intents (aborted, unless decided)."""
INTENT_WAIT_S = 10.0
"""Longest a read waits for intents to be resolved before answering ``unavailable``."""
SWEEP_INTERVAL_S = 1.0
SWEEP_BATCH = 1000
SWEEP_BATCH_BYTES = 4 << 20
"""One sweep of a group looks at most at this many prepared transactions, and stops after
the one that brings their records to this many bytes: it reads them on the node's event
loop. The next sweep goes on after them."""
SWEEP_RECOVERIES = 100
"""The most recoveries one sweep of a group starts."""
RECORD_GC_INTERVAL_S = 60.0
"""How often a primary group's leader looks for transaction records old enough to forget."""
RECORD_GC_BATCH = 500
LEADER_HOME_CHECK_S = 2.0
REPLICATION_BATCH = 256
"""Most outbox records (commits) in one batch of regional writes shipped to another region."""
REPLICATION_BATCH_BYTES = 4 << 20
"""Most bytes of keys and values in one batch (at least one record): a batch is one request,
which must stay under the RPC frame limit (16 MiB), and one Raft entry at the destination."""
REPLICATION_WINDOW = 8
"""Batches of regional writes in flight to one destination at once."""
SHIPPED_REPORT_S = 1.0
"""How often at most a shipper records in its group's log how far a destination has applied
its regional writes (SHIPPED): the outbox keeps each write until every destination has it."""
REPLICATION_RETRY_S = 0.5
"""A shipper's pause after an error, doubled at each error in a row (no batch got through)."""
REPLICATION_RETRY_MAX_S = 10.0
"""Longest pause of a shipper between attempts that fail in a row: a destination that
refuses a batch gets it again at most this often (each batch sent is a Raft entry there, of
up to :data:`REPLICATION_BATCH_BYTES`), and a destination back after an outage at most this
long after its return."""
REPLICATION_LINGER_S = 0.04
"""How long a shipper that was idle waits after a new regional write before shipping it, so
that the writes of those milliseconds travel (and are proposed at the destination) as one
batch: each batch costs every destination a Raft proposal. It adds at most this much to the
replication lag, whose target is the one-way WAN delay + 100 ms at p99; at one writer per
region, 40 ms against 20 cut the nodes' CPU per regional write by about a tenth (see
BENCHMARKS.md, "Regional writes: analysis")."""
LAG_SAMPLES = 1000
LAG_WINDOW_S = 300.0
"""The replication lag a node reports per origin region (``status()``) is that of the
regional writes it applied in the last :data:`LAG_WINDOW_S` seconds, at most the latest
:data:`LAG_SAMPLES` of them (the memory it takes is bounded): a pair that stopped writing
reports no samples once its last ones are older, not their figures as if they were current.
Ages are measured on the node's hybrid clock, as the lag itself; old samples are dropped as
new ones come and when the figures are read."""
RECOVERY_TIMEOUT_S = 10.0
MAX_CATALOG_ATTEMPTS = 20
MAX_SPANS = 4096
"""The most scanned ranges one refresh, commit or prepare may carry for one group."""
KEYSPACE_LIST_PAGE = 1000
"""``keyspace.list`` answers at most this many catalog records: a page, far
below the RPC frame limit whatever the number of keyspaces (a record is a few hundred bytes
at most), and read from the store in one go on the node's event loop."""
_MOVED_WHY = (
    ": its keyspace came to this group after the transaction's snapshot",
    ": its keyspace is being moved to another home region, and takes no writes until its "
    "data is copied there (longer for a larger keyspace)",
    ": its keyspace moved to another home region or was dropped")
"""What a ``moved`` refusal of a commit or prepare says, by the level of the keyspace's
fence in the group (see engine.group, FENCE): 0 (only ``available_from``), 1, 2 or 3."""
COPY_LIMITS = Limits(max_txn_keys=MAX_TXN_KEYS, max_txn_bytes=MAX_TXN_BYTES,
                     max_key_size=MAX_KEY_SIZE, max_value_size=MAX_VALUE_SIZE)
"""What one batch of a move's copy (``keyspace.copy``) is held to: the store's bounds and a
request's, not the cluster's transaction limits. Its keys and values were committed under the
limits of their day, and limits may be lowered between restarts: a key or value over today's
would otherwise keep its keyspace from ever moving."""
SCAN_PAGE_ITEMS = 10_000
SCAN_PAGE_BYTES = 4 << 20
"""A ``scan`` answers at most this many pairs, and stops after the pair that brings their
keys and values to this many bytes: a page, which says ``more`` when the range goes on
past its last key. The node holds one page in memory per scan, and a page stays far below
the RPC frame limit (16 MiB); the client reads on from just past the page's last key. A
``read`` of several keys likewise answers the values of those that fit, saying ``more``."""


def idle_heartbeat_ticks(heartbeat_ticks: int, election_ticks: int) -> int:
    """How often an idle group's leader heartbeats its voters (see
    ``raft.core.Config.idle_heartbeat_tick``): every third heartbeat interval, or as often as
    half the lease allows if that is sooner; 0 (as busy groups) when there is no room. With the
    defaults, every 300 ms instead of every 100: an idle cluster's groups send a third of the
    heartbeats, and the lease and the election timeout are untouched."""
    lease = RaftConfig(id=1, election_tick=election_ticks).lease_ticks()
    idle = min(3 * heartbeat_ticks, lease // 2)
    return idle if idle > heartbeat_ticks else 0


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _boot_clock_ns() -> int:
    """Nanoseconds since boot, suspended time included (``CLOCK_BOOTTIME``, where the system
    has it): a clock that never jumps, against which the hybrid clock checks the wall clock's
    steps (a monotonic clock that stopped while the machine slept would make a resume look
    like a jump forward)."""
    return time.clock_gettime_ns(_BOOT_CLOCK)


class Node:
    """One node. Run it with :meth:`run` (in a nursery: ``await nursery.start(node.run)``)."""

    def __init__(self, config: NodeConfig, *, seed: int | None = None,
                 physical_clock: Callable[[], int] | None = None) -> None:
        """``physical_clock`` replaces the wall clock (nanoseconds), to test clock skew."""
        self.config = config
        self.cluster = config.cluster
        self.id = config.node_id
        self.region = config.region
        # Imported now: a resolver that cannot be is a configuration error, said at start.
        self.resolvers = application_resolvers(self.cluster)
        # A jump of the wall clock is followed once peers vouch for it (see
        # _trust_jumped_clock); a node without peers has nobody to ask, and follows its clock.
        alone = len(self.cluster.all_nodes()) == 1
        self.clock = HybridClock(physical_clock or time.time_ns,
                                 max_offset_ns=self.cluster.max_clock_offset_ns,
                                 monotonic=None if alone else _boot_clock_ns)
        self.replicas: dict[int, GroupReplica] = {}
        self.placement = placement(self.cluster)
        self._seed = seed
        peers = [n.id for n in self.cluster.all_nodes() if n.id != self.id]
        self.monitor = ClockOffsetMonitor(
            self.id, peers, self.cluster.max_clock_offset_ns,
            stale_after_ns=int(10 * PING_INTERVAL_S * 1e9))
        # A clock no peer has measured is not trusted: the hybrid clock follows its first
        # reading, however far off, and a node restarted while cut off from every peer would
        # otherwise serve and lead on it. A node without peers has nobody to ask.
        self._clock_measured = not peers
        self._unmeasured = (f"node {self.id}: its clock has not been measured by any peer "
                            f"yet; it serves once one of nodes {', '.join(map(str, peers))} "
                            f"answers a ping within the maximum clock offset")
        self._clock_problem: str | None = None if self._clock_measured else self._unmeasured
        # Per peer: the monotonic time the ping of the measurement the monitor holds was sent
        # (see _trust_jumped_clock).
        self._measured_mono: dict[int, int] = {}
        # The peers whose latest answer to a ping said they do not serve (their clock is
        # suspect): no group's leadership is handed to them (see _keep_leader_home).
        self._peers_not_serving: set[int] = set()
        # Per group: the timestamp a request being sent asks its leader to close up to (see
        # _ask_leader_to_close).
        self._close_asked: dict[int, int] = {}
        self._ping_round = trio.lowlevel.ParkingLot()  # peers' pingers wait here between pings
        self.monitor_rotation = 0  # spreads leadership hand-overs over the other voters
        self.client_port = 0
        self.peer_port = 0
        self._nursery: trio.Nursery | None = None
        self._peers: Database | None = None
        # Set once _peers exists: every group and the client server are up by then, but each
        # group's background work (recoveries, record collection) begins as its group opens.
        self._peers_ready = trio.Event()
        self._transport = None
        self._links: dict[int, LinkModel] = {}
        self.unreachable: frozenset[int] = frozenset()
        self._recovering: set[int] = set()
        # Per group this node leads: the id of the last prepared transaction the previous
        # sweep looked at (see _sweep_round).
        self._sweep_after: dict[int, int] = {}
        # Per group this node leads: the decision timestamp of the last transaction record
        # the previous round of record collection looked at (see _forget_round).
        self._forget_after: dict[int, int] = {}
        # Catalog changes this node makes as the meta group's leader, one at a time (see
        # _catalog_txn).
        self._catalog_lock = trio.Lock()
        # Replication lag of regional writes applied here, per origin region: recent samples,
        # (timestamp applied at, lag in ms), oldest first (see LAG_WINDOW_S).
        self._lag_ms: dict[str, collections.deque] = {}
        # (origin group, destination group) -> how far the destination has applied the
        # origin's regional writes, by its latest answer to this node's shipper.
        self._applied_by: dict[tuple[int, int], int] = {}

    @property
    def replication_broken(self) -> dict[tuple[int, int], int]:
        """(origin group, destination group) → the newest regional write of the origin that
        its outbox dropped before the destination had applied it (see
        :meth:`GroupStateMachine.missed`): the destination region lost writes and needs a full
        copy. Replicated state of the origin group, so every node with a replica of it
        reports it, whichever node leads and after restarts; nothing clears it."""
        return {(gid, d): ts for gid, r in self.replicas.items()
                for d, ts in r.sm.missed().items()}

    # ------------------------------------------------------------------ lifetime

    @property
    def clock_problem(self) -> str | None:
        """Why this node refuses to serve (its clock), or None while it serves."""
        return self._clock_problem

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Opens the data directory, starts every group and serves until cancelled; on
        cancellation everything closes in order (groups, stores, transport, files)."""
        planted.check_environment()
        directory = Path(self.config.data_dir)
        with contextlib.ExitStack() as files:
            membership = _membership(self.placement)
            hosted = [gid for gid, where in sorted(self.placement.items())
                      if where.hosts(self.id)]
            identity = _open_identity(directory, self.cluster.name, self.id, membership,
                                      record=False, hosted=hosted)
            files.callback(identity.close)
            me = self.cluster.node(self.id)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                transport = await nursery.start(self._serve_transport, me)
                # A new directory is claimed only by a node that can listen at its address: a
                # wrong node_id (another machine's node, or one running here) must not leave
                # the directory recorded as that node's for good.
                if identity.load() is None:
                    _record_identity(identity, self.cluster.name, self.id, membership)
                self._transport = transport
                self.peer_port = transport.address[1]
                # Its clock is judged before any group opens: the hybrid clock follows its
                # first reading, however far off it is, and a leader would write it into
                # its groups' logs for good before the first regular check.
                await nursery.start(self._watch_clocks)
                async with contextlib.AsyncExitStack() as groups:
                    for gid in hosted:
                        await self._open_group(groups, nursery, files, directory, gid,
                                               self.placement[gid].conf, transport)
                    _record_opened(identity)
                    self.client_port = await nursery.start(self._serve_clients, me)
                    # Other groups' leaders are reached like a client reaches them (the
                    # primary group of a transaction whose intent needs recovering).
                    self._peers = Database(nursery, await self._describe(None, None),
                                           self.region, request_timeout_s=RECOVERY_TIMEOUT_S,
                                           simulate_wan=True, clock=self.clock)
                    self._peers.unreachable = self.unreachable
                    self._peers_ready.set()
                    log.info("node %d (%s) serving clients on %s:%d, peers on %s:%d", self.id,
                             self.region, me.client_host, self.client_port, me.peer_host,
                             self.peer_port)
                    task_status.started(self)
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._peers._close()  # its connections end only when told
                        nursery.cancel_scope.cancel()

    async def _wait_peers(self) -> Database:
        """The client that reaches other groups' leaders, once the node has made it (see
        :meth:`run`): a group opened early may need another group's leader before that."""
        if self._peers is None:
            await self._peers_ready.wait()
        assert self._peers is not None
        return self._peers

    async def _serve_transport(self, me, *, task_status) -> None:
        latency = {}
        for peer in self.cluster.all_nodes():
            ms = self.cluster.latency_ms(self.region, peer.region)
            if peer.id != self.id and ms > 0:
                latency[peer.id] = LinkModel(delay_s=ms / 1000.0)
        self._links = dict(latency)
        peers = {n.id: (n.peer_host, n.peer_port) for n in self.cluster.all_nodes()
                 if n.id != self.id}
        await serve_tcp_transport(self.id, (me.peer_host, me.peer_port), peers, latency or None,
                                  seed=self._seed, options=TcpOptions(cluster=self.cluster.name),
                                  task_status=task_status)

    async def _open_group(self, groups: contextlib.AsyncExitStack, nursery, files, directory,
                          gid: int, conf, transport) -> None:
        base = directory / "groups" / str(gid)
        storage = RaftStorage(base / "raft")
        files.callback(storage.close)
        store = MVCCStore(base / "state")
        files.callback(store.close)
        lifetime_ns = int(self.cluster.limits.max_txn_lifetime_s * 1e9)
        destinations = [other for other, where in self.placement.items()
                        if other != gid and where.kind == "data"]
        sm = GroupStateMachine(store, max_txn_lifetime_ns=lifetime_ns,
                               origin=self.placement[gid].region,
                               destinations=destinations if self.placement[gid].kind == "data"
                               else (), resolvers=self.resolvers)
        files.callback(sm.close)
        # The hybrid clock starts afresh, the group's closed timestamp does not: below it, the
        # node would stamp entries and answer requests with timestamps under those it had
        # used before the restart, and refuse as "ahead of its clock" the snapshots its
        # groups hand out (see _not_ahead). A clock stepped back meanwhile is then found by
        # _check_own_clock, as without a restart.
        self.clock.restore(sm.closed_ts)
        # Learners (the other regions' replicas) are replicated in heartbeat-sized batches:
        # commits never wait for them, and a batch costs them one fsync instead of one each.
        # Their heartbeats (which pace that replication) go out every fifth interval. Reads
        # that need the latest commit are served by the leader, so followers may learn the
        # commit index with the next message instead of an append of its own. A leader
        # holding a lease (see raft.core.Config.lease_reads) answers ReadIndex at once.
        # New entries go at once only to the followers a commit needs (one of a region's
        # two): the others, like learners, receive them in a batch at each heartbeat (see
        # raft.core.Config.lazy_followers) -- a message, an fsync and an apply per batch
        # instead of per commit on them, a send per commit less on the leader.
        raft_config = RaftConfig(
            id=self.id, election_tick=self.cluster.election_ticks,
            heartbeat_tick=self.cluster.heartbeat_ticks, lazy_learners=True,
            lazy_followers=True,
            learner_heartbeat_every=5, broadcast_commit=False, lease_reads=True,
            idle_heartbeat_tick=idle_heartbeat_ticks(self.cluster.heartbeat_ticks,
                                                     self.cluster.election_ticks))
        raft_node = await groups.enter_async_context(open_raft_node(
            gid, raft_config, storage, transport, sm, bootstrap=conf, seed=self._seed,
            tick_interval=self.cluster.tick_interval_ms / 1000.0,
            snapshot_every=self.cluster.raft_snapshot_every,
            snapshot_keep=self.cluster.raft_snapshot_keep,
            sync_in_loop=self.config.raft_fsync != "thread",
            async_append=self.config.raft_fsync == "async",
            unsafe=frozenset(b for b in UNSAFE_MODES if planted.enabled(b))))
        # Data groups close time while idle so that learners can serve bounded-staleness
        # reads; the meta group's catalog is only read at its leader, which closes on demand.
        # Spread groups close less often: each CLOSE entry there crosses regions.
        kind = self.placement[gid].kind
        replica = GroupReplica(gid, raft_node, sm, self.clock,
                               close_interval={"meta": 0.0, "data": 1.0, "spread": 5.0}[kind],
                               clock_trusted=lambda: self._clock_problem is None)
        self.replicas[gid] = replica
        nursery.start_soon(replica.run_closer)
        nursery.start_soon(replica.run_gc)
        if kind != "meta":
            nursery.start_soon(replica.run_purger)
            nursery.start_soon(self._sweep_intents, replica)
            nursery.start_soon(self._forget_records, replica)
        if kind == "data":
            for other, where in self.placement.items():
                if other != gid and where.kind == "data":
                    nursery.start_soon(self._ship_regional, replica, other)
        if kind == "spread":
            nursery.start_soon(self._keep_leader_home, replica)

    async def _serve_clients(self, me, *, task_status) -> None:
        handlers = {
            "ping": self._ping,
            "describe": self._describe,
            "status": self._status,
            "keyspace.create": self._guarded(self._keyspace_create),
            "keyspace.drop": self._guarded(self._keyspace_drop),
            "keyspace.get": self._guarded(self._keyspace_get),
            "keyspace.list": self._guarded(self._keyspace_list),
            "keyspace.begin": self._guarded(self._keyspace_begin),
            "keyspace.rehome": self._guarded(self._keyspace_rehome),
            "keyspace.settle": self._guarded(self._keyspace_settle),
            "keyspace.fence": self._guarded(self._keyspace_fence),
            "keyspace.copy": self._guarded(self._keyspace_copy),
            "keyspace.unlocked": self._guarded(self._keyspace_unlocked),
            "read": self._guarded(self._read),
            "close": self._guarded(self._close),
            "scan": self._guarded(self._scan),
            "commit": self._guarded(self._commit),
            "prepare": self._guarded(self._prepare),
            "decide": self._guarded(self._decide),
            "resolve": self._guarded(self._resolve),
            "prepared": self._guarded(self._prepared),
            "refresh": self._guarded(self._refresh),
            "remote.apply": self._guarded(self._remote_apply),
            "remote.watermark": self._guarded(self._remote_watermark),
            "conflicts.list": self._guarded(self._conflicts_list),
            "conflicts.drain": self._guarded(self._conflicts_drain),
        }
        await serve_rpc(handlers, me.client_host, me.client_port, clock_now=self.clock.now,
                        clock_update=self.clock.update, max_connections=_max_connections(),
                        task_status=task_status)

    def isolate_from(self, peers) -> None:
        """Fault injection for in-process tests (a network partition): from now on, every
        Raft message, clock ping and node-to-node request this node sends to ``peers`` is
        lost (clients still reach it). An empty set heals. Call it on both sides for a two-way
        cut."""
        self.unreachable = frozenset(peers)
        if self._peers is not None:
            self._peers.unreachable = self.unreachable
        if self._transport is not None:
            for peer in (n.id for n in self.cluster.all_nodes() if n.id != self.id):
                base = self._links.get(peer)
                if peer in self.unreachable:
                    self._transport.set_link(peer, LinkModel(
                        delay_s=base.delay_s if base else 0.0, drop_probability=1.0))
                else:
                    self._transport.set_link(peer, base)

    # ------------------------------------------------------------------ clocks

    async def _watch_clocks(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Pings every peer each :data:`PING_INTERVAL_S` and checks the clock after each
        round. Started once the first round is checked: every peer answered its first ping,
        or failed to, or :data:`PING_INTERVAL_S` passed (a peer not up yet tells nothing)."""
        others = [n for n in self.cluster.all_nodes() if n.id != self.id]
        if not others:
            task_status.started()
            return
        async with trio.open_nursery() as nursery:
            untried = {peer.id for peer in others}
            first_round = trio.Event()

            def tried(peer_id: int) -> None:
                untried.discard(peer_id)
                if not untried:
                    first_round.set()

            for peer in others:
                nursery.start_soon(self._ping_peer, peer, tried)
            with trio.move_on_after(PING_INTERVAL_S):
                await first_round.wait()
            self._check_clocks()
            if self._clock_problem == self._unmeasured:
                # Usual for the first node of a cluster started: its peers come up next.
                log.info("node %d does not serve yet: %s", self.id, self._unmeasured)
            task_status.started()
            rounds = 0
            while True:
                await trio.sleep(PING_INTERVAL_S)
                # One timer for every peer's ping: a timer that expires costs this node a
                # wake-up (and trio a cancel scope), which is more than the ping itself.
                self._ping_round.unpark_all()
                self._check_clocks()
                rounds += 1
                if rounds == UNMEASURED_WARN_ROUNDS and self._clock_problem == self._unmeasured:
                    log.warning("node %d still does not serve: %s", self.id, self._unmeasured)

    def _check_clocks(self) -> None:
        """One check of the clock: stops serving (and hands its groups over) while it is
        suspect, serves again once it is not."""
        try:
            physical = self.clock.physical_ns()
            self.monitor.check(physical)
            self._check_own_clock(physical)
            self._check_measured(physical)
        except ClockOffsetError as exc:
            if self._clock_problem is None:
                log.error("node %d stops serving: %s", self.id, exc)
            elif self._clock_problem == self._unmeasured and str(exc) != self._unmeasured:
                log.error("node %d does not serve: %s", self.id, exc)
            self._clock_problem = str(exc)
            self._hand_over_leadership()
        else:
            if self._clock_problem == self._unmeasured:
                log.info("node %d serves: its peers find its clock within bounds", self.id)
            elif self._clock_problem is not None:
                log.warning("node %d serves again: clock offsets back within bounds",
                            self.id)
            self._clock_problem = None
            self._trust_jumped_clock(physical)

    def _trust_jumped_clock(self, physical: int) -> None:
        """After the physical clock jumped forward, lets timestamps follow it again once the
        peers vouch for it: every fresh measurement was taken after the jump, its ping sent
        after it (one in flight across the jump mixes both clocks, and its uncertainty hides
        the jump), and they are within bounds (the caller's check passed). A jump that set a
        wrong clock right is taken so; a wrong one never is, and never reaches a timestamp
        (see :class:`~engine.hlc.HybridClock`), while the monitor stops the node."""
        since = self.clock.jumped_since
        if since is None:
            return
        fresh = self.monitor.fresh(physical)
        if fresh and all(self._measured_mono.get(m.peer, since - 1) >= since for m in fresh):
            log.warning("node %d: its physical clock jumped forward, and its peers find it "
                        "right as it is now: timestamps follow it again", self.id)
            self.clock.trust_physical()

    def _check_measured(self, physical: int) -> None:
        """Raises until a check finds a fresh measurement of a peer (the monitor's check,
        which ran first, found it within bounds); from then on the clock has been measured
        once, and a node cut off from every peer later knows of nothing wrong."""
        if self._clock_measured:
            return
        if not self.monitor.fresh(physical):
            raise ClockOffsetError(self._unmeasured)
        self._clock_measured = True

    def _check_own_clock(self, physical: int) -> None:
        """Raises while this node's hybrid clock is further ahead of its own physical clock
        than the maximum clock offset. Remote timestamps can take it only that far ahead, so
        the physical clock went backwards since (stepped back after running ahead): the
        timestamps this node would issue are as far off as that clock was, whatever the
        peers' measurements of the physical clock say now. Ends once the physical clock has
        caught up."""
        ahead = self.clock.last - physical
        limit = self.cluster.max_clock_offset_ns
        if ahead > limit:
            raise ClockOffsetError(
                f"node {self.id}: its hybrid clock is {ahead / 1e6:.3f} ms ahead of its "
                f"physical clock, beyond the maximum clock offset of {limit / 1e6:.3f} ms (the "
                f"physical clock went backwards); it serves again once the physical clock has "
                f"caught up")

    def _hand_over_leadership(self) -> None:
        """Transfers away every group this node leads: a leader proposes timestamps from its
        clock, and this clock is suspect. Repeated each check while the problem lasts. Not
        to a voter that said it does not serve either (see _keep_leader_home)."""
        for gid, replica in self.replicas.items():
            if not replica.node.is_leader:
                continue
            voters = [v for v in self.placement[gid].conf.voters
                      if v != self.id and v not in self._peers_not_serving]
            if not voters:
                continue  # nobody to hand over to (a single-voter group), or none that serves
            target = voters[self.monitor_rotation % len(voters)]
            self.monitor_rotation += 1
            try:
                replica.node.transfer_leader(target)
                log.warning("node %d hands group %d over to node %d (clock offset)",
                            self.id, gid, target)
            except Exception as exc:  # lost leadership meanwhile, or closing: next check
                log.info("node %d could not hand group %d over: %s", self.id, gid, exc)

    async def _ping_peer(self, peer, tried: Callable[[int], None] = lambda peer_id: None
                         ) -> None:
        """Measures the clock offset to one peer, forever, reconnecting as needed; calls
        ``tried(peer.id)`` after every ping answered or failed, and every failed connection."""
        # A node no peer has measured yet does not serve: while it waits, it tries again
        # soon (peers started just after it are measured within a fraction of a second).
        retry_s = UNMEASURED_RETRY_S
        while True:
            try:
                # Pings cross a partition (see isolate_from) no more than Raft messages do.
                if peer.id not in self.unreachable:
                    async with connect_rpc(peer.client_host, peer.client_port,
                                           connect_timeout_s=2.0) as conn:
                        await self._ping_until_lost(peer, conn, tried)
            except (OSError, MeridianError):  # no connection: try again
                pass
            tried(peer.id)
            if self._clock_measured:
                await trio.sleep(PING_INTERVAL_S)
            else:
                await trio.sleep(retry_s)
                retry_s = min(PING_INTERVAL_S, 2 * retry_s)

    async def _ping_until_lost(self, peer, conn,
                               tried: Callable[[int], None] = lambda peer_id: None) -> None:
        """Pings ``peer`` over ``conn`` once per round of :meth:`_watch_clocks` (every
        :data:`PING_INTERVAL_S`) until a ping fails; calls ``tried(peer.id)`` after each.

        Raises nothing but Cancelled: an error leaving the ``connect_rpc`` block at the moment
        it is cancelled would leave its nursery grouped with the Cancelled, which no except
        clause of the caller matches, and the outer scope would then hand the bare error up
        through the node's nursery, stopping the node."""
        while True:
            if peer.id in self.unreachable:
                return  # cut off (see isolate_from): as a lost connection
            # The monotonic time first: a jump seen before it is in ``sent`` as well.
            sent_mono, sent = _boot_clock_ns(), self.clock.physical_ns()
            try:
                with trio.move_on_after(2 * PING_INTERVAL_S):
                    reply = await conn.call("ping", None)
                    received = self.clock.physical_ns()
                    held = self.monitor.record(peer.id, sent, reply["physical_ns"], received)
                    if held.measured_at_ns == received:
                        self._measured_mono[peer.id] = sent_mono
                    if reply.get("serves", True):
                        self._peers_not_serving.discard(peer.id)
                    else:
                        self._peers_not_serving.add(peer.id)
                    if not self._clock_measured:
                        self._check_clocks()  # serves once measured, not a round later
            except (MeridianError, KeyError, TypeError):
                return  # the connection is gone, or the peer answered nonsense: reconnect
            tried(peer.id)
            await self._ping_round.park()  # the next round (see _watch_clocks)

    # ------------------------------------------------------------------ handlers

    def _guarded(self, handler: Callable):
        """Wraps a data or catalog handler: refuses while the clock is suspect, and turns the
        library's errors into RPC error codes."""

        async def guarded(payload, ctx):
            if self._clock_problem is not None:
                raise RemoteError("clock_offset", f"node {self.id} refuses to serve: "
                                  f"{self._clock_problem}")
            if not isinstance(payload, dict):
                raise RemoteError("invalid_argument", "the payload must be a map")
            try:
                return await handler(payload)
            except NotLeaderError as exc:
                raise RemoteError("not_leader", str(exc), retryable=True,
                                  details={"group": exc.group, "leader": exc.leader}) from None
            except TransactionConflictError as exc:
                raise RemoteError("conflict", str(exc), retryable=True,
                                  details={"reason": exc.reason, "key": exc.key}) from None
            except AmbiguousCommitError as exc:
                raise RemoteError("ambiguous", str(exc)) from None
            except RecordTooLargeError as exc:
                raise RemoteError("too_large", str(exc)) from None
            except LimitExceededError as exc:
                raise RemoteError("limit_exceeded", str(exc)) from None
            except InvalidArgumentError as exc:
                raise RemoteError("invalid_argument", str(exc)) from None

        return guarded

    async def _ping(self, payload, ctx):
        return {"node": self.id, "physical_ns": self.clock.physical_ns(),
                "serves": self._clock_problem is None}

    async def _describe(self, payload, ctx):
        c = self.cluster
        names = c.region_names
        return {
            "cluster": c.name,
            "node": self.id,
            "region": self.region,
            "regions": list(names),
            "nodes": {n.id: [n.region, n.client_host, n.client_port] for n in c.all_nodes()},
            "groups": {gid: {"region": p.region, "kind": p.kind, "voters": list(p.conf.voters),
                             "learners": list(p.conf.learners),
                             "leader": self.replicas[gid].node.leader
                             if gid in self.replicas else 0}
                       for gid, p in self.placement.items()},
            "wan_latency_ms": [[a, b, c.latency_ms(a, b)] for i, a in enumerate(names)
                               for b in names[i + 1:]],
            "limits": asdict(c.limits),
            "max_clock_offset_ns": c.max_clock_offset_ns,
        }

    async def _status(self, payload, ctx):
        out = {}
        for gid, r in self.replicas.items():
            s = r.node.statistics()
            out[gid] = {**asdict(s), "closed_ts": r.closed_ts, "gc_removed": r.gc_removed,
                        "gc_watermark": r.sm.store.gc_watermark, "purges": r.purges}
        # Regional writes are applied here only while this node leads its region's data
        # group: once another node does, these samples are frozen, and reported next to the
        # leader's they would pass for the pair's current lag.
        leads = any(r.node.is_leader for gid, r in self.replicas.items()
                    if self.placement[gid].kind == "data"
                    and self.placement[gid].region == self.region)
        lag = {}
        now = self.clock.now()
        for origin, samples in self._lag_ms.items() if leads else ():
            _forget_old_lag(samples, now)
            ordered = sorted(ms for _, ms in samples)
            if n := len(ordered):  # nearest ranks: the smallest k with k >= q·n
                lag[origin] = {"samples": n, "p50": ordered[(n + 1) // 2 - 1],
                               "p99": ordered[(99 * n + 99) // 100 - 1]}
        return {"node": self.id, "region": self.region, "cluster": self.cluster.name,
                "groups": out,
                "bytes_by_region": self._bytes_by_region(),
                "clock_problem": self._clock_problem, "replication_lag_ms": lag,
                "replication_behind_ms": self._replication_behind_ms(),
                "replication_broken": [[o, d, t] for (o, d), t in
                                       self.replication_broken.items()]}

    def _replication_behind_ms(self) -> dict[str, float]:
        """Per other region: the age of the oldest regional write of the data group this
        node leads that the region has not applied yet, as far as this node knows (0: none
        waiting). The lag samples only count writes that arrived; this grows while a stream
        is stopped (a region cut off, a batch refused), which is when it matters."""
        out = {}
        # The time timestamps follow, as the writes' commit timestamps do: not the wall
        # clock, whose jump forward would pass for an hour of lag (see _remote_apply).
        now = self.clock.now()
        for gid, replica in self.replicas.items():
            if self.placement[gid].kind != "data" or not replica.node.is_leader:
                continue
            for destination, where in self.placement.items():
                if destination == gid or where.kind != "data":
                    continue
                applied = max(self._applied_by.get((gid, destination), 0),
                              replica.sm.shipped(destination))
                oldest = replica.sm.outbox_after(applied, limit=1)
                out[where.region] = max(0.0, (now - oldest[0][0]) / 1e6) if oldest else 0.0
        return out

    def _bytes_by_region(self) -> dict[str, dict[str, int]]:
        """Bytes this node exchanged with the nodes of each region (its own included): Raft
        frames over the transport and its requests to other nodes (two-phase commit,
        regional replication, recoveries); clients' requests to it are not counted."""
        regions: dict[str, dict[str, int]] = {}
        counters = []
        if self._transport is not None and hasattr(self._transport, "bytes_by_peer"):
            counters.append(self._transport.bytes_by_peer())
        if self._peers is not None:
            counters.append(self._peers.bytes_by_node())
        for by_peer in counters:
            for peer, (sent, received) in by_peer.items():
                try:
                    region = self.cluster.node(peer).region
                except (KeyError, InvalidArgumentError):
                    continue
                r = regions.setdefault(region, {"sent": 0, "received": 0})
                r["sent"] += sent
                r["received"] += received
        return regions

    def _not_ahead(self, name: str, ts: int) -> None:
        """Refuses a timestamp further ahead of this node's clock than the maximum clock
        offset. A read or refresh closes the group's time up to the timestamp it names, and a
        decision or resolution closes it up to its commit timestamp: one from the far future
        would push every later snapshot and commit of the group there, for good (at MAX_TS no
        transaction that reads can commit again). A keyspace's ``moved_ts`` and
        ``handoff_ts``, kept in the catalog, are floors of its reads and of the entry that
        lifts its write fence: one from the far future would leave it fenced by every move.
        The clock is the one timestamps follow: a wall clock that jumped forward is not that
        clock until the peers vouch for it (see :class:`~engine.hlc.HybridClock`)."""
        limit = self.cluster.max_clock_offset_ns
        if ts <= self.clock.last + limit:
            return  # the usual case, without issuing a timestamp (last <= now())
        if ts > self.clock.now() + limit:
            raise InvalidArgumentError(
                f"{name} {ts} is ahead of node {self.id}'s clock by more than the maximum "
                f"clock offset ({self.cluster.max_clock_offset_ms} ms)")

    def _replica(self, payload) -> GroupReplica:
        """The replica of the data (or spread) group a data request names. The meta group is
        refused: the catalog changes only through the ``keyspace.*`` requests, which keep its
        invariants (a record per name, ids never reused); a plain commit there could write
        any record, or set the next keyspace id back."""
        gid = payload.get("group")
        replica = self.replicas.get(gid) if type(gid) is int else None
        if replica is None:
            raise RemoteError("unknown_group", f"node {self.id} has no replica of group {gid!r}")
        if self.placement[gid].kind == "meta":
            raise InvalidArgumentError(f"group {gid} holds the catalog, not keyspaces: it is "
                                       f"read and changed through keyspace requests only")
        return replica

    async def _read(self, p):
        replica = self._replica(p)
        asked = p.get("keys")
        if not isinstance(asked, list) or not all(type(k) is bytes for k in asked):
            raise InvalidArgumentError("keys must be a list of bytes")
        # A page of keys at most, as a scan's: the checks and reads below run on the event
        # loop, which every group of the node shares (a million keys would stall it a second).
        keys = asked[:SCAN_PAGE_ITEMS]
        ts, until = await self._read_ts(replica, p)
        generation = self._begin_read(replica)
        prefixes = [k[:KEY_PREFIX_SIZE] for k in keys]
        self._check_fences(replica, prefixes, ts)
        await self._wait_intents(replica, ts, lambda: replica.intents(keys, until),
                                 restart=not _is_stale(p), until=until)
        with self._reading(replica, generation, prefixes, ts):
            if until > ts:
                store = replica.sm.store
                for k in keys:
                    version = store.get_version(k, until)
                    if version is not None and version[0] > ts:
                        raise _restart(replica, ts, until)
            # The values of a prefix of the keys, as many as fit SCAN_PAGE_BYTES (at least
            # one) and SCAN_PAGE_ITEMS: ``more`` when the caller must ask again for the rest.
            values: list[bytes | None] = []
            size = 0
            for k in keys:
                value = replica.get(k, ts)
                values.append(value)
                size += len(k) + len(value or b"")
                if size >= SCAN_PAGE_BYTES:
                    break
        return {"ts": ts, "until": until, "values": values, "more": len(values) < len(asked)}

    async def _scan(self, p):
        replica = self._replica(p)
        start, end = p.get("start"), p.get("end")
        limit, reverse = p.get("limit"), bool(p.get("reverse", False))
        if type(start) is not bytes or not (end is None or type(end) is bytes):
            raise InvalidArgumentError("start must be bytes and end bytes or nil")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidArgumentError("limit must be a non-negative int or nil")
        # Only the fence of the keyspace the range starts in is checked: a range running on
        # into the keyspaces after it would read them whatever their fences (moved away, or
        # dropped and not erased yet).
        prefix = start[:KEY_PREFIX_SIZE]
        if len(prefix) < KEY_PREFIX_SIZE or (prefix != b"\xff" * KEY_PREFIX_SIZE and (
                end is None or end > keyspace_bounds(int.from_bytes(prefix, "big"))[1])):
            shown = None if end is None else end[:80]
            raise InvalidArgumentError(f"a scan reads one keyspace: [{start[:80]!r}, {shown!r}) "
                                       f"runs past the keys of the one its start is in")
        ts, until = await self._read_ts(replica, p)
        generation = self._begin_read(replica)
        # A keyspace move reads its own copy, whatever the fence.
        prefixes = [] if p.get("ignore_fence") is True else [start[:KEY_PREFIX_SIZE]]
        self._check_fences(replica, prefixes, ts)
        page = SCAN_PAGE_ITEMS if limit is None else min(limit, SCAN_PAGE_ITEMS)

        def pending() -> list[Intent]:
            # Only the part of the range the page covers is read: a page cut short by the
            # limit or its bounds waits for no transaction pending past its last key. Found
            # again as they are resolved: the page may then cover more (a key deleted).
            found = replica.intents_in(start, end, until)
            if not found:
                return found  # the common case: no page to read ahead of the read itself
            items = replica.scan(start, end, ts, limit=page, reverse=reverse,
                                 max_bytes=SCAN_PAGE_BYTES)
            if _page_full(items, page):
                if reverse:
                    return replica.intents_in(items[-1][0], end, until)
                return replica.intents_in(start, items[-1][0] + b"\x00", until)
            return found

        await self._wait_intents(replica, ts, pending, restart=not _is_stale(p), until=until)
        with self._reading(replica, generation, prefixes, ts):
            items = replica.scan(start, end, ts, limit=page, reverse=reverse,
                                 max_bytes=SCAN_PAGE_BYTES)
            if until > ts and items != replica.scan(start, end, until, limit=page,
                                                    reverse=reverse, max_bytes=SCAN_PAGE_BYTES):
                raise _restart(replica, ts, until)
        # Cut short by the page's bounds rather than by the caller's limit or the range's end
        # (a page that ends exactly where the range does says more; the next one is empty).
        more = (limit is None or len(items) < limit) and _page_full(items, page)
        return {"ts": ts, "until": until, "items": [[k, v] for k, v in items], "more": more}

    def _begin_read(self, replica: GroupReplica) -> int:
        """Once a read knows its timestamp: the replica's restore generation, for
        :meth:`_reading`. A replica installing a snapshot refuses (retryable: its region's
        clients ask a voter instead)."""
        generation = replica.sm.restore_generation
        if generation & 1:
            raise RemoteError("not_closed", f"group {replica.group} on node {self.id} is "
                              f"installing a snapshot", retryable=True)
        return generation

    @contextlib.contextmanager
    def _reading(self, replica: GroupReplica, generation: int, prefixes, ts: int):
        """Around a read of the store: refuses it if what it checked or read may have
        changed under it -- a snapshot install began since :meth:`_begin_read` (it runs in a
        thread: the store, the closed timestamp, the intents and the fences all change), or
        a drop applied while the read waited for intents (PURGE then erases the keyspace's
        data)."""
        try:
            yield
        except (InvalidArgumentError, TransactionConflictError):
            # e.g. below a watermark that an install brought: refused for the install
            self._check_generation(replica, generation)
            raise
        self._check_generation(replica, generation)
        self._check_fences(replica, prefixes, ts)

    def _check_generation(self, replica: GroupReplica, generation: int) -> None:
        if replica.sm.restore_generation != generation:
            raise RemoteError("not_closed", f"group {replica.group} on node {self.id} "
                              f"installed a snapshot during the read", retryable=True)

    def _check_fences(self, replica: GroupReplica, prefixes, ts: int) -> None:
        """Refuses a read of a keyspace that moved away from this group, or that moved here
        after the read's snapshot (``moved``: the reader looks the keyspace up again)."""
        if not replica.sm._fences:
            return
        prefix = replica.sm.fenced(ts, reads=prefixes)
        if prefix is not None:
            away = replica.sm.fence(prefix)[0] >= 2
            raise RemoteError("moved", f"group {replica.group}: the keyspace moved "
                              f"{'away' if away else 'here after this snapshot'}",
                              retryable=True)

    async def _read_ts(self, replica: GroupReplica, p) -> tuple[int, int]:
        """The timestamp a read is served at, and the end of its *uncertainty window*.

        ``ts`` 0: a new strong snapshot (leader); with ``min_ts`` and ``at_min``, the read is
        served at exactly ``min_ts`` (a transaction's snapshot, fixed in another group) and
        the window reaches this group's new snapshot: a commit in between may have been
        acknowledged before the transaction began, so if the read sees one it is told to move
        its snapshot (``restart``) instead of missing it. ``ts`` > 0: exactly that timestamp
        (any replica, waiting for it to close), with the window up to ``until``.
        ``bounded_ns`` > 0: this replica's closed timestamp, if it is no older than that."""
        ts, min_ts, bounded = p.get("ts", 0), p.get("min_ts", 0), p.get("bounded_ns", 0)
        until = p.get("until", 0)
        for name, v in (("ts", ts), ("min_ts", min_ts), ("bounded_ns", bounded),
                        ("until", until)):
            if type(v) is not int or not 0 <= v <= MAX_TS:
                raise InvalidArgumentError(f"{name} must be an int in 0..{MAX_TS}")
            if name != "bounded_ns":
                self._not_ahead(name, v)
        if bounded:
            # At least 1, whatever the bound: a replica that has closed nothing yet has no
            # snapshot to read at.
            oldest = self.clock.now() - bounded
            await self._wait_closed(replica, max(oldest, min_ts, 1))
            return replica.closed_ts, replica.closed_ts
        if ts == 0 and planted.enabled("read_above_closed"):
            replica._require_leader()
            snapshot = max(min_ts, self.clock.now())  # not closed: later commits may land below
            return snapshot, snapshot
        if ts == 0:
            snapshot = await replica.snapshot_ts(min_ts)
            if min_ts and p.get("at_min") is True:
                return min_ts, snapshot
            return snapshot, snapshot
        until = max(ts, until)
        await self._wait_closed(replica, until)
        return ts, until

    async def _wait_closed(self, replica: GroupReplica, ts: int) -> None:
        if replica.closed_ts >= ts:
            return
        with trio.move_on_after(STALE_READ_WAIT_S):
            if replica.node.is_leader:
                await replica.close_up_to(ts)
                return
            with trio.move_on_after(CLOSE_ASK_AFTER_S):
                await replica.wait_closed(ts)
                return
            self._ask_leader_to_close(replica.group, ts)
            await replica.wait_closed(ts)
            return
        raise RemoteError("not_closed", f"group {replica.group} on node {self.id} did not "
                          f"close timestamp {ts} within {STALE_READ_WAIT_S} s "
                          f"(closed: {replica.closed_ts})", retryable=True)

    def _ask_leader_to_close(self, group: int, ts: int) -> None:
        """Asks the group's leader, in the background, to close its time up to ``ts``: one
        request per group at a time, for the highest timestamp asked for when it is sent."""
        asked = self._close_asked.get(group)
        if asked is not None:
            self._close_asked[group] = max(asked, ts)
            return
        if self._nursery is None or self._peers is None:
            return
        self._close_asked[group] = ts
        self._nursery.start_soon(self._send_close, group)

    async def _send_close(self, group: int) -> None:
        try:
            while True:
                ts = self._close_asked[group]
                with trio.move_on_after(STALE_READ_WAIT_S):
                    with contextlib.suppress(MeridianError, OSError):
                        await self._peers._call_group(group, "close",
                                                      {"group": group, "ts": ts})
                if self._close_asked[group] == ts:
                    return
        finally:
            del self._close_asked[group]

    async def _close(self, p):
        """Closes the group's time up to ``ts`` (its leader): a replica elsewhere has a stale
        read waiting for it. Answers ``{}``."""
        replica = self._replica(p)
        ts = p.get("ts")
        if type(ts) is not int or not 1 <= ts <= MAX_TS:
            raise InvalidArgumentError(f"ts must be an int in 1..{MAX_TS}")
        self._not_ahead("ts", ts)
        replica._require_leader()  # not passed on: the asking replica finds the leader
        with trio.move_on_after(STALE_READ_WAIT_S):
            await replica.close_up_to(ts)
        return {}

    async def _commit(self, p):
        replica = self._replica(p)
        txn_id, read_ts, pairs, reads = self._check_txn(p)
        merges = self._check_merges(p.get("merges", []), pairs)
        serializable = bool(p.get("serializable", False))
        if not serializable:
            reads = []  # validated only under serializable: not worth a byte of the log
        _check_key_count(replica.group, [k for k, _ in pairs] + [m[0] for m in merges], [],
                         reads)
        result = await replica.commit(txn_id, read_ts, pairs, reads, serializable=serializable,
                                      merges=merges, spans=_spans(p) if serializable else [])
        if result.committed:
            return {"ts": result.ts}
        self._refuse(txn_id, result, replica)

    def _check_merges(self, merges: object, pairs: list[tuple[bytes, bytes | None]],
                      ) -> list[tuple[bytes, str, bytes | None]]:
        """Writes to regional keyspaces: ``[key, resolver, value]`` lists. They count toward
        the transaction's key and byte limits with its plain writes ``pairs``."""
        if not isinstance(merges, list):
            raise InvalidArgumentError("merges must be a list")
        limits = self.cluster.limits
        if len(pairs) + len(merges) > limits.max_txn_keys:
            raise LimitExceededError(f"{len(pairs) + len(merges)} keys written; the limit is "
                                     f"{limits.max_txn_keys} per transaction")
        total = sum(len(k) + (len(v) if v else 0) for k, v in pairs)
        out = []
        for m in merges:
            if not (isinstance(m, list) and len(m) == 3 and type(m[0]) is bytes
                    and is_resolver_name(m[1]) and (m[2] is None or type(m[2]) is bytes)):
                raise InvalidArgumentError(
                    f"each merge must be [key: bytes, resolver: one of {RESOLVER_NAMES} or "
                    f"'app:<name>', value: bytes|nil]")
            key, resolver, value = m
            if resolver not in RESOLVER_NAMES and resolver not in self.resolvers:
                # Committed, it would stop every replica of the group, at every restart.
                raise InvalidArgumentError(f"resolver {resolver!r} is not configured on this "
                                           f"node (its [cluster.resolvers])")
            # A delete only to the store's limit: a key written under a larger max_key_size
            # than today's can still be removed.
            key_limit = limits.max_key_size if value is not None else MAX_KEY_SIZE
            if not 0 < len(key) <= key_limit:
                raise RecordTooLargeError(f"key {user_key(key)!r:.80} is {len(key)} bytes with "
                                          f"its keyspace prefix: keys are 1..{key_limit} bytes")
            if value is not None and len(value) > limits.max_value_size:
                raise RecordTooLargeError(f"value of {len(value)} bytes for key "
                                          f"{user_key(key)!r:.80}: the limit is "
                                          f"{limits.max_value_size}")
            if value is not None and len(value) > MAX_APP_VALUE_SIZE:
                # Else the group would refuse the entry as malformed, after consensus on it.
                raise RecordTooLargeError(
                    f"value of {len(value)} bytes: a regional keyspace's limit is "
                    f"{MAX_APP_VALUE_SIZE} (the store's less the room of a conflict-log "
                    f"record, which keeps a losing write's value)")
            total += len(key) + (len(value) if value else 0)
            out.append((key, resolver, value))
        if total > limits.max_txn_bytes:
            raise LimitExceededError(f"{total} bytes written; the limit is "
                                     f"{limits.max_txn_bytes} per transaction")
        return out

    def _check_writes(self, writes: list, limits: Limits | None = None,
                      ) -> list[tuple[bytes, bytes | None]]:
        """``writes`` as pairs, within ``limits`` (default: the cluster's)."""
        limits = limits or self.cluster.limits
        if len(writes) > limits.max_txn_keys:
            raise LimitExceededError(f"{len(writes)} keys written; the limit is "
                                     f"{limits.max_txn_keys} per transaction")
        total = 0
        pairs = []
        for w in writes:
            if not (isinstance(w, list) and len(w) == 2 and type(w[0]) is bytes
                    and (w[1] is None or type(w[1]) is bytes)):
                raise InvalidArgumentError("each write must be [key: bytes, value: bytes|nil]")
            k, v = w
            key_limit = limits.max_key_size if v is not None else MAX_KEY_SIZE  # as a merge's
            if not 0 < len(k) <= key_limit:
                raise RecordTooLargeError(f"key {user_key(k)!r:.80} is {len(k)} bytes with its "
                                          f"keyspace prefix: keys are 1..{key_limit} bytes")
            if v is not None and len(v) > limits.max_value_size:
                raise RecordTooLargeError(f"value of {len(v)} bytes for key "
                                          f"{user_key(k)!r:.80}: the limit is "
                                          f"{limits.max_value_size}")
            total += len(k) + (len(v) if v else 0)
            pairs.append((k, v))
        if total > limits.max_txn_bytes:
            raise LimitExceededError(f"{total} bytes written; the limit is "
                                     f"{limits.max_txn_bytes} per transaction")
        return pairs

    # ------------------------------------------------------------------ two-phase commit

    async def _prepare(self, p):
        replica = self._replica(p)
        txn_id, read_ts, pairs, reads = self._check_txn(p)
        locks, primary = p.get("locks", []), p.get("primary")
        if not isinstance(locks, list) or not all(type(k) is bytes and k for k in locks):
            raise InvalidArgumentError("locks must be a list of keys")
        if type(primary) is not int or primary not in self.placement or primary == META_GROUP:
            raise InvalidArgumentError(f"primary must be a data group, not {primary!r}")
        deadline = self.clock.now() + int(INTENT_TIMEOUT_S * 1e9)
        serializable = bool(p.get("serializable", False))
        if not serializable:
            reads = []  # validated only under serializable: not worth a byte of the log
        _check_key_count(replica.group, [k for k, _ in pairs], locks, reads)
        result = await replica.prepare(txn_id, read_ts, pairs, reads, locks, primary=primary,
                                       deadline=deadline, serializable=serializable,
                                       spans=_spans(p) if serializable else [])
        if result.outcome is Outcome.PREPARED:
            return {"ts": result.ts}
        self._refuse(txn_id, result, replica)

    async def _decide(self, p):
        replica = self._replica(p)
        txn_id, commit_ts = _fate(p)
        self._not_ahead("commit_ts", commit_ts)
        since, participants = p.get("since", 0), p.get("participants", [])
        if type(since) is not int or not 0 <= since <= MAX_TS:
            raise InvalidArgumentError(f"since must be an int in 0..{MAX_TS}")
        if not (isinstance(participants, list) and len(participants) <= 4096
                and all(type(g) is int and g in self.placement for g in participants)):
            raise InvalidArgumentError("participants must be a list of group ids")
        if commit_ts and not (since and replica.group in participants):
            raise InvalidArgumentError("a commit decision names the transaction's first "
                                       "prepare timestamp (since) and its participants, this "
                                       "group among them")
        result = await replica.decide(txn_id, commit_ts, since, participants)
        if result.outcome is Outcome.INVALID:
            raise InvalidArgumentError(f"decision refused: {result.reason}")
        return {"committed": result.outcome is Outcome.COMMITTED, "ts": result.ts}

    async def _resolve(self, p):
        replica = self._replica(p)
        txn_id, commit_ts = _fate(p)
        self._not_ahead("commit_ts", commit_ts)
        result = await replica.resolve(txn_id, commit_ts)
        if result.outcome is Outcome.INVALID:
            raise InvalidArgumentError(f"resolve refused: {result.reason}")
        return {}

    async def _prepared(self, p):
        """Which of ``txn_ids`` still have intents in this group (the leader, after a
        linearizable read): a primary group asks before it forgets their records."""
        replica = self._replica(p)
        txn_ids = p.get("txn_ids")
        if not (isinstance(txn_ids, list) and len(txn_ids) <= 10_000
                and all(type(t) is int and 0 < t < 2**64 for t in txn_ids)):
            raise InvalidArgumentError("txn_ids must be a list of at most 10,000 ids")
        await replica.snapshot_ts()
        return {"prepared": [t for t in txn_ids if replica.sm.is_prepared(t)]}

    async def _forget_records(self, replica: GroupReplica) -> None:
        """Runs until cancelled: while leading, deletes transaction records past their
        retention (FORGET in ``engine.group``). An abort goes at once; a commit once every
        other participant says it holds no intent of it (one still holding some is told the
        fate again, and asked on the next round).

        Each interval, rounds follow one another until they have looked at every record old
        enough once: a round takes a bounded batch, and a single round an interval would
        collect at most :data:`RECORD_GC_BATCH` records a minute, fewer than a busy primary
        group decides (the others would pile up for good)."""
        while True:
            await trio.sleep(RECORD_GC_INTERVAL_S)
            after = self._forget_after.get(replica.group, 0)
            while replica.node.is_leader and self._clock_problem is None:
                try:
                    await self._forget_round(replica)
                except (MeridianError, RemoteError, OSError) as exc:
                    log.info("node %d: transaction records of group %d not collected yet: %s",
                             self.id, replica.group, exc)
                    break
                # Stopped at a full batch: the next round goes on after it, unless this one
                # went back to the oldest records (the pass has seen them all).
                following = self._forget_after.get(replica.group)
                if following is None or following <= after:
                    break
                after = following

    async def _forget_round(self, replica: GroupReplica) -> int:
        """One round of :meth:`_forget_records`; returns how many records it forgot.

        A round looks at the records after those the previous one looked at, and once it
        reaches the newest, the next one starts from the oldest again: commits that a
        participant keeps from being forgotten (it holds intents of them, or does not
        answer) must not hide the records behind them, aborts included, round after round."""
        after = self._forget_after.pop(replica.group, 0)
        records = replica.sm.old_records(limit=RECORD_GC_BATCH, after=after)
        if not records and after:  # the previous round ended at the newest
            records = replica.sm.old_records(limit=RECORD_GC_BATCH)
        if len(records) == RECORD_GC_BATCH:  # more may follow: the next round goes on there
            self._forget_after[replica.group] = replica.sm.decided_at(records[-1][0]) or 0
        if not records:
            return 0
        forget = [txn for txn, committed, _, _ in records if not committed]
        asks: dict[int, list[tuple[int, int]]] = {}
        for txn, committed, commit_ts, participants in records:
            if committed:
                for g in participants:
                    asks.setdefault(g, []).append((txn, commit_ts))
        blocked: set[int] = set()
        for group, txns in asks.items():
            if group == replica.group:
                still = [t for t, _ in txns if replica.sm.is_prepared(t)]
            else:
                peers = await self._wait_peers()
                try:
                    with trio.fail_after(RECOVERY_TIMEOUT_S):
                        reply = await peers._call_group(
                            group, "prepared", {"group": group, "txn_ids": [t for t, _ in txns]})
                    still = reply["prepared"]
                except (MeridianError, RemoteError, OSError, trio.TooSlowError):
                    # Unknown: all kept for now, and none told its fate (a call each, to a
                    # group that did not answer one); the next round asks again.
                    blocked.update(t for t, _ in txns)
                    continue
            blocked.update(still)
            fate = dict(txns)
            for txn in still:  # told again; asked again next round
                if group == replica.group:
                    await replica.resolve(txn, fate[txn])
                else:
                    peers._resolve_later(group, txn, fate[txn])
        forget += [txn for txn, committed, _, _ in records if committed and txn not in blocked]
        if forget:
            await replica.forget(forget)
        return len(forget)

    async def _refresh(self, p):
        """Can a transaction's reads in this group move from snapshot ``from_ts`` to
        ``to_ts``? Yes when none of its keys, nor any key in its scanned spans, changed in
        between."""
        replica = self._replica(p)
        keys, spans = p.get("keys", []), _spans(p)
        from_ts, to_ts = p.get("from_ts"), p.get("to_ts")
        if not (type(from_ts) is int and type(to_ts) is int and 0 < from_ts <= to_ts <= MAX_TS):
            raise InvalidArgumentError("from_ts and to_ts must be timestamps, from_ts <= to_ts")
        self._not_ahead("to_ts", to_ts)
        if not isinstance(keys, list) or not all(type(k) is bytes for k in keys):
            raise InvalidArgumentError("keys must be a list of bytes")
        replica._require_leader()
        store = replica.sm.store

        def too_old() -> bool:
            # Versions at from_ts may be garbage-collected (a delete with everything before
            # it): a key that changed would look unchanged. Checked again after the reads:
            # the low water rises and the GC runs while this waits, and a GC step publishes
            # its watermark before it deletes anything (from a worker thread).
            return from_ts < max(replica.sm.low_water, store.gc_watermark)

        if too_old():
            return {"ok": False, "reason": "too_old"}
        await self._wait_closed(replica, to_ts)
        # A pending transaction prepared at or below to_ts may commit in the window: wait
        # for its fate (what it wrote is then a version like any other).
        await self._wait_intents(
            replica, to_ts,
            lambda: replica.intents(keys, to_ts) + [
                i for sp in spans for i in replica.intents_in(sp[0], sp[1], to_ts)],
            restart=False)
        # Only the keyspace's home sees all its writes: one that moved away from here (its
        # writes go to the new home) or that came here after from_ts (they went elsewhere
        # before) may have changed where this group cannot tell.
        moved = replica.sm.fenced(from_ts, reads=[*keys, *(sp[0] for sp in spans)])
        if moved is not None:
            return {"ok": False, "reason": "moved", "key": moved}
        for key in keys:
            version = store.get_version(key, to_ts)
            if version is not None and version[0] > from_ts:
                return {"ok": False, "reason": "changed", "key": key}
        for start, end, limit in spans:
            if (store.scan(start, end, from_ts, limit=limit)
                    != store.scan(start, end, to_ts, limit=limit)):
                return {"ok": False, "reason": "changed"}
        if too_old():
            return {"ok": False, "reason": "too_old"}
        return {"ok": True}

    def _refuse(self, txn_id: int, result, replica: GroupReplica | None = None) -> None:
        if result.outcome is Outcome.CONFLICT:
            key = result.key
            why = ""
            if result.reason == "moved" and replica is not None and key is not None:
                why = _MOVED_WHY[min(replica.sm.fence(key[:KEY_PREFIX_SIZE])[0], 2)]
            raise TransactionConflictError(
                f"transaction {txn_id:#x} conflicts ({result.reason}"
                + (f" on key {user_key(key)!r}" if key is not None else "") + ")" + why,
                result.reason, key)
        if result.outcome is Outcome.TOO_LARGE:
            raise RecordTooLargeError(f"commit refused: {result.reason}")
        raise InvalidArgumentError(f"commit refused: {result.reason}")

    async def _wait_intents(self, replica: GroupReplica, ts: int,
                            find: Callable[[], list[Intent]], *, restart: bool,
                            until: int = 0) -> None:
        """Waits until no intent at or below ``ts`` is pending on what a read covers.

        A transaction prepared at or below ``ts`` may commit at or below it, so the read must
        know its fate. When one of the waited-for transactions committed above ``ts``, the
        reader is told to move its snapshot up to that commit (``restart``, details ``ts``):
        that transaction may have been acknowledged before the reader began, and a snapshot
        without it would be a stale read. A read with an uncertainty window up to ``until``
        moves at least to its end, as when it finds a commit in it, for the same reason (the
        window is not looked into again). A stale read (``restart`` False) promised nothing
        about recent commits and is simply served at ``ts``. Intents past their deadline are
        recovered (leader only; a learner waits for the leader's resolution to reach it)."""
        blocking = find()
        if not blocking:
            return
        waited: dict[bytes, int] = {}
        give_up = trio.current_time() + INTENT_WAIT_S
        while blocking:
            for intent in blocking:
                waited[intent.key] = intent.txn_id
            if replica.node.is_leader:
                now = self.clock.now()
                for intent in blocking:
                    if intent.deadline < now:
                        self._start_recovery(replica, intent)
            if trio.current_time() > give_up:
                raise RemoteError("not_closed", f"group {replica.group}: intents of "
                                  f"{len(blocking)} transaction(s) still pending after "
                                  f"{INTENT_WAIT_S} s", retryable=True)
            with trio.move_on_after(0.1):
                await replica.wait_resolved()
            blocking = find()
        if not restart:
            return
        store = replica.sm.store
        above = 0
        for key in waited:
            newest = store.get_version(key, MAX_TS)
            if newest is not None and newest[0] > ts:
                above = max(above, newest[0])
        if above:
            raise RemoteError("restart", f"group {replica.group}: a transaction this read "
                              f"waited for committed at {above}, above the read's snapshot "
                              f"{ts}", retryable=True, details={"ts": max(above, until)})

    # ------------------------------------------------------------------ regional keyspaces

    async def _ship_regional(self, origin: GroupReplica, destination: int) -> None:
        """Runs until cancelled: while this node leads ``origin``, pushes its regional writes
        (its outbox) to the ``destination`` group (ARCH §6).

        Batches are pipelined: up to :data:`REPLICATION_WINDOW` are in flight, each naming the
        timestamp it starts after, so that the destination, which applies each through its own
        log once, can refuse one that overtook its predecessor (a gap). After a gap, an error
        or a change of leader, shipping resumes from the destination's watermark; after
        errors in a row, less and less often (:data:`REPLICATION_RETRY_MAX_S`)."""
        progress = (origin.group, destination)
        delay = REPLICATION_RETRY_S
        while True:
            if not origin.node.is_leader or self._peers is None:
                await trio.sleep(1.0)
                continue
            applied = self._applied_by.get(progress, 0)
            try:
                await self._ship_while_leading(origin, destination)
                delay = REPLICATION_RETRY_S
            except (MeridianError, RemoteError, OSError, KeyError, TypeError) as exc:
                log.info("node %d: shipping group %d's regional writes to group %d: %s",
                         self.id, origin.group, destination, exc)
                if self._applied_by.get(progress, 0) > applied:  # some batches got there
                    delay = REPLICATION_RETRY_S
                await trio.sleep(delay)
                delay = min(2 * delay, REPLICATION_RETRY_MAX_S)

    async def _ship_while_leading(self, origin: GroupReplica, destination: int) -> None:
        assert self._peers is not None
        peers = self._peers
        reply = await peers._call_group(destination, "remote.watermark", {
            "group": destination, "origin": origin.group})
        after = reply["watermark"]
        progress = (origin.group, destination)
        self._applied_by[progress] = max(self._applied_by.get(progress, 0), after)
        trimmed = origin.sm.outbox_trimmed
        if after < trimmed:
            # The destination fell further behind than the outbox keeps: the writes in
            # between are gone from here, and only a full copy could repair it. The trim
            # recorded it in the group (replication_broken reports it).
            log.error("node %d: group %d is behind group %d's regional writes by more than "
                      "the outbox keeps (watermark %d, trimmed up to %d): it needs a resync; "
                      "shipping what is left", self.id, destination, origin.group, after,
                      trimmed)
        window = trio.Semaphore(REPLICATION_WINDOW)
        broken = trio.Event()
        failure: list[BaseException] = []
        applied = [after]  # how far the destination has applied our writes, by its answers

        async def send(batch_after: int, batch: list) -> None:
            try:
                reply = await peers._call_group(destination, "remote.apply", {
                    "group": destination, "origin": origin.group, "after": batch_after,
                    "up_to": batch[-1][0], "writes": [w for _, ws in batch for w in ws]})
                if reply.get("gap"):
                    broken.set()
                if type(reply.get("watermark")) is int:
                    applied[0] = max(applied[0], reply["watermark"])
                    self._applied_by[progress] = max(self._applied_by[progress], applied[0])
            except (MeridianError, RemoteError, OSError, KeyError, TypeError) as exc:
                failure.append(exc)
                broken.set()
            finally:
                window.release()

        async def report_applied() -> None:
            # The outbox keeps each write until every destination has it: the group learns
            # how far this one got through its own log (SHIPPED), once a second at most. A
            # proposal that fails (a timeout, a lost leadership) is tried again next time, and
            # so is one held back while the clock is suspect: the entry carries that clock
            # into the group's log, as a CLOSE would.
            while True:
                if (applied[0] > origin.sm.shipped(destination)
                        and self._clock_problem is None):
                    try:
                        await origin.propose(encode_shipped(self.clock.now(), destination,
                                                            applied[0]))
                    except (MeridianError, RemoteError) as exc:
                        log.info("node %d: recording group %d's progress in group %d: %s",
                                 self.id, destination, origin.group, exc)
                await trio.sleep(SHIPPED_REPORT_S)

        async with trio.open_nursery() as nursery:
            reporter = trio.CancelScope()

            async def report() -> None:
                with reporter:
                    await report_applied()

            nursery.start_soon(report)
            while origin.node.is_leader and not broken.is_set():
                batch = _bounded_batch(origin.sm.outbox_after(
                    after, REPLICATION_BATCH, max_bytes=REPLICATION_BATCH_BYTES))
                if not batch:
                    with trio.move_on_after(1.0):
                        await origin.wait_outbox()
                        await trio.sleep(REPLICATION_LINGER_S)
                    continue
                await window.acquire()
                nursery.start_soon(send, after, batch)
                after = batch[-1][0]
            reporter.cancel()
        if failure:
            raise failure[0]

    async def _keep_leader_home(self, replica: GroupReplica) -> None:
        """Runs until cancelled: a spread group led from outside its home region hands its
        leadership to the home region's voter (commits and strong reads then cost the home
        region's clients no WAN round trip to the leader), once that voter answers this
        leader. A transfer stops the group's proposals until it ends or an election timeout
        passes: one to a voter that is down (its region lost) would only take writes away
        from the group, again at every check, so it waits until the voter is back. Nor does
        it hand leadership to a voter whose clock is suspect: that voter serves no client and
        hands every group it leads over again at its next clock check."""
        where = self.placement[replica.group]
        home = [v for v in where.conf.voters if self.cluster.node(v).region == where.region]
        while True:
            await trio.sleep(LEADER_HOME_CHECK_S)
            if (replica.node.is_leader and self.region != where.region and home
                    and self._clock_problem is None and home[0] not in self._peers_not_serving
                    and _answers(replica, home[0])):
                try:
                    replica.node.transfer_leader(home[0])
                except Exception as exc:  # lost leadership meanwhile, or closing
                    log.info("node %d: moving group %d's leadership home: %s", self.id,
                             replica.group, exc)

    async def _remote_apply(self, p):
        replica = self._replica(p)
        origin, up_to, writes = p.get("origin"), p.get("up_to"), p.get("writes")
        after = p.get("after", 0)
        where = self.placement.get(origin) if type(origin) is int else None
        if where is None or where.kind != "data" or origin == replica.group:
            raise InvalidArgumentError(f"origin must be another region's data group, "
                                       f"not {origin!r}")
        if (type(up_to) is not int or not 0 < up_to <= MAX_TS or type(after) is not int
                or not 0 <= after < up_to or not isinstance(writes, list)):
            raise InvalidArgumentError("after < up_to must be timestamps and writes a list")
        self._not_ahead("up_to", up_to)  # the origin's watermark here: all later ones skipped
        replica._require_leader()
        result = await replica.propose(
            encode_remote(origin, self.clock.now(), after, up_to, writes))
        if result.outcome is Outcome.CONFLICT:  # a gap: an earlier batch has not arrived
            return {"watermark": replica.sm.watermark(origin), "gap": True}
        if result.outcome is Outcome.INVALID:
            raise InvalidArgumentError(f"batch refused: {result.reason}")
        # The time timestamps follow, not the wall clock: it is above every write's commit
        # timestamp (the shipper's request carried a later one), and does not follow the
        # wall clock's jump forward, which no sample kept here for good should measure.
        now = self.clock.now()
        samples = self._lag_ms.setdefault(where.region, collections.deque(maxlen=LAG_SAMPLES))
        _forget_old_lag(samples, now)
        # A batch sent again (its answer was lost or late) repeats writes applied before,
        # maybe by a copy of it that was in the log already when this one was proposed:
        # only the writes above the watermark the batch found when applied are its own.
        # Their lag was counted when they were applied. Writes to a keyspace fenced at level
        # 2 or more here (moved away, or being dropped) were skipped, not replicated.
        applied_before = result.conflict_ts if result.committed else up_to
        for w in writes:
            if (isinstance(w, list) and len(w) == 7 and type(w[3]) is int
                    and w[3] > applied_before and type(w[0]) is bytes
                    and replica.sm.fence(w[0][:KEY_PREFIX_SIZE])[0] < 2):
                samples.append((now, max(0.0, (now - w[3]) / 1e6)))
        return {"watermark": replica.sm.watermark(origin)}

    async def _remote_watermark(self, p):
        replica = self._replica(p)
        origin = p.get("origin")
        if type(origin) is not int or not 0 < origin < 2**32:
            raise InvalidArgumentError("origin must be a group id")
        # Leader, and everything acknowledged applied: a leader just elected may not have
        # applied yet what its predecessor acknowledged, and an older watermark sends the
        # origin's shipper back over writes applied already (and, past a trim, has it log a
        # resync that is not needed).
        await replica.snapshot_ts()
        return {"watermark": replica.sm.watermark(origin)}

    async def _conflicts_list(self, p):
        replica = self._replica(p)
        start, end, limit = p.get("start"), p.get("end"), p.get("limit", 100)
        if type(start) is not bytes or type(end) is not bytes:
            raise InvalidArgumentError("start and end must be bytes")
        if type(limit) is not int or not 0 < limit <= 10_000:
            raise InvalidArgumentError("limit must be an int in 1..10000")
        ts = await replica.snapshot_ts()  # leader, and everything acknowledged is applied
        # A dropped keyspace's log is being erased (PURGE): refused, not shown in part.
        self._check_fences(replica, [start[:KEY_PREFIX_SIZE]], ts)
        # As many as fit a page (at least one), like a scan's: a record holds the losing
        # write's value, and ``limit`` of them could be far over the frame limit.
        records = replica.sm.conflicts(start, end, limit, max_bytes=SCAN_PAGE_BYTES)
        return {"records": [[rid, key, rec] for rid, key, rec in records]}

    async def _conflicts_drain(self, p):
        """Removes records of keyspace ``keyspace_id``'s conflict log (``keys``, their ids as
        ``conflicts.list`` answered them). The group's log holds every regional keyspace's
        records here: an id of another keyspace refuses the whole drain."""
        replica = self._replica(p)
        ks_id, keys = p.get("keyspace_id"), p.get("keys")
        if type(ks_id) is not int or not 0 <= ks_id <= MAX_KEYSPACE_ID:
            raise InvalidArgumentError("keyspace_id must be a keyspace id")
        if not isinstance(keys, list) or not all(type(k) is bytes for k in keys):
            raise InvalidArgumentError("keys must be a list of conflict record ids (bytes)")
        start, end = conflict_log_bounds(ks_id)
        for key in keys:
            if not start <= key < end:
                # Named, but no longer than a side-table key (any longer is no record id).
                raise InvalidArgumentError(f"{key[:MAX_SIDE_KEY_SIZE]!r} is not a conflict "
                                           f"record id of keyspace {ks_id}")
        replica._require_leader()
        result = await replica.propose(encode_drain(self.clock.now(), keys))
        if result.outcome is Outcome.INVALID:
            raise InvalidArgumentError(f"drain refused: {result.reason}")
        return {}

    # ------------------------------------------------------------------ recovery

    def _start_recovery(self, replica: GroupReplica, intent: Intent) -> None:
        if intent.txn_id in self._recovering or self._nursery is None:
            return
        self._recovering.add(intent.txn_id)
        self._nursery.start_soon(self._recover, replica, intent)

    async def _recover(self, replica: GroupReplica, intent: Intent) -> None:
        """Finishes an abandoned transaction: its record on the primary group decides (an
        undecided transaction is aborted there first), then its intents here are resolved."""
        try:
            with trio.move_on_after(RECOVERY_TIMEOUT_S):
                primary = self.replicas.get(intent.primary)
                if primary is not None and primary.node.is_leader:
                    result = await primary.decide(intent.txn_id, 0)
                    commit_ts = result.ts if result.outcome is Outcome.COMMITTED else 0
                else:
                    peers = await self._wait_peers()
                    reply = await peers._call_group(
                        intent.primary, "decide",
                        {"group": intent.primary, "txn_id": intent.txn_id, "commit_ts": 0},
                        commit=True)
                    commit_ts = reply["ts"] if reply["committed"] else 0
                if replica.group != intent.primary and replica.node.is_leader:
                    await replica.resolve(intent.txn_id, commit_ts)
                log.info("node %d recovered transaction %#x in group %d: %s", self.id,
                         intent.txn_id, replica.group,
                         f"committed at {commit_ts}" if commit_ts else "aborted")
        except (MeridianError, RemoteError, OSError) as exc:
            log.info("node %d could not recover transaction %#x yet: %s", self.id,
                     intent.txn_id, exc)
        finally:
            self._recovering.discard(intent.txn_id)

    async def _sweep_intents(self, replica: GroupReplica) -> None:
        """Runs until cancelled: while leading, recovers prepared transactions past their
        deadline, so that intents nobody reads are cleaned up too."""
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            if not replica.node.is_leader or self._clock_problem is not None:
                continue
            self._sweep_round(replica)

    def _sweep_round(self, replica: GroupReplica) -> None:
        """One sweep of :meth:`_sweep_intents`: starts the recovery of at most
        :data:`SWEEP_RECOVERIES` expired transactions, not being recovered already, among a
        page of the prepared ones (:data:`SWEEP_BATCH`).

        A sweep goes on after the transactions the previous one looked at, and once it
        reaches the newest, the next one starts from the oldest again: transactions that
        cannot be finished yet (their primary unreachable) must not hide the others."""
        after = self._sweep_after.pop(replica.group, 0)
        page = replica.sm.prepared(after, limit=SWEEP_BATCH, max_bytes=SWEEP_BATCH_BYTES)
        if not page and after:  # the previous sweep ended at the newest
            page = replica.sm.prepared(limit=SWEEP_BATCH, max_bytes=SWEEP_BATCH_BYTES)
        now = self.clock.now()
        started = 0
        for intent in page:
            if intent.deadline < now and intent.txn_id not in self._recovering:
                if started == SWEEP_RECOVERIES:
                    break
                self._start_recovery(replica, intent)
                started += 1
            self._sweep_after[replica.group] = intent.txn_id

    def _check_txn(self, p) -> tuple[int, int, list[tuple[bytes, bytes | None]], list[bytes]]:
        txn_id, read_ts = p.get("txn_id"), p.get("read_ts")
        writes, reads = p.get("writes"), p.get("reads", [])
        if type(txn_id) is not int or not 0 < txn_id < 2**64:
            raise InvalidArgumentError("txn_id must be an int in 1..2**64-1")
        if type(read_ts) is not int or not 0 <= read_ts <= MAX_TS:
            raise InvalidArgumentError("read_ts must be an int timestamp")
        self._not_ahead("read_ts", read_ts)  # it becomes a floor of the commit timestamp
        if not isinstance(writes, list) or not isinstance(reads, list):
            raise InvalidArgumentError("writes and reads must be lists")
        pairs = self._check_writes(writes)
        if not all(type(k) is bytes for k in reads):
            raise InvalidArgumentError("read keys must be bytes")
        limits = self.cluster.limits
        if read_ts and read_ts < self.clock.now() - int(limits.max_txn_lifetime_s * 1e9):
            raise TransactionConflictError(
                f"transaction {txn_id:#x} is older than the maximum transaction lifetime "
                f"({limits.max_txn_lifetime_s} s)", "too_old")
        return txn_id, read_ts, pairs, reads

    # ------------------------------------------------------------------ catalog

    def _meta(self) -> GroupReplica:
        replica = self.replicas[META_GROUP]
        if not replica.node.is_leader:
            raise NotLeaderError(f"node {self.id} does not lead the meta group", META_GROUP,
                                 replica.node.leader)
        return replica

    async def _catalog_txn(self, body: Callable[[GroupReplica, int], tuple[object, list, list]],
                           *, read_only: bool = False):
        """Runs ``body(meta, read_ts) -> (result, writes, reads)`` as a serializable transaction
        on the meta group, retrying on conflict; no writes means read-only.

        Every catalog change is made by the meta group's leader, so the changes it makes run
        one at a time: run at once, they would conflict with one another (every create writes
        the next keyspace id), and the retries of many concurrent ones would run out (a
        create of a name nobody else wants refused as a conflict). A conflict is then left
        only with a change an earlier leader made. ``read_only`` bodies (lookups) never
        write, and do not wait for changes."""
        if read_only:
            return await self._catalog_attempts(body)
        async with self._catalog_lock:
            return await self._catalog_attempts(body)

    async def _catalog_attempts(self, body):
        for _ in range(MAX_CATALOG_ATTEMPTS):
            meta = self._meta()
            ts = await meta.snapshot_ts(self.clock.now())
            result, writes, reads = body(meta, ts)
            if not writes:
                return result
            outcome = await meta.commit(secrets.randbits(63) + 1, ts, writes, reads,
                                        serializable=True)
            if outcome.committed:
                return result
        raise TransactionConflictError("the catalog changed too often; try again", "write_write")

    async def _keyspace_create(self, p):
        name = cat.check_keyspace_name(p.get("name"))
        mode = p.get("mode", "global")
        home = p.get("home", self.region)  # "" names no region: refused below
        if mode not in cat.MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(cat.MODES)}, "
                                       f"not {mode!r:.80}")
        survive = p.get("survive", "zone")
        if survive not in cat.SURVIVAL_GOALS:
            raise InvalidArgumentError(f"survive must be one of {', '.join(cat.SURVIVAL_GOALS)}, "
                                       f"not {survive!r:.80}")
        if survive == "region":
            if mode == "regional":
                raise InvalidArgumentError(
                    "survive='region' is for global keyspaces: a regional keyspace commits in "
                    "each region and replicates asynchronously")
            spread_group(self.cluster, home)  # needs three regions
            check_catalog_survives_a_region(self.cluster)
        resolver = p.get("resolver", "lww")
        if not is_resolver_name(resolver) or (resolver not in RESOLVER_NAMES
                                               and resolver not in self.resolvers):
            configured = ", ".join(self.resolvers) or "none is configured"
            raise InvalidArgumentError(
                f"resolver must be one of {', '.join(RESOLVER_NAMES)} or an application "
                f"resolver of [cluster.resolvers] as 'app:<name>' ({configured}), "
                f"not {resolver!r}"[:500])
        if mode == "global" and resolver != "lww":
            raise InvalidArgumentError("only regional keyspaces have a resolver: a global "
                                       "keyspace has one writer region and no conflicts")
        data_group(self.cluster, home)  # validates the region name
        token = p.get("token", b"")
        if type(token) is not bytes or len(token) > cat.MAX_CREATE_TOKEN:
            raise InvalidArgumentError(f"token must be bytes, at most {cat.MAX_CREATE_TOKEN} of "
                                       f"them, not {token!r:.80}")
        key = cat.keyspace_key(name)

        def body(meta, ts):
            raw = meta.get(key, ts)
            if raw is not None:
                ks = cat.decode_keyspace(raw)
                if token and ks.create_token == token and not ks.dropping:
                    # This very call, made again after its answer was lost: it did create
                    # the keyspace, and answers so.
                    return cat.keyspace_record(ks), [], []
                being = " and is being dropped" if ks.dropping else ""
                raise RemoteError("already_exists", f"keyspace {name!r} already exists{being}")
            next_id = cat.decode_next_id(meta.get(cat.NEXT_ID_KEY, ts))
            if next_id > MAX_KEYSPACE_ID:
                # Ids are never reused (see engine.catalog): a dropped keyspace's id is gone.
                raise LimitExceededError(
                    f"keyspace {name!r} cannot be created: all {MAX_KEYSPACE_ID} keyspace ids "
                    f"have been used (ids of dropped keyspaces are not reused)")
            ks = cat.Keyspace(next_id, name, mode, home, resolver, created_ts=ts,
                              survive=survive, create_token=token)
            writes = [(key, cat.encode_keyspace(ks)),
                      (cat.NEXT_ID_KEY, cat.encode_next_id(next_id + 1))]
            return cat.keyspace_record(ks), writes, [key, cat.NEXT_ID_KEY]

        return await self._catalog_txn(body)

    async def _keyspace_begin(self, p):
        """Begins a move (``op`` ``"move"``, to region ``to``) or a drop (``"drop"``) of the
        keyspace named ``name`` (and, with ``id``, only if it is still that keyspace): raises
        its record's epoch by one (see :attr:`engine.catalog.Keyspace.epoch`), records
        ``moving_to`` (the region another move was copying to joins ``abandoned``) or
        ``dropping``, and answers the record as it is now. A drop joins one begun before it,
        at its epoch, instead of overtaking it: any of them may finish it. A keyspace being
        dropped cannot begin a move."""
        name = cat.check_keyspace_name(p.get("name"))
        op, to, expect_id = p.get("op"), p.get("to"), p.get("id")
        if op not in ("move", "drop"):
            raise InvalidArgumentError("op must be 'move' or 'drop'")
        if expect_id is not None and type(expect_id) is not int:
            raise InvalidArgumentError("id must be a keyspace id")
        if op == "move":
            data_group(self.cluster, to)  # validates the region name
        key = cat.keyspace_key(name)

        def body(meta, ts):
            ks = self._catalog_record(meta, key, ts, name, expect_id, dropping_ok=op == "drop")
            if op == "move" and ks.mode == "regional":
                raise InvalidArgumentError(f"keyspace {name!r} is regional: it lives in every "
                                           f"region")
            if op == "drop" and ks.dropping:
                return cat.keyspace_record(ks), [], []
            if ks.epoch >= MAX_EPOCH:
                raise InvalidArgumentError(f"keyspace {name!r} has been moved or dropped "
                                           f"{MAX_EPOCH} times: it cannot be any more")
            if op == "move":
                # The target's copy, whatever an earlier move left there, is this move's to
                # make now (a retired one stays listed until a catalog change makes it home,
                # unless an earlier move to it may have opened it to reads again: then only
                # this move's fences close it, see Database._move).
                abandoned = set(ks.abandoned) | {ks.moving_to}
                retired = set(ks.retired)
                if to in abandoned:
                    retired.discard(to)
                ks = dataclasses.replace(
                    ks, epoch=ks.epoch + 1, moving_to=to, retired=tuple(sorted(retired)),
                    abandoned=tuple(sorted(abandoned - {"", to, ks.home})))
            else:
                ks = dataclasses.replace(ks, epoch=ks.epoch + 1, dropping=True)
            return cat.keyspace_record(ks), [(key, cat.encode_keyspace(ks))], [key]

        return await self._catalog_txn(body)

    async def _keyspace_rehome(self, p):
        """The catalog side of moving a keyspace: its record's home becomes ``home`` (the
        data itself was copied and fenced before, see Database.move_keyspace), with
        ``moved_ts``, the copy's timestamp; the home it had joins ``retired``, and the record's
        ``handoff_ts`` rises to ``handoff_ts`` (the stamp of the read fence that closed it).

        A compare-and-set on ``id`` and ``epoch``, the keyspace and the move the caller
        began: a record that is another keyspace now, or whose keyspace a newer move or a
        drop has begun since, is refused (``not_found``, ``conflict`` with reason
        ``catalog_changed``). A record already at ``home`` at that epoch (the same call run
        again) is answered as it is."""
        name, key, expect_id, epoch = self._catalog_step(p)
        home = p.get("home")
        data_group(self.cluster, home)  # validates the region name
        moved_ts, handoff_ts = _timestamp(p, "moved_ts"), _timestamp(p, "handoff_ts")
        self._not_ahead("moved_ts", moved_ts)
        self._not_ahead("handoff_ts", handoff_ts)

        def body(meta, ts):
            ks = self._catalog_record(meta, key, ts, name, expect_id, epoch)
            if ks.home == home:
                return cat.keyspace_record(ks), [], []
            if ks.moving_to != home:
                # Only the move's target holds its copy: pointed anywhere else, the record
                # would name a home where the keyspace reads as empty, and its data, left in
                # the home it had (retired), would be erased by the next move or drop.
                raise InvalidArgumentError(
                    f"keyspace {name!r} is not moving to {home!r} at epoch {epoch}: a "
                    f"rehome ends the move that began to copy it there")
            moved = dataclasses.replace(ks, home=home, moved_ts=moved_ts, moving_to="",
                                        retired=tuple(sorted({*ks.retired, ks.home} - {home})),
                                        handoff_ts=max(ks.handoff_ts, handoff_ts))
            return cat.keyspace_record(moved), [(key, cat.encode_keyspace(moved))], [key]

        return await self._catalog_txn(body)

    async def _keyspace_settle(self, p):
        """Records what a move did: the regions of ``erased`` leave ``retired`` and
        ``abandoned`` (their copies are fenced off and erasable), those of ``retire`` join
        ``retired`` (fenced against reads, not erasable yet), and, with ``done`` (the
        default), the record forgets ``moving_to`` (the move is over); ``handoff_ts`` rises to
        ``handoff_ts`` (the stamp of the read fence that closed a copy of ``retire``); if no
        newer move or drop has begun (the same compare-and-set as ``keyspace.rehome``)."""
        name, key, expect_id, epoch = self._catalog_step(p)
        erased, done_moving = p.get("erased", []), p.get("done", True)
        retire = p.get("retire", [])
        handoff_ts = _timestamp(p, "handoff_ts")
        self._not_ahead("handoff_ts", handoff_ts)
        for value in (erased, retire):
            if not (isinstance(value, list) and all(type(r) is str for r in value)):
                raise InvalidArgumentError("erased and retire must be lists of region names")
        for region in retire:
            # Recorded, a name that is no region would fail every later move and drop of
            # the keyspace: each looks up the group of every region the record lists.
            data_group(self.cluster, region)  # validates the region name
        if type(done_moving) is not bool:
            raise InvalidArgumentError("done must be a bool")

        def body(meta, ts):
            ks = self._catalog_record(meta, key, ts, name, expect_id, epoch)
            done = dataclasses.replace(
                ks, moving_to="" if done_moving else ks.moving_to,
                retired=tuple(sorted(({*ks.retired} - {*erased} | {*retire}) - {ks.home})),
                abandoned=tuple(r for r in ks.abandoned if r not in erased),
                handoff_ts=max(ks.handoff_ts, handoff_ts))
            if done == ks:
                return cat.keyspace_record(ks), [], []
            return cat.keyspace_record(done), [(key, cat.encode_keyspace(done))], [key]

        return await self._catalog_txn(body)

    async def _keyspace_drop(self, p):
        """Ends a drop: deletes the record, if no newer drop has begun (the same
        compare-and-set as ``keyspace.rehome``; the caller fenced the keyspace's groups
        first, see Database.drop_keyspace)."""
        name, key, expect_id, epoch = self._catalog_step(p)

        def body(meta, ts):
            ks = self._catalog_record(meta, key, ts, name, expect_id, epoch, dropping_ok=True)
            if not ks.dropping:
                # Deleted before a drop began, the record would leave the keyspace's groups
                # unfenced: its data never erased, and written on by the clients that cached it.
                raise InvalidArgumentError(
                    f"keyspace {name!r} is not being dropped: a drop begins with "
                    f"keyspace.begin (op 'drop') and fences its groups before it ends")
            return None, [(key, None)], [key]

        return await self._catalog_txn(body)

    def _catalog_step(self, p) -> tuple[str, bytes, int, int]:
        """``name``, its key, and the ``id`` and ``epoch`` a move's or drop's later step
        expects its record to have."""
        name = cat.check_keyspace_name(p.get("name"))
        expect_id, epoch = p.get("id"), p.get("epoch")
        if type(expect_id) is not int or type(epoch) is not int:
            raise InvalidArgumentError("id and epoch must be ints (those the move or drop "
                                       "began with)")
        return name, cat.keyspace_key(name), expect_id, epoch

    @staticmethod
    def _catalog_record(meta, key: bytes, ts: int, name: str, expect_id: int | None = None,
                        epoch: int | None = None, *, dropping_ok: bool = False) -> cat.Keyspace:
        """The record of ``name`` at ``ts``; refused if there is none, if it is being dropped
        (unless ``dropping_ok``), if it is another keyspace than ``expect_id`` (``not_found``)
        or at another epoch than ``epoch`` (``conflict``, reason ``catalog_changed``)."""
        raw = meta.get(key, ts)
        ks = None if raw is None else cat.decode_keyspace(raw)
        if ks is None or (expect_id is not None and ks.id != expect_id):
            raise RemoteError("not_found", f"keyspace {name!r} does not exist" if ks is None
                              else f"keyspace {name!r} (id {expect_id}) was dropped: the name "
                              f"is keyspace id {ks.id} now")
        if epoch is not None and ks.epoch != epoch:
            raise TransactionConflictError(
                f"keyspace {name!r} is at epoch {ks.epoch}, not {epoch}: another move or drop "
                f"of it began since", "catalog_changed")
        if ks.dropping and not dropping_ok:
            raise RemoteError("not_found", f"keyspace {name!r} is being dropped")
        return ks

    async def _keyspace_fence(self, p):
        """Sets a keyspace's fence in a group (see engine.group, FENCE), at ``epoch``, the
        epoch its move or drop began at (a fence changed at a higher one refuses it). With
        ``expect``, ``[level, available_from]``, only if the fence is that when the change
        is applied. With ``after``, the entry is stamped above that timestamp (another
        group's, that this change must follow, see :meth:`_wait_past`). Answers ``{"ts",
        "done"}``; ``done`` is false when the fence refused the change (nothing changed;
        ``fence`` is the fence found, ``epoch`` its epoch)."""
        replica = self._replica(p)
        ks_id, level = p.get("keyspace_id"), p.get("level")
        epoch, expect = p.get("epoch", 0), p.get("expect")
        if (type(ks_id) is not int or not 0 <= ks_id <= MAX_KEYSPACE_ID
                or type(level) is not int or level not in (0, 1, 2, 3)):  # not 1.0 or True
            raise InvalidArgumentError("keyspace_id must be a keyspace id and level 0..3")
        available_from = _timestamp(p, "available_from")
        if expect is not None and not (isinstance(expect, list) and len(expect) == 2
                                       and all(type(v) is int for v in expect)):
            raise InvalidArgumentError("expect must be [level, available_from]")
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise InvalidArgumentError(f"epoch must be an int in 0..{MAX_EPOCH}")
        after = await self._wait_past(p)
        replica._require_leader()
        # The expectation travels in the entry and is checked where it is applied, in log
        # order: no fence change can slip in between the check and the change.
        result = await replica.propose(encode_fence(
            max(self.clock.now(), after + 1), ks_id, level, available_from,
            None if expect is None else (expect[0], expect[1]), epoch))
        if result.outcome is Outcome.CONFLICT:
            prefix = keyspace_bounds(ks_id)[0]
            return {"ts": result.ts, "done": False, "fence": list(replica.sm.fence(prefix)),
                    "epoch": replica.sm.fence_epoch(prefix)}
        return {"ts": result.ts, "done": True}

    async def _keyspace_unlocked(self, p):
        """Waits until no transaction prepared in the group holds what it read in keyspace
        ``keyspace_id`` (a lock on a key, or a scanned range; see
        :meth:`GroupStateMachine.locks_in`), recovering those past their deadline. A move
        asks the group it leaves once the keyspace is fenced against reads there (no new
        lock can be taken): the new home knows nothing of these locks, and must take no
        write before they are released. Answers ``{}``; a retryable ``not_closed`` error if
        they are not released within the wait for intents."""
        replica = self._replica(p)
        ks_id = p.get("keyspace_id")
        if type(ks_id) is not int or not 0 <= ks_id <= MAX_KEYSPACE_ID:
            raise InvalidArgumentError("keyspace_id must be a keyspace id")
        start, end = keyspace_bounds(ks_id)
        await replica.snapshot_ts()  # leader, and the fence and every prepare before it applied
        await self._wait_intents(replica, MAX_TS, lambda: replica.sm.locks_in(start, end),
                                 restart=False)
        return {}

    async def _keyspace_copy(self, p):
        """One batch of a keyspace move's copy into the group receiving it: a blind one-phase
        commit of ``writes``, all keys of keyspace ``keyspace_id``, that the keyspace's write
        fence there does not refuse (every other writer stays fenced out until the move is
        done, see Database.move_keyspace), while it is ``(1, MAX_TS)`` at the move's
        ``epoch``. Stamped above ``after`` (the snapshot of the old group the copy was read at:
        a copy stamped below it would show its writes at timestamps they had not happened at
        yet). Answers ``{"ts"}``, the commit's timestamp."""
        replica = self._replica(p)
        ks_id, txn_id, writes = p.get("keyspace_id"), p.get("txn_id"), p.get("writes")
        epoch = p.get("epoch", 0)
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise InvalidArgumentError(f"epoch must be an int in 0..{MAX_EPOCH}")
        if type(ks_id) is not int or not 0 <= ks_id <= MAX_KEYSPACE_ID:
            raise InvalidArgumentError("keyspace_id must be a keyspace id")
        if type(txn_id) is not int or not 0 < txn_id < 2**64:
            raise InvalidArgumentError("txn_id must be an int in 1..2**64-1")
        if not isinstance(writes, list):
            raise InvalidArgumentError("writes must be a list")
        pairs = self._check_writes(writes, COPY_LIMITS)
        lo, hi = keyspace_bounds(ks_id)
        if not all(lo <= k < hi for k, _ in pairs):
            raise InvalidArgumentError(f"a copy writes keys of keyspace {ks_id} only")
        after = await self._wait_past(p)
        replica._require_leader()
        result = await replica.propose(
            encode_commit(txn_id, 0, max(self.clock.now(), after + 1), pairs, move_copy=True,
                          epoch=epoch))
        if result.committed:
            return {"ts": result.ts}
        self._refuse(txn_id, result)

    async def _wait_past(self, p) -> int:
        """A request's ``after`` (0 if absent): a timestamp of another group that the entry it
        proposes must be stamped above. Groups' timestamps are ordered by the frames' clocks
        only as far as the groups' clocks go, and a group's closed timestamp can run ahead
        of its leader's clock (by up to the maximum clock offset), so a move hands a keyspace
        from one group to another with explicit floors. This node waits until its clock has
        passed the floor (a commit wait, so that the group is not pushed ahead of its clock);
        more than twice the maximum clock offset ahead is refused: no group stamps that far
        ahead."""
        after = _timestamp(p, "after")
        ahead = after - self.clock.now()
        if ahead > 2 * self.cluster.max_clock_offset_ns:
            raise InvalidArgumentError(
                f"after {after} is {ahead / 1e6:.1f} ms ahead of node {self.id}'s clock, more "
                f"than twice the maximum clock offset ({self.cluster.max_clock_offset_ms} ms)")
        if ahead >= 0:
            await trio.sleep((ahead + 1) / 1e9)
        return after

    async def _keyspace_get(self, p):
        """The record of ``name``; one being dropped only with ``dropping`` (for the drop)."""
        name = cat.check_keyspace_name(p.get("name"))
        key = cat.keyspace_key(name)
        dropping = p.get("dropping", False) is True

        def body(meta, ts):
            ks = self._catalog_record(meta, key, ts, name, dropping_ok=dropping)
            return cat.keyspace_record(ks), [], []

        return await self._catalog_txn(body, read_only=True)

    async def _keyspace_list(self, p):
        """A page of the keyspaces' records (those being dropped left out), by name:
        ``{"keyspaces", "next"}``, the records of at most :data:`KEYSPACE_LIST_PAGE` names
        after ``after`` (a name; ``""``, or absent, to start), and the ``after`` of the next
        page (None: the last page)."""
        after = p.get("after", "")
        if after != "":
            cat.check_keyspace_name(after)
        start = b"ks/" if not after else cat.keyspace_key(after) + b"\x00"

        def body(meta, ts):
            items = meta.scan(start, b"ks0", ts, limit=KEYSPACE_LIST_PAGE)
            found = (cat.decode_keyspace(v) for _, v in items)
            records = [cat.keyspace_record(ks) for ks in found if not ks.dropping]
            more = len(items) == KEYSPACE_LIST_PAGE
            return {"keyspaces": records,
                    "next": items[-1][0][len(b"ks/"):].decode() if more else None}, [], []

        return await self._catalog_txn(body, read_only=True)


def _max_connections() -> int:
    """Client connections a node serves at once: the RPC default, fewer if the process may
    not open that many files (its Raft links, logs and stores need some too)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft - 256))


def _bounded_batch(batch: list) -> list:
    """The longest prefix of outbox records within REPLICATION_BATCH_BYTES (at least one)."""
    size = 0
    for i, (_, writes) in enumerate(batch):
        size += sum(64 + len(w[0]) + len(w[2] or b"") for w in writes)
        if size > REPLICATION_BATCH_BYTES and i:
            return batch[:i]
    return batch


def _check_key_count(group: int, written: list[bytes], locks: list[bytes],
                     validated: list[bytes]) -> None:
    """Refuses a commit or prepare with more keys than the adjudicator takes in one request
    (:data:`~engine.adjudicator.MAX_TXN_KEYS`), counted as the group counts them: the keys
    ``written`` (plain and regional), the read ``locks`` not also written, and the
    ``validated`` read keys (a serializable transaction's). The group would refuse such an
    entry too, but only once it is in the log, after a round of consensus on all its keys.

    Raises:
        LimitExceededError: over the limit.
    """
    if len(written) + len(locks) + len(validated) <= MAX_TXN_KEYS:
        return  # the common case: within the limit even counting a lock twice
    also = set(written)
    count = len(written) + len({k for k in locks if k not in also}) + len(validated)
    if count > MAX_TXN_KEYS:
        raise LimitExceededError(f"{count} keys written, locked and validated in group "
                                 f"{group}; the limit is {MAX_TXN_KEYS} per group")


def _fate(p: dict) -> tuple[int, int]:
    """A decide or resolve request's transaction id and commit timestamp (0: abort)."""
    txn_id, commit_ts = p.get("txn_id"), p.get("commit_ts")
    if type(txn_id) is not int or not 0 < txn_id < 2**64:
        raise InvalidArgumentError("txn_id must be an int in 1..2**64-1")
    if type(commit_ts) is not int or not 0 <= commit_ts <= MAX_TS:
        raise InvalidArgumentError("commit_ts must be an int timestamp (0: abort)")
    return txn_id, commit_ts


def _spans(p: dict) -> list:
    """The request's scanned ranges (a refresh's, a serializable commit's or prepare's):
    ``[start, end, limit]`` lists, at most :data:`MAX_SPANS`."""
    spans = p.get("spans", [])
    if not (are_spans(spans) and len(spans) <= MAX_SPANS):
        raise InvalidArgumentError(f"spans must be at most {MAX_SPANS} [start, end, limit] "
                                   f"lists")
    return spans


def _restart(replica: GroupReplica, ts: int, until: int) -> RemoteError:
    return RemoteError("restart", f"group {replica.group}: a commit in the read's uncertainty "
                       f"window ({ts}, {until}] may precede the transaction", retryable=True,
                       details={"ts": until})


def _timestamp(p: dict, name: str) -> int:
    """The request's timestamp ``name``; 0 if it has none."""
    value = p.get(name, 0)
    if type(value) is not int or not 0 <= value <= MAX_TS:
        raise InvalidArgumentError(f"{name} must be a timestamp")
    return value


def _page_full(items: list[tuple[bytes, bytes]], page: int) -> bool:
    """Whether a scan page of ``items`` (at most ``page`` pairs, and SCAN_PAGE_BYTES) stopped
    at one of those bounds rather than at the end of its range."""
    return bool(items) and (
        len(items) >= page or sum(len(k) + len(v) for k, v in items) >= SCAN_PAGE_BYTES)


def _is_stale(p: dict) -> bool:
    """Whether a read asked for a stale snapshot (no promise about recent commits)."""
    return bool(p.get("bounded_ns", 0)) or p.get("stale") is True


async def run_node(config: NodeConfig, *, seed: int | None = None,
                   task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Runs a node until cancelled (for ``nursery.start``; ``started(node)``)."""
    await Node(config, seed=seed).run(task_status=task_status)


def _membership(groups: dict) -> list[list]:
    """The placement as IDENTITY records it: ``[group, kind, region, voters, learners]`` per
    group, in group order (lists, as msgpack gives them back)."""
    return [[gid, p.kind, p.region, list(p.conf.voters), list(p.conf.learners)]
            for gid, p in sorted(groups.items())]


def _open_identity(directory: Path, cluster: str, node_id: int, groups: list[list], *,
                   record: bool = True, hosted: Collection[int] = ()) -> DurableState:
    """Opens ``DIR/IDENTITY`` (a :class:`DurableState`, whose flock keeps the directory to one
    node process) and checks, or on first use records, whose directory this is: which node of
    which cluster, and the cluster's groups and their members (``groups``, see
    :func:`_membership`). With ``record=False`` a new directory is checked and locked but not
    yet recorded: :func:`_record_identity` does that. Once :func:`_record_opened` has recorded
    that the node made its groups, each group of ``hosted`` must still have its directory.

    Raises:
        InvalidArgumentError: the directory belongs to another node or cluster, or was made
            for groups with other members.
        CorruptStateError: the IDENTITY is not one, or a hosted group's data is gone.
        StoreLockedError, StorageError.
    """
    try:
        makedirs_durable(directory)
    except OSError as exc:
        raise storage_error(exc, f"cannot create data directory {directory}") from None
    try:
        identity = DurableState(directory / "IDENTITY")
    except StoreLockedError:
        raise StoreLockedError(f"data directory {directory} is in use by another node "
                               f"process") from None
    try:
        raw = identity.load()
        if raw is None:
            groups_dir = directory / "groups"
            if groups_dir.is_dir() and any(groups_dir.iterdir()):
                # Its groups' data, with no record of whose it is: another node's, or this
                # node's with its IDENTITY lost. Claiming it could run a node on the wrong data.
                raise CorruptStateError(
                    f"data directory {directory} holds group data in {groups_dir} but its "
                    f"IDENTITY records no node: whose data it is cannot be checked",
                    str(directory / "IDENTITY"))
            if record:
                _record_identity(identity, cluster, node_id, groups)
            return identity
        try:
            have = msgpack.unpackb(raw, raw=False)
        except (ValueError, msgpack.UnpackException):
            have = None
        if not isinstance(have, dict):
            raise CorruptStateError(
                f"{directory / 'IDENTITY'} does not hold a node identity (a state file of "
                f"another kind?): {len(raw)} bytes that are no msgpack map",
                str(directory / "IDENTITY"))
        if [have.get("cluster"), have.get("node")] != [cluster, node_id]:
            raise InvalidArgumentError(
                f"data directory {directory} belongs to node {have.get('node')} of cluster "
                f"{have.get('cluster')!r}, not node {node_id} of cluster {cluster!r}")
        if "groups" not in have:
            # Made before the groups were recorded: they cannot be checked this once, and
            # are from now on.
            _record_identity(identity, cluster, node_id, groups)
        elif have["groups"] != groups:
            raise InvalidArgumentError(
                f"data directory {directory} was made for a cluster {cluster!r} whose groups "
                f"have other members ({_membership_change(have['groups'], groups)}): a "
                f"cluster's regions and nodes cannot change under its data")
        if have.get("opened"):
            for gid in hosted:
                # Made afresh, the group would have forgotten its Raft term, vote and log: it
                # could vote twice in a term, and what it had acknowledged would be lost (a
                # lone meta group's catalog, all of it).
                base = directory / "groups" / str(gid)
                if not base.is_dir():
                    raise CorruptStateError(
                        f"data directory {directory} has lost the data of group {gid}: {base} "
                        f"is missing, and the group's Raft state (term, vote, log) with it",
                        str(base))
    except BaseException:
        identity.close()
        raise
    return identity


def _record_identity(identity: DurableState, cluster: str, node_id: int,
                     groups: list[list]) -> None:
    """Records in ``identity`` whose directory this is (see :func:`_open_identity`)."""
    identity.store(msgpack.packb({"cluster": cluster, "node": node_id, "groups": groups}))


def _record_opened(identity: DurableState) -> None:
    """Records in ``identity``, once, that the node has made every group it hosts: from then
    on a group whose directory is missing has lost its data (see :func:`_open_identity`)."""
    have = msgpack.unpackb(identity.load(), raw=False)
    if not have.get("opened"):
        identity.store(msgpack.packb({**have, "opened": True}))


def _membership_change(had: list, now: list) -> str:
    """The first group whose recorded placement differs from the configuration's, in words."""
    before = {g[0]: g for g in had if isinstance(g, list) and len(g) == 5}
    after = {g[0]: g for g in now}
    for gid in sorted(set(before) | set(after)):
        if before.get(gid) != after.get(gid):
            return (f"group {gid}: {_describe_group(before.get(gid))} in the directory, "
                    f"{_describe_group(after.get(gid))} in the configuration")
    return "the groups differ"


def _describe_group(g: list | None) -> str:
    if g is None:
        return "no such group"
    _, kind, region, voters, learners = g
    home = f" of {region}" if region else ""
    return f"{kind} group{home} with voters {voters} and learners {learners}"


def _answers(replica: GroupReplica, voter: int) -> bool:
    """Whether ``voter`` has answered this leader of the replica's group lately: it has
    acknowledged entries of this term (a voter that is down has none: the leader starts
    each term knowing nothing of the others' logs) and answered within the last election
    timeout. Not the quorum check's ``active`` flag: that is cleared at every check and set
    again only by the next answer, so an idle group's voter across the WAN (heartbeats every
    few ticks, a round trip each) is not ``active`` for a good part of every period, and a
    caller checking on a period of its own, in step with the ticks, may always find it so."""
    core = replica.node.core
    progress = core.status()["progress"].get(voter)
    return (progress is not None and progress["match"] > 0
            and progress["heard_ago"] <= core.config.election_tick)


def _forget_old_lag(samples: collections.deque, now: int) -> None:
    """Drops the lag samples applied more than :data:`LAG_WINDOW_S` before ``now`` (a
    timestamp): they are in the order they were taken, so the old ones are at the left."""
    horizon = now - int(LAG_WINDOW_S * 1e9)
    while samples and samples[0][0] < horizon:
        samples.popleft()
