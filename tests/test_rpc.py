"""The RPC layer (engine/rpc.py): the frame codec, then a real server and client on loopback.

The codec tests are pure (no trio, no sockets). The others run a server on 127.0.0.1, port 0,
and order every step with events; none of them waits on the clock.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
from functools import partial

import msgpack
import pytest
import trio
import trio.testing

from engine._native import crc32c
from engine.errors import InvalidArgumentError, MeridianError, RecordTooLargeError
from engine.rpc import (
    BAD_VERSION,
    CLOCK_OFFSET,
    DEFAULT_MAX_FRAME,
    ERROR,
    INTERNAL,
    REQUEST,
    RESPONSE,
    RESPONSE_TOO_LARGE,
    RPC_VERSION,
    UNKNOWN_METHOD,
    CallTimeoutError,
    ConnectionLostError,
    LARGE_FRAME_BYTES,
    FrameDecoder,
    NotSentError,
    RemoteError,
    RpcConnection,
    RpcFrame,
    RpcWireError,
    connect_rpc,
    encode_error,
    encode_request,
    encode_response,
    serve_rpc,
)
from engine.rpc import _ReceiveBudget

HOST = "127.0.0.1"
GUARD_S = 10  # only ever reached by a bug that hangs


def unchecked(body: bytes) -> bytes:
    """A length prefix around any bytes (no CRC appended)."""
    return struct.pack(">I", len(body)) + body


def frame_of(body: object) -> bytes:
    """A frame around any msgpack value; an array (of at most 14 elements) gets its CRC
    appended as one more element, as the encoder does, so that the rest of it is checked."""
    data = msgpack.packb(body, use_bin_type=True)
    if type(body) is list and len(body) < 15:
        data = bytes((data[0] + 1,)) + data[1:]
        data += struct.pack(">BI", 0xCE, crc32c(data))
    return unchecked(data)


V = RPC_VERSION


def decode_one(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> RpcFrame:
    decoder = FrameDecoder(max_frame)
    decoder.feed(data)
    frame = decoder.next_frame()
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    return frame


# --- the codec ------------------------------------------------------------------------------------


def test_worked_example_of_the_module_docstring():
    frame = encode_request(1, "echo", 0, "hi")
    assert frame == bytes.fromhex(
        "00000012 97020001 a4 6563686f 00 a26869 ce05e99746".replace(" ", ""))
    assert decode_one(frame) == RpcFrame(REQUEST, 1, 0, "hi", "echo")


@pytest.mark.parametrize("payload", [
    None, 0, -1, 2**64 - 1, 1.5, True, "text", b"\x00bytes", [1, [2, [3]]],
    {"a": 1, 2: b"x", None: [True]}, {b"k": {"nested": {}}},
])
def test_frames_round_trip(payload):
    assert decode_one(encode_request(7, "m", 2**64 - 1, payload)) == RpcFrame(
        REQUEST, 7, 2**64 - 1, payload, "m")
    assert decode_one(encode_response(8, 5, payload)) == RpcFrame(RESPONSE, 8, 5, payload)
    error = decode_one(encode_error(9, 6, "not_leader", "elsewhere", retryable=True,
                                    details={"leader": 3, "payload": payload}))
    assert error == RpcFrame(ERROR, 9, 6, {"code": "not_leader", "message": "elsewhere",
                                           "retryable": True,
                                           "details": {"leader": 3, "payload": payload}})


def test_decoder_takes_a_stream_split_anywhere():
    frames = [encode_request(i, "m", i, "x" * i) for i in range(1, 30)]
    stream = b"".join(frames)
    rng = random.Random(7)
    decoder = FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 9)
        decoder.feed(stream[pos:pos + step])
        pos += step
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert [f.call_id for f in out] == list(range(1, 30))
    assert decoder.buffered == 0


def test_an_oversized_length_is_refused_before_its_body_arrives():
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(struct.pack(">I", 101))
    with pytest.raises(RpcWireError, match="exceeds the limit of 100"):
        decoder.next_frame()
    with pytest.raises(RpcWireError):  # stays failed
        decoder.next_frame()


@pytest.mark.parametrize("data, match", [
    (struct.pack(">I", 0), "empty frame"),
    (struct.pack(">I", 1) + b"\xc1", "not valid msgpack"),
    (unchecked(msgpack.packb([V, 0, 1, "m", 0, None])[:-1] + b"\xc1"), "not valid msgpack"),
    (struct.pack(">I", 2) + b"\x90\x90", "not valid msgpack"),  # trailing bytes
    (frame_of({"version": 1}), "expected an array"),
    (unchecked(msgpack.packb([])), "expected an array"),
    (unchecked(msgpack.packb([V, 0, 1, "m", 0, None])), "does not end with its CRC"),
    (frame_of([V, 0]), "array of 6 or 7"),
    (frame_of([V, 0, -1, "m", 0, None]), "call_id"),
    (frame_of([V, 0, True, "m", 0, None]), "call_id"),
    (frame_of([V, 0, "1", "m", 0, None]), "call_id"),
    (frame_of([V, 3, 1, 0, None]), "kind"),
    (frame_of([V, False, 1, "m", 0, None]), "kind"),
    (frame_of([V, 0, 1, "m", 0]), "a request is an array of 7, got 6"),
    (frame_of([V, 0, 1, b"m", 0, None]), "method"),
    (frame_of([V, 0, 1, "m", -5, None]), "ts"),
    (frame_of([V, 0, 1, "m", 1.0, None]), "ts"),
    (frame_of([V, 1, 1, 0, None, None]), "a response or error is an array of 6, got 7"),
    (frame_of([V, 2, 1, 0, "boom"]), "error: expected a map"),
    (frame_of([V, 2, 1, 0, {"code": "x", "message": "y", "retryable": 0, "details": {}}]),
     "error.retryable"),
    (frame_of([V, 2, 1, 0, {"code": "x", "message": "y", "retryable": False}]),
     "error.details"),
    (frame_of([V, 0, 1, "m", 0, msgpack.ExtType(5, b"x")]), "ext type 5"),
    (frame_of([V, 0, 1, "m", 0, {(1, 2): 3}]), "not valid msgpack"),  # unhashable key
])
def test_malformed_frames_are_refused(data, match):
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(RpcWireError, match=match) as info:
        decoder.next_frame()
    assert not info.value.bad_version
    assert isinstance(info.value, MeridianError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("body, call_id", [
    ([1, 0, 7, "m", 0, None], 7),  # version 1: no CRC
    ([V + 1, 0, 7, "m", 0, None, "new field"], 7),
    (["1", 0, 7, "m", 0, None], 7),
    ([V + 1, 0, "seven"], None),
    ([V + 1], None),
])
def test_another_version_is_reported_with_its_call_id_when_readable(body, call_id):
    decoder = FrameDecoder()
    decoder.feed(unchecked(msgpack.packb(body)))
    with pytest.raises(RpcWireError, match="unsupported RPC version") as info:
        decoder.next_frame()
    assert info.value.bad_version
    assert info.value.call_id == call_id


@pytest.mark.parametrize("body", [
    [V, b"\x00" * (1 << 20), 1, "m", 0, None],  # kind
    [V, "k" * (1 << 20), 1, "m", 0, None],
    [b"\x00" * (1 << 20), 0, 7, "m", 0, None],  # version
    [list(range(1 << 16)), 0, 7, "m", 0, None],
])
def test_a_bad_frame_is_described_in_a_few_words_however_large_its_values(body):
    # The message is logged by the server, and sent back for another version: a peer must
    # not make it as large as its frame (a megabyte of zeros would be four of text).
    decoder = FrameDecoder()
    decoder.feed(frame_of(body))
    with pytest.raises(RpcWireError, match="kind|version") as info:
        decoder.next_frame()
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("call", [
    lambda: encode_request(-1, "m", 0, None),
    lambda: encode_request(2**64, "m", 0, None),
    lambda: encode_request(1, "m", True, None),
    lambda: encode_request(1, b"m", 0, None),
    lambda: encode_request(1, "m", 0, object()),
    lambda: encode_response(1, -1, None),
    lambda: encode_error(1, 0, "x", details={"o": object()}),
])
def test_encoders_refuse_what_no_decoder_would_accept(call):
    with pytest.raises(InvalidArgumentError):
        call()


# --- helpers for the live tests -------------------------------------------------------------------


async def echo(payload, ctx):
    return payload


async def start(nursery, handlers, **kwargs) -> int:
    return await nursery.start(partial(serve_rpc, handlers, HOST, 0, **kwargs))


def start_calls(nursery, conn, method: str, n: int, results: list) -> None:
    """Calls ``method`` with 0..n-1 at once, each in a task of ``nursery``; the results are
    appended to ``results`` as they come."""
    async def call(i):
        results.append(await conn.call(method, i))

    for i in range(n):
        nursery.start_soon(call, i)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := await stream.receive_some(1 << 16):
            data += chunk
    except trio.BrokenResourceError:
        pass  # closed with our bytes unread: a reset
    return data


# --- round trips ----------------------------------------------------------------------------------


async def test_echo_round_trip(nursery):
    port = await start(nursery, {"echo": echo})
    payload = {"key": b"\x00\xff", "n": 2**63, "list": [1, "two", None], 3: 4.5}
    async with connect_rpc(HOST, port) as conn:
        assert await conn.call("echo", payload) == payload
        assert await conn.call("echo") is None
        assert not conn.closed
    assert conn.closed


async def test_tcp_nodelay_is_on(nursery):
    port = await start(nursery, {"echo": echo})
    async with connect_rpc(HOST, port) as conn:
        sock = conn._wire.stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_context_has_the_peer_and_a_per_connection_dict(nursery):
    async def count(payload, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return [ctx.peer[0], ctx.peer[1], ctx.state["n"], ctx.method, ctx.call_id]

    port = await start(nursery, {"count": count})
    async with connect_rpc(HOST, port) as conn:
        local_port = conn._wire.stream.socket.getsockname()[1]
        assert await conn.call("count") == [HOST, local_port, 1, "count", 1]
        assert await conn.call("count") == [HOST, local_port, 2, "count", 2]
    async with connect_rpc(HOST, port) as conn:
        assert (await conn.call("count"))[2] == 1


async def test_concurrent_calls_answered_out_of_order_reach_their_callers(nursery):
    n = 24
    gates = [trio.Event() for _ in range(n)]
    entered = 0
    all_entered = trio.Event()

    async def wait(i, ctx):
        nonlocal entered
        entered += 1
        if entered == n:
            all_entered.set()
        await gates[i].wait()
        return {"i": i, "square": i * i}

    port = await start(nursery, {"wait": wait})
    order = list(range(n))
    random.Random(3).shuffle(order)
    returned = []
    answered = [trio.Event() for _ in range(n)]

    async with connect_rpc(HOST, port) as conn:
        async def caller(i):
            result = await conn.call("wait", i)
            assert result == {"i": i, "square": i * i}
            returned.append(i)
            answered[i].set()

        async with trio.open_nursery() as callers:
            for i in range(n):
                callers.start_soon(caller, i)
            await all_entered.wait()  # every request is in flight at once
            for i in order:
                gates[i].set()
                await answered[i].wait()
    assert returned == order


# --- errors ---------------------------------------------------------------------------------------


async def test_a_remote_error_reaches_the_caller_with_its_fields(nursery):
    async def refuse(payload, ctx):
        raise RemoteError("not_leader", "try node 3", retryable=True,
                          details={"leader": 3, "addr": [HOST, 7003]})

    port = await start(nursery, {"refuse": refuse, "echo": echo})
    async with connect_rpc(HOST, port) as conn:
        with pytest.raises(RemoteError) as info:
            await conn.call("refuse")
        err = info.value
        assert (err.code, err.message, err.retryable) == ("not_leader", "try node 3", True)
        assert err.details == {"leader": 3, "addr": [HOST, 7003]}
        assert isinstance(err, MeridianError)
        assert str(err) == "not_leader: try node 3"
        assert await conn.call("echo", 1) == 1  # the connection is still good


async def test_any_other_exception_is_internal_and_logged(nursery, caplog):
    async def broken(payload, ctx):
        raise KeyError("boom")

    port = await start(nursery, {"broken": broken, "echo": echo})
    with caplog.at_level(logging.ERROR, logger="engine.rpc"):
        async with connect_rpc(HOST, port) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("broken")
            assert await conn.call("echo", 2) == 2
    err = info.value
    assert err.code == INTERNAL and not err.retryable
    assert "KeyError" in err.message and "boom" in err.message
    assert err.details == {"type": "KeyError"}
    logged = [r for r in caplog.records if r.exc_info and "broken" in r.getMessage()]
    assert logged and logged[0].exc_info[0] is KeyError


async def test_an_exception_that_cannot_be_shown_is_internal_and_the_connection_stays(
        nursery, caplog):
    # A handler's exception whose str() itself fails is still only that request's error: the
    # connection, and every other call on it, goes on.
    class Unprintable(Exception):
        def __str__(self):
            raise AttributeError("no message")

    async def broken(payload, ctx):
        raise Unprintable()

    port = await start(nursery, {"broken": broken, "echo": echo})
    with caplog.at_level(logging.ERROR, logger="engine.rpc"):
        async with connect_rpc(HOST, port) as conn:
            with pytest.raises(RemoteError) as info:
                await conn.call("broken")
            assert await conn.call("echo", 1) == 1
            assert not conn.closed
    err = info.value
    assert err.code == INTERNAL and err.details == {"type": "Unprintable"}
    assert err.message.startswith("Unprintable")
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is Unprintable]


async def test_an_unencodable_result_is_internal(nursery):
    async def odd(payload, ctx):
        return object()

    async def odd_details(payload, ctx):
        raise RemoteError("x", details={"o": object()})

    port = await start(nursery, {"odd": odd, "odd_details": odd_details})
    async with connect_rpc(HOST, port) as conn:
        for method in ("odd", "odd_details"):
            with pytest.raises(RemoteError) as info:
                await conn.call(method)
            assert info.value.code == INTERNAL


async def test_unknown_method_lists_nothing(nursery):
    port = await start(nursery, {"secret_admin_method": echo})
    async with connect_rpc(HOST, port) as conn:
        with pytest.raises(RemoteError) as info:
            await conn.call("nope", 1)
    err = info.value
    assert err.code == UNKNOWN_METHOD and not err.retryable
    assert "nope" in err.message
    assert "secret" not in repr(err)


async def test_a_result_over_max_frame_is_refused(nursery):
    async def big(payload, ctx):
        return b"x" * 5000

    port = await start(nursery, {"big": big, "echo": echo}, max_frame=1000)
    async with connect_rpc(HOST, port) as conn:
        with pytest.raises(RemoteError) as info:
            await conn.call("big")
        assert info.value.code == RESPONSE_TOO_LARGE
        assert await conn.call("echo", 3) == 3


async def test_a_request_over_the_clients_max_frame_is_refused_locally(nursery):
    port = await start(nursery, {"echo": echo})
    async with connect_rpc(HOST, port, max_frame=100) as conn:
        with pytest.raises(RecordTooLargeError):
            await conn.call("echo", b"x" * 200)
        with pytest.raises(InvalidArgumentError):
            await conn.call("echo", object())
        assert await conn.call("echo", 4) == 4
        assert not conn.closed


# --- clocks ---------------------------------------------------------------------------------------


async def test_clock_hooks_see_the_peers_timestamp_both_ways(nursery):
    server_seen, client_seen = [], []
    port = await start(nursery, {"echo": echo}, clock_now=lambda: 1000,
                       clock_update=server_seen.append)
    async with connect_rpc(HOST, port, clock_now=lambda: 500,
                           clock_update=client_seen.append) as conn:
        assert await conn.call("echo", "a") == "a"
        assert (server_seen, client_seen) == ([500], [1000])
        with pytest.raises(RemoteError):
            await conn.call("missing")  # error frames carry the clock too
        assert (server_seen, client_seen) == ([500, 500], [1000, 1000])


async def test_the_clock_is_updated_before_the_handler_runs(nursery):
    clock = {"now": 10}

    def update(ts):
        clock["now"] = max(clock["now"], ts)

    async def now(payload, ctx):
        return [ctx.ts, clock["now"]]

    port = await start(nursery, {"now": now}, clock_now=lambda: clock["now"],
                       clock_update=update)
    async with connect_rpc(HOST, port, clock_now=lambda: 99) as conn:
        assert await conn.call("now") == [99, 99]


async def test_a_refused_timestamp_is_a_clock_offset_error_and_the_connection_stays(nursery):
    class ClockOffset(Exception):
        pass

    limit = {"ts": 100}
    ran = []

    def update(ts):
        if ts > limit["ts"]:
            raise ClockOffset(f"timestamp {ts} is too far ahead")

    async def work(payload, ctx):
        ran.append(payload)
        return payload

    port = await start(nursery, {"work": work}, clock_update=update)
    now = {"ts": 500}
    async with connect_rpc(HOST, port, clock_now=lambda: now["ts"]) as conn:
        with pytest.raises(RemoteError) as info:
            await conn.call("work", "first")
        assert info.value.code == CLOCK_OFFSET
        assert "too far ahead" in info.value.message
        assert info.value.details == {"ts": 500}
        assert ran == []  # the handler never ran
        now["ts"] = 50
        assert await conn.call("work", "second") == "second"
        assert not conn.closed


async def test_a_reply_timestamp_the_client_refuses_raises_in_the_caller(nursery):
    class ClockOffset(Exception):
        pass

    refuse = {"on": True}

    def update(ts):
        if refuse["on"]:
            raise ClockOffset("server clock too far ahead")

    port = await start(nursery, {"echo": echo}, clock_now=lambda: 10**12)
    async with connect_rpc(HOST, port, clock_update=update) as conn:
        with pytest.raises(ClockOffset):
            await conn.call("echo", 1)
        refuse["on"] = False
        assert await conn.call("echo", 2) == 2


async def test_a_clock_refusal_from_a_server_whose_timestamp_is_refused_says_it_did_not_run(
        nursery):
    # A node whose clock is far ahead refuses to serve (clock_offset, its handler never ran),
    # and its error frame carries that clock. The client refused the timestamp and raised
    # that instead: a commit so refused was reported as of unknown outcome.
    class ClockOffset(Exception):
        pass

    def update(ts):
        raise ClockOffset("server clock too far ahead")

    async def refuse(payload, ctx):
        raise RemoteError(CLOCK_OFFSET, "refuses to serve: its clock is off")

    port = await start(nursery, {"commit": refuse, "echo": echo}, clock_now=lambda: 10**12)
    async with connect_rpc(HOST, port, clock_update=update) as conn:
        with pytest.raises(RemoteError) as info:
            await conn.call("commit", 1)
        assert info.value.code == CLOCK_OFFSET
        with pytest.raises(ClockOffset):
            await conn.call("echo", 2)  # any other answer is still withheld


# --- bad input closes one connection only ---------------------------------------------------------


async def test_an_oversized_frame_closes_that_connection_and_the_server_goes_on(nursery, caplog):
    port = await start(nursery, {"echo": echo}, max_frame=1024)
    async with connect_rpc(HOST, port) as bystander:
        assert await bystander.call("echo", 0) == 0
        with caplog.at_level(logging.WARNING, logger="engine.rpc"):
            raw = await trio.open_tcp_stream(HOST, port)
            async with raw:
                await raw.send_all(struct.pack(">I", 1 << 30) + b"\x96")
                assert await read_until_closed(raw) == b""
        assert any("exceeds the limit of 1024" in r.getMessage() for r in caplog.records)
        # The same through a client: the server drops the connection, the caller learns it.
        async with connect_rpc(HOST, port) as conn:
            with pytest.raises(ConnectionLostError):
                await conn.call("echo", b"x" * 2000)
            assert conn.closed
            with pytest.raises(ConnectionLostError):
                await conn.call("echo", 1)
        assert await bystander.call("echo", 5) == 5
    async with connect_rpc(HOST, port) as conn:
        assert await conn.call("echo", 6) == 6


@pytest.mark.parametrize("garbage", [
    unchecked(b"\xc1"),  # a byte msgpack never uses
    unchecked(msgpack.packb([V, 0, 1, "echo", 0, None]) + b"\x00"),  # trailing bytes
    frame_of([V, 1, 1, 0, "a response sent to the server"]),
    unchecked(msgpack.packb({"not": "an array"})),
    encode_request(2, "echo", 0, "damaged")[:-6] + b"\x00" + encode_request(2, "echo", 0,
                                                                             "damaged")[-5:],
])
async def test_a_malformed_frame_closes_that_connection_only(nursery, garbage, caplog):
    port = await start(nursery, {"echo": echo})
    async with connect_rpc(HOST, port) as bystander:
        with caplog.at_level(logging.WARNING, logger="engine.rpc"):
            raw = await trio.open_tcp_stream(HOST, port)
            async with raw:
                # A good request first: it is answered before the bad frame is read.
                await raw.send_all(encode_request(1, "echo", 0, "ok") + garbage)
                data = await read_until_closed(raw)
        assert any("closing connection" in r.getMessage() for r in caplog.records)
        assert await bystander.call("echo", 7) == 7
    # The good request's answer may or may not have left before the close; nothing else did.
    if data:
        assert decode_one(data) == RpcFrame(RESPONSE, 1, 0, "ok")


async def test_another_version_gets_bad_version_then_the_connection_closes(nursery):
    port = await start(nursery, {"echo": echo}, clock_now=lambda: 42)
    raw = await trio.open_tcp_stream(HOST, port)
    async with raw:
        await raw.send_all(frame_of([RPC_VERSION + 1, 0, 7, "echo", 0, None, "new field"]))
        data = await read_until_closed(raw)
    frame = decode_one(data)
    assert (frame.kind, frame.call_id, frame.ts) == (ERROR, 7, 42)
    assert frame.payload["code"] == BAD_VERSION
    assert frame.payload["details"] == {"supported": [RPC_VERSION]}
    # Without a readable call id there is nobody to answer: just the close.
    raw = await trio.open_tcp_stream(HOST, port)
    async with raw:
        await raw.send_all(frame_of([RPC_VERSION + 1]))
        assert await read_until_closed(raw) == b""


async def test_a_request_sent_to_the_client_ends_its_connection(nursery):
    """A server that talks nonsense: every pending call fails, and so does every later one."""
    got_request = trio.Event()

    async def bad_server(stream):
        decoder = FrameDecoder()
        while not got_request.is_set():
            decoder.feed(await stream.receive_some())
            if decoder.next_frame() is not None:
                got_request.set()
        await stream.send_all(encode_request(1, "surprise", 0, None))
        await read_until_closed(stream)

    listeners = await nursery.start(trio.serve_tcp, bad_server, 0)
    port = listeners[0].socket.getsockname()[1]
    async with connect_rpc(HOST, port) as conn:
        with pytest.raises(ConnectionLostError, match="request frame"):
            await conn.call("anything")
        assert conn.closed


# --- connection loss and cancellation -------------------------------------------------------------


async def test_server_closing_fails_pending_calls_and_later_ones(nursery):
    n = 3
    entered = 0
    all_entered = trio.Event()

    async def hang(payload, ctx):
        nonlocal entered
        entered += 1
        if entered == n:
            all_entered.set()
        await trio.sleep_forever()

    server_scope = trio.CancelScope()

    async def run_server(task_status=trio.TASK_STATUS_IGNORED):
        with server_scope:
            await serve_rpc({"hang": hang}, HOST, 0, task_status=task_status)

    port = await nursery.start(run_server)
    failures = []
    async with connect_rpc(HOST, port) as conn:
        async def caller():
            with pytest.raises(ConnectionLostError) as info:
                await conn.call("hang")
            failures.append(info.value)

        with trio.fail_after(GUARD_S):  # a hang is a failure, not a stuck run
            async with trio.open_nursery() as callers:
                for _ in range(n):
                    callers.start_soon(caller)
                await all_entered.wait()
                server_scope.cancel()
        assert len(failures) == n
        assert all(isinstance(f, ConnectionError) and isinstance(f, MeridianError)
                   for f in failures)
        assert conn.closed
        with pytest.raises(ConnectionLostError):
            await conn.call("hang")
    with pytest.raises(OSError):  # the listener is gone too
        async with connect_rpc(HOST, port):
            pass


async def test_closing_the_client_fails_its_pending_calls(nursery):
    entered = trio.Event()

    async def hang(payload, ctx):
        entered.set()
        await trio.sleep_forever()

    port = await start(nursery, {"hang": hang})
    async with connect_rpc(HOST, port) as conn:
        async def caller():
            with pytest.raises(ConnectionLostError, match="closed by this side"):
                await conn.call("hang")

        with trio.fail_after(GUARD_S):
            async with trio.open_nursery() as callers:
                callers.start_soon(caller)
                await entered.wait()
                await conn.aclose()
        assert conn.closed
        await conn.aclose()  # idempotent


async def test_a_cancelled_caller_forgets_its_call_and_the_late_reply_is_dropped(nursery):
    entered = trio.Event()
    gate = trio.Event()
    returned = trio.Event()

    async def slow(payload, ctx):
        entered.set()
        await gate.wait()
        returned.set()
        return "late"

    port = await start(nursery, {"slow": slow, "echo": echo})
    async with connect_rpc(HOST, port) as conn:
        scope = trio.CancelScope()

        async def caller():
            with scope:
                await conn.call("slow")
            assert scope.cancelled_caught

        async with trio.open_nursery() as callers:
            callers.start_soon(caller)
            await entered.wait()
            scope.cancel()
        assert conn._pending == {}
        gate.set()
        await returned.wait()  # the reply is queued on the server before the next request
        assert await conn.call("echo", "next") == "next"
        assert conn.statistics().late_replies == 1
        assert not conn.closed


async def test_a_call_past_its_deadline_times_out_and_the_connection_goes_on(
        nursery, autojump_clock):
    gate = trio.Event()
    returned = trio.Event()

    async def hung(payload, ctx):
        await gate.wait()
        returned.set()
        return "late"

    port = await start(nursery, {"hung": hung, "echo": echo})
    async with connect_rpc(HOST, port) as conn:
        t0 = trio.current_time()
        with pytest.raises(CallTimeoutError, match="may or may not have run"):
            await conn.call("hung", deadline=t0 + 5)
        assert 5 <= trio.current_time() - t0 < 6
        assert conn._pending == {}
        gate.set()
        await returned.wait()
        assert await conn.call("echo", "next", deadline=trio.current_time() + 5) == "next"
        stats = conn.statistics()
        assert (stats.timeouts, stats.late_replies) == (1, 1)
        assert not conn.closed


async def test_a_server_stalled_partway_through_a_frame_ends_the_connection(
        nursery, autojump_clock):
    # Half of a reply's frame, then nothing: every later reply on the connection is behind
    # the rest of it. A call that times out while nothing more arrives ends the connection
    # (the next call connects again) instead of leaving it to time out every call after it.
    stream, peer = trio.testing.memory_stream_pair()
    conn = RpcConnection(stream, lambda: 0, lambda ts: None, DEFAULT_MAX_FRAME)
    nursery.start_soon(conn._run)
    reply = encode_response(1, 0, "x" * 100)
    await peer.send_all(reply[:50])
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(CallTimeoutError):
        await conn.call("a", deadline=trio.current_time() + 5)
    await trio.testing.wait_all_tasks_blocked()
    assert conn.closed
    with pytest.raises(NotSentError, match="part of a frame"):
        await conn.call("b")


async def test_a_frame_still_arriving_when_a_call_times_out_keeps_the_connection(
        nursery, autojump_clock):
    # A large reply arriving slowly: another call's timeout meanwhile is no reason to end it.
    stream, peer = trio.testing.memory_stream_pair()
    conn = RpcConnection(stream, lambda: 0, lambda ts: None, DEFAULT_MAX_FRAME)
    nursery.start_soon(conn._run)
    reply = encode_response(1, 0, "x" * 100)
    results = []

    async def slow():
        results.append(await conn.call("slow"))

    async def hung():
        with pytest.raises(CallTimeoutError):
            await conn.call("hung", deadline=trio.current_time() + 3)

    nursery.start_soon(slow)
    await trio.testing.wait_all_tasks_blocked()
    for i in range(0, len(reply), 10):
        await peer.send_all(reply[i:i + 10])
        if i == 10:
            nursery.start_soon(hung)
        await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()
    assert results == ["x" * 100]
    assert not conn.closed and conn.statistics().timeouts == 1


async def test_a_call_waiting_for_room_to_send_ends_at_its_deadline(nursery):
    # A peer that reads nothing (paused, or cut off without a reset): once the socket's buffers
    # and the send queue are full, a call waits for room; its deadline bounds that wait too,
    # and nothing of it was sent, so it may safely go elsewhere.
    accepted = []

    async def never_reads(stream):
        accepted.append(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, never_reads, 0, host=HOST))
    port = listeners[0].socket.getsockname()[1]
    blob = b"x" * (1 << 20)
    async with connect_rpc(HOST, port) as conn:
        with trio.fail_after(10):
            async with trio.open_nursery() as fillers:
                for _ in range(64):  # far more than the kernel's buffers and the queue hold
                    fillers.start_soon(partial(conn.call, "put", blob))
                await trio.sleep(0)
                while conn._wire._queued_bytes < 4 << 20:  # the queue's bound
                    await trio.sleep(0.01)
                t0 = trio.current_time()
                with pytest.raises(NotSentError, match="no room to send 'get' by its deadline"):
                    await conn.call("get", {"key": b"k"}, deadline=t0 + 0.2)
                assert trio.current_time() - t0 < 5
                assert conn.statistics().timeouts == 1
                fillers.cancel_scope.cancel()


async def test_a_batch_being_written_still_counts_against_the_send_queue_bound(nursery):
    # The writer takes a batch off the queue and blocks writing it to a peer that reads nothing.
    # Until written, that batch still fills the queue: a later call must wait for room (and so
    # end unsent at its deadline), not queue itself ahead of the senders already waiting.
    stream, _peer = trio.testing.lockstep_stream_pair()  # send_all blocks until the peer reads
    conn = RpcConnection(stream, lambda: 0, lambda ts: None, DEFAULT_MAX_FRAME)
    nursery.start_soon(conn._run)
    blob = b"x" * (1 << 20)
    async with trio.open_nursery() as fillers:
        for _ in range(8):
            fillers.start_soon(partial(conn.call, "put", blob))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._wire._writing  # one frame taken by the writer, the queue at its bound
        with pytest.raises(NotSentError, match="no room to send 'get' by its deadline"):
            await conn.call("get", deadline=trio.current_time() + 0.05)
        assert conn.statistics().timeouts == 1
        fillers.cancel_scope.cancel()
    await conn.aclose()


async def test_a_sooner_deadline_made_later_still_fires_on_time(nursery, autojump_clock):
    # The watchdog sleeps until the soonest deadline it knows; a call made later with a
    # sooner deadline must wake it, not wait for the first call's.
    entered = trio.Event()
    gate = trio.Event()

    async def slow(payload, ctx):
        entered.set()
        await gate.wait()
        return "slow"

    async def hung(payload, ctx):
        await trio.sleep_forever()

    port = await start(nursery, {"slow": slow, "hung": hung})
    async with connect_rpc(HOST, port) as conn:
        t0 = trio.current_time()
        results = []

        async def first():
            results.append(await conn.call("slow", deadline=t0 + 1000))

        async with trio.open_nursery() as callers:
            callers.start_soon(first)
            await entered.wait()
            with pytest.raises(CallTimeoutError):
                await conn.call("hung", deadline=trio.current_time() + 2)
            assert trio.current_time() - t0 < 10
            gate.set()
        assert results == ["slow"]
        assert conn.statistics().timeouts == 1


async def test_requests_beyond_the_concurrency_limit_wait(nursery):
    limit, n = 4, 10
    active = peak = entered = 0
    gate = trio.Event()
    at_limit = trio.Event()

    async def work(i, ctx):
        nonlocal active, peak, entered
        entered += 1
        active += 1
        if active == limit:
            at_limit.set()
        peak = max(peak, active)
        await gate.wait()
        active -= 1
        return i

    port = await start(nursery, {"work": work}, max_concurrent_requests=limit)
    async with connect_rpc(HOST, port) as conn:
        results = []
        async with trio.open_nursery() as callers:
            start_calls(callers, conn, "work", n, results)
            await at_limit.wait()
            # Every request has been sent and the server has done all it can with them: had
            # it read the other six, they would be running now.
            await trio.testing.wait_all_tasks_blocked()
            assert (entered, active) == (limit, limit)
            gate.set()
    assert sorted(results) == list(range(n))
    assert peak == limit


async def test_a_steady_burst_of_concurrent_requests_reuses_its_workers(nursery):
    # A connection that has had n requests running at once keeps n workers waiting for the
    # next requests (not a fixed few): the next burst of n starts no task.
    n = 40
    tasks_seen: list[set] = [set(), set()]
    phase = 0
    gates = [trio.Event(), trio.Event()]
    all_in = [trio.Event(), trio.Event()]

    async def work(i, ctx):
        p = phase
        tasks_seen[p].add(trio.lowlevel.current_task())
        if len(tasks_seen[p]) == n:
            all_in[p].set()
        await gates[p].wait()
        return i

    port = await start(nursery, {"work": work})
    async with connect_rpc(HOST, port) as conn:
        for p in (0, 1):
            phase = p
            results = []
            async with trio.open_nursery() as callers:
                start_calls(callers, conn, "work", n, results)
                with trio.fail_after(GUARD_S):
                    await all_in[p].wait()
                gates[p].set()
            assert sorted(results) == list(range(n))
            await trio.testing.wait_all_tasks_blocked()  # the workers are parked again
    assert len(tasks_seen[0]) == n
    assert tasks_seen[1] == tasks_seen[0]


async def test_connecting_to_a_closed_port_raises_oserror():
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError):
            async with connect_rpc(HOST, port):
                pass


# --- throughput smoke -----------------------------------------------------------------------------


async def test_many_calls_from_many_tasks_complete_and_writes_coalesce(nursery):
    async def add(payload, ctx):
        await trio.lowlevel.checkpoint()
        return payload[0] + payload[1]

    port = await start(nursery, {"add": add})
    tasks, per_task = 32, 63  # 2,016 calls
    done = []
    async with connect_rpc(HOST, port) as conn:
        async def worker(w):
            for i in range(per_task):
                assert await conn.call("add", [w, i]) == w + i
            done.append(w)

        async with trio.open_nursery() as workers:
            for w in range(tasks):
                workers.start_soon(worker, w)
        stats = conn.statistics()
    assert len(done) == tasks
    assert stats.calls == stats.frames_sent == stats.frames_received == tasks * per_task
    assert stats.late_replies == 0
    assert stats.writes < stats.frames_sent  # frames leave in batches under load


async def test_connections_beyond_the_limit_are_refused_with_a_reason(nursery):
    port = await start(nursery, {"echo": echo}, max_connections=2)
    async with connect_rpc(HOST, port) as a, connect_rpc(HOST, port) as b:
        assert await a.call("echo", 1) == 1 and await b.call("echo", 2) == 2
        async with connect_rpc(HOST, port) as c:
            with pytest.raises(ConnectionLostError, match="overloaded.*2 connections"):
                await c.call("echo", 3)
        assert await a.call("echo", 4) == 4  # the others go on
    # Closed connections free their places.
    with trio.fail_after(5):
        while True:
            async with connect_rpc(HOST, port) as d:
                try:
                    assert await d.call("echo", 5) == 5
                    break
                except ConnectionLostError:
                    await trio.sleep(0.01)  # the server has not seen the closes yet


async def test_a_client_that_reads_nothing_is_closed_and_its_replies_released(
        nursery, autojump_clock, caplog):
    # A client that sends requests and reads none of the replies (hung, or cut off without a
    # reset): each running request holds its reply until it can be queued, so a few small
    # requests hold up to max_concurrent_requests replies on the server. Once no byte has
    # left for send_stall_timeout_s the server closes the connection and lets them go.
    caplog.set_level(logging.WARNING, logger="engine.rpc")

    async def big(payload, ctx):
        return b"x" * (1 << 20)

    port = await start(nursery, {"big": big}, send_stall_timeout_s=3.0)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((HOST, port))
    stream = trio.SocketStream(sock)
    n = 20  # replies of 20 MiB: far more than the socket's buffers and the send queue hold
    await stream.send_all(b"".join(encode_request(i + 1, "big", 0, None) for i in range(n)))
    await trio.sleep(10)  # virtual time; reading nothing meanwhile
    received = 0
    with trio.fail_after(GUARD_S):
        while chunk := await stream.receive_some(1 << 16):
            received += len(chunk)
    assert received < n << 20  # not every reply: the rest were let go
    assert "the peer read nothing for 3.0 s" in caplog.text
    await stream.aclose()


async def test_a_connection_without_a_request_is_closed_and_frees_its_place(
        nursery, autojump_clock, caplog):
    # Peers that connect and send nothing, or half a frame and then nothing, must not hold
    # their places among max_connections forever (locking every client out); a client that
    # has made a call keeps its connection however long it then stays idle.
    caplog.set_level(logging.WARNING, logger="engine.rpc")
    port = await start(nursery, {"echo": echo}, max_connections=3, first_request_timeout_s=5.0)
    async with connect_rpc(HOST, port) as active:
        assert await active.call("echo", 1) == 1
        silent = await trio.open_tcp_stream(HOST, port)
        half = await trio.open_tcp_stream(HOST, port)
        await half.send_all(encode_request(1, "echo", 0, "x")[:10])
        t0 = trio.current_time()
        with trio.fail_after(GUARD_S):  # virtual time
            assert await read_until_closed(silent) == b""
            assert await read_until_closed(half) == b""
        assert trio.current_time() - t0 >= 5
        await trio.sleep(60)
        assert await active.call("echo", 2) == 2
        async with connect_rpc(HOST, port) as newcomer:  # a place was freed
            assert await newcomer.call("echo", 3) == 3
        await silent.aclose()
        await half.aclose()
    assert caplog.text.count("no request within 5.0 s") == 2


async def read_frame(stream: trio.SocketStream) -> RpcFrame:
    """The next frame the server sends on a raw connection."""
    decoder = FrameDecoder(DEFAULT_MAX_FRAME)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(1 << 16)
        assert data, "closed before a whole frame"
        decoder.feed(data)
    return frame


BIG = b"x" * (1 << 20)  # a request or reply of ~1 MiB: over LARGE_FRAME_BYTES


async def raw_client(port: int) -> trio.SocketStream:
    """A raw connection that has made one call (so the first request timeout is behind it)."""
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(encode_request(1, "echo", 0, "hello"))
    assert (await read_frame(stream)).payload == "hello"
    return stream


async def test_large_requests_arriving_at_once_wait_for_the_servers_receive_budget(
        nursery, autojump_clock):
    # Frames over LARGE_FRAME_BYTES are read only within a budget shared by every
    # connection: without it, a server's clients could make it buffer max_connections ×
    # max_frame bytes of half-sent requests (16 GB with the defaults).
    assert len(BIG) > LARGE_FRAME_BYTES
    port = await start(nursery, {"echo": echo}, max_frame=2 << 20,
                       max_receiving_bytes=(5 << 20) // 2)
    frames = [encode_request(2, "echo", 0, BIG) for _ in range(3)]
    a, b, c = [await raw_client(port) for _ in range(3)]
    half = len(frames[0]) // 2
    await a.send_all(frames[0][:half])
    await b.send_all(frames[1][:half])
    await trio.testing.wait_all_tasks_blocked()  # the server has read both halves
    nursery.start_soon(c.send_all, frames[2])
    with trio.move_on_after(20):  # virtual time, short of the receive stall timeout
        await read_frame(c)
        pytest.fail("a third large request was read while two held the budget")
    async with connect_rpc(HOST, port) as small:  # small requests need no reservation
        with trio.fail_after(GUARD_S):
            assert await small.call("echo", 1) == 1
    await a.send_all(frames[0][half:])
    with trio.fail_after(GUARD_S):
        assert (await read_frame(a)).payload == BIG
        assert (await read_frame(c)).payload == BIG  # read once a's frame gave its share back
    for stream in (a, b, c):
        await stream.aclose()


async def test_a_client_that_stops_sending_a_large_request_is_closed_and_frees_the_budget(
        nursery, autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="engine.rpc")
    port = await start(nursery, {"echo": echo}, max_frame=2 << 20,
                       max_receiving_bytes=2 << 20, receive_stall_timeout_s=5.0)
    stuck = await raw_client(port)
    frame = encode_request(2, "echo", 0, BIG)
    await stuck.send_all(frame[:1000])
    await trio.testing.wait_all_tasks_blocked()
    async with connect_rpc(HOST, port) as other:
        t0 = trio.current_time()
        with trio.fail_after(60):  # virtual time
            assert await other.call("echo", BIG) == BIG
        assert trio.current_time() - t0 >= 5
    with trio.fail_after(GUARD_S):
        assert await read_until_closed(stuck) == b""
    # The 1000 bytes sent, less the length prefix, of the frame's body:
    assert (f"sent 996 of the {len(frame) - 4} bytes of a frame, then nothing for 5.0 s"
            in caplog.text)
    await stuck.aclose()


@pytest.mark.parametrize("cut", [10, 2])
async def test_a_client_that_stops_sending_a_small_request_is_closed(
        nursery, autojump_clock, caplog, cut):
    # A frame too small to need a reservation still holds its connection (one of
    # max_connections) and its buffer: sent in part and then left, it used to be waited for
    # for ever, so a few clients trickling partial frames could take every connection.
    caplog.set_level(logging.WARNING, logger="engine.rpc")
    port = await start(nursery, {"echo": echo}, receive_stall_timeout_s=5.0)
    stuck = await raw_client(port)
    with trio.fail_after(GUARD_S):  # a first request, whole: past the first request timeout
        await stuck.send_all(encode_request(1, "echo", 0, 1))
        assert (await read_frame(stuck)).payload == 1
    frame = encode_request(2, "echo", 0, b"x" * 100)
    await stuck.send_all(frame[:cut])  # part of its body, or of its length
    t0 = trio.current_time()
    with trio.fail_after(60):  # virtual time
        assert await read_until_closed(stuck) == b""
    assert trio.current_time() - t0 >= 5
    sent = (f"sent 6 of the {len(frame) - 4} bytes of a frame" if cut == 10
            else "sent 2 of the 4 bytes of a frame's length")
    assert f"{sent}, then nothing for 5.0 s" in caplog.text
    await stuck.aclose()


async def test_a_first_request_waiting_for_the_budget_is_not_taken_for_a_silent_client(
        nursery, autojump_clock):
    # The first request timeout closes connections that send no request; one whose first
    # request is large and waits for the budget has sent it, and must not be closed for the
    # server's own wait.
    port = await start(nursery, {"echo": echo}, max_frame=2 << 20,
                       max_receiving_bytes=2 << 20, first_request_timeout_s=5.0)
    holder = await raw_client(port)
    frame = encode_request(2, "echo", 0, BIG)
    await holder.send_all(frame[:1000])  # holds the budget, within its stall timeout
    await trio.testing.wait_all_tasks_blocked()
    newcomer = await trio.open_tcp_stream(HOST, port)
    nursery.start_soon(newcomer.send_all, encode_request(1, "echo", 0, BIG))
    await trio.sleep(20)  # virtual time: four first request timeouts
    await holder.send_all(frame[1000:])
    with trio.fail_after(GUARD_S):
        assert (await read_frame(holder)).payload == BIG
        assert (await read_frame(newcomer)).payload == BIG
    for stream in (holder, newcomer):
        await stream.aclose()


async def test_a_first_request_granted_the_budget_just_before_the_timeout_may_finish_arriving(
        nursery, autojump_clock):
    # The server's wait for its budget is not the client's: a first request granted its
    # reservation a moment before the first request timeout has the receive stall timeout to
    # arrive, as one still waiting would, and is not cut off partway (its outcome unknown).
    port = await start(nursery, {"echo": echo}, max_frame=2 << 20,
                       max_receiving_bytes=2 << 20, first_request_timeout_s=5.0)
    holder = await raw_client(port)
    held = encode_request(2, "echo", 0, BIG)
    await holder.send_all(held[:1000])  # holds the budget
    await trio.testing.wait_all_tasks_blocked()
    newcomer = await trio.open_tcp_stream(HOST, port)
    frame = encode_request(1, "echo", 0, BIG)
    await newcomer.send_all(frame[:1000])  # its first request, waiting for the budget
    await trio.sleep(4)  # virtual time, short of the first request timeout
    await holder.send_all(held[1000:])  # the budget goes to the newcomer
    with trio.fail_after(GUARD_S):
        assert (await read_frame(holder)).payload == BIG
    await trio.sleep(2)  # past the first request timeout, well within the receive stall timeout
    await newcomer.send_all(frame[1000:])
    with trio.fail_after(GUARD_S):
        assert (await read_frame(newcomer)).payload == BIG
    for stream in (holder, newcomer):
        await stream.aclose()


async def test_the_receive_budget_is_first_come_first_served_and_survives_cancellation(
        nursery):
    budget = _ReceiveBudget(10)
    granted = []

    async def take(name, n, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await budget.acquire(n)
            granted.append(name)

    await budget.acquire(6)
    big = await nursery.start(take, "big", 8)  # waits: 4 free
    await nursery.start(take, "small", 3)  # would fit, but waits behind the big one
    await trio.testing.wait_all_tasks_blocked()
    assert granted == [] and budget.available == 4
    big.cancel()  # the head gives up: the one behind it fits now
    await trio.testing.wait_all_tasks_blocked()
    assert granted == ["small"] and budget.available == 1
    budget.release(6)
    budget.release(3)
    assert budget.available == budget.capacity == 10


async def test_the_receive_budget_must_hold_a_whole_frame(nursery):
    with pytest.raises(ValueError, match="max_receiving_bytes .* must be at least max_frame"):
        await start(nursery, {"echo": echo}, max_frame=1 << 20, max_receiving_bytes=1 << 19)


async def test_calls_made_on_a_refused_connection_fail_as_not_sent(nursery):
    # A connection beyond max_connections is refused unread: a call already waiting on it did
    # not run, so it fails with NotSentError (safe to retry elsewhere) rather than the
    # ambiguous ConnectionLostError, which would report a commit sent there as of unknown
    # outcome.
    port = await start(nursery, {"echo": echo}, max_connections=1)
    async with connect_rpc(HOST, port) as a:
        assert await a.call("echo", 1) == 1
        for _ in range(3):
            async with connect_rpc(HOST, port) as c:
                with trio.fail_after(GUARD_S), \
                        pytest.raises(NotSentError, match="overloaded.*1 connections"):
                    await c.call("echo", 2)


def _dead_peer_options(sock: socket.socket) -> tuple[int, int]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def _socket_connected_to(address) -> socket.socket | None:
    """This process's socket whose peer is ``address`` (a duplicate: close it)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername() == address:
                return sock
        except OSError:
            pass
        sock.close()
    return None


