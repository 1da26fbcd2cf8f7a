"""Where groups live: the placement of Raft groups on a cluster's regions and nodes (ARCH §4).

Placement is a pure function of the cluster configuration, so every node computes the same
answer without talking to anyone:

- **The meta group** (:data:`META_GROUP`) holds the catalog of keyspaces. Its three voters are
  spread over the ``meta_regions`` (one per region with three regions; with fewer regions,
  round-robin over them), so the catalog survives the loss of any one region when there are
  three. Every other node is a learner of it, so every node can read the catalog locally.
- **One data group per region** (``data_group(region)``): its voters are the region's nodes, so
  commits are synchronous inside the region only, and one node of every other region is a
  learner, which receives the log asynchronously and serves local stale reads there. Keyspaces
  that ``survive="zone"`` (the default) live here.
- **One spread group per region**, with three regions or more (``spread_group(region)``): three
  voters, one in the home region and one in each of the next two regions (a different node of
  each region for each home, to spread the load), and a learner in each region beyond those.
  Keyspaces that ``survive="region"`` live here: a commit waits for a second region, so losing
  a whole region loses no acknowledged write and leaves a majority to carry on. Its leader is
  kept in the home region while that region's voter is up (see the node).

One replica per other region is what a region's local reads need: every further one would
receive, store and fsync every commit for nothing (a data group with a learner on every node of
three regions of three sends each entry to eight peers instead of four). The learners of the
groups homed in region *i* are the nodes at index *i + 1* of the other regions, and the spread
group's voters those at index *i*, so that each node carries about the same share.

A keyspace's keys live in its home region's data group, prefixed with the keyspace's id
(:func:`encode_key`); the range directory (:class:`RangeDirectory`) maps a keyspace and key to
its group. Today each keyspace is one range; the directory is a list of spans so that a range
can later be split into a new group without any change to the transaction protocol.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from raft.types import ConfState

from .config import KEY_PREFIX_SIZE, MAX_REGIONS, ClusterConfig
from .errors import InvalidArgumentError
from .mvcc import MAX_KEY_SIZE

__all__ = [
    "META_GROUP",
    "KEY_PREFIX_SIZE",
    "MAX_USER_KEY_SIZE",
    "GroupPlacement",
    "RangeDirectory",
    "data_group",
    "spread_group",
    "placement",
    "encode_key",
    "decode_key",
    "keyspace_bounds",
]

META_GROUP = 1
_DATA_GROUP_BASE = 100
_SPREAD_GROUP_BASE = _DATA_GROUP_BASE + MAX_REGIONS  # 200: a block of ids per kind
MAX_USER_KEY_SIZE = MAX_KEY_SIZE - KEY_PREFIX_SIZE
"""The longest key a keyspace accepts: the store's limit less the keyspace prefix."""

_prefix = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    group: int
    region: str  # the data or spread group's (home) region; "" for the meta group
    conf: ConfState
    kind: str = "data"  # "meta", "data" or "spread"

    def hosts(self, node_id: int) -> bool:
        return node_id in self.conf.voters or node_id in self.conf.learners


def data_group(cluster: ClusterConfig, region: str) -> int:
    """The id of ``region``'s data group."""
    names = cluster.region_names
    if region not in names:
        raise InvalidArgumentError(f"unknown region {region!r:.80} (regions: {', '.join(names)})")
    return _DATA_GROUP_BASE + names.index(region)


def spread_group(cluster: ClusterConfig, region: str) -> int:
    """The id of the spread group homed in ``region`` (keyspaces that survive a region's
    loss); there are spread groups only in clusters of three regions or more."""
    names = cluster.region_names
    if len(names) < 3:
        raise InvalidArgumentError(f"surviving the loss of a region needs three regions or "
                                   f"more; this cluster has {len(names)}")
    data_group(cluster, region)  # validates the name
    return _SPREAD_GROUP_BASE + names.index(region)


def check_catalog_survives_a_region(cluster: ClusterConfig) -> None:
    """Raises unless the meta group's voters are in three regions or more: a keyspace that
    is to survive the loss of a region needs the catalog to survive it too, or no client
    could look the keyspace up after it."""
    meta_regions = list(cluster.meta_regions) or list(cluster.region_names)
    voters = placement(cluster)[META_GROUP].conf.voters
    spread = {cluster.node(v).region for v in voters}
    if len(spread) < 3:
        raise InvalidArgumentError(
            f"surviving the loss of a region needs the catalog to survive it too: its voters "
            f"are in {len(spread)} region(s) ({', '.join(sorted(spread))}); list three regions "
            f"or more in meta_regions (now {', '.join(meta_regions)})")


