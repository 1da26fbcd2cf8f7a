"""The Raft TCP transport across repeated restarts of its peers, with the garbage collector off:
every connection to a stopped node's incarnation is closed by the code, not left to a collection
that may never come, and the links to its next incarnation come back.

Integration tests over loopback sockets; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import gc
import os

import trio

from test_raft_transport import DEADLINE_S, TcpCluster, established_to, hb, wait_for


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _every_pair_delivers(cluster: TcpCluster, group: int) -> None:
    """Sends on every directed link until each node has heard from every other one: a message
    sent while a dialer is still backing off is dropped, so one send is not enough."""
    nodes = cluster.nodes
    inboxes = {n: nodes[n].subscribe(group) for n in nodes}
    heard = {n: set() for n in nodes}
    try:
        while any(len(heard[n]) < len(nodes) - 1 for n in nodes):
            for src in nodes:
                for dst in nodes:
                    if src != dst and src not in heard[dst]:
                        nodes[src].send(group, [hb(src, dst, group)])
            with trio.move_on_after(0.05):
                for n, inbox in inboxes.items():
                    while len(heard[n]) < len(nodes) - 1:
                        heard[n].add((await inbox.receive()).frm)
    finally:
        for inbox in inboxes.values():
            inbox.close()


async def test_tcp_peers_restarted_again_and_again_leave_no_connection_behind(nursery):
    gc.disable()  # what a stopped incarnation held must be closed by the code
    cluster = TcpCluster(nursery)
    try:
        for node_id in (1, 2, 3):
            await cluster.start(node_id, connect_timeout_s=5.0)
        with trio.fail_after(DEADLINE_S):
            await _every_pair_delivers(cluster, group=10)
        before = _open_descriptors()
        for cycle in range(6):
            restarted = 1 + cycle % 3  # the dialer of both links, of one, of none
            await cluster.stop(restarted)
            await cluster.start(restarted, connect_timeout_s=5.0)
            with trio.fail_after(DEADLINE_S):
                await _every_pair_delivers(cluster, group=11 + cycle)
                # The survivors' ends of the old incarnation's connections close once they read
                # its end: then the process holds what it held before the restart.
                await wait_for(lambda: _open_descriptors() == before)
        stats = {n: t.statistics() for n, t in cluster.nodes.items()}
        assert all(st.decode_errors == 0 for st in stats.values())
        ports = {addr[1] for addr in cluster.addresses.values()}
        assert established_to(ports) in (3, None)  # one connection per pair, none stale
    finally:
        await cluster.close()
        gc.enable()
