"""The Raft wire format: length-prefixed msgpack frames with a version field (ARCH §3).

A byte stream between two nodes is a sequence of *frames*. A frame carries the messages of one
Raft group; one connection carries the frames of every group the two nodes share (multi-raft).
Nothing is ever unpickled (STYLE §7): a decoder accepts exactly the shapes below and raises
:class:`WireError` for anything else.

Frame
-----
::

    +-----------------+-----------------+-------------------------------------+
    | length: u32, LE | crc: u32, LE    | body: `length` bytes of msgpack     |
    +-----------------+-----------------+-------------------------------------+

    body    = [version, group, [message, ...]]        a msgpack array of 3

``version`` is :data:`WIRE_VERSION`; a decoder refuses any other value, and any change to the
layout below takes a new version. ``group`` is the Raft group id. The message list may be empty.
``length`` counts the body only, is at least 1 and at most the decoder's ``max_frame`` (64 MiB by
default); a larger length is refused as soon as the four length bytes arrive, before any body is
buffered. ``crc`` is the CRC-32C (Castagnoli) of the body: a frame whose body does not match it
was damaged on the way and is refused before it is decoded, so that a flipped bit in an entry
(TCP's own 16-bit checksum misses some) is never written to a follower's log, nor a damaged
snapshot chunk installed. FoundationDB checksums its packets the same way.

Types used below: *uint* is a msgpack integer in ``[0, 2**64)`` (any integer encoding is
accepted, the encoder uses the shortest); *bin* is msgpack bin 8/16/32 (a str is refused);
*bool* is msgpack true/false (an integer is refused); *nil* is msgpack nil. Every compound value
is a msgpack **array** with exactly the number of elements listed -- never a map (an APPEND of
100 entries packs and unpacks about 3x faster as arrays than as maps).

``message`` (:class:`raft.types.Message`) is an array of 15, in field order::

     0 type           uint   a MessageType value (1 APPEND ... 13 READ_INDEX_RESP)
     1 to             uint
     2 frm            uint
     3 term           uint
     4 log_term       uint
     5 index          uint
     6 entries        [entry, ...]
     7 commit         uint
     8 reject         bool
     9 reject_hint    uint
    10 context        bin
    11 snapshot       nil | snapshot_meta
    12 chunk_offset   uint
    13 chunk          bin
    14 snapshot_size  uint

    entry         = [term: uint, index: uint, data: bin, type: uint]   type: EntryType value
    snapshot_meta = [index: uint, term: uint, conf_state]
    conf_state    = [[voter: uint, ...], [learner: uint, ...]]          disjoint

Handshake
---------
The first frame a dialing node writes on a new connection is a handshake rather than a data
frame. It has the same length prefix but no CRC (so that a peer of another version, whatever
its frame layout, is refused with a message about the version); its body, at most
:data:`MAX_HANDSHAKE` (4 KiB) long whatever ``max_frame`` is, is an array of 5::

    [version, "meridian-raft", dialer_id, acceptor_id, cluster]

The second element is the msgpack str ``"meridian-raft"``; it tells a Meridian peer from any other
service. ``acceptor_id`` is the node the dialer believes it reached, so an acceptor can refuse a
connection meant for another node (a stale address). ``cluster`` is the name of the dialer's
cluster (a str of at most :data:`MAX_CLUSTER_NAME` bytes): node ids are unique within a cluster
only, so a node of another cluster at an address reused for this one is refused rather than let
its Raft messages mix with this cluster's. A version other than :data:`WIRE_VERSION`
is refused with an error naming both versions; later versions keep the first two elements where
they are, so that a mismatch is always reported as one.

A connection carries frames both ways (:mod:`raft.tcp`), so the acceptor, once it has accepted
the connection, answers with a handshake of its own before its first data frame: the same array
with the two ids swapped, ``[version, "meridian-raft", acceptor_id, dialer_id, cluster]`` -- in
either direction the third element names the sender and the fourth the node it means to reach.
The dialer checks both ids and the cluster, so a connection that merely echoes what it is sent
is refused.

Worked example
--------------
A HEARTBEAT for group 7 from node 1 to node 2 in term 5, commit 3, no ReadIndex context
(``encode_frame(7, [Message(MessageType.HEARTBEAT, to=2, frm=1, term=5, commit=3)])``) is 30
bytes::

    16 00 00 00                   length 22
    31 38 da 54                   CRC-32C of the 22 bytes below: 0x54da3831
    93 03 07 91                   [3, 7, [ ...one message
    9f 07 02 01 05 00 00 90 03    [7, 2, 1, 5, 0, 0, [], 3,
    c2 00 c4 00 c0 00 c4 00 00    false, 0, b"", nil, 0, b"", 0]]]

Errors
------
Decoding raises :class:`WireError` -- with a message naming the frame element that was wrong --
for a bad length, a body that does not match its CRC, bytes that are not msgpack, an unknown
version, a wrong shape or type, an integer out of range or an unknown enum value. A decoder
that raised is finished: the stream has lost its framing, so the connection must be closed
(the frames decoded earlier in the same :meth:`FrameDecoder.feed` call are discarded too; Raft
tolerates the loss). Encoding raises
:class:`WireError` for a message that no decoder would accept.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from engine._native import crc32c

from .types import (
    ConfChangeError,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    RaftError,
    SnapshotMeta,
)

__all__ = [
    "WIRE_VERSION",
    "HANDSHAKE_TAG",
    "DEFAULT_MAX_FRAME",
    "MAX_HANDSHAKE",
    "FRAME_HEADER_SIZE",
    "WireError",
    "Handshake",
    "encode_frame",
    "encode_handshake",
    "FrameDecoder",
]

WIRE_VERSION = 3  # 2: data frames carry the CRC-32C of their body; 3: handshakes the cluster
HANDSHAKE_TAG = "meridian-raft"
DEFAULT_MAX_FRAME = 64 << 20  # bytes of body
# The largest handshake body accepted: this version's is under 40 bytes; the rest is room for
# later versions. Anyone may connect and send one, so it must not be buffered up to max_frame.
MAX_HANDSHAKE = 4096
MAX_CLUSTER_NAME = 255  # bytes of UTF-8
MAX_UINT = 2**64 - 1

_LENGTH = struct.Struct("<I")
_HEADER = struct.Struct("<II")  # a data frame's length and CRC
FRAME_HEADER_SIZE = _HEADER.size  # bytes of a data frame before its body
_MESSAGE_LEN = 15
_MESSAGE_TYPES = {int(t): t for t in MessageType}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_MESSAGE_UINT_FIELDS = (
    (1, "to"),
    (2, "frm"),
    (3, "term"),
    (4, "log_term"),
    (5, "index"),
    (7, "commit"),
    (9, "reject_hint"),
    (12, "chunk_offset"),
    (14, "snapshot_size"),
)


class WireError(RaftError, ValueError):
    """Bytes that are not a valid frame, or a value that cannot be encoded as one."""


@dataclass(frozen=True, slots=True)
class Handshake:
    """The first frame on a connection: who dialed, whom it meant to reach, and in which
    cluster (its name; ``""`` when the transport was given none).

    In the acceptor's answer the ids are swapped: ``dialer`` is the sender of the answer (the
    acceptor) and ``acceptor`` the node it answers (the dialer).
    """

    dialer: int
    acceptor: int
    cluster: str = ""


# --- encoding ---------------------------------------------------------------------------------


def _check_uint(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"{what}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_UINT:
        raise WireError(f"{what}: {value} is outside [0, 2**64)")


def _check_bytes(value: object, what: str) -> None:
    if type(value) is not bytes:
        raise WireError(f"{what}: expected bytes, got {type(value).__name__}")


_UINT_FIELDS = ("to", "frm", "term", "log_term", "index", "commit", "reject_hint",
                "chunk_offset", "snapshot_size")


def _message_to_array(m: Message, where: str) -> list:
    if not isinstance(m, Message):
        raise WireError(f"{where}: expected a Message, got {type(m).__name__}")
    if not isinstance(m.type, int) or isinstance(m.type, bool) or m.type not in _MESSAGE_TYPES:
        raise WireError(f"{where}: type: {m.type!r} is not a MessageType")
    fields = (m.to, m.frm, m.term, m.log_term, m.index, m.commit, m.reject_hint,
              m.chunk_offset, m.snapshot_size)
    # The common case costs a few comparisons; error messages are built only on failure.
    for value in fields:
        if type(value) is not int or not 0 <= value <= MAX_UINT:
            for value, name in zip(fields, _UINT_FIELDS):
                _check_uint(value, f"{where}: {name}")
    if type(m.reject) is not bool:
        raise WireError(f"{where}: reject: expected a bool, got {type(m.reject).__name__}")
    if type(m.context) is not bytes or type(m.chunk) is not bytes:
        _check_bytes(m.context, f"{where}: context")
        _check_bytes(m.chunk, f"{where}: chunk")
    entries = []
    for i, e in enumerate(m.entries):
        # The hot path of an APPEND: keep the common case to a few comparisons per entry.
        if not (
            type(e) is Entry
            and type(e.data) is bytes
            and type(e.term) is int
            and type(e.index) is int
            and 0 <= e.term <= MAX_UINT
            and 0 <= e.index <= MAX_UINT
            and type(e.type) is EntryType
        ):
            _check_entry(e, f"{where}: entries[{i}]")
        entries.append([e.term, e.index, e.data, int(e.type)])
    snap = m.snapshot
    if snap is None:
        snapshot = None
    else:
        if not isinstance(snap, SnapshotMeta):
            raise WireError(f"{where}: snapshot: expected SnapshotMeta or None")
        _check_uint(snap.index, f"{where}: snapshot.index")
        _check_uint(snap.term, f"{where}: snapshot.term")
        for i, node in enumerate(snap.conf.voters):
            _check_uint(node, f"{where}: snapshot.conf.voters[{i}]")
        for i, node in enumerate(snap.conf.learners):
            _check_uint(node, f"{where}: snapshot.conf.learners[{i}]")
        snapshot = [snap.index, snap.term, [list(snap.conf.voters), list(snap.conf.learners)]]
    return [
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        entries,
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        snapshot,
        m.chunk_offset,
        m.chunk,
        m.snapshot_size,
    ]


def _check_entry(e: object, where: str) -> None:
    if not isinstance(e, Entry):
        raise WireError(f"{where}: expected an Entry, got {type(e).__name__}")
    _check_uint(e.term, f"{where}: term")
    _check_uint(e.index, f"{where}: index")
    _check_bytes(e.data, f"{where}: data")
    if not isinstance(e.type, int) or isinstance(e.type, bool) or e.type not in _ENTRY_TYPES:
        raise WireError(f"{where}: type: {e.type!r} is not an EntryType")


def _frame(body: bytes) -> bytes:
    """A data frame: length, CRC, body."""
    if len(body) > 0xFFFFFFFF:
        raise WireError(f"frame body of {len(body)} bytes does not fit a u32 length")
    return _HEADER.pack(len(body), crc32c(body)) + body


def encode_frame(group: int, msgs: Sequence[Message]) -> bytes:
    """Encode the messages of one group as one frame (length prefix included).

    Args:
        group: the Raft group id, in ``[0, 2**64)``.
        msgs: the messages, in the order the receiver should see them.

    Returns:
        The frame: ``u32 length`` (little-endian) then the msgpack body.

    Raises:
        WireError: a value a decoder would refuse (a negative or too large integer, a str where
            bytes belong, an unknown enum value, an object that is not a Message or Entry).
    """
    _check_uint(group, "group")
    body = [WIRE_VERSION, group, [_message_to_array(m, f"message {i}") for i, m in enumerate(msgs)]]
    return _frame(msgpack.packb(body, use_bin_type=True))


def encode_handshake(dialer: int, acceptor: int, cluster: str = "") -> bytes:
    """Encode the handshake frame a dialing node sends first, or, with the ids swapped, the
    acceptor's answer (see the module docstring)."""
    _check_uint(dialer, "dialer")
    _check_uint(acceptor, "acceptor")
    if type(cluster) is not str or len(cluster.encode()) > MAX_CLUSTER_NAME:
        raise WireError(f"cluster: a str of at most {MAX_CLUSTER_NAME} bytes, not {cluster!r:.80}")
    body = msgpack.packb([WIRE_VERSION, HANDSHAKE_TAG, dialer, acceptor, cluster],
                         use_bin_type=True)
    return _LENGTH.pack(len(body)) + body  # no CRC: see the module docstring


