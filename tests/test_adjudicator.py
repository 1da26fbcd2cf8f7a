"""The adjudicator (ARCH §5.5): one test per rule and ordering claim, run against both the C table
and the Python reference; the two compared operation by operation (hypothesis); misuse and
malformed input; the benchmark's smoke test."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import InvalidArgumentError, MeridianError, RecordTooLargeError, StoreClosedError
from engine._native import lib
from engine.adjudicator import (
    MAX_KEY_SIZE,
    MAX_TS,
    MAX_TXN_KEYS,
    Adjudicator,
    AdjudicatorStats,
    ConflictReason,
    ReferenceAdjudicator,
    TxnRequest,
    Verdict,
)

WW = ConflictReason.WRITE_WRITE
RW = ConflictReason.READ_WRITE
INTENT = ConflictReason.INTENT
TOO_OLD = ConflictReason.TOO_OLD
OK = Verdict(True, None, None, 0)
IMPLEMENTATIONS = [Adjudicator, ReferenceAdjudicator]


@pytest.fixture(params=IMPLEMENTATIONS, ids=["c", "reference"])
def make(request):
    """``make(**kwargs)``: a new adjudicator of the implementation under test, closed after."""
    made = []

    def factory(**kwargs):
        adj = request.param(**kwargs)
        made.append(adj)
        return adj

    yield factory
    for adj in made:
        adj.close()


def txn(txn_id, read_ts, commit_ts, writes=(), reads=(), *, serializable=False, prepare=False):
    return TxnRequest(txn_id, read_ts, commit_ts, list(writes), list(reads), serializable,
                      prepare)


def commit(adj, txn_id, commit_ts, *keys):
    """Commits ``keys`` at ``commit_ts`` with a snapshot just below it (never conflicts unless
    something newer is there)."""
    (v,) = adj.adjudicate([txn(txn_id, commit_ts - 1, commit_ts, keys)])
    assert v.ok, v
    return v


# ------------------------------------------------------------------------------------ the rules


def test_an_accepted_commit_records_its_timestamp_on_every_written_key(make):
    adj = make()
    assert adj.adjudicate([txn(1, 5, 10, [b"a", b"b"])]) == [OK]
    assert adj.last_commit_ts(b"a") == adj.last_commit_ts(b"b") == 10
    assert adj.last_commit_ts(b"c") == 0
    assert len(adj) == 2 and adj.intent(b"a") is None


def test_write_write_is_a_commit_newer_than_read_ts(make):
    adj = make()
    commit(adj, 1, 10, b"k")
    assert adj.adjudicate([txn(2, 9, 20, [b"k"])]) == [(False, WW, b"k", 10)]
    # A commit at exactly read_ts is in the snapshot: no conflict.
    assert adj.adjudicate([txn(3, 10, 20, [b"k"])]) == [OK]
    assert adj.last_commit_ts(b"k") == 20


def test_reads_are_validated_only_when_serializable(make):
    adj = make()
    commit(adj, 1, 10, b"r")
    assert adj.adjudicate([txn(2, 5, 20, [b"w"], [b"r"])]) == [OK]
    v = adj.adjudicate([txn(3, 5, 30, [b"w2"], [b"r"], serializable=True)])
    assert v == [(False, RW, b"r", 10)]
    assert adj.last_commit_ts(b"w2") == 0  # rejected: nothing recorded
    assert adj.adjudicate([txn(4, 10, 30, [b"w2"], [b"r"], serializable=True)]) == [OK]


def test_read_keys_are_not_recorded_as_commits(make):
    adj = make()
    adj.adjudicate([txn(1, 5, 10, [b"w"], [b"r"], serializable=True)])
    assert adj.last_commit_ts(b"r") == 0 and len(adj) == 1


def test_a_foreign_intent_conflicts_on_a_written_key(make):
    adj = make()
    assert adj.adjudicate([txn(1, 5, 10, [b"k"], prepare=True)]) == [OK]
    assert adj.intent(b"k") == (1, 10)
    assert adj.last_commit_ts(b"k") == 0  # a prepare records no commit
    # Whatever the timestamps: the prepared transaction may still commit.
    assert adj.adjudicate([txn(2, 50, 60, [b"k"])]) == [(False, INTENT, b"k", 10)]


def test_a_foreign_intent_conflicts_on_a_read_key_only_when_serializable(make):
    adj = make()
    adj.adjudicate([txn(1, 5, 10, [b"k"], prepare=True)])
    assert adj.adjudicate([txn(2, 50, 60, [b"w"], [b"k"])]) == [OK]
    v = adj.adjudicate([txn(3, 50, 60, [b"w2"], [b"k"], serializable=True)])
    assert v == [(False, INTENT, b"k", 10)]


def test_too_old_comes_first_and_names_the_low_water(make):
    adj = make(low_water=100)
    adj.adjudicate([txn(1, 100, 110, [b"k"], prepare=True)])
    assert adj.adjudicate([txn(2, 99, 200, [b"k"])]) == [(False, TOO_OLD, None, 100)]
    assert adj.adjudicate([txn(3, 100, 200, [b"j"])]) == [OK]  # read_ts == low_water is fine


def test_per_key_the_intent_is_reported_before_the_commit(make):
    adj = make()
    commit(adj, 1, 20, b"k")
    adj.adjudicate([txn(2, 20, 30, [b"k"], prepare=True)])
    assert adj.adjudicate([txn(3, 10, 40, [b"k"])]) == [(False, INTENT, b"k", 30)]


def test_the_first_conflicting_key_is_reported_writes_then_reads(make):
    adj = make()
    commit(adj, 1, 20, b"a", b"b", b"r")
    adj.adjudicate([txn(2, 20, 30, [b"c"], prepare=True)])
    # Writes in order: b (write-write) comes before c (intent).
    assert adj.adjudicate([txn(3, 10, 40, [b"x", b"b", b"c"])]) == [(False, WW, b"b", 20)]
    assert adj.adjudicate([txn(4, 10, 40, [b"x", b"c", b"b"])]) == [(False, INTENT, b"c", 30)]
    # A conflicting write wins over an earlier-listed conflicting read.
    v = adj.adjudicate([txn(5, 10, 40, [b"x", b"a"], [b"r"], serializable=True)])
    assert v == [(False, WW, b"a", 20)]
    v = adj.adjudicate([txn(6, 10, 40, [b"x"], [b"y", b"r", b"a"], serializable=True)])
    assert v == [(False, RW, b"r", 20)]


def test_a_batch_sees_the_transactions_accepted_before_in_it(make):
    adj = make()
    batch = [
        txn(1, 5, 10, [b"k"]),
        txn(2, 5, 11, [b"k"]),  # first committer wins
        txn(3, 10, 12, [b"k"], prepare=True),
        txn(4, 12, 13, [b"k"]),  # 3's intent
        txn(5, 12, 14, [b"j"], [b"k"], serializable=True),
    ]
    expected = [OK, (False, WW, b"k", 10), OK, (False, INTENT, b"k", 12),
                (False, INTENT, b"k", 12)]
    assert adj.adjudicate(batch) == expected
    one_by_one = make()
    assert [one_by_one.adjudicate([t])[0] for t in batch] == expected


def test_a_rejected_transaction_changes_nothing(make):
    adj = make()
    commit(adj, 1, 20, b"b")
    assert not adj.adjudicate([txn(2, 10, 30, [b"a", b"b", b"c"])])[0].ok
    assert not adj.adjudicate([txn(3, 10, 30, [b"a", b"b"], prepare=True)])[0].ok
    assert adj.last_commit_ts(b"a") == 0 and adj.intent(b"a") is None
    assert adj.last_commit_ts(b"b") == 20 and len(adj) == 1


def test_repeated_keys_are_harmless(make):
    adj = make()
    assert adj.adjudicate([txn(1, 5, 10, [b"k", b"k", b"k"])]) == [OK]
    assert adj.adjudicate([txn(2, 10, 11, [b"j", b"j"], prepare=True)]) == [OK]
    assert adj.stats().intents == 1 and len(adj) == 2
    adj.resolve(2, [b"j", b"j"], 11)
    assert adj.last_commit_ts(b"j") == 11 and adj.intent(b"j") is None


def test_an_empty_batch_and_a_transaction_without_writes(make):
    adj = make()
    assert adj.adjudicate([]) == []
    assert adj.adjudicate([txn(1, 5, 10)]) == [OK]
    assert len(adj) == 0


# ------------------------------------------------------------------------ prepare and resolve


def test_resolve_with_a_commit_timestamp_records_it_and_removes_the_intents(make):
    adj = make()
    adj.adjudicate([txn(7, 5, 10, [b"a", b"b"], prepare=True)])
    assert adj.stats().intents == 2
    adj.resolve(7, [b"a", b"b"], 15)
    assert adj.intent(b"a") is None and adj.intent(b"b") is None
    assert adj.last_commit_ts(b"a") == adj.last_commit_ts(b"b") == 15
    assert adj.adjudicate([txn(8, 14, 20, [b"a"])]) == [(False, WW, b"a", 15)]
    assert adj.adjudicate([txn(9, 15, 20, [b"a"])]) == [OK]


def test_resolve_without_a_commit_timestamp_aborts(make):
    adj = make()
    commit(adj, 1, 3, b"a")
    adj.adjudicate([txn(7, 5, 10, [b"a", b"b"], prepare=True)])
    adj.resolve(7, [b"a", b"b"], None)
    assert adj.intent(b"a") is None and adj.last_commit_ts(b"a") == 3
    assert adj.last_commit_ts(b"b") == 0
    assert len(adj) == 1  # b was only an intent: forgotten
    assert adj.adjudicate([txn(8, 5, 20, [b"a", b"b"])]) == [OK]


def test_resolve_leaves_other_transactions_intents_and_unknown_keys_alone(make):
    adj = make()
    adj.adjudicate([txn(7, 5, 10, [b"a"], prepare=True), txn(8, 5, 11, [b"b"], prepare=True)])
    adj.resolve(7, [b"b", b"nothing", b"a"], 20)
    assert adj.intent(b"b") == (8, 11) and adj.last_commit_ts(b"b") == 0
    assert adj.intent(b"a") is None and adj.last_commit_ts(b"a") == 20
    assert adj.last_commit_ts(b"nothing") == 0 and len(adj) == 2
    adj.resolve(7, [b"a"], 30)  # again: its intent is gone, nothing happens
    assert adj.last_commit_ts(b"a") == 20


def test_resolve_keeps_the_larger_commit_timestamp(make):
    adj = make()
    adj.adjudicate([txn(7, 5, 10, [b"a"], prepare=True)])
    adj.load([(b"a", 50)])
    adj.resolve(7, [b"a"], 12)
    assert adj.last_commit_ts(b"a") == 50


def test_re_prepare_is_idempotent_and_own_intents_never_conflict(make):
    adj = make()
    prepare = txn(7, 5, 10, [b"a", b"b"], [b"a"], serializable=True, prepare=True)
    assert adj.adjudicate([prepare]) == [OK]
    before = (adj.intent(b"a"), adj.intent(b"b"), len(adj), adj.stats().intents)
    assert adj.adjudicate([prepare, prepare]) == [OK, OK]
    assert (adj.intent(b"a"), adj.intent(b"b"), len(adj), adj.stats().intents) == before
    # A later prepare timestamp replaces the intent's.
    assert adj.adjudicate([txn(7, 5, 12, [b"a"], prepare=True)]) == [OK]
    assert adj.intent(b"a") == (7, 12) and adj.intent(b"b") == (7, 10)
    # Its own intents do not stop the transaction committing in one phase either.
    assert adj.adjudicate([txn(7, 5, 13, [b"a"], [b"b"], serializable=True)]) == [OK]
    assert adj.last_commit_ts(b"a") == 13 and adj.intent(b"a") == (7, 12)


def test_a_prepare_locks_its_read_keys_against_writers_but_not_readers(make):
    adj = make()
    lock = txn(7, 5, 10, [b"w"], [b"r", b"w"], serializable=True, prepare=True)
    assert adj.adjudicate([lock]) == [OK]
    # The written key carries the intent, which covers the read: no lock there.
    assert (adj.locks(b"r"), adj.locks(b"w"), adj.intent(b"r")) == (1, 0, None)
    # Readers share the lock: serializable commits and prepares that read it go through.
    assert adj.adjudicate([
        txn(8, 5, 11, [b"x"], [b"r"], serializable=True),
        txn(9, 5, 12, [b"y"], [b"r"], serializable=True, prepare=True),
    ]) == [OK, OK]
    assert adj.locks(b"r") == 2 and adj.stats().locks == 2
    # A writer meets the latest lock's prepare timestamp, whatever its snapshot.
    assert adj.adjudicate([txn(3, 50, 60, [b"r"])]) == [(False, INTENT, b"r", 12)]
    adj.resolve(9, [b"y", b"r"], 20)
    assert adj.adjudicate([txn(3, 50, 60, [b"r"])]) == [(False, INTENT, b"r", 12)]
    # The last one released, the key is free; a lock left no commit record.
    adj.resolve(7, [b"w", b"r"], None)
    assert adj.locks(b"r") == 0 and adj.last_commit_ts(b"r") == 0
    assert adj.adjudicate([txn(3, 50, 60, [b"r"])]) == [OK]


def test_own_locks_never_conflict_and_re_locking_is_idempotent(make):
    adj = make()
    lock = txn(7, 5, 10, [], [b"r"], serializable=True, prepare=True)
    assert adj.adjudicate([lock, lock]) == [OK, OK]
    assert adj.locks(b"r") == 1 and adj.stats().intents == 1
    assert adj.adjudicate([txn(7, 5, 11, [b"r"], prepare=True)]) == [OK]
    adj.resolve(7, [b"r"], None)
    assert (adj.locks(b"r"), adj.intent(b"r"), len(adj)) == (0, None, 0)


def test_a_lock_is_not_taken_on_a_key_another_transaction_prepared(make):
    adj = make()
    adj.adjudicate([txn(7, 5, 10, [b"k"], prepare=True)])
    v = adj.adjudicate([txn(8, 5, 11, [b"w"], [b"k"], serializable=True, prepare=True)])
    assert v == [(False, INTENT, b"k", 10)] and adj.locks(b"k") == 0


def test_intents_are_never_pruned(make):
    adj = make()
    commit(adj, 1, 5, b"k")
    adj.adjudicate([txn(7, 5, 10, [b"k", b"j"], prepare=True)])
    assert adj.prune(1000) == 1
    assert adj.intent(b"k") == (7, 10) and adj.intent(b"j") == (7, 10)
    assert adj.last_commit_ts(b"k") == 0 and len(adj) == 2
    adj.resolve(7, [b"k", b"j"], 900)  # at or below the low water: not recorded
    assert adj.last_commit_ts(b"k") == 0 and len(adj) == 0
    adj.adjudicate([txn(8, 1000, 1001, [b"k"], prepare=True)])
    adj.resolve(8, [b"k"], 1001)
    assert adj.last_commit_ts(b"k") == 1001


# ------------------------------------------------------------------------------ prune and load


def test_prune_drops_old_commits_raises_the_low_water_and_never_lowers_it(make):
    adj = make()
    for i, key in enumerate([b"a", b"b", b"c", b"d"]):
        commit(adj, i + 1, 10 * (i + 1), key)  # 10, 20, 30, 40
    assert adj.prune(20) == 2
    assert adj.low_water == 20 and len(adj) == 2
    assert [adj.last_commit_ts(k) for k in (b"a", b"b", b"c", b"d")] == [0, 0, 30, 40]
    assert adj.adjudicate([txn(9, 19, 50, [b"z"])]) == [(False, TOO_OLD, None, 20)]
    assert adj.prune(5) == 0 and adj.low_water == 20
    assert adj.prune(20) == 0
    assert adj.prune(MAX_TS) == 2 and len(adj) == 0


def test_load_records_the_larger_timestamp_and_skips_what_is_below_the_low_water(make):
    adj = make(low_water=10)
    adj.load([(b"a", 30), (b"a", 20), (b"b", 10), (b"c", 11)])
    assert adj.last_commit_ts(b"a") == 30
    assert adj.last_commit_ts(b"b") == 0  # at the low water: no information
    assert adj.last_commit_ts(b"c") == 11 and len(adj) == 2
    adj.load(iter([(b"c", 12)]))  # any iterable
    adj.load([])
    assert adj.last_commit_ts(b"c") == 12
    assert adj.adjudicate([txn(1, 11, 40, [b"c"])]) == [(False, WW, b"c", 12)]


def test_load_is_all_or_nothing(make):
    adj = make()
    with pytest.raises(InvalidArgumentError, match="load"):
        adj.load([(b"a", 1), (b"b", -1)])
    with pytest.raises(RecordTooLargeError):
        adj.load([(b"a", 1), (b"x" * (MAX_KEY_SIZE + 1), 1)])
    with pytest.raises(InvalidArgumentError, match="pair"):
        adj.load([(b"a", 1), (b"b", 2, 3)])
    assert len(adj) == 0


def test_stats(make):
    adj = make(low_water=3)
    commit(adj, 1, 10, b"a", b"b")
    adj.adjudicate([txn(2, 10, 11, [b"b", b"c"], prepare=True)])
    s = adj.stats()
    assert isinstance(s, AdjudicatorStats)
    assert (s.keys, s.intents, s.low_water) == (3, 2, 3) and s.memory_bytes > 0
    assert len(adj) == 3


def test_long_keys(make):
    adj = make()
    keys = [bytes([i]) * n for i in range(1, 40) for n in (15, 16, 17, 24, 25, MAX_KEY_SIZE)]
    for i, key in enumerate(keys):
        commit(adj, i + 1, 100 + i, key)
    adj.adjudicate([txn(9999, 10_000, 10_001, keys[::3], prepare=True)])
    assert all(adj.last_commit_ts(k) == 100 + i for i, k in enumerate(keys))
    assert all(adj.intent(k) == (9999, 10_001) for k in keys[::3])
    assert adj.adjudicate([txn(10_000, 50, 20_000, [keys[-1]])]) == [
        (False, WW, keys[-1], 100 + len(keys) - 1)]
    assert adj.prune(100 + len(keys) // 2) == len(keys) // 2 + 1
    adj.resolve(9999, keys[::3], None)
    assert len(adj) == len(keys) - len(keys) // 2 - 1
    assert all(adj.last_commit_ts(k) == (100 + i if 100 + i > adj.low_water else 0)
               for i, k in enumerate(keys))


def test_the_table_grows_and_shrinks_and_prune_frees_memory():
    with Adjudicator(seed=7) as adj:
        empty = adj.stats().memory_bytes
        keys = [b"key:%012d" % i for i in range(70_000)]
        long_keys = [b"long-key-%040d" % i for i in range(5_000)]
        adj.load([(k, 1 + i) for i, k in enumerate(keys + long_keys)])
        # One batch with more keys than the scratch space kept between calls.
        batch = [txn(i + 1, 100_000, 100_001, keys[i * 4:i * 4 + 4]) for i in range(17_000)]
        assert all(v.ok for v in adj.adjudicate(batch))
        assert len(adj) == 75_000
        assert adj.stats().memory_bytes > 75_000 * 32 + 5_000 * 49
        assert adj.prune(100_000) == 7_000 and len(adj) == 68_000
        assert adj.prune(100_001) == 68_000 and len(adj) == 0
        assert adj.stats().memory_bytes < empty + 16_384


# --------------------------------------------------------------------------------- bad input


def test_requests_are_validated_when_made():
    good = dict(txn_id=1, read_ts=1, commit_ts=2, writes=[b"k"])
    cases = [
        (dict(txn_id=0), InvalidArgumentError, "txn_id must be > 0"),
        (dict(txn_id=True), InvalidArgumentError, "txn_id must be an int, not bool"),
        (dict(txn_id=2**64), InvalidArgumentError, "txn_id 18446744073709551616 is outside"),
        (dict(read_ts=-1), InvalidArgumentError, "txn 1: read_ts -1 is outside"),
        (dict(read_ts=1.0), InvalidArgumentError, "read_ts must be an int, not float"),
        (dict(commit_ts=1), InvalidArgumentError, "txn 1: commit_ts 1 is not above read_ts 1"),
        (dict(commit_ts="2"), InvalidArgumentError, "commit_ts must be an int, not str"),
        (dict(writes=b"k"), InvalidArgumentError, "writes must be a sequence of keys"),
        (dict(writes=5), InvalidArgumentError, "writes must be a sequence of keys, not int"),
        (dict(writes=[b"a", "b"]), InvalidArgumentError, r"txn 1: writes\[1\] must be bytes"),
        (dict(writes=[b"a", bytearray(b"b")]), InvalidArgumentError, r"writes\[1\] must be"),
        (dict(writes=[b"a", b"b", b""]), InvalidArgumentError, r"txn 1: writes\[2\] is empty"),
        (dict(writes=[b"x" * 251]), RecordTooLargeError, r"writes\[0\] is 251 bytes, over"),
        (dict(writes=[b"x" * 300]), RecordTooLargeError, r"writes\[0\] is 300 bytes"),
        (dict(reads=[b"a", None]), InvalidArgumentError, r"txn 1: reads\[1\] must be bytes"),
        (dict(reads="ab"), InvalidArgumentError, "reads must be a sequence of keys"),
        (dict(serializable=1), InvalidArgumentError, "serializable must be a bool, not int"),
        (dict(prepare=None), InvalidArgumentError, "prepare must be a bool"),
        (dict(writes=[b"k"] * MAX_TXN_KEYS, reads=[b"r"]), RecordTooLargeError, "over the limit"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            TxnRequest(**{**good, **change})
    # The limits themselves are fine; sequences become tuples; int subclasses become ints.
    t = TxnRequest(MAX_TS, MAX_TS - 1, MAX_TS, [b"x" * MAX_KEY_SIZE], iter([b"r"]))
    assert t.writes == (b"x" * MAX_KEY_SIZE,) and t.reads == (b"r",)
    assert type(TxnRequest(ConflictReason.INTENT, 0, 1, []).txn_id) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.read_ts = 0


def test_bad_calls_raise_clear_errors_and_change_nothing(make):
    adj = make()
    good = txn(1, 1, 2, [b"k"])
    with pytest.raises(InvalidArgumentError, match=r"batch\[1\] must be a TxnRequest, not tuple"):
        adj.adjudicate([good, (2, 1, 2, [b"k"])])
    with pytest.raises(InvalidArgumentError, match="batch must be a sequence of TxnRequest"):
        adj.adjudicate(good)
    with pytest.raises(InvalidArgumentError, match="batch must be a sequence"):
        adj.adjudicate(7)
    assert len(adj) == 0  # the good request before the bad one was not adjudicated
    assert adj.adjudicate(iter([good])) == [OK]  # any iterable of requests
    for call, error, message in [
        (lambda: adj.resolve(0, [b"k"], None), InvalidArgumentError, "txn_id must be > 0"),
        (lambda: adj.resolve(1, [b"k"], -5), InvalidArgumentError, "commit_ts -5 is outside"),
        (lambda: adj.resolve(1, [b""], 5), InvalidArgumentError,
         r"resolve of txn 1: keys\[0\] is empty"),
        (lambda: adj.resolve(1, b"k", 5), InvalidArgumentError, "sequence of keys"),
        (lambda: adj.prune(-1), InvalidArgumentError, "low_water -1 is outside"),
        (lambda: adj.prune(None), InvalidArgumentError, "low_water must be an int"),
        (lambda: adj.last_commit_ts("k"), InvalidArgumentError, "key must be bytes, not str"),
        (lambda: adj.intent(b"x" * 251), RecordTooLargeError, "key is 251 bytes"),
        (lambda: adj.load(b"ab"), InvalidArgumentError, r"\(key, ts\) pairs"),
        (lambda: adj.load([(b"a", True)]), InvalidArgumentError, "item 0: ts must be an int"),
        (lambda: adj.load([b"ab"]), InvalidArgumentError, "item 0 must be a"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert adj.last_commit_ts(b"k") == 2 and len(adj) == 1


def test_bad_constructor_arguments(make):
    for kwargs, message in [
        (dict(low_water=-1), "low_water -1 is outside"),
        (dict(low_water=2**64), "outside"),
        (dict(seed=-1), "seed -1 is outside"),
        (dict(seed=2**128), "outside"),
        (dict(seed="x"), "seed must be an int or None"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            make(**kwargs)
    make(seed=2**128 - 1, low_water=MAX_TS)


def test_close_is_idempotent_and_use_after_close_raises(make):
    adj = make()
    commit(adj, 1, 2, b"k")
    with adj as same:
        assert same is adj
    assert adj.closed
    adj.close()
    for call in [
        lambda: adj.adjudicate([txn(2, 2, 3, [b"k"])]),
        lambda: adj.adjudicate([]),
        lambda: adj.resolve(1, [b"k"], None),
        lambda: adj.load([]),
        lambda: adj.prune(5),
        lambda: adj.last_commit_ts(b"k"),
        lambda: adj.intent(b"k"),
        lambda: adj.stats(),
        lambda: len(adj),
        lambda: adj.low_water,
    ]:
        with pytest.raises(StoreClosedError, match="closed"):
            call()


def test_concurrent_calls_and_close_are_safe():
    """The C table is not thread-safe; the wrapper's lock makes it so: threads adjudicating
    while another closes get verdicts or StoreClosedError, never a crash."""
    adj = Adjudicator()
    errors: list[BaseException] = []
    running = [threading.Event() for _ in range(4)]
    closed_after: list[int] = []

    def work(n):
        i = 0
        try:
            for i in range(100_000):
                ts = 10 + i
                adj.adjudicate([txn(1 + n + 4 * i, ts - 5, ts, [b"k%d" % (i % 7), b"shared"])])
                adj.last_commit_ts(b"shared")
                if i == 50:
                    running[n].set()
        except StoreClosedError:
            closed_after.append(i)
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)
        finally:
            running[n].set()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for event in running:
        event.wait(timeout=60)
    adj.close()
    for th in threads:
        th.join()
    assert errors == [] and len(closed_after) == 4 and min(closed_after) > 50


def test_forged_records_are_refused_by_the_c_code():
    """A request whose encoding does not match its fields (possible only by bypassing the
    frozen dataclass) is checked by C like any other input: an error, never a crash."""
    good = txn(1, 1, 2, [b"k"])
    forged = [
        b"",
        good._wire[:-1],
        good._wire + b"\x00",
        good._wire[:32] + b"\x09" + good._wire[33:],  # unknown flag
        good._wire[:29] + b"\x01" + good._wire[30:],  # a read on a non-serializable request
        good._wire[:33] + b"\x00" + good._wire[34:],  # an empty key
        good._wire[:33] + b"\xfb" + good._wire[34:],  # a 251-byte key
        b"\x00" * 33,  # txn_id 0
        good._wire[:8] + good._wire[16:24] + good._wire[16:],  # read_ts == commit_ts
    ]
    with Adjudicator() as adj:
        for wire in forged:
            bad = txn(1, 1, 2, [b"k"])
            object.__setattr__(bad, "_wire", wire)
            with pytest.raises((InvalidArgumentError, RecordTooLargeError)) as info:
                adj.adjudicate([good, bad])
            assert "request" in str(info.value)
        assert len(adj) == 0
        rng = random.Random(5)
        for _ in range(300):
            bad = txn(1, 1, 2, [b"k"])
            n = rng.randrange(60)
            object.__setattr__(bad, "_wire", bytes(rng.randrange(256) for _ in range(n)))
            try:
                adj.adjudicate([bad])
            except (InvalidArgumentError, RecordTooLargeError):
                pass


def test_reasons_and_limits_match_the_c_library():
    assert [int(r) for r in ConflictReason] == [
        lib.ADJ_WRITE_WRITE, lib.ADJ_READ_WRITE, lib.ADJ_INTENT, lib.ADJ_TOO_OLD]
    assert MAX_KEY_SIZE == lib.ADJ_MAX_KEY_SIZE == 250
    assert issubclass(InvalidArgumentError, (MeridianError, ValueError))


def test_the_hash_is_siphash13():
    """The table's hash is SipHash-1-3: under PYTHONHASHSEED=0 CPython hashes bytes with
    SipHash-1-3 and an all-zero key, an independent implementation to check it against."""
    if sys.hash_info.algorithm != "siphash13":
        pytest.skip(f"this Python hashes with {sys.hash_info.algorithm}")
    samples = [b"a", b"abcdefg", b"abcdefgh", b"key:000000000001", bytes(range(250))]
    code = f"print([hash(s) for s in {samples!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"}, check=True).stdout
    expected = json.loads(out)
    for data, want in zip(samples, expected):
        got = lib.adj_siphash13(0, 0, data, len(data))
        got = got - 2**64 if got >= 2**63 else got
        assert got == (want if want != -2 else -1), data
    # The key matters.
    assert lib.adj_siphash13(1, 0, b"a", 1) != lib.adj_siphash13(0, 0, b"a", 1)


OUT_OF_MEMORY = """
import resource, sys
from engine.adjudicator import Adjudicator
adj = Adjudicator()
adj.load([(b"first", 5)])
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (96 << 20), resource.RLIM_INFINITY))
for chunk in range(100):
    items = [(b"key:%012d" % (chunk * 200_000 + i), 10) for i in range(200_000)]
    before = len(adj)
    try:
        adj.load(items)
    except MemoryError as exc:
        assert "adjudicator" in str(exc), exc  # the C table's allocation, not Python's
        assert len(adj) == before and adj.last_commit_ts(b"first") == 5
        print("refused", before, exc)
        sys.exit(0)
