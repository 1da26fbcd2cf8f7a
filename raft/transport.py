"""How Raft messages travel between nodes: the :class:`Transport` protocol, link models for
simulated WAN delay, and :class:`MemoryNetwork`, an in-process implementation (ARCH §3).

A transport belongs to one node and carries the messages of every Raft group the node hosts.
Its contract, shared by this module's in-memory network and :mod:`raft.tcp` (and checked for both
by one conformance suite, STYLE §3):

- ``send(group, msgs)`` never blocks and never waits for the peer. Each message goes to the
  bounded outbox of the peer named by ``msg.to``; a message that does not fit, or whose peer is
  unknown, is dropped and counted. Raft tolerates loss: it retries on its own schedule.
- Per (sender, receiver) link, messages arrive in the order they were sent, or not at all.
- ``subscribe(group)`` returns a bounded receive channel for one group's messages. A message for
  a group nobody subscribed to, or whose channel is full, is dropped and counted: a slow group
  never stalls the others sharing the link.
- Every drop shows up in :meth:`Transport.statistics`.

A :class:`LinkModel` delays (and optionally drops) traffic on the sending side, to simulate WAN
links on a kernel without netem. Delay is measured from the ``send`` call; a frame is held until
its due time. Jitter never reorders a link: a frame is never due before the one sent ahead of it
on the same link, as on a real TCP connection. (Reordering, duplication and the like belong to the
deterministic simulator, not to a trio transport.)

No hidden tasks: each endpoint is an async context manager that runs its link tasks in its own
nursery and stops them on exit.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import trio

from .types import Message
from .wire import DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE, FrameDecoder, encode_frame

__all__ = [
    "Transport",
    "TransportStats",
    "LinkModel",
    "MemoryNetwork",
    "MemoryTransport",
    "DEFAULT_MAX_OUTBOX",
    "DEFAULT_MAX_INBOX",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTBOX = 4096  # frames (one per send() call and peer) waiting per peer
DEFAULT_MAX_INBOX = 4096  # messages waiting per subscribed group


@runtime_checkable
class Transport(Protocol):
    """What a Raft driver needs from the network. Implementations: :class:`MemoryTransport`,
    :class:`raft.tcp.TcpTransport`."""

    node_id: int

    def send(self, group: int, msgs: Sequence[Message]) -> None:
        """Queue ``msgs`` of ``group`` for their peers (``msg.to``); never blocks.

        Messages to an unknown peer, or that do not fit the peer's outbox, are dropped and
        counted.

        Raises:
            trio.ClosedResourceError: the transport was closed.
            raft.wire.WireError: a message cannot be encoded (a bug in the caller).
        """
        ...

    def subscribe(self, group: int) -> trio.MemoryReceiveChannel[Message]:
        """A bounded channel of the messages that arrive for ``group``.

        Close the channel to unsubscribe. The channel ends (``EndOfChannel``) when the transport
        closes.

        Raises:
            RuntimeError: another open channel is subscribed to ``group``.
        """
        ...

    def set_handler(self, group: int,
                    handler: Callable[[Sequence[Message]], None] | None) -> None:
        """Deliver ``group``'s messages by calling ``handler(msgs)`` from the task that received
        them, instead of through a channel (None: back to the channel). Saves a task switch per
        batch; the handler must neither block nor raise.

        Raises:
            trio.ClosedResourceError: the transport was closed.
        """
        ...

    def statistics(self) -> TransportStats:
        """A snapshot of the transport's counters."""
        ...


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters of one transport endpoint since it opened (messages unless named ``bytes_*``).

    Invariant: ``dropped`` is the sum of the ``dropped_*`` fields. Drops on the sending side are
    counted by the sender, drops on the receiving side by the receiver.
    """

    sent: int = 0  # handed to a link: written to a socket / delivered to a peer endpoint
    received: int = 0  # delivered to a subscriber's channel
    dropped: int = 0
    dropped_unknown_peer: int = 0  # no such peer (sender)
    dropped_outbox_full: int = 0  # the peer's outbox was full (sender)
    dropped_unreachable: int = 0  # peer down or connection lost while queued (sender)
    dropped_link: int = 0  # lost by the link model or a partition (sender)
    dropped_too_large: int = 0  # a single message larger than a frame may be (sender)
    dropped_unsubscribed: int = 0  # no subscriber for its group (receiver)
    dropped_inbox_full: int = 0  # the subscriber's channel was full (receiver)
    queued: int = 0  # messages waiting in outboxes now
    bytes_sent: int = 0  # frame bytes written (handshakes included)
    bytes_received: int = 0
    writes: int = 0  # socket writes (TCP): each carries every frame that was due, coalesced
    connects: int = 0  # connections this node dialed and completed (TCP: to higher ids)
    reconnects: int = 0  # of which to a peer that had been connected before
    connect_failures: int = 0  # dial attempts that failed
    accepts: int = 0  # inbound connections whose handshake was accepted
    decode_errors: int = 0  # connections closed because of a WireError (either side)


class _Counters:
    """The mutable counters behind :class:`TransportStats`."""

    __slots__ = tuple(f.name for f in fields(TransportStats) if f.name not in ("dropped", "queued"))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self, queued: int) -> TransportStats:
        values = {name: getattr(self, name) for name in self.__slots__}
        dropped = sum(v for k, v in values.items() if k.startswith("dropped_"))
        return TransportStats(dropped=dropped, queued=queued, **values)


@dataclass(frozen=True, slots=True)
class LinkModel:
    """A one-way link's behaviour: every frame is delayed by ``delay_s`` plus a uniform jitter in
    ``[0, jitter_s)``, and each message is lost with probability ``drop_probability``.

    The randomness comes from the ``random.Random`` passed to :meth:`sample_delay_s` and
    :meth:`drops` (seeded by the owner), never from the global source.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    drop_probability: float = 0.0

    def __post_init__(self):
        for name in ("delay_s", "jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.drop_probability <= 1.0:
            raise ValueError(f"drop_probability must be in [0, 1], got {self.drop_probability!r}")

    def sample_delay_s(self, rng: random.Random) -> float:
        """The delay of one frame."""
        if self.jitter_s:
            return self.delay_s + rng.random() * self.jitter_s
        return self.delay_s

    def drops(self, rng: random.Random) -> bool:
        """Whether one message is lost."""
        return self.drop_probability > 0 and rng.random() < self.drop_probability


def apply_link_model(model: LinkModel | None, batch: list[Message], rng: random.Random,
                     counters: _Counters, now: float) -> tuple[list[Message], float]:
    """The messages of ``batch`` the link does not drop (drops counted) and when they are due
    to leave: ``now`` plus the model's delay (just ``now`` without a model)."""
    if model is None:
        return batch, now
    kept = [m for m in batch if not model.drops(rng)]
    counters.dropped_link += len(batch) - len(kept)
    return kept, now + (model.sample_delay_s(rng) if kept else 0.0)


# --- pieces shared with raft.tcp ----------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """One frame waiting in an outbox."""

    due: float  # trio time at which it may leave
    count: int  # messages in it
    size: int  # bytes (0 when not encoded)
    payload: object
    # The connection a frame's tail must leave on: the rest of a frame whose head was written
    # to that connection alone. None for a whole frame, which any connection may carry.
    conn: object = None


class _Outbox:
    """A bounded FIFO of frames waiting for one link, each held until its due time.

    Bounded by frames and by bytes; :meth:`put_nowait` refuses a frame that does not fit. Due
    times are made non-decreasing on the way in (since the last :meth:`clear`), so the head is
    always the first frame due and jitter cannot reorder the link.
    """

    def __init__(self, max_frames: int, max_bytes: int = 0):
        self.max_frames = max_frames
        self.max_bytes = max_bytes  # 0: unbounded bytes
        self.messages = 0
        self.bytes = 0
        self._frames: deque[_Pending] = deque()
        self._last_due = -math.inf
        self._lot = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._frames)

    def put_nowait(self, item: _Pending, *, force: bool = False) -> bool:
        """Queue ``item``; False if it does not fit. ``force`` queues it beyond the bounds (the
        tail of a frame already half written, which must not be dropped while its connection
        lives: the stream would then be out of frame)."""
        if not force and (len(self._frames) >= self.max_frames or (
            self.max_bytes and self._frames and self.bytes + item.size > self.max_bytes
        )):
            return False
        item.due = max(item.due, self._last_due)
        self._last_due = item.due
        self._frames.append(item)
        self.messages += item.count
        self.bytes += item.size
        self._lot.unpark_all()
        return True

    async def wait_nonempty(self) -> None:
        while not self._frames:
            await self._lot.park()

    async def wait_due(self) -> None:
        """Return once the head frame is due (always a checkpoint)."""
        while True:
            await self.wait_nonempty()
            due = self._frames[0].due
            if due <= trio.current_time():
                # Already due (always, without a latency model): a plain checkpoint. Sleeping
                # until a past deadline costs a trip through the timer queue and epoll.
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep_until(due)
            if self._frames and self._frames[0].due <= trio.current_time():
                return

    def take_due(self, max_bytes: int = 0) -> list[_Pending]:
        """Remove and return the frames that are due, oldest first: at least one if the head is
        due, and more while their total size stays within ``max_bytes`` (0: no limit)."""
        now = trio.current_time()
        frames = self._frames
        out: list[_Pending] = []
        size = 0
        while frames and frames[0].due <= now:
            if out and max_bytes and size + frames[0].size > max_bytes:
                break
            item = frames.popleft()
            size += item.size
            self.messages -= item.count
            self.bytes -= item.size
            out.append(item)
        return out

    def clear(self, live_conn: object = None) -> int:
        """Drop every waiting frame; return how many messages they held.

        ``live_conn``: a connection that stays open. The tail of a frame half written to it
        (only ever the head) is kept: dropping it would leave that stream out of frame.
        """
        frames = self._frames
        kept = None
        if live_conn is not None and frames and frames[0].conn is live_conn:
            kept = frames.popleft()
            self.messages -= kept.count
            self.bytes -= kept.size
        dropped = self.messages
        frames.clear()
        self.messages = 0
        self.bytes = 0
        # Nothing dropped is left to keep order with: a frame queued next is held only by its
        # own delay, not by the due time of one that will never leave.
        self._last_due = -math.inf
        if kept is not None:
            frames.append(kept)
            self.messages = kept.count
            self.bytes = kept.size
            self._last_due = kept.due
        return dropped


