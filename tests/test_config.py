"""Tests of node and cluster configuration (engine.config): the documented example parses,
every validation rule rejects a bad document with the offending field's path in the message,
and dump/parse round-trips."""

from __future__ import annotations

import argparse

import copy
import dataclasses
import pickle
import re
import string
import textwrap
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import config as cfgmod
from engine.config import (
    ClusterConfig,
    ConfigError,
    KEY_PREFIX_SIZE,
    MAX_TXN_BYTES,
    MAX_WAN_LATENCY_MS,
    Limits,
    NodeAddress,
    NodeConfig,
    RegionConfig,
    default_local_cluster,
    dump_node_config,
    load_node_config,
    parse_node_config,
)
from engine.adjudicator import MAX_TXN_KEYS
from engine.errors import InvalidArgumentError, MeridianError


def example_toml() -> str:
    """The example configuration from the module docstring."""
    lines = cfgmod.__doc__.split("Example configuration::\n", 1)[1].splitlines()
    block = []
    for line in lines[1:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


BASE_TOML = """
node_id = 3
data_dir = "/data/meridian"

[cluster]
name = "test"
max_clock_offset_ms = 100
meta_regions = ["us-east"]

[cluster.limits]
max_txn_keys = 10

[cluster.wan_latency_ms]
us-east = { eu-west = 40 }

[cluster.regions.us-east]
nodes = [
    { id = 1, peer_address = "10.0.0.1:7100", client_address = "10.0.0.1:7200" },
    { id = 2, peer_address = "10.0.0.2:7100", client_address = "10.0.0.2:7200" },
]

[cluster.regions.eu-west]
nodes = [
    { id = 3, peer_address = "10.0.1.1:7100", client_address = "10.0.1.1:7200" },
    { id = 4, peer_address = "10.0.1.2:7100", client_address = "10.0.1.2:7200" },
]
"""


def base() -> dict:
    return tomllib.loads(BASE_TOML)


# --- the example and the happy path ----------------------------------------------------------


def test_the_documented_example_parses():
    cfg = parse_node_config(example_toml())
    c = cfg.cluster
    assert cfg.node_id == 4 and cfg.region == "eu-west"
    assert cfg.data_dir == "/var/lib/meridian" and cfg.log_level == "info"
    assert c.name == "prod"
    assert c.region_names == ("us-east", "eu-west", "ap-south")
    assert [n.id for n in c.all_nodes()] == list(range(1, 10))
    assert c.max_clock_offset_ms == 250 and c.max_clock_offset_ns == 250_000_000
    assert (c.tick_interval_ms, c.election_ticks, c.heartbeat_ticks) == (100, 10, 1)
    assert (c.raft_snapshot_every, c.raft_snapshot_keep) == (10_000, 1_000)
    assert c.limits == Limits()
    assert c.meta_regions == ("us-east", "eu-west", "ap-south")
    assert cfg.address == NodeAddress(4, "eu-west", "10.0.2.1", 7100, "10.0.2.1", 7200)
    assert c.node(8).peer_host == "fd00::3:2" and c.node(8).peer_address == "[fd00::3:2]:7100"
    assert c.latency_ms("us-east", "eu-west") == 35.0
    assert c.latency_ms("ap-south", "us-east") == 70.0
    assert c.latency_ms("eu-west", "ap-south") == 110.0
    assert c.latency_ms("eu-west", "eu-west") == 0.0


def test_the_example_matches_the_default_local_cluster_shape():
    example = parse_node_config(example_toml()).cluster
    local = default_local_cluster()
    assert example.region_names == local.region_names
    assert example.wan_latency_ms == local.wan_latency_ms
    assert [len(r.nodes) for r in example.regions] == [len(r.nodes) for r in local.regions]


def test_defaults_apply_to_optional_keys():
    cfg = parse_node_config(BASE_TOML)
    c = cfg.cluster
    assert cfg.log_level == "info" and cfg.raft_fsync == "async"
    assert (c.tick_interval_ms, c.election_ticks, c.heartbeat_ticks) == (100, 10, 1)
    assert c.limits == Limits(max_txn_keys=10)
    assert c.latency_ms("eu-west", "us-east") == 40.0  # an int in TOML, a float here
    assert isinstance(c.latency_ms("eu-west", "us-east"), float)
    assert c.meta_regions == ("us-east",)
    doc = base()
    del doc["cluster"]["meta_regions"], doc["cluster"]["wan_latency_ms"]
    c = parse_node_config(doc).cluster
    assert c.meta_regions == ("us-east", "eu-west")  # every region
    assert c.latency_ms("eu-west", "us-east") == 0.0  # unlisted pair


def test_cluster_lookups():
    c = parse_node_config(BASE_TOML).cluster
    assert [n.id for n in c.nodes_in("eu-west")] == [3, 4]
    assert c.node(2).client_address == "10.0.0.2:7200"
    with pytest.raises(InvalidArgumentError, match="no node 9"):
        c.node(9)
    with pytest.raises(InvalidArgumentError, match="no region 'mars'"):
        c.nodes_in("mars")
    with pytest.raises(InvalidArgumentError, match="no region 'mars'"):
        c.latency_ms("us-east", "mars")


def test_error_classes():
    assert issubclass(ConfigError, MeridianError) and issubclass(ConfigError, ValueError)


def test_configs_are_frozen_hashable_and_picklable():
    cfg = parse_node_config(example_toml())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node_id = 5
    with pytest.raises(TypeError):
        cfg.cluster.wan_latency_ms[frozenset(("us-east", "eu-west"))] = 1.0
    assert hash(cfg) == hash(parse_node_config(example_toml()))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg
    assert dataclasses.replace(cfg, log_level="debug").cluster == cfg.cluster


# --- validation: one failing case per rule ----------------------------------------------------


def _set(path: str, value):
    """A mutation setting ``doc[a][b]...`` (path items split on '/'; ints index arrays)."""

    def mutate(doc):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target = doc
        for p in parents:
            target = target[p]
        target[last] = value

    return mutate


def _del(path: str):
    def mutate(doc):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target = doc
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


def _all(*mutations):
    def mutate(doc):
        for m in mutations:
            m(doc)

    return mutate


def _rename_region(old: str, new: str):
    def mutate(doc):
        regions = doc["cluster"]["regions"]
        regions[new] = regions.pop(old)

    return mutate


N0 = "cluster/regions/us-east/nodes/0"
N1 = "cluster/regions/us-east/nodes/1"
E0 = "cluster/regions/eu-west/nodes/0"
P_N0 = "cluster.regions.us-east.nodes[0]"
P_N1 = "cluster.regions.us-east.nodes[1]"
P_E0 = "cluster.regions.eu-west.nodes[0]"

FAILING = [
    # unknown keys: typos are errors, with the allowed keys listed
    ("unknown top-level key", _set("nodeid", 3), "nodeid", "did you mean 'node_id'"),
    ("unknown cluster key", _set("cluster/max_clock_offset", 9), "cluster.max_clock_offset",
     "allowed keys: name, regions, max_clock_offset_ms"),
    ("unknown limits key", _set("cluster/limits/max_txn_key", 9), "cluster.limits.max_txn_key",
     "did you mean 'max_txn_keys'"),
    ("unknown region key", _set("cluster/regions/us-east/voters", []),
     "cluster.regions.us-east.voters", "allowed keys: nodes"),
    ("unknown node key", _set(f"{N0}/address", "a:1"), f"{P_N0}.address",
     "allowed keys: id, peer_address, client_address"),
    ("odd key is quoted", _set("cluster/max offset", 1), 'cluster."max offset"', "unknown key"),
    # required keys
    ("missing node_id", _del("node_id"), "node_id", "missing"),
    ("missing data_dir", _del("data_dir"), "data_dir", "missing"),
    ("missing cluster", _del("cluster"), "cluster", "missing"),
    ("missing cluster name", _del("cluster/name"), "cluster.name", "missing"),
    ("missing regions", _del("cluster/regions"), "cluster.regions", "missing"),
    ("missing nodes", _del("cluster/regions/us-east/nodes"), "cluster.regions.us-east.nodes",
     "missing"),
    ("missing node id", _del(f"{N0}/id"), f"{P_N0}.id", "missing"),
    ("missing peer address", _del(f"{N0}/peer_address"), f"{P_N0}.peer_address", "missing"),
    ("missing client address", _del(f"{N0}/client_address"), f"{P_N0}.client_address",
     "missing"),
    # the node itself
    ("node_id a string", _set("node_id", "3"), "node_id", 'expected an integer, got "3"'),
    ("node_id a bool", _set("node_id", True), "node_id", "expected an integer, got true"),
    ("node_id not in cluster", _set("node_id", 9), "node_id", "not in the cluster"),
    ("data_dir empty", _set("data_dir", ""), "data_dir", "must not be empty"),
    ("data_dir not a string", _set("data_dir", 5), "data_dir", "expected a string, got 5"),
    ("data_dir with NUL", _set("data_dir", "a\x00b"), "data_dir", "NUL"),
    ("log level", _set("log_level", "verbose"), "log_level", "expected one of debug, info"),
    ("raft fsync mode", _set("raft_fsync", "later"), "raft_fsync",
     'expected one of loop, async, thread, got "later"'),
    # cluster
    ("cluster not a table", _set("cluster", 3), "cluster", "expected a table, got 3"),
    ("cluster name empty", _set("cluster/name", ""), "cluster.name", "non-empty"),
    ("cluster name spaces", _set("cluster/name", "my cluster"), "cluster.name",
     '"my cluster"'),
    ("no regions", _set("cluster/regions", {}), "cluster.regions", "at least one region"),
    ("regions not a table", _set("cluster/regions", ["us-east"]), "cluster.regions",
     "expected a table of regions, got an array"),
    ("region name upper case", _rename_region("us-east", "US_East"), "cluster.regions.US_East",
     "a-z, 0-9 and '-'"),
    ("region name empty", _rename_region("us-east", ""), 'cluster.regions.""', "1-63"),
    ("region name too long", _rename_region("us-east", "r" * 64), "cluster.regions." + "r" * 64,
     "1-63 characters"),
    ("region not a table", _set("cluster/regions/us-east", 1), "cluster.regions.us-east",
     "expected a table"),
    ("region without nodes", _set("cluster/regions/us-east/nodes", []),
     "cluster.regions.us-east.nodes", "at least one node"),
    ("nodes not an array", _set("cluster/regions/us-east/nodes", "n1"),
     "cluster.regions.us-east.nodes", "expected an array of tables"),
    ("node not a table", _set(N1, 7), P_N1, "expected a table, got 7"),
    ("node id zero", _set(f"{N0}/id", 0), f"{P_N0}.id", "must be at least 1, got 0"),
    ("node id negative", _set(f"{N0}/id", -4), f"{P_N0}.id", "must be at least 1"),
    ("node id float", _set(f"{N0}/id", 1.0), f"{P_N0}.id", "expected an integer, got 1.0"),
    # Past TOML's 64-bit integers, which tomllib reads all the same: too large, not too small.
    ("node id beyond 64 bits", _set(f"{N0}/id", 2**64 + 1), f"{P_N0}.id",
     f"must be at most {2**63 - 1}, got {2**64 + 1}"),
    ("duplicate node id", _set(f"{E0}/id", 2), f"{P_E0}.id",
     "node id 2 is already used by nodes[1] of region us-east"),
    # addresses
    ("address not a string", _set(f"{N1}/peer_address", 12), f"{P_N1}.peer_address",
     'expected "host:port", got 12'),
    ("address without port", _set(f"{N0}/peer_address", "localhost"), f"{P_N0}.peer_address",
     'expected "host:port", got "localhost"'),
    ("address empty host", _set(f"{N0}/client_address", ":7100"), f"{P_N0}.client_address",
     "the host is empty"),
    ("port zero", _set(f"{N0}/peer_address", "h:0"), f"{P_N0}.peer_address",
     "the port must be in 1..65535, got 0"),
    ("port too large", _set(f"{N0}/peer_address", "h:65536"), f"{P_N0}.peer_address",
     "1..65535, got 65536"),
    # Thousands of digits: more than int() converts (a ValueError traceback from the node).
    ("port of thousands of digits", _set(f"{N0}/peer_address", "h:" + "7" * 5000),
     f"{P_N0}.peer_address", 'the port must be in 1..65535, got "7777'),
    ("port with leading zeros", _set(f"{N0}/client_address", "h:" + "0" * 5000 + "65536"),
     f"{P_N0}.client_address", "the port must be in 1..65535, got 65536"),
    ("port not a number", _set(f"{N0}/peer_address", "h:http"), f"{P_N0}.peer_address",
     'expected "host:port"'),
    ("ipv6 without brackets", _set(f"{N0}/peer_address", "fd00::1:7100"),
     f"{P_N0}.peer_address", "in brackets"),
    ("host with a space", _set(f"{N0}/peer_address", "my host:7100"), f"{P_N0}.peer_address",
     "host name or IP address"),
    ("duplicate address across nodes", _set(f"{E0}/client_address", "10.0.0.1:7100"),
     f"{P_E0}.client_address", "already the peer_address of node 1 (region us-east)"),
    ("duplicate address within a node", _set(f"{N0}/client_address", "10.0.0.1:7100"),
     f"{P_N0}.client_address", "already the peer_address of node 1"),
    ("duplicate address, host case",
     _all(_set(f"{N0}/peer_address", "h:1"), _set(f"{N1}/peer_address", "H:1")),
     f"{P_N1}.peer_address", "H:1 is already the peer_address of node 1"),
    ("duplicate address, two spellings of one IPv6 address",
     _all(_set(f"{N0}/peer_address", "[fd00::1]:1"),
          _set(f"{N1}/peer_address", "[FD00:0:0:0:0:0:0:0001]:1")),
     f"{P_N1}.peer_address", "[FD00:0:0:0:0:0:0:0001]:1 is already the peer_address of node 1"),
    # timing
    ("clock offset zero", _set("cluster/max_clock_offset_ms", 0), "cluster.max_clock_offset_ms",
     "must be at least 1"),
    ("clock offset beyond 64 bits", _set("cluster/max_clock_offset_ms", 2**64),
     "cluster.max_clock_offset_ms", f"must be at most {2**63 - 1}, got {2**64}"),
    ("clock offset float", _set("cluster/max_clock_offset_ms", 2.5),
     "cluster.max_clock_offset_ms", "expected an integer"),
    ("clock offset string", _set("cluster/max_clock_offset_ms", "250ms"),
     "cluster.max_clock_offset_ms", 'got "250ms"'),
    ("tick interval negative", _set("cluster/tick_interval_ms", -10), "cluster.tick_interval_ms",
     "must be in 1..60000, got -10"),
    ("heartbeat zero", _set("cluster/heartbeat_ticks", 0), "cluster.heartbeat_ticks",
     "must be in 1..100000, got 0"),
    ("tick interval absurd", _set("cluster/tick_interval_ms", 2**62), "cluster.tick_interval_ms",
     "must be in 1..60000"),
    ("snapshot every zero", _set("cluster/raft_snapshot_every", 0),
     "cluster.raft_snapshot_every", "must be in 1..1000000000, got 0"),
    ("snapshot every float", _set("cluster/raft_snapshot_every", 1e4),
     "cluster.raft_snapshot_every", "expected an integer"),
    ("election absurd", _set("cluster/election_ticks", 2**40), "cluster.election_ticks",
     "must be in 1..100000"),
    ("election timeout over an hour", _set("cluster/election_ticks", 40_000),
     "cluster.election_ticks", "is over an hour"),
    ("election not above heartbeat", _set("cluster/election_ticks", 1), "cluster.election_ticks",
     "must be greater than heartbeat_ticks (1), got 1"),
    # limits
    ("limits not a table", _set("cluster/limits", 5), "cluster.limits", "expected a table"),
    ("txn keys zero", _set("cluster/limits/max_txn_keys", 0), "cluster.limits.max_txn_keys",
     "must be in 1..65536"),
    ("key size above the store's", _set("cluster/limits/max_key_size", 251),
     "cluster.limits.max_key_size", "must be in 1..250, got 251"),
    # The size counts the keyspace prefix: a cluster left no room for a key would refuse
    # every write, its client saying that the limit is 0 bytes or less.
    ("key size within the keyspace prefix", _set("cluster/limits/max_key_size", 4),
     "cluster.limits.max_key_size", "must be more than 4: it counts the 4-byte keyspace prefix"),
    ("value size above the store's", _set("cluster/limits/max_value_size", 64 << 20),
     "cluster.limits.max_value_size", "must be in 1.."),
    ("txn bytes below one write", _set("cluster/limits/max_txn_bytes", 1000),
     "cluster.limits.max_txn_bytes", "must be at least max_key_size + max_value_size"),
    # A transaction within larger limits than these fails only at commit: its request is
    # over the RPC frame, or over the adjudicator's keys per request.
    ("txn bytes over half a frame", _set("cluster/limits/max_txn_bytes", 40 << 20),
     "cluster.limits.max_txn_bytes", "must be in 1..8388608"),
    ("txn keys over the adjudicator's", _set("cluster/limits/max_txn_keys", 70_000),
     "cluster.limits.max_txn_keys", "must be in 1..65536"),
    ("lifetime zero", _set("cluster/limits/max_txn_lifetime_s", 0),
     "cluster.limits.max_txn_lifetime_s", "must be greater than 0"),
    ("lifetime negative", _set("cluster/limits/max_txn_lifetime_s", -1.5),
     "cluster.limits.max_txn_lifetime_s", "must be greater than 0"),
    ("lifetime infinite", _set("cluster/limits/max_txn_lifetime_s", float("inf")),
     "cluster.limits.max_txn_lifetime_s", "finite"),
    ("lifetime nan", _set("cluster/limits/max_txn_lifetime_s", float("nan")),
     "cluster.limits.max_txn_lifetime_s", "finite"),
    ("lifetime a string", _set("cluster/limits/max_txn_lifetime_s", "60s"),
     "cluster.limits.max_txn_lifetime_s", "expected a number"),
    ("lifetime beyond any float", _set("cluster/limits/max_txn_lifetime_s", 10**400),
     "cluster.limits.max_txn_lifetime_s", "must be a finite number"),
    # WAN latencies
    ("latency not a table", _set("cluster/wan_latency_ms", [1]), "cluster.wan_latency_ms",
     "expected a table"),
    ("latency row not a table", _set("cluster/wan_latency_ms/us-east", 40),
     "cluster.wan_latency_ms.us-east", "expected a table of region = milliseconds"),
    ("latency unknown first region", _set("cluster/wan_latency_ms/mars", {"us-east": 1}),
     "cluster.wan_latency_ms.mars", 'unknown region "mars"; regions: us-east, eu-west'),
    ("latency unknown second region", _set("cluster/wan_latency_ms/us-east/mars", 1),
     "cluster.wan_latency_ms.us-east.mars", 'unknown region "mars"'),
    ("latency to itself", _set("cluster/wan_latency_ms/us-east/us-east", 1),
     "cluster.wan_latency_ms.us-east.us-east", "to itself"),
    ("latency pair given both ways", _set("cluster/wan_latency_ms/eu-west", {"us-east": 40}),
     "cluster.wan_latency_ms.eu-west.us-east", "already given, as us-east = { eu-west = ... }"),
    ("latency negative", _set("cluster/wan_latency_ms/us-east/eu-west", -1),
     "cluster.wan_latency_ms.us-east.eu-west", "must be 0 or more"),
    ("latency a string", _set("cluster/wan_latency_ms/us-east/eu-west", "40ms"),
     "cluster.wan_latency_ms.us-east.eu-west", "expected a number"),
    ("latency beyond any float", _set("cluster/wan_latency_ms/us-east/eu-west", -10**400),
     "cluster.wan_latency_ms.us-east.eu-west", "must be a finite number"),
    # meta regions
    ("meta regions not an array", _set("cluster/meta_regions", "us-east"),
     "cluster.meta_regions", "expected an array"),
    ("meta region unknown", _set("cluster/meta_regions", ["us-east", "mars"]),
     "cluster.meta_regions[1]", 'unknown region "mars"'),
    ("meta region repeated", _set("cluster/meta_regions", ["eu-west", "eu-west"]),
     "cluster.meta_regions[1]", "listed twice"),
]


@pytest.mark.parametrize(
    "mutate, field, fragment", [c[1:] for c in FAILING], ids=[c[0] for c in FAILING]
)
def test_each_rule_rejects_with_the_field_path(mutate, field, fragment):
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_node_config(doc)
    err = info.value
    assert err.field == field
    assert str(err).startswith(f"<string>: {field}: ")
    assert fragment in str(err)
    assert err.path is None


@pytest.mark.parametrize(
    "text, line, column",
    [
        ("node_id = 1\ndata_dir = \n", 2, 12),
        ("node_id = 1\n[cluster]\nname = 'a'\n[cluster]\n", 4, 9),
        ('node_id = 1\ndata_dir = "C:\\data"\n', 2, 17),
    ],
)
def test_toml_syntax_errors_say_where(text, line, column):
    with pytest.raises(ConfigError) as info:
        parse_node_config(text, source="node.toml")
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert err.field is None
    assert str(err).startswith(f"node.toml: line {line}, column {column}: invalid TOML: ")


def test_an_integer_too_long_to_read_is_a_config_error():
    # tomllib lets int() refuse an integer of more digits than Python converts: a ValueError,
    # not a TOMLDecodeError, that ended `meridian node` with a traceback.
    text = BASE_TOML.replace("node_id = 3", "node_id = " + "3" * 5000)
    with pytest.raises(ConfigError) as info:
        parse_node_config(text, source="node.toml")
    assert str(info.value).startswith("node.toml: invalid TOML: an integer of more than ")
    assert "sys." not in str(info.value)


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "{ a = " * 5000 + "1" + " }" * 5000],
                         ids=["arrays", "inline tables"])
