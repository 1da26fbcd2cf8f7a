"""Regional (multi-active) keyspaces on an in-process cluster: local commits, asynchronous
replication applied once, deterministic resolution and the conflict log (ARCH §6)."""

from __future__ import annotations

import random

import pytest
import trio

from bench.convergence import check as check_convergence
from engine import errors
from engine.local import open_local_cluster
from engine.merge import decode_set, encode_set_add, encode_set_remove
from engine.placement import data_group
from test_cluster import _leader_of

REGIONS = ("us-east", "eu-west", "ap-south")
WAN = {("us-east", "eu-west"): 10, ("us-east", "ap-south"): 20, ("eu-west", "ap-south"): 15}


async def _converged(cluster, dbs, keyspace, keys, timeout=20):
    """Waits until every region has applied every other region's regional writes committed
    before the call, then checks that all regions read the same values; returns them.

    Caught up means: for each pair of regions, the destination group's watermark of the
    origin group (up to which the origin's writes are applied there) has reached the commit
    timestamp of the origin's last regional write at the start. Equal reads alone prove
    nothing — three regions that each hold only their own writes can agree by chance, as
    three counters of equal sums do.
    """
    regions = [db.region for db in dbs]
    groups = {r: data_group(cluster.config, r) for r in regions}
    with trio.fail_after(timeout):
        targets = {r: await _last_regional_write(cluster, groups[r]) for r in regions}
        for origin in regions:
            for dest in regions:
                if dest != origin:
                    await _watermark_reaches(cluster, groups[dest], groups[origin],
                                             targets[origin])
        views = [[await db.read(keyspace, k) for k in keys] for db in dbs]
    assert all(v == views[0] for v in views), dict(zip(regions, views))
    return dict(zip(keys, views[0]))


async def _last_regional_write(cluster, group: int) -> int:
    """The commit timestamp of the group's last regional write (0: none), from its leader."""
    sm = cluster.nodes[await _leader_of(cluster, group)].replicas[group].sm
    last = 0
    while batch := sm.outbox_after(last):
        last = batch[-1][0]
    return last


async def _watermark_reaches(cluster, group: int, origin: int, ts: int) -> None:
    """Waits until ``group``'s leader has applied ``origin``'s regional writes up to ``ts``."""
    while True:
        leader = await _leader_of(cluster, group)
        if cluster.nodes[leader].replicas[group].sm.watermark(origin) >= ts:
            return
        await trio.sleep(0.05)


async def test_last_writer_wins_converges_and_logs_every_lost_write():
    async with open_local_cluster(REGIONS, 1, wan_latency_ms=WAN, seed=21) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b, \
                cluster.connect("ap-south") as c:
            dbs = (a, b, c)
            with trio.fail_after(60):
                await a.create_keyspace("prefs", mode="regional")
                history = []
                keys = [b"k%d" % i for i in range(4)]
                rng = random.Random(21)

                async def writer(db, n):
                    for i in range(n):
                        key = rng.choice(keys)
                        value = b"%s-%d" % (db.region.encode(), i)
                        history.append({"type": "invoke", "process": db.region, "f": "write",
                                        "key": key.decode(), "value": value.decode(),
                                        "region": db.region})
                        async with db.transaction() as tx:
                            await tx.put("prefs", key, value)
                        history.append({"type": "ok", "process": db.region, "f": "write",
                                        "key": key.decode(), "value": value.decode(),
                                        "region": db.region, "ts": tx.commit_ts})

                async with trio.open_nursery() as n:
                    for db in dbs:
                        n.start_soon(writer, db, 12)
                final = await _converged(cluster, dbs, "prefs", keys)
                # The survivor of each key is its write with the greatest (ts, origin).
                for key in keys:
                    writes = [h for h in history if h["type"] == "ok" and
                              h["key"] == key.decode()]
                    if writes:
                        best = max(writes, key=lambda h: (h["ts"], h["region"]))
                        assert final[key] == best["value"].encode()
                for db in dbs:
                    for key in keys:
                        read = {"process": "final", "f": "final-read", "key": key.decode(),
                                "region": db.region}
                        history.append({**read, "type": "invoke", "value": None})
                        history.append({**read, "type": "ok",
                                        "value": (final[key] or b"").decode() or None})
                result = check_convergence(history, "lww")
                assert result["valid"], result["anomalies"]
                # Every write that some region held and then lost to a concurrent one is in
                # that region's conflict log: at least, every region saw the others' writes
                # lose or win against its own, so the logs are not empty.
                logs = {db.region: await db.conflicts("prefs") for db in dbs}
                lost = {(r.loser, r.loser_value) for log in logs.values() for r in log}
                assert lost
                for log in logs.values():
                    for r in log:
                        assert r.winner > r.loser and r.resolver == "lww"
                        assert r.key in keys
                # Draining removes exactly the records given.
                region, log = next((r, g) for r, g in logs.items() if g)
                db = dict(zip(REGIONS, dbs))[region]
                await db.drain_conflicts("prefs", log[:1])
                assert await db.conflicts("prefs") == log[1:]
                stats = await a.statistics()
                assert set(stats["replication_lag_ms"]) >= {"eu-west->us-east",
                                                            "us-east->eu-west"}


