"""Real processes: three raftkv nodes on loopback under client load, killed with SIGKILL.

Integration tests (real time, real disks, real sockets). Two claims:

- killing the leader five times (and restarting it) under load loses no acknowledged write, and
  the recorded history of every key is linearizable (WGL checker, ``bench.wgl``);
- killing every node at once and restarting them loses nothing that was acknowledged — the
  failure mode of a Raft that never fsyncs, or forgets its term and vote.
"""

from __future__ import annotations

import random
import time

import trio

from bench import wgl
from bench.raftcluster import LocalCluster
from bench.raftkv import KVClient, OutcomeUnknown


async def wait_for_leader(client: KVClient, cluster: LocalCluster, timeout: float = 20.0) -> int:
    with trio.fail_after(timeout):
        while True:
            for node in range(1, cluster.n + 1):
                if not cluster.running(node):
                    continue
                try:
                    st = await client.status(node)
                except (OSError, trio.TooSlowError, EOFError, trio.BrokenResourceError):
                    continue
                if st["role"] == "leader":
                    return node
            await trio.sleep(0.05)


class History:
    def __init__(self):
        self.events: list[dict] = []

    def add(self, process: int, type_: str, f: str, key: str, value) -> None:
        self.events.append({"process": process, "type": type_, "f": f, "key": key,
                            "value": value, "time_ns": time.monotonic_ns()})


async def register_client(client: KVClient, process: int, keys: list[str], history: History,
                          acked: dict, rng: random.Random, stop: trio.Event) -> None:
    n = 0
    while not stop.is_set():
        key = rng.choice(keys)
        f = rng.choice(["read", "write", "write", "cas"])
        n += 1
        if f == "read":
            history.add(process, "invoke", "read", key, None)
            try:
                with trio.fail_after(5):
                    value = await client.get(key.encode())
            except trio.TooSlowError:
                history.add(process, "info", "read", key, None)
                continue
            history.add(process, "ok", "read", key, value.decode() if value else None)
        elif f == "write":
            value = f"{process}-{n}"
            history.add(process, "invoke", "write", key, value)
            try:
                with trio.fail_after(5):
                    await client.put(key.encode(), value.encode(), retry_unknown=False)
            except (trio.TooSlowError, OutcomeUnknown):
                history.add(process, "info", "write", key, value)
                continue
            history.add(process, "ok", "write", key, value)
            acked[key].append(value)
        else:
            current = rng.choice(acked[key]) if acked[key] else None
            new = f"{process}-{n}"
            history.add(process, "invoke", "cas", key, [current, new])
            try:
                with trio.fail_after(5):
                    swapped = await client.cas(key.encode(),
                                               current.encode() if current else None,
                                               new.encode(), retry_unknown=False)
            except (trio.TooSlowError, OutcomeUnknown):
                history.add(process, "info", "cas", key, [current, new])
                continue
            history.add(process, "ok" if swapped else "fail", "cas", key, [current, new])


async def test_leader_killed_five_times_under_load_history_is_linearizable(tmp_path):
    keys = [f"k{i}" for i in range(4)]
    history = History()
    acked = {k: [] for k in keys}
    with LocalCluster(str(tmp_path), 3, tick=0.02) as cluster:
        async with KVClient(cluster.client_addrs, attempt_timeout=1.0) as control:
            stop = trio.Event()
            kills = 0
            async with trio.open_nursery() as nursery:
                async def worker(p: int) -> None:
                    async with KVClient(cluster.client_addrs, attempt_timeout=1.0) as client:
                        await register_client(client, p, keys, history, acked,
                                              random.Random(p), stop)

                for p in range(5):
                    nursery.start_soon(worker, p)
                with trio.fail_after(90):
                    for _ in range(5):
                        await trio.sleep(0.6)
                        leader = await wait_for_leader(control, cluster)
                        await trio.to_thread.run_sync(cluster.kill, leader)
                        kills += 1
                        await wait_for_leader(control, cluster)
                        await trio.sleep(0.3)
                        await trio.to_thread.run_sync(cluster.start, leader)
                    await trio.sleep(0.5)
                stop.set()
            assert kills == 5
            # Final reads, after every fault is healed: acknowledged writes are still there.
            final = {}
            for key in keys:
                history.add(99, "invoke", "read", key, None)
                with trio.fail_after(20):
                    value = await control.get(key.encode())
                final[key] = value.decode() if value else None
                history.add(99, "ok", "read", key, final[key])
    oks = [e for e in history.events if e["type"] == "ok" and e["f"] == "write"]
    assert len(oks) >= 50, f"too little load got through: {len(oks)} acknowledged writes"
    result = wgl.check(history.events, timeout=60)
    assert result.valid is True, result.explain()
    for key in keys:
        if acked[key]:
            assert final[key] is not None, f"{key}: acknowledged writes {acked[key][-3:]} lost"


async def test_whole_cluster_sigkill_and_restart_keeps_every_acknowledged_write(tmp_path):
    written = {}
    with LocalCluster(str(tmp_path), 3, tick=0.02) as cluster:
        async with KVClient(cluster.client_addrs) as client:
            await wait_for_leader(client, cluster)

            async def writer(w: int) -> None:
                for i in range(40):
                    key, value = f"w{w}-{i}".encode(), f"value-{w}-{i}".encode() * 3
                    with trio.fail_after(20):
                        await client.put(key, value)
                    written[key] = value

            async with trio.open_nursery() as nursery:
                for w in range(8):
                    nursery.start_soon(writer, w)
        for node in range(1, 4):
            cluster.kill(node)  # all at once: nothing gets a clean shutdown
        cluster.start_all()
        async with KVClient(cluster.client_addrs) as client:
            await wait_for_leader(client, cluster)
            for key, value in sorted(written.items()):
                with trio.fail_after(20):
                    assert await client.get(key) == value, key
    assert len(written) == 320
