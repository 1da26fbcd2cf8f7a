"""The trio driver (``raft.driver``) over real storage and the in-memory transport.

Integration tests: real time (ticks of a few milliseconds), real files, every wait bounded by
``trio.fail_after``. The protocol itself is tested without time in the core and simulator
tests; these check the plumbing — persist before acknowledging, group commit, apply and resolve,
reads, restart, snapshot catch-up, transfer and shutdown.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Sequence

import pytest
import trio

from raft.core import Config
from raft.driver import MAX_PROPOSAL_BYTES, EntryLostError, RaftTimeoutError, open_raft_node
from raft.storage import RaftStorage
from raft.transport import MemoryNetwork
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDroppedError,
    RaftError,
)

TICK = 0.005


class Counter:
    """Appends every entry's data to a list; results are the list length after each."""

    def __init__(self):
        self.items: list[bytes] = []

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        out = []
        for e in entries:
            self.items.append(e.data)
            out.append(len(self.items))
        return out

    def snapshot(self) -> bytes:
        return b"\n".join(self.items)

    def restore(self, data: bytes) -> None:
        self.items = data.split(b"\n") if data else []


# The usual Ready's fsync runs on the loop's thread, or in a native thread; or a leader's in
# a native thread while its loop goes on (the asynchronous append), followers' on the loop.
SYNC_MODES = pytest.mark.parametrize("sync_options", [
    {"sync_in_loop": True, "async_append": False}, {"sync_in_loop": False},
    {"sync_in_loop": True, "async_append": True}], ids=["in-loop", "syncer", "async-append"])


class Cluster:
    def __init__(self, tmp_path, nursery, n=3, **node_options):
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.ids = list(range(1, n + 1))
        self.net = MemoryNetwork(seed=7)
        self.nodes = {}
        self.sms = {}
        self.scopes = {}
        self.options = node_options

    async def start(self, i: int) -> None:
        ready = trio.Event()
        scope = trio.CancelScope()
        self.scopes[i] = scope
        self.nursery.start_soon(self._run, i, scope, ready)
        await ready.wait()

    async def _run(self, i, scope, ready):
        with scope:
            options = dict(self.options)
            storage = RaftStorage.open(self.tmp_path / f"n{i}",
                                       **options.pop("storage_options", {}))
            try:
                sm = options.pop("state_machine", lambda i: Counter())(i)
                on_send = options.pop("on_send", None)
                config = Config(i, election_tick=10, **options.pop("config", {}))
                async with self.net.endpoint(i) as t:
                    if on_send is not None:
                        send = t.send

                        def t_send(group, msgs, i=i, send=send):
                            on_send(i, msgs)
                            send(group, msgs)

                        t.send = t_send
                    async with open_raft_node(
                        1, config, storage, t, sm,
                        bootstrap=ConfState(tuple(self.ids)), seed=i, tick_interval=TICK,
                        **options,
                    ) as node:
                        self.nodes[i] = node
                        self.sms[i] = sm
                        ready.set()
                        await trio.sleep_forever()
            finally:
                self.nodes.pop(i, None)
                storage.close()

    def stop(self, i: int) -> None:
        self.scopes[i].cancel()

    async def stopped(self, i: int) -> None:
        """Stops node ``i`` and waits until it is down."""
        self.stop(i)
        while i in self.nodes:
            await trio.sleep(TICK)

    async def catch_up_through_snapshot(self, entries: range) -> tuple[int, int]:
        """:meth:`leave_behind`, then starts the follower again and waits until it has
        applied everything the leader committed."""
        lid, victim = await self.leave_behind(entries)
        await self.start(victim)
        await self.nodes[victim].wait_applied(self.nodes[lid].core.commit)
        return lid, victim

    async def leave_behind(self, entries: range) -> tuple[int, int]:
        """Stops a follower and proposes ``entries`` (as b"%d") through the leader: returns
        (leader, follower)."""
        lid = await self.leader()
        victim = next(i for i in self.ids if i != lid)
        await self.stopped(victim)
        for k in entries:
            await self.nodes[lid].propose(b"%d" % k)
        return lid, victim

    async def cut_off_leader(self):
        """The leader, once it has committed an entry of its own; then every other node is
        stopped, so that it can neither commit nor confirm a read any more."""
        leader_id = await self.leader()
        node = self.nodes[leader_id]
        with trio.fail_after(5):
            await node.propose(b"ok", timeout=5)
            await node.linearizable_read(timeout=5)
        for i in self.ids:
            if i != leader_id:
                self.stop(i)
        return node

    async def partition_leader(self):
        """The leader's id and node, once it has committed an entry of its own; then it is
        partitioned from every other node (which may elect a leader among themselves)."""
        leader_id = await self.leader()
        node = self.nodes[leader_id]
        with trio.fail_after(5):
            await node.propose(b"ok", timeout=5)
        for i in self.ids:
            if i != leader_id:
                self.net.partition(leader_id, i)
        return leader_id, node

    async def leader(self, timeout=10.0) -> int:
        with trio.fail_after(timeout):
            while True:
                leaders = [i for i, n in self.nodes.items() if n.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(TICK)

    async def leader_and_follower(self, data: bytes = b"x"):
        """``(leader, follower id, follower)`` once ``data`` is committed and applied on that
        follower."""
        lid = await self.leader()
        leader = self.nodes[lid]
        fid = next(i for i in self.ids if i != lid)
        with trio.fail_after(10):
            await leader.propose(data)
            await self.nodes[fid].wait_applied(leader.core.commit)
        return leader, fid, self.nodes[fid]


@contextlib.asynccontextmanager
async def cluster(tmp_path, n=3, **options):
    async with trio.open_nursery() as nursery:
        c = Cluster(tmp_path, nursery, n, **options)
        for i in c.ids:
            await c.start(i)
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()


@SYNC_MODES
async def test_propose_returns_the_state_machine_result_and_every_replica_applies(
        tmp_path, sync_options):
    async with cluster(tmp_path, **sync_options) as c:
        leader = c.nodes[await c.leader()]
        with trio.fail_after(10):
            results = [await leader.propose(b"x%d" % k) for k in range(5)]
        assert results == [1, 2, 3, 4, 5]
        with trio.fail_after(10):
            for node in c.nodes.values():
                await node.wait_applied(leader.core.commit)
        for sm in c.sms.values():
            assert sm.items == [b"x0", b"x1", b"x2", b"x3", b"x4"]


@SYNC_MODES
async def test_concurrent_proposals_share_fsyncs(tmp_path, sync_options):
    """Group commit: 200 concurrent proposals need far fewer than 200 fsyncs on the leader."""
    async with cluster(tmp_path, **sync_options) as c:
        leader = c.nodes[await c.leader()]
        before = leader.statistics().fsyncs
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for k in range(200):
                    nursery.start_soon(leader.propose, b"p%d" % k)
        used = leader.statistics().fsyncs - before
        assert used < 100, f"{used} fsyncs for 200 concurrent proposals"
        assert len(c.sms[leader.id].items) == 200


@SYNC_MODES
async def test_followers_handle_appends_in_the_receiving_task(tmp_path, sync_options):
    """With the fsync on the loop's thread, a follower's usual Ready (append, fsync,
    acknowledge, apply) needs no waiting and is handled by the task that received the append,
    not the ready loop; with the fsync thread every Ready goes through the ready loop."""
    async with cluster(tmp_path, **sync_options) as c:
        leader = c.nodes[await c.leader()]
        before = {i: n.statistics() for i, n in c.nodes.items()}
        with trio.fail_after(10):
            for k in range(20):
                await leader.propose(b"i%d" % k)
            for node in c.nodes.values():
                await node.wait_applied(leader.core.commit)
        for i, node in c.nodes.items():
            if i == leader.id:
                continue
            stats = node.statistics()
            readies = stats.readies - before[i].readies
            inline = stats.readies_inline - before[i].readies_inline
            assert readies >= 20  # at least one per append
            if sync_options["sync_in_loop"]:
                assert inline >= 0.9 * readies, (inline, readies)
            else:
                assert inline == 0
        assert all(sm.items[-20:] == [b"i%d" % k for k in range(20)] for sm in c.sms.values())


async def test_a_leader_handles_its_proposals_and_acknowledgements_inline(tmp_path):
    """With the fsync on the loop's thread, ``propose_nowait`` on an idle leader sends,
    appends and fsyncs the entry before it returns, and the acknowledgements that commit it
    are applied by the task that received them — the leader's usual Readies never wait for
    the ready loop's task."""
    async with cluster(tmp_path) as c:
        leader = c.nodes[await c.leader()]
        with trio.fail_after(10):
            await leader.propose(b"warm")  # the new leader's first entries are committed
        before = leader.statistics()
        for k in range(10):
            applied = trio.Event()
            outcome = []

            def done(result, error, outcome=outcome, applied=applied):
                outcome.append(error)
                applied.set()

            fsyncs = leader.statistics().fsyncs
            leader.propose_nowait(b"n%d" % k, done)
            assert leader.statistics().fsyncs == fsyncs + 1  # durable here before returning
            with trio.fail_after(10):
                await applied.wait()
            assert outcome == [None]
        after = leader.statistics()
        readies = after.readies - before.readies
        inline = after.readies_inline - before.readies_inline
        assert readies >= 20  # a Ready for each proposal, and one for each commit
        assert inline >= 0.9 * readies, (inline, readies)
        assert c.sms[leader.id].items[-10:] == [b"n%d" % k for k in range(10)]


async def test_a_leader_sends_each_append_once_as_its_log_rolls_over_to_new_segments(tmp_path):
    """An inline Ready sends its messages before it appends its entries (so they leave a
    write system call sooner); entries that need a
    new log segment (whose creation syncs) go on to the ready loop, which must not send the
    Ready's messages a second time. Small segments make that happen every few proposals."""
    appended = []  # (sender, follower, entry index) of every entry sent in an append
    written = {}  # entry index -> the sender's last log index when it was sent
    nodes = {}

    def on_send(sender, msgs):
        for m in msgs:
            if m.type is MessageType.APPEND:
                for e in m.entries:
                    appended.append((sender, m.to, e.index))
                    written[e.index] = nodes[sender]._storage.last_index

    async with cluster(tmp_path, storage_options={"segment_size": 4096},
                       on_send=on_send) as c:
        nodes.update(c.nodes)
        lid = await c.leader()
        leader = c.nodes[lid]
        with trio.fail_after(10):
            await leader.propose(b"warm")
        first = leader.core.last_index + 1
        before = leader.statistics()
        for k in range(24):
            applied = trio.Event()
            leader.propose_nowait(b"%04d" % k + b"x" * 1000,
                                  lambda result, error, applied=applied: applied.set())
            with trio.fail_after(10):
                await applied.wait()
        after = leader.statistics()
        assert after.readies_inline - before.readies_inline < after.readies - before.readies
        sent = collections.Counter((to, index) for sender, to, index in appended
                                   if sender == lid and index >= first)
        followers = [i for i in c.ids if i != lid]
        assert sent == {(to, index): 1 for to in followers for index in range(first, first + 24)}
        # Each append left before the leader wrote its entry to its own log.
        assert all(written[index] < index for index in range(first, first + 24))
        for i in c.ids:
            await c.nodes[i].wait_applied(leader.core.commit)
            assert [x[:4] for x in c.sms[i].items[-24:]] == [b"%04d" % k for k in range(24)]


async def test_follower_refuses_proposals_with_a_leader_hint(tmp_path):
    async with cluster(tmp_path) as c:
        lid = await c.leader()
        follower = next(n for i, n in c.nodes.items() if i != lid)
        with trio.fail_after(5):
            while follower.leader != lid:
                await trio.sleep(TICK)
        with pytest.raises(ProposalDroppedError) as info:
            await follower.propose(b"nope")
        assert info.value.leader == lid


async def test_linearizable_read_on_a_follower_sees_acknowledged_writes(tmp_path):
    async with cluster(tmp_path) as c:
        lid = await c.leader()
        leader = c.nodes[lid]
        with trio.fail_after(10):
            await leader.propose(b"a")
            await leader.propose(b"b")
            fid = next(i for i in c.nodes if i != lid)
            while c.nodes[fid].leader != lid:
                await trio.sleep(TICK)
            index = await c.nodes[fid].linearizable_read()
        assert index >= 3  # the no-op and both writes
        assert c.sms[fid].items[-2:] == [b"a", b"b"]


@SYNC_MODES
async def test_restarted_node_recovers_its_log_and_catches_up(tmp_path, sync_options):
    async with cluster(tmp_path, **sync_options) as c:
        lid = await c.leader()
        with trio.fail_after(10):
            for k in range(10):
                await c.nodes[lid].propose(b"%d" % k)
        victim = next(i for i in c.ids if i != lid)
        with trio.fail_after(10):
            await c.stopped(victim)
            for k in range(10, 20):
                await c.nodes[lid].propose(b"%d" % k)
            await c.start(victim)
            await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
        assert c.sms[victim].items == [b"%d" % k for k in range(20)]


async def test_a_replica_that_stored_a_membership_change_knows_the_one_before_is_committed(
        tmp_path):
    """Membership changes take effect when applied (raft.core), and a restarted replica applies
    only what its stored commit index covers. A replica that stored change C2 must therefore
    have stored a commit index covering C1, the change before it (committed before C2 was
    proposed): else, restarted, it would campaign under the configuration before C1, two
    changes behind the cluster's, whose majorities need not overlap the cluster's -- with
    voters {1, 2, 3} then adding 4 and 5, node 3 restarted under {1, 2, 3} wins with node 2's
    vote alone while {1, 4, 5} commit without either: two leaders committing at one index."""
    async with cluster(tmp_path) as c:
        lid = await c.leader()
        with trio.fail_after(20):
            await c.nodes[lid].propose(b"x")
            for new in (4, 5):  # nodes that never start: 1, 2 and 3 are a majority of five
                await c.nodes[lid].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, new))
            await wait_until(lambda: all(n.core.conf.voters == (1, 2, 3, 4, 5)
                                         for n in c.nodes.values()))
            for i in c.ids:
                await c.stopped(i)
    for i in c.ids:
        storage = RaftStorage.open(tmp_path / f"n{i}")
        try:
            state = storage.initial_state(ConfState((1, 2, 3)))
        finally:
            storage.close()
        changes = [e.index for e in state.entries if e.type is EntryType.CONF_CHANGE]
        assert len(changes) == 2
        assert state.hard_state.commit >= changes[0], (i, state.hard_state, changes)


