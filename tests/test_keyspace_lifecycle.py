"""Keyspace lifecycle on an in-process cluster: drop and create again, moves between homes,
and clients whose cached catalog records are out of date (ARCH §4)."""

from __future__ import annotations

import functools

import pytest
import trio

import engine.client
import engine.group
import engine.node
import engine.replica
import engine.rpc
from engine import errors
from engine.catalog import NEXT_ID_KEY, encode_next_id
from engine.config import Limits
from engine.group import conflict_log_bounds
from engine.local import open_local_cluster
from engine.placement import META_GROUP, data_group, keyspace_bounds
from engine.rpc import CallTimeoutError

TWO_REGIONS = ("us-east", "eu-west")
THREE_REGIONS = ("us-east", "eu-west", "ap-south")


# ------------------------------------------------------------------ drop

async def test_a_cached_record_of_a_dropped_keyspace_neither_reads_nor_writes_its_data():
    """A client that cached a keyspace before it was dropped and created again does not
    read the old data, and its write is refused (not acknowledged into the dropped
    keyspace, where nobody would see it) until it looks the name up again."""
    async with open_local_cluster(("us-east",), 1, seed=41) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("us-east") as b:
            with trio.fail_after(60):
                old = await a.create_keyspace("orders")
                await a.run_transaction(lambda tx: tx.put("orders", b"k", b"OLD"))
                assert await a.read("orders", b"k") == b"OLD"
                await b.drop_keyspace("orders")
                new = await b.create_keyspace("orders")
                assert new.id != old.id
                assert (await a.keyspace("orders")).id == old.id  # still cached
                with pytest.raises(errors.TransactionConflictError) as refused:
                    async with a.transaction() as tx:
                        await tx.put("orders", b"k2", b"lost?")
                assert refused.value.reason == "moved"
                assert await a.read("orders", b"k") is None
                await a.run_transaction(lambda tx: tx.put("orders", b"k2", b"by-a"))
                assert await b.read("orders", b"k2") == b"by-a"
                assert (await a.keyspace("orders")).id == new.id


async def test_a_transaction_that_used_a_dropped_keyspace_does_not_use_one_created_again():
    """A snapshot-isolation transaction that read a keyspace before it was dropped and
    created again (its client's cache now names the new one) is refused as ``moved`` when it
    uses the name again: it read the old keyspace, and used to read the new one as empty and
    write what it had read of the old one into it."""
    async with open_local_cluster(("us-east",), 1, seed=47) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("orders")
                await db.run_transaction(lambda tx: tx.put("orders", b"k", b"OLD"))
                tx = db.transaction()
                assert await tx.get("orders", b"k") == b"OLD"
                await db.drop_keyspace("orders")
                await db.create_keyspace("orders")
                for use in (lambda: tx.get("orders", b"k"),
                            lambda: tx.scan("orders"),
                            lambda: tx.put("orders", b"k", b"OLD, again")):
                    with pytest.raises(errors.TransactionConflictError, match="created again"
                                       ) as refused:
                        await use()
                    assert refused.value.reason == "moved"
                await tx.rollback()
                assert await db.read("orders", b"k") is None
                await db.run_transaction(lambda tx: tx.put("orders", b"k", b"new"))
                assert await db.read("orders", b"k") == b"new"


async def test_a_dropped_regional_keyspace_is_fenced_in_every_region():
    async with open_local_cluster(TWO_REGIONS, 1, seed=42) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west, \
                cluster.connect("eu-west") as stale:
            with trio.fail_after(60):
                old = await east.create_keyspace("r", mode="regional")
                await west.run_transaction(lambda tx: tx.put("r", b"k", b"west"))
                assert await stale.conflicts("r") == []  # and the record is cached
                await east.drop_keyspace("r")
                # Its conflict log, being erased, is not shown (the record is looked up again).
                with pytest.raises(errors.TransactionConflictError, match="moved"):
                    await stale.conflicts("r")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    async with west.transaction() as tx:
                        await tx.put("r", b"k", b"after the drop")
                assert refused.value.reason == "moved"
                prefix = keyspace_bounds(old.id)[0]
                for region in TWO_REGIONS:
                    group = data_group(cluster.config, region)
                    for node in cluster.nodes.values():
                        if group in node.replicas and node.replicas[group].node.is_leader:
                            assert node.replicas[group].sm.fence(prefix)[0] == 3  # and released
                with pytest.raises(errors.KeyspaceNotFoundError):
                    await west.read("r", b"k")


def _replicas(cluster, group):
    return [node.replicas[group] for node in cluster.nodes.values() if group in node.replicas]


def _left_behind(cluster, group, ks_id) -> list[tuple[int, int]]:
    """(versions, conflict-log records) of the keyspace in each replica of the group."""
    lo, hi = keyspace_bounds(ks_id)
    side_lo, side_hi = conflict_log_bounds(ks_id)
    return [(r.sm.store.count_versions(lo, hi)[0], len(r.sm.store.side_scan(side_lo, side_hi)))
            for r in _replicas(cluster, group)]


def _fence_of(cluster, group, ks_id):
    leader = next(r for r in _replicas(cluster, group) if r.node.is_leader)
    return leader.sm.fence(keyspace_bounds(ks_id)[0])


def _fences_out_of_reach(m, refused, error=None) -> None:
    """Makes every client's fence changes that ``refused(group, level)`` picks fail, as if
    the group were out of reach, or with ``error()`` (``m``: a monkeypatch context)."""
    fence = engine.client.Database._fence_at

    async def failing(self, group, ks, level, *args, **kwargs):
        if refused(group, level):
            raise error() if error else errors.UnavailableError("out of reach")
        return await fence(self, group, ks, level, *args, **kwargs)

    m.setattr(engine.client.Database, "_fence_at", failing)


def _fail_calls(monkeypatch, db, method):
    """Makes ``db``'s calls of ``method`` fail (as if its node were out of reach)."""
    call = db._call_group

    async def failing(group, m, payload, **options):
        if m == method:
            raise errors.UnavailableError(f"{method}: out of reach")
        return await call(group, m, payload, **options)

    monkeypatch.setattr(db, "_call_group", failing)


