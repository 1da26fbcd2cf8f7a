"""Transactions across groups and regions on an in-process cluster: two-phase commit,
snapshots that span groups, recovery of abandoned transactions (ARCH §5)."""

from __future__ import annotations

import contextlib
import random
import time
import types

import pytest
import trio

import engine.node
import engine.replica
from engine import client, errors
from engine.config import Limits
from engine.group import encode_close
from engine.local import open_local_cluster
from engine.placement import data_group, encode_key, spread_group
from raft.types import StateRole
from raftnet import Network
from test_cluster import _leader_of, second_commit

TWO_REGIONS = ("us-east", "eu-west")
WAN = {TWO_REGIONS: 10}


@pytest.fixture(autouse=True)
def short_intent_timeout(monkeypatch):
    # Abandoned intents are recovered after this long (the product's default is longer).
    monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 1.5)


async def _setup(east):
    await east.create_keyspace("e", home_region="us-east")
    await east.create_keyspace("w", home_region="eu-west")


@contextlib.asynccontextmanager
async def _two_homes(seed: int, monkeypatch=None):
    """A cluster of two one-node regions with keyspaces "e" and "w" homed in each, and a
    client in us-east: ``(cluster, client)``. With ``monkeypatch``, no intent is recovered
    (its deadline is an hour), so that what a test's client leaves is what it sees."""
    if monkeypatch is not None:
        monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 3600.0)
    async with open_local_cluster(TWO_REGIONS, 1, seed=seed) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(60):
                await _setup(east)
                yield cluster, east


async def _two_group_txn(east):
    """A transaction writing key k of both "e" and "w": a two-phase commit."""
    tx = east.transaction()
    await tx.put("e", b"k", b"new")
    await tx.put("w", b"k", b"new")
    return tx


async def test_a_transaction_across_regions_commits_atomically():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=11) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await _setup(east)
                async with east.transaction() as tx:
                    await tx.put("e", b"k", b"1")
                    await tx.put("w", b"k", b"1")
                assert tx.commit_ts > 0
                for db in (east, west):
                    async with db.transaction() as tx:
                        assert await tx.get("w", b"k") == b"1"
                        assert await tx.get("e", b"k") == b"1"
                # Both halves at one timestamp.
                _, ts_e = await west.read_version("e", b"k")
                _, ts_w = await east.read_version("w", b"k")
                assert await east.read("e", b"k") == await west.read("w", b"k") == b"1"
                assert ts_e >= tx.commit_ts and ts_w >= tx.commit_ts


async def test_bank_invariant_with_accounts_in_two_regions():
    accounts = [("e", b"a%d" % i) for i in range(3)] + [("w", b"b%d" % i) for i in range(3)]
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=12) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(120):
                await _setup(east)
                async with east.transaction() as tx:
                    for ks, a in accounts:
                        await tx.put(ks, a, b"100")
                totals: list[int] = []
                committed = 0

                async def transfer(tx, rng):
                    (ks1, a1), (ks2, a2) = rng.sample(accounts, 2)
                    s = int(await tx.get(ks1, a1))
                    d = int(await tx.get(ks2, a2))
                    amount = rng.randint(1, 20)
                    await tx.put(ks1, a1, b"%d" % (s - amount))
                    await tx.put(ks2, a2, b"%d" % (d + amount))

                async def worker(db, seed):
                    nonlocal committed
                    rng = random.Random(seed)
                    for _ in range(8):
                        await db.run_transaction(lambda tx: transfer(tx, rng))
                        committed += 1

                async def audit(tx, order):
                    rows = []
                    for ks in order:
                        rows += await tx.scan(ks)
                    return sum(int(v) for _, v in rows)

                async def auditor(db, order):
                    for _ in range(6):
                        # Read-only, yet it may have to retry: moving its snapshot into the
                        # second region fails if what it read in the first changed meanwhile.
                        totals.append(await db.run_transaction(lambda tx: audit(tx, order)))

                async with trio.open_nursery() as n:
                    for i in range(4):
                        n.start_soon(worker, east if i % 2 else west, i)
                    n.start_soon(auditor, west, ("w", "e"))
                    n.start_soon(auditor, east, ("e", "w"))
                assert committed == 32
                assert len(totals) == 12 and all(t == 600 for t in totals), totals


async def test_no_stale_read_after_a_commit_in_another_region():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=13) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await _setup(east)
                for i in range(12):
                    # A one-group commit in us-east, then (after its acknowledgement) a
                    # transaction in eu-west whose snapshot is fixed by its own region first.
                    value = b"%d" % i
                    if i % 2:
                        await east.run_transaction(lambda tx: tx.put("e", b"k", value))
                    else:
                        async def both(tx):
                            await tx.put("e", b"k", value)
                            await tx.put("w", b"other", value)
                        await east.run_transaction(both)
                    async with west.transaction() as tx:
                        await tx.get("w", b"unrelated")
                        assert await tx.get("e", b"k") == value


