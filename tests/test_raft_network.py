"""Table-driven tests of whole clusters on the synchronous network (etcd-io/raft ``raft_test.go``):
elections with nodes down, replication, duplicated and reordered messages, partitions, flow
control and fast log backtracking."""

from __future__ import annotations

import random

import pytest

from raft.progress import ProgressState
from raft.types import HardState, Message, MessageType, StateRole

from raftnet import Network, ents, lone_node, make_leader

MT = MessageType
F, PC, C, L = StateRole.FOLLOWER, StateRole.PRE_CANDIDATE, StateRole.CANDIDATE, StateRole.LEADER
CLASSIC = dict(pre_vote=False, check_quorum=False)


def tick_until_leader(net: Network, max_ticks: int = 300) -> int:
    for _ in range(max_ticks):
        if net.leaders():
            return net.leader()
        net.tick()
    raise AssertionError(f"no leader after {max_ticks} ticks: {net.roles()}")


def assert_converged(net: Network) -> None:
    """Every live node holds the same log, has committed and applied all of it."""
    logs = {i: n.log() for i, n in net.nodes.items()}
    ref = next(iter(logs.values()))
    for i, log in logs.items():
        assert log == ref, f"log of node {i} differs"
    for i, n in net.nodes.items():
        assert n.core.commit == n.core.last_index == n.core.applied, (i, n.core)
    states = {i: n.state for i, n in net.nodes.items()}
    assert len({tuple(s) for s in states.values()}) == 1, states


def with_logs(voters, logs: dict, terms: dict | None = None, **config) -> Network:
    """A network whose nodes start from the given durable logs (lists of entry terms)."""
    net = Network(voters, down=voters, **config)
    for nid in voters:
        t = logs.get(nid, ())
        net.disks[nid].entries = ents(*t)
        last = t[-1] if t else 0
        net.disks[nid].hard_state = HardState(term=(terms or {}).get(nid, last))
        net.restart(nid)
    return net


# ============================================================================ elections


@pytest.mark.parametrize("pre_vote", [False, True], ids=["vote", "prevote"])
@pytest.mark.parametrize(
    "voters, down, logs, role, term",
    [
        ((1, 2, 3), (), {}, L, 1),
        ((1, 2, 3), (3,), {}, L, 1),
        ((1, 2, 3), (2, 3), {}, C, 1),
        ((1, 2, 3, 4), (2, 3), {}, C, 1),
        ((1, 2, 3, 4, 5), (2, 3), {}, L, 1),
        ((1, 2, 3, 4, 5), (), {}, L, 1),
        ((1,), (), {}, L, 1),
        # The others' logs are more up to date: 1 cannot win (§5.4.1).
        ((1, 2, 3, 4, 5), (5,), {2: (1,), 3: (1,), 4: (1, 1)}, F, 1),
        # Only a minority is ahead: 1 wins.
        ((1, 2, 3, 4, 5), (), {4: (1,), 5: (1, 1)}, L, 1),
    ],
)
def test_leader_election(pre_vote, voters, down, logs, role, term):
    """Node 1 campaigns in clusters of various sizes with some nodes down or ahead of it; its
    resulting role and term (etcd TestLeaderElection / TestLeaderElectionPreVote)."""
    net = with_logs(voters, logs, pre_vote=pre_vote, check_quorum=False)
    for nid in down:
        net.crash(nid)
    net.campaign(1)
    core = net.core(1)
    if pre_vote and role is C:
        role, term = PC, 0  # a lost pre-election changes no term
    assert core.role is role
    assert core.term == term
    if role is L:
        assert all(n.core.leader == 1 for n in net.nodes.values())


def test_election_after_repeated_failures_converges():
    """Whatever the seed, a five-node cluster with one node down elects exactly one leader, and
    all live nodes agree on it and on the term."""
    for seed in range(20):
        net = Network((1, 2, 3, 4, 5), seed=seed, down=(seed % 5 + 1,))
        leader = tick_until_leader(net)
        net.tick(times=5)
        assert net.leaders() == [leader]
        assert len(set(net.terms().values())) == 1
        assert {n.core.leader for n in net.nodes.values()} == {leader}


# ============================================================================ replication


