"""The client library (engine/client.py) against a node that misbehaves: never answers, restarts,
cannot be reached, or fails two calls at once.

The node is a fake: ``serve_rpc`` with just enough handlers for ``engine.connect`` and the calls
under test, so each failure is exactly the one the test means. Nothing waits on the clock for an
outcome: a test that needs time to pass bounds it with a guard that only a bug reaches.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import asdict

import pytest
import trio
import trio.testing

import engine
from engine.config import Limits
from engine.errors import (
    AmbiguousCommitError,
    InvalidArgumentError,
    NotLeaderError,
    UnavailableError,
)
from engine.replica import GroupReplica
from engine.rpc import (
    FrameDecoder,
    NotSentError,
    RemoteError,
    RpcConnection,
    connect_rpc,
    encode_response,
    serve_rpc,
)
from raft.driver import RaftTimeoutError
from raft.types import RaftError

HOST = "127.0.0.1"
GUARD_S = 10  # only ever reached by a bug that hangs
TIMEOUT_S = 0.5  # the clients' request_timeout_s where a node never answers


def describe_for(port: int, data_groups: int = 1) -> dict:
    # Region r<g> has data group g; the one node is the voter of every group.
    groups = {0: {"region": "", "kind": "meta", "voters": [1], "learners": [], "leader": 1}}
    for g in range(1, data_groups + 1):
        groups[g] = {"region": f"r{g}", "kind": "data", "voters": [1], "learners": [],
                     "leader": 1}
    return {
        "cluster": "fake", "node": 1, "region": "r1",
        "regions": [f"r{g}" for g in range(1, data_groups + 1)],
        "nodes": {1: ["r1", HOST, port]}, "groups": groups, "wan_latency_ms": [],
        "limits": asdict(Limits()), "max_clock_offset_ns": 500_000_000,
    }


class FakeNode:
    """One node serving ``describe``, ``keyspace.get`` (keyspace ``ks<g>`` is homed in region
    ``r<g>``, hence data group ``g``; ``ks`` in ``r1``), ``read`` (nothing stored) and
    ``commit``; tests replace handlers. ``restart()`` drops every connection and listens again
    on the same port."""

    def __init__(self, nursery: trio.Nursery, data_groups: int = 1):
        self.nursery = nursery
        self.data_groups = data_groups
        self.port = 0
        self.scope: trio.CancelScope | None = None
        self.handlers = {"describe": self._describe, "keyspace.get": self._keyspace,
                         "read": self._read, "commit": self._commit}
        self.clock_now = lambda: 0  # the timestamp on its answers

    async def _describe(self, p, ctx):
        return describe_for(self.port, self.data_groups)

    async def _keyspace(self, p, ctx):
        name = p["name"]
        group = int(name[2:]) if name[2:] else 1
        return {"id": group, "name": name, "mode": "global", "home": f"r{group}"}

    async def _read(self, p, ctx):
        return {"ts": p.get("min_ts") or 5, "until": 5, "values": [None for _ in p["keys"]]}

    async def _commit(self, p, ctx):
        return {"ts": 6}

    async def start(self) -> None:
        scope = self.scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await serve_rpc(self.handlers, HOST, self.port, clock_now=self.clock_now,
                                task_status=task_status)

        self.port = await self.nursery.start(run)

    async def restart(self) -> None:
        self.scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        await self.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


async def hang(p, ctx):
    await trio.sleep_forever()


async def test_connect_moves_on_from_a_node_that_accepts_but_never_answers(nursery):
    # A paused (SIGSTOPped) node still completes TCP handshakes: connecting used to wait for
    # its answer until the whole request timeout ran out, never asking the next address.
    silent, node = FakeNode(nursery), FakeNode(nursery)
    silent.handlers["describe"] = hang
    await silent.start()
    await node.start()
    t0 = trio.current_time()
    with trio.fail_after(GUARD_S):
        async with engine.connect([silent.address, node.address],
                                  request_timeout_s=GUARD_S - 2) as db:
            assert db.region == "r1"
    assert trio.current_time() - t0 < GUARD_S / 2


async def test_connect_moves_on_from_an_address_that_drops_every_packet(nursery, black_hole):
    # Connecting to the first address took the whole connect timeout (2 s), longer than the
    # CONNECT_ATTEMPT_S each address gets, before the next one was asked; and with only that
    # address, connect() overran request_timeout_s by as much.
    node = FakeNode(nursery)
    await node.start()
    t0 = trio.current_time()
    with trio.fail_after(GUARD_S):
        async with engine.connect([f"{HOST}:{black_hole}", node.address],
                                  request_timeout_s=GUARD_S - 2) as db:
            assert db.region == "r1"
    assert trio.current_time() - t0 < 1.8 * engine.client.CONNECT_ATTEMPT_S
    t0 = trio.current_time()
    with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="no connection"):
        async with engine.connect([f"{HOST}:{black_hole}"], request_timeout_s=TIMEOUT_S):
            pass
    assert trio.current_time() - t0 < 3 * TIMEOUT_S


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("max_clock_offset_ns"),  # a node of an older version
    lambda d: d.update(nodes={1: ["r1", HOST]}),
    lambda d: d.update(groups=[]),
    lambda d: d["groups"][0].pop("region"),
])
async def test_a_description_this_client_cannot_read_is_one_clear_error(nursery, damage):
    # A node of another version (a rolling upgrade) answers describe in a form this client
    # cannot read: connect() raised a bare KeyError (or TypeError) from deep inside.
    node, error = await _connect_to_a_damaged_description(nursery, damage)
    assert node.address in error


async def _connect_to_a_damaged_description(nursery, damage) -> tuple[FakeNode, str]:
    """connect() to a node whose description ``damage`` changed, which must fail as the one
    clear error of a description this client cannot read: the node and that error."""
    node = FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(node.port)
        damage(d)
        return d

    node.handlers["describe"] = describe
    await node.start()
    with trio.fail_after(GUARD_S), pytest.raises(UnavailableError) as info:
        async with engine.connect([node.address], request_timeout_s=TIMEOUT_S):
            pass
    assert "a description of the cluster this client cannot read" in str(info.value)
    return node, str(info.value)


async def test_a_read_from_a_node_that_never_answers_gives_up_in_time(nursery):
    node = FakeNode(nursery)
    node.handlers["read"] = hang
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        t0 = trio.current_time()
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="no answer"):
            await db.read("ks", b"k")
        assert trio.current_time() - t0 < 5 * TIMEOUT_S


@pytest.mark.parametrize("staleness", ["bounded:10", "exact:1"])
async def test_a_stale_read_from_replicas_that_never_answer_gives_up_in_time(nursery,
                                                                             staleness):
    # A stale read asks the replicas of the client's region first -- in the group's home
    # region, its three voters -- and then the group's voters. Each local replica held the
    # call for half of request_timeout_s, and the voters had a whole request_timeout_s of
    # their own after that: 2.5 times the timeout here, more in larger regions.
    nodes = [FakeNode(nursery) for _ in range(3)]

    async def describe(p, ctx):
        d = describe_for(nodes[0].port)
        d["nodes"] = {i: ["r1", HOST, node.port] for i, node in enumerate(nodes, 1)}
        for group in d["groups"].values():
            group["voters"] = [1, 2, 3]
        return d

    for node in nodes:
        node.handlers.update(describe=describe, read=hang)
        await node.start()
    async with engine.connect([nodes[0].address], request_timeout_s=TIMEOUT_S) as db:
        t0 = trio.current_time()
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="no answer"):
            await db.read("ks", b"k", staleness=staleness)
        assert trio.current_time() - t0 < 2 * TIMEOUT_S


async def test_a_commit_to_a_node_that_never_answers_is_ambiguous_in_time(nursery):
    node = FakeNode(nursery)
    node.handlers["commit"] = hang
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(AmbiguousCommitError,
                                                     match="may or may not have committed"):
            async with db.transaction() as tx:
                await tx.put("ks", b"k", b"v")


async def test_reconnecting_after_restarts_leaves_no_task_or_connection_behind(nursery):
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=GUARD_S) as db:
        await db.read("ks", b"k")
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = len(db._nursery.child_tasks)
        for _ in range(10):
            await node.restart()  # every connection to it drops
            await db.read("ks", b"k")  # and the client reconnects
        await trio.testing.wait_all_tasks_blocked()
        assert len(db._nursery.child_tasks) == tasks_before
        assert [c for c in db._conns.values() if c is not None and not c.closed] != []
        assert len(db._conns) == 1


async def test_a_call_cancelled_as_its_connection_is_made_ends_at_once(nursery, monkeypatch):
    # The caller's cancellation falls once the connection is made, before the handle has
    # taken it: the connection, held in the caller's task (``started`` does not move a task
    # out of a cancelled caller), was shielded there, and the cancelled call waited until the
    # node closed it for carrying no request (10 s).
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=GUARD_S) as db:
        connect_rpc_of_client = engine.client.connect_rpc
        with trio.CancelScope() as caller:

            @contextlib.asynccontextmanager
            async def cancelled_once_connected(*args, **kwargs):
                async with connect_rpc_of_client(*args, **kwargs) as conn:
                    caller.cancel()
                    yield conn

            monkeypatch.setattr(engine.client, "connect_rpc", cancelled_once_connected)
            t0 = trio.current_time()
            await db.read("ks", b"k")
        assert caller.cancelled_caught
        assert trio.current_time() - t0 < 1.0
        monkeypatch.setattr(engine.client, "connect_rpc", connect_rpc_of_client)
        with trio.fail_after(GUARD_S):
            assert await db.read("ks", b"k") is None
        assert len(db._holding) == 1


@pytest.fixture
def black_hole():
    """The port of a listener whose accept queue is full: the kernel drops every further SYN,
    so a connection to it neither completes nor fails (a node whose host is down, or cut off
    by a firewall that drops packets)."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind((HOST, 0))
        listener.listen(0)  # room for one connection, never accepted
        filler.settimeout(GUARD_S)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


