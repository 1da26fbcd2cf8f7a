"""A transport whose ``send`` raises stops the node that sent, as a step error does.

Integration tests over the trio driver (real time, real files, every wait bounded): the
messages a tick or a received batch produce are sent from the ticker's task or the
transport's receiving task. An exception there must stop that node (never log-and-continue,
STYLE §1) — it must not escape into the ticker, which serves every node of the process, nor
into the transport task that delivered the batch, which belongs to the sending peer.
"""

from __future__ import annotations

import pytest
import trio

from raft.types import MessageType

from test_raft_driver import TICK, _leaves, cluster

MT = MessageType


class Planted(Exception):
    pass


class _StopOrder(dict):
    """The cluster's node map, recording the order in which nodes leave it (stop)."""

    def __init__(self, nodes):
        super().__init__(nodes)
        self.stopped: list[int] = []

    def pop(self, key, *default):
        if key in self:
            self.stopped.append(key)
        return super().pop(key, *default)


async def _first_to_stop(tmp_path, pick, kinds):
    """Runs a cluster until a node stops, after planting a failing ``send`` on the node
    ``pick(cluster, leader id)`` for messages of the given kinds; returns (the node planted
    on, the order nodes stopped in, the error the cluster raised)."""
    failing: set[int] = set()

    def on_send(i, msgs):
        if i in failing and any(m.type in kinds for m in msgs):
            raise Planted(f"planted: node {i} cannot send")

    victim = None
    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path, on_send=on_send) as c:
            lid = await c.leader()
            victim = pick(c, lid)
            with trio.fail_after(10):
                await c.nodes[lid].propose(b"x")
                # Idle from here on: a heartbeat and its answer are all either node has to
                # do, so the driver sends them without a Ready.
                await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
                while c.nodes[victim].core.has_ready():
                    await trio.sleep(TICK)
            c.nodes = order = _StopOrder(c.nodes)
            failing.add(victim)
            with trio.fail_after(10):
                while victim in c.nodes:
                    await trio.sleep(TICK)
    return victim, order.stopped, info.value


async def test_a_send_failing_after_a_received_batch_stops_the_receiving_node(tmp_path):
    """A follower answers the leader's heartbeats from the transport task that delivered
    them — the leader's link task on the in-memory network. Its failing send must stop the
    follower, not end that task (taking the leader's endpoint down with it)."""
    victim, stopped, error = await _first_to_stop(
        tmp_path, lambda c, lid: next(i for i in c.ids if i != lid),
        {MT.HEARTBEAT_RESP, MT.APPEND_RESP})
    assert stopped and stopped[0] == victim, (victim, stopped)
    assert any(isinstance(e, Planted) for e in _leaves(error)), repr(error)


async def test_a_send_failing_on_a_tick_stops_the_node_not_the_process(tmp_path):
    """A leader sends its heartbeats from the process's ticker task. Its failing send must
    stop the leader, not escape into the ticker (a system task: trio would abort the whole
    run with TrioInternalError)."""
    victim, stopped, error = await _first_to_stop(
        tmp_path, lambda c, lid: lid, {MT.HEARTBEAT})
    assert not isinstance(error, trio.TrioInternalError), repr(error)
    assert stopped and stopped[0] == victim, (victim, stopped)
    assert any(isinstance(e, Planted) for e in _leaves(error)), repr(error)
