"""The Raft transports (raft/transport.py, raft/tcp.py).

The first half is one conformance suite that every transport must pass (STYLE §3): each test
takes the ``cluster`` fixture, parametrized over the in-memory network and real TCP on loopback.
Each also takes ``clock``: a ``MockClock`` with autojump for the memory network (the test runs in
virtual time and never sleeps for real) and the real clock for TCP, where the waits are short and
every test is bounded by ``trio.fail_after``. No test asserts how fast anything is; the latency
tests check lower bounds only, which the implementation guarantees.

The second half tests what only one implementation has: partitions and seeded link models of the
memory network; for TCP, the one connection per node pair (dialed by the lower id, carrying both
directions), handshakes both ways, decode errors, frame splitting, coalescing and backoff.
"""

from __future__ import annotations

import contextlib

import errno
import logging
import os
import random
import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from engine._native import crc32c
from raft.tcp import Backoff, TcpOptions, group_frames, open_tcp_transport
from raft.transport import LinkModel, MemoryNetwork, Transport, TransportStats
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)
from raft.wire import FRAME_HEADER_SIZE, FrameDecoder, Handshake, encode_frame, encode_handshake

DEADLINE_S = 10  # virtual for the memory network; real for TCP (tests finish far sooner)
TCP_TEST_OPTIONS = dict(backoff_initial_s=0.01, backoff_max_s=0.1, connect_timeout_s=1.0)


def hb(frm: int, to: int, term: int, context: bytes = b"") -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=term, context=context)


def append(frm: int, to: int, index: int) -> Message:
    return Message(
        MessageType.APPEND, to=to, frm=frm, term=3, log_term=2, index=index, commit=index - 1,
        entries=(
            Entry(3, index + 1, b"payload"),
            Entry(3, index + 2, ConfChange(ConfChangeType.ADD_LEARNER, 4).encode(),
                  EntryType.CONF_CHANGE),
        ),
        snapshot=SnapshotMeta(index - 1, 2, ConfState((1, 2, 3), (4,))),
    )


async def receive_n(recv: trio.MemoryReceiveChannel[Message], n: int) -> list[Message]:
    return [await recv.receive() for _ in range(n)]


async def wait_for(predicate, interval_s: float = 0.005) -> None:
    while not predicate():
        await trio.sleep(interval_s)


# --- harnesses: start, stop and restart endpoints of one implementation -----------------------


async def _hold(cm, stopped: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED):
    """Keep an endpoint open until its scope is cancelled; report it to the starter."""
    try:
        with trio.CancelScope() as scope:
            async with cm as transport:
                task_status.started((transport, scope))
                await trio.sleep_forever()
    finally:
        stopped.set()


class _Cluster:
    """Endpoints by node id, each held open in the test's nursery."""

    kind = ""

    def __init__(self, nursery: trio.Nursery):
        self._nursery = nursery
        self.nodes: dict[int, Transport] = {}
        self._running: dict[int, tuple[trio.CancelScope, trio.Event]] = {}

    async def _open(self, node_id: int, cm) -> Transport:
        stopped = trio.Event()
        transport, scope = await self._nursery.start(_hold, cm, stopped)
        self.nodes[node_id] = transport
        self._running[node_id] = (scope, stopped)
        return transport

    async def stop(self, node_id: int) -> None:
        scope, stopped = self._running.pop(node_id)
        scope.cancel()
        await stopped.wait()

    async def close(self) -> None:
        for node_id in list(self._running):
            await self.stop(node_id)


class MemoryCluster(_Cluster):
    kind = "memory"

    def __init__(self, nursery):
        super().__init__(nursery)
        self.net = MemoryNetwork(seed=7)

    async def start(self, node_id, *, max_outbox=None, max_inbox=None) -> Transport:
        cm = self.net.endpoint(node_id, max_outbox=max_outbox, max_inbox=max_inbox)
        return await self._open(node_id, cm)

    def set_link(self, src: int, dst: int, model: LinkModel | None) -> None:
        self.net.set_link(src, dst, model, both_ways=False)


class TcpCluster(_Cluster):
    """Real TCP on 127.0.0.1. Every node learns every other's address; a restarted node binds
    its old port again (or, should that port be taken meanwhile, a new one that its peers are
    told about)."""

    kind = "tcp"

    def __init__(self, nursery):
        super().__init__(nursery)
        self.addresses: dict[int, tuple[str, int]] = {}

    async def start(self, node_id, *, max_outbox=None, max_inbox=None, **options) -> Transport:
        opts = dict(TCP_TEST_OPTIONS, **options)
        if max_outbox is not None:
            opts["max_outbox"] = max_outbox
        if max_inbox is not None:
            opts["max_inbox"] = max_inbox
        peers = {i: addr for i, addr in self.addresses.items() if i != node_id}
        port = self.addresses.get(node_id, ("127.0.0.1", 0))[1]
        try:
            t = await self._open_tcp(node_id, port, peers, opts)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            t = await self._open_tcp(node_id, 0, peers, opts)
        self.addresses[node_id] = t.address
        for other_id, other in self.nodes.items():
            if other_id != node_id:
                other.set_peer(node_id, t.address)
        return t

    async def _open_tcp(self, node_id, port, peers, opts):
        cm = open_tcp_transport(node_id, ("127.0.0.1", port), peers, seed=node_id,
                                options=TcpOptions(**opts))
        return await self._open(node_id, cm)

    def set_link(self, src: int, dst: int, model: LinkModel | None) -> None:
        self.nodes[src].set_link(dst, model)


@pytest.fixture(params=["memory", "tcp"])
def kind(request):
    return request.param


@pytest.fixture
def clock(kind):
    return trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else None


@pytest.fixture
async def cluster(kind, nursery):
    c = MemoryCluster(nursery) if kind == "memory" else TcpCluster(nursery)
    yield c
    await c.close()


async def start_pair(cluster, **opts) -> tuple[Transport, Transport]:
    """Nodes 1 and 2, and a first message through so that the link is up."""
    b = await cluster.start(2, **opts)
    a = await cluster.start(1, **opts)
    probe = b.subscribe(99)
    a.send(99, [hb(1, 2, 0)])
    with trio.fail_after(DEADLINE_S):
        await probe.receive()
    probe.close()
    return a, b


# --- the conformance suite -------------------------------------------------------------------


async def test_both_implement_the_transport_protocol(cluster, clock):
    a, b = await start_pair(cluster)
    assert isinstance(a, Transport) and isinstance(b, Transport)
    assert (a.node_id, b.node_id) == (1, 2)
    assert isinstance(a.statistics(), TransportStats)


