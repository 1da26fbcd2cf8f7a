"""The group state machine: timestamps, first-committer-wins, isolation levels, determinism."""

from __future__ import annotations

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.group import (
    CMD_FENCE,
    CommitResult,
    GroupStateMachine,
    Outcome,
    conflict_log_bounds,
    encode_close,
    encode_commit,
    encode_fence,
    encode_prepare,
    encode_purge,
    encode_remote,
    encode_resolve,
)
from engine.errors import StoreClosedError
from engine.mvcc import MAX_TS, MVCCStore
from engine.replica import GroupReplica
from raft.types import Entry

LIFETIME = 1_000_000


class Log:
    """Builds entries with consecutive indexes."""

    def __init__(self):
        self.index = 0

    def __call__(self, data: bytes) -> Entry:
        self.index += 1
        return Entry(term=1, index=self.index, data=data)


@pytest.fixture
def sm(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    yield machine
    machine.close()
    store.close()


def commit(sm, log, txn_id, read_ts, ts, writes, reads=(), serializable=False) -> CommitResult:
    [result] = sm.apply([log(encode_commit(txn_id, read_ts, ts, writes, reads,
                                           serializable=serializable))])
    return result


def test_commit_takes_its_proposed_timestamp_and_closes_it(sm):
    log = Log()
    r = commit(sm, log, 1, 0, 100, [(b"a", b"1")])
    assert r.committed and r.ts == 100 and sm.closed_ts == 100
    assert sm.store.get(b"a", 100) == b"1" and sm.store.get(b"a", 99) is None
    # A proposal at or below the closed timestamp is bumped above it.
    r = commit(sm, log, 2, 0, 50, [(b"b", b"2")])
    assert r.committed and r.ts == 101 and sm.closed_ts == 101
    assert sm.apply([log(encode_close(90))]) == [102]
    assert sm.apply([log(encode_close(500))]) == [500]
    assert sm.applied_index == 4


def test_first_committer_wins_on_a_written_key(sm):
    log = Log()
    commit(sm, log, 1, 0, 100, [(b"x", b"0")])
    # Both read x at 100 and write it: a lost update unless the second is refused.
    assert commit(sm, log, 2, 100, 200, [(b"x", b"1")]).committed
    r = commit(sm, log, 3, 100, 300, [(b"x", b"2")])
    assert r.outcome is Outcome.CONFLICT and r.reason == "write_write"
    assert r.key == b"x" and r.conflict_ts == 200
    assert sm.store.get(b"x", 10**6) == b"1"


def test_write_skew_passes_snapshot_isolation_and_fails_serializable(sm):
    log = Log()
    commit(sm, log, 1, 0, 100, [(b"x", b"1"), (b"y", b"1")])
    # Each reads both and writes the other one: disjoint write sets.
    assert commit(sm, log, 2, 100, 200, [(b"x", b"0")], [b"x", b"y"]).committed
    assert commit(sm, log, 3, 100, 300, [(b"y", b"0")], [b"x", b"y"]).committed
    commit(sm, log, 4, 0, 400, [(b"x", b"1"), (b"y", b"1")])
    assert commit(sm, log, 5, 400, 500, [(b"x", b"0")], [b"x", b"y"],
                  serializable=True).committed
    r = commit(sm, log, 6, 400, 600, [(b"y", b"0")], [b"x", b"y"], serializable=True)
    assert r.outcome is Outcome.CONFLICT and (r.reason, r.key) == ("read_write", b"x")


def test_blind_writes_never_conflict(sm):
    log = Log()
    for i in range(3):
        assert commit(sm, log, i + 1, 0, 100, [(b"k", b"%d" % i)]).committed
    assert sm.store.get(b"k", sm.closed_ts) == b"2"


def test_transactions_older_than_the_lifetime_are_too_old(sm):
    log = Log()
    commit(sm, log, 1, 0, 100, [(b"k", b"v")])
    sm.apply([log(encode_close(100 + LIFETIME + 10))])
    assert sm.low_water == 110
    r = commit(sm, log, 2, 105, 0 + 1, [(b"other", b"v")])
    assert r.outcome is Outcome.CONFLICT and r.reason == "too_old"
    assert sm.store.get(b"other", sm.closed_ts) is None


def test_replicas_configured_with_different_lifetimes_decide_alike_once_a_close_names_one(
        tmp_path):
    """The lifetime is configuration, which may change between restarts: two replicas of a
    group may run with different ones for a while. Which transactions are too old must still
    be decided alike everywhere: the group takes the lifetime a CLOSE names, at that entry."""
    log = Log()
    entries = [log(encode_commit(1, 0, 100, [(b"k", b"v")])),
               log(encode_close(5_000, 10_000)),  # a leader configured with 10_000
               log(encode_commit(2, 100, 5_200, [(b"k", b"w")]))]  # its snapshot is 5_100 old
    outcomes = []
    for name, configured in (("a", 10_000), ("b", 1_000)):
        with MVCCStore(tmp_path / name, map_size=1 << 20) as store:
            sm = GroupStateMachine(store, max_txn_lifetime_ns=configured)
            result = sm.apply(entries)[-1]
            outcomes.append((result.outcome, sm.low_water, store.get(b"k", sm.closed_ts)))
            sm.close()
            # A restart under yet another configuration keeps the group's lifetime.
            again = GroupStateMachine(store, max_txn_lifetime_ns=7)
            assert again.lifetime_ns == 10_000 and again.configured_lifetime_ns == 7
            again.close()
    assert outcomes[0] == outcomes[1] == (Outcome.COMMITTED, 0, b"w")


@pytest.mark.parametrize("busy", [False, True])
async def test_a_leader_gives_the_group_its_configured_lifetime_with_the_next_close(
        tmp_path, autojump_clock, busy):
    # Asked for by a read, or -- a busy group closes time only when a read needs it, which
    # could be never -- by the closer at its next interval all the same.
    class Clock:
        def now(self) -> int:
            return 1_000

    log = Log()
    with MVCCStore(tmp_path / "a") as store:
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        sm.apply([log(encode_close(500, 2 * LIFETIME))])  # an earlier leader's
        assert sm.lifetime_ns == 2 * LIFETIME
        replica = GroupReplica(5, _PurgingLeader(sm, log, steps=1), sm, Clock(),
                               close_interval=1.0 if busy else 0)
        if busy:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replica.run_closer)
                for _ in range(15):  # a commit every 0.1 s
                    replica._last_activity = trio.current_time()
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        else:
            await replica.close_up_to(900)
        assert sm.lifetime_ns == LIFETIME and sm.closed_ts == 1_000
        sm.close()


