"""The group state machine beyond one-phase commits: two-phase commit (prepares, intents,
records, resolution) and regional keyspaces (merges, outbox, remote batches, conflict log)."""

from __future__ import annotations

import random
import tracemalloc

import msgpack
import pytest

from engine import errors, group
from engine.group import (
    DECISION_HORIZON_NS,
    OUTBOX_RETENTION_NS,
    RECORD_RETENTION_NS,
    GroupStateMachine,
    Outcome,
    encode_close,
    encode_commit,
    encode_decide,
    encode_drain,
    encode_fence,
    encode_forget,
    encode_prepare,
    encode_remote,
    encode_resolve,
    encode_shipped,
)
from engine.merge import (
    AddWinsSet,
    decode_cell,
    encode_int,
    encode_set_add,
    encode_set_remove,
    resolver_for,
)
from engine.mvcc import MAX_TS, MAX_VALUE_SIZE, MVCCStore
from test_group import LIFETIME, Log

PRIMARY, OTHER = 100, 101


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "g"


@pytest.fixture
def sm(store_path):
    store = MVCCStore(store_path, map_size=1 << 20)
    machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    yield machine
    machine.close()
    store.close()


def one(sm, log, data):
    [result] = sm.apply([log(data)])
    return result


def prepare(sm, log, txn, read_ts, ts, writes, locks=(), deadline=10**9):
    return one(sm, log, encode_prepare(txn, read_ts, ts, writes, (), locks, primary=PRIMARY,
                                       deadline=deadline))


def test_a_prepare_of_a_value_its_intent_cannot_hold_is_refused(sm):
    # An intent's record holds the value written with the transaction's ids: a value of the
    # store's largest size made it too large for the store, which refused the whole apply, on
    # every replica, at every restart. The prepare is refused instead, and the group goes on.
    log = Log()
    r = prepare(sm, log, 2, 100, 200, [(b"w", b"x" * MAX_VALUE_SIZE)])
    assert r.outcome is Outcome.TOO_LARGE and "intent" in r.reason
    assert sm.intents([b"w"], MAX_TS) == [] and not sm.is_prepared(2)
    assert one(sm, log, encode_commit(3, 0, 300, [(b"w", b"2")])).committed


def test_prepare_installs_intents_that_block_writers_and_readers(sm):
    log = Log()
    assert one(sm, log, encode_commit(1, 0, 100, [(b"a", b"0")])).committed
    r = prepare(sm, log, 2, 100, 200, [(b"a", b"1"), (b"b", None)])
    assert (r.outcome, r.ts) == (Outcome.PREPARED, 200)
    # Nothing is visible yet; a read at or above the prepare timestamp must wait for it.
    assert sm.store.get(b"a", MAX_TS) == b"0"
    assert [i.key for i in sm.intents([b"a", b"b", b"c"], 200)] == [b"a", b"b"]
    assert sm.intents([b"a"], 199) == []
    assert [(i.txn_id, i.prepare_ts, i.primary) for i in sm.intents_in(b"", None, 10**6)] == \
        [(2, 200, PRIMARY), (2, 200, PRIMARY)]
    # A writer meets the intent: a retryable conflict, whatever its snapshot.
    r = one(sm, log, encode_commit(3, 250, 300, [(b"a", b"x")]))
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"a")
    # Preparing the same transaction again answers the same timestamp.
    assert prepare(sm, log, 2, 100, 400, [(b"a", b"1"), (b"b", None)]).ts == 200
    [p] = sm.prepared()
    assert (p.txn_id, p.prepare_ts) == (2, 200)


def test_resolve_commits_at_the_commit_timestamp_and_closes_it(sm):
    log = Log()
    one(sm, log, encode_commit(1, 0, 100, [(b"a", b"0"), (b"b", b"0")]))
    prepare(sm, log, 2, 100, 200, [(b"a", b"1"), (b"b", None)])
    r = one(sm, log, encode_resolve(2, 210, 500))
    assert r.outcome is Outcome.RESOLVED and sm.closed_ts >= 500
    assert sm.store.get(b"a", 499) == b"0" and sm.store.get(b"a", 500) == b"1"
    assert sm.store.get(b"b", 499) == b"0" and sm.store.get(b"b", 500) is None
    assert sm.intents([b"a", b"b"], MAX_TS) == [] and sm.prepared() == []
    # First committer wins against the resolved commit, and the key is free again.
    r = one(sm, log, encode_commit(3, 400, 600, [(b"a", b"2")]))
    assert (r.outcome, r.reason, r.conflict_ts) == (Outcome.CONFLICT, "write_write", 500)
    assert one(sm, log, encode_commit(4, 550, 700, [(b"a", b"3")])).committed
    # Resolving again (the coordinator and a recovering reader both may) does nothing.
    assert one(sm, log, encode_resolve(2, 800, 500)).outcome is Outcome.RESOLVED
    assert sm.store.get(b"a", MAX_TS) == b"3"


def test_abort_removes_intents_and_writes_nothing(sm):
    log = Log()
    prepare(sm, log, 2, 0, 200, [(b"a", b"1")])
    one(sm, log, encode_resolve(2, 300, 0))
    assert sm.store.get(b"a", MAX_TS) is None and sm.intents([b"a"], MAX_TS) == []
    assert one(sm, log, encode_commit(3, 250, 400, [(b"a", b"2")])).committed


def test_the_first_decision_recorded_wins(sm):
    log = Log()
    prepare(sm, log, 7, 0, 200, [(b"a", b"1")])
    # A recovering reader aborts first; the coordinator's commit then learns it lost.
    r = one(sm, log, encode_decide(7, 300, 0))
    assert r.outcome is Outcome.ABORTED and sm.record(7) == (False, 0)
    r = one(sm, log, encode_decide(7, 400, 350))
    assert r.outcome is Outcome.ABORTED
    assert sm.store.get(b"a", MAX_TS) is None and sm.intents([b"a"], MAX_TS) == []
    # The other way round: the commit is recorded, and a later abort request answers it.
    prepare(sm, log, 8, 0, 500, [(b"b", b"1")])
    r = one(sm, log, encode_decide(8, 510, 520))
    assert (r.outcome, r.ts) == (Outcome.COMMITTED, 520)
    assert sm.store.get(b"b", 520) == b"1" and sm.closed_ts >= 520
    r = one(sm, log, encode_decide(8, 600, 0))
    assert (r.outcome, r.ts) == (Outcome.COMMITTED, 520)
    assert sm.record(8) == (True, 520) and sm.record(9) is None