async def test_messages_reach_the_subscriber_of_their_group(cluster, clock):
    a, b = await start_pair(cluster)
    inbox_7, inbox_8 = b.subscribe(7), b.subscribe(8)
    sent_7 = [append(1, 2, 10), hb(1, 2, 3, b"read-ctx")]
    sent_8 = [append(1, 2, 20)]
    a.send(7, sent_7)
    a.send(8, sent_8)
    with trio.fail_after(DEADLINE_S):
        assert await receive_n(inbox_7, 2) == sent_7
        assert await receive_n(inbox_8, 1) == sent_8
    a_stats, b_stats = a.statistics(), b.statistics()
    assert a_stats.sent == 1 + 3 and b_stats.received == 1 + 3
    assert a_stats.dropped == b_stats.dropped == 0
    assert a_stats.bytes_sent > 0 and b_stats.bytes_received == a_stats.bytes_sent


async def test_both_directions_work(cluster, clock):
    a, b = await start_pair(cluster)
    inbox = a.subscribe(7)
    b.send(7, [hb(2, 1, 4)])
    with trio.fail_after(DEADLINE_S):
        assert await inbox.receive() == hb(2, 1, 4)


async def test_many_groups_share_one_link(cluster, clock):
    a, b = await start_pair(cluster)
    groups = range(100, 150)
    inboxes = {g: b.subscribe(g) for g in groups}
    for round_ in range(5):
        for g in groups:
            a.send(g, [hb(1, 2, term=g * 10 + round_)])
    with trio.fail_after(DEADLINE_S):
        for g in groups:
            got = await receive_n(inboxes[g], 5)
            assert [m.term for m in got] == [g * 10 + r for r in range(5)]
    assert a.statistics().connects == 1  # one link (TCP: one connection) for all the groups
    if cluster.kind == "tcp":
        assert b.statistics().accepts == 1


async def test_a_link_keeps_send_order_without_a_latency_model(cluster, clock):
    a, b = await start_pair(cluster)
    inbox = b.subscribe(7)
    received: list[int] = []

    async def consume():
        while len(received) < 1000:
            received.append((await inbox.receive()).index)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        index = 0
        for batch_size in [1, 7, 50, 2, 200, 1, 300, 39, 400]:
            a.send(7, [Message(MessageType.APPEND, 2, 1, index=index + i)
                       for i in range(batch_size)])
            index += batch_size
            await trio.sleep(0)
        with trio.fail_after(DEADLINE_S):
            await wait_for(lambda: len(received) == 1000)
    assert received == list(range(1000))


async def test_messages_to_an_unknown_peer_are_dropped_and_counted(cluster, clock):
    a, b = await start_pair(cluster)
    inbox = b.subscribe(7)
    a.send(7, [hb(1, 99, 1), hb(1, 2, 2), hb(1, 99, 3), hb(1, 1, 4)])  # 99: nobody; 1: itself
    with trio.fail_after(DEADLINE_S):
        assert (await inbox.receive()).term == 2
    stats = a.statistics()
    assert stats.dropped_unknown_peer == 3
    assert stats.dropped == 3


async def test_a_handler_receives_a_groups_batches_in_order_until_unset(cluster, clock):
    a, b = await start_pair(cluster)
    got: list[int] = []
    arrived = trio.Event()

    def handler(msgs):
        got.extend(m.term for m in msgs)
        if len(got) >= 10:
            arrived.set()

    b.set_handler(7, handler)
    inbox_other = b.subscribe(8)
    for term in range(10):
        a.send(7, [hb(1, 2, term)])
    a.send(8, [hb(1, 2, 50)])  # other groups still go through their channel
    with trio.fail_after(DEADLINE_S):
        await arrived.wait()
        assert (await inbox_other.receive()).term == 50
    assert got == list(range(10))
    b.set_handler(7, None)  # back to the channel
    inbox = b.subscribe(7)
    a.send(7, [hb(1, 2, 11)])
    with trio.fail_after(DEADLINE_S):
        assert (await inbox.receive()).term == 11
    assert got == list(range(10))


async def test_a_full_outbox_drops_the_overflow_and_counts_it(cluster, clock):
    a, b = await start_pair(cluster, max_outbox=4)
    inbox = b.subscribe(7)
    sent_before = a.statistics().sent
    for term in range(20):  # no checkpoint in between: the writer task cannot drain meanwhile
        a.send(7, [hb(1, 2, term)])
    # What left at once (TCP writes to an idle connection directly) plus what waits is all
    # that was not dropped, and what waits is bounded by the outbox.
    st = a.statistics()
    assert st.queued <= 4
    kept = st.sent - sent_before + st.queued
    assert st.dropped_outbox_full == 20 - kept
    assert kept >= 4  # the outbox took at least its capacity
    with trio.fail_after(DEADLINE_S):
        assert [m.term for m in await receive_n(inbox, kept)] == list(range(kept))
    a.send(7, [hb(1, 2, 100)])  # the outbox drained: there is room again
    with trio.fail_after(DEADLINE_S):
        assert (await inbox.receive()).term == 100
    assert a.statistics().dropped == 20 - kept and a.statistics().queued == 0


async def test_messages_for_a_group_nobody_subscribed_to_are_dropped_and_counted(cluster, clock):
    a, b = await start_pair(cluster)
    inbox = b.subscribe(7)
    a.send(8, [hb(1, 2, 1), hb(1, 2, 2)])
    a.send(7, [hb(1, 2, 3)])  # same link, sent later: arrives later
    with trio.fail_after(DEADLINE_S):
        await inbox.receive()
    assert b.statistics().dropped_unsubscribed == 2
    assert a.statistics().dropped == 0  # a receiving-side drop


async def test_a_full_inbox_drops_without_stalling_other_groups(cluster, clock):
    a, b = await start_pair(cluster, max_inbox=2)
    slow, fast = b.subscribe(7), b.subscribe(8)
    a.send(7, [hb(1, 2, t) for t in range(5)])
    a.send(8, [hb(1, 2, 50)])
    with trio.fail_after(DEADLINE_S):
        assert (await fast.receive()).term == 50
        assert [m.term for m in await receive_n(slow, 2)] == [0, 1]
    assert b.statistics().dropped_inbox_full == 3


async def test_a_group_has_one_subscriber_until_it_closes_its_channel(cluster, clock):
    a, b = await start_pair(cluster)
    first = b.subscribe(7)
    with pytest.raises(RuntimeError, match="already has a subscriber"):
        b.subscribe(7)
    first.close()
    second = b.subscribe(7)
    a.send(7, [hb(1, 2, 5)])
    with trio.fail_after(DEADLINE_S):
        assert (await second.receive()).term == 5