def test_malformed_and_protocol_breaking_entries_change_nothing_but_the_index(sm):
    log = Log()
    bad = [b"\xc1", msgpack.packb({"x": 1}), msgpack.packb([9]),
           msgpack.packb([1, 0, 0, 5, 0, [], []]),  # txn id 0
           msgpack.packb([1, 1, 0, 5, 0, [[b"", b"v"]], []]),  # empty key
           msgpack.packb([1, 1, 0, 5, 0, [[b"k", 7]], []]),  # value not bytes
           # Numbers that compare equal to the right ones, of the wrong type: a command kind
           # of 1.0 or True (a COMMIT is 1), a FENCE level of 1.0 or True.
           msgpack.packb([1.0, 1, 0, 5, 0, [[b"k", b"v"]], []]),
           msgpack.packb([True, 1, 0, 5, 0, [[b"k", b"v"]], []]),
           msgpack.packb([CMD_FENCE, 5, 7, 1.0, 0]),
           msgpack.packb([CMD_FENCE, 5, 7, True, 0])]
    results = sm.apply([log(d) for d in bad])
    assert all(r.outcome is Outcome.INVALID for r in results)
    assert sm.applied_index == len(bad) and sm.closed_ts == 0
    r = commit(sm, log, 1, 10**12, 5, [(b"k", b"v")])  # snapshot never closed here
    assert r.outcome is Outcome.INVALID and "not below" in r.reason
    assert sm.store.get(b"k", 10**13) is None


# ---------------------------------------------------------------------- determinism


KS = 7  # the keyspace that the fence and purge commands change
PREFIX = KS.to_bytes(4, "big")
KEYS = [b"a", b"b", PREFIX + b"x", PREFIX + b"y"]
BOUNDS = [PREFIX, PREFIX + b"x", PREFIX + b"y", (KS + 1).to_bytes(4, "big")]

commands = st.lists(
    st.one_of(
        st.tuples(st.just("commit"),
                  st.integers(0, 60),  # read_ts offset below the proposal (0: blind)
                  st.integers(1, 120),  # proposed ts
                  st.lists(st.sampled_from(KEYS), max_size=3),
                  st.lists(st.sampled_from(KEYS), max_size=2),
                  st.booleans()),
        # A keyspace dropped (2), fenced against writes (1) or open again (0), and its data
        # erased a range at a time.
        st.tuples(st.just("fence"), st.integers(1, 150), st.sampled_from([0, 1, 2, 3])),
        st.tuples(st.just("purge"), st.integers(1, 150), st.sampled_from(BOUNDS),
                  st.sampled_from(BOUNDS)),
        st.tuples(st.just("close"), st.integers(1, 150)),
        # A regional write (a merge) to a key that may hold a plain value or another
        # resolver's cell: refused then, as INVALID, on every replica alike.
        st.tuples(st.just("merge"),
                  st.integers(0, 60),
                  st.integers(1, 120),
                  st.sampled_from(KEYS),
                  st.sampled_from(["lww", "counter", "max"])),
        # Two-phase commit pieces, over a few transaction ids: the same transaction may be
        # prepared twice (different keys), resolved, or resolved before it is prepared.
        st.tuples(st.just("prepare"),
                  st.integers(1, 3),
                  st.integers(1, 120),
                  st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)),
        st.tuples(st.just("resolve"),
                  st.integers(1, 3),
                  st.integers(0, 150)),
    ),
    min_size=1, max_size=40)


def build(cmds) -> list[bytes]:
    out = []
    for n, c in enumerate(cmds, start=1):
        if c[0] == "close":
            out.append(encode_close(c[1]))
        elif c[0] == "fence":
            out.append(encode_fence(c[1], KS, c[2]))
        elif c[0] == "purge":
            _, ts, start, end = c
            side_lo, side_hi = conflict_log_bounds(KS)
            out.append(encode_purge(ts, KS, start, end, side_lo, side_hi))
        elif c[0] == "merge":
            _, back, ts, key, resolver = c
            read_ts = 0 if back == 0 else max(1, ts - back)
            out.append(encode_commit(n, read_ts, ts, [], merges=[(key, resolver, b"%d" % n)]))
        elif c[0] == "prepare":
            _, txn, ts, keys = c
            out.append(encode_prepare(1000 + txn, 0, ts, [(k, b"%d" % n) for k in keys],
                                      primary=1, deadline=10**6))
        elif c[0] == "resolve":
            _, txn, commit_ts = c
            out.append(encode_resolve(1000 + txn, commit_ts, commit_ts))
        else:
            _, back, ts, writes, reads, ser = c
            read_ts = 0 if back == 0 else max(1, ts - back)
            out.append(encode_commit(n, read_ts, ts, [(k, b"%d" % n) for k in writes], reads,
                                     serializable=ser))
    return out


def dump(sm: GroupStateMachine):
    with sm.store.snapshot_chunks(4096) as stream:
        chunks = [msgpack.unpackb(c, raw=False) for c in stream]
    pairs = [p for c in chunks if c["kind"] == "data" for p in c["pairs"]]
    return sm.applied_index, sm.closed_ts, sm.low_water, pairs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cmds=commands, cuts=st.lists(st.integers(0, 40), max_size=5),
       restart_at=st.integers(0, 40), lifetime=st.sampled_from([30, 1000]))