def test_toml_nested_too_deeply_is_a_config_error(nested):
    # tomllib recurses once per level: a RecursionError traceback from the node.
    with pytest.raises(ConfigError, match="^node.toml: invalid TOML: .* nested too deeply$"):
        parse_node_config(f"node_id = {nested}\n", source="node.toml")


def test_toml_error_at_the_end_of_the_document():
    with pytest.raises(ConfigError, match=r"invalid TOML: .*end of document"):
        parse_node_config("node_id =")


def test_parse_rejects_something_that_is_neither_text_nor_a_table():
    with pytest.raises(ConfigError, match="expected TOML text or a mapping, got bytes"):
        parse_node_config(BASE_TOML.encode())


def test_load_names_the_file(tmp_path):
    good = tmp_path / "node.toml"
    good.write_text(BASE_TOML)
    assert load_node_config(good) == parse_node_config(BASE_TOML)
    assert load_node_config(str(good)) == parse_node_config(BASE_TOML)

    bad = tmp_path / "bad.toml"
    bad.write_text(BASE_TOML.replace("node_id = 3", "node_id = 9"))
    with pytest.raises(ConfigError) as info:
        load_node_config(bad)
    assert info.value.path == str(bad)
    assert info.value.field == "node_id"
    assert str(info.value).startswith(f"{bad}: node_id: node 9 is not in the cluster")

    broken = tmp_path / "broken.toml"
    broken.write_text("node_id = 1\nnode_id = 2\n")
    with pytest.raises(ConfigError) as info:
        load_node_config(broken)
    assert info.value.path == str(broken) and info.value.line == 2

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'data_dir = "/caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_node_config(latin1)
    assert info.value.path == str(latin1)

    with pytest.raises(FileNotFoundError):
        load_node_config(tmp_path / "missing.toml")