async def test_a_drop_fences_every_group_it_reaches_when_one_is_out_of_reach(monkeypatch):
    """A regional keyspace's drop with one region's group out of reach still fences it in
    the others (clients with its record cached are stopped there at once), and the call,
    run again once the group is back, ends the drop."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=44) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                ks = await db.create_keyspace("r", mode="regional")
                await west.run_transaction(lambda tx: tx.put("r", b"k", b"west"))
                east_group, west_group = (data_group(cluster.config, r) for r in TWO_REGIONS)
                assert east_group < west_group  # the unreachable one comes first
                with monkeypatch.context() as m:
                    _fences_out_of_reach(m, lambda group, level: group == east_group)
                    with pytest.raises(errors.UnavailableError):
                        await db.drop_keyspace("r")
                assert _fence_of(cluster, west_group, ks.id)[0] == 3
                with pytest.raises(errors.TransactionConflictError, match="moved"):
                    async with west.transaction() as tx:
                        await tx.put("r", b"k", b"after the drop")
                await db.drop_keyspace("r")
                assert _fence_of(cluster, east_group, ks.id)[0] == 3
                assert "r" not in [k.name for k in await db.list_keyspaces()]


async def test_a_dropped_keyspaces_data_is_erased_from_every_replica(monkeypatch):
    """After a drop, once the transaction lifetime has passed, the group's leader erases the
    keyspace's versions (PURGE entries of a bounded size) on every replica, and leaves the
    other keyspaces of the group alone."""
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.2)
    monkeypatch.setattr(engine.replica, "PURGE_BUDGET", 16)  # several PURGE entries
    async with open_local_cluster(("us-east",), 3, limits=Limits(max_txn_lifetime_s=1.0),
                                  seed=50) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(90):
                gone = await db.create_keyspace("gone")
                kept = await db.create_keyspace("kept")
                async with db.transaction() as tx:
                    for j in range(50):
                        await tx.put("gone", b"k%02d" % j, b"v")
                await db.run_transaction(lambda tx: tx.put("kept", b"k", b"still here"))
                group = data_group(cluster.config, "us-east")
                # Every replica holds the data before the drop (a follower sent the log in
                # batches, see raft.core.Config.lazy_followers, has it by its next heartbeat).
                while not all(v > 0 for v, _ in _left_behind(cluster, group, gone.id)):
                    await trio.sleep(0.05)
                await db.drop_keyspace("gone")
                assert len(_replicas(cluster, group)) == 3
                while _left_behind(cluster, group, gone.id) != [(0, 0)] * 3:
                    await trio.sleep(0.1)
                # 50 versions, 16 a step (whichever replicas led meanwhile proposed them).
                assert sum(r.purges for r in _replicas(cluster, group)) >= 4
                assert await db.read("kept", b"k") == b"still here"
                assert all(v == 1 for v, _ in _left_behind(cluster, group, kept.id))


async def test_a_drop_interrupted_before_the_record_is_deleted_has_its_data_erased(
        monkeypatch):
    """The groups are told they may erase before the record goes (once it has, nothing says
    where the data was): a drop that stops there leaves the name unresolvable and taken,
    its data erased, and the call run again deletes the record."""
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.2)
    async with open_local_cluster(("us-east",), 1, limits=Limits(max_txn_lifetime_s=1.0),
                                  seed=55) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as other:
            with trio.fail_after(60):
                ks = await db.create_keyspace("gone")
                await db.run_transaction(lambda tx: tx.put("gone", b"k", b"v"))
                await other.keyspace("gone")  # cached
                group = data_group(cluster.config, "us-east")
                with monkeypatch.context() as m:
                    _fail_calls(m, db, "keyspace.drop")
                    with pytest.raises(errors.UnavailableError):
                        await db.drop_keyspace("gone")
                assert _fence_of(cluster, group, ks.id)[0] == 3
                while _left_behind(cluster, group, ks.id) != [(0, 0)]:
                    await trio.sleep(0.1)
                with pytest.raises(errors.MeridianError):
                    await other.read("gone", b"k")
                with pytest.raises(errors.KeyspaceNotFoundError, match="being dropped"):
                    await other.keyspace("gone")
                with pytest.raises(errors.MeridianError, match="being dropped"):
                    await other.create_keyspace("gone")
                with pytest.raises(errors.KeyspaceNotFoundError, match="being dropped"):
                    await other.move_keyspace("gone", "us-east")
                assert "gone" not in [k.name for k in await other.list_keyspaces()]
                await db.drop_keyspace("gone")
                assert (await other.create_keyspace("gone")).id != ks.id


async def test_a_keyspace_moved_away_and_back_is_erased_from_its_old_home_and_copied_anew(
        monkeypatch):
    """The old home of a moved keyspace erases the copy it kept; moving the keyspace back
    there copies it again, and a key deleted in between does not come back."""
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.2)
    async with open_local_cluster(TWO_REGIONS, 1, limits=Limits(max_txn_lifetime_s=1.0),
                                  seed=51) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(90):
                ks = await db.create_keyspace("g", home_region="us-east")
                async with db.transaction() as tx:
                    await tx.put("g", b"a", b"1")
                    await tx.put("g", b"b", b"1")
                east = data_group(cluster.config, "us-east")
                await db.move_keyspace("g", "eu-west")
                async with db.transaction() as tx:
                    await tx.delete("g", b"a")
                    await tx.put("g", b"b", b"2")
                assert len(_replicas(cluster, east)) == 2  # the voter, and a learner
                while _left_behind(cluster, east, ks.id) != [(0, 0)] * 2:
                    await trio.sleep(0.1)
                await db.move_keyspace("g", "us-east")
                assert await db.read("g", b"a") is None
                assert await db.read("g", b"b") == b"2"
                await db.run_transaction(lambda tx: tx.put("g", b"c", b"3"))
                async with db.transaction() as tx:
                    assert [k for k, _ in await tx.scan("g")] == [b"b", b"c"]


async def test_a_move_interrupted_before_the_catalog_change_is_finished_by_the_next_move(
        monkeypatch):
    """The old home is fenced against reads before the catalog names the new one. A move
    that stops there leaves the catalog naming the old home: nothing may erase it, and the
    next move, this one run again or one elsewhere, starts over from it (the copy the
    first one left is erased) and finishes."""
    for then in ("eu-west", "ap-south"):
        async with open_local_cluster(THREE_REGIONS, 1, seed=52) as cluster:
            async with cluster.connect("us-east") as db, cluster.connect("us-east") as w:
                with trio.fail_after(60):
                    ks = await db.create_keyspace("g", home_region="us-east")
                    await db.run_transaction(lambda tx: tx.put("g", b"a", b"1"))
                    east = data_group(cluster.config, "us-east")
                    west = data_group(cluster.config, "eu-west")
                    with monkeypatch.context() as m:
                        _fail_calls(m, db, "keyspace.rehome")
                        with pytest.raises(errors.UnavailableError):
                            await db.move_keyspace("g", "eu-west")
                    assert _fence_of(cluster, east, ks.id)[0] == 2
                    leader = next(r for r in _replicas(cluster, east) if r.node.is_leader)
                    assert leader.sm.erasable_keyspaces() == []
                    assert (await db.move_keyspace("g", then)).home == then
                    await w.run_transaction(lambda tx: tx.put("g", b"b", b"2"))
                    assert await db.read("g", b"a") == b"1"
                    assert await db.read("g", b"b") == b"2"
                    assert _fence_of(cluster, east, ks.id)[0] == 3
                    if then != "eu-west":
                        assert _fence_of(cluster, west, ks.id)[0] == 3  # the first's copy
                    assert not (await db.keyspace("g")).retired  # settled


async def test_a_cached_record_older_than_the_cache_bound_is_looked_up_before_use(
        monkeypatch):
    """An idle client does not use a record older than KEYSPACE_CACHE_S: it looks the
    keyspace up again first (not only in the background, after using the old record)."""
    monkeypatch.setattr(engine.client, "KEYSPACE_CACHE_S", 0.2)
    async with open_local_cluster(("us-east",), 1, seed=43) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("us-east") as b:
            with trio.fail_after(60):
                await a.create_keyspace("orders")
                await b.drop_keyspace("orders")
                new = await b.create_keyspace("orders")
                await trio.sleep(0.3)  # the cached record is now older than the bound
                assert (await a.keyspace("orders")).id == new.id


async def test_an_expired_record_is_still_used_while_the_catalog_is_out_of_reach(
        monkeypatch):
    """A lookup that cannot reach the catalog does not stop the keyspace's own group from
    being used (safe: the groups refuse the id of a dropped or moved keyspace)."""
    monkeypatch.setattr(engine.client, "KEYSPACE_CACHE_S", 0.2)
    async with open_local_cluster(("us-east",), 1, seed=49) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("orders")
                await db.run_transaction(lambda tx: tx.put("orders", b"k", b"v"))
                await trio.sleep(0.3)  # the cached record is now older than the bound

                async def out_of_reach(self, name):
                    await trio.sleep_forever()

                monkeypatch.setattr(engine.client.Database, "_lookup_keyspace", out_of_reach)
                with trio.fail_after(engine.client.KEYSPACE_REVALIDATE_S + 2):
                    assert await db.read("orders", b"k") == b"v"
                with trio.fail_after(engine.client.KEYSPACE_REVALIDATE_S + 2):
                    await db.run_transaction(lambda tx: tx.put("orders", b"k", b"w"))


# ------------------------------------------------------------------ move

async def test_a_move_does_not_rehome_a_keyspace_dropped_and_created_again_meanwhile():
    async with open_local_cluster(TWO_REGIONS, 1, seed=44) as cluster:
        async with cluster.connect("us-east") as admin, cluster.connect("us-east") as other:
            with trio.fail_after(60):
                first = await admin.create_keyspace("g", home_region="us-east")
                copy = admin._copy_keyspace
                created = []

                async def copy_then_recreate(ks, old, new):
                    copied_at = await copy(ks, old, new)
                    await other.drop_keyspace("g")
                    created.append(await other.create_keyspace("g", home_region="us-east"))
                    await other.run_transaction(lambda tx: tx.put("g", b"k", b"new-data"))
                    return copied_at

                admin._copy_keyspace = copy_then_recreate
                with pytest.raises(errors.TransactionConflictError) as overtaken:
                    await admin.move_keyspace("g", "eu-west")
                assert overtaken.value.reason == "catalog_changed"
                other._keyspaces.clear()
                ks = await other.keyspace("g")
                assert ks.id == created[0].id != first.id and ks.home == "us-east"
                assert await other.read("g", b"k") == b"new-data"
                # The copy is nobody's home: the drop erased it.
                west = data_group(cluster.config, "eu-west")
                assert _fence_of(cluster, west, first.id)[0] == 3


async def test_the_steps_after_a_move_begins_are_compare_and_sets_on_its_id_and_epoch():
    async with open_local_cluster(TWO_REGIONS, 1, seed=45) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                ks = await db.create_keyspace("g", home_region="us-east")
                meta = db._meta_group
                began = await db._begin("g", "move", "eu-west")
                assert began["epoch"] == ks.epoch + 1 and began["moving_to"] == "eu-west"
                for method in ("keyspace.rehome", "keyspace.settle", "keyspace.drop"):
                    with pytest.raises(errors.TransactionConflictError) as refused:
                        await db._call_group(meta, method, {
                            "name": "g", "home": "eu-west", "id": ks.id, "epoch": ks.epoch})
                    assert refused.value.reason == "catalog_changed"
                    with pytest.raises(errors.KeyspaceNotFoundError):
                        await db._call_group(meta, method, {
                            "name": "g", "home": "eu-west", "id": ks.id + 1,
                            "epoch": began["epoch"]})
                db._keyspaces.clear()
                assert (await db.keyspace("g")).home == "us-east"
                # A move to where it is ends the one begun (lifting nothing it did not set).
                assert (await db.move_keyspace("g", "us-east")).moving_to == ""
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v"))


async def test_a_stale_client_cannot_write_into_the_new_home_during_the_copy():
    """A client whose cache names the new home (from an earlier stay there) is refused while
    the keyspace is being copied there: its write would be overwritten by the copy."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=46) as cluster:
        async with cluster.connect("us-east") as admin, cluster.connect("us-east") as x:
            with trio.fail_after(60):
                await admin.create_keyspace("g", home_region="us-east")
                await admin.move_keyspace("g", "eu-west")
                assert (await x.keyspace("g")).home == "eu-west"  # cached
                await admin.move_keyspace("g", "us-east")
                await admin.run_transaction(lambda tx: tx.put("g", b"k", b"admin"))
                copy = admin._copy_keyspace
                refusals = []

                async def copy_with_a_stale_writer(ks, old, new):
                    try:
                        async with x.transaction() as tx:
                            await tx.put("g", b"k", b"x")
                            await tx.put("g", b"only-x", b"x")
                    except errors.TransactionConflictError as exc:
                        refusals.append(exc.reason)
                    return await copy(ks, old, new)

                admin._copy_keyspace = copy_with_a_stale_writer
                assert (await admin.move_keyspace("g", "eu-west")).home == "eu-west"
                assert refusals == ["moved"]
                assert await admin.read("g", b"k") == b"admin"
                assert await admin.read("g", b"only-x") is None
                # Once the move is done, the stale client finds the new home and writes there.
                await x.run_transaction(lambda tx: tx.put("g", b"only-x", b"x"))
                assert await admin.read("g", b"only-x") == b"x"