async def test_a_group_shrunk_to_one_voter_elects_it_again_after_a_restart(tmp_path):
    """A replica comes back from a restart in the configuration it had applied: the voter
    left alone after the other was removed must not wait for that node's vote for ever."""
    async with cluster(tmp_path, n=2) as c:
        lid = await c.leader()
        other = next(i for i in c.ids if i != lid)
        with trio.fail_after(20):
            await c.nodes[lid].propose(b"x")
            await c.nodes[lid].propose_conf_change(ConfChange(ConfChangeType.REMOVE, other))
            assert c.nodes[lid].core.conf.voters == (lid,)
            for i in c.ids:
                await c.stopped(i)
            await c.start(lid)  # the removed node is gone for good
        assert await c.leader(timeout=5) == lid
        with trio.fail_after(5):
            await c.nodes[lid].propose(b"y")


async def test_follower_behind_the_snapshot_catches_up_through_it(tmp_path):
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0) as c:
        with trio.fail_after(20):
            lid, victim = await c.leave_behind(range(60))
            assert c.nodes[lid].statistics().snapshots_taken >= 1
            await c.start(victim)
            await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
        assert c.nodes[victim].statistics().snapshots_installed >= 1
        assert c.sms[victim].items == [b"%d" % k for k in range(60)]


class SlowRestore(Counter):
    """A Counter whose restore runs off the loop and waits to be released."""

    restore_in_thread = True

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def restore(self, data: bytes) -> None:
        self.thread = threading.current_thread()
        self.entered.set()
        if not self.release.wait(20):
            raise AssertionError("never released")
        super().restore(data)


async def test_a_state_machine_may_install_a_snapshot_off_the_event_loop(tmp_path):
    machines: list[SlowRestore] = []

    def machine(i):
        machines.append(SlowRestore())
        return machines[-1]

    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=machine) as c:
        try:
            with trio.fail_after(20):
                lid, victim = await c.leave_behind(range(60))
                await c.start(victim)
                sm = c.sms[victim]
                while not sm.entered.is_set():
                    await trio.sleep(TICK)
                assert sm.thread is not threading.main_thread()
                # The event loop goes on while the snapshot is installed: the group commits.
                await c.nodes[lid].propose(b"during")
                assert not sm.items
                sm.release.set()
                await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
        finally:
            for m in machines:  # a failed test must not leave a worker waiting
                m.release.set()
        assert sm.items == [b"%d" % k for k in range(60)] + [b"during"]