@pytest.mark.parametrize("stopped", [2, 1], ids=["node-2-stops", "node-1-stops"])
async def test_close_is_clean(cluster, clock, stopped):
    await start_pair(cluster)
    gone, left = cluster.nodes[stopped], cluster.nodes[3 - stopped]
    inbox = gone.subscribe(7)
    await cluster.stop(stopped)
    with trio.fail_after(DEADLINE_S):
        with pytest.raises(trio.EndOfChannel):
            await inbox.receive()  # subscribers see the end, not a hang
    with pytest.raises(trio.ClosedResourceError):
        gone.send(7, [hb(stopped, 3 - stopped, 1)])
    with pytest.raises(trio.ClosedResourceError):
        gone.subscribe(8)
    if cluster.kind == "tcp":
        with pytest.raises(OSError):  # the listener is closed
            await trio.open_tcp_stream(*cluster.addresses[stopped])
    # To a peer that is gone: dropped and counted, never blocks. (TCP: node 1 dials and finds
    # nobody; node 2 waits up to connect_timeout_s for node 1 to dial again.)
    left.send(7, [hb(3 - stopped, stopped, 2)])
    with trio.fail_after(DEADLINE_S):
        await wait_for(lambda: left.statistics().dropped_unreachable >= 1)
    assert left.statistics().queued == 0


@pytest.mark.parametrize("restarted", [1, 2], ids=["sender-restarts", "receiver-restarts"])
async def test_after_a_restart_the_link_comes_back_and_delivery_resumes(cluster, clock, restarted):
    a, b = await start_pair(cluster)
    await cluster.stop(restarted)
    if restarted == 2:
        a.send(7, [hb(1, 2, 1)])  # sent while the peer is down: lost
    await trio.sleep(0.05)
    await cluster.start(restarted)
    a, b = cluster.nodes[1], cluster.nodes[2]
    inbox = b.subscribe(7)
    with trio.fail_after(DEADLINE_S):
        term = 100
        while True:  # like Raft: keep sending until something gets through
            a.send(7, [hb(1, 2, term)])
            with trio.move_on_after(0.02):
                first = await inbox.receive()
                break
            term += 1
    assert first.term >= 100
    a.send(7, [hb(1, 2, 1000 + i) for i in range(10)])
    with trio.fail_after(DEADLINE_S):
        later = [m.term for m in await receive_n(inbox, 10 + term - first.term)]
    assert later[-10:] == [1000 + i for i in range(10)]
    to_a = a.subscribe(7)
    b.send(7, [hb(2, 1, 2000 + i) for i in range(10)])  # and the other way
    with trio.fail_after(DEADLINE_S):
        assert [m.term for m in await receive_n(to_a, 10)] == [2000 + i for i in range(10)]
    if cluster.kind == "tcp" and restarted == 2:
        assert a.statistics().reconnects >= 1


async def test_a_latency_model_delays_delivery_on_its_link_only(cluster, clock):
    a, b = await start_pair(cluster)
    cluster.set_link(1, 2, LinkModel(delay_s=0.2))
    to_b, to_a = b.subscribe(7), a.subscribe(7)
    start = trio.current_time()
    a.send(7, [hb(1, 2, 1)])
    b.send(7, [hb(2, 1, 2)])
    with trio.fail_after(DEADLINE_S):
        assert (await to_a.receive()).term == 2  # the other direction is not delayed
        assert (await to_b.receive()).term == 1
    elapsed = trio.current_time() - start
    assert elapsed >= 0.2 - 1e-9  # (float rounding of the due time)
    if cluster.kind == "memory":  # virtual time: exact
        assert elapsed == pytest.approx(0.2)


async def test_jitter_does_not_reorder_a_link(cluster, clock):
    a, b = await start_pair(cluster)
    cluster.set_link(1, 2, LinkModel(delay_s=0.05, jitter_s=0.05))
    inbox = b.subscribe(7)
    for term in range(30):
        a.send(7, [hb(1, 2, term)])
        await trio.sleep(0.002)
    with trio.fail_after(DEADLINE_S):
        assert [m.term for m in await receive_n(inbox, 30)] == list(range(30))


async def test_a_lossy_link_drops_and_counts(cluster, clock):
    a, b = await start_pair(cluster)
    inbox = b.subscribe(7)
    cluster.set_link(1, 2, LinkModel(drop_probability=1.0))
    a.send(7, [hb(1, 2, t) for t in range(10)])
    assert a.statistics().dropped_link == 10
    cluster.set_link(1, 2, None)
    a.send(7, [hb(1, 2, 10)])
    with trio.fail_after(DEADLINE_S):
        assert (await inbox.receive()).term == 10


# --- the memory network ---------------------------------------------------------------------------


async def test_memory_partition_drops_both_ways_until_healed(autojump_clock):
    net = MemoryNetwork(seed=1)
    async with net.endpoint(1) as a, net.endpoint(2) as b:
        to_a, to_b = a.subscribe(7), b.subscribe(7)
        net.partition(1, 2)
        a.send(7, [hb(1, 2, 1)])
        b.send(7, [hb(2, 1, 2)])
        await trio.sleep(1)
        assert a.statistics().dropped_link == 1 and b.statistics().dropped_link == 1
        net.heal()
        a.send(7, [hb(1, 2, 3)])
        b.send(7, [hb(2, 1, 4)])
        assert (await to_b.receive()).term == 3
        assert (await to_a.receive()).term == 4


async def test_memory_partition_loses_frames_in_flight(autojump_clock):
    net = MemoryNetwork(seed=1, latency=LinkModel(delay_s=1.0))
    async with net.endpoint(1) as a, net.endpoint(2) as b:
        inbox = b.subscribe(7)
        a.send(7, [hb(1, 2, 1)])
        await trio.sleep(0.5)
        net.partition(1, 2)
        await trio.sleep(1)
        net.heal(1, 2)
        a.send(7, [hb(1, 2, 2)])
        assert (await inbox.receive()).term == 2
        assert a.statistics().dropped_link == 1


async def test_memory_links_are_seeded_and_independent(autojump_clock):
    async def run(seed: int, also_send_to_3: bool) -> list[int]:
        net = MemoryNetwork(seed, latency=LinkModel(delay_s=0.1, drop_probability=0.5))
        async with net.endpoint(1) as a, net.endpoint(2) as b, net.endpoint(3):
            inbox = b.subscribe(7)
            for term in range(200):
                a.send(7, [hb(1, 2, term)])
                if also_send_to_3:
                    a.send(7, [hb(1, 3, term)])  # draws from another link's random source
            await trio.sleep(1)
            got = []
            while True:
                try:
                    got.append(inbox.receive_nowait().term)
                except trio.WouldBlock:
                    return got

    first = await run(5, False)
    assert 50 < len(first) < 150 and first == sorted(first)
    assert await run(5, False) == first
    assert await run(5, True) == first
    assert await run(6, False) != first


async def test_memory_endpoint_id_is_unique_while_attached():
    net = MemoryNetwork()
    async with net.endpoint(1):
        with pytest.raises(RuntimeError, match="already attached"):
            async with net.endpoint(1):
                pass  # pragma: no cover
    async with net.endpoint(1):  # detached on exit: may attach again
        pass


async def test_memory_network_without_the_codec_passes_the_same_messages(autojump_clock):
    net = MemoryNetwork(check_codec=False)
    async with net.endpoint(1) as a, net.endpoint(2) as b:
        inbox = b.subscribe(7)
        msg = append(1, 2, 5)
        a.send(7, [msg])
        assert await inbox.receive() is msg


