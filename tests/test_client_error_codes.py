"""The client library (engine/client.py) against a node that answers an error code the client
does not know: ``internal`` (its handler failed) or one of a newer version. Each must end as
one of the library's errors, naming the node and the method, never as a raw RemoteError.

The node is the fake of test_client_faults.
"""

from __future__ import annotations

import pytest
import trio

import engine
from engine.errors import AmbiguousCommitError, TransactionClosedError, UnavailableError
from engine.rpc import RemoteError
from test_client_faults import GUARD_S, TIMEOUT_S, FakeNode


async def fail(p, ctx):
    raise ValueError("a bug in the handler")


async def test_an_error_this_client_does_not_know_is_unavailable_naming_node_and_method(
        nursery):
    # The node's ``internal`` (its handler failed), or a code of a newer version, reached
    # the caller as a raw RemoteError, none of the library's documented errors.
    node = FakeNode(nursery)

    async def read(p, ctx):
        raise RemoteError("some_new_code", "from a newer version")

    node.handlers.update(read=read, scan=fail)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(
                UnavailableError, match="node 1 failed 'read' .some_new_code: from a newer"):
            await db.read("ks", b"k")
        with trio.fail_after(GUARD_S), pytest.raises(
                UnavailableError, match="node 1 failed 'read' .some_new_code"):
            await db.read("ks", b"k", staleness="bounded:10")
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(
                    UnavailableError, match="node 1 failed 'scan' .internal: ValueError"):
                await tx.scan("ks")


async def test_a_commit_failing_with_an_error_this_client_does_not_know_is_ambiguous(nursery):
    # A commit whose handler failed may have proposed its writes first: raised as a raw
    # RemoteError, it was not counted as an unknown outcome.
    node = FakeNode(nursery)
    node.handlers["commit"] = fail
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        tx = db.transaction()
        await tx.put("ks", b"k", b"v")
        with trio.fail_after(GUARD_S), pytest.raises(
                AmbiguousCommitError, match="node 1 failed the commit .internal: ValueError"):
            await tx.commit()
        with pytest.raises(TransactionClosedError, match="unknown outcome"):
            await tx.get("ks", b"k")
        # A node that has no such method did not run it: nothing was committed.
        del node.handlers["commit"]
        tx = db.transaction()
        await tx.put("ks", b"k", b"v")
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 failed 'commit'"):
            await tx.commit()