async def test_counters_and_sets_merge_without_losing_an_update():
    async with open_local_cluster(REGIONS, 1, wan_latency_ms=WAN, seed=22) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b, \
                cluster.connect("ap-south") as c:
            dbs = (a, b, c)
            with trio.fail_after(60):
                await a.create_keyspace("hits", mode="regional", resolver="counter")
                await a.create_keyspace("tags", mode="regional", resolver="add_wins_set")

                async def add(tx, i):
                    await tx.increment("hits", b"page", i + 1)
                    await tx.increment("hits", b"page", 1)  # adds up in one txn
                    assert await tx.get("hits", b"page") is not None  # its own, at least

                async def bump(db, n):
                    for i in range(n):
                        # A read makes it a read-modify-write: a remote batch applied since
                        # its snapshot is a conflict, and the transaction runs again.
                        await db.run_transaction(lambda tx, i=i: add(tx, i))

                async with trio.open_nursery() as n:
                    for db in dbs:
                        n.start_soon(bump, db, 5)
                total = 3 * sum(i + 2 for i in range(5))
                final = await _converged(cluster, dbs, "hits", [b"page"])
                assert final[b"page"] == b"%d" % total

                # Add-wins set: a concurrent add and remove of one element keeps it.
                async with a.transaction() as tx:
                    await tx.merge("tags", b"t", encode_set_add(b"red"))
                await _converged(cluster, dbs, "tags", [b"t"])
                async with b.transaction() as tx:
                    raw = await tx.get("tags", b"t")
                    assert decode_set(raw) == [b"red"]
                # b removes the add it saw while c adds red again concurrently.
                cell_tags = await _observed(b, b"t", b"red")
                async with trio.open_nursery() as n:
                    n.start_soon(_merge, b, b"t", encode_set_remove(b"red", cell_tags))
                    n.start_soon(_merge, c, b"t", encode_set_add(b"red"))
                final = await _converged(cluster, dbs, "tags", [b"t"])
                assert decode_set(final[b"t"]) == [b"red"]

                with pytest.raises(errors.InvalidArgumentError, match="merge"):
                    async with a.transaction() as tx:
                        await tx.put("hits", b"page", b"0")
                with pytest.raises(errors.InvalidArgumentError):
                    async with a.transaction() as tx:
                        await tx.increment("hits", b"page", 1.5)


async def test_increments_adding_up_past_64_bits_in_one_transaction_say_so():
    # Each increment is within signed 64 bits; the transaction sends their sum as one. The
    # refusal used to name only that sum ("expected an int within signed 64 bits, not
    # 9223372036854775808"), a number the caller never passed.
    async with open_local_cluster(REGIONS[:1], 1, seed=24) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(20):
                await db.create_keyspace("hits", mode="regional", resolver="counter")
                with pytest.raises(errors.InvalidArgumentError,
                                   match="increments of b'x' in this transaction add up to "
                                         "9223372036854775808"):
                    async with db.transaction() as tx:
                        await tx.increment("hits", b"x", 2**62)
                        await tx.increment("hits", b"x", 2**62)
                # In two transactions they are fine: a counter's sum has no bound.
                for _ in range(2):
                    await db.run_transaction(lambda tx: tx.increment("hits", b"x", 2**62))
                assert await db.read("hits", b"x") == b"%d" % 2**63


