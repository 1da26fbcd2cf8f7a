"""A data directory's IDENTITY: a node opens only its own directory, and says clearly why not."""

from __future__ import annotations

import errno
import shutil

import msgpack
import pytest

from engine import CorruptStateError, DurableState, InvalidArgumentError, StorageError
from engine.node import _open_identity, _record_opened


def test_a_directory_is_claimed_once_and_refused_to_another_node(tmp_path):
    _open_identity(tmp_path, "c", 1, []).close()
    _open_identity(tmp_path, "c", 1, []).close()
    with pytest.raises(InvalidArgumentError, match="belongs to node 1 of cluster 'c'"):
        _open_identity(tmp_path, "c", 2, [])


@pytest.mark.parametrize("payload", [b"\x01" + bytes(24), msgpack.packb([1, 2]), b"\xc1"])
def test_an_identity_file_of_another_kind_is_corruption_naming_it(tmp_path, payload):
    """Another DurableState (a group's hard state, say) in IDENTITY's place."""
    with DurableState(tmp_path / "IDENTITY") as state:
        state.store(payload)
    with pytest.raises(CorruptStateError, match="does not hold a node identity") as info:
        _open_identity(tmp_path, "c", 1, [])
    assert info.value.path == str(tmp_path / "IDENTITY")


async def test_a_node_that_cannot_listen_does_not_claim_a_new_directory(tmp_path):
    # A wrong node_id names a node whose address is another machine's, or in use here: that
    # node fails to listen, and the directory it was given must stay free for the right one.
    import errno
    import socket

    import trio

    from engine.config import NodeConfig, default_local_cluster
    from engine.node import Node

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]  # node 2's peer port below
        cluster = default_local_cluster(("r1",), 2, base_port=port - 2)
        wrong = NodeConfig(node_id=2, data_dir=str(tmp_path / "data"), cluster=cluster)
        with pytest.raises(OSError) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(wrong).run)
    assert info.value.errno == errno.EADDRINUSE
    _open_identity(tmp_path / "data", "local", 1, []).close()  # the right node claims it


def test_group_data_without_an_identity_is_not_claimed(tmp_path):
    (tmp_path / "groups" / "1" / "raft").mkdir(parents=True)
    with pytest.raises(CorruptStateError, match="records no node"):
        _open_identity(tmp_path, "c", 1, [])
    with DurableState(tmp_path / "IDENTITY") as state:
        assert state.load() is None  # nothing was recorded


@pytest.mark.parametrize("below", ["", "node-1", "node-1/data"])
def test_a_data_directory_path_through_a_file_names_the_file(tmp_path, below):
    (tmp_path / "taken").write_text("")
    directory = tmp_path / "taken" / below
    with pytest.raises(StorageError) as info:
        _open_identity(directory, "c", 1, [])
    assert str(info.value) == (f"cannot create data directory {directory}: "
                               f"{tmp_path / 'taken'} exists and is not a directory")
    assert info.value.errno == errno.ENOTDIR


def test_a_group_whose_data_is_lost_is_not_made_afresh(tmp_path):
    # Once the node has made its groups, a missing group directory is lost data: made afresh,
    # the group forgets its Raft term, vote and log (a lone meta group, every keyspace).
    identity = _open_identity(tmp_path, "c", 1, [], hosted=(1, 100))
    for gid in (1, 100):
        (tmp_path / "groups" / str(gid) / "raft").mkdir(parents=True)
    _record_opened(identity)
    identity.close()
    _open_identity(tmp_path, "c", 1, [], hosted=(1, 100)).close()
    shutil.rmtree(tmp_path / "groups" / "1")
    with pytest.raises(CorruptStateError, match="has lost the data of group 1") as info:
        _open_identity(tmp_path, "c", 1, [], hosted=(1, 100))
    assert info.value.path == str(tmp_path / "groups" / "1")


def test_groups_not_made_yet_when_a_start_stopped_are_made_at_the_next(tmp_path):
    # A first start stopped (or killed) after claiming the directory, before its groups.
    _open_identity(tmp_path, "c", 1, [], hosted=(1, 100)).close()
    (tmp_path / "groups" / "1" / "raft").mkdir(parents=True)
    _open_identity(tmp_path, "c", 1, [], hosted=(1, 100)).close()


async def test_a_node_restarted_without_a_groups_data_refuses_to_start(tmp_path):
    import trio

    from engine.config import NodeConfig, default_local_cluster
    from engine.local import free_base_port
    from engine.node import Node

    cluster = default_local_cluster(("r1",), 1, base_port=free_base_port(2))
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "data"), cluster=cluster)
    async with trio.open_nursery() as nursery:
        await nursery.start(Node(cfg).run)
        nursery.cancel_scope.cancel()
    shutil.rmtree(tmp_path / "data" / "groups" / "1")  # the meta group: the catalog
    with pytest.raises(CorruptStateError, match="lost the data of group 1"):
        async with trio.open_nursery() as nursery:
            await nursery.start(Node(cfg).run)
            nursery.cancel_scope.cancel()  # it started: made the group afresh
    assert not (tmp_path / "data" / "groups" / "1").exists()
