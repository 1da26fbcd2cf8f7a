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


async def test_learner_lag_is_that_of_learners_only(monkeypatch):
    # Each group's voters trail its leader by 500 ms, its learners by 200 ms: the home
    # region's followers of a data group (and the meta group's voters) used to be reported
    # as that region's "learner lag".
    from engine.config import default_local_cluster
    from engine.placement import placement

    cluster = default_local_cluster(("east", "west"), 2, 20000, wan_latency_ms={})
    groups = placement(cluster)
    leader_ts = 10_000_000_000

    async def status_of(_cluster):
        out = {n.id: {"groups": {}} for n in cluster.all_nodes()}
        for gid, p in groups.items():
            for node_id in p.conf.voters + p.conf.learners:
                leads = node_id == p.conf.voters[0]
                behind_ms = 0 if leads else 500 if node_id in p.conf.voters else 200
                out[node_id]["groups"][str(gid)] = {
                    "role": "leader" if leads else "follower",
                    "closed_ts": leader_ts - behind_ms * 1_000_000}
        return out

    monkeypatch.setattr(cluster_demo, "describe_all", status_of)
    lag = await cluster_demo._learner_lag(cluster)
    assert lag == {(gid, cluster.node(n).region): 200.0
                   for gid, p in groups.items() for n in p.conf.learners}
    assert lag  # every group of two regions has a learner in the other one
