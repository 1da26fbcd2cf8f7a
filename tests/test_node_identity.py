"""A data directory's IDENTITY: a node opens only its own directory, and says clearly why not."""

from __future__ import annotations

import errno

import msgpack
import pytest

from engine import CorruptStateError, DurableState, InvalidArgumentError, StorageError
from engine.node import _open_identity


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