async def test_a_node_that_cannot_be_connected_to_holds_a_call_only_until_its_deadline(
        nursery, black_hole):
    # Node 1, the groups' leader as the client knows them, drops every packet. Connecting to
    # it took the whole connect timeout (2 s) whatever the request timeout, before node 2 was
    # asked: each call overran request_timeout_s by that much.
    node = FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(node.port)
        d["nodes"] = {1: ["r1", HOST, black_hole], 2: ["r1", HOST, node.port]}
        for group in d["groups"].values():
            group["voters"] = [1, 2]
        return d

    node.handlers["describe"] = describe
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        t0 = trio.current_time()
        with trio.fail_after(GUARD_S):
            assert await db.read("ks", b"k") is None  # group 0, then group 1: node 2 answers
        assert trio.current_time() - t0 < 3 * TIMEOUT_S
        assert 1 not in db._conns


async def test_calls_to_an_unreachable_node_do_not_open_a_connection_each(nursery):
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        await db.read("ks", b"k")
        conn = db._conns[1]
        db.unreachable = frozenset({1})  # as LocalCluster.partition makes it
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="unreachable"):
            await db.read("ks", b"k")
        assert db._conns[1] is conn and not conn.closed
        db.unreachable = frozenset()
        await db.read("ks", b"k")
        assert db._conns[1] is conn


