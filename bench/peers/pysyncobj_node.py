"""One PySyncObj member for the Raft peer benchmark (``bench/raft_peers.py``).

Run as a script, three at a time, by ``bench/raft_peers.py``. The member is a ``SyncObj`` with a
``ReplDict`` consumer, its journal in ``--journal`` and its full dump (written at log compaction)
beside it: PySyncObj's persistent configuration, which never fsyncs. ``--batch`` sets
``SyncObjConf(appendEntriesUseBatch=True)``; without it entries are sent as soon as they are
submitted.

PySyncObj has no client protocol, so the member also listens on a loopback request port of its
own (printed as ``READY <port>`` on stdout once it listens). A connection carries fixed-size
frames, one outstanding at a time:

- ``b"P" + key(16) + value(100)``: ``ReplDict.set(key, value)`` submitted with a callback; the
  callback, which PySyncObj calls once the entry is committed and applied here (or has failed),
  answers ``b"K"`` (success) or ``b"E"`` (failure). This is what ``set(key, value, sync=True)``
  does underneath, minus the blocked thread per request. A member that is not the leader
  forwards the command to the leader itself.
- ``b"S"``: one byte of state: ``b"L"`` leader and ready, ``b"F"`` follower that knows a leader,
  ``b"N"`` no leader yet.

Threads. The member runs with ``autoTick=False``, PySyncObj's mode for embedding it in an
application's event loop: the main thread calls ``doTick`` in a loop, and the request sockets are
registered with the same poller that PySyncObj waits on for its own connections. Raft, the
replicated dict and the request server thus share one thread; a separate request thread would
fight PySyncObj's tick thread for the interpreter lock on every put.

The process exits when its stdin reaches end of file (its parent is gone) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict
from pysyncobj.poller import POLL_EVENT_TYPE

KEY_SIZE = 16
VALUE_SIZE = 100
PUT_SIZE = 1 + KEY_SIZE + VALUE_SIZE
TICK_S = 0.05  # PySyncObj's autoTickPeriod: the longest one doTick waits for events


def _exit_when_orphaned() -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


class RequestServer:
    """The loopback request protocol, driven by PySyncObj's poller."""

    def __init__(self, node: SyncObj, repl: ReplDict) -> None:
        self.node = node
        self.repl = repl
        self.poller = node._poller  # the poller doTick waits on
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.setblocking(False)
        self.conns: dict[int, tuple[socket.socket, bytearray, object]] = {}
        self.poller.subscribe(self.listener.fileno(), self._on_accept, POLL_EVENT_TYPE.READ)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _on_accept(self, _fd: int, _events: int) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)

        def answer(_result: object, error: int) -> None:
            try:
                conn.send(b"K" if error == FAIL_REASON.SUCCESS else b"E")
            except OSError:
                pass

        self.conns[conn.fileno()] = (conn, bytearray(), answer)
        self.poller.subscribe(conn.fileno(), self._on_data,
                              POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def _close(self, fd: int) -> None:
        self.poller.unsubscribe(fd)
        conn, _, _ = self.conns.pop(fd)
        conn.close()

    def _on_data(self, fd: int, _events: int) -> None:
        conn, buf, answer = self.conns[fd]
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(fd)
            return
        buf += chunk
        while buf:
            op = buf[0]
            if op == 0x50:  # b"P"
                if len(buf) < PUT_SIZE:
                    return
                key = bytes(buf[1 : 1 + KEY_SIZE])
                value = bytes(buf[1 + KEY_SIZE : PUT_SIZE])
                del buf[:PUT_SIZE]
                self.repl.set(key, value, callback=answer)
            elif op == 0x53:  # b"S"
                del buf[:1]
                if self.node._isLeader() and self.node.isReady():
                    state = b"L"
                elif self.node._getLeader() is not None:
                    state = b"F"
                else:
                    state = b"N"
                try:
                    conn.send(state)
                except OSError:
                    pass
            else:
                self._close(fd)
                return


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--self", dest="self_addr", required=True, help="host:port of this member")
    p.add_argument("--partner", action="append", default=[], help="host:port of another member")
    p.add_argument("--batch", action="store_true", help="appendEntriesUseBatch=True")
    p.add_argument("--journal", required=True, help="journal file (the dump goes beside it)")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()

    repl = ReplDict()
    conf = SyncObjConf(
        appendEntriesUseBatch=args.batch,
        journalFile=args.journal,
        fullDumpFile=args.journal + ".dump",
        autoTick=False,
        maxBindRetries=3,  # a taken port fails the start (the parent retries with new ports)
    )
    node = SyncObj(args.self_addr, args.partner, conf=conf, consumers=[repl])
    server = RequestServer(node, repl)
    print(f"READY {server.port}", flush=True)
    while True:
        node.doTick(TICK_S)


if __name__ == "__main__":
    sys.exit(main())