async def test_leader_transfer_moves_leadership(tmp_path):
    async with cluster(tmp_path) as c:
        lid = await c.leader()
        target = next(i for i in c.ids if i != lid)
        with trio.fail_after(10):
            await c.nodes[lid].propose(b"before")
            c.nodes[lid].transfer_leader(target)
            while not c.nodes[target].is_leader:
                await trio.sleep(TICK)
            await c.nodes[target].propose(b"after")


async def test_closed_node_fails_pending_and_new_calls(tmp_path):
    async with cluster(tmp_path, n=1) as c:
        node = c.nodes[await c.leader()]
        with trio.fail_after(5):
            await node.propose(b"ok")
        c.stop(1)
        with trio.fail_after(5):
            while 1 in c.nodes:
                await trio.sleep(TICK)
        with pytest.raises(RaftError):
            await node.propose(b"late")


async def test_an_idle_group_heartbeats_without_readies(tmp_path):
    async with cluster(tmp_path) as c:
        node = c.nodes[await c.leader()]
        with trio.fail_after(10):
            await node.propose(b"settle")
            await trio.sleep(5 * TICK)
            before = {i: n.statistics() for i, n in c.nodes.items()}
            # Until every node has sent 20 more messages: heartbeats and their answers.
            while any(n.statistics().messages_sent - before[i].messages_sent < 20
                      for i, n in c.nodes.items()):
                await trio.sleep(TICK)
            after = {i: n.statistics() for i, n in c.nodes.items()}
        for i in c.nodes:
            # They went straight out: no Ready, no ready-loop round.
            assert after[i].readies - before[i].readies <= 3


async def test_a_proposal_that_cannot_commit_fails_at_its_timeout(tmp_path):
    async with cluster(tmp_path) as c:
        node = await c.cut_off_leader()
        start = trio.current_time()
        with trio.fail_after(5), pytest.raises(RaftTimeoutError, match="outcome is unknown"):
            await node.propose(b"stranded", timeout=0.2)
        # Within a tick or two of the deadline, not at the test's own limit.
        assert 0.2 <= trio.current_time() - start < 0.2 + 20 * TICK
        assert node.statistics().proposals_pending == 0


async def test_settled_proposal_deadlines_are_dropped(tmp_path):
    async with cluster(tmp_path) as c:
        node = c.nodes[await c.leader()]
        with trio.fail_after(10):
            for k in range(50):
                await node.propose(b"x%d" % k, timeout=60)
            # The ticker drops settled deadlines at the front: nothing is kept for 60 s.
            while node._deadlines:
                await trio.sleep(TICK)


async def test_a_read_that_cannot_be_confirmed_fails_at_its_timeout(tmp_path):
    async with cluster(tmp_path) as c:
        node = await c.cut_off_leader()
        with trio.fail_after(5), pytest.raises((RaftTimeoutError, ProposalDroppedError)):
            await node.linearizable_read(timeout=0.2)


async def wait_until(predicate, timeout=5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(TICK)


async def test_a_proposal_whose_index_a_later_one_reuses_is_still_resolved(tmp_path):
    # A leader cut off with proposals pending loses its group, wins it back, and proposes
    # again at an index of one of them. The older proposal must still be resolved — here
    # by term when that index is applied (another leader's entry replaced it) — not left
    # waiting past its own timeout.
    async with cluster(tmp_path) as c:
        first, node = await c.partition_leader()
        base = node.core.last_index
        others = [i for i in c.ids if i != first]
        results, at = {}, {}

        async def propose(name, timeout):
            at[name] = node.core.last_index + 1
            try:
                results[name] = await node.propose(name, timeout=timeout)
            except Exception as exc:
                results[name] = type(exc)

        for k, name in enumerate((b"X", b"Y", b"Z")):
            c.nursery.start_soon(propose, name, 3.0 if name == b"Z" else 30.0)
            await wait_until(lambda k=k: node.core.last_index == base + 1 + k)
        # The others elect a leader among themselves and commit an entry of its term.
        await wait_until(lambda: any(c.nodes[i].is_leader for i in others))
        new = next(c.nodes[i] for i in others if c.nodes[i].is_leader)
        await wait_until(lambda: new.core.applied >= base + 1)
        c.net.heal()
        await wait_until(lambda: b"X" in results)
        new.transfer_leader(first)
        await wait_until(lambda: node.is_leader)
        index = node.core.last_index + 1
        with trio.fail_after(5):
            await node.propose(b"W", timeout=5)
        assert index <= at[b"Z"]  # W took the index (or one below) of a pending proposal
        await wait_until(lambda: b"Z" in results, timeout=2.5)  # before Z's own timeout
        assert results[b"Z"] is EntryLostError
        assert node.statistics().proposals_pending == 0


async def test_a_proposal_past_another_leaders_applied_entry_fails_without_waiting(tmp_path):
    # A leader cut off with two proposals pending loses its group; the new leader commits
    # only its no-op, at the first one's index, and the group then stays idle. Once that
    # entry of a later term is applied, no entry of the old term can follow it in the log:
    # the second proposal is lost too, though nothing was ever written at its own index.
    # It must fail at once, not wait (here without a timeout: for good) for a write.
    async with cluster(tmp_path) as c:
        first, node = await c.partition_leader()
        base = node.core.last_index
        others = [i for i in c.ids if i != first]
        results = {}

        async def propose(name):
            try:
                results[name] = await node.propose(name)
            except Exception as exc:
                results[name] = type(exc)

        for k, name in enumerate((b"X", b"Y")):
            c.nursery.start_soon(propose, name)
            await wait_until(lambda k=k: node.core.last_index == base + 1 + k)
        await wait_until(lambda: any(c.nodes[i].is_leader for i in others))
        new = next(c.nodes[i] for i in others if c.nodes[i].is_leader)
        await wait_until(lambda: new.core.applied >= base + 1)
        assert new.core.last_index == base + 1  # its no-op; nothing at Y's index
        c.net.heal()
        await wait_until(lambda: node.core.applied >= base + 1)
        await wait_until(lambda: len(results) == 2, timeout=1.0)
        assert results == {b"X": EntryLostError, b"Y": EntryLostError}
        assert node.statistics().proposals_pending == 0


async def test_a_read_is_failed_when_its_leader_steps_down(tmp_path):
    # The core forgets the reads of a leader that loses its leadership: the driver fails
    # them then, instead of leaving a read without a timeout waiting for good.
    async with cluster(tmp_path) as c:
        _, node = await c.partition_leader()
        outcome = []

        async def read():
            try:
                outcome.append(await node.linearizable_read())
            except Exception as exc:
                outcome.append(exc)

        c.nursery.start_soon(read)
        await wait_until(lambda: not node.is_leader)
        await wait_until(lambda: outcome != [], timeout=1.0)
        assert isinstance(outcome[0], ProposalDroppedError)
        assert node._reads == {}


async def test_a_proposal_over_the_size_limit_is_refused_and_the_node_goes_on(tmp_path):
    async with cluster(tmp_path) as c:
        node = c.nodes[await c.leader()]
        with pytest.raises(ValueError, match="over the .*-byte limit; nothing was written"):
            await node.propose(b"x" * (MAX_PROPOSAL_BYTES + 1))
        last = node.core.last_index
        with trio.fail_after(5):
            await node.propose(b"small", timeout=5)
        assert node.core.last_index == last + 1


async def test_an_invariant_broken_by_a_message_stops_the_node(tmp_path):
    """A core that raises while stepping a received message stops its node (never
    log-and-continue, STYLE §1); the cluster's other nodes are unaffected."""
    from raft.types import RaftInvariantError

    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path) as c:
            lid = await c.leader()
            victim = next(i for i in c.ids if i != lid)

            def broken(m):
                raise RaftInvariantError("planted")

            c.nodes[victim].core.step = broken
            with trio.fail_after(10):
                await c.nodes[lid].propose(b"x")  # the victim's step raises on the append
                while victim in c.nodes:
                    await trio.sleep(TICK)
    assert "planted" in repr(info.value) or any(
        "planted" in repr(e) for e in getattr(info.value, "exceptions", ()))


async def test_a_state_machine_failing_in_an_inline_ready_stops_its_node(tmp_path):
    """A follower's apply runs in the transport's receiving task (an inline Ready): when it
    raises, that node stops with the error (which the cluster's nursery then raises) — it is
    neither swallowed nor left to the transport."""
    class Planted(Exception):
        pass

    checked = []
    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path) as c:
            lid = await c.leader()
            leader = c.nodes[lid]
            victim = next(i for i in c.ids if i != lid)
            with trio.fail_after(10):
                await leader.propose(b"w")
                await c.nodes[victim].wait_applied(leader.core.commit)
            assert c.nodes[victim].statistics().readies_inline > 0
            checked.append(True)

            def broken(entries):
                raise Planted("planted apply failure")

            c.sms[victim].apply = broken
            with trio.fail_after(10):
                await leader.propose(b"x")  # committed by the leader and the third node
                await leader.propose(b"y")  # the victim learns "x" is committed: apply raises
                while victim in c.nodes:
                    await trio.sleep(TICK)
    assert checked, repr(info.value)
    assert any(isinstance(e, Planted) for e in _leaves(info.value))


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc
        if exc.__cause__ is not None:
            yield from _leaves(exc.__cause__)