async def test_a_move_interrupted_after_the_catalog_change_is_finished_by_the_next_call(
        monkeypatch):
    """A move that stopped after the catalog change, before its new home took writes (and
    before its old home was told it may erase): the move run again, a move on to a third
    region, or a drop finishes it."""
    for then in ("again", "onwards", "drop"):
        async with open_local_cluster(THREE_REGIONS, 1, seed=47) as cluster:
            async with cluster.connect("us-east") as db, cluster.connect("us-east") as stale:
                with trio.fail_after(60):
                    ks = await db.create_keyspace("g", home_region="us-east")
                    await db.run_transaction(lambda tx: tx.put("g", b"k", b"1"))
                    await stale.keyspace("g")  # cached: home us-east
                    east = data_group(cluster.config, "us-east")
                    west = data_group(cluster.config, "eu-west")
                    with monkeypatch.context() as m:  # no lift, no release
                        _fences_out_of_reach(m, lambda group, level: level in (0, 3))
                        with pytest.raises(errors.UnavailableError, match="out of reach"):
                            await db.move_keyspace("g", "eu-west")
                    moved = await db.keyspace("g")
                    assert moved.home == "eu-west" and moved.retired == ("us-east",)
                    assert _fence_of(cluster, east, ks.id)[0] == 2
                    with pytest.raises(errors.TransactionConflictError):  # still fenced
                        async with db.transaction() as tx:
                            await tx.put("g", b"k", b"2")
                    if then == "again":
                        assert (await db.move_keyspace("g", "eu-west")).home == "eu-west"
                    elif then == "onwards":
                        assert (await db.move_keyspace("g", "ap-south")).home == "ap-south"
                        assert _fence_of(cluster, west, ks.id)[0] == 3
                    else:
                        await db.drop_keyspace("g")
                    assert _fence_of(cluster, east, ks.id)[0] == 3
                    if then == "drop":
                        with pytest.raises(errors.KeyspaceNotFoundError):
                            await stale.read("g", b"k")
                        continue
                    assert not (await db.keyspace("g")).retired
                    await db.run_transaction(lambda tx: tx.put("g", b"k", b"2"))
                    assert await stale.read("g", b"k") == b"2"  # looked up again