# --- decoding ---------------------------------------------------------------------------------


def _uint(value: object, what: str) -> int:
    # msgpack cannot carry an integer >= 2**64, so only the sign needs checking; ``type() is``
    # keeps out bools (an int subclass).
    if type(value) is not int:
        raise WireError(f"{what}: expected an unsigned integer, got {_describe(value)}")
    if value < 0:
        raise WireError(f"{what}: expected an unsigned integer, got {value}")
    return value


def _describe(value: object) -> str:
    if value is None:
        return "nil"
    names = {bool: "bool", int: "integer", bytes: "bin", str: "str", list: "array",
             dict: "map", float: "float"}
    return names.get(type(value), type(value).__name__)


def _array(value: object, n: int | None, what: str) -> list:
    if type(value) is not list:
        raise WireError(f"{what}: expected an array, got {_describe(value)}")
    if n is not None and len(value) != n:
        raise WireError(f"{what}: expected an array of {n}, got {len(value)} elements")
    return value


def _decode_entries(items: object, where: str) -> tuple[Entry, ...]:
    items = _array(items, None, f"{where}: entries")
    out = []
    for i, e in enumerate(items):
        if type(e) is list and len(e) == 4:
            term, index, data, etype = e
            if (
                type(term) is int
                and type(index) is int
                and term >= 0
                and index >= 0
                and type(data) is bytes
                and type(etype) is int
            ):
                kind = _ENTRY_TYPES.get(etype)
                if kind is not None:
                    out.append(Entry(term, index, data, kind))
                    continue
        _raise_bad_entry_array(e, f"{where}: entries[{i}]")
    return tuple(out)