class _Subscriptions:
    """Per-group bounded channels to the local consumers, and delivery into them."""

    def __init__(self, counters: _Counters, max_inbox: int):
        self._counters = counters
        self._max_inbox = max_inbox
        self._send: dict[int, trio.MemorySendChannel[Message]] = {}
        self._handlers: dict[int, Callable[[Sequence[Message]], None]] = {}
        self._closed = False

    def set_handler(self, group: int,
                    handler: Callable[[Sequence[Message]], None] | None) -> None:
        if handler is None:
            self._handlers.pop(group, None)
        elif self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        else:
            self._handlers[group] = handler

    def subscribe(self, group: int) -> trio.MemoryReceiveChannel[Message]:
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        old = self._send.get(group)
        if old is not None:
            if old.statistics().open_receive_channels:
                raise RuntimeError(f"group {group} already has a subscriber")
            old.close()
        send_x, recv_x = trio.open_memory_channel(self._max_inbox)
        self._send[group] = send_x
        return recv_x

    def deliver(self, group: int, msgs: Sequence[Message]) -> None:
        counters = self._counters
        handler = self._handlers.get(group)
        if handler is not None:
            counters.received += len(msgs)
            handler(msgs)
            return
        send_x = self._send.get(group)
        if send_x is None:
            counters.dropped_unsubscribed += len(msgs)
            return
        for i, msg in enumerate(msgs):
            try:
                send_x.send_nowait(msg)
            except trio.WouldBlock:
                counters.dropped_inbox_full += 1
            except trio.BrokenResourceError:
                # The consumer closed its channel: that is how it unsubscribes.
                del self._send[group]
                send_x.close()
                counters.dropped_unsubscribed += len(msgs) - i
                return
            else:
                counters.received += 1

    def close(self) -> None:
        self._closed = True
        self._handlers.clear()
        for send_x in self._send.values():
            send_x.close()
        self._send.clear()


