"""A node's catalog steps of keyspace moves and drops against requests out of their order:
each step checks that the move or drop it ends is the one under way, and refuses otherwise,
leaving the keyspace where it was, with its data (ARCH §4).

The requests go straight to the meta group's leader over ``engine.rpc``, as a buggy client
or one that skipped a step would send them. In-process clusters; every wait is bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import pytest
import trio

from engine.local import open_local_cluster
from engine.placement import META_GROUP, data_group, keyspace_bounds
from engine.rpc import RemoteError
from test_node_misuse import client_of, leader_of

GUARD_S = 30  # only ever reached by a bug that hangs


async def test_a_drop_that_was_not_begun_does_not_delete_the_record():
    # keyspace.drop deleted any record at the id and epoch it named, dropping or not: the
    # keyspace's groups were never fenced, so its data stayed there for good (nothing erases
    # an unfenced keyspace) and clients that had cached the record went on writing into it.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        gid = data_group(cluster.config, "us-east")
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                ks = await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"1"))
                with pytest.raises(RemoteError, match="not being dropped") as refused:
                    await conn.call("keyspace.drop", {"name": "k", "id": ks.id,
                                                      "epoch": ks.epoch})
                assert refused.value.code == "invalid_argument"
                assert [k.name for k in await db.list_keyspaces()] == ["k"]
                assert await db.read("k", b"a") == b"1"
                # A drop begun and ended as the client does still works.
                await db.drop_keyspace("k")
                assert await db.list_keyspaces() == []
                fence = (await leader_of(cluster, gid)).replicas[gid].sm.fence(
                    keyspace_bounds(ks.id)[0])
                assert fence[0] == 3


async def test_a_rehome_to_a_region_no_move_is_copying_to_is_refused():
    # keyspace.rehome pointed the record at any region named, at the epoch of the keyspace:
    # one no move had copied the keyspace to made it read as empty there, and its data, left
    # in the home it had (now listed as retired), was erased by the next move or drop.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                ks = await db.create_keyspace("k", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"1"))
                begun = await conn.call("keyspace.begin", {"name": "k", "op": "move",
                                                           "to": "us-east", "id": ks.id})
                for epoch in (ks.epoch, begun["epoch"]):  # none begun, one to elsewhere
                    with pytest.raises(RemoteError) as refused:
                        await conn.call("keyspace.rehome", {"name": "k", "id": ks.id,
                                                            "epoch": epoch, "home": "eu-west"})
                    assert refused.value.code in ("invalid_argument", "conflict")
                assert refused.value.code == "invalid_argument"
                assert "not moving to 'eu-west'" in refused.value.message
                assert (await db.keyspace("k")).home == "us-east"
                # The move, run as the client does, ends it (the fences it left are lifted).
                assert (await db.move_keyspace("k", "eu-west")).home == "eu-west"
                assert await db.read("k", b"a") == b"1"


async def test_a_scan_that_runs_past_its_keyspace_is_refused():
    # A scan checked the fence of the keyspace its start is in only: from a live keyspace
    # on into the next, it answered the keys of one dropped there (fenced, not erased yet).
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        gid = data_group(cluster.config, "us-east")
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db:
                live = await db.create_keyspace("live")
                dropped = await db.create_keyspace("dropped")
                await db.run_transaction(lambda tx: tx.put("live", b"k", b"live's"))
                await db.run_transaction(lambda tx: tx.put("dropped", b"k", b"dropped's"))
                await db.drop_keyspace("dropped")
                node = await leader_of(cluster, gid)
                lo, hi = keyspace_bounds(live.id)
                async with client_of(cluster, node) as conn:
                    for end in (None, keyspace_bounds(dropped.id)[1], hi + b"\x00"):
                        with pytest.raises(RemoteError, match="runs past") as refused:
                            await conn.call("scan", {"group": gid, "start": lo, "end": end})
                        assert refused.value.code == "invalid_argument"
                    for start in (b"", lo[:2]):  # no keyspace's start
                        with pytest.raises(RemoteError, match="runs past"):
                            await conn.call("scan", {"group": gid, "start": start, "end": hi})
                    within = await conn.call("scan", {"group": gid, "start": lo, "end": hi,
                                                      "reverse": True})
                    assert [v for _, v in within["items"]] == [b"live's"]
                assert await db.run_transaction(lambda tx: tx.scan("live")) == [(b"k", b"live's")]


async def test_a_create_sent_again_with_its_token_answers_the_keyspace_it_made():
    # The client sends each create with a token, and sends it again when the answer was
    # lost: the same token finds the record its first sending made and is answered with it.
    # Any other token, or none, or the same once a drop has begun, is told the name is taken.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                create = {"name": "k", "mode": "global", "home": "us-east", "token": b"t" * 16}
                first = await conn.call("keyspace.create", create)
                assert await conn.call("keyspace.create", create) == first
                # Only the catalog keeps the token: no other caller learns it.
                assert "create_token" not in first
                listed = await conn.call("keyspace.list", {})
                assert [set(r) & {"create_token"} for r in listed["keyspaces"]] == [set()]
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"1"))
                for other in ({**create, "token": b"u" * 16}, {"name": "k"}):
                    with pytest.raises(RemoteError, match="already exists$") as refused:
                        await conn.call("keyspace.create", other)
                    assert refused.value.code == "already_exists"
                for bad in (b"t" * 33, "t", 16):
                    with pytest.raises(RemoteError, match="token must be") as refused:
                        await conn.call("keyspace.create", {**create, "token": bad})
                    assert refused.value.code == "invalid_argument"
                assert [k.id for k in await db.list_keyspaces()] == [first["id"]]
                assert await db.read("k", b"a") == b"1"
                await conn.call("keyspace.begin", {"name": "k", "op": "drop", "id": first["id"]})
                with pytest.raises(RemoteError, match="being dropped"):
                    await conn.call("keyspace.create", create)
