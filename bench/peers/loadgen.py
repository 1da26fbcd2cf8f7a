"""Closed-loop put load for the Raft peer benchmark (``bench/raft_peers.py``).

Run as a script by ``bench/raft_peers.py``, one or more processes per measurement; it imports
nothing from the repository. Each process opens ``--connections`` TCP connections to one
server on 127.0.0.1 and drives them from a single epoll loop: every connection has at most one
put outstanding and sends the next one as soon as the acknowledgement of the previous one has
arrived (a closed loop). One loop over non-blocking sockets costs a few microseconds of Python per
put, far less than a thread per connection would.

Protocol with the parent, over stdin/stdout:

1. the process connects every connection, then prints ``READY``;
2. it waits for a line ``GO`` on stdin and starts the clock at once;
3. puts that complete in the first ``--warmup`` seconds are not recorded; the latencies (in
   nanoseconds, ``time.perf_counter_ns`` from send to acknowledgement) of puts that complete in
   the following ``--duration`` seconds are written to ``--out`` as native int64s;
4. at the end of the window no new put is sent; when every outstanding put has been answered (or
   after a grace period) the process prints one JSON line ``{"ops", "errors", "late"}`` and exits.

Wire formats (``--protocol``):

- ``pysyncobj``: a put is ``b"P" + key + value`` (1 + 16 + 100 bytes); the answer is one byte,
  ``b"K"`` once the entry is committed and applied on the leader, ``b"E"`` if PySyncObj reported
  a failure (see ``bench/peers/pysyncobj_node.py``).
- ``etcd``: ``POST /v3/kv/put`` to etcd's v3 HTTP/JSON gateway with base64 key and value, HTTP/1.1
  keep-alive; a put succeeded when the answer's status is 200.
- ``raftkv``: Meridian's ``bench.raftkv`` client protocol, ``u32 length + msgpack [1, request
  id, "put", key, value]``; a put succeeded when the answer's status is ``"ok"``.

Keys are 16 bytes, distinct for every put (a per-process counter prefixed with the process
number); values are 100 random bytes from a small pool.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import random
import select
import socket
import struct
import sys
import time
from array import array

KEY_SIZE = 16
VALUE_SIZE = 100
VALUE_POOL = 256
GRACE_S = 10.0
RAFTKV_VERSION = 1
_U32 = struct.Struct("<I")
CONNECT_TIMEOUT_S = 10.0


def make_key(process: int, n: int) -> bytes:
    key = b"%1d%015d" % (process % 10, n)
    assert len(key) == KEY_SIZE
    return key


class PySyncObjCodec:
    """Requests and answers of the request server in ``pysyncobj_node.py``."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, key: bytes, value: bytes) -> bytes:
        return b"P" + key + value

    @staticmethod
    def parse(buf: bytearray) -> tuple[int, bool] | None:
        """``(bytes consumed, ok)`` once ``buf`` holds a whole answer, else None."""
        if not buf:
            return None
        return 1, buf[0] == 0x4B  # b"K"


class RaftKVCodec:
    """Meridian's ``bench.raftkv`` client protocol: u32 length + msgpack, one put per frame."""

    def __init__(self, port: int) -> None:
        import msgpack

        self.pack = msgpack.packb
        self.unpack = msgpack.unpackb
        self.rid = 0

    def request(self, key: bytes, value: bytes) -> bytes:
        self.rid += 1
        body = self.pack([RAFTKV_VERSION, self.rid, "put", key, value])
        return _U32.pack(len(body)) + body

    def parse(self, buf: bytearray) -> tuple[int, bool] | None:
        if len(buf) < 4:
            return None
        (n,) = _U32.unpack_from(buf)
        if len(buf) < 4 + n:
            return None
        answer = self.unpack(bytes(buf[4 : 4 + n]), strict_map_key=False)
        return 4 + n, answer[1] == "ok"


class EtcdCodec:
    """HTTP/1.1 requests to etcd's v3 JSON gateway and a minimal response parser."""

    def __init__(self, port: int) -> None:
        self.head = (b"POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " % port)

    def request(self, key: bytes, value: bytes) -> bytes:
        body = b'{"key":"%s","value":"%s"}' % (base64.b64encode(key), base64.b64encode(value))
        return self.head + b"%d\r\n\r\n" % len(body) + body

    @staticmethod
    def parse(buf: bytearray) -> tuple[int, bool] | None:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status_ok = head[9:12] == b"200"
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return None
            return total, status_ok
        if b"transfer-encoding: chunked" in head:
            last = buf.find(b"0\r\n\r\n", end + 4)
            while last > end + 4 and buf[last - 2 : last] != b"\r\n":
                last = buf.find(b"0\r\n\r\n", last + 1)
            if last < 0:
                return None
            return last + 5, status_ok
        raise RuntimeError(f"cannot frame the HTTP answer: {head[:200]!r}")


CODECS = {"pysyncobj": PySyncObjCodec, "etcd": EtcdCodec, "raftkv": RaftKVCodec}


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace) -> dict:
    codec = CODECS[args.protocol](args.port)
    rng = random.Random(args.process * 7919 + 1)
    values = [rng.randbytes(VALUE_SIZE) for _ in range(VALUE_POOL)]
    socks = [connect(args.port) for _ in range(args.connections)]
    fds = {s.fileno(): i for i, s in enumerate(socks)}
    bufs = [bytearray() for _ in socks]
    sent_at = [0] * len(socks)
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)

    print("READY", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "GO":
        raise SystemExit(f"expected GO, got {line!r}")

    lat = array("q")
    record = lat.append
    ops = errors = late = 0
    counter = 0
    process = args.process
    request = codec.request
    parse = codec.parse
    clock = time.perf_counter_ns
    start = clock()
    measure_from = start + int(args.warmup * 1e9)
    measure_to = measure_from + int(args.duration * 1e9)
    give_up = measure_to + int(GRACE_S * 1e9)

    for i, s in enumerate(socks):
        counter += 1
        msg = request(make_key(process, counter), values[counter % VALUE_POOL])
        sent_at[i] = clock()
        s.sendall(msg)
    outstanding = len(socks)

    while outstanding:
        now = clock()
        if now >= give_up:
            late = outstanding
            break
        for fd, _ in poller.poll(0.5):
            i = fds[fd]
            s = socks[i]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            done = clock()
            if not chunk:
                raise RuntimeError("the server closed a connection")
            buf = bufs[i]
            buf += chunk
            got = parse(buf)
            if got is None:
                continue
            used, ok = got
            del buf[:used]
            if buf:
                raise RuntimeError("an answer arrived that no request asked for")
            if not ok:
                errors += 1
            elif measure_from <= done < measure_to:
                record(done - sent_at[i])
                ops += 1
            if done >= measure_to:
                outstanding -= 1
                continue
            counter += 1
            msg = request(make_key(process, counter), values[counter % VALUE_POOL])
            sent_at[i] = clock()
            try:
                s.sendall(msg)
            except BlockingIOError as exc:  # pragma: no cover - one request never fills a buffer
                raise RuntimeError("the socket's send buffer is full") from exc
    poller.close()
    for s in socks:
        s.close()
    with open(args.out, "wb") as f:
        lat.tofile(f)
    return {"ops": ops, "errors": errors, "late": late}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=sorted(CODECS), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--process", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        summary = run(args)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise SystemExit("the server closed a connection") from exc
        raise
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
