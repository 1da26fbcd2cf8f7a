"""A node's use of its clock-offset monitor (ARCH §9): pings measure the peers, and only
measurements taken wholly after a jump of the wall clock vouch for it.

Unit tests of :class:`engine.node.Node`'s clock logic: the node is built but never run, its
wall and monotonic clocks are injected, and its pings go over a fake connection that answers
when the test says. Nothing sleeps or touches the network.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.testing

import engine.node
from engine.config import NodeConfig, default_local_cluster
from engine.errors import InvalidArgumentError
from engine.node import Node
from engine.placement import data_group

MS = 1_000_000
HOUR = 3_600_000 * MS
START = 100 * HOUR


class FakeClock:
    """A clock that returns whatever the test sets."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


class HeldPings:
    """A connection whose pings are answered, with the peers' wall clocks reading
    ``peer_ns``, only once the test calls :meth:`answer`."""

    def __init__(self) -> None:
        self._answered = trio.Event()
        self.peer_ns = 0

    def answer(self, peer_ns: int) -> None:
        self.peer_ns = peer_ns
        self._answered.set()

    async def call(self, method, payload):
        assert method == "ping"
        await self._answered.wait()
        return {"node": 0, "physical_ns": self.peer_ns}


def make_node(monkeypatch, wall_ns: int):
    """Node 1 of three in one region, with its wall and monotonic clocks injected."""
    wall, mono = FakeClock(wall_ns), FakeClock(0)
    monkeypatch.setattr(engine.node, "_boot_clock_ns", mono)
    cluster = default_local_cluster(("us-east",), 3)
    node = Node(NodeConfig(node_id=1, data_dir="unused", cluster=cluster), physical_clock=wall)
    peers = [n for n in cluster.all_nodes() if n.id != 1]
    return node, peers, wall, mono


async def ping_round(node, peers, conn, while_in_flight) -> None:
    """One round of pings to every peer; ``while_in_flight`` runs while all are in flight."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(node._ping_until_lost, peer, conn)
        await trio.testing.wait_all_tasks_blocked()
        while_in_flight()
        await trio.testing.wait_all_tasks_blocked()  # answered; waiting for the next round
        nursery.cancel_scope.cancel()


def check_clocks(node) -> None:
    """What a round of the node's clock watch does when the monitor finds nothing wrong."""
    physical = node.clock.physical_ns()
    node.monitor.check(physical)
    node._trust_jumped_clock(physical)


async def test_a_ping_in_flight_when_the_clock_jumps_does_not_vouch_for_the_jump(monkeypatch):
    # The wall clock jumps an hour ahead while the pings of a round are in flight, and the
    # node stamps something right after (the jump is seen). Each measurement mixes a send
    # time before the jump with a receive time after it: half an hour of uncertainty, so none
    # is beyond the limit. They were received after the jump, yet they do not show the clock
    # as it now is: taking them as the peers' word let timestamps follow the jump.
    node, peers, wall, mono = make_node(monkeypatch, START)
    node.clock.now()

    def jump_while_in_flight() -> None:
        wall.ns, mono.ns = START + 50 * MS + HOUR, 50 * MS
        assert node.clock.now() == START + 50 * MS  # not followed
        assert node.clock.jumped_since == 50 * MS
        wall.ns, mono.ns = START + 100 * MS + HOUR, 100 * MS
        conn.answer(START + 50 * MS)  # the peers' clocks are right

    conn = HeldPings()
    await ping_round(node, peers, conn, jump_while_in_flight)
    assert len(node.monitor.fresh(wall.ns)) == 2
    check_clocks(node)
    assert node.clock.jumped_since == 50 * MS
    assert node.clock.now() < START + HOUR


async def test_pings_sent_after_a_jump_that_set_the_clock_right_vouch_for_it(monkeypatch):
    # The wall clock was an hour slow and is stepped right. Pings sent after the step find it
    # within bounds of every peer: timestamps follow it again.
    node, peers, wall, mono = make_node(monkeypatch, START - HOUR)
    node.clock.now()
    wall.ns, mono.ns = START + 10 * MS, 10 * MS
    assert node.clock.now() == START - HOUR + 10 * MS  # not followed until the peers vouch
    conn = HeldPings()

    def answer() -> None:
        wall.ns, mono.ns = START + 20 * MS, 20 * MS
        conn.answer(START + 15 * MS)

    await ping_round(node, peers, conn, answer)
    check_clocks(node)
    assert node.clock.jumped_since is None
    assert node.clock.now() == START + 20 * MS


