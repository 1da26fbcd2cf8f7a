"""A group's leader sweeps its prepared transactions for ones past their deadline and starts
their recovery (``Node._sweep_intents``). A sweep reads a bounded page of them, on the node's
event loop, and the next one goes on after it: recoveries that cannot finish (their primary
unreachable) must not keep the sweep from the transactions behind them, round after round.

Sweeps run against one group's state machine (no cluster, no sockets), on trio's mock clock;
recoveries are only recorded, and given up at once, as when their primary does not answer.
"""

from __future__ import annotations

import types

import pytest
import trio

import engine.node
from engine.config import NodeConfig, default_local_cluster
from engine.group import GroupStateMachine, encode_prepare
from engine.mvcc import MVCCStore
from engine.node import SWEEP_INTERVAL_S, Node
from engine.placement import data_group
from test_group import Log

T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them
FUTURE = 2**62  # a deadline no sweep reaches


class GivenUp:
    """Stands in for the node's nursery: records each recovery started, which then gives up
    at once (its transaction may be swept again)."""

    def __init__(self, node: Node) -> None:
        self.node, self.started = node, []

    def start_soon(self, fn, replica, intent) -> None:
        self.started.append(intent.txn_id)
        self.node._recovering.discard(intent.txn_id)


@pytest.fixture
def setup(tmp_path):
    cluster = default_local_cluster(("us-east", "eu-west"), 1, 20000)
    node = Node(NodeConfig(node_id=1, data_dir=str(tmp_path / "node"), cluster=cluster))
    here, away = data_group(cluster, "us-east"), data_group(cluster, "eu-west")
    store = MVCCStore(tmp_path / "g", map_size=1 << 26)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9)
    replica = types.SimpleNamespace(group=here, sm=sm,
                                    node=types.SimpleNamespace(is_leader=True))
    node._nursery = GivenUp(node)
    node._clock_problem = None  # its clock trusted, as once peers have measured it
    try:
        yield node, replica, away
    finally:
        sm.close()
        store.close()


def prepare(replica, away: int, deadlines: list[int]) -> list[int]:
    """Prepares a transaction per deadline here (ids 1, 2, ...), each with ``away`` as its
    primary group; returns their ids."""
    log = Log()
    results = replica.sm.apply([
        log(encode_prepare(txn, 0, T + txn, [(b"k%d" % txn, b"v")], primary=away,
                           deadline=deadline))
        for txn, deadline in enumerate(deadlines, 1)])
    assert all(r.outcome.value == "prepared" for r in results)
    return list(range(1, len(deadlines) + 1))


async def sweeps(node: Node, replica, count: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._sweep_intents, replica)
        await trio.sleep((count + 0.5) * SWEEP_INTERVAL_S)
        nursery.cancel_scope.cancel()


async def test_recoveries_that_give_up_do_not_hide_the_later_ones(setup, autojump_clock):
    node, replica, away = setup
    txns = prepare(replica, away, [T] * 300)  # all expired
    await sweeps(node, replica, 3)
    # Each sweep starts at most 100 recoveries: the next goes on after them.
    assert node._nursery.started == txns


async def test_a_sweep_reads_a_bounded_page_of_prepared_transactions(setup, autojump_clock,
                                                                     monkeypatch):
    node, replica, away = setup
    # Thousands prepared, of which only the newest are expired.
    txns = prepare(replica, away, [FUTURE] * 2900 + [T] * 100)
    store = replica.sm.store
    read: list[int] = []
    side_scan = store.side_scan

    def counted(*args, **kwargs):
        out = side_scan(*args, **kwargs)
        read.append(len(out))
        return out

    monkeypatch.setattr(store, "side_scan", counted)
    await sweeps(node, replica, 3)
    assert max(read) < len(txns)  # never all of them at once
    assert max(read) <= engine.node.SWEEP_BATCH
    assert node._nursery.started == txns[2900:]
