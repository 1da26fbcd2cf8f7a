"""Many sockets, one wakeup: a readiness set for servers with many mostly-idle connections.

A trio task that waits for one socket (``trio.lowlevel.wait_readable``) pays for a round through
the scheduler on every message: the task parks, trio re-arms the socket in its epoll, the event
comes back, the task is rescheduled and resumes. With a hundred connections that each carry one
small request at a time, a server spends more on those rounds than on the requests.

A :class:`ReadPoller` keeps its own (level-triggered) epoll of sockets and is itself one file
descriptor that trio waits on: one wakeup finds every socket that became readable meanwhile,
and calls each one's handler in turn, synchronously. A handler reads what it needs without
blocking (``os.read`` on the non-blocking socket) and returns; work that must wait is started
as a task by the handler. A handler that cannot take more input for now (back-pressure)
:meth:`pauses <ReadPoller.pause>` its socket and resumes it later; an unread, paused socket costs
nothing.

Example::

    async with trio.open_nursery() as nursery:
        poller = ReadPoller()
        nursery.start_soon(poller.run)
        poller.add(sock.fileno(), on_readable)   # on_readable() reads sock; never blocks
        ...
        poller.remove(sock.fileno())             # before the socket is closed
"""

from __future__ import annotations

import select
from collections.abc import Callable

import trio

__all__ = ["ReadPoller"]

_MAX_EVENTS = 256


class ReadPoller:
    """Calls a handler for each registered file descriptor that is readable (or hung up).

    Not thread-safe: use it from the trio thread that runs :meth:`run`. A handler's exception
    propagates out of :meth:`run` (a handler must deal with its own connection's errors).
    """

    def __init__(self, on_round_end: Callable[[], None] | None = None) -> None:
        """``on_round_end``, if given, is called after each wakeup's handlers have run: where
        a server finishes what they started together (one proposal for the requests of every
        connection that was readable, say)."""
        self._on_round_end = on_round_end
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._paused: set[int] = set()

    def __len__(self) -> int:
        return len(self._handlers)

    def add(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Starts watching ``fd`` (a non-blocking socket). Raises ValueError if it is watched
        already, trio.ClosedResourceError after :meth:`close`."""
        if self._epoll.closed:
            raise trio.ClosedResourceError("the poller is closed")
        if fd in self._handlers:
            raise ValueError(f"fd {fd} is watched already")
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._handlers[fd] = on_readable

    def remove(self, fd: int) -> None:
        """Stops watching ``fd``; call it before closing the socket. Idempotent."""
        if self._handlers.pop(fd, None) is None:
            return
        if fd in self._paused:
            self._paused.discard(fd)
            return  # not in the epoll set (see pause)
        if not self._epoll.closed:
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed already: the kernel dropped it on its own
                pass

    def pause(self, fd: int) -> None:
        """No more calls for ``fd`` until :meth:`resume`, even while it stays readable or its
        peer hangs up."""
        if fd in self._handlers and fd not in self._paused:
            self._paused.add(fd)
            # Out of the epoll set rather than watched for no events: epoll reports a hangup
            # or an error whatever events are asked for, level-triggered, in every wakeup.
            self._epoll.unregister(fd)

    def resume(self, fd: int) -> None:
        """Undoes :meth:`pause`: what arrived meanwhile is reported on the next wakeup."""
        if fd in self._paused:
            self._paused.discard(fd)
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    async def run(self) -> None:
        """Dispatches readiness until cancelled (then closes the poller)."""
        epoll = self._epoll
        handlers = self._handlers
        paused = self._paused
        on_round_end = self._on_round_end
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, _MAX_EVENTS):
                    handler = handlers.get(fd)
                    # None: removed by an earlier handler of this round; paused likewise.
                    if handler is not None and fd not in paused:
                        handler()
                if on_round_end is not None:
                    on_round_end()
        finally:
            self.close()

    def close(self) -> None:
        """Stops watching everything. Idempotent."""
        if not self._epoll.closed:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()
        self._handlers.clear()
        self._paused.clear()
