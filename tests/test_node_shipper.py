"""The shipper of a data group's regional writes (ARCH §6), as one node runs it while it leads
the group: how often it sends a batch that the destination refuses.

A unit test of :class:`engine.node.Node`'s shipper: the node is built but never run, its
replica of the origin group is a stand-in that leads and holds one outbox record, and the
destination is a stand-in for the other region's group. Time is trio's MockClock.
"""

from __future__ import annotations

import trio

from engine.config import NodeConfig, default_local_cluster
from engine.errors import InvalidArgumentError
from engine.group import GroupStateMachine, encode_commit
from engine.mvcc import MVCCStore
from engine.node import REPLICATION_BATCH_BYTES, Node
from test_group import Log

ORIGIN, DESTINATION = 7, 8
RECORD_TS = 1_000


class LeadingOrigin:
    """The origin group's replica on its leader: one regional write waits in its outbox."""

    group = ORIGIN

    def __init__(self) -> None:
        self.node = self.sm = self
        self.is_leader = True
        self.outbox_trimmed = 0

    def outbox_after(self, ts: int, limit: int = 256, max_bytes: int | None = None) -> list:
        return [(RECORD_TS, [[b"k", "lww", b"v", RECORD_TS, "us-east", 0, ""]])][
            :1 if ts < RECORD_TS else 0]

    def shipped(self, destination: int) -> int:
        return 0

    async def wait_outbox(self) -> None:
        await trio.sleep_forever()

    async def propose(self, data: bytes) -> None:
        """SHIPPED: how far the destination got (not needed here)."""


class RefusingDestination:
    """The destination's leader: it refuses the batch every time it is sent (a cell there
    cannot take it yet: refused whole, applied once the cell has shrunk)."""

    def __init__(self) -> None:
        self.batches = 0

    async def _call_group(self, group: int, method: str, payload):
        if method == "remote.watermark":
            return {"watermark": 0}
        self.batches += 1
        raise InvalidArgumentError("batch refused: the cell would outgrow the value limit")


async def test_a_batch_the_destination_refuses_is_sent_again_less_and_less_often(
        autojump_clock):
    # Each batch sent is a Raft entry at the destination, of up to REPLICATION_BATCH_BYTES:
    # sent again every half second, a batch refused for an hour fills its log.
    node = Node(NodeConfig(node_id=1, data_dir="unused",
                           cluster=default_local_cluster(("us-east",), 1)))
    destination = RefusingDestination()
    node._peers = destination
    with trio.move_on_after(600):
        await node._ship_regional(LeadingOrigin(), DESTINATION)
    assert 10 <= destination.batches <= 80, destination.batches


class Outbox(LeadingOrigin):
    """An origin whose outbox grows: ``add`` commits one more regional write."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list = []
        self._added = trio.Event()

    def add(self, ts: int) -> None:
        self.records.append((ts, [[b"k", "lww", b"v", ts, "us-east", 0, ""]]))
        self._added.set()
        self._added = trio.Event()

    def outbox_after(self, ts: int, limit: int = 256, max_bytes: int | None = None) -> list:
        return [r for r in self.records if r[0] > ts][:limit]

    async def wait_outbox(self) -> None:
        await self._added.wait()


class RefusingSome:
    """The destination's leader: refuses the batches up to ``up_to`` ``refused`` times each,
    then applies them; records when each batch was sent."""

    def __init__(self, refused: int) -> None:
        self.refused = refused
        self.watermark = 0
        self.sent: dict[int, list[float]] = {}

    async def _call_group(self, group: int, method: str, payload):
        if method == "remote.watermark":
            return {"watermark": self.watermark}
        times = self.sent.setdefault(payload["up_to"], [])
        times.append(trio.current_time())
        if len(times) <= self.refused:
            raise InvalidArgumentError("batch refused: the cell would outgrow the value limit")
        self.watermark = max(self.watermark, payload["up_to"])
        return {"watermark": self.watermark}


async def test_a_batch_refused_after_others_got_through_is_sent_again_soon(autojump_clock):
    # The pause between attempts grows while they fail in a row, and starts over once a
    # batch gets through: a refusal after that is not one of the same run of failures.
    node = Node(NodeConfig(node_id=1, data_dir="unused",
                           cluster=default_local_cluster(("us-east",), 1)))
    origin, destination = Outbox(), RefusingSome(refused=8)
    node._peers = destination
    origin.add(RECORD_TS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._ship_regional, origin, DESTINATION)
        while destination.watermark < RECORD_TS:
            await trio.sleep(1)
        origin.add(2 * RECORD_TS)
        while len(destination.sent.get(2 * RECORD_TS, ())) < 2:
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    first, second = destination.sent[2 * RECORD_TS][:2]
    assert second - first <= 2.0


class StoredOutbox:
    """The origin group's replica on its leader, over a real state machine whose outbox
    holds large regional writes; it stops leading once a batch has been sent."""

    group = ORIGIN

    def __init__(self, sm: GroupStateMachine) -> None:
        self.sm = sm
        self.node = self
        self.is_leader = True

    async def wait_outbox(self) -> None:
        await trio.sleep_forever()

    async def propose(self, data: bytes) -> None:
        """SHIPPED: how far the destination got (not needed here)."""


class Accepting:
    """The destination's leader: applies each batch, and records its size."""

    def __init__(self, origin: StoredOutbox) -> None:
        self.origin = origin
        self.sizes: list[int] = []

    async def _call_group(self, group: int, method: str, payload):
        if method == "remote.watermark":
            return {"watermark": 0}
        self.sizes.append(sum(len(w[2]) for w in payload["writes"]))
        self.origin.is_leader = False
        return {"watermark": payload["up_to"]}


async def test_a_batch_reads_no_more_of_the_outbox_than_it_ships(tmp_path, autojump_clock):
    # A batch ships at most REPLICATION_BATCH_BYTES, cut from the records read: the shipper
    # used to read REPLICATION_BATCH of them whatever their size (each up to 4 MiB, a GiB
    # in all), to ship a few.
    big = 1 << 20
    store = MVCCStore(tmp_path / "east", map_size=1 << 28)
    sm = GroupStateMachine(store, max_txn_lifetime_ns=10**9, origin="us-east",
                           destinations=(DESTINATION,))
    log = Log()
    try:
        sm.apply([log(encode_commit(i + 1, 0, RECORD_TS + i, [], merges=[
            (b"k%d" % i, "lww", bytes([i]) * big)])) for i in range(32)])
        node = Node(NodeConfig(node_id=1, data_dir="unused",
                               cluster=default_local_cluster(("us-east",), 1)))
        origin = StoredOutbox(sm)
        node._peers = destination = Accepting(origin)
        read: list[int] = []
        outbox_after = sm.outbox_after

        def counted(*args, **kwargs):
            records = outbox_after(*args, **kwargs)
            read.append(sum(len(w[2]) for _, ws in records for w in ws))
            return records

        sm.outbox_after = counted
        with trio.fail_after(10):
            await node._ship_while_leading(origin, DESTINATION)
        assert destination.sizes and max(destination.sizes) <= REPLICATION_BATCH_BYTES
        # Read: what a batch ships, and at most the record that goes past the bound.
        assert read and max(read) <= REPLICATION_BATCH_BYTES + big
    finally:
        sm.close()
        store.close()