def test_a_file_too_large_for_a_configuration_is_refused_unread(tmp_path):
    # A wrong path (a store's data file, a log, /dev/zero) used to be read whole into memory.
    huge = tmp_path / "data.mdb"
    with open(huge, "wb") as f:
        f.truncate(cfgmod.MAX_CONFIG_BYTES + 1)  # sparse: no time to write
    with pytest.raises(ConfigError, match=f"larger than {cfgmod.MAX_CONFIG_BYTES} bytes") as info:
        load_node_config(huge)
    assert info.value.path == str(huge)


def test_a_byte_order_mark_is_named_not_an_invalid_statement(tmp_path):
    # Some editors start a UTF-8 file with U+FEFF, which TOML does not allow: tomllib's
    # "Invalid statement" at line 1, column 1 points at nothing the user can see.
    marked = tmp_path / "node.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + BASE_TOML.encode())
    with pytest.raises(ConfigError) as info:
        load_node_config(marked)
    assert info.value.path == str(marked) and info.value.line == 1
    assert "byte order mark" in info.value.reason
    with pytest.raises(ConfigError, match="byte order mark"):
        parse_node_config("\ufeff" + BASE_TOML)


def test_the_dataclasses_check_themselves_with_relative_paths():
    with pytest.raises(ConfigError) as info:
        Limits(max_txn_keys=0)
    assert info.value.field == "max_txn_keys"
    with pytest.raises(ConfigError) as info:
        Limits(max_txn_lifetime_s=10**400)  # too large for a float
    assert info.value.field == "max_txn_lifetime_s"
    with pytest.raises(ConfigError) as info:
        NodeAddress(1, "us-east", "h", 99999, "h", 2)
    assert info.value.field == "peer_port"
    node = NodeAddress(1, "us-east", "h", 1, "h", 2)
    with pytest.raises(ConfigError) as info:
        RegionConfig("eu-west", (node,))
    assert info.value.field == "nodes[0].region"
    region = RegionConfig("us-east", [node])
    assert region.nodes == (node,)  # a list is stored as a tuple
    with pytest.raises(ConfigError) as info:
        ClusterConfig("c", (region, region))
    assert info.value.field == "regions.us-east"
    with pytest.raises(ConfigError) as info:
        ClusterConfig("c", (region,), wan_latency_ms={("us-east", "eu-west"): 1.0})
    assert info.value.field == "wan_latency_ms.us-east.eu-west"
    cluster = ClusterConfig("c", (region,))
    with pytest.raises(ConfigError) as info:
        NodeConfig(2, "/d", cluster)
    assert info.value.field == "node_id"
    with pytest.raises(ConfigError) as info:
        NodeConfig(1, "/d", "cluster")
    assert info.value.field == "cluster"