async def test_apply_in_thread_runs_the_state_machine_off_the_event_loop(tmp_path):
    """For blocking state machines (LMDB): apply runs in the node's worker thread, and its
    results still resolve the proposals."""
    import threading

    threads = set()
    original = Counter.apply

    def recording_apply(self, entries):
        threads.add(threading.current_thread().name)
        return original(self, entries)

    Counter.apply = recording_apply
    try:
        async with cluster(tmp_path, n=1, apply_in_thread=True) as c:
            node = c.nodes[await c.leader()]
            with trio.fail_after(5):
                assert await node.propose(b"a") == 1
                assert await node.propose(b"b") == 2
    finally:
        Counter.apply = original
    assert threads and threading.main_thread().name not in threads


async def test_unsafe_modes_break_durability_only_when_asked(tmp_path):
    """The planted-bug switches of the fault tests: ``ack_before_fsync`` never fsyncs the log,
    ``votes_without_persisting`` never stores the vote; a safe node does both."""

    def stored_votes(directory):
        votes = []
        for i in (1, 2, 3):
            storage = RaftStorage.open(directory / f"n{i}")
            try:
                votes.append(storage.initial_state(ConfState((1, 2, 3))).hard_state.vote)
            finally:
                storage.close()
        return votes

    with pytest.raises(ValueError, match="unknown unsafe mode"):
        async with cluster(tmp_path / "bad", unsafe=frozenset({"fast"})):
            pass
    for name, unsafe in (("safe", frozenset()),
                         ("unsafe", frozenset({"ack_before_fsync", "votes_without_persisting"}))):
        async with cluster(tmp_path / name, unsafe=unsafe) as c:
            leader = c.nodes[await c.leader()]
            with trio.fail_after(10):
                assert await leader.propose(b"x") == 1
                for n in c.nodes.values():  # a quorum answered; the third may lag behind
                    await n.wait_applied(1)
            fsyncs = [n.statistics().fsyncs for n in c.nodes.values()]
        if unsafe:
            assert fsyncs == [0, 0, 0]
            assert stored_votes(tmp_path / name) == [0, 0, 0]
        else:
            assert min(fsyncs) > 0
            assert sum(v != 0 for v in stored_votes(tmp_path / name)) >= 2  # a quorum voted


class DurableCounter(Counter):
    """A :class:`Counter` that keeps its own durable state, as Meridian's groups keep theirs
    in LMDB: compaction leaves a local marker, and full snapshots are built only for
    followers, from a view taken between applies, in a thread."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.index = 0  # entries applied, as the driver counts them (every entry has data)
        self.builds = []  # (index, thread name) of each full snapshot built
        self.syncs = []  # the thread of each sync
        self.checkpoints = []  # the index of each checkpoint taken
        self.sync_gate = None  # a threading.Event each sync waits for, if set
        if path.exists():
            index, _, data = path.read_bytes().partition(b"|")
            self.index = int(index)
            self.items = data.split(b"\n") if data else []

    def apply(self, entries):
        out = super().apply(entries)
        self.index = entries[-1].index
        return out

    def snapshot(self) -> bytes:
        raise AssertionError("a durable state machine is never asked for snapshot()")

    def checkpoint(self) -> bytes:
        self.checkpoints.append(self.index)
        self._state = b"%d|" % self.index + b"\n".join(self.items)
        return b"local %d" % self.index

    def sync(self) -> None:
        import threading
        self.syncs.append(threading.current_thread().name)
        if self.sync_gate is not None:
            assert self.sync_gate.wait(10), "the test never let the sync finish"
        self.path.write_bytes(self._state)  # the state checkpoint() saw, or a later one

    def begin_snapshot(self):
        sm, index, items = self, self.index, list(self.items)

        class Build:
            def __init__(self):
                self.index = index

            def run(self):
                import threading
                sm.builds.append((index, threading.current_thread().name))
                return b"%d|" % index + b"\n".join(items)

            def cancel(self):
                pass

            def close(self):
                pass

        return Build()

    def restore(self, data: bytes) -> None:
        if data.startswith(b"local "):
            assert int(data.split()[1]) <= self.index, "the own state is behind the marker"
            return
        index, _, items = data.partition(b"|")
        self.index = int(index)
        self.items = items.split(b"\n") if items else []


async def test_a_durable_state_machine_compacts_without_copying_its_state(tmp_path, monkeypatch):
    """Compaction keeps only a local marker; the follower that fell behind it gets a full
    snapshot built for it, off the loop, and ends with the same state; once no follower has
    needed the built snapshot for a while, the leader drops it for a marker again."""
    import raft.driver
    monkeypatch.setattr(raft.driver, "SNAPSHOT_RELEASE_S", 0.1)
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: DurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(20):
            lid, victim = await c.leave_behind(range(60))
            leader = c.nodes[lid]
            assert leader.statistics().snapshots_taken >= 1
            assert c.sms[lid].builds == []  # compaction copied nothing
            assert leader.core.snapshot.local
            await c.start(victim)
            await c.nodes[victim].wait_applied(leader.core.commit)
        assert c.nodes[victim].statistics().snapshots_installed >= 1
        assert c.sms[victim].items == [b"%d" % k for k in range(60)]
        assert leader.statistics().snapshots_built >= 1
        index, thread = c.sms[lid].builds[0]
        assert index >= 40 and thread != "MainThread"
        with trio.fail_after(10):
            await wait_until(lambda: leader.core.snapshot.local)


async def test_a_built_snapshot_replaced_by_a_compaction_is_let_go(tmp_path, monkeypatch):
    """A full snapshot built for a follower is a file the size of the state (an unlinked
    temporary file, mapped). Once a later compaction holds a local marker in its place, the
    leader must keep no reference to it: until the next build or the node's close, the file
    would hold its disk space, invisible to ``du``."""
    import raft.driver
    monkeypatch.setattr(raft.driver, "SNAPSHOT_RELEASE_S", 3600.0)  # not released by time
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: DurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(20):
            lid, victim = await c.leave_behind(range(60))
            leader = c.nodes[lid]
            await c.start(victim)
            await c.nodes[victim].wait_applied(leader.core.commit)
            assert leader.statistics().snapshots_built >= 1
            built = leader.core.snapshot.meta.index
            for k in range(60, 110):  # compactions past the built snapshot's index
                await leader.propose(b"%d" % k)
            await wait_until(lambda: leader.core.snapshot.meta.index > built
                             and leader.core.snapshot.local)
            for _ in range(3):
                await trio.sleep(TICK)  # ticks, which look at the built snapshot held
        assert leader._built_data is None


async def test_a_durable_state_machine_syncs_its_state_off_the_loop(tmp_path):
    """A compaction syncs the state machine's storage in a thread while the group goes on
    committing (a flush of a busy store takes a fraction of a second), then compacts the log
    behind the marker taken when the sync began — not behind what was applied meanwhile."""
    import threading

    gate = threading.Event()

    def make(i):
        sm = DurableCounter(tmp_path / f"sm{i}")
        sm.sync_gate = gate
        return sm

    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0, state_machine=make) as c:
        lid = await c.leader()
        leader = c.nodes[lid]
        with trio.fail_after(20):
            for k in range(25):
                await leader.propose(b"%d" % k)
            await wait_until(lambda: c.sms[lid].syncs)
            began = leader.core.applied
            for k in range(25, 60):  # committed while the sync is held
                await leader.propose(b"%d" % k)
            assert leader.statistics().snapshots_taken == 0
            assert leader.core.snapshot is None or leader.core.snapshot.meta.index < began
            gate.set()
            await wait_until(lambda: leader.statistics().snapshots_taken >= 1)
        assert c.sms[lid].syncs[0] != "MainThread"
        assert leader.core.snapshot.local and leader.core.snapshot.meta.index <= began
        assert leader.core.applied >= 60


async def test_a_checkpoint_overtaken_by_a_built_snapshot_still_compacts_the_log(tmp_path,
                                                                                monkeypatch):
    """While a checkpoint syncs, a follower that fell behind gets a full snapshot built at the
    same index. The checkpoint then still compacts the log behind it (the built snapshot
    stays held for followers), and an idle group does not sync again on every wake-up."""
    import threading

    import raft.driver
    # Held until the assertion below says so (on a slow machine, a short hold could end
    # before it looks); released soon after, while the group idles at the end.
    monkeypatch.setattr(raft.driver, "SNAPSHOT_RELEASE_S", 3600.0)
    gate = threading.Event()
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: DurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(30):
            lid, victim = await c.leave_behind(range(25))
            leader, sm = c.nodes[lid], c.sms[lid]
            await wait_until(lambda: leader.statistics().snapshots_taken >= 1)
            taken = leader.statistics().snapshots_taken
            sm.sync_gate = gate
            syncs = len(sm.syncs)
            k = 100
            while len(sm.syncs) == syncs:  # until the next checkpoint's sync is held
                await leader.propose(b"%d" % k)
                k += 1
            checkpoint = sm.checkpoints[-1]
            await c.start(victim)  # needs a full snapshot: built while the sync is held
            await c.nodes[victim].wait_applied(leader.core.commit)
            assert sm.builds and sm.builds[-1][0] >= checkpoint
            assert not leader.core.snapshot.local  # the built one is held, for followers
            monkeypatch.setattr(raft.driver, "SNAPSHOT_RELEASE_S", 0.1)
            gate.set()
            await wait_until(lambda: leader.statistics().snapshots_taken == taken + 1)
            assert leader.core.first_index == checkpoint + 1
            assert leader.statistics().snapshot_index == checkpoint
            syncs = len(sm.syncs)
            for _ in range(20):  # wake-ups of an idle group
                await leader.read_index()
                await trio.sleep(TICK)
        assert len(sm.syncs) == syncs


async def test_a_durable_state_machine_restarts_from_its_own_state(tmp_path):
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: DurableCounter(tmp_path / f"sm{i}")) as c:
        lid = await c.leader()
        with trio.fail_after(20):
            for k in range(50):
                await c.nodes[lid].propose(b"%d" % k)
            victim = next(i for i in c.ids if i != lid)
            await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
            assert c.nodes[victim].statistics().snapshots_taken >= 1
            await c.stopped(victim)
            await c.start(victim)
            await c.nodes[lid].propose(b"after")
            await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
        assert c.nodes[victim].core.snapshot.local
        assert c.sms[victim].items == [b"%d" % k for k in range(50)] + [b"after"]


async def test_group_replicas_catch_up_through_a_snapshot_built_from_lmdb(tmp_path):
    """Meridian's group state machine over LMDB under the real driver: the leader compacts
    behind local markers only, and a replica that fell behind gets a full snapshot built from
    the store, ending with the same versions."""
    import msgpack

    from engine.group import GroupStateMachine, encode_commit
    from engine.mvcc import MVCCStore

    stores = {}

    def group_sm(i):
        if i in stores:  # a restart: the stopped replica's store is closed first
            stores.pop(i).close()
        store = stores[i] = MVCCStore(tmp_path / f"store{i}", map_size=1 << 24)
        return GroupStateMachine(store, max_txn_lifetime_ns=10**12)

    def versions(sm):
        with sm.store.snapshot_chunks() as stream:
            chunks = [msgpack.unpackb(c, raw=False) for c in stream]
        return [p for c in chunks if c["kind"] == "data" and c["db"] == "versions"
                for p in c["pairs"]]

    try:
        async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                           state_machine=group_sm) as c:
            with trio.fail_after(30):
                lid, victim = await c.leave_behind(range(0))
                for t in range(1, 61):
                    result = await c.nodes[lid].propose(
                        encode_commit(t, 0, 100 * t, [(b"key%d" % (t % 7), b"v%d" % t)]))
                    assert result.committed
                leader = c.nodes[lid]
                assert leader.core.snapshot.local and leader.statistics().snapshots_taken >= 2
                await c.start(victim)
                await c.nodes[victim].wait_applied(leader.core.commit)
            assert leader.statistics().snapshots_built >= 1
            assert c.nodes[victim].statistics().snapshots_installed >= 1
            assert versions(c.sms[victim]) == versions(c.sms[lid])
            # Once installed in the store, the received snapshot is not kept in memory.
            assert c.nodes[victim].core.snapshot.local
    finally:
        for store in stores.values():
            store.close()


class BulkyDurableCounter(DurableCounter):
    """A :class:`DurableCounter` whose full snapshots carry ``padding`` bytes after the items,
    built into a file and mapped read-only as Meridian's groups build theirs (the leader's
    copy is in the page cache, not the heap). ``restore`` takes a buffer, as theirs does, and
    copies only the items out of it: any copy of the whole snapshot on the heap is the
    receiving side's."""

    padding = 32 << 20
    restore_from_buffer = True

    def begin_snapshot(self):
        index, items = self.index, b"\n".join(self.items)
        padding = self.padding

        class Build:
            def __init__(self):
                self.index = index

            def run(self):
                import mmap
                import tempfile
                with tempfile.TemporaryFile() as f:
                    f.write(b"%d|%d|" % (index, len(items)) + items)
                    f.truncate(f.tell() + padding)
                    size = f.seek(0, 2)
                    return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)

            def cancel(self):
                pass

            def close(self):
                pass

        return Build()

    def restore(self, data) -> None:
        if bytes(data[:6]) == b"local ":
            super().restore(bytes(data))
            return
        head = bytes(data[:64])
        index, n, _ = head.split(b"|", 2)
        start = len(index) + len(n) + 2
        items = bytes(data[start:start + int(n)])
        self.index = int(index)
        self.items = items.split(b"\n") if items else []