async def test_memory_send_raises_on_an_unencodable_message(autojump_clock):
    net = MemoryNetwork()
    async with net.endpoint(1) as a, net.endpoint(2):
        with pytest.raises(ValueError, match="term"):
            a.send(7, [Message(MessageType.VOTE, 2, 1, term=-1)])


async def test_memory_batches_over_max_frame_are_split_and_lone_giants_dropped(autojump_clock):
    # As on TCP: a batch whose frame would be over the receiver's max_frame (64 MiB by
    # default; 1,000 bytes here) leaves as one frame per message, and a lone message over it
    # is dropped and counted -- the link task must not die of the receiver's WireError (it
    # took the whole endpoint down with it).
    net = MemoryNetwork(max_frame=1000)
    async with net.endpoint(2) as b, net.endpoint(1) as a:
        await _send_over_a_1000_byte_frame_limit(a, b.subscribe(7))


async def _send_over_a_1000_byte_frame_limit(a, inbox) -> None:
    """From ``a`` (node 1) to node 2, whose ``inbox`` of group 7 is given: a batch of two
    messages that fit a 1,000-byte frame only apart, a lone message that fits none (dropped
    and counted), then a small one. Checks what arrives."""
    a.send(7, [hb(1, 2, 1, b"x" * 600), hb(1, 2, 2, b"y" * 600)])  # 2 frames
    a.send(7, [hb(1, 2, 3, b"z" * 2000)])  # cannot fit any frame
    a.send(7, [hb(1, 2, 4)])
    with trio.fail_after(DEADLINE_S):
        assert [m.term for m in await receive_n(inbox, 3)] == [1, 2, 4]
    assert a.statistics().dropped_too_large == 1


def test_link_model_validates_its_arguments():
    with pytest.raises(ValueError):
        LinkModel(delay_s=-1)
    with pytest.raises(ValueError):
        LinkModel(jitter_s=float("nan"))
    with pytest.raises(ValueError):
        LinkModel(drop_probability=1.5)
    rng = random.Random(3)
    model = LinkModel(delay_s=0.1, jitter_s=0.05)
    delays = [model.sample_delay_s(rng) for _ in range(1000)]
    assert all(0.1 <= d < 0.15 for d in delays)


# --- TCP only -------------------------------------------------------------------------------------


async def raw_connection(address) -> trio.SocketStream:
    return await trio.open_tcp_stream(*address)


async def assert_closed_by_peer(stream: trio.SocketStream) -> None:
    with trio.fail_after(DEADLINE_S):
        try:
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass  # reset: closed as well


async def read_frames(stream: trio.SocketStream, decoder: FrameDecoder, n: int) -> list:
    """The next ``n`` frames ``(group, messages)`` from a raw connection."""
    frames: list = []
    with trio.fail_after(DEADLINE_S):
        frames.extend(decoder.feed(b""))
        while len(frames) < n:
            data = await stream.receive_some(1 << 16)
            assert data, "closed early"
            frames.extend(decoder.feed(data))
    assert len(frames) == n
    return frames


async def read_answer(stream: trio.SocketStream, decoder: FrameDecoder) -> Handshake:
    """The handshake an acceptor answers with on a raw connection."""
    with trio.fail_after(DEADLINE_S):
        while True:
            data = await stream.receive_some(1 << 16)
            assert data, "closed before its answer"
            hello = decoder.feed_handshake(data)
            if hello is not None:
                return hello


def established_to(ports) -> int | None:
    """How many established TCP connections on this host have one of ``ports`` as their local
    port -- the accepting ends of the connections to listeners on those ports. None without
    /proc/net/tcp."""
    try:
        with open("/proc/net/tcp") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    count = 0
    for line in lines:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
            count += 1
    return count


@pytest.mark.parametrize(
    "first_bytes, reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "exceeds the limit"),
        (encode_handshake(3, 5) + struct.pack("<II", 5, crc32c(b"\xc1" * 5)) + b"\xc1" * 5,
         "not valid msgpack"),
        (encode_handshake(3, 5) + encode_frame(7, [hb(3, 5, 1)])[:-1] + b"\x01",
         "damaged on the way"),
        (encode_handshake(3, 4), "the dialer wants node 4, this is node 5"),
        (encode_handshake(7, 5), "node 7 may not dial node 5: the lower node id dials"),
        (encode_handshake(5, 5), "node 5 may not dial node 5"),
        (encode_handshake(0, 5), "the dialer says it is node 0, which no node is"),
        (encode_frame(7, [hb(1, 5, 1)]), "is the other end a Meridian Raft peer?"),
        (encode_handshake(3, 5, "other"), "node 3 is of cluster 'other', this node of ''"),
        # Node 3's connection carrying a vote or an acknowledgement in node 4's name.
        (encode_handshake(3, 5) + encode_frame(7, [hb(3, 5, 1), hb(4, 5, 1)]),
         "a message from node 4 to node 5 on the connection from node 3 to node 5"),
        (encode_handshake(3, 5) + encode_frame(7, [hb(3, 6, 1)]),
         "a message from node 3 to node 6 on the connection from node 3 to node 5"),
    ],
    ids=["not-our-protocol", "garbage-after-handshake", "damaged-frame", "wrong-node",
         "higher-id-dials", "itself", "node-0", "no-handshake", "other-cluster",
         "other-sender", "other-recipient"],
)
async def test_tcp_a_bad_connection_is_closed_with_a_logged_reason(first_bytes, reason, caplog):
    caplog.set_level(logging.WARNING, logger="raft.tcp")
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(5, options=opts) as b:
        async with open_tcp_transport(1, peers={5: b.address}, options=opts) as a:
            inbox = b.subscribe(7)
            stream = await raw_connection(b.address)
            await stream.send_all(first_bytes)
            await assert_closed_by_peer(stream)
            await stream.aclose()
            assert b.statistics().decode_errors == 1
            assert reason in caplog.text and "closing connection from" in caplog.text
            a.send(7, [hb(1, 5, 1)])  # the node is fine, and so are its other connections
            with trio.fail_after(DEADLINE_S):
                assert (await inbox.receive()).term == 1
            assert a.statistics().connects == 1  # undisturbed


async def test_tcp_a_forwarded_read_index_keeps_its_requester_as_sender():
    """A follower forwards its requester's READ_INDEX to the leader unchanged (the leader
    answers the requester): the one message a connection carries in another node's name."""
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(5, options=opts) as b:
        inbox = b.subscribe(7)
        stream = await raw_connection(b.address)
        forwarded = Message(MessageType.READ_INDEX, to=5, frm=4, term=2, context=b"r1")
        await stream.send_all(encode_handshake(3, 5) + encode_frame(7, [forwarded]))
        with trio.fail_after(DEADLINE_S):
            got = await inbox.receive()
        assert (got.type, got.frm, got.context) == (MessageType.READ_INDEX, 4, b"r1")
        assert b.statistics().decode_errors == 0
        await stream.aclose()


