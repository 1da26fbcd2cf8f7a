"""Msgpack RPC over TCP between clients and nodes, and between nodes (ARCH §7).

A connection carries many calls at once. The client numbers its requests (*call ids*) and may
have any number outstanding; the server runs each request in its own task and answers as soon as
it is done, so replies can come back in any order and are matched to their calls by id.

Every frame also carries a hybrid-logical-clock timestamp, ``ts``: the sender's ``clock_now()``
when it wrote the frame. The receiver passes it to ``clock_update`` before anyone looks at the
payload, so a handler always runs, and a caller always resumes, with a clock at or above the
sender's (ARCH §5: causality across nodes). A ``clock_update`` that raises -- the peer's clock
is further ahead than ``max_clock_offset`` allows -- refuses that one frame, not the connection.

Nothing is ever unpickled (STYLE §7): payloads are plain msgpack values.

Frame
-----
::

    +-------------------+---------------------------------------------+
    | length: u32, BE   | body: `length` bytes of msgpack             |
    +-------------------+---------------------------------------------+

    request   = [version, 0, call_id, method, ts, payload, crc]   an array of 7
    response  = [version, 1, call_id, ts, payload, crc]           an array of 6
    error     = [version, 2, call_id, ts, {"code": str, "message": str,
                                            "retryable": bool, "details": map}, crc]

``version`` is :data:`RPC_VERSION` (2). ``crc``, the last element, is the CRC-32C (Castagnoli) of
every byte of the body before it, packed as a msgpack uint 32 (``ce`` and four bytes, big-endian)
whatever its value: a frame whose bytes do not match it was damaged on the way and ends the
connection before anything in it is used — a flipped bit in a write, or in a batch of writes
shipped to another region, must never be applied (TCP's own 16-bit checksum misses some). It
is the last element, not a header field, so that a peer of another version still finds the
version where it always was and is answered ``bad_version``. ``call_id`` and ``ts`` are
unsigned integers below ``2**64``; ``method`` is a msgpack str; ``payload`` is any msgpack
value. A response or an error repeats the call id of its request. The error map must hold
the four keys with those types (further keys are ignored, so later versions may add some).
``length`` counts the body only, is at least 1 and at most the receiver's ``max_frame``
(:data:`DEFAULT_MAX_FRAME`, 16 MiB, by default); a larger length is refused as soon as its four
bytes arrive, before any body is buffered.

Bodies are packed with ``use_bin_type=True`` (bytes stay bytes, str stays str) and unpacked with
``raw=False, strict_map_key=False`` (map keys may be any hashable msgpack value). A body must be
exactly one msgpack value; ext types are refused, except the msgpack timestamp (ext -1), which
the unpacker itself turns into a :class:`msgpack.Timestamp`.

Worked example
--------------
``encode_request(1, "echo", 0, "hi")`` is 22 bytes::

    00 00 00 12                   length 18
    97 02 00 01                   [2, 0 (request), 1 (call id),
    a4 65 63 68 6f                 "echo",
    00 a2 68 69                    0 (ts), "hi",
    ce 05 e9 97 46                 the CRC-32C of the 13 bytes above]

Errors and closing
------------------
A frame the receiver cannot trust -- a bad length, a body that does not match its CRC, bytes
that are not msgpack, a wrong shape or type, a request sent to a client or a response to a
server -- ends the connection: the framing may be lost, so nothing after it can be read. The
receiver logs the reason and closes; a server goes on serving its other connections. A frame of
another ``version`` is answered, when its third element is a readable call id, with an error
``bad_version`` (naming the version this end speaks) before the connection closes.
A server also closes, with a logged reason, a connection whose first request has not fully
arrived within ``first_request_timeout_s`` of its opening; a client, one whose server sent part
of a frame and nothing more while a call waited out its deadline (every later reply would be
behind the rest of that frame).

A server bounds the memory its clients' requests take while they arrive: a frame body over
64 KiB (:data:`LARGE_FRAME_BYTES`) is read only once its length is reserved from a budget
shared by all the server's connections (``max_receiving_bytes``, 256 MiB by default); until then
the server reads nothing more from that connection, and the client's writes wait in TCP's
buffers (back-pressure). Reservations are granted in the order they were asked for and given
back as soon as the frame has arrived. A client that sends nothing more of a large frame for
``receive_stall_timeout_s`` has its connection closed, which frees its reservation. A first
request that had to wait for its reservation is spared ``first_request_timeout_s`` (the wait
was the server's): ``receive_stall_timeout_s`` bounds the rest of it. Smaller frames need no
reservation: each connection buffers at most one incomplete one, and its sender too may pause
at most ``receive_stall_timeout_s`` while it arrives.

Error codes the server sends by itself (a handler may send any code, see :class:`RemoteError`):

``unknown_method``      no handler has that name (the reply does not list the handlers).
``internal``            the handler raised an exception that is not a :class:`RemoteError`, or
                        its result could not be encoded; the message names the exception's type
                        and text, and the server logs the traceback.
``response_too_large``  the handler's result is over ``max_frame``.
``clock_offset``        ``clock_update`` refused the request's ``ts``; the handler did not run.
``bad_version``         see above.
``overloaded``          call id 0, before the server closes a connection it cannot take (it
                        serves ``max_connections`` already); retryable, at another node. The
                        server reads nothing of such a connection, so the client fails the
                        calls it made on it with :class:`NotSentError`: none of them ran.

Writing
-------
Each connection has one writer task. A frame sent while the writer is idle and nothing is
queued is written at once, with a plain non-blocking write, and the writer is woken; frames
sent until it has run queue up behind that one and leave together, with one ``send_all`` of up
to 1 MiB. So a lone call costs one write and no task switch, and a busy connection one write
per scheduler pass rather than one per frame (the same scheme as :mod:`raft.tcp`). Senders wait
while more than 4 MiB are queued. TCP_NODELAY is on. A server closes a connection when a write
to it makes no progress for ``send_stall_timeout_s``: the client reads nothing, and the replies
of its running requests would otherwise be held for as long as the connection lasts. Both ends
let the kernel end a connection to a peer gone silent (TCP_USER_TIMEOUT and keepalive, see
:func:`raft.tcp.detect_dead_peers`) within the same time, 30 s by default.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from raft.tcp import detect_dead_peers, receive_available, send_all_or_stall, write_nowait
from raft.waitheap import WaitHeap

from ._native import crc32c
from .errors import InvalidArgumentError, MeridianError, RecordTooLargeError

__all__ = [
    "RPC_VERSION",
    "REQUEST",
    "RESPONSE",
    "ERROR",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_SEND_STALL_TIMEOUT_S",
    "DEFAULT_FIRST_REQUEST_TIMEOUT_S",
    "DEFAULT_MAX_RECEIVING_BYTES",
    "DEFAULT_RECEIVE_STALL_TIMEOUT_S",
    "LARGE_FRAME_BYTES",
    "UNKNOWN_METHOD",
    "INTERNAL",
    "RESPONSE_TOO_LARGE",
    "CLOCK_OFFSET",
    "BAD_VERSION",
    "RemoteError",
    "ConnectionLostError",
    "NotSentError",
    "ConnectTimeoutError",
    "CallTimeoutError",
    "RpcWireError",
    "RpcFrame",
    "RpcContext",
    "RpcStats",
    "RpcConnection",
    "FrameDecoder",
    "encode_request",
    "encode_response",
    "encode_error",
    "serve_rpc",
    "connect_rpc",
]

logger = logging.getLogger(__name__)

RPC_VERSION = 2  # 2: every frame ends with the CRC-32C of its body
REQUEST = 0
RESPONSE = 1
ERROR = 2
DEFAULT_MAX_FRAME = 16 << 20  # bytes of body
DEFAULT_MAX_CONCURRENT_REQUESTS = 256  # per connection
DEFAULT_MAX_CONNECTIONS = 1000  # per server; more are answered OVERLOADED and closed
DEFAULT_SEND_STALL_TIMEOUT_S = 30.0  # a server closes a connection whose client reads nothing
DEFAULT_FIRST_REQUEST_TIMEOUT_S = 10.0  # a connection without a request by then is closed
DEFAULT_MAX_RECEIVING_BYTES = 256 << 20  # large frames arriving at once, over all connections
DEFAULT_RECEIVE_STALL_TIMEOUT_S = 30.0  # a large frame's sender may pause this long, no more
LARGE_FRAME_BYTES = 64 << 10  # a frame body over this is read only once reserved (see above)
MAX_UINT = 2**64 - 1

# Error codes the server sends on its own.
UNKNOWN_METHOD = "unknown_method"
INTERNAL = "internal"
RESPONSE_TOO_LARGE = "response_too_large"
CLOCK_OFFSET = "clock_offset"
BAD_VERSION = "bad_version"
OVERLOADED = "overloaded"

_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">BI")  # a msgpack uint 32: ce, then the CRC-32C of the body before it
_CRC_SIZE = _CRC.size
_RECV_BYTES = 64 << 10  # asked of the socket per receive
_MIN_IDLE_WORKERS = 16  # request tasks a server connection may keep waiting for work (at least)
_MAX_WRITE_BYTES = 1 << 20  # frames coalesced into one send_all (at least one)
_MAX_QUEUED_BYTES = 4 << 20  # senders wait while this much is queued (a larger lone frame fits)
_CLOSE_FLUSH_S = 2.0  # how long a bad_version reply may take to leave before the close
_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

ClockNow = Callable[[], int]
ClockUpdate = Callable[[int], object]
Handler = Callable[[Any, "RpcContext"], Awaitable[Any]]


def _no_clock() -> int:
    return 0


def _ignore_clock(ts: int) -> None:
    return None


# --- errors -----------------------------------------------------------------------------------


class RemoteError(MeridianError):
    """A structured error, raised by a handler on purpose and by :meth:`RpcConnection.call`.

    A handler raises it to answer with an error frame carrying exactly these fields; the caller's
    :meth:`~RpcConnection.call` raises an equal one. Errors the server sends by itself use the
    codes listed in the module docstring.

    Attributes:
        code: a short machine-readable name (``"not_leader"``, ``"internal"``, ...).
        message: for people; may be empty.
        retryable: whether the same call may succeed if tried again (elsewhere or later).
        details: a msgpack map with whatever else the caller needs (a leader hint, ...).
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        retryable: bool = False,
        details: Mapping | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details = dict(details) if details is not None else {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return (f"RemoteError({self.code!r}, {self.message!r}, retryable={self.retryable!r}, "
                f"details={self.details!r})")


class ConnectionLostError(MeridianError, ConnectionError):
    """The connection ended (either side closed it, the network failed, or a bad frame arrived)
    before the call's reply: the call may or may not have run on the server."""


class NotSentError(ConnectionLostError):
    """The request was never sent — the connection had already ended when the call was made,
    or a peer that does not read left no room to send it by the call's deadline — or it was
    sent on a connection the server refused unread (``overloaded``), so retrying it elsewhere
    is safe (unlike a plain :class:`ConnectionLostError`)."""


class ConnectTimeoutError(MeridianError, TimeoutError):
    """:func:`connect_rpc` could not connect within ``connect_timeout_s``."""


class CallTimeoutError(MeridianError, TimeoutError):
    """No reply by the call's ``deadline``: the call may or may not have run on the server (as
    with :class:`ConnectionLostError`). The connection stays open; a reply that comes later is
    dropped. (Unless the server sent part of a frame and nothing more while the call waited:
    every later reply would be behind the rest of it, so the connection ends.)"""


class RpcWireError(MeridianError, ValueError):
    """Bytes that are not a valid RPC frame, or a value that cannot be encoded as one.

    Attributes:
        bad_version: the frame is of another protocol version.
        call_id: the frame's call id, when it could be read (else None).
    """

    def __init__(self, message: str, *, bad_version: bool = False, call_id: int | None = None):
        super().__init__(message)
        self.bad_version = bad_version
        self.call_id = call_id


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RpcFrame:
    """One decoded frame.

    ``method`` is set for a request only. For an error frame ``payload`` is the error map, with
    ``code`` and ``message`` str, ``retryable`` bool and ``details`` a dict (checked).
    """

    kind: int  # REQUEST, RESPONSE or ERROR
    call_id: int
    ts: int
    payload: Any
    method: str | None = None


@dataclass(frozen=True, slots=True)
class RpcContext:
    """What a handler knows about the request besides its payload.

    Attributes:
        peer: the client's ``(host, port)``.
        state: a dict that lives as long as the connection, shared by its requests (a session,
            an authenticated identity, ...). Handlers of one connection run concurrently.
        method: the method called.
        call_id: the request's call id.
        ts: the request's timestamp (already passed to ``clock_update``).
    """

    peer: tuple[str, int]
    state: dict
    method: str
    call_id: int
    ts: int


@dataclass(frozen=True, slots=True)
class RpcStats:
    """Counters of one client connection, since it opened."""

    calls: int  # calls sent
    late_replies: int  # replies to calls whose caller had given up (dropped)
    timeouts: int  # calls failed with CallTimeoutError (their deadline passed first)
    frames_sent: int
    frames_received: int
    writes: int  # write system calls (direct writes and send_all batches)
    bytes_sent: int
    bytes_received: int


# --- encoding ---------------------------------------------------------------------------------


def _check_uint(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise InvalidArgumentError(f"{what} must be an integer in [0, 2**64), got {value!r}")


def _pack(body: list, what: str) -> bytes:
    """The frame of ``body`` (an array of at most 14 elements), with its CRC appended as one
    more element: the array's header, a fixarray, counts one more."""
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"{what} cannot be encoded as msgpack: {exc}") from None
    size = len(data) + _CRC_SIZE
    if size > 0xFFFFFFFF:
        raise RecordTooLargeError(f"a frame body of {size} bytes does not fit a u32 length")
    head = bytes((data[0] + 1,))
    rest = memoryview(data)[1:]
    crc = crc32c(rest, crc32c(head))
    return b"".join((_LENGTH.pack(size), head, rest, _CRC.pack(0xCE, crc)))


def encode_request(call_id: int, method: str, ts: int, payload: Any) -> bytes:
    """Encode a request frame (length prefix included).

    Raises:
        InvalidArgumentError: ``call_id`` or ``ts`` outside ``[0, 2**64)``, ``method`` not a
            str, or a payload msgpack cannot encode.
        RecordTooLargeError: a body over 4 GiB.
    """
    _check_uint(call_id, "call_id")
    _check_uint(ts, "ts")
    if type(method) is not str:
        raise InvalidArgumentError(f"method must be a str, got {type(method).__name__}")
    return _pack([RPC_VERSION, REQUEST, call_id, method, ts, payload], "the payload")


def encode_response(call_id: int, ts: int, payload: Any) -> bytes:
    """Encode a response frame (length prefix included). Raises as :func:`encode_request`."""
    _check_uint(call_id, "call_id")
    _check_uint(ts, "ts")
    return _pack([RPC_VERSION, RESPONSE, call_id, ts, payload], "the result")


def encode_error(
    call_id: int,
    ts: int,
    code: str,
    message: str = "",
    *,
    retryable: bool = False,
    details: Mapping | None = None,
) -> bytes:
    """Encode an error frame (length prefix included). Raises as :func:`encode_request`."""
    _check_uint(call_id, "call_id")
    _check_uint(ts, "ts")
    if type(code) is not str or type(message) is not str:
        raise InvalidArgumentError("an error's code and message must be str")
    error = {
        "code": code,
        "message": message,
        "retryable": bool(retryable),
        "details": dict(details) if details is not None else {},
    }
    return _pack([RPC_VERSION, ERROR, call_id, ts, error], "the error's details")


# --- decoding ---------------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"ext type {code} is not accepted")


def _describe(value: object) -> str:
    if value is None:
        return "nil"
    names = {bool: "bool", int: "integer", bytes: "bin", str: "str", list: "array",
             dict: "map", float: "float"}
    return names.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    """A peer's value in an error message: itself if short, else its type. The message is
    logged, and sent back for another version, so it must not be as large as the frame."""
    if value is None or type(value) in (bool, int, float) or (
            type(value) in (str, bytes) and len(value) <= 16):
        return repr(value)
    return _describe(value)


def _cut(text: str, limit: int = 200) -> str:
    """``text`` if at most ``limit`` characters, else its first ``limit`` and a mark that says
    how much was left out (a peer's words in a log line or an error message)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0  # msgpack cannot carry 2**64 or more


def _decode_body(body: memoryview, where: str) -> RpcFrame:
    end = len(body) - _CRC_SIZE
    # A frame of this version: [version, ..., crc]. Anything else is unpacked only to find
    # its version for the error; it is never used.
    checked = end >= 2 and body[1] == RPC_VERSION and body[end] == 0xCE
    if checked:
        _, expected = _CRC.unpack_from(body, end)
        actual = crc32c(body[:end])
        if actual != expected:
            raise RpcWireError(f"{where}: the body's CRC-32C is {actual:#010x}, the frame says "
                               f"{expected:#010x}: the bytes were damaged on the way")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True,
                              ext_hook=_refuse_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise RpcWireError(f"{where}: body is not valid msgpack ({detail})") from None
    if checked and type(obj) is list:
        obj.pop()  # the CRC, checked above
    if type(obj) is not list or not obj:
        raise RpcWireError(f"{where}: expected an array [version, kind, call_id, ...], "
                           f"got {_describe(obj)}")
    version = obj[0]
    if type(version) is not int or version != RPC_VERSION:
        call_id = obj[2] if len(obj) >= 3 and _is_uint(obj[2]) else None
        raise RpcWireError(
            f"{where}: unsupported RPC version {_shown(version)} (this end speaks {RPC_VERSION})",
            bad_version=True, call_id=call_id,
        )
    if not checked:
        raise RpcWireError(f"{where}: the frame does not end with its CRC")
    if len(obj) < 3:
        raise RpcWireError(f"{where}: expected an array of 6 or 7, got {len(obj) + 1} elements")
    kind, call_id = obj[1], obj[2]
    if not _is_uint(call_id):
        raise RpcWireError(f"{where}: call_id: expected an unsigned integer, "
                           f"got {_describe(call_id)}")
    if type(kind) is not int or kind not in (REQUEST, RESPONSE, ERROR):
        raise RpcWireError(f"{where}: kind: {_shown(kind)} is not 0 (request), 1 (response) or 2 "
                           "(error)")
    if kind == REQUEST:
        if len(obj) != 6:
            raise RpcWireError(f"{where}: a request is an array of 7, got {len(obj) + 1} "
                               "elements")
        _, _, _, method, ts, payload = obj
        if type(method) is not str:
            raise RpcWireError(f"{where}: method: expected str, got {_describe(method)}")
    else:
        if len(obj) != 5:
            raise RpcWireError(f"{where}: a response or error is an array of 6, got "
                               f"{len(obj) + 1} elements")
        _, _, _, ts, payload = obj
        method = None
    if not _is_uint(ts):
        raise RpcWireError(f"{where}: ts: expected an unsigned integer, got {_describe(ts)}")
    if kind == ERROR:
        _check_error_map(payload, where)
    return RpcFrame(kind, call_id, ts, payload, method)


def _check_error_map(error: object, where: str) -> None:
    if type(error) is not dict:
        raise RpcWireError(f"{where}: error: expected a map, got {_describe(error)}")
    for key, kind in (("code", str), ("message", str), ("retryable", bool), ("details", dict)):
        value = error.get(key)
        if type(value) is not kind:
            raise RpcWireError(f"{where}: error.{key}: expected {_describe(kind())}, "
                               f"got {_describe(value)}")


class FrameDecoder:
    """Splits a byte stream into RPC frames and decodes them (see the module docstring).

    Feed it bytes as they arrive, split anywhere, and take frames one at a time with
    :meth:`next_frame` -- so a reader can stop taking them (back-pressure) without losing any.
    It buffers at most one incomplete frame plus the frames not yet taken.

    Args:
        max_frame: the largest body length accepted, in bytes. A length prefix above it raises
            :class:`RpcWireError` before the body is buffered.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        if not 1 <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must be in [1, 2**32), got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the first frame not yet taken
        self._frames = 0  # frames decoded so far, for error messages
        self._error: RpcWireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append the next bytes of the stream."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def incomplete_length(self) -> int:
        """The body length of the frame being received when its length prefix has arrived
        and its body has not (whole), else 0: what the rest of it will take in memory. Valid
        after :meth:`next_frame` has returned None (a length over ``max_frame`` raised
        there)."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return 0
        (length,) = _LENGTH.unpack_from(buf, pos)
        return length if len(buf) - pos - 4 < length else 0

    def next_frame(self) -> RpcFrame | None:
        """The next complete frame, or None until more bytes are fed.

        Raises:
            RpcWireError: the stream is not a valid sequence of frames. The decoder stays
                failed: every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        where = f"frame {self._frames}"
        try:
            if length == 0:
                raise RpcWireError(f"{where}: empty frame (length 0)")
            if length > self.max_frame:
                raise RpcWireError(
                    f"{where}: length {length} exceeds the limit of {self.max_frame} bytes"
                )
            if len(buf) - pos - 4 < length:
                return None  # incomplete: wait for more bytes
            with memoryview(buf) as view, view[pos + 4: pos + 4 + length] as body:
                frame = _decode_body(body, where)
        except RpcWireError as exc:
            # The framing is lost: nothing after this point can be trusted.
            self._error = exc
            buf.clear()
            self._pos = 0
            raise
        self._pos = pos + 4 + length
        self._frames += 1
        return frame


# --- one connection, either side --------------------------------------------------------------


def _peer_of(stream: trio.abc.Stream) -> tuple[str, int]:
    try:
        host, port = stream.socket.getpeername()[:2]
        return (host, port)
    except (AttributeError, OSError):
        return ("?", 0)


class _ReceiveBudget:
    """Bytes a server lets large frames take while they arrive, over all its connections
    (see the module docstring). A weighted semaphore, first come first served: a large
    reservation at the head is not overtaken by smaller ones behind it, so it cannot starve.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.available = capacity
        self._waiting: deque[list] = deque()  # [bytes, trio.Event], in arrival order

    def acquire_nowait(self, n: int) -> bool:
        """Takes ``n`` bytes if they are free and no reservation waits ahead; whether it did."""
        if not self._waiting and self.available >= n:
            self.available -= n
            return True
        return False

    async def acquire(self, n: int) -> None:
        """Waits until ``n`` bytes (at most the capacity) are free and takes them."""
        if self.acquire_nowait(n):
            return
        entry = [n, trio.Event()]
        self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.release(n)  # granted as it was cancelled: give the bytes back
            else:
                self._waiting.remove(entry)
                self._grant()  # it may have held back smaller reservations behind it
            raise

    def release(self, n: int) -> None:
        self.available += n
        self._grant()

    def _grant(self) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= self.available:
            n, event = waiting.popleft()
            self.available -= n
            event.set()


class _Wire:
    """The framing of one connection, both ways: a reader that decodes frames and a writer that
    coalesces queued frames into one ``send_all``; plus the cancel scope both run in and the
    reason the connection ended."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int,
                 send_stall_timeout_s: float = math.inf):
        self.stream = stream
        self.max_frame = max_frame
        self.send_stall_timeout_s = send_stall_timeout_s
        self.scope = trio.CancelScope()
        self.reason: str | None = None  # why the connection ended; None while open
        self.warn = False  # log the end as a warning (the peer misbehaved)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0  # in the queue, or taken by the writer and not yet written
        self._work = trio.lowlevel.ParkingLot()  # the writer waits here for frames
        self._space = trio.lowlevel.ParkingLot()  # senders wait here for room; flush for quiet
        self._writing = False
        # The socket's descriptor while the writer is idle (nothing queued, nothing being
        # written), else -1: then a frame may be written at once, without waking the writer.
        self._fd = -1
        self._stream_fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.frames_sent = 0
        self.frames_received = 0
        # A frame has waited for the server's budget to be read (or waits now); the first
        # request timeout spares it (see _ServerConnection._expect_a_request).
        self.waited_for_budget = False
        self.mid_frame = False  # part of a frame has arrived, and not the rest yet
        self.writes = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self, reason: str, *, warn: bool = False) -> None:
        """End the connection (its reader and writer); the first reason given is the one kept."""
        if self.reason is not None:
            return
        self.reason = reason
        self.warn = warn
        self._fd = -1
        self._queue.clear()
        self._queued_bytes = 0
        self.scope.cancel()
        self._space.unpark_all()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def backpressured(self) -> bool:
        """Whether :meth:`send` would wait for room now."""
        return self._queued_bytes >= _MAX_QUEUED_BYTES and self.reason is None

    async def send(self, frame: bytes) -> None:
        """Queue one encoded frame, or write it at once if the writer is idle.

        Waits (a checkpoint) only while too many bytes are queued: back-pressure on a peer that
        does not read.

        Raises:
            NotSentError: the connection has ended; nothing of this frame was written or
                queued (so a request may safely go elsewhere).
        """
        while self._queued_bytes >= _MAX_QUEUED_BYTES and self.reason is None:
            await self._space.park()
        if self.reason is not None:
            raise NotSentError(f"connection lost: {self.reason}")
        self.frames_sent += 1
        fd = self._fd
        if fd >= 0:
            # Fast path: the writer is idle and nothing is queued ahead. Later frames queue
            # (waking the writer) and leave together, coalesced; the fast path opens again
            # when the writer goes idle, or when a frame is read while nothing is queued
            # (a reply: a scheduler pass has gone by), so a lone call wakes no writer.
            self._fd = -1
            written = write_nowait(fd, frame)
            if written:
                self.writes += 1
                self.bytes_sent += written
            if written == len(frame):
                return
            frame = frame[written:]  # the rest goes first, through the writer
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._work.unpark_all()

    async def flush(self) -> None:
        """Wait until everything queued has been written (or the connection ended)."""
        while (self._queue or self._writing) and self.reason is None:
            await self._space.park()

    async def run_writer(self) -> None:
        queue = self._queue
        stream = self.stream
        try:
            while True:
                if not queue:
                    if self.reason is None:
                        self._fd = self._stream_fd  # idle: send() may write directly
                    await self._work.park()
                    continue
                self._fd = -1
                batch = [queue.popleft()]
                size = len(batch[0])
                while queue and size + len(queue[0]) <= _MAX_WRITE_BYTES:
                    batch.append(queue.popleft())
                    size += len(batch[-1])
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                self._writing = True
                try:
                    written = await send_all_or_stall(stream, data, self.send_stall_timeout_s)
                finally:
                    self._writing = False
                if not written:
                    self.close(f"the peer read nothing for {self.send_stall_timeout_s} s",
                               warn=True)
                    return
                # The batch counts as queued until written: were it let go when taken, a sender
                # would find room (and jump the senders still waiting for it) while the peer
                # reads nothing.
                if self.reason is None:
                    self._queued_bytes -= size
                self.writes += 1
                self.bytes_sent += size
                self._space.unpark_all()
        except _CONNECTION_ERRORS as exc:
            self.close(f"write failed: {exc!r}")

    async def read_frames(self, handle: Callable[[RpcFrame], Awaitable[None]],
                          budget: _ReceiveBudget | None = None,
                          stall_timeout_s: float = math.inf) -> None:
        """Read and decode frames, awaiting ``handle`` for each in order, until the peer closes
        or the connection fails (both recorded with :meth:`close`). With a ``budget`` (a
        server's), a frame body over :data:`LARGE_FRAME_BYTES` is read only once reserved
        from it, and its sender may pause at most ``stall_timeout_s`` while it arrives.

        Raises:
            RpcWireError: a bad frame arrived (the connection is not closed yet: the caller
                may answer first).
        """
        decoder = FrameDecoder(self.max_frame)
        stream = self.stream
        sock = stream.socket if self._stream_fd >= 0 else None
        held = 0  # bytes of the budget reserved for the large frame arriving
        try:
            while True:
                if held or (budget is not None and decoder.buffered):
                    # A frame on its way holds the connection (one of a server's
                    # max_connections) and its buffer, and a large one part of the budget:
                    # its sender may not keep them for ever by sending nothing more.
                    with trio.move_on_after(stall_timeout_s) as waited:
                        data = await self._receive(sock, stream)
                    if waited.cancelled_caught:
                        length = held or decoder.incomplete_length
                        sent = (f"sent {decoder.buffered - 4} of the {length} bytes of a frame"
                                if length else f"sent {decoder.buffered} of the 4 bytes of a "
                                f"frame's length")
                        self.close(f"{sent}, then nothing for {stall_timeout_s} s", warn=True)
                        return
                else:
                    data = await self._receive(sock, stream)
                if not data:
                    self.close("closed by the peer")
                    return
                self.bytes_received += len(data)
                if self._fd < 0 and not self._queue and not self._writing \
                        and self.reason is None:
                    self._fd = self._stream_fd  # see send()
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    if held:  # the frame it was reserved for (nothing is read past one)
                        budget.release(held)
                        held = 0
                    self.frames_received += 1
                    await handle(frame)
                self.mid_frame = decoder.buffered > 0
                if budget is not None and not held:
                    length = decoder.incomplete_length
                    if length > LARGE_FRAME_BYTES:
                        if not budget.acquire_nowait(length):
                            self.waited_for_budget = True
                            await budget.acquire(length)  # reading nothing of it meanwhile
                        held = length
        except _CONNECTION_ERRORS as exc:
            self.close(f"read failed: {exc!r}")
        finally:
            if held:
                budget.release(held)

    async def _receive(self, sock, stream) -> bytes:
        if sock is not None:
            return await receive_available(sock, self._stream_fd, _RECV_BYTES)
        return await stream.receive_some(_RECV_BYTES)