def _raise_bad_entry_array(e: object, where: str) -> None:
    term, index, data, etype = _array(e, 4, where)
    _uint(term, f"{where}: term")
    _uint(index, f"{where}: index")
    if type(data) is not bytes:
        raise WireError(f"{where}: data: expected bin, got {_describe(data)}")
    _uint(etype, f"{where}: type")
    raise WireError(f"{where}: type: {etype} is not an EntryType")


def _decode_snapshot_meta(value: object, where: str) -> SnapshotMeta | None:
    if value is None:
        return None
    index, term, conf = _array(value, 3, where)
    voters, learners = _array(conf, 2, f"{where}: conf")
    voters = tuple(_uint(v, f"{where}: conf.voters[{i}]")
                   for i, v in enumerate(_array(voters, None, f"{where}: conf.voters")))
    learners = tuple(_uint(v, f"{where}: conf.learners[{i}]")
                     for i, v in enumerate(_array(learners, None, f"{where}: conf.learners")))
    try:
        conf_state = ConfState(voters, learners)
    except ConfChangeError as exc:
        raise WireError(f"{where}: conf: {exc}") from None
    return SnapshotMeta(_uint(index, f"{where}: index"), _uint(term, f"{where}: term"), conf_state)


def _decode_message(value: object, where: str) -> Message:
    a = _array(value, _MESSAGE_LEN, where)
    t = a[0]
    mtype = _MESSAGE_TYPES.get(t) if type(t) is int else None
    if mtype is None:
        if type(t) is int:
            raise WireError(f"{where}: type: {t} is not a MessageType")
        raise WireError(f"{where}: type: expected an unsigned integer, got {_describe(t)}")
    for i, name in _MESSAGE_UINT_FIELDS:
        v = a[i]
        if type(v) is not int or v < 0:
            _uint(v, f"{where}: {name}")
    reject = a[8]
    if type(reject) is not bool:
        raise WireError(f"{where}: reject: expected a bool, got {_describe(reject)}")
    context, chunk = a[10], a[13]
    if type(context) is not bytes:
        raise WireError(f"{where}: context: expected bin, got {_describe(context)}")
    if type(chunk) is not bytes:
        raise WireError(f"{where}: chunk: expected bin, got {_describe(chunk)}")
    return Message(
        mtype,
        a[1],
        a[2],
        a[3],
        a[4],
        a[5],
        _decode_entries(a[6], where),
        a[7],
        reject,
        a[9],
        context,
        _decode_snapshot_meta(a[11], f"{where}: snapshot"),
        a[12],
        chunk,
        a[14],
    )