async def test_a_stale_read_after_a_move_is_not_served_before_the_copy(monkeypatch):
    """A bounded-staleness read routed to a local replica of the new home that has not
    applied the move's copy yet does not read the keyspace as empty: it waits for the copy,
    or the group's voters answer."""
    monkeypatch.setattr(engine.node, "STALE_READ_WAIT_S", 1.0)
    async with open_local_cluster(THREE_REGIONS, 1, seed=48) as cluster:
        us = cluster.config.nodes_in("us-east")[0].id
        eu = cluster.config.nodes_in("eu-west")[0].id
        eu_group = data_group(cluster.config, "eu-west")
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("g", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v"))
                learner = cluster.nodes[us].replicas[eu_group]  # eu-west's group, in us-east
                leader = cluster.nodes[eu].replicas[eu_group]
                # It serves bounded-staleness reads: it has closed a timestamp (the idle
                # group's leader closes time now and then) and caught up with its leader.
                while (learner.closed_ts == 0
                       or learner.sm.applied_index < leader.sm.applied_index):
                    await trio.sleep(0.02)
                # us-east's replica of eu-west's group stops hearing from its leader.
                cluster.nodes[us].isolate_from({eu})
                cluster.nodes[eu].isolate_from({us})
                try:
                    ks = await db.move_keyspace("g", "eu-west")
                    # It lags: it has not applied the move (its fences, its copy).
                    assert learner.sm.fence(keyspace_bounds(ks.id)[0]) == (0, 0)
                    assert await db.read("g", b"k", staleness="bounded:30") == b"v"
                    assert learner.closed_ts < ks.moved_ts
                    with pytest.raises(errors.TransactionConflictError) as refused:
                        await db.read("g", b"k", staleness="exact:30")  # before the move
                    assert refused.value.reason == "moved"
                finally:
                    cluster.heal()


async def test_a_snapshot_does_not_move_past_a_move_of_a_keyspace_it_read():
    """A transaction read a key before its keyspace moved; the key is written in the new
    home, and another keyspace in the transaction's next group. That group's read meets the
    write in its uncertainty window and the transaction's snapshot must move up: the old
    home, where the first key was read, cannot vouch that it is unchanged -- it no longer
    sees the keyspace's writes -- so the transaction conflicts instead of reading the old
    value of one key beside the new value of the other."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=57) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await db.create_keyspace("moving", home_region="us-east")
                await db.create_keyspace("staying", home_region="eu-west")
                async with db.transaction() as tx:
                    await tx.put("moving", b"k", b"1")
                    await tx.put("staying", b"k", b"1")
                tx = db.transaction()
                assert await tx.get("moving", b"k") == b"1"  # the snapshot: in us-east
                await west.move_keyspace("moving", "eu-west")
                async with west.transaction() as w:
                    await w.put("moving", b"k", b"2")
                    await w.put("staying", b"k", b"2")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    await tx.get("staying", b"k")
                assert refused.value.reason == "refresh" and "(moved)" in str(refused.value)
                assert refused.value.key == b"k"
                await tx.rollback()
                assert not db._keyspaces  # the next attempt looks "moving" up afresh

                async def both(tx):
                    return [await tx.get("staying", b"k"), await tx.get("moving", b"k")]

                assert await db.run_transaction(both) == [b"2", b"2"]


async def test_a_write_in_the_new_home_is_checked_against_the_snapshot_it_read_before():
    """A transaction read a key in the old home; another deleted it there; the keyspace
    moved, and the transaction writes the key into the new home. The new home never saw the
    delete (a deleted key is not copied), so it cannot tell a lost update: the write is
    refused (``moved``), because the transaction's snapshot predates the keyspace's arrival."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=58) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as other:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                tx = db.transaction()
                assert await tx.get("m", b"k") == b"1"
                await other.run_transaction(lambda t: t.delete("m", b"k"))
                await db.move_keyspace("m", "eu-west")  # db looks the keyspace up again
                await tx.put("m", b"k", b"2")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    await tx.commit()
                assert refused.value.reason == "moved"
                assert await other.read("m", b"k") is None


async def test_a_serializable_read_is_not_validated_in_a_home_the_keyspace_left():
    """A serializable transaction read a key in us-east and writes another keyspace; the
    key's keyspace moves to eu-west and the key is written there. The commit must not let
    the old home vouch for the read (it sees no write after the move): it conflicts."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=59) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await db.create_keyspace("moving", home_region="us-east")
                await db.create_keyspace("staying", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("moving", b"k", b"1"))
                tx = db.transaction(isolation="serializable")
                assert await tx.get("moving", b"k") == b"1"
                await west.move_keyspace("moving", "eu-west")
                await west.run_transaction(lambda t: t.put("moving", b"k", b"2"))
                await tx.put("staying", b"x", b"read k as 1")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    await tx.commit()
                assert refused.value.reason == "moved"


async def test_a_serializable_scan_is_not_validated_in_a_home_the_keyspace_left():
    """As above, for a range scanned (empty) rather than a key read: a key inserted into
    the range in the new home is a phantom the old home cannot see, so the commit
    conflicts."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=60) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await db.create_keyspace("moving", home_region="us-east")
                await db.create_keyspace("staying", home_region="us-east")
                tx = db.transaction(isolation="serializable")
                assert await tx.scan("moving", b"shift/", b"shift0") == []
                await west.move_keyspace("moving", "eu-west")
                await west.run_transaction(lambda t: t.put("moving", b"shift/bob", b"on"))
                await tx.put("staying", b"x", b"saw no shift")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    await tx.commit()
                assert refused.value.reason == "moved"


AHEAD_NS = 240_000_000  # within the local cluster's maximum clock offset (250 ms)


async def _closed_ahead(cluster, region: str) -> None:
    """Makes the region's group close time AHEAD_NS ahead of its leader's clock (and of every
    other clock): the state a leader change leaves behind when the old leader's clock ran
    ahead, within the offset limit (see test_cross_region's
    test_a_write_lands_above_a_snapshot_closed_ahead_of_its_groups_clock)."""
    group = data_group(cluster.config, region)
    leader = next(n for n in cluster.nodes.values()
                  if group in n.replicas and n.replicas[group].node.is_leader)
    await leader.replicas[group].close_up_to(leader.clock.now() + AHEAD_NS)


def _spy_fences(db, group: int, level: int, before=None) -> list[int]:
    """The stamps (``ts``) of ``db``'s fence changes at ``level`` in ``group``, as they come;
    ``before()`` is awaited before each is sent."""
    stamps: list[int] = []
    call = db._call_group

    async def spy(g, method, payload, **options):
        spied = method == "keyspace.fence" and g == group and payload["level"] == level
        if spied and before is not None:
            await before()
        reply = await call(g, method, payload, **options)
        if spied:
            stamps.append(reply["ts"])
        return reply

    db._call_group = spy
    return stamps


async def test_a_move_hands_over_above_the_old_homes_timestamps_when_they_run_ahead():
    """The old home's timestamps run ahead of every clock, before the copy and again
    before its read fence. The copy still lands above the commits it holds (a reader at a
    snapshot below one of them must not see it in the new home), and the new home takes
    writes only above the read fence that closed the old one: the groups' timestamps follow
    each other explicitly, not through the clocks."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=71) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: _put_both(tx, b"1"))
                await _closed_ahead(cluster, "us-east")
                tx = db.transaction()
                assert await tx.get("m", b"k") == b"1"
                w = db.transaction()
                await _put_both(w, b"2")
                await w.commit()  # above tx's snapshot: tx must never see it
                closed = _spy_fences(db, data_group(cluster.config, "us-east"), 2,
                                     functools.partial(_closed_ahead, cluster, "us-east"))
                ks = await db.move_keyspace("m", "eu-west")
                assert ks.moved_ts > w.commit_ts  # the copy holds w's writes
                assert ks.handoff_ts == closed[0]
                try:
                    assert await tx.get("m", b"k2") == b"1"
                except errors.TransactionConflictError:
                    pass  # refused, or retried: never k from before w beside k2 from after
                after = db.transaction()
                await after.put("m", b"k", b"3")
                await after.commit()
                assert after.commit_ts > closed[0]


async def _write_lands_above(db, stamp: int) -> None:
    """A write of key k of keyspace m, through ``db``, commits above ``stamp``."""
    w = db.transaction()
    await w.put("m", b"k", b"2")
    await w.commit()
    assert w.commit_ts > stamp


async def _put_both(tx, value):
    await tx.put("m", b"k", value)
    await tx.put("m", b"k2", value)


async def test_a_delete_in_an_old_home_running_ahead_is_not_lost_to_a_write_in_the_new():
    """test_a_write_in_the_new_home_is_checked_against_the_snapshot_it_read_before, with the
    old home's timestamps ahead of every clock: the copy, stamped above what it holds, is
    above the snapshot too, so the write is still refused."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=73) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                await _closed_ahead(cluster, "us-east")
                tx = db.transaction()
                assert await tx.get("m", b"k") == b"1"
                await db.run_transaction(lambda t: t.delete("m", b"k"))
                await db.move_keyspace("m", "eu-west")
                await tx.put("m", b"k", b"2")
                with pytest.raises(errors.TransactionConflictError) as refused:
                    await tx.commit()
                assert refused.value.reason == "moved"
                assert await db.read("m", b"k") is None


async def test_a_move_finished_by_another_client_takes_writes_above_the_old_homes_fence(
        monkeypatch):
    """A move stopped after the catalog change, before the new home took writes; another
    client finishes it. That client never saw the old home's read fence: the record's
    handoff_ts carries its stamp, and the new home's first write lands above it although
    the old home's timestamps ran ahead of every clock just before that fence."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=74) as cluster:
        async with cluster.connect("eu-west") as db, cluster.connect("eu-west") as other:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                closed = _spy_fences(db, data_group(cluster.config, "us-east"), 2,
                                     functools.partial(_closed_ahead, cluster, "us-east"))
                with monkeypatch.context() as m:  # no lift
                    _fences_out_of_reach(m, lambda group, level: level == 0)
                    with pytest.raises(errors.UnavailableError, match="out of reach"):
                        await db.move_keyspace("m", "eu-west")
                assert (await other.keyspace("m")).handoff_ts == closed[0]
                await other.move_keyspace("m", "eu-west")
                await _write_lands_above(other, closed[0])


async def test_a_rolled_back_move_takes_writes_in_the_old_home_above_the_copys_fence(
        monkeypatch):
    """A move whose copy served reads fails before the catalog change: the rollback fences
    the copy off, then lifts the old home above that fence's stamp, although the new
    group's timestamps ran ahead of every clock just before it."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=75) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                east = data_group(cluster.config, "us-east")
                closed = _spy_fences(db, data_group(cluster.config, "eu-west"), 2,
                                     functools.partial(_closed_ahead, cluster, "eu-west"))
                with monkeypatch.context() as m:  # no read fence in the old home
                    _fences_out_of_reach(m, lambda group, level: group == east and level == 2)
                    with pytest.raises(errors.UnavailableError, match="out of reach"):
                        await db.move_keyspace("m", "eu-west")
                assert (await db.keyspace("m")).handoff_ts == closed[0]
                await _write_lands_above(db, closed[0])


def _overtaken():
    return errors.TransactionConflictError("overtaken, or the client died", "catalog_changed")


def _serves_reads(cluster, region: str, ks_id: int) -> bool:
    """Whether the region's group serves reads of the keyspace's copy (fence level 1, from
    a timestamp on)."""
    group = data_group(cluster.config, region)
    leader = next(n for n in cluster.nodes.values()
                  if group in n.replicas and n.replicas[group].node.is_leader)
    level, since = leader.replicas[group].sm.fence(keyspace_bounds(ks_id)[0])
    return level == 1 and since < engine.group.MAX_TS


async def test_an_abandoned_copys_read_fence_outlives_the_move_that_closed_it(monkeypatch):
    """M1 (us-east to eu-west) opens eu-west's copy to reads, then stops. M2 (back to
    us-east) fences that abandoned copy off -- while eu-west's timestamps run ahead -- and
    records it erased, then stops before lifting us-east. M3 finishes: us-east takes writes
    only above that read fence, which only the record's handoff_ts still knows."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=91) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as other, \
                cluster.connect("us-east") as third:
            with trio.fail_after(60):
                ks = await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                east = data_group(cluster.config, "us-east")
                west = data_group(cluster.config, "eu-west")
                with monkeypatch.context() as m:
                    _fences_out_of_reach(m, lambda group, level: group == east and level == 2,
                                         _overtaken)
                    with pytest.raises(errors.TransactionConflictError):
                        await db.move_keyspace("m", "eu-west")
                assert _serves_reads(cluster, "eu-west", ks.id)
                closed = _spy_fences(other, west, 2,
                                     functools.partial(_closed_ahead, cluster, "eu-west"))
                with monkeypatch.context() as m:  # no lift
                    _fences_out_of_reach(m, lambda group, level: level == 0)
                    with pytest.raises(errors.UnavailableError, match="out of reach"):
                        await other.move_keyspace("m", "us-east")
                record = await third.keyspace("m")
                assert record.abandoned == () and record.handoff_ts >= closed[0]
                await third.move_keyspace("m", "us-east")
                await _write_lands_above(third, closed[0])


async def test_a_retired_copy_opened_by_a_move_that_died_is_closed_before_a_rollback_lifts(
        monkeypatch):
    """M0 moves us-east to eu-west but cannot erase us-east's copy: us-east is retired. M1
    moves back, opens us-east's copy to reads ((1, copied_at)) and dies. M2, the same move
    again, begins while us-east's timestamps run ahead and fails to copy. us-east may have
    served reads since M1, although it was listed as retired: M2's rollback must fence it
    off and lift eu-west only above that fence."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=92) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as other:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                east = data_group(cluster.config, "us-east")
                west = data_group(cluster.config, "eu-west")
                with monkeypatch.context() as m:  # no erasure in us-east
                    _fences_out_of_reach(m, lambda group, level: group == east and level == 3)
                    ks = await db.move_keyspace("m", "eu-west")
                assert ks.retired == ("us-east",)
                with monkeypatch.context() as m:  # dies before eu-west's read fence
                    _fences_out_of_reach(m, lambda group, level: group == west and level == 2,
                                         _overtaken)
                    with pytest.raises(errors.TransactionConflictError):
                        await db.move_keyspace("m", "us-east")
                assert _serves_reads(cluster, "us-east", ks.id)
                assert "us-east" in (await other.keyspace("m")).retired
                closing = _spy_fences(other, east, 1,
                                      functools.partial(_closed_ahead, cluster, "us-east"))

                async def copy_fails(self, *args, **kwargs):
                    raise errors.UnavailableError("copy failed")

                with monkeypatch.context() as m:
                    m.setattr(engine.client.Database, "_copy_keyspace", copy_fails)
                    with pytest.raises(errors.UnavailableError, match="copy failed"):
                        await other.move_keyspace("m", "us-east")
                assert (await other.keyspace("m")).home == "eu-west"
                await _write_lands_above(other, closing[-1])


async def test_a_move_goes_on_after_a_fence_change_whose_outcome_was_lost():
    """The old home's read fence applies, but its answer comes back unknown (as when the
    entry is covered by a snapshot its leader installed): the move sends it again, which
    the fence refuses as no step forward at this epoch, and goes on to the end."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=76) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("m", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"1"))
                east = data_group(cluster.config, "us-east")
                call = db._call_group
                lost = []

                async def answer_lost(group, method, payload, **options):
                    reply = await call(group, method, payload, **options)
                    if (method == "keyspace.fence" and group == east and payload["level"] == 2
                            and not lost):
                        lost.append(reply)
                        raise errors.AmbiguousCommitError("the outcome is unknown")
                    return reply

                db._call_group = answer_lost
                assert (await db.move_keyspace("m", "eu-west")).home == "eu-west"
                assert lost and lost[0]["done"]
                await db.run_transaction(lambda tx: tx.put("m", b"k", b"2"))
                assert await db.read("m", b"k") == b"2"


def _pause_at(db, method, *, before=False):
    """Makes ``db``'s next call of ``method`` wait (before it is sent, or once its answer
    came) until the second returned event is set: a client delayed there. The first returned
    event is set when it is waiting."""
    paused, go = trio.Event(), trio.Event()
    call = db._call_group

    async def slow(group, m, payload, **kwargs):
        if before and m == method and not go.is_set():
            paused.set()
            await go.wait()
        reply = await call(group, m, payload, **kwargs)
        if not before and m == method and not go.is_set():
            paused.set()
            await go.wait()
        return reply

    db._call_group = slow
    return paused, go


async def _outcome(out: list, fn, *args, done: trio.Event | None = None) -> None:
    """Appends ``fn(*args)``'s result, or the MeridianError it raised, to ``out`` (then sets
    ``done``)."""
    try:
        out.append(await fn(*args))
    except errors.MeridianError as exc:
        out.append(exc)
    if done is not None:
        done.set()


async def test_two_moves_at_once_lose_no_write_and_leave_one_home():
    # Two moves of one keyspace: the second (m2) scanned the old home, then was delayed
    # while the first (m1) began after it and ran all its steps, and clients wrote in the
    # new home. Without epochs, m2 copied its old snapshot over the new home (the writes
    # lost), or its rollback lifted the old home's fence after m1's catalog change (both
    # homes writable).
    for target in ("eu-west", "ap-south"):
        async with open_local_cluster(THREE_REGIONS, 1, seed=61) as cluster:
            async with cluster.connect("us-east") as m1, cluster.connect("us-east") as m2, \
                    cluster.connect("eu-west") as w, cluster.connect("us-east") as stale:
                with trio.fail_after(60):
                    ks = await m1.create_keyspace("g", home_region="us-east")
                    await m1.run_transaction(lambda tx: tx.put("g", b"k", b"old"))
                    await stale.keyspace("g")  # cached: home us-east
                    paused, go = _pause_at(m2, "keyspace.copy", before=True)
                    second: list = []
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_outcome, second, m2.move_keyspace, "g", target)
                        await paused.wait()
                        await m1.move_keyspace("g", "eu-west")
                        await w.run_transaction(lambda tx: tx.put("g", b"k", b"new"))
                        await w.run_transaction(lambda tx: tx.put("g", b"k2", b"new2"))
                        go.set()
                    assert isinstance(second[0], errors.TransactionConflictError)
                    w._keyspaces.clear()
                    assert (await w.keyspace("g")).home == "eu-west"
                    assert await w.read("g", b"k") == b"new"
                    assert await w.read("g", b"k2") == b"new2"
                    east = data_group(cluster.config, "us-east")
                    assert _fence_of(cluster, east, ks.id)[0] == 3  # one home: eu-west
                    # A client whose cache names the old home is sent to the new one.
                    await stale.run_transaction(lambda tx: tx.put("g", b"k3", b"by-stale"))
                    assert await w.read("g", b"k3") == b"by-stale"
                    await w.run_transaction(lambda tx: tx.put("g", b"k", b"newer"))
                    assert await stale.read("g", b"k") == b"newer"


async def test_a_failed_move_does_not_lift_the_fence_of_a_drop():
    # A move that read the record just before a drop lowered the drop's fence with its own;
    # when its copy then failed, its rollback lifted the fence: the dropped keyspace was
    # readable and writable again through a cached record.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=62) as cluster:
        async with cluster.connect("us-east") as mover, \
                cluster.connect("us-east") as dropper, cluster.connect("us-east") as stale:
            with trio.fail_after(60):
                await mover.create_keyspace("g", home_region="us-east")
                await mover.run_transaction(lambda tx: tx.put("g", b"k", b"old"))
                await stale.keyspace("g")  # cached
                looked_up, go = _pause_at(mover, "keyspace.begin")

                async def unreachable(ks, old, new):
                    raise errors.UnavailableError("new home unreachable")

                mover._copy_keyspace = unreachable
                failed: list = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_outcome, failed, mover.move_keyspace, "g", "eu-west")
                    await looked_up.wait()
                    await dropper.drop_keyspace("g")
                    go.set()
                assert isinstance(failed[0], errors.MeridianError)
                with pytest.raises(errors.KeyspaceNotFoundError):
                    await dropper.keyspace("g")
                with pytest.raises(errors.MeridianError):  # moved: looked up, gone
                    await stale.read("g", b"k")


async def test_a_move_overtaken_by_a_drop_during_its_copy_says_so():
    # A drop fenced the old home against reads while the move was copying it: the move's
    # next read of the old home was refused as "moved" ("the keyspace moved away"), which
    # is neither what happened nor the reason a move overtaken reports.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=62) as cluster:
        async with cluster.connect("us-east") as mover, cluster.connect("us-east") as dropper:
            with trio.fail_after(60):
                await mover.create_keyspace("g", home_region="us-east")
                await mover.run_transaction(lambda tx: tx.put("g", b"k", b"old"))
                paused, go = _pause_at(mover, "scan", before=True)
                failed: list = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_outcome, failed, mover.move_keyspace, "g", "eu-west")
                    await paused.wait()
                    await dropper.drop_keyspace("g")
                    go.set()
                assert isinstance(failed[0], errors.TransactionConflictError)
                assert failed[0].reason == "catalog_changed"
                assert "newer move or drop" in str(failed[0])


async def _drop_with_the_name_taken_again(x, y, z, old, paused, go):
    """x drops keyspace ``old`` ("g") and waits midway (``paused`` is set, until ``go`` is);
    meanwhile y drops it, and z creates "g" again and writes to it. Checks that z's keyspace
    is whole afterwards; answers x's outcome."""
    outcome: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_outcome, outcome, x.drop_keyspace, "g")
        await paused.wait()
        await y.drop_keyspace("g")
        new = await z.create_keyspace("g")
        await z.run_transaction(lambda tx: tx.put("g", b"k", b"precious"))
        go.set()
    assert new.id != old.id
    z._keyspaces.clear()
    assert (await z.keyspace("g")).id == new.id
    assert await z.read("g", b"k") == b"precious"
    return outcome[0]