async def test_two_refreshes_failing_at_once_raise_one_library_error(nursery):
    # A read in a third group moves the snapshot: the two groups read before are refreshed at
    # once, and both fail before either yields (so neither is cancelled by the other's
    # failure). The caller gets one of the library's errors, not a group of them.
    node = FakeNode(nursery, data_groups=3)
    base_read = node._read

    async def read(p, ctx):
        if p["group"] == 3 and p.get("min_ts") == 5:
            raise RemoteError("restart", "a commit in the window", retryable=True,
                              details={"ts": 9})
        return await base_read(p, ctx)

    node.handlers["read"] = read
    await node.start()
    async with engine.connect([node.address], request_timeout_s=GUARD_S) as db:
        call_group = db._call_group
        refreshed = []

        async def failing_refresh(group, method, payload, **kwargs):
            if method != "refresh":
                return await call_group(group, method, payload, **kwargs)
            refreshed.append(group)
            raise UnavailableError(f"group {group} is busy")

        db._call_group = failing_refresh
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="busy"):
            async with db.transaction() as tx:
                await tx.get("ks1", b"a")
                await tx.get("ks2", b"b")
                await tx.get("ks3", b"c")
        assert sorted(refreshed) == [1, 2]


async def test_a_call_waiting_for_room_to_send_is_not_sent_when_the_connection_ends(nursery):
    # The server runs one request and stops reading: the socket buffers, then the
    # connection's own queue, fill up, and the next call waits for room. It wrote nothing, so
    # when the connection ends it is NotSentError (safe to send elsewhere), not "may have run".
    async def block(p, ctx):
        await trio.sleep_forever()

    port = await nursery.start(lambda task_status: serve_rpc(
        {"block": block}, HOST, 0, max_concurrent_requests=1, task_status=task_status))
    outcomes: dict[int, type] = {}
    with trio.fail_after(GUARD_S):
        async with connect_rpc(HOST, port) as conn:
            assert isinstance(conn, RpcConnection)

            async def call(i, payload):
                try:
                    await conn.call("block", payload)
                except Exception as exc:
                    outcomes[i] = type(exc)

            async with trio.open_nursery() as calls:
                big = b"x" * (1 << 20)
                sent = 0
                while conn._wire._queued_bytes < (4 << 20):
                    calls.start_soon(call, sent, big)
                    sent += 1
                    await trio.testing.wait_all_tasks_blocked()
                calls.start_soon(call, sent, b"tiny")
                await trio.testing.wait_all_tasks_blocked()
                assert conn._wire.frames_sent == sent  # the last call has no frame out
                await conn.aclose()
    assert outcomes[sent] is NotSentError


