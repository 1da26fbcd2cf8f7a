"""A primary group's leader collects old transaction records round after round
(``Node._forget_round``). A round takes a bounded batch of them; commits whose participant
does not answer stay (and are not resolved there: it was not reached). Those must not hide
the records behind them: a full batch of them used to be all that any round ever looked at,
so nothing newer was collected again.

Rounds are driven by hand against one group's state machine (no cluster, no sockets): the
participant that never answers is a stand-in for the node's client of other groups.
"""

from __future__ import annotations

import types

import pytest
import trio

import engine.node
from engine.config import NodeConfig, default_local_cluster
from engine.group import (
    RECORD_RETENTION_NS,
    GroupStateMachine,
    encode_close,
    encode_decide,
    encode_forget,
    encode_prepare,
    encode_resolve,
)
from engine.mvcc import MVCCStore
from engine.node import RECORD_GC_BATCH, RECORD_GC_INTERVAL_S, Node
from engine.placement import data_group
from test_group import Log

T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them


class Leader:
    """What a round needs of the group's replica: its state machine, and proposals that
    are applied at once."""

    def __init__(self, group: int, sm: GroupStateMachine) -> None:
        self.group, self.sm, self.log = group, sm, Log()
        self.node = types.SimpleNamespace(is_leader=True)

    def apply(self, data: bytes):
        return self.sm.apply([self.log(data)])[0]

    async def forget(self, txn_ids) -> None:
        self.apply(encode_forget(self.sm.closed_ts + 1, txn_ids))

    async def resolve(self, txn_id: int, commit_ts: int):
        return self.apply(encode_resolve(txn_id, self.sm.closed_ts + 1, commit_ts))


class Unanswered:
    """Other groups' leaders, none of which answers."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []  # the transactions each call asked about
        self.resolves: list[int] = []  # the transactions whose fate it was to be told

    async def _call_group(self, group, method, payload, **kwargs):
        self.asked.append(payload["txn_ids"])
        raise OSError(f"group {group} does not answer")

    def _resolve_later(self, group, txn_id, commit_ts) -> None:
        self.resolves.append(txn_id)


@pytest.fixture
def setup(tmp_path):
    cluster = default_local_cluster(("us-east", "eu-west"), 1, 20000)
    node = Node(NodeConfig(node_id=1, data_dir=str(tmp_path / "node"), cluster=cluster))
    node._peers = Unanswered()
    here, away = data_group(cluster, "us-east"), data_group(cluster, "eu-west")
    store = MVCCStore(tmp_path / "g", map_size=1 << 26)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9)
    try:
        yield node, Leader(here, sm), away
    finally:
        sm.close()
        store.close()


async def test_records_behind_a_full_batch_of_blocked_commits_are_collected(setup):
    node, leader, away = setup
    blocked = list(range(1, RECORD_GC_BATCH + 2))  # more than a batch
    entries = []
    for i, txn in enumerate(blocked):
        ts = T + 10 * i
        entries += [encode_prepare(txn, 0, ts, [(b"k%d" % txn, b"v")], primary=leader.group,
                                   deadline=T + 10**9),
                    encode_decide(txn, ts + 1, ts + 1, since=ts,
                                  participants=[leader.group, away])]
    results = leader.sm.apply([leader.log(data) for data in entries])
    assert all(r.committed for r in results[1::2])
    aborted = 10**6
    leader.apply(encode_decide(aborted, T + 10**7, 0))
    leader.apply(encode_close(T + 10**7 + RECORD_RETENTION_NS + 1))  # all old enough now
    with trio.fail_after(10):
        forgotten = [await node._forget_round(leader) for _ in range(3)]
        # The newest record, an abort, is collected in the second round, which goes on
        # from where the first one stopped; the commits stay while their participant does
        # not answer, and the third round starts from the oldest again.
        assert leader.sm.record(aborted) is None
        assert forgotten == [0, 1, 0]
        assert all(leader.sm.record(t) is not None for t in blocked)
        assert node._peers.asked == [blocked[:RECORD_GC_BATCH], blocked[RECORD_GC_BATCH:],
                                     blocked[:RECORD_GC_BATCH]]
        # A group that did not answer the question is not sent a resolve per record either
        # (a task and a call each, every round, to a group out of reach).
        assert node._peers.resolves == []


async def test_an_interval_collects_every_record_old_enough(setup, autojump_clock,
                                                            monkeypatch):
    # A round takes a batch. One round an interval collected at most a batch of records a
    # minute: a group that decided more than that kept more records every minute, for good.
    monkeypatch.setattr(engine.node, "RECORD_GC_BATCH", 3)
    node, leader, away = setup
    blocked, aborted = [1, 2, 3, 4, 5, 6, 7], [11, 12, 13, 14, 15]
    entries = []
    for txn in blocked:
        ts = T + 10 * txn
        entries += [encode_prepare(txn, 0, ts, [(b"k%d" % txn, b"v")], primary=leader.group,
                                   deadline=T + 10**9),
                    encode_decide(txn, ts + 1, ts + 1, since=ts,
                                  participants=[leader.group, away])]
    entries += [encode_decide(txn, T + 10 * txn, 0) for txn in aborted]
    leader.sm.apply([leader.log(data) for data in entries])
    leader.apply(encode_close(T + 10**6 + RECORD_RETENTION_NS))  # all old enough now
    node._clock_problem = None  # its peers measured its clock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._forget_records, leader)
        await trio.sleep(1.5 * RECORD_GC_INTERVAL_S)
        nursery.cancel_scope.cancel()
    # One interval's rounds looked at every record once, and ended when they came back to
    # the oldest: the aborts are gone, the commits whose participant does not answer stay.
    assert [leader.sm.record(t) for t in aborted] == [None] * len(aborted)
    assert all(leader.sm.record(t) is not None for t in blocked)
    assert node._peers.asked == [[1, 2, 3], [4, 5, 6], [7], [1, 2, 3]]
