"""The in-process cluster's own API (engine.local): arguments, node control and partitions.

In-process clusters; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import socket

import pytest
import trio

import engine.local
from engine.errors import InvalidArgumentError
from engine.local import open_local_cluster

GUARD_S = 60  # only ever reached by a bug that hangs


@pytest.mark.parametrize("regions, nodes_per_region, message", [
    ("eu", 1, "not the string 'eu'"),
    ("us-east", 1, "not the string 'us-east'"),
    (("us-east",), "3", "nodes_per_region must be a positive int"),
    (("us-east",), 0, "nodes_per_region must be a positive int"),
    (("us-east",), 1.0, "nodes_per_region must be a positive int"),
])
async def test_bad_arguments_are_refused_before_anything_starts(regions, nodes_per_region,
                                                                message, tmp_path):
    with trio.fail_after(GUARD_S):
        with pytest.raises(InvalidArgumentError, match=message):
            async with open_local_cluster(regions, nodes_per_region,
                                          directory=str(tmp_path)):
                pass  # pragma: no cover


@pytest.mark.parametrize("seed", ["7", 1.5, True, [7]])
async def test_a_seed_that_is_no_int_is_refused_before_anything_starts(seed, tmp_path):
    # It was added to each node's id when the node started: "can only concatenate str (not
    # "int") to str" from inside the first start, or a float or bool seed taken as it was.
    with trio.fail_after(GUARD_S):
        with pytest.raises(InvalidArgumentError, match="seed must be None or an int"):
            async with open_local_cluster(("us-east",), 1, seed=seed,
                                          directory=str(tmp_path)):
                pass  # pragma: no cover
        assert list(tmp_path.iterdir()) == []  # no node started


async def test_unknown_regions_and_nodes_are_named(tmp_path):
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("us-east",), 1, seed=3,
                                      directory=str(tmp_path)) as cluster:
            with pytest.raises(InvalidArgumentError, match="no region 'us-west'.*us-east"):
                async with cluster.connect(region="us-west"):
                    pass  # pragma: no cover
            with pytest.raises(InvalidArgumentError, match="no node 7 .*node ids: 1"):
                await cluster.stop_node(7)
            with pytest.raises(InvalidArgumentError, match="no node 7 "):
                await cluster.start_node(7)
            with pytest.raises(InvalidArgumentError, match="node 1 is running"):
                await cluster.start_node(1)
            await cluster.stop_node(1)
            with pytest.raises(InvalidArgumentError, match="node 1 is not running"):
                await cluster.stop_node(1)
            await cluster.start_node(1)
            with pytest.raises(InvalidArgumentError, match="no node 9 "):
                cluster.partition({9})


def _cuts(cluster) -> dict[int, set[int]]:
    return {node_id: set(node.unreachable) for node_id, node in cluster.nodes.items()}


async def test_a_partition_lasts_across_restarts_and_covers_stopped_nodes(tmp_path):
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("us-east",), 3, seed=4,
                                      directory=str(tmp_path)) as cluster:
            both_ways = {1: {2, 3}, 2: {1}, 3: {1}}
            cluster.partition({1}, {2, 3})
            assert _cuts(cluster) == both_ways

            # A node restarted during the partition is still cut, in both directions.
            await cluster.stop_node(1)
            await cluster.start_node(1)
            assert _cuts(cluster) == both_ways
            assert cluster.nodes[1]._peers.unreachable == {2, 3}

            # A node that was down when the partition began is cut once it starts.
            cluster.heal()
            assert _cuts(cluster) == {1: set(), 2: set(), 3: set()}
            await cluster.stop_node(3)
            cluster.partition({1}, {2, 3})
            await cluster.start_node(3)
            assert _cuts(cluster) == both_ways

            # Nodes in no side form one more side, stopped ones included.
            await cluster.stop_node(2)
            cluster.partition({1})
            await cluster.start_node(2)
            assert _cuts(cluster) == both_ways

            # Healed: a restart brings no cut back.
            cluster.heal()
            await cluster.stop_node(1)
            await cluster.start_node(1)
            assert _cuts(cluster) == {1: set(), 2: set(), 3: set()}


@pytest.mark.parametrize("offsets, message", [
    ({7: 10**9}, "no node 7 .*node ids: 1"),   # once silently ignored: no node was skewed
    ({0: 10**9}, "no node 0 "),
    ({1: 1.5e9}, "clock offset of node 1 must be an int"),  # once a working cluster whose
    ({1: "1"}, "clock offset of node 1 must be an int"),    # clients failed deep inside
    ({1: 10**30}, "clock offset of node 1 must be an int"),
])
async def test_bad_clock_offsets_are_refused_before_anything_starts(offsets, message,
                                                                    tmp_path):
    with trio.fail_after(GUARD_S):
        with pytest.raises(InvalidArgumentError, match=message):
            async with open_local_cluster(("us-east",), 1, clock_offsets_ns=offsets,
                                          directory=str(tmp_path)):
                pass  # pragma: no cover
        assert list(tmp_path.iterdir()) == []  # no node started
        async with open_local_cluster(("us-east",), 1, seed=5,
                                      directory=str(tmp_path)) as cluster:
            await cluster.stop_node(1)
            with pytest.raises(InvalidArgumentError, match="clock offset of node 1"):
                await cluster.start_node(1, clock_offset_ns=offsets.get(1, 1.5e9))
            await cluster.start_node(1, clock_offset_ns=10**9)


async def test_a_node_in_two_sides_of_a_partition_is_refused(tmp_path):
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("us-east",), 3, seed=6,
                                      directory=str(tmp_path)) as cluster:
            # Once: node 2 silently on the last side it was named in, cut from node 1.
            with pytest.raises(InvalidArgumentError, match="node 2 is in more than one side"):
                cluster.partition({1, 2}, {2, 3})
            with pytest.raises(InvalidArgumentError, match="sides must be iterables"):
                cluster.partition(1, 2)  # once a TypeError: 'int' object is not iterable
            assert _cuts(cluster) == {1: set(), 2: set(), 3: set()}  # nothing changed


async def test_a_cancelled_stop_node_leaves_the_node_under_the_clusters_control(tmp_path):
    """A stop_node cut short (a timeout around it, a nemesis task cancelled) must not lose
    track of the node while it is still closing: once, the node was forgotten at once,
    start_node failed with StoreLockedError ("in use by another node process") and
    stop_node said "not running" while the node still held its data directory."""
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("us-east",), 1, seed=7,
                                      directory=str(tmp_path)) as cluster:
            async with cluster.connect() as db:
                await db.create_keyspace("kept")
                async with db.transaction() as tx:
                    await tx.put("kept", b"k", b"v")

            # Started again right after a cancelled stop: it waits for the old node to close.
            with trio.CancelScope() as scope:
                scope.cancel()
                await cluster.stop_node(1)
            await cluster.start_node(1)
            async with cluster.connect() as db:
                assert await db.read("kept", b"k") == b"v"

            # Stopped again after a cancelled stop: the second call waits for the node.
            with trio.CancelScope() as scope:
                scope.cancel()
                await cluster.stop_node(1)
            await cluster.stop_node(1)
            assert cluster.nodes == {}
            with pytest.raises(InvalidArgumentError, match="node 1 is not running"):
                await cluster.stop_node(1)
            await cluster.start_node(1)


async def test_a_node_started_twice_at_once_or_after_the_cluster_ended_is_refused(tmp_path):
    """Two start_node calls for one node at once both passed the "is running" check before
    either had registered the node: the second failed deep inside with StoreLockedError ("in
    use by another node process"). After the cluster's block, start_node failed with trio's
    "Nursery is closed to new arrivals"."""
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("us-east",), 1, seed=8,
                                      directory=str(tmp_path)) as cluster:
            await cluster.stop_node(1)
            refused = []

            async def start():
                try:
                    await cluster.start_node(1)
                except InvalidArgumentError as exc:
                    refused.append(str(exc))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(start)
                nursery.start_soon(start)
            assert refused == ["node 1 is running"]
            assert set(cluster.nodes) == {1}
        with pytest.raises(InvalidArgumentError, match="the local cluster has ended"):
            await cluster.start_node(1)


async def test_a_port_taken_between_choosing_and_binding_it_is_chosen_again(tmp_path,
                                                                          monkeypatch):
    """The ports are chosen free, then bound node by node: something else (another cluster
    starting at the same time, in this process or another) may bind one in between. Once,
    that failed the whole start with "[Errno 98] Address already in use"."""
    real = engine.local.free_base_port
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    chosen: list[int] = []

    def racing(count: int, *args, **kwargs) -> int:
        base = real(count, *args, **kwargs)
        if not chosen:
            taken.bind(("127.0.0.1", base + count - 1))  # the last node's client port
            taken.listen()
        chosen.append(base)
        return base

    monkeypatch.setattr(engine.local, "free_base_port", racing)
    try:
        with trio.fail_after(GUARD_S):
            async with open_local_cluster(("us-east",), 3, seed=8,
                                          directory=str(tmp_path)) as cluster:
                assert len(chosen) == 2
                assert sorted(cluster.nodes) == [1, 2, 3]
                async with cluster.connect() as db:
                    await db.create_keyspace("started")
                    assert await db.read("started", b"k") is None
    finally:
        taken.close()