async def test_a_follower_receives_a_large_snapshot_in_bounded_memory(tmp_path):
    """A follower that fell behind receives a snapshot far larger than one chunk: its memory
    must stay within a few chunks (written to its storage as they arrive), not grow with the
    snapshot — a group's snapshot is as large as its state, and a node holding it, or twice
    it, on the heap while installing can run out of memory."""
    import tracemalloc

    size = BulkyDurableCounter.padding
    chunk = 256 << 10
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       config={"snapshot_chunk_size": chunk},
                       state_machine=lambda i: BulkyDurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(30):
            lid, victim = await c.leave_behind(range(50))
            leader = c.nodes[lid]
            await wait_until(lambda: leader.statistics().snapshots_taken >= 1)
            tracemalloc.start()
            try:
                await c.start(victim)
                await c.nodes[victim].wait_applied(leader.core.commit)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert c.nodes[victim].statistics().snapshots_installed >= 1
        assert c.sms[victim].items == [b"%d" % k for k in range(50)]
    # A few chunks: the one being written, and those in flight (the leader sends the current
    # chunk again with each heartbeat answer, in case it was lost).
    assert peak < size // 4, (
        f"receiving a {size >> 20} MiB snapshot peaked at {peak / 2**20:.1f} MiB on the heap")


async def test_a_follower_restarted_after_receiving_a_large_snapshot_does_not_read_it_whole(
        tmp_path):
    """A follower that installed a received snapshot keeps it in its storage until its next
    compaction (an idle group: for good). Restarted meanwhile, it restores its state machine
    from the stored file as when it received it -- not from a copy of the snapshot read onto
    the heap, which its core would then hold, as large as the state, until that compaction."""
    import tracemalloc

    size = BulkyDurableCounter.padding
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       config={"snapshot_chunk_size": 256 << 10},
                       state_machine=lambda i: BulkyDurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(30):
            lid, victim = await c.leave_behind(range(50))
            leader = c.nodes[lid]
            await wait_until(lambda: leader.statistics().snapshots_taken >= 1)
            await c.start(victim)
            await c.nodes[victim].wait_applied(leader.core.commit)
            assert c.nodes[victim].statistics().snapshots_installed >= 1
            await c.stopped(victim)
            tracemalloc.start()
            try:
                await c.start(victim)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert c.nodes[victim].core.snapshot.local
            await c.nodes[victim].wait_applied(leader.core.commit)
        assert c.sms[victim].items == [b"%d" % k for k in range(50)]
    assert peak < size // 4, (
        f"restarting over a {size >> 20} MiB snapshot peaked at {peak / 2**20:.1f} MiB on the "
        f"heap")


class FlakyBuilds(DurableCounter):
    """Its first build fails (a full disk, say); the next ones block until ``release`` is set
    or the build is cancelled."""

    def __init__(self, path):
        super().__init__(path)
        import threading
        self.release = threading.Event()
        self.attempts = 0
        self.cancelled = 0

    def begin_snapshot(self):
        inner = super().begin_snapshot()
        sm = self

        class Build:
            index = inner.index

            def run(self):
                sm.attempts += 1
                if sm.attempts == 1:
                    raise OSError(28, "No space left on device")
                while not sm.release.wait(0.01):
                    if self.stop:
                        sm.cancelled += 1
                        raise RaftError("cancelled")
                return inner.run()

            stop = False

            def cancel(self):
                self.stop = True

            def close(self):
                pass

        return Build()


