"""A replicated key-value store on one Raft group: the fixture of the Raft tests and benchmark.

Each node is one process (``python -m bench.raftkv serve ...``) with a data directory, a Raft
port (the TCP transport) and a client port. Clients speak length-prefixed msgpack over TCP, many
requests in flight per connection:

    request   u32 length, msgpack [1, request id, op, key, value]
              op: "put" (value: bytes), "get" (value: nil; a linearizable read through
              ReadIndex), "cas" (value: [expected or nil, new]), "status" (key, value: nil)
    response  u32 length, msgpack [request id, status, result, leader hint]
              status: "ok"; "not-leader" (nothing was done: retry at the node the hint
              names, 0 = unknown; also a get whose read point this node could not confirm
              within ``READ_TIMEOUT_S``); "unknown" (it may or may not have been applied);
              "error" (result: a message). A put returns nil; a get the value or nil; a cas
              true or false; status a dict (the core's status, and the driver's counters
              under "stats").

Every put and cas is in a Raft entry, msgpack ``[op, key, value]``, or, for the puts and
compare-and-sets read in one wakeup of the server (from any of its connections), one entry
``["batch", nil, [[op, key, value], ...]]`` that applies them in order (proposal batching: the
log, replication and apply costs per entry are shared). Each is acknowledged only once applied
on the leader, hence fsynced on a majority. :class:`KVClient` finds the leader, follows
redirections and retries on lost connections, bounded by the caller's cancel scope.

Every request is served by the leader (a get through ReadIndex), so the followers need not learn
each new commit index at once: the nodes run with ``Config.broadcast_commit=False``, as
Meridian's nodes do — a follower learns it from the next append or heartbeat, and a commit
costs two messages and a Ready less per follower (``--broadcast-commit`` for etcd's
behaviour). They also run with ``Config.lazy_followers``, as Meridian's nodes do: the leader
sends each new entry at once to one follower, the one whose acknowledgements make the commits,
and the other its batch at each heartbeat (``--eager-followers`` sends to both at once).

A serving node prints one line ``READY <raft port> <client port>`` on stdout once it is
listening and has recovered, and exits cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import struct
import sys
from collections.abc import Sequence

import msgpack
import trio

from raft.core import Config
from raft.driver import OutcomeUnknownError, RaftTimeoutError, open_raft_node
from raft.poller import ReadPoller
from raft.tcp import write_nowait
from raft.types import ConfState, Entry, ProposalDroppedError, RaftError

__all__ = ["KVStateMachine", "KVClient", "OutcomeUnknown", "serve", "main"]

CLIENT_VERSION = 1
_LEN = struct.Struct("<I")
MAX_FRAME = 16 << 20
READ_TIMEOUT_S = 5.0
"""How long a node tries to confirm a get's read point (ReadIndex, §6.4) before answering
``not-leader``: without a bound, a read on a node that cannot reach a quorum (and has not yet
noticed) or whose log has stalled holds its task and its connection's in-flight slot for ever,
while the client retries elsewhere."""


class OutcomeUnknown(Exception):
    """A request was sent but its answer never came (connection lost, timeout) or the node
    could not tell: it may or may not have taken effect."""


class KVStateMachine:
    """A dict from bytes to bytes. Results: put → None, cas → whether it swapped."""

    def __init__(self):
        self.data: dict[bytes, bytes] = {}

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        """One result per entry; a batch entry's is the list of its operations' results."""
        out: list[object] = []
        one = self._apply_one
        for e in entries:
            op, key, value = msgpack.unpackb(e.data)
            if op == "batch":
                out.append([one(*o) for o in value])
            else:
                out.append(one(op, key, value))
        return out

    def _apply_one(self, op, key, value) -> object:
        if op == "put":
            self.data[key] = value
            return None
        if op == "cas":
            expected, new = value
            if self.data.get(key) == expected:
                self.data[key] = new
                return True
            return False
        return None  # unknown ops are no-ops, identically on every replica

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data)

    def restore(self, data: bytes) -> None:
        self.data = msgpack.unpackb(data)


# ---------------------------------------------------------------------------- server


class _Batcher:
    """Gathers the puts and compare-and-sets read in one wakeup of the server's poller and
    proposes them as one Raft entry when the wakeup's handlers are done (:meth:`flush`, the
    poller's round-end callback); a lone operation is proposed as an entry of its own. Each
    operation's ``done(result, error)`` is called exactly once."""

    MAX_OPS = 256
    MAX_BYTES = 1 << 20  # values and keys in one entry, beyond which it is proposed at once

    def __init__(self, node) -> None:
        self.node = node
        self.ops: list[list] = []
        self.dones: list = []
        self.size = 0

    def add(self, op: str, key, value, done) -> None:
        self.ops.append([op, key, value])
        self.dones.append(done)
        # A put's value is bytes, a compare-and-set's [expected or nil, new].
        parts = value if isinstance(value, list) else (value,)
        self.size += len(key) + sum(len(v) for v in parts if isinstance(v, bytes))
        if len(self.ops) >= self.MAX_OPS or self.size >= self.MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        ops, dones = self.ops, self.dones
        if not ops:
            return
        self.ops, self.dones, self.size = [], [], 0
        if len(ops) == 1:
            data, on_done = msgpack.packb(ops[0]), dones[0]
        else:
            data = msgpack.packb(["batch", None, ops])

            def on_done(result, error):
                if error is None:
                    for done, r in zip(dones, result):
                        done(r, None)
                else:
                    for done in dones:
                        done(None, error)
        try:
            self.node.propose_nowait(data, on_done)
        except RaftError as exc:  # ProposalDroppedError included: nothing was proposed
            for done in dones:
                done(None, exc)


