"""``python -m bench compaction``: what log compaction costs a group as its data grows.

Three replicas of one group (Meridian's ``GroupStateMachine`` over LMDB, the real Raft driver
and storage, the in-memory transport) in one process, loaded with transactions of 50 values
of 1,000 bytes until each replica holds ``--mb`` megabytes, compacting every ``--every``
entries. Two modes, side by side in one run, each repetition a fresh process (alternating):

- ``local``: the group's state machine as Meridian runs it (``raft.driver.DurableStateMachine``):
  a compaction checkpoints the store and leaves a local marker;
- ``copy``: the same state machine with those two methods hidden, so every compaction copies
  the whole store into a snapshot (what every group did before).

Per run: commit latency (p50, p99, max), the event loop's worst lateness (a task that sleeps
10 ms and measures how late it wakes: a stall of the whole process), the peak resident memory
and the run's duration.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from . import _common

KEYS_PER_TXN = 50
VALUE_BYTES = 1000
MODES = ("local", "copy")
FULL = {"mb": 300, "every": 2000, "repetitions": 2}
QUICK = {"mb": 40, "every": 400, "repetitions": 1}
CHILD_TIMEOUT_S = 900


class _Copying:
    """The group's state machine without ``checkpoint``/``begin_snapshot``: the driver copies
    it at every compaction."""

    def __init__(self, sm):
        self._sm = sm

    def apply(self, entries):
        return self._sm.apply(entries)

    def snapshot(self):
        return self._sm.snapshot()

    def restore(self, data):
        return self._sm.restore(data)


def _child(mode: str, mb: int, every: int, directory: str) -> dict:
    import trio

    from engine.group import GroupStateMachine, encode_commit
    from engine.mvcc import MVCCStore
    from raft.core import Config
    from raft.driver import open_raft_node
    from raft.storage import RaftStorage
    from raft.transport import MemoryNetwork
    from raft.types import ConfState

    txns = max(1, mb * 1_000_000 // (KEYS_PER_TXN * VALUE_BYTES))
    value = os.urandom(VALUE_BYTES)
    out: dict = {}

    async def main() -> None:
        net = MemoryNetwork(seed=1)
        nodes: dict = {}
        late: list[float] = []
        stores: list = []
        storages: list = []

        async def replica(i: int, ready: trio.Event) -> None:
            storage = RaftStorage.open(os.path.join(directory, f"raft{i}"))
            storages.append(storage)
            store = MVCCStore(os.path.join(directory, f"store{i}"), map_size=4 * mb << 20)
            stores.append(store)
            sm = GroupStateMachine(store, max_txn_lifetime_ns=10**15)
            async with net.endpoint(i) as transport:
                async with open_raft_node(
                        1, Config(i, election_tick=20), storage, transport,
                        sm if mode == "local" else _Copying(sm),
                        bootstrap=ConfState((1, 2, 3)), seed=i, tick_interval=0.05,
                        snapshot_every=every, snapshot_keep=min(100, every)) as node:
                    nodes[i] = node
                    ready.set()
                    await trio.sleep_forever()

        async def watch() -> None:
            while True:
                start = trio.current_time()
                await trio.sleep(0.01)
                late.append(trio.current_time() - start - 0.01)

        try:
            async with trio.open_nursery() as nursery:
                for i in (1, 2, 3):
                    ready = trio.Event()
                    nursery.start_soon(replica, i, ready)
                    await ready.wait()
                with trio.fail_after(30):
                    while not any(n.is_leader for n in nodes.values()):
                        await trio.sleep(0.05)
                leader = next(n for n in nodes.values() if n.is_leader)
                nursery.start_soon(watch)
                latencies = []
                began = time.perf_counter()
                for t in range(1, txns + 1):
                    writes = [(b"k%010d" % (t * KEYS_PER_TXN + j), value)
                              for j in range(KEYS_PER_TXN)]
                    start = time.perf_counter()
                    result = await leader.propose(encode_commit(t, 0, 1000 * t, writes))
                    latencies.append(time.perf_counter() - start)
                    if not result.committed:
                        raise RuntimeError(f"transaction {t} was not committed: {result}")
                seconds = time.perf_counter() - began
                stats = [n.statistics() for n in nodes.values()]
                out.update(
                    mode=mode, mb=mb, every=every, txns=txns, seconds=round(seconds, 3),
                    commit_p50_ms=round(_common.percentile(latencies, 50) * 1e3, 3),
                    commit_p99_ms=round(_common.percentile(latencies, 99) * 1e3, 3),
                    commit_max_ms=round(max(latencies) * 1e3, 3),
                    loop_late_max_ms=round(max(late) * 1e3, 3),
                    snapshots_taken=sum(s.snapshots_taken for s in stats),
                    term=max(s.term for s in stats))  # above the first: leadership changed
                nursery.cancel_scope.cancel()
        finally:
            for s in stores:
                s.close()
            for s in storages:
                s.close()

    trio.run(main)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _run_child(mode: str, mb: int, every: int) -> dict:
    directory = tempfile.mkdtemp(prefix=f"meridian-compaction-{mode}-")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.compaction", "--child", mode, str(mb), str(every),
             directory], cwd=_common.REPO_ROOT, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_S)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} run failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compaction",
        help="log compaction of a growing group: local markers against copying the store",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help=f"short run ({QUICK['mb']} MB, compaction every {QUICK['every']} "
                        f"entries, {QUICK['repetitions']} repetition)")
    p.add_argument("--json", metavar="FILE", help="write the result document to FILE")
    p.add_argument("--mb", type=_common.int_range(1, 1_000_000), metavar="N",
                   help=f"megabytes per replica (default {FULL['mb']}, quick {QUICK['mb']})")
    p.add_argument("--every", type=_common.int_range(1, 1_000_000_000), metavar="N",
                   help=f"entries between compactions (default {FULL['every']}, "
                        f"quick {QUICK['every']})")
    p.add_argument("--repetitions", type=_common.int_range(1, 100), metavar="N",
                   help=f"runs per mode (default {FULL['repetitions']}, "
                        f"quick {QUICK['repetitions']})")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    base = QUICK if args.quick else FULL
    mb = base["mb"] if args.mb is None else args.mb
    every = base["every"] if args.every is None else args.every
    reps = base["repetitions"] if args.repetitions is None else args.repetitions
    machine = _common.describe_machine(_common.REPO_ROOT)
    results = []
    for rep in range(reps):
        for mode in MODES if rep % 2 == 0 else reversed(MODES):
            print(f"compaction: {mode}, {mb} MB, repetition {rep + 1}/{reps} ...",
                  file=sys.stderr, flush=True)
            try:
                row = _run_child(mode, mb, every)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"bench compaction: {exc}", file=sys.stderr)
                return 1
            row["repetition"] = rep + 1
            results.append(row)
    summary = {}
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode]
        summary[mode] = {k: _common.median(r[k] for r in rows)
                         for k in ("seconds", "commit_p50_ms", "commit_p99_ms", "commit_max_ms",
                                   "loop_late_max_ms", "peak_rss_mb")}
    machine["load_average_end"] = _common.load_average()
    doc = {"schema": _common.SCHEMA, "benchmark": "compaction",
           "command": "python -m bench compaction " + " ".join(getattr(args, "argv", [])[1:]),
           "machine": machine,
           "config": {"quick": bool(args.quick), "mb": mb, "every": every, "repetitions": reps,
                      "keys_per_txn": KEYS_PER_TXN, "value_bytes": VALUE_BYTES},
           "results": results, "summary": summary}
    headers = ["mode", "seconds", "commit p50 ms", "p99 ms", "max ms", "loop late max ms",
               "peak RSS MB"]
    print(_common.format_table(headers, [
        [mode] + [f"{summary[mode][k]:.1f}" for k in
                  ("seconds", "commit_p50_ms", "commit_p99_ms", "commit_max_ms",
                   "loop_late_max_ms", "peak_rss_mb")] for mode in MODES]))
    print(f"(medians of {reps} run(s) per mode; {mb} MB per replica, compaction every "
          f"{every} entries)")
    if args.json:
        _common.write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                sys.argv[5])))
    else:
        sys.exit(main(add_parser(argparse.ArgumentParser().add_subparsers()).parse_args()))