async def test_serializable_refuses_write_skew_across_regions():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=14) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await _setup(east)

                async def skew(isolation):
                    async with east.transaction() as tx:
                        await tx.put("e", b"x", b"1")
                        await tx.put("w", b"y", b"1")
                    a, b = east.transaction(isolation), west.transaction(isolation)
                    for tx in (a, b):
                        await tx.get("e", b"x")
                        await tx.get("w", b"y")
                    await a.put("e", b"x", b"0")
                    await b.put("w", b"y", b"0")
                    return await second_commit(a, b)

                assert await skew("snapshot") == "committed"
                # Refused on a key it read, not one it wrote:
                assert await skew("serializable") in ("intent", "read_write")
                # The refused transaction left nothing behind: y is readable and writable.
                assert await west.read("w", b"y") == b"1"
                await west.run_transaction(lambda tx: tx.put("w", b"y", b"2"))


async def test_a_refused_prepare_aborts_the_whole_transaction():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=15) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(60):
                await _setup(east)
                t1 = east.transaction()
                assert await t1.get("w", b"k") is None
                await east.run_transaction(lambda tx: tx.put("w", b"k", b"theirs"))
                await t1.put("e", b"k", b"mine")
                await t1.put("w", b"k", b"mine")
                with pytest.raises(errors.TransactionConflictError) as info:
                    await t1.commit()
                assert info.value.reason == "write_write" and info.value.key == b"k"
                assert str(info.value).endswith("on key b'k')")  # the caller's key, as given
                # The half prepared in us-east was aborted: nothing visible, nothing blocking.
                with trio.fail_after(1):
                    assert await east.read("e", b"k") is None
                await east.run_transaction(lambda tx: tx.put("e", b"k", b"next"))


async def _prepare_directly(db, cluster, txn_id, writes_by_region, primary_region):
    """Prepares a transaction the way a coordinator would, then abandons it."""
    read_ts = db.clock.now()
    primary = data_group(cluster.config, primary_region)
    stamps = []
    for region, writes in writes_by_region.items():
        group = data_group(cluster.config, region)
        reply = await db._call_group(group, "prepare", {
            "group": group, "txn_id": txn_id, "read_ts": 0, "writes": writes,
            "primary": primary}, commit=True)
        stamps.append(reply["ts"])
    assert read_ts > 0
    return primary, max(stamps)


async def test_an_abandoned_undecided_transaction_is_aborted_by_its_readers():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=16) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(60):
                await _setup(east)
                await east.run_transaction(lambda tx: tx.put("w", b"k", b"old"))
                ids = {}
                for ks in ("e", "w"):
                    ids[ks] = (await east.keyspace(ks)).id
                await _prepare_directly(east, cluster, 0x1234, {
                    "us-east": [[encode_key(ids["e"], b"k"), b"new"]],
                    "eu-west": [[encode_key(ids["w"], b"k"), b"new"]]}, "us-east")
                # The coordinator is gone. A reader waits for the intent's deadline, then
                # aborts the transaction through its record and reads the old value.
                assert await east.read("w", b"k") == b"old"
                assert await east.read("e", b"k") is None
                await east.run_transaction(lambda tx: tx.put("e", b"k", b"after"))


async def test_a_decided_transaction_is_finished_by_its_readers():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=17) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(60):
                await _setup(east)
                ids = {ks: (await east.keyspace(ks)).id for ks in ("e", "w")}
                primary, commit_ts = await _prepare_directly(east, cluster, 0x5678, {
                    "us-east": [[encode_key(ids["e"], b"k"), b"new"]],
                    "eu-west": [[encode_key(ids["w"], b"k"), b"new"]]}, "us-east")
                groups = [data_group(cluster.config, r) for r in ("us-east", "eu-west")]
                reply = await east._call_group(primary, "decide", {
                    "group": primary, "txn_id": 0x5678, "commit_ts": commit_ts,
                    "since": commit_ts, "participants": groups}, commit=True)
                assert reply == {"committed": True, "ts": commit_ts}
                # The coordinator died before resolving eu-west's intent: a reader there
                # finds the record committed and finishes the transaction.
                value, ts = await west.read_version("w", b"k")
                assert value == b"new" and ts >= commit_ts
                assert await east.read("e", b"k") == b"new"
                # The sweep would have done it too; either way the intent is gone.
                group = data_group(cluster.config, "eu-west")
                for node in cluster.nodes.values():
                    replica = node.replicas.get(group)
                    if replica is not None and replica.node.is_leader:
                        assert replica.sm.prepared() == []


async def test_a_scan_cut_short_waits_for_no_transaction_pending_past_its_last_key(
        monkeypatch):
    # A scan waited for every transaction pending (prepared, undecided) anywhere in its
    # range, also past the keys its page returned: a limited scan ("the first two jobs")
    # stalled on a commit in flight elsewhere in the keyspace, and failed when its
    # coordinator was gone, until recovery aborted it.
    monkeypatch.setattr(engine.node, "INTENT_WAIT_S", 0.2)
    async with _two_homes(41, monkeypatch) as (cluster, east):
        for key in (b"j/1", b"j/2", b"j/8", b"j/9"):
            await east.run_transaction(lambda tx, k=key: tx.put("e", k, b"open"))
        ks_id = (await east.keyspace("e")).id
        await _prepare_directly(east, cluster, 0x4321, {
            "us-east": [[encode_key(ks_id, b"j/5"), b"new"]]}, "us-east")
        tx = east.transaction()
        assert await tx.scan("e", b"j/", b"j0", limit=2) == [(b"j/1", b"open"),
                                                             (b"j/2", b"open")]
        assert await tx.scan("e", b"j/", b"j0", limit=2, reverse=True) == [
            (b"j/9", b"open"), (b"j/8", b"open")]
        # A page that reaches the pending key waits for its fate.
        for limit in (3, None):
            with pytest.raises(errors.UnavailableError, match="still pending"):
                await east.transaction().scan("e", b"j/", b"j0", limit=limit)


