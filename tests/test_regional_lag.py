"""Regional keyspaces (ARCH §6): the replication lag that statistics() reports per region pair
comes from the destination's current leader, and shows a stream that has stopped, while it
is stopped, not only once its writes arrive."""

from __future__ import annotations

import collections

import trio

from engine import group as group_module
from engine.local import open_local_cluster
from engine.placement import data_group
from test_cluster import _leader_of
from test_regional import _converged, _watermark_reaches

REGIONS = ("us-east", "eu-west")
PAIR = "us-east->eu-west"


async def _lag(db) -> dict:
    return (await db.statistics())["replication_lag_ms"][PAIR]


async def _caught_up(db) -> dict:
    """The pair's figures once the origin knows the destination has every write (the
    destination's answer reaches it after the destination applied them)."""
    while (lag := await _lag(db))["behind_ms"]:
        await trio.sleep(0.05)
    return lag


async def test_a_region_cut_off_shows_how_far_behind_it_is():
    async with open_local_cluster(REGIONS, 1, seed=37) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b:
            with trio.fail_after(60):
                await a.create_keyspace("notes", mode="regional")
                async with a.transaction() as tx:
                    await tx.put("notes", b"k", b"1")
                await _converged(cluster, (a, b), "notes", [b"k"])
                assert (await _caught_up(a))["samples"] >= 1
                cluster.partition([n.id for n in cluster.config.nodes_in("eu-west")])
                async with a.transaction() as tx:
                    await tx.put("notes", b"k", b"2")
                await trio.sleep(1.5)
                # Before, the pair only had the figures of the writes that had arrived: a
                # region cut off for good looked as current as before the cut.
                lag = await _lag(a)
                assert lag["behind_ms"] >= 1000, lag
                cluster.heal()
                await _watermark_reaches(cluster, data_group(cluster.config, "eu-west"),
                                         data_group(cluster.config, "us-east"), tx.commit_ts)
                await _caught_up(a)
                assert await b.read("notes", b"k") == b"2"


async def test_lag_comes_from_the_destinations_leader_after_a_leadership_change():
    async with open_local_cluster(REGIONS, 3, seed=38) as cluster:
        async with cluster.connect("us-east") as a:
            with trio.fail_after(60):
                await a.create_keyspace("notes", mode="regional")
                east = data_group(cluster.config, "us-east")
                west = data_group(cluster.config, "eu-west")

                async def write(value: bytes) -> None:
                    async with a.transaction() as tx:
                        await tx.put("notes", b"k", value)
                    await _watermark_reaches(cluster, west, east, tx.commit_ts)

                def samples(node_id: int) -> int:
                    return len(cluster.nodes[node_id]._lag_ms.get("us-east", ()))

                # The leader measures the writes it applies (the group's leadership may still
                # move right after the start: write until one leader holds the most samples).
                for i in range(20):
                    await write(b"%d" % i)
                    old = await _leader_of(cluster, west)
                    voters = cluster.nodes[old].placement[west].conf.voters
                    if i >= 3 and all(samples(old) > samples(v) + 1 for v in voters if v != old):
                        break
                new = min((v for v in voters if v != old), key=samples)
                while await _leader_of(cluster, west) != new:
                    try:
                        cluster.nodes[old].replicas[west].node.transfer_leader(new)
                    except Exception:  # a transfer already under way, or no longer leader
                        pass
                    await trio.sleep(0.1)
                await write(b"last")
                assert samples(new) < samples(old)
                # Before, the figures came from whichever node had the most samples: the old
                # leader's, frozen since it stopped leading (for good once both held the
                # most a node keeps, the first node's won every tie).
                lag = (await a.statistics())["replication_lag_ms"]["us-east->eu-west"]
                assert lag["samples"] == samples(new), lag


async def test_a_region_that_lost_writes_to_the_outbox_retention_is_reported(monkeypatch):
    """A region cut off for longer than the origin's outbox keeps its writes never gets them:
    statistics() names the pair (before, only the origin's leader at the time its shipper
    noticed logged it, and kept it in memory; statistics() did not show it)."""
    monkeypatch.setattr(group_module, "OUTBOX_RETENTION_NS", 300 * 10**6)
    async with open_local_cluster(REGIONS, 1, seed=39) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b:
            with trio.fail_after(60):
                await a.create_keyspace("notes", mode="regional")
                east = data_group(cluster.config, "us-east")
                [node] = [cluster.nodes[n.id] for n in cluster.config.nodes_in("us-east")]
                cluster.partition([n.id for n in cluster.config.nodes_in("eu-west")])
                async with a.transaction() as tx:
                    await tx.put("notes", b"k", b"lost")
                while node.replicas[east].sm.outbox_trimmed < tx.commit_ts:
                    await trio.sleep(0.1)
                cluster.heal()
                stats = await b.statistics()
                assert stats["replication_broken"].get(PAIR, 0) >= tx.commit_ts, stats
                assert "eu-west->us-east" not in stats["replication_broken"]


async def test_the_percentiles_are_nearest_ranks():
    # The p50 of two samples is the smaller one, and the p99 of a hundred the 99th: before,
    # each was one rank too high (the larger one; the largest), as for every count of
    # samples that q % of is whole.
    async with open_local_cluster(REGIONS, 1, seed=40) as cluster:
        west = data_group(cluster.config, "eu-west")
        with trio.fail_after(60):
            node = cluster.nodes[await _leader_of(cluster, west)]
            for samples, p50, p99 in (([10.0, 1000.0], 10.0, 1000.0),
                                      ([float(i) for i in range(1, 101)], 50.0, 99.0),
                                      ([5.0], 5.0, 5.0)):
                now = node.clock.now()
                node._lag_ms["us-east"] = collections.deque((now, ms) for ms in samples)
                lag = (await node._status({}, None))["replication_lag_ms"]["us-east"]
                assert lag == {"samples": len(samples), "p50": p50, "p99": p99}
