"""When a node trusts its clock enough to serve (ARCH §9): only once a peer has measured it.

Unit tests of :class:`engine.node.Node`'s clock checks: the node is built but never run, its
wall and monotonic clocks are injected, and its pings go over a fake connection. Nothing
sleeps or touches the network.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import engine.node
from engine.config import NodeConfig, default_local_cluster
from engine.node import Node
from test_node_clocks import HOUR, MS, START, FakeClock


class Pings:
    """A connection whose pings are answered at once, with the peer's wall clock reading
    ``peer_ns`` (or with ``reply`` as it is, if given)."""

    def __init__(self, peer_ns: int = 0, reply=None) -> None:
        self.peer_ns = peer_ns
        self.reply = reply

    async def call(self, method, payload):
        assert method == "ping"
        if self.reply is not None:
            return self.reply
        return {"node": 0, "physical_ns": self.peer_ns}


def make_node(monkeypatch, wall_ns: int, nodes: int = 3):
    """Node 1 of ``nodes`` in one region, with its wall and monotonic clocks injected."""
    wall, mono = FakeClock(wall_ns), FakeClock(0)
    monkeypatch.setattr(engine.node, "_boot_clock_ns", mono)
    cluster = default_local_cluster(("us-east",), nodes)
    node = Node(NodeConfig(node_id=1, data_dir="unused", cluster=cluster), physical_clock=wall)
    peers = [n for n in cluster.all_nodes() if n.id != 1]
    return node, peers, wall


async def ping_once(node, peer, conn) -> None:
    """One ping of ``peer``, answered; the pinger is then stopped while it waits for the
    next round."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._ping_until_lost, peer, conn)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def test_a_node_that_reached_no_peer_does_not_serve(monkeypatch):
    # Restarted while every peer is down or cut off: its clock, which the hybrid clock
    # follows from its first reading, may be an hour off, and nobody has said otherwise.
    # It must not serve, lead, close time or purge on it.
    node, peers, wall = make_node(monkeypatch, START + HOUR)
    assert node.clock_problem is not None
    node._check_clocks()
    problem = node.clock_problem
    assert problem is not None
    assert "not been measured" in problem and "2, 3" in problem, problem


def test_a_node_alone_in_its_cluster_serves(monkeypatch):
    # Nobody to ask: its clock is all there is.
    node, _, _ = make_node(monkeypatch, START, nodes=1)
    assert node.clock_problem is None


async def test_the_first_peer_that_finds_the_clock_right_lets_the_node_serve(monkeypatch):
    # One peer of two answers (the other is down): within bounds, so the node serves, at
    # once rather than at the next round of checks.
    node, peers, wall = make_node(monkeypatch, START)
    node._check_clocks()
    assert node.clock_problem is not None
    await ping_once(node, peers[0], Pings(START + 3 * MS))
    assert node.clock_problem is None


async def test_a_peer_that_finds_the_clock_wrong_keeps_the_node_from_serving(monkeypatch):
    node, peers, wall = make_node(monkeypatch, START + HOUR)
    node._check_clocks()
    await ping_once(node, peers[0], Pings(START))
    problem = node.clock_problem
    assert problem is not None and "1 of 1 peers" in problem and "2 at -" in problem, problem


async def test_a_measured_node_cut_off_from_every_peer_goes_on_serving(monkeypatch):
    # Its clock was found right; once the measurements are stale it knows of nothing wrong.
    # A jump forward meanwhile is not followed (the hybrid clock waits for peers to vouch),
    # and a step back past the offset is its own check's.
    node, peers, wall = make_node(monkeypatch, START)
    await ping_once(node, peers[0], Pings(START))
    assert node.clock_problem is None
    wall.ns += HOUR // 2
    assert node.monitor.fresh(wall.ns) == ()
    node._check_clocks()
    assert node.clock_problem is None


@pytest.mark.parametrize("reply", [
    {"node": 2}, {"node": 2, "physical_ns": "soon"}, {"node": 2, "physical_ns": True},
    {"node": 2, "physical_ns": -1}, {"node": 2, "physical_ns": 2**64}, [START], "pong", 7,
])
async def test_a_peer_that_answers_nonsense_measures_nothing(monkeypatch, reply):
    node, peers, wall = make_node(monkeypatch, START)
    node._check_clocks()
    with trio.fail_after(1):
        await node._ping_until_lost(peers[0], Pings(reply=reply))  # returns: reconnect
    assert node.monitor.offset(peers[0].id) is None
    assert node.clock_problem is not None and "not been measured" in node.clock_problem