async def test_both_ends_let_the_kernel_end_a_connection_to_a_silent_peer(nursery):
    # A client or server cut off without a reset (a partition that drops packets, a machine
    # that died) must not hold the connection for a quarter of an hour, or forever when idle.
    port = await start(nursery, {"echo": echo}, send_stall_timeout_s=12.0)
    async with connect_rpc(HOST, port) as conn:
        assert await conn.call("echo", 1) == 1
        client = conn._wire.stream.socket
        assert _dead_peer_options(client) == (1, 30_000)
        server = _socket_connected_to(client.getsockname())
        assert server is not None
        try:
            assert _dead_peer_options(server) == (1, 12_000)
        finally:
            server.close()


class _CountedDeadline(float):
    """A deadline that counts the comparisons made with it (into ``counts[0]``)."""

    counts = [0]

    def _counted(op):
        def compare(self, other):
            _CountedDeadline.counts[0] += 1
            return getattr(float, op)(self, other)
        return compare

    __lt__, __le__, __gt__, __ge__, __eq__ = map(
        _counted, ("__lt__", "__le__", "__gt__", "__ge__", "__eq__"))
    __ne__ = float.__ne__
    __hash__ = float.__hash__
    del _counted


async def test_calls_timing_out_one_by_one_cost_the_watchdog_no_pass_over_the_others(
        nursery, autojump_clock):
    # A server that stops answering: every call on the connection times out, one after
    # another. The watchdog used to look at every waiting call at each deadline (to fail the
    # expired ones and find the next): quadratic, with the event loop stalled meanwhile.
    stream, _peer = trio.testing.memory_stream_pair()
    conn = RpcConnection(stream, lambda: 0, lambda ts: None, DEFAULT_MAX_FRAME)
    nursery.start_soon(conn._run)
    n = 1_000
    t0 = trio.current_time()
    timed_out = []

    async def hung(i: int) -> None:
        with pytest.raises(CallTimeoutError):
            await conn.call("hung", deadline=_CountedDeadline(t0 + 1 + i))
        timed_out.append(i)

    _CountedDeadline.counts[0] = 0
    async with trio.open_nursery() as callers:
        for i in range(n):
            callers.start_soon(hung, i)
    assert sorted(timed_out) == list(range(n))
    assert conn.statistics().timeouts == n and conn._pending == {}
    assert _CountedDeadline.counts[0] <= 100 * n  # was about n * n
    assert not conn.closed
    await conn.aclose()
