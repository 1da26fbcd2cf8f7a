"""Drivers: how the load generator runs one operation against each system.

Every system is driven by the same load generator (``bench/openloop.py``) through a driver:
``await driver.execute(op)`` runs one :class:`~bench.workloads.Op` and returns the number of
attempts it took; ``await driver.load(pairs)`` writes a batch of records before a run. A driver
is opened from a plain dict (``spec``), so that a load process can build it from JSON.

- ``meridian`` (``{"system": "meridian", "nodes": [...], "region": ..., "keyspace": ...}``):
  Meridian's client library, one :func:`engine.connect` per load process, shared by its
  workers (the library keeps one connection per node and multiplexes requests on it).
  *read* is a strong read (``db.read``: a fresh snapshot at the leader), *update* and *insert*
  a one-key write transaction, *rmw* reads and writes one key in a transaction, *transfer*
  reads two keys (one round trip) and writes both, *scan* reads up to ``scan_length`` keys in
  a read-only transaction; *home*, *cross* and *regional* (the multi-region mix) are one-key
  write transactions on the keyspaces the spec's ``keyspaces`` names for them. Transactions
  go through ``db.run_transaction`` (retries on
  conflict with jittered exponential backoff, at most 20 attempts).
- ``etcd`` (``{"system": "etcd", "endpoints": ["127.0.0.1:PORT"]}``): etcd's v3 HTTP/JSON
  gateway over HTTP/1.1 keep-alive connections, one per worker of the load process. *read* is
  ``/v3/kv/range`` (linearizable, etcd's default), *update*/*insert* ``/v3/kv/put``; *rmw* and
  *transfer* read the key(s), then ``/v3/kv/txn`` with a ``mod_revision`` compare per key
  read (etcd's optimistic transaction), retried with the same backoff as Meridian's; *scan*
  is a range with a limit.
- ``noop`` (``{"system": "noop", "port": PORT}``): a server that answers every request at once
  (:func:`serve_noop`); requests are framed like Meridian's (u32 length + body holding the key
  and value) and, like Meridian's client, every worker of a load process sends on one
  connection (:class:`_NoopMux`). Measures what the load generator itself sustains.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import random
import selectors
import socket
import struct
import sys
from contextlib import asynccontextmanager

import outcome
import trio

from raft.tcp import receive_available, write_nowait

from .workloads import KEY_PREFIX, Op

__all__ = ["MAX_ATTEMPTS", "ConflictError", "open_driver", "serve_noop"]

MAX_ATTEMPTS = 20
BASE_DELAY_S = 0.002
MAX_DELAY_S = 0.5
REOPEN_TIMEOUT_S = 10.0
_U32 = struct.Struct("<I")
SCAN_END = KEY_PREFIX + b"\xff"


class ConflictError(RuntimeError):
    """An optimistic transaction still conflicted after its last attempt.

    ``attempts`` is how many times it ran, every one of them aborted: the load generator
    counts them in the abort rate (an operation that gives up is the most aborted of all).
    """

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def _bank_value(value: bytes | None, delta: int) -> bytes:
    try:
        return b"%d" % (int(value or b"0") + delta)
    except ValueError:
        return b"%d" % delta


@asynccontextmanager
async def open_driver(spec: dict, *, connections: int = 1):
    """Opens the driver ``spec`` describes, with ``connections`` connections where the
    protocol needs one per outstanding request (etcd)."""
    system = spec.get("system")
    if system == "meridian":
        async with _open_meridian(spec) as d:
            yield d
    elif system == "etcd":
        async with _open_pool(spec["endpoints"][0], connections, _EtcdConn) as pool:
            yield _EtcdDriver(pool)
    elif system == "noop":
        async with _open_noop(int(spec["port"])) as d:
            yield d
    else:
        raise ValueError(f"unknown system {system!r}")


# ------------------------------------------------------------------------------- meridian


@asynccontextmanager
async def _open_meridian(spec: dict):
    import engine

    async with engine.connect(spec["nodes"], region=spec.get("region"),
                              request_timeout_s=float(spec.get("request_timeout_s", 10.0))
                              ) as db:
        await db.keyspace(spec["keyspace"])
        for ks in (spec.get("keyspaces") or {}).values():
            await db.keyspace(ks)
        yield _MeridianDriver(db, spec["keyspace"], spec.get("keyspaces") or {})


class _MeridianDriver:
    def __init__(self, db, keyspace: str, keyspaces: dict[str, str]) -> None:
        from engine.errors import TransactionConflictError

        self._conflict = TransactionConflictError
        self.db = db
        self.ks = keyspace
        # The multi-region mix: operation kind -> keyspace ("home", "cross", "regional").
        self.keyspaces = keyspaces

    async def load(self, pairs: list[tuple[bytes, bytes]]) -> None:
        async with self.db.transaction() as tx:
            for k, v in pairs:
                await tx.put(self.ks, k, v)

    async def execute(self, op: Op) -> int:
        db, ks = self.db, self.ks
        kind = op.kind
        if kind == "read":
            await db.read(ks, op.key)
            return 1
        if kind == "scan":
            async with db.transaction() as tx:
                await tx.scan(ks, op.key, limit=op.scan_length)
            return 1
        attempts = 0
        if kind in self.keyspaces:
            ks = self.keyspaces[kind]
            kind = "update"
        if kind in ("update", "insert"):
            async def body(tx):
                nonlocal attempts
                attempts += 1
                await tx.put(ks, op.key, op.value)
        elif kind == "rmw":
            async def body(tx):
                nonlocal attempts
                attempts += 1
                await tx.get(ks, op.key)
                await tx.put(ks, op.key, op.value)
        elif kind == "transfer":
            keys = [op.key, op.key2]

            async def body(tx):
                nonlocal attempts
                attempts += 1
                a, b = await tx.get_many(ks, keys)
                await tx.put(ks, keys[0], _bank_value(a, -1))
                await tx.put(ks, keys[1], _bank_value(b, +1))
        else:
            raise ValueError(f"unknown operation {kind!r}")
        try:
            await db.run_transaction(body, max_attempts=MAX_ATTEMPTS,
                                     base_delay_s=BASE_DELAY_S, max_delay_s=MAX_DELAY_S)
        except self._conflict as exc:
            # run_transaction gave up: the client library's error does not say how many
            # attempts it made, and the abort rate needs them.
            raise ConflictError(f"meridian {op.kind}: still conflicting after {attempts} "
                                f"attempts: {exc}", attempts) from exc
        return attempts


# ----------------------------------------------------------------------- connection pools


class _Pool:
    """Connections handed to one operation at a time (a worker never waits for another's).

    ``take()`` is an async context manager without a generator or a channel: a free
    connection is taken at once, on the load generator's hot path."""

    def __init__(self, conns) -> None:
        self.conns = conns  # the opener closes these (reopened ones included) at the end
        self._free = list(conns)
        self._waiters = trio.lowlevel.ParkingLot()

    def take(self) -> _Lease:
        return _Lease(self)

    async def renew(self, conn):
        """``conn`` closed and opened afresh in its place; ``conn`` itself (closed, still
        broken) when the server cannot be reached."""
        i = self.conns.index(conn)
        await conn.close()
        with trio.move_on_after(REOPEN_TIMEOUT_S), contextlib.suppress(OSError):
            conn = self.conns[i] = await conn.reopen()
        return conn

    def give_back(self, conn) -> None:
        self._free.append(conn)
        self._waiters.unpark()


class _Lease:
    __slots__ = ("pool", "conn")

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.conn = None

    async def __aenter__(self):
        pool = self.pool
        while not pool._free:
            await pool._waiters.park()
        conn = pool._free.pop()
        if conn.broken:
            # It could not be reopened when it broke (the server was down): again, now.
            conn = await pool.renew(conn)
            if conn.broken:
                pool.give_back(conn)
                raise ConnectionError(f"cannot reconnect to {conn.host}:{conn.port}")
        self.conn = conn
        return conn

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        pool, conn = self.pool, self.conn
        if exc_type is not None and not issubclass(exc_type, (_AnswerError, ConflictError)):
            conn.broken = True  # a whole answer was not read: the connection is suspect
        if conn.broken:
            # The request may be half sent or its answer half read: start afresh.
            conn = await pool.renew(conn)
        # Broken or not, the connection keeps its place: one that could not be reopened is
        # tried again by the next operation, so the load comes back with the server.
        pool.give_back(conn)
        return False


@asynccontextmanager
async def _open_pool(endpoint: str, count: int, conn_class):
    host, _, port = endpoint.rpartition(":")
    conns: list = []
    try:
        for _ in range(max(1, count)):
            conns.append(await conn_class.open(host, int(port)))
        pool = _Pool(conns)
        yield pool
    finally:
        for c in conns:
            await c.close()


class _AnswerError(RuntimeError):
    """The server answered with an error (the connection can be used again)."""


class _StreamConn:
    def __init__(self, host: str, port: int, stream: trio.SocketStream) -> None:
        self.host, self.port, self.stream = host, port, stream
        self.buf = bytearray()
        self.broken = False

    @classmethod
    async def open(cls, host: str, port: int):
        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(host, port, stream)

    async def reopen(self):
        return await type(self).open(self.host, self.port)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    async def fill(self) -> None:
        # Wait for readability, then read once: an answer is rarely there before it is waited
        # for, and a failed read plus trio's scheduling pass cost more than the wait.
        chunk = await receive_available(self.stream.socket, self.stream.socket.fileno(), 65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    async def send(self, data: bytes) -> None:
        """Writes ``data``: at once when the socket takes it all, else through the stream."""
        n = write_nowait(self.stream.socket.fileno(), data)
        if n < len(data):
            await self.stream.send_all(data[n:])


# ------------------------------------------------------------------------------------ etcd


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _EtcdConn(_StreamConn):
    async def post(self, path: str, body: dict) -> dict:
        payload = json.dumps(body).encode()
        await self.send(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), self.host.encode(), self.port,
                                             len(payload)) + payload)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self.fill()
        head = bytes(self.buf[:end]).lower()
        status = head[9:12]
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17: j if j >= 0 else len(head)])
            while len(self.buf) < end + 4 + length:
                await self.fill()
            body_bytes = bytes(self.buf[end + 4: end + 4 + length])
            del self.buf[: end + 4 + length]
        elif b"transfer-encoding: chunked" in head:
            del self.buf[: end + 4]
            parts = []
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    await self.fill()
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                while len(self.buf) < eol + 2 + size + 2:
                    await self.fill()
                parts.append(bytes(self.buf[eol + 2: eol + 2 + size]))
                del self.buf[: eol + 2 + size + 2]
                if size == 0:
                    break
            body_bytes = b"".join(parts)
        else:
            raise ConnectionError(f"cannot frame etcd's answer: {head[:200]!r}")
        doc = json.loads(body_bytes) if body_bytes else {}
        if status != b"200":
            raise _AnswerError(f"etcd {path}: HTTP {status.decode()} {str(doc)[:200]}")
        return doc