async def test_a_failed_build_is_tried_again_later_and_closing_cancels_a_build(
        tmp_path, monkeypatch, caplog):
    import raft.driver
    monkeypatch.setattr(raft.driver, "SNAPSHOT_BUILD_RETRY_S", 0.05)
    sms = {}

    def make(i):
        sms[i] = FlakyBuilds(tmp_path / f"sm{i}")
        return sms[i]

    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0, state_machine=make) as c:
        with trio.fail_after(20):
            lid, victim = await c.leave_behind(range(30))
            await c.start(victim)
            # The first build fails; the second waits for the release.
            await wait_until(lambda: sms[lid].attempts >= 2)
            assert "cannot build a snapshot for followers" in caplog.text
            sms[lid].release.set()
            await c.nodes[victim].wait_applied(c.nodes[lid].core.commit)
        assert c.sms[victim].items == [b"%d" % k for k in range(30)]
        # Once more, and this time the leader closes while building: the build is cancelled
        # and the close does not wait for a build that would never end. (If the victim stops
        # before its acknowledgement of the snapshot arrives, the leader believes it is still
        # receiving it and holds back compaction, for at most 4 x 20 entries: so 90 more.)
        sms[lid].release.clear()
        with trio.fail_after(20):
            assert await c.leave_behind(range(30, 120)) == (lid, victim)
            await c.start(victim)
            await wait_until(lambda: sms[lid].attempts >= 3)
            await c.stopped(lid)
        assert sms[lid].cancelled == 1


async def test_a_node_that_fails_while_building_a_snapshot_stops_at_once(tmp_path):
    """The ready loop fails (here: the state machine's apply) while a build runs: the build
    is cancelled and the node stops at once, its waiters failed, rather than when the whole
    build would have ended."""
    sms = {}

    class Poisoned(FlakyBuilds):
        poison = False

        def apply(self, entries):
            if self.poison and any(e.data == b"boom" for e in entries):
                raise RuntimeError("disk on fire")
            return super().apply(entries)

    def make(i):
        sms[i] = Poisoned(tmp_path / f"sm{i}")
        sms[i].attempts = 1  # no failing first build here
        return sms[i]

    failure = None
    hung = False
    try:
        async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                           state_machine=make) as c:
            with trio.fail_after(20):
                lid, victim = await c.leave_behind(range(30))
                await c.start(victim)
                await wait_until(lambda: sms[lid].attempts >= 2)  # the build is running
            sms[lid].poison = True
            with trio.move_on_after(5) as waited:
                with contextlib.suppress(RaftError):
                    await c.nodes[lid].propose(b"boom")
            hung = waited.cancelled_caught  # (not reached if the node's failure cancels us)
    except BaseException as exc:  # the node's failure ends the cluster
        failure = exc
    assert not hung, "the failed node waited for its snapshot build"
    assert sms[lid].cancelled == 1
    assert failure is not None and "disk on fire" in repr(failure)


DEADLOCK_SCRIPT = r"""
import sys, tempfile, trio
from engine.group import GroupStateMachine, encode_commit
from engine.mvcc import MVCCStore
from raft.core import Config
from raft.driver import RaftNode, open_raft_node
from raft.storage import RaftStorage
from raft.transport import MemoryNetwork
from raft.types import ConfState

orig = RaftNode._persist_fast
async def persist_fast(self, rd, hs):
    result = await orig(self, rd, hs)
    if getattr(self, "arm", False) and rd.entries:
        self.arm = False
        self._core.snapshot_wanted = True  # a lagging follower asked meanwhile
    return result
RaftNode._persist_fast = persist_fast

async def main(d):
    store = MVCCStore(d + "/state", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**12)
    storage = RaftStorage.open(d + "/raft")
    async with MemoryNetwork().endpoint(1) as t:
        async with open_raft_node(1, Config(1, election_tick=10), storage, t, sm,
                                  bootstrap=ConfState((1,)), seed=1, tick_interval=0.005,
                                  sync_in_loop=False) as node:
            with trio.fail_after(10):
                while not node.is_leader:
                    await trio.sleep(0.01)
                await node.propose(encode_commit(1, 0, 100, [(b"a", b"x")]))
                node.arm = True
                async with trio.open_nursery() as n:  # one batch that must grow the map
                    for t_ in range(2, 10):
                        n.start_soon(node.propose, encode_commit(
                            t_, 0, 100 * t_, [(b"k%d" % t_, b"v" * 150_000)]))
            print("resizes", store.stats().map_resizes, flush=True)
    storage.close(); sm.close(); store.close()

trio.run(main, sys.argv[1])
"""


def test_a_build_never_deadlocks_a_store_that_must_grow_its_map(tmp_path):
    """A build's view opened on the loop, then (before any other task runs) an apply there
    that must grow the map: the growth must not wait for a view that no thread is reading
    (the whole process would stop). Run in a process of its own, with a time limit."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", DEADLOCK_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 1  # the map did grow


async def test_a_build_without_a_thread_is_a_failed_build_tried_again(tmp_path, monkeypatch,
                                                                      caplog):
    import threading

    import raft.driver
    monkeypatch.setattr(raft.driver, "SNAPSHOT_BUILD_RETRY_S", 0.05)
    refused = []
    real_start = threading.Thread.start

    def start(self):
        if self.name.endswith("-snapshot") and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: DurableCounter(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(20):
            lid, victim = await c.catch_up_through_snapshot(range(30))
        assert refused and "can't start new thread" in caplog.text
        assert c.sms[victim].items == [b"%d" % k for k in range(30)]


async def test_a_builder_whose_close_raises_is_a_failed_build(tmp_path, monkeypatch):
    """Whatever a builder does on close, the loop hears that the build ended (a build task
    waiting for good would hang the node's close and stop its builds)."""
    import raft.driver
    monkeypatch.setattr(raft.driver, "SNAPSHOT_BUILD_RETRY_S", 0.05)
    closes = []

    class BadClose(DurableCounter):
        def begin_snapshot(self):
            build = super().begin_snapshot()

            def close():
                closes.append(1)
                if len(closes) == 1:
                    raise OSError("close failed")

            build.close = close
            return build

    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0,
                       state_machine=lambda i: BadClose(tmp_path / f"sm{i}")) as c:
        with trio.fail_after(20):
            lid, victim = await c.catch_up_through_snapshot(range(30))
        assert len(closes) >= 2  # the first build failed on close; a later one did it
        assert c.sms[victim].items == [b"%d" % k for k in range(30)]


async def test_a_leader_whose_loop_stood_still_serves_no_read_from_its_lease(tmp_path):
    """The lease is counted in the leader's ticks, and the ticker skips the ticks that fell
    while the event loop stood still (a paused process, a long fsync on the loop's thread),
    while the other voters, in their own processes, went on ticking and may have elected
    another leader. After such a gap the lease ends: a read needs a heartbeat round."""
    async with trio.open_nursery() as nursery:
        c = Cluster(tmp_path, nursery, config={"lease_reads": True})
        for i in c.ids:
            await c.start(i)
        leader_id = await c.leader()
        node = c.nodes[leader_id]
        with trio.fail_after(5):
            await node.propose(b"ok", timeout=5)
        await wait_until(lambda: node.core.lease_read_index() is not None)
        # From here no await until the read: the lease held, and then the loop stands still
        # for 40 election timeouts, cut off from every voter.
        for i in c.ids:
            if i != leader_id:
                c.net.partition(leader_id, i)
        time.sleep(40 * 10 * TICK)
        with trio.fail_after(5), pytest.raises((RaftTimeoutError, ProposalDroppedError)):
            await node.linearizable_read(timeout=0.2)
        nursery.cancel_scope.cancel()



async def test_the_worker_thread_outlives_a_signal_handled_on_it():
    # A signal delivered to the worker thread while it sleeps in its eventfd read (SIGTERM
    # on a node process may go to any thread) interrupts the read: os.eventfd_read does not
    # retry by itself, and the thread used to die of it, leaving every later call waiting.
    import signal

    from raft.driver import _WorkerThread

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    worker = _WorkerThread("test-worker")
    try:
        with trio.fail_after(10):
            assert await worker.run(lambda: 1) == 1  # the thread is up, back in its read
            for _ in range(3):
                signal.pthread_kill(worker._thread.ident, signal.SIGUSR1)
                await trio.sleep(0.05)
            assert worker._thread.is_alive()  # (else the next call would wait for ever)
            assert await worker.run(lambda: 2) == 2
    finally:
        worker.close()
        signal.signal(signal.SIGUSR1, previous)