def test_old_records_are_forgotten_and_late_commits_become_aborts(sm):
    """Records age out through FORGET: old aborts, and old commits that name their
    participants; younger records and commits without participants stay. A commit decided
    later than the horizon after its snapshot is recorded as an abort, so it cannot land on
    a forgotten abort."""
    log = Log()
    prepare(sm, log, 1, 100, 200, [(b"a", b"1")])
    assert one(sm, log, encode_decide(1, 300, 200, since=100,
                                      participants=[PRIMARY, 101])).committed
    assert one(sm, log, encode_decide(2, 400, 0)).outcome is Outcome.ABORTED
    prepare(sm, log, 3, 0, 450, [(b"c", b"1")])
    assert one(sm, log, encode_decide(3, 500, 500, since=450)).committed  # no participants
    assert sm.record_count() == 3
    assert sm.old_records() == []
    one(sm, log, encode_forget(1000, [1, 2, 3]))  # too young: nothing goes
    assert sm.record(1) == (True, 200) and sm.record(2) == (False, 0)
    late = 1000 + RECORD_RETENTION_NS
    one(sm, log, encode_close(late + 100))
    assert sorted(r[0] for r in sm.old_records()) == [1, 2, 3]
    assert (1, True, 200, [PRIMARY, 101]) in sm.old_records()
    one(sm, log, encode_forget(late + 200, [1, 2, 3, 99]))
    assert sm.record(1) is None and sm.record(2) is None
    assert sm.record(3) == (True, 500)  # a commit that names no participants is kept
    assert sm.record_count() == 1
    # The coordinator of an old snapshot decides too late: an abort, whatever it asked.
    now = late + 300
    r = one(sm, log, encode_decide(4, now, now - 1, since=now - DECISION_HORIZON_NS - 10,
                                   participants=[PRIMARY]))
    assert r.outcome is Outcome.ABORTED and sm.record(4) == (False, 0)
    prepare(sm, log, 5, 0, now + 1, [(b"e", b"1")])
    r = one(sm, log, encode_decide(5, now + 10, now + 5,
                                   since=now + 10 - DECISION_HORIZON_NS + 10,
                                   participants=[PRIMARY]))
    assert r.committed


def test_a_decision_below_the_prepare_timestamp_is_refused(sm):
    log = Log()
    prepare(sm, log, 7, 0, 200, [(b"a", b"1")])
    r = one(sm, log, encode_decide(7, 300, 150))
    assert r.outcome is Outcome.INVALID and sm.record(7) is None


def test_locks_block_writers_and_write_nothing(sm):
    log = Log()
    one(sm, log, encode_commit(1, 0, 100, [(b"r", b"0")]))
    prepare(sm, log, 2, 100, 200, [(b"w", b"1")], locks=[b"r"])
    r = one(sm, log, encode_commit(3, 150, 300, [(b"r", b"9")]))
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"r")
    one(sm, log, encode_resolve(2, 400, 450))
    assert sm.store.get_version(b"r", MAX_TS) == (100, b"0")
    # The lock left no commit record: a writer whose snapshot is after the read commits.
    assert one(sm, log, encode_commit(4, 120, 500, [(b"r", b"1")])).committed


def test_readers_do_not_wait_for_a_lock(sm):
    # A serializable transaction's read key keeps its value until the transaction is
    # resolved, whatever its fate: a read of it has nothing to wait for (and, while the
    # transaction's primary group is out of reach, would otherwise time out).
    log = Log()
    one(sm, log, encode_commit(1, 0, 100, [(b"r", b"0")]))
    prepare(sm, log, 2, 100, 200, [(b"w", b"1")], locks=[b"r"])
    assert sm.intents([b"r"], MAX_TS) == []
    assert [i.key for i in sm.intents([b"r", b"w"], MAX_TS)] == [b"w"]
    assert [i.key for i in sm.intents_in(b"", None, MAX_TS)] == [b"w"]
    # The lock still keeps writers out, and is still there to be resolved.
    r = one(sm, log, encode_commit(3, 250, 300, [(b"r", b"9")]))
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"r")
    assert [p.txn_id for p in sm.prepared()] == [2]


def test_a_lock_on_a_changed_key_is_refused(sm):
    # A lock is a serializable read: the key changed since the snapshot is reported as a
    # read-write conflict (the transaction did not write it), as a one-group commit's is.
    log = Log()
    one(sm, log, encode_commit(1, 0, 100, [(b"r", b"0")]))
    one(sm, log, encode_commit(2, 0, 150, [(b"r", b"1")]))
    r = prepare(sm, log, 3, 120, 200, [(b"w", b"1")], locks=[b"r"])
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "read_write", b"r")
    assert sm.intents([b"w"], MAX_TS) == []


def test_read_locks_are_shared_by_readers_and_keep_writers_out(sm):
    # Reads never conflict with reads: serializable transactions that read the same key
    # (prepared, committing in one phase or scanning a range over it) all go through; a
    # writer of it conflicts until every one of them is resolved.
    log = Log()
    one(sm, log, encode_commit(1, 0, 100, [(b"r", b"0")]))
    assert prepare(sm, log, 2, 100, 200, [(b"w2", b"1")], locks=[b"r"]).outcome \
        is Outcome.PREPARED
    assert prepare(sm, log, 3, 100, 210, [], locks=[b"r"]).outcome is Outcome.PREPARED
    assert one(sm, log, encode_commit(4, 100, 220, [(b"w4", b"1")], [b"r"],
                                      serializable=True)).committed
    assert one(sm, log, encode_commit(5, 100, 230, [(b"w5", b"1")], serializable=True,
                                      spans=[[b"q", b"s", None]])).committed
    assert [(i.key, i.txn_id, i.prepare_ts) for i in sm.locks_in(b"", b"\xff")] == \
        [(b"r", 2, 200), (b"r", 3, 210)]
    r = one(sm, log, encode_commit(6, 230, 240, [(b"r", b"9")]))
    assert (r.outcome, r.reason, r.key, r.conflict_ts) == (Outcome.CONFLICT, "intent", b"r", 210)
    one(sm, log, encode_resolve(2, 250, 260))
    assert [i.txn_id for i in sm.locks_in(b"", b"\xff")] == [3]
    r = one(sm, log, encode_commit(7, 260, 270, [(b"r", b"9")]))
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"r")
    one(sm, log, encode_resolve(3, 280, 0))
    assert sm.locks_in(b"", b"\xff") == [] and not sm.has_intents(b"", b"\xff")
    assert one(sm, log, encode_commit(8, 280, 290, [(b"r", b"9")])).committed


def test_shared_read_locks_survive_a_restart(store_path):
    log = Log()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    prepare(sm, log, 2, 0, 200, [(b"w", b"1")], locks=[b"r"])
    prepare(sm, log, 3, 0, 210, [], locks=[b"r"])
    sm.close()
    store.close()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    try:
        assert prepare(sm, log, 4, 0, 220, [], locks=[b"r"]).outcome is Outcome.PREPARED
        one(sm, log, encode_resolve(2, 230, 240))
        one(sm, log, encode_resolve(4, 250, 0))
        r = one(sm, log, encode_commit(5, 250, 260, [(b"r", b"x")]))
        assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"r")
        one(sm, log, encode_resolve(3, 270, 280))
        assert one(sm, log, encode_commit(6, 280, 290, [(b"r", b"x")])).committed
        assert sm.store.get(b"w", MAX_TS) == b"1"
    finally:
        sm.close()
        store.close()


