"""The catalog of keyspaces, kept in the meta group (ARCH §4).

The catalog is ordinary data in the meta group's MVCC store, changed by ordinary single-group
transactions (first committer wins, so two nodes creating the same keyspace at once cannot both
succeed):

``b"ks/" + name``
    the keyspace's record, msgpack: ``{"id", "name", "mode", "home", "resolver",
    "created_ts", "survive"}``, and, while they are not empty, the fields that moves and drops
    keep: ``"moved_ts"``, ``"retired"``, ``"moving_to"``, ``"abandoned"``, ``"epoch"``,
    ``"handoff_ts"`` and ``"dropping"``
    (see :class:`Keyspace`). Readers ignore fields they do not know, so a record may gain
    optional fields without breaking them.
``b"ks-next-id"``
    the next keyspace id (be32); ids are never reused, so a dropped keyspace's stored keys can
    never be read through a new keyspace of the same name. Once every id up to
    ``engine.group.MAX_KEYSPACE_ID`` is used, a create is refused.

A keyspace is named by 1–64 characters from ``[a-z0-9_-]``, starting with a letter.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field, fields, replace

import msgpack

from .errors import InvalidArgumentError

__all__ = [
    "Keyspace",
    "MODES",
    "SURVIVAL_GOALS",
    "NEXT_ID_KEY",
    "check_keyspace_name",
    "keyspace_key",
    "decode_keyspace",
    "encode_keyspace",
    "encode_next_id",
    "decode_next_id",
    "keyspace_from_record",
    "keyspace_record",
    "FIRST_KEYSPACE_ID",
]

MODES = ("global", "regional")
SURVIVAL_GOALS = ("zone", "region")
NEXT_ID_KEY = b"ks-next-id"
FIRST_KEYSPACE_ID = 1
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_u32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Keyspace:
    """One keyspace: a named table of keys with a replication mode and a home region."""

    id: int
    name: str
    mode: str
    home: str
    resolver: str = "lww"
    created_ts: int = 0
    survive: str = "zone"
    """``"zone"``: voters in the home region only; ``"region"``: voters in three regions."""
    moved_ts: int = 0
    """The timestamp of the copy that brought the keyspace to its current home (0: it never
    moved). The home group holds none of its data below it, so a read there must be served
    at this timestamp or above: a replica that has not applied that far must wait for it
    (or let another replica answer) rather than read the keyspace as empty."""
    epoch: int = 0
    """Raised by one, in the record, by every move and drop of the keyspace as it begins
    (engine.client.Database.move_keyspace, drop_keyspace). Every fence change the move or
    drop makes carries it, and a group refuses one whose epoch is below the epoch its fence
    was last changed at (engine.group, FENCE): once a newer move or drop has begun and
    changed a fence, an older one, however late its messages, can no longer change it. The
    catalog changes that end a move or drop are compare-and-sets on it too."""
    moving_to: str = ""
    """The region a move that began and has not changed the record since is moving the
    keyspace to ("": none): where a drop finds the copy such a move may have left."""
    retired: tuple[str, ...] = ()
    """The regions whose copies serve no reads (fenced off) but are not yet known to be
    erasable: a move's old homes, and the targets of moves rolled back before their copy
    served reads. The next move or drop lets each group erase its copy, and the region
    leaves the list once that is done (a region out of reach only delays its erasure)."""
    abandoned: tuple[str, ...] = ()
    """The regions other moves that began before it were copying the keyspace to, without
    getting to the catalog change: their copies there are nobody's, and may still serve
    reads to clients whose cache names those regions, so the next move or drop fences them
    off (before any home takes writes again) and lets their groups erase them."""
    handoff_ts: int = 0
    """A timestamp at or above every one at which a group other than the home may have
    served the keyspace: the highest stamp of the read fences (level 2) that closed its
    other copies, as moves recorded them. A group's timestamps need not follow another
    group's (a group's closed timestamp can run ahead of its leader's clock), so the home
    lifts its fence (takes writes, or serves reads after a move) only with an entry stamped
    above this: a write there then lands above every read another copy served."""
    dropping: bool = False
    """A drop has begun: the name resolves no more (lookups answer that it does not exist),
    no move may begin, and running the drop again (or another drop, which joins it at its
    epoch) finishes it."""
    create_token: bytes = field(default=b"", repr=False, compare=False)
    """The token the call that created the keyspace sent (b"": none): the same call sent
    again, after its answer was lost, is answered with this record instead of being told
    that the keyspace exists already."""


def check_keyspace_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"bad keyspace name {name!r:.80}: 1-64 characters from a-z, 0-9, '_' and '-', "
            f"starting with a letter")
    return name


def keyspace_key(name: str) -> bytes:
    return b"ks/" + name.encode()


_FIELDS = frozenset(f.name for f in fields(Keyspace))
_OPTIONAL = ("moved_ts", "epoch", "moving_to", "retired", "abandoned", "handoff_ts",
             "dropping", "create_token")
_STORED_ONLY = frozenset({"create_token"})
"""Fields the catalog keeps that are never sent to clients."""
MAX_CREATE_TOKEN = 32
"""Bytes in a keyspace.create token at most (the client sends 16 random bytes)."""


def keyspace_record(ks: Keyspace, *, stored: bool = False) -> dict:
    """The record as sent to clients (or, ``stored``, as kept in the catalog, with the
    create token, which only the node that finds a create sent again needs): a map of its
    fields, without those that moves and drops keep while they are empty (so that readers
    that predate them can read every keyspace that never moved)."""
    record = asdict(ks)
    for name in _OPTIONAL:
        if not record[name] or (name in _STORED_ONLY and not stored):
            del record[name]
    return record


def keyspace_from_record(record: dict) -> Keyspace:
    """The keyspace a record describes; fields this version does not know are ignored."""
    ks = Keyspace(**{k: v for k, v in record.items() if k in _FIELDS})
    return replace(ks, retired=tuple(ks.retired), abandoned=tuple(ks.abandoned))


def encode_keyspace(ks: Keyspace) -> bytes:
    return msgpack.packb(keyspace_record(ks, stored=True), use_bin_type=True)


def decode_keyspace(data: bytes) -> Keyspace:
    return keyspace_from_record(msgpack.unpackb(data, raw=False))


def encode_next_id(next_id: int) -> bytes:
    return _u32.pack(next_id)


def decode_next_id(data: bytes | None) -> int:
    return FIRST_KEYSPACE_ID if data is None else _u32.unpack(data)[0]
