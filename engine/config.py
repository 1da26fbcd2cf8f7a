"""Node and cluster configuration, read from TOML and validated up front (ARCH §4, §5.8, §7).

A node reads one file: who it is (``node_id``, ``data_dir``) and the whole cluster's layout —
regions, their nodes and addresses, the simulated WAN latencies between regions, the clock and
Raft timing, and the transaction limits. Every node of a cluster should be given the same
``[cluster]`` table.

Validation happens once, at load, and is strict: an unknown key is an error (a misspelt
setting must never fall back silently to its default), as is a value of the wrong type or out
of range. Each error is a :class:`ConfigError` that names the offending field by its path in
the document, for example::

    node.toml: cluster.regions.eu-west.nodes[1].peer_address: expected "host:port", got 12

Array indexes in paths count from 0. The dataclasses check their own fields when constructed
in code too, with paths relative to their own table.

Example configuration::

    # A node of a three-region cluster with three nodes per region.
    node_id = 4                     # this node: one of the ids listed below
    data_dir = "/var/lib/meridian"  # the node's data directory
    log_level = "info"              # debug | info | warning | error | critical
    raft_fsync = "async"            # async | loop | thread: who fdatasyncs the Raft log
    log_file = "/var/log/meridian/node-4.log"  # optional; without it, the log goes to stderr
    log_max_bytes = 16777216        # the log file is rotated at this size
    log_backups = 3                 # rotated files kept: node-4.log.1 .. node-4.log.3

    [cluster]
    name = "prod"
    max_clock_offset_ms = 250       # beyond this skew, nodes refuse to serve (ARCH §9)
    tick_interval_ms = 100          # length of one Raft tick
    election_ticks = 10             # must be greater than heartbeat_ticks
    heartbeat_ticks = 1
    raft_snapshot_every = 10000     # entries applied between two compactions of a group's log
    meta_regions = ["us-east", "eu-west", "ap-south"]

    [cluster.limits]                # every key is optional; these are the defaults
    max_txn_keys = 1000
    max_txn_bytes = 4194304
    max_key_size = 250
    max_value_size = 1048576
    max_txn_lifetime_s = 60.0

    [cluster.wan_latency_ms]        # one-way, per unordered pair of regions
    us-east = { eu-west = 35.0, ap-south = 70.0 }
    eu-west = { ap-south = 110.0 }

    [cluster.regions.us-east]
    nodes = [
        { id = 1, peer_address = "10.0.1.1:7100", client_address = "10.0.1.1:7200" },
        { id = 2, peer_address = "10.0.1.2:7100", client_address = "10.0.1.2:7200" },
        { id = 3, peer_address = "10.0.1.3:7100", client_address = "10.0.1.3:7200" },
    ]

    [cluster.regions.eu-west]
    nodes = [
        { id = 4, peer_address = "10.0.2.1:7100", client_address = "10.0.2.1:7200" },
        { id = 5, peer_address = "10.0.2.2:7100", client_address = "10.0.2.2:7200" },
        { id = 6, peer_address = "10.0.2.3:7100", client_address = "10.0.2.3:7200" },
    ]

    # Arrays of tables work as well as inline arrays; IPv6 hosts go in brackets.
    [[cluster.regions.ap-south.nodes]]
    id = 7
    peer_address = "[fd00::3:1]:7100"
    client_address = "[fd00::3:1]:7200"

    [[cluster.regions.ap-south.nodes]]
    id = 8
    peer_address = "[fd00::3:2]:7100"
    client_address = "[fd00::3:2]:7200"

    [[cluster.regions.ap-south.nodes]]
    id = 9
    peer_address = "[fd00::3:3]:7100"
    client_address = "[fd00::3:3]:7200"

Fields
------
Top level: ``node_id`` (required; an id listed in the cluster), ``data_dir`` (required;
non-empty), ``log_level`` (default ``"info"``), ``raft_fsync`` (who fdatasyncs each batch of
Raft log entries, see ``raft.driver``: ``"loop"``, the event loop's own thread, blocking the
node for the fsync but saving a wake-up per batch; ``"async"`` (the default), the same on a
follower, while a leader's batches are synced by a separate thread as its loop goes on — their
entries count towards a commit once synced, and the next batches are sent and written
meanwhile; ``"thread"``: a separate thread for every batch, so the node keeps serving its other
groups and clients meanwhile — for a disk whose syncs may stall for long), ``log_file``
(optional: the file the node logs to, rather than stderr; a relative path is relative to
``data_dir``, so that a configuration names the same file whatever the directory it is read
from; its directory is created if need be), ``log_max_bytes`` (default 16 MiB, at least 64 KiB:
once the file would grow past this size it is renamed ``<log_file>.1``, the older ones shifted
to ``.2`` and so on, and a new one begun — a log record longer than the limit is still written
whole) and ``log_backups`` (default 3, 0..100: how many renamed files are kept; with 0 the file
is emptied instead), so that a node's log takes at most about
``log_max_bytes * (log_backups + 1)`` bytes of disk; ``[cluster]`` (required).

``[cluster]``: ``name`` (required; 1-255 letters, digits, ``.``, ``_``, ``-``);
``max_clock_offset_ms`` (default 250), ``tick_interval_ms`` (100), ``heartbeat_ticks`` (1) and
``election_ticks`` (10, greater than ``heartbeat_ticks``), all positive integers, a tick at
most a minute and an election timeout at most an hour (the defaults:
heartbeats every 100 ms, elections after 1–2 s without one, as etcd's; each tick wakes every
node, so a longer tick with fewer ticks per heartbeat costs an idle node less; an idle group's
voters are heartbeaten every third interval only, see ``engine.node.idle_heartbeat_ticks``);
``raft_snapshot_every`` (10000: a group's Raft log is compacted behind a checkpoint of its store
after this many applied entries, and the last tenth of them, at most 1,000, is kept for
followers slightly behind; 1..1,000,000,000);
``meta_regions`` (regions hosting the cluster's metadata group — the range directory and
keyspace catalogue of ARCH §4; default or empty: every region; keyspaces with
``survive="region"`` need three or more, so that the catalog survives a region's loss too).

``[cluster.limits]`` (ARCH §5.8): ``max_txn_keys`` (at most 65,536), ``max_txn_bytes`` (at
most 8 MiB, half an RPC frame), ``max_key_size`` (at most the store's 250, at least 5: it counts
the 4-byte keyspace prefix of every stored key), ``max_value_size``
(at most the store's limit) — positive integers, with
``max_txn_bytes >= max_key_size + max_value_size`` so that the largest single write can commit
— and ``max_txn_lifetime_s``, a positive number of seconds. Lowered limits hold new writes;
what was written under larger ones stays readable, and a key longer than today's
``max_key_size`` can still be deleted.

``[cluster.wan_latency_ms]``: ``a = { b = ms }`` gives the one-way latency between regions ``a``
and ``b`` (a number >= 0), used to simulate the WAN on a local cluster. Each unordered pair is
given at most once; pairs not given count as 0, as does a region to itself.

``[cluster.resolvers]``: application resolvers of regional keyspaces, ``name = "module:function"``
(name: 1-64 characters from ``a-z``, ``0-9``, ``_`` and ``-``, starting with a letter), each
imported by every node when it starts, from the node's Python path (a module or function
that cannot be is a :class:`ConfigError` then); a keyspace uses one with
``resolver="app:<name>"`` (see :mod:`engine.merge`). Every node should list the same ones:
a node without a keyspace's resolver stops at the first write to it that it would apply.

``[cluster.regions.<name>]``: at least one region, at most 100. Names are 1-63 characters
from ``a-z``, ``0-9`` and ``-`` (a regional write names its origin region in every region's
data). Each region has ``nodes``, at least one (at most 65,536 in the cluster), each with
``id`` (a positive integer, unique in the cluster), ``peer_address`` and ``client_address``
(``"host:port"``, port 1..65535; no two addresses in the cluster alike).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field
from typing import Any

from raft.types import MAX_MEMBERS
from raft.wire import MAX_CLUSTER_NAME

from .adjudicator import MAX_TXN_KEYS as ADJUDICATOR_MAX_KEYS
from .errors import InvalidArgumentError, MeridianError
from .mvcc import MAX_KEY_SIZE as STORE_MAX_KEY_SIZE, MAX_VALUE_SIZE as STORE_MAX_VALUE_SIZE
from .rpc import DEFAULT_MAX_FRAME

__all__ = [
    "ConfigError",
    "NodeAddress",
    "RegionConfig",
    "Limits",
    "ClusterConfig",
    "NodeConfig",
    "load_node_config",
    "parse_node_config",
    "dump_node_config",
    "default_local_cluster",
    "DEFAULT_REGIONS",
    "DEFAULT_WAN_LATENCY_MS",
    "DEFAULT_BASE_PORT",
    "LOG_LEVELS",
]

DEFAULT_REGIONS = ("us-east", "eu-west", "ap-south")
KEY_PREFIX_SIZE = 4
"""The bytes of the keyspace id that begin every stored key (engine.placement.encode_key):
``max_key_size`` counts them, so it must leave room for a key of one byte at least."""
DEFAULT_WAN_LATENCY_MS = (35.0, 70.0, 110.0)
"""One-way latencies of :func:`default_local_cluster`, for the region pairs in order (0, 1),
(0, 2), (1, 2); pairs after the third get the last value."""
DEFAULT_BASE_PORT = 7100
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RAFT_FSYNC_MODES = ("loop", "async", "thread")
DEFAULT_LOG_MAX_BYTES = 16 << 20
MIN_LOG_MAX_BYTES = 64 << 10
"""The smallest ``log_max_bytes``: below it, a burst of log records (a node's startup, a
failing disk's errors) would rotate away the records that tell what happened before it."""
DEFAULT_LOG_BACKUPS = 3
MAX_LOG_BACKUPS = 100

MAX_CONFIG_BYTES = 4 << 20
"""The largest configuration file read: a cluster of thousands of nodes takes a few hundred
KiB; a larger file is some other file given by mistake (a store, a log, ``/dev/zero``), and is
not read into memory."""
_TOML_INT_MAX = 2**63 - 1  # TOML integers are signed 64-bit: anything larger cannot round-trip
_MAX_LIFETIME_NS = 2**62
_MAX_CLOCK_OFFSET_MS = (2**64 - 2) // 1_000_000
_MAX_TICK_INTERVAL_MS = 60_000
_MAX_TICKS = 100_000
_MAX_SNAPSHOT_EVERY = 1_000_000_000
_MAX_ELECTION_TIMEOUT_MS = 3_600_000
MAX_REGIONS = 100
"""The most regions a cluster may have: placement numbers each region's data groups and spread
groups from consecutive blocks of this many ids (engine.placement)."""
_REGION_RE = re.compile(r"[a-z0-9-]{1,63}")
_CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_HOST_RE = re.compile(r"[A-Za-z0-9._%:-]+")  # DNS names, IPv4, IPv6 (with a zone)
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ADDRESS_RE = re.compile(
    r"\[(?P<v6>[^\[\]]*)\]:(?P<port6>[0-9]+)"  # [IPv6]:port
    r"|(?P<host>[^\[\]:]*):(?P<port>[0-9]+)"  # host:port
)
_APP_RESOLVER_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # as engine.merge.ApplicationResolver
_IMPORT_TARGET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                               r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TOML_ERROR_RE = re.compile(r"(?P<reason>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)")


class ConfigError(MeridianError, ValueError):
    """A configuration that cannot be used: bad TOML, an unknown key, a bad value.

    Attributes:
        reason: what is wrong, without the location.
        field: the dotted path of the offending field (``cluster.regions.eu-west.nodes[1].id``),
            or None when the problem is not one field's (a TOML syntax error).
        path: the file the configuration was read from, or None when it was given as text.
        line, column: where a TOML syntax error is (1-based), or None.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        path: str | None = None,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = reason
        self.field = field
        self.path = path
        self.source = source if source is not None else path
        self.line = line
        self.column = column
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if line is not None:
            parts.append(f"line {line}, column {column}")
        if field:
            parts.append(field)
        parts.append(reason)
        super().__init__(": ".join(parts))

    def _under(self, prefix: str) -> ConfigError:
        """The same error with its field placed under ``prefix``."""
        return ConfigError(
            self.reason, field=_join(prefix, self.field), path=self.path, source=self.source,
            line=self.line, column=self.column,
        )

    def _located(self, source: str, path: str | None) -> ConfigError:
        """The same error, saying which document it is about."""
        return ConfigError(
            self.reason, field=self.field, path=path, source=source, line=self.line,
            column=self.column,
        )


# ---------------------------------------------------------------------------------------------
# Field checks shared by the dataclasses and the parser. Each takes the field's path for the
# message and returns the value, normalized.


def _join(prefix: str | None, field: str | None) -> str | None:
    if not prefix:
        return field
    if not field:
        return prefix
    return prefix + field if field.startswith("[") else f"{prefix}.{field}"


def _key(key: object) -> str:
    """A table key as it appears in a path: bare if TOML allows, else quoted."""
    if not isinstance(key, str):
        return repr(key)
    return key if _BARE_KEY_RE.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _show(value: object) -> str:
    """A value as a message shows it, in TOML terms."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A lone surrogate (a byte of a command-line argument that is not UTF-8) escaped as
        # JSON would: left as it is, the message could not be printed to a UTF-8 stream.
        text = json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")
        text = text.decode("utf-8")
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if hasattr(value, "isoformat"):
        return f"a date/time ({value})"
    return f"a {type(value).__name__}"


def _fail(field: str | None, reason: str) -> ConfigError:
    return ConfigError(reason, field=field)


def _int(value: object, field: str, *, low: int = 1, high: int = _TOML_INT_MAX) -> int:
    if type(value) is not int:
        raise _fail(field, f"expected an integer, got {_show(value)}")
    if not low <= value <= high:
        if high == _TOML_INT_MAX:
            # tomllib reads integers of any size: past 64 bits is too large, not too small.
            bound = f"at least {low}" if value < low else f"at most {high}"
            raise _fail(field, f"must be {bound}, got {value}")
        raise _fail(field, f"must be in {low}..{high}, got {value}")
    return value


MAX_WAN_LATENCY_MS = 10_000
"""The largest one-way latency a region pair may be given: ten seconds is beyond any real link
(a larger figure is a mistake in the units), and a simulated delay holds every frame that
long."""


def _number(value: object, field: str, *, positive: bool) -> float:
    """A finite number (TOML integer or float) as a float: > 0 if ``positive``, else >= 0."""
    if type(value) not in (int, float):
        raise _fail(field, f"expected a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the largest float (TOML allows any size)
        raise _fail(field, f"must be a finite number, got an integer too large for one "
                           f"({value.bit_length()} bits)") from None
    if not math.isfinite(number):
        raise _fail(field, f"must be a finite number, got {_show(value)}")
    if positive and not number > 0:
        raise _fail(field, f"must be greater than 0, got {_show(value)}")
    if not positive and number < 0:
        raise _fail(field, f"must be 0 or more, got {_show(value)}")
    return number


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"expected a string, got {_show(value)}")
    return value


def _path(value: object, field: str) -> str:
    """A file system path (a ``str``, or any path-like given in code): non-empty, without NUL
    (the system cannot name such a file) and valid Unicode (it is written back as UTF-8)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    value = _str(value, field)
    if not value:
        raise _fail(field, "must not be empty")
    if "\x00" in value:
        raise _fail(field, "must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(
            field, f"must be valid Unicode (it is written back as UTF-8), got {value!r}"
        ) from None
    return value


def _region_name(value: object, field: str) -> str:
    name = _str(value, field)
    if not _REGION_RE.fullmatch(name):
        raise _fail(
            field, f"a region name is 1-63 characters from a-z, 0-9 and '-', got {_show(name)}"
        )
    return name


def _host(value: object, field: str) -> str:
    host = _str(value, field)
    if not _HOST_RE.fullmatch(host):
        raise _fail(
            field,
            f"expected a host name or IP address (letters, digits, '.', '-', ':', '%'), "
            f"got {_show(host)}",
        )
    if ":" in host:
        # No host name has one: only an IPv6 address (else no connection would ever resolve).
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail(field, f"a host with ':' must be an IPv6 address, got {_show(host)}"
                        ) from None
    return host


def _port(value: object, field: str) -> int:
    return _int(value, field, low=1, high=65535)


def _host_identity(host: str) -> str:
    """``host`` as addresses are compared: an IP address in its one canonical form (``::1``
    and ``0:0:0:0:0:0:0:1`` are the same address), a name in lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(value: object, field: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6 address]:port"`` as (host, port); a :class:`ConfigError`
    naming ``field`` when it is not one. The client parses its ``nodes`` with it too."""
    if not isinstance(value, str) or (m := _ADDRESS_RE.fullmatch(value)) is None:
        hint = ""
        if isinstance(value, str) and value.count(":") > 1 and "[" not in value:
            hint = " (put an IPv6 address in brackets: \"[::1]:7100\")"
        raise _fail(field, f'expected "host:port", got {_show(value)}{hint}')
    host = m["v6"] if m["v6"] is not None else m["host"]
    port_text = m["port6"] if m["port6"] is not None else m["port"]
    if not host:
        raise _fail(field, f'expected "host:port", got {_show(value)} (the host is empty)')
    _host(host, field)
    # Not int() of thousands of digits, which Python refuses with a ValueError of its own.
    digits = port_text.lstrip("0") or "0"
    port = int(digits) if len(digits) <= 5 else None
    if port is None or not 1 <= port <= 65535:
        shown = port if port is not None else _show(port_text)
        raise _fail(field, f"the port must be in 1..65535, got {shown}")
    return host, port


def _tuple(value: object, field: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(field, f"expected an array, got {_show(value)}")
    return tuple(value)


# ---------------------------------------------------------------------------------------------
# The configuration records.


class _FrozenMapping(Mapping):
    """A read-only mapping that, unlike ``MappingProxyType``, pickles and deep-copies (so a
    config can cross a process boundary and goes through ``dataclasses.asdict``)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping) -> None:
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __reduce__(self):
        return (type(self), (self._data,))

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one node listens.

    Invariants: ``id`` is positive; ports are in 1..65535; the peer and client addresses are
    distinct from every other address of the cluster (checked by :class:`ClusterConfig`).
    """

    id: int
    """Unique in the cluster; also the node's Raft id (so never 0)."""
    region: str
    peer_host: str
    """Where other nodes reach this one (Raft and transaction RPCs)."""
    peer_port: int
    client_host: str
    """Where clients reach this one."""
    client_port: int

    def __post_init__(self) -> None:
        _int(self.id, "id")
        _region_name(self.region, "region")
        _host(self.peer_host, "peer_host")
        _port(self.peer_port, "peer_port")
        _host(self.client_host, "client_host")
        _port(self.client_port, "client_port")

    @property
    def peer_address(self) -> str:
        """``"host:port"`` (IPv6 hosts in brackets), as written in the configuration."""
        return _format_address(self.peer_host, self.peer_port)

    @property
    def client_address(self) -> str:
        return _format_address(self.client_host, self.client_port)


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """A region and its nodes, in the order listed.

    Invariants: at least one node; every node's ``region`` is ``name``.
    """

    name: str
    nodes: tuple[NodeAddress, ...]

    def __post_init__(self) -> None:
        _region_name(self.name, "name")
        nodes = _tuple(self.nodes, "nodes")
        if not nodes:
            raise _fail("nodes", "a region needs at least one node")
        for i, node in enumerate(nodes):
            if not isinstance(node, NodeAddress):
                raise _fail(f"nodes[{i}]", f"expected a NodeAddress, got {_show(node)}")
            if node.region != self.name:
                raise _fail(
                    f"nodes[{i}].region",
                    f"node {node.id} says region {_show(node.region)} but is listed under "
                    f"{_show(self.name)}",
                )
        object.__setattr__(self, "nodes", nodes)