class GatedCounter(Counter):
    """A Counter whose apply, once ``armed``, stops (in the worker thread) after an apply
    that brings it to ``gate_at`` items, until ``release`` is set."""

    def __init__(self, gate_at: int):
        super().__init__()
        self.gate_at = gate_at
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, entries):
        out = super().apply(entries)
        if self.armed and not self.entered.is_set() and len(self.items) >= self.gate_at:
            self.entered.set()
            if not self.release.wait(20):
                raise AssertionError("never released")
        return out


async def test_a_snapshot_received_while_an_apply_runs_is_installed_before_any_compaction(
        tmp_path):
    """A follower receives the leader's snapshot while it applies the entries that make a
    compaction of its own due. That compaction must not run between the core's restore of
    the snapshot and the Ready that installs it: the state machine is still at the old
    applied index, and storing its state under the received snapshot's metadata is refused
    (the node stopped) -- or, were it accepted, a snapshot whose data is not its index's."""
    machines: dict[int, GatedCounter] = {}

    def machine(i):
        machines[i] = GatedCounter(gate_at=19)  # index 20 (after the leader's no-op)
        return machines[i]

    async with cluster(tmp_path, snapshot_every=20, snapshot_keep=0, apply_in_thread=True,
                       state_machine=machine) as c:
        try:
            with trio.fail_after(30):
                lid = await c.leader()
                victim = next(i for i in c.ids if i != lid)
                sm = machines[victim]
                sm.armed = True
                for k in range(25):
                    await c.nodes[lid].propose(b"%d" % k)
                while not sm.entered.is_set():  # the victim's apply up to index 20 waits
                    await trio.sleep(TICK)
                for other in c.ids:
                    if other != victim:
                        c.net.partition(victim, other)
                for k in range(25, 70):
                    await c.nodes[lid].propose(b"%d" % k)
                leader = c.nodes[lid].core
                snap = leader.snapshot
                assert snap is not None and snap.meta.index > 40
                # The leader's snapshot reaches the victim (as the transport would deliver it).
                c.nodes[victim]._on_messages([Message(
                    MessageType.SNAPSHOT, victim, lid, leader.term, snapshot=snap.meta,
                    chunk_offset=0, chunk=snap.data, snapshot_size=len(snap.data))])
                assert c.nodes[victim].core.first_index == snap.meta.index + 1
                c.net.heal()
                sm.release.set()
                await c.nodes[victim].wait_applied(leader.commit)
        finally:
            for m in machines.values():
                m.release.set()
        assert c.sms[victim].items == [b"%d" % k for k in range(70)]


async def test_an_answer_to_another_nodes_read_round_never_confirms_a_read(tmp_path):
    """A follower's read is queued at the leader under the follower's context, and a
    heartbeat's answer confirms the queued read of its context. Each node numbering its reads
    from 1 gave two nodes' reads the same context: a late answer to a round the leader sent
    for a follower's read -- before its own read was asked -- then confirmed its own. A leader
    cut off meanwhile (the others elected another, which acknowledged a write) answered its
    read with an index below that write."""
    answers = []  # heartbeat answers carrying a read context

    def on_send(sender, msgs):
        answers.extend(m for m in msgs if m.type is MessageType.HEARTBEAT_RESP and m.context)

    # Without CheckQuorum the cut-off leader does not step down by itself.
    async with cluster(tmp_path, config={"check_quorum": False}, on_send=on_send) as c:
        lid = await c.leader()
        old = c.nodes[lid]
        fid, other = [i for i in c.ids if i != lid]
        with trio.fail_after(10):
            await old.propose(b"a")
            await wait_until(lambda: c.nodes[fid].leader == lid)
            await c.nodes[fid].read_index()  # the follower's first read: a round of the leader
            await wait_until(lambda: any(m.frm == other for m in answers))
        late = next(m for m in answers if m.frm == other)  # one answer to it, held up
        for i in (fid, other):
            c.net.partition(lid, i)
        await wait_until(lambda: any(c.nodes[i].is_leader for i in (fid, other)))
        new = next(c.nodes[i] for i in (fid, other) if c.nodes[i].is_leader)
        with trio.fail_after(10):
            await new.propose(b"w")  # acknowledged
        written = new.core.applied
        assert old.is_leader and old.core.commit < written
        outcome = []

        async def read():
            with trio.move_on_after(20 * TICK):
                outcome.append(await old.read_index())  # the old leader's first read

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await wait_until(lambda: old._reads)
            old._on_messages([late])  # the held-up answer arrives now
        # It cannot be confirmed while the leader is cut off; never with an older index.
        assert outcome == []


def test_the_ticker_ticks_each_grid_point_once_when_it_wakes_right_on_it():
    """The ticker sleeps until the next point of its grid and then finds the point it is on
    by dividing the time by the interval. Woken exactly on a point (as a virtual clock
    always wakes it), the quotient may round to just below it -- 2.15 / 0.05 is
    42.99999999999999 -- and the ticker took the point it was on for the next one: it ticked
    again at once, and, since a virtual clock does not move while a task runs, forever."""
    import trio.testing

    from raft.driver import _Ticker

    class Node:
        _tick_interval = 0.05

        def __init__(self):
            self.points = collections.Counter()

        def _on_tick(self):
            point = round(trio.current_time() / self._tick_interval)
            self.points[point] += 1
            if self.points[point] > 1:
                _Ticker.unregister(self)  # stops the ticker: the test fails, not hangs

    node = Node()

    async def main():
        _Ticker.register(node)
        await trio.sleep(200 * node._tick_interval)
        _Ticker.unregister(node)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(node.points) >= 199
    assert [p for p, n in node.points.items() if n > 1] == []


class HeldSyncer:
    """Stands in for a node's fsync thread: each fsync submitted starts in the real one only
    once the test calls :meth:`release`; every later one starts at once."""

    def __init__(self, real):
        self.real = real
        self.done_fd = real.done_fd
        self.fd: int | None = None  # the descriptor of the fsync being held
        self.released = False

    def submit(self, fd: int) -> None:
        self.fd = fd
        if self.released:
            self.release()

    def release(self) -> None:
        self.released = True
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.real.submit(fd)

    def collect(self) -> int | None:
        return self.real.collect()

    def close(self) -> None:
        self.real.close()


async def test_a_node_waiting_for_its_fsync_thread_shows_its_storage_busy(tmp_path):
    """With the fsync in the native thread, a follower whose fsync does not return learns
    the commit index but applies nothing more, and its statistics must say what it waits on,
    as they do for a call in its storage worker; once the fsync ends it catches up."""
    async with cluster(tmp_path, sync_in_loop=False) as c:
        leader, _, follower = await c.leader_and_follower()
        held = follower._syncer = HeldSyncer(follower._syncer)
        try:
            with trio.fail_after(10):
                for k in range(20):  # committed by the leader and the other follower
                    await leader.propose(b"%d" % k)
                while held.fd is None or follower.core.commit < leader.core.commit:
                    await trio.sleep(TICK)
            stats = follower.statistics()
            assert stats.applied < stats.commit == leader.core.commit
            assert stats.storage_busy and stats.failure is None
            held.release()
            with trio.fail_after(10):
                await follower.wait_applied(leader.core.commit)
            assert not follower.statistics().storage_busy
        finally:
            held.release()  # a failed test must not leave the node waiting at its close



async def test_an_async_leader_counts_its_entries_only_once_its_fsync_returns(tmp_path):
    """With the asynchronous append, the leader's entries go out and are appended while
    their fsync runs in the native thread. Until it returns, the leader's own log must not
    count: with one follower down nothing commits (the other follower alone is no
    majority), and the leader applies nothing beyond what it has made durable; once the
    fsync returns, everything commits and applies, and the leader's loop kept serving
    meanwhile (the proposals' entries were sent and appended behind the held fsync)."""
    async with cluster(tmp_path, sync_in_loop=True, async_append=True) as c:
        leader, fid, follower = await c.leader_and_follower()
        await c.stopped(next(i for i in c.ids if i not in (leader.id, fid)))
        held = leader._async_syncer = HeldSyncer(leader._async_syncer)
        try:
            before = leader.statistics()
            commit, applied = before.commit, before.applied
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for k in range(5):
                        nursery.start_soon(leader.propose, b"a%d" % k)
                    while held.fd is None or follower.core.log.last_index \
                            < leader.core.log.last_index:
                        await trio.sleep(TICK)
                    for _ in range(10):  # the follower's acknowledgements arrive meanwhile
                        await trio.sleep(TICK)
                    assert leader.core.commit == commit  # no majority without the leader
                    stats = leader.statistics()
                    assert stats.applied == applied and stats.storage_busy
                    assert stats.entries_persisted == before.entries_persisted  # not yet
                    held.release()
            assert sorted(c.sms[leader.id].items[-5:]) == [b"a%d" % k for k in range(5)]
            assert leader.core.commit > commit
            assert leader.statistics().entries_persisted >= before.entries_persisted + 5
        finally:
            held.release()  # a failed test must not leave the node waiting at its close