@pytest.mark.parametrize(
    "voters, script, want",
    [
        ((1, 2, 3), [("elect", 1), ("propose", 1, b"a")], [b"a"]),
        ((1, 2, 3), [("elect", 1), ("propose", 1, b"a"), ("elect", 2), ("propose", 2, b"b")],
         [b"a", b"b"]),
        ((1, 2, 3, 4, 5), [("elect", 1), ("propose", 1, b"a"), ("propose", 1, b"b"),
                           ("elect", 5), ("propose", 5, b"c"), ("elect", 3),
                           ("propose", 3, b"d")], [b"a", b"b", b"c", b"d"]),
        ((1, 2, 3, 4, 5), [("elect", 1), ("isolate", 5), ("propose", 1, b"a"), ("recover",),
                           ("elect", 2), ("propose", 2, b"b")], [b"a", b"b"]),
        ((1,), [("elect", 1)] + [("propose", 1, b"%d" % k) for k in range(5)],
         [b"%d" % k for k in range(5)]),
    ],
)
def test_log_replication(voters, script, want):
    """Proposals on successive leaders are replicated, committed and applied everywhere in one
    order (etcd TestLogReplication)."""
    net = Network(voters, **CLASSIC)
    for op, *args in script:
        getattr(net, op)(*args)
    leader = net.leader()
    net.tick(leader, times=2)
    assert_converged(net)
    assert net.nodes[1].applied_data() == want


def test_proposals_to_a_minority_leader_are_never_applied():
    """A leader cut off in a minority keeps appending proposals it can never commit; after the
    partition heals they are discarded in favour of the majority's log."""
    net = Network((1, 2, 3, 4, 5), **CLASSIC)
    net.elect(1)
    net.propose(1, b"before")
    for a in (1, 2):
        for b in (3, 4, 5):
            net.cut(a, b)
    for k in range(3):
        net.propose(1, b"lost%d" % k)
    assert net.core(1).commit < net.core(1).last_index
    net.elect(3)
    net.propose(3, b"kept")
    net.recover()
    net.tick(3, times=3)
    assert net.roles()[1] is F and net.leader() == 3
    assert_converged(net)
    assert net.nodes[1].applied_data() == [b"before", b"kept"]


@pytest.mark.parametrize("seed", range(12))
def test_duplicated_and_reordered_messages(seed):
    """The network may duplicate and reorder messages, and replay old ones (even across terms,
    as nodes campaign now and then): the cluster still applies every committed proposal exactly
    once, in one order on every node, and a leader that kept its term commits all of its
    proposals."""
    rng = random.Random(seed)
    net = Network((1, 2, 3), seed=seed, **CLASSIC)
    leader = tick_until_leader(net)
    proposed = []
    for k in range(12):
        leader = net.leader() or leader
        core = net.core(leader)
        if core.role is L:
            core.propose(b"p%d" % k)
            proposed.append(b"p%d" % k)
        if rng.random() < 0.2:
            net.core(leader).tick()
        if rng.random() < 0.1:
            net.core(rng.choice([1, 2, 3])).campaign()
        msgs = net.take()
        extra = [m for m in msgs if rng.random() < 0.3]
        old = [m for m in net.delivered if rng.random() < 0.05]
        mixed = msgs + extra + old
        rng.shuffle(mixed)
        for m in mixed:
            net.queue.extend(net.step(m))
    net.deliver()
    leader = tick_until_leader(net)
    net.tick(leader, times=3)
    applied = net.nodes[leader].applied_data()
    assert len(applied) == len(set(applied))
    assert set(applied) <= set(proposed)
    if net.core(leader).term == 1:
        assert applied == proposed
    assert_converged(net)


def test_stale_messages_from_an_old_term_are_ignored():
    """An append from a deposed leader, delivered late, changes nothing (etcd TestOldMessages)."""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.elect(2)
    net.elect(1)  # term 3
    stale = Message(MT.APPEND, 1, 2, term=2, index=3, log_term=2,
                    entries=(ents(2, start=4)[0],), commit=4)
    net.send(stale)
    net.propose(1, b"somedata")
    assert_converged(net)
    assert [e.term for e in net.nodes[1].log()] == [1, 2, 3, 3]