MAX_TXN_BYTES = DEFAULT_MAX_FRAME // 2
"""The largest ``max_txn_bytes``: a commit is sent as one RPC frame (16 MiB), and its keys,
its read set and their encoding need room beside the values."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-transaction limits, enforced with clear errors (ARCH §5.8).

    The lifetime bounds how long MVCC garbage collection and the adjudicator must remember a
    transaction. Invariant: ``max_key_size + max_value_size <= max_txn_bytes``, so that the
    largest single write fits in a transaction.
    """

    max_txn_keys: int = 1000
    """Keys written per transaction; at most the adjudicator's 65,536 keys per request
    (:data:`engine.adjudicator.MAX_TXN_KEYS`, which counts a serializable read set too)."""
    max_txn_bytes: int = 4 << 20
    """Bytes of keys and values written per transaction; at most half an RPC frame
    (:data:`MAX_TXN_BYTES`): a commit is one request, with its read set beside the writes."""
    max_key_size: int = 250
    """At most the store's limit, :data:`engine.mvcc.MAX_KEY_SIZE`; counts the keyspace prefix
    (:data:`KEY_PREFIX_SIZE`), so a keyspace's keys are this less 4 bytes long at most."""
    max_value_size: int = 1 << 20
    """At most the store's limit, :data:`engine.mvcc.MAX_VALUE_SIZE`. A regional keyspace's
    writes take at most :data:`engine.merge.MAX_APP_VALUE_SIZE`, 4 KiB less, whatever this
    is: one that loses a conflict is logged with its value."""
    max_txn_lifetime_s: float = 60.0

    def __post_init__(self) -> None:
        _int(self.max_txn_keys, "max_txn_keys", high=ADJUDICATOR_MAX_KEYS)
        _int(self.max_txn_bytes, "max_txn_bytes", high=MAX_TXN_BYTES)
        _int(self.max_key_size, "max_key_size", high=STORE_MAX_KEY_SIZE)
        if self.max_key_size <= KEY_PREFIX_SIZE:
            # Else every key is refused, and the client says its limit is 0 or less.
            raise _fail(
                "max_key_size",
                f"must be more than {KEY_PREFIX_SIZE}: it counts the {KEY_PREFIX_SIZE}-byte "
                f"keyspace prefix of every stored key, got {self.max_key_size}",
            )
        _int(self.max_value_size, "max_value_size", high=STORE_MAX_VALUE_SIZE)
        lifetime = _number(self.max_txn_lifetime_s, "max_txn_lifetime_s", positive=True)
        if not 1 <= lifetime * 1e9 <= _MAX_LIFETIME_NS:
            # Nodes count it in nanoseconds, as an int (0 or past 2**62 would not start).
            raise _fail(
                "max_txn_lifetime_s",
                f"must be between 1e-09 and {_MAX_LIFETIME_NS / 1e9:.0f} seconds, "
                f"got {_show(self.max_txn_lifetime_s)}",
            )
        object.__setattr__(self, "max_txn_lifetime_s", lifetime)
        largest_write = self.max_key_size + self.max_value_size
        if self.max_txn_bytes < largest_write:
            raise _fail(
                "max_txn_bytes",
                f"must be at least max_key_size + max_value_size ({largest_write}) so that "
                f"the largest single write fits in a transaction, got {self.max_txn_bytes}",
            )


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The layout and settings shared by every node of a cluster (ARCH §4).

    Invariants: at least one region, with unique names; node ids and addresses unique across
    the cluster; ``election_ticks > heartbeat_ticks``; latency pairs name two different known
    regions; ``meta_regions`` is a non-empty list of known regions without repeats.
    """

    name: str
    regions: tuple[RegionConfig, ...]
    max_clock_offset_ms: int = 250
    """The largest clock offset the guarantees tolerate (ARCH §5, §9)."""
    tick_interval_ms: int = 100
    """The length of one Raft tick; Raft counts time in ticks."""
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    raft_snapshot_every: int = 10_000
    """Entries a group applies between two compactions of its Raft log (see
    :attr:`raft_snapshot_keep`)."""

    @property
    def raft_snapshot_keep(self) -> int:
        """Log entries kept behind a compaction, for followers slightly behind: a tenth of
        :attr:`raft_snapshot_every`, at most 1,000."""
        return min(1000, max(1, self.raft_snapshot_every // 10))
    wan_latency_ms: Mapping[frozenset[str], float] = dc_field(default_factory=dict)
    """One-way latency per unordered pair of regions. Given in code, keys may also be
    ``(a, b)`` tuples; they are stored as frozensets, in a read-only mapping."""
    limits: Limits = dc_field(default_factory=Limits)
    meta_regions: tuple[str, ...] = ()
    """Regions hosting the metadata group (range directory, keyspace catalogue). Empty when
    constructed means every region, and is replaced by their names."""
    resolvers: Mapping[str, Any] = dc_field(default_factory=dict)
    """Application resolvers of regional keyspaces (ARCH §6): name -> ``"module:function"``
    (given in code, the function itself may be given instead), imported by every node when it
    starts (:func:`application_resolvers`). A keyspace uses one as ``resolver="app:<name>"``.
    Stored in a read-only mapping."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CLUSTER_NAME_RE.fullmatch(self.name):
            raise _fail(
                "name",
                f"a cluster name is non-empty and made of letters, digits, '.', '_' and '-', "
                f"got {_show(self.name)}",
            )
        if len(self.name) > MAX_CLUSTER_NAME:
            # Every transport handshake carries it (raft.wire.MAX_CLUSTER_NAME).
            raise _fail("name", f"a cluster name is at most {MAX_CLUSTER_NAME} characters, "
                                f"got {len(self.name)}")
        regions = _tuple(self.regions, "regions")
        if not regions:
            raise _fail("regions", "a cluster needs at least one region")
        if len(regions) > MAX_REGIONS:
            raise _fail("regions", f"a cluster has at most {MAX_REGIONS} regions, "
                                   f"got {len(regions)}")
        names: list[str] = []
        for i, region in enumerate(regions):
            if not isinstance(region, RegionConfig):
                raise _fail(f"regions[{i}]", f"expected a RegionConfig, got {_show(region)}")
            if region.name in names:
                raise _fail(f"regions.{region.name}", "the region is listed twice")
            names.append(region.name)
        object.__setattr__(self, "regions", regions)
        count = sum(len(region.nodes) for region in regions)
        if count > MAX_MEMBERS:
            # Every node is a member of the meta group, whose snapshots hold at most this many.
            raise _fail("regions", f"a cluster has at most {MAX_MEMBERS} nodes, got {count}")
        self._check_nodes_unique()

        _int(self.max_clock_offset_ms, "max_clock_offset_ms")
        if self.max_clock_offset_ms > _MAX_CLOCK_OFFSET_MS:  # the hybrid clock takes it in ns
            raise _fail("max_clock_offset_ms", f"must be at most {_MAX_CLOCK_OFFSET_MS}, "
                        f"got {self.max_clock_offset_ms}")
        # Upper bounds a cluster can still run with: a tick of a minute, an election timeout of
        # an hour at the longest (larger values pass every check and never elect a leader).
        _int(self.tick_interval_ms, "tick_interval_ms", high=_MAX_TICK_INTERVAL_MS)
        _int(self.heartbeat_ticks, "heartbeat_ticks", high=_MAX_TICKS)
        _int(self.election_ticks, "election_ticks", high=_MAX_TICKS)
        if self.tick_interval_ms * self.election_ticks > _MAX_ELECTION_TIMEOUT_MS:
            raise _fail("election_ticks", f"an election timeout of {self.election_ticks} ticks of "
                        f"{self.tick_interval_ms} ms is over an hour")
        if self.election_ticks <= self.heartbeat_ticks:
            # A follower must hear several heartbeats before it may call an election.
            raise _fail(
                "election_ticks",
                f"must be greater than heartbeat_ticks ({self.heartbeat_ticks}), "
                f"got {self.election_ticks}",
            )
        if self.election_ticks < 3:
            # Leader leases (raft.core.Config.lease_reads) last 3/4 of the election timeout
            # minus one tick: at least a tick needs 3.
            raise _fail("election_ticks", f"must be at least 3, got {self.election_ticks}")
        _int(self.raft_snapshot_every, "raft_snapshot_every", high=_MAX_SNAPSHOT_EVERY)
        object.__setattr__(self, "wan_latency_ms", self._checked_latencies(names))
        if not isinstance(self.limits, Limits):
            raise _fail("limits", f"expected a Limits, got {_show(self.limits)}")

        meta = _tuple(self.meta_regions, "meta_regions") or tuple(names)
        for i, name in enumerate(meta):
            path = f"meta_regions[{i}]"
            if name not in names:
                raise _fail(path, f"unknown region {_show(name)}; regions: {', '.join(names)}")
            if name in meta[:i]:
                raise _fail(path, f"region {_show(name)} is listed twice")
        object.__setattr__(self, "meta_regions", meta)
        object.__setattr__(self, "resolvers", self._checked_resolvers())

    def _checked_resolvers(self) -> Mapping[str, Any]:
        if not isinstance(self.resolvers, Mapping):
            raise _fail("resolvers", f"expected a table, got {_show(self.resolvers)}")
        for name, target in self.resolvers.items():
            if not isinstance(name, str) or not _APP_RESOLVER_RE.fullmatch(name):
                raise _fail(f"resolvers.{_key(name)}",
                            "a resolver name is 1-64 characters from a-z, 0-9, '_' and '-', "
                            "starting with a letter")
            if not callable(target) and not (isinstance(target, str)
                                             and _IMPORT_TARGET_RE.fullmatch(target)):
                raise _fail(f"resolvers.{name}", f'expected "module:function", got '
                                                 f"{_show(target)}")
        return _FrozenMapping(dict(self.resolvers))

    def _check_nodes_unique(self) -> None:
        # Messages name the earlier use by region and index, not by path: the path of this
        # table inside a larger document is not known here.
        ids: dict[int, str] = {}
        addresses: dict[tuple[str, int], str] = {}
        for region in self.regions:
            for i, node in enumerate(region.nodes):
                path = f"regions.{region.name}.nodes[{i}]"
                if node.id in ids:
                    raise _fail(
                        f"{path}.id", f"node id {node.id} is already used by {ids[node.id]}"
                    )
                ids[node.id] = f"nodes[{i}] of region {region.name}"
                for kind, host, port in (
                    ("peer_address", node.peer_host, node.peer_port),
                    ("client_address", node.client_host, node.client_port),
                ):
                    key = (_host_identity(host), port)
                    if key in addresses:
                        raise _fail(
                            f"{path}.{kind}",
                            f"{_format_address(host, port)} is already the {addresses[key]}",
                        )
                    addresses[key] = f"{kind} of node {node.id} (region {region.name})"

    def _checked_latencies(self, names: list[str]) -> Mapping[frozenset[str], float]:
        if not isinstance(self.wan_latency_ms, Mapping):
            raise _fail(
                "wan_latency_ms",
                f"expected a mapping of region pairs to milliseconds, "
                f"got {_show(self.wan_latency_ms)}",
            )
        order = {name: i for i, name in enumerate(names)}
        checked: dict[frozenset[str], float] = {}
        where: dict[frozenset[str], tuple[str, str]] = {}
        for pair, value in self.wan_latency_ms.items():
            if isinstance(pair, frozenset):
                # No written direction: show the pair in region order, for a stable path.
                ends = sorted(pair, key=lambda r: (order.get(r, len(order)), str(r)))
            elif isinstance(pair, tuple):
                ends = list(pair)
            else:
                raise _fail("wan_latency_ms", f"expected region pairs as keys, got {pair!r}")
            if len(ends) != 2 or not all(isinstance(r, str) for r in ends):
                raise _fail(
                    "wan_latency_ms",
                    f"a key must be a pair of two different region names, got {pair!r}",
                )
            a, b = ends
            path = f"wan_latency_ms.{_key(a)}.{_key(b)}"
            for end, end_path in ((a, f"wan_latency_ms.{_key(a)}"), (b, path)):
                if end not in order:
                    raise _fail(
                        end_path, f"unknown region {_show(end)}; regions: {', '.join(names)}"
                    )
            if a == b:
                raise _fail(path, "a region's latency to itself is always 0; list only pairs")
            key = frozenset((a, b))
            if key in checked:
                x, y = where[key]
                raise _fail(
                    path, f"the pair {a}/{b} is already given, as {x} = {{ {y} = ... }}"
                )
            checked[key] = _number(value, path, positive=False)
            if checked[key] > MAX_WAN_LATENCY_MS:
                raise _fail(path, f"must be at most {MAX_WAN_LATENCY_MS} (ms, one way), got "
                                  f"{_show(value)}")
            where[key] = (a, b)
        return _FrozenMapping(checked)

    @property
    def max_clock_offset_ns(self) -> int:
        """:attr:`max_clock_offset_ms` in nanoseconds, as the hybrid clock takes it."""
        return self.max_clock_offset_ms * 1_000_000

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def all_nodes(self) -> tuple[NodeAddress, ...]:
        """Every node, region by region, in the order listed."""
        return tuple(node for region in self.regions for node in region.nodes)

    def node(self, node_id: int) -> NodeAddress:
        """The node with id ``node_id``.

        Raises:
            InvalidArgumentError: no such node.
        """
        for node in self.all_nodes():
            if node.id == node_id:
                return node
        ids = ", ".join(str(n.id) for n in self.all_nodes())
        raise InvalidArgumentError(
            f"no node {node_id!r} in cluster {self.name!r}; node ids: {ids}"
        )

    def nodes_in(self, region: str) -> tuple[NodeAddress, ...]:
        """The nodes of ``region``, in the order listed.

        Raises:
            InvalidArgumentError: no such region.
        """
        return self._region(region).nodes

    def latency_ms(self, a: str, b: str) -> float:
        """The one-way WAN latency between regions ``a`` and ``b``: 0 within a region and for
        pairs the configuration does not list.

        Raises:
            InvalidArgumentError: either region is unknown.
        """
        self._region(a)
        self._region(b)
        if a == b:
            return 0.0
        return self.wan_latency_ms.get(frozenset((a, b)), 0.0)

    def _region(self, name: str) -> RegionConfig:
        for region in self.regions:
            if region.name == name:
                return region
        raise InvalidArgumentError(
            f"no region {name!r} in cluster {self.name!r}; regions: "
            f"{', '.join(self.region_names)}"
        )


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node's configuration: who it is, where its data lives, and the cluster.

    Invariant: ``node_id`` is a node of ``cluster``.
    """

    node_id: int
    data_dir: str
    """Given in code, any path-like; stored as a ``str``."""
    cluster: ClusterConfig
    log_level: str = "info"
    """One of :data:`LOG_LEVELS`."""
    raft_fsync: str = "async"
    """One of :data:`RAFT_FSYNC_MODES`: who fdatasyncs the Raft log (see the module docstring)."""
    log_file: str | None = None
    """The file the node logs to, rotated by size; None: stderr. Given in code, any path-like;
    stored as a ``str``, as written (see :attr:`log_path` for where it is)."""
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    """The size at which the log file is rotated (at least :data:`MIN_LOG_MAX_BYTES`)."""
    log_backups: int = DEFAULT_LOG_BACKUPS
    """How many rotated log files are kept (0..:data:`MAX_LOG_BACKUPS`)."""

    def __post_init__(self) -> None:
        _int(self.node_id, "node_id")
        if not isinstance(self.cluster, ClusterConfig):
            raise _fail("cluster", f"expected a ClusterConfig, got {_show(self.cluster)}")
        if self.node_id not in {n.id for n in self.cluster.all_nodes()}:
            ids = ", ".join(str(n.id) for n in self.cluster.all_nodes())
            raise _fail(
                "node_id", f"node {self.node_id} is not in the cluster; node ids: {ids}"
            )
        object.__setattr__(self, "data_dir", _path(self.data_dir, "data_dir"))
        if self.log_file is not None:
            object.__setattr__(self, "log_file", _path(self.log_file, "log_file"))
        _int(self.log_max_bytes, "log_max_bytes", low=MIN_LOG_MAX_BYTES)
        _int(self.log_backups, "log_backups", low=0, high=MAX_LOG_BACKUPS)
        if self.log_level not in LOG_LEVELS:
            raise _fail(
                "log_level",
                f"expected one of {', '.join(LOG_LEVELS)}, got {_show(self.log_level)}",
            )
        if self.raft_fsync not in RAFT_FSYNC_MODES:
            raise _fail(
                "raft_fsync",
                f"expected one of {', '.join(RAFT_FSYNC_MODES)}, got {_show(self.raft_fsync)}",
            )

    @property
    def log_path(self) -> str | None:
        """Where the node's log file is: ``log_file``, a relative one under ``data_dir``; None
        when the node logs to stderr."""
        if self.log_file is None:
            return None
        return os.path.join(self.data_dir, self.log_file)  # an absolute log_file stays as it is

    @property
    def address(self) -> NodeAddress:
        """This node's addresses."""
        return self.cluster.node(self.node_id)

    @property
    def region(self) -> str:
        return self.address.region


