"""bench.raftkv: a read whose read point cannot be confirmed is answered within a bound.

Time runs on trio's MockClock (autojump): no real time passes."""

from __future__ import annotations

import msgpack
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
