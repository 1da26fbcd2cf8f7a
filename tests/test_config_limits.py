"""Tests of configuration limits that other parts of the system depend on: the number of
regions (placement numbers each region's groups from a fixed block of ids) and of nodes (every
node is a member of the meta group), the length of the cluster name (sent in every transport
handshake), and hosts that are IPv6 addresses."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, default_local_cluster, parse_node_config
from engine.placement import placement
from raft.tcp import TcpOptions
from raft.wire import MAX_CLUSTER_NAME


def _node_toml(name: str = "c") -> str:
    return (
        'node_id = 1\ndata_dir = "/tmp/x"\n[cluster]\n'
        f'name = "{name}"\n'
        "[cluster.regions.a]\n"
        'nodes = [{ id = 1, peer_address = "127.0.0.1:7100", client_address = "127.0.0.1:7101" }]\n'
    )


def test_as_many_regions_as_group_ids_allow_place_every_group_apart():
    regions = [f"r{i}" for i in range(100)]
    cluster = default_local_cluster(regions, 1, base_port=1000, wan_latency_ms={})
    groups = placement(cluster)
    assert len(groups) == 1 + 2 * len(regions)  # meta, a data and a spread group per region


def test_more_regions_than_group_ids_allow_is_a_config_error():
    # A 101st region's data group would take the id of the first region's spread group.
    regions = [f"r{i}" for i in range(101)]
    with pytest.raises(ConfigError, match=r"^regions: .*at most 100 regions, got 101"):
        default_local_cluster(regions, 1, base_port=1000, wan_latency_ms={})


def test_a_cluster_name_the_transport_cannot_carry_is_a_config_error():
    long_name = "c" * (MAX_CLUSTER_NAME + 1)
    with pytest.raises(ValueError):  # what a node would hit at start
        TcpOptions(cluster=long_name)
    with pytest.raises(ConfigError, match=rf"cluster\.name: .*at most {MAX_CLUSTER_NAME} "):
        parse_node_config(_node_toml(long_name))
    longest = "c" * MAX_CLUSTER_NAME
    cfg = parse_node_config(_node_toml(longest))
    assert cfg.cluster.name == longest
    TcpOptions(cluster=cfg.cluster.name)


@pytest.mark.parametrize("address", ["[fd00::3:1::2]:7100", "[a:b]:7100", "[:]:7100",
                                     "[fd00:::1]:7100"])
def test_a_bracketed_host_that_is_no_ipv6_address_is_a_config_error(address):
    text = _node_toml().replace('"127.0.0.1:7100"', f'"{address}"')
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.peer_address: .*must be an IPv6 address"):
        parse_node_config(text)


@pytest.mark.parametrize("address", ["[::1]:7100", "[fd00::3:1]:7100", "[fe80::1%eth0]:7100",
                                     "[::ffff:10.0.0.1]:7100"])
def test_ipv6_addresses_in_brackets_are_still_accepted(address):
    text = _node_toml().replace('"127.0.0.1:7100"', f'"{address}"')
    assert parse_node_config(text).address.peer_address == address


def test_a_host_given_in_code_with_a_colon_must_be_an_ipv6_address():
    from engine.config import NodeAddress

    with pytest.raises(ConfigError, match=r"^peer_host: .*must be an IPv6 address"):
        NodeAddress(1, "a", "example.com:80", 7100, "127.0.0.1", 7101)


def test_more_nodes_than_a_group_may_have_members_is_a_config_error():
    from engine.config import ClusterConfig, NodeAddress, RegionConfig
    from raft.types import MAX_MEMBERS

    def cluster(n):
        nodes = tuple(NodeAddress(i + 1, "a", f"h{i}", 1, f"h{i}", 2) for i in range(n))
        return ClusterConfig("c", (RegionConfig("a", nodes),))

    # Every node is a member of the meta group, whose snapshot holds MAX_MEMBERS at most.
    meta = placement(cluster(MAX_MEMBERS))[1].conf
    assert len(meta.voters) + len(meta.learners) == MAX_MEMBERS
    with pytest.raises(ConfigError, match=rf"^regions: .*at most {MAX_MEMBERS} nodes, "
                                          rf"got {MAX_MEMBERS + 1}"):
        cluster(MAX_MEMBERS + 1)