# ---------------------------------------------------------------------------------------------
# Reading TOML.

_NODE_KEYS = ("node_id", "data_dir", "log_level", "raft_fsync", "log_file", "log_max_bytes",
              "log_backups", "cluster")
_CLUSTER_KEYS = (
    "name", "regions", "max_clock_offset_ms", "tick_interval_ms", "election_ticks",
    "heartbeat_ticks", "raft_snapshot_every", "wan_latency_ms", "limits", "meta_regions",
    "resolvers",
)
_LIMITS_KEYS = (
    "max_txn_keys", "max_txn_bytes", "max_key_size", "max_value_size", "max_txn_lifetime_s",
)
_REGION_KEYS = ("nodes",)
_NODE_ADDRESS_KEYS = ("id", "peer_address", "client_address")


@contextmanager
def _under(prefix: str) -> Iterator[None]:
    """Places the field of any ConfigError raised inside under ``prefix``."""
    try:
        yield
    except ConfigError as exc:
        raise exc._under(prefix) from None


def _table(
    raw: object, field: str | None, allowed: tuple[str, ...], required: tuple[str, ...]
) -> Mapping[str, Any]:
    """Checks that ``raw`` is a table with only ``allowed`` keys and all ``required`` ones."""
    if not isinstance(raw, Mapping):
        raise _fail(field, f"expected a table, got {_show(raw)}")
    for key in raw:
        if not isinstance(key, str):
            raise _fail(field, f"keys must be strings, got {key!r}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _fail(
                _join(field, _key(key)),
                f"unknown key; {hint}allowed keys: {', '.join(allowed)}",
            )
    for key in required:
        if key not in raw:
            raise _fail(_join(field, key), "missing (this key is required)")
    return raw