def test_latency_keys_may_be_tuples_or_frozensets():
    a = default_local_cluster(wan_latency_ms={("us-east", "eu-west"): 5})
    b = default_local_cluster(wan_latency_ms={frozenset(("eu-west", "us-east")): 5.0})
    assert a == b
    assert a.latency_ms("eu-west", "us-east") == 5.0
    assert a.latency_ms("us-east", "ap-south") == 0.0
    with pytest.raises(ConfigError, match="already given"):
        default_local_cluster(
            wan_latency_ms={("us-east", "eu-west"): 5, ("eu-west", "us-east"): 5}
        )
    with pytest.raises(ConfigError, match="pair of two different region names"):
        default_local_cluster(wan_latency_ms={("us-east",): 5})
    with pytest.raises(ConfigError, match="at most 10000") as info:
        default_local_cluster(wan_latency_ms={("us-east", "eu-west"): 35_000})  # seconds?
    assert info.value.field == "wan_latency_ms.us-east.eu-west"


def test_the_command_lines_latencies_are_bounded_and_each_pair_given_once():
    from engine.cli import _latencies

    assert _latencies("a:b=35, a:c=70") == {("a", "b"): 35.0, ("a", "c"): 70.0}
    for text in ("a:b=1,a:b=2", "a:b=1,b:a=1", "a:b=10001"):
        with pytest.raises(argparse.ArgumentTypeError):
            _latencies(text)


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_of_the_example_and_the_defaults():
    for cfg in (
        parse_node_config(example_toml()),
        parse_node_config(BASE_TOML),
        NodeConfig(5, "/tmp/n5", default_local_cluster(), "debug"),
        NodeConfig(1, 'C:\\odd "dir"\n\t\x01é', default_local_cluster(["solo"], 1)),
    ):
        text = dump_node_config(cfg)
        assert parse_node_config(text) == cfg, text
        assert dump_node_config(parse_node_config(text)) == text


