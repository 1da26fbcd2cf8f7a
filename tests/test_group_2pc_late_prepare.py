"""Two-phase commit in one group: a prepare applied again after its transaction was resolved
here (a copy of the request that arrived late) must not leave intents that no decision can
resolve."""

from __future__ import annotations

import random

import pytest

from engine.group import (
    GroupStateMachine,
    Outcome,
    encode_commit,
    encode_decide,
    encode_prepare,
    encode_resolve,
)
from engine.mvcc import MAX_TS, MVCCStore
from test_group import LIFETIME, Log

PRIMARY = 100


@pytest.fixture
def sm(tmp_path):
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    machine = GroupStateMachine(store, max_txn_lifetime_ns=LIFETIME)
    yield machine
    machine.close()
    store.close()


def one(sm, log, data):
    [result] = sm.apply([log(data)])
    return result


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