def encode_frames(group: int, batch: list[Message], max_frame: int, counters: _Counters,
                  node_id: int):
    """Encode ``batch`` as one frame, or one frame per message if that frame's body would be
    over ``max_frame`` (the receiver's limit); yield ``(frame, messages in it)``. A lone message
    over the limit is dropped, counted (``dropped_too_large``) and logged."""
    frame = encode_frame(group, batch)
    if len(frame) - FRAME_HEADER_SIZE <= max_frame:  # the body's size
        yield frame, len(batch)
        return
    if len(batch) > 1:
        for msg in batch:
            yield from encode_frames(group, [msg], max_frame, counters, node_id)
        return
    counters.dropped_too_large += 1
    logger.warning(
        "node %d: dropped a %s message of %d bytes to node %d: over max_frame (%d)",
        node_id, batch[0].type.name, len(frame) - FRAME_HEADER_SIZE, batch[0].to, max_frame,
    )


def _group_by_peer(msgs: Sequence[Message]) -> dict[int, list[Message]]:
    by_peer: dict[int, list[Message]] = {}
    for msg in msgs:
        batch = by_peer.get(msg.to)
        if batch is None:
            by_peer[msg.to] = [msg]
        else:
            batch.append(msg)
    return by_peer


# --- the in-memory network ------------------------------------------------------------------------