def test_dump_rejects_other_objects():
    with pytest.raises(InvalidArgumentError):
        dump_node_config(default_local_cluster())


_region_names = st.lists(
    st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12),
    min_size=1, max_size=4, unique=True,
)
_hosts = st.sampled_from(["127.0.0.1", "10.1.2.3", "node-1.example.com", "::1", "fd00::7%eth0"])
_latency = st.floats(min_value=0, max_value=MAX_WAN_LATENCY_MS, allow_nan=False,
                     allow_infinity=False)


@st.composite
def node_configs(draw):
    names = draw(_region_names)
    sizes = [draw(st.integers(1, 3)) for _ in names]
    total = sum(sizes)
    ids = draw(st.lists(st.integers(1, 2**63 - 1), min_size=total, max_size=total, unique=True))
    ports = draw(
        st.lists(st.integers(1, 65535), min_size=2 * total, max_size=2 * total, unique=True)
    )
    regions, k = [], 0
    for name, size in zip(names, sizes):
        nodes = []
        for _ in range(size):
            nodes.append(
                NodeAddress(ids[k], name, draw(_hosts), ports[2 * k], draw(_hosts),
                            ports[2 * k + 1])
            )
            k += 1
        regions.append(RegionConfig(name, tuple(nodes)))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    latencies = {draw(st.sampled_from([(a, b), (b, a)])): draw(_latency) for a, b in chosen}
    key_size = draw(st.integers(KEY_PREFIX_SIZE + 1, 250))
    value_size = draw(st.integers(1, 4 << 20))
    limits = Limits(
        max_txn_keys=draw(st.integers(1, MAX_TXN_KEYS)),
        max_txn_bytes=draw(st.integers(key_size + value_size, MAX_TXN_BYTES)),
        max_key_size=key_size,
        max_value_size=value_size,
        max_txn_lifetime_s=draw(st.floats(min_value=1e-9, max_value=1e9)),
    )
    heartbeat = draw(st.integers(1, 100))
    cluster = ClusterConfig(
        name=draw(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)),
        regions=tuple(regions),
        max_clock_offset_ms=draw(st.integers(1, 10**6)),
        tick_interval_ms=draw(st.integers(1, 3600)),
        election_ticks=draw(st.integers(max(heartbeat + 1, 3), 1000)),
        heartbeat_ticks=heartbeat,
        raft_snapshot_every=draw(st.integers(1, 10**9)),
        wan_latency_ms=latencies,
        limits=limits,
        meta_regions=tuple(draw(st.permutations(names))[: draw(st.integers(0, len(names)))]),
    )
    data_dir = draw(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=30)
    )
    return NodeConfig(
        node_id=draw(st.sampled_from(ids)),
        data_dir=data_dir,
        cluster=cluster,
        log_level=draw(st.sampled_from(cfgmod.LOG_LEVELS)),
        raft_fsync=draw(st.sampled_from(cfgmod.RAFT_FSYNC_MODES)),
    )


