"""bench.raftkv: the replicated key-value fixture's state machine and proposal batching."""

from __future__ import annotations

import msgpack
import pytest

from bench.raftkv import KVStateMachine, _Batcher
from raft.types import Entry, ProposalDroppedError


def _entry(index: int, obj) -> Entry:
    return Entry(term=1, index=index, data=msgpack.packb(obj))


def test_a_batch_entry_applies_its_operations_in_order_like_single_entries():
    ops = [["put", b"a", b"1"], ["cas", b"a", [b"1", b"2"]], ["cas", b"a", [b"1", b"3"]],
           ["put", b"b", b"x"], ["cas", b"c", [None, b"y"]], ["nop", b"z", None]]
    single = KVStateMachine()
    single_results = single.apply([_entry(i + 1, op) for i, op in enumerate(ops)])
    batched = KVStateMachine()
    batched_results = batched.apply([_entry(1, ["batch", None, ops])])
    assert batched_results == [single_results] == [[None, True, False, None, True, None]]
    assert batched.data == single.data == {b"a": b"2", b"b": b"x", b"c": b"y"}


class _FakeNode:
    def __init__(self, fail: BaseException | None = None):
        self.proposed: list = []
        self.fail = fail

    def propose_nowait(self, data, on_done):
        if self.fail is not None:
            raise self.fail
        self.proposed.append((msgpack.unpackb(data), on_done))


def test_a_lone_operation_is_proposed_as_a_plain_entry():
    node = _FakeNode()
    b = _Batcher(node)
    got = []
    b.add("put", b"k", b"v", lambda r, e: got.append((r, e)))
    b.flush()
    b.flush()  # nothing left: proposes nothing
    [(data, on_done)] = node.proposed
    assert data == ["put", b"k", b"v"]
    on_done(None, None)
    assert got == [(None, None)]


def test_operations_of_one_round_share_an_entry_and_each_gets_its_own_result():
    node = _FakeNode()
    b = _Batcher(node)
    got = {}
    for i in range(3):
        b.add("cas", b"k%d" % i, [None, b"v"], lambda r, e, i=i: got.setdefault(i, (r, e)))
    b.flush()
    [(data, on_done)] = node.proposed
    assert data == ["batch", None, [["cas", b"k%d" % i, [None, b"v"]] for i in range(3)]]
    on_done([True, False, True], None)
    assert got == {0: (True, None), 1: (False, None), 2: (True, None)}


def test_a_failed_batch_fails_every_operation_in_it():
    boom = ProposalDroppedError("not the leader", 2)
    b = _Batcher(_FakeNode(fail=boom))
    got = []
    for i in range(2):
        b.add("put", b"k%d" % i, b"v", lambda r, e: got.append((r, e)))
    b.flush()
    assert got == [(None, boom), (None, boom)]
    node = _FakeNode()
    b = _Batcher(node)
    for i in range(2):
        b.add("put", b"k%d" % i, b"v", lambda r, e: got.append((r, e)))
    b.flush()
    lost = RuntimeError("lost")
    node.proposed[0][1](None, lost)
    assert got[2:] == [(None, lost), (None, lost)]


@pytest.mark.parametrize("limit", ["ops", "put bytes", "cas bytes"])
def test_a_batch_is_proposed_once_it_reaches_its_limit(limit):
    node = _FakeNode()
    b = _Batcher(node)
    big = b"v" * (_Batcher.MAX_BYTES // 2)
    if limit == "ops":
        for i in range(_Batcher.MAX_OPS + 1):
            b.add("put", b"k", b"v", lambda r, e: None)
    elif limit == "put bytes":
        for i in range(3):
            b.add("put", b"k", big, lambda r, e: None)
    else:  # a compare-and-set's expected and new values both count
        quarter = big[: _Batcher.MAX_BYTES // 4]
        for i in range(3):
            b.add("cas", b"k", [quarter, quarter], lambda r, e: None)
    assert len(node.proposed) == 1  # the full batch, at once
    b.flush()
    assert len(node.proposed) == 2
