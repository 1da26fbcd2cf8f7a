"""The TCP transport: Raft messages of many groups between nodes over trio TCP streams (ARCH §3).

Connections
-----------
A node pair shares exactly one TCP connection. It carries the frames of every group the two nodes
host, in both directions, and the node ids decide who dials it: **the lower id dials the higher**.
A node keeps a connection up to each configured peer with a higher id -- it dials as soon as the
peer is configured (``peers`` of :func:`open_tcp_transport`, or :meth:`TcpTransport.set_peer`),
whether or not it has anything to send, since the peer may have -- and never dials a peer with a
lower id, whose connection it waits for instead. An acceptor refuses a connection from a node
whose id is not lower than its own (or is 0, no node's id), so two nodes cannot end up with two
connections, not even when both start at the same moment.

On a new connection the dialer first writes a handshake frame (``[version, "meridian-raft",
dialer_id, acceptor_id]``, see :mod:`raft.wire`), then data frames. The acceptor closes the
connection, with a logged reason, if the handshake is missing, of another wire version, meant
for another node id or another cluster (:attr:`TcpOptions.cluster`), or from a node that may
not dial it (an id not lower than its own).
Otherwise it answers with a handshake of its own (the two ids swapped) and then uses the
connection for its frames to that peer as well: from then on each side runs a reader and a
writer on the same stream. The dialer checks the answer the same way, and closes the connection
if none arrives within ``handshake_timeout_s``. A newer connection from the same dialer (one
accepted later) replaces the older one (the dialer restarted, or redialed before the acceptor
noticed that the old connection was gone); an older one whose handshake is read only after a
newer one's is closed, so that what it carries is not delivered after newer frames. Any
:class:`~raft.wire.WireError` closes that one connection, is logged and counted
(``decode_errors``, on whichever side read the bad bytes); it never reaches the caller. Every
connection that ends is logged with the reason.

An acceptor delivers what any Meridian node with a lower id sends it, configured as a peer or
not; it sends to a node only once that node is configured (until then its messages to it count
as ``dropped_unknown_peer``), and then over the connection that node dialed. So:

- both nodes configured: one connection, dialed by the lower id, carrying both directions;
- only the lower id configured: the lower id dials and its messages arrive; the higher id's
  messages to it are dropped as to an unknown peer until it is told about the lower id, and
  from then on use the same connection (no new one is made);
- only the higher id configured: nobody dials. The higher id's messages to the lower wait for a
  connection and are dropped (``dropped_unreachable``, see below) until the lower id is told
  about the higher one and dials. (A higher id never uses the address it has for a lower one.)

:meth:`~TcpTransport.remove_peer` drops what is queued for the peer; a connection this node dialed
to it closes, one the peer dialed to this node stays open for what the peer sends.

Reconnecting
------------
The dialing side redials whenever its connection ends, after a backoff: exponential, with jitter,
bounded by ``backoff_max_s``, drawn from the transport's seeded ``random.Random``. The backoff
resets once a connection has stayed up for ``backoff_max_s``. If a dial fails, everything queued
for that peer is dropped (``dropped_unreachable``) -- messages are never older than one
connection attempt when they leave.

A connection also ends when a write makes no progress for ``send_stall_timeout_s``: the peer
reads nothing (hung, or cut off without a reset, when the kernel may keep the connection for a
quarter of an hour or, while the peer's kernel still answers, forever). Without that bound the
link would carry nothing from then on and never be redialed; the batch being written is
dropped (``dropped_unreachable``). The kernel ends a connection to a peer gone silent within the
same time too (:func:`detect_dead_peers`), even when too little is sent to fill its buffers.

The accepting side cannot dial; its equivalent of a connection attempt is a wait. While it has
messages queued for a peer and no connection from it, it waits up to ``connect_timeout_s`` (as
long as a dial may take) for the peer to dial; if none arrives, everything queued for that peer
is dropped (``dropped_unreachable``), and the next wait starts when there is something to send
again. A message that leaves has thus waited at most one such wait for a connection. The outbox
stays bounded throughout.

Writing
-------
``send`` encodes at once (so an unencodable message raises in the caller) and appends one frame
per peer to that peer's bounded outbox. The connection's writer drains every frame that is due
into one buffer and writes it with one ``send_all`` (up to ``max_write_bytes``): coalescing
frames is worth about 20x in small messages per second on loopback, against one write per frame.
Both ends of a connection write this way.

A :class:`~raft.transport.LinkModel` applies on the sending side: a frame is held in the outbox
until its due time (send time + delay + jitter). Due times never decrease along a link, so jitter
does not reorder a link (TCP would not either).

Memory is bounded everywhere: outboxes by frames and bytes, each subscription by messages, the
decoder by ``max_frame``, and the number of inbound connections.
"""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

