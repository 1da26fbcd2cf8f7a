"""A data directory's IDENTITY: a node opens only its own directory, and says clearly why not."""

from __future__ import annotations

import msgpack
import pytest

from engine import CorruptStateError, DurableState, InvalidArgumentError
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


def test_group_data_without_an_identity_is_not_claimed(tmp_path):
    (tmp_path / "groups" / "1" / "raft").mkdir(parents=True)
    with pytest.raises(CorruptStateError, match="records no node"):
        _open_identity(tmp_path, "c", 1, [])
    with DurableState(tmp_path / "IDENTITY") as state:
        assert state.load() is None  # nothing was recorded
