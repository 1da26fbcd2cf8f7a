"""Quorum arithmetic against naive references (etcd quorum/quick_test.go)."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
from hypothesis import given

from raft.quorum import (
    UNBOUNDED,
    VoteResult,
    committed_index,
    joint_committed_index,
    joint_vote_result,
    majority,
    vote_result,
)

ids = st.integers(1, 9)
voter_sets = st.frozensets(ids, max_size=7)
acks = st.dictionaries(ids, st.integers(0, 20), max_size=9)
votes = st.dictionaries(ids, st.booleans(), max_size=9)


def naive_committed(voters, acked):
    """The largest i such that more than half of the voters acknowledged i or more."""
    if not voters:
        return UNBOUNDED
    best = 0
    for i in range(0, 21):
        if sum(acked.get(v, 0) >= i for v in voters) * 2 > len(voters):
            best = i
    return best


def naive_vote(voters, vs):
    """Enumerate every completion of the missing votes: won if all complete to a win, lost if
    none does, pending otherwise."""
    if not voters:
        return VoteResult.WON
    missing = [v for v in voters if v not in vs]
    outcomes = set()
    for fill in itertools.product([True, False], repeat=len(missing)):
        full = {**{v: vs[v] for v in voters if v in vs}, **dict(zip(missing, fill))}
        outcomes.add(sum(full.values()) * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(voter_sets, acks)
def test_committed_index_matches_the_naive_reference(voters, acked):
    assert committed_index(voters, acked) == naive_committed(voters, acked)


@given(voter_sets, votes)
def test_vote_result_matches_the_naive_reference(voters, vs):
    assert vote_result(voters, vs) is naive_vote(voters, vs)


@given(voter_sets, voter_sets, acks)
def test_joint_commit_needs_both_majorities(a, b, acked):
    got = joint_committed_index(a, b, acked)
    assert got == min(naive_committed(a, acked), naive_committed(b, acked))
    if a == b:
        assert got == committed_index(a, acked)


@given(voter_sets, voter_sets, votes)
def test_joint_vote_needs_both_majorities(a, b, vs):
    ra, rb = naive_vote(a, vs), naive_vote(b, vs)
    want = (
        VoteResult.WON if ra is rb is VoteResult.WON
        else VoteResult.LOST if VoteResult.LOST in (ra, rb)
        else VoteResult.PENDING
    )
    assert joint_vote_result(a, b, vs) is want


def test_the_examples_of_the_paper():
    """Reference: §5.3 — an entry is committed once a majority of the cluster has it."""
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    assert committed_index({1, 2, 3}, {1: 5, 2: 4, 3: 1}) == 4
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 4, 3: 3}) == 3  # 4 voters: 3 needed
    assert vote_result({1, 2, 3}, {1: True}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: True}) is VoteResult.WON
    assert vote_result({1, 2, 3}, {1: False, 2: False}) is VoteResult.LOST
    assert vote_result({1, 2, 3, 4}, {1: True, 2: True, 3: False}) is VoteResult.PENDING
    assert vote_result({1, 2, 3, 4}, {1: False, 2: False}) is VoteResult.LOST
