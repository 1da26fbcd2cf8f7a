"""A node restarting with an expired intent whose primary group is led elsewhere.

Each group's intent sweep starts as soon as the group opens, while the client this node
reaches other groups' leaders with exists only once every group is open and the client
server listens. A recovery that ran in between used to stop the node (an assertion). An
in-process cluster; the client server's start is held until the recovery has begun, so
the recovery always runs in that window.
"""

from __future__ import annotations

import trio

import engine.node
from engine.local import open_local_cluster
from engine.placement import data_group
from test_node_misuse import GUARD_S, KEY, client_of, leader_of

TXN = 4242


async def test_a_recovery_before_the_node_serves_waits_for_it(monkeypatch, tmp_path):
    # No sweep in the first run: the intent must still be there at the restart.
    monkeypatch.setattr(engine.node, "SWEEP_INTERVAL_S", 3600.0)
    monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 0.0)  # expired once prepared
    async with open_local_cluster(("us-east", "eu-west"), 1, seed=3,
                                  directory=str(tmp_path)) as cluster:
        here, primary = (data_group(cluster.config, r) for r in ("us-east", "eu-west"))
        node = await leader_of(cluster, here)  # node 1, the region's one node
        with trio.fail_after(GUARD_S):
            async with client_of(cluster, node) as conn:
                await conn.call("prepare", {"group": here, "txn_id": TXN, "read_ts": 0,
                                            "writes": [[KEY, b"v"]], "primary": primary})
            assert node.replicas[here].sm.is_prepared(TXN)
            await cluster.stop_node(1)

            # The restart: sweeps run often, and the client server starts only once a
            # recovery has begun (as when opening the groups takes longer than a sweep).
            monkeypatch.setattr(engine.node, "SWEEP_INTERVAL_S", 0.05)
            recovering = trio.Event()
            recover, serve = engine.node.Node._recover, engine.node.Node._serve_clients

            async def recover_and_tell(self, replica, intent):
                recovering.set()
                await recover(self, replica, intent)

            async def serve_late(self, me, *, task_status):
                await recovering.wait()
                await serve(self, me, task_status=task_status)

            monkeypatch.setattr(engine.node.Node, "_recover", recover_and_tell)
            monkeypatch.setattr(engine.node.Node, "_serve_clients", serve_late)
            node = await cluster.start_node(1)
            # The recovery finishes once the node serves: the primary records an abort,
            # and the intent here is resolved.
            while node.replicas[here].sm.is_prepared(TXN):
                await trio.sleep(0.02)
        assert cluster.nodes[2].replicas[primary].sm.record(TXN) == (False, 0)
        assert node.replicas[here].sm.intents([KEY], 2**62) == []