@pytest.mark.parametrize(
    "answer, reason",
    [
        (encode_handshake(3, 1), "the answer is from node 3 to node 1 of cluster '', expected "
                                 "one from node 2"),
        (encode_handshake(1, 2), "the answer is from node 1 to node 2"),  # an echo
        (encode_handshake(2, 1, "other"), "the answer is from node 2 to node 1 of cluster "
                                          "'other', expected one from node 2 to node 1 of ''"),
        (encode_frame(7, [hb(2, 1, 1)]), "is the other end a Meridian Raft peer?"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "exceeds the limit"),
        (b"", "no handshake within 0.2 s"),
    ],
    ids=["wrong-node", "echo", "other-cluster", "no-handshake", "not-our-protocol", "silence"],
)
async def test_tcp_the_dialer_checks_the_answer_of_the_acceptor(answer, reason, caplog):
    caplog.set_level(logging.WARNING, logger="raft.tcp")
    opts = TcpOptions(handshake_timeout_s=0.2, **TCP_TEST_OPTIONS)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0] as listener:  # plays node 2
        async with open_tcp_transport(1, peers={2: listener.socket.getsockname()[:2]},
                                      options=opts) as a:
            with trio.fail_after(DEADLINE_S):
                stream = await listener.accept()
            hello = encode_handshake(1, 2)
            got = b""
            with trio.fail_after(DEADLINE_S):
                while len(got) < len(hello):
                    got += await stream.receive_some(1024)
            assert got[:len(hello)] == hello
            if answer:
                await stream.send_all(answer)
            await assert_closed_by_peer(stream)
            await stream.aclose()
            assert a.statistics().decode_errors == (1 if answer else 0)
            assert a.statistics().accepts == 0
    assert reason in caplog.text and "closing connection to node 2 at" in caplog.text


async def test_tcp_a_connection_without_a_handshake_times_out(caplog):
    caplog.set_level(logging.WARNING, logger="raft.tcp")
    opts = TcpOptions(handshake_timeout_s=0.05)
    async with open_tcp_transport(2, options=opts) as b:
        stream = await raw_connection(b.address)
        await stream.send_all(encode_handshake(5, 2)[:3])
        await assert_closed_by_peer(stream)
        await stream.aclose()
    assert "no handshake within 0.05 s" in caplog.text


async def test_tcp_a_peer_that_stops_reading_is_closed_and_redialed(caplog, autojump_clock):
    # A peer that answers the handshake and then reads nothing (hung, or cut off without a
    # reset): once the socket's buffers are full the writer makes no progress. After
    # send_stall_timeout_s the connection is closed and the peer redialed, rather than kept
    # forever, carrying nothing.
    caplog.set_level(logging.WARNING, logger="raft.tcp")
    accepted = []

    async def mute_peer(stream):
        accepted.append(stream)
        async with stream:
            decoder = FrameDecoder()
            hello = None
            while hello is None:
                hello = decoder.feed_handshake(await stream.receive_some(4096))
            await stream.send_all(encode_handshake(2, 1))
            await trio.sleep_forever()

    opts = TcpOptions(**TCP_TEST_OPTIONS, send_stall_timeout_s=3.0)
    big = Entry(3, 1, b"x" * (1 << 20))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, mute_peer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_tcp_transport(1, peers={2: ("127.0.0.1", port)}, options=opts) as a:
            with trio.fail_after(DEADLINE_S):  # virtual time
                while len(accepted) < 2:
                    a.send(7, [Message(MessageType.APPEND, to=2, frm=1, term=3, entries=(big,))])
                    await trio.sleep(0.1)
            assert a.statistics().reconnects == 1
        nursery.cancel_scope.cancel()
    assert "the peer read nothing for 3.0 s" in caplog.text


def _dead_peer_options(fd: int) -> tuple[int, int, int]:
    """A connection's keepalive flag, idle seconds before probing, and TCP_USER_TIMEOUT (ms)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    finally:
        sock.close()


async def test_tcp_both_ends_let_the_kernel_end_a_connection_to_a_silent_peer():
    # A partition that drops packets, or a machine that died, resets nothing: without these
    # options the link would stay up, carrying nothing, for a quarter of an hour or forever.
    opts = TcpOptions(**TCP_TEST_OPTIONS, send_stall_timeout_s=9.0)
    async with open_tcp_transport(5, options=opts) as b:
        async with open_tcp_transport(1, peers={5: b.address}, options=opts) as a:
            inbox = b.subscribe(7)
            a.send(7, [hb(1, 5, 1)])
            with trio.fail_after(DEADLINE_S):
                assert (await inbox.receive()).term == 1
            for transport, peer in ((a, 5), (b, 1)):
                conn = transport._links[peer].conn
                assert _dead_peer_options(conn.idle_fd) == (1, 3, 9000)


async def test_tcp_peers_can_be_added_moved_and_removed_later(caplog):
    caplog.set_level(logging.WARNING, logger="raft.tcp")
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, options=opts) as b, \
            open_tcp_transport(3, options=opts) as c, \
            open_tcp_transport(1, options=opts) as a:
        to_b, to_c = b.subscribe(7), c.subscribe(7)
        a.send(7, [hb(1, 2, 1)])
        assert a.statistics().dropped_unknown_peer == 1
        a.set_peer(2, b.address)
        a.send(7, [hb(1, 2, 2)])
        with trio.fail_after(DEADLINE_S):
            assert (await to_b.receive()).term == 2
        a.set_peer(2, c.address)  # "node 2" moved to where node 3 listens: c refuses it
        a.send(7, [hb(1, 2, 3)])
        with trio.fail_after(DEADLINE_S):
            await wait_for(lambda: c.statistics().decode_errors >= 1)
        assert a.statistics().connects >= 2  # (and it keeps redialing, with backoff)
        a.remove_peer(2)
        a.send(7, [hb(1, 2, 5)])
        assert a.statistics().dropped_unknown_peer == 2
        a.set_peer(3, c.address)
        a.send(7, [hb(1, 3, 4)])
        with trio.fail_after(DEADLINE_S):
            assert (await to_c.receive()).term == 4
    assert "the dialer wants node 2, this is node 3" in caplog.text


async def test_tcp_frames_due_together_leave_in_one_write_on_either_side():
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, peers={1: ("127.0.0.1", 1)}, options=opts) as b:
        async with open_tcp_transport(1, peers={2: b.address}, options=opts) as a:
            for src, dst in ((a, b), (b, a)):
                inbox = dst.subscribe(7)
                src.send(7, [hb(src.node_id, dst.node_id, 0)])
                with trio.fail_after(DEADLINE_S):
                    await inbox.receive()
                writes = src.statistics().writes
                for term in range(1, 101):  # 100 frames sent before the writer runs
                    src.send(7, [hb(src.node_id, dst.node_id, term)])
                with trio.fail_after(DEADLINE_S):
                    assert [m.term for m in await receive_n(inbox, 100)] == list(range(1, 101))
                # The first may leave at once (idle connection); the rest leave together.
                assert src.statistics().writes <= writes + 2


async def test_tcp_batches_over_max_frame_are_split_and_lone_giants_dropped(caplog):
    opts = TcpOptions(max_frame=1000, **TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, options=opts) as b:
        async with open_tcp_transport(1, peers={2: b.address}, options=opts) as a:
            await _send_over_a_1000_byte_frame_limit(a, b.subscribe(7))
            assert b.statistics().decode_errors == 0
    assert "over max_frame" in caplog.text


async def test_tcp_a_frame_whose_body_is_exactly_max_frame_is_sent():
    """The sender's limit is the receiver's: on the body, the frame's header not counted."""
    context = next(b"c" * n for n in range(1000)
                   if len(encode_frame(7, [hb(1, 2, 1, b"c" * n)])) - FRAME_HEADER_SIZE == 1000)
    opts = TcpOptions(max_frame=1000, **TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, options=opts) as b:
        async with open_tcp_transport(1, peers={2: b.address}, options=opts) as a:
            inbox = b.subscribe(7)
            a.send(7, [hb(1, 2, 1, context)])
            with trio.fail_after(DEADLINE_S):
                assert (await inbox.receive()).context == context
            assert a.statistics().dropped_too_large == 0


