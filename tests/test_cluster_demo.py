"""``meridian demo``'s workload and report (engine.cluster_demo), run in-process.

The workload runs against an in-process cluster; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import io

import trio

from engine import cluster_demo
from engine.local import open_local_cluster

GUARD_S = 60  # only ever reached by a bug that hangs


class _InProcess:
    """What the workload asks of the demo's node processes, for an in-process cluster."""

    def __init__(self, cluster) -> None:
        self._cluster = cluster

    def load_cluster(self):
        return self._cluster.config

    def exited(self, node_id: int) -> None:
        return None


async def test_a_reused_dir_with_more_accounts_than_this_run_still_balances(tmp_path):
    # `demo --dir D --accounts 3` after `demo --dir D --accounts 6`: the accounts beyond the
    # third, left by the run before, used to be counted in this run's bank, which was then
    # reported WRONG (and the demo failed) though no money had gone astray.
    with trio.fail_after(GUARD_S):
        async with open_local_cluster(("east",), 1, seed=5,
                                      directory=str(tmp_path)) as cluster:
            async with cluster.connect(region="east") as db:
                await db.create_keyspace("bank-east", home_region="east")
                async with db.transaction() as tx:
                    for i, balance in enumerate([990, 1010, 1000, 995, 1005, 1000]):
                        await tx.put("bank-east", b"acct-%04d" % i, b"%d" % balance)
            out = io.StringIO()
            code = await cluster_demo._run(_InProcess(cluster), 0.2, 1, 3, 1, out)
    assert "bank-east: 3 accounts, total 3000 (ok)" in out.getvalue(), out.getvalue()
    assert code == 0