def _set_options(stream: trio.abc.Stream, dead_peer_timeout_s: float) -> None:
    sock = getattr(stream, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        detect_dead_peers(stream, dead_peer_timeout_s)


# --- server -----------------------------------------------------------------------------------


def _exception_text(exc: BaseException) -> str:
    """``"Type: message"`` for an error reply; a message that cannot be had (its ``__str__``
    raises) is left out, so a handler's odd exception stays that request's error."""
    try:
        message = str(exc)
    except Exception:
        return type(exc).__name__
    return f"{type(exc).__name__}: {message}"


class _ServerConnection:
    """One accepted connection: reads requests, runs each in its own task (at most
    ``max_concurrent`` at once), writes the replies as they are ready."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handlers: Mapping[str, Handler],
        clock_now: ClockNow,
        clock_update: ClockUpdate,
        max_frame: int,
        max_concurrent: int,
        send_stall_timeout_s: float,
        first_request_timeout_s: float,
        budget: _ReceiveBudget,
        receive_stall_timeout_s: float,
    ):
        self.wire = _Wire(stream, max_frame, send_stall_timeout_s)
        self._first_request_timeout_s = first_request_timeout_s
        self._budget = budget
        self._receive_stall_timeout_s = receive_stall_timeout_s
        self.peer = _peer_of(stream)
        self.who = f"{self.peer[0]}:{self.peer[1]}"
        self.state: dict = {}
        self._handlers = handlers
        self._clock_now = clock_now
        self._clock_update = clock_update
        self._max_frame = max_frame
        self._max_concurrent = max_concurrent
        self._running = 0
        # Idle workers kept: the most requests this connection has had running at once (at
        # least _MIN_IDLE_WORKERS; at most max_concurrent, like the running ones).
        self._keep_idle = _MIN_IDLE_WORKERS
        self._slot_freed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        # Requests for idle workers (see _work), and the idle workers.
        self._pending: deque[RpcFrame] = deque()
        self._idle_workers = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        wire = self.wire
        with wire.scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(wire.run_writer)
                nursery.start_soon(self._expect_a_request)
                try:
                    await wire.read_frames(self._dispatch, self._budget,
                                           self._receive_stall_timeout_s)
                except RpcWireError as exc:
                    await self._refuse(exc)
                # The peer is gone or misbehaved: requests still running are cancelled, their
                # replies could not be delivered (or trusted to be wanted).
                wire.close("closed")
        if wire.warn:
            logger.warning("rpc: closing connection from %s: %s", self.who, wire.reason)
        else:
            logger.debug("rpc: connection from %s ended: %s", self.who, wire.reason)

    async def _expect_a_request(self) -> None:
        """Closes the connection if no whole request has arrived within the first request
        timeout: one that sends nothing, or half a frame and then nothing, would otherwise hold
        its place among the ``max_connections`` forever. Only the first request has a
        deadline: a client sends it as soon as it has connected, and closing an idle
        connection later could cut a request on its way (whose outcome would be unknown)."""
        await trio.sleep(self._first_request_timeout_s)
        # A first request that waits, or has waited, for the server's budget (see read_frames)
        # is on its way: the wait is the server's, and receive_stall_timeout_s bounds the rest.
        if not self.wire.frames_received and not self.wire.waited_for_budget:
            self.wire.close(f"no request within {self._first_request_timeout_s} s", warn=True)

    async def _refuse(self, exc: RpcWireError) -> None:
        """Answer a frame of another version when it has a call id, then end the connection."""
        wire = self.wire
        if exc.bad_version and exc.call_id is not None:
            try:
                frame = encode_error(
                    exc.call_id, self._clock_now(), BAD_VERSION, str(exc),
                    details={"supported": [RPC_VERSION]},
                )
                await wire.send(frame)
                with trio.move_on_after(_CLOSE_FLUSH_S):
                    await wire.flush()
            except ConnectionLostError:
                pass
        wire.close(str(exc), warn=True)

    async def _dispatch(self, frame: RpcFrame) -> None:
        if frame.kind != REQUEST:
            raise RpcWireError(f"a {'response' if frame.kind == RESPONSE else 'error'} frame "
                               f"(call id {frame.call_id}) sent to the server")
        # Back-pressure: while the connection is at its limit, stop reading it.
        while self._running >= self._max_concurrent:
            await self._slot_freed.park()
        self._running += 1
        if self._running > self._keep_idle:
            self._keep_idle = self._running
        if self._idle_workers:
            self._pending.append(frame)
            self._idle_workers.unpark()
        else:
            self._nursery.start_soon(self._work, frame)

    async def _work(self, frame: RpcFrame) -> None:
        """Answers the request it was started for, then the ones handed to it while it waits
        idle: waking a parked task costs less than starting one per request. As many wait
        idle as the connection has had requests running at once (so a steady load of many
        concurrent requests starts no task per request); a worker beyond them ends."""
        while True:
            await self._run_request(frame)
            while not self._pending:
                if len(self._idle_workers) >= self._keep_idle:
                    return
                await self._idle_workers.park()
            frame = self._pending.popleft()

    async def _run_request(self, frame: RpcFrame) -> None:
        try:
            reply = await self._answer(frame)
            await self.wire.send(reply)
        except ConnectionLostError:
            pass  # nobody to answer
        except Exception:
            # A bug on this side (a clock hook that returns garbage, ...): never the server's
            # end, only this connection's.
            logger.exception("rpc: answering %s from %s failed", frame.method, self.who)
            self.wire.close("internal error while answering", warn=True)
        finally:
            self._running -= 1
            self._slot_freed.unpark()

    def _error_frame(self, call_id: int, code: str, message: str, *, retryable: bool = False,
                     details: Mapping | None = None) -> bytes:
        try:
            frame = encode_error(call_id, self._clock_now(), code, message,
                                 retryable=retryable, details=details)
            if len(frame) - 4 <= self._max_frame:
                return frame
            problem = f"is {len(frame) - 4} bytes, over max_frame ({self._max_frame})"
        except InvalidArgumentError as exc:
            problem = f"cannot be encoded: {exc}"
        logger.error("rpc: the %r error for %s %s", code, self.who, problem)
        return encode_error(call_id, self._clock_now(), INTERNAL,
                            f"the {code!r} error reply {problem}")

    async def _answer(self, frame: RpcFrame) -> bytes:
        call_id = frame.call_id
        try:
            self._clock_update(frame.ts)
        except Exception as exc:
            return self._error_frame(call_id, CLOCK_OFFSET, str(exc) or type(exc).__name__,
                                     details={"ts": frame.ts})
        method = frame.method
        handler = self._handlers.get(method)
        if handler is None:
            shown = method if len(method) <= 100 else method[:100] + "..."
            return self._error_frame(call_id, UNKNOWN_METHOD, f"unknown method {shown!r}")
        ctx = RpcContext(self.peer, self.state, method, call_id, frame.ts)
        try:
            result = await handler(frame.payload, ctx)
        except RemoteError as exc:
            return self._error_frame(call_id, exc.code, exc.message, retryable=exc.retryable,
                                     details=exc.details)
        except Exception as exc:
            logger.exception("rpc: handler %r failed for %s", method, self.who)
            return self._error_frame(call_id, INTERNAL, _exception_text(exc),
                                     details={"type": type(exc).__name__})
        try:
            reply = encode_response(call_id, self._clock_now(), result)
        except InvalidArgumentError as exc:
            logger.error("rpc: the result of %r for %s: %s", method, self.who, exc)
            return self._error_frame(call_id, INTERNAL, f"{type(exc).__name__}: {exc}",
                                     details={"type": type(exc).__name__})
        if len(reply) - 4 > self._max_frame:
            return self._error_frame(
                call_id, RESPONSE_TOO_LARGE,
                f"the result is {len(reply) - 4} bytes, over max_frame ({self._max_frame})",
            )
        return reply


async def serve_rpc(
    handlers: Mapping[str, Handler],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock_now: ClockNow = _no_clock,
    clock_update: ClockUpdate = _ignore_clock,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    send_stall_timeout_s: float = DEFAULT_SEND_STALL_TIMEOUT_S,
    first_request_timeout_s: float = DEFAULT_FIRST_REQUEST_TIMEOUT_S,
    max_receiving_bytes: int = DEFAULT_MAX_RECEIVING_BYTES,
    receive_stall_timeout_s: float = DEFAULT_RECEIVE_STALL_TIMEOUT_S,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve RPC on ``host:port`` until cancelled; for ``nursery.start``.

    Args:
        handlers: ``{method: async handler(payload, ctx) -> result}``. Looked up per request,
            so a mutable mapping may gain methods while serving. A handler raises
            :class:`RemoteError` to answer with that error; any other exception is answered as
            ``internal`` (and logged with its traceback).
        host: one address to listen on (loopback by default). With port 0 it must resolve to
            a single address, since each listener would get its own port.
        port: the port; 0 picks a free one.
        clock_now: the timestamp written on every reply.
        clock_update: given every request's ``ts`` before its handler runs; if it raises, the
            request is answered with ``clock_offset`` and its handler does not run.
        max_frame: the largest frame body accepted or sent, in bytes.
        max_concurrent_requests: requests of one connection running at once; further requests
            wait, unread, in the socket (back-pressure on that client).
        max_connections: connections served at once. One more is answered with an
            ``overloaded`` error frame (call id 0: about the connection) and closed, so that
            the process keeps file descriptors and memory for the connections it has; the
            client's pending calls fail with :class:`NotSentError` naming the limit.
        send_stall_timeout_s: how long writing to a client may make no progress before its
            connection is closed. A client that reads nothing (hung, or cut off without a
            reset) would otherwise hold the connection, its running requests and their
            replies -- up to ``max_concurrent_requests`` of them, each up to ``max_frame`` --
            for as long as the kernel keeps the connection, which may be forever.
        first_request_timeout_s: a connection whose first request has not fully arrived by
            then is closed, so that peers which connect and send nothing (or half a frame)
            cannot take every place among the ``max_connections``.
        max_receiving_bytes: the memory, in bytes, that frames over :data:`LARGE_FRAME_BYTES`
            may take while they arrive, over all connections (at least ``max_frame``); a
            connection whose next frame does not fit waits, unread (see the module docstring).
        receive_stall_timeout_s: how long a client may send nothing more of a large frame it
            has begun before its connection is closed, freeing its part of
            ``max_receiving_bytes``.
        task_status: ``started(port)`` with the port actually bound, once listening.

    Cancellation: on cancel the listener and every connection close; running handlers are
    cancelled and clients see :class:`ConnectionLostError`. A connection also ends, cancelling
    its running handlers, when the client closes it or sends a bad frame; the server goes on.
    """
    if not 1 <= max_frame <= 0xFFFFFFFF:
        raise ValueError(f"max_frame must be in [1, 2**32), got {max_frame}")
    if max_concurrent_requests < 1:
        raise ValueError("max_concurrent_requests must be at least 1")
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if not send_stall_timeout_s > 0:
        raise ValueError("send_stall_timeout_s must be positive")
    if not first_request_timeout_s > 0:
        raise ValueError("first_request_timeout_s must be positive")
    if max_receiving_bytes < max_frame:
        raise ValueError(f"max_receiving_bytes ({max_receiving_bytes}) must be at least "
                         f"max_frame ({max_frame}): a frame of max_frame bytes could never be read")
    if not receive_stall_timeout_s > 0:
        raise ValueError("receive_stall_timeout_s must be positive")
    budget = _ReceiveBudget(max_receiving_bytes)
    open_connections = 0
    refused = 0
    last_warning = -math.inf

    async def refuse(stream: trio.SocketStream) -> None:
        nonlocal refused, last_warning
        refused += 1
        if trio.current_time() - last_warning >= 60:
            last_warning = trio.current_time()
            logger.warning("rpc: refusing connections beyond the limit of %d (%d refused so "
                           "far)", max_connections, refused)
        frame = encode_error(0, clock_now(), OVERLOADED,
                             f"the server has {max_connections} connections, its limit: "
                             f"try another node or later", retryable=True)
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                          trio.ClosedResourceError):
            await stream.send_all(frame)
        await trio.aclose_forcefully(stream)

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        if open_connections >= max_connections:
            await refuse(stream)
            return
        open_connections += 1
        conn = None
        try:
            _set_options(stream, send_stall_timeout_s)
            conn = _ServerConnection(stream, handlers, clock_now, clock_update, max_frame,
                                     max_concurrent_requests, send_stall_timeout_s,
                                     first_request_timeout_s, budget, receive_stall_timeout_s)
            await conn.run()
        except Exception:
            # Whatever happens, one connection never takes the server down.
            who = conn.who if conn is not None else "a client"
            logger.exception("rpc: connection from %s failed", who)
        finally:
            open_connections -= 1
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            logger.debug("rpc: listening on %s:%d", host, bound)
            task_status.started(bound)
    finally:
        for listener in listeners:
            listener.socket.close()