def _region_from(name: object, raw: object, field: str) -> RegionConfig:
    _region_name(name, field)
    table = _table(raw, field, _REGION_KEYS, _REGION_KEYS)
    entries = table["nodes"]
    if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
        raise _fail(f"{field}.nodes", f"expected an array of tables, got {_show(entries)}")
    nodes = []
    for i, entry in enumerate(entries):
        path = f"{field}.nodes[{i}]"
        node = _table(entry, path, _NODE_ADDRESS_KEYS, _NODE_ADDRESS_KEYS)
        peer_host, peer_port = parse_address(node["peer_address"], f"{path}.peer_address")
        client_host, client_port = parse_address(
            node["client_address"], f"{path}.client_address"
        )
        with _under(path):
            nodes.append(
                NodeAddress(
                    id=node["id"], region=name, peer_host=peer_host, peer_port=peer_port,
                    client_host=client_host, client_port=client_port,
                )
            )
    with _under(field):
        return RegionConfig(name=name, nodes=tuple(nodes))


def _latencies_from(raw: object) -> dict[tuple[str, str], object]:
    """``{a = {b = ms}}`` as ``{(a, b): ms}``, keeping each pair in its written direction so
    that :class:`ClusterConfig` can name it by the path it was written at."""
    if not isinstance(raw, Mapping):
        raise _fail("wan_latency_ms", f"expected a table, got {_show(raw)}")
    pairs: dict[tuple[str, str], object] = {}
    for a, inner in raw.items():
        if not isinstance(inner, Mapping):
            raise _fail(
                f"wan_latency_ms.{_key(a)}",
                f"expected a table of region = milliseconds, got {_show(inner)}",
            )
        for b, value in inner.items():
            pairs[(a, b)] = value  # a pair given both ways is caught by ClusterConfig
    return pairs


