"""Read locks in the adjudicator (ARCH §5.5): the C table and the Python reference, fed the same
interleaved commits, prepares that write and read, re-prepares and resolves, decide the same and
hold the same commit, intent and lock count for every key after every step; and a group state
machine that restarts, its adjudicator rebuilt from the side table, decides as one that does
not."""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.adjudicator import MAX_KEY_SIZE, Adjudicator, ReferenceAdjudicator, TxnRequest
from engine.group import GroupStateMachine, encode_commit, encode_prepare, encode_resolve
from engine.mvcc import MVCCStore
from raft.types import Entry

# Short keys live in the slots, longer ones in the key arena (one copy per table).
KEYS = [b"a", b"b", b"c", b"d", b"k" * 17, b"z" * MAX_KEY_SIZE]
keys_st = st.lists(st.sampled_from(KEYS), max_size=3)


def lookup(adj, key: bytes) -> tuple:
    return adj.last_commit_ts(key), adj.intent(key), adj.locks(key)


def assert_same(c: Adjudicator, ref: ReferenceAdjudicator, keys, where) -> None:
    for key in keys:
        assert lookup(c, key) == lookup(ref, key), (where, key)
    cs, rs = c.stats(), ref.stats()
    assert (cs.keys, cs.intents, cs.locks, cs.low_water) == (
        rs.keys, rs.intents, rs.locks, rs.low_water), where


class SameLocks(RuleBasedStateMachine):
    """Transactions are prepared (mostly serializable, so their reads are locked), prepared again
    with the same or other keys, resolved on all, some or none of their keys, and interleaved
    with one-phase commits; prunes move the low water under them."""

    @initialize(seed=st.integers(0, 2**64 - 1))
    def start(self, seed):
        self.c = Adjudicator(seed=seed)
        self.ref = ReferenceAdjudicator(seed=seed)
        self.ts = 10
        self.prepared: dict[int, set[bytes]] = {}  # txn id -> every key it prepared

    def teardown(self):
        if hasattr(self, "c"):
            self.c.close()

    def _decide(self, txn: TxnRequest) -> None:
        verdicts = self.c.adjudicate([txn])
        assert verdicts == self.ref.adjudicate([txn]), txn
        if verdicts[0].ok and txn.prepare:
            self.prepared.setdefault(txn.txn_id, set()).update(txn.writes, txn.reads)

    @rule(txn_id=st.integers(1, 5), writes=keys_st, reads=keys_st, age=st.integers(0, 6),
          serializable=st.integers(0, 4).map(bool))
    def prepare(self, txn_id, writes, reads, age, serializable):
        self.ts += 1
        self._decide(TxnRequest(txn_id, self.ts - 1 - age, self.ts, writes, reads,
                                serializable, prepare=True))

    @precondition(lambda self: self.prepared)
    @rule(data=st.data(), swap=st.booleans())
    def re_prepare(self, data, swap):
        """Prepared again, maybe with what it read now written and what it wrote now read."""
        txn_id = data.draw(st.sampled_from(sorted(self.prepared)))
        keys = sorted(self.prepared[txn_id])
        split = data.draw(st.integers(0, len(keys)))
        writes, reads = keys[:split], keys[split:]
        if swap:
            writes, reads = reads, writes
        self.ts += 1
        self._decide(TxnRequest(txn_id, self.ts - 1, self.ts, writes, reads, True, True))

    @rule(txn_id=st.integers(1, 8), writes=keys_st, reads=keys_st, age=st.integers(0, 6),
          serializable=st.booleans())
    def commit(self, txn_id, writes, reads, age, serializable):
        self.ts += 1
        self._decide(TxnRequest(txn_id, self.ts - 1 - age, self.ts, writes, reads, serializable))

    @precondition(lambda self: self.prepared)
    @rule(data=st.data(), committed=st.booleans(), some=st.booleans())
    def resolve(self, data, committed, some):
        txn_id = data.draw(st.sampled_from(sorted(self.prepared)))
        keys = sorted(self.prepared[txn_id])
        if some and keys:
            keys = data.draw(st.lists(st.sampled_from(keys), max_size=len(keys)))
        else:
            del self.prepared[txn_id]
        self.ts += 1
        commit_ts = self.ts if committed else None
        self.c.resolve(txn_id, keys, commit_ts)
        self.ref.resolve(txn_id, keys, commit_ts)

    @rule(txn_id=st.integers(1, 8), keys=keys_st)
    def resolve_unprepared(self, txn_id, keys):
        """Resolving keys a transaction holds nothing on (or another transaction's) is a no-op."""
        self.c.resolve(txn_id, keys, self.ts)
        self.ref.resolve(txn_id, keys, self.ts)

    @rule(back=st.integers(0, 8))
    def prune(self, back):
        assert self.c.prune(self.ts - back) == self.ref.prune(self.ts - back)

    @invariant()
    def same_state(self):
        if hasattr(self, "c"):
            assert_same(self.c, self.ref, KEYS, "state")