def test_replicas_decide_identically_whatever_their_batches_and_restarts(
        tmp_path_factory, cmds, cuts, restart_at, lifetime):
    """One replica applies entry by entry; another in arbitrary batches, restarting (a new
    state machine over the reopened store, its adjudicator rebuilt) at some point. Results,
    data, closed timestamp and low water must be identical."""
    _check_replicas_agree(tmp_path_factory, cmds, cuts, restart_at, lifetime)


# The dropped keyspace's own life: writes to it (regional merges too) and prepares; its drop;
# then its fence going down and up again, PURGE ranges, late resolutions and more writes, with
# time moving on; a last PURGE of the whole keyspace.
_ks_writes = st.one_of(
    st.tuples(st.just("commit"), st.integers(0, 20), st.integers(1, 60),
              st.lists(st.sampled_from(KEYS[2:]), min_size=1, max_size=2),
              st.just([]), st.just(False)),
    st.tuples(st.just("merge"), st.integers(0, 20), st.integers(1, 120),
              st.sampled_from(KEYS[2:]), st.sampled_from(["lww", "counter"])),
    st.tuples(st.just("prepare"), st.integers(1, 3), st.integers(1, 60),
              st.lists(st.sampled_from(KEYS[2:]), min_size=1, max_size=2, unique=True)))
purge_commands = st.tuples(
    st.lists(_ks_writes, min_size=1, max_size=12),
    st.lists(st.one_of(
        _ks_writes,
        st.tuples(st.just("close"), st.integers(40, 150)),
        st.tuples(st.just("fence"), st.integers(1, 150), st.sampled_from([0, 1, 2, 3, 3])),
        st.tuples(st.just("purge"), st.integers(1, 150), st.sampled_from(BOUNDS[:2]),
                  st.sampled_from(BOUNDS[1:])),
        st.tuples(st.just("resolve"), st.integers(1, 3), st.integers(0, 150))),
        min_size=1, max_size=28),
    st.integers(40, 150),
).map(lambda p: [*p[0], ("fence", 30, 2), ("fence", 31, 3), *p[1], ("close", p[2]),
                 ("purge", p[2], BOUNDS[0], BOUNDS[-1])])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cmds=purge_commands, cuts=st.lists(st.integers(0, 40), max_size=5),
       restart_at=st.integers(0, 40))
def test_replicas_erase_a_dropped_keyspace_identically(tmp_path_factory, cmds, cuts,
                                                        restart_at):
    _check_replicas_agree(tmp_path_factory, cmds, cuts, restart_at, 30)


def _check_replicas_agree(tmp_path_factory, cmds, cuts, restart_at, lifetime) -> None:
    base = tmp_path_factory.mktemp("det")
    data = build(cmds)
    entries = [Entry(term=1, index=i, data=d) for i, d in enumerate(data, start=1)]

    with MVCCStore(base / "a", map_size=1 << 20) as sa:
        a = GroupStateMachine(sa, max_txn_lifetime_ns=lifetime, origin="us-east")
        expected = [r for e in entries for r in a.apply([e])]
        want = dump(a)
        a.close()

    bounds = sorted({0, len(entries), *[c for c in cuts if c < len(entries)]})
    got: list = []
    path = base / "b"
    store = MVCCStore(path, map_size=1 << 20)
    b = GroupStateMachine(store, max_txn_lifetime_ns=lifetime, origin="us-east")
    try:
        for lo, hi in zip(bounds, bounds[1:]):
            if lo <= restart_at < hi:
                b.close()
                store.close()
                store = MVCCStore(path, map_size=1 << 20)
                b = GroupStateMachine(store, max_txn_lifetime_ns=lifetime, origin="us-east")
            got.extend(b.apply(entries[lo:hi]))
        assert got == expected
        assert dump(b) == want
    finally:
        b.close()
        store.close()


