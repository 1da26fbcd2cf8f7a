"""Serializable transactions and scanned ranges (ARCH §5: "serializable: read sets validated
too: no write skew"). A scan's result is part of what a transaction read: a key inserted into
a scanned range by a concurrent transaction that commits first must make the later one fail,
or two transactions that each saw the range empty both commit (write skew through a phantom,
e.g. "at most one doctor on call")."""

from __future__ import annotations

import pytest
import trio

from engine.errors import InvalidArgumentError, TransactionConflictError
from engine.group import (
    GroupStateMachine,
    Outcome,
    encode_commit,
    encode_fence,
    encode_prepare,
    encode_resolve,
)
from engine.local import open_local_cluster
from engine.mvcc import MAX_TS, MVCCStore
from test_cluster import TWO_REGIONS, second_commit
from test_group import Log


async def _skew(db, isolation, *, other_keyspace=None):
    """Two transactions each scan the range ``shift/`` (empty), then each inserts one key into
    it (and, with ``other_keyspace``, writes a key there too: two-phase commit). Returns what
    the second commit did."""
    a, b = db.transaction(isolation), db.transaction(isolation)
    for tx in (a, b):
        assert await tx.scan("oncall", b"shift/", b"shift0") == []
    await a.put("oncall", b"shift/alice", b"on")
    await b.put("oncall", b"shift/bob", b"on")
    if other_keyspace is not None:
        await a.put(other_keyspace, b"log-a", b"1")
        await b.put(other_keyspace, b"log-b", b"1")
    return await second_commit(a, b)


async def test_serializable_refuses_write_skew_through_a_scanned_range():
    async with open_local_cluster(("us-east",), 3, seed=31) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("oncall", home_region="us-east")
                assert await _skew(db, "snapshot") == "committed"  # allowed under SI
                await db.run_transaction(lambda tx: tx.delete("oncall", b"shift/alice"))
                await db.run_transaction(lambda tx: tx.delete("oncall", b"shift/bob"))
                reason = await _skew(db, "serializable")
                assert reason != "committed", "phantom write skew committed under serializable"
                assert len(await db.transaction().scan("oncall", b"shift/", b"shift0")) == 1


async def test_serializable_refuses_write_skew_through_a_scanned_range_in_two_phase_commit():
    async with open_local_cluster(TWO_REGIONS, 1, seed=32) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("oncall", home_region="us-east")
                await db.create_keyspace("audit", home_region="eu-west")
                reason = await _skew(db, "serializable", other_keyspace="audit")
                assert reason != "committed", "phantom write skew committed under serializable"
                assert len(await db.transaction().scan("oncall", b"shift/", b"shift0")) == 1


async def test_a_serializable_transaction_does_not_read_a_regional_keyspace():
    # Each region commits a regional keyspace's writes on its own and merges the others' later:
    # two serializable transactions in two regions that each saw the range empty would both
    # commit their insert (write skew), so the read is refused rather than left unvalidated.
    async with open_local_cluster(TWO_REGIONS, 1, seed=33) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("oncall", mode="regional", resolver="lww")
                await db.run_transaction(lambda tx: tx.put("oncall", b"shift/alice", b"on"))
                tx = db.transaction("serializable")
                with pytest.raises(InvalidArgumentError, match="regional"):
                    await tx.scan("oncall", b"shift/", b"shift0")
                with pytest.raises(InvalidArgumentError, match="regional"):
                    await tx.get("oncall", b"shift/alice")
                with pytest.raises(InvalidArgumentError, match="regional"):
                    await tx.get_many("oncall", [b"shift/alice"])
                await tx.put("oncall", b"shift/bob", b"on")  # writing it stays allowed
                await tx.commit()
                tx = db.transaction()
                assert [k for k, _ in await tx.scan("oncall", b"shift/", b"shift0")] == [
                    b"shift/alice", b"shift/bob"]


async def _insert_while_prepared(db, tx, keyspace: str, key: bytes) -> str:
    """Commits ``tx`` (a two-phase commit), inserting ``key`` into ``keyspace`` in another
    transaction once its prepares are done, before its decision: what became of the insert
    ("committed", or its conflict's reason)."""
    outcome = []
    call_group = db._call_group

    async def insert_first(group, method, payload, **kwargs):
        if method == "decide" and not outcome:
            try:
                await db.run_transaction(lambda o: o.put(keyspace, key, b"new"), max_attempts=1)
            except TransactionConflictError as exc:
                outcome.append(exc.reason)
            else:
                outcome.append("committed")
        return await call_group(group, method, payload, **kwargs)

    db._call_group = insert_first
    try:
        await tx.commit()
    finally:
        db._call_group = call_group
    return outcome[0]


async def test_a_limited_scan_locks_only_the_keys_it_read_in_two_phase_commit():
    # A serializable scan with a limit read the range up to its last key (down to it, in
    # reverse); a prepare locks what it read against writers until the transaction is
    # resolved. A forward scan was locked as its whole range: "take the first job" kept
    # every insert past that job out (an "intent" conflict) while it committed.
    async with open_local_cluster(TWO_REGIONS, 1, seed=34) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(60):
                await db.create_keyspace("audit", home_region="eu-west")
                for keyspace, reverse, before, past in (("fifo", False, b"j/0", b"j/3"),
                                                        ("lifo", True, b"j/3", b"j/0")):
                    await db.create_keyspace(keyspace, home_region="us-east")
                    for key in (b"j/1", b"j/2"):
                        await db.run_transaction(lambda tx, k=key: tx.put(keyspace, k, b"open"))
                    outcomes = []
                    for insert in (past, before):
                        tx = db.transaction("serializable")
                        [(taken, _)] = await tx.scan(keyspace, b"j/", b"j0", limit=1,
                                                     reverse=reverse)
                        assert taken == (b"j/2" if reverse else b"j/1")
                        await tx.put("audit", b"took", taken)  # another group: two-phase
                        outcomes.append(await _insert_while_prepared(db, tx, keyspace, insert))
                    # Past the key read: not locked; before it (what it read): locked.
                    assert outcomes == ["committed", "intent"], reverse


