"""``python -m bench ycsb --nodes``: a running cluster's data is not the benchmark's."""

from __future__ import annotations

import pytest
import trio

import engine
from bench.targets import TargetError, keyspace_for, meridian_target

from clusterthread import ClusterThread


def _keyspaces(nodes: list[str], region: str = "us-east") -> dict[str, bytes | None]:
    """Each keyspace of the cluster, with the value of its key ``user:alice``."""
    async def main():
        async with engine.connect(nodes, region=region) as db:
            return {ks.name: await db.read(ks.name, b"user:alice")
                    for ks in await db.list_keyspaces()}
    return trio.run(main)


def test_an_external_cluster_keeps_its_keyspaces_and_loses_the_benchmarks(tmp_path):
    # The benchmark used to load its records into a keyspace of its name that the cluster
    # had already, overwriting what was there, and left its own keyspaces behind.
    cluster = ClusterThread(seed=41)
    nodes = cluster.start()
    try:
        name = keyspace_for("us-east")

        async def create(drop: bool = False) -> None:
            async with engine.connect(nodes, region="us-east") as db:
                if drop:
                    await db.drop_keyspace(name)
                    return
                await db.create_keyspace(name)
                async with db.transaction() as tx:
                    await tx.put(name, b"user:alice", b"not the benchmark's")

        trio.run(create)
        with pytest.raises(TargetError, match=f"'{name}' already exists"):
            with meridian_target("external", workdir=str(tmp_path), nodes=nodes):
                pass
        assert _keyspaces(nodes) == {name: b"not the benchmark's"}

        trio.run(create, True)
        with meridian_target("external", workdir=str(tmp_path), nodes=nodes) as target:
            assert target.driver["keyspace"] == name
            assert _keyspaces(nodes) == {name: None}
        assert _keyspaces(nodes) == {}
    finally:
        cluster.stop()


def test_an_external_cluster_is_measured_in_its_own_region(tmp_path):
    # An external cluster without a region named us-east was refused ("the cluster has no
    # region(s) ['us-east']"): the benchmark now takes the region of the node it reached.
    cluster = ClusterThread(regions=("eu-west",), seed=43)
    nodes = cluster.start()
    try:
        with meridian_target("external", workdir=str(tmp_path), nodes=nodes) as target:
            assert target.driver["region"] == "eu-west"
            assert target.driver["keyspace"] == keyspace_for("eu-west")
            assert set(_keyspaces(nodes, "eu-west")) == {keyspace_for("eu-west")}
        with pytest.raises(TargetError, match=r"no region\(s\) \['us-east'\]"):
            with meridian_target("external", workdir=str(tmp_path), nodes=nodes,
                                 regions=("us-east",)):
                pass
        assert _keyspaces(nodes, "eu-west") == {}
    finally:
        cluster.stop()