def _cluster_from(raw: object) -> ClusterConfig:
    """A ClusterConfig from the ``[cluster]`` table; fields are relative to it."""
    table = _table(raw, None, _CLUSTER_KEYS, ("name", "regions"))
    regions_raw = table["regions"]
    if not isinstance(regions_raw, Mapping):
        raise _fail("regions", f"expected a table of regions, got {_show(regions_raw)}")
    regions = tuple(
        _region_from(name, region, f"regions.{_key(name)}")
        for name, region in regions_raw.items()
    )
    kwargs: dict[str, Any] = {
        key: table[key]
        for key in ("max_clock_offset_ms", "tick_interval_ms", "election_ticks", "heartbeat_ticks",
                    "raft_snapshot_every")
        if key in table
    }
    if "limits" in table:
        limits = _table(table["limits"], "limits", _LIMITS_KEYS, ())
        with _under("limits"):
            kwargs["limits"] = Limits(**limits)
    if "wan_latency_ms" in table:
        kwargs["wan_latency_ms"] = _latencies_from(table["wan_latency_ms"])
    if "meta_regions" in table:
        kwargs["meta_regions"] = _tuple(table["meta_regions"], "meta_regions")
    if "resolvers" in table:
        kwargs["resolvers"] = table["resolvers"]
    return ClusterConfig(name=table["name"], regions=regions, **kwargs)


