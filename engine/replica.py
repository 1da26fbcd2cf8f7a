"""One replica of a data group, as the node serves it: commits, strong reads, stale reads.

:class:`GroupReplica` joins a :class:`raft.driver.RaftNode` and its
:class:`~engine.group.GroupStateMachine` and implements the single-group transaction protocol
(ARCH §5, steps 2–5):

- **Snapshot timestamp** (:meth:`GroupReplica.snapshot_ts`): a transaction's first read in a
  group asks the leader for a timestamp. The leader confirms it still leads and has applied
  everything committed (ReadIndex, Raft §6.4) and answers with its closed timestamp. Every
  commit acknowledged before the request was applied before its acknowledgement, and closed at
  its own timestamp, so that snapshot contains it (no stale reads) and is stable. A caller that
  has seen a later timestamp (``min_ts``, from its hybrid clock) gets the group closed up to it
  first, with a CLOSE entry.
- **Reads** at a timestamp at or below the replica's closed timestamp are served from MVCC on
  any replica — the leader for strong reads, the local learner for stale ones
  (:meth:`GroupReplica.wait_closed` waits for a learner to catch up).
- **Commit** (:meth:`GroupReplica.commit`): one Raft proposal, validated when applied; the
  result says committed (with the commit timestamp) or why not.

Every replica also garbage-collects its MVCC store below the group's low water
(:meth:`GroupReplica.run_gc`; its leader also erases, with PURGE entries, the data of
keyspaces dropped or moved away), and while it leads, proposes a CLOSE entry every
``close_interval`` seconds in which nothing else was applied, so that an idle group's closed
timestamp still follows real time and learners can serve bounded-staleness reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from raft.driver import RaftTimeoutError
from raft.types import ProposalDroppedError, RaftError, RaftInvariantError
from raft.waitheap import WaitHeap

from . import planted
from .errors import (
    AmbiguousCommitError,
    InvalidArgumentError,
    MeridianError,
    NotLeaderError,
    TransactionConflictError,
)
from .group import (
    CommitResult,
    GroupStateMachine,
    conflict_log_bounds,
    Intent,
    encode_close,
    encode_commit,
    encode_decide,
    encode_forget,
    encode_prepare,
    encode_purge,
    encode_resolve,
)
from .mvcc import MAX_TS
from .placement import keyspace_bounds

__all__ = ["GroupReplica", "GC_INTERVAL_S"]

log = logging.getLogger("meridian.replica")

PROPOSAL_TIMEOUT_S = 5.0
"""How long a proposal may take to be applied before its caller is told the outcome is
unknown (it may still be applied later)."""
GC_INTERVAL_S = 30.0
"""How often each replica garbage-collects its MVCC store."""
PURGE_BUDGET = 1_000
"""The most versions, and the most conflict-log records, one PURGE entry erases: every
replica applies it in one step of its event loop."""
PURGE_KEYS_PER_STEP = 10_000
"""The most keys the leader looks at to plan one PURGE entry."""


class GroupReplica:
    """Serves one group on one node. Create it after the Raft node, before serving requests.

    Args:
        group: the group id.
        node: the running Raft replica.
        sm: its state machine (the same object given to the Raft node).
        clock: the node's hybrid logical clock (``now()``).
        close_interval: seconds of quiet after which the leader closes time (0: never).
        clock_trusted: False while the node's clock is suspect (it refuses to serve for it):
            the closer and the purger then propose nothing, as their entries would carry
            that clock into the group's log. Default: always trusted.
    """

    def __init__(self, group: int, node, sm: GroupStateMachine, clock, *,
                 close_interval: float = 0.5,
                 clock_trusted: Callable[[], bool] = lambda: True) -> None:
        self.group = group
        self.node = node
        self.sm = sm
        self.clock = clock
        self.close_interval = close_interval
        self.clock_trusted = clock_trusted
        self._closed_waiters: WaitHeap[trio.Event] = WaitHeap()
        self._closing: tuple[int, trio.Event] | None = None
        self._last_activity = trio.current_time()
        self._resolved = trio.Event()
        self._outbox = trio.Event()
        self.gc_removed = 0
        self.purges = 0  # PURGE entries this replica proposed and saw applied
        self._erased: set[tuple[int, int]] = set()  # erasable_keyspaces() found empty
        sm.on_closed = self._on_closed
        sm.on_resolved = self._on_resolved
        sm.on_outbox = self._on_outbox
        # A snapshot install ends in the Raft driver's worker thread: its waiters are woken
        # on the loop.
        token = trio.lowlevel.current_trio_token()
        sm.on_restored = lambda: token.run_sync_soon(self._on_restored)

    # ------------------------------------------------------------------ reads

    @property
    def closed_ts(self) -> int:
        return self.sm.closed_ts

    def _require_leader(self) -> None:
        if not self.node.is_leader:
            raise NotLeaderError(
                f"node {self.node.id} is not the leader of group {self.group}",
                self.group, self.node.leader)

    async def snapshot_ts(self, min_ts: int = 0) -> int:
        """A stable snapshot timestamp that sees every commit acknowledged before this call
        (and every commit at or below ``min_ts``). Leader only."""
        self._require_leader()
        try:
            await self.node.linearizable_read(timeout=PROPOSAL_TIMEOUT_S)
        except ProposalDroppedError as exc:
            raise NotLeaderError(str(exc), self.group, getattr(exc, "leader", 0)) from None
        except RaftTimeoutError:  # cut off from its group, or its disk stalled: let the
            # caller try another replica
            raise NotLeaderError(f"node {self.node.id} could not confirm its leadership of "
                                 f"group {self.group}, or apply up to the read point, within "
                                 f"{PROPOSAL_TIMEOUT_S} s", self.group, 0) from None
        except RaftInvariantError:
            raise
        except RaftError as exc:  # this replica stopped (closing, or its disk failed)
            raise NotLeaderError(f"node {self.node.id} cannot serve group {self.group}: {exc}",
                                 self.group, 0) from None
        if self.sm.closed_ts < max(min_ts, 1):
            # A new group has closed nothing yet: there is no snapshot to read at until it has.
            await self.close_up_to(max(min_ts, 1))
        return self.sm.closed_ts

    async def close_up_to(self, ts: int) -> None:
        """Makes the group's closed timestamp reach ``ts`` (leader only): one CLOSE entry,
        shared by every caller that needs no more than it closes. The entry also gives the
        group this node's configured maximum transaction lifetime.

        Raises:
            NotLeaderError: this replica does not lead, or could not get the entry applied
                (whether it was is of no consequence: a CLOSE writes no data)."""
        while self.sm.closed_ts < ts:
            self._require_leader()
            if self._closing is not None and self._closing[0] >= ts:
                await self._closing[1].wait()
                continue
            target = max(ts, self.clock.now())
            done = trio.Event()
            self._closing = (target, done)
            try:
                await self._propose(encode_close(target, self.sm.configured_lifetime_ns))
            except AmbiguousCommitError as exc:
                # A CLOSE writes no data: whether it was applied matters to nobody. The
                # reader waiting for it is told to try another replica, as when its read
                # point cannot be confirmed (the leader is cut off from its group).
                raise NotLeaderError(f"node {self.node.id} could not close group "
                                     f"{self.group} up to {target}: {exc}",
                                     self.group, 0) from None
            finally:
                done.set()
                if self._closing is not None and self._closing[1] is done:
                    self._closing = None

    async def wait_closed(self, ts: int) -> None:
        """Waits until this replica has applied the group's log up to a closed timestamp of at
        least ``ts`` (any replica; the caller bounds the wait with a cancel scope)."""
        if self.sm.closed_ts >= ts:
            return
        event = trio.Event()
        waiter_id = self._closed_waiters.push(ts, event)
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled (the caller's time limit): forget the entry
                self._closed_waiters.leave(waiter_id)

    def _on_closed(self, closed: int) -> None:
        self._last_activity = trio.current_time()
        for event in self._closed_waiters.pop_up_to(closed):
            event.set()

    def _on_restored(self) -> None:
        # The snapshot may close what reads wait for, and resolve the intents they wait on.
        self._on_closed(self.sm.closed_ts)
        self._on_resolved([])

    def _on_resolved(self, txn_ids: list[int]) -> None:
        self._resolved.set()
        self._resolved = trio.Event()

    def _on_outbox(self) -> None:
        self._outbox.set()
        self._outbox = trio.Event()

    async def wait_outbox(self) -> None:
        """Waits until the next apply that adds regional writes to this group's outbox."""
        await self._outbox.wait()

    async def wait_resolved(self) -> None:
        """Waits until the next apply that resolves some transaction's intents."""
        await self._resolved.wait()

    def intents(self, keys: Sequence[bytes], ts: int) -> list[Intent]:
        """The intents a read of ``keys`` at ``ts`` must wait for."""
        return self.sm.intents(keys, ts)

    def intents_in(self, start: bytes, end: bytes | None, ts: int) -> list[Intent]:
        return self.sm.intents_in(start, end, ts)

    def check_readable(self, ts: int) -> None:
        if ts < self.sm.store.gc_watermark:
            # A snapshot the group no longer remembers: the retryable refusal a commit at it
            # gets too, so that retry loops run the transaction again at a newer one.
            raise TransactionConflictError(
                f"timestamp {ts} is older than group {self.group} keeps versions for (its "
                f"garbage-collection watermark is {self.sm.store.gc_watermark}: the group's "
                f"maximum transaction lifetime, {self.sm.lifetime_ns / 1e9} s, before its "
                f"closed timestamp)", "too_old")
        if planted.enabled("read_above_closed"):
            return
        if not 0 < ts <= self.sm.closed_ts:
            raise InvalidArgumentError(f"timestamp {ts} is not closed in group {self.group} "
                             f"(closed: {self.sm.closed_ts})")

    def get(self, key: bytes, ts: int) -> bytes | None:
        self.check_readable(ts)
        value = self.sm.store.get(key, ts)
        self.check_readable(ts)  # a GC step may have committed in between (worker thread)
        return value

    def scan(self, start: bytes, end: bytes | None, ts: int, *, limit: int | None = None,
             reverse: bool = False, max_bytes: int | None = None) -> list[tuple[bytes, bytes]]:
        self.check_readable(ts)
        items = self.sm.store.scan(start, end, ts, limit=limit, reverse=reverse,
                                   max_bytes=max_bytes)
        self.check_readable(ts)  # as in get
        return items

    # ------------------------------------------------------------------ commits

    async def commit(self, txn_id: int, read_ts: int,
                     writes: Sequence[tuple[bytes, bytes | None]], reads: Sequence[bytes] = (),
                     *, serializable: bool = False,
                     merges: Sequence[tuple[bytes, str, bytes | None]] = (),
                     spans: Sequence[Sequence] = ()) -> CommitResult:
        """Proposes a one-phase commit and returns what applying it decided. Leader only.

        Raises:
            NotLeaderError: this replica does not lead, or the entry was replaced by another
                leader's: it was not applied and will never be, so a retry is safe.
            AmbiguousCommitError: the node stopped, or can no longer tell, before the entry's
                fate was known.
        """
        self._require_leader()
        # The commit must land above its snapshot even when that snapshot (another group's
        # closed timestamp) is ahead of this node's clock.
        data = encode_commit(txn_id, read_ts, max(self.clock.now(), read_ts + 1), writes, reads,
                             serializable=serializable, merges=merges, spans=spans)
        return await self._propose(data)

    async def propose(self, data: bytes):
        """Proposes an encoded command (leader only); returns what applying it decided."""
        self._require_leader()
        return await self._propose(data)

    async def prepare(self, txn_id: int, read_ts: int,
                      writes: Sequence[tuple[bytes, bytes | None]], reads: Sequence[bytes],
                      locks: Sequence[bytes], *, primary: int, deadline: int,
                      serializable: bool = False, spans: Sequence[Sequence] = ()
                      ) -> CommitResult:
        """Proposes the first phase of a two-phase commit (leader only; errors as
        :meth:`commit`)."""
        self._require_leader()
        data = encode_prepare(txn_id, read_ts, max(self.clock.now(), read_ts + 1), writes,
                              reads, locks, primary=primary, deadline=deadline,
                              serializable=serializable, spans=spans)
        return await self._propose(data)

    async def decide(self, txn_id: int, commit_ts: int, since: int = 0,
                     participants: Sequence[int] = ()) -> CommitResult:
        """Records the transaction's fate in this, its primary group (``commit_ts`` 0:
        abort) unless it is recorded already; returns the recorded fate. The coordinator
        names its first prepare timestamp and the participant groups (see DECIDE in
        ``engine.group``)."""
        self._require_leader()
        return await self._propose(encode_decide(txn_id, self.clock.now(), commit_ts,
                                                 since, participants))

    async def forget(self, txn_ids: Sequence[int]) -> None:
        """Deletes old transaction records (see FORGET in ``engine.group``)."""
        self._require_leader()
        await self._propose(encode_forget(self.clock.now(), txn_ids))

    async def resolve(self, txn_id: int, commit_ts: int) -> CommitResult:
        """Resolves the transaction's intents in this group (``commit_ts`` 0: abort)."""
        self._require_leader()
        return await self._propose(encode_resolve(txn_id, self.clock.now(), commit_ts))

    async def _propose(self, data: bytes):
        try:
            # The driver's timeout, not a cancel scope: a scope with a deadline costs more,
            # on every commit.
            return await self.node.propose(data, timeout=PROPOSAL_TIMEOUT_S)
        except ProposalDroppedError as exc:  # never proposed, or replaced: not applied
            raise NotLeaderError(str(exc), self.group, getattr(exc, "leader", 0)) from None
        except RaftTimeoutError:
            # A leader cut off from its group cannot commit, and learns whether its entry
            # survived only when it hears from the others again.
            raise AmbiguousCommitError(
                f"group {self.group}: the proposal was not applied within "
                f"{PROPOSAL_TIMEOUT_S} s (this node may have lost its group): its outcome is "
                f"unknown") from None
        except RaftError as exc:
            raise AmbiguousCommitError(
                f"group {self.group}: the outcome of the proposal is unknown ({exc})") from None

    # ------------------------------------------------------------------ background

    async def run_gc(self, budget: int = 2_000) -> None:
        """Runs until cancelled: every :data:`GC_INTERVAL_S` seconds, removes the versions no
        read can need any more — those hidden by a newer version at or below the group's low water
        (its closed timestamp minus the maximum transaction lifetime: older snapshots are
        refused). Each call to the store examines at most ``budget`` versions, in a worker
        thread, so applies are never held up for long."""
        store = self.sm.store
        while True:
            await trio.sleep(GC_INTERVAL_S)
            watermark = self.sm.low_water
            if watermark <= store.gc_watermark:
                continue
            start: bytes | None = b""
            while start is not None:
                # Small steps, with a pause between them: the collection walks keys in
                # Python, holding the interpreter lock, so one big step would stall this
                # node's event loop.
                result = await trio.to_thread.run_sync(
                    lambda s=start: store.gc(watermark, start=s, max_versions=budget))
                self.gc_removed += result.removed
                start = result.resume
                await trio.sleep(0.01)

    async def run_purger(self) -> None:
        """Runs until cancelled: every :data:`GC_INTERVAL_S` seconds, while this replica
        leads, erases what keyspaces fenced at level 3 here left (see
        :meth:`purge_erasable`)."""
        while True:
            await trio.sleep(GC_INTERVAL_S)
            if (not self.node.is_leader or not self.clock_trusted()
                    or not self.sm.erasable_keyspaces()):
                continue
            try:
                await self.purge_erasable()
            except (NotLeaderError, AmbiguousCommitError) as exc:
                # Lost the group, or cut off from it: the next leader, or the next round,
                # starts again (a PURGE erases what is there, whenever it comes).
                log.debug("group %d: erasing dropped keyspaces: %s", self.group, exc)
            except MeridianError as exc:  # the store failing: the node's other work says so
                log.warning("group %d: erasing dropped keyspaces failed: %s", self.group, exc)

    async def purge_erasable(self, budget: int | None = None) -> None:
        """While this replica leads: erases the data that the keyspaces fenced at level 3 here
        (dropped, or moved to another group) left behind -- versions at or below the low
        water, and conflict-log records -- with PURGE entries of at most ``budget`` (default
        :data:`PURGE_BUDGET`) of each, one at a time, each planned on this replica's store in
        a worker thread (at most :data:`PURGE_KEYS_PER_STEP` keys looked at per step).

        A keyspace is left alone until the low water has passed the timestamp of its level 3
        fence: its data is then all at or below the low water, and one pass erases it. One
        found empty (no version, no conflict-log record, no intent) is not looked at again
        while that fence stays (until a restart). Returns when done, when this replica stops
        leading, or after a keyspace's fence changed.

        Raises:
            NotLeaderError, AmbiguousCommitError: as :meth:`commit`.
        """
        budget = PURGE_BUDGET if budget is None else budget
        erasable = self.sm.erasable_keyspaces()
        self._erased &= set(erasable)  # a fence lifted, or set again, is looked at again
        for ks_id, since in erasable:
            if (ks_id, since) not in self._erased and self.sm.low_water > since:
                if await self._purge_keyspace(ks_id, budget):
                    self._erased.add((ks_id, since))

    async def _purge_keyspace(self, ks_id: int, budget: int) -> bool:
        """One pass over the keyspace; True if it left nothing of it behind."""
        store = self.sm.store
        prefix, end = keyspace_bounds(ks_id)
        side_lo, side_end = conflict_log_bounds(ks_id)

        def plan(start: bytes, side_start: bytes, max_ts: int):
            # The next range of versions to erase (empty if it holds none), the timestamp to
            # erase it at, and where the one after it starts; the next range of conflict-log
            # records.
            count, resume = store.count_versions(start, end, max_ts=max_ts, limit=budget,
                                                 max_keys=PURGE_KEYS_PER_STEP)
            after = end if resume is None else resume
            upto = after if count else start
            oldest = None if count or resume is None else store.oldest_versions(
                resume, budget, max_ts=max_ts)
            if oldest is not None:
                # The key alone has more than the budget: its oldest ones now, and the key
                # again next (the keys before it have nothing at or below max_ts).
                max_ts, key_end = oldest
                upto, after = (end if key_end is None else min(key_end, end)), resume
            keys = store.side_keys(side_start, side_end, limit=budget + 1)
            side_upto = keys[budget] if len(keys) > budget else side_end
            return upto, max_ts, after, (side_upto if keys else side_start)

        def left() -> bool:
            return (store.count_versions(prefix, end, limit=1) != (0, None)
                    or bool(store.side_keys(side_lo, side_end, limit=1))
                    or self.sm.has_intents(prefix, end))  # resolved later

        # One low water for the whole pass: what is at or below it only shrinks (later
        # commits are above it), so every step erases some of it or moves on, and the pass
        # ends however fast the keyspace's versions pass the low water meanwhile.
        start, side_start, max_ts = prefix, side_lo, self.sm.low_water
        while self.node.is_leader and self.sm.fence(prefix)[0] == 3:
            upto, upto_ts, after, side_upto = await trio.to_thread.run_sync(
                plan, start, side_start, max_ts)
            if start < upto or side_start < side_upto:
                await self._propose(encode_purge(self.clock.now(), ks_id, start, upto,
                                                 side_start, side_upto, upto_ts))
                self.purges += 1
            start = after
            if side_upto > side_start:
                side_start = side_upto
            elif start >= end:
                side_start = side_end  # no record left to erase
            if start >= end and side_start >= side_end:
                return not await trio.to_thread.run_sync(left)
            await trio.sleep(0.01)  # a pause between two steps, as for the GC
        return False

    async def run_closer(self) -> None:
        """Runs until cancelled: while leading with a trusted clock, closes time after
        ``close_interval`` of quiet -- or after any ``close_interval`` while the group's
        maximum transaction lifetime is not the one this node is configured with, which the
        CLOSE entry gives it (see CLOSE in ``engine.group``)."""
        if self.close_interval <= 0:
            return
        while True:
            await trio.sleep(self.close_interval)
            if not self.node.is_leader or not self.clock_trusted():
                continue
            if (trio.current_time() - self._last_activity < self.close_interval
                    and self.sm.lifetime_ns == self.sm.configured_lifetime_ns):
                continue
            try:
                with trio.move_on_after(max(1.0, 5 * self.close_interval)):
                    await self.close_up_to(min(self.clock.now(), MAX_TS))
            except (NotLeaderError, AmbiguousCommitError) as exc:
                # Lost the group, or cut off from it: the next quiet interval tries again.
                log.debug("group %d: closing time failed: %s", self.group, exc)
