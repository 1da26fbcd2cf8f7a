"""Pending ReadIndex requests stay bounded on a leader that no quorum answers.

Without CheckQuorum such a leader keeps its role for as long as it is cut off, and its callers
time out and retry: a read whose caller gave up, or that another node forwarded and no quorum
confirmed within an election timeout, must not stay queued in the core for the rest of the
term.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from raft.types import Message, MessageType, RaftError

from raftnet import commit_noop, lone_node, make_leader
from test_raft_driver import TICK, cluster

MT = MessageType
ELECTION_TICK = 10


def _pending_reads(core) -> int:
    return len(core._read_queue) + len(core._reads_waiting_for_commit)


@pytest.mark.parametrize("noop_committed", [True, False], ids=["queued", "waiting-for-commit"])
def test_forwarded_reads_no_quorum_confirms_are_dropped_after_an_election_timeout(
        noop_committed):
    """A leader whose heartbeats go unanswered (its followers' replies are lost) keeps
    receiving reads that follower 2 forwards for its clients, who retry on timeout. Those
    reads can never be answered while no quorum replies: the queue holds at most an election
    timeout's worth of them — whether they wait for a heartbeat round or, for a new leader,
    for its first entry to commit."""
    leader = lone_node(1, pre_vote=False, check_quorum=False, election_tick=ELECTION_TICK,
                       heartbeat_tick=1)
    make_leader(leader)
    if noop_committed:
        commit_noop(leader)
    core = leader.core
    for k in range(20 * ELECTION_TICK):
        leader.step(Message(MT.READ_INDEX, 1, 2, core.term, context=b"r%d" % k))
        leader.tick()
    assert core.role.value == "leader"  # nothing deposes it without CheckQuorum
    assert _pending_reads(core) <= 2 * ELECTION_TICK


def test_a_forwarded_read_confirmed_within_an_election_timeout_is_answered():
    leader = lone_node(1, pre_vote=False, check_quorum=False, election_tick=ELECTION_TICK,
                       heartbeat_tick=1)
    make_leader(leader)
    commit_noop(leader)
    core = leader.core
    leader.step(Message(MT.READ_INDEX, 1, 2, core.term, context=b"late"))
    leader.tick(ELECTION_TICK - 1)
    out = leader.step(Message(MT.HEARTBEAT_RESP, 1, 3, core.term, context=b"late"))
    assert [(m.type, m.to, m.index, m.context) for m in out] == [
        (MT.READ_INDEX_RESP, 2, core.commit, b"late")]
    assert _pending_reads(core) == 0


def test_a_cancelled_local_read_leaves_the_queue_and_the_others_are_still_answered():
    leader = lone_node(1, pre_vote=False, check_quorum=False)
    make_leader(leader)
    commit_noop(leader)
    core = leader.core
    for ctx in (b"a", b"b", b"c"):
        core.read_index(ctx)
    leader.handle_ready()
    core.cancel_read(b"c")  # its caller gave up; the answer to its round confirms nothing
    core.cancel_read(b"unknown")  # already answered or never asked: nothing to do
    assert _pending_reads(core) == 2
    leader.step(Message(MT.HEARTBEAT_RESP, 1, 2, core.term, context=b"c"))
    assert leader.read_states == []
    leader.tick(core.config.heartbeat_tick)  # the next round carries the latest read left
    leader.step(Message(MT.HEARTBEAT_RESP, 1, 2, core.term, context=b"b"))
    assert [r.context for r in leader.read_states] == [b"a", b"b"]
    assert _pending_reads(core) == 0


async def test_reads_whose_callers_time_out_do_not_pile_up_on_a_cut_off_leader(tmp_path):
    """A leader without CheckQuorum, every other voter down: its clients' reads time out and
    are retried. The core must not keep each of them until the term ends (it never does)."""
    async with cluster(tmp_path, config={"check_quorum": False}) as c:
        node = await c.cut_off_leader()
        with trio.fail_after(20):
            for _ in range(100):
                with pytest.raises(RaftError):
                    await node.linearizable_read(timeout=TICK)
        assert node.is_leader
        assert _pending_reads(node.core) == 0


async def test_waits_for_an_apply_whose_callers_gave_up_are_forgotten(tmp_path):
    """Reads wait for the leader's apply to reach their read index; while it cannot (a stuck
    disk, a long snapshot install), callers time out and retry. Each wait they gave up on was
    kept until the apply got there."""
    async with cluster(tmp_path, n=1) as c:
        node = c.nodes[await c.leader()]
        far = node.core.applied + 1_000_000
        with trio.fail_after(20):
            for k in range(2000):
                with trio.move_on_after(0):
                    await node.wait_applied(far + k % 7)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.wait_applied, node.core.applied + 1)
                await trio.testing.wait_all_tasks_blocked()
                assert len(node._applied_waiters) == 1  # a wait still under way stays
                await node.propose(b"x")
        assert len(node._applied_waiters) == 0


class _CountedIndex(int):
    """A log index that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other):
        _CountedIndex.compared += 1
        return int.__eq__(self, other)

    def __lt__(self, other):
        _CountedIndex.compared += 1
        return int.__lt__(self, other)

    def __le__(self, other):
        _CountedIndex.compared += 1
        return int.__le__(self, other)

    __hash__ = int.__hash__


async def test_waits_for_an_apply_given_up_one_after_another_cost_no_search_of_the_others(
        tmp_path):
    """While the apply is stuck, reads waiting for it give up one after another. Each one
    given up searched the list of all the waiting ones and sorted it again: quadratic in the
    reads waiting. The waits still under way are answered once the apply gets there."""
    n = 3000
    async with cluster(tmp_path, n=1) as c:
        node = c.nodes[await c.leader()]
        await node.propose(b"x")  # the leader's own entry applied: the apply stops here
        base = node.core.applied
        answered = []

        async def wait(k: int, scope: trio.CancelScope) -> None:
            with scope:
                await node.wait_applied(_CountedIndex(base + 1))
                answered.append(k)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                scopes = [trio.CancelScope() for _ in range(n)]
                for k, scope in enumerate(scopes):
                    nursery.start_soon(wait, k, scope)
                await trio.testing.wait_all_tasks_blocked()
                _CountedIndex.compared = 0
                for k, scope in enumerate(scopes):
                    if k % 10:  # nine in ten give up, one at a time
                        scope.cancel()
                        await trio.testing.wait_all_tasks_blocked()
                assert _CountedIndex.compared < 20 * n  # was over n * n / 2
                await node.propose(b"x")
        assert sorted(answered) == list(range(0, n, 10))
        assert len(node._applied_waiters) == 0