import trio

from .transport import (
    DEFAULT_MAX_INBOX,
    DEFAULT_MAX_OUTBOX,
    LinkModel,
    TransportStats,
    _Counters,
    apply_link_model,
    encode_frames,
    _group_by_peer,
    _Outbox,
    _Pending,
    _Subscriptions,
)
from .types import Message, MessageType
from .wire import (
    DEFAULT_MAX_FRAME,
    MAX_CLUSTER_NAME,
    FrameDecoder,
    Handshake,
    WireError,
    encode_handshake,
)

__all__ = ["TcpOptions", "TcpTransport", "Backoff", "open_tcp_transport", "serve_tcp_transport",
           "receive_available", "write_nowait", "send_all_or_stall", "detect_dead_peers"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]

_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _default_max_inbound() -> int:
    """Inbound connections held at once by default: 1024, but no more than an eighth of the
    process's file descriptors. Anyone who reaches the port may open connections, and each
    holds a descriptor until its handshake times out; the rest must stay for the node's log
    segments, its stores and its client connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 8))


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """Limits and timings of a :class:`TcpTransport`. The defaults suit a LAN or loopback."""

    max_outbox: int = DEFAULT_MAX_OUTBOX  # frames waiting per peer
    max_outbox_bytes: int = 64 << 20  # bytes waiting per peer (a larger lone frame still fits)
    max_inbox: int = DEFAULT_MAX_INBOX  # messages waiting per subscribed group
    max_frame: int = DEFAULT_MAX_FRAME  # largest frame body sent or accepted, bytes
    max_write_bytes: int = 1 << 20  # frames coalesced per send_all (at least one)
    recv_bytes: int = 256 << 10  # bytes asked of the socket per receive
    # concurrent inbound connections (more are closed at once); see _default_max_inbound
    max_inbound: int = field(default_factory=_default_max_inbound)
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 5.0
    # how long a write may make no progress before the connection is closed: the peer reads
    # nothing (hung, or cut off without a reset), and only a new connection can bring it back
    send_stall_timeout_s: float = 10.0
    # the cluster's name, sent and checked in every handshake: a node of another cluster (ids
    # are unique within one only) at an address reused for this one is refused
    cluster: str = ""

    def __post_init__(self):
        for name in ("max_outbox", "max_outbox_bytes", "max_inbox", "max_frame",
                     "max_write_bytes", "recv_bytes", "max_inbound"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if min(self.connect_timeout_s, self.handshake_timeout_s, self.send_stall_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if type(self.cluster) is not str or len(self.cluster.encode()) > MAX_CLUSTER_NAME:
            raise ValueError(f"cluster must be a str of at most {MAX_CLUSTER_NAME} bytes")


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


async def receive_available(sock: trio.socket.SocketType, fd: int, max_bytes: int) -> bytes:
    """What the socket holds, up to ``max_bytes``, once there is something (b"" at its end).

    ``SocketStream.receive_some`` first tries a read, which fails on a socket that a peer
    writes to now and then, and yields to the scheduler even when the read succeeds; on a
    connection that carries one small message at a time, waiting for readability first and
    then reading once halves the system calls and skips that extra scheduling pass.

    Raises:
        OSError: the read failed. trio.ClosedResourceError: the socket was closed meanwhile.
    """
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue


def group_frames(frames: list[tuple[int, list[Message]]]
                 ) -> Sequence[tuple[int, list[Message]]]:
    """The frames of one read as one ``(group, messages)`` per group, each group's messages
    in arrival order (groups in order of first appearance). A node steps everything it is
    handed before it handles a Ready, so appends that arrived together share one fsync."""
    if len(frames) <= 1:
        return frames
    by_group: dict[int, list[Message]] = {}
    for group, msgs in frames:
        if group in by_group:
            by_group[group].extend(msgs)
        else:
            by_group[group] = list(msgs)
    return list(by_group.items())


def _check_addressed(msgs: Sequence[Message], peer: int, me: int) -> None:
    """Raises WireError unless every message is to this node and from the connection's peer
    (as its handshake named it): a message that names another sender would be counted as that
    node's vote or acknowledgement. A READ_INDEX may name another: a follower forwards its
    requester's to the leader, which answers the requester."""
    for m in msgs:
        if m.to != me or (m.frm != peer and m.type is not MessageType.READ_INDEX):
            raise WireError(f"a message from node {m.frm} to node {m.to} on the connection "
                            f"from node {peer} to node {me}")


