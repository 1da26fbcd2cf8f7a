"""The claims of the Raft paper (Ongaro & Ousterhout 2014) and thesis (Ongaro 2014), one test
each, against the pure core (etcd-io/raft ``raft_paper_test.go``).

Each docstring states the claim and ends with the section it comes from. Single nodes are driven
by hand (:func:`lone_node`); whole clusters run on the synchronous network of ``raftnet``.
"""

from __future__ import annotations

import pytest

from raft.progress import ProgressState
from raft.types import (
    NONE,
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Entry,
    HardState,
    Message,
    MessageType,
    ProposalDroppedError,
    StateRole,
)

from raftnet import Network, commit_noop, ents, lone_node, make_leader

MT = MessageType
F, PC, C, L = StateRole.FOLLOWER, StateRole.PRE_CANDIDATE, StateRole.CANDIDATE, StateRole.LEADER
CLASSIC = dict(pre_vote=False, check_quorum=False)  # the paper's algorithm, without extensions


def of_type(msgs, type, to=None):
    return [m for m in msgs if m.type is type and to in (None, m.to)]


def tick_until_leader(net: Network, max_ticks: int = 200) -> int:
    for _ in range(max_ticks):
        if net.leaders():
            return net.leader()
        net.tick()
    raise AssertionError(f"no leader after {max_ticks} ticks: {net.roles()}")


def assert_logs_equal(net: Network, ids=None) -> None:
    ids = sorted(net.nodes) if ids is None else ids
    logs = {i: net.nodes[i].log() for i in ids}
    first = logs[ids[0]]
    for i in ids[1:]:
        assert logs[i] == first, f"log of {i} differs from log of {ids[0]}"


# ============================================================================ §5.1 terms


@pytest.mark.parametrize("role", [F, PC, C, L])
@pytest.mark.parametrize("mtype", [MT.APPEND, MT.HEARTBEAT, MT.VOTE])
def test_node_seeing_higher_term_adopts_it_and_becomes_follower(role, mtype):
    """If a node sees a term larger than its own it updates its term; a candidate or leader that
    does so reverts to follower (and one that heard it from a leader records that leader).
    Reference: §5.1"""
    node = lone_node(term=1, pre_vote=(role is PC), check_quorum=False)
    core = node.core
    if role is PC or role is C:
        core.campaign()
        node.handle_ready()
    elif role is L:
        make_leader(node)
    assert core.role is role
    node.step(Message(mtype, 1, 2, term=5, index=core.last_index, log_term=core.log.last_term))
    assert core.term == 5
    assert core.role is F
    assert core.leader == (NONE if mtype is MT.VOTE else 2)
    assert node.disk.hard_state.term == 5


def test_stale_term_requests_are_rejected():
    """A node rejects requests with a stale term number, and tells the sender its term so that a
    stale leader learns it is deposed. Reference: §5.1"""
    node = lone_node(entries=ents(1, 2), term=3, **CLASSIC)
    core = node.core
    out = node.step(Message(MT.APPEND, 1, 2, term=2, index=2, log_term=2,
                            entries=(Entry(2, 3, b"stale"),), commit=3))
    assert core.last_index == 2 and core.commit == 0 and core.leader == NONE
    assert [(m.type, m.term, m.to) for m in out] == [(MT.APPEND_RESP, 3, 2)]
    out = node.step(Message(MT.VOTE, 1, 2, term=2, index=5, log_term=2))
    assert out == [] and core.vote == NONE and core.term == 3

    # The stale leader, on seeing the answer, steps down into the newer term.
    old = lone_node(id=2, entries=ents(1, 2), term=1, **CLASSIC)
    make_leader(old)
    old.step(Message(MT.APPEND_RESP, 2, 1, term=3))
    assert old.core.role is F and old.core.term == 3


# ============================================================================ §5.2 election


def test_follower_starts_election_after_election_timeout():
    """A follower that hears nothing for an election timeout increments its term, votes for
    itself and asks every other server for its vote, carrying its last log index and term.
    Reference: §5.2"""
    node = lone_node(voters=(1, 2, 3, 4, 5), entries=ents(1, 1, 2), term=2, election_tick=10,
                     **CLASSIC)
    core = node.core
    out = node.tick(9)
    assert core.role is F and out == []
    out = node.tick(10)  # the timeout is randomized in [10, 20)
    assert core.role is C and core.term == 3 and core.vote == 1
    assert node.disk.hard_state == HardState(3, 1, 0)
    votes = of_type(out, MT.VOTE)
    assert sorted(m.to for m in votes) == [2, 3, 4, 5]
    assert {(m.term, m.index, m.log_term) for m in votes} == {(3, 3, 2)}


@pytest.mark.parametrize(
    "size, votes, role",
    [
        (1, {}, L),
        (3, {2: True, 3: True}, L),
        (3, {2: True}, L),
        (5, {2: True, 3: True, 4: True, 5: True}, L),
        (5, {2: True, 3: True, 4: True}, L),
        (5, {2: True, 3: True}, L),
        (3, {2: False, 3: False}, F),
        (5, {2: False, 3: False, 4: False}, F),
        (5, {2: True, 3: False, 4: False, 5: False}, F),
        (3, {}, C),
        (5, {2: True}, C),
        (5, {2: False, 3: False}, C),
        (5, {2: True, 3: False, 4: False}, C),
    ],
)
def test_candidate_wins_with_votes_from_a_majority(size, votes, role):
    """A candidate wins an election if it receives votes from a majority of the servers (its own
    vote included); it returns to follower once a majority has refused; otherwise it waits.
    Reference: §5.2"""
    node = lone_node(voters=range(1, size + 1), **CLASSIC)
    node.core.campaign()
    node.handle_ready()
    node.step(*[Message(MT.VOTE_RESP, 1, v, term=1, reject=not granted)
                for v, granted in votes.items()])
    assert node.core.role is role
    assert node.core.term == 1


def test_each_server_votes_at_most_once_per_term_first_come_first_served():
    """Each server votes for at most one candidate in a given term, on a first-come-first-served
    basis; repeating the request of the candidate it voted for is granted again.
    Reference: §5.2"""
    node = lone_node(entries=ents(1), term=1, **CLASSIC)

    def ask(frm, term):
        out = node.step(Message(MT.VOTE, 1, frm, term=term, index=1, log_term=1))
        (resp,) = of_type(out, MT.VOTE_RESP)
        return not resp.reject

    assert ask(2, 2) is True
    assert node.core.vote == 2 and node.disk.hard_state.vote == 2
    assert ask(3, 2) is False
    assert ask(2, 2) is True
    assert node.core.vote == 2
    assert ask(3, 3) is True  # a new term, a new vote