def test_a_key_takes_a_bounded_number_of_read_locks(tmp_path, monkeypatch):
    # Refused before the adjudicator records anything, and the same however the log is cut
    # into apply calls (a prepare refused in one replica's call is refused in every one's).
    monkeypatch.setattr(group, "MAX_KEY_LOCKS", 2)
    log = Log()
    entries = [log(encode_prepare(txn, 0, ts, writes, (), locks, primary=PRIMARY,
                                  deadline=10**9))
               for txn, ts, writes, locks in [
                   (2, 200, [], [b"r"]),
                   (3, 210, [], [b"r"]),
                   (4, 220, [(b"w", b"1")], [b"r", b"q"]),
                   (5, 230, [(b"w", b"1"), (b"x", b"1")], []),
               ]] + [log(encode_resolve(2, 240, 0)),
                     log(encode_prepare(6, 0, 250, [], (), [b"r"], primary=PRIMARY,
                                        deadline=10**9))]
    for n, split in enumerate((False, True)):
        store = MVCCStore(tmp_path / f"g{n}", map_size=1 << 20)
        sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
        try:
            results = ([r for e in entries for r in sm.apply([e])] if split
                       else sm.apply(entries))
            assert [(r.outcome, r.reason, r.key) for r in results] == [
                (Outcome.PREPARED, "", None), (Outcome.PREPARED, "", None),
                (Outcome.CONFLICT, "intent", b"r"), (Outcome.PREPARED, "", None),
                (Outcome.RESOLVED, "", None), (Outcome.PREPARED, "", None)]
            assert [p.txn_id for p in sm.prepared()] == [3, 5, 6]
            assert sm.adjudicator.locks(b"q") == 0 and sm.adjudicator.locks(b"r") == 2
        finally:
            sm.close()
            store.close()


def test_one_apply_call_sees_its_own_prepares_and_resolutions(sm):
    log = Log()
    results = sm.apply([
        log(encode_prepare(5, 0, 100, [(b"k", b"v")], primary=PRIMARY, deadline=10**9)),
        log(encode_prepare(5, 0, 110, [(b"k", b"v")], primary=PRIMARY, deadline=10**9)),
        log(encode_commit(6, 0, 120, [(b"k", b"other")])),
        log(encode_decide(5, 130, 140)),
        log(encode_commit(7, 0, 150, [(b"k", b"later")])),
    ])
    assert [r.outcome for r in results] == [Outcome.PREPARED, Outcome.PREPARED,
                                            Outcome.CONFLICT, Outcome.COMMITTED,
                                            Outcome.COMMITTED]
    assert results[1].ts == results[0].ts == 100
    assert sm.store.get(b"k", 140) == b"v" and sm.store.get(b"k", MAX_TS) == b"later"


def test_intents_of_a_key_too_long_to_store_are_none(sm):
    # A read looks for intents before it reads: a key no write could have made has none,
    # and the read gets the store's error for it, whether or not something is prepared.
    log = Log()
    prepare(sm, log, 2, 0, 200, [(b"a", b"1")])
    long_key = b"k" * 600
    assert [i.key for i in sm.intents([b"a", long_key, b""], MAX_TS)] == [b"a"]
    with pytest.raises(errors.RecordTooLargeError, match="over the 250-byte limit"):
        sm.store.get(long_key, MAX_TS)


def test_intents_survive_a_restart(store_path):
    log = Log()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    prepare(sm, log, 2, 0, 200, [(b"a", b"1")])
    sm.close()
    store.close()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    try:
        # The rebuilt adjudicator still knows the intent.
        r = one(sm, log, encode_commit(3, 250, 300, [(b"a", b"x")]))
        assert (r.outcome, r.reason) == (Outcome.CONFLICT, "intent")
        one(sm, log, encode_resolve(2, 400, 400))
        assert sm.store.get(b"a", MAX_TS) == b"1"
    finally:
        sm.close()
        store.close()


def test_snapshots_carry_intents_and_records(tmp_path):
    log = Log()
    a = MVCCStore(tmp_path / "a", map_size=1 << 20)
    b = MVCCStore(tmp_path / "b", map_size=1 << 20)
    sa = GroupStateMachine(a, max_txn_lifetime_ns=LIFETIME)
    sb = GroupStateMachine(b, max_txn_lifetime_ns=LIFETIME)
    try:
        prepare(sa, log, 2, 0, 200, [(b"a", b"1")])
        prepare(sa, log, 3, 0, 210, [(b"c", b"1")])
        one(sa, log, encode_decide(3, 220, 230))
        sb.restore(sa.snapshot())
        assert [i.txn_id for i in sb.intents([b"a"], MAX_TS)] == [2]
        assert sb.record(3) == (True, 230) and sb.store.get(b"c", 230) == b"1"
        r = one(sb, log, encode_commit(4, 0, 300, [(b"a", b"x")]))
        assert r.reason == "intent"
    finally:
        for m in (sa, sb):
            m.close()
        a.close()
        b.close()


# ---------------------------------------------------------------------- regional keyspaces


@pytest.fixture
def regional(tmp_path):
    machines, stores = [], []

    def make(origin, map_size=1 << 20):
        store = MVCCStore(tmp_path / origin, map_size=map_size)
        machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin=origin)
        stores.append(store)
        machines.append(machine)
        return machine

    yield make
    for m in machines:
        m.close()
    for s in stores:
        s.close()


def value(sm, key, resolver="lww"):
    raw = sm.store.get(key, MAX_TS)
    return resolver_for(resolver).value_of(None if raw is None else decode_cell(raw))


def ship(src, dst, log, origin_group, after=0, proposed_ts=10**6):
    """Delivers src's outbox after ``after`` to dst in one REMOTE entry."""
    batch = src.outbox_after(after)
    writes = [w for _, ws in batch for w in ws]
    return one(dst, log, encode_remote(origin_group, proposed_ts, after, batch[-1][0], writes))