class _CutOffLeader:
    """A Raft node that still believes it leads (a lease holds) and confirms reads at once,
    but whose proposals never get applied: ``error`` is what it raises for them."""

    id = 1
    is_leader = True
    leader = 1

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.proposed = 0

    async def linearizable_read(self, *, timeout=None) -> int:
        return 7

    async def propose(self, data: bytes, *, timeout=None):
        self.proposed += 1
        raise self.error


class _NothingClosed:
    closed_ts = 0
    configured_lifetime_ns = 10**9


class _Clock:
    def now(self) -> int:
        return 1_000


@pytest.mark.parametrize("error", [
    RaftTimeoutError("entry 9 was not applied within the proposal's timeout"),
    RaftError("raft node 1 stopped"),
])
async def test_a_close_whose_outcome_is_unknown_sends_the_reader_elsewhere(error):
    # A read that must close time first (one CLOSE entry) on a leader that cannot get the
    # entry applied. A CLOSE writes no data, yet its unknown outcome reached readers (keyspace
    # lookups included) as AmbiguousCommitError, which no retry loop retries and which says
    # that something may have been committed. The reader must try another replica instead.
    node = _CutOffLeader(error)
    replica = GroupReplica(5, node, _NothingClosed(), _Clock(), close_interval=0)
    with pytest.raises(NotLeaderError) as info:
        await replica.snapshot_ts(min_ts=500)
    assert node.proposed == 1  # it did try to close
    assert info.value.group == 5 and info.value.leader == 0
    with pytest.raises(NotLeaderError):
        await replica.close_up_to(500)