async def test_a_drop_overtaken_meanwhile_does_not_drop_a_keyspace_created_again():
    # Two drops of one keyspace, the first delayed after it began: the second ended the drop,
    # and the name was created again. The first used to begin again, by name, and drop the
    # new keyspace. Drops now share the first one's epoch and never begin again.
    async with open_local_cluster(("us-east",), 1, seed=71) as cluster:
        async with cluster.connect("us-east") as x, cluster.connect("us-east") as y, \
                cluster.connect("us-east") as z:
            with trio.fail_after(60):
                old = await x.create_keyspace("g")
                paused, go = _pause_at(x, "keyspace.fence", before=True)
                assert await _drop_with_the_name_taken_again(x, y, z, old, paused, go) is None


async def test_two_drops_at_once_both_end():
    """Two drops of one regional keyspace at once, each catalog or fence call taking 300 ms
    (a WAN round trip): they used to overtake each other in turn; now they work together."""
    async with open_local_cluster(THREE_REGIONS, 1, seed=72) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("us-east") as b:
            with trio.fail_after(120):
                ks = await a.create_keyspace("g", mode="regional")
                begins = []
                for db in (a, b):
                    call = db._call_group

                    async def slow(group, m, payload, _call=call, **kw):
                        if m in ("keyspace.fence", "keyspace.drop", "keyspace.begin"):
                            begins.append(m == "keyspace.begin")
                            await trio.sleep(0.3)
                        return await _call(group, m, payload, **kw)

                    db._call_group = slow
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(a.drop_keyspace, "g")
                    nursery.start_soon(b.drop_keyspace, "g")
                assert sum(begins) == 2
                assert "g" not in [k.name for k in await a.list_keyspaces()]
                for region in THREE_REGIONS:
                    group = data_group(cluster.config, region)
                    assert _fence_of(cluster, group, ks.id)[0] == 3


