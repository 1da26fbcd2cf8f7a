"""A node's server side against requests that its client library would never send but a buggy
or hostile client can: each is refused with a clear error, and the group goes on serving.

The requests go straight to a node over ``engine.rpc`` (the client library would refuse most of
them before sending). In-process clusters; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import pytest
import trio

import engine.node
import engine.replica
from engine.config import ConfigError, Limits, parse_node_config
from engine.local import open_local_cluster
from engine.mvcc import MAX_TS
from engine.placement import META_GROUP, data_group, encode_key
from engine.rpc import RemoteError, connect_rpc

KEY = b"\x00\x00\x07\x77key"  # a key of no keyspace: the server checks no more than a prefix
OTHER = b"\x00\x00\x07\x77other"
GUARD_S = 30  # only ever reached by a bug that hangs


async def leader_of(cluster, gid):
    """The node leading ``gid``, once it serves: a leader elected before any peer has
    measured its clock refuses requests (clock_offset) until one has, and the raw calls of
    these tests do not retry."""
    with trio.fail_after(GUARD_S):
        while True:
            for node in cluster.nodes.values():
                replica = node.replicas.get(gid)
                if (replica is not None and replica.node.is_leader
                        and node._clock_problem is None):
                    return node
            await trio.sleep(0.02)


def client_of(cluster, node):
    return connect_rpc(cluster.config.node(node.id).client_host, node.client_port)


@pytest.mark.parametrize("variant", ["resolver", "plain", "remote", "remote-prev", "app"])
async def test_a_regional_write_that_cannot_merge_is_refused_and_the_group_goes_on(
        variant, tmp_path):
    # Each of these used to pass every check, be committed, and then raise while applied:
    # every replica of the group stopped on it, and again on every restart.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=1,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)
        if variant == "resolver":  # a cell built by one resolver, merged by another
            first = ("commit", {"group": gid, "txn_id": 1, "read_ts": 0, "writes": [],
                                "merges": [[KEY, "counter", b"1"]]})
            bad = ("commit", {"group": gid, "txn_id": 2, "read_ts": 0, "writes": [],
                              "merges": [[KEY, "lww", b"x"]]})
        elif variant == "plain":  # a regional write to a key holding a plain value
            first = ("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                "writes": [[KEY, b"plain"]]})
            bad = ("commit", {"group": gid, "txn_id": 2, "read_ts": 0, "writes": [],
                              "merges": [[KEY, "lww", b"x"]]})
        elif variant == "remote":  # a shipped counter write whose payload is no number
            first = None
            bad = ("remote.apply", {"group": gid, "origin": other, "after": 0, "up_to": 10,
                                    "writes": [[KEY, "counter", b"not-a-number", 5, "eu-west",
                                                0, ""]]})
        elif variant == "remote-prev":  # a shipped write whose prev names a timestamp but no region
            first = None
            bad = ("remote.apply", {"group": gid, "origin": other, "after": 0, "up_to": 10,
                                    "writes": [[KEY, "lww", b"x", 5, "eu-west", 3, ""]]})
        else:  # a write naming an application resolver that no node has
            first = None
            bad = ("commit", {"group": gid, "txn_id": 2, "read_ts": 0, "writes": [],
                              "merges": [[KEY, "app:nowhere", b"x"]]})
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                if first is not None:
                    await conn.call(*first)
                with pytest.raises(RemoteError) as refused:
                    await conn.call(*bad)
                assert refused.value.code == "invalid_argument"
                reply = await conn.call("read", {"group": gid, "keys": [KEY]})
                assert reply["values"] == [None] or not variant.startswith("remote")
                # The group still commits.
                await conn.call("commit", {"group": gid, "txn_id": 3, "read_ts": 0,
                                           "writes": [[KEY + b"2", b"ok"]]})


@pytest.mark.parametrize("method,payload", [
    ("read", {"keys": [b"zz"], "ts": MAX_TS}),
    ("read", {"keys": [b"zz"], "ts": 0, "min_ts": MAX_TS}),
    ("read", {"keys": [b"zz"], "ts": 1, "until": MAX_TS}),
    ("resolve", {"txn_id": 12345, "commit_ts": MAX_TS}),
])
async def test_a_timestamp_from_the_far_future_is_refused(method, payload):
    # A read closes the group's time up to the timestamp it names, a resolution up to its
    # commit timestamp: at MAX_TS no transaction that reads could ever commit there again.
    async with open_local_cluster(("us-east",), 1, seed=1) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(GUARD_S):
                await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"x", b"1"))
                gid = data_group(cluster.config, "us-east")
                node = await leader_of(cluster, gid)
                async with client_of(cluster, node) as conn:
                    with pytest.raises(RemoteError, match="ahead of node") as refused:
                        await conn.call(method, {"group": gid, **payload})
                    assert refused.value.code == "invalid_argument"
                assert node.replicas[gid].closed_ts < MAX_TS // 2

                async def increment(tx):
                    await tx.put("k", b"x", await tx.get("k", b"x") + b"+")

                await db.run_transaction(increment, max_attempts=3)
                assert await db.read("k", b"x") == b"1+"


@pytest.mark.parametrize("method", ["read", "scan"])
async def test_a_read_during_which_its_keyspace_is_dropped_is_refused(method, monkeypatch):
    # A read checks the keyspace's fence, may wait for intents, then reads: a drop applied
    # in between can let PURGE erase what it is about to read, so it checks again after.
    async with open_local_cluster(("us-east",), 1, seed=5) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        replica = node.replicas[gid]
        waited = engine.node.Node._wait_intents

        async def wait_then_drop(self, replica, ts, find, *, restart, until=0):
            await waited(self, replica, ts, find, restart=restart, until=until)
            replica.sm._fences[KEY[:4]] = (2, 0)  # as if a drop's FENCE had been applied

        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                           "writes": [[KEY, b"v"]]})
                payload = ({"group": gid, "keys": [KEY]} if method == "read" else
                           {"group": gid, "start": KEY[:4], "end": KEY[:3] + b"\x78"})
                assert (await conn.call(method, payload)).get("values", [b"v"]) == [b"v"]
                monkeypatch.setattr(engine.node.Node, "_wait_intents", wait_then_drop)
                with pytest.raises(RemoteError) as refused:
                    await conn.call(method, payload)
                assert refused.value.code == "moved"
                del replica.sm._fences[KEY[:4]]


async def test_a_replica_installing_a_snapshot_refuses_reads_and_its_region_reads_elsewhere(
        monkeypatch):
    # A snapshot is installed in the driver's worker thread: a read must neither begin
    # while one runs nor return what it read while one began (the store and the state
    # machine's fields change under it). The learner's region is served by a voter.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=6) as cluster:
        gid = data_group(cluster.config, "us-east")
        voter = await leader_of(cluster, gid)
        learner = next(n for n in cluster.nodes.values() if n is not voter)
        sm = learner.replicas[gid].sm
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, voter) as conn:
                reply = await conn.call("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                                   "writes": [[KEY, b"v"]]})
            async with client_of(cluster, learner) as conn:
                payload = {"group": gid, "keys": [KEY], "ts": reply["ts"]}
                assert (await conn.call("read", payload))["values"] == [b"v"]
                sm._restores += 1  # one begins
                with pytest.raises(RemoteError) as refused:
                    await conn.call("read", payload)
                assert refused.value.code == "not_closed" and refused.value.retryable
                sm._restores += 1  # and ends

                get = engine.replica.GroupReplica.get

                def get_during_an_install(self, key, ts):
                    sm._restores += 2  # one began and ended while this read ran
                    return get(self, key, ts)

                monkeypatch.setattr(engine.replica.GroupReplica, "get", get_during_an_install)
                with pytest.raises(RemoteError) as refused:
                    await conn.call("read", payload)
                assert refused.value.code == "not_closed"
                monkeypatch.undo()
            sm._restores += 1
            async with cluster.connect("eu-west") as db:
                await db.create_keyspace("ks", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("ks", b"k", b"v"))
                assert await db.read("ks", b"k", staleness="bounded:60") == b"v"
            sm._restores += 1


async def test_a_fence_outside_the_data_groups_or_the_keyspace_ids_is_refused():
    # A fence at level 3 lets a group erase a key span: never the catalog's, and never a
    # span that does not end in a keyspace prefix.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        gid = data_group(cluster.config, "us-east")
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                for group, ks_id in ((META_GROUP, 5), (gid, 2**32 - 1)):
                    with pytest.raises(RemoteError) as refused:
                        await conn.call("keyspace.fence", {"group": group, "keyspace_id": ks_id,
                                                           "level": 3})
                    assert refused.value.code == "invalid_argument"


@pytest.mark.parametrize("level", [1.0, True, "1"])
async def test_a_fence_level_that_is_not_an_int_is_refused(level):
    # 1.0 and True equal 1, and passed a check by value: the entry then carried a float or
    # a boolean into every replica's fence table.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                ks = await db.create_keyspace("k")
                with pytest.raises(RemoteError, match="level 0..3") as refused:
                    await conn.call("keyspace.fence", {"group": gid, "keyspace_id": ks.id,
                                                       "level": level})
                assert refused.value.code == "invalid_argument"
                assert node.replicas[gid].sm.fence(ks.id.to_bytes(4, "big")) == (0, 0)


async def test_the_catalog_is_changed_only_through_keyspace_requests():
    # A plain commit into the meta group could set the next keyspace id back (a new keyspace
    # would then read a dropped one's data) or write a record nothing can decode.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                first = await db.create_keyspace("first")
                await db.run_transaction(lambda tx: tx.put("first", b"k", b"first's"))
                txn = {"group": META_GROUP, "txn_id": 5, "read_ts": 0,
                       "writes": [[b"ks-next-id", b"\x00\x00\x00\x01"], [b"ks/x", b"junk"]]}
                for method, payload in (("commit", txn), ("prepare", {**txn, "primary": 100}),
                                        ("read", {"group": META_GROUP, "keys": [b"ks/first"]})):
                    with pytest.raises(RemoteError) as refused:
                        await conn.call(method, payload)
                    assert refused.value.code == "invalid_argument"
                second = await db.create_keyspace("second")
                assert second.id != first.id
                assert await db.read("second", b"k") is None
                assert [ks.name for ks in await db.list_keyspaces()] == ["first", "second"]


async def test_a_settle_that_retires_no_region_is_refused_and_the_keyspace_still_drops():
    # The record lists every region a copy may be left in, and every move and drop looks up
    # each one's group: a name that is no region, recorded, would fail them all for good.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                ks = await db.create_keyspace("k")
                with pytest.raises(RemoteError, match="unknown region") as refused:
                    await conn.call("keyspace.settle", {"name": "k", "id": ks.id,
                                                        "epoch": ks.epoch, "retire": ["nowhere"]})
                assert refused.value.code == "invalid_argument"
                assert (await db.keyspace("k")).retired == ()
                await db.drop_keyspace("k")
                assert await db.list_keyspaces() == []


@pytest.mark.parametrize("resolver", [["lww"], {"app:x": 1}])
async def test_a_create_naming_a_resolver_that_is_no_name_is_refused_naming_the_field(resolver):
    # Looked up among the configured application resolvers, a list or a map failed the
    # request with an internal TypeError (unhashable) and a traceback in the node's log.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                with pytest.raises(RemoteError, match="resolver must be") as refused:
                    await conn.call("keyspace.create", {"name": "k", "mode": "regional",
                                                        "resolver": resolver})
                assert refused.value.code == "invalid_argument"
                assert await db.list_keyspaces() == []


@pytest.mark.parametrize("method,field", [("keyspace.rehome", "moved_ts"),
                                          ("keyspace.rehome", "handoff_ts"),
                                          ("keyspace.settle", "handoff_ts")])
async def test_a_catalog_timestamp_from_the_far_future_is_refused(method, field):
    # Kept in the keyspace's record: a handoff_ts there an hour ahead had every move fence the
    # keyspace against writes and then fail, its home unable to stamp an entry above it.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with cluster.connect("us-east") as db, client_of(cluster, node) as conn:
                ks = await db.create_keyspace("k")
                ahead = node.clock.now() + 3600 * 10**9
                with pytest.raises(RemoteError, match="ahead of node") as refused:
                    await conn.call(method, {"name": "k", "id": ks.id, "epoch": ks.epoch,
                                             "home": "us-east", field: ahead})
                assert refused.value.code == "invalid_argument"
                assert await db.keyspace("k") == ks


async def test_a_catalog_request_s_refusal_quotes_a_bounded_part_of_a_large_argument():
    # Quoted whole (its repr four times as long for control characters), a bad argument of a
    # few MiB made the refusal larger than a frame: the caller got an internal error.
    huge = "\x00" * (4 << 20)
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        node = await leader_of(cluster, META_GROUP)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                for method, payload, field in (
                        ("keyspace.get", {"name": huge}, "keyspace name"),
                        ("keyspace.create", {"name": "k", "mode": huge}, "mode"),
                        ("keyspace.create", {"name": "k", "survive": huge}, "survive"),
                        ("keyspace.create", {"name": "k", "home": huge}, "region"),
                        # Once made in the answering node's region, as if none was named.
                        ("keyspace.create", {"name": "k", "home": ""}, "unknown region ''"),
                        ("keyspace.create", {"name": "k", "home": None}, "unknown region None"),
                        ("keyspace.begin", {"name": "k", "op": "move", "to": huge}, "region")):
                    with pytest.raises(RemoteError, match=field) as refused:
                        await conn.call(method, payload)
                    assert refused.value.code == "invalid_argument"
                    assert len(refused.value.message) < 1000


async def test_a_resolution_below_the_prepare_timestamp_is_refused():
    # Its versions would appear under timestamps that reads were already served at.
    async with open_local_cluster(("us-east",), 1, seed=1) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                before = await conn.call("read", {"group": gid, "keys": [KEY]})
                ts = before["ts"]
                await conn.call("prepare", {"group": gid, "txn_id": 77, "read_ts": 0,
                                            "writes": [[KEY, b"ghost"]], "primary": gid})
                with pytest.raises(RemoteError, match="below the transaction's prepare"):
                    await conn.call("resolve", {"group": gid, "txn_id": 77,
                                                "commit_ts": ts - 5})
                again = await conn.call("read", {"group": gid, "keys": [KEY], "ts": ts})
                assert again["values"] == before["values"] == [None]


async def test_a_refresh_from_below_the_gc_watermark_reports_a_change(monkeypatch):
    # Below the watermark a delete may be collected with everything before it: the key
    # would look unchanged.
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.3)
    async with open_local_cluster(("us-east",), 1, seed=1,
                                  limits=Limits(max_txn_lifetime_s=1.0)) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(GUARD_S):
                ks = await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"x", b"1"))
                gid = data_group(cluster.config, "us-east")
                node = await leader_of(cluster, gid)
                replica = node.replicas[gid]
                value, t0 = await db.read_version("k", b"x")
                assert value == b"1"
                await db.run_transaction(lambda tx: tx.delete("k", b"x"))
                key = encode_key(ks.id, b"x")
                while (replica.sm.store.gc_watermark <= t0 + 1
                       or replica.sm.store.get_version(key, MAX_TS) is not None):
                    await trio.sleep(0.1)
                async with client_of(cluster, node) as conn:
                    reply = await conn.call("refresh", {"group": gid, "keys": [key],
                                                        "from_ts": t0,
                                                        "to_ts": replica.closed_ts})
                assert reply == {"ok": False, "reason": "too_old"}


async def test_a_refresh_that_waited_while_gc_passed_its_snapshot_does_not_succeed(
        monkeypatch):
    """A refresh checks ``from_ts`` against the low water, then waits (closed timestamp,
    intents), then compares versions at ``from_ts`` and ``to_ts``. If the low water passes
    ``from_ts`` during the wait and the replica's GC runs, a key deleted in (from_ts, to_ts]
    has its tombstone and older versions collected: it reads as missing at both ends and
    the refresh wrongly answers ok (the transaction then keeps what it read at from_ts
    together with a snapshot where the key is gone)."""
    lifetime_s = 1.0
    async with open_local_cluster(("us-east",), 1, seed=3,
                                  limits=Limits(max_txn_lifetime_s=lifetime_s)) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        replica = node.replicas[gid]
        store = replica.sm.store
        with trio.fail_after(GUARD_S):
            assert (await replica.commit(1, 0, [(KEY, b"v")])).committed
            from_ts = replica.closed_ts  # a transaction read KEY == b"v" here
            assert store.get(KEY, from_ts) == b"v"
            deleted = await replica.commit(2, 0, [(KEY, None)])  # deleted after from_ts
            assert deleted.committed and deleted.ts > from_ts
            # Another transaction is prepared on a key the refresh covers: it must wait.
            prepared = await replica.prepare(3, 0, [(OTHER, b"x")], (), (), primary=gid,
                                             deadline=MAX_TS)
            to_ts = max(replica.closed_ts, prepared.ts)
            waiting = trio.Event()
            waited = engine.node.Node._wait_intents

            async def wait_intents(self, replica, ts, find, *, restart, until=0):
                waiting.set()
                await waited(self, replica, ts, find, restart=restart, until=until)

            monkeypatch.setattr(engine.node.Node, "_wait_intents", wait_intents)
            reply = {}
            async with client_of(cluster, node) as conn:
                async def refresh():
                    reply.update(await conn.call("refresh", {
                        "group": gid, "keys": [KEY, OTHER], "spans": [],
                        "from_ts": from_ts, "to_ts": to_ts}))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(refresh)
                    await waiting.wait()
                    # While it waits, time passes: the low water goes past from_ts and the
                    # replica's GC (run_gc) collects below it.
                    await replica.close_up_to(deleted.ts + int(lifetime_s * 1e9))
                    assert from_ts < deleted.ts <= replica.sm.low_water
                    store.gc(replica.sm.low_water)
                    await replica.resolve(3, 0)  # the prepared transaction aborts
            assert store.get_version(KEY, to_ts) is None  # tombstone and value collected
            # KEY changed between from_ts and to_ts: the refresh must not say ok.
            assert reply["ok"] is False, reply


async def test_limit_errors_keep_their_kind_across_the_wire():
    # A limit the node finds at commit (a client with older limits, or none of the library's
    # checks) comes back as its own code, and the library raises the same exception it
    # would have raised before sending -- not InvalidArgumentError.
    from engine.client import _translate
    from engine.errors import InvalidArgumentError, LimitExceededError, RecordTooLargeError

    limits = Limits(max_txn_keys=2, max_value_size=100, max_txn_bytes=1000)
    async with open_local_cluster(("us-east",), 1, seed=6, limits=limits) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                for writes, code in (([[KEY, b"x" * 101]], "too_large"),
                                     ([[KEY + b"%d" % i, b"x"] for i in range(3)],
                                      "limit_exceeded")):
                    with pytest.raises(RemoteError) as refused:
                        await conn.call("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                                   "writes": writes})
                    assert refused.value.code == code, refused.value
                # A key or value over its size is named (without its keyspace prefix).
                for merges in ([], [[KEY, "lww", b"x" * 101]]):
                    with pytest.raises(RemoteError, match="value of 101 bytes for key b'key'"):
                        await conn.call("commit", {
                            "group": gid, "txn_id": 1, "read_ts": 0, "merges": merges,
                            "writes": [] if merges else [[KEY, b"x" * 101]]})
                with pytest.raises(RemoteError, match="key b'kkkkkk.* is 254 bytes"):
                    await conn.call("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                               "writes": [[KEY[:4] + b"k" * 250, b"x"]]})
    for code, kind in (("too_large", RecordTooLargeError),
                       ("limit_exceeded", LimitExceededError),
                       ("invalid_argument", InvalidArgumentError)):
        assert type(_translate(RemoteError(code, "m"))) is kind


async def test_stale_reads_that_time_out_leave_no_waiter_behind(monkeypatch):
    # A follower cut off from its leader cannot close time; each stale read waiting for it
    # gives up after STALE_READ_WAIT_S and must take its waiter with it.
    monkeypatch.setattr(engine.node, "STALE_READ_WAIT_S", 0.3)
    async with open_local_cluster(("us-east",), 3, seed=1) as cluster:
        gid = data_group(cluster.config, "us-east")
        leader = await leader_of(cluster, gid)
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        replica = follower.replicas[gid]
        follower.isolate_from({n.id for n in cluster.nodes.values() if n is not follower})
        for n in cluster.nodes.values():
            if n is not follower:
                n.isolate_from({follower.id})
        codes = []
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, follower) as conn:
                ts = follower.clock.now()

                async def read(i):
                    try:
                        await conn.call("read", {"group": gid, "keys": [b"k"], "ts": ts + i,
                                                 "stale": True})
                    except RemoteError as exc:
                        codes.append(exc.code)

                async with trio.open_nursery() as nursery:
                    for i in range(1, 21):
                        nursery.start_soon(read, i)
        assert codes == ["not_closed"] * 20
        assert len(replica._closed_waiters) == 0


CONFIG = """
node_id = 1
data_dir = "{dir}"
[cluster]
name = "t"
{extra}
[cluster.regions.us-east]
nodes = [{{ id = 1, peer_address = "127.0.0.1:7001", client_address = "127.0.0.1:7002" }}]
"""


@pytest.mark.parametrize("extra,field", [
    ("election_ticks = 2\nheartbeat_ticks = 1", "election_ticks"),
    ("[cluster.limits]\nmax_txn_lifetime_s = 1e-10", "max_txn_lifetime_s"),
    ("[cluster.limits]\nmax_txn_lifetime_s = 1e300", "max_txn_lifetime_s"),
    ("max_clock_offset_ms = 100000000000000", "max_clock_offset_ms"),
])
def test_a_configuration_a_node_could_not_start_with_is_refused_naming_the_field(
        extra, field, tmp_path):
    with pytest.raises(ConfigError, match=field):
        parse_node_config(CONFIG.format(dir=tmp_path, extra=extra))


async def test_regional_writes_count_toward_the_transaction_byte_limit(tmp_path):
    # A plain commit over max_txn_bytes was refused while a regional one of three times the
    # limit was taken, and its shipped form then did not fit in the outbox: every replica of
    # the group stopped on it, and again on every restart.
    from engine.config import Limits
    limits = Limits(max_txn_bytes=4096, max_value_size=2000)
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=3, limits=limits,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        merges = [[KEY + b"%d" % i, "lww", b"v" * 1500] for i in range(3)]
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                for plain, regional in ((merges[:2], merges[2:]), ([], merges)):
                    with pytest.raises(RemoteError) as refused:
                        await conn.call("commit", {
                            "group": gid, "txn_id": 1, "read_ts": 0,
                            "writes": [[k, v] for k, _, v in plain], "merges": regional})
                    assert "bytes written; the limit is 4096" in str(refused.value)
                await conn.call("commit", {"group": gid, "txn_id": 2, "read_ts": 0,
                                           "writes": [], "merges": merges[:2]})


async def test_a_regional_value_over_a_regional_write_s_limit_is_too_large():
    # max_value_size may be the store's limit, but a regional write's value may take 4 KiB
    # less (one that loses a conflict is logged with it). One in between passed the client's
    # and the node's checks, went through consensus, and was refused where applied as a
    # malformed entry: InvalidArgumentError("commit refused: bad merge in COMMIT").
    from engine.errors import RecordTooLargeError
    from engine.merge import MAX_APP_VALUE_SIZE, encode_set_add
    from engine.mvcc import MAX_VALUE_SIZE

    limits = Limits(max_value_size=MAX_VALUE_SIZE, max_txn_bytes=2 * MAX_VALUE_SIZE)
    over = b"v" * (MAX_APP_VALUE_SIZE + 1)
    async with open_local_cluster(("us-east",), 1, seed=7, limits=limits) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                with pytest.raises(RemoteError) as refused:
                    await conn.call("commit", {"group": gid, "txn_id": 1, "read_ts": 0,
                                               "writes": [], "merges": [[KEY, "lww", over]]})
                assert refused.value.code == "too_large", refused.value
                assert str(MAX_APP_VALUE_SIZE) in str(refused.value)
            async with cluster.connect() as db:
                await db.create_keyspace("r", mode="regional")
                await db.create_keyspace("s", mode="regional", resolver="add_wins_set")
                async with db.transaction() as tx:
                    with pytest.raises(RecordTooLargeError, match=str(MAX_APP_VALUE_SIZE)):
                        await tx.put("r", b"k", over)
                    with pytest.raises(RecordTooLargeError, match=str(MAX_APP_VALUE_SIZE)):
                        await tx.merge("s", b"k", encode_set_add(over))
                    await tx.put("r", b"k", over[1:])  # the largest that fits
                assert await db.read("r", b"k") == over[1:]


async def test_a_batch_sent_again_does_not_count_its_writes_lag_again(tmp_path):
    # The shipper sends a batch again when its answer was lost: the writes it repeats were
    # counted in the replication lag already, with commit times that are older by now.
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=1,
                                  directory=str(tmp_path)) as cluster:
        gid = data_group(cluster.config, "us-east")
        other = data_group(cluster.config, "eu-west")
        node = await leader_of(cluster, gid)

        def batch(after, up_to, stamps):
            return {"group": gid, "origin": other, "after": after, "up_to": up_to,
                    "writes": [[KEY + b"%d" % ts, "lww", b"x", ts, "eu-west", 0, ""]
                               for ts in stamps]}

        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("remote.apply", batch(0, 10, [4, 8]))
                await conn.call("remote.apply", batch(0, 10, [4, 8]))  # the same again
                await conn.call("remote.apply", batch(0, 20, [4, 8, 15]))  # overlapping
        assert len(node._lag_ms["eu-west"]) == 3


@pytest.mark.parametrize("method", ["commit", "prepare"])
async def test_read_keys_of_a_snapshot_transaction_are_not_logged(method, monkeypatch):
    # Only a serializable transaction's read keys are validated; a client that sends them
    # anyway (up to the 16 MiB frame) must not make every replica store them in its log.
    proposed = []
    real = getattr(engine.replica.GroupReplica, method)

    async def spy(self, txn_id, read_ts, writes, reads=(), *args, **kwargs):
        proposed.append(list(reads))
        return await real(self, txn_id, read_ts, writes, reads, *args, **kwargs)

    monkeypatch.setattr(engine.replica.GroupReplica, method, spy)
    async with open_local_cluster(("us-east",), 1, seed=1) as cluster:
        gid = data_group(cluster.config, "us-east")
        node = await leader_of(cluster, gid)
        payload = {"group": gid, "txn_id": 5, "read_ts": 0, "writes": [[KEY, b"x"]],
                   "reads": [OTHER + b"%d" % i for i in range(100)]}
        if method == "prepare":
            payload["primary"] = gid
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call(method, payload)
        assert proposed == [[]]