class _EtcdDriver:
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.rng = random.Random()

    async def load(self, pairs: list[tuple[bytes, bytes]]) -> None:
        async with self.pool.take() as c:
            await c.post("/v3/kv/txn", {"success": [
                {"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in pairs]})

    async def execute(self, op: Op) -> int:
        kind = op.kind
        async with self.pool.take() as c:
            if kind == "read":
                await c.post("/v3/kv/range", {"key": _b64(op.key)})
                return 1
            if kind in ("update", "insert"):
                await c.post("/v3/kv/put", {"key": _b64(op.key), "value": _b64(op.value)})
                return 1
            if kind == "scan":
                await c.post("/v3/kv/range", {"key": _b64(op.key), "range_end": _b64(SCAN_END),
                                              "limit": op.scan_length})
                return 1
            if kind not in ("rmw", "transfer"):
                raise ValueError(f"unknown operation {kind!r}")
            keys = [op.key] if kind == "rmw" else [op.key, op.key2]
            delay = BASE_DELAY_S
            for attempt in range(1, MAX_ATTEMPTS + 1):
                read = await c.post("/v3/kv/txn", {"success": [
                    {"request_range": {"key": _b64(k)}} for k in keys]})
                revs, values = [], []
                for r in read.get("responses", []):
                    kvs = r.get("response_range", {}).get("kvs") or []
                    revs.append(int(kvs[0].get("mod_revision", 0)) if kvs else 0)
                    values.append(base64.b64decode(kvs[0].get("value", "")) if kvs else None)
                if kind == "rmw":
                    new = [op.value]
                else:
                    new = [_bank_value(values[0], -1), _bank_value(values[1], +1)]
                doc = await c.post("/v3/kv/txn", {
                    "compare": [{"key": _b64(k), "target": "MOD", "result": "EQUAL",
                                 "mod_revision": rev} for k, rev in zip(keys, revs)],
                    "success": [{"request_put": {"key": _b64(k), "value": _b64(v)}}
                                for k, v in zip(keys, new)]})
                if doc.get("succeeded"):
                    return attempt
                await trio.sleep(self.rng.uniform(0, delay))
                delay = min(MAX_DELAY_S, delay * 2)
            raise ConflictError(f"etcd {kind}: still conflicting after {MAX_ATTEMPTS} attempts",
                                MAX_ATTEMPTS)


# ------------------------------------------------------------------------------------ noop


class _NoopMux:
    """One connection that carries every worker's requests, as Meridian's client carries all
    its calls to a node on one connection: the requests written in one scheduler pass leave in
    one write, and one read answers every request it holds. The server answers in order, one
    byte per request, so the answers go to the waiting workers first come, first served.

    A worker waits parked on its own task (no event, no channel): the generator's cost per
    operation stays what the workload, the schedule and the recording cost, plus a share of
    one write and one read."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sock = stream.socket
        self.fd = stream.socket.fileno()
        self.out = bytearray()
        self.waiting: collections.deque[list] = collections.deque()  # [task or None] cells
        self.writer: trio.lowlevel.Task | None = None  # parked, waiting for requests
        self.error: BaseException | None = None

    async def call(self, body: bytes) -> None:
        if self.error is not None:
            raise ConnectionError(f"the no-op connection failed: {self.error}")
        self.out += _U32.pack(len(body))
        self.out += body
        cell = [trio.lowlevel.current_task()]
        self.waiting.append(cell)
        if self.writer is not None:
            writer, self.writer = self.writer, None
            trio.lowlevel.reschedule(writer)

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            cell[0] = None  # its answer, when it comes, goes to nobody
            return trio.lowlevel.Abort.SUCCEEDED

        error = await trio.lowlevel.wait_task_rescheduled(abort)
        if error is not None:
            raise ConnectionError(f"the no-op connection failed: {error}")

    async def run_writer(self) -> None:
        while True:
            if not self.out:
                self.writer = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(
                    lambda _: trio.lowlevel.Abort.SUCCEEDED)
                continue
            data = bytes(self.out)
            self.out.clear()
            n = write_nowait(self.fd, data)
            if n < len(data):
                await self.stream.send_all(data[n:])

    async def run_reader(self) -> None:
        while True:
            chunk = await receive_available(self.sock, self.fd, 65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            if len(chunk) > len(self.waiting):
                raise ConnectionError(f"the server sent {len(chunk)} answers for "
                                      f"{len(self.waiting)} requests waiting")
            for _ in range(len(chunk)):
                task = self.waiting.popleft()[0]
                if task is not None:
                    trio.lowlevel.reschedule(task, outcome.Value(None))

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.run_writer)
                await self.run_reader()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(exc)
            raise

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        while self.waiting:
            task = self.waiting.popleft()[0]
            if task is not None:
                trio.lowlevel.reschedule(task, outcome.Value(exc))


class _NoopDriver:
    def __init__(self, mux: _NoopMux) -> None:
        self.mux = mux

    async def load(self, pairs: list[tuple[bytes, bytes]]) -> None:
        return None

    async def execute(self, op: Op) -> int:
        await self.mux.call(op.key + (op.value or b""))
        return 1


@asynccontextmanager
async def _open_noop(port: int):
    conn = await _StreamConn.open("127.0.0.1", port)
    mux = _NoopMux(conn.stream)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            yield _NoopDriver(mux)
            nursery.cancel_scope.cancel()
    finally:
        await conn.close()


def serve_noop(ready=None, *, max_seconds: float = 3600.0) -> None:
    """A server that answers every u32-framed request with one byte, at once.

    Listens on 127.0.0.1 (an ephemeral port); prints ``READY <port>`` (or calls
    ``ready(port)``) and serves until stdin closes or ``max_seconds`` pass. One selector loop,
    no per-request allocation beyond the read buffer: as cheap a server as Python allows.
    """
    import time

    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    try:
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    except (ValueError, OSError):
        pass
    port = lsock.getsockname()[1]
    if ready is None:
        print(f"READY {port}", flush=True)
    else:
        ready(port)
    bufs: dict[socket.socket, bytearray] = {}
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                if key.data == "stdin":
                    if not sys.stdin.buffer.read1(4096):
                        return
                    continue
                if key.data is None:
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        continue
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.setblocking(False)
                    bufs[conn] = bytearray()
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    continue
                conn = key.fileobj
                try:
                    chunk = conn.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(conn)
                    conn.close()
                    bufs.pop(conn, None)
                    continue
                buf = bufs[conn]
                buf += chunk
                answers = 0
                while len(buf) >= 4:
                    (n,) = _U32.unpack_from(buf)
                    if len(buf) < 4 + n:
                        break
                    del buf[: 4 + n]
                    answers += 1
                if answers:
                    conn.sendall(b"K" * answers)
    finally:
        for conn in list(bufs):
            conn.close()
        lsock.close()
        sel.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["noop-server"]:
        serve_noop()
    else:
        raise SystemExit("usage: python -m bench.drivers noop-server")