async def accepted_as_node_1(b, inbox, term: int) -> tuple[trio.SocketStream, FrameDecoder]:
    """A raw connection playing node 1 to transport ``b`` (node 2): the handshake and a
    heartbeat of ``term``, delivered to ``inbox``, and the acceptor's answer read."""
    conn, decoder = await raw_connection(b.address), FrameDecoder()
    await conn.send_all(encode_handshake(1, 2) + encode_frame(7, [hb(1, 2, term)]))
    with trio.fail_after(DEADLINE_S):
        assert (await inbox.receive()).term == term
    assert await read_answer(conn, decoder) == Handshake(2, 1)
    return conn, decoder


async def test_tcp_a_newer_connection_from_the_same_node_replaces_the_older():
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    # Node 2 knows node 1 (a lower id: the address is never dialed); raw connections play node 1.
    async with open_tcp_transport(2, peers={1: ("127.0.0.1", 1)}, options=opts) as b:
        inbox = b.subscribe(7)
        old, old_decoder = await accepted_as_node_1(b, inbox, 1)
        b.send(7, [hb(2, 1, 10)])  # the acceptor writes over the connection it accepted
        assert await read_frames(old, old_decoder, 1) == [(7, [hb(2, 1, 10)])]
        new, new_decoder = await accepted_as_node_1(b, inbox, 2)
        b.send(7, [hb(2, 1, 11)])  # ... and now over the newer one
        assert await read_frames(new, new_decoder, 1) == [(7, [hb(2, 1, 11)])]
        await assert_closed_by_peer(old)
        await old.aclose()
        await new.aclose()
        assert b.statistics().accepts == 2


async def test_tcp_an_older_connection_whose_handshake_comes_late_does_not_replace_a_newer():
    # Node 1 dialed, gave up on that connection before its handshake was read (the acceptor
    # was paused, or the handshake's segment was lost) and dialed again. When the first
    # connection's handshake and frames are read after the second is in use, they are older
    # than what the second has delivered: taking them would reorder the link, and closing the
    # second, the live one, would make node 1 dial yet again.
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, peers={1: ("127.0.0.1", 1)}, options=opts) as b:
        inbox = b.subscribe(7)
        older = await raw_connection(b.address)
        with trio.fail_after(DEADLINE_S):
            await wait_for(lambda: b._inbound_count == 1)  # accepted, waiting for a handshake
        newer, decoder = await accepted_as_node_1(b, inbox, 2)
        await older.send_all(encode_handshake(1, 2) + encode_frame(7, [hb(1, 2, 1)]))
        with trio.fail_after(DEADLINE_S):  # one of the two connections has been let go
            await wait_for(lambda: b._inbound_count == 1)
        b.send(7, [hb(2, 1, 10)])
        assert await read_frames(newer, decoder, 1) == [(7, [hb(2, 1, 10)])]
        await assert_closed_by_peer(older)
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()  # term 1 was not delivered after term 2
        await older.aclose()
        await newer.aclose()
        assert b.statistics().accepts == 1


@contextlib.asynccontextmanager
async def _half_written_frame(monkeypatch):
    """Node 2's transport, dialed by node 1, after the fast path wrote only five bytes of a
    frame (``hb(2, 1, 10, b"v" * 100)``) to that connection: the rest is queued for it.
    Yields the transport, node 1's end of the connection and a decoder for it."""
    import raft.tcp

    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, peers={1: ("127.0.0.1", 1)}, options=opts) as b:
        inbox = b.subscribe(7)
        conn, decoder = await accepted_as_node_1(b, inbox, 1)
        monkeypatch.setattr(raft.tcp, "write_nowait", lambda fd, data: os.write(fd, data[:5]))
        b.send(7, [hb(2, 1, 10, b"v" * 100)])
        monkeypatch.undo()
        yield b, conn, decoder


async def test_tcp_the_tail_of_a_half_written_frame_never_starts_another_connection(monkeypatch):
    # The fast path writes what the socket takes and queues the rest of the frame; if that
    # connection ends before the rest leaves, a new connection must not start with it (half a
    # frame: garbage to the peer, or worse, bytes of a value read as a frame).
    async with _half_written_frame(monkeypatch) as (b, old, _):
        b._links[1].conn.close("ended before the tail left")  # no checkpoint in between
        new, new_decoder = await raw_connection(b.address), FrameDecoder()
        await new.send_all(encode_handshake(1, 2))
        assert await read_answer(new, new_decoder) == Handshake(2, 1)
        b.send(7, [hb(2, 1, 11)])
        # The new connection carries the next whole frame, not the old one's tail.
        assert await read_frames(new, new_decoder, 1) == [(7, [hb(2, 1, 11)])]
        assert b.statistics().dropped_unreachable == 1
        await old.aclose()
        await new.aclose()


async def test_tcp_remove_peer_keeps_the_tail_of_a_half_written_frame(monkeypatch):
    # The acceptor forgets node 1 while the rest of a frame is still queued for the connection
    # node 1 dialed, which stays open: the tail must still leave on it, or the next frame
    # written there (once node 1 is known again) lands in the middle of the first.
    async with _half_written_frame(monkeypatch) as (b, conn, decoder):
        b.remove_peer(1)  # no checkpoint in between
        b.set_peer(1, ("127.0.0.1", 1))
        b.send(7, [hb(2, 1, 11)])
        assert await read_frames(conn, decoder, 2) == [
            (7, [hb(2, 1, 10, b"v" * 100)]), (7, [hb(2, 1, 11)])]
        await conn.aclose()