SameLocks.TestCase.settings = settings(
    max_examples=200, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_c_and_reference_hold_the_same_locks = SameLocks.TestCase


def test_c_and_reference_agree_on_many_locks_and_long_keys():
    """Many transactions locking the same few hundred keys, half of them long: the lock table
    grows past its first size and shrinks back, its clusters hold several holders of one key,
    and released long keys make the key arena compact."""
    rng = random.Random(95)
    keys = [b"%d" % i for i in range(150)] + [b"long-%0200d" % i for i in range(150)]
    with Adjudicator(seed=7) as c:
        ref = ReferenceAdjudicator()
        ts = 100
        prepared: dict[int, list[bytes]] = {}
        most_locks = 0
        for step in range(1200):
            op = rng.random()
            if op < 0.55:
                batch = []
                for _ in range(rng.randrange(1, 8)):
                    ts += 1
                    if prepared and rng.random() < 0.15:
                        txn_id = rng.choice(list(prepared))  # prepared again, keys reshuffled
                        again = prepared[txn_id]
                        cut = rng.randrange(len(again) + 1)
                        writes, reads = again[:cut], again[cut:]
                    else:
                        txn_id = rng.randrange(1, 400)
                        writes = rng.sample(keys, rng.randrange(0, 3))
                        reads = rng.sample(keys, rng.randrange(0, 6))
                    batch.append(TxnRequest(txn_id, ts - rng.randrange(1, 30), ts, writes, reads,
                                            serializable=rng.random() < 0.9,
                                            prepare=rng.random() < 0.6))
                verdicts = c.adjudicate(batch)
                assert verdicts == ref.adjudicate(batch), step
                for t, v in zip(batch, verdicts):
                    if v.ok and t.prepare:
                        held = prepared.setdefault(t.txn_id, [])
                        held += [k for k in (*t.writes, *t.reads) if k not in held]
            elif op < 0.85 and prepared:
                txn_id = rng.choice(list(prepared))
                held = prepared.pop(txn_id)
                commit_ts = None if rng.random() < 0.3 else ts + 1
                c.resolve(txn_id, held, commit_ts)
                ref.resolve(txn_id, held, commit_ts)
            elif op < 0.95:
                low_water = ts - rng.randrange(0, 100)
                assert c.prune(low_water) == ref.prune(low_water), step
            else:
                items = [(rng.choice(keys), ts - rng.randrange(0, 50)) for _ in range(10)]
                c.load(items)
                ref.load(items)
            most_locks = max(most_locks, c.stats().locks)
            if step % 25 == 0:
                assert_same(c, ref, keys, step)
        assert most_locks > 64  # the lock table outgrew its first size
        for txn_id, held in list(prepared.items()):
            c.resolve(txn_id, held, None)
            ref.resolve(txn_id, held, None)
        assert_same(c, ref, keys, "end")
        assert c.stats().locks == 0 and c.stats().intents == 0


def test_a_group_restored_from_its_side_table_keeps_the_same_locks(tmp_path):
    """A group state machine restarted between entries (its adjudicator rebuilt from the
    prepared transactions' records: intents written, locks shared) decides every entry as one
    that never restarted, and holds the same intents and locks."""
    rng = random.Random(5)
    keys = [b"a", b"b", b"c", b"d", b"long-" + b"k" * 40]
    entries, ts, prepared = [], 100, set()
    for _ in range(160):
        ts += 10
        op = rng.random()
        if op < 0.45:
            txn_id = rng.randrange(1, 40)
            writes = [(k, b"%d" % ts) for k in rng.sample(keys, rng.randrange(0, 2))]
            entries.append(encode_prepare(
                txn_id, ts - rng.randrange(1, 40), ts, writes, rng.sample(keys, rng.randrange(3)),
                rng.sample(keys, rng.randrange(3)), primary=100, deadline=10**12,
                serializable=rng.random() < 0.7))
            prepared.add(txn_id)
        elif op < 0.75 and prepared:
            txn_id = rng.choice(sorted(prepared))
            prepared.discard(txn_id)
            entries.append(encode_resolve(txn_id, ts, rng.choice([0, ts + 5])))
        else:
            entries.append(encode_commit(
                1000 + len(entries), ts - rng.randrange(1, 40), ts,
                [(k, b"v") for k in rng.sample(keys, rng.randrange(1, 3))],
                rng.sample(keys, rng.randrange(3)), serializable=rng.random() < 0.5))

    def state(sm):
        adj = sm.adjudicator
        return [(adj.intent(k), adj.locks(k)) for k in keys]

    def run(restarts: set[int]) -> list:
        path = tmp_path / f"g{len(restarts)}"
        store = MVCCStore(path, map_size=1 << 22)
        sm = GroupStateMachine(store, max_txn_lifetime_ns=10**12)
        seen = []
        try:
            for index, data in enumerate(entries, 1):
                if index in restarts:
                    sm.close()
                    store.close()
                    store = MVCCStore(path, map_size=1 << 22)
                    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**12)
                [r] = sm.apply([Entry(term=1, index=index, data=data)])
                # A conflict with locks reports the latest prepare timestamp of the locks taken
                # since the key had none: history a restart does not keep (only the holders).
                held = r.reason == "intent" and sm.adjudicator.intent(r.key) is None
                seen.append(((r.outcome, r.reason, r.key, None if held else r.conflict_ts),
                             state(sm)))
        finally:
            sm.close()
            store.close()
        return seen

    steady = run(set())
    assert max(lock for _, held in steady for _, lock in held) >= 2  # shared by two or more
    assert run(set(range(2, len(entries), 7))) == steady