@pytest.mark.parametrize("check_quorum", [False, True])
def test_partition_heals_with_a_single_leader(check_quorum):
    """A leader partitioned with a minority, a majority that elects anew, then the heal: one
    leader remains, in the highest term, and everyone converges on the majority's log."""
    net = Network((1, 2, 3, 4, 5), check_quorum=check_quorum, pre_vote=True)
    net.elect(1)
    net.propose(1, b"a")
    minority, majority = (1, 2), (3, 4, 5)
    for a in minority:
        for b in majority:
            net.cut(a, b)
    for _ in range(100):
        net.tick()
        if any(net.core(i).role is L for i in majority):
            break
    new = [i for i in majority if net.core(i).role is L]
    assert len(new) == 1
    net.propose(new[0], b"b")
    if check_quorum:
        net.tick(times=25)
        assert net.core(1).role is not L  # it noticed it lost the quorum
    net.recover()
    leader = tick_until_leader(net)
    net.tick(times=3)
    assert net.leaders() == [leader] and leader in majority
    assert_converged(net)
    assert net.nodes[1].applied_data() == [b"a", b"b"]


# ============================================================================ flow control


def test_replicate_window_bounds_in_flight_appends():
    """In REPLICATE a leader pipelines appends without waiting, but never has more than
    max_inflight_msgs unacknowledged ones per follower; acknowledgements reopen the window."""
    net = Network((1, 2, 3), max_inflight_msgs=3, **CLASSIC)
    net.elect(1)
    core = net.core(1)
    assert core.status()["progress"][2]["state"] == ProgressState.REPLICATE.value
    held = []
    for k in range(10):
        core.propose(b"e%d" % k)
        held += net.take()
    to2 = [m for m in held if m.type is MT.APPEND and m.to == 2]
    assert len(to2) == 3
    assert [len(m.entries) for m in to2] == [1, 1, 1]
    assert core.status()["progress"][2]["inflight"] == 3
    # One acknowledgement frees one slot: the next append carries everything pending.
    ack = net.step(to2[0])
    out = net.step(ack[0])
    more = [m for m in out if m.type is MT.APPEND and m.to == 2]
    assert len(more) == 1 and len(more[0].entries) == 7
    net.send(*held)
    net.tick(1)
    assert_converged(net)


def test_probe_sends_one_append_at_a_time():
    """In PROBE the leader does not know where the follower's log matches: it sends one append
    and waits for its answer (or a heartbeat response) before sending another."""
    node = lone_node(**CLASSIC)
    out = make_leader(node)
    assert len([m for m in out if m.type is MT.APPEND and m.to == 2]) == 1
    core = node.core
    sent = []
    for k in range(5):
        core.propose(b"e%d" % k)
        sent += node.handle_ready()
    assert not [m for m in sent if m.type is MT.APPEND and m.to == 2]
    # The heartbeat response lets one more probe out, and only one.
    out = node.step(Message(MT.HEARTBEAT_RESP, 1, 2, term=1))
    assert len([m for m in out if m.type is MT.APPEND and m.to == 2]) == 1
    out = node.step(Message(MT.HEARTBEAT_RESP, 1, 2, term=1),
                    Message(MT.HEARTBEAT_RESP, 1, 2, term=1))
    assert len([m for m in out if m.type is MT.APPEND and m.to == 2]) == 2  # one per response
    # The answer to the probe moves the follower to REPLICATE: then appends are pipelined.
    node.step(Message(MT.APPEND_RESP, 1, 2, term=1, index=core.last_index))
    assert core.status()["progress"][2]["state"] == ProgressState.REPLICATE.value
    sent = []
    for k in range(3):
        core.propose(b"f%d" % k)
        sent += node.handle_ready()
    assert len([m for m in sent if m.type is MT.APPEND and m.to == 2]) == 3


def test_full_window_whose_appends_were_all_lost_recovers():
    """If every append of a full REPLICATE window is lost, heartbeat responses still get the
    follower going again (etcd frees one slot), instead of the window staying full forever."""
    net = Network((1, 2, 3), max_inflight_msgs=2, **CLASSIC)
    net.elect(1)
    net.drop(MT.APPEND, to=3)
    for k in range(5):
        net.propose(1, b"v%d" % k)
    assert net.core(1).status()["progress"][3]["inflight"] == 2
    net.recover()
    net.tick(1, times=2)
    assert_converged(net)