def test_regional_writes_merge_locally_and_ship_once(regional):
    east, west = regional("us-east"), regional("eu-west")
    le, lw = Log(), Log()
    assert one(east, le, encode_commit(1, 0, 100, [], merges=[(b"k", "lww", b"e1")])).committed
    assert one(east, le, encode_commit(2, 0, 110, [], merges=[
        (b"n", "counter", encode_int(5))])).committed
    assert one(west, lw, encode_commit(3, 0, 105, [], merges=[(b"k", "lww", b"w1")])).committed
    assert [ts for ts, _ in east.outbox_after(0)] == [100, 110]
    # East's writes reach west: k is concurrent (west's write did not see east's), and the
    # later one (east at 100 vs west at 105) loses there; the counter arrives.
    r = ship(east, west, lw, 101)
    assert r.committed and west.watermark(101) == 110
    assert value(west, b"k") == b"w1" and value(west, b"n", "counter") == b"5"
    [(ckey, key, rec)] = west.conflicts(b"", b"\xff")
    assert key == b"k"
    assert rec[:4] == [105, "eu-west", 100, "us-east"] and rec[4] == b"e1"
    # The same batch again changes nothing (exactly once).
    r = ship(east, west, lw, 101)
    assert r.reason == "duplicate" and value(west, b"n", "counter") == b"5"
    # A batch that overtook an earlier one in flight is refused whole (a gap).
    one(east, le, encode_commit(4, 0, 120, [], merges=[(b"n", "counter", encode_int(1))]))
    one(east, le, encode_commit(5, 0, 130, [], merges=[(b"n", "counter", encode_int(1))]))
    r = ship(east, west, lw, 101, after=120)
    assert (r.outcome, r.reason, r.conflict_ts) == (Outcome.CONFLICT, "gap", 110)
    assert value(west, b"n", "counter") == b"5"
    assert ship(east, west, lw, 101, after=110).committed
    assert value(west, b"n", "counter") == b"7" and west.watermark(101) == 130
    # West's write reaches east: both regions agree.
    ship(west, east, le, 102)
    assert value(east, b"k") == value(west, b"k") == b"w1"
    assert [rec[2] for _, _, rec in east.conflicts(b"", b"\xff")] == [100]
    # West's own writes are not in its outbox for re-shipping.
    assert [ts for ts, _ in west.outbox_after(0)] == [105]
    # Draining the conflict log.
    one(west, lw, encode_drain(10**6 + 10, [ckey, b"t-not-a-conflict"]))
    assert west.conflicts(b"", b"\xff") == []


def test_bad_merge_payloads_are_refused_before_anything_is_written(regional):
    east = regional("us-east")
    log = Log()
    r = one(east, log, encode_commit(1, 0, 100, [(b"a", b"1")], merges=[
        (b"n", "counter", b"not a number")]))
    assert r.outcome is Outcome.INVALID and "counter" in r.reason
    assert east.store.get(b"a", MAX_TS) is None and east.outbox_after(0) == []
    meta = regional("")
    r = one(meta, Log(), encode_commit(1, 0, 100, [], merges=[(b"k", "lww", b"v")]))
    assert r.outcome is Outcome.INVALID


def test_a_shipped_write_this_region_cannot_merge_is_logged_and_the_stream_goes_on(regional):
    # Two regions each took a write of one key under a different resolver (a client that
    # broke the keyspace's contract): each region's write cannot merge into the other's cell.
    # Refusing the whole batch would stall the stream from that origin for good; the write is
    # left out, logged as refused, and the rest of the batch applies.
    east, west = regional("us-east"), regional("eu-west")
    le, lw = Log(), Log()
    assert one(east, le, encode_commit(1, 0, 100, [], merges=[
        (b"k", "counter", encode_int(5))])).committed
    assert one(east, le, encode_commit(2, 0, 110, [], merges=[(b"other", "lww", b"e")])).committed
    assert one(west, lw, encode_commit(3, 0, 105, [], merges=[(b"k", "max", encode_int(9))]))
    r = ship(east, west, lw, 101)
    assert r.committed and west.watermark(101) == 110
    assert value(west, b"other") == b"e" and value(west, b"k", "max") == encode_int(9)
    [(_, key, rec)] = west.conflicts(b"", b"\xff")
    assert key == b"k" and rec[:4] == [105, "eu-west", 100, "us-east"] and rec[5] == "refused"
    # A payload no cell could take still refuses the batch (no honest origin sends one).
    bad = encode_remote(101, 10**6 + 5, 110, 120, [[b"n", "counter", b"junk", 120, "us-east",
                                                    0, ""]])
    assert one(west, lw, bad).outcome is Outcome.INVALID and west.watermark(101) == 110


def test_counter_and_set_cells_stay_bounded_however_many_writes(regional):
    # Each increment used to stay in the key's cell for good: every later write decoded and
    # re-encoded all of them, and at a few hundred thousand the cell no longer fit in a value
    # (the apply raised, on every replica and every restart). Cells are compacted behind what
    # each origin's stream has merged, and still read the same in both regions.
    from engine.merge import AddWinsSet
    east, west = regional("us-east"), regional("eu-west")
    le, lw = Log(), Log()
    ts, after, txn = 100, 0, 0
    for round_ in range(20):
        for _ in range(10):
            ts, txn = ts + 10, txn + 1
            add = msgpack.packb(["add", b"e%d" % (txn % 5)])
            assert one(east, le, encode_commit(txn, 0, ts, [], merges=[
                (b"n", "counter", encode_int(1)), (b"s", "add_wins_set", add)])).committed
        assert ship(east, west, lw, 101, after=after).committed
        after = ts
        txn += 1
        tags = AddWinsSet.observed_tags(decode_cell(west.store.get(b"s", MAX_TS)), b"e1")
        remove = msgpack.packb(["remove", b"e1", [list(t) for t in tags]])
        assert one(west, lw, encode_commit(txn, 0, ts + 5, [], merges=[
            (b"n", "counter", encode_int(-1)), (b"s", "add_wins_set", remove)])).committed
    ship(west, east, le, 102)
    for sm in (east, west):
        assert value(sm, b"n", "counter") == b"180"
        assert msgpack.unpackb(value(sm, b"s", "add_wins_set")) == [b"e0", b"e2", b"e3", b"e4"]
        counter = decode_cell(sm.store.get(b"n", MAX_TS))
        assert sum(len(contribs) for _, _, _, contribs in counter.state) <= 2
        assert len(decode_cell(sm.store.get(b"s", MAX_TS)).state[1]) <= 2  # tombstones


def test_a_regional_commit_too_large_to_ship_is_refused_before_anything_is_written(regional):
    # Within the byte limit, but each shipped write carries its resolver, timestamp, origin
    # and predecessor: the outbox record would be over a value's limit. Refused as invalid;
    # it used to raise while applied, on every replica and every restart.
    east = regional("us-east")
    log = Log()
    part = MAX_VALUE_SIZE // 4 - 8
    merges = [(b"k%d" % i, "lww", b"v" * part) for i in range(4)]
    r = one(east, log, encode_commit(1, 0, 100, [(b"a", b"1")], merges=merges))
    assert r.outcome is Outcome.INVALID and "to ship" in r.reason
    assert east.store.get(b"a", MAX_TS) is None and east.outbox_after(0) == []
    assert one(east, log, encode_commit(2, 0, 110, [], merges=merges[:3])).committed


