"""raft.poller.ReadPoller: many sockets, one wakeup."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from raft.poller import ReadPoller


def _pairs(n):
    pairs = [socket.socketpair() for _ in range(n)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    return pairs


def _close(pairs):
    for a, b in pairs:
        a.close()
        b.close()


async def test_every_readable_socket_is_handled_in_one_wakeup(nursery):
    pairs = _pairs(8)
    poller = ReadPoller()
    got: dict[int, bytes] = {}
    rounds = []

    def handler(i, sock):
        def on_readable():
            got[i] = got.get(i, b"") + os.read(sock.fileno(), 100)
            rounds.append(trio.lowlevel.current_task())
        return on_readable

    nursery.start_soon(poller.run)
    for i, (a, _) in enumerate(pairs):
        poller.add(a.fileno(), handler(i, a))
    await trio.testing.wait_all_tasks_blocked()
    for i, (_, b) in enumerate(pairs):
        b.send(b"m%d" % i)
    await trio.testing.wait_all_tasks_blocked()
    assert got == {i: b"m%d" % i for i in range(8)}
    assert len(set(map(id, rounds))) == 1  # all from the poller's one task
    assert len(poller) == 8
    _close(pairs)


async def test_a_paused_socket_is_not_reported_until_resumed(nursery):
    (a, b), = pairs = _pairs(1)
    poller = ReadPoller()
    calls = []
    nursery.start_soon(poller.run)
    poller.add(a.fileno(), lambda: calls.append(os.read(a.fileno(), 100)))
    poller.pause(a.fileno())
    b.send(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    assert calls == []
    poller.resume(a.fileno())
    await trio.testing.wait_all_tasks_blocked()
    assert calls == [b"hello"]
    _close(pairs)


async def test_a_handler_may_remove_another_socket_of_the_same_round(nursery):
    pairs = _pairs(2)
    (a0, b0), (a1, b1) = pairs
    poller = ReadPoller()
    calls = []

    def first():
        calls.append(0)
        os.read(a0.fileno(), 100)
        poller.remove(a1.fileno())
        poller.remove(a0.fileno())

    def second():
        calls.append(1)
        os.read(a1.fileno(), 100)
        poller.remove(a0.fileno())
        poller.remove(a1.fileno())

    nursery.start_soon(poller.run)
    poller.add(a0.fileno(), first)
    poller.add(a1.fileno(), second)
    b0.send(b"x")
    b1.send(b"y")
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 1  # whichever ran first removed the other
    assert len(poller) == 0
    _close(pairs)


async def test_end_of_stream_is_reported_and_add_twice_is_refused(nursery):
    (a, b), = _pairs(1)
    poller = ReadPoller()
    seen = []
    nursery.start_soon(poller.run)

    def on_readable():
        data = os.read(a.fileno(), 100)
        seen.append(data)
        if not data:
            poller.remove(a.fileno())

    poller.add(a.fileno(), on_readable)
    with pytest.raises(ValueError, match="watched already"):
        poller.add(a.fileno(), on_readable)
    b.close()
    await trio.testing.wait_all_tasks_blocked()
    assert seen == [b""]
    a.close()


async def test_cancelling_run_closes_the_poller():
    (a, _), = pairs = _pairs(1)
    poller = ReadPoller()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        poller.add(a.fileno(), lambda: None)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(poller) == 0
    with pytest.raises(trio.ClosedResourceError):
        poller.add(a.fileno(), lambda: None)
    poller.remove(a.fileno())  # idempotent, also after close
    poller.close()
    _close(pairs)


async def test_the_round_end_callback_runs_once_after_each_wakeups_handlers(nursery):
    pairs = _pairs(4)
    events: list = []
    poller = ReadPoller(on_round_end=lambda: events.append("end"))

    def handler(i, sock):
        return lambda: events.append((i, os.read(sock.fileno(), 100)))

    nursery.start_soon(poller.run)
    for i, (a, _) in enumerate(pairs):
        poller.add(a.fileno(), handler(i, a))
    await trio.testing.wait_all_tasks_blocked()
    assert events == []  # no wakeup, no call
    for i, (_, b) in enumerate(pairs):
        b.send(b"m%d" % i)
    await trio.testing.wait_all_tasks_blocked()
    assert events[-1] == "end" and events.count("end") == 1
    assert sorted(events[:-1]) == [(i, b"m%d" % i) for i in range(4)]
    pairs[2][1].send(b"again")
    await trio.testing.wait_all_tasks_blocked()
    assert events[-2:] == [(2, b"again"), "end"]
    _close(pairs)


async def test_a_paused_socket_is_not_reported_even_when_its_peer_hangs_up(nursery):
    # epoll reports a hangup whatever events are asked for: a paused socket whose peer closed
    # must still get no calls until it is resumed.
    (a, b), = _pairs(1)
    poller = ReadPoller()
    calls = []

    def on_readable():
        data = os.read(a.fileno(), 100)
        calls.append(data)
        if not data:
            poller.remove(a.fileno())

    nursery.start_soon(poller.run)
    poller.add(a.fileno(), on_readable)
    poller.pause(a.fileno())
    b.send(b"hello")
    b.close()
    await trio.testing.wait_all_tasks_blocked()
    assert calls == []
    poller.resume(a.fileno())
    await trio.testing.wait_all_tasks_blocked()
    assert calls == [b"hello", b""]
    assert len(poller) == 0
    a.close()


async def test_a_socket_paused_by_another_handler_of_the_same_round_is_not_called(nursery):
    pairs = _pairs(2)
    (a0, b0), (a1, b1) = pairs
    poller = ReadPoller()
    calls = []

    def handler(i, me, other):
        def on_readable():
            calls.append(i)
            os.read(me.fileno(), 100)
            poller.pause(other.fileno())
        return on_readable

    nursery.start_soon(poller.run)
    poller.add(a0.fileno(), handler(0, a0, a1))
    poller.add(a1.fileno(), handler(1, a1, a0))
    b0.send(b"x")
    b1.send(b"y")
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 1  # whichever ran first paused the other
    _close(pairs)
