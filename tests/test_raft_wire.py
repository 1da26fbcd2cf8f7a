"""The Raft wire codec (raft/wire.py): round trips, framing, and one test per kind of bad input.

Pure code: no trio, no sockets (STYLE §6).
"""

from __future__ import annotations

import pickle
import re
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine._native import crc32c
from raft import wire
from raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    RaftError,
    SnapshotMeta,
)
from raft.wire import (
    HANDSHAKE_TAG,
    WIRE_VERSION,
    FrameDecoder,
    Handshake,
    WireError,
    encode_frame,
    encode_handshake,
)

U64 = 2**64 - 1

# --- strategies -----------------------------------------------------------------------------------

uints = st.one_of(st.integers(0, 300), st.integers(0, U64))  # small values exercise fixints
blobs = st.binary(max_size=40)
entries = st.builds(Entry, term=uints, index=uints, data=blobs, type=st.sampled_from(EntryType))


@st.composite
def conf_states(draw):
    ids = draw(st.lists(uints, max_size=6, unique=True))
    k = draw(st.integers(0, len(ids)))
    return ConfState(tuple(ids[:k]), tuple(ids[k:]))


snapshot_metas = st.builds(SnapshotMeta, index=uints, term=uints, conf=conf_states())
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=uints,
    frm=uints,
    term=uints,
    log_term=uints,
    index=uints,
    entries=st.lists(entries, max_size=3).map(tuple),
    commit=uints,
    reject=st.booleans(),
    reject_hint=uints,
    context=blobs,
    snapshot=st.none() | snapshot_metas,
    chunk_offset=uints,
    chunk=blobs,
    snapshot_size=uints,
)
frames = st.tuples(uints, st.lists(messages, max_size=3))


def decode_all(data: bytes) -> list:
    decoder = FrameDecoder()
    out = decoder.feed(data)
    assert decoder.buffered == 0
    return out


def raw_frame(body_obj) -> bytes:
    """A data frame (length, CRC) around any msgpack object, to build malformed bodies."""
    return framed(msgpack.packb(body_obj, use_bin_type=True))


def raw_handshake(body_obj) -> bytes:
    """A handshake frame (length, no CRC) around any msgpack object."""
    body = msgpack.packb(body_obj, use_bin_type=True)
    return struct.pack("<I", len(body)) + body


def sample_frames() -> list[tuple[int, list[Message]]]:
    meta = SnapshotMeta(index=90, term=4, conf=ConfState((1, 2, 3), (7,)))
    return [
        (7, [Message(MessageType.HEARTBEAT, to=2, frm=1, term=5, commit=3, context=b"ctx")]),
        (
            2**40,
            [
                Message(
                    MessageType.APPEND, to=3, frm=1, term=5, log_term=4, index=99, commit=98,
                    entries=(Entry(5, 100, b"x" * 300), Entry(5, 101, b"\x00\x01" * 9,
                                                              EntryType.CONF_CHANGE)),
                ),
                Message(MessageType.APPEND_RESP, to=1, frm=3, term=5, index=97, reject=True,
                        reject_hint=50, log_term=3),
            ],
        ),
        (0, []),
        (9, [Message(MessageType.SNAPSHOT, to=4, frm=1, term=6, snapshot=meta,
                     chunk_offset=1 << 20, chunk=b"s" * 300, snapshot_size=5 << 20)]),
    ]


def encode_all(frames_) -> bytes:
    return b"".join(encode_frame(group, msgs) for group, msgs in frames_)


# --- round trips --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(frames)
def test_any_frame_round_trips(frame):
    group, msgs = frame
    assert decode_all(encode_frame(group, msgs)) == [(group, msgs)]


@settings(max_examples=25, deadline=None)
@given(st.lists(frames, max_size=3), st.data())
def test_a_stream_split_anywhere_decodes_to_the_same_frames(stream_frames, data):
    stream = encode_all(stream_frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)]):
        out += decoder.feed(stream[lo:hi])
    assert out == [(g, list(m)) for g, m in stream_frames]
    assert decoder.buffered == 0


def test_a_frame_split_at_every_byte_boundary_decodes_the_same():
    expected = sample_frames()
    stream = encode_all(expected)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected, cut
        assert decoder.buffered == 0


