"""Placement (ARCH §4): a pure function of the cluster configuration."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from engine.config import default_local_cluster
from engine.errors import InvalidArgumentError
from engine.placement import (
    META_GROUP,
    check_catalog_survives_a_region,
    data_group,
    placement,
    spread_group,
)


def _region(cluster, node_id: int) -> str:
    return cluster.node(node_id).region


@pytest.mark.parametrize("regions,per_region", [(3, 3), (2, 3), (4, 2), (3, 1), (1, 3), (5, 3)])
def test_each_group_has_one_replica_per_region_that_needs_one(regions, per_region):
    names = [f"r{i}" for i in range(regions)]
    cluster = default_local_cluster(names, per_region)
    groups = placement(cluster)
    everyone = {n.id for n in cluster.all_nodes()}
    meta = groups[META_GROUP]
    # Every node holds the catalog: the meta group's voters and learners are everyone.
    assert set(meta.conf.voters) | set(meta.conf.learners) == everyone
    assert not set(meta.conf.voters) & set(meta.conf.learners)
    for region in names:
        g = groups[data_group(cluster, region)]
        assert {_region(cluster, v) for v in g.conf.voters} == {region}
        assert len(g.conf.voters) == per_region
        # Exactly one learner in every other region, none at home.
        learner_regions = [_region(cluster, n) for n in g.conf.learners]
        assert sorted(learner_regions) == sorted(r for r in names if r != region)
    if regions >= 3:
        for region in names:
            g = groups[spread_group(cluster, region)]
            voter_regions = [_region(cluster, v) for v in g.conf.voters]
            assert len(voter_regions) == 3 == len(set(voter_regions)) and region in voter_regions
            learner_regions = [_region(cluster, n) for n in g.conf.learners]
            assert sorted(learner_regions) == sorted(r for r in names if r not in voter_regions)


def test_the_replicas_are_spread_over_the_nodes():
    """No node carries the learners (or spread voters) of every region: with three regions of
    three, each node holds at most one learner of a data group and one spread-group voter."""
    cluster = default_local_cluster(("a", "b", "c"), 3)
    learners = collections.Counter()
    spread_voters = collections.Counter()
    for g in placement(cluster).values():
        if g.kind == "data":
            learners.update(g.conf.learners)
        elif g.kind == "spread":
            spread_voters.update(g.conf.voters)
    assert max(learners.values()) == 1 and len(learners) == 6
    assert max(spread_voters.values()) == 1 and len(spread_voters) == 9


def test_placement_is_deterministic():
    cluster = default_local_cluster(("a", "b", "c"), 3)
    assert placement(cluster) == placement(default_local_cluster(("a", "b", "c"), 3))


def test_surviving_a_region_needs_the_catalog_spread_over_three_regions():
    cluster = default_local_cluster(["r0", "r1", "r2"], 3)
    check_catalog_survives_a_region(cluster)  # the default: the catalog in every region
    for meta in (("r0",), ("r0", "r1")):
        narrow = dataclasses.replace(cluster, meta_regions=meta)
        with pytest.raises(InvalidArgumentError, match="meta_regions"):
            check_catalog_survives_a_region(narrow)
    check_catalog_survives_a_region(dataclasses.replace(cluster, meta_regions=("r2", "r0", "r1")))
