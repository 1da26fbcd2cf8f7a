"""bench.raftkv: a read whose read point cannot be confirmed is answered within a bound (on
trio's MockClock, autojump: no real time passes), and a client attempt that times out leaves
nothing behind (a silent server on loopback)."""

from __future__ import annotations

import functools

import msgpack
import pytest
import trio
import trio.testing

from bench import raftkv
from raft.driver import RaftTimeoutError


class _StalledNode:
    """A node that cannot confirm a read point (a quorum that does not answer, a stalled
    disk): ``linearizable_read`` waits for ever, or raises RaftTimeoutError once its
    ``timeout`` has passed, as the driver's does."""

    id, group, leader = 1, 1, 1

    async def linearizable_read(self, *, timeout: float | None = None) -> int:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            await trio.sleep_forever()
        raise RaftTimeoutError(f"raft node 1 (group 1) could not confirm a read point within "
                               f"{timeout} s")


def _connection() -> raftkv._Connection:
    """A connection as ``_Connection.run`` leaves it while a request is in flight."""
    conn = object.__new__(raftkv._Connection)
    conn.node = _StalledNode()
    conn.sm = raftkv.KVStateMachine()
    conn.out, conn.out_ready = [], trio.Event()
    conn.in_flight, conn.closed, conn.fd = 1, False, -1
    return conn


def test_a_read_that_cannot_confirm_its_read_point_is_answered_within_a_bound():
    # The read's task used to wait for ever, holding its connection's in-flight slot, while
    # the client gave up on it and retried (one more task stuck per attempt).
    conn = _connection()

    async def main() -> float:
        start = trio.current_time()
        with trio.move_on_after(3600):
            await conn._get(7, b"k")
        return trio.current_time() - start

    waited = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert conn.in_flight == 0 and len(conn.out) == 1, f"no answer after {waited} s"
    assert waited <= raftkv.READ_TIMEOUT_S + 1e-9
    body = msgpack.unpackb(conn.out[0][4:])
    rid, status, result, hint = body
    # Nothing was read: the client may retry at another node at once.
    assert (rid, status, hint) == (7, "not-leader", 0)
    assert "could not confirm a read point" in result


async def test_a_client_attempt_that_times_out_closes_its_connection():
    # A node that reads requests and never answers: each timed-out attempt dropped its
    # connection from the client's table without closing it, leaving a socket and a reader
    # task behind for every retry.
    send_closed, closed = trio.open_memory_channel(10)

    async def silent(stream):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        await send_closed.send(None)  # the client closed its end

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with raftkv.KVClient({1: ("127.0.0.1", port)}, attempt_timeout=0.05) as client:
            with trio.fail_after(10):
                for _ in range(3):
                    with pytest.raises(raftkv.OutcomeUnknown):
                        await client.call("put", b"k", b"v", retry_unknown=False)
                    await closed.receive()
            # Only the client's own nursery tasks are left: none per dropped connection.
            assert len(client._nursery.child_tasks) == 0
        nursery.cancel_scope.cancel()