class MemoryNetwork:
    """An in-process network of :class:`MemoryTransport` endpoints, for trio-level tests.

    Every message crosses the same code path as on TCP -- per-peer bounded outbox, sender-side
    link model, per-link FIFO, per-group bounded inbox -- and, with ``check_codec`` (the
    default), is encoded and decoded by :mod:`raft.wire` on the way, so what works here is known
    to be encodable.

    Args:
        seed: seeds the link models' randomness; each directed link (a, b) has its own
            ``random.Random`` derived from (seed, a, b), so links do not perturb each other.
        latency: the :class:`LinkModel` of every link without one of its own (None: no delay).
        max_outbox: frames waiting per peer, per endpoint (one frame per ``send`` and peer).
        max_inbox: messages waiting per subscribed group, per endpoint.
        check_codec: round-trip every frame through :mod:`raft.wire` and count its bytes.
        max_frame: with ``check_codec``, the largest frame body, as ``TcpOptions.max_frame``:
            a larger batch leaves as one frame per message, a larger message is dropped
            (``dropped_too_large``).

    A node id that has ever had an endpoint is a *known* peer; messages to it while it is not
    attached count as ``dropped_unreachable``, to any other id as ``dropped_unknown_peer``.
    """

    def __init__(
        self,
        seed: int = 0,
        latency: LinkModel | None = None,
        *,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        max_inbox: int = DEFAULT_MAX_INBOX,
        check_codec: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
    ):
        self.seed = seed
        self.max_frame = max_frame
        self.latency = latency
        self.max_outbox = max_outbox
        self.max_inbox = max_inbox
        self.check_codec = check_codec
        self._attached: dict[int, MemoryTransport] = {}
        self._known: set[int] = set()
        self._links: dict[tuple[int, int], LinkModel] = {}
        self._cut: set[tuple[int, int]] = set()

    @asynccontextmanager
    async def endpoint(
        self, node_id: int, *, max_outbox: int | None = None, max_inbox: int | None = None
    ) -> AsyncIterator[MemoryTransport]:
        """Attach node ``node_id`` to the network for the duration of the block.

        On exit the endpoint's link tasks stop (frames still queued are lost), its subscribers'
        channels end, and it detaches; the same id may attach again later (a restart).

        Raises:
            RuntimeError: ``node_id`` is already attached.
        """
        if node_id in self._attached:
            raise RuntimeError(f"node {node_id} is already attached to this network")
        transport = MemoryTransport(
            self,
            node_id,
            max_outbox=self.max_outbox if max_outbox is None else max_outbox,
            max_inbox=self.max_inbox if max_inbox is None else max_inbox,
        )
        self._attached[node_id] = transport
        self._known.add(node_id)
        try:
            async with trio.open_nursery() as nursery:
                transport._nursery = nursery
                try:
                    yield transport
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            transport._close()
            del self._attached[node_id]

    def set_link(self, a: int, b: int, model: LinkModel | None, *, both_ways: bool = True) -> None:
        """Give the link a → b (and b → a unless ``both_ways`` is False) its own model; None
        reverts to the network's default. Applies to frames sent from now on."""
        for key in ((a, b), (b, a)) if both_ways else ((a, b),):
            if model is None:
                self._links.pop(key, None)
            else:
                self._links[key] = model

    def link_model(self, a: int, b: int) -> LinkModel | None:
        """The model in force on the link a → b."""
        return self._links.get((a, b), self.latency)

    def partition(self, a: int, b: int) -> None:
        """Cut the links between ``a`` and ``b`` both ways. Frames in flight are lost too."""
        self._cut.add((a, b))
        self._cut.add((b, a))

    def heal(self, a: int | None = None, b: int | None = None) -> None:
        """Restore the links between ``a`` and ``b``, or every link when called without
        arguments."""
        if a is None and b is None:
            self._cut.clear()
        elif a is None or b is None:
            raise TypeError("heal() takes two node ids or none")
        else:
            self._cut.discard((a, b))
            self._cut.discard((b, a))

    def is_cut(self, a: int, b: int) -> bool:
        return (a, b) in self._cut