@settings(max_examples=150, deadline=None)
@given(node_configs())
def test_round_trip_property(cfg):
    text = dump_node_config(cfg)
    assert parse_node_config(text) == cfg


# --- default_local_cluster --------------------------------------------------------------------


def test_default_local_cluster_shape():
    c = default_local_cluster()
    assert c.region_names == ("us-east", "eu-west", "ap-south")
    assert [[n.id for n in r.nodes] for r in c.regions] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    nodes = c.all_nodes()
    assert all(n.peer_host == n.client_host == "127.0.0.1" for n in nodes)
    ports = [p for n in nodes for p in (n.peer_port, n.client_port)]
    assert ports == list(range(cfgmod.DEFAULT_BASE_PORT, cfgmod.DEFAULT_BASE_PORT + 18))
    assert c.latency_ms("us-east", "eu-west") == 35.0
    assert c.latency_ms("us-east", "ap-south") == 70.0
    assert c.latency_ms("eu-west", "ap-south") == 110.0
    assert c.meta_regions == c.region_names
    assert c.limits == Limits()
    assert (c.max_clock_offset_ms, c.tick_interval_ms) == (250, 100)
    assert (c.election_ticks, c.heartbeat_ticks) == (10, 1)


def test_default_local_cluster_variants():
    c = default_local_cluster(["a", "b", "c", "d"], nodes_per_region=1, base_port=9000,
                              host="::1")
    assert [n.peer_address for n in c.all_nodes()] == [
        "[::1]:9000", "[::1]:9002", "[::1]:9004", "[::1]:9006"
    ]
    assert c.latency_ms("a", "b") == 35.0 and c.latency_ms("a", "c") == 70.0
    assert c.latency_ms("a", "d") == 110.0 and c.latency_ms("c", "d") == 110.0
    one = default_local_cluster(["solo"], nodes_per_region=5)
    assert len(one.all_nodes()) == 5 and dict(one.wan_latency_ms) == {}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(regions="us-east"), InvalidArgumentError, "not the string"),
        (dict(nodes_per_region=0), InvalidArgumentError, "nodes_per_region"),
        (dict(base_port=65530), InvalidArgumentError, "base_port"),
        (dict(base_port=0), InvalidArgumentError, "base_port"),
        (dict(base_port="7100"), InvalidArgumentError, "base_port"),
        (dict(regions=["us-east", "Bad"]), ConfigError, re.escape("regions[1]: a region name")),
        (dict(regions=["a", "a"]), ConfigError, "regions.a: the region is listed twice"),
        (dict(regions=[]), ConfigError, "at least one region"),
        (dict(host="a host"), ConfigError, "host: expected a host name"),
    ],
)
def test_default_local_cluster_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        default_local_cluster(**kwargs)
