"""Moving a keyspace: a copy that takes longer than the maximum transaction lifetime, a page
at a time, and of what older, larger limits let in (ARCH §4)."""

from __future__ import annotations

import dataclasses

import trio

import engine.client
import engine.replica
from engine.config import Limits
from engine.local import open_local_cluster


async def test_a_copy_slower_than_the_transaction_lifetime_still_moves_the_keyspace(
        monkeypatch):
    # The old home is fenced against writes before the copy, so its keyspace no longer
    # changes; but the copy read every page at the first page's snapshot, which the group's
    # garbage collection left behind once the transaction lifetime had passed: a keyspace
    # too large to be read within that lifetime (a long way from the client) could never
    # be moved, each attempt rolled back with ``too_old``.
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.1)
    monkeypatch.setattr(engine.client, "COPY_PAGE", 10)
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=81,
                                  limits=Limits(max_txn_lifetime_s=1.0)) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("eu-west") as w:
            with trio.fail_after(60):
                await db.create_keyspace("big", home_region="us-east")
                async with db.transaction() as tx:
                    for j in range(60):
                        await tx.put("big", b"k%02d" % j, b"v%02d" % j)
                call = db._call_group

                async def far_away(group, method, payload, **kw):
                    if method == "scan":
                        await trio.sleep(0.4)  # a round trip to a distant region
                    return await call(group, method, payload, **kw)

                db._call_group = far_away
                moved = await db.move_keyspace("big", "eu-west")
                db._call_group = call
                assert moved.home == "eu-west"
                async with w.transaction() as tx:
                    items = await tx.scan("big")
                assert items == [(b"k%02d" % j, b"v%02d" % j) for j in range(60)]


async def test_a_copy_holds_a_page_of_the_keyspace_at_a_time(monkeypatch):
    # The copy read the whole keyspace into the moving client's memory (and the keys its
    # new home kept from an earlier stay) before writing any of it: moving a keyspace
    # larger than that client's memory could not succeed. It writes each page before it
    # reads the next now, and still deletes what an earlier stay left behind.
    monkeypatch.setattr(engine.client, "COPY_PAGE", 10)
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=82) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("big", home_region="us-east")
                async with db.transaction() as tx:
                    for j in range(60):
                        await tx.put("big", b"k%02d" % j, b"old")
                await db.move_keyspace("big", "eu-west")
                async with db.transaction() as tx:  # us-east keeps k00..k59 as they were
                    for j in range(30):
                        await tx.delete("big", b"k%02d" % j)
                    for j in range(30, 65):
                        await tx.put("big", b"k%02d" % j, b"new")
                call = db._call_group
                held = [0, 0]  # keys read from the old home and not written yet; the most

                async def counting(group, method, payload, **kw):
                    reply = await call(group, method, payload, **kw)
                    if method == "scan" and not payload.get("ignore_fence"):
                        held[0] += len(reply["items"])
                    elif method == "keyspace.copy":
                        held[0] -= sum(v is not None for _, v in payload["writes"])
                    held[1] = max(held[1], held[0])
                    return reply

                db._call_group = counting
                assert (await db.move_keyspace("big", "us-east")).home == "us-east"
                db._call_group = call
                assert held == [0, engine.client.COPY_PAGE]
                async with db.transaction() as tx:
                    items = await tx.scan("big")
                assert items == [(b"k%02d" % j, b"new") for j in range(30, 65)]


async def test_a_keyspace_moves_with_keys_and_values_over_limits_lowered_since(tmp_path):
    # Limits may change between restarts. The copy carries what was committed under the
    # old ones, and each of its batches was held to the new ones: a key or value over
    # today's limit was refused (RecordTooLargeError), and the keyspace could never move.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=83,
                                  directory=str(tmp_path)) as cluster:
        with trio.fail_after(60):
            async with cluster.connect("us-east") as db:
                await db.create_keyspace("ks", home_region="us-east")
                async with db.transaction() as tx:
                    await tx.put("ks", b"k" * 40, b"v" * 1000)
                    await tx.put("ks", b"small", b"s")
            cluster.config = dataclasses.replace(cluster.config, limits=Limits(
                max_key_size=20, max_value_size=500, max_txn_bytes=600))
            for node_id in list(cluster.nodes):
                await cluster.stop_node(node_id)
                await cluster.start_node(node_id)
            async with cluster.connect("us-east") as db:
                assert (await db.move_keyspace("ks", "eu-west")).home == "eu-west"
                async with db.transaction() as tx:
                    assert await tx.scan("ks") == [(b"k" * 40, b"v" * 1000), (b"small", b"s")]
