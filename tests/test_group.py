"""The group state machine: timestamps, first-committer-wins, isolation levels, determinism."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.group import CommitResult, GroupStateMachine, Outcome, encode_close, encode_commit
from engine.mvcc import MVCCStore
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


def test_malformed_and_protocol_breaking_entries_change_nothing_but_the_index(sm):
    log = Log()
    bad = [b"\xc1", msgpack.packb({"x": 1}), msgpack.packb([9]),
           msgpack.packb([1, 0, 0, 5, 0, [], []]),  # txn id 0
           msgpack.packb([1, 1, 0, 5, 0, [[b"", b"v"]], []]),  # empty key
           msgpack.packb([1, 1, 0, 5, 0, [[b"k", 7]], []])]  # value not bytes
    results = sm.apply([log(d) for d in bad])
    assert all(r.outcome is Outcome.INVALID for r in results)
    assert sm.applied_index == len(bad) and sm.closed_ts == 0
    r = commit(sm, log, 1, 10**12, 5, [(b"k", b"v")])  # snapshot never closed here
    assert r.outcome is Outcome.INVALID and "not below" in r.reason
    assert sm.store.get(b"k", 10**13) is None


# ---------------------------------------------------------------------- determinism


commands = st.lists(
    st.one_of(
        st.tuples(st.just("commit"),
                  st.integers(0, 60),  # read_ts offset below the proposal (0: blind)
                  st.integers(1, 120),  # proposed ts
                  st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=3),
                  st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=2),
                  st.booleans()),
        st.tuples(st.just("close"), st.integers(1, 150)),
    ),
    min_size=1, max_size=40)


def build(cmds) -> list[bytes]:
    out = []
    for n, c in enumerate(cmds, start=1):
        if c[0] == "close":
            out.append(encode_close(c[1]))
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cmds=commands, cuts=st.lists(st.integers(0, 40), max_size=5),
       restart_at=st.integers(0, 40), lifetime=st.sampled_from([30, 1000]))
def test_replicas_decide_identically_whatever_their_batches_and_restarts(
        tmp_path_factory, cmds, cuts, restart_at, lifetime):
    """One replica applies entry by entry; another in arbitrary batches, restarting (a new
    state machine over the reopened store, its adjudicator rebuilt) at some point. Results,
    data, closed timestamp and low water must be identical."""
    base = tmp_path_factory.mktemp("det")
    data = build(cmds)
    entries = [Entry(term=1, index=i, data=d) for i, d in enumerate(data, start=1)]

    with MVCCStore(base / "a", map_size=1 << 20) as sa:
        a = GroupStateMachine(sa, max_txn_lifetime_ns=lifetime)
        expected = [r for e in entries for r in a.apply([e])]
        want = dump(a)
        a.close()

    bounds = sorted({0, len(entries), *[c for c in cuts if c < len(entries)]})
    got: list = []
    path = base / "b"
    store = MVCCStore(path, map_size=1 << 20)
    b = GroupStateMachine(store, max_txn_lifetime_ns=lifetime)
    try:
        for lo, hi in zip(bounds, bounds[1:]):
            if lo <= restart_at < hi:
                b.close()
                store.close()
                store = MVCCStore(path, map_size=1 << 20)
                b = GroupStateMachine(store, max_txn_lifetime_ns=lifetime)
            got.extend(b.apply(entries[lo:hi]))
        assert got == expected
        assert dump(b) == want
    finally:
        b.close()
        store.close()


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