def test_a_group_reopens_with_a_remote_write_above_a_prepared_lock(regional, tmp_path):
    # A serializable two-phase transaction locks the regional key it read; another region's
    # write of that key, shipped in while it is prepared, lands above the lock (replication
    # does not wait for locks). Reopening the group -- a restart, or a follower installing its
    # snapshot -- must rebuild that state, not refuse it as corrupt.
    east = regional("us-east")
    log = Log()
    assert one(east, log, encode_commit(1, 0, 100, [], merges=[(b"r", "lww", b"e1")])).committed
    r = one(east, log, encode_prepare(7, 150, 200, [(b"w", b"1")], (), [b"r"], primary=99,
                                      deadline=10**9, serializable=True))
    assert r.outcome is Outcome.PREPARED
    shipped = encode_remote(101, 300, 0, 300, [[b"r", "lww", b"w1", 290, "eu-west", 0, ""]])
    assert one(east, log, shipped).committed
    follower = regional("us-east-follower")
    follower.restore(east.snapshot())
    assert [t.txn_id for t in follower.prepared()] == [7]
    store = east.store
    east.close()
    again = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east")
    try:
        assert [t.txn_id for t in again.prepared()] == [7]
        assert one(again, log, encode_resolve(7, 400, 400)).outcome is Outcome.RESOLVED
        assert one(again, log, encode_commit(8, 450, 500, [(b"w", b"2")])).committed
    finally:
        again.close()


def test_a_set_remove_of_an_element_with_many_tags_does_not_stall_its_stream(regional):
    # An add-wins-set element added five times (five tags) and then removed: the origin
    # commits the remove (its cell drops the tombstones behind its own floor), but the
    # destination's REMOTE pre-check merges the batch into *empty* cells without compaction,
    # where the remove leaves one tombstone per tag, each carrying the element's bytes: five
    # times the element is over a value's limit, the whole batch is refused as INVALID, and
    # the shipper resends it forever -- every later write of that origin is stuck behind it.
    east = regional("us-east", map_size=256 << 20)
    west = regional("eu-west", map_size=256 << 20)
    le, lw = Log(), Log()
    elem = b"x" * 900_000
    ts = 100
    for txn in range(1, 6):
        ts += 10
        assert one(east, le, encode_commit(txn, 0, ts, [], merges=[
            (b"s", "add_wins_set", encode_set_add(elem))])).committed
        assert ship(east, west, lw, 101, after=ts - 10 if txn > 1 else 0).committed
    cell = decode_cell(east.store.get(b"s", MAX_TS))
    tags = AddWinsSet.observed_tags(cell, elem)
    assert len(tags) == 1  # each add superseded the origin's earlier tags
    tags = [(t, "us-east") for t in range(110, ts + 1, 10)]  # a remove listing all five
    ts += 10
    r = one(east, le, encode_commit(6, 0, ts, [], merges=[
        (b"s", "add_wins_set", encode_set_remove(elem, tags))]))
    assert r.committed  # the origin took it: its cell is small
    assert msgpack.unpackb(AddWinsSet().value_of(decode_cell(east.store.get(b"s", MAX_TS)))) \
        == []
    r = ship(east, west, lw, 101, after=ts - 10)
    assert r.outcome is Outcome.COMMITTED, (r.outcome, r.reason[:200])
    assert west.watermark(101) == ts
    assert msgpack.unpackb(AddWinsSet().value_of(decode_cell(west.store.get(b"s", MAX_TS)))) \
        == []


def test_a_set_remove_whose_tombstones_outgrow_a_value_still_converges(regional):
    # The same amplification through a third region, where the real cell (not the pre-check)
    # takes the tombstones: west adds an element five times, east sees the five adds and
    # removes them; east's stream reaches south before west's does. South's cell gets one
    # tombstone per removed tag, each holding the element: over a value's limit, so the
    # remove is "refused" (left out for good, the watermark moves past it); west's adds then
    # arrive and the element is live in south while east and west have removed it -- the
    # regions never converge.
    big = 256 << 20
    east, west, south = (regional(r, map_size=big) for r in ("us-east", "eu-west", "ap-south"))
    le, lw, ls = Log(), Log(), Log()
    elem = b"x" * 900_000
    for i in range(5):
        assert one(west, lw, encode_commit(i + 1, 0, 110 + 10 * i, [], merges=[
            (b"s", "add_wins_set", encode_set_add(elem))])).committed
    assert ship(west, east, le, 102, after=0).committed
    tags = AddWinsSet.observed_tags(decode_cell(east.store.get(b"s", MAX_TS)), elem)
    assert len(tags) == 1  # each add superseded the origin's earlier tags
    tags = [(110 + 10 * i, "eu-west") for i in range(5)]  # a remove listing all five
    assert one(east, le, encode_commit(9, 0, 10**6 + 100, [], merges=[
        (b"s", "add_wins_set", encode_set_remove(elem, tags))])).committed
    # East's remove reaches south first, then west's adds; and the remove reaches west.
    ship(east, south, ls, 101, after=0)
    ship(west, south, ls, 102, after=0)
    assert ship(east, west, lw, 101, after=0).committed

    def members(sm):
        return msgpack.unpackb(AddWinsSet().value_of(decode_cell(sm.store.get(b"s", MAX_TS))))

    assert members(east) == members(west) == []
    assert members(south) == [], "south never removes the element the others removed"


def test_a_local_write_made_after_reading_a_remote_one_is_not_discarded_by_it(regional):
    # West's leader proposes the REMOTE entry with its own clock, which may be behind the
    # shipped writes' timestamps (the node accepts an up_to up to max_clock_offset ahead of
    # its clock; the origin's commit timestamps are max(proposed, closed + 1), which after a
    # leader change there run ahead of the new leader's clock, and Raft messages carry no
    # HLC). The remote value then becomes visible at a snapshot *below* its own timestamp,
    # and a local transaction that read it and overwrote it commits at a timestamp below the
    # value it overwrote: last-writer-wins keeps the value it read and silently discards
    # the acknowledged, causally later write (and logs it as a "concurrent" conflict).
    east, west = regional("us-east"), regional("eu-west")
    le, lw = Log(), Log()
    assert one(east, le, encode_commit(1, 0, 500, [], merges=[(b"k", "lww", b"east")])).committed
    r = ship(east, west, lw, 101, after=0, proposed_ts=300)
    assert r.committed
    read_ts = west.closed_ts  # a snapshot in which west's reader sees east's value
    cell = decode_cell(west.store.get(b"k", read_ts))
    assert cell.state[0] == b"east"
    r = one(west, lw, encode_commit(2, read_ts, read_ts + 50, [], merges=[
        (b"k", "lww", b"west, after reading east")]))
    assert r.committed
    assert decode_cell(west.store.get(b"k", MAX_TS)).state[0] == b"west, after reading east"
    assert west.conflicts(b"", b"\xff") == []