def test_a_large_frame_split_anywhere_decodes_the_same():
    msg = Message(MessageType.SNAPSHOT, to=2, frm=1, chunk=bytes(range(256)) * 4096)  # 1 MiB
    frame = encode_frame(3, [msg])
    for cut in (1, 4, 5, 6, 70_000, len(frame) // 2, len(frame) - 1):
        decoder = FrameDecoder()
        assert decoder.feed(frame[:cut]) == []
        assert decoder.feed(frame[cut:]) == [(3, [msg])]


def test_a_stream_fed_one_byte_at_a_time_decodes_the_same():
    expected = sample_frames()
    decoder = FrameDecoder()
    out = []
    for i, byte in enumerate(encode_all(expected)):
        out += decoder.feed(bytes([byte]))
    assert out == expected


def test_an_incomplete_frame_is_held_not_truncated():
    frame = encode_frame(7, sample_frames()[1][1])
    for cut in range(len(frame)):
        decoder = FrameDecoder()
        assert decoder.feed(frame[:cut]) == []
        assert decoder.buffered == cut


def test_the_worked_example_in_the_module_docs_is_exact():
    doc = wire.__doc__.split("Worked example")[1].split("Errors")[0]
    hex_lines = re.findall(r"^    ((?:[0-9a-f]{2} )+)", doc, flags=re.M)
    documented = bytes.fromhex("".join(hex_lines))
    frame = encode_frame(7, [Message(MessageType.HEARTBEAT, to=2, frm=1, term=5, commit=3)])
    assert frame == documented
    assert f"is {len(frame)}\nbytes" in doc


def test_messages_and_entries_are_arrays_and_enums_are_ints():
    msg = Message(MessageType.APPEND, to=2, frm=1,
                  entries=(Entry(1, 2, b"d", EntryType.CONF_CHANGE),),
                  snapshot=SnapshotMeta(3, 4, ConfState((1,), (2,))))
    frame = encode_frame(5, [msg])
    body = msgpack.unpackb(frame[8:], raw=False)
    assert body[:2] == [WIRE_VERSION, 5]
    (m,) = body[2]
    assert m == [1, 2, 1, 0, 0, 0, [[1, 2, b"d", 1]], 0, False, 0, b"", [3, 4, [[1], [2]]], 0, b"",
                 0]
    assert struct.unpack("<II", frame[:8]) == (len(frame) - 8, crc32c(frame[8:]))


def test_wire_error_is_a_raft_error_and_a_value_error():
    assert issubclass(WireError, RaftError)
    assert issubclass(WireError, ValueError)


# --- malformed input: one case per kind ---------------------------------------------------------

GOOD = [7, 2, 1, 5, 0, 0, [], 3, False, 0, b"", None, 0, b"", 0]  # a HEARTBEAT, as an array


def with_field(i, value):
    m = list(GOOD)
    m[i] = value
    return [WIRE_VERSION, 7, [m]]


BAD_BODIES = {
    "unknown version": ([1, 7, []],
                        f"unsupported wire version 1 (this node speaks {WIRE_VERSION})"),
    "version is a bool": ([True, 7, []], "unsupported wire version True"),
    "version is a str": (["1", 7, []], "unsupported wire version '1'"),
    "body is a map": ({"version": 1}, "expected [version, group, messages], got map"),
    "body is an int": (1, "expected [version, group, messages], got integer"),
    "body too short": ([WIRE_VERSION, 7], "expected [version, group, messages], got an array of 2"),
    "body too long": ([WIRE_VERSION, 7, [], 0], "got an array of 4"),
    "negative group": ([WIRE_VERSION, -1, []], "group: expected an unsigned integer, got -1"),
    "group is a str": ([WIRE_VERSION, "7", []], "group: expected an unsigned integer, got str"),
    "messages not an array": ([WIRE_VERSION, 7, b"x"], "messages: expected an array, got bin"),
    "message is a map": ([WIRE_VERSION, 7, [{"type": 7}]],
                         "message 0: expected an array, got map"),
    "message too short": ([WIRE_VERSION, 7, [GOOD[:3]]],
                          "message 0: expected an array of 15, got 3 elements"),
    "message too long": ([WIRE_VERSION, 7, [GOOD + [0]]], "expected an array of 15, got 16"),
    "message type 0": (with_field(0, 0), "message 0: type: 0 is not a MessageType"),
    "message type 99": (with_field(0, 99), "type: 99 is not a MessageType"),
    "message type is nil": (with_field(0, None), "type: expected an unsigned integer, got nil"),
    "negative term": (with_field(3, -5), "message 0: term: expected an unsigned integer, got -5"),
    "bool as term": (with_field(3, True), "term: expected an unsigned integer, got bool"),
    "float as index": (with_field(5, 1.5), "index: expected an unsigned integer, got float"),
    "str as to": (with_field(1, "2"), "to: expected an unsigned integer, got str"),
    "int as reject": (with_field(8, 1), "reject: expected a bool, got integer"),
    "str as context": (with_field(10, "ctx"), "context: expected bin, got str"),
    "nil as chunk": (with_field(13, None), "chunk: expected bin, got nil"),
    "ext type as commit": (with_field(7, msgpack.ExtType(5, b"x")),
                           "commit: expected an unsigned integer, got ExtType"),
    "entries not an array": (with_field(6, b""), "entries: expected an array, got bin"),
    "entry too short": (with_field(6, [[1, 2, b""]]),
                        "entries[0]: expected an array of 4, got 3 elements"),
    "entry type 7": (with_field(6, [[1, 2, b"", 0], [1, 3, b"", 7]]),
                     "entries[1]: type: 7 is not an EntryType"),
    "entry type bool": (with_field(6, [[1, 2, b"", True]]),
                        "entries[0]: type: expected an unsigned integer, got bool"),
    "entry data str": (with_field(6, [[1, 2, "d", 0]]), "entries[0]: data: expected bin, got str"),
    "entry negative index": (with_field(6, [[1, -2, b"", 0]]),
                             "entries[0]: index: expected an unsigned integer, got -2"),
    "snapshot wrong shape": (with_field(11, [1, 2]), "snapshot: expected an array of 3, got 2"),
    "snapshot is bin": (with_field(11, b"meta"), "snapshot: expected an array, got bin"),
    "conf wrong shape": (with_field(11, [1, 2, [[1]]]),
                         "snapshot: conf: expected an array of 2, got 1"),
    "conf voter negative": (with_field(11, [1, 2, [[1, -3], []]]),
                            "snapshot: conf.voters[1]: expected an unsigned integer, got -3"),
    "conf voter and learner": (with_field(11, [1, 2, [[1, 2], [2]]]),
                               "conf: a node cannot be both voter and learner"),
    "handshake mid-stream": ([WIRE_VERSION, HANDSHAKE_TAG, 1, 2], "unexpected handshake"),
}


@pytest.mark.parametrize("body, message", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_malformed_body_raises_wire_error_naming_the_problem(body, message):
    with pytest.raises(WireError) as info:
        FrameDecoder().feed(raw_frame(body))
    assert message in str(info.value)
    assert str(info.value).startswith("frame 0")


def framed(body: bytes) -> bytes:
    return struct.pack("<II", len(body), crc32c(body)) + body


BAD_BYTES = {
    "empty frame": (b"\x00\x00\x00\x00", "frame 0: empty frame (length 0)"),
    "not msgpack": (framed(b"\xc1"), "frame 0: body is not valid msgpack (FormatError)"),
    "trailing bytes in body": (framed(msgpack.packb([1, 7, []]) + b"\x00"),
                               "body is not valid msgpack (ExtraData"),
    "body cut short inside": (framed(msgpack.packb([1, 7, [GOOD]])[:3]),
                              "body is not valid msgpack"),
    "nested too deep": (framed(b"\x91" * 100_000 + b"\x01"), "body is not valid msgpack"),
    "invalid utf-8 str": (framed(b"\x93\x01\xa2\xff\xfe\x90"), "body is not valid msgpack"),
    "a pickle": (framed(pickle.dumps(Message(MessageType.VOTE, 2, 1))), "frame 0: "),
}


@pytest.mark.parametrize("data, message", BAD_BYTES.values(), ids=BAD_BYTES.keys())
def test_malformed_bytes_raise_wire_error_naming_the_problem(data, message):
    with pytest.raises(WireError) as info:
        FrameDecoder().feed(data)
    assert message in str(info.value)
    # A short, clear error: msgpack's own exception is not chained onto it.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_length_over_the_limit_raises_before_the_body_arrives():
    decoder = FrameDecoder(max_frame=1000)
    assert decoder.feed(struct.pack("<I", 1000)[:3]) == []
    with pytest.raises(WireError, match="frame 0: length 1001 exceeds the limit of 1000 bytes"):
        FrameDecoder(max_frame=1000).feed(struct.pack("<I", 1001))
    with pytest.raises(WireError, match="exceeds the limit of 67108864 bytes"):
        FrameDecoder().feed(struct.pack("<I", (64 << 20) + 1))


@pytest.mark.parametrize("where", ["body", "crc"])
def test_a_frame_damaged_on_the_way_is_refused_before_it_is_decoded(where):
    """A flipped bit that still leaves valid msgpack and a valid message (here: an entry's
    data) must not reach the log: the frame's CRC-32C catches it."""
    msg = Message(MessageType.APPEND, to=2, frm=1, term=1, entries=(Entry(1, 1, b"value"),))
    frame = bytearray(encode_frame(7, [msg]))
    pos = frame.index(b"value") if where == "body" else 5
    frame[pos] ^= 0x01  # b"walue": still a well-formed APPEND
    if where == "body":
        body = bytes(frame[8:])
        ((_, (damaged,)),) = FrameDecoder().feed(framed(body))  # decodes, if unchecked
        assert damaged.entries[0].data == b"walue"
    with pytest.raises(WireError, match=r"^frame 2: the body's CRC-32C is .* damaged on the way"):
        FrameDecoder().feed(encode_frame(7, []) + encode_frame(7, []) + bytes(frame))


def test_the_error_names_the_frame_and_message_it_is_in():
    stream = encode_all(sample_frames()) + raw_frame(
        [WIRE_VERSION, 7, [GOOD, GOOD, with_field(4, -1)[2][0]]]
    )
    with pytest.raises(WireError, match=r"^frame 4: message 2: log_term: .* got -1$"):
        FrameDecoder().feed(stream)


def test_a_decoder_that_failed_stays_failed():
    decoder = FrameDecoder()
    with pytest.raises(WireError) as first:
        decoder.feed(raw_frame([99, 7, []]))
    good = encode_frame(7, [])
    with pytest.raises(WireError) as again:
        decoder.feed(good)
    assert again.value is first.value
    assert decoder.buffered == 0


def test_max_frame_must_fit_the_length_field():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=2**32)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_wire_error(data):
    decoder = FrameDecoder(max_frame=1 << 16)
    try:
        for group, msgs in decoder.feed(data):
            assert all(isinstance(m, Message) for m in msgs)
    except WireError:
        pass


@settings(max_examples=50, deadline=None)
@given(frames, st.data())
def test_a_corrupted_frame_decodes_or_raises_wire_error(frame, data):
    encoded = bytearray(encode_frame(*frame))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] = data.draw(st.integers(0, 255))
    decoder = FrameDecoder()
    try:
        decoder.feed(bytes(encoded))
    except WireError:
        pass