async def test_old_versions_are_garbage_collected_below_the_transaction_lifetime(monkeypatch):
    monkeypatch.setattr(engine.replica, "GC_INTERVAL_S", 0.2)
    limits = Limits(max_txn_lifetime_s=1.0)
    async with open_local_cluster(("us-east",), 1, limits=limits, seed=18) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("g")
                stamps = []
                for i in range(20):
                    async with db.transaction() as tx:
                        await tx.put("g", b"k", b"%d" % i)
                    stamps.append(tx.commit_ts)
                group = data_group(cluster.config, "us-east")
                [node] = cluster.nodes.values()
                replica = node.replicas[group]
                # Time moves on (idle groups close it every second); old versions go.
                while replica.gc_removed < 19:
                    await trio.sleep(0.1)
                assert replica.sm.store.gc_watermark > stamps[-1]
                assert await db.read("g", b"k") == b"19"
                with pytest.raises(errors.InvalidArgumentError, match="garbage-collection"):
                    await db.read("g", b"k", staleness="exact:5")


@contextlib.asynccontextmanager
async def _one_key_written(limits: Limits | None = None):
    """A one-region cluster whose keyspace "k" holds a = 1: yields a client and the data
    group's leader replica (within 30 s)."""
    async with open_local_cluster(("us-east",), 1, seed=4, limits=limits) as cluster:
        gid = data_group(cluster.config, "us-east")
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"a", b"1"))
                yield db, cluster.nodes[await _leader_of(cluster, gid)].replicas[gid]


@contextlib.asynccontextmanager
async def _a_transaction_that_read(limits: Limits | None = None):
    """As :func:`_one_key_written`, with a transaction that read a: yields the replica and
    the transaction."""
    async with _one_key_written(limits) as (db, replica):
        tx = db.transaction()
        assert await tx.get("k", b"a") == b"1"
        yield replica, tx


async def test_an_exact_stale_read_below_the_gc_watermark_names_the_lifetime():
    """The refusal says how far back reads reach, in the unit the staleness is given in --
    not only two timestamps in nanoseconds."""
    lifetime_s = 1.0
    async with _one_key_written(Limits(max_txn_lifetime_s=lifetime_s)) as (db, replica):
        await db.run_transaction(lambda tx: tx.put("k", b"a", b"2"))
        # The group's low water passes "half a second ago" and its GC runs.
        await replica.close_up_to(replica.closed_ts + int(lifetime_s * 1e9) + 1)
        replica.sm.store.gc(replica.sm.low_water)
        with pytest.raises(errors.InvalidArgumentError,
                           match=r"maximum transaction lifetime, 1\.0 s") as refused:
            await db.read("k", b"a", staleness="exact:0.5")
        assert "garbage-collection watermark" in str(refused.value)


async def test_an_exact_stale_read_below_the_gc_watermark_names_the_groups_lifetime():
    """The lifetime that decides how far back a group keeps versions is the group's (the one
    its last CLOSE named: a leader restarted with another configuration gives it its own),
    not the one the node the client talks to is configured with: the refusal names that."""
    async with _one_key_written(Limits(max_txn_lifetime_s=1.0)) as (db, replica):
        await replica.propose(encode_close(replica.closed_ts + 1, 3 * 10**9))
        assert replica.sm.lifetime_ns == 3 * 10**9
        await db.run_transaction(lambda tx: tx.put("k", b"a", b"2"))
        await replica.propose(encode_close(replica.closed_ts + 3 * 10**9 + 1))
        replica.sm.store.gc(replica.sm.low_water)
        with pytest.raises(errors.InvalidArgumentError,
                           match=r"maximum transaction lifetime, 3\.0 s") as refused:
            await db.read("k", b"a", staleness="exact:0.5")
        assert "1.0 s" not in str(refused.value)


async def test_a_transaction_read_below_the_gc_watermark_is_a_retryable_too_old_conflict():
    """A transaction whose snapshot the group no longer keeps versions for (its low water,
    and the GC, went past it) is refused with the retryable conflict its commit would get
    (``too_old``), so that ``run_transaction`` runs it again; not with an invalid-argument
    error, which no retry loop retries. (A stale read of an explicit past time is another
    matter: see the test above.)"""
    lifetime_s = 1.0
    async with _a_transaction_that_read(Limits(max_txn_lifetime_s=lifetime_s)) as (replica, tx):
        # Time passes: the group's low water passes the snapshot and its GC runs.
        await replica.close_up_to(tx.read_ts + int(lifetime_s * 1e9) + 1)
        replica.sm.store.gc(replica.sm.low_water)
        assert replica.sm.store.gc_watermark > tx.read_ts
        with pytest.raises(errors.TransactionConflictError) as refused:
            await tx.get("k", b"b")
        assert refused.value.reason == "too_old"