def _node_from(raw: object) -> NodeConfig:
    table = _table(raw, None, _NODE_KEYS, ("node_id", "data_dir", "cluster"))
    with _under("cluster"):
        cluster = _cluster_from(table["cluster"])
    kwargs = {k: table[k] for k in ("log_level", "raft_fsync", "log_file", "log_max_bytes",
                                    "log_backups") if k in table}
    return NodeConfig(
        node_id=table["node_id"], data_dir=table["data_dir"], cluster=cluster, **kwargs
    )


def _parse(document: object, source: str, path: str | None) -> NodeConfig:
    try:
        if isinstance(document, str):
            if document.startswith("\ufeff"):
                # What some editors put first in a UTF-8 file; tomllib calls it an invalid
                # statement at line 1, column 1, where nothing shows.
                raise ConfigError("starts with a byte order mark (U+FEFF), which TOML does not "
                                  "allow: save the file as UTF-8 without one", line=1, column=1)
            try:
                document = tomllib.loads(document)
            except tomllib.TOMLDecodeError as exc:
                text = str(exc)
                m = _TOML_ERROR_RE.fullmatch(text)
                if m is None:
                    raise ConfigError(f"invalid TOML: {text}") from None
                raise ConfigError(
                    f"invalid TOML: {m['reason']}", line=int(m["line"]),
                    column=int(m["column"]),
                ) from None
            except ValueError:
                # tomllib lets int() refuse an integer of more digits than Python converts
                # (sys.get_int_max_str_digits), with a ValueError that says where in no way.
                raise ConfigError(
                    f"invalid TOML: an integer of more than {sys.get_int_max_str_digits()} "
                    f"digits"
                ) from None
            except RecursionError:  # tomllib reads nested arrays and inline tables recursively
                raise ConfigError("invalid TOML: arrays or tables nested too deeply") from None
        elif not isinstance(document, Mapping):
            raise ConfigError(
                f"expected TOML text or a mapping, got {type(document).__name__}"
            )
        return _node_from(document)
    except ConfigError as exc:
        raise exc._located(source, path) from None