async def test_copies_abandoned_by_several_moves_are_all_erased(monkeypatch):
    """The catalog keeps every region an unfinished move was copying to, and the next move
    (or drop) fences each copy off and lets its group erase it."""
    for then in ("move", "drop"):
        async with open_local_cluster(THREE_REGIONS, 1, seed=73) as cluster:
            async with cluster.connect("us-east") as db:
                with trio.fail_after(60):
                    ks = await db.create_keyspace("g", home_region="us-east")
                    await db.run_transaction(lambda tx: tx.put("g", b"k", b"v"))
                    west = data_group(cluster.config, "eu-west")
                    south = data_group(cluster.config, "ap-south")
                    with monkeypatch.context() as m:  # to eu-west, stopped before the rehome
                        _fail_calls(m, db, "keyspace.rehome")
                        with pytest.raises(errors.UnavailableError):
                            await db.move_keyspace("g", "eu-west")
                    with monkeypatch.context() as m:  # to ap-south, stopped at once
                        _fail_calls(m, db, "keyspace.fence")
                        with pytest.raises(errors.UnavailableError):
                            await db.move_keyspace("g", "ap-south")
                    assert (await db._call_group(db._meta_group, "keyspace.begin", {
                        "name": "g", "op": "move", "to": "us-east"}))["abandoned"] == [
                            "ap-south", "eu-west"]
                    if then == "move":
                        assert (await db.move_keyspace("g", "us-east")).home == "us-east"
                        assert await db.read("g", b"k") == b"v"
                        assert not (await db.keyspace("g")).abandoned  # settled
                    else:
                        await db.drop_keyspace("g")
                    assert _fence_of(cluster, west, ks.id)[0] == 3
                    assert _fence_of(cluster, south, ks.id)[0] == 3