async def test_an_element_of_an_add_wins_set_is_removed_through_the_client():
    # A remove names the add tags its region holds, which only the stored cell shows: the
    # client offered no way to make one, and a remove naming none removes nothing.
    async with open_local_cluster(REGIONS[:1], 1, seed=25) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(20):
                await db.create_keyspace("tags", mode="regional", resolver="add_wins_set")
                await db.create_keyspace("hits", mode="regional", resolver="counter")
                for elem in (b"red", b"blue", b"red"):
                    await db.run_transaction(
                        lambda tx, e=elem: tx.merge("tags", b"t", encode_set_add(e)))
                await db.run_transaction(lambda tx: tx.remove_from_set("tags", b"t", "red"))
                assert decode_set(await db.read("tags", b"t")) == [b"blue"]
                async with db.transaction() as tx:
                    await tx.remove_from_set("tags", b"t", b"blue")
                    assert decode_set(await tx.get("tags", b"t")) == []  # its own write
                assert decode_set(await db.read("tags", b"t")) == []
                with pytest.raises(errors.InvalidArgumentError, match="no add-wins sets"):
                    async with db.transaction() as tx:
                        await tx.remove_from_set("hits", b"t", b"red")


async def test_increment_is_refused_outside_a_counter_keyspace():
    # increment() wrote its amount as a merge of whatever type the keyspace had: on a max
    # keyspace it took the greater of the two, silently (2 "plus" 5 read 5).
    async with open_local_cluster(REGIONS[:1], 1, seed=26) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(20):
                await db.create_keyspace("best", mode="regional", resolver="max")
                await db.create_keyspace("tags", mode="regional", resolver="add_wins_set")
                await db.run_transaction(lambda tx: tx.merge("best", b"x", b"2"))
                for name in ("best", "tags"):
                    with pytest.raises(errors.InvalidArgumentError, match="no counters"):
                        async with db.transaction() as tx:
                            await tx.increment(name, b"x", 5)
                assert await db.read("best", b"x") == b"2"


async def _merge(db, key, payload):
    async with db.transaction() as tx:
        await tx.merge("tags", key, payload)


async def _observed(db, key, elem):
    """The add tags of ``elem`` in ``db``'s region (what a remove must name)."""
    from engine.merge import AddWinsSet, decode_cell
    from engine.placement import encode_key

    ks = await db.keyspace("tags")
    group = db.group_of(ks)
    reply = await db._call_group(group, "read", {"group": group,
                                                 "keys": [encode_key(ks.id, key)]})
    return AddWinsSet.observed_tags(decode_cell(reply["values"][0]), elem)


async def test_regional_writes_stay_in_their_region_and_survive_a_leader_change():
    async with open_local_cluster(REGIONS[:2], 3, wan_latency_ms={REGIONS[:2]: 10},
                                  seed=23) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b:
            with trio.fail_after(90):
                await a.create_keyspace("hits", mode="regional", resolver="counter")
                await a.create_keyspace("g", home_region="eu-west")
                with pytest.raises(errors.InvalidArgumentError, match="own region"):
                    async with a.transaction() as tx:
                        await tx.increment("hits", b"x")
                        await tx.put("g", b"x", b"1")
                for _ in range(10):
                    await a.run_transaction(lambda tx: tx.increment("hits", b"x"))
                # Stop eu-west's leader while us-east keeps counting: its successor resumes
                # from the watermark, and no increment is applied twice or lost.
                group = data_group(cluster.config, "eu-west")
                await cluster.stop_node(await _leader_of(cluster, group))
                for _ in range(10):
                    await a.run_transaction(lambda tx: tx.increment("hits", b"x"))
                final = await _converged(cluster, (a, b), "hits", [b"x"], timeout=60)
                assert final[b"x"] == b"20"


