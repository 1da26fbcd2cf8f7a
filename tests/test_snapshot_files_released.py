"""A snapshot a leader built for a follower is an unnamed temporary file the size of the
group's state, mapped into memory: closing the node frees it (its descriptor and its disk
space) at once, not whenever the garbage collector next breaks the node's reference cycles."""

from __future__ import annotations

import gc
import os

import trio

from engine.local import open_local_cluster
from engine.placement import data_group
from test_cluster import _leader_of


def _deleted_files_under(directory) -> list[str]:
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(directory)) and target.endswith("(deleted)"):
            held.append(target)
    return held


async def test_closing_a_cluster_frees_the_snapshots_built_for_followers(tmp_path):
    gc.disable()  # what is freed must be freed by closing, not by a collection
    try:
        async with open_local_cluster(("us-east",), 3, raft_snapshot_every=8, seed=9,
                                      directory=str(tmp_path)) as cluster:
            async with cluster.connect("us-east") as db:
                with trio.fail_after(90):
                    await db.create_keyspace("g")
                    group = data_group(cluster.config, "us-east")
                    leader = await _leader_of(cluster, group)
                    victim = next(n for n in cluster.nodes if n != leader)
                    await cluster.stop_node(victim)
                    for i in range(400):
                        await db.run_transaction(lambda tx, i=i: tx.put("g", b"k", b"v%d" % i))
                    await cluster.start_node(victim)
                    replica = cluster.nodes[victim].replicas[group]
                    while replica.node.statistics().snapshots_installed < 1:
                        await trio.sleep(0.02)
                    built = cluster.nodes[leader].replicas[group].node.statistics()
                    assert built.snapshots_built >= 1
        assert _deleted_files_under(tmp_path) == []
    finally:
        gc.enable()