async def test_a_snapshot_move_from_below_the_low_water_is_a_too_old_conflict():
    """A transaction that must move its snapshot up (a transaction it waited for committed
    above it) after outliving the maximum transaction lifetime is refused as too old, as its
    reads and commit would be: not as if a key it read had changed."""
    async with _a_transaction_that_read() as (replica, tx):
        # The group's lifetime shrinks to 1 ms (a leader configured so): the low water passes
        # the snapshot at once.
        await replica.propose(encode_close(replica.closed_ts + 2 * 10**6, 10**6))
        assert replica.sm.low_water > tx.read_ts
        with pytest.raises(errors.TransactionConflictError,
                           match="maximum transaction lifetime") as refused:
            await tx._move_snapshot(replica.closed_ts)
        assert refused.value.reason == "too_old"
        assert "changed" not in str(refused.value)


async def test_a_keyspace_that_survives_a_region_keeps_every_acknowledged_write():
    regions = ("us-east", "eu-west", "ap-south")
    wan = {("us-east", "eu-west"): 5, ("us-east", "ap-south"): 8, ("eu-west", "ap-south"): 6}
    async with open_local_cluster(regions, 1, wan_latency_ms=wan, seed=19) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(90):
                ks = await db.create_keyspace("ledger", home_region="us-east",
                                              survive="region")
                assert ks.survive == "region"
                with pytest.raises(errors.InvalidArgumentError, match="global keyspaces"):
                    await db.create_keyspace("nope", mode="regional", survive="region")
                acked: list[int] = []

                async def writer():
                    for i in range(40):
                        try:
                            await db.run_transaction(
                                lambda tx, i=i: tx.put("ledger", b"%03d" % i, b"x"))
                        except (errors.UnavailableError, errors.AmbiguousCommitError):
                            continue  # not acknowledged
                        acked.append(i)

                async def kill_home_region():
                    while len(acked) < 10:
                        await trio.sleep(0.01)
                    for node in cluster.config.nodes_in("us-east"):
                        await cluster.stop_node(node.id)

                async with trio.open_nursery() as n:
                    n.start_soon(writer)
                    n.start_soon(kill_home_region)
                # The keyspace stayed writable without its home region...
                assert len(acked) > 20 and max(acked) >= 30
                # ...and every acknowledged write is there.
                async with db.transaction() as tx:
                    rows = await tx.scan("ledger")
                assert {int(k) for k, _ in rows} >= set(acked)


async def test_a_spread_group_hands_leadership_home_only_to_a_home_voter_that_answers(
        monkeypatch):
    """A leader transfer stops the group's writes until it ends or times out (an election
    timeout): the spread group's leader must not keep trying to hand leadership to the voter
    of a home region that is down, or the keyspace that survived the region's loss spends
    most of its time refusing writes. Once that voter is back, leadership goes home again."""
    import raft.driver

    monkeypatch.setattr(engine.node, "LEADER_HOME_CHECK_S", 0.02)
    transfers: list[tuple[int, int]] = []
    transfer = raft.driver.RaftNode.transfer_leader

    def spy(self, to):
        transfers.append((self.group, to))
        return transfer(self, to)

    monkeypatch.setattr(raft.driver.RaftNode, "transfer_leader", spy)
    regions = ("us-east", "eu-west", "ap-south")
    async with open_local_cluster(regions, 1, seed=19) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(60):
                await db.create_keyspace("ledger", home_region="us-east", survive="region")
                group = spread_group(cluster.config, "us-east")
                home = cluster.config.nodes_in("us-east")[0].id
                while await _leader_of(cluster, group) != home:
                    await trio.sleep(0.02)
                await cluster.stop_node(home)
                await _leader_of(cluster, group)  # elected outside the home region
                transfers.clear()
                for i in range(20):  # 20 of the leader's checks, and writes meanwhile
                    await db.run_transaction(lambda tx, i=i: tx.put("ledger", b"%d" % i, b"x"))
                    await trio.sleep(0.02)
                assert (group, home) not in transfers
                await cluster.start_node(home)
                while await _leader_of(cluster, group) != home:
                    await trio.sleep(0.02)
                assert await db.read("ledger", b"19") == b"x"


async def test_a_spread_group_keeps_leadership_from_a_home_voter_whose_clock_is_off(
        monkeypatch):
    """A node whose clock is suspect serves no client and hands every group it leads over
    at each clock check: the spread group's leader must not hand leadership home to it, or
    the keyspace that is to survive a region's loss is unwritable while one node's clock is
    off (its leadership going back and forth, each time refused by the node)."""
    import raft.driver

    monkeypatch.setattr(engine.node, "LEADER_HOME_CHECK_S", 0.02)
    transfers: list[tuple[int, int]] = []
    transfer = raft.driver.RaftNode.transfer_leader

    def spy(self, to):
        transfers.append((self.group, to))
        return transfer(self, to)

    monkeypatch.setattr(raft.driver.RaftNode, "transfer_leader", spy)
    regions = ("us-east", "eu-west", "ap-south")
    # The home voter's clock runs 2 s ahead; the cluster allows 250 ms.
    async with open_local_cluster(regions, 1, seed=8,
                                  clock_offsets_ns={1: 2_000_000_000}) as cluster:
        group = spread_group(cluster.config, "us-east")
        skewed = cluster.nodes[1]
        with trio.fail_after(30):
            while skewed.clock_problem is None or any(
                    cluster.nodes[n].clock_problem for n in (2, 3)):
                await trio.sleep(0.02)
            # Both others have pinged it since it stopped serving.
            since = time.time_ns()
            while not all((m := cluster.nodes[n].monitor.offset(1)) is not None
                          and m.measured_at_ns - 2 * m.uncertainty_ns > since for n in (2, 3)):
                await trio.sleep(0.02)
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(30):
                await db.create_keyspace("ledger", home_region="us-east", survive="region")
                transfers.clear()
                for i in range(20):  # 20 of the leader's checks, and writes meanwhile
                    await db.run_transaction(lambda tx, i=i: tx.put("ledger", b"%d" % i, b"x"))
                    await trio.sleep(0.02)
                assert (group, 1) not in transfers
                assert await db.read("ledger", b"19") == b"x"