async def test_a_move_overtaken_cannot_take_back_a_copy_a_newer_move_found_erased():
    # m3 found the copy an earlier move left in eu-west already at level 3 (erasable, from
    # a lower epoch), and left it so without raising its epoch; m2, begun before m3, then
    # fenced it back to level 1 and copied into it. m3 settled (abandoned forgotten), and a
    # client whose cache named eu-west read an overwritten value there, even after a drop.
    async with open_local_cluster(THREE_REGIONS, 1, seed=81) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as m2, \
                cluster.connect("us-east") as m3, cluster.connect("us-east") as stale:
            with trio.fail_after(60):
                ks = await db.create_keyspace("g", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v1"))
                await db.move_keyspace("g", "eu-west")
                await stale.keyspace("g")  # cached: home eu-west
                await db.move_keyspace("g", "us-east")
                west = data_group(cluster.config, "eu-west")
                assert _fence_of(cluster, west, ks.id)[0] == 3
                # m2 (to eu-west) waits before its second fence change (eu-west's), m3 (to
                # ap-south, begun after it) before its copy.
                m2_paused, m2_go = trio.Event(), trio.Event()
                call2, fences = m2._call_group, []

                async def slow2(group, m, payload, **kw):
                    if m == "keyspace.fence":
                        fences.append(group)
                        if len(fences) == 2:
                            m2_paused.set()
                            await m2_go.wait()
                    return await call2(group, m, payload, **kw)

                m2._call_group = slow2
                m3_paused, m3_go = _pause_at(m3, "keyspace.copy", before=True)
                out2: list = []
                out3: list = []
                m2_done = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(functools.partial(
                        _outcome, out2, m2.move_keyspace, "g", "eu-west", done=m2_done))
                    await m2_paused.wait()
                    nursery.start_soon(_outcome, out3, m3.move_keyspace, "g", "ap-south")
                    await m3_paused.wait()
                    m2_go.set()
                    await m2_done.wait()
                    m3_go.set()
                assert isinstance(out2[0], errors.TransactionConflictError)
                assert out2[0].reason == "catalog_changed"
                assert out3[0].home == "ap-south"
                assert _fence_of(cluster, west, ks.id)[0] == 3
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v2"))
                assert await stale.read("g", b"k") == b"v2"
                await db.drop_keyspace("g")
                assert _fence_of(cluster, west, ks.id)[0] == 3


async def test_a_drop_whose_begin_is_sent_twice_does_not_drop_a_keyspace_created_again():
    # The begin of x's drop was applied but its answer lost; meanwhile y joined the drop and
    # ended it, and z created the name again. The client sends a call whose answer was lost
    # again: by name only, the begin began a drop of z's keyspace. It names the id now.
    async with open_local_cluster(("us-east",), 1, seed=71) as cluster:
        async with cluster.connect("us-east") as x, cluster.connect("us-east") as y, \
                cluster.connect("us-east") as z:
            with trio.fail_after(60):
                old = await x.create_keyspace("g")
                paused, go = trio.Event(), trio.Event()
                call_on = x._call_on

                async def lossy(conn, node_id, method, payload, deadline=float("inf")):
                    reply = await call_on(conn, node_id, method, payload, deadline)
                    if method == "keyspace.begin" and not go.is_set():
                        paused.set()
                        await go.wait()
                        raise CallTimeoutError("the answer was lost")
                    return reply

                x._call_on = lossy
                outcome = await _drop_with_the_name_taken_again(x, y, z, old, paused, go)
                assert isinstance(outcome, errors.KeyspaceNotFoundError)  # the one it meant


async def test_a_rollback_lifts_the_old_home_even_after_its_read_fence():
    # The old home's read fence was applied, but its answer lost: the rollback's lift, at
    # the same epoch, was refused as going backwards, and the keyspace stayed unusable.
    async with open_local_cluster(TWO_REGIONS, 1, seed=71) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as w:
            with trio.fail_after(60):
                ks = await db.create_keyspace("g", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("g", b"a", b"1"))
                east = data_group(cluster.config, "us-east")
                call = db._call_group

                async def lossy(group, m, payload, **kw):
                    reply = await call(group, m, payload, **kw)
                    if m == "keyspace.fence" and group == east and payload["level"] == 2:
                        raise errors.UnavailableError("the answer was lost")
                    return reply

                db._call_group = lossy
                with pytest.raises(errors.UnavailableError):
                    await db.move_keyspace("g", "eu-west")
                db._call_group = call
                assert (await w.keyspace("g")).home == "us-east"
                assert _fence_of(cluster, east, ks.id)[0] == 0
                await w.run_transaction(lambda tx: tx.put("g", b"a", b"2"))
                west = data_group(cluster.config, "eu-west")
                assert _fence_of(cluster, west, ks.id)[0] == 3


async def test_a_rollback_that_cannot_fence_off_its_copy_keeps_the_old_home_fenced():
    # A rolled-back move lifted the old home before erasing the copy, and the erase failed:
    # a client whose cache named the new home read the copy's stale value there.
    async with open_local_cluster(TWO_REGIONS, 1, seed=72) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as w, \
                cluster.connect("eu-west") as stale:
            with trio.fail_after(60):
                ks = await db.create_keyspace("g", home_region="eu-west")
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v1"))
                await stale.keyspace("g")  # cached: home eu-west
                await db.move_keyspace("g", "us-east")
                east = data_group(cluster.config, "us-east")
                call = db._call_group

                async def failing(group, m, payload, **kw):
                    if m == "keyspace.fence" and payload["level"] == 2:
                        raise errors.UnavailableError("out of reach")
                    return await call(group, m, payload, **kw)

                db._call_group = failing
                with pytest.raises(errors.UnavailableError):
                    await db.move_keyspace("g", "eu-west")
                db._call_group = call
                assert _fence_of(cluster, east, ks.id)[0] == 1  # not writable: not lifted
                with pytest.raises(errors.TransactionConflictError):
                    async with w.transaction() as tx:
                        await tx.put("g", b"k", b"v2")
                assert await stale.read("g", b"k") == b"v1"
                # A move to where it is ends the rolled-back one: the copy erased, the home
                # writable.
                assert (await w.move_keyspace("g", "us-east")).home == "us-east"
                await w.run_transaction(lambda tx: tx.put("g", b"k", b"v2"))
                assert await stale.read("g", b"k") == b"v2"


async def test_a_move_cancelled_with_its_connection_rolls_back_at_once(monkeypatch):
    # A caller's timeout around both the connection and the move (``with move_on_after():
    # async with connect() as db: await db.move_keyspace()``) cancelled the connection's
    # tasks too: the rollback, shielded, could send nothing and took its whole limit, and
    # the keyspace stayed fenced against writes in its home until another move ended it.
    monkeypatch.setattr(engine.client, "MOVE_ROLLBACK_S", 2.0)
    async with open_local_cluster(TWO_REGIONS, 1, seed=74) as cluster:
        async with cluster.connect("us-east") as w:
            with trio.fail_after(60):
                ks = await w.create_keyspace("g", home_region="us-east")
                await w.run_transaction(lambda tx: tx.put("g", b"k", b"v1"))
                east = data_group(cluster.config, "us-east")
                west = data_group(cluster.config, "eu-west")
                with trio.CancelScope() as timeout:
                    async with cluster.connect("us-east") as db:
                        call = db._call_group

                        async def timed_out_in_the_copy(group, m, payload, **kw):
                            if m == "scan":
                                timeout.cancel()
                                cancelled_at.append(trio.current_time())
                            return await call(group, m, payload, **kw)

                        cancelled_at: list[float] = []
                        db._call_group = timed_out_in_the_copy
                        await db.move_keyspace("g", "eu-west")
                assert timeout.cancelled_caught
                assert trio.current_time() - cancelled_at[0] < engine.client.MOVE_ROLLBACK_S
                assert _fence_of(cluster, east, ks.id)[0] == 0
                assert _fence_of(cluster, west, ks.id)[0] == 3
                assert (await w.keyspace("g")).moving_to == ""
                await w.run_transaction(lambda tx: tx.put("g", b"k", b"v2"), max_attempts=1)
                assert await w.read("g", b"k") == b"v2"


async def test_a_move_cancelled_at_its_catalog_change_leaves_the_keyspace_usable():
    # A caller's timeout that fell while the catalog change was being sent stopped the move
    # there, with no rollback (its outcome unknown): the old home refused reads and writes,
    # the new home writes, until another move ended it. The change and the new home's lift
    # go through now, whatever the caller's timeout.
    async with open_local_cluster(TWO_REGIONS, 1, seed=75) as cluster:
        async with cluster.connect("us-east") as db, cluster.connect("us-east") as w:
            with trio.fail_after(60):
                ks = await db.create_keyspace("g", home_region="us-east")
                await w.run_transaction(lambda tx: tx.put("g", b"k", b"v1"))
                call = db._call_group
                with trio.CancelScope() as timeout:

                    async def timed_out_at_the_rehome(group, m, payload, **kw):
                        if m == "keyspace.rehome":
                            timeout.cancel()
                        return await call(group, m, payload, **kw)

                    db._call_group = timed_out_at_the_rehome
                    await db.move_keyspace("g", "eu-west")
                db._call_group = call
                assert timeout.cancelled_caught
                assert (await db.keyspace("g")).home == "eu-west"
                west = data_group(cluster.config, "eu-west")
                assert _fence_of(cluster, west, ks.id)[0] == 0
                await w.run_transaction(lambda tx: tx.put("g", b"k", b"v2"))
                assert await w.read("g", b"k") == b"v2"


async def test_a_move_whose_old_home_is_cut_off_after_the_catalog_change_still_ends(
        monkeypatch):
    # The old home fences reads off before the catalog change, so its erasure can wait:
    # with its region cut off just after, the new home takes writes at once, and the old
    # copy stays in 'retired' until a later move (or drop) reaches it.
    monkeypatch.setattr(engine.client, "MOVE_ROLLBACK_S", 1.0)
    async with open_local_cluster(THREE_REGIONS, 1, seed=91) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(120):
                ks = await db.create_keyspace("g", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v"))
                east = data_group(cluster.config, "us-east")
                call = db._call_group
                down = {"on": False}

                async def cut(group, m, payload, **kw):
                    if m == "keyspace.rehome":
                        reply = await call(group, m, payload, **kw)
                        down["on"] = True
                        return reply
                    if down["on"] and group == east:
                        raise errors.UnavailableError("us-east is out of reach")
                    return await call(group, m, payload, **kw)

                db._call_group = cut
                moved = await db.move_keyspace("g", "eu-west")
                assert moved.home == "eu-west" and moved.retired == ("us-east",)
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v2"))
                assert _fence_of(cluster, east, ks.id)[0] == 2  # no reads there
                # A move back there, still cut off, fails; it never made its copy there
                # readable, so the keyspace stays writable where it is, and us-east stays
                # only to erase.
                with pytest.raises(errors.UnavailableError):
                    await db.move_keyspace("g", "us-east")
                assert (await db.keyspace("g")).retired == ("us-east",)
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v3"))
                # eu-west's copy, reachable, is erased at once; us-east's waits.
                assert (await db.move_keyspace("g", "ap-south")).retired == ("us-east",)
                db._call_group = call  # back
                assert (await db.move_keyspace("g", "ap-south")).retired == ()
                assert _fence_of(cluster, east, ks.id)[0] == 3
                assert await db.read("g", b"k") == b"v3"


# ------------------------------------------------------------------ create

async def test_many_keyspaces_created_at_once_are_all_created():
    """Creates of different names do not conflict with one another, however many run at once
    (each writes the catalog's next id: the meta group's leader makes them one at a time,
    instead of letting their retries run out)."""
    async with open_local_cluster(("us-east",), 1, seed=61) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                failed: list[BaseException] = []

                async def create(i: int) -> None:
                    try:
                        await db.create_keyspace(f"tenant-{i}")
                    except errors.MeridianError as exc:
                        failed.append(exc)

                async with trio.open_nursery() as nursery:
                    for i in range(150):
                        nursery.start_soon(create, i)
                assert failed == []
                ids = [ks.id for ks in await db.list_keyspaces()]
                assert len(ids) == len(set(ids)) == 150


async def test_a_create_after_the_last_keyspace_id_is_refused_with_a_clear_error():
    """Ids are never reused: once the last one is taken, a create is refused as over a limit
    (not an internal error from packing an id that does not fit its four bytes), and the
    keyspaces that exist, the last one included, keep working."""
    async with open_local_cluster(("us-east",), 1, seed=62) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("first")
                # Only the catalog's own requests change it: set the next id as a long life
                # of creates and drops would have left it.
                (node,) = cluster.nodes.values()
                meta = node.replicas[META_GROUP]
                ts = await meta.snapshot_ts(node.clock.now())
                outcome = await meta.commit(
                    7, ts, [(NEXT_ID_KEY, encode_next_id(engine.group.MAX_KEYSPACE_ID))],
                    [NEXT_ID_KEY], serializable=True)
                assert outcome.committed
                last = await db.create_keyspace("last")
                assert last.id == engine.group.MAX_KEYSPACE_ID
                with pytest.raises(errors.LimitExceededError, match="keyspace ids"):
                    await db.create_keyspace("one-more")
                await db.run_transaction(lambda tx: tx.put("last", b"k", b"v"))
                assert await db.read("last", b"k") == b"v"
                await db.drop_keyspace("last")
                with pytest.raises(errors.LimitExceededError):
                    await db.create_keyspace("last")
                assert [ks.name for ks in await db.list_keyspaces()] == ["first"]


async def test_keyspaces_are_listed_whatever_their_number(monkeypatch):
    """The list is read a page at a time: every record in one answer went over the frame
    limit once there were enough keyspaces (about a hundred thousand at 16 MiB), and the
    list could not be read at all. Here a small frame limit stands for many keyspaces."""
    monkeypatch.setattr(engine.node, "serve_rpc",
                        functools.partial(engine.rpc.serve_rpc, max_frame=4096))
    monkeypatch.setattr(engine.node, "KEYSPACE_LIST_PAGE", 7)
    async with open_local_cluster(("us-east",), 1, seed=63) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                names = [f"tenant-{i:02d}" for i in range(60)]
                for name in names:
                    await db.create_keyspace(name)
                await db.drop_keyspace("tenant-13")  # the page it was on is one short
                await db.drop_keyspace("tenant-59")
                expected = [n for n in names if n not in ("tenant-13", "tenant-59")]
                assert [ks.name for ks in await db.list_keyspaces()] == expected
                with pytest.raises(errors.InvalidArgumentError):
                    await db._call_group(db._meta_group, "keyspace.list", {"after": b"x"})


async def test_a_write_refused_during_a_moves_copy_says_that_a_move_is_under_way():
    """A write during the copy is refused as ``moved`` although the keyspace has not moved
    yet (its lookup still names the old home): the message says that a move is under way,
    rather than only that the keyspace moved."""
    async with open_local_cluster(TWO_REGIONS, 1, seed=64) as cluster:
        async with cluster.connect("us-east") as admin, cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await admin.create_keyspace("g", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"v"))
                copy = admin._copy_keyspace
                copying, go_on = trio.Event(), trio.Event()

                async def held_copy(ks, old, new):
                    copying.set()
                    await go_on.wait()
                    return await copy(ks, old, new)

                admin._copy_keyspace = held_copy
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(admin.move_keyspace, "g", "eu-west")
                    await copying.wait()
                    with pytest.raises(errors.TransactionConflictError) as refused:
                        async with db.transaction() as tx:
                            await tx.put("g", b"k", b"during")
                    assert refused.value.reason == "moved"
                    assert "being moved" in str(refused.value)
                    go_on.set()
                await db.run_transaction(lambda tx: tx.put("g", b"k", b"after"))
                assert await db.read("g", b"k") == b"after"
                assert (await db.keyspace("g")).home == "eu-west"


async def test_a_move_waits_for_the_serializable_reads_prepared_in_the_home_it_leaves():
    """A transaction prepared in the old home holds what it read there -- a key, a scanned
    range -- until it is resolved, and the new home knows nothing of that: it must take no
    write before those locks are released (a write there could change what the transaction
    read before it commits). Here the transaction's coordinator is gone, and the move ends
    only once the transaction has been recovered (aborted) in the old home."""
    from engine.placement import encode_key
    from engine.rpc import connect_rpc

    txn = 4343
    async with open_local_cluster(TWO_REGIONS, 1, seed=61) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                moving = await db.create_keyspace("moving", home_region="us-east")
                staying = await db.create_keyspace("staying", home_region="us-east")
                async with db.transaction() as tx:
                    await tx.put("moving", b"k", b"v0")
                here = data_group(cluster.config, "us-east")
                node = next(n for n in cluster.nodes.values()
                            if here in n.replicas and n.replicas[here].node.is_leader)
                replica = node.replicas[here]
                read_ts = await replica.snapshot_ts()
                read = encode_key(moving.id, b"k")
                async with connect_rpc(cluster.config.node(node.id).client_host,
                                       node.client_port) as conn:
                    await conn.call("prepare", {
                        "group": here, "txn_id": txn, "read_ts": read_ts, "primary": here,
                        "writes": [[encode_key(staying.id, b"x"), b"1"]], "reads": [read],
                        "locks": [read], "serializable": True,
                        "spans": [[encode_key(moving.id, b"a"), encode_key(moving.id, b"z"),
                                   None]]})
                start, end = keyspace_bounds(moving.id)
                assert {i.txn_id for i in replica.sm.locks_in(start, end)} == {txn}
                await db.move_keyspace("moving", "eu-west")
                assert not replica.sm.is_prepared(txn)
                assert replica.sm.locks_in(start, end) == []