def detect_dead_peers(stream: trio.abc.Stream, timeout_s: float) -> None:
    """Let the kernel end a connection whose peer has gone silent within about ``timeout_s``:
    data it sent that stays unacknowledged that long (TCP_USER_TIMEOUT), or, on an idle
    connection, keepalive probes unanswered from a third of it on. Without them a peer cut
    off without a reset (a partition that drops packets, a machine that died) keeps the
    connection open for a quarter of an hour while data is unacknowledged, and forever while
    nothing is sent. Does nothing for a stream that is not a TCP socket."""
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(timeout_s / 3))
    interval = max(1, int(timeout_s / 9))
    with suppress(OSError, AttributeError):  # options this kernel lacks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout_s * 1000))


async def send_all_or_stall(stream: trio.abc.SendStream, data: bytes,
                            stall_timeout_s: float) -> bool:
    """Write all of ``data``; False if the peer took none of it for ``stall_timeout_s``.

    A peer that reads nothing -- hung, or cut off without a reset -- leaves a write blocked
    for as long as the kernel keeps the connection, which may be forever: the connection then
    carries nothing and is never replaced. On a socket the bound is on progress, not on the
    whole write, so a large write to a slow peer that keeps reading never stalls; on any other
    stream it bounds the whole write. After a stall part of ``data`` may have been written,
    so the connection must be closed.

    Raises:
        trio.BrokenResourceError, trio.ClosedResourceError, OSError: the write failed.
    """
    if stall_timeout_s == math.inf:
        await stream.send_all(data)
        return True
    if not isinstance(stream, trio.SocketStream):
        with trio.move_on_after(stall_timeout_s):
            await stream.send_all(data)
            return True
        return False
    sock = stream.socket
    await trio.lowlevel.checkpoint()
    with memoryview(data) as view:
        # What the socket takes at once needs no timer (a cancel scope with a deadline costs
        # about as much as the write); an error here is met again by the send below.
        sent = write_nowait(sock.fileno(), view)
        while sent < len(view):
            with trio.move_on_after(stall_timeout_s) as scope, view[sent:] as rest:
                sent += await sock.send(rest)
            if scope.cancelled_caught:
                return False
    return True