def test_close_entries_trim_the_outbox_after_the_retention(regional):
    east = regional("us-east")
    log = Log()
    one(east, log, encode_commit(1, 0, 100, [], merges=[(b"k", "lww", b"v")]))
    one(east, log, encode_close(100 + OUTBOX_RETENTION_NS))
    assert len(east.outbox_after(0)) == 1
    assert east.outbox_trimmed == 0
    one(east, log, encode_close(102 + OUTBOX_RETENTION_NS))
    assert east.outbox_after(0) == [] and east.outbox_trimmed == 100
    # A busy group trims too: each regional commit drops a couple of expired records.
    stamps = [one(east, log, encode_commit(10 + i, 0, 1, [], merges=[(b"k", "lww", b"v")])).ts
              for i in range(4)]
    t = stamps[-1] + OUTBOX_RETENTION_NS + 1
    one(east, log, encode_commit(20, 0, t, [], merges=[(b"k", "lww", b"w")]))
    assert [ts for ts, _ in east.outbox_after(0)] == [*stamps[2:], t]
    assert east.outbox_trimmed == stamps[1]


def test_the_outbox_keeps_a_write_until_every_destination_has_it(tmp_path):
    # The outbox used to be trimmed ten minutes (of closed time) after each commit whether or
    # not the other regions had the writes: a region cut off for longer never converged.
    store = MVCCStore(tmp_path / "east", map_size=1 << 20)
    east = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east",
                             destinations=(201, 202))
    log = Log()
    try:
        for i, ts in enumerate((100, 110, 120)):
            assert one(east, log, encode_commit(i + 1, 0, ts, [], merges=[
                (b"k", "lww", b"v%d" % i)])).committed
        hour = 3600 * 10**9
        one(east, log, encode_close(120 + hour))  # an hour later, nobody has them yet
        assert [ts for ts, _ in east.outbox_after(0)] == [100, 110, 120]
        one(east, log, encode_shipped(121 + hour, 201, 110))
        assert len(east.outbox_after(0)) == 3 and east.shipped(201) == 110
        one(east, log, encode_shipped(122 + hour, 202, 120))
        assert [ts for ts, _ in east.outbox_after(0)] == [120]  # 201 lacks it still
        assert east.outbox_trimmed == 110
        one(east, log, encode_shipped(123 + hour, 201, 100))  # an older answer: no step back
        assert east.shipped(201) == 110 and len(east.outbox_after(0)) == 1
        # Kept at most OUTBOX_RETENTION_NS: past that, 201 needs a full copy.
        one(east, log, encode_close(121 + OUTBOX_RETENTION_NS))
        assert east.outbox_after(0) == [] and east.outbox_trimmed == 120
        bad = msgpack.packb([10, 200 + OUTBOX_RETENTION_NS, 0, 5])
        assert one(east, log, bad).outcome is Outcome.INVALID
    finally:
        east.close()
        store.close()


def test_a_group_with_no_destination_keeps_no_outbox(tmp_path):
    store = MVCCStore(tmp_path / "alone", map_size=1 << 20)
    alone = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east",
                              destinations=())
    log = Log()
    try:
        assert one(alone, log, encode_commit(1, 0, 100, [], merges=[(b"k", "lww", b"v")]))
        one(alone, log, encode_close(101))
        assert alone.outbox_after(0) == []
    finally:
        alone.close()
        store.close()


def test_conditional_fences_and_move_copies_are_checked_where_applied(store_path):
    # A fence's expectation was checked by the leader before proposing, so a change already
    # in the log could be overwritten; and a move's copy passed every fence, so a copy batch
    # committed late (an ambiguous one, retried) could overwrite the keyspace once live.
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    log = Log()
    ks = (7).to_bytes(4, "big")
    try:
        copy = encode_commit(1, 0, 100, [(ks + b"a", b"1")], move_copy=True)
        r = one(sm, log, copy)
        assert (r.outcome, r.reason) == (Outcome.CONFLICT, "moved")  # not closed for a copy
        assert one(sm, log, encode_fence(110, 7, 1, MAX_TS)).outcome is Outcome.RESOLVED
        assert one(sm, log, encode_commit(2, 0, 120, [(ks + b"a", b"1")],
                                          move_copy=True)).committed
        r = one(sm, log, encode_fence(130, 7, 0, 0, expect=(0, 0)))
        assert (r.outcome, r.reason) == (Outcome.CONFLICT, "fence_changed")
        assert sm.fence(ks) == (1, MAX_TS)
        r = one(sm, log, encode_fence(140, 7, 1, 125, expect=(1, MAX_TS)))
        assert r.outcome is Outcome.RESOLVED and sm.fence(ks) == (1, 125)
        r = one(sm, log, encode_commit(3, 0, 150, [(ks + b"b", b"2")], move_copy=True))
        assert (r.outcome, r.reason) == (Outcome.CONFLICT, "moved")  # the copy is over
        assert sm.store.get(ks + b"b", MAX_TS) is None
    finally:
        sm.close()
        store.close()