def test_a_home_voter_of_an_idle_group_answers_whatever_the_phase_of_the_quorum_check():
    """The home-leadership check runs on a period of its own (LEADER_HOME_CHECK_S, a
    multiple of the election timeout with the default tick): in an idle spread group, where
    the voter's answer to a heartbeat takes a WAN round trip, a check in step with the quorum
    check would find it inactive every time and never hand leadership home. It asks whether
    the voter answered within an election timeout instead; one silent for longer does not."""
    net = Network((1, 2, 3), check_quorum=True, pre_vote=True)
    net.elect(1)
    core = net.core(1)
    replica = types.SimpleNamespace(node=types.SimpleNamespace(core=core))
    net.tick(1, times=core.config.election_tick - 1)
    net.tick(1, deliver=False)  # the quorum check; its heartbeats' answers still travel
    assert core.status()["progress"][2]["active"] is False
    assert engine.node._answers(replica, 2)
    net.take()
    net.isolate(2)
    net.tick(1, times=core.config.election_tick + 1)
    assert core.role is StateRole.LEADER  # node 3 still answers
    assert not engine.node._answers(replica, 2) and engine.node._answers(replica, 3)


async def test_a_stale_read_in_an_idle_spread_group_asks_its_leader_to_close_time(monkeypatch):
    """An idle group's leader closes time only every few seconds (a spread group's CLOSE
    crosses regions): a replica that does not lead, asked for a snapshot more recent than it
    has closed, asks the leader to close up to it instead of waiting for the next close."""

    async def no_idle_closes(self):
        await trio.sleep_forever()

    monkeypatch.setattr(engine.replica.GroupReplica, "run_closer", no_idle_closes)
    regions = ("us-east", "eu-west", "ap-south")
    async with open_local_cluster(regions, 1, seed=5, wan_latency_ms={
            ("us-east", "eu-west"): 10, ("us-east", "ap-south"): 20,
            ("eu-west", "ap-south"): 30}) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(30):
                await east.create_keyspace("ledger", home_region="us-east", survive="region")
                group = spread_group(cluster.config, "us-east")
                while await _leader_of(cluster, group) != 1:
                    await trio.sleep(0.02)
                await east.run_transaction(lambda tx: tx.put("ledger", b"k", b"v"))
            # The read waits for its replica's closed timestamp at most STALE_READ_WAIT_S
            # before it is refused; asked for, the close comes in a few WAN round trips.
            with trio.fail_after(engine.node.STALE_READ_WAIT_S / 2):
                for _ in range(3):
                    assert await west.read("ledger", b"k", staleness="bounded:0") == b"v"


async def test_an_undecided_transaction_leaves_a_keyspace_that_survives_a_region_writable(
        monkeypatch):
    """A transaction that writes a keyspace that survives a region's loss and one homed in
    a single region keeps its record on the former: if the client and that single region are
    lost between the prepares and the decision, the surviving regions can still abort it
    (its record's group has a majority left) and go on using the keys it had prepared."""
    monkeypatch.setattr(engine.node, "INTENT_WAIT_S", 4.0)
    regions = ("us-east", "eu-west", "ap-south")
    async with open_local_cluster(regions, 1, seed=23) as cluster:
        async with cluster.connect("eu-west") as west, cluster.connect("ap-south") as south:
            with trio.fail_after(60):
                await west.create_keyspace("ledger", home_region="us-east", survive="region")
                await west.create_keyspace("local", home_region="eu-west")
                await west.run_transaction(lambda tx: tx.put("ledger", b"k", b"old"))

                class Crash(Exception):
                    """The client and its region are lost before the decision."""

                call_group = west._call_group

                async def crash_before_deciding(group, method, payload, **kwargs):
                    if method == "decide":
                        raise Crash
                    return await call_group(group, method, payload, **kwargs)

                monkeypatch.setattr(west, "_call_group", crash_before_deciding)
                tx = west.transaction()
                await tx.put("ledger", b"k", b"new")
                await tx.put("local", b"k", b"new")
                with pytest.raises(Crash):
                    await tx.commit()
                west_node = cluster.config.nodes_in("eu-west")[0].id
                await cluster.stop_node(west_node)
                # Recovered once past its deadline: aborted, as it was never decided.
                assert await south.read("ledger", b"k") == b"old"
                await south.run_transaction(lambda tx: tx.put("ledger", b"k", b"newer"))
                assert await south.read("ledger", b"k") == b"newer"
                # Back, the lost region finishes its part the same way.
                await cluster.start_node(west_node)
                assert await south.read("local", b"k") is None


