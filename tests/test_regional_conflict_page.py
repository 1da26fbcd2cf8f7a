"""Reading a regional keyspace's conflict log answers a page that fits in a reply.

A record holds the losing write's value, up to nearly the value limit. The log was read
``limit`` records at a time (100 by default) whatever their size: a few large losers made
every read of the log fail (the answer went over the RPC frame limit), and the node held
up to ``limit`` values of several MiB each in memory to find out. In-process cluster; the
conflicts are made deterministic by sending the losing write straight to the group, as the
other region's shipper would.
"""

from __future__ import annotations

import trio

from engine.local import open_local_cluster
from engine.merge import MAX_APP_VALUE_SIZE
from engine.placement import data_group, encode_key
from engine.rpc import connect_rpc

GUARD_S = 30  # only ever reached by a bug that hangs
LOSERS = 5
BIG = MAX_APP_VALUE_SIZE  # the largest value a regional write may have


async def test_large_losing_writes_are_read_a_page_at_a_time(tmp_path):
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=3,
                                  directory=str(tmp_path)) as cluster:
        here, other = (data_group(cluster.config, r) for r in ("us-east", "eu-west"))
        async with cluster.connect(region="us-east") as db:
            with trio.fail_after(GUARD_S):
                ks = await db.create_keyspace("big", mode="regional")
                node = cluster.nodes[1]
                while not node.replicas[here].node.is_leader:
                    await trio.sleep(0.02)
                keys = [encode_key(ks.id, b"k%d" % i) for i in range(LOSERS)]
                async with connect_rpc(cluster.config.node(1).client_host,
                                       node.client_port) as conn:
                    await conn.call("commit", {
                        "group": here, "txn_id": 1, "read_ts": 0, "writes": [],
                        "merges": [[key, "lww", b"here"] for key in keys]})
                    # Older concurrent writes from the other region (two batches, each within
                    # the frame limit): they lose here, and are logged with their values.
                    for after, batch in ((0, keys[:3]), (10, keys[3:])):
                        await conn.call("remote.apply", {
                            "group": here, "origin": other, "after": after,
                            "up_to": after + 10,
                            "writes": [[key, "lww", key[-1:] * BIG, after + 5, "eu-west", 0, ""]
                                       for key in batch]})
                seen = []
                for _ in range(LOSERS):
                    page = await db.conflicts("big")
                    if not page:
                        break
                    # Fewer than asked for: as many as fit a page (at least one).
                    assert 0 < len(page) < LOSERS
                    seen += page
                    await db.drain_conflicts("big", page)
                assert [r.key for r in seen] == [b"k%d" % i for i in range(LOSERS)]
                assert [r.loser_value for r in seen] == [k[-1:] * BIG for k in keys]
                assert await db.conflicts("big") == []