async def test_a_read_at_a_stopped_replica_is_sent_to_another():
    # A stopped Raft node (closing, or its disk failed) raises a plain RaftError: the read
    # used to reach the client as the RPC code ``internal``, a raw RemoteError, with no try
    # at another replica.
    class _Stopped(_CutOffLeader):
        async def linearizable_read(self, *, timeout=None) -> int:
            raise RaftError("raft node 1 stopped: OSError(5, 'Input/output error')")

    replica = GroupReplica(5, _Stopped(RaftError("unused")), _NothingClosed(), _Clock(),
                           close_interval=0)
    with pytest.raises(NotLeaderError, match="stopped") as info:
        await replica.snapshot_ts(min_ts=500)
    assert info.value.group == 5 and info.value.leader == 0


@pytest.mark.parametrize("fault,operation", [
    ("refuses", "read"), ("refuses", "stale read"), ("refuses", "commit"),
    ("answers from the future", "read"), ("answers from the future", "stale read"),
    ("answers from the end of time", "read"), ("answers from the end of time", "stale read"),
])
async def test_a_replica_whose_clock_is_off_sends_the_call_to_another(nursery, fault, operation):
    # Node 1 was the group's leader when its clock went off: it refuses every data request
    # with ``clock_offset`` (before running it) and hands its groups over to node 2; or, its
    # clock far ahead, it answers with timestamps that the client refuses to take. A client
    # that still knew node 1 as the leader failed every call at once with UnavailableError,
    # without asking node 2, the leader now: one node's bad clock took the group away from
    # that client for good. A stale read, which asks the replica of the client's region
    # (node 1) first, did not fall back to the group's voters either (it raised
    # UnavailableError, or ClockOffsetError).
    skewed, healthy = FakeNode(nursery), FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(skewed.port)
        d["nodes"] = {1: ["r1", HOST, skewed.port], 2: ["r2", HOST, healthy.port]}
        for group in d["groups"].values():
            group["voters"] = [1, 2]
        return d

    async def refuse(p, ctx):
        raise RemoteError("clock_offset", "node 1 refuses to serve: clock offset beyond the "
                                          "maximum with 2 of 2 peers")

    ran = []

    async def commit(p, ctx):
        ran.append(p["group"])
        return {"ts": 6}

    skewed.handlers.update(describe=describe)
    if fault == "refuses":
        skewed.handlers.update(read=refuse, commit=refuse)
    elif fault == "answers from the future":
        skewed.clock_now = lambda: time.time_ns() + 3600 * 10**9
    else:
        skewed.clock_now = lambda: 2**64 - 1  # valid on the wire, beyond every timestamp
    healthy.handlers.update(describe=describe, commit=commit)
    await skewed.start()
    await healthy.start()
    async with engine.connect([skewed.address], request_timeout_s=GUARD_S - 2) as db:
        assert db._candidates(1)[0] == 1  # node 1 is the leader the client knows
        with trio.fail_after(GUARD_S):
            for _ in range(3):
                if operation == "read":
                    assert await db.read("ks", b"k") is None
                elif operation == "stale read":
                    assert await db.read("ks", b"k", staleness="bounded:10") is None
                else:
                    async with db.transaction() as tx:
                        await tx.put("ks", b"k", b"v")
        assert db._candidates(1)[0] == 2  # it learnt where the group is served now
        assert ran == ([1, 1, 1] if operation == "commit" else [])