async def test_a_partitioned_leader_is_replaced_and_nothing_acknowledged_is_lost():
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=20) as cluster:
        async with cluster.connect("eu-west") as db:
            with trio.fail_after(90):
                await _setup(db)
                group = data_group(cluster.config, "us-east")
                old = await _leader_of(cluster, group)
                acked = []
                for i in range(30):
                    if i == 5:
                        cluster.partition({old})  # the leader alone on its side
                    try:
                        await db.run_transaction(lambda tx, i=i: tx.put("e", b"%02d" % i, b"x"))
                    except (errors.AmbiguousCommitError, errors.UnavailableError):
                        continue
                    acked.append(i)
                new = await _leader_of(cluster, group)
                assert new != old and len(acked) >= 20
                cluster.heal()
                async with db.transaction() as tx:
                    rows = await tx.scan("e")
                assert {int(k) for k, _ in rows} >= set(acked)
                # The old leader catches up once healed.
                replica = cluster.nodes[old].replicas[group]
                target = cluster.nodes[new].replicas[group].sm.applied_index
                while replica.sm.applied_index < target:
                    await trio.sleep(0.05)


async def test_a_keyspace_moves_home_online():
    async with open_local_cluster(TWO_REGIONS, 1, wan_latency_ms=WAN, seed=25) as cluster:
        async with cluster.connect("us-east") as east, cluster.connect("eu-west") as west:
            with trio.fail_after(90):
                await east.create_keyspace("acct", home_region="us-east")
                async with east.transaction() as tx:
                    for i in range(30):
                        await tx.put("acct", b"k%02d" % i, b"%d" % i)
                    await tx.put("acct", b"n", b"0")
                acked = 0
                moving = True

                async def bump(tx):
                    n = int(await tx.get("acct", b"n"))
                    await tx.put("acct", b"n", b"%d" % (n + 1))

                async def writer(db):
                    nonlocal acked
                    while moving or acked < 10:
                        await db.run_transaction(bump)
                        acked += 1

                async with trio.open_nursery() as n:
                    n.start_soon(writer, east)
                    n.start_soon(writer, west)
                    await trio.sleep(0.3)
                    ks = await east.move_keyspace("acct", "eu-west")
                    moving = False
                assert ks.home == "eu-west"
                assert (await west.keyspace("acct")).home == "eu-west"
                for db in (east, west):
                    assert await db.read("acct", b"n") == b"%d" % acked
                    async with db.transaction() as tx:
                        rows = await tx.scan("acct")
                    assert len(rows) == 31 and rows[0] == (b"k00", b"0")
                # Moving back deletes nothing that was written meanwhile, and finds its way.
                await west.run_transaction(lambda tx: tx.delete("acct", b"k00"))
                await west.move_keyspace("acct", "us-east")
                assert await east.read("acct", b"k00") is None
                assert await east.read("acct", b"k01") == b"1"
                assert await west.read("acct", b"n") == b"%d" % acked


async def test_old_transaction_records_are_forgotten_once_no_intent_is_left(monkeypatch):
    """Records of two-phase transactions are collected after their retention: commits once
    every participant holds no intent of them (one whose coordinator died before resolving
    is finished first), aborts at once; the data stays."""
    import engine.group

    monkeypatch.setattr(engine.group, "RECORD_RETENTION_NS", 2 * 10**9)
    monkeypatch.setattr(engine.group, "DECISION_HORIZON_NS", 10**9)
    monkeypatch.setattr(engine.node, "RECORD_GC_INTERVAL_S", 0.5)
    monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 60.0)  # only the GC may finish it
    async with open_local_cluster(TWO_REGIONS, 3, wan_latency_ms=WAN, seed=23) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(90):
                await _setup(east)
                for i in range(3):
                    async with east.transaction() as tx:
                        await tx.put("e", b"k%d" % i, b"v%d" % i)
                        await tx.put("w", b"k%d" % i, b"v%d" % i)
                ids = {ks: (await east.keyspace(ks)).id for ks in ("e", "w")}
                primary, commit_ts = await _prepare_directly(east, cluster, 0x9ABC, {
                    "us-east": [[encode_key(ids["e"], b"x"), b"new"]],
                    "eu-west": [[encode_key(ids["w"], b"x"), b"new"]]}, "us-east")
                groups = [data_group(cluster.config, r) for r in TWO_REGIONS]
                reply = await east._call_group(primary, "decide", {
                    "group": primary, "txn_id": 0x9ABC, "commit_ts": commit_ts,
                    "since": commit_ts, "participants": groups}, commit=True)
                assert reply["committed"]
                # The coordinator "died" before resolving eu-west: the record must outlive
                # that intent, and the collection finishes it.
                leader = cluster.nodes[await _leader_of(cluster, primary)]
                assert leader.replicas[primary].sm.record(0x9ABC) == (True, commit_ts)
                while leader.replicas[primary].sm.record_count():
                    await trio.sleep(0.2)
                    leader = cluster.nodes[await _leader_of(cluster, primary)]
                other = cluster.nodes[await _leader_of(cluster, groups[1])].replicas[groups[1]]
                assert not other.sm.is_prepared(0x9ABC)
                for i in range(3):
                    assert await east.read("w", b"k%d" % i) == b"v%d" % i
                assert await east.read("w", b"x") == b"new"
                assert await east.read("e", b"x") == b"new"