class _MemoryLink:
    __slots__ = ("peer", "outbox", "rng")

    def __init__(self, peer: int, outbox: _Outbox, rng: random.Random):
        self.peer = peer
        self.outbox = outbox
        self.rng = rng


class MemoryTransport:
    """One node's endpoint on a :class:`MemoryNetwork`; see :class:`Transport`.

    Created by :meth:`MemoryNetwork.endpoint`. Thread-safety: none; use from the trio run that
    opened it.
    """

    def __init__(self, network: MemoryNetwork, node_id: int, *, max_outbox: int, max_inbox: int):
        if max_outbox < 1 or max_inbox < 1:
            raise ValueError("max_outbox and max_inbox must be at least 1")
        self.node_id = node_id
        self.network = network
        self._max_outbox = max_outbox
        self._counters = _Counters()
        self._subs = _Subscriptions(self._counters, max_inbox)
        self._links: dict[int, _MemoryLink] = {}
        self._nursery: trio.Nursery | None = None
        self._closed = False

    def send(self, group: int, msgs: Sequence[Message]) -> None:
        if self._closed or self._nursery is None:
            raise trio.ClosedResourceError("the transport is closed")
        net = self.network
        counters = self._counters
        now = trio.current_time()
        for peer, batch in _group_by_peer(msgs).items():
            if peer == self.node_id or peer not in net._known:
                counters.dropped_unknown_peer += len(batch)
                continue
            link = self._link(peer)
            batch, due = apply_link_model(net.link_model(self.node_id, peer), batch, link.rng,
                                          counters, now)
            if not batch:
                continue
            if net.check_codec:
                items = [_Pending(due, count, len(frame), frame) for frame, count in
                         encode_frames(group, batch, net.max_frame, counters, self.node_id)]
            else:
                items = [_Pending(due, len(batch), 0, (group, tuple(batch)))]
            for item in items:
                if not link.outbox.put_nowait(item):
                    counters.dropped_outbox_full += item.count

    def subscribe(self, group: int) -> trio.MemoryReceiveChannel[Message]:
        return self._subs.subscribe(group)

    def set_handler(self, group: int,
                    handler: Callable[[Sequence[Message]], None] | None) -> None:
        """See :meth:`Transport.set_handler`."""
        self._subs.set_handler(group, handler)

    def statistics(self) -> TransportStats:
        return self._counters.snapshot(sum(link.outbox.messages for link in self._links.values()))

    def _link(self, peer: int) -> _MemoryLink:
        link = self._links.get(peer)
        if link is None:
            rng = random.Random(f"{self.network.seed}:{self.node_id}:{peer}")
            link = _MemoryLink(peer, _Outbox(self._max_outbox), rng)
            self._links[peer] = link
            self._counters.connects += 1
            self._nursery.start_soon(self._run_link, link, name=f"link {self.node_id}->{peer}")
        return link

    async def _run_link(self, link: _MemoryLink) -> None:
        net = self.network
        counters = self._counters
        decoder = FrameDecoder(net.max_frame) if net.check_codec else None
        while True:
            await link.outbox.wait_due()
            for item in link.outbox.take_due():
                dest = net._attached.get(link.peer)
                if dest is None:
                    counters.dropped_unreachable += item.count
                    continue
                if net.is_cut(self.node_id, link.peer):
                    counters.dropped_link += item.count
                    continue
                counters.sent += item.count
                counters.bytes_sent += item.size
                dest._counters.bytes_received += item.size
                if decoder is not None:
                    for group, msgs in decoder.feed(item.payload):
                        dest._subs.deliver(group, msgs)
                else:
                    group, msgs = item.payload
                    dest._subs.deliver(group, msgs)

    def _close(self) -> None:
        self._closed = True
        self._subs.close()
        for link in self._links.values():
            link.outbox.clear()