# ------------------------------------------------------------------ the group state machine



def test_a_group_validates_and_locks_scanned_ranges(tmp_path):
    def open_sm():
        store = MVCCStore(tmp_path / "g", map_size=1 << 20)
        return store, GroupStateMachine(store, max_txn_lifetime_ns=10**12)

    log = Log()
    store, sm = open_sm()
    span = [[b"s/", b"s0", None]]
    [r] = sm.apply([log(encode_commit(1, 0, 100, [(b"s/a", b"1")]))])
    assert r.committed
    # Inserted into the range after the snapshot 90: refused; at 100: nothing changed.
    [r] = sm.apply([log(encode_commit(2, 90, 200, [(b"x", b"1")], serializable=True,
                                      spans=span))])
    assert (r.outcome, r.reason) == (Outcome.CONFLICT, "read_write")
    [r] = sm.apply([log(encode_commit(3, 100, 210, [(b"x", b"2")], serializable=True,
                                      spans=span))])
    assert r.committed
    # A prepared serializable transaction locks its range against inserts, across a restart.
    [r] = sm.apply([log(encode_prepare(4, 210, 300, [], primary=7, deadline=10**9,
                                       serializable=True, spans=span))])
    assert r.outcome is Outcome.PREPARED
    sm.close()
    store.close()
    store, sm = open_sm()
    [r] = sm.apply([log(encode_commit(5, 300, 310, [(b"s/b", b"1")]))])
    assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "intent", b"s/b")
    sm.apply([log(encode_resolve(4, 320, 330))])
    [r] = sm.apply([log(encode_commit(6, 330, 340, [(b"s/b", b"1")]))])
    assert r.committed
    sm.close()
    store.close()


@pytest.mark.parametrize("earlier", [
    # a delete of a key that never existed: no change to what the range holds
    [encode_commit(1, 0, 200, [(b"s/c", None)])],
    # a write beyond the scan's limit: the first item the scan returned is unchanged
    [encode_commit(1, 0, 100, [(b"s/a", b"0")]), encode_commit(9, 0, 200, [(b"s/b", b"1")])],
])
def test_a_scanned_range_is_checked_the_same_whatever_the_apply_calls(tmp_path, earlier):
    """Replicas apply the log in differently sized calls: a serializable commit's range
    check must not depend on whether the entries before it are in the store yet."""
    last = encode_commit(2, 150, 300, [(b"x", b"1")], serializable=True,
                         spans=[[b"s/", b"s0", 1]])
    outcomes = []
    for n, split in enumerate((False, True)):
        store = MVCCStore(tmp_path / f"g{n}", map_size=1 << 20)
        sm = GroupStateMachine(store, max_txn_lifetime_ns=10**12)
        log = Log()
        entries = [log(c) for c in [*earlier, last]]
        results = ([r for e in entries for r in sm.apply([e])] if split
                   else sm.apply(entries))
        outcomes.append((results[-1].outcome, store.get(b"x", MAX_TS)))
        sm.close()
        store.close()
    assert outcomes[0] == outcomes[1]


def test_a_scanned_range_of_a_keyspace_that_moved_away_is_refused_like_a_read_key(tmp_path):
    """Once a keyspace has moved away (fenced at level 2), its writes go to its new home,
    which this group cannot check a range against: a serializable transaction that scanned
    it here before the move may not commit or prepare here, as one that read a key of it
    may not (else a key inserted at the new home after the scan is a phantom nobody sees)."""
    store = MVCCStore(tmp_path / "g", map_size=1 << 20)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**12)
    log = Log()
    moved, here = (7).to_bytes(4, "big"), (8).to_bytes(4, "big")
    span = [[moved + b"s/", moved + b"s0", None]]
    try:
        [r] = sm.apply([log(encode_commit(1, 0, 100, [(here + b"x", b"0")]))])
        assert r.committed
        sm.apply([log(encode_fence(200, 7, 1)), log(encode_fence(210, 7, 2))])
        [r] = sm.apply([log(encode_commit(2, 150, 300, [(here + b"x", b"1")],
                                          [moved + b"s/a"], serializable=True))])
        assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "moved", moved + b"s/a")
        [r] = sm.apply([log(encode_commit(3, 150, 310, [(here + b"x", b"1")],
                                          serializable=True, spans=span))])
        assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "moved", moved + b"s/")
        [r] = sm.apply([log(encode_prepare(4, 150, 320, [(here + b"x", b"1")], primary=7,
                                           deadline=10**9, serializable=True, spans=span))])
        assert (r.outcome, r.reason, r.key) == (Outcome.CONFLICT, "moved", moved + b"s/")
        assert store.get(here + b"x", MAX_TS) == b"0" and not sm.prepared()
        # Not serializable: what it scanned is not validated, and not refused either.
        [r] = sm.apply([log(encode_commit(5, 150, 330, [(here + b"y", b"1")], spans=span))])
        assert r.committed
    finally:
        sm.close()
        store.close()