async def test_a_move_that_fails_before_the_catalog_changes_leaves_the_keyspace_writable(
        monkeypatch):
    """The copy fails midway: the old home's write fence is lifted again, writes succeed
    there, and running the move again completes it."""
    import engine.client

    async def broken_copy(self, ks, old, new):
        raise errors.UnavailableError("the new home is unreachable")

    async with open_local_cluster(TWO_REGIONS, 1, wan_latency_ms=WAN, seed=26) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(60):
                await east.create_keyspace("acct", home_region="us-east")
                await east.run_transaction(lambda tx: tx.put("acct", b"k", b"1"))
                with monkeypatch.context() as m:
                    m.setattr(engine.client.Database, "_copy_keyspace", broken_copy)
                    with pytest.raises(errors.UnavailableError, match="unreachable"):
                        await east.move_keyspace("acct", "eu-west")
                assert (await east.keyspace("acct")).home == "us-east"
                with trio.fail_after(5):  # no 'moved' conflicts: the fence is gone
                    await east.run_transaction(lambda tx: tx.put("acct", b"k", b"2"))
                ks = await east.move_keyspace("acct", "eu-west")
                assert ks.home == "eu-west"
                assert await east.read("acct", b"k") == b"2"


async def test_statistics_count_the_bytes_between_regions():
    async with open_local_cluster(TWO_REGIONS, 1, wan_latency_ms=WAN, seed=27) as cluster:
        async with cluster.connect("us-east") as east:
            with trio.fail_after(60):
                await _setup(east)
                before = (await east.statistics())["cross_region_bytes"]
                async with east.transaction() as tx:  # two-phase: prepares go both ways
                    await tx.put("e", b"k", b"x" * 10_000)
                    await tx.put("w", b"k", b"y" * 10_000)
                # The client sends the eu-west value there itself (not counted); us-east's
                # value reaches its eu-west learner through Raft: 10 kB at least, once the
                # learners' next batch has left.
                while True:
                    after = (await east.statistics())["cross_region_bytes"]
                    grown = (after.get("us-east->eu-west", 0)
                             - before.get("us-east->eu-west", 0))
                    if grown >= 10_000:
                        break
                    await trio.sleep(0.1)
                assert set(after) == {"us-east->eu-west", "eu-west->us-east"}
                by_node = east.bytes_by_node()
                assert sum(sent for sent, _ in by_node.values()) > 20_000
                assert all(received > 0 for _, received in by_node.values())


async def _move_leader(cluster, group: int, target: int) -> None:
    with trio.fail_after(20):
        while (leader := await _leader_of(cluster, group)) != target:
            try:
                cluster.nodes[leader].replicas[group].node.transfer_leader(target)
            except errors.MeridianError:
                pass  # a transfer already under way, or the lead moving: look again
            await trio.sleep(0.05)


async def test_a_write_lands_above_a_snapshot_closed_ahead_of_its_groups_clock():
    # A transaction's snapshot is a group's closed timestamp, which a leader whose clock runs
    # ahead (within the offset limit) can push past every other node's clock. The group it
    # then writes to must commit above that snapshot, not refuse it as invalid.
    async with open_local_cluster(TWO_REGIONS, 3, seed=3,
                                  clock_offsets_ns={1: 240_000_000}) as cluster:
        east = data_group(cluster.config, "us-east")
        await _move_leader(cluster, engine.node.META_GROUP, 2)
        await _move_leader(cluster, east, 2)
        async with cluster.connect(region="eu-west") as db:
            await db.create_keyspace("east", home_region="us-east")
            await db.create_keyspace("west", home_region="eu-west")
            await db.run_transaction(lambda tx: tx.put("east", b"k", b"v"))
            for attempt in range(3):
                await _move_leader(cluster, east, 1)  # its CLOSE entries carry its clock
                node1 = cluster.nodes[1]
                await node1.replicas[east].close_up_to(node1.clock.now())
                await _move_leader(cluster, east, 2)  # closed up to ~240 ms ahead of node 2

                async def body(tx):
                    await tx.get("east", b"k")
                    await tx.put("west", b"w", b"%d" % attempt)

                await db.run_transaction(body)


async def test_a_commit_cancelled_during_its_prepares_aborts_at_once():
    # The caller gives up while one group has prepared and another has not answered: the
    # prepared group's intents used to stay, blocking readers of its keys, until recovery
    # found them past their deadline.
    async with _two_homes(19) as (cluster, east):
        east_group = data_group(cluster.config, "us-east")
        real_call = east._call_group
        prepared_east = trio.Event()

        async def call_group(group, method, payload, **kwargs):
            if method == "prepare" and group != east_group:
                await trio.sleep_forever()  # eu-west never answers
            reply = await real_call(group, method, payload, **kwargs)
            if method == "prepare":
                prepared_east.set()
            return reply

        east._call_group = call_group
        await _commit_cancelled_once(await _two_group_txn(east), prepared_east)
        east._call_group = real_call
        await east._drain()  # the abort runs in the background
        leader = cluster.nodes[await _leader_of(cluster, east_group)]
        sm = leader.replicas[east_group].sm
        assert sm.prepared() == []
        assert sm.intents([encode_key((await east.keyspace("e")).id, b"k")], 2**63) == []
        assert await east.read("e", b"k") is None


