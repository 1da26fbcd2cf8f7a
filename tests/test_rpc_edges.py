"""Edge cases of engine.rpc: what a misbehaving peer sends, and deadlines meeting replies."""

from __future__ import annotations

import logging
import struct

import pytest
import trio

from engine.rpc import (
    CallTimeoutError,
    ConnectionLostError,
    connect_rpc,
    encode_error,
)

from test_rpc import GUARD_S, HOST, echo, start


async def test_a_huge_connection_error_from_the_server_is_cut_to_a_few_words(nursery, caplog):
    # An error with call id 0 ends the connection; its code and message go into the close
    # reason, the log and the error of every call on it: they are cut, however large.
    huge = "m" * (1 << 20)
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]

    async def refuse(stream):
        await stream.receive_some(1 << 16)
        await stream.send_all(encode_error(0, 0, "c" * 5000, huge))
        await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, refuse, listeners)
    caplog.set_level(logging.WARNING, logger="engine.rpc")
    async with connect_rpc(HOST, port) as conn:
        with trio.fail_after(GUARD_S), pytest.raises(ConnectionLostError) as caught:
            await conn.call("echo", 1)
        await conn.wait_closed()
    assert len(str(caught.value)) < 1000
    assert "mmm" in str(caught.value)
    # The cut is marked, with what was left out: a reader must not take it for the whole.
    assert "c" * 200 + f"... ({5000 - 200} more characters)" in str(caught.value)
    assert "m" * 200 + f"... ({(1 << 20) - 200} more characters)" in str(caught.value)
    records = [r.getMessage() for r in caplog.records if r.name == "engine.rpc"]
    assert records and all(len(m) < 1000 for m in records)


async def test_replies_and_cancellations_at_the_very_deadline_keep_the_connection(
        nursery, autojump_clock):
    # A reply, a cancelled caller and the deadline watchdog may all act at the same instant:
    # each call ends once, by one of them, and the connection goes on.
    async def at(payload, ctx):
        await trio.sleep_until(payload)
        return payload

    port = await start(nursery, {"at": at, "echo": echo})
    async with connect_rpc(HOST, port) as conn:
        outcomes = []

        async def call(deadline, cancel_at):
            try:
                with trio.move_on_at(cancel_at):
                    outcomes.append(await conn.call("at", deadline, deadline=deadline))
                    return
                outcomes.append("cancelled")
            except CallTimeoutError:
                outcomes.append("timeout")

        t0 = trio.current_time()
        async with trio.open_nursery() as callers:
            for i in range(50):
                deadline = t0 + 1 + i % 5
                callers.start_soon(call, deadline, deadline if i % 2 else deadline + 1)
        assert len(outcomes) == 50
        assert not conn.closed
        assert await conn.call("echo", "still") == "still"


async def test_a_huge_declared_length_closes_that_connection_before_any_body(nursery):
    port = await start(nursery, {"echo": echo})
    with trio.fail_after(GUARD_S):
        stream = await trio.open_tcp_stream(HOST, port)
        await stream.send_all(struct.pack(">I", 0xFFFFFFFF))
        while await stream.receive_some(1 << 16):
            pass
        await stream.aclose()
        async with connect_rpc(HOST, port) as conn:
            assert await conn.call("echo", 1) == 1
