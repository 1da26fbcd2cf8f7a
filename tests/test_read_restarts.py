"""A transaction's reads in a group it meets after its snapshot was fixed: the uncertainty
window a first read there looks into, and where its snapshot goes when it finds a commit
there (engine/client.py, Transaction._read; engine/node.py, _read_ts)."""

from __future__ import annotations

import trio

import engine.node
from engine.local import open_local_cluster
from engine.placement import data_group, encode_key

TWO_REGIONS = ("us-east", "eu-west")


async def test_a_snapshot_moved_past_a_groups_window_is_not_given_a_new_window():
    # A transaction read "e", then met a commit on "w/k" in its window in the other group:
    # its snapshot moved up to that group's snapshot, which holds every commit there that
    # may precede the transaction. The read asked again for a new snapshot of the group,
    # with a new window reaching to it: a key written more often than a snapshot move
    # takes found a commit in every window, and the read failed after moving its snapshot
    # MAX_SNAPSHOT_MOVES times, on every attempt.
    async with open_local_cluster(TWO_REGIONS, 1, seed=151) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(30):
                await east.create_keyspace("e", home_region="us-east")
                await east.create_keyspace("w", home_region="eu-west")
                await east.run_transaction(lambda tx: tx.put("w", b"k", b"0"))
                tx = east.transaction()
                assert await tx.get("e", b"a") is None
                writes = 0
                move = tx._move_snapshot

                async def moved_by_a_busy_writer(ts):
                    # The key is written again while the snapshot moves.
                    nonlocal writes
                    await move(ts)
                    writes += 1
                    await east.run_transaction(lambda t: t.put("w", b"k", b"%d" % writes))

                tx._move_snapshot = moved_by_a_busy_writer
                # A commit in the window of the transaction's first read in eu-west.
                await east.run_transaction(lambda t: t.put("w", b"k", b"1"))
                writes = 1
                assert await tx.get("w", b"k") == b"1"
                assert writes == 2  # one move; the write during it is after the snapshot
                assert await tx.get("w", b"k") == b"1"
                await tx.rollback()


async def test_a_read_that_waited_for_a_commit_in_its_window_still_sees_the_window(monkeypatch):
    # The first read in eu-west waits for a pending transaction on "x", which commits inside
    # the read's window, below a commit on "y" that may precede the transaction too: the
    # snapshot must move past both, to the window's end, not just to the commit waited for.
    monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 3600.0)
    async with open_local_cluster(TWO_REGIONS, 1, seed=152) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(30):
                await east.create_keyspace("e", home_region="us-east")
                await east.create_keyspace("w", home_region="eu-west")
                group = data_group(cluster.config, "eu-west")
                x = encode_key((await east.keyspace("w")).id, b"x")
                tx = east.transaction()
                assert await tx.get("e", b"a") is None
                prepared = await east._call_group(group, "prepare", {
                    "group": group, "txn_id": 0x77, "read_ts": tx.read_ts,
                    "writes": [[x, b"new"]], "primary": group}, commit=True)
                await east.run_transaction(lambda t: t.put("w", b"y", b"new"))
                waiting = trio.Event()
                wait_intents = engine.node.Node._wait_intents

                async def noticed(self, replica, ts, find, **kw):
                    def found():
                        intents = find()
                        if intents:
                            waiting.set()
                        return intents
                    await wait_intents(self, replica, ts, found, **kw)

                monkeypatch.setattr(engine.node.Node, "_wait_intents", noticed)
                values = []
                async with trio.open_nursery() as nursery:
                    async def read():
                        values.extend(await tx.get_many("w", [b"x", b"y"]))
                    nursery.start_soon(read)
                    await waiting.wait()
                    await east._call_group(group, "decide", {
                        "group": group, "txn_id": 0x77, "commit_ts": prepared["ts"],
                        "since": prepared["ts"], "participants": [group]}, commit=True)
                assert values == [b"new", b"new"]
                await tx.rollback()