def write_nowait(fd: int, data: bytes | memoryview) -> int:
    """Write what the (non-blocking) socket takes now; 0 on any error, which the writer task
    then meets and reports on its own attempt."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0


class _Connection:
    """One live connection: the cancel scope its reader and writer run in, and why it ended."""

    __slots__ = ("scope", "reason", "warn", "fd", "idle_fd")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason = "closed"
        self.warn = False  # log the end as a warning (the peer misbehaved)
        # The socket's descriptor while the writer is idle (handshake done, nothing being
        # written) and the fast path is open, else -1: then ``send`` may write a frame at
        # once, without waking the writer.
        self.fd = -1
        # The socket's descriptor while the writer is idle, whether the fast path is open or
        # not: the reader reopens the fast path from it (see ``send``).
        self.idle_fd = -1

    def close(self, reason: str, *, warn: bool = False) -> None:
        """End the connection; the first reason given is the one reported."""
        self.fd = self.idle_fd = -1
        if not self.scope.cancel_called:
            self.reason = reason
            self.warn = warn
            self.scope.cancel()


class _TcpLink:
    """Everything about one peer: its outbox, its current connection, and the task that dials it
    (a peer with a higher id) or that drops what waits too long for its connection (lower id)."""

    __slots__ = ("peer", "dials", "outbox", "task_scope", "conn", "changed", "was_connected",
                 "bytes_sent", "bytes_received", "newest_accepted")

    def __init__(self, peer: int, dials: bool, outbox: _Outbox):
        self.peer = peer
        self.dials = dials
        self.outbox = outbox
        self.task_scope = trio.CancelScope()
        self.conn: _Connection | None = None
        self.changed = trio.lowlevel.ParkingLot()  # unparked whenever ``conn`` changes
        self.was_connected = False
        self.bytes_sent = 0  # frames only, over every connection to the peer
        self.bytes_received = 0
        # The accept number (TcpTransport._accepted) of the newest connection from the peer
        # that was taken as its connection; 0: none yet.
        self.newest_accepted = 0

    def set_conn(self, conn: _Connection | None) -> None:
        self.conn = conn
        self.changed.unpark_all()


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
        self._inbound_count = 0
        self._accepted = 0  # inbound connections so far: numbers them in the order they came
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
            batch, due = apply_link_model(model, batch, self._rng, counters, now)
            if not batch:
                continue
            for frame, count in encode_frames(group, batch, self._options.max_frame, counters,
                                              self.node_id):
                conn = link.conn
                if due <= now and conn is not None and conn.fd >= 0 and not link.outbox:
                    # Fast path: an idle connection and nothing queued ahead. Writing here
                    # saves waking the writer task (one scheduler pass per frame and hop).
                    written = write_nowait(conn.fd, frame)
                    # Later frames queue behind this one (waking the writer) and leave
                    # together, coalesced. The fast path opens again when the writer goes
                    # idle, or when the reader reads with nothing queued (a scheduler pass
                    # has gone by): a message and its answer wake no writer on either side.
                    conn.fd = -1
                    if written:
                        counters.bytes_sent += written
                        link.bytes_sent += written
                        counters.writes += 1
                    if written == len(frame):
                        counters.sent += count
                        continue
                    # The rest goes first, through the writer, and on this connection only:
                    # on any other it would be half a frame, garbage to the peer.
                    tail = frame[written:]
                    link.outbox.put_nowait(_Pending(due, count, len(tail), tail, conn), force=True)
                    continue
                if not link.outbox.put_nowait(_Pending(due, count, len(frame), frame)):
                    counters.dropped_outbox_full += count

    def subscribe(self, group: int) -> trio.MemoryReceiveChannel[Message]:
        """See :meth:`raft.transport.Transport.subscribe`."""
        return self._subs.subscribe(group)

    def set_handler(self, group: int, handler) -> None:
        """See :meth:`raft.transport.Transport.set_handler`."""
        self._subs.set_handler(group, handler)

    def bytes_by_peer(self) -> dict[int, tuple[int, int]]:
        """``{peer: (bytes sent, bytes received)}`` in frames, since this transport started
        (handshakes not counted)."""
        return {peer: (link.bytes_sent, link.bytes_received)
                for peer, link in self._links.items()}

    def statistics(self) -> TransportStats:
        return self._counters.snapshot(sum(link.outbox.messages for link in self._links.values()))

    # --- peers --------------------------------------------------------------------------------

    @property
    def peers(self) -> dict[int, Address]:
        """A copy of the peer address book."""
        return dict(self._peers)

    def set_peer(self, peer: int, address: Address) -> None:
        """Add a peer, or move it to a new address.

        A peer with a higher id is dialed at once (moved: the connection to the old address
        closes and the new one is dialed); a peer with a lower id is expected to dial this node,
        and its address is only recorded.

        Raises:
            trio.ClosedResourceError: the transport was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        host, port = address
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad address for node {peer}: {address!r}")
        old = self._peers.get(peer)
        self._peers[peer] = (host, port)
        if peer == self.node_id or self._nursery is None:
            return  # the links start with the transport (_start)
        link = self._link(peer)
        if link.dials and old is not None and old != (host, port) and link.conn is not None:
            link.conn.close("peer address changed")

    def remove_peer(self, peer: int) -> None:
        """Forget a peer: what was queued for it is dropped and nothing more is sent to it. A
        connection this node dialed to it closes; one it dialed stays open for what it sends
        (and for the rest of a frame already half written to it, which is not dropped)."""
        self._peers.pop(peer, None)
        link = self._links.get(peer)
        if link is None:
            return
        # A connection the peer dialed stays open: the rest of a frame half written to it
        # must still leave on it.
        live = None if link.dials else link.conn
        self._counters.dropped_unreachable += link.outbox.clear(live)
        if link.dials or link.conn is None:
            if link.conn is not None:
                logger.info("node %d: closing connection to node %d: peer removed",
                            self.node_id, peer)
            link.task_scope.cancel()
            del self._links[peer]

    def set_link(self, peer: int, model: LinkModel | None) -> None:
        """Set the link model towards ``peer`` (None: back to the default). Applies to frames
        sent from now on."""
        if model is None:
            self._latency.pop(peer, None)
        else:
            self._latency[peer] = model

    # --- links --------------------------------------------------------------------------------

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for peer in self._peers:
            if peer != self.node_id:
                self._link(peer)

    def _link(self, peer: int) -> _TcpLink:
        link = self._links.get(peer)
        if link is None:
            opts = self._options
            dials = self.node_id < peer
            link = _TcpLink(peer, dials, _Outbox(opts.max_outbox, opts.max_outbox_bytes))
            self._links[peer] = link
            if dials:
                self._nursery.start_soon(self._run_link, link, self._dial_forever,
                                         name=f"tcp {self.node_id}->{peer}")
            else:
                self._nursery.start_soon(self._run_link, link, self._expire_while_unconnected,
                                         name=f"tcp {self.node_id}<-{peer}")
        return link

    def _forget_if_unused(self, link: _TcpLink) -> None:
        """Drop the link of a peer that is not configured once it has no connection."""
        peer = link.peer
        if link.conn is None and peer not in self._peers and self._links.get(peer) is link:
            link.task_scope.cancel()
            del self._links[peer]
            self._counters.dropped_unreachable += link.outbox.clear()

    async def _run_link(self, link: _TcpLink, run) -> None:
        with link.task_scope:
            await run(link)

    # --- the dialing side (towards a higher id) -----------------------------------------------

    async def _dial_forever(self, link: _TcpLink) -> None:
        """Keep a connection up to ``link.peer``: dial, run the connection, back off, redial."""
        opts = self._options
        counters = self._counters
        backoff = Backoff(self._rng, opts.backoff_initial_s, opts.backoff_max_s)
        failures = 0
        while True:
            address = self._peers.get(link.peer)
            if address is None:
                return  # removed (remove_peer cancels this task as well)
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
            if self._peers.get(link.peer) != address:  # moved or removed while dialing
                await stream.aclose()
                continue
            failures = 0
            counters.connects += 1
            if link.was_connected:
                counters.reconnects += 1
            link.was_connected = True
            opened = trio.current_time()
            who = f"node {link.peer} at {address[0]}:{address[1]}"
            async with stream:
                conn = await self._run_connection(
                    link, stream, FrameDecoder(opts.max_frame),
                    hello=encode_handshake(self.node_id, link.peer, opts.cluster),
                    expect=Handshake(link.peer, self.node_id, opts.cluster),
                )
                if conn.warn:
                    logger.warning("node %d: closing connection to %s: %s",
                                   self.node_id, who, conn.reason)
                else:
                    logger.info("node %d: connection to %s ended: %s",
                                self.node_id, who, conn.reason)
            if trio.current_time() - opened >= opts.backoff_max_s:
                backoff.reset()
            await trio.sleep(backoff.next_delay_s())

    async def _dial(self, address: Address) -> trio.SocketStream | str:
        """A connected stream, or why there is none."""
        with trio.move_on_after(self._options.connect_timeout_s):
            try:
                stream = await trio.open_tcp_stream(*address)
                detect_dead_peers(stream, self._options.send_stall_timeout_s)
                return stream
            except OSError as exc:
                return str(exc) or type(exc).__name__
        return f"no answer within {self._options.connect_timeout_s} s"

    # --- the accepting side (from a lower id) -------------------------------------------------

    async def _expire_while_unconnected(self, link: _TcpLink) -> None:
        """The accepting side's equivalent of a failed dial: drop what is queued for a peer that
        does not dial within ``connect_timeout_s``."""
        wait_s = self._options.connect_timeout_s
        failures = 0
        while True:
            await link.outbox.wait_nonempty()
            if link.conn is not None:
                failures = 0
                await link.changed.park()  # until this connection ends or is replaced
                continue
            with trio.move_on_after(wait_s):
                while link.conn is None:
                    await link.changed.park()
            if link.conn is None:
                dropped = link.outbox.clear()
                self._counters.dropped_unreachable += dropped
                failures += 1
                log = logger.info if failures == 1 else logger.debug
                log("node %d: no connection from node %d within %s s, dropped %d messages "
                    "(node %d is down, or does not know this node's address)",
                    self.node_id, link.peer, wait_s, dropped, link.peer)

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
        self._accepted += 1
        detect_dead_peers(stream, self._options.send_stall_timeout_s)
        number = self._accepted
        try:
            async with stream:
                await self._accept(stream, who, number)
        finally:
            self._inbound_count -= 1

    async def _accept(self, stream: trio.SocketStream, who: str, number: int) -> None:
        """Read the handshake of the ``number``-th inbound connection and run it."""
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
            if hello.dialer == 0:
                # No node has id 0 (raft.types.NONE): what it sent would be dropped as from
                # no node, but not before it had taken a link and its outbox.
                raise WireError("the dialer says it is node 0, which no node is")
            if hello.dialer >= self.node_id:
                raise WireError(f"node {hello.dialer} may not dial node {self.node_id}: "
                                "the lower node id dials the higher")
            if hello.cluster != opts.cluster:
                raise WireError(f"node {hello.dialer} is of cluster {hello.cluster!r}, this "
                                f"node of {opts.cluster!r} (an address of another cluster?)")
        except WireError as exc:
            counters.decode_errors += 1
            logger.warning("node %d: closing connection from %s: %s", self.node_id, who, exc)
            return
        except _CONNECTION_ERRORS as exc:
            logger.info("node %d: connection from %s lost: %r", self.node_id, who, exc)
            return
        peer = hello.dialer
        who = f"node {peer} at {who}"
        # A dialer opens a connection only once it has given up on the one before, so of two
        # connections from a node the one that came later is the newer, whichever handshake
        # was read first. An older one is a dial given up on: what it carries was sent before
        # what the newer one has delivered, and replacing the newer one would cut the live
        # connection.
        known = self._links.get(peer)
        if known is not None and known.newest_accepted > number:
            logger.info("node %d: closing connection from %s: a newer one from it came first",
                        self.node_id, who)
            return
        counters.accepts += 1
        link = self._link(peer)
        link.newest_accepted = number
        try:
            conn = await self._run_connection(
                link, stream, decoder, hello=encode_handshake(self.node_id, peer, opts.cluster),
                expect=None
            )
        finally:
            self._forget_if_unused(link)
        if conn.warn:
            logger.warning("node %d: closing connection from %s: %s", self.node_id, who,
                           conn.reason)
        else:
            logger.info("node %d: connection from %s ended: %s", self.node_id, who, conn.reason)

    # --- one connection, either side ----------------------------------------------------------

    async def _run_connection(
        self,
        link: _TcpLink,
        stream: trio.SocketStream,
        decoder: FrameDecoder,
        *,
        hello: bytes,
        expect: Handshake | None,
    ) -> _Connection:
        """Make ``stream`` the connection of ``link`` (replacing an older one) and run its
        reader and writer until either ends; return the ended connection, with its reason.

        ``hello`` is written first; ``expect`` is the handshake to read first (None: it was
        read already).
        """
        conn = _Connection()
        older = link.conn
        if older is not None:
            older.close(f"replaced by a newer connection from node {link.peer}")
        link.set_conn(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_frames, stream, decoder, expect, conn, link)
                    await self._write_frames(link, stream, hello, conn)
        finally:
            if link.conn is conn:
                link.set_conn(None)
        return conn

    async def _write_frames(
        self, link: _TcpLink, stream: trio.SocketStream, hello: bytes, conn: _Connection
    ) -> None:
        counters = self._counters
        try:
            await stream.send_all(hello)
        except _CONNECTION_ERRORS as exc:
            conn.close(f"handshake failed: {exc!r}")
            return
        counters.bytes_sent += len(hello)
        counters.writes += 1
        outbox = link.outbox
        max_write_bytes = self._options.max_write_bytes
        stall_timeout_s = self._options.send_stall_timeout_s
        fd = stream.socket.fileno()
        while True:
            if not outbox:
                if not conn.scope.cancel_called:
                    conn.fd = conn.idle_fd = fd  # idle: send() may write directly
                await outbox.wait_nonempty()
            conn.fd = conn.idle_fd = -1
            await outbox.wait_due()
            batch = outbox.take_due(max_write_bytes)
            if batch[0].conn is not None and batch[0].conn is not conn:
                # The tail of a frame half written to an earlier connection (only ever the
                # head: it was queued with nothing ahead of it). Its messages are lost.
                counters.dropped_unreachable += batch[0].count
                del batch[0]
                if not batch:
                    continue
            data = b"".join([item.payload for item in batch])
            count = sum(item.count for item in batch)
            written = False
            try:
                written = await send_all_or_stall(stream, data, stall_timeout_s)
            except _CONNECTION_ERRORS as exc:
                conn.close(f"write failed: {exc!r}")
                return
            finally:
                if not written:  # failed, stalled or cancelled: the batch is lost
                    counters.dropped_unreachable += count
            if not written:
                conn.close(f"the peer read nothing for {stall_timeout_s} s", warn=True)
                return
            counters.sent += count
            counters.bytes_sent += len(data)
            link.bytes_sent += len(data)
            counters.writes += 1

    async def _read_frames(
        self,
        stream: trio.SocketStream,
        decoder: FrameDecoder,
        expect: Handshake | None,
        conn: _Connection,
        link: _TcpLink,
    ) -> None:
        opts = self._options
        counters = self._counters
        deliver = self._subs.deliver
        try:
            if expect is not None:
                hello = None
                with trio.move_on_after(opts.handshake_timeout_s):
                    while hello is None:
                        data = await stream.receive_some(opts.recv_bytes)
                        if not data:
                            conn.close("closed by the peer before its handshake")
                            return
                        counters.bytes_received += len(data)
                        hello = decoder.feed_handshake(data)
                if hello is None:
                    conn.close(f"no handshake within {opts.handshake_timeout_s} s", warn=True)
                    return
                if hello != expect:
                    raise WireError(
                        f"the answer is from node {hello.dialer} to node {hello.acceptor} of "
                        f"cluster {hello.cluster!r}, expected one from node {expect.dialer} to "
                        f"node {expect.acceptor} of {expect.cluster!r}"
                    )
            # Frame bytes that came in the same read as the handshake (either side's).
            link.bytes_received += decoder.buffered
            peer, me = link.peer, self.node_id
            for group, msgs in decoder.feed(b""):
                _check_addressed(msgs, peer, me)
                deliver(group, msgs)
            sock = stream.socket
            fd = sock.fileno()
            recv_bytes = opts.recv_bytes
            while True:
                data = await receive_available(sock, fd, recv_bytes)
                if not data:
                    conn.close("closed by the peer")
                    return
                counters.bytes_received += len(data)
                link.bytes_received += len(data)
                if conn.fd < 0 and conn.idle_fd >= 0 and not link.outbox:
                    conn.fd = conn.idle_fd  # reopen the fast path (see send)
                for group, msgs in group_frames(decoder.feed(data)):
                    _check_addressed(msgs, peer, me)
                    deliver(group, msgs)
        except WireError as exc:
            counters.decode_errors += 1
            conn.close(str(exc), warn=True)
        except _CONNECTION_ERRORS as exc:
            conn.close(f"read failed: {exc!r}")

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
        peers: ``{node_id: (host, port)}`` of the peers to talk to (those with a higher id are
            dialed at once); more can be added later with :meth:`TcpTransport.set_peer`.
        latency: a :class:`LinkModel` for what this node sends to every peer, or
            ``{peer: LinkModel}``, or None.
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
                transport._start(nursery)
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