def _frame(obj) -> bytes:
    body = msgpack.packb(obj)
    return _LEN.pack(len(body)) + body


def _take_frames(buf: bytearray) -> list:
    """Removes the complete frames at the front of ``buf`` and returns their decoded bodies."""
    out = []
    while len(buf) >= 4:
        (n,) = _LEN.unpack_from(buf)
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
        if len(buf) < 4 + n:
            break
        out.append(msgpack.unpackb(bytes(buf[4 : 4 + n]), strict_map_key=False))
        del buf[: 4 + n]
    return out


async def _read_frames(stream):
    buf = bytearray()
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        buf += data
        for obj in _take_frames(buf):
            yield obj


class _Connection:
    """Serves one client connection. Requests are read by the server's :class:`ReadPoller`
    (one wakeup for every connection with something to read); puts and compare-and-sets go
    to the server's :class:`_Batcher`, proposed at the end of the wakeup (their answers come
    back through a callback), reads run as tasks. Answers are written at once while nothing
    is queued, or else queued and written by one writer, many per ``send_all``. At most
    ``MAX_IN_FLIGHT`` requests are outstanding: beyond that the connection is not read
    (back-pressure)."""

    MAX_IN_FLIGHT = 4096

    def __init__(self, stream, node, sm: KVStateMachine, poller: ReadPoller,
                 batcher: _Batcher):
        self.stream = stream
        self.node = node
        self.batcher = batcher
        self.sm = sm
        self.poller = poller
        self.out: list[bytes] = []
        self.out_ready = trio.Event()
        self.in_flight = 0
        self.closed = False
        self.ended = trio.Event()
        self.sock_fd = stream.socket.fileno()
        self.buf = bytearray()
        self.fd = -1  # the socket while the writer is idle: answers may be written at once
        self.nursery = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._writer)
                self.poller.add(self.sock_fd, self._on_readable)
                await self.ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self.fd = -1
            self.poller.remove(self.sock_fd)
            self.ended.set()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.sock_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end()
            return
        buf = self.buf
        buf += data
        try:
            reqs = _take_frames(buf)
        except ValueError:  # a frame over the limit, or not msgpack: not a client of ours
            self._end()
            return
        for req in reqs:
            self._dispatch(req)
        if self.in_flight >= self.MAX_IN_FLIGHT and not self.closed:
            self.poller.pause(self.sock_fd)

    def _answer(self, resp) -> None:
        self.in_flight -= 1
        if self.closed:
            return
        if self.in_flight == self.MAX_IN_FLIGHT - 1:
            self.poller.resume(self.sock_fd)
        frame = _frame(resp)
        if self.fd >= 0 and not self.out:
            # The writer is idle and nothing is queued: write now, saving a task switch.
            written = write_nowait(self.fd, frame)  # an error: the writer meets it too
            if written == len(frame):
                return
            frame = frame[written:]
        self.out.append(frame)
        self.out_ready.set()

    async def _writer(self) -> None:
        fd = self.sock_fd
        while True:
            if not self.out:
                self.fd = fd
                await self.out_ready.wait()
            self.fd = -1
            self.out_ready = trio.Event()
            batch, self.out = self.out, []
            try:
                await self.stream.send_all(b"".join(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def _dispatch(self, req) -> None:
        try:
            version, rid, op, key, value = req
        except (TypeError, ValueError):
            return  # not a request: nothing to answer
        self.in_flight += 1
        node = self.node
        if version != CLIENT_VERSION:
            self._answer([rid, "error", f"client protocol version {version} is not supported", 0])
        elif op == "put" or op == "cas":
            def done(result, error, rid=rid):
                if error is None:
                    self._answer([rid, "ok", result, node.leader])
                else:
                    self._answer(self._error(rid, error))
            self.batcher.add(op, key, value, done)
        elif op == "get":
            self.nursery.start_soon(self._get, rid, key)
        elif op == "status":
            st = node.core.status()
            st["stats"] = dataclasses.asdict(node.statistics())
            self._answer([rid, "ok", st, node.leader])
        else:
            self._answer([rid, "error", f"unknown op {op!r}", node.leader])

    def _error(self, rid, exc: BaseException):
        if isinstance(exc, ProposalDroppedError):
            return [rid, "not-leader", str(exc), exc.leader]
        if isinstance(exc, OutcomeUnknownError):
            return [rid, "unknown", str(exc), self.node.leader]
        return [rid, "error", str(exc), self.node.leader]

    async def _get(self, rid, key) -> None:
        try:
            await self.node.linearizable_read(timeout=READ_TIMEOUT_S)
        except RaftTimeoutError as exc:
            # Confirming a read point is confirming leadership: a node that cannot do it in
            # time cannot serve the read, and nothing was done, so the client may try
            # another node at once (as for a put refused by a non-leader).
            self._answer([rid, "not-leader", str(exc), 0])
            return
        except RaftError as exc:
            self._answer(self._error(rid, exc))
            return
        self._answer([rid, "ok", self.sm.data.get(key), self.node.leader])


async def serve(node_id: int, data_dir: str, raft_port: int, client_port: int,
                peers: dict[int, tuple[str, int]], *, tick_interval: float = 0.05,
                broadcast_commit: bool = False, lazy_followers: bool = True,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Runs one node until cancelled."""
    from raft.storage import RaftStorage
    from raft.tcp import open_tcp_transport

    sm = KVStateMachine()
    config = Config(node_id, election_tick=10, heartbeat_tick=1,
                    broadcast_commit=broadcast_commit, lazy_followers=lazy_followers)
    bootstrap = ConfState(tuple(sorted(peers)))
    storage = RaftStorage.open(os.path.join(data_dir, "group-1"))
    try:
        async with open_tcp_transport(node_id, listen=("127.0.0.1", raft_port),
                                      peers={i: a for i, a in peers.items() if i != node_id}
                                      ) as transport:
            async with open_raft_node(1, config, storage, transport, sm, bootstrap=bootstrap,
                                      tick_interval=tick_interval, snapshot_every=100_000,
                                      seed=random.SystemRandom().getrandbits(32)) as node:
                listeners = await trio.open_tcp_listeners(client_port, host="127.0.0.1")
                port = listeners[0].socket.getsockname()[1]

                batcher = _Batcher(node)
                poller = ReadPoller(on_round_end=batcher.flush)

                async def handler(stream):
                    await _Connection(stream, node, sm, poller, batcher).run()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poller.run)
                    await nursery.start(trio.serve_listeners, handler, listeners)
                    task_status.started((transport.address[1], port))
                    await trio.sleep_forever()
    finally:
        storage.close()


# ---------------------------------------------------------------------------- client


class KVClient:
    """A client of one raftkv cluster: finds the leader, follows redirections, retries.

    Use as ``async with KVClient({1: ("127.0.0.1", port), ...}) as c: await c.put(k, v)``.
    Many calls may run concurrently; they share one connection per node.
    """

    def __init__(self, nodes: dict[int, tuple[str, int]], *, attempt_timeout: float = 2.0):
        if not nodes:
            raise ValueError("KVClient needs at least one node address")
        self._nodes = dict(nodes)
        self._attempt_timeout = attempt_timeout
        self._leader = min(nodes)
        self._conns: dict[int, _ClientConn] = {}
        self._nursery = None
        self._rid = 0

    async def __aenter__(self):
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc):
        with trio.CancelScope(shield=True):
            for c in self._conns.values():
                await c.close()
        self._nursery.cancel_scope.cancel()
        return await self._nursery_cm.__aexit__(*exc)

    async def _conn(self, node: int) -> _ClientConn:
        c = self._conns.get(node)
        if c is None or c.broken:
            c = _ClientConn(*self._nodes[node])
            await c.connect(self._nursery)
            self._conns[node] = c
        return c

    async def call(self, op: str, key: bytes, value=None, *, retry_unknown: bool = True):
        """Runs one request at the leader, retrying where that is safe, until it succeeds
        (bounded by the caller's cancel scope).

        A request refused by a non-leader, or one that could not be sent, is retried at once.
        One that was sent but whose outcome is unknown (connection lost, attempt timed out) is
        retried only if ``retry_unknown`` (at-least-once: right for puts of a value, wrong for
        a history checker); otherwise :class:`OutcomeUnknown` is raised.
        """
        backoff = 0.005
        while True:
            node = self._leader
            sent = False
            try:
                with trio.fail_after(self._attempt_timeout):
                    conn = await self._conn(node)
                    self._rid += 1
                    sent = True
                    status, result, hint = await conn.request(self._rid, op, key, value)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, EOFError) as exc:
                dropped = self._conns.pop(node, None)
                if dropped is not None:
                    await dropped.close()  # else its socket and reader task stay for good
                self._leader = self._next_node(node)
                if sent and not retry_unknown and op != "get":
                    raise OutcomeUnknown(f"node {node}: {exc!r}") from None
                await trio.sleep(backoff * random.random())
                backoff = min(backoff * 2, 0.2)
                continue
            if status == "ok":
                if hint:
                    self._leader = hint
                return result
            if status == "not-leader":
                self._leader = hint if hint in self._nodes else self._next_node(node)
                await trio.sleep(backoff * random.random())
                backoff = min(backoff * 2, 0.2)
                continue
            if status == "unknown":
                if not retry_unknown:
                    raise OutcomeUnknown(f"node {node}: {result}")
                continue
            raise RaftError(f"node {node}: {result}")

    def _next_node(self, node: int) -> int:
        ids = sorted(self._nodes)
        return ids[(ids.index(node) + 1) % len(ids)]

    async def put(self, key: bytes, value: bytes, *, retry_unknown: bool = True) -> None:
        await self.call("put", key, value, retry_unknown=retry_unknown)

    async def get(self, key: bytes) -> bytes | None:
        return await self.call("get", key)

    async def cas(self, key: bytes, expected: bytes | None, new: bytes, *,
                  retry_unknown: bool = True) -> bool:
        return await self.call("cas", key, [expected, new], retry_unknown=retry_unknown)

    async def status(self, node: int) -> dict:
        conn = await self._conn(node)
        self._rid += 1
        with trio.fail_after(self._attempt_timeout):
            status, result, _ = await conn.request(self._rid, "status", b"", None)
        return result


class _ClientConn:
    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.stream = None
        self.pending: dict[int, list] = {}
        self.broken = False
        self._send_lock = trio.Lock()

    async def connect(self, nursery) -> None:
        self.stream = await trio.open_tcp_stream(*self.addr)
        self.stream.socket.setsockopt(6, 1, 1)  # TCP_NODELAY
        nursery.start_soon(self._reader)

    async def _reader(self) -> None:
        try:
            async for rid, status, result, hint in _read_frames(self.stream):
                slot = self.pending.pop(rid, None)
                if slot is not None:
                    slot[1] = (status, result, hint)
                    slot[0].set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            pass
        self.broken = True
        for slot in self.pending.values():
            slot[0].set()
        self.pending.clear()

    async def request(self, rid: int, op: str, key: bytes, value):
        if self.broken:
            raise EOFError("connection closed")
        slot = [trio.Event(), None]
        self.pending[rid] = slot
        try:
            async with self._send_lock:
                await self.stream.send_all(_frame([CLIENT_VERSION, rid, op, key, value]))
            await slot[0].wait()
        finally:
            self.pending.pop(rid, None)
        if slot[1] is None:
            raise EOFError("connection closed before the response")
        return slot[1]

    async def close(self) -> None:
        self.broken = True
        if self.stream is not None:
            await self.stream.aclose()


# ---------------------------------------------------------------------------- command line


def _parse_peers(text: str) -> dict[int, tuple[str, int]]:
    peers = {}
    for part in text.split(","):
        ident, _, addr = part.partition("=")
        host, _, port = addr.rpartition(":")
        if not ident or not host or not port:
            raise argparse.ArgumentTypeError(f"bad peer {part!r}: expected ID=HOST:PORT")
        peers[int(ident)] = (host, int(port))
    return peers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.raftkv")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run one node")
    s.add_argument("--id", type=int, required=True)
    s.add_argument("--data", required=True, help="data directory")
    s.add_argument("--peers", type=_parse_peers, required=True,
                   help="ID=HOST:PORT of every member's Raft port, this node included")
    s.add_argument("--client-port", type=int, default=0)
    s.add_argument("--tick", type=float, default=0.05, help="seconds per Raft tick")
    s.add_argument("--broadcast-commit", action="store_true",
                   help="tell the followers of every new commit index at once (etcd's way)")
    s.add_argument("--eager-followers", action="store_true",
                   help="send every new entry to every follower at once (etcd's way), not "
                        "only to the one a commit needs")
    args = ap.parse_args(argv)
    if args.id not in args.peers:
        ap.error(f"--peers must include this node's id {args.id}")

    async def run():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                ports = await nursery.start(
                    lambda task_status: serve(args.id, args.data, args.peers[args.id][1],
                                              args.client_port, args.peers,
                                              tick_interval=args.tick,
                                              broadcast_commit=args.broadcast_commit,
                                              lazy_followers=not args.eager_followers,
                                              task_status=task_status))
                print(f"READY {ports[0]} {ports[1]}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