async def test_tcp_byte_counters_count_every_frame_byte_written_and_read(monkeypatch):
    # Frame bytes that arrive in the same read as the handshake, and the head of a frame the
    # fast path wrote only in part, are written and read like any others. Node status reports
    # the per-peer counts as the bytes exchanged with each region.
    async with _half_written_frame(monkeypatch) as (b, conn, decoder):
        frame = encode_frame(7, [hb(2, 1, 10, b"v" * 100)])
        assert await read_frames(conn, decoder, 1) == [(7, [hb(2, 1, 10, b"v" * 100)])]
        with trio.fail_after(DEADLINE_S):  # the writer counts once its write has returned
            await wait_for(lambda: b.statistics().sent == 1)
        first = encode_frame(7, [hb(1, 2, 1)])  # came with node 1's handshake, in one write
        assert b.bytes_by_peer()[1] == (len(frame), len(first))
        stats = b.statistics()
        assert stats.bytes_sent == len(encode_handshake(2, 1)) + len(frame)
        assert stats.bytes_received == len(encode_handshake(1, 2)) + len(first)
        await conn.aclose()


async def test_tcp_one_connection_per_node_pair_carries_both_directions(nursery):
    cluster = TcpCluster(nursery)
    try:
        for node_id in (3, 1, 2):  # the order nodes start in does not matter
            await cluster.start(node_id)
        nodes = cluster.nodes
        inboxes = {(n, g): nodes[n].subscribe(g) for n in nodes for g in (7, 8)}
        for round_ in range(3):
            for src in nodes:
                for dst in nodes:
                    if src != dst:
                        for g in (7, 8):
                            nodes[src].send(g, [hb(src, dst, 100 * src + 10 * dst + round_)])
            await trio.sleep(0.01)
        with trio.fail_after(DEADLINE_S):
            for (n, g), inbox in inboxes.items():
                got = [m.term for m in await receive_n(inbox, 2 * 3)]
                senders = [src for src in nodes if src != n]
                assert sorted(got) == sorted(100 * s + 10 * n + r for s in senders
                                             for r in range(3))
        await trio.sleep(0.3)  # several backoff periods: nobody redials
        stats = {n: t.statistics() for n, t in nodes.items()}
        for n, st in stats.items():
            assert st.connects == sum(1 for other in nodes if other > n)  # dials the higher ids
            assert st.accepts == sum(1 for other in nodes if other < n)  # accepts the lower
            assert st.reconnects == st.decode_errors == st.dropped == 0
        assert sum(st.connects for st in stats.values()) == 3  # one per pair
        assert sum(st.accepts for st in stats.values()) == 3
        ports = {addr[1] for addr in cluster.addresses.values()}
        assert established_to(ports) in (3, None)  # and the operating system agrees
    finally:
        await cluster.close()


@pytest.mark.parametrize("restarted", [1, 2], ids=["dialer-restarts", "acceptor-restarts"])
async def test_tcp_the_connection_comes_back_after_either_side_restarts(nursery, restarted):
    # connect_timeout_s also bounds how long node 2 holds frames for node 1 while it has no
    # connection: long enough here for node 1 to dial on a loaded machine.
    cluster = TcpCluster(nursery)
    try:
        await cluster.start(2, connect_timeout_s=5.0)
        await cluster.start(1, connect_timeout_s=5.0)
        a, b = cluster.nodes[1], cluster.nodes[2]
        to_b = b.subscribe(7)
        a.send(7, [hb(1, 2, 1)])
        with trio.fail_after(DEADLINE_S):
            assert (await to_b.receive()).term == 1
        to_b.close()
        await cluster.stop(restarted)
        await trio.sleep(0.05)
        await cluster.start(restarted, connect_timeout_s=5.0)
        a, b = cluster.nodes[1], cluster.nodes[2]
        to_a, to_b = a.subscribe(7), b.subscribe(7)
        # No retries needed: node 1 redials at once (restarted) or after its backoff, and what
        # was sent meanwhile waits for that connection on either side.
        b.send(7, [hb(2, 1, 20)])
        a.send(7, [hb(1, 2, 10)])
        with trio.fail_after(DEADLINE_S):
            assert (await to_a.receive()).term == 20
            assert (await to_b.receive()).term == 10
        a_stats, b_stats = a.statistics(), b.statistics()
        assert b_stats.connects == 0 and a_stats.accepts == 0  # node 2 never dials
        if restarted == 1:
            assert a_stats.connects == 1 and b_stats.accepts == 2
        else:
            assert a_stats.reconnects >= 1 and b_stats.accepts == 1
        assert a_stats.dropped == b_stats.dropped == 0
    finally:
        await cluster.close()


async def test_tcp_when_only_the_higher_id_knows_the_lower_it_waits_for_a_dial(caplog):
    caplog.set_level(logging.INFO, logger="raft.tcp")
    opts = TcpOptions(**dict(TCP_TEST_OPTIONS, connect_timeout_s=0.1))
    async with open_tcp_transport(1, options=opts) as a:  # does not know node 2
        async with open_tcp_transport(2, peers={1: a.address}, options=opts) as b:
            to_a, to_b = a.subscribe(7), b.subscribe(7)
            b.send(7, [hb(2, 1, 1), hb(2, 1, 2)])
            assert b.statistics().queued == 2
            with trio.fail_after(DEADLINE_S):  # nobody dials: dropped after connect_timeout_s
                await wait_for(lambda: b.statistics().dropped_unreachable == 2)
            assert b.statistics().queued == 0
            assert b.statistics().connects == b.statistics().connect_failures == 0
            assert a.statistics().accepts == 0
            assert "no connection from node 1 within 0.1 s" in caplog.text
            a.set_peer(2, b.address)  # node 1 learns about node 2 and dials it
            with trio.fail_after(DEADLINE_S):
                await wait_for(lambda: b.statistics().accepts == 1)
            b.send(7, [hb(2, 1, 3)])
            a.send(7, [hb(1, 2, 4)])
            with trio.fail_after(DEADLINE_S):
                assert (await to_a.receive()).term == 3
                assert (await to_b.receive()).term == 4
            assert a.statistics().connects == 1 and b.statistics().connects == 0


async def test_tcp_the_accepting_side_holds_frames_until_the_peer_dials():
    opts = TcpOptions(**dict(TCP_TEST_OPTIONS, connect_timeout_s=5.0))
    async with open_tcp_transport(1, options=opts) as a:
        to_a = a.subscribe(7)
        async with open_tcp_transport(2, peers={1: a.address}, options=opts) as b:
            b.send(7, [hb(2, 1, t) for t in range(5)])
            await trio.sleep(0.05)
            assert b.statistics().queued == 5
            a.set_peer(2, b.address)
            with trio.fail_after(DEADLINE_S):
                assert [m.term for m in await receive_n(to_a, 5)] == list(range(5))
            assert b.statistics().dropped == 0 and b.statistics().sent == 5


