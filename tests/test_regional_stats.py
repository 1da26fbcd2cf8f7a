"""Regional keyspaces (ARCH §6): the replication lag samples a destination's leader keeps per
origin region count each regional write it applies once, however its batches reach it."""

from __future__ import annotations

import trio

from engine.local import open_local_cluster
from engine.placement import data_group
from test_node_misuse import GUARD_S, KEY, client_of, leader_of

HOUR = 3600 * 10**9
KEYSPACE_ID = 0x0777  # KEY's
OTHER = b"\x00\x00\x07\x78key"  # a key of another keyspace


def _batch(gid: int, origin: int, after: int, up_to: int, stamps: list[int]) -> dict:
    return {"group": gid, "origin": origin, "after": after, "up_to": up_to,
            "writes": [[KEY + b"%d" % ts, "lww", b"x", ts, "eu-west", 0, ""] for ts in stamps]}


async def test_a_batch_sent_again_while_the_first_is_in_the_log_counts_once(tmp_path):
    # The shipper sends a batch again when the first send's answer is late: both can be in
    # the destination's log at once, the second applying nothing. Each counted the writes
    # above the watermark it saw before proposing, so both counted them all.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=1,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as first, client_of(cluster, node) as again:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first.call, "remote.apply", _batch(gid, other, 0, 10,
                                                                         [4, 8]))
                    nursery.start_soon(again.call, "remote.apply", _batch(gid, other, 0, 20,
                                                                         [4, 8, 15]))
        assert node.replicas[gid].sm.watermark(other) == 20
        assert len(node._lag_ms["eu-west"]) == 3


async def test_a_jump_of_the_destinations_wall_clock_is_no_lag(tmp_path, monkeypatch):
    # Timestamps do not follow a wall clock that jumped forward (until the peers vouch for
    # it); the lag samples did, and kept an hour-long lag for every write applied before the
    # clock check stopped the node, reported again whenever it led the group later.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=2,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)
        monkeypatch.setattr(node, "_check_clocks", lambda: None)  # the jump is not noticed
        wall = node.clock._physical
        monkeypatch.setattr(node.clock, "_physical", lambda: wall() + HOUR)
        written = node.clock.now()
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("remote.apply", _batch(gid, other, 0, written, [written]))
        [(_, lag_ms)] = node._lag_ms["eu-west"]
        assert 0 <= lag_ms < GUARD_S * 1000


async def test_a_pair_that_stopped_writing_reports_no_lag_once_its_samples_are_old(
        tmp_path, monkeypatch):
    # The samples were kept until newer ones pushed them out: a region that wrote a burst
    # hours ago, then nothing, still showed that burst's p50 and p99 as the pair's lag.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=3,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)
        written = node.clock.now()
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("remote.apply", _batch(gid, other, 0, written, [written]))
        assert (await node._status({}, None))["replication_lag_ms"]["eu-west"]["samples"] == 1
        wall, boot = node.clock._physical, node.clock._monotonic
        for later, reported in ((10**9, True), (HOUR, False)):
            # The wall clock and the clock that checks it move on alike: no jump.
            monkeypatch.setattr(node.clock, "_physical", lambda d=later: wall() + d)
            monkeypatch.setattr(node.clock, "_monotonic", lambda d=later: boot() + d)
            lag = (await node._status({}, None))["replication_lag_ms"]
            assert ("eu-west" in lag) == reported, (later, lag)
        assert not node._lag_ms["eu-west"]  # the memory is given back as well


async def test_writes_skipped_for_a_keyspace_being_dropped_are_no_lag(tmp_path):
    # A keyspace fenced at level 2 here (moved away, or being dropped) takes no shipped
    # writes: they were skipped, not replicated, yet each counted as a lag sample.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=4,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("keyspace.fence", {"group": gid, "keyspace_id": KEYSPACE_ID,
                                                   "level": 2})
                written = node.clock.now()
                batch = _batch(gid, other, 0, written + 1, [written])
                batch["writes"].append([OTHER, "lww", b"x", written + 1, "eu-west", 0, ""])
                await conn.call("remote.apply", batch)
        assert node.replicas[gid].sm.watermark(other) == written + 1
        assert len(node._lag_ms["eu-west"]) == 1  # the write to another keyspace alone
