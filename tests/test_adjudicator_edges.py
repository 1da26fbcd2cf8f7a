"""The adjudicator at its edges (ARCH §5.5): memory given back after aborted prepares, hot long
keys and huge batches; int and bytes subclasses taken as their values; the C table and the
reference compared where the key arena is compacted and shrunk under churn."""

from __future__ import annotations

import random

from engine._native import ffi
from engine.adjudicator import (
    MAX_KEY_SIZE,
    Adjudicator,
    ConflictReason,
    ReferenceAdjudicator,
    TxnRequest,
    Verdict,
)

OK = Verdict(True, None, None, 0)


class LyingInt(int):
    """An int whose own conversions and comparisons disagree with its value."""

    def __int__(self) -> int:
        return 2**64

    def __index__(self) -> int:
        return -1

    def __le__(self, other: object) -> bool:
        return True


class LyingBytes(bytes):
    """Bytes whose own conversion and length disagree with its contents."""

    def __bytes__(self) -> bytes:
        return b""

    def __len__(self) -> int:
        return MAX_KEY_SIZE + 50


# ----------------------------------------------------------------------------------- memory


def test_aborted_prepares_give_back_the_commit_table():
    """A prepare adds a commit slot for each key it writes; aborting it removes the key again,
    and the commit table shrinks as it does after a prune."""
    with Adjudicator(seed=1) as adj:
        empty = adj.stats().memory_bytes
        keys = [b"key:%08d" % i for i in range(60_000)]
        assert adj.adjudicate([TxnRequest(1, 10, 11, keys, prepare=True)]) == [OK]
        assert adj.stats().memory_bytes > 60_000 * 32
        adj.resolve(1, keys, None)
        assert len(adj) == 0
        assert adj.stats().memory_bytes < empty + 16_384


