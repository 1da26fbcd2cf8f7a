"""The client library (engine/client.py) against a node whose answers are malformed: a field
missing or of the wrong type. Each must end as one of the library's errors, never as a
TypeError or KeyError from deep inside.

The node is the fake of test_client_faults: ``serve_rpc`` with just enough handlers.
"""

from __future__ import annotations

import pytest
import trio

import engine
from engine.errors import AmbiguousCommitError, TransactionClosedError, UnavailableError
from test_client_faults import GUARD_S, TIMEOUT_S, FakeNode

BAD_ANSWERS = [None, [6], {}, {"ts": "6"}, {"ts": 6.0}, {"ts": True}, {"ts": [6]}]


@pytest.mark.parametrize("answer", BAD_ANSWERS)
async def test_a_commit_answered_in_a_form_this_client_cannot_read_is_ambiguous(nursery,
                                                                                 answer):
    # The node ran the commit, then answered without an int "ts": the commit raised KeyError
    # or TypeError, and the transaction counted as failed (nothing written) though it may
    # have committed; a "ts" of another type became the transaction's commit_ts.
    node = FakeNode(nursery)
    ran = []

    async def commit(p, ctx):
        ran.append(p["group"])
        return answer

    node.handlers["commit"] = commit
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        tx = db.transaction()
        await tx.put("ks", b"k", b"v")
        with trio.fail_after(GUARD_S), pytest.raises(AmbiguousCommitError,
                                                     match="may or may not have committed"):
            await tx.commit()
        assert ran == [1]
        assert tx.commit_ts == 0
        with pytest.raises(TransactionClosedError, match="unknown outcome"):
            await tx.get("ks", b"k")


@pytest.mark.parametrize("answer", [*BAD_ANSWERS, {"ts": 5, "values": None},
                                    {"ts": 5, "values": {b"k": None}}])
@pytest.mark.parametrize("staleness", [None, "bounded:10"])
async def test_a_read_answered_in_a_form_this_client_cannot_read_is_unavailable(
        nursery, answer, staleness):
    # A read answered without an int "ts" and a list of "values" raised KeyError or
    # TypeError; a transaction took a "ts" of another type as its snapshot, and failed
    # later, in another call, comparing it.
    node = FakeNode(nursery)

    async def read(p, ctx):
        return answer

    node.handlers["read"] = read
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="another version"):
            await db.read("ks", b"k", staleness=staleness)
        tx = db.transaction()
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="another version"):
            await tx.get("ks", b"k")
        assert tx.read_ts == 0


@pytest.mark.parametrize("answer", [None, {"ts": 5}, {"ts": "5", "items": []},
                                    {"ts": 5, "items": None}])
async def test_a_scan_answered_in_a_form_this_client_cannot_read_is_unavailable(nursery,
                                                                                 answer):
    node = FakeNode(nursery)

    async def scan(p, ctx):
        return answer

    node.handlers["scan"] = scan
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                         match="another version"):
                await tx.scan("ks")
