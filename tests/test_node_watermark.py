"""A destination group's answer to ``remote.watermark`` (ARCH §6): the watermark of what it has
applied of an origin's regional writes, read once everything its group acknowledged is applied.

A unit test of :class:`engine.node.Node`'s handler: the node is built but never run, and its
replica is a stand-in whose confirmation of leadership applies what was committed.
"""

from __future__ import annotations

from engine.config import NodeConfig, default_local_cluster
from engine.node import Node

ORIGIN = 7


class CatchingUpReplica:
    """A leader just elected: its group committed the origin's writes up to ``committed``, but
    it has applied them only up to ``applied`` until it confirms its leadership (ReadIndex),
    after which everything acknowledged is applied."""

    def __init__(self, applied: int, committed: int) -> None:
        self.sm = self
        self._applied, self._committed = applied, committed

    def _require_leader(self) -> None:
        pass

    async def snapshot_ts(self, min_ts: int = 0) -> int:
        self._applied = self._committed
        return 1

    def watermark(self, origin: int) -> int:
        assert origin == ORIGIN
        return self._applied


async def test_the_watermark_is_read_once_everything_acknowledged_is_applied():
    cluster = default_local_cluster(("us-east",), 1)
    node = Node(NodeConfig(node_id=1, data_dir="unused", cluster=cluster))
    replica = CatchingUpReplica(applied=100, committed=250)
    node._replica = lambda p: replica
    reply = await node._remote_watermark({"group": 1, "origin": ORIGIN})
    assert reply == {"watermark": 250}