def test_a_batch_naming_hot_long_keys_does_not_pin_the_key_arena():
    """A batch reserves key-arena room for each long key of each request; when the same few keys
    are named again and again, that room is given back by the next prune or resolve."""
    keys = [b"%02d" % i * (MAX_KEY_SIZE // 2) for i in range(30)]
    with Adjudicator(seed=2) as adj:
        empty = adj.stats().memory_bytes
        batch = [TxnRequest(i + 1, 100 + i, 101 + i, keys) for i in range(2_000)]
        assert adj.adjudicate(batch) == [OK] * len(batch)
        assert adj.stats().memory_bytes > len(batch) * len(keys) * MAX_KEY_SIZE
        assert adj.prune(50) == 0 and len(adj) == len(keys)
        # What stays: the 30 keys, and the scratch of 2,000 requests kept for the next batch.
        assert adj.stats().memory_bytes < empty + (1 << 20)
        assert all(adj.last_commit_ts(k) == 100 + len(batch) for k in keys)

    with Adjudicator(seed=3) as adj:
        empty = adj.stats().memory_bytes
        batch = [TxnRequest(i + 1, 100, 101, keys, keys, True, True) for i in range(500)]
        verdicts = adj.adjudicate(batch)
        assert verdicts[0] == OK
        assert verdicts[1] == (False, ConflictReason.INTENT, keys[0], 101)
        assert adj.stats().memory_bytes > len(batch) * len(keys) * MAX_KEY_SIZE
        adj.resolve(1, keys, 102)
        assert adj.stats().memory_bytes < empty + (1 << 20)
        assert all(adj.last_commit_ts(k) == 102 and adj.intent(k) is None for k in keys)


def test_a_huge_batch_does_not_keep_its_verdict_buffer():
    """The rows the C code writes the rejections to are kept between calls only up to a bound,
    as the C code keeps its own scratch: a huge batch's are freed with it."""
    with Adjudicator(seed=4) as adj:
        kept = ffi.sizeof(adj._out)
        assert adj.adjudicate([TxnRequest(1, 10, 20, [b"hot"])]) == [OK]
        batch = [TxnRequest(i + 2, 10, 21, [b"hot"]) for i in range(100_000)]
        verdicts = adj.adjudicate(batch)
        assert verdicts == [(False, ConflictReason.WRITE_WRITE, b"hot", 20)] * len(batch)
        assert ffi.sizeof(adj._out) <= max(kept, 16_384 * 16)
        # The kept buffer still serves the batches that fit it.
        assert adj.adjudicate(batch[:3]) == verdicts[:3]


# ------------------------------------------------------------------------------ subclasses


def test_int_subclasses_count_as_their_int_value():
    """The value checked is the value used: not what an int subclass's own __int__, __index__
    or comparisons say (which used to pass the range check and then overflow, or be stored
    as another number)."""
    three = LyingInt(3)
    t = TxnRequest(three, LyingInt(3), LyingInt(5), [b"k"])
    assert (t.txn_id, t.read_ts, t.commit_ts) == (3, 3, 5)
    assert all(type(v) is int for v in (t.txn_id, t.read_ts, t.commit_ts))
    for make in (Adjudicator, ReferenceAdjudicator):
        with make(low_water=three, seed=LyingInt(9)) as adj:
            assert adj.low_water == 3
            adj.load([(b"a", LyingInt(7))])
            assert adj.last_commit_ts(b"a") == 7
            assert adj.adjudicate([t]) == [OK] and adj.last_commit_ts(b"k") == 5
            assert adj.adjudicate([TxnRequest(4, 3, 4, [b"p"], prepare=True)]) == [OK]
            adj.resolve(LyingInt(4), [b"p"], LyingInt(6))
            assert adj.last_commit_ts(b"p") == 6 and adj.intent(b"p") is None
            assert adj.prune(LyingInt(4)) == 0 and adj.low_water == 4


def test_bytes_subclasses_count_as_their_bytes():
    """A bytes subclass is its contents, not what its own __bytes__ or __len__ say (which used
    to smuggle an empty key past the checks: the reference took it, the C code refused it)."""
    key = LyingBytes(b"abc")
    t = TxnRequest(1, 1, 2, [key], [LyingBytes(b"r")], True)
    assert t.writes == (b"abc",) and t.reads == (b"r",)
    assert type(t.writes[0]) is bytes
    for make in (Adjudicator, ReferenceAdjudicator):
        with make() as adj:
            assert adj.adjudicate([t]) == [OK]
            assert adj.last_commit_ts(key) == 2 and adj.last_commit_ts(b"abc") == 2
            adj.load([(LyingBytes(b"xyz"), 9)])
            assert adj.last_commit_ts(b"xyz") == 9
            assert adj.adjudicate([TxnRequest(2, 1, 3, [b"abc"])]) == [
                (False, ConflictReason.WRITE_WRITE, b"abc", 2)]


# ------------------------------------------------------------------------ C against reference


def test_c_and_reference_agree_while_the_key_arena_is_compacted_and_shrunk():
    """Long keys in all three tables (commits, intents, locks), taken and dropped in rounds, so
    that the key arena is compacted and given back room again and again; the C table must
    decide as the reference does and keep every key's bytes."""
    rng = random.Random(17)
    keys = [b"%04d" % i * 40 for i in range(600)]  # 160 bytes: kept in the arena
    with Adjudicator(seed=5) as c:
        ref = ReferenceAdjudicator()
        ts = 1_000
        for round_ in range(12):
            hot = rng.sample(keys, 20)
            batch = []
            for i in range(300):
                ts += 1
                writes = rng.sample(keys, 3) + [rng.choice(hot)]
                reads = rng.sample(keys, 2)
                batch.append(TxnRequest(round_ * 1_000 + i + 1, ts - 5, ts, writes, reads,
                                        True, i % 3 == 0))
            verdicts = c.adjudicate(batch)
            assert verdicts == ref.adjudicate(batch), round_
            for t, v in zip(batch, verdicts):
                if v.ok and t.prepare:
                    commit_ts = None if t.txn_id % 2 else ts + 1
                    c.resolve(t.txn_id, [*t.writes, *t.reads], commit_ts)
                    ref.resolve(t.txn_id, [*t.writes, *t.reads], commit_ts)
            low_water = ts - rng.randrange(0, 400)
            assert c.prune(low_water) == ref.prune(low_water), round_
            for key in keys:
                assert c.last_commit_ts(key) == ref.last_commit_ts(key), (round_, key)
                assert c.intent(key) == ref.intent(key), (round_, key)
                assert c.locks(key) == ref.locks(key), (round_, key)
            assert len(c) == len(ref)