def parse_node_config(
    text_or_dict: str | Mapping[str, Any], *, source: str = "<string>"
) -> NodeConfig:
    """Parses and validates a node configuration.

    Args:
        text_or_dict: TOML text, or the mapping ``tomllib`` would make of it.
        source: what to call the document in error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: bad TOML (with line and column), or a bad or unknown field (named by its
            path).
    """
    return _parse(text_or_dict, source, None)


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Reads, parses and validates a node configuration file (UTF-8 TOML).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is larger than :data:`MAX_CONFIG_BYTES`, not UTF-8 or not TOML,
            or a field is bad; its ``path`` is set.
        OSError: the file cannot be read.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes: not a node configuration",
                          path=name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {exc.start})", path=name) from None
    return _parse(text, name, name)


# ---------------------------------------------------------------------------------------------
# Writing TOML (tomllib only reads).

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_str(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_float(value: float) -> str:
    # repr is the shortest text that reads back as the same float, and is valid TOML for every
    # finite float ("35.0", "1e-05", "1.5e+300").
    return repr(float(value))


def dump_node_config(cfg: NodeConfig) -> str:
    """Writes a configuration as TOML that :func:`parse_node_config` reads back equal.

    Every setting is written, defaults included, so the file says what the node runs with.

    Raises:
        InvalidArgumentError: ``cfg`` is not a NodeConfig.
    """
    if not isinstance(cfg, NodeConfig):
        raise InvalidArgumentError(f"expected a NodeConfig, got {type(cfg).__name__}")
    c = cfg.cluster
    lines = [
        f"node_id = {cfg.node_id}",
        f"data_dir = {_toml_str(cfg.data_dir)}",
        f"log_level = {_toml_str(cfg.log_level)}",
        f"raft_fsync = {_toml_str(cfg.raft_fsync)}",
        *([f"log_file = {_toml_str(cfg.log_file)}"] if cfg.log_file is not None else []),
        f"log_max_bytes = {cfg.log_max_bytes}",
        f"log_backups = {cfg.log_backups}",
        "",
        "[cluster]",
        f"name = {_toml_str(c.name)}",
        f"max_clock_offset_ms = {c.max_clock_offset_ms}",
        f"tick_interval_ms = {c.tick_interval_ms}",
        f"election_ticks = {c.election_ticks}",
        f"heartbeat_ticks = {c.heartbeat_ticks}",
        f"raft_snapshot_every = {c.raft_snapshot_every}",
        f"meta_regions = [{', '.join(_toml_str(r) for r in c.meta_regions)}]",
        "",
        "[cluster.limits]",
        f"max_txn_keys = {c.limits.max_txn_keys}",
        f"max_txn_bytes = {c.limits.max_txn_bytes}",
        f"max_key_size = {c.limits.max_key_size}",
        f"max_value_size = {c.limits.max_value_size}",
        f"max_txn_lifetime_s = {_toml_float(c.limits.max_txn_lifetime_s)}",
    ]
    if c.wan_latency_ms:
        # Each pair under whichever of its regions is listed first.
        lines += ["", "[cluster.wan_latency_ms]"]
        names = c.region_names
        for i, a in enumerate(names):
            entries = [
                f"{b} = {_toml_float(c.wan_latency_ms[frozenset((a, b))])}"
                for b in names[i + 1:]
                if frozenset((a, b)) in c.wan_latency_ms
            ]
            if entries:
                lines.append(f"{a} = {{ {', '.join(entries)} }}")
    if c.resolvers:
        lines += ["", "[cluster.resolvers]"]
        for name, target in c.resolvers.items():
            if not isinstance(target, str):
                raise _fail(f"cluster.resolvers.{name}", 'a function given in code has no TOML '
                            'form: give it as "module:function"')
            lines.append(f"{name} = {_toml_str(target)}")
    for region in c.regions:
        lines += ["", f"[cluster.regions.{region.name}]", "nodes = ["]
        lines += [
            f"    {{ id = {n.id}, peer_address = {_toml_str(n.peer_address)}, "
            f"client_address = {_toml_str(n.client_address)} }},"
            for n in region.nodes
        ]
        lines.append("]")
    return "\n".join(lines) + "\n"


def application_resolvers(cluster: ClusterConfig) -> dict[str, Any]:
    """The cluster's application resolvers (``cluster.resolvers``), imported: ``{"app:<name>":
    engine.merge.ApplicationResolver}``. A node calls this when it starts.

    Raises:
        ConfigError: a module that cannot be imported, an attribute it does not have, or one
            that is not callable (naming the field, ``cluster.resolvers.<name>``).
    """
    import importlib

    from .merge import ApplicationResolver

    out = {}
    for name, target in cluster.resolvers.items():
        field = f"cluster.resolvers.{name}"
        fn = target
        if isinstance(target, str):
            module_name, _, attribute = target.partition(":")
            try:
                fn = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - any failure of the application's import
                raise _fail(field, f"cannot import {module_name!r}: "
                                   f"{type(exc).__name__}: {exc}"[:300]) from None
            for part in attribute.split("."):
                fn = getattr(fn, part, _MISSING)
                if fn is _MISSING:
                    raise _fail(field, f"{module_name!r} has no {attribute!r}")
        if not callable(fn):
            raise _fail(field, f"{target!r} is not a function, it is {_show(fn)}")
        resolver = ApplicationResolver(fn, name)
        out[resolver.kind] = resolver
    return out


_MISSING = object()


# ---------------------------------------------------------------------------------------------
# A local cluster.


def default_local_cluster(
    regions: Iterable[str] = DEFAULT_REGIONS,
    nodes_per_region: int = 3,
    base_port: int = DEFAULT_BASE_PORT,
    host: str = "127.0.0.1",
    *,
    name: str = "local",
    wan_latency_ms: Mapping[Any, float] | None = None,
) -> ClusterConfig:
    """A cluster of ``nodes_per_region`` nodes in each region, all on ``host``.

    Node ids count from 1, region by region. The k-th node (from 0) listens for peers on
    ``base_port + 2k`` and for clients on ``base_port + 2k + 1``. Unless ``wan_latency_ms`` is
    given, the region pairs (0, 1), (0, 2), (1, 2) get one-way latencies of 35, 70 and 110 ms
    (:data:`DEFAULT_WAN_LATENCY_MS`), and any further pairs 110 ms.

    Raises:
        InvalidArgumentError: a bad argument (``regions`` a single string, a port range that
            runs past 65535, ...).
        ConfigError: a bad region name, host or latency, or a region listed twice.
    """
    if isinstance(regions, str):
        raise InvalidArgumentError(
            f"regions must be a sequence of region names, not the string {regions!r}"
        )
    names = tuple(regions)
    if type(nodes_per_region) is not int or nodes_per_region < 1:
        raise InvalidArgumentError(
            f"nodes_per_region must be a positive int, got {nodes_per_region!r}"
        )
    last_port = (base_port + 2 * len(names) * nodes_per_region - 1
                 if type(base_port) is int else None)
    if last_port is None or base_port < 1 or last_port > 65535:
        raise InvalidArgumentError(
            f"base_port must be an int such that ports {base_port!r}.."
            f"{last_port if last_port is not None else '?'} lie in 1..65535"
        )
    for i, region in enumerate(names):
        _region_name(region, f"regions[{i}]")
    _host(host, "host")
    region_configs = []
    next_id = 1
    for region in names:
        nodes = []
        for _ in range(nodes_per_region):
            port = base_port + 2 * (next_id - 1)
            nodes.append(NodeAddress(next_id, region, host, port, host, port + 1))
            next_id += 1
        region_configs.append(RegionConfig(region, tuple(nodes)))
    if wan_latency_ms is None:
        wan_latency_ms = {}
        k = 0
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                wan_latency_ms[(a, b)] = DEFAULT_WAN_LATENCY_MS[min(k, 2)]
                k += 1
    return ClusterConfig(name=name, regions=tuple(region_configs), wan_latency_ms=wan_latency_ms)