def _decisions(base, entries, plan) -> list:
    """Applies ``entries`` to a fresh replica in the calls ``plan`` names -- a list of
    ``(count, restart_first)`` -- and returns the results."""
    store = MVCCStore(base, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    out, at = [], 0
    try:
        for count, restart_first in plan:
            if restart_first:
                sm.close()
                store.close()
                store = MVCCStore(base, map_size=1 << 20)
                sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
            out.extend(sm.apply(entries[at:at + count]))
            at += count
        return out
    finally:
        sm.close()
        store.close()


def test_a_merge_refused_at_apply_leaves_nothing_for_later_commits_to_conflict_with(tmp_path):
    # A counter merge on a key holding a plain value is refused (INVALID) -- before the
    # adjudicator records it: a replica that restarts (its adjudicator rebuilt from the store)
    # and one that does not must decide the next write of that key alike.
    log = Log()
    entries = [log(encode_commit(1, 0, 100, [(b"p", b"plain")])),
               log(encode_commit(2, 0, 200, [], merges=[(b"p", "counter", b"5")])),
               log(encode_commit(3, 150, 300, [(b"p", b"v3")]))]
    live = _decisions(tmp_path / "a", entries, [(2, False), (1, False)])
    restarted = _decisions(tmp_path / "b", entries, [(2, False), (1, True)])
    assert live[1].outcome is Outcome.INVALID
    assert [r.outcome for r in live] == [r.outcome for r in restarted]
    assert live[2].committed


def test_a_refused_merge_names_the_key_without_its_keyspace_prefix(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    try:
        log = Log()
        key = PREFIX + b"acct"
        sm.apply([log(encode_commit(1, 0, 100, [(key, b"plain")]))])
        [r] = sm.apply([log(encode_commit(2, 0, 200, [], merges=[(key, "counter", b"5")]))])
        assert r.outcome is Outcome.INVALID and "to key b'acct':" in r.reason
    finally:
        sm.close()
        store.close()


def test_a_merge_sees_a_plain_value_written_earlier_in_the_same_batch(tmp_path):
    log = Log()
    entries = [log(encode_commit(1, 0, 1, [(b"a", b"plain")])),
               log(encode_commit(2, 0, 2, [], merges=[(b"a", "lww", b"x")]))]
    one_by_one = _decisions(tmp_path / "a", entries, [(1, False), (1, False)])
    together = _decisions(tmp_path / "b", entries, [(2, False)])
    assert one_by_one[1].outcome is Outcome.INVALID
    assert together == one_by_one


def test_a_transaction_prepared_twice_in_one_batch_leaves_no_orphan_intent(tmp_path):
    # The second prepare of a transaction (another key set) finds the first installed,
    # whether they share an apply call or not; after the resolve no intent is left.
    log = Log()
    entries = [log(encode_prepare(7, 0, 100, [(b"a", b"1")], primary=1, deadline=10**6)),
               log(encode_prepare(7, 0, 110, [(b"a", b"1"), (b"b", b"2")], primary=1,
                                  deadline=10**6)),
               log(encode_resolve(7, 120, 120)),
               log(encode_commit(8, 0, 200, [(b"b", b"x")]))]
    together = _decisions(tmp_path / "a", entries, [(2, False), (1, False), (1, False)])
    apart = _decisions(tmp_path / "b", entries, [(1, False), (1, False), (2, False)])
    assert together == apart
    assert together[3].committed


def test_a_restored_intent_keeps_its_prepare_timestamp(tmp_path):
    # A restart rebuilds the intents of prepared transactions at their own prepare
    # timestamps (what a conflicting writer is told), even when the low water has passed them.
    log = Log()
    entries = [log(encode_prepare(7, 0, 2, [(b"a", b"1")], primary=1, deadline=10**6)),
               log(encode_close(LIFETIME + 50)),
               log(encode_prepare(8, LIFETIME + 10, LIFETIME + 60, [(b"a", b"2")], primary=1,
                                  deadline=10**6))]
    live = _decisions(tmp_path / "a", entries, [(2, False), (1, False)])
    restarted = _decisions(tmp_path / "b", entries, [(2, False), (1, True)])
    assert live[2].reason == "intent" and live[2].conflict_ts == 2
    assert restarted == live


def test_purge_erases_a_dropped_keyspaces_versions_up_to_the_low_water(sm):
    log = Log()
    old, other = PREFIX + b"old", b"\x00\x00\x00\x08k"  # other: the next keyspace
    commit(sm, log, 1, 0, 10, [(old, b"1"), (other, b"1")])
    commit(sm, log, 2, 0, LIFETIME + 20, [(old, b"2"), (other, b"2")])
    lo, hi = BOUNDS[0], BOUNDS[-1]
    side_lo, side_hi = conflict_log_bounds(KS)
    # Not dropped, or fenced without being released (level 2): a PURGE does nothing.
    for level in (0, 2):
        sm.apply([log(encode_fence(LIFETIME + 25, KS, level)),
                  log(encode_purge(LIFETIME + 30, KS, lo, hi, side_lo, side_hi))])
        assert sm.store.count_versions(lo, hi) == (2, None)
        assert sm.erasable_keyspaces() == []
    sm.apply([log(encode_fence(LIFETIME + 40, KS, 3))])
    assert sm.erasable_keyspaces() == [(KS, LIFETIME + 40)]
    # The low water is now 40: the version at 10 goes, the one at LIFETIME + 20 stays.
    [r] = sm.apply([log(encode_purge(LIFETIME + 50, KS, lo, hi, side_lo, side_hi))])
    assert r.outcome is Outcome.RESOLVED and sm.low_water == 50
    assert sm.store.get_version(old, MAX_TS) == (LIFETIME + 20, b"2")
    assert sm.store.count_versions(lo, hi) == (1, None)
    # Not above the entry's own max_ts (the low water its leader planned with)...
    sm.apply([log(encode_purge(2 * LIFETIME + 30, KS, lo, hi, side_lo, side_hi, 50))])
    assert sm.store.count_versions(lo, hi) == (1, None)
    # ...and a range reaching past the keyspace is clipped to it.
    sm.apply([log(encode_purge(2 * LIFETIME + 40, KS, b"", b"\xff" * 8, side_lo, side_hi))])
    assert sm.store.count_versions(lo, hi) == (0, None)
    assert sm.store.count_versions(other, other + b"\x00") == (2, None)


def test_purge_erases_a_dropped_regional_keyspaces_conflict_log_and_skips_its_shipped_writes(
        tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    try:
        log = Log()
        key = PREFIX + b"r"
        sm.apply([log(encode_commit(1, 0, 100, [], merges=[(key, "lww", b"east")]))])
        # An older write from another region loses, and is logged.
        sm.apply([log(encode_remote(101, 200, 0, 200,
                                    [[key, "lww", b"west", 50, "eu-west", 0, ""]]))])
        side_lo, side_hi = conflict_log_bounds(KS)
        assert len(store.side_scan(side_lo, side_hi)) == 1
        merged_at = store.get_version(key, MAX_TS)[0]  # the cell the REMOTE wrote
        sm.apply([log(encode_fence(300, KS, 2))])  # being dropped: shipped writes skipped
        [r] = sm.apply([log(encode_remote(101, 400, 200, 400,
                                          [[key, "lww", b"late", 390, "eu-west", 0, ""]]))])
        assert r.committed  # the stream goes on (its watermark moves)...
        assert store.get_version(key, MAX_TS)[0] == merged_at  # ...without the write
        sm.apply([log(encode_fence(450, KS, 3)),  # from 2
                  log(encode_purge(LIFETIME + 500, KS, BOUNDS[0], BOUNDS[-1], side_lo, side_hi))])
        assert store.side_scan(side_lo, side_hi) == []
        assert store.count_versions(BOUNDS[0], BOUNDS[-1]) == (0, None)
    finally:
        sm.close()
        store.close()


@pytest.mark.parametrize("write", [
    [b"k", "lww", b"v", 50, "x" * 300, 0, ""],            # origin longer than a region name
    [b"k", "lww", b"v", 50, "eu-west", -5, "us-east"],    # prev ts out of range
    [b"k", "lww", b"v", 50, "eu-west", 7, ""],            # prev ts without its origin
    [b"k", "counter", b"1", 50, "eu-west", 7, "y" * 300],  # prev origin too long
], ids=["origin", "prev-ts", "prev-origin", "long-prev-origin"])
def test_a_remote_batch_with_a_malformed_write_is_refused_not_raised(tmp_path, write):
    # remote.apply puts a client's batch in the log as it is: an entry that raised in apply
    # would stop every replica of the group, at every restart.
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    try:
        log = Log()
        [r] = sm.apply([log(encode_remote(101, 200, 0, 200, [write]))])
        assert r.outcome is Outcome.INVALID
        assert sm.applied_index == 1 and sm.watermark(101) == 0
        [r] = sm.apply([log(encode_remote(101, 300, 0, 300,
                                          [[b"k", "lww", b"ok", 250, "eu-west", 0, ""]]))])
        assert r.committed and sm.watermark(101) == 300
    finally:
        sm.close()
        store.close()


@pytest.mark.parametrize("merges, writes", [
    ([(b"k", "counter", b"5"), (b"k", "counter", b"3")], []),
    ([(b"k", "lww", b"a"), (b"k", "lww", b"b")], []),
    ([(b"k", "lww", b"a")], [(b"k", b"plain")]),
], ids=["counter", "lww", "plain-and-merge"])
def test_a_commit_writing_a_regional_key_twice_is_refused(tmp_path, merges, writes):
    # Both writes would share the commit's (key, ts, origin), the identity of one write: a
    # counter kept only the larger increment (+5, not +8), silently, and acknowledged it.
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    try:
        log = Log()
        [r] = sm.apply([log(encode_commit(1, 0, 100, writes, merges=merges))])
        assert r.outcome is Outcome.INVALID and "twice" in r.reason
        assert store.get(b"k", MAX_TS) is None and sm.outbox_after(0) == []
    finally:
        sm.close()
        store.close()


def test_a_purge_erases_what_came_before_it_in_its_call_and_not_what_came_after(tmp_path):
    # Writes of one apply call reach the store at its end, after its PURGE ranges are
    # erased: the outcome must still be that of applying the log entry by entry.
    key = PREFIX + b"k"
    log = Log()
    entries = [log(encode_prepare(5, 0, 10, [(key, b"a")], primary=1, deadline=10**6)),
               log(encode_prepare(6, 0, 11, [(key + b"2", b"b")], primary=1,
                                  deadline=10**6)),
               log(encode_fence(12, KS, 2)),
               log(encode_fence(13, KS, 3)),
               log(encode_close(LIFETIME + 100)),
               log(encode_resolve(5, LIFETIME + 110, 20)),  # a version at 20, below low water
               log(encode_purge(LIFETIME + 120, KS, BOUNDS[0], BOUNDS[-1])),
               log(encode_resolve(6, LIFETIME + 130, 30))]
    states = []
    for name, plan in (("apart", [(1, False)] * 8), ("together", [(8, False)])):
        _decisions(tmp_path / name, entries, plan)
        with MVCCStore(tmp_path / name, map_size=1 << 20) as store:
            states.append([store.get_version(k, MAX_TS) for k in (key, key + b"2")])
    assert states[0] == states[1] == [None, (30, b"b")]


def test_level_3_is_taken_only_from_level_2_and_kept_by_a_later_level_2(sm):
    log = Log()
    prefix = PREFIX
    [r] = sm.apply([log(encode_fence(10, KS, 3))])
    assert r.reason == "fence_changed" and sm.fence(prefix) == (0, 0)
    sm.apply([log(encode_fence(20, KS, 2))])
    assert sm.fence(prefix) == (2, 20)  # stamped with the entry's timestamp
    [r] = sm.apply([log(encode_fence(30, KS, 3, expect=(2, 19)))])  # not that fence
    assert r.reason == "fence_changed" and sm.erasable_keyspaces() == []
    sm.apply([log(encode_fence(40, KS, 3, expect=(2, 20)))])
    assert sm.erasable_keyspaces() == [(KS, 40)]
    [r] = sm.apply([log(encode_fence(50, KS, 2))])  # a drop that read an old record
    assert r.reason == "fence_changed" and sm.fence(prefix) == (3, 40)
    sm.apply([log(encode_fence(60, KS, 1, MAX_TS))])  # a move bringing it back
    assert sm.fence(prefix) == (1, MAX_TS) and sm.erasable_keyspaces() == []


def test_a_fence_refuses_a_change_from_an_older_move_or_drop_and_remembers_its_epoch(
        tmp_path):
    log = Log()
    with MVCCStore(tmp_path / "a") as sa, MVCCStore(tmp_path / "b") as sb:
        sm = GroupStateMachine(sa, max_txn_lifetime_ns=LIFETIME)
        sm.apply([log(encode_fence(10, KS, 1, MAX_TS, epoch=2))])
        assert sm.fence(PREFIX) == (1, MAX_TS) and sm.fence_epoch(PREFIX) == 2
        [r] = sm.apply([log(encode_fence(20, KS, 0, 0, epoch=1))])  # overtaken: refused
        assert r.reason == "fence_changed" and sm.fence(PREFIX) == (1, MAX_TS)
        [r] = sm.apply([log(encode_fence(25, KS, 0, 0))])  # no epoch at all: refused too
        assert r.reason == "fence_changed"
        # The same move's copy lands; an older move's does not.
        assert sm.apply([log(encode_commit(1, 0, 30, [(PREFIX + b"a", b"new")],
                                           move_copy=True, epoch=2))])[0].committed
        [r] = sm.apply([log(encode_commit(2, 0, 40, [(PREFIX + b"a", b"stale")],
                                          move_copy=True, epoch=1))])
        assert r.reason == "moved" and sm.store.get(PREFIX + b"a", MAX_TS) == b"new"
        assert r.key == PREFIX + b"a"  # the key refused (a node's message names it)
        # Lifted to (0, 0), the epoch stays: an older move can still not fence it again.
        sm.apply([log(encode_fence(50, KS, 0, 0, epoch=2))])
        assert sm.fence(PREFIX) == (0, 0) and sm.fence_epoch(PREFIX) == 2
        [r] = sm.apply([log(encode_fence(60, KS, 1, 0, epoch=1))])
        assert r.reason == "fence_changed"
        # A newer one may; its own expectation still applies.
        [r] = sm.apply([log(encode_fence(70, KS, 3, expect=(2, 1), epoch=3))])
        assert r.reason == "fence_changed" and sm.fence_epoch(PREFIX) == 3  # refused, kept
        sm.apply([log(encode_fence(80, KS, 2, epoch=4))])
        assert sm.fence(PREFIX) == (2, 80) and sm.fence_epoch(PREFIX) == 4
        # A snapshot, and a restart, keep the epoch.
        replica = GroupStateMachine(sb, max_txn_lifetime_ns=LIFETIME)
        replica.restore(sm.snapshot())
        sm.close()
        sm = GroupStateMachine(sa, max_txn_lifetime_ns=LIFETIME)
        for machine in (sm, replica):
            assert machine.fence(PREFIX) == (2, 80) and machine.fence_epoch(PREFIX) == 4
            [r] = machine.apply([log(encode_fence(90, KS, 1, MAX_TS, epoch=3))])
            assert r.reason == "fence_changed"
            log.index -= 1
        sm.close()
        replica.close()


def test_one_move_s_fence_changes_only_go_forward_and_a_refusal_by_a_newer_one_keeps_it(sm):
    log = Log()
    sm.apply([log(encode_fence(10, KS, 1, MAX_TS, epoch=5)),  # a move's new home: closed,
              log(encode_fence(20, KS, 1, 15, epoch=5)),      # readable from its copy,
              log(encode_fence(30, KS, 0, 15, epoch=5))])     # open
    for late in ((1, MAX_TS), (1, 15), (0, 15)):  # a retried call's first copy, applied late
        [r] = sm.apply([log(encode_fence(40, KS, *late, epoch=5))])
        assert r.reason == "fence_changed" and sm.fence(PREFIX) == (0, 15)
    sm.apply([log(encode_fence(50, KS, 2, epoch=6))])  # a drop
    [r] = sm.apply([log(encode_fence(60, KS, 2, epoch=6))])  # another, joined: no new stamp
    assert r.reason == "fence_changed" and sm.fence(PREFIX) == (2, 50)
    sm.apply([log(encode_fence(70, KS, 3, expect=(2, 50), epoch=6))])
    # A newer move finds it erasable: refused, but the fence is that move's now.
    [r] = sm.apply([log(encode_fence(80, KS, 2, epoch=8))])
    assert r.reason == "fence_changed" and sm.fence(PREFIX) == (3, 70)
    assert sm.fence_epoch(PREFIX) == 8
    [r] = sm.apply([log(encode_fence(90, KS, 1, MAX_TS, epoch=7))])  # an older move's
    assert r.reason == "fence_changed" and sm.erasable_keyspaces() == [(KS, 70)]
    # A move's old home: frozen, fenced against reads, then rolled back (open again); a
    # late copy of its read fence does not close it again.
    sm.apply([log(encode_fence(100, KS, 1, 15, epoch=9)),
              log(encode_fence(110, KS, 2, epoch=9)),
              log(encode_fence(120, KS, 0, 15, epoch=9))])
    [r] = sm.apply([log(encode_fence(130, KS, 2, epoch=9))])
    assert r.reason == "fence_changed" and sm.fence(PREFIX) == (0, 15)


def test_what_follows_a_purge_in_its_call_reads_the_store_without_what_it_erased(tmp_path):
    # A merge reads the key's cell from the store: after a PURGE erased it and the keyspace
    # was opened again (a move back), the merge must find no cell, in one call as apart.
    key = PREFIX + b"k"
    side_lo, side_hi = conflict_log_bounds(KS)
    log = Log()
    entries = [log(encode_commit(1, 0, 10, [], merges=[(key, "lww", b"old")])),
               log(encode_close(LIFETIME + 100)),
               log(encode_fence(LIFETIME + 105, KS, 2)),
               log(encode_fence(LIFETIME + 110, KS, 3)),
               log(encode_purge(LIFETIME + 120, KS, BOUNDS[0], BOUNDS[-1], side_lo, side_hi)),
               log(encode_fence(LIFETIME + 130, KS, 0)),
               log(encode_commit(2, 0, LIFETIME + 140, [], merges=[(key, "counter", b"5")]))]
    apart = _decisions(tmp_path / "a", entries, [(1, False)] * 7)
    together = _decisions(tmp_path / "b", entries, [(1, False), (6, False)])
    assert apart[-1].committed
    assert together == apart


def test_a_purge_erases_conflict_records_written_before_it_in_its_call(tmp_path):
    key = PREFIX + b"r"
    side_lo, side_hi = conflict_log_bounds(KS)
    log = Log()
    entries = [log(encode_commit(1, 0, 100, [], merges=[(key, "lww", b"east")])),
               log(encode_remote(101, 200, 0, 200, [[key, "lww", b"w", 50, "eu-west", 0, ""]])),
               log(encode_fence(290, KS, 2)),
               log(encode_fence(300, KS, 3)),
               log(encode_purge(400, KS, BOUNDS[0], BOUNDS[0], side_lo, side_hi))]
    for name, plan in (("apart", [(1, False)] * 5), ("together", [(5, False)])):
        _decisions(tmp_path / name, entries, plan)
        with MVCCStore(tmp_path / name, map_size=1 << 20) as store:
            assert store.side_scan(side_lo, side_hi) == [], name


def test_replay_after_restart_skips_what_the_store_has(tmp_path):
    log = Log()
    entries = [log(encode_commit(1, 0, 10, [(b"k", b"1")])),
               log(encode_commit(2, 10, 20, [(b"k", b"2")]))]
    with MVCCStore(tmp_path / "s") as store:
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        sm.apply(entries)
        sm.close()
    with MVCCStore(tmp_path / "s") as store:
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        assert sm.closed_ts == 20 and sm.adjudicator.last_commit_ts(b"k") == 20
        # Raft re-delivers the committed entries after a restart: nothing happens twice.
        assert sm.apply(entries) == [None, None]
        r = sm.apply([log(encode_commit(3, 10, 30, [(b"k", b"3")]))])[0]
        assert r.reason == "write_write"
        sm.close()


def test_snapshot_restores_state_and_decisions_on_another_replica(tmp_path):
    log = Log()
    with MVCCStore(tmp_path / "a") as sa, MVCCStore(tmp_path / "b") as sb:
        a = GroupStateMachine(sa, max_txn_lifetime_ns=LIFETIME)
        b = GroupStateMachine(sb, max_txn_lifetime_ns=LIFETIME)
        a.apply([log(encode_commit(1, 0, 10, [(b"k", b"1")]))])
        b.restore(a.snapshot())
        assert b.closed_ts == 10 and b.applied_index == 1
        nxt = log(encode_commit(2, 5, 20, [(b"k", b"2")]))
        assert a.apply([nxt]) == b.apply([nxt])
        assert b.apply([nxt]) == [None]
        # A snapshot at or below what a replica applied is not installed again.
        b.restore(a.snapshot())
        assert b.applied_index == 2
        a.close()
        b.close()


def test_a_built_snapshot_is_the_full_snapshot_and_the_checkpoint_marker_is_local(tmp_path):
    """Durable compaction (raft.driver.DurableStateMachine): checkpoint() copies nothing and
    restores only over a store that has what it says; a build written from another thread
    after more applies holds the state as of begin_snapshot()."""
    import threading

    from engine.errors import CorruptStateError

    log = Log()
    with MVCCStore(tmp_path / "a") as sa, MVCCStore(tmp_path / "b") as sb, \
            MVCCStore(tmp_path / "c") as sc:
        a = GroupStateMachine(sa, max_txn_lifetime_ns=LIFETIME)
        a.apply([log(encode_commit(t, 0, 10 * t, [(b"k%d" % t, b"v" * 3000)]))
                 for t in range(1, 400)])
        marker = a.checkpoint()
        assert len(marker) < 16
        a.restore(marker)  # over its own store: nothing to do
        expected = a.snapshot()
        build = a.begin_snapshot()
        assert build.index == a.applied_index
        a.apply([log(encode_commit(400, 0, 4000, [(b"k1", b"later")]))])
        out = []
        t = threading.Thread(target=lambda: out.append(build.run()))
        t.start()
        t.join()
        data = out[0]
        # The view of begin_snapshot(), not the later write (the same chunks; only the
        # array's length is encoded at a fixed width, to be filled in last).
        assert msgpack.unpackb(data) == msgpack.unpackb(expected)
        b = GroupStateMachine(sb, max_txn_lifetime_ns=LIFETIME)
        b.restore(data)
        assert b.applied_index == build.index and b.store.get(b"k1", MAX_TS) == b"v" * 3000
        # A store behind the marker lost writes it had made durable: refused, not ignored.
        c = GroupStateMachine(sc, max_txn_lifetime_ns=LIFETIME)
        with pytest.raises(CorruptStateError, match="compacted behind its checkpoint"):
            c.restore(marker)
        # A damaged snapshot is refused whole, the store left as it was.
        for bad in (data[:len(data) // 2], b"\x93\x01\x02\x03", b"\x92\xa1x\xc0"):
            with pytest.raises(CorruptStateError, match="malformed"):
                c.restore(bad)
            assert c.applied_index == 0
        # A cancelled build stops and releases its view.
        build = a.begin_snapshot()
        build.cancel()
        with pytest.raises(StoreClosedError):
            build.run()
        for m in (a, b, c):
            m.close()


class _Learner:
    """The Raft node of a replica that does not lead its group (a learner)."""

    id = 2
    is_leader = False
    leader = 1


async def test_a_read_waiting_for_a_timestamp_a_snapshot_closes_is_answered_after_the_install(
        tmp_path):
    """A replica that fell behind its group's compacted log catches up by installing a
    snapshot, in a worker thread, instead of applying entries. A stale read waiting there for
    a timestamp that the snapshot closes is answered once the install ends -- not when the
    next entry happens to raise the closed timestamp (an idle group's next CLOSE; never, for
    a replica cut off from its leader after the install: the read then fails, though the
    replica could serve it)."""
    class Clock:
        def now(self) -> int:
            return 1_000

    log = Log()
    with MVCCStore(tmp_path / "a") as sa, MVCCStore(tmp_path / "b") as sb:
        a = GroupStateMachine(sa, max_txn_lifetime_ns=LIFETIME)
        b = GroupStateMachine(sb, max_txn_lifetime_ns=LIFETIME)
        a.apply([log(encode_commit(1, 0, 100, [(b"k", b"1")])), log(encode_close(500))])
        replica = GroupReplica(5, _Learner(), b, Clock(), close_interval=0)
        answered = []

        async def read_at(ts: int) -> None:
            await replica.wait_closed(ts)
            answered.append(ts)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_at, 300)
            nursery.start_soon(read_at, 600)  # above what the snapshot closes
            await trio.testing.wait_all_tasks_blocked()
            assert answered == []
            await trio.to_thread.run_sync(b.restore, a.snapshot())
            await trio.testing.wait_all_tasks_blocked()
            assert b.closed_ts == 500 and answered == [300]
            assert replica.get(b"k", 300) == b"1"
            nursery.cancel_scope.cancel()
        a.close()
        b.close()


async def test_reads_that_stop_waiting_for_a_closed_timestamp_together_do_not_stall_the_loop(
        monkeypatch):
    """A replica cut off from its leader holds every stale read that waits for a timestamp it
    has not closed, and they time out together. Each used to leave with a pass over all the
    others (a removal from the heap, then a heapify): quadratic, seconds of a stalled event
    loop for ten thousand reads. Those that stay are still woken, and only they."""
    import raft.waitheap

    sm = type("SM", (), {"closed_ts": 0})()
    replica = GroupReplica(5, _Learner(), sm, None, close_interval=0)
    passes = []
    heapify = raft.waitheap.heapq.heapify

    def counting(heap):
        if heap is replica._closed_waiters._heap:
            passes.append(len(heap))
        heapify(heap)

    monkeypatch.setattr(raft.waitheap.heapq, "heapify", counting)
    answered = []

    async def read_at(ts: int, scope: trio.CancelScope) -> None:
        with scope:
            await replica.wait_closed(ts)
            answered.append(ts)

    scopes = [trio.CancelScope() for _ in range(1_000)]
    async with trio.open_nursery() as nursery:
        for ts, scope in enumerate(scopes, 1):
            nursery.start_soon(read_at, ts, scope)
        await trio.testing.wait_all_tasks_blocked()
        for ts, scope in enumerate(scopes, 1):
            if ts % 10:  # nine in ten give up, one by one
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
        assert sum(passes) <= 2 * len(scopes)  # was about 250 times that
        replica._on_closed(500)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(answered) == list(range(10, 501, 10))
        replica._on_closed(1_000)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(answered) == list(range(10, 1_001, 10))
    assert replica._closed_waiters._heap == []  # none left behind, given up or not


class _PurgingLeader:
    """The Raft node of a replica that leads its group alone for ``steps`` entries: each one
    it is given is applied to ``sm`` at once, and the versions it erased noted."""

    id = leader = 1

    def __init__(self, sm: GroupStateMachine, log: Log, steps: int) -> None:
        self.sm, self.log, self.steps = sm, log, steps
        self.erased: list[int] = []

    @property
    def is_leader(self) -> bool:
        return self.steps > 0

    async def propose(self, data: bytes, timeout: float):
        before = self.sm.store.count_versions(b"", b"\xff" * 8)[0]
        [result] = self.sm.apply([self.log(data)])
        self.erased.append(before - self.sm.store.count_versions(b"", b"\xff" * 8)[0])
        self.steps -= 1
        return result


async def test_a_key_with_many_versions_is_purged_in_bounded_steps_across_leaders(
        tmp_path, autojump_clock):
    """A dropped keyspace's key with far more versions than one PURGE entry may erase is
    erased in several entries of at most the budget each, resuming inside the key -- also
    when another leader (or this one, restarted) takes over half way: it starts again from
    the keyspace's first key, where what is left is. The other keyspaces keep their data."""
    class Clock:
        def __init__(self) -> None:
            self.ts = 3 * LIFETIME

        def now(self) -> int:
            self.ts += 1
            return self.ts

    log = Log()
    hot, cold, other = PREFIX + b"hot", PREFIX + b"x", b"\x00\x00\x00\x08k"
    with MVCCStore(tmp_path / "a", map_size=64 << 20) as store:
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        sm.apply([log(encode_commit(ts, 0, ts, [(hot, b"%d" % ts)])) for ts in range(1, 1001)])
        sm.apply([log(encode_commit(1001, 0, 1001, [(cold, b"c"), (other, b"o")])),
                  log(encode_fence(1100, KS, 2)), log(encode_fence(1200, KS, 3)),
                  log(encode_close(1300 + LIFETIME))])
        assert sm.store.count_versions(hot, hot + b"\x00") == (1000, None)
        clock = Clock()
        first = _PurgingLeader(sm, log, steps=4)  # loses the group after 4 entries
        await GroupReplica(5, first, sm, clock, close_interval=0).purge_erasable(budget=150)
        assert first.erased == [150] * 4
        second = _PurgingLeader(sm, log, steps=100)
        await GroupReplica(5, second, sm, clock, close_interval=0).purge_erasable(budget=150)
        # 400 left of the hot key: 150, 150, then 100 with the cold key's one in the last.
        assert second.erased == [150, 150, 101]
        assert sm.store.count_versions(BOUNDS[0], BOUNDS[-1]) == (0, None)
        assert sm.store.get(other, MAX_TS) == b"o"
        sm.close()


async def test_a_purged_keyspace_with_an_intent_left_is_looked_at_again(tmp_path,
                                                                        autojump_clock):
    """The purger's last look reads whether an intent (or a read lock) is left in the
    keyspace, not the intents themselves (each may hold a value of megabytes): the keyspace
    is not taken as erased while one is there, and is once it is resolved."""
    class Clock:
        def now(self) -> int:
            return 3 * LIFETIME

    log = Log()
    with MVCCStore(tmp_path / "a", map_size=64 << 20) as store:
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        sm.apply([log(encode_prepare(1, 0, 10, [(PREFIX + b"w", b"x" * (1 << 20))],
                                     locks=[PREFIX + b"r"], primary=1, deadline=10**6)),
                  log(encode_fence(20, KS, 2)), log(encode_fence(30, KS, 3)),
                  log(encode_close(100 + LIFETIME))])
        assert sm.has_intents(BOUNDS[0], BOUNDS[-1])
        assert not sm.has_intents(BOUNDS[-1], BOUNDS[-1] + b"\xff")
        replica = GroupReplica(5, _PurgingLeader(sm, log, steps=10), sm, Clock(),
                               close_interval=0)
        await replica.purge_erasable()
        assert replica._erased == set()
        sm.apply([log(encode_resolve(1, 200 + LIFETIME, 0))])
        assert not sm.has_intents(BOUNDS[0], BOUNDS[-1])
        await replica.purge_erasable()
        assert replica._erased == {(KS, 30)}
        sm.close()