# --- encoding refuses what no decoder accepts ---------------------------------------------------

BAD_MESSAGES = {
    "negative term": (Message(MessageType.VOTE, 2, 1, term=-1), "message 0: term"),
    "term over 64 bits": (Message(MessageType.VOTE, 2, 1, term=2**64), "outside [0, 2**64)"),
    "bool as index": (Message(MessageType.VOTE, 2, 1, index=True), "index: expected an integer"),
    "unknown type": (Message(99, 2, 1), "type: 99 is not a MessageType"),
    "str context": (Message(MessageType.HEARTBEAT, 2, 1, context="c"), "context: expected bytes"),
    "int reject": (Message(MessageType.VOTE_RESP, 2, 1, reject=1), "reject: expected a bool"),
    "str entry data": (Message(MessageType.APPEND, 2, 1, entries=(Entry(1, 1, "x"),)),
                       "entries[0]: data: expected bytes"),
    "negative entry index": (Message(MessageType.APPEND, 2, 1, entries=(Entry(1, -1),)),
                             "entries[0]: index"),
    "bad entry type": (Message(MessageType.APPEND, 2, 1, entries=(Entry(1, 1, b"", 5),)),
                       "entries[0]: type: 5 is not an EntryType"),
    "bool entry type": (Message(MessageType.APPEND, 2, 1, entries=(Entry(1, 1, b"", True),)),
                        "entries[0]: type: True is not an EntryType"),
    "not an entry": (Message(MessageType.APPEND, 2, 1, entries=((1, 1, b"", 0),)),
                     "entries[0]: expected an Entry"),
    "negative voter": (Message(MessageType.SNAPSHOT, 2, 1,
                               snapshot=SnapshotMeta(1, 1, ConfState((-1,)))),
                       "snapshot.conf.voters[0]"),
}


