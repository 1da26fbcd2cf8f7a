"""The client library (engine/client.py, engine/blocking.py) given arguments of the wrong type
or value: refused at the call, as an InvalidArgumentError naming the argument, before anything
is sent; never as a TypeError from deep inside, nor silently replaced by a default.

The node is the fake of test_client_faults: ``serve_rpc`` with just enough handlers.
"""

from __future__ import annotations

import pytest
import trio

import engine
from engine.blocking import connect_blocking
from engine.errors import InvalidArgumentError
from engine.placement import encode_key
from test_client_faults import GUARD_S, TIMEOUT_S, FakeNode


@pytest.mark.parametrize("reverse", ["yes", "", None, 0.5, [1]])
async def test_a_scan_reverse_that_is_not_a_bool_is_refused_at_the_call(nursery, reverse):
    # ``reverse`` reached sorted() only once the range had been read, and failed there as a
    # TypeError ("'str' object cannot be interpreted as an integer").
    node = FakeNode(nursery)
    asked = []

    async def scan(p, ctx):
        asked.append(p)
        return {"ts": 5, "until": 5, "items": [[encode_key(1, b"a"), b"1"]]}

    node.handlers["scan"] = scan
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(
                    InvalidArgumentError, match=r"reverse must be a bool, not "):
                await tx.scan("ks", reverse=reverse)
            assert asked == []
            assert await tx.scan("ks", reverse=True) == [(b"a", b"1")]


async def test_a_blocking_scan_reverse_that_is_not_a_bool_is_refused(nursery):
    node = FakeNode(nursery)

    async def scan(p, ctx):
        return {"ts": 5, "until": 5, "items": [[encode_key(1, b"a"), b"1"]]}

    node.handlers["scan"] = scan
    await node.start()

    def run() -> None:
        with connect_blocking([node.address], request_timeout_s=TIMEOUT_S) as db:
            with db.transaction() as tx:
                with pytest.raises(InvalidArgumentError, match=r"reverse must be a bool"):
                    tx.scan("ks", reverse="no")

    with trio.fail_after(GUARD_S):
        await trio.to_thread.run_sync(run)


@pytest.mark.parametrize("region", ["", [], 0, False])
async def test_connect_refuses_a_region_that_is_not_none_rather_than_taking_the_default(
        nursery, region):
    # Only None means "the region of the node that answers": an empty name (an unset
    # environment variable, say) connected as a client of whichever region answered, and
    # served its stale reads from there.
    node = FakeNode(nursery)
    await node.start()
    with trio.fail_after(GUARD_S), pytest.raises(InvalidArgumentError, match=r"region"):
        async with engine.connect([node.address], region=region, request_timeout_s=TIMEOUT_S):
            pass  # pragma: no cover


@pytest.mark.parametrize("nodes", [None, 7101, b"127.0.0.1:7101"])
async def test_connect_refuses_nodes_that_are_not_a_list_of_addresses(nodes):
    # None or an int failed as a TypeError ("'NoneType' object is not iterable"); bytes were
    # taken as a list of ints, each refused as an address "49".
    with trio.fail_after(GUARD_S), pytest.raises(
            InvalidArgumentError, match=r'nodes must be a list of "host:port" addresses'):
        async with engine.connect(nodes, request_timeout_s=TIMEOUT_S):
            pass  # pragma: no cover


@pytest.mark.parametrize("fn", [None, "body", 3])
async def test_run_transaction_refuses_what_is_not_a_function(nursery, fn):
    # Both raised a bare TypeError ("'NoneType' object is not callable") from inside the
    # retry loop, the blocking one after opening a transaction for it.
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(
                InvalidArgumentError, match="run_transaction takes an async function"):
            await db.run_transaction(fn)

    def run() -> None:
        with connect_blocking([node.address], request_timeout_s=TIMEOUT_S) as db:
            with pytest.raises(InvalidArgumentError, match="run_transaction takes a function"):
                db.run_transaction(fn)

    with trio.fail_after(GUARD_S):
        await trio.to_thread.run_sync(run)
