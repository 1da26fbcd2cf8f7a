"""An in-process cluster end to end: the node runtime, placement, catalog and client together."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import trio

import engine.mvcc
import engine.node
import engine.replica

from engine import errors
from engine.client import connect as engine_connect
from engine.hlc import ClockOffsetError
from engine.rpc import RemoteError, connect_rpc
from engine.local import open_local_cluster
from engine.node import idle_heartbeat_ticks
from engine.placement import META_GROUP, data_group

TWO_REGIONS = ("us-east", "eu-west")


async def _leader_of(cluster, group: int) -> int:
    """Waits until some node leads ``group``; returns its id."""
    with trio.fail_after(20):
        while True:
            for node in cluster.nodes.values():
                r = node.replicas.get(group)
                if r is not None and r.node.is_leader:
                    return node.id
            await trio.sleep(0.02)


async def second_commit(a, b) -> str:
    """Commits ``a``, then ``b``: what became of ``b`` ("committed", or its conflict's
    reason). The shape of every write-skew check."""
    await a.commit()
    try:
        await b.commit()
    except errors.TransactionConflictError as exc:
        return exc.reason
    return "committed"


async def test_clients_in_every_region_commit_and_read():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms={TWO_REGIONS: 5},
                                  seed=1) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(30):
                await east.create_keyspace("east-ks", home_region="us-east")
                await west.create_keyspace("west-ks", home_region="eu-west")
                for db in (east, west):
                    for ks in ("east-ks", "west-ks"):
                        async with db.transaction() as tx:
                            await tx.put(ks, b"from-" + db.region.encode(), b"hello")
                for db in (east, west):
                    for ks in ("east-ks", "west-ks"):
                        async with db.transaction() as tx:
                            got = await tx.scan(ks)
                        assert got == [(b"from-eu-west", b"hello"), (b"from-us-east", b"hello")]
                names = sorted(k.name for k in await west.list_keyspaces())
                assert names == ["east-ks", "west-ks"]


async def test_lost_update_is_refused_and_write_skew_needs_serializable():
    async with open_local_cluster(("us-east",), 3, seed=2) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("k")
                async with db.transaction() as tx:
                    await tx.put("k", b"x", b"1")
                    await tx.put("k", b"y", b"1")

                # One round trip for several keys; pending writes are read back as written.
                tx = db.transaction()
                await tx.put("k", b"y", b"mine")
                assert await tx.get_many("k", [b"x", b"nope", b"y"]) == [b"1", None, b"mine"]
                await tx.rollback()
                assert await db.read("k", b"y") == b"1"

                # Two read-modify-writes of x from the same snapshot: one must lose.
                t1, t2 = db.transaction(), db.transaction()
                assert await t1.get("k", b"x") == b"1"
                assert await t2.get("k", b"x") == b"1"
                await t1.put("k", b"x", b"2")
                await t2.put("k", b"x", b"3")
                await t1.commit()
                with pytest.raises(errors.TransactionConflictError) as info:
                    await t2.commit()
                assert info.value.reason == "write_write" and info.value.retryable
                assert await db.read("k", b"x") == b"2"

                async def skew(isolation):
                    # Each reads x and y and sets the other to 0: both commit only if the
                    # isolation level lets a write skew through.
                    a, b = db.transaction(isolation), db.transaction(isolation)
                    for tx in (a, b):
                        await tx.get("k", b"x")
                        await tx.get("k", b"y")
                    await a.put("k", b"x", b"0")
                    await b.put("k", b"y", b"0")
                    return await second_commit(a, b)

                assert await skew("snapshot") == "committed"
                await db.run_transaction(lambda tx: tx.put("k", b"x", b"1"))
                await db.run_transaction(lambda tx: tx.put("k", b"y", b"1"))
                assert await skew("serializable") == "read_write"


async def test_bank_invariant_under_concurrent_transfers_from_two_regions():
    accounts = [b"acct-%d" % i for i in range(6)]
    async with open_local_cluster(TWO_REGIONS, 3, seed=3) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await east.create_keyspace("bank", home_region="us-east")
                async with east.transaction() as tx:
                    for a in accounts:
                        await tx.put("bank", a, b"100")
                totals: list[int] = []
                committed = 0

                async def transfer(tx, rng):
                    src, dst = rng.sample(accounts, 2)
                    s, d = (int(v) for v in await tx.get_many("bank", [src, dst]))
                    amount = rng.randint(1, 20)
                    await tx.put("bank", src, b"%d" % (s - amount))
                    await tx.put("bank", dst, b"%d" % (d + amount))

                async def worker(db, seed):
                    nonlocal committed
                    rng = random.Random(seed)
                    for _ in range(15):
                        await db.run_transaction(lambda tx: transfer(tx, rng))
                        committed += 1

                async def auditor(db):
                    for _ in range(10):
                        async with db.transaction() as tx:
                            rows = await tx.scan("bank")
                        totals.append(sum(int(v) for _, v in rows))

                async with trio.open_nursery() as n:
                    for i in range(4):
                        n.start_soon(worker, east if i % 2 else west, i)
                    n.start_soon(auditor, west)
                assert committed == 60
                assert totals and all(t == 600 for t in totals)
                async with west.transaction() as tx:
                    rows = await tx.scan("bank")
                assert sum(int(v) for _, v in rows) == 600


async def test_stale_reads_stay_within_their_bounds():
    async with open_local_cluster(TWO_REGIONS, 3, seed=4) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(30):
                await east.create_keyspace("s", home_region="us-east")
                history: list[tuple[int, bytes]] = []  # (commit ts, value)
                for i in range(10):
                    async with east.transaction() as tx:
                        await tx.put("s", b"k", b"%d" % i)
                    history.append((tx.commit_ts, b"%d" % i))
                    await trio.sleep(0.01)

                def value_at(ts):
                    seen = [v for c, v in history if c <= ts]
                    return seen[-1] if seen else None

                # exact:<s> from the learner in eu-west reads exactly at now - s: the value must
                # be the one committed last at or before that timestamp, never a newer one.
                for staleness in ("exact:0.05", "exact:0.02", "exact:0"):
                    value, ts = await west.read_version("s", b"k", staleness=staleness)
                    assert value == value_at(ts)
                # bounded:<s> reads the newest the local replica has, no older than now - s.
                before = west.clock.now()
                value, ts = await west.read_version("s", b"k", staleness="bounded:0.5")
                assert ts >= before - int(0.5e9)
                assert value == value_at(ts)
                # Once the last commit is old enough, a bounded read must see it.
                value, ts = await west.read_version("s", b"k", staleness="bounded:0")
                assert value == history[-1][1]
                with pytest.raises(errors.InvalidArgumentError, match="staleness"):
                    await west.read("s", b"k", staleness="fresh:1")


@pytest.mark.parametrize("trouble", ["down", "lagging"])
async def test_a_stale_read_is_served_elsewhere_when_the_regions_replica_cannot(
        trouble, monkeypatch):
    """A region holds one replica of a group homed elsewhere. With it stopped, or up but cut
    off from its group (it cannot close time up to a bounded read's bound and says so:
    not_closed), a stale read from that region is still answered, by the group's voters,
    with the latest value."""
    # The replica gives up sooner than it would (5 s), yet not before a voter (which waits as
    # long for its leader's next close, about once a second) can answer.
    monkeypatch.setattr(engine.node, "STALE_READ_WAIT_S", 3.0)
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms={TWO_REGIONS: 5},
                                  seed=6) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(30):
                await east.create_keyspace("s", home_region="us-east")
                async with east.transaction() as tx:
                    await tx.put("s", b"k", b"v1")
                group = data_group(cluster.config, "us-east")
                [learner] = [n for n in cluster.nodes
                             if cluster.config.node(n).region == "eu-west"
                             and group in cluster.nodes[n].replicas]
                # bounded:0 waits for the replica to close time up to now: it has v1.
                assert await west.read("s", b"k", staleness="bounded:0") == b"v1"
                if trouble == "down":
                    await cluster.stop_node(learner)
                else:
                    cluster.partition([learner])  # clients still reach it
                async with east.transaction() as tx:
                    await tx.put("s", b"k", b"v2")
                value, ts = await west.read_version("s", b"k", staleness="bounded:0")
                assert value == b"v2" and ts >= tx.commit_ts


async def test_a_stale_read_with_a_bound_beyond_the_clock_waits_for_a_closed_timestamp(
        monkeypatch):
    """A bound larger than the clock's reading (about 56 years; the client takes up to 584)
    accepts any closed timestamp -- but a replica that has closed none yet has no snapshot to
    read at: it must wait, or let the voters answer, rather than refuse the read as an
    invalid argument, which no retry loop retries."""
    monkeypatch.setattr(engine.node, "STALE_READ_WAIT_S", 1.0)

    async def never_close(self):
        return  # no idle CLOSE entries: the group's replicas close time only on demand

    monkeypatch.setattr(engine.replica.GroupReplica, "run_closer", never_close)
    async with open_local_cluster(TWO_REGIONS, 1, seed=7) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(30):
                await east.create_keyspace("s", home_region="us-east")
                group = data_group(cluster.config, "us-east")
                [learner] = [n for n in cluster.nodes
                             if cluster.config.node(n).region == "eu-west"]
                assert cluster.nodes[learner].replicas[group].closed_ts == 0
                value, ts = await west.read_version("s", b"k", staleness="bounded:1e10")
                assert value is None and ts > 0


async def test_a_follower_installing_a_snapshot_refuses_reads_until_it_is_whole(monkeypatch):
    """A follower that fell behind the leader's compacted log installs a snapshot in a
    worker thread while its node goes on serving: a read of that group there is refused
    (retryable) while the install runs, and answered from the whole new state after."""
    async with open_local_cluster(("us-east",), 3, raft_snapshot_every=8, seed=9) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(90):
                await db.create_keyspace("g")
                async with db.transaction() as tx:
                    await tx.put("g", b"k", b"v0")
                group = data_group(cluster.config, "us-east")
                leader = await _leader_of(cluster, group)
                victim = next(n for n in cluster.nodes if n != leader)
                replica = cluster.nodes[victim].replicas[group]
                while replica.closed_ts < tx.commit_ts:
                    await trio.sleep(0.01)
                ts0 = tx.commit_ts
                [(stored_key, _)] = replica.sm.store.scan(b"", None, ts0)
                await cluster.stop_node(victim)
                # More entries than the leader sends ahead to a follower that does not
                # answer (its in-flight window), over a log compacted every 8.
                for i in range(400):
                    await db.run_transaction(lambda tx, i=i: tx.put("g", b"k", b"v%d" % i))

                entered, release = threading.Event(), threading.Event()
                restore = engine.mvcc.MVCCStore.restore

                def paused(self, chunks):
                    entered.set()
                    release.wait(30)
                    return restore(self, chunks)

                monkeypatch.setattr(engine.mvcc.MVCCStore, "restore", paused)
                try:
                    await cluster.start_node(victim)
                    while not entered.is_set():
                        await trio.sleep(0.01)
                    node = cluster.nodes[victim]
                    installing = node.replicas[group]
                    assert installing.sm.restore_generation % 2 == 1
                    read = {"group": group, "keys": [stored_key], "ts": ts0}
                    async with connect_rpc(cluster.config.node(victim).client_host,
                                           node.client_port) as conn:
                        with pytest.raises(RemoteError) as refused:
                            await conn.call("read", read)
                        assert refused.value.code == "not_closed" and refused.value.retryable
                        assert "installing a snapshot" in refused.value.message
                        release.set()
                        while installing.sm.restore_generation % 2:
                            await trio.sleep(0.01)
                        assert (await conn.call("read", read))["values"] == [b"v0"]
                    assert installing.node.statistics().snapshots_installed >= 1
                finally:
                    release.set()


@pytest.mark.parametrize("raft_fsync", ["async", "loop", "thread"])
async def test_restarted_nodes_keep_their_data_and_a_new_leader_takes_over(tmp_path, raft_fsync):
    async with open_local_cluster(("us-east",), 3, directory=str(tmp_path), seed=5,
                                  raft_fsync=raft_fsync) as cluster:
        replicas = [r for n in cluster.nodes.values() for r in n.replicas.values()]
        assert {r.node.sync_in_loop for r in replicas} == {raft_fsync != "thread"}
        assert {r.node.async_append for r in replicas} == {raft_fsync == "async"}
        async with cluster.connect() as db:
            with trio.fail_after(60):
                await db.create_keyspace("r")
                for i in range(5):
                    await db.run_transaction(lambda tx, i=i: tx.put("r", b"k%d" % i, b"v%d" % i))
                # Kill the data group's leader: the others elect a new one, the client follows.
                group = data_group(cluster.config, "us-east")
                await cluster.stop_node(await _leader_of(cluster, group))
                # A read finds the new leader (reads are retried on a lost connection; a
                # commit sent on a connection that then breaks would be ambiguous instead).
                assert await db.read("r", b"k0") == b"v0"
                await db.run_transaction(lambda tx: tx.put("r", b"k5", b"v5"))
                # Restart everything from the data directories.
                for node_id in list(cluster.nodes):
                    await cluster.stop_node(node_id)
                for node in cluster.config.all_nodes():
                    await cluster.start_node(node.id)
                await _leader_of(cluster, META_GROUP)
                async with db.transaction() as tx:
                    rows = await tx.scan("r")
                assert rows == [(b"k%d" % i, b"v%d" % i) for i in range(6)]


async def test_limits_and_bad_input_give_clear_errors():
    from engine.config import Limits
    limits = Limits(max_txn_keys=3, max_txn_bytes=4096, max_value_size=1000)
    async with open_local_cluster(("us-east",), 1, limits=limits, seed=6) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("l")
                tx = db.transaction()
                for i in range(3):
                    await tx.put("l", b"k%d" % i, b"v")
                with pytest.raises(errors.LimitExceededError, match="3 keys"):
                    await tx.put("l", b"k3", b"v")
                with pytest.raises(errors.RecordTooLargeError, match="1000"):
                    await tx.put("l", b"k0", b"x" * 1001)
                with pytest.raises(errors.InvalidArgumentError, match="empty"):
                    await tx.put("l", b"", b"v")
                with pytest.raises(errors.InvalidArgumentError, match="does not exist"):
                    await tx.get("nope", b"k")
                with pytest.raises(errors.InvalidArgumentError, match="keyspace name"):
                    await db.create_keyspace("Bad Name")
                with pytest.raises(errors.InvalidArgumentError, match="isolation"):
                    db.transaction("chaos")
                await tx.commit()
                with pytest.raises(errors.TransactionClosedError):
                    await tx.put("l", b"k0", b"v")
                assert await db.read("l", b"k2") == b"v"


async def test_a_new_group_answers_its_first_strong_read():
    # A group that has never closed a timestamp has no snapshot yet: the first read closes one.
    async with open_local_cluster(("us-east",), 1, seed=7) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("fresh")
                assert await db.read("fresh", b"k") is None


async def test_idle_groups_heartbeat_their_voters_every_third_interval():
    # Heartbeats and their answers are most of an idle cluster's work (see
    # raft.core.Config.idle_heartbeat_tick, whose behaviour the core's tests check tick by
    # tick); here: every group of a node gets it, with its lease reads.
    assert [idle_heartbeat_ticks(h, e) for h, e in ((1, 10), (2, 10), (1, 5), (1, 100))] == \
        [3, 3, 0, 3]
    async with open_local_cluster(TWO_REGIONS, 3, seed=9) as cluster:
        configs = [r.node.core.config for node in cluster.nodes.values()
                   for r in node.replicas.values()]
        assert configs and all(
            c.idle_heartbeat_tick == idle_heartbeat_ticks(c.heartbeat_tick, c.election_tick)
            > c.heartbeat_tick and c.lease_reads for c in configs)


async def test_a_node_whose_clock_is_off_stops_serving_and_says_why():
    # Node 3's wall clock runs 2 s ahead; the cluster allows 250 ms. Node 3 measures both its
    # peers beyond the limit (a majority) and refuses clients; nodes 1 and 2 each see one bad
    # peer out of two (not a majority) and keep serving, and refuse node 3's timestamps.
    async with open_local_cluster(("us-east",), 3, seed=8,
                                  clock_offsets_ns={3: 2_000_000_000}) as cluster:
        skewed = cluster.nodes[3]
        with trio.fail_after(30):
            while skewed.clock_problem is None:
                await trio.sleep(0.05)
        assert "beyond" in skewed.clock_problem or "offset" in skewed.clock_problem
        with trio.fail_after(30):  # once a peer has measured their clocks
            while cluster.nodes[1].clock_problem or cluster.nodes[2].clock_problem:
                await trio.sleep(0.05)
        host, port = cluster.client_addresses()[2].rsplit(":", 1)
        async with connect_rpc(host, int(port)) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("read", {"group": 100, "keys": [b"k"]})
            assert info.value.code == "clock_offset" and "refuses to serve" in info.value.message
        # A client refuses the skewed node's timestamps rather than jump its clock 2 s ahead.
        async with engine_connect(cluster.client_addresses()) as db:
            with pytest.raises(ClockOffsetError):
                await db._call_node(3, "ping", None)
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("c")
                await db.run_transaction(lambda tx: tx.put("c", b"k", b"v"))
                assert await db.read("c", b"k") == b"v"
        # Node 3 does not keep leadership either (its proposals would carry its clock): hand
        # it a group and watch it pass the group on.
        group = data_group(cluster.config, "us-east")
        with trio.fail_after(30):
            while not skewed.replicas[group].node.is_leader:
                leader = await _leader_of(cluster, group)
                if leader != 3:
                    cluster.nodes[leader].replicas[group].node.transfer_leader(3)
                await trio.sleep(0.05)
            while skewed.replicas[group].node.is_leader or await _leader_of(cluster, group) == 3:
                await trio.sleep(0.05)


async def test_a_node_whose_clock_is_stepped_back_is_judged_on_its_clock_as_it_is_now():
    # Node 3's wall clock is stepped an hour back (a bad NTP step, a VM restored). Its peers'
    # measurements from before the step, stamped an hour in its "future", used to stay fresh
    # for that hour and every new one was dropped as out of order: the node kept serving and
    # leading with a clock an hour off. Then the clock is put right again: the node's hybrid
    # clock still runs an hour ahead of it (it never goes back), and until the wall clock has
    # caught up the node must not serve or lead on those timestamps.
    hour = 3600 * 10**9
    async with open_local_cluster(("us-east",), 3, seed=8) as cluster:
        node = cluster.nodes[3]
        with trio.fail_after(30):
            while len(node.monitor.fresh(node.clock.physical_ns())) < 2:
                await trio.sleep(0.05)
        assert node.clock_problem is None
        node.clock._physical = lambda: time.time_ns() - hour
        with trio.fail_after(30):
            while node.clock_problem is None:
                await trio.sleep(0.05)
        assert "2 of 2 peers" in node.clock_problem, node.clock_problem
        # Ahead: its peers never vouch for the step (test_hlc: timestamps do not follow it),
        # so it is trusted by hand, as the clock of a node started an hour ahead is.
        node.clock._physical = lambda: time.time_ns() + hour
        node.clock.trust_physical()
        with trio.fail_after(30):
            while node.clock.last < time.time_ns() + hour // 2:
                await trio.sleep(0.05)
        node.clock._physical = time.time_ns  # put right again
        with trio.fail_after(30):
            while node.clock_problem is None or "2 of 2 peers" in node.clock_problem:
                await trio.sleep(0.05)
        assert "hybrid clock" in node.clock_problem, node.clock_problem
        host, port = cluster.client_addresses()[2].rsplit(":", 1)
        async with connect_rpc(host, int(port)) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("read", {"group": 100, "keys": [b"k"]})
            assert info.value.code == "clock_offset"


async def test_a_leader_whose_clock_jumps_forward_does_not_carry_the_jump_into_its_group():
    # The data group's leader's wall clock jumps an hour ahead while a client writes. Its
    # monitor needs a round of pings to notice; meanwhile its commit (and CLOSE) timestamps
    # carried the jump into the group's log. After the node stopped serving and its clock was
    # put right, every snapshot of the group was an hour ahead, and every transaction that
    # read there was refused (its read_ts ahead of every clock) for that hour.
    hour = 3600 * 10**9
    async with open_local_cluster(("us-east",), 3, seed=8) as cluster:
        group = data_group(cluster.config, "us-east")
        limit = cluster.config.max_clock_offset_ns
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("ks")
                await db.run_transaction(lambda tx: tx.put("ks", b"k", b"v0"))
                leader = cluster.nodes[await _leader_of(cluster, group)]
                leader.clock._physical = lambda: time.time_ns() + hour
                attempts = 0
                while leader.clock_problem is None:
                    attempts += 1
                    try:
                        await db.run_transaction(lambda tx: tx.put("ks", b"w", b"x"))
                    except (errors.AmbiguousCommitError, errors.UnavailableError):
                        pass  # an answer with the jumped clock, or the node just stopped
                    await trio.sleep(0.05)
                assert attempts > 1  # it led while its clock was an hour ahead
                assert all(node.replicas[group].closed_ts <= time.time_ns() + limit
                           for node in cluster.nodes.values())
                leader.clock._physical = time.time_ns  # put right
                while leader.clock_problem is not None:
                    await trio.sleep(0.05)

                async def body(tx):
                    assert await tx.get("ks", b"k") == b"v0"
                    await tx.put("ks", b"k", b"v1")

                await db.run_transaction(body)
                assert await db.read("ks", b"k") == b"v1"


async def test_a_node_restarted_with_its_clock_far_ahead_stops_before_it_stamps_anything():
    # Node 1, alone in its region, is its data group's only voter. It restarts with its wall
    # clock an hour ahead (set wrong while it was down). Its hybrid clock has no earlier
    # reading to hold a jump against, and its monitor used to judge the clock only after a
    # first round of pings: meanwhile the node served, and its closer wrote a CLOSE an hour
    # ahead into the group's log, where it stays (every later snapshot an hour ahead).
    hour = 3600 * 10**9
    async with open_local_cluster(("us-east", "eu-west", "ap-south"), 1, seed=3) as cluster:
        group = data_group(cluster.config, "us-east")
        limit = cluster.config.max_clock_offset_ns
        await cluster.stop_node(1)
        node = await cluster.start_node(1, clock_offset_ns=hour)
        assert node.clock_problem is not None and "2 of 2 peers" in node.clock_problem
        host, port = cluster.client_addresses("us-east")[0].rsplit(":", 1)
        async with connect_rpc(host, int(port)) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("read", {"group": group, "keys": [b"k"]})
            assert info.value.code == "clock_offset"
        replica = node.replicas[group]
        with trio.fail_after(30):
            while not replica.node.is_leader:
                await trio.sleep(0.02)
        await trio.sleep(1.5 * replica.close_interval)  # the closer's turn came
        assert replica.closed_ts <= time.time_ns() + limit


async def test_a_node_restarted_while_its_peers_are_down_does_not_serve_on_its_clock():
    # As above, but node 1 restarts while both its peers are down: no ping measures its
    # clock, an hour ahead. It used to count that as a clock within bounds, serve, and close
    # its data group (of which it is the only voter) an hour ahead.
    hour = 3600 * 10**9
    async with open_local_cluster(("us-east", "eu-west", "ap-south"), 1, seed=3) as cluster:
        group = data_group(cluster.config, "us-east")
        limit = cluster.config.max_clock_offset_ns
        for node_id in (2, 3, 1):
            await cluster.stop_node(node_id)
        node = await cluster.start_node(1, clock_offset_ns=hour)
        assert node.clock_problem is not None and "not been measured" in node.clock_problem
        host, port = cluster.client_addresses("us-east")[0].rsplit(":", 1)
        async with connect_rpc(host, int(port)) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("read", {"group": group, "keys": [b"k"]})
            assert info.value.code == "clock_offset"
            assert "not been measured" in info.value.message
        replica = node.replicas[group]
        with trio.fail_after(30):
            while not replica.node.is_leader:
                await trio.sleep(0.02)
        await trio.sleep(1.5 * replica.close_interval)  # the closer's turn came
        assert replica.closed_ts <= time.time_ns() + limit


async def test_a_lone_node_follows_its_clock_when_it_is_set_right():
    # A node without peers has nobody to vouch for a step of its wall clock: were steps
    # forward held back until peers vouch, a lone node whose clock was an hour slow, then set
    # right (an NTP step at boot), would stay an hour behind its clients for good, refusing
    # every request as from too far ahead.
    hour = 3600 * 10**9
    async with open_local_cluster(("us-east",), 1, seed=10,
                                  clock_offsets_ns={1: -hour}) as cluster:
        node = cluster.nodes[1]
        async with cluster.connect(request_timeout_s=1.0) as db:
            with trio.fail_after(30):
                with pytest.raises(errors.MeridianError):
                    await db.create_keyspace("ks")  # refused: the client is an hour ahead
                node.clock._physical = time.time_ns  # set right
                await db.create_keyspace("ks")
                await db.run_transaction(lambda tx: tx.put("ks", b"k", b"v"))
                assert await db.read("ks", b"k") == b"v"


async def test_a_restarted_node_stamps_above_the_timestamps_of_its_groups():
    # The node's wall clock (and its client's) ran 10 s ahead, and the catalog was changed at
    # that time; then the clock was set right and the node restarted. Its hybrid clock began
    # again at the wall clock, 10 s below what its groups had closed: it went back, and
    # refused as "ahead of node 1's clock" the read timestamps its groups handed out, so
    # that every transaction that read before it wrote failed with invalid_argument.
    ahead = 10 * 10**9
    async with open_local_cluster(("us-east",), 1, seed=12) as cluster:
        await cluster.stop_node(1)
        await cluster.start_node(1, clock_offset_ns=ahead)
        async with cluster.connect() as db:
            with trio.fail_after(30):
                db.clock._physical = lambda: time.time_ns() + ahead
                await db.create_keyspace("ks")
        await cluster.stop_node(1)
        node = await cluster.start_node(1)  # set right
        closed = max(replica.closed_ts for replica in node.replicas.values())
        assert closed > time.time_ns() + ahead // 2
        assert node.clock.now() > closed


async def test_a_data_directory_belongs_to_one_running_node_of_one_cluster(tmp_path):
    from engine.config import NodeConfig
    from engine.node import Node

    async with open_local_cluster(("us-east",), 1, directory=str(tmp_path), seed=9) as cluster:
        cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "node-1"), cluster=cluster.config)
        with pytest.raises(errors.StoreLockedError, match="in use"):
            async with trio.open_nursery() as n:
                await n.start(Node(cfg).run)
        await cluster.stop_node(1)
    other = dataclasses.replace(cluster.config, name="another")
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "node-1"), cluster=other)
    with pytest.raises(errors.InvalidArgumentError, match="belongs to node 1 of cluster 'local'"):
        async with trio.open_nursery() as n:
            await n.start(Node(cfg).run)


async def test_a_data_directory_is_refused_by_a_configuration_with_other_members(tmp_path):
    # A group's Raft membership is bootstrapped from the placement, which the configuration's
    # nodes decide. A node restarted on its directory under a configuration with more nodes
    # (same cluster name, same addresses for the old nodes) used to start: with the new
    # nodes it formed a majority of a membership the old nodes did not share, and both sides
    # elected a leader of the same group and acknowledged conflicting writes.
    import msgpack

    from engine.config import NodeConfig, default_local_cluster
    from engine.durable import DurableState
    from engine.node import Node

    async with open_local_cluster(("us-east",), 3, directory=str(tmp_path), seed=9) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"x", b"1"))
        three = cluster.config
    port = three.node(1).peer_port
    five = dataclasses.replace(default_local_cluster(("us-east",), 5, port, wan_latency_ms={}),
                               tick_interval_ms=three.tick_interval_ms,
                               election_ticks=three.election_ticks,
                               heartbeat_ticks=three.heartbeat_ticks)
    assert five.name == three.name and five.node(1) == three.node(1)
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "node-1"), cluster=five)
    with pytest.raises(errors.InvalidArgumentError,
                       match=r"other members \(group 1: meta group with voters \[1, 2, 3\]"):
        async with trio.open_nursery() as n:
            await n.start(Node(cfg).run)
            n.cancel_scope.cancel()
    # Other addresses are not another membership, and a directory made before the groups were
    # recorded (node 2's, as written here) takes them on: the whole cluster starts again on
    # new ports with its data.
    with DurableState(tmp_path / "node-2" / "IDENTITY") as identity:
        identity.store(msgpack.packb({"cluster": three.name, "node": 2}))
    async with open_local_cluster(("us-east",), 3, directory=str(tmp_path), seed=9) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                assert await db.read("k", b"x") == b"1"
    with DurableState(tmp_path / "node-2" / "IDENTITY") as identity:
        assert msgpack.unpackb(identity.load())["groups"][0][:4] == [1, "meta", "", [1, 2, 3]]


async def test_a_leader_cut_off_while_closing_time_keeps_serving(monkeypatch):
    """Closing time while idle can time out (the leader lost its group, or it is slow): the
    node logs it and tries again later; it must not stop."""
    import engine.replica

    failures = 0
    armed = False
    original = engine.replica.GroupReplica.close_up_to

    async def flaky_close(self, ts):
        nonlocal failures
        if armed and failures < 3:
            failures += 1
            raise errors.AmbiguousCommitError("the proposal was not applied in time")
        await original(self, ts)

    monkeypatch.setattr(engine.replica.GroupReplica, "close_up_to", flaky_close)
    async with open_local_cluster(("us-east",), 3, seed=41) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(30):
                await db.create_keyspace("k", home_region="us-east")
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"0"))
                armed = True
                while failures < 3:  # the closers of idle groups met the failures
                    await trio.sleep(0.1)
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"1"))
                assert await db.read("k", b"a") == b"1"