@pytest.mark.parametrize("ts", [2**64 - 2, 2**64 - 1])
async def test_a_commit_answered_from_the_end_of_time_is_ambiguous(nursery, ts):
    # The node ran the commit; its answer's timestamp is refused. 2**64 - 1, which the wire
    # carries but no timestamp reaches, was raised as InvalidArgumentError, as if the
    # caller's transaction had been refused unrun.
    node = FakeNode(nursery)
    ran = []

    async def commit(p, ctx):
        ran.append(p["group"])
        return {"ts": 6}

    node.handlers["commit"] = commit
    node.clock_now = lambda: ts if ran else 0  # the commit's answer only
    await node.start()
    async with engine.connect([node.address], request_timeout_s=GUARD_S - 2) as db:
        last = db.clock.last
        tx = db.transaction()
        await tx.put("ks", b"k", b"v")
        with trio.fail_after(GUARD_S), pytest.raises(AmbiguousCommitError,
                                                     match="clock offset"):
            await tx.commit()
        assert ran == [1]
        assert last <= db.clock.last < ts


async def test_status_lists_a_node_that_never_answers_as_an_error_in_time(nursery):
    # status() and statistics() asked each node in turn with no deadline: one node that
    # accepts and never answers (paused, or wedged) hung them for good.
    healthy, silent = FakeNode(nursery), FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(healthy.port)
        d["nodes"] = {1: ["r1", HOST, healthy.port], 2: ["r1", HOST, silent.port]}
        return d

    async def status(p, ctx):
        return {"node": 1, "region": "r1", "groups": {}}

    healthy.handlers.update(describe=describe, status=status)
    silent.handlers.update(describe=describe, status=hang)
    await healthy.start()
    await silent.start()
    async with engine.connect([healthy.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            out = await db.status()
        assert out[1]["node"] == 1
        assert "error" in out[2] and set(out) == {1, 2}


BAD_NODE_IDS = ["2", None, 2.0, True, [2], {"id": 2}, -1, 99]


@pytest.mark.parametrize("hint", BAD_NODE_IDS)
async def test_a_leader_hint_that_names_no_known_node_is_no_hint(nursery, hint):
    # A not_leader answer whose hint was a list or a map raised TypeError (unhashable) out of
    # the call; a float or a bool was kept as the group's leader.
    node, leader = FakeNode(nursery), FakeNode(nursery)
    told = []

    async def describe(p, ctx):
        d = describe_for(node.port)
        d["nodes"] = {1: ["r1", HOST, node.port], 2: ["r1", HOST, leader.port]}
        for group in d["groups"].values():
            group["voters"], group["leader"] = [1, 2], 1
        return d

    async def read(p, ctx):
        told.append(p["group"])
        raise RemoteError("not_leader", "not the leader", retryable=True,
                          details={"group": p["group"], "leader": hint})

    node.handlers.update(describe=describe, read=read)
    leader.handlers["describe"] = describe
    await node.start()
    await leader.start()
    async with engine.connect([node.address], request_timeout_s=GUARD_S - 2) as db:
        with trio.fail_after(GUARD_S):
            assert await db.read("ks", b"k") is None  # node 2 is asked next, and answers
        assert told and db._leaders[1] == 2
        assert all(type(leader) is int for leader in db._leaders.values())


@pytest.mark.parametrize("leader", BAD_NODE_IDS)
async def test_a_described_leader_that_names_no_known_node_is_no_leader(nursery, leader):
    # The description's leader of a group was taken as it came: a str or a node id it does
    # not describe raised KeyError at the first call to the group, a list TypeError.
    node = FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(node.port)
        for group in d["groups"].values():
            group["leader"] = leader
        return d

    node.handlers["describe"] = describe
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            assert await db.read("ks", b"k") is None
        assert db._leaders == {0: 1, 1: 1}


@pytest.mark.parametrize("voters", [[1, 99], ["1"], [[1]], [1.5]])
async def test_a_description_naming_undescribed_voters_is_one_clear_error(nursery, voters):
    # Voters the description does not list among its nodes raised KeyError (or TypeError) at
    # the first call that tried one of them, or went unnoticed until then.
    _, error = await _connect_to_a_damaged_description(
        nursery, lambda d: d["groups"][1].update(voters=voters))
    assert "group 1 names nodes that are not described" in error


async def test_a_reply_cut_off_halfway_through_its_frame_does_not_wedge_the_connection(nursery):
    # The node wrote half of a reply's frame and then nothing more on that connection (a
    # process paused mid-write, a bug). Every later reply on it is behind the missing half:
    # the client kept the connection, and each later call to the node timed out, until the
    # node itself closed it.
    cut = [True]

    async def handle(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        broken = False
        while data := await stream.receive_some(65536):
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if broken:
                    continue
                if frame.method == "describe":
                    result = describe_for(port)
                elif frame.method == "keyspace.get":
                    result = {"id": 1, "name": "ks", "mode": "global", "home": "r1"}
                else:
                    result = {"ts": 5, "values": [b"v"]}
                reply = encode_response(frame.call_id, 0, result)
                if frame.method == "read" and cut:
                    cut.pop()
                    reply, broken = reply[:len(reply) // 2], True
                await stream.send_all(reply)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port = listeners[0].socket.getsockname()[1]
    async with engine.connect([f"{HOST}:{port}"], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError, match="no answer"):
            await db.read("ks", b"k")
        with trio.fail_after(GUARD_S):
            assert await db.read("ks", b"k") == b"v"


@pytest.mark.parametrize("method", ["status", "statistics"])
async def test_status_of_a_closed_database_says_it_is_closed(nursery, method):
    # Each node was asked through the closed connection, and each refusal was listed as
    # that node's error: the call answered {node: {"error": "...closed"}} for every node,
    # a cluster that looked down, rather than saying that the handle was closed.
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        pass
    with trio.fail_after(GUARD_S), pytest.raises(InvalidArgumentError, match="closed"):
        await getattr(db, method)()


async def test_a_closed_database_hands_out_no_transaction(nursery):
    # It handed one out, and one that wrote nothing "committed" without error.
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        pass
    with pytest.raises(InvalidArgumentError, match="closed"):
        db.transaction()
    with trio.fail_after(GUARD_S), pytest.raises(InvalidArgumentError, match="closed"):
        await db.run_transaction(lambda tx: tx.rollback())


async def test_run_transaction_does_not_run_again_a_transaction_its_function_committed(
        nursery):
    # A conflict raised by the function after its own commit (another transaction's, such
    # as a nested run_transaction giving up) was retried: the function ran again and its
    # writes were committed a second time.
    node = FakeNode(nursery)
    commits = []

    async def commit(p, ctx):
        commits.append(p["writes"])
        return {"ts": 6}

    node.handlers["commit"] = commit
    await node.start()

    async def debit(tx):
        await tx.put("ks", b"k", b"v")
        await tx.commit()
        raise engine.TransactionConflictError("another transaction's conflict", "write_write")

    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(engine.TransactionConflictError,
                                                     match="another transaction's"):
            await db.run_transaction(debit, base_delay_s=0, max_delay_s=0)
    assert len(commits) == 1


async def test_a_drain_whose_answer_is_lost_is_made_again(nursery):
    # Removing conflict-log records can be repeated, but a drain whose connection dropped
    # before its answer raised AmbiguousCommitError ("may or may not have committed"),
    # which no retry loop retries.
    from engine.client import ConflictRecord
    from engine.group import conflict_log_bounds

    node = FakeNode(nursery)
    drains = []

    async def drain(p, ctx):
        drains.append(p["keys"])
        if len(drains) == 1:
            nursery.start_soon(node.restart)  # the connection drops before the answer
            await trio.sleep_forever()
        return {}

    node.handlers["conflicts.drain"] = drain
    await node.start()
    record_id = conflict_log_bounds(1)[0] + b"\x00\x01"
    record = ConflictRecord(b"k", (2, "r1"), (1, "r2"), b"v", "lww", record_id)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            await db.drain_conflicts("ks", [record])
    assert drains == [[record_id], [record_id]]