def test_a_fenced_keyspace_refuses_writes_and_the_fence_survives_a_restart(store_path):
    log = Log()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    ks7, ks8 = (7).to_bytes(4, "big"), (8).to_bytes(4, "big")
    try:
        one(sm, log, encode_fence(100, 7, 1))
        r = one(sm, log, encode_commit(1, 0, 110, [(ks8 + b"a", b"1"), (ks7 + b"a", b"1")]))
        assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "moved", ks7 + b"a")
        r = prepare(sm, log, 2, 0, 120, [(ks8 + b"b", b"1")], locks=[ks7 + b"c"])
        assert (r.outcome, r.reason) == (Outcome.CONFLICT, "moved")
        # A move's copy passes only the fence of a group closed to all but the copy,
        # (1, MAX_TS) (see test_conditional_fences_and_move_copies_are_checked_where_applied).
        copy = encode_commit(5, 0, 125, [(ks7 + b"z", b"1")], move_copy=True)
        assert one(sm, log, copy).reason == "moved"
        assert one(sm, log, encode_commit(3, 0, 130, [(ks8 + b"a", b"1")])).committed
        one(sm, log, encode_fence(140, 7, 2, 0))
        assert sm.fence(ks7) == (2, 140)  # stamped with the entry's timestamp
    finally:
        sm.close()
        store.close()
    store = MVCCStore(store_path, map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    try:
        assert sm.fence(ks7) == (2, 140) and sm.fence(ks8) == (0, 0)
        one(sm, log, encode_fence(150, 7, 0, 145))
        assert sm.fence(ks7) == (0, 145)
        assert one(sm, log, encode_commit(4, 0, 160, [(ks7 + b"a", b"2")])).committed
        one(sm, log, encode_fence(170, 7, 0, 0))
        assert sm.fence(ks7) == (0, 0)
    finally:
        sm.close()
        store.close()


# ------------------------------------------------------- a late copy of a resolved prepare
# A prepare applied again after its transaction was resolved here (a copy of the request that
# arrived late) must not leave intents that no decision can resolve.


@pytest.mark.parametrize("read_ts, writes, locks", [
    (0, [(b"k", b"v")], []),  # a blind write: its snapshot is whatever precedes the prepare
    (90, [], [b"r"]),  # a serializable reader's lock: a lock leaves no commit to conflict with
], ids=["blind-write", "read-lock"])
def test_a_late_copy_of_a_committed_prepare_does_not_block_its_keys_for_good(
        sm, read_ts, writes, locks):
    log = Log()
    one(sm, log, encode_commit(1, 0, 80, [(b"r", b"0")]))
    prepare = encode_prepare(5, read_ts, 100, writes, (), locks, primary=PRIMARY,
                             deadline=1000)
    assert one(sm, log, prepare).outcome is Outcome.PREPARED
    # The coordinator decided a commit at 120 (the highest prepare timestamp) and resolves.
    assert one(sm, log, encode_resolve(5, 150, 120)).outcome is Outcome.RESOLVED
    # A copy of the prepare arrives now: it is validated afresh and prepared above 120.
    assert one(sm, log, prepare).outcome is Outcome.PREPARED
    # Past its deadline a recovery reads the record (committed at 120) and resolves again:
    # whatever it is told, nothing of the copy may be left.
    one(sm, log, encode_resolve(5, 300, 120))
    keys = [b"k", b"r"]
    assert sm.prepared() == [] and sm.intents(keys, MAX_TS) == []
    # The transaction's writes are those of its commit at 120, and nothing above it.
    if writes:
        assert sm.store.get_version(b"k", MAX_TS) == (120, b"v")
    assert sm.store.get_version(b"r", MAX_TS) == (80, b"0")
    # The keys are free again: a later writer commits.
    r = one(sm, log, encode_commit(6, 0, 400, [(b"k", b"w"), (b"r", b"x")]))
    assert r.committed, r


def test_a_resolution_below_the_prepare_timestamp_writes_nothing(sm):
    # Not a late copy: a commit timestamp no coordinator could have chosen. Its versions
    # would appear under timestamps that reads were already served at: refused.
    log = Log()
    one(sm, log, encode_commit(1, 0, 80, [(b"k", b"0")]))
    assert one(sm, log, encode_prepare(7, 0, 200, [(b"k", b"1")], primary=PRIMARY,
                                       deadline=1000)).outcome is Outcome.PREPARED
    r = one(sm, log, encode_resolve(7, 300, 150))
    assert r.outcome is Outcome.INVALID and "below the transaction's prepare" in r.reason
    assert sm.store.get_version(b"k", MAX_TS) == (80, b"0")


# ------------------------------------------------------------ three groups, a faulty network


class _Group:
    """One group's state machine, its log and its leader's clock."""

    def __init__(self, path, gid):
        self.gid = gid
        self.store = MVCCStore(path / str(gid), map_size=1 << 22)
        self.sm = GroupStateMachine(self.store, max_txn_lifetime_ns=LIFETIME)
        self.log = Log()
        self.clock = 1000

    def now(self):
        self.clock += 7
        return self.clock

    def apply(self, data):
        [result] = self.sm.apply([self.log(data)])
        return result

    def close(self):
        self.sm.close()
        self.store.close()


def _versions(store, key):
    out, ts = [], MAX_TS
    while (v := store.get_version(key, ts)) is not None:
        out.append(v)
        ts = v[0] - 1
    return out


def _run_two_phase_commits(path, seed, count=12, deadline=40):
    """Coordinators commit ``count`` transactions over three groups (the first participant
    the primary), through a network that reorders every message and delivers a copy of some
    only after all else (a late duplicate); recoverers finish transactions whose intents are
    past their deadline, racing slow coordinators. After the network heals and recovery
    has run to the end, checks that each transaction has one fate everywhere. Returns the
    problems found."""
    rng = random.Random(seed)
    groups = {gid: _Group(path, gid) for gid in (1, 2, 3)}
    pending, late = [], []
    txns = {}

    def send(gid, data, on_applied=None):
        pending.append((gid, data, on_applied))
        if rng.random() < 0.15:
            late.append((gid, data, None))

    def deliver(message):
        gid, data, on_applied = message
        result = groups[gid].apply(data)
        if on_applied is not None:
            on_applied(result)

    def prepare(t):
        x = txns[t]
        for gid in x["groups"]:
            g = groups[gid]
            read_ts = 0 if x["blind"] else g.sm.closed_ts

            def prepared(r, gid=gid):
                x["prepared"][gid] = r.ts if r.outcome is Outcome.PREPARED else None

            send(gid, encode_prepare(t, read_ts, g.now(), [(x["key"], b"%d" % t)],
                                     primary=x["primary"], deadline=g.clock + deadline),
                 prepared)

    def decide(t):
        x = txns[t]
        x["state"] = "deciding"
        primary = groups[x["primary"]]
        stamps = x["prepared"]
        if None in stamps.values():
            data = encode_decide(t, primary.now(), 0)
        else:
            data = encode_decide(t, primary.now(), max(stamps.values()), min(stamps.values()),
                                 x["groups"])

        def decided(r):
            x["state"] = "done"
            fate = r.ts if r.outcome is Outcome.COMMITTED else 0
            x["acknowledged"] = fate
            for gid, ts in stamps.items():
                if gid != x["primary"] and ts is not None:
                    send(gid, encode_resolve(t, groups[gid].now(), fate))

        send(x["primary"], data, decided)

    def recover(gid, intent, resolve):
        primary = groups[intent.primary]
        r = primary.apply(encode_decide(intent.txn_id, primary.now(), 0))
        fate = r.ts if r.outcome is Outcome.COMMITTED else 0
        if gid != intent.primary:
            resolve(gid, encode_resolve(intent.txn_id, groups[gid].now(), fate))

    for t in range(1, count + 1):
        members = sorted(rng.sample(sorted(groups), rng.randint(2, 3)))
        txns[t] = {"groups": members, "primary": members[0], "key": b"k%d" % rng.randint(0, 9),
                   "blind": rng.random() < 0.5, "prepared": {}, "state": "new",
                   "acknowledged": 0}
    try:
        for _ in range(2000):
            step = rng.random()
            fresh = [t for t, x in txns.items() if x["state"] == "new"]
            if step < 0.15 and fresh:
                txns[fresh[0]]["state"] = "preparing"
                prepare(fresh[0])
            elif step < 0.8 and pending:
                deliver(pending.pop(rng.randrange(len(pending))))
            elif step < 0.9:
                for t, x in txns.items():
                    if (x["state"] == "preparing" and len(x["prepared"]) == len(x["groups"])
                            and rng.random() < 0.5):
                        decide(t)
            else:
                gid = rng.choice(sorted(groups))
                due = [i for i in groups[gid].sm.prepared() if i.deadline < groups[gid].clock]
                if due:
                    recover(gid, rng.choice(due), send)
        # The network heals: everything in flight arrives, the late copies last; coordinators
        # that were still waiting decide; then recovery finishes whatever is left.
        pending += late
        while pending:
            deliver(pending.pop(0))
            if not pending:
                for t, x in txns.items():
                    if x["state"] == "preparing" and len(x["prepared"]) == len(x["groups"]):
                        decide(t)
        for _ in range(3):
            for gid, g in groups.items():
                for intent in g.sm.prepared():
                    recover(gid, intent, lambda gid, data: groups[gid].apply(data))
        problems = []
        for gid, g in groups.items():
            left = g.sm.prepared()
            if left:
                problems.append(f"group {gid} still holds intents of {[i.txn_id for i in left]}")
        for t, x in txns.items():
            record = groups[x["primary"]].sm.record(t)
            committed_at = record[1] if record is not None and record[0] else 0
            if x["acknowledged"] and x["acknowledged"] != committed_at:
                problems.append(f"txn {t}: acknowledged at {x['acknowledged']}, recorded "
                                f"{record}")
            for gid in x["groups"]:
                at = [ts for ts, value in _versions(groups[gid].store, x["key"])
                      if value == b"%d" % t]
                if at != ([committed_at] if committed_at else []):
                    problems.append(f"txn {t} (record {record}) in group {gid}: written at {at}")
        return problems
    finally:
        for g in groups.values():
            g.close()


@pytest.mark.parametrize("seed", range(12))
def test_each_transaction_has_one_fate_in_every_group_despite_late_copies(tmp_path, seed):
    assert _run_two_phase_commits(tmp_path, seed) == []


# ------------------------------------------------------------------ DECIDE's guard
# A coordinator's commit cannot land on an abort that was recorded and then forgotten,
# whatever ``since`` (its first prepare timestamp) it names: the horizon
# (``DECISION_HORIZON_NS``) compares the decision with the ``since`` the coordinator chose.


def test_a_commit_naming_a_later_since_does_not_land_on_a_forgotten_abort(sm):
    log = Log()
    r = one(sm, log, encode_prepare(1, 0, 200, [(b"a", b"1")], primary=PRIMARY, deadline=250))
    assert r.outcome is Outcome.PREPARED
    # Its deadline passed: a reader aborts it from the record; the abort is forgotten.
    assert one(sm, log, encode_decide(1, 300, 0)).outcome is Outcome.ABORTED
    late = 300 + RECORD_RETENTION_NS + 10
    one(sm, log, encode_close(late))
    one(sm, log, encode_forget(late + 10, [1]))
    assert sm.record(1) is None
    # The coordinator comes back, naming a first prepare timestamp just before now.
    now = late + 100
    r = one(sm, log, encode_decide(1, now, now - 1, since=now - 2,
                                   participants=[PRIMARY, OTHER]))
    assert r.outcome is Outcome.ABORTED and sm.record(1) == (False, 0)
    assert sm.store.get(b"a", MAX_TS) is None


def test_a_commit_of_a_transaction_never_prepared_here_is_recorded_as_an_abort(sm):
    log = Log()
    r = one(sm, log, encode_decide(2, 300, 290, since=280, participants=[PRIMARY, OTHER]))
    assert r.outcome is Outcome.ABORTED and sm.record(2) == (False, 0)
    # Prepared here, the same decision commits (and a repeat answers the record).
    one(sm, log, encode_prepare(3, 0, 400, [(b"b", b"1")], primary=PRIMARY, deadline=10**9))
    r = one(sm, log, encode_decide(3, 500, 450, since=400, participants=[PRIMARY, OTHER]))
    assert (r.outcome, r.ts) == (Outcome.COMMITTED, 450)
    r = one(sm, log, encode_decide(3, 600, 450, since=400, participants=[PRIMARY, OTHER]))
    assert (r.outcome, r.ts) == (Outcome.COMMITTED, 450)
    assert sm.store.get(b"b", MAX_TS) == b"1"


def test_a_decision_naming_more_participants_than_its_record_holds_is_refused(sm):
    """The record keeps the participants: one too large for a stored value would stop every
    replica of the group on the entry, at every restart."""
    log = Log()
    prepare(sm, log, 4, 0, 200, [(b"a", b"1")])
    many = range(2**31, 2**31 + MAX_VALUE_SIZE // 5 + 1)  # 5 bytes each: over a value
    assert len(many) > group.MAX_PARTICIPANTS
    r, after = sm.apply([log(encode_decide(4, 300, 290, since=200, participants=many)),
                         log(encode_commit(5, 0, 400, [(b"b", b"2")]))])
    assert r.outcome is Outcome.INVALID and sm.record(4) is None
    assert sm.intents([b"a"], MAX_TS) != []  # undecided: its coordinator may decide again
    # The group goes on: the next entry of the same call is applied.
    assert after.committed and sm.store.get(b"b", MAX_TS) == b"2"


def test_trimming_the_outbox_does_not_read_its_records(tmp_path):
    # A trim drops up to a thousand records in one apply, on every replica: it used to read
    # each record's writes (up to 4 MiB apiece) only to learn its key.
    store = MVCCStore(tmp_path / "east", map_size=1 << 28)
    east = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME, origin="us-east",
                             destinations=(201,))
    log = Log()
    big = 1 << 20
    try:
        east.apply([log(encode_commit(i + 1, 0, 100 + i, [], merges=[
            (b"k%d" % i, "lww", bytes([i]) * big)])) for i in range(32)])
        assert len(east.outbox_after(0, limit=1000)) == 32
        tracemalloc.start()
        try:
            one(east, log, encode_shipped(1000, 201, 131))  # 201 has them all: all trimmed
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert east.outbox_after(0) == [] and east.outbox_trimmed == 131
        assert peak < 4 * big
    finally:
        east.close()
        store.close()


def test_a_prepare_whose_record_would_not_fit_a_stored_value_is_refused(sm):
    # The prepared transaction's record holds every key it writes and locks: 4 MiB of locked
    # keys made it too large for the store, which refused the whole apply, on every replica,
    # at every restart. The prepare is refused instead, and the group goes on.
    log = Log()
    locks = [b"%0250d" % i for i in range(16_700)]
    r = one(sm, log, encode_prepare(2, 100, 200, [(b"w", b"1")], (), locks, primary=PRIMARY,
                                    deadline=10**9, serializable=True))
    assert r.outcome is Outcome.TOO_LARGE and "record" in r.reason
    assert sm.intents([b"w"], MAX_TS) == [] and not sm.is_prepared(2)
    assert one(sm, log, encode_commit(3, 0, 300, [(b"w", b"2")])).committed
