"""A leader's asynchronous append (``RaftCore.advance(rd, entries_durable=False)`` and
``RaftCore.persisted_to``): the leader sends and advances a Ready of plain entries before their
fsync, as etcd's raft allows. Its own log then counts towards a commit, and is applied, only once
the driver reports it durable; a Ready that carries anything durability must precede cannot be
advanced that way.

Pure cores on a synchronous in-process network with an instant disk for the followers (STYLE §6):
no trio, no files. The simulator's model of the driver is tested in tests/test_raft_sim.py.
"""

from __future__ import annotations

import random

import pytest

from raft.core import Config, RaftCore, RestoredState
from raft.types import ConfState, Message, MessageType, RaftError
from raftnet import core_cluster, drain_cores

MT = MessageType


def _answer(follower: RaftCore, msgs) -> list[Message]:
    """``follower`` takes the leader's ``msgs`` to it, persists at once and answers."""
    for m in msgs:
        if m.to == follower.id:
            follower.step(m)
    out = []
    while follower.has_ready():
        rd = follower.ready()
        out += rd.messages + rd.persisted_messages
        follower.advance(rd)
    return out


def _leader_with_an_async_append():
    """Node 1 leads a group of three, everything committed; it proposes one entry and
    advances its Ready before the entry is durable. Returns the cores, the entry and the
    leader's appends to its followers."""
    cores = core_cluster(pre_vote=False, check_quorum=False)
    cores[1].campaign()
    drain_cores(cores)
    leader = cores[1]
    assert leader.commit == leader.last_index and leader.applied == leader.commit
    leader.propose(b"x")
    rd = leader.ready()
    (entry,) = rd.entries
    assert rd.must_sync and not rd.persisted_messages and rd.hard_state is None
    leader.advance(rd, entries_durable=False)
    appends = [m for m in rd.messages if m.type is MT.APPEND]
    assert sorted(m.to for m in appends) == [2, 3]
    return cores, entry, appends


def _applied_through_ready(core: RaftCore) -> list[int]:
    """The indexes the next Readies hand out for applying (each advanced at once)."""
    indexes = []
    while core.has_ready():
        rd = core.ready()
        indexes += [e.index for e in rd.committed_entries]
        core.advance(rd)
    return indexes


def test_an_entry_not_yet_durable_on_the_leader_needs_a_second_follower_to_commit():
    """The leader's own log counts towards a commit only once it is durable (§3.8): with one
    follower's acknowledgement, two of three voters hold the entry only if the leader's copy is
    durable, so it commits once the driver says so, not before."""
    cores, entry, appends = _leader_with_an_async_append()
    leader = cores[1]
    for m in _answer(cores[2], appends):
        leader.step(m)
    assert leader.commit == entry.index - 1
    assert leader.status()["progress"][2]["match"] == entry.index
    assert _applied_through_ready(leader) == []
    leader.persisted_to(entry.index, entry.term)
    assert leader.commit == entry.index
    assert _applied_through_ready(leader) == [entry.index]
    assert leader.applied == entry.index


def test_two_followers_commit_an_entry_the_leader_applies_only_once_it_is_durable():
    """Two followers of three voters are a quorum without the leader: the entry commits, but
    the leader applies only what its own log holds durably (``RaftLog.next_committed``)."""
    cores, entry, appends = _leader_with_an_async_append()
    leader = cores[1]
    for follower in (2, 3):
        for m in _answer(cores[follower], appends):
            leader.step(m)
    assert leader.commit == entry.index
    assert _applied_through_ready(leader) == []
    assert leader.applied == entry.index - 1
    leader.persisted_to(entry.index, entry.term)
    assert _applied_through_ready(leader) == [entry.index]


def _deposed_leader_with_its_entry_replaced():
    """The leader's entry never leaves it; nodes 2 and 3 elect node 2, whose first append
    replaces the entry on node 1 with node 2's no-op at the same index (a conflict)."""
    cores, entry, _ = _leader_with_an_async_append()
    others = {i: cores[i] for i in (2, 3)}
    cores[2].campaign()
    drain_cores(others, drop=lambda m: m.to == 1)  # node 1 hears nothing of it yet
    new = cores[2]
    assert new.role.value == "leader" and new.term > entry.term
    assert new.term_at(entry.index) == new.term  # its no-op, where node 1 has its entry
    for _ in range(new.config.heartbeat_tick):
        new.tick()
    msgs = []
    while new.has_ready():
        rd = new.ready()
        msgs += [m for m in rd.messages if m.to == 1]
        new.advance(rd)
    old = cores[1]
    for m in msgs:
        old.step(m)
    # A heartbeat or an append probe: node 1 answers and node 2 sends the entries it lacks.
    while old.term_at(entry.index) == entry.term:
        answers = []
        while old.has_ready():
            rd = old.ready()
            answers += [m for m in rd.messages + rd.persisted_messages if m.to == 2]
            old.advance(rd)
        for m in answers:
            new.step(m)
        replies = []
        while new.has_ready():
            rd = new.ready()
            replies += [m for m in rd.messages if m.to == 1]
            new.advance(rd)
        assert replies, "node 2 stopped sending to node 1"
        for m in replies:
            old.step(m)
    assert old.term_at(entry.index) == new.term
    return old, entry


