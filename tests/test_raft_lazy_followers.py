"""``Config.lazy_followers``: a leader sends each new entry at once only to the followers a
commit needs; the others receive the log in batches when they answer a heartbeat."""

from __future__ import annotations

from raft.core import RaftCore
from raft.types import MessageType as MT

from raftnet import core_cluster, drain_cores


def _elect(cores: dict[int, RaftCore], leader: int = 1) -> RaftCore:
    cores[leader].campaign()
    drain_cores(cores)
    assert cores[leader].status()["role"] == "leader"
    return cores[leader]


def _propose(cores, leader: RaftCore, data: bytes, drop=lambda m: False) -> set[int]:
    """Proposes ``data`` and runs the group; returns the nodes sent an append carrying it
    (delivered or dropped by ``drop``)."""
    leader.propose(data)
    index = leader.last_index
    sent_to = set()

    def watch(m):
        if m.type is MT.APPEND and any(e.index == index for e in m.entries):
            sent_to.add(m.to)
        return drop(m)

    drain_cores(cores, drop=watch)
    return sent_to


def _heartbeat(cores, leader: RaftCore, drop=lambda m: False) -> None:
    for _ in range(leader.config.heartbeat_tick):
        leader.tick()
    drain_cores(cores, drop=drop)


def test_new_entries_go_at_once_only_to_the_follower_a_commit_needs():
    for lazy, expected in ((False, 2), (True, 1)):
        cores = core_cluster(3, lazy_followers=lazy)
        leader = _elect(cores)
        _propose(cores, leader, b"first")
        sent_to = _propose(cores, leader, b"second")
        assert len(sent_to) == expected, (lazy, sent_to)
        assert leader.commit == leader.last_index  # committed all the same
        if lazy:
            (eager,) = sent_to
            (other,) = {2, 3} - sent_to
            assert cores[eager].last_index == leader.last_index
            assert cores[other].last_index < leader.last_index
            # It goes on: each later entry to the same follower.
            for k in range(3):
                assert _propose(cores, leader, b"more %d" % k) == sent_to


def test_the_other_followers_receive_the_log_in_a_batch_at_a_heartbeat():
    cores = core_cluster(3, lazy_followers=True, broadcast_commit=False)
    leader = _elect(cores)
    for k in range(5):
        _propose(cores, leader, b"w%d" % k)
    behind = [c for i, c in cores.items() if i != 1 and c.last_index < leader.last_index]
    assert len(behind) == 1
    appends = []
    _heartbeat(cores, leader, drop=lambda m: appends.append(m) if m.type is MT.APPEND
               else None)
    assert all(c.last_index == leader.last_index for c in cores.values())
    # The lagging follower got everything in one append, with the commit index.
    to_behind = [m for m in appends if m.to == behind[0].id and m.entries]
    assert len(to_behind) == 1 and len(to_behind[0].entries) >= 5
    _heartbeat(cores, leader)
    assert all(c.commit == leader.commit for c in cores.values())


def test_a_silent_chosen_follower_delays_a_commit_only_until_the_others_heartbeat():
    cores = core_cluster(3, lazy_followers=True)
    leader = _elect(cores)
    _propose(cores, leader, b"a")
    (eager,) = _propose(cores, leader, b"b")
    (other,) = {2, 3} - {eager}

    def cut(m):  # the chosen follower is cut off, both ways
        return m.to == eager or m.frm == eager

    assert _propose(cores, leader, b"c", drop=cut) == {eager}  # the only one it went to
    assert leader.commit < leader.last_index
    _heartbeat(cores, leader, drop=cut)  # the other answers, is sent the log, acknowledges
    assert leader.commit == leader.last_index
    # Its acknowledgement made the commit: it is the one sent to at once from now on.
    assert _propose(cores, leader, b"d", drop=cut) == {other}
    assert leader.commit == leader.last_index


def test_five_voters_send_each_entry_at_once_to_two_followers():
    cores = core_cluster(5, lazy_followers=True)
    leader = _elect(cores)
    _propose(cores, leader, b"a")
    sent_to = _propose(cores, leader, b"b")
    assert len(sent_to) == 2
    assert leader.commit == leader.last_index
    # The two chosen ones are silent: the commit waits for a heartbeat, then two others carry it.
    assert _propose(cores, leader, b"c", drop=lambda m: m.to in sent_to) == sent_to
    assert leader.commit < leader.last_index
    _heartbeat(cores, leader, drop=lambda m: m.to in sent_to or m.frm in sent_to)
    assert leader.commit == leader.last_index
    assert len(_propose(cores, leader, b"d", drop=lambda m: m.to in sent_to)) == 2
    assert leader.commit == leader.last_index


def test_a_transfer_target_kept_waiting_is_sent_the_log_at_once():
    # One entry per append and one append in flight: catching the target up takes a round
    # trip per entry, each sent on the acknowledgement of the one before, not at heartbeats.
    cores = core_cluster(3, lazy_followers=True, max_size_per_msg=1, max_inflight_msgs=1)
    leader = _elect(cores)
    _propose(cores, leader, b"a")
    (eager,) = _propose(cores, leader, b"b")
    (other,) = {2, 3} - {eager}
    for k in range(4):
        _propose(cores, leader, b"more %d" % k)
    assert cores[other].last_index <= leader.last_index - 5
    leader.transfer_leader(other)
    drain_cores(cores)
    assert cores[other].status()["role"] == "leader"
    assert cores[other].last_index >= leader.last_index