def _unpack(body: memoryview, where: str) -> object:
    try:
        # Defaults keep msgpack from allocating more than the body could describe; ext types and
        # maps come out as objects the shape checks refuse.
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise WireError(f"{where}: body is not valid msgpack ({detail})") from None


def _check_version(version: object, where: str) -> None:
    if version != WIRE_VERSION or type(version) is not int:
        raise WireError(
            f"{where}: unsupported wire version {version!r} (this node speaks {WIRE_VERSION})"
        )


def _decode_body(body: memoryview, where: str) -> tuple[int, list[Message]]:
    obj = _unpack(body, where)
    if type(obj) is not list or len(obj) != 3:
        if type(obj) is list and len(obj) == 4 and obj[1] == HANDSHAKE_TAG:
            raise WireError(f"{where}: unexpected handshake in the middle of a stream")
        if type(obj) is list and obj:
            _check_version(obj[0], where)
        raise WireError(f"{where}: expected [version, group, messages], got {_shape(obj)}")
    version, group, msgs = obj
    _check_version(version, where)
    group = _uint(group, f"{where}: group")
    msgs = _array(msgs, None, f"{where}: messages")
    return group, [_decode_message(m, f"{where}: message {i}") for i, m in enumerate(msgs)]


def _decode_handshake(body: memoryview, where: str) -> Handshake:
    where = f"{where} (handshake)"
    try:
        obj = _unpack(body, where)
    except WireError as exc:
        raise WireError(f"{exc} (is the other end a Meridian Raft peer?)") from None
    if type(obj) is not list or len(obj) < 2 or obj[1] != HANDSHAKE_TAG:
        raise WireError(
            f"{where}: expected [version, {HANDSHAKE_TAG!r}, dialer, acceptor], got {_shape(obj)}"
            " (is the other end a Meridian Raft peer?)"
        )
    version = obj[0]
    if version != WIRE_VERSION or type(version) is not int:
        raise WireError(
            f"{where}: the peer speaks wire version {version!r}, this node speaks {WIRE_VERSION}"
        )
    if len(obj) != 5:
        raise WireError(f"{where}: expected an array of 5, got {len(obj)} elements")
    _, _, dialer, acceptor, cluster = obj
    if type(cluster) is not str or len(cluster.encode()) > MAX_CLUSTER_NAME:
        raise WireError(f"{where}: cluster: expected a str of at most {MAX_CLUSTER_NAME} bytes, "
                        f"got {_describe(cluster)}")
    return Handshake(_uint(dialer, f"{where}: dialer"), _uint(acceptor, f"{where}: acceptor"),
                     cluster)


