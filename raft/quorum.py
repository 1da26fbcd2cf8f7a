"""Quorum arithmetic: which index a set of voters has committed, and how an election stands.

Pure functions over plain data, in the manner of etcd-io/raft's ``quorum`` package. A
configuration is a set of voter ids; a *joint* configuration (Raft thesis §4.3) is two of them,
and a decision needs a majority of each. Tests compare every function here with a naive
reference under hypothesis (STYLE §6).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = [
    "VoteResult",
    "committed_index",
    "vote_result",
    "joint_committed_index",
    "joint_vote_result",
    "majority",
]

# What an empty configuration commits: "everything", so that the joint minimum is decided by
# the other half alone (etcd: math.MaxUint64). Never an index of a real entry.
UNBOUNDED = 2**64 - 1


class VoteResult(enum.Enum):
    """The state of an election (or pre-election) under one configuration."""

    PENDING = "pending"  # neither outcome is certain yet
    LOST = "lost"  # a majority can no longer be reached
    WON = "won"  # a majority granted


def majority(n_voters: int) -> int:
    """Votes needed among ``n_voters``: more than half."""
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The largest index that a majority of ``voters`` has acknowledged (persisted).

    Args:
        voters: the voter ids of one configuration.
        acked: the highest index each member is known to have persisted; voters missing here
            count as 0.

    Returns:
        That index, or :data:`UNBOUNDED` for an empty configuration.
    """
    n = len(voters)
    if n == 0:
        return UNBOUNDED
    # The majority-th largest acknowledged index: at least a majority is at or above it.
    indexes = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return indexes[majority(n) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """How an election stands, given the votes received so far (True granted, False rejected).

    An empty configuration wins any election (it places no constraint), as in etcd.
    """
    n = len(voters)
    if n == 0:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    need = majority(n)
    if granted >= need:
        return VoteResult.WON
    if n - rejected < need:  # even every missing vote granted would not be enough
        return VoteResult.LOST
    return VoteResult.PENDING


def joint_committed_index(
    incoming: Collection[int], outgoing: Collection[int], acked: Mapping[int, int]
) -> int:
    """Committed under a joint configuration: the smaller of the two halves' answers."""
    return min(committed_index(incoming, acked), committed_index(outgoing, acked))


def joint_vote_result(
    incoming: Collection[int], outgoing: Collection[int], votes: Mapping[int, bool]
) -> VoteResult:
    """An election under a joint configuration needs both halves: lost if either lost, won if
    both won, pending otherwise."""
    a = vote_result(incoming, votes)
    b = vote_result(outgoing, votes)
    if a is b:
        return a
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    return VoteResult.PENDING