def test_commit_reaches_a_follower_whose_probe_was_answered_after_the_commit():
    """A follower that was paused (probing) when the commit index advanced is sent the new
    commit index as soon as its answer unpauses it, without waiting for a heartbeat."""
    net = Network((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.drop(MT.APPEND)
    net.propose(1, b"a")  # both followers miss it
    net.recover()
    net.tick(1, deliver=False)
    # Both reject the next append and are probed with "a" (and the old commit index). 2's
    # acknowledgement commits "a" while the probe to 3 is in flight; 3's then unpauses it.
    net.deliver()
    assert net.core(1).commit == net.core(1).last_index
    assert net.core(3).last_index == net.core(1).last_index
    assert net.core(3).commit == net.core(1).commit
    assert net.nodes[3].applied_data() == [b"a"]


@pytest.mark.parametrize(
    "leader_log, follower_log, max_rejects",
    [
        # A long run of a stale term on the follower: skipped in one round trip.
        ([1] * 10 + [3] * 50, [1] * 10 + [2] * 100, 1),
        ([1] * 5 + [2] * 40 + [4] * 40, [1] * 5 + [3] * 120, 2),
        # The follower is merely behind: one rejection tells the leader its end.
        ([1] * 100, [1] * 5, 1),
        # Many short terms on one side or the other: still a couple of round trips.
        ([1] + [10] * 100, [1] + [t for t in range(2, 10) for _ in range(10)], 2),
        ([1] + [t for t in range(2, 10) for _ in range(10)], [1] + [10] * 5, 2),
        ([1, 1, 2, 2, 4, 4, 6, 6] * 1 + [6] * 30, [1, 1, 2, 2, 3, 3, 5, 5] + [5] * 40, 3),
    ],
)
def test_fast_backtracking_needs_round_trips_per_term_not_per_entry(
        leader_log, follower_log, max_rejects):
    """Reconciling a long divergent log takes a number of round trips bounded by the number of
    distinct terms involved, not by the number of entries: a rejection carries a hint (the
    follower's last index with a term <= the probed one) that the leader refines with its own
    log (thesis §5.3 "conflicting term" optimisation; etcd TestFastLogRejection)."""
    terms = max(leader_log[-1], follower_log[-1]) + 1
    net = with_logs((1, 2, 3), {1: leader_log, 2: follower_log, 3: leader_log},
                    terms={1: terms, 2: terms, 3: terms}, **CLASSIC)
    net.elect(1)
    net.tick(1)
    rejects = [m for m in net.delivered if m.type is MT.APPEND_RESP and m.frm == 2 and m.reject]
    distinct = len(set(leader_log) | set(follower_log))
    assert len(rejects) <= min(max_rejects, distinct)
    appends = [m for m in net.delivered if m.type is MT.APPEND and m.to == 2]
    assert len(appends) <= len(rejects) + 4
    assert_converged(net)


def test_status_tells_how_long_ago_each_follower_answered_not_only_the_quorum_flag():
    """The quorum check clears every follower's ``active`` flag and the next answer sets it
    again: right after a check a follower that answered one tick ago is not ``active``.
    ``heard_ago`` says when it last answered, whatever the phase of the check."""
    net = Network((1, 2, 3), check_quorum=True, pre_vote=True)
    net.elect(1)
    core = net.core(1)
    # The quorum check runs on the leader's election_tick-th tick; every tick before it is
    # delivered, the heartbeats of that one are still on their way when status is asked.
    net.tick(1, times=core.config.election_tick - 1)
    net.tick(1, deliver=False)
    assert core.role is StateRole.LEADER
    progress = core.status()["progress"]
    assert [progress[f]["active"] for f in (2, 3)] == [False, False]
    assert [progress[f]["heard_ago"] for f in (2, 3)] == [1, 1]
    net.deliver()
    assert [core.status()["progress"][f]["heard_ago"] for f in (2, 3)] == [0, 0]