# --- client -----------------------------------------------------------------------------------


class _Call:
    __slots__ = ("done", "result", "error", "deadline", "received", "waiter_id")

    def __init__(self, deadline: float, received: int) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.deadline = deadline
        self.received = received  # the connection's bytes received when the call was made
        self.waiter_id: int | None = None  # its entry among the deadlines, if it has one


class RpcConnection:
    """One client connection; made by :func:`connect_rpc`.

    Any number of tasks may call at once: calls are multiplexed on the connection by call id.
    Thread-safety: none; use from the trio run that opened it.

    Attributes:
        peer: the server's ``(host, port)``.
    """

    def __init__(self, stream: trio.abc.Stream, clock_now: ClockNow, clock_update: ClockUpdate,
                 max_frame: int):
        self._wire = _Wire(stream, max_frame)
        self._clock_now = clock_now
        self._clock_update = clock_update
        self._max_frame = max_frame
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        # The call ids of the pending calls with a deadline, by deadline: a call answered (or
        # cancelled) leaves in constant time, and the watchdog takes out only those it fails.
        self._deadlines: WaitHeap[int] = WaitHeap()
        self._calls = 0
        self._late_replies = 0
        self._timeouts = 0
        self._finished = trio.Event()
        self._refused = False  # the server refused the connection unread (call id 0)
        self.peer = _peer_of(stream)
        # The deadline watchdog (see _watch_deadlines): what it sleeps until, and how to wake it.
        self._watch_until = math.inf
        self._watch_scope: trio.CancelScope | None = None

    @property
    def bytes_sent(self) -> int:
        """Bytes of frames written to the server so far."""
        return self._wire.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes read from the server so far."""
        return self._wire.bytes_received

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (closed by either side, or failed)."""
        return self._wire.reason is not None

    async def call(self, method: str, payload: Any = None, *,
                   deadline: float = math.inf) -> Any:
        """Call ``method`` on the server with ``payload`` and return its result.

        ``deadline`` (on trio's clock, like a cancel scope's) bounds the wait for the reply:
        past it the call raises :class:`CallTimeoutError`. One watchdog task per connection
        keeps the deadlines, so a call costs no cancel scope of its own (a scope with a
        deadline costs as much as a task switch, on every call).

        Returns:
            The handler's result, as decoded from msgpack.

        Raises:
            RemoteError: the server answered with an error (its code, message, retryable flag
                and details are on the exception).
            ConnectionLostError: the connection ended before the reply.
            NotSentError: nothing was sent: the connection had already ended, or the peer
                left no room to send by ``deadline`` (it reads nothing while much is queued).
            InvalidArgumentError: ``method`` is not a str or ``payload`` cannot be encoded.
            RecordTooLargeError: the request is over ``max_frame``.
            CallTimeoutError: no reply by ``deadline``; the call may or may not have run.
            Exception: whatever ``clock_update`` raised for the reply's timestamp (the call
                ran on the server, but its result is withheld); the connection stays open.
                Not for a ``clock_offset`` error: that one is raised as a RemoteError.

        Cancellation: safe at any point. The call id is forgotten, and a reply that comes later
        is dropped; the request may or may not have reached the server.
        """
        wire = self._wire
        if wire.reason is not None:
            raise NotSentError(f"connection lost: {wire.reason}")
        call_id = next(self._ids)
        frame = encode_request(call_id, method, self._clock_now(), payload)
        if len(frame) - 4 > self._max_frame:
            raise RecordTooLargeError(
                f"the request is {len(frame) - 4} bytes, over max_frame ({self._max_frame})"
            )
        pending = _Call(deadline, wire.bytes_received)
        self._pending[call_id] = pending
        if deadline < math.inf:
            pending.waiter_id = self._deadlines.push(deadline, call_id)
        if deadline < self._watch_until and self._watch_scope is not None:
            self._watch_scope.cancel()  # the watchdog sleeps past this deadline: wake it
        try:
            if wire.backpressured:
                # A peer that does not read (paused, or cut off without a reset): the wait
                # for room is bounded by the deadline too. Only here, so a call costs no
                # cancel scope of its own.
                sent = False
                with trio.move_on_at(deadline):
                    await wire.send(frame)
                    sent = True
                if not sent:
                    if self._forget(call_id) is not None:  # else the watchdog's
                        self._timeouts += 1
                    raise NotSentError(
                        f"no room to send {method!r} by its deadline: the peer has not read "
                        f"the {wire.queued_bytes} bytes queued before it"
                    )
            else:
                await wire.send(frame)
            self._calls += 1
            await pending.done.wait()
        finally:
            self._forget(call_id)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def wait_closed(self) -> None:
        """Returns once the connection has ended (closed by either side, or failed)."""
        await self._finished.wait()

    async def aclose(self) -> None:
        """Close the connection; calls still waiting raise :class:`ConnectionLostError`.
        Idempotent."""
        self._wire.close("closed by this side")
        await self._finished.wait()

    def statistics(self) -> RpcStats:
        wire = self._wire
        return RpcStats(
            calls=self._calls,
            late_replies=self._late_replies,
            timeouts=self._timeouts,
            frames_sent=wire.frames_sent,
            frames_received=wire.frames_received,
            writes=wire.writes,
            bytes_sent=wire.bytes_sent,
            bytes_received=wire.bytes_received,
        )

    async def _on_frame(self, frame: RpcFrame) -> None:
        if frame.kind == REQUEST:
            raise RpcWireError(f"a request frame (call id {frame.call_id}) sent to the client")
        clock_error = None
        try:
            self._clock_update(frame.ts)
        except Exception as exc:
            clock_error = exc
        if frame.call_id == 0 and frame.kind == ERROR:
            # About the connection, not a call (the server refused it, reading nothing of it):
            # it ends now, and no call made on it ran.
            # Its code and message (str, checked) end up in the close reason, the log and
            # every later call's error: cut to a few words, however large the peer made them.
            e = frame.payload
            self._refused = self._wire.reason is None and e["code"] == OVERLOADED
            self._wire.close(f"{_cut(e['code'])}: {_cut(e['message'])}", warn=True)
            return
        pending = self._forget(frame.call_id)
        if pending is None:
            # Its caller was cancelled (or the server answered an id never sent): drop it.
            self._late_replies += 1
            return
        if clock_error is not None and not (frame.kind == ERROR
                                            and frame.payload["code"] == CLOCK_OFFSET):
            pending.error = clock_error
        elif frame.kind == ERROR:
            # A refusal for a clock (the server's or this side's) is passed on even from a
            # server whose timestamp was refused (it is not taken): it says that the handler
            # did not run, which the refused timestamp alone would leave unknown.
            e = frame.payload
            pending.error = RemoteError(e["code"], e["message"], retryable=e["retryable"],
                                        details=e["details"])
        else:
            pending.result = frame.payload
        pending.done.set()

    def _forget(self, call_id: int) -> _Call | None:
        """Takes the pending call ``call_id`` out (with its deadline), if it is still there."""
        call = self._pending.pop(call_id, None)
        if call is not None and call.waiter_id is not None:
            self._deadlines.leave(call.waiter_id)
        return call

    async def _watch_deadlines(self) -> None:
        """Fails the calls whose deadline has passed. It sleeps until the soonest deadline of
        the calls waiting (forever while none has one), and is woken early only by a call
        whose deadline comes sooner still: with one timeout for every call that is about one
        wake-up per timeout while calls are made, and none while the connection is idle."""
        pending = self._pending
        wire = self._wire
        while True:
            for call_id in self._deadlines.pop_up_to(trio.current_time()):
                call = pending.pop(call_id)
                self._timeouts += 1
                call.error = CallTimeoutError(
                    f"no reply from {self.peer[0]}:{self.peer[1]} by the call's deadline: the "
                    f"call may or may not have run")
                call.done.set()
                if wire.mid_frame and wire.bytes_received == call.received:
                    # The server stopped partway through a frame and has sent nothing more
                    # for as long as this call waited: every later reply is behind the rest
                    # of that frame. Ended, so that the next call connects again rather
                    # than time out on it too.
                    wire.close("the server sent part of a frame, then nothing more while a "
                               "call waited for its reply", warn=True)
            soonest = self._deadlines.lowest()
            with trio.CancelScope() as scope:
                self._watch_scope, self._watch_until = scope, soonest
                await trio.sleep_until(soonest)
            self._watch_scope, self._watch_until = None, -math.inf

    async def _run(self) -> None:
        wire = self._wire
        try:
            with wire.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wire.run_writer)
                    nursery.start_soon(self._watch_deadlines)
                    try:
                        await wire.read_frames(self._on_frame)
                    except RpcWireError as exc:
                        wire.close(f"bad frame from the server: {exc}", warn=True)
                    wire.close("closed")
        finally:
            wire.close("closed")
            pending, self._pending = self._pending, {}
            self._deadlines.drain()
            lost = NotSentError if self._refused else ConnectionLostError
            for call in pending.values():
                call.error = lost(f"connection lost: {wire.reason}")
                call.done.set()
            await trio.aclose_forcefully(wire.stream)
            self._finished.set()
            who = f"{self.peer[0]}:{self.peer[1]}"
            if wire.warn:
                logger.warning("rpc: closing connection to %s: %s", who, wire.reason)
            else:
                logger.debug("rpc: connection to %s ended: %s", who, wire.reason)


