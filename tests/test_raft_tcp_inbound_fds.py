"""A flood of connections to the Raft port must not take the process's file descriptors.

Anyone who can reach the Raft port may open connections to it; each holds a descriptor until
its handshake times out. The transport's inbound limit, by default, must leave the process
descriptors for everything else (its log segments, its stores, its client connections):
the connections beyond it are refused and closed at once, and the process can still open
files. Run in a child process with a low RLIMIT_NOFILE (real sockets on loopback, every wait
bounded).
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time

CHILD = r"""
import resource, sys, trio
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from raft.tcp import TcpOptions, serve_tcp_transport

async def main():
    # The handshake wait is long enough that no connection of the flood ends on its own.
    options = TcpOptions(handshake_timeout_s=60)
    async with trio.open_nursery() as nursery:
        t = await nursery.start(lambda task_status: serve_tcp_transport(
            5, options=options, task_status=task_status))
        print(t.address[1], options.max_inbound, flush=True)
        flood = int(await trio.to_thread.run_sync(sys.stdin.readline))
        target = min(flood, options.max_inbound)
        with trio.move_on_after(5):
            while t._inbound_count < target:
                await trio.sleep(0.01)
        try:
            open("/dev/null").close()
            opened = "yes"
        except OSError as exc:
            opened = repr(exc)
        print(t._inbound_count, opened, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # the test has read the refusals
        nursery.cancel_scope.cancel()

trio.run(main)
"""

FLOOD = 200


def test_a_connection_flood_on_the_raft_port_leaves_descriptors_for_the_process():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    socks = []
    try:
        port, limit = map(int, proc.stdout.readline().split())
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(FLOOD)]
        proc.stdin.write(f"{FLOOD}\n")
        proc.stdin.flush()
        inbound, opened = proc.stdout.readline().split(maxsplit=1)
        # The connections beyond the limit were closed by the transport: they read as ended.
        deadline = time.monotonic() + 5
        ended = set()
        while len(ended) < FLOOD - limit and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in socks if s not in ended], [], [], 0.1)
            for s in readable:
                if s.recv(4096) == b"":
                    ended.add(s)
        proc.stdin.write("done\n")
        proc.stdin.flush()
    finally:
        for s in socks:
            s.close()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert opened.strip() == "yes", (limit, inbound, opened, err[-500:])
    assert limit < 128 and int(inbound) == limit, (limit, inbound)
    assert len(ended) == FLOOD - limit, (len(ended), limit)