@pytest.mark.parametrize("role", [PC, C])
@pytest.mark.parametrize("mtype", [MT.APPEND, MT.HEARTBEAT])
def test_candidate_steps_down_on_append_from_leader_of_its_term(role, mtype):
    """A candidate that receives AppendEntries from a leader whose term is at least its own
    recognizes the leader and returns to follower. Reference: §5.2"""
    node = lone_node(entries=ents(1), term=1, pre_vote=(role is PC), check_quorum=False)
    core = node.core
    core.campaign()
    node.handle_ready()
    assert core.role is role
    term = core.term
    out = node.step(Message(mtype, 1, 3, term=term, index=1, log_term=1, commit=1))
    assert core.role is F and core.leader == 3 and core.term == term
    assert of_type(out, MT.APPEND_RESP if mtype is MT.APPEND else MT.HEARTBEAT_RESP, to=3)


def test_split_vote_leads_to_a_new_election_in_a_new_term():
    """When votes split and no candidate wins, each times out and starts a new election by
    incrementing its term; a leader is eventually chosen in the later term. Reference: §5.2"""
    net = Network((1, 2, 3, 4), **CLASSIC)
    net.cut(1, 4)
    net.cut(3, 2)
    net.core(1).campaign()
    net.core(3).campaign()
    net.deliver()
    # 2 voted for 1, 4 voted for 3: two votes each, three needed.
    assert net.roles() == {1: C, 2: F, 3: C, 4: F}
    assert net.core(2).vote == 1 and net.core(4).vote == 3
    net.recover()
    leader = tick_until_leader(net)
    assert net.core(leader).term >= 2
    assert set(net.terms().values()) == {net.core(leader).term}


def test_randomized_election_timeouts_spread_over_one_timeout():
    """Election timeouts are chosen randomly from a fixed interval, [T, 2T) here, so that split
    votes are rare: successive timeouts of one node take many different values, and in a
    five-node cluster two followers rarely time out on the same tick. Reference: §5.2"""
    et = 10
    node = lone_node(election_tick=et, **CLASSIC)
    core = node.core
    seen = []
    for _ in range(300):
        term, ticks = core.term, 0
        while core.term == term:
            node.tick()
            ticks += 1
        seen.append(ticks)
    assert set(seen) == set(range(et, 2 * et))

    clashes = 0
    trials = 200
    for seed in range(trials):
        firsts = []
        for nid in range(1, 6):
            follower = lone_node(nid, voters=range(1, 6), seed=seed, election_tick=et, **CLASSIC)
            ticks = 0
            while follower.core.role is F:
                follower.tick()
                ticks += 1
            firsts.append(ticks)
        clashes += sorted(firsts)[0] == sorted(firsts)[1]
    assert clashes / trials < 0.3


@pytest.mark.parametrize("role", [F, C])
def test_refusing_a_candidate_does_not_restart_the_election_timer(role):
    """A server restarts its election timer only when it hears from the current leader or grants
    its vote; refusing a candidate whose log is behind (while adopting its higher term) leaves
    the timer running, so the server with the up-to-date log campaigns on its own schedule
    instead of being held back by the candidate it keeps refusing. Reference: §5.2 (Figure 2,
    "Rules for Servers")"""
    et = 10
    for seed in range(10):
        for up_to_date in (False, True):
            node = lone_node(entries=ents(1, 2), term=2, seed=seed, election_tick=et, **CLASSIC)
            core = node.core
            if role is C:
                core.campaign()
                node.handle_ready()
            for _ in range(et - 1):  # never enough to time out
                node.tick()
            assert core.role is role
            deadline = core._randomized_election_timeout
            # Log (index 1, term 1) is behind ours (index 2, term 2); (3, 2) is ahead of it.
            index, log_term = (3, 2) if up_to_date else (1, 1)
            term = core.term + 1
            (resp,) = of_type(node.step(Message(MT.VOTE, 1, 3, term=term, index=index,
                                                log_term=log_term)), MT.VOTE_RESP)
            assert resp.reject is not up_to_date and core.term == term and core.role is F
            ticks = 0
            while core.term == term:
                node.tick()
                ticks += 1
            # Refused: the timer runs on to the deadline it had. Granted: it starts again, and
            # a whole new timeout, drawn from [et, 2 et), must pass.
            if up_to_date:
                assert ticks >= et, (seed, ticks)
            else:
                assert ticks == deadline - (et - 1), (seed, ticks, deadline)


# ============================================================================ §5.3 replication


def test_leader_appends_proposal_and_sends_append_entries():
    """The leader appends a client command to its log as a new entry of its term, then issues
    AppendEntries to each follower carrying the entry, the index and term of the entry before
    it, and its commit index. Reference: §5.3"""
    node = lone_node(**CLASSIC)
    make_leader(node)
    commit_noop(node)
    core = node.core
    li = core.last_index
    assert core.propose(b"some data") == (1, li + 1)
    out = node.handle_ready()
    assert core.last_index == li + 1
    assert node.disk.entries[-1] == Entry(1, li + 1, b"some data")
    msgs = of_type(out, MT.APPEND)
    assert sorted(m.to for m in msgs) == [2, 3]
    for m in msgs:
        assert (m.index, m.log_term, m.commit) == (li, 1, li)
        assert m.entries == (Entry(1, li + 1, b"some data"),)