@contextlib.asynccontextmanager
async def _a_commit_behind_the_leaders_fsync(c):
    """``(leader, held fsync, applied index)`` once the followers, a majority without the
    leader, have committed an entry ("second", after "first") whose fsync on the leader is
    held. The body releases it; the proposal of "second" has returned at the end."""
    leader = c.nodes[await c.leader()]
    with trio.fail_after(10):
        await leader.propose(b"first")
    held = leader._async_syncer = HeldSyncer(leader._async_syncer)
    try:
        applied = leader.statistics().applied
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leader.propose, b"second")
                while held.fd is None or leader.core.commit <= applied:
                    await trio.sleep(TICK)
                yield leader, held, applied
    finally:
        held.release()  # a failed test must not leave the node waiting at its close


async def test_an_async_leader_applies_only_what_it_made_durable(tmp_path):
    """Two followers are a majority without the leader: with the leader's fsync held they
    commit its entries, but the leader applies (and answers) none of them until its own
    fsync returns -- a state machine never runs ahead of its node's durable log."""
    async with cluster(tmp_path, sync_in_loop=True, async_append=True) as c:
        async with _a_commit_behind_the_leaders_fsync(c) as (leader, held, applied):
            assert leader.statistics().applied == applied
            assert c.sms[leader.id].items[-1] == b"first"
            held.release()
        assert c.sms[leader.id].items[-1] == b"second"


async def test_a_lease_read_waiting_for_the_leaders_apply_keeps_its_timeout(tmp_path):
    """A leader holding its lease takes its commit index as the read point at once; when its
    own apply lags that index (here: committed by the followers while the leader's own fsync
    is held, so nothing is applied) the read waits for the apply -- and must still give up
    once its ``timeout`` passes, as a read through a heartbeat round does."""
    async with cluster(tmp_path, sync_in_loop=True, async_append=True,
                       config={"lease_reads": True}) as c:
        async with _a_commit_behind_the_leaders_fsync(c) as (leader, held, applied):
            assert leader.core.lease_read_index() is not None  # the lease holds
            with pytest.raises(RaftTimeoutError):
                await leader.linearizable_read(timeout=0.2)
            assert leader.statistics().applied == applied
            held.release()
            assert await leader.linearizable_read(timeout=5) > applied


async def test_an_async_leader_deposed_with_its_fsync_held_takes_the_new_leaders_log(tmp_path):
    """A leader cut off with an asynchronous fsync in flight is replaced; once it hears the
    new leader, the Readies that store the new term and cut its own entries must wait for
    that fsync (nothing but a plain append may touch the log while it runs): it applies none
    of the new leader's entries until the fsync returns, then takes the new log whole."""
    async with cluster(tmp_path, sync_in_loop=True, async_append=True) as c:
        lid, old = await c.partition_leader()
        held = old._async_syncer = HeldSyncer(old._async_syncer)
        lost = []

        async def propose_to_old(k):
            try:
                await old.propose(b"lost%d" % k)
            except (EntryLostError, RaftError) as exc:
                lost.append(type(exc))

        try:
            async with trio.open_nursery() as nursery:
                for k in range(3):
                    nursery.start_soon(propose_to_old, k)
                with trio.fail_after(10):
                    while held.fd is None:
                        await trio.sleep(TICK)
                    new = None
                    while new is None:
                        await trio.sleep(TICK)
                        new = next((n for i, n in c.nodes.items() if i != lid and n.is_leader),
                                   None)
                    for k in range(5):
                        await new.propose(b"new%d" % k)
                applied = old.statistics().applied
                c.net.heal()
                with trio.fail_after(10):
                    while old.core.term < new.core.term:
                        await trio.sleep(TICK)
                    for _ in range(10):
                        await trio.sleep(TICK)
                stats = old.statistics()
                assert stats.role == "follower" and stats.storage_busy
                assert stats.applied == applied < new.core.commit
                held.release()
            assert lost == [EntryLostError] * 3
            with trio.fail_after(10):
                await old.wait_applied(new.core.commit)
            assert c.sms[old.id].items == c.sms[new.id].items
            assert not any(item.startswith(b"lost") for item in c.sms[old.id].items)
        finally:
            held.release()


async def test_a_single_voter_async_leader_commits_once_its_fsync_returns(tmp_path):
    """A leader that is its group's only voter has no one else to make an entry durable:
    with its asynchronous fsync held nothing commits, a read waits, and once the fsync
    returns the proposals and the read complete."""
    async with cluster(tmp_path, n=1, sync_in_loop=True, async_append=True) as c:
        leader = c.nodes[await c.leader()]
        with trio.fail_after(10):
            await leader.propose(b"first")
        held = leader._async_syncer = HeldSyncer(leader._async_syncer)
        try:
            commit = leader.core.commit
            results = []
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    async def propose(k):
                        results.append(await leader.propose(b"a%d" % k))
                    for k in range(3):
                        nursery.start_soon(propose, k)
                    while held.fd is None:
                        await trio.sleep(TICK)
                    for _ in range(10):
                        await trio.sleep(TICK)
                    assert leader.core.commit == commit and not results
                    held.release()
                await leader.linearizable_read()
            assert sorted(results) == [2, 3, 4]
            items = c.sms[leader.id].items
            assert items[0] == b"first" and sorted(items[1:]) == [b"a0", b"a1", b"a2"]
        finally:
            held.release()


async def test_an_async_leader_whose_fsync_fails_stops(tmp_path):
    """A failed asynchronous fsync stops the node, as a failed write does anywhere else
    (the storage error ends it), and the proposal waiting on it fails instead of hanging:
    nothing ever counted its entry."""
    from engine.errors import StorageError

    checked = []
    pipe = os.pipe()
    try:
        with pytest.raises(BaseException) as info:
            async with cluster(tmp_path, sync_in_loop=True, async_append=True) as c:
                leader = c.nodes[await c.leader()]
                with trio.fail_after(10):
                    await leader.propose(b"first")
                real = leader._storage.sync_begin

                def failing_sync_begin():  # fdatasync of a pipe fails (EINVAL)
                    target = real()
                    return None if target is None else (pipe[0], target[1])

                leader._storage.sync_begin = failing_sync_begin
                with trio.fail_after(10), pytest.raises(RaftError):
                    await leader.propose(b"second")
                checked.append(c.sms[leader.id].items)
                await trio.sleep_forever()  # the node's failure ends the cluster
    finally:
        for fd in pipe:
            os.close(fd)
    assert checked == [[b"first"]], repr(info.value)
    assert any(isinstance(e, StorageError) for e in _leaves(info.value)), repr(info.value)


async def test_a_follower_whose_apply_is_held_applies_everything_committed_meanwhile(tmp_path):
    """A follower whose apply (in its storage worker) does not return keeps receiving and
    learning the commit index, far past what it has applied; once the apply returns, it
    applies every entry committed meanwhile, in order -- the backlog never stalls it."""
    machines: dict[int, GatedCounter] = {}

    def machine(i):
        machines[i] = GatedCounter(gate_at=2)
        return machines[i]

    async with cluster(tmp_path, apply_in_thread=True, state_machine=machine) as c:
        try:
            leader, fid, follower = await c.leader_and_follower(b"0")
            sm = machines[fid]
            sm.armed = True
            with trio.fail_after(20):
                await leader.propose(b"1")
                while not sm.entered.is_set():
                    await trio.sleep(TICK)
                for k in range(2, 202):  # committed by the leader and the other follower
                    await leader.propose(b"%d" % k)
                while follower.core.commit < leader.core.commit:
                    await trio.sleep(TICK)
            stats = follower.statistics()
            assert stats.applied < stats.commit - 100
            assert stats.storage_busy and stats.failure is None
            sm.release.set()
            with trio.fail_after(10):
                await follower.wait_applied(leader.core.commit)
        finally:
            for m in machines.values():
                m.release.set()
        assert sm.items == [b"%d" % k for k in range(202)]
        assert not follower.statistics().storage_busy