def test_persisted_to_ignores_an_entry_a_conflict_replaced():
    """An fsync that returns after a newer leader's entry replaced ours says nothing about the
    replacement: it is made durable, and counted, by a Ready of its own."""
    old, entry = _deposed_leader_with_its_entry_replaced()
    rd = old.ready()  # the replacement handed out, not yet durable
    assert entry.index in [e.index for e in rd.entries]
    persisted = old.persisted_index
    assert persisted < entry.index
    old.persisted_to(entry.index, entry.term)
    assert old.persisted_index == persisted
    old.advance(rd)
    assert old.persisted_index >= entry.index


def test_persisted_to_ignores_an_entry_replaced_before_the_replacement_is_handed_out():
    """The same, with the fsync returning before the node took the Ready that writes the
    replacement (the conflict cut the log in memory, so fewer entries are handed out than
    before): how the simulator's seed 124 in tests/test_raft_sim.py (REGRESSION_SEEDS) met
    it, as a deposed leader."""
    old, entry = _deposed_leader_with_its_entry_replaced()
    persisted = old.persisted_index
    old.persisted_to(entry.index, entry.term)
    assert old.persisted_index == persisted


def test_advancing_a_vote_before_its_fsync_raises():
    """A term or vote must be durable before anything that follows it (§3.8)."""
    core = RaftCore(Config(1, pre_vote=False), random.Random(1),
                    RestoredState(conf=ConfState((1,))))
    core.campaign()
    rd = core.ready()
    assert rd.hard_state.vote == 1 and not rd.persisted_messages
    with pytest.raises(RaftError, match="cannot be advanced before its fsync"):
        core.advance(rd, entries_durable=False)
    core.advance(rd)  # still outstanding, and fine once durable
    assert core.role.value == "leader"


def test_advancing_an_acknowledgement_before_its_fsync_raises():
    """A follower's append acknowledgement vouches for entries durable (§3.8): its Ready must
    be advanced after the fsync."""
    cores, _, appends = _leader_with_an_async_append()
    follower = cores[2]
    follower.step(next(m for m in appends if m.to == 2))
    rd = follower.ready()
    assert rd.entries and [m.type for m in rd.persisted_messages] == [MT.APPEND_RESP]
    assert rd.hard_state is None or rd.hard_state.term == follower.term
    with pytest.raises(RaftError, match="cannot be advanced before its fsync"):
        follower.advance(rd, entries_durable=False)
    follower.advance(rd)


def test_persisted_to_an_entry_never_handed_out_raises():
    cores, entry, _ = _leader_with_an_async_append()
    leader = cores[1]
    term = leader.term
    index = leader.propose(b"y")[1]  # in the log, not handed out to be written
    with pytest.raises(RaftError, match="never handed out"):
        leader.persisted_to(index, term)
    leader.persisted_to(index + 5, term)  # no such entry: nothing to count, ignored
    assert leader.persisted_index < entry.index
    leader.persisted_to(entry.index, entry.term)  # handed out and written: fine
    assert leader.persisted_index == entry.index


def test_an_async_append_and_its_successors_count_once_the_latest_fsync_returns():
    """Further Readies may be taken and advanced while earlier entries are not durable; one
    fsync begun after all of them were written covers them all."""
    cores, first, appends = _leader_with_an_async_append()
    leader = cores[1]
    leader.propose(b"y")
    rd = leader.ready()
    (second,) = rd.entries
    leader.advance(rd, entries_durable=False)
    appends += [m for m in rd.messages if m.type is MT.APPEND]
    for m in _answer(cores[2], appends):
        leader.step(m)
    assert leader.commit == first.index - 1
    leader.persisted_to(second.index, second.term)
    assert leader.persisted_index == second.index
    assert leader.commit == second.index
    assert _applied_through_ready(leader) == [first.index, second.index]