@pytest.mark.parametrize(
    "size, acceptors, committed",
    [
        (1, set(), True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_leader_commits_entry_once_replicated_on_a_majority(size, acceptors, committed):
    """A log entry is committed once the leader that created it has replicated it on a majority
    of the servers (the leader's own durable copy counts). Reference: §5.3"""
    node = lone_node(voters=range(1, size + 1), **CLASSIC)
    make_leader(node)
    commit_noop(node)
    core = node.core
    _, index = core.propose(b"x")
    node.handle_ready()
    node.step(*[Message(MT.APPEND_RESP, 1, a, term=1, index=index) for a in sorted(acceptors)])
    assert core.commit == (index if committed else index - 1)
    applied = [e.data for e in node.applied_entries]
    assert (b"x" in applied) is committed


def test_followers_apply_committed_entries_in_log_order():
    """Once a follower learns that an entry is committed (from the leader's commit index, in an
    append or a heartbeat) it applies the entry, and every entry before it, in log order.
    Reference: §5.3"""
    node = lone_node(term=1, **CLASSIC)
    batch = (Entry(1, 1, b"a"), Entry(1, 2, b"b"), Entry(1, 3, b"c"))
    node.step(Message(MT.APPEND, 1, 2, term=1, index=0, log_term=0, entries=batch, commit=2))
    assert [e.index for e in node.applied_entries] == [1, 2]
    node.step(Message(MT.HEARTBEAT, 1, 2, term=1, commit=3))
    assert node.applied_entries == list(batch)

    net = Network((1, 2, 3, 4, 5), **CLASSIC)
    net.elect(1)
    for k in range(10):
        net.propose(1, b"v%d" % k)
    want = [b"v%d" % k for k in range(10)]
    for node in net.nodes.values():
        assert node.applied_data() == want
        assert [e.index for e in node.applied_entries] == list(range(1, 12))


@pytest.mark.parametrize(
    "log_term, index, resp_index, reject, hint, hint_term",
    [
        (0, 0, 1, False, 0, 0),  # before the committed prefix: answer with the commit index
        (1, 1, 1, False, 0, 0),  # matches a committed entry
        (2, 2, 2, False, 0, 0),  # matches an uncommitted entry
        (1, 2, 2, True, 1, 1),  # the entry at 2 has another term
        (3, 3, 3, True, 2, 2),  # there is no entry at 3
    ],
)
def test_consistency_check_rejects_append_whose_previous_entry_mismatches(
        log_term, index, resp_index, reject, hint, hint_term):
    """AppendEntries carries the index and term of the entry before the new ones; a follower
    that has no entry there with that term refuses it (with a hint of where its log may
    match). Reference: §5.3"""
    node = lone_node(entries=ents(1, 2), term=2, commit=1, **CLASSIC)
    out = node.step(Message(MT.APPEND, 1, 2, term=2, index=index, log_term=log_term))
    (resp,) = of_type(out, MT.APPEND_RESP)
    assert (resp.index, resp.reject, resp.reject_hint, resp.log_term) == (
        resp_index, reject, hint, hint_term)
    assert node.log() == ents(1, 2)


@pytest.mark.parametrize(
    "index, log_term, new, want, written",
    [
        (2, 2, [(3, 3)], [(1, 1), (2, 2), (3, 3)], [(3, 3)]),
        (1, 1, [(2, 3), (3, 4)], [(1, 1), (2, 3), (3, 4)], [(2, 3), (3, 4)]),
        (0, 0, [(1, 1)], [(1, 1), (2, 2)], []),
        (0, 0, [(1, 3)], [(1, 3)], [(1, 3)]),
    ],
)
def test_conflicting_follower_entries_are_overwritten_by_the_leaders(
        index, log_term, new, want, written):
    """If an existing entry conflicts with a new one (same index, different term) the follower
    deletes it and all that follow and appends the leader's; entries it already has are kept
    and not rewritten. The disk follows: the suffix is truncated before the append.
    Reference: §5.3"""
    node = lone_node(entries=ents(1, 2), term=2, **CLASSIC)
    node.readies.clear()
    entries = tuple(Entry(t, i) for i, t in new)
    node.step(Message(MT.APPEND, 1, 2, term=4, index=index, log_term=log_term, entries=entries))
    assert [(e.index, e.term) for e in node.log()] == want
    assert [(e.index, e.term) for e in node.disk.entries] == want
    assert [(e.index, e.term) for rd in node.readies for e in rd.entries] == written


FIG7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


@pytest.mark.parametrize(
    "follower",
    [
        pytest.param((1, 1, 1, 4, 4, 5, 5, 6, 6), id="a"),
        pytest.param((1, 1, 1, 4), id="b"),
        pytest.param((1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6), id="c"),
        pytest.param((1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7), id="d"),
        pytest.param((1, 1, 1, 4, 4, 4, 4), id="e"),
        pytest.param((1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3), id="f"),
    ],
)
def test_leader_brings_divergent_follower_logs_into_line(follower):
    """The leader forces followers' logs to duplicate its own: missing entries are sent, extra
    and conflicting ones deleted (Figure 7, cases a-f). Reference: §5.3"""
    net = Network((1, 2, 3), down=(1, 2, 3), **CLASSIC)
    logs = {1: FIG7_LEADER, 2: follower, 3: FIG7_LEADER}
    for nid, terms in logs.items():
        net.disks[nid].entries = ents(*terms)
        net.disks[nid].hard_state = HardState(term=7 if nid != 1 else 8)
        net.restart(nid)
    net.elect(1)  # 3 votes for it; 2 may refuse (case d has a later last term)
    net.propose(1, b"after")
    assert_logs_equal(net)
    assert [e.term for e in net.nodes[2].log()][:10] == list(FIG7_LEADER)
    assert net.core(2).commit == net.core(1).commit == net.core(1).last_index


def test_leader_never_overwrites_or_deletes_its_own_entries():
    """A leader never overwrites or deletes entries in its own log; it only appends — even when
    it hears of conflicting entries from a stale leader of an earlier term. Reference: §5.3"""
    net = Network((1, 2, 3), down=(1, 2, 3), **CLASSIC)
    logs = {1: (1, 1, 2), 2: (1, 1, 3, 3, 3), 3: (1, 1, 2)}  # 2 was leader in term 3
    for nid, terms in logs.items():
        net.disks[nid].entries = ents(*terms)
        net.disks[nid].hard_state = HardState(term=3)
        net.restart(nid)
    net.cut(1, 2)
    net.elect(1)  # term 4, with 3's vote
    before = net.nodes[1].log()
    net.nodes[1].step(Message(MT.APPEND, 1, 2, term=3, index=2, log_term=1,
                              entries=tuple(ents(3, 3, 3, start=3))))
    net.recover()
    net.propose(1, b"x")
    net.tick(1)  # the probe to 2 was lost: the heartbeat response resumes it
    after = net.nodes[1].log()
    assert after[: len(before)] == before
    assert [e.term for e in after] == [1, 1, 2, 4, 4]
    assert_logs_equal(net)


# ============================================================================ §5.4 safety


@pytest.mark.parametrize(
    "log, log_term, index, granted",
    [
        # Same last term: the longer (or equal) log wins.
        (ents(1), 1, 1, True),
        (ents(1), 1, 2, True),
        (ents(1, 1), 1, 1, False),
        # The candidate's last term is later: granted whatever the lengths.
        (ents(1), 2, 1, True),
        (ents(1), 2, 2, True),
        (ents(1, 1), 2, 1, True),
        # The candidate's last term is earlier: refused whatever the lengths.
        (ents(2), 1, 1, False),
        (ents(2), 1, 2, False),
        (ents(2, 2), 1, 3, False),
    ],
)
def test_vote_denied_to_candidate_with_less_up_to_date_log(log, log_term, index, granted):
    """A voter denies its vote if its own log is more up-to-date than the candidate's: a later
    last term wins; with equal last terms, the longer log wins. Reference: §5.4.1"""
    node = lone_node(entries=log, term=2, **CLASSIC)
    out = node.step(Message(MT.VOTE, 1, 2, term=3, index=index, log_term=log_term))
    (resp,) = of_type(out, MT.VOTE_RESP)
    assert resp.reject is not granted
    assert node.core.vote == (2 if granted else NONE)


def test_figure_8_entry_of_earlier_term_is_not_committed_by_counting_replicas():
    """A leader cannot conclude that an entry from a previous term is committed once it is on a
    majority: Figure 8 shows such an entry being overwritten by a future leader. Only entries of
    the leader's current term are committed by counting replicas. Reference: §5.4.2"""
    net = Network((1, 2, 3, 4, 5), max_size_per_msg=1, **CLASSIC)
    net.elect(1)  # term 1; its no-op (index 1) is committed everywhere
    # (a) S1 replicates index 2 (term 1) to S2 only, then crashes.
    net.add_filter(lambda m: 1 in (m.frm, m.to) and {m.frm, m.to} != {1, 2})
    net.propose(1, b"fig8")
    assert [net.core(i).term_at(2) for i in (1, 2)] == [1, 1]
    assert net.core(1).commit == 1
    net.crash(1)
    net.recover()
    # (b) S5 is elected in term 2 by S3, S4, S5 and appends index 2 (its no-op) locally, then
    # crashes.
    net.drop(MT.APPEND, frm=5)
    net.elect(5)
    assert (net.core(5).term, net.core(5).term_at(2)) == (2, 2)
    net.crash(5)
    net.recover()
    # (c) S1 restarts and is elected in term 3 (its first try, in term 2, is refused by S3 and
    # S4, who voted for S5). It replicates index 2 (term 1) to S3 and nothing else.
    net.restart(1)
    net.add_filter(lambda m: m.frm == 1 and m.type is MT.APPEND and (
        m.to != 3 or (net.core(3).term_at(2) == 1 and any(e.index >= 3 for e in m.entries))))
    net.campaign(1)
    assert net.core(1).role is not L
    net.elect(1)
    assert net.core(1).term == 3
    assert [net.core(i).term_at(2) for i in (1, 2, 3)] == [1, 1, 1]  # on a majority ...
    assert net.core(1).commit == 1  # ... and yet not committed
    assert all(net.core(i).commit < 2 for i in net.nodes)
    net.crash(1)
    net.recover()
    # (d) S5 restarts, is elected (term 4; its last term 2 beats the others' 1) and overwrites
    # index 2 everywhere. Had S1 counted the replicas, a committed entry would now be lost.
    net.restart(5)
    while net.core(5).role is not L:
        net.campaign(5)
    net.propose(5, b"after")
    net.restart(1)
    net.tick(5, times=2)
    for nid, node in net.nodes.items():
        assert node.core.term_at(2) == 2, nid
        assert b"fig8" not in [e.data for e in node.applied_entries]
        assert node.applied_data() == [b"after"]


def test_leader_commits_by_counting_only_entries_of_its_own_term():
    """The commit rule in isolation: acknowledgements of entries of earlier terms, even from a
    majority, move nothing; an acknowledgement of the new term's entry commits it and
    everything before it. Reference: §5.4.2"""
    node = lone_node(entries=ents(1, 2), term=2, **CLASSIC)
    make_leader(node)  # term 3; its no-op is index 3
    core = node.core
    for index, want in [(1, 0), (2, 0), (3, 3)]:
        node.step(Message(MT.APPEND_RESP, 1, 2, term=3, index=index))
        assert core.commit == want, index
    assert [e.index for e in node.applied_entries] == [1, 2, 3]


@pytest.mark.parametrize("candidate, wins", [(2, True), (3, True), (4, False), (5, False)])
def test_committed_entries_are_in_the_log_of_every_later_leader(candidate, wins):
    """Leader Completeness: an entry committed in some term is present in the logs of the
    leaders of all later terms. A node that missed it cannot be elected; whoever is elected
    has it, and every state machine applies it. Reference: §5.4.3"""
    net = Network((1, 2, 3, 4, 5), **CLASSIC)
    net.elect(1)
    net.isolate(4)
    net.isolate(5)
    net.propose(1, b"committed")
    assert net.core(1).commit == net.core(1).last_index
    net.crash(1)
    net.recover()
    for _ in range(3):
        net.campaign(candidate)
    assert (net.core(candidate).role is L) is wins
    leader = tick_until_leader(net)
    assert leader in (2, 3)
    net.propose(leader, b"later")
    net.restart(1)
    net.tick(leader, times=2)
    for nid, node in net.nodes.items():
        assert node.applied_data() == [b"committed", b"later"], nid


# ============================================================================ §5.5 crashes


def test_retried_append_entries_and_request_vote_are_idempotent():
    """Raft RPCs are idempotent: a follower that receives an AppendEntries or RequestVote it has
    already handled (a retry after a lost reply) ends in the same state and answers the same.
    Reference: §5.5"""
    node = lone_node(term=1, **CLASSIC)
    vote = Message(MT.VOTE, 1, 2, term=2, index=0, log_term=0)
    first = node.step(vote)
    again = node.step(vote)
    assert first == again and not first[0].reject
    assert node.core.vote == 2

    app = Message(MT.APPEND, 1, 2, term=2, index=0, log_term=0,
                  entries=(Entry(2, 1, b"a"), Entry(2, 2, b"b")), commit=1)
    first = node.step(app)
    state = (node.log(), node.core.commit, list(node.applied_entries))
    node.readies.clear()
    again = node.step(app)
    # The retry is acknowledged (up to the commit index, all it needs to know), not refused.
    (a1,), (a2,) = of_type(first, MT.APPEND_RESP), of_type(again, MT.APPEND_RESP)
    assert (a1.index, a1.reject, a2.reject) == (2, False, False) and 1 <= a2.index <= 2
    assert (node.log(), node.core.commit, list(node.applied_entries)) == state
    assert all(not rd.entries for rd in node.readies)  # nothing rewritten to disk
    # An older, shorter retry does not truncate what a later append added.
    node.step(Message(MT.APPEND, 1, 2, term=2, index=0, log_term=0,
                      entries=(Entry(2, 1, b"a"),)))
    assert [e.data for e in node.log()] == [b"a", b"b"]


def test_leader_retries_until_a_crashed_follower_returns():
    """If a follower crashes, the leader retries indefinitely; when the follower restarts it
    receives everything it missed, and its durable state let it resume where it stopped.
    Reference: §5.5"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.propose(1, b"before")
    net.crash(3)
    for k in range(5):
        net.propose(1, b"during%d" % k)
    net.tick(1, times=3)
    net.restart(3)
    # It re-applies what its own disk says is committed, then catches up from the leader.
    assert net.nodes[3].applied_data() == [b"before"]
    assert net.core(3).term == 1 and net.core(3).vote == 1
    net.tick(1, times=2)
    assert net.nodes[3].applied_data() == net.nodes[1].applied_data()  # ... and catches up
    assert net.nodes[3].log() == net.nodes[1].log()


# ============================================================================ §6 membership


def joined(net: Network, nid: int):
    """Starts a new, empty node that knows the bootstrap membership (it is not a member)."""
    net.add_node(nid)
    return net.nodes[nid]


def change(net: Network, leader: int, type: ConfChangeType, nid: int) -> None:
    net.core(leader).propose_conf_change(ConfChange(type, nid))
    net.deliver()


def test_learner_is_added_then_promoted_to_voter():
    """A new server joins as a non-voting member that receives the log until it has caught up;
    then it is promoted, and from then on it counts towards the majority. Reference: §6"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    for k in range(3):
        net.propose(1, b"v%d" % k)
    joined(net, 4)
    change(net, 1, ConfChangeType.ADD_LEARNER, 4)
    for nid in net.nodes:
        assert net.core(nid).conf.learners == (4,)
        assert net.core(nid).conf.voters == (1, 2, 3)
    assert net.nodes[4].applied_data() == net.nodes[1].applied_data()
    # 1, 2 of voters {1, 2, 3}: a majority, the learner does not matter.
    net.isolate(3)
    net.isolate(4)
    _, i = net.propose(1, b"with 1 and 2")
    assert net.core(1).commit == i
    net.recover()
    net.tick(1)
    change(net, 1, ConfChangeType.ADD_VOTER, 4)
    assert net.core(4).conf.voters == (1, 2, 3, 4) and net.core(4).conf.learners == ()
    # 1, 2 of voters {1, 2, 3, 4}: not a majority any more.
    net.isolate(3)
    net.isolate(4)
    _, i = net.propose(1, b"needs a third")
    assert net.core(1).commit == i - 1
    net.recover()
    net.tick(1)
    assert net.core(1).commit == i
    assert net.nodes[4].applied_data()[-1] == b"needs a third"


def test_a_learner_far_behind_is_not_promoted():
    """A learner is promoted only once it has caught up: promoted while far behind, it would
    count towards every majority before it holds the log, and one more voter down would stop
    all commits until it caught up. Reference: §6"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    joined(net, 4)
    net.isolate(4)
    change(net, 1, ConfChangeType.ADD_LEARNER, 4)
    for k in range(20):
        net.propose(1, b"v%d" % k)
    with pytest.raises(ConfChangeError, match="has not caught up"):
        net.core(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.recover()
    net.tick(1)  # the heartbeat answer brings the learner up to date
    assert net.nodes[4].applied_data() == net.nodes[1].applied_data()
    change(net, 1, ConfChangeType.ADD_VOTER, 4)
    assert net.core(1).conf.voters == (1, 2, 3, 4)


def test_removed_voter_no_longer_counts():
    """After a server is removed from the configuration, the majority is computed over the
    remaining servers only. Reference: §6"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    change(net, 1, ConfChangeType.REMOVE, 3)
    assert net.core(1).conf.voters == (1, 2) and net.core(2).conf.voters == (1, 2)
    assert net.core(3).conf.voters == (1, 2)  # it applied its own removal
    net.isolate(3)
    _, i = net.propose(1, b"x")
    assert net.core(1).commit == i
    net.isolate(2)
    _, i = net.propose(1, b"y")  # 1 of {1, 2}: not committed
    assert net.core(1).commit == i - 1
    # The removed node never campaigns again.
    net.recover()
    net.crash(1)
    net.crash(2)
    sent = net.nodes[3].tick(60)
    assert net.core(3).role is F and sent == []


def test_only_one_membership_change_at_a_time():
    """Changes are made one server at a time: a second change is refused while the first is
    not yet applied, and allowed once it is. Reference: §6"""
    node = lone_node(voters=(1, 2, 3), **CLASSIC)
    make_leader(node)
    commit_noop(node)
    core = node.core
    core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    node.handle_ready()
    with pytest.raises(ConfChangeError):
        core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    with pytest.raises(ConfChangeError):
        core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    node.step(Message(MT.APPEND_RESP, 1, 2, term=core.term, index=core.last_index))
    assert core.conf.learners == (4,)
    core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))  # now allowed
    # Invalid changes are refused whatever is pending.
    node2 = lone_node(voters=(1,), **CLASSIC)
    make_leader(node2)
    for cc in [ConfChange(ConfChangeType.ADD_VOTER, 1), ConfChange(ConfChangeType.REMOVE, 1),
               ConfChange(ConfChangeType.REMOVE, 9), ConfChange(ConfChangeType.ADD_LEARNER, 0)]:
        with pytest.raises(ConfChangeError):
            node2.core.propose_conf_change(cc)


def test_membership_change_refused_until_leader_commits_an_entry_of_its_term():
    """A leader may not propose a membership change until it has committed an entry of its own
    term (its no-op): otherwise a change of a previous term, not yet known committed, could
    overlap with the new one (thesis §4.1, and the fix to the single-server change bug).
    Reference: §6"""
    # Everything of the previous term is committed and applied: only the new rule applies.
    node = lone_node(voters=(1, 2, 3), entries=ents(1, 1), term=1, commit=2, **CLASSIC)
    assert node.core.applied == 2
    make_leader(node)
    core = node.core
    with pytest.raises(ConfChangeError, match="not yet committed an entry of its term"):
        core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    node.step(Message(MT.APPEND_RESP, 1, 2, term=core.term, index=3))
    assert core.commit == 3
    core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    assert core.last_index == 4

    # An uncommitted entry of a previous term: its replicas do not help either.
    node = lone_node(voters=(1, 2, 3), entries=ents(1, 1), term=1, commit=1, **CLASSIC)
    make_leader(node)
    core = node.core
    node.step(Message(MT.APPEND_RESP, 1, 2, term=core.term, index=2))
    assert core.commit == 1
    with pytest.raises(ConfChangeError):
        core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    node.step(Message(MT.APPEND_RESP, 1, 2, term=core.term, index=3))
    core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one():
    """A leader that is removed from the configuration steps down once the change is
    committed; the remaining servers elect a leader among themselves. Reference: §6"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.delivered.clear()
    change(net, 1, ConfChangeType.REMOVE, 1)
    assert net.core(1).role is F
    assert all(net.core(i).conf.voters == (2, 3) for i in net.nodes)
    with pytest.raises(ProposalDroppedError):
        net.core(1).propose(b"x")
    leader = tick_until_leader(net)
    assert leader in (2, 3)
    net.propose(leader, b"after")
    assert net.nodes[leader].applied_data() == [b"after"]
    assert not [m for m in net.delivered if m.frm == 1 and m.type in (MT.VOTE, MT.PRE_VOTE)]


@pytest.mark.parametrize("broadcast_commit", [True, False])
def test_a_removed_leader_tells_the_others_its_removal_is_committed(broadcast_commit):
    """A leader removed from the configuration steps down once it applies the change; the
    others apply it only once they learn it is committed, and until then count votes under
    the configuration that still holds the removed leader. So the leader tells them before it
    stops leading: else, in a group of two, the survivor would need the removed node's vote
    for ever (nothing else carries the commit index once commits are not broadcast).
    Reference: §6"""
    net = Network((1, 2), broadcast_commit=broadcast_commit)
    net.elect(1)
    net.propose(1, b"a")
    change(net, 1, ConfChangeType.REMOVE, 1)
    assert net.core(1).role is F
    assert net.core(2).conf.voters == (2,)
    net.crash(1)  # the removed node is shut down
    assert tick_until_leader(net) == 2
    net.propose(2, b"after")
    assert net.nodes[2].applied_data() == [b"a", b"after"]


def test_learners_never_vote_and_never_count_towards_a_quorum():
    """Non-voting members (learners) receive the log but never campaign, are not asked for
    votes, and their acknowledgements count neither for commitment nor for elections.
    (Thesis §4.2.1.) Reference: §6"""
    net = Network((1, 2), learners=(3, 4), **CLASSIC)
    net.elect(1)
    assert not net.delivered_of(MT.VOTE, to=3) and not net.delivered_of(MT.VOTE, to=4)
    _, i = net.propose(1, b"x")
    assert net.nodes[3].applied_data() == [b"x"]
    net.isolate(2)
    _, i = net.propose(1, b"y")
    assert net.core(3).last_index == i and net.core(4).last_index == i
    assert net.core(1).commit == i - 1  # two learners acked, one voter of two: not committed
    net.recover()
    net.crash(1)
    net.crash(2)
    net.tick(times=100)
    assert net.core(3).role is F and net.core(4).role is F
    assert not [m for m in net.delivered if m.frm in (3, 4) and m.type in (MT.VOTE, MT.PRE_VOTE)]
    # A candidate among the voters wins without any learner.
    net.restart(1)
    net.restart(2)
    net.isolate(3)
    net.isolate(4)
    net.elect(1)  # 2 could not: 1 holds the uncommitted "y", a longer log
    net.tick(1)
    assert net.nodes[2].applied_data() == [b"x", b"y"]


# ============================================================================ §7 compaction


def test_compaction_replaces_the_applied_prefix_with_a_snapshot():
    """Each server compacts its log independently: the application snapshots its state at the
    applied index and the log up to there is discarded; a restart recovers from the snapshot
    plus the entries after it. Reference: §7"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    for k in range(10):
        net.propose(1, b"v%d" % k)
    node = net.nodes[2]
    core = node.core
    applied = core.applied
    meta = node.compact(keep=3)
    assert (meta.index, meta.term, meta.conf.voters) == (applied, 1, (1, 2, 3))
    assert core.first_index == applied - 3 + 1
    assert core.term_at(applied - 4) is None and core.term_at(applied - 3) == 1
    node.compact()
    assert core.first_index == applied + 1 and core.last_index == applied
    assert core.term_at(applied) == 1  # the snapshot's own term is kept for the next append
    assert node.disk.snapshot.meta.index == applied and node.disk.entries == []
    net.propose(1, b"after")
    net.crash(2)
    net.restart(2)
    assert net.core(2).first_index == applied + 1
    assert net.nodes[2].applied_data() == [b"v%d" % k for k in range(10)] + [b"after"]
    net.propose(1, b"later")
    assert net.nodes[2].applied_data()[-1] == b"later"


def test_follower_behind_the_compaction_point_receives_a_chunked_snapshot():
    """A follower that lags behind the leader's compaction point receives the leader's snapshot
    (InstallSnapshot, sent in chunks), replaces its log and state with it, then continues with
    ordinary appends. Reference: §7"""
    net = Network((1, 2, 3), snapshot_chunk_size=16, **CLASSIC)
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(1, b"value-%d" % k)
    meta = net.nodes[1].compact()
    size = len(net.core(1).snapshot.data)
    net.recover()
    net.delivered.clear()
    net.tick(1)
    chunks = net.delivered_of(MT.SNAPSHOT, to=3)
    assert len(chunks) == -(-size // 16) > 3
    assert [m.chunk_offset for m in chunks] == list(range(0, size, 16))
    assert all(m.snapshot == meta for m in chunks)
    node3 = net.nodes[3]
    assert node3.disk.snapshot.meta == meta
    assert node3.core.first_index == meta.index + 1
    assert node3.applied_data() == net.nodes[1].applied_data()
    net.propose(1, b"after")
    assert node3.applied_data()[-1] == b"after"
    assert net.core(1).status()["progress"][3]["state"] == ProgressState.REPLICATE.value


def test_snapshot_transfer_survives_lost_chunks_and_a_receiver_restart():
    """A lost chunk is resent from the offset the follower acknowledged (not from the start);
    a follower that restarted mid-transfer makes the leader start over. Reference: §7"""
    net = Network((1, 2, 3), snapshot_chunk_size=8, **CLASSIC)
    net.elect(1)
    net.isolate(3)
    for k in range(8):
        net.propose(1, b"value-%d" % k)
    net.nodes[1].compact()
    size = len(net.core(1).snapshot.data)
    net.recover()
    lost = []

    def lose_third_chunk(m):
        if m.type is MT.SNAPSHOT and m.chunk_offset == 16 and not lost:
            lost.append(m)
            return True
        return False

    net.add_filter(lose_third_chunk)
    net.delivered.clear()
    net.tick(1)
    assert lost and net.nodes[3].disk.snapshot is None  # stalled at offset 16
    net.tick(1, times=2)  # unanswered for two heartbeat intervals: resent from 16
    offsets = [m.chunk_offset for m in net.delivered_of(MT.SNAPSHOT, to=3)]
    assert offsets[:2] == [0, 8] and offsets[2] == 16 and 0 not in offsets[1:]
    assert net.nodes[3].applied_data() == net.nodes[1].applied_data()

    # Restart mid-transfer: the new incarnation refuses a chunk past 0, the leader restarts.
    net2 = Network((1, 2, 3), snapshot_chunk_size=8, **CLASSIC)
    net2.elect(1)
    net2.isolate(3)
    for k in range(8):
        net2.propose(1, b"value-%d" % k)
    net2.nodes[1].compact()
    net2.recover()
    net2.add_filter(lambda m: m.type is MT.SNAPSHOT and m.chunk_offset == 8)
    net2.tick(1)  # 3 receives chunk 0 and acknowledges it; chunk 1 is lost
    net2.crash(3)
    net2.restart(3)  # what it had received was in memory only
    net2.recover()
    net2.delivered.clear()
    net2.tick(1, times=2)
    resp = net2.delivered_of(MT.SNAPSHOT_RESP, frm=3)
    assert resp[0].reject and resp[0].chunk_offset == 0
    offsets = [m.chunk_offset for m in net2.delivered_of(MT.SNAPSHOT, to=3)]
    assert offsets[:3] == [8, 0, 8]
    assert net2.nodes[3].applied_data() == net2.nodes[1].applied_data()
    assert size > 16


def test_snapshot_transfer_keeps_one_chunk_in_flight_despite_heartbeats():
    """A transfer keeps a chunk in flight nearly all the time, so a heartbeat answer almost
    always finds one: resending it on each would send a chunk more per heartbeat interval
    (nearly doubling a transfer's traffic over a slow link), and duplicate answers must not
    fork into parallel streams of chunks. A chunk is resent only once it has gone unanswered
    for a while: over a slow link that loses nothing, each chunk goes once. Reference: §7"""
    net = Network((1, 2, 3), snapshot_chunk_size=8, **CLASSIC)
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(1, b"value-%d" % k)
    net.nodes[1].compact()
    chunks = -(-len(net.core(1).snapshot.data) // 8)
    net.recover()
    net.delivered.clear()
    ticks = 0
    while net.nodes[3].disk.snapshot is None and ticks < 4 * chunks:
        net.tick(1, deliver=False)  # a heartbeat every eight deliveries: a slow link
        net.deliver(limit=8)
        ticks += 1
    assert net.nodes[3].disk.snapshot is not None, f"not installed after {ticks} ticks"
    offsets = [m.chunk_offset for m in net.delivered_of(MT.SNAPSHOT, to=3)]
    assert offsets == list(range(0, 8 * chunks, 8))
    net.deliver()
    assert net.nodes[3].applied_data() == net.nodes[1].applied_data()


# ============================================================================ §8 clients


def test_read_index_is_served_only_after_a_heartbeat_quorum():
    """A read-only request is answered only after the leader has exchanged heartbeats with a
    majority, proving it was still leader when it recorded its commit index (ReadIndex).
    (Thesis §6.4.) Reference: §8"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.propose(1, b"x")
    commit = net.core(1).commit
    net.drop(MT.HEARTBEAT_RESP)
    net.core(1).read_index(b"ctx-1")
    net.deliver()
    net.tick(1, times=3)
    assert net.nodes[1].read_states == []
    net.recover()
    net.tick(1)
    assert [(r.index, r.context) for r in net.nodes[1].read_states] == [(commit, b"ctx-1")]
    # A follower's read is forwarded and answered by the leader.
    net.core(3).read_index(b"ctx-3")
    net.deliver()
    assert [(r.index, r.context) for r in net.nodes[3].read_states] == [(commit, b"ctx-3")]


def test_new_leader_delays_reads_until_it_commits_an_entry_of_its_term():
    """A new leader does not know the commit index until it has committed an entry of its term,
    so it holds read requests until its no-op is committed. Reference: §8"""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.propose(1, b"x")
    net.drop(MT.APPEND_RESP, to=2)
    net.elect(2)
    core = net.core(2)
    assert core.term_at(core.commit) != core.term
    core.read_index(b"r")
    net.deliver()
    net.tick(2, times=3)
    assert net.nodes[2].read_states == []
    net.recover()
    net.tick(2)
    assert core.term_at(core.commit) == core.term
    assert [(r.index, r.context) for r in net.nodes[2].read_states] == [(core.commit, b"r")]


def test_deposed_leader_cannot_serve_reads():
    """A leader cut off from the majority may not know it was deposed; it must not answer
    reads, which could be stale. Reference: §8"""
    net = Network((1, 2, 3, 4, 5), **CLASSIC)
    net.elect(1)
    net.propose(1, b"old")
    net.isolate(1)
    net.elect(2)
    net.propose(2, b"new")
    assert net.core(1).role is L  # it does not know
    net.core(1).read_index(b"stale?")
    net.tick(1, times=30)
    assert net.nodes[1].read_states == []
    net.recover()
    net.tick(1, times=3)
    assert net.core(1).role is F and net.core(1).term == net.core(2).term
    assert net.nodes[1].read_states == []


# ============================================================================ thesis


def test_votes_and_append_acks_leave_only_after_they_are_durable():
    """A server persists its term, vote and log entries before it answers a RequestVote or
    acknowledges an AppendEntries: such replies are only ever in Ready.persisted_messages,
    and a node counts its own vote and its own log only after they are durable.
    Reference: thesis §3.8"""
    net = Network((1, 2, 3), pre_vote=True)
    net.elect(1)
    for k in range(3):
        net.propose(1, b"v%d" % k)
    net.isolate(1)
    for _ in range(60):
        net.tick(2, 3)
        if any(net.core(i).role is L for i in (2, 3)):
            break
    readies = [rd for node in net.nodes.values() for rd in node.readies]
    acks = {MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.APPEND_RESP}
    assert any(m.type is MT.VOTE_RESP for rd in readies for m in rd.persisted_messages)
    assert any(m.type is MT.APPEND_RESP for rd in readies for m in rd.persisted_messages)
    assert not [m for rd in readies for m in rd.messages if m.type in acks]

    # Own vote and own log: a single node is leader only after its vote is durable, and
    # commits only after its entry is.
    node = lone_node(voters=(1,), **CLASSIC)
    core = node.core
    core.campaign()
    assert core.role is C
    rd = core.ready()
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync
    assert core.role is C
    node.disk.save(rd)
    core.advance(rd)
    assert core.role is L
    rd = core.ready()
    assert [e.index for e in rd.entries] == [1] and core.commit == 0
    node.disk.save(rd)
    core.advance(rd)
    assert core.commit == 1


def test_leader_transfer_hands_over_leadership_with_timeout_now():
    """Leadership transfer: the leader stops accepting proposals, brings the target up to date,
    then sends it TimeoutNow; the target campaigns at once (overriding the others' leader
    lease) and wins in the next term. Reference: thesis §3.10"""
    net = Network((1, 2, 3))  # pre-vote and check-quorum on
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    net.recover()
    assert net.core(3).last_index < net.core(1).last_index
    net.core(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        net.core(1).propose(b"during")
    net.deliver()
    assert net.core(3).role is L and net.core(3).term == 2
    assert net.core(1).role is F and net.core(1).leader == 3
    assert len(net.delivered_of(MT.TIMEOUT_NOW, frm=1, to=3)) == 1
    net.propose(3, b"after")
    assert net.nodes[1].applied_data()[-1] == b"after"


def test_leader_transfer_to_a_voter_just_promoted_waits_for_it_to_apply_its_promotion():
    """A learner promoted to voter may be told to take over before it has applied its own
    promotion: the commit index and the TimeoutNow arrive in one batch, stepped before the
    change is applied. It then campaigns once the change is applied, rather than dropping the
    request and leaving the leader refusing proposals for an election timeout, in vain.
    Reference: thesis §3.10, §6"""
    net = Network((1, 2, 3))
    net.elect(1)
    net.add_node(4)
    change(net, 1, ConfChangeType.ADD_LEARNER, 4)
    net.tick(times=2)
    # 4 gets its promotion, but the commit index that covers it is held back.
    net.add_filter(lambda m: m.to == 4 and m.type is MT.APPEND and not m.entries)
    net.core(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.deliver()
    net.recover()
    held = [m for m in net.dropped if m.to == 4 and m.type is MT.APPEND]
    assert net.core(1).conf.voters == (1, 2, 3, 4) and net.core(4).conf.learners == (4,)
    assert net.core(4).last_index == net.core(1).last_index
    net.core(1).transfer_leader(4)
    held += [m for m in net.take() if m.to == 4]
    assert [m.type for m in held][-1] is MT.TIMEOUT_NOW
    for m in held:  # one batch: stepped, then one Ready
        net.core(4).step(m)
    net.deliver()
    assert net.core(4).role is L and net.core(1).role is F
    net.propose(4, b"after")
    assert net.nodes[1].applied_data()[-1] == b"after"


def test_leader_transfer_is_aborted_after_an_election_timeout():
    """A transfer that does not complete within an election timeout is aborted, and the leader
    accepts proposals again. Reference: thesis §3.10"""
    net = Network((1, 2, 3), election_tick=10)
    net.elect(1)
    net.isolate(2)
    net.core(1).transfer_leader(2)
    net.deliver()
    with pytest.raises(ProposalDroppedError):
        net.core(1).propose(b"x")
    net.tick(1, times=10)
    assert net.core(1).role is L
    net.propose(1, b"x")
    assert net.nodes[3].applied_data() == [b"x"]


@pytest.mark.parametrize("leaving", [ConfChangeType.REMOVE, ConfChangeType.ADD_LEARNER])
def test_no_leader_transfer_to_a_voter_whose_removal_is_pending(leaving):
    """A transfer to a voter that a pending membership change removes (or demotes) is
    refused: elected, it would commit its own removal and step down, leaving the group without
    a leader for an election timeout, where the leader that proposed the change keeps leading.
    Once the change is applied the target is no voter, and refused as such. Reference: §6"""
    net = Network((1, 2, 3, 4, 5), election_tick=10)
    net.elect(1)
    net.propose(1, b"a")
    for nid in (2, 3, 4):
        net.isolate(nid)
    net.core(1).propose_conf_change(ConfChange(leaving, 5))
    net.deliver()  # 5 holds the change, which is not committed: 1 and 5 of five
    net.recover()
    assert net.core(1).status()["progress"][5]["match"] == net.core(1).last_index
    with pytest.raises(ConfChangeError, match="node 5 is leaving the voters"):
        net.core(1).transfer_leader(5)
    net.tick(1)  # a heartbeat round brings 2, 3 and 4 the change: committed
    assert net.core(1).role is L and net.core(1).conf.voters == (1, 2, 3, 4)
    net.propose(1, b"b")  # no transfer under way
    with pytest.raises(ConfChangeError, match="not a voter"):
        net.core(1).transfer_leader(5)
    net.core(1).transfer_leader(2)  # other voters may still take over
    net.deliver()
    assert net.core(2).role is L


def test_prevote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader():
    """With PreVote a node only increments its term after a majority said it could win; a
    node partitioned away keeps its term, and when it rejoins the leader keeps leading in the
    same term. Reference: thesis §9.6"""
    net = Network((1, 2, 3), pre_vote=True, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    net.propose(1, b"x")
    net.tick(3, times=100)
    assert net.core(3).term == 1 and net.core(3).role is PC
    net.recover()
    net.tick(3)
    net.tick(1)
    assert net.core(1).role is L and net.terms() == {1: 1, 2: 1, 3: 1}
    assert net.core(3).role is F and net.nodes[3].applied_data() == [b"x"]

    # Without PreVote the same partition disrupts: the rejoining node's higher term deposes
    # the leader at its first heartbeat.
    net = Network((1, 2, 3), pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    net.tick(3, times=100)
    assert net.core(3).term > 1
    net.recover()
    net.tick(1)
    assert net.core(1).role is F and net.core(1).term == net.core(3).term > 1


def test_check_quorum_leader_steps_down_when_it_loses_the_quorum():
    """CheckQuorum: a leader that has not heard from a majority during a whole election timeout
    steps down, so it stops pretending to lead a minority. The check runs once per election
    timeout, so this happens within two timeouts of the last contact. Reference: thesis §6.2"""
    et = 10
    net = Network((1, 2, 3), election_tick=et, check_quorum=True)
    net.elect(1)
    net.tick(1, times=3 * et)
    assert net.core(1).role is L  # it hears from its followers
    net.isolate(1)
    net.tick(1, times=et - 1)
    assert net.core(1).role is L
    net.tick(1, times=et + 1)
    assert net.core(1).role is F and net.core(1).term == 1 and net.core(1).leader == NONE


def test_check_quorum_lease_ignores_vote_requests_while_hearing_from_the_leader():
    """Leader lease: a server that heard from the current leader within the minimum election
    timeout ignores RequestVote (and PreVote) from others, so a disruptive node cannot depose
    a working leader; once the leader is silent for a timeout, votes are granted again.
    (See also §4.2.3.) Reference: thesis §6.2"""
    et = 10
    net = Network((1, 2, 3), election_tick=et, check_quorum=True, pre_vote=False)
    net.elect(1)
    net.core(3).campaign()
    net.deliver()
    assert net.core(3).role is C and net.core(3).term == 2
    assert net.terms()[1] == 1 and net.terms()[2] == 1 and net.core(2).vote == 1
    assert not [m for m in net.delivered if m.type is MT.VOTE_RESP and m.frm == 2 and m.to == 3]

    net = Network((1, 2, 3), election_tick=et, check_quorum=True, pre_vote=False)
    net.elect(1)
    net.isolate(1)
    net.tick(2, times=et)  # 2 has not heard from 1 for an election timeout
    net.core(3).campaign()
    net.deliver()
    assert net.core(3).role is L and net.core(3).term == 2
