"""A leader that no quorum answers steps down within an election timeout (CheckQuorum, §6.2),
whatever the application asks of it meanwhile. A leader transfer has its own deadline (an
election timeout from its start); starting one must not postpone the quorum check, or a
cut-off leader asked to hand over, again and again to alternating targets (as a node whose
clock is suspect does, see engine/node.py), would stay leader for good — refusing every
proposal, while the rest of the group has elected another leader.
"""

from __future__ import annotations

import pytest

from raft.types import ProposalDroppedError, StateRole

from raftnet import Network

ELECTION = 10


def test_a_cut_off_leader_asked_to_transfer_again_and_again_still_steps_down():
    net = Network((1, 2, 3), seed=5, election_tick=ELECTION)
    net.elect(1)
    net.propose(1, b"x")
    leader = net.core(1)
    net.isolate(1)
    stepped_down_at = None
    for tick in range(10 * ELECTION):
        if tick % (ELECTION // 2) == 0 and leader.role is StateRole.LEADER:
            leader.transfer_leader(2 if tick // (ELECTION // 2) % 2 else 3)
        net.tick(1)
        if leader.role is not StateRole.LEADER:
            stepped_down_at = tick + 1
            break
    assert stepped_down_at is not None, "the cut-off leader never stepped down"
    assert stepped_down_at <= 2 * ELECTION, stepped_down_at


def test_a_transfer_that_does_not_complete_ends_after_an_election_timeout():
    net = Network((1, 2, 3), seed=5, election_tick=ELECTION)
    net.elect(1)
    net.propose(1, b"x")
    leader = net.core(1)
    net.tick(1, times=3)  # the transfer starts between two quorum checks
    net.isolate(2)
    leader.transfer_leader(2)
    assert leader.status()["lead_transferee"] == 2
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"y")
    net.tick(1, times=ELECTION - 1)
    assert leader.status()["lead_transferee"] == 2
    net.tick(1)
    assert leader.role is StateRole.LEADER and leader.status()["lead_transferee"] == 0
    leader.propose(b"y")