@asynccontextmanager
async def connect_rpc(
    host: str,
    port: int,
    *,
    clock_now: ClockNow = _no_clock,
    clock_update: ClockUpdate = _ignore_clock,
    connect_timeout_s: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[RpcConnection]:
    """A client connection to ``host:port`` for the duration of the block.

    Args:
        host, port: the server's address.
        clock_now: the timestamp written on every request.
        clock_update: given the timestamp of every reply before its caller resumes.
        connect_timeout_s: how long connecting may take.
        max_frame: the largest frame body accepted or sent, in bytes.

    Raises:
        ConnectTimeoutError: no connection within ``connect_timeout_s``.
        OSError: the connection was refused or the host cannot be reached.

    Example::

        async with connect_rpc("127.0.0.1", port) as conn:
            value = await conn.call("get", {"key": b"k"})

    Cancellation: leaving the block closes the connection; calls still waiting in other tasks
    raise :class:`ConnectionLostError`.
    """
    if not 1 <= max_frame <= 0xFFFFFFFF:
        raise ValueError(f"max_frame must be in [1, 2**32), got {max_frame}")
    stream = None
    with trio.move_on_after(connect_timeout_s):
        stream = await trio.open_tcp_stream(host, port)
    if stream is None:
        raise ConnectTimeoutError(f"no connection to {host}:{port} within {connect_timeout_s} s")
    try:
        _set_options(stream, DEFAULT_SEND_STALL_TIMEOUT_S)
        conn = RpcConnection(stream, clock_now, clock_update, max_frame)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn._run)
        try:
            yield conn
        finally:
            await conn.aclose()
