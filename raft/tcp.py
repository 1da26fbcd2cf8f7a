"""The TCP transport: Raft messages of many groups between nodes over trio TCP streams (ARCH §3).

Connections
-----------
Each node dials the peers it sends to, and a connection carries frames one way only, from the
dialer to the acceptor: a node pair therefore uses one connection per direction, and each
connection is shared by every group the two nodes host. The acceptor never writes; the dialer
reads only to notice promptly that the acceptor closed or reset the connection. This rule needs
no tie-breaking between simultaneous dials, needs no address of the dialer at the acceptor, and
keeps all reconnect state on the sending side, where the messages wait.

On a new connection the dialer first writes a handshake frame (``[version, "meridian-raft",
dialer_id, acceptor_id]``, see :mod:`raft.wire`), then data frames. The acceptor closes the
connection, with a logged reason, if the handshake is missing, of another wire version, or meant
for another node id, and closes any older connection from the same dialer when a newer one is
accepted (the dialer restarted). Any :class:`~raft.wire.WireError` closes that one connection and
is logged; it never reaches the caller.

A link dials when it has something to send. If the dial fails, everything queued for that peer is
dropped (``dropped_unreachable``) -- messages are never older than one connection attempt when
they leave -- and the link waits a backoff before the next attempt: exponential, with jitter,
bounded by ``backoff_max_s``, drawn from the transport's seeded ``random.Random``. The backoff
resets once a connection has stayed up for ``backoff_max_s``.

Writing
-------
``send`` encodes at once (so an unencodable message raises in the caller) and appends one frame
per peer to that peer's bounded outbox. The link's writer drains every frame that is due into one
buffer and writes it with one ``send_all`` (up to ``max_write_bytes``): coalescing frames is worth
about 20x in small messages per second on loopback, against one write per frame.

A :class:`~raft.transport.LinkModel` applies on the sending side: a frame is held in the outbox
until its due time (send time + delay + jitter). Due times never decrease along a link, so jitter
does not reorder a link (TCP would not either).

Memory is bounded everywhere: outboxes by frames and bytes, each subscription by messages, the
decoder by ``max_frame``, and the number of inbound connections.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from .transport import (
    DEFAULT_MAX_INBOX,
    DEFAULT_MAX_OUTBOX,
    LinkModel,
    TransportStats,
    _Counters,
    _group_by_peer,
    _Outbox,
    _Pending,
    _Subscriptions,
)
from .types import Message
from .wire import DEFAULT_MAX_FRAME, FrameDecoder, WireError, encode_frame, encode_handshake

__all__ = ["TcpOptions", "TcpTransport", "Backoff", "open_tcp_transport", "serve_tcp_transport"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]

_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """Limits and timings of a :class:`TcpTransport`. The defaults suit a LAN or loopback."""

    max_outbox: int = DEFAULT_MAX_OUTBOX  # frames waiting per peer
    max_outbox_bytes: int = 64 << 20  # bytes waiting per peer (a larger lone frame still fits)
    max_inbox: int = DEFAULT_MAX_INBOX  # messages waiting per subscribed group
    max_frame: int = DEFAULT_MAX_FRAME  # largest frame body sent or accepted, bytes
    max_write_bytes: int = 1 << 20  # frames coalesced per send_all (at least one)
    recv_bytes: int = 256 << 10  # bytes asked of the socket per receive
    max_inbound: int = 1024  # concurrent inbound connections
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 5.0

    def __post_init__(self):
        for name in ("max_outbox", "max_outbox_bytes", "max_inbox", "max_frame",
                     "max_write_bytes", "recv_bytes", "max_inbound"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.connect_timeout_s <= 0 or self.handshake_timeout_s <= 0:
            raise ValueError("timeouts must be positive")


class Backoff:
    """Exponential backoff with jitter ("equal jitter").

    The n-th delay (from 0) is uniform in ``[d/2, d]`` with ``d = min(max_s, initial_s * 2**n)``,
    so it is bounded by ``max_s`` and two nodes that lost each other at the same moment do not
    redial in lockstep. Randomness comes from the ``rng`` given (seeded by the owner).
    """

    def __init__(self, rng: random.Random, initial_s: float, max_s: float):
        self._rng = rng
        self.initial_s = initial_s
        self.max_s = max_s
        self._next_s = initial_s

    def next_delay_s(self) -> float:
        ceiling = self._next_s
        self._next_s = min(self.max_s, ceiling * 2)
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def reset(self) -> None:
        self._next_s = self.initial_s


class _TcpLink:
    """The sending side towards one peer: its outbox and the task that dials and writes."""

    __slots__ = ("peer", "outbox", "task_scope", "conn_scope", "was_connected")

    def __init__(self, peer: int, outbox: _Outbox):
        self.peer = peer
        self.outbox = outbox
        self.task_scope = trio.CancelScope()
        self.conn_scope: trio.CancelScope | None = None
        self.was_connected = False


class TcpTransport:
    """One node's TCP endpoint; see :class:`raft.transport.Transport` and the module docstring.

    Created by :func:`open_tcp_transport` (or :func:`serve_tcp_transport`). Thread-safety: none;
    use from the trio run that opened it.

    Attributes:
        node_id: this node.
        address: the ``(host, port)`` it listens on (the real port when asked for port 0).
    """

    def __init__(
        self,
        node_id: int,
        address: Address,
        peers: Mapping[int, Address],
        latency: LinkModel | Mapping[int, LinkModel] | None,
        rng: random.Random,
        options: TcpOptions,
    ):
        self.node_id = node_id
        self.address = address
        self._peers: dict[int, Address] = {}
        self._links: dict[int, _TcpLink] = {}
        if isinstance(latency, Mapping):
            self._default_latency = None
            self._latency = dict(latency)
        else:
            self._default_latency = latency
            self._latency = {}
        self._rng = rng
        self._options = options
        self._counters = _Counters()
        self._subs = _Subscriptions(self._counters, options.max_inbox)
        self._inbound: dict[int, trio.CancelScope] = {}  # dialer id -> its live connection
        self._inbound_count = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        for peer, addr in peers.items():
            self.set_peer(peer, addr)

    # --- the Transport protocol ---------------------------------------------------------------

    def send(self, group: int, msgs: Sequence[Message]) -> None:
        """Queue ``msgs`` for their peers; never blocks. See :class:`raft.transport.Transport`.

        Raises:
            trio.ClosedResourceError: the transport was closed.
            raft.wire.WireError: a message cannot be encoded.
        """
        if self._closed or self._nursery is None:
            raise trio.ClosedResourceError("the transport is closed")
        counters = self._counters
        now = trio.current_time()
        for peer, batch in _group_by_peer(msgs).items():
            if peer == self.node_id or peer not in self._peers:
                counters.dropped_unknown_peer += len(batch)
                continue
            link = self._link(peer)
            model = self._latency.get(peer, self._default_latency)
            due = now
            if model is not None:
                kept = [m for m in batch if not model.drops(self._rng)]
                counters.dropped_link += len(batch) - len(kept)
                if not kept:
                    continue
                batch = kept
                due += model.sample_delay_s(self._rng)
            for frame, count in self._frames(group, batch):
                if not link.outbox.put_nowait(_Pending(due, count, len(frame), frame)):
                    counters.dropped_outbox_full += count

    def subscribe(self, group: int) -> trio.MemoryReceiveChannel[Message]:
        """See :meth:`raft.transport.Transport.subscribe`."""
        return self._subs.subscribe(group)

    def statistics(self) -> TransportStats:
        return self._counters.snapshot(sum(link.outbox.messages for link in self._links.values()))

    # --- peers --------------------------------------------------------------------------------

    @property
    def peers(self) -> dict[int, Address]:
        """A copy of the peer address book."""
        return dict(self._peers)

    def set_peer(self, peer: int, address: Address) -> None:
        """Add a peer, or move it to a new address (an open connection to the old one closes and
        the link redials)."""
        host, port = address
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad address for node {peer}: {address!r}")
        old = self._peers.get(peer)
        self._peers[peer] = (host, port)
        link = self._links.get(peer)
        if old is not None and old != (host, port) and link is not None:
            if link.conn_scope is not None:
                link.conn_scope.cancel()

    def remove_peer(self, peer: int) -> None:
        """Forget a peer: its link stops and what was queued for it is dropped."""
        self._peers.pop(peer, None)
        link = self._links.pop(peer, None)
        if link is not None:
            link.task_scope.cancel()
            self._counters.dropped_unreachable += link.outbox.clear()

    def set_link(self, peer: int, model: LinkModel | None) -> None:
        """Set the link model towards ``peer`` (None: back to the default). Applies to frames
        sent from now on."""
        if model is None:
            self._latency.pop(peer, None)
        else:
            self._latency[peer] = model

    # --- sending side -------------------------------------------------------------------------

    def _frames(self, group: int, batch: list[Message]):
        """Encode ``batch`` as one frame, or one frame per message if that is over the limit."""
        frame = encode_frame(group, batch)
        if len(frame) - 4 <= self._options.max_frame:
            yield frame, len(batch)
            return
        if len(batch) > 1:
            for msg in batch:
                yield from self._frames(group, [msg])
            return
        self._counters.dropped_too_large += 1
        logger.warning(
            "node %d: dropped a %s message of %d bytes to node %d: over max_frame (%d)",
            self.node_id, batch[0].type.name, len(frame), batch[0].to, self._options.max_frame,
        )

    def _link(self, peer: int) -> _TcpLink:
        link = self._links.get(peer)
        if link is None:
            opts = self._options
            link = _TcpLink(peer, _Outbox(opts.max_outbox, opts.max_outbox_bytes))
            self._links[peer] = link
            self._nursery.start_soon(self._run_link, link, name=f"tcp {self.node_id}->{peer}")
        return link

    async def _run_link(self, link: _TcpLink) -> None:
        opts = self._options
        counters = self._counters
        backoff = Backoff(self._rng, opts.backoff_initial_s, opts.backoff_max_s)
        failures = 0
        with link.task_scope:
            while True:
                await link.outbox.wait_nonempty()
                address = self._peers[link.peer]
                stream = await self._dial(address)
                if isinstance(stream, str):
                    counters.connect_failures += 1
                    counters.dropped_unreachable += link.outbox.clear()
                    failures += 1
                    log = logger.info if failures == 1 else logger.debug
                    log("node %d: cannot reach node %d at %s:%d (%s)",
                        self.node_id, link.peer, *address, stream)
                    await trio.sleep(backoff.next_delay_s())
                    continue
                failures = 0
                counters.connects += 1
                if link.was_connected:
                    counters.reconnects += 1
                link.was_connected = True
                opened = trio.current_time()
                reason = await self._run_connection(link, stream)
                logger.info("node %d: connection to node %d at %s:%d ended: %s",
                            self.node_id, link.peer, *address, reason)
                if trio.current_time() - opened >= opts.backoff_max_s:
                    backoff.reset()
                await trio.sleep(backoff.next_delay_s())

    async def _dial(self, address: Address) -> trio.SocketStream | str:
        """A connected stream, or why there is none."""
        with trio.move_on_after(self._options.connect_timeout_s):
            try:
                return await trio.open_tcp_stream(*address)
            except OSError as exc:
                return str(exc) or type(exc).__name__
        return f"no answer within {self._options.connect_timeout_s} s"

    async def _run_connection(self, link: _TcpLink, stream: trio.SocketStream) -> str:
        """Write ``link``'s frames to ``stream`` until it fails; return why it ended."""
        outcome = {"reason": "closed"}
        async with stream:
            with trio.CancelScope() as scope:
                link.conn_scope = scope
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_for_close, stream, nursery.cancel_scope,
                                           outcome)
                        outcome["reason"] = await self._write_frames(link, stream)
                        nursery.cancel_scope.cancel()
                finally:
                    link.conn_scope = None
            if scope.cancelled_caught:
                outcome["reason"] = "peer address changed"
        return outcome["reason"]

    async def _write_frames(self, link: _TcpLink, stream: trio.SocketStream) -> str:
        counters = self._counters
        hello = encode_handshake(self.node_id, link.peer)
        try:
            await stream.send_all(hello)
        except _CONNECTION_ERRORS as exc:
            return f"handshake failed: {exc!r}"
        counters.bytes_sent += len(hello)
        counters.writes += 1
        while True:
            await link.outbox.wait_due()
            batch = link.outbox.take_due(self._options.max_write_bytes)
            data = b"".join([item.payload for item in batch])
            count = sum(item.count for item in batch)
            written = False
            try:
                await stream.send_all(data)
                written = True
            except _CONNECTION_ERRORS as exc:
                return f"write failed: {exc!r}"
            finally:
                if not written:  # failed or cancelled: the batch is lost
                    counters.dropped_unreachable += count
            counters.sent += count
            counters.bytes_sent += len(data)
            counters.writes += 1

    async def _watch_for_close(
        self, stream: trio.SocketStream, cancel_scope: trio.CancelScope, outcome: dict
    ) -> None:
        """The acceptor never writes: any read result means the connection is over."""
        try:
            data = await stream.receive_some(1024)
        except _CONNECTION_ERRORS as exc:
            outcome["reason"] = f"read failed: {exc!r}"
        else:
            outcome["reason"] = "closed by the peer" if not data else "the peer wrote data"
        cancel_scope.cancel()

    # --- receiving side -----------------------------------------------------------------------

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            who = f"{host}:{port}"
        except OSError:
            who = "a peer"
        if self._inbound_count >= self._options.max_inbound:
            logger.warning("node %d: refused a connection from %s: %d inbound already",
                           self.node_id, who, self._inbound_count)
            await stream.aclose()
            return
        self._inbound_count += 1
        try:
            async with stream:
                await self._read_connection(stream, who)
        finally:
            self._inbound_count -= 1

    async def _read_connection(self, stream: trio.SocketStream, who: str) -> None:
        opts = self._options
        counters = self._counters
        decoder = FrameDecoder(opts.max_frame)
        try:
            hello = None
            with trio.move_on_after(opts.handshake_timeout_s):
                while hello is None:
                    data = await stream.receive_some(opts.recv_bytes)
                    if not data:
                        logger.info("node %d: %s closed before its handshake", self.node_id, who)
                        return
                    counters.bytes_received += len(data)
                    hello = decoder.feed_handshake(data)
            if hello is None:
                logger.warning("node %d: closing connection from %s: no handshake within %s s",
                               self.node_id, who, opts.handshake_timeout_s)
                return
            if hello.acceptor != self.node_id:
                raise WireError(f"the dialer wants node {hello.acceptor}, this is node "
                                f"{self.node_id} (stale address?)")
            who = f"node {hello.dialer} at {who}"
            counters.accepts += 1
            with trio.CancelScope() as scope:
                older = self._inbound.get(hello.dialer)
                if older is not None:
                    older.cancel()  # the dialer restarted or redialed: the newest wins
                self._inbound[hello.dialer] = scope
                try:
                    deliver = self._subs.deliver
                    for group, msgs in decoder.feed(b""):
                        deliver(group, msgs)
                    while True:
                        data = await stream.receive_some(opts.recv_bytes)
                        if not data:
                            logger.info("node %d: %s closed its connection", self.node_id, who)
                            return
                        counters.bytes_received += len(data)
                        for group, msgs in decoder.feed(data):
                            deliver(group, msgs)
                finally:
                    if self._inbound.get(hello.dialer) is scope:
                        del self._inbound[hello.dialer]
            if scope.cancelled_caught:
                logger.info("node %d: replaced the connection from %s by a newer one",
                            self.node_id, who)
        except WireError as exc:
            counters.decode_errors += 1
            logger.warning("node %d: closing connection from %s: %s", self.node_id, who, exc)
        except _CONNECTION_ERRORS as exc:
            logger.info("node %d: connection from %s lost: %r", self.node_id, who, exc)

    def _close(self) -> None:
        self._closed = True
        self._subs.close()
        for link in self._links.values():
            link.outbox.clear()