def placement(cluster: ClusterConfig) -> dict[int, GroupPlacement]:
    """Every group of the cluster, by id."""
    everyone = sorted(n.id for n in cluster.all_nodes())
    groups: dict[int, GroupPlacement] = {}
    meta_regions = list(cluster.meta_regions) or list(cluster.region_names)
    pools = [[n.id for n in cluster.nodes_in(r)] for r in meta_regions]
    voters: list[int] = []
    depth = 0
    while len(voters) < 3 and any(depth < len(p) for p in pools):
        for pool in pools:
            if depth < len(pool) and len(voters) < 3:
                voters.append(pool[depth])
        depth += 1
    meta_voters = tuple(sorted(voters))
    groups[META_GROUP] = GroupPlacement(
        META_GROUP, "", ConfState(meta_voters, tuple(i for i in everyone if i not in voters)),
        "meta")
    names = cluster.region_names
    members = {r: sorted(n.id for n in cluster.nodes_in(r)) for r in names}

    def learners(i: int, regions_with_voters: set[str]) -> tuple[int, ...]:
        """One node of every region without a voter: the one at index ``i + 1``."""
        return tuple(sorted(members[r][(i + 1) % len(members[r])] for r in names
                            if r not in regions_with_voters))

    for i, region in enumerate(names):
        gid = data_group(cluster, region)
        groups[gid] = GroupPlacement(
            gid, region, ConfState(tuple(members[region]), learners(i, {region})))
    if len(names) >= 3:
        for i, region in enumerate(names):
            homes = [names[(i + k) % len(names)] for k in range(3)]
            spread = tuple(sorted(members[r][i % len(members[r])] for r in homes))
            gid = spread_group(cluster, region)
            groups[gid] = GroupPlacement(
                gid, region, ConfState(spread, learners(i, set(homes))), "spread")
    return groups


def encode_key(keyspace_id: int, key: bytes) -> bytes:
    """The stored key of ``key`` in keyspace ``keyspace_id``."""
    return _prefix.pack(keyspace_id) + key


def decode_key(stored: bytes) -> tuple[int, bytes]:
    return _prefix.unpack_from(stored)[0], stored[KEY_PREFIX_SIZE:]


def user_key(stored: bytes) -> bytes:
    """The caller's key in a stored key (its keyspace prefix dropped), for messages."""
    return stored[KEY_PREFIX_SIZE:] if len(stored) >= KEY_PREFIX_SIZE else stored


def keyspace_bounds(keyspace_id: int) -> tuple[bytes, bytes]:
    """The stored-key span ``[start, end)`` holding all of a keyspace's keys."""
    return _prefix.pack(keyspace_id), _prefix.pack(keyspace_id + 1)


@dataclass(frozen=True, slots=True)
class _Span:
    start: bytes  # stored key, inclusive
    end: bytes  # stored key, exclusive
    group: int


class RangeDirectory:
    """Maps stored keys to groups: a sorted list of disjoint spans."""

    def __init__(self) -> None:
        self._starts: list[bytes] = []
        self._spans: list[_Span] = []

    def add(self, start: bytes, end: bytes, group: int) -> None:
        if not start < end:
            raise InvalidArgumentError(f"empty span {start!r}..{end!r}")
        i = bisect.bisect_left(self._starts, start)
        if (i > 0 and self._spans[i - 1].end > start) or (
                i < len(self._spans) and self._spans[i].start < end):
            raise InvalidArgumentError(f"span {start!r}..{end!r} overlaps another")
        self._starts.insert(i, start)
        self._spans.insert(i, _Span(start, end, group))

    def remove(self, start: bytes) -> None:
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start:
            del self._starts[i]
            del self._spans[i]

    def lookup(self, stored_key: bytes) -> int | None:
        """The group holding ``stored_key``, or None if no span covers it."""
        i = bisect.bisect_right(self._starts, stored_key) - 1
        if i >= 0 and stored_key < self._spans[i].end:
            return self._spans[i].group
        return None

    def __len__(self) -> int:
        return len(self._spans)
