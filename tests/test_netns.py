"""A cluster whose nodes live in separate network namespaces, each with its own address: nothing
in the node or the client is tied to loopback (ARCH §7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.netns import NetnsLab, netns_available
from engine.config import ClusterConfig, NodeAddress, NodeConfig, RegionConfig, dump_node_config

REPO = Path(__file__).resolve().parent.parent

CLIENT = textwrap.dedent("""
    import json, sys, trio
    import engine

    async def main(nodes):
        async with engine.connect(nodes, region="lab") as db:
            with trio.fail_after(60):
                await db.create_keyspace("netns")
                async with db.transaction() as tx:
                    for i in range(10):
                        await tx.put("netns", b"k%d" % i, b"v%d" % i)

                async def bump(tx):
                    v = int(await tx.get("netns", b"counter") or b"0")
                    await tx.put("netns", b"counter", b"%d" % (v + 1))

                for _ in range(5):
                    await db.run_transaction(bump)
                async with db.transaction() as tx:
                    rows = await tx.scan("netns")
        print(json.dumps({"rows": [[k.decode(), v.decode()] for k, v in rows]}))

    trio.run(main, sys.argv[1].split(","))
""")


@pytest.fixture
def lab():
    why = netns_available()
    if why is not None:
        if os.environ.get("MERIDIAN_REQUIRE_NETNS"):
            pytest.fail(f"MERIDIAN_REQUIRE_NETNS is set but {why}")
        pytest.skip(why)
    lab = NetnsLab(f"m{os.getpid() % 10000}", ["n1", "n2", "n3", "client"])
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def test_transactions_commit_through_nodes_in_their_own_namespaces(lab, tmp_path):
    nodes = tuple(NodeAddress(i, "lab", lab.addresses[f"n{i}"], 7100, lab.addresses[f"n{i}"],
                              7101) for i in (1, 2, 3))
    cluster = ClusterConfig(name="netns", regions=(RegionConfig("lab", nodes),))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    logs = []
    for node in nodes:
        cfg = NodeConfig(node_id=node.id, data_dir=str(tmp_path / f"n{node.id}"),
                         cluster=cluster)
        path = tmp_path / f"n{node.id}.toml"
        path.write_text(dump_node_config(cfg))
        log = open(tmp_path / f"n{node.id}.log", "wb")
        logs.append(log)
        lab.popen(f"n{node.id}", [sys.executable, "-m", "engine.cli", "node", "--config",
                                  str(path)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        addrs = ",".join(f"{n.client_host}:{n.client_port}" for n in nodes)
        out = lab.run("client", [sys.executable, "-c", CLIENT, addrs], timeout=120,
                      capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr + "".join(
            (tmp_path / f"n{i}.log").read_text() for i in (1, 2, 3))
        rows = dict(json.loads(out.stdout.strip().splitlines()[-1])["rows"])
        assert rows == {**{f"k{i}": f"v{i}" for i in range(10)}, "counter": "5"}
        # The nodes really listen on their namespace addresses, not on loopback.
        for node in nodes:
            assert f"{node.client_host}:{node.client_port}" in (
                tmp_path / f"n{node.id}.log").read_text()
    finally:
        for log in logs:
            log.close()