async def serve_tcp_transport(
    node_id: int,
    listen: Address = ("127.0.0.1", 0),
    peers: Mapping[int, Address] | None = None,
    latency: LinkModel | Mapping[int, LinkModel] | None = None,
    *,
    seed: int | None = None,
    options: TcpOptions | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a TCP transport until cancelled; for ``nursery.start``.

    Args:
        node_id: this node's id (positive).
        listen: ``(host, port)`` to listen on; port 0 picks a free port (see
            :attr:`TcpTransport.address`). Loopback by default.
        peers: ``{node_id: (host, port)}`` of the peers to send to; more can be added later
            with :meth:`TcpTransport.set_peer`.
        latency: a :class:`LinkModel` for every outbound link, or ``{peer: LinkModel}``, or None.
        seed: seeds the ``random.Random`` behind link models and backoff jitter (None: from the
            operating system).
        options: limits and timings.
        task_status: ``started(transport)`` is called once the node is listening.

    Cancellation: on cancel, every connection and the listener close; queued frames are lost and
    subscribers' channels end.
    """
    if node_id < 1:
        raise ValueError(f"node ids are positive, got {node_id}")
    options = TcpOptions() if options is None else options
    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        address = listeners[0].socket.getsockname()[:2]
        transport = TcpTransport(
            node_id, address, peers or {}, latency, random.Random(seed), options
        )
        try:
            async with trio.open_nursery() as nursery:
                transport._nursery = nursery
                await nursery.start(trio.serve_listeners, transport._handle_inbound, listeners)
                logger.debug("node %d: listening on %s:%d", node_id, *address)
                task_status.started(transport)
                await trio.sleep_forever()
        finally:
            transport._close()
    finally:
        for listener in listeners:
            listener.socket.close()


@asynccontextmanager
async def open_tcp_transport(
    node_id: int,
    listen: Address = ("127.0.0.1", 0),
    peers: Mapping[int, Address] | None = None,
    latency: LinkModel | Mapping[int, LinkModel] | None = None,
    *,
    seed: int | None = None,
    options: TcpOptions | None = None,
) -> AsyncIterator[TcpTransport]:
    """A TCP transport for the duration of the block; arguments as for
    :func:`serve_tcp_transport`.

    Example::

        async with open_tcp_transport(1, ("127.0.0.1", 0), {2: ("127.0.0.1", 7002)}) as t:
            inbox = t.subscribe(group=7)
            t.send(7, [Message(MessageType.HEARTBEAT, to=2, frm=1, term=3)])
    """
    async with trio.open_nursery() as nursery:
        transport = await nursery.start(
            partial(serve_tcp_transport, node_id, listen, peers, latency, seed=seed,
                    options=options)
        )
        try:
            yield transport
        finally:
            nursery.cancel_scope.cancel()