async def test_tcp_when_only_the_lower_id_knows_the_higher_the_connection_serves_both_later():
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, options=opts) as b:  # does not know node 1
        async with open_tcp_transport(1, peers={2: b.address}, options=opts) as a:
            to_a, to_b = a.subscribe(7), b.subscribe(7)
            a.send(7, [hb(1, 2, 1)])
            with trio.fail_after(DEADLINE_S):
                assert (await to_b.receive()).term == 1  # an acceptor takes any lower id
            b.send(7, [hb(2, 1, 2)])
            assert b.statistics().dropped_unknown_peer == 1
            b.set_peer(1, a.address)
            b.send(7, [hb(2, 1, 3)])
            with trio.fail_after(DEADLINE_S):
                assert (await to_a.receive()).term == 3
            assert a.statistics().connects == 1 and b.statistics().accepts == 1
            assert b.statistics().connects == 0


async def test_tcp_remove_peer_closes_a_dialed_connection_and_keeps_an_accepted_one(caplog):
    caplog.set_level(logging.INFO, logger="raft.tcp")
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    async with open_tcp_transport(2, peers={1: ("127.0.0.1", 1)}, options=opts) as b:
        async with open_tcp_transport(1, peers={2: b.address}, options=opts) as a:
            to_a, to_b = a.subscribe(7), b.subscribe(7)
            b.send(7, [hb(2, 1, 1)])
            with trio.fail_after(DEADLINE_S):
                assert (await to_a.receive()).term == 1
            b.remove_peer(1)  # the acceptor forgets node 1: it still hears from it
            b.send(7, [hb(2, 1, 2)])
            assert b.statistics().dropped_unknown_peer == 1
            a.send(7, [hb(1, 2, 3)])
            with trio.fail_after(DEADLINE_S):
                assert (await to_b.receive()).term == 3
            a.remove_peer(2)  # the dialer forgets node 2: the connection closes
            with trio.fail_after(DEADLINE_S):
                await wait_for(lambda: "ended: closed by the peer" in caplog.text)
            assert "node 1: closing connection to node 2: peer removed" in caplog.text
            await trio.sleep(0.2)  # several backoff periods: nobody redials
            assert a.statistics().connects == 1 and b.statistics().accepts == 1


async def test_tcp_a_closed_transport_refuses_a_new_peer():
    async with open_tcp_transport(1) as a:
        pass
    with pytest.raises(trio.ClosedResourceError):
        a.set_peer(2, ("127.0.0.1", 1))
    assert a.peers == {}
    a.remove_peer(2)  # forgetting a peer is still fine


async def test_tcp_an_unreachable_peer_costs_only_a_bounded_queue():
    opts = TcpOptions(max_outbox=8, **TCP_TEST_OPTIONS)
    # A port that is bound but not listening: every dial is refused, and while it is held
    # nobody else can take it.
    with trio.socket.socket() as placeholder:
        await placeholder.bind(("127.0.0.1", 0))
        nowhere = placeholder.getsockname()[:2]
        async with open_tcp_transport(1, peers={2: nowhere}, options=opts) as a:
            with trio.fail_after(DEADLINE_S):
                for term in range(50):
                    a.send(7, [hb(1, 2, term)])
                    assert a.statistics().queued <= 8
                    await trio.sleep(0.005)
                await wait_for(lambda: a.statistics().queued == 0)
            stats = a.statistics()
    assert stats.connect_failures >= 1 and stats.connects == 0
    assert stats.dropped_unreachable + stats.dropped_outbox_full == 50
    assert stats.sent == 0


def test_backoff_grows_to_its_bound_with_jitter_and_resets():
    backoff = Backoff(random.Random(1), initial_s=0.1, max_s=1.0)
    delays = [backoff.next_delay_s() for _ in range(10)]
    ceilings = [0.1, 0.2, 0.4, 0.8] + [1.0] * 6
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert 0.05 <= backoff.next_delay_s() <= 0.1
    again = Backoff(random.Random(1), initial_s=0.1, max_s=1.0)
    assert [again.next_delay_s() for _ in range(10)] == delays  # seeded: reproducible


def test_tcp_options_are_validated():
    with pytest.raises(ValueError):
        TcpOptions(max_outbox=0)
    with pytest.raises(ValueError):
        TcpOptions(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ValueError):
        TcpOptions(send_stall_timeout_s=0)


def test_the_frames_of_one_read_reach_each_group_in_one_call_in_order():
    a1, a2, a3, b1, c1 = (f"m{i}" for i in range(5))  # stand-ins: only identity matters
    frames = [(1, [a1]), (2, [b1]), (1, [a2, a3]), (3, [c1])]
    assert group_frames(frames) == [(1, [a1, a2, a3]), (2, [b1]), (3, [c1])]
    assert frames[0] == (1, [a1])  # the decoder's lists are not changed
    assert group_frames([(5, [a1])]) == [(5, [a1])]
    assert group_frames([]) == []


async def test_the_acceptor_closes_a_connection_announcing_a_huge_handshake_at_once():
    async with open_tcp_transport(5) as transport:
        stream = await trio.open_tcp_stream(*transport.address)
        async with stream:
            await stream.send_all(struct.pack("<I", 60 << 20) + b"\x94" * 1000)
            received = b"x"
            # Well before the 5 s handshake timeout, and without a byte of the body more.
            with trio.move_on_after(2):
                try:
                    received = await stream.receive_some(100)
                except trio.BrokenResourceError:
                    received = b""
            assert received == b"", "the acceptor kept reading a 60 MiB handshake"
        assert transport.statistics().decode_errors == 1


async def test_tcp_frames_dropped_with_a_delay_do_not_hold_back_later_ones():
    # Frames held by a long simulated delay are dropped when a dial fails; once the delay is
    # lifted, what is sent next leaves at once, not at the dropped frames' due time.
    opts = TcpOptions(**TCP_TEST_OPTIONS)
    with trio.socket.socket() as placeholder:
        await placeholder.bind(("127.0.0.1", 0))  # bound, not listening: dials are refused
        nowhere = placeholder.getsockname()[:2]
        async with open_tcp_transport(2, options=opts) as b:
            async with open_tcp_transport(1, peers={2: nowhere}, options=opts) as a:
                a.set_link(2, LinkModel(delay_s=3600))
                a.send(7, [hb(1, 2, 1)])
                with trio.fail_after(DEADLINE_S):
                    await wait_for(lambda: a.statistics().dropped_unreachable == 1)
                a.set_link(2, None)
                a.set_peer(2, b.address)
                inbox = b.subscribe(7)
                a.send(7, [hb(1, 2, 2)])
                with trio.fail_after(DEADLINE_S):
                    assert (await inbox.receive()).term == 2
