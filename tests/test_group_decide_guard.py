"""DECIDE on the primary group: a coordinator's commit cannot land on an abort that was
recorded and then forgotten, whatever ``since`` (its first prepare timestamp) it names.

The horizon (``DECISION_HORIZON_NS``) compares the decision with the ``since`` of the
request, which the coordinator chooses: one naming a later ``since`` passed it. Pure state
machine tests (no trio, no cluster).
"""

from __future__ import annotations

import pytest

from engine.group import (
    RECORD_RETENTION_NS,
    GroupStateMachine,
    Outcome,
    encode_close,
    encode_decide,
    encode_forget,
    encode_prepare,
)
from engine.mvcc import MAX_TS, MVCCStore
from test_group import LIFETIME, Log

PRIMARY, OTHER = 100, 101


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