@pytest.mark.parametrize("msg, message", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_encoding_an_invalid_message_raises_wire_error(msg, message):
    with pytest.raises(WireError) as info:
        encode_frame(7, [msg])
    assert message in str(info.value)


def test_plain_ints_for_enums_encode_as_the_enum():
    msg = Message(7, 2, 1, entries=(Entry(1, 1, b"", 1),))
    ((_, (back,)),) = FrameDecoder().feed(encode_frame(3, [msg]))
    assert back.type is MessageType.HEARTBEAT and back.entries[0].type is EntryType.CONF_CHANGE


def test_encoding_refuses_a_bad_group_or_a_non_message():
    with pytest.raises(WireError, match="group"):
        encode_frame(-1, [])
    with pytest.raises(WireError, match="message 0: expected a Message, got dict"):
        encode_frame(1, [{"type": 7}])


# --- handshake ----------------------------------------------------------------------------------


def test_handshake_then_frames_in_one_stream():
    stream = encode_handshake(3, 4) + encode_all(sample_frames())
    for cut in range(0, len(stream) + 1, 3):
        decoder = FrameDecoder()
        hello = decoder.feed_handshake(stream[:cut])
        rest = stream[cut:]
        if hello is None:
            hello = decoder.feed_handshake(rest)
            rest = b""
        assert hello == Handshake(dialer=3, acceptor=4)
        assert decoder.feed(b"") + decoder.feed(rest) == sample_frames()


@pytest.mark.parametrize("body", [[1, HANDSHAKE_TAG, 1, 2], [1, HANDSHAKE_TAG, 1, 2, b"more"]])
def test_a_handshake_of_another_version_names_both_versions(body):
    # Version 1 had no CRC in its data frames; its handshake has the layout of this one's.
    with pytest.raises(WireError,
                       match=f"the peer speaks wire version 1, this node speaks {WIRE_VERSION}"):
        FrameDecoder().feed_handshake(raw_handshake(body))


def test_a_data_frame_where_the_handshake_belongs_is_refused():
    with pytest.raises(WireError, match="Meridian Raft peer"):
        FrameDecoder().feed_handshake(encode_frame(7, []))


def test_a_handshake_with_a_bad_node_id_is_refused():
    with pytest.raises(WireError, match="dialer: expected an unsigned integer, got -1"):
        FrameDecoder().feed_handshake(raw_handshake([WIRE_VERSION, HANDSHAKE_TAG, -1, 2, ""]))


@pytest.mark.parametrize("cluster, message", [
    (7, "cluster: expected a str of at most 255 bytes, got"),
    ("x" * 256, "cluster: expected a str of at most 255 bytes"),
])
def test_a_handshake_with_a_bad_cluster_name_is_refused(cluster, message):
    with pytest.raises(WireError, match=message):
        FrameDecoder().feed_handshake(raw_handshake([WIRE_VERSION, HANDSHAKE_TAG, 1, 2, cluster]))


def test_a_handshake_names_the_cluster():
    hello = FrameDecoder().feed_handshake(encode_handshake(1, 2, "prod"))
    assert hello == Handshake(dialer=1, acceptor=2, cluster="prod")


def test_feed_handshake_only_comes_first():
    decoder = FrameDecoder()
    decoder.feed(encode_frame(1, []))
    with pytest.raises(RuntimeError):
        decoder.feed_handshake(encode_handshake(1, 2))


def test_a_handshake_longer_than_any_handshake_is_refused_before_its_body_arrives():
    # The first frame of a connection is read before the peer is known to be a Meridian node
    # at all; its length used to be checked only against max_frame (64 MiB by default), so
    # anyone who connects could make the acceptor buffer 64 MiB -- per connection, up to
    # max_inbound (1024) of them at once.
    with pytest.raises(WireError, match="handshake"):
        FrameDecoder().feed_handshake(struct.pack("<I", 60 << 20))
