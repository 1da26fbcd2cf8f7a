"""The client library (engine/client.py): a transaction's reads against a model of its
snapshot plus its own writes (limited scans of regional keyspaces included), limits checked
where the caller makes the mistake, a catalog write whose answer was lost, and calls on a
finished transaction.

In-process clusters and a fake node (tests/test_client_faults.py); every wait is bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings

import engine
from engine import client as client_module
from engine import errors
from engine import node as node_module
from engine import placement
from engine.blocking import connect_blocking
from engine.config import Limits
from engine.local import open_local_cluster
from engine.merge import encode_set_add
from engine.mvcc import MAX_TS
from engine.rpc import RemoteError

from clusterthread import ClusterThread
from test_client_faults import GUARD_S, TIMEOUT_S, FakeNode


async def _regional_with_deletes(db, name, keys, deleted):
    """A regional keyspace holding ``keys`` (each key's value is ``v`` + its name), the
    first ``deleted`` of them deleted since: tombstone cells."""
    await db.create_keyspace(name, mode="regional")
    async with db.transaction() as tx:
        for k in keys:
            await tx.put(name, k, b"v" + k)
    async with db.transaction() as tx:
        for k in keys[:deleted]:
            await tx.delete(name, k)


async def test_a_limited_scan_of_a_regional_keyspace_does_not_count_deleted_keys():
    # A regional keyspace keeps a deleted key as a tombstone cell: the group's scan returns
    # it (and counts it toward the limit), the client hides it. A limited scan must still
    # return ``limit`` live keys when there are that many, as a global keyspace's does; and
    # a long run of tombstones takes a few pages (they double), not one per key.
    async with open_local_cluster(("us-east",), 1, seed=21) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                keys = [b"k%d" % i for i in range(6)]
                await _regional_with_deletes(db, "r", keys, 2)
                live = [(k, b"v" + k) for k in keys[2:]]
                async with db.transaction() as tx:
                    assert await tx.scan("r") == live
                    # Committed deletes (tombstones) at the start of the range.
                    assert await tx.scan("r", limit=3) == live[:3]
                    assert await tx.scan("r", limit=1) == live[:1]
                    # The transaction's own deletes, at the start and at the end.
                    await tx.delete("r", b"k2")
                    await tx.delete("r", b"k5")
                    assert await tx.scan("r", limit=2) == live[1:3]
                    assert await tx.scan("r", limit=2, reverse=True) == live[1:3][::-1]
                    assert await tx.scan("r", limit=0) == []
                    await tx.rollback()
                keys = [b"k%03d" % i for i in range(64)]
                await _regional_with_deletes(db, "t", keys, 63)
                async with db.transaction() as tx:
                    pages = []
                    read = tx._read

                    async def counted(group, method, payload):
                        pages.append(payload["limit"])
                        return await read(group, method, payload)

                    tx._read = counted
                    assert await tx.scan("t", limit=1) == [(b"k063", b"vk063")]
                    assert pages == [1, 2, 4, 8, 16, 32, 64], pages


async def test_a_scan_or_read_larger_than_one_rpc_frame_returns_every_key():
    # A node answers a scan a page at a time (at most SCAN_PAGE_BYTES of keys and values, far
    # below the 16 MiB frame limit), and the client reads on: a range holding more than one
    # frame can carry is still read whole, and the node never holds all of it at once.
    big = b"x" * (1 << 20)
    async with open_local_cluster(("us-east",), 1, seed=22) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(60):
                await db.create_keyspace("blobs")
                for lo in range(0, 18, 3):
                    async with db.transaction() as tx:
                        for i in range(lo, lo + 3):
                            await tx.put("blobs", b"b%02d" % i, big)
                want = [b"b%02d" % i for i in range(18)]
                async with db.transaction() as tx:
                    assert [k for k, _ in await tx.scan("blobs")] == want
                    assert [k for k, _ in await tx.scan("blobs", reverse=True)] == want[::-1]
                    assert [k for k, _ in await tx.scan("blobs", limit=7)] == want[:7]
                    # A read of several keys answers a page of values at a time too.
                    assert await tx.get_many("blobs", want) == [big] * len(want)
                    await tx.rollback()


async def test_a_read_of_more_keys_than_one_rpc_frame_can_name_returns_every_value():
    # get_many sent every key in one request: 70,000 keys of the largest size are more than
    # the 16 MiB a node takes in one frame, and the read failed with RecordTooLargeError
    # about the frame. The keys are sent a page at a time, as the values come back.
    async with open_local_cluster(("us-east",), 1, seed=26) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(60):
                await db.create_keyspace("g")
                size = db.limits["max_key_size"] - 4  # the keyspace prefix
                keys = [b"%0*d" % (size, i) for i in range(70_000)]
                async with db.transaction() as tx:
                    await tx.put("g", keys[-1], b"last")
                async with db.transaction() as tx:
                    await tx.put("g", keys[0], b"mine")
                    values = await tx.get_many("g", keys)
                    assert values[0] == b"mine" and values[-1] == b"last"
                    assert values[1:-1] == [None] * (len(keys) - 2)
                    await tx.rollback()


@contextlib.asynccontextmanager
async def _two_homes(seed: int, east: str, west: str):
    """A one-node-per-region cluster of us-east and eu-west, a client in us-east, and a
    keyspace homed in each region (``east``, ``west``)."""
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=seed) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(30):
                await db.create_keyspace(east)
                await db.create_keyspace(west, home_region="eu-west")
            yield cluster, db


async def _commit_losing_the_answer(db, tx, method: str) -> None:
    """Commits ``tx``, giving up (as a caller's cancel scope would) once the first answer to
    ``method`` has come back to the client, before the commit sees it: the request ran, and
    its caller never hears how."""
    call_group = db._call_group

    async def answer_lost(group, called, payload, **kwargs):
        result = await call_group(group, called, payload, **kwargs)
        if called == method:
            scope.cancel()
            await trio.sleep_forever()
        return result

    with trio.CancelScope() as scope:
        db._call_group = answer_lost
        try:
            await tx.commit()
        finally:
            db._call_group = call_group
    assert scope.cancelled_caught


async def test_a_serializable_transaction_may_read_more_keys_than_one_commit_can_name():
    # A serializable commit (or prepare, or refresh) named every key read in the group: after
    # reading 70,000 keys of the largest size (more than 16 MiB of keys, and more than the
    # 65,536 keys a group validates at once) the commit failed with RecordTooLargeError about
    # the RPC frame, after all its work. The read set is sent as ranges covering it instead,
    # in a one-group commit and in a two-phase commit's prepare alike; a key it read that
    # changed since its snapshot is still a conflict.
    async with _two_homes(27, "here", "there") as (_, db):
        with trio.fail_after(60):
            size = db.limits["max_key_size"] - 4  # the keyspace prefix
            keys = [b"%0*d" % (size, i) for i in range(70_000)]
            for writes_in in ("there", "here"):  # one group; two (two-phase commit)
                async with db.transaction() as tx:
                    await tx.put("there", keys[12_345], b"old")
                tx = db.transaction("serializable")
                assert (await tx.get_many("there", keys))[12_345] == b"old"
                await tx.put(writes_in, b"total", b"1")
                await tx.commit()
                assert await db.read(writes_in, b"total") == b"1"
                tx = db.transaction("serializable")
                await tx.get_many("there", keys)
                await db.run_transaction(lambda o: o.put("there", keys[12_345], b"new"))
                await tx.put(writes_in, b"total", b"2")
                with pytest.raises(errors.TransactionConflictError):
                    await tx.commit()
                assert await db.read(writes_in, b"total") == b"1"


async def test_a_two_phase_commit_that_read_almost_a_request_of_keys_commits():
    # 16,700 keys of the largest size read (4 MiB less a little: still sent as keys) and
    # locked by a prepare, whose record then held them all: over a stored value's 4 MiB, the
    # group's store refused it where the entry was applied, which stopped the node. The
    # read set is locked as ranges instead, and the group goes on.
    async with _two_homes(29, "here", "there") as (_, db):
        with trio.fail_after(30):
            size = db.limits["max_key_size"] - 4  # the keyspace prefix
            keys = [b"%0*d" % (size, i) for i in range(16_700)]
            tx = db.transaction("serializable")
            await tx.get_many("there", keys)
            await tx.put("here", b"total", b"1")
            await tx.put("there", b"total", b"1")
            await tx.commit()
            await db.run_transaction(lambda o: o.put("there", b"after", b"1"))
            assert await db.read("there", b"total") == b"1"


async def test_a_two_phase_commit_cancelled_during_prepare_leaves_no_intent_behind():
    # Cancelled (the caller's deadline) after its prepares were applied but before their
    # answers came, the commit aborted only in the groups that had answered: none. The
    # intents it installed blocked every reader of its keys until recovery found them past
    # their deadline (INTENT_TIMEOUT_S). Every group it was sent to is told it aborted.
    async with _two_homes(28, "a", "b") as (cluster, db):
        with trio.fail_after(30):
            tx = db.transaction()
            await tx.put("a", b"k", b"1")
            await tx.put("b", b"k", b"1")
            await _commit_losing_the_answer(db, tx, "prepare")
            await db._drain()  # the abort, sent in the background
            for name in ("a", "b"):
                ks = await db.keyspace(name)
                group = db.group_of(ks)
                (node,) = [n for n in cluster.nodes.values()
                           if group in n.replicas and n.replicas[group].node.is_leader]
                stored = placement.encode_key(ks.id, b"k")
                assert node.replicas[group].intents([stored], MAX_TS) == [], name
                assert await db.read(name, b"k") is None


async def test_reads_of_many_keys_go_a_page_of_keys_at_a_time(monkeypatch):
    # A read named every key it was given (up to 4 MiB of them) and the node checked and read
    # them all in one go, on the event loop every group of the node shares: half a million
    # short keys stalled it for half a second. Requests now name a page of keys, and a node
    # answers a page of them at most (``more``: the client asks again for the rest).
    monkeypatch.setattr(node_module, "SCAN_PAGE_ITEMS", 3)
    requests: list[tuple[int, int]] = []  # (keys named, values answered)
    read = node_module.Node._read

    async def counted(self, p):
        answer = await read(self, p)
        requests.append((len(p["keys"]), len(answer["values"])))
        return answer

    monkeypatch.setattr(node_module.Node, "_read", counted)
    async with open_local_cluster(("us-east",), 1, seed=23) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(60):
                await db.create_keyspace("g")
                keys = [b"k%02d" % i for i in range(20)]
                async with db.transaction() as tx:
                    for k in keys[::2]:
                        await tx.put("g", k, b"v" + k)
                want = [b"v" + k if i % 2 == 0 else None for i, k in enumerate(keys)]
                for page_keys in (1_000, 4):  # the node's page, then the client's
                    monkeypatch.setattr(client_module, "READ_PAGE_KEYS", page_keys)
                    requests.clear()
                    async with db.transaction() as tx:
                        assert await tx.get_many("g", keys) == want
                    assert requests and all(v <= 3 and n <= page_keys for n, v in requests)
                    assert sum(v for _, v in requests) == len(keys)


async def test_scans_read_on_across_pages(monkeypatch):
    # Pages of three keys: limits, reverse scans, the transaction's own writes, regional
    # tombstones and a serializable transaction's validation all span several pages.
    monkeypatch.setattr(node_module, "SCAN_PAGE_ITEMS", 3)
    async with open_local_cluster(("us-east",), 1, seed=23) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(60):
                await db.create_keyspace("g")
                keys = [b"k%02d" % i for i in range(0, 20, 2)]
                async with db.transaction() as tx:
                    for k in keys:
                        await tx.put("g", k, b"v" + k)
                rows = [(k, b"v" + k) for k in keys]
                async with db.transaction() as tx:
                    assert await tx.scan("g") == rows
                    assert await tx.scan("g", reverse=True) == rows[::-1]
                    assert await tx.scan("g", limit=7) == rows[:7]
                    assert await tx.scan("g", b"k03", b"k15", reverse=True, limit=4) \
                        == [r for r in rows if b"k03" <= r[0] < b"k15"][::-1][:4]
                    await tx.put("g", b"k05", b"mine")
                    await tx.delete("g", b"k00")
                    assert await tx.scan("g", limit=3) == [rows[1], rows[2], (b"k05", b"mine")]
                    await tx.rollback()
                # A key inserted since the snapshot into the first page of a scanned range
                # (each page that was cut short is validated over the keys it covered).
                a = db.transaction("serializable")
                assert len(await a.scan("g")) == len(keys)
                await db.run_transaction(lambda tx: tx.put("g", b"k03", b"new"))
                await a.put("g", b"elsewhere", b"1")
                with pytest.raises(errors.TransactionConflictError):
                    await a.commit()
                # A reverse scan that stopped at its limit read only down to its last key: a
                # key written below it is no conflict, one above it is.
                for below, conflict in ((b"k01", False), (b"k19", True)):
                    a = db.transaction("serializable")
                    assert await a.scan("g", reverse=True, limit=1) == [rows[-1]]
                    await db.run_transaction(lambda tx, k=below: tx.put("g", k, b"new"))
                    await a.put("g", b"elsewhere", b"1")
                    if conflict:
                        with pytest.raises(errors.TransactionConflictError):
                            await a.commit()
                    else:
                        await a.commit()
                await _regional_with_deletes(db, "r", keys, 7)
                async with db.transaction() as tx:
                    assert await tx.scan("r", limit=2) == rows[7:9]
                    assert await tx.scan("r") == rows[7:]
                    await tx.rollback()


async def test_a_transaction_may_scan_more_ranges_than_a_group_takes_at_once(monkeypatch):
    # A group takes at most MAX_SPANS scanned ranges in one commit, prepare or refresh. A
    # serializable transaction that scanned more (one scan per customer, say) was refused at
    # commit with an InvalidArgumentError about "spans", which it never passed, after all its
    # work. Its ranges are sent coalesced instead: it commits, and a key inserted since its
    # snapshot into a range it scanned is still a conflict.
    monkeypatch.setattr(node_module, "MAX_SPANS", 4)
    monkeypatch.setattr(client_module, "MAX_SPANS", 4)
    async with open_local_cluster(("us-east",), 1, seed=25) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                customers = [b"c%d/" % i for i in range(10)]
                async with db.transaction() as tx:
                    for c in customers:
                        await tx.put("g", c + b"order", b"1")

                async def scan_each(tx):
                    for c in customers:
                        assert await tx.scan("g", c, c + b"\xff") == [(c + b"order", b"1")]
                    await tx.put("g", b"total", b"%d" % len(customers))

                tx = db.transaction("serializable")
                await scan_each(tx)
                await tx.commit()
                assert await db.read("g", b"total") == b"10"
                tx = db.transaction("serializable")
                await scan_each(tx)
                await db.run_transaction(lambda other: other.put("g", b"c0/late", b"1"))
                with pytest.raises(errors.TransactionConflictError):
                    await tx.commit()


def test_coalesced_ranges_cover_every_range_and_never_join_two_keyspaces(monkeypatch):
    # A group checks whether a scanned range's keyspace moved away by the keyspace the range
    # starts in: a range joined across keyspaces would hide a move of the second one, and a
    # change there would go unseen.
    monkeypatch.setattr(client_module, "MAX_SPANS", 8)
    a, b = (1).to_bytes(4, "big"), (2).to_bytes(4, "big")
    spans = ([[a + bytes([i]), a + bytes([i, 255]), None] for i in range(10)]
             + [[b + bytes([i]), b + bytes([i, 255]), 2] for i in range(5)])
    out = client_module._coalesced(spans)
    assert len(out) <= 4
    assert all(start[:4] == end[:4] for start, end, _ in out)
    assert all(any(o[0] <= start and end <= o[1] for o in out) for start, end, _ in spans)


async def test_key_and_merge_payload_sizes_are_refused_when_written():
    # max_key_size counts the stored key, keyspace prefix included (what the groups check);
    # a merge payload is a value like any other. Both must be refused by put()/merge() with
    # RecordTooLargeError, not accepted and then refused at commit as another error.
    limits = Limits(max_key_size=20, max_value_size=1000)
    async with open_local_cluster(("us-east",), 1, limits=limits, seed=22) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                await db.create_keyspace("s", mode="regional", resolver="add_wins_set")
                tx = db.transaction()
                with pytest.raises(errors.RecordTooLargeError):
                    await tx.put("g", b"k" * 20, b"v")
                with pytest.raises(errors.RecordTooLargeError):
                    await tx.merge("s", b"set", encode_set_add(b"x" * 1000))
                await tx.commit()  # nothing written: nothing refused
                async with db.transaction() as tx:  # the largest key that fits commits
                    await tx.put("g", b"k" * 16, b"v")
                assert await db.read("g", b"k" * 16) == b"v"


async def test_a_key_over_a_lowered_max_key_size_is_still_read_and_can_be_deleted(tmp_path):
    # Limits may be lowered between restarts: the keys written under the old ones stay, and
    # Database.read() and scan() return them. get() held the key it reads to the limit of a
    # write, and refused it (RecordTooLargeError) although the groups serve it. And such a key
    # could not be deleted: the client and the groups held a delete's key to the limit of a
    # put, so the only way to remove it was to raise the limit again.
    async with open_local_cluster(("us-east",), 1, seed=24, directory=str(tmp_path)) as cluster:
        with trio.fail_after(30):
            async with cluster.connect() as db:
                await db.create_keyspace("g")
                await db.create_keyspace("r", mode="regional")
                for ks in ("g", "r"):
                    await db.run_transaction(lambda tx: tx.put(ks, b"k" * 40, b"old"))
            cluster.config = dataclasses.replace(cluster.config,
                                                 limits=Limits(max_key_size=20))
            for node_id in list(cluster.nodes):
                await cluster.stop_node(node_id)
                await cluster.start_node(node_id)
            async with cluster.connect() as db:
                assert await db.read("g", b"k" * 40) == b"old"
                async with db.transaction() as tx:
                    assert await tx.get("g", b"k" * 40) == b"old"
                    assert await tx.get_many("g", [b"k" * 40, b"k" * 41]) == [b"old", None]
                    assert await tx.scan("g") == [(b"k" * 40, b"old")]
                    with pytest.raises(errors.RecordTooLargeError, match="the limit is 16"):
                        await tx.put("g", b"k" * 40, b"new")
                    with pytest.raises(errors.RecordTooLargeError, match="the limit is 16"):
                        await tx.get_for_update("g", b"k" * 40)
                for ks in ("g", "r"):
                    await db.run_transaction(lambda tx: tx.delete(ks, b"k" * 40))
                    assert await db.read(ks, b"k" * 40) is None
                async with db.transaction() as tx:
                    assert await tx.scan("g") == []


async def test_a_limit_error_names_the_key_it_refused():
    # The errors said only "value of 1001 bytes: the limit is 1000": in a transaction of
    # many writes, nothing told which key was over.
    limits = Limits(max_txn_keys=2, max_txn_bytes=1100, max_key_size=20, max_value_size=1000)
    async with open_local_cluster(("us-east",), 1, limits=limits, seed=23) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                await db.create_keyspace("s", mode="regional", resolver="add_wins_set")
                tx = db.transaction()
                with pytest.raises(errors.RecordTooLargeError, match="b'long-key-.*'g'.* 16"):
                    await tx.put("g", b"long-key-" + b"k" * 11, b"v")
                with pytest.raises(errors.RecordTooLargeError, match="b'big'.*'g'.* 1000"):
                    await tx.put("g", b"big", b"v" * 1001)
                with pytest.raises(errors.RecordTooLargeError, match="b'set'.*'s'.* 1000"):
                    await tx.merge("s", b"set", encode_set_add(b"x" * 1000))
                await tx.put("g", b"a", b"v" * 1000)
                with pytest.raises(errors.LimitExceededError, match="1100 bytes.*b'b'"):
                    await tx.put("g", b"b", b"v" * 100)
                await tx.put("g", b"b", b"v")
                with pytest.raises(errors.LimitExceededError, match="2 keys.*b'c'"):
                    await tx.put("g", b"c", b"v")
                await tx.rollback()


async def test_a_keyspace_create_whose_answer_was_lost_is_sent_again_with_its_token(nursery):
    # The node applies the create and never answers (it dies, or is cut off, after the
    # catalog entry committed). The call is sent again with the token it carried, which the
    # node finds in the record it made: the caller gets the keyspace its own call created,
    # neither "already exists" nor AmbiguousCommitError (which no retry loop retries).
    node = FakeNode(nursery)
    tokens: list[bytes] = []

    async def create(p, ctx):
        tokens.append(p["token"])
        if len(tokens) == 1:
            nursery.start_soon(node.restart)  # applied; the connection drops before the answer
            await trio.sleep_forever()
        if p["token"] != tokens[0]:
            raise RemoteError("already_exists", f"keyspace {p['name']!r} already exists")
        return {"id": 7, "name": p["name"], "mode": p["mode"], "home": p["home"]}

    node.handlers["keyspace.create"] = create
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            ks = await db.create_keyspace("orders")
            assert (ks.id, ks.name) == (7, "orders")
            with pytest.raises(errors.KeyspaceExistsError):  # another call: another token
                await db.create_keyspace("orders")
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2]
    assert all(type(t) is bytes and len(t) == 16 for t in tokens)


async def test_every_operation_of_a_finished_transaction_is_refused():
    async with open_local_cluster(("us-east",), 1, seed=23) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                async with db.transaction() as tx:
                    await tx.put("g", b"k", b"v")
                for op in (tx.get("g", b"k"), tx.get_many("g", []), tx.scan("g"),
                           tx.put("g", b"k", b"v"), tx.delete("g", b"k"), tx.commit()):
                    with pytest.raises(errors.TransactionClosedError, match="committed"):
                        await op


async def test_a_commit_cancelled_after_its_request_left_is_of_unknown_outcome():
    # The commit ran, but its caller gave up before the answer: the transaction must not
    # call itself failed (which reads as "nothing was written").
    async with open_local_cluster(("us-east",), 1, seed=36) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                tx = db.transaction()
                await tx.put("g", b"k", b"v")
                await _commit_losing_the_answer(db, tx, "commit")
                with pytest.raises(errors.TransactionClosedError, match="unknown outcome"):
                    await tx.get("g", b"k")
                assert await db.read("g", b"k") == b"v"  # it had committed


async def test_every_operation_on_a_closed_database_says_it_is_closed():
    # A keyspace record cached long enough to be looked up again in the background: after
    # the connection closed, a put raised "RuntimeError: Nursery is closed to new arrivals"
    # (the lookup could not start), and the keyspace stayed marked as being looked up.
    async with open_local_cluster(("us-east",), 1, seed=35) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("g")
                tx = db.transaction()
        db._keyspace_fetched["g"] -= client_module.KEYSPACE_CACHE_S * 0.75
        for op in (tx.put("g", b"k", b"v"), tx.get("g", b"k"), tx.scan("g"),
                   db.read("g", b"k"), db.keyspace("g"),
                   db.run_transaction(lambda t: t.put("g", b"k", b"v"))):
            with pytest.raises(errors.InvalidArgumentError, match="closed"):
                await op


async def test_a_long_lived_handle_forgets_the_keyspaces_that_were_dropped():
    # The time each keyspace record was looked up was kept after the record was forgotten:
    # a handle that creates and drops keyspaces of new names (one per job, say) grew by one
    # entry per name, for as long as it lived.
    async with open_local_cluster(("us-east",), 1, seed=36) as cluster:
        async with cluster.connect() as db, cluster.connect() as other:
            with trio.fail_after(30):
                await db.create_keyspace("kept")
                for i in range(5):
                    await db.create_keyspace(f"job{i}")
                    await db.drop_keyspace(f"job{i}")
                # Dropped through another handle: found gone on the next lookup.
                await db.create_keyspace("elsewhere")
                await other.drop_keyspace("elsewhere")
                db._keyspace_fetched["elsewhere"] -= client_module.KEYSPACE_CACHE_S * 2
                with pytest.raises(errors.KeyspaceNotFoundError):
                    await db.keyspace("elsewhere")
                assert set(db._keyspaces) == {"kept"}
                assert set(db._keyspace_fetched) == {"kept"}
                assert not db._keyspace_unreachable


# ---------------------------------------------------------------------- read your writes, model

KEYS = [b"k%d" % i for i in range(8)]


@pytest.fixture(scope="module")
def model_db():
    """A single-node cluster in a thread, a global keyspace ``g`` and a regional (lww) one
    ``r`` holding the same committed state, some of it deleted (tombstones in ``r``)."""
    cluster = ClusterThread(seed=24)
    try:
        db = connect_blocking(cluster.start())
        try:
            db.create_keyspace("g")
            db.create_keyspace("r", mode="regional")
            base = {k: b"base-" + k for i, k in enumerate(KEYS) if i % 3 != 1}
            for ks in ("g", "r"):
                with db.transaction() as tx:
                    for k, v in base.items():
                        tx.put(ks, k, v)
                with db.transaction() as tx:
                    tx.delete(ks, b"k0")
                    tx.delete(ks, b"k6")
            del base[b"k0"], base[b"k6"]
            yield db, base
        finally:
            db.close()
    finally:
        cluster.stop()


_bound = st.one_of(st.none(), st.sampled_from([*KEYS, b"k", b"k9"]))
_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("get"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("get_for_update"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("scan"), st.tuples(_bound, _bound, st.sampled_from([None, 0, 1, 2, 3, 5]),
                                         st.booleans()), st.none()),
), max_size=12)


def _model_scan(model: dict, start, end, limit, reverse) -> list:
    """What a scan of ``model`` (key -> value) returns: ``[start, end)`` (None: unbounded), in
    order (``reverse``: descending), at most ``limit`` pairs (None: all)."""
    want = sorted((k, v) for k, v in model.items()
                  if (start is None or k >= start) and (end is None or k < end))
    if reverse:
        want.reverse()
    return want if limit is None else want[:limit]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, keyspace=st.sampled_from(["g", "r"]))
def test_reads_see_the_snapshot_plus_the_transactions_own_writes(model_db, ops, keyspace):
    db, base = model_db
    model = dict(base)
    tx = db.transaction()
    try:
        for op, arg, value in ops:
            if op == "get_for_update" and keyspace == "r":
                op = "get"  # regional keyspaces have no locks
            if op == "put":
                tx.put(keyspace, arg, value)
                model[arg] = value
            elif op == "delete":
                tx.delete(keyspace, arg)
                model.pop(arg, None)
            elif op in ("get", "get_for_update"):
                assert getattr(tx, op)(keyspace, arg) == model.get(arg), (op, arg)
            else:
                start, end, limit, reverse = arg
                got = tx.scan(keyspace, start or b"", end, limit=limit, reverse=reverse)
                assert got == _model_scan(model, *arg), arg
    finally:
        tx.rollback()


def test_scan_bounds_are_checked_in_the_callers_terms(model_db):
    # A bound that was not bytes or str but false (0, [], False) scanned from the start of
    # the keyspace, and one longer than a bound may be was refused by the node in terms of
    # its stored keys ("start is 304 bytes, over the longest key (250) plus one" for a
    # 300-byte start): the caller's keys are at most MAX_USER_KEY_SIZE bytes.
    db, base = model_db
    longest = placement.MAX_USER_KEY_SIZE
    with db.transaction() as tx:
        for bad in (0, [], False, 1.5):
            with pytest.raises(errors.InvalidArgumentError, match="start must be bytes or str"):
                tx.scan("g", bad)
            with pytest.raises(errors.InvalidArgumentError, match="end must be bytes or str"):
                tx.scan("g", b"", bad)
        for name, args in (("start", (b"k" * 300,)), ("end", (b"", b"k" * 300))):
            with pytest.raises(errors.InvalidArgumentError,
                               match=f"{name} is 300 bytes: a bound is at most {longest + 1}"):
                tx.scan("g", *args, reverse=True)
        # The longest bound there is (just past the longest key), and None for the start.
        assert tx.scan("g", b"\xff" * (longest + 1)) == []
        assert tx.scan("g", None, b"k" * (longest + 1)) == sorted(base.items())
        tx.rollback()


async def test_run_transaction_does_not_commit_again_a_transaction_its_function_ended():
    # A debit that commits at its end: run_transaction used to commit it again and raise
    # TransactionClosedError ("is committed") after the debit had committed. A caller that
    # takes the error at its word and runs the debit again debits twice.
    async with open_local_cluster(("us-east",), 1, seed=31) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("bank")
                async with db.transaction() as tx:
                    await tx.put("bank", b"alice", b"100")
                runs = 0

                async def debit(tx):
                    nonlocal runs
                    runs += 1
                    balance = int(await tx.get("bank", b"alice"))
                    await tx.put("bank", b"alice", b"%d" % (balance - 10))
                    await tx.commit()
                    return tx.commit_ts

                commit_ts = await db.run_transaction(debit)
                assert runs == 1 and commit_ts > 0
                assert await db.read("bank", b"alice") == b"90"

                async def look_only(tx):
                    await tx.put("bank", b"alice", b"0")
                    await tx.rollback()
                    return "rolled back"

                assert await db.run_transaction(look_only) == "rolled back"
                assert await db.read("bank", b"alice") == b"90"


async def test_run_transaction_refuses_a_function_that_returns_an_operation_not_awaited():
    # ``return tx.put(...)`` without ``await``: the put never ran, yet run_transaction
    # committed the rest of the transfer -- the debit without the credit -- and handed back
    # the coroutine (awaiting it then found the transaction committed). The blocking API
    # refuses such a result; so must this one, before anything is committed.
    async with open_local_cluster(("us-east",), 1, seed=32) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("bank")
                async with db.transaction() as tx:
                    await tx.put("bank", b"alice", b"100")
                    await tx.put("bank", b"bob", b"0")

                async def transfer(tx):
                    a = int(await tx.get("bank", b"alice"))
                    b = int(await tx.get("bank", b"bob"))
                    await tx.put("bank", b"alice", b"%d" % (a - 10))
                    return tx.put("bank", b"bob", b"%d" % (b + 10))  # not awaited

                with pytest.raises(errors.InvalidArgumentError, match="awaitable"):
                    await db.run_transaction(transfer)
                assert await db.read("bank", b"alice") == b"100"
                assert await db.read("bank", b"bob") == b"0"


async def test_run_transaction_does_not_call_committed_what_an_operation_not_awaited_left():
    # The function committed the transaction itself, then returned an operation not
    # awaited: the refusal said "the transaction was rolled back" of a committed deposit,
    # and a caller taking it at its word deposits twice.
    async with open_local_cluster(("us-east",), 1, seed=35) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("bank")

                async def deposit(tx):
                    await tx.put("bank", b"alice", b"100")
                    await tx.commit()
                    return tx.get("bank", b"alice")  # not awaited

                with pytest.raises(errors.InvalidArgumentError, match="awaitable") as caught:
                    await db.run_transaction(deposit)
                assert "rolled back" not in str(caught.value)
                assert "committed" in str(caught.value)
                assert await db.read("bank", b"alice") == b"100"


async def test_run_transaction_refuses_a_plain_function():
    # A plain function (the blocking API's kind) failed with "TypeError: object NoneType
    # can't be used in 'await' expression", an error about code the caller never wrote.
    async with open_local_cluster(("us-east",), 1, seed=34) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("bank")

                def deposit(tx):
                    tx.put("bank", b"alice", b"100").close()  # what it cannot await
                    return "done"

                with pytest.raises(errors.InvalidArgumentError, match="async function"):
                    await db.run_transaction(deposit)
                assert await db.read("bank", b"alice") is None

                async def deposit_async(tx, amount):
                    await tx.put("bank", b"alice", amount)
                    return "done"

                # A plain callable that returns an awaitable is an async function's equal.
                assert await db.run_transaction(lambda tx: deposit_async(tx, b"5")) == "done"
                assert await db.read("bank", b"alice") == b"5"


async def test_run_transaction_refuses_a_bad_retry_policy_before_running():
    # A negative or NaN delay went unnoticed until the first conflict, when the backoff's
    # sleep raised ValueError in place of the conflict, without running the function again;
    # a base delay above the maximum slept longer than the maximum.
    async with open_local_cluster(("us-east",), 1, seed=33) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                runs = 0

                async def loses_once(tx):
                    nonlocal runs
                    runs += 1
                    if runs == 1:
                        raise errors.TransactionConflictError("lost", "write_write")

                for policy in ({"base_delay_s": -0.1}, {"base_delay_s": math.nan},
                               {"max_delay_s": math.inf}, {"base_delay_s": 1.0, "max_delay_s": 0.1},
                               {"max_attempts": 2.5}, {"max_attempts": True}):
                    with pytest.raises(errors.InvalidArgumentError):
                        await db.run_transaction(loses_once, **policy)
                    assert runs == 0, policy
                await db.run_transaction(loses_once, base_delay_s=0.0, max_delay_s=0.0)
                assert runs == 2



@pytest.mark.parametrize("text, reason", [
    ("[::1", 'expected "host:port"'),
    ("::1", "brackets"),
    ("[::1]:", 'expected "host:port"'),
    ("127.0.0.1:+7100", 'expected "host:port"'),
    ("127.0.0.1: 7100", 'expected "host:port"'),
    ("127.0.0.1:7_100", 'expected "host:port"'),
    ("127.0.0.1:99999", "1..65535"),
    ("127.0.0.1:" + "9" * 5000, "1..65535"),
    ("a b:7100", "host name or IP address"),
], ids=lambda v: v[:20])
def test_node_addresses_are_parsed_as_the_configuration_parses_them(text, reason):
    with pytest.raises(errors.InvalidArgumentError) as caught:
        client_module._parse_address(text)
    assert str(caught.value).startswith("bad node address: ") and reason in str(caught.value)
    assert len(str(caught.value)) < 200
    assert client_module._parse_address("[::1]:7100") == ("::1", 7100)
    assert client_module._parse_address("localhost:7100") == ("localhost", 7100)


_LONGEST = placement.MAX_USER_KEY_SIZE
EDGE_KEYS = [b"\x00", b"a", b"a\x00", b"b", b"\xff", b"a" * _LONGEST, b"\xff" * _LONGEST]


@pytest.fixture(scope="module")
def edge_db():
    """A single-node cluster in a thread with three global keyspaces holding the same keys
    (the empty-ish, the longest, some with zero bytes), values up to a few hundred bytes;
    ``b``, the one scanned, lacks every third key and had one deleted."""
    cluster = ClusterThread(seed=25)
    try:
        db = connect_blocking(cluster.start())
        try:
            base = {}
            for ks in ("a", "b", "c"):
                db.create_keyspace(ks)
            with db.transaction() as tx:
                for i, k in enumerate(EDGE_KEYS):
                    for ks in ("a", "b", "c"):
                        if ks != "b" or i % 3 != 1:
                            tx.put(ks, k, ks.encode() * (60 * i))
                    if i % 3 != 1:
                        base[k] = b"b" * (60 * i)
            with db.transaction() as tx:
                tx.delete("b", b"b")
            del base[b"b"]
            yield db, base
        finally:
            db.close()
    finally:
        cluster.stop()


_edge_bound = st.sampled_from([None, b"", *EDGE_KEYS, b"\xff" * (_LONGEST + 1),
                               b"a" * _LONGEST + b"\x00"])


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(EDGE_KEYS), st.binary(max_size=300)),
    st.tuples(st.just("delete"), st.sampled_from(EDGE_KEYS), st.none()),
    st.tuples(st.just("scan"), st.tuples(_edge_bound, _edge_bound,
                                         st.sampled_from([None, 0, 1, 2, 5]), st.booleans()),
              st.none()),
), max_size=10))
# The transaction's deletes at either end of a limited scan must not use up its limit.
@example(ops=[("delete", b"\x00", None), ("scan", (None, None, 1, False), None),
              ("delete", EDGE_KEYS[-1], None), ("scan", (None, None, 1, True), None)])
@example(ops=[("scan", (b"a", b"\xff", 2, True), None), ("scan", (b"a", b"a", None, True), None),
              ("put", b"b", b"mine"), ("scan", (b"a\x00", b"\xff", 1, True), None)])
def test_scans_at_the_edges_match_the_model(edge_db, monkeypatch, ops):
    # Pages of at most three pairs or 400 bytes (a value of a few hundred bytes ends one),
    # keys of the longest size (``last + b"\x00"`` is then the longest bound), the longest
    # bounds, and the same keys in the keyspaces on either side, which must never show.
    monkeypatch.setattr(node_module, "SCAN_PAGE_ITEMS", 3)
    monkeypatch.setattr(node_module, "SCAN_PAGE_BYTES", 400)
    db, base = edge_db
    model = dict(base)
    tx = db.transaction()
    try:
        for op, arg, value in ops:
            if op == "put":
                tx.put("b", arg, value)
                model[arg] = value
            elif op == "delete":
                tx.delete("b", arg)
                model.pop(arg, None)
            else:
                start, end, limit, reverse = arg
                got = tx.scan("b", start, end, limit=limit, reverse=reverse)
                assert got == _model_scan(model, *arg), arg
    finally:
        tx.rollback()