sys.exit("never ran out of memory")
"""


def test_out_of_memory_is_an_error_that_changes_nothing():
    """Under an address-space limit the table cannot double: MemoryError, nothing loaded, and
    the adjudicator still works (the C code never aborts)."""
    proc = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refused" in proc.stdout


# --------------------------------------------------------------------- C against reference


KEYS = [b"a", b"b", b"c", b"d", b"e", b"k" * 17, b"z" * MAX_KEY_SIZE]
keys_st = st.lists(st.sampled_from(KEYS), max_size=4)


@st.composite
def requests(draw):
    txn_id = draw(st.integers(1, 6))  # few ids: a transaction meets its own intents
    read_ts = draw(st.integers(0, 40))
    commit_ts = read_ts + draw(st.integers(1, 15))
    return TxnRequest(txn_id, read_ts, commit_ts, draw(keys_st), draw(keys_st),
                      draw(st.booleans()), draw(st.integers(0, 3)) == 0)


class SameDecisions(RuleBasedStateMachine):
    """Adjudicator and ReferenceAdjudicator, fed the same operations, return the same verdicts
    and hold the same last commits and intents for every key."""

    @initialize(low_water=st.integers(0, 5), seed=st.integers(0, 2**128 - 1))
    def start(self, low_water, seed):
        self.c = Adjudicator(low_water=low_water, seed=seed)
        self.ref = ReferenceAdjudicator(low_water=low_water, seed=seed)

    def teardown(self):
        if hasattr(self, "c"):
            self.c.close()

    @rule(batch=st.lists(requests(), max_size=6))
    def adjudicate(self, batch):
        assert self.c.adjudicate(batch) == self.ref.adjudicate(batch)

    @rule(txn_id=st.integers(1, 6), keys=keys_st,
          commit_ts=st.one_of(st.none(), st.integers(0, 60)))
    def resolve(self, txn_id, keys, commit_ts):
        self.c.resolve(txn_id, keys, commit_ts)
        self.ref.resolve(txn_id, keys, commit_ts)

    @rule(low_water=st.integers(0, 50))
    def prune(self, low_water):
        assert self.c.prune(low_water) == self.ref.prune(low_water)

    @rule(items=st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 60)), max_size=4))
    def load(self, items):
        self.c.load(items)
        self.ref.load(items)

    @invariant()
    def same_state(self):
        for key in KEYS:
            assert self.c.last_commit_ts(key) == self.ref.last_commit_ts(key), key
            assert self.c.intent(key) == self.ref.intent(key), key
            assert self.c.locks(key) == self.ref.locks(key), key
        c, ref = self.c.stats(), self.ref.stats()
        assert (c.keys, c.intents, c.low_water, c.locks) == (
            ref.keys, ref.intents, ref.low_water, ref.locks)


SameDecisions.TestCase.settings = settings(
    max_examples=120, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_c_and_reference_decide_the_same = SameDecisions.TestCase


def test_c_and_reference_agree_over_many_random_operations():
    """Larger and longer than the state machine: hundreds of keys, so the C table grows,
    shrinks, wraps its probe sequences around the end and compacts its key arena."""
    rng = random.Random(11)
    keys = [b"%d" % i for i in range(300)] + [b"long-%030d" % i for i in range(100)]
    with Adjudicator(seed=3) as c:
        ref = ReferenceAdjudicator()
        ts = 100
        prepared: list[TxnRequest] = []
        for step in range(1500):
            op = rng.random()
            if op < 0.7:
                batch = []
                for _ in range(rng.randrange(1, 12)):
                    ts += 1
                    serializable = rng.random() < 0.3
                    t = TxnRequest(rng.randrange(1, 10**6), ts - rng.randrange(1, 60), ts,
                                   rng.sample(keys, rng.randrange(0, 5)),
                                   rng.sample(keys, rng.randrange(0, 4)), serializable,
                                   rng.random() < 0.2)
                    batch.append(t)
                verdicts = c.adjudicate(batch)
                assert verdicts == ref.adjudicate(batch), step
                prepared += [t for t, v in zip(batch, verdicts) if v.ok and t.prepare]
            elif op < 0.85 and prepared:
                t = prepared.pop(rng.randrange(len(prepared)))
                commit_ts = None if rng.random() < 0.3 else ts + 1
                c.resolve(t.txn_id, [*t.writes, *t.reads], commit_ts)
                ref.resolve(t.txn_id, [*t.writes, *t.reads], commit_ts)
            elif op < 0.95:
                low_water = ts - rng.randrange(0, 200)
                assert c.prune(low_water) == ref.prune(low_water), step
            else:
                items = [(rng.choice(keys), ts - rng.randrange(0, 100)) for _ in range(20)]
                c.load(items)
                ref.load(items)
        for key in keys:
            assert c.last_commit_ts(key) == ref.last_commit_ts(key), key
            assert c.intent(key) == ref.intent(key), key
        assert len(c) == len(ref)


# ---------------------------------------------------------------------------------- benchmark


def test_benchmark_quick_mode_writes_the_documented_json(tmp_path, capsys):
    from bench import __main__ as bench_main

    out = tmp_path / "adjudicator.json"
    rc = bench_main.main(["adjudicator", "--quick", "--json", str(out), "--keys", "2000",
                          "--repetitions", "2", "--duration-s", "0.01", "--max-batches", "3"])
    assert rc == 0
    assert "speedup" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["benchmark"] == "adjudicator"
    assert doc["command"].startswith("python -m bench adjudicator --quick")
    assert doc["config"]["quick"] and doc["config"]["keys"] == 2000
    for key in ("cpu_model", "cores", "python", "date"):
        assert doc["machine"][key], key
    cells = {(r["implementation"], r["workload"]): r for r in doc["results"]}
    assert set(cells) == {(i, w) for i in ("c", "reference") for w in ("write4", "ser4r2w")}
    for r in cells.values():
        assert r["txns_per_s"] > 0 and r["construct_us_per_txn"] > 0
        assert len(r["repetitions_txns_per_s"]) == 2 and 0 <= r["abort_rate"] < 1
        assert r["batch_p50_us"] <= r["batch_p99_us"]
    for w in ("write4", "ser4r2w"):
        expected = cells[("c", w)]["txns_per_s"] / cells[("reference", w)]["txns_per_s"]
        assert doc["speedup"][w] == pytest.approx(expected, rel=0.01)
        assert doc["speedup_with_construction"][w] > 0
        assert len(doc["speedup_per_repetition"][w]) == 2
        assert doc["targets"][f"{w}_speedup"]["met"] == (doc["speedup"][w] >= 10)
    assert doc["decisions_agree"] is True