class _Coordinated:
    """What a transaction's commit asks of its handle (no cluster), for two groups: 1 in the
    client's region prepares, 2 elsewhere refuses its prepare, and the record (in group 1)
    never answers the abort."""

    region = "us-east"
    limits = {"max_txn_lifetime_s": 60.0}
    _groups = {1: {"region": "us-east"}, 2: {"region": "eu-west"}}

    def __init__(self) -> None:
        self.aborting = trio.Event()
        self.background: list[str] = []

    async def _call_group(self, group, method, payload, **kwargs):
        if method == "prepare" and group == 2:
            raise errors.TransactionConflictError("refused", "write_write")
        if method == "decide":
            assert payload["commit_ts"] == 0  # only ever an abort
            self.aborting.set()
            await trio.sleep_forever()
        return {"ts": 100}

    def _in_background(self, fn, *args) -> None:
        self.background.append(fn.__name__)


async def test_a_commit_cancelled_before_its_decision_is_not_of_unknown_outcome():
    # A group refused its prepare, and the caller gave up while the abort was on its way to
    # the record: no commit was ever sent, so the transaction did not commit and never will.
    # It was reported "of unknown outcome (it may have committed)" all the same, sending the
    # application to find out (and the blocking API's Ctrl-C note said so too).
    db = _Coordinated()
    tx = client.Transaction(db, "snapshot")
    tx._writes = {b"a": b"1", b"b": b"1"}
    tx._write_group = {b"a": 1, b"b": 2}
    await _commit_cancelled_once(tx, db.aborting)
    assert db.background == ["_finish_from_record"]  # the abort goes on in the background
    with pytest.raises(errors.TransactionClosedError) as closed:
        await tx.commit()
    assert "unknown outcome" not in str(closed.value)


async def _commit_cancelled_once(tx, event: trio.Event) -> None:
    """Commits ``tx``, cancelled (as by its caller's timeout) once ``event`` is set."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tx.commit)
            await event.wait()
            scope.cancel()
    assert scope.cancelled_caught


@pytest.mark.parametrize("answered", [False, True])
async def test_a_commit_cancelled_during_its_decision_finishes_at_once(monkeypatch, answered):
    # The caller gives up while the decision is on its way to the primary (not sent yet, or
    # recorded with its answer cut off): the intents used to stay in every group the record
    # had not resolved, blocking readers and writers of their keys until recovery found them
    # past their deadline. The record settles the transaction at once instead: an abort if
    # the decision had not reached it, else the recorded commit.
    async with _two_homes(20, monkeypatch) as (cluster, east):
        real_call = east._call_group
        deciding = trio.Event()

        async def call_group(group, method, payload, **kwargs):
            if method == "decide" and not deciding.is_set():
                if answered:
                    await real_call(group, method, payload, **kwargs)
                deciding.set()
                await trio.sleep_forever()
            return await real_call(group, method, payload, **kwargs)

        east._call_group = call_group
        tx = await _two_group_txn(east)
        await _commit_cancelled_once(tx, deciding)
        with pytest.raises(errors.TransactionClosedError, match="unknown outcome"):
            await tx.put("e", b"k", b"again")
        await east._drain()  # the record is read in the background
        for region in TWO_REGIONS:
            group = data_group(cluster.config, region)
            leader = cluster.nodes[await _leader_of(cluster, group)]
            assert leader.replicas[group].sm.prepared() == []
        expected = b"new" if answered else None
        assert await east.read("e", b"k") == await east.read("w", b"k") == expected


async def test_a_commit_cancelled_while_it_records_a_refusal_aborts_at_once(monkeypatch):
    # One group refuses its prepare, and the caller gives up while the abort is on its way to
    # the primary: the other group's intents used to stay until recovery found them past
    # their deadline.
    async with _two_homes(21, monkeypatch) as (cluster, east):
        east_group = data_group(cluster.config, "us-east")
        real_call = east._call_group
        aborting = trio.Event()

        async def call_group(group, method, payload, **kwargs):
            if method == "prepare" and group != east_group:
                raise errors.TransactionConflictError("refused", "write")
            if method == "decide" and not aborting.is_set():
                aborting.set()
                await trio.sleep_forever()
            return await real_call(group, method, payload, **kwargs)

        east._call_group = call_group
        await _commit_cancelled_once(await _two_group_txn(east), aborting)
        await east._drain()  # the abort runs in the background
        leader = cluster.nodes[await _leader_of(cluster, east_group)]
        assert leader.replicas[east_group].sm.prepared() == []
        assert await east.read("e", b"k") is None


async def test_a_commit_whose_prepare_answer_was_lost_aborts_that_prepare_at_once(monkeypatch):
    # One group installs its intents but its answer is lost (AmbiguousCommitError): the
    # transaction aborts, and those intents go with the abort, like the ones of a group that
    # answered -- not left blocking readers and writers of their keys until recovery finds
    # them past their deadline.
    async with _two_homes(22, monkeypatch) as (cluster, east):
        west_group = data_group(cluster.config, "eu-west")
        real_call = east._call_group

        async def call_group(group, method, payload, **kwargs):
            reply = await real_call(group, method, payload, **kwargs)
            if method == "prepare" and group == west_group:
                raise errors.AmbiguousCommitError("the answer was lost")
            return reply

        east._call_group = call_group
        with pytest.raises(errors.UnavailableError, match="could not prepare"):
            await (await _two_group_txn(east)).commit()
        await east._drain()  # the abort is sent in the background
        leader = cluster.nodes[await _leader_of(cluster, west_group)]
        assert leader.replicas[west_group].sm.prepared() == []
        east._call_group = real_call
        assert await east.read("w", b"k") is None