async def test_a_partition_cuts_the_pings_as_it_cuts_raft(monkeypatch):
    # A node cut off from its peers (Node.isolate_from, as LocalCluster.partition does) must
    # measure nobody, as across a real partition: its pings used to go through, so a node
    # inside a partition went on being measured by peers it could not otherwise reach.
    node, peers, wall, mono = make_node(monkeypatch, START)
    node.isolate_from({2, 3})

    def no_connection(*args, **kwargs):
        raise AssertionError("a ping crossed the partition")

    monkeypatch.setattr(engine.node, "connect_rpc", no_connection)
    tried = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._ping_peer, peers[0], tried.append)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert tried == [2]
    conn = HeldPings()  # a connection made before the cut
    await ping_round(node, peers[1:], conn, lambda: conn.answer(START))
    assert node.monitor.offset(2) is None and node.monitor.offset(3) is None


def test_a_node_with_a_suspect_clock_hands_its_groups_to_voters_that_serve(monkeypatch):
    # Node 1's clock is suspect, and node 2 answered its last ping that it does not serve
    # either (its clock is suspect too, or not measured yet): a group handed to node 2 would
    # serve no client, and node 2 would hand it over again at its next check.
    node, _, _, _ = make_node(monkeypatch, START)
    gid = data_group(node.cluster, "us-east")
    assert node.placement[gid].conf.voters == (1, 2, 3)

    class Leading:
        is_leader = True
        targets: list[int] = []

        def transfer_leader(self, target: int) -> None:
            self.targets.append(target)

    raft = Leading()
    node.replicas = {gid: SimpleNamespace(node=raft)}
    node._peers_not_serving.add(2)
    for _ in range(3):
        node._hand_over_leadership()
    assert raft.targets == [3, 3, 3]
    node._peers_not_serving.add(3)  # nobody left to take it: it is not handed over at all
    node._hand_over_leadership()
    assert raft.targets == [3, 3, 3]


async def test_a_node_with_a_suspect_clock_records_no_shipping_progress(monkeypatch,
                                                                       autojump_clock):
    # Node 1 leads a regional group and cannot hand it over (it is the only voter that
    # serves, or the transfer has not happened yet), and its clock is suspect: its HLC runs
    # an hour ahead. The closer and the purger propose nothing on that clock; the report of
    # the destination's progress (SHIPPED) must not either, or the group's closed timestamp
    # is an hour ahead for good.
    node, _, _, _ = make_node(monkeypatch, START)
    node.clock.restore(START + HOUR)
    node._clock_problem = "its hybrid clock is an hour ahead of its physical clock"
    proposed = []

    class Origin:
        group = 5
        node = SimpleNamespace(is_leader=True)
        sm = SimpleNamespace(outbox_trimmed=0, shipped=lambda destination: 0,
                             outbox_after=lambda *args, **kwargs: [])

        async def wait_outbox(self):
            await trio.sleep_forever()

        async def propose(self, data):
            proposed.append(data)

    class Peers:
        async def _call_group(self, group, method, payload, **kwargs):
            assert method == "remote.watermark"
            return {"watermark": START}  # the destination applied a write at START

    node._peers = Peers()
    origin = Origin()
    with trio.move_on_after(10 * engine.node.SHIPPED_REPORT_S):
        await node._ship_while_leading(origin, 6)
    assert proposed == []
    node._clock_problem = None  # the clock is trusted again: the progress is recorded
    with trio.move_on_after(2 * engine.node.SHIPPED_REPORT_S):
        await node._ship_while_leading(origin, 6)
    assert proposed


def test_a_timestamp_ahead_of_a_jumped_clock_is_refused(monkeypatch):
    # The wall clock jumps an hour ahead, and timestamps do not follow it until the peers
    # vouch for it. A read or a decision naming a timestamp an hour ahead would close the
    # group up to it for good: it is as far ahead of this node's clock as before the jump.
    node, _, wall, mono = make_node(monkeypatch, START)
    node.clock.now()
    wall.ns, mono.ns = START + 10 * MS + HOUR, 10 * MS
    node._not_ahead("ts", START + 10 * MS)
    with pytest.raises(InvalidArgumentError, match="ahead of node 1's clock"):
        node._not_ahead("ts", START + HOUR)


def test_replication_behind_is_measured_on_the_clock_timestamps_follow(monkeypatch):
    # The wall clock jumps an hour ahead, and timestamps do not follow it until the peers
    # vouch for it. A regional write committed 10 ms before the jump, not shipped yet, is
    # 20 ms behind 10 ms after it, not an hour.
    wall, mono = FakeClock(START), FakeClock(0)
    monkeypatch.setattr(engine.node, "_boot_clock_ns", mono)
    cluster = default_local_cluster(("us-east", "eu-west"), 1)
    node = Node(NodeConfig(node_id=1, data_dir="unused", cluster=cluster), physical_clock=wall)
    node.clock.now()
    outbox = [(START - 10 * MS, [])]
    sm = SimpleNamespace(shipped=lambda destination: 0,
                         outbox_after=lambda after, limit: outbox)
    node.replicas = {data_group(cluster, "us-east"):
                     SimpleNamespace(node=SimpleNamespace(is_leader=True), sm=sm)}
    wall.ns, mono.ns = START + 10 * MS + HOUR, 10 * MS
    assert node._replication_behind_ms() == {"eu-west": 20.0}