async def test_regions_cut_off_from_each_other_converge_after_healing():
    async with open_local_cluster(REGIONS, 1, wan_latency_ms=WAN, seed=24) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b, \
                cluster.connect("ap-south") as c:
            dbs = (a, b, c)
            with trio.fail_after(90):
                await a.create_keyspace("hits", mode="regional", resolver="counter")
                await a.create_keyspace("prefs", mode="regional")
                south = [n.id for n in cluster.config.nodes_in("ap-south")]
                cluster.partition(south)
                for round_ in range(3):
                    for db in dbs:
                        await db.run_transaction(lambda tx: tx.increment("hits", b"n", 1))
                        await db.run_transaction(
                            lambda tx, v=b"%s-%d" % (db.region.encode(), round_):
                            tx.put("prefs", b"k", v))
                # Cut off, ap-south sees only its own writes.
                assert await c.read("hits", b"n") == b"3"
                cluster.heal()
                final = await _converged(cluster, dbs, "hits", [b"n"], timeout=60)
                assert final[b"n"] == b"9"
                final = await _converged(cluster, dbs, "prefs", [b"k"], timeout=60)
                # Last writer wins: ap-south's last write was the last one made.
                assert final[b"k"] == b"ap-south-2"
                # Every region's concurrent writes that lost are in some conflict log.
                lost = {r.loser for db in dbs for r in await db.conflicts("prefs")}
                assert lost, "concurrent writes from both sides of the cut, none logged"


async def test_the_origin_learns_what_each_region_applied_and_trims_its_outbox():
    # The leader shipping a group's regional writes records in the group's log how far each
    # destination has applied them (SHIPPED); the outbox then drops what every region has,
    # instead of holding each write for a fixed time and dropping it even when a region cut
    # off for longer never got it.
    async with open_local_cluster(REGIONS, 1, wan_latency_ms=WAN, seed=24) as cluster:
        async with cluster.connect("us-east") as a:
            with trio.fail_after(60):
                await a.create_keyspace("notes", mode="regional")
                async with a.transaction() as tx:
                    await tx.put("notes", b"k", b"v")
                origin = data_group(cluster.config, "us-east")
                others = [data_group(cluster.config, r) for r in REGIONS if r != "us-east"]
                written = await _last_regional_write(cluster, origin)
                assert written >= tx.commit_ts
                while True:
                    leader = await _leader_of(cluster, origin)
                    sm = cluster.nodes[leader].replicas[origin].sm
                    if all(sm.shipped(d) >= written for d in others) and \
                            sm.outbox_after(0) == []:
                        break
                    await trio.sleep(0.1)
                for d in others:
                    await _watermark_reaches(cluster, d, origin, written)


async def test_one_failed_progress_record_does_not_stop_the_next():
    # One SHIPPED proposal that failed (a timeout) ended the task recording the destination's
    # progress, while shipping went on: the outbox was never trimmed again.
    import msgpack

    from engine.group import CMD_SHIPPED
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=63) as cluster:
        async with cluster.connect("us-east") as a:
            with trio.fail_after(60):
                origin = data_group(cluster.config, "us-east")
                dest = data_group(cluster.config, "eu-west")
                replica = cluster.nodes[await _leader_of(cluster, origin)].replicas[origin]
                propose, failed = replica.propose, []

                async def failing_once(data):
                    if msgpack.unpackb(data)[0] == CMD_SHIPPED and not failed:
                        failed.append(data)
                        raise errors.AmbiguousCommitError("proposal timed out")
                    return await propose(data)

                replica.propose = failing_once
                await a.create_keyspace("notes", mode="regional")
                for i in range(3):
                    async with a.transaction() as tx:
                        await tx.put("notes", b"k%d" % i, b"v")
                while not (failed and replica.sm.shipped(dest) >= tx.commit_ts):
                    await trio.sleep(0.1)
                while replica.sm.outbox_after(0):
                    await trio.sleep(0.1)


async def test_a_set_over_its_regions_share_is_refused_as_too_large():
    # Under a value limit as large as the store's, two regions each grow a set to half of it
    # only: the group refuses the add past that, as too large rather than as a bad argument.
    from engine.config import Limits
    from engine.mvcc import MAX_VALUE_SIZE

    limits = Limits(max_value_size=MAX_VALUE_SIZE, max_txn_bytes=2 * MAX_VALUE_SIZE)
    async with open_local_cluster(REGIONS[:2], 1, seed=32, limits=limits) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(30):
                await db.create_keyspace("tags", mode="regional", resolver="add_wins_set")
                elem = MAX_VALUE_SIZE * 3 // 10
                await _merge(db, b"t", encode_set_add(b"a" * elem))
                with pytest.raises(errors.RecordTooLargeError,
                                   match=r"key b't' would take \d+ bytes, over this region's "
                                         rf"share \({MAX_VALUE_SIZE // 2} bytes\)"):
                    await _merge(db, b"t", encode_set_add(b"b" * elem))
                assert decode_set(await db.read("tags", b"t")) == [b"a" * elem]
