"""Edge cases of the regional resolvers (engine/merge.py, ARCH §6): cells that no sequence of
merges can build are refused when decoded, instead of being read one way and then merged
into another."""

from __future__ import annotations

import msgpack
import pytest

from engine.errors import CorruptStateError
from engine.merge import (
    MERGE,
    AddWinsSet,
    RemoteWrite,
    decode_cell,
    decode_set,
    encode_cell,
    encode_set_add,
    encode_set_remove,
)

US, EU = "us-east", "eu-west"


def _pack(*parts):
    return msgpack.packb(list(parts), use_bin_type=True)


def test_set_cells_no_merge_can_build_are_corrupt():
    """A set cell holds at most one tag per element and origin, live or removed, and no tag
    above its version. Before, such cells decoded: x read as present, and the next merge of
    any write (here an add of another element) dropped it, as the removed tag superseded the
    live one -- or a tombstone from the cell's future swallowed the origin's later adds."""
    aws = AddWinsSet()
    live_and_removed = _pack(1, "add_wins_set", 9, US,
                             [[[b"x", [[5, US]]]], [[b"x", [[7, US]]]], []])
    two_live = _pack(1, "add_wins_set", 9, US, [[[b"x", [[5, US], [7, US]]]], [], []])
    removed_above = _pack(1, "add_wins_set", 5, US, [[], [[b"x", [[9, US]]]], []])
    for data in (live_and_removed, two_live, removed_above):
        with pytest.raises(CorruptStateError):
            decode_cell(data)
    # What merges do build from those writes decodes.
    cell = aws.merge(None, _add(b"x", 5, US))[0]
    cell = aws.merge(cell, _add(b"x", 7, US))[0]
    cell = aws.merge(cell, _remove(b"x", [(7, US)], 9, EU))[0]
    assert decode_cell(encode_cell(cell)) == cell
    assert cell.state == ((), ((b"x", ((7, US),)),), ())
    assert decode_set(aws.value_of(cell)) == []


def _add(elem, ts, origin):
    return RemoteWrite(b"k", encode_set_add(elem), ts, origin, MERGE)


def _remove(elem, tags, ts, origin):
    return RemoteWrite(b"k", encode_set_remove(elem, tags), ts, origin, MERGE)


def test_counter_cell_with_a_sum_beyond_2_127_is_corrupt():
    """An origin folds at most one int64 increment per timestamp, so its sum stays strictly
    within +-2**127. Before, any 40-character decimal string decoded, up to 10**40 - 1: a
    sum no origin can reach, whose reads can outgrow what decode_int accepts."""
    for sum_ in (2**127, -(2**127), 10**40 - 1):
        with pytest.raises(CorruptStateError, match="beyond what an origin can fold"):
            decode_cell(_pack(1, "counter", 5, US, [[US, 0, str(sum_), []]]))
    for sum_ in (2**127 - 1, -(2**127) + 1, 2**64):
        cell = decode_cell(_pack(1, "counter", 5, US, [[US, 0, str(sum_), []]]))
        assert cell.state[0][2] == sum_
        assert decode_cell(encode_cell(cell)) == cell
