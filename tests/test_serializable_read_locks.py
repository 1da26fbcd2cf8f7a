"""Serializable transactions conflict only through writes (ARCH §5): what one reads, others
may read too. Two that read the same keys and write different ones both commit, in one group
and across two; reads never abort a writer that wrote nothing they read; a key taken with
``get_for_update`` is written, and conflicts as a write does."""

from __future__ import annotations

import pytest
import trio

from engine import errors
from engine.local import open_local_cluster
from test_cluster import TWO_REGIONS, second_commit


async def _commit_together(*txs) -> list[str]:
    """Commits the transactions concurrently: what became of each ("committed", or its
    conflict's reason)."""
    outcomes = [""] * len(txs)

    async def commit(i, tx):
        try:
            await tx.commit()
        except errors.TransactionConflictError as exc:
            outcomes[i] = exc.reason
        else:
            outcomes[i] = "committed"

    async with trio.open_nursery() as nursery:
        for i, tx in enumerate(txs):
            nursery.start_soon(commit, i, tx)
    return outcomes


async def _readers_writing_apart(db, isolation: str, write_ks: str) -> list[str]:
    """Two transactions read ``east/shared`` and ``east/other``, then each writes its own key
    of ``write_ks`` (in the other region: two-phase commit when serializable)."""
    a, b = db.transaction(isolation), db.transaction(isolation)
    for name, tx in ((b"a", a), (b"b", b)):
        assert await tx.get("east", b"shared") == b"0"
        assert await tx.get("east", b"other") == b"0"
        await tx.put(write_ks, b"by-" + name, b"1")
    return await _commit_together(a, b)


@pytest.mark.parametrize("isolation", ["serializable", "snapshot"])
async def test_transactions_reading_the_same_keys_and_writing_apart_both_commit(isolation):
    async with open_local_cluster(TWO_REGIONS, 1, seed=41) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("east", home_region="us-east")
                await db.create_keyspace("west", home_region="eu-west")
                async with db.transaction() as tx:
                    await tx.put("east", b"shared", b"0")
                    await tx.put("east", b"other", b"0")
                for _ in range(3):
                    # In one group (one-phase commits), then across two (two-phase).
                    assert await _readers_writing_apart(db, isolation, "east") == \
                        ["committed", "committed"]
                    assert await _readers_writing_apart(db, isolation, "west") == \
                        ["committed", "committed"]


async def test_a_serializable_writer_of_a_read_key_still_conflicts():
    async with open_local_cluster(TWO_REGIONS, 1, seed=42) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("east", home_region="us-east")
                await db.create_keyspace("west", home_region="eu-west")
                async with db.transaction() as tx:
                    await tx.put("east", b"x", b"0")
                    await tx.put("east", b"y", b"0")
                # Write skew across two groups: each reads both keys and writes one.
                a, b = (db.transaction("serializable") for _ in range(2))
                for tx, key in ((a, b"x"), (b, b"y")):
                    assert await tx.get("east", b"x") == await tx.get("east", b"y") == b"0"
                    await tx.put("east", key, b"1")
                    await tx.put("west", b"log-" + key, b"1")
                assert await second_commit(a, b) in ("read_write", "intent")


async def test_get_for_update_conflicts_as_a_write_under_snapshot_isolation():
    async with open_local_cluster(("us-east",), 1, seed=43) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("ks", home_region="us-east")
                async with db.transaction() as tx:
                    await tx.put("ks", b"k", b"0")
                a, b = db.transaction(), db.transaction()
                for tx, key in ((a, b"a"), (b, b"b")):
                    assert await tx.get_for_update("ks", b"k") == b"0"
                    await tx.put("ks", key, b"1")
                assert await second_commit(a, b) == "write_write"
                # A plain read of it does not: reads never conflict with reads.
                c, d = db.transaction(), db.transaction()
                for tx, key in ((c, b"c"), (d, b"d")):
                    assert await tx.get("ks", b"k") == b"0"
                    await tx.put("ks", key, b"1")
                assert await second_commit(c, d) == "committed"