def _shape(obj: object) -> str:
    if type(obj) is list:
        return f"an array of {len(obj)}"
    return _describe(obj)


class FrameDecoder:
    """Splits a byte stream into frames and decodes them (see the module docstring).

    Feed it bytes as they arrive, split anywhere; it buffers at most one incomplete frame (at most
    ``4 + max_frame`` bytes plus the last chunk fed).

    Args:
        max_frame: the largest body length accepted, in bytes. A length prefix above it raises
            :class:`WireError` before the body is buffered.

    Example::

        decoder = FrameDecoder()
        while data := await stream.receive_some():
            for group, msgs in decoder.feed(data):
                ...
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        if not 1 <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must be in [1, 2**32), got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._frames = 0  # frames decoded so far, for error messages
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (part of an incomplete frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, list[Message]]]:
        """Take the next bytes of the stream; return the frames they complete, in order.

        Returns:
            ``(group, messages)`` per complete frame; an empty list if none completed.

        Raises:
            WireError: the stream is not a valid sequence of frames. The decoder stays failed:
                every later call raises the same error.
        """
        return self._drain(data, _decode_body, limit=None, checked=True)

    def feed_handshake(self, data: bytes) -> Handshake | None:
        """Take the first bytes of a stream, which must start with a handshake frame.

        Returns:
            The handshake once its frame is complete, else None (feed more). Bytes after it
            stay buffered: the next :meth:`feed` (``feed(b"")`` is fine) decodes them as frames.

        Raises:
            WireError: the first frame is not a valid handshake of this wire version.
            RuntimeError: a frame was already decoded.
        """
        if self._frames:
            raise RuntimeError("feed_handshake() after the first frame")
        done = self._drain(data, _decode_handshake, limit=1, checked=False,
                           max_length=min(self.max_frame, MAX_HANDSHAKE))
        return done[0] if done else None

    def _drain(self, data: bytes, decode, limit: int | None, checked: bool,
               max_length: int | None = None) -> list:
        """Decodes the complete frames buffered: data frames (``checked``: length, CRC, body)
        or the handshake (length, body). ``max_length``: the largest body accepted (default
        ``max_frame``)."""
        max_length = self.max_frame if max_length is None else max_length
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out = []
        pos = 0
        header = 8 if checked else 4
        try:
            with memoryview(buf) as view:
                while len(buf) - pos >= 4 and (limit is None or len(out) < limit):
                    (length,) = _LENGTH.unpack_from(buf, pos)
                    where = f"frame {self._frames}"
                    if length == 0:
                        raise WireError(f"{where}: empty frame (length 0)")
                    if length > max_length:
                        raise WireError(
                            f"{where}: length {length} exceeds the limit of {max_length} bytes"
                            + ("" if checked else
                               " for a handshake (is the other end a Meridian Raft peer?)")
                        )
                    if len(buf) - pos - header < length:
                        break  # incomplete: wait for more bytes
                    with view[pos + header: pos + header + length] as body:
                        if checked:
                            (expected,) = _LENGTH.unpack_from(buf, pos + 4)
                            actual = crc32c(body)
                            if actual != expected:
                                raise WireError(
                                    f"{where}: the body's CRC-32C is {actual:#010x}, the frame "
                                    f"says {expected:#010x}: the bytes were damaged on the way")
                        out.append(decode(body, where))
                    pos += header + length
                    self._frames += 1
        except WireError as exc:
            # The framing is lost: nothing after this point can be trusted.
            self._error = exc
            buf.clear()
            raise
        del buf[:pos]
        return out
