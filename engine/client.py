"""The client library: connect to a cluster, run transactions, read from anywhere (ARCH §7).

Example::

    import engine

    async with engine.connect(["127.0.0.1:7101"], region="eu-west") as db:
        await db.create_keyspace("accounts", home_region="us-east")

        async def transfer(tx):
            a = int(await tx.get("accounts", b"alice") or b"0")
            b = int(await tx.get("accounts", b"bob") or b"0")
            await tx.put("accounts", b"alice", b"%d" % (a - 10))
            await tx.put("accounts", b"bob", b"%d" % (b + 10))

        await db.run_transaction(transfer)
        balance = await db.read("accounts", b"alice", staleness="bounded:5")

Transactions
------------
``async with db.transaction() as tx`` buffers writes in the client (reads see them: read your
writes) and commits when the block ends without an exception (rolls back otherwise). The
first read fixes the transaction's snapshot: the group's leader answers with a timestamp that
covers every commit acknowledged before the read (its closed timestamp after a ReadIndex), and
every later read is served at that timestamp. A transaction may use keyspaces homed in any
region. Its reads in another group are served at the same snapshot, with an *uncertainty
window* up to that group's own snapshot when the transaction first read there: a commit in
the window may have been acknowledged before this transaction began, and must not be missed
(no stale reads). A read that finds one on a key it reads *moves* the transaction's snapshot
above the window, after checking that nothing it has read elsewhere changed in between (a
refresh; a key that changed is a conflict). A read that had to wait for another transaction's
intent, which then committed above the snapshot, moves it the same way.

Commit: writes in one group are one message to its leader, validated by the group's adjudicator
(one-phase commit). Writes in several groups commit with two-phase commit, the client
coordinating: every group prepares in parallel (validates, and installs intents); the commit
timestamp is the largest prepare timestamp; the decision is made durable in the transaction
record on the *primary* group (one that survives a region's loss, when one takes part, so that
losing a region cannot leave intents there that nobody can finish; else one in the client's
region, when there is one) before ``commit`` returns; the other groups' intents are resolved in
the background. If the client dies in between, whoever meets an intent after its deadline
finishes the transaction from its record (aborting it there first if it was undecided). A group
accepts a write only if no key it writes was committed by someone else after the snapshot
(``isolation="serializable"``: no key it read either; in a two-group transaction the read keys
are locked from prepare to resolution), so lost updates (and, when serializable, write skew)
cannot happen. A serializable transaction does not read a regional keyspace (refused: other
regions commit its writes without seeing the reads). A refused commit raises
:class:`~engine.errors.TransactionConflictError`; :meth:`Database.run_transaction` runs the
function again with jittered exponential backoff. A read-only transaction is never sent for
validation.

Timeouts are cancel scopes: wrap any call in ``trio.move_on_after`` / ``fail_after``. Each call
also gives up after ``request_timeout_s`` of retrying with :class:`~engine.errors.UnavailableError`,
a node that took the request and never answers included (a paused process, a link cut without
a reset): after half of ``request_timeout_s`` the call tries the group's other voters. A commit
waits for its node until ``request_timeout_s`` and then raises
:class:`~engine.errors.AmbiguousCommitError` (it may have committed).

Routing
-------
The client learns the cluster's layout from the first node it reaches, keeps one connection per
node it talks to, and sends each request to the group's leader as far as it knows, following
``not_leader`` hints. A node that refuses a request for its clock (``clock_offset``: it stops
serving and hands its groups over) is passed over like one that does not lead, and so is a
node whose answer carries a timestamp too far ahead to take (for a commit that one is an
unknown outcome). A request that never reached a node is retried elsewhere; a commit whose
connection failed after it was sent raises :class:`~engine.errors.AmbiguousCommitError`
instead (it may have committed).

Stale reads
-----------
``staleness="exact:<seconds>"`` reads at exactly that far in the past; ``"bounded:<seconds>"``
at the newest timestamp the local replica has that is no older than that. Both are served by a
replica in the client's own region (the region's learner of a group homed elsewhere), without
any cross-region round trip, and never return a value newer than their timestamp nor one
older than it promises. While that replica is down, the group's voters serve them instead
(one WAN round trip: the read stays available).

Simulated WAN
-------------
When the cluster's configuration sets WAN latencies between regions (a local test cluster), the
client adds the one-way latency between its region and the node's to each request and to each
reply, so that a local cluster behaves like a geo-distributed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import random
import re
import secrets
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from . import planted
from .adjudicator import MAX_TXN_KEYS
from .catalog import (
    MODES,
    SURVIVAL_GOALS,
    Keyspace,
    check_keyspace_name,
    keyspace_from_record,
)
from .config import ConfigError, parse_address
from .errors import (
    AmbiguousCommitError,
    InvalidArgumentError,
    KeyspaceExistsError,
    KeyspaceNotFoundError,
    LimitExceededError,
    MeridianError,
    RecordTooLargeError,
    TransactionClosedError,
    TransactionConflictError,
    UnavailableError,
)
from .hlc import ClockOffsetError, HybridClock
from .merge import (
    APP_PREFIX,
    MAX_APP_VALUE_SIZE,
    MERGE,
    PUT,
    RESOLVER_NAMES,
    AddWinsSet,
    RemoteWrite,
    decode_cell,
    decode_int,
    encode_int,
    encode_set_remove,
    is_resolver_name,
    reader_for,
    resolver_for,
    write_op,
)
from .placement import (
    KEY_PREFIX_SIZE,
    MAX_USER_KEY_SIZE,
    decode_key,
    encode_key,
    keyspace_bounds,
    user_key,
)
from .rpc import (
    CallTimeoutError,
    ConnectionLostError,
    ConnectTimeoutError,
    NotSentError,
    RemoteError,
    connect_rpc,
)

__all__ = ["connect", "ConflictRecord", "Database", "Transaction", "ISOLATION_LEVELS"]

ISOLATION_LEVELS = ("snapshot", "serializable")
KEYSPACE_CACHE_S = 5.0
"""The longest a keyspace's catalog record is used without being looked up again: an older one
is looked up before it is used, so that a keyspace dropped (and perhaps created again) or moved
elsewhere is noticed within this delay, however long the client was idle. A record in use is
looked up again in the background from half this age on, so that a busy client seldom waits for
the lookup. (The groups refuse a dropped or moved keyspace's id anyway: this bounds how long a
client keeps trying the old one.)"""
KEYSPACE_REVALIDATE_S = 1.0
"""How long an operation waits for the lookup of a record older than :data:`KEYSPACE_CACHE_S`
before it goes on with the cached one (and waits for none again for half that delay). While
the catalog is out of reach (a region cut off from the meta group's leader), a regional
keyspace stays writable in its region that way; and it is safe, because the groups refuse the
id of a keyspace that was dropped or moved away (``moved``: the client looks it up again)."""
MAX_SNAPSHOT_MOVES = 8
"""How many times one read may move a transaction's snapshot before giving up (a conflict)."""
MAX_TS = 2**64 - 2
"""The largest timestamp (engine.mvcc.MAX_TS)."""
MAX_SPANS = 4096
"""The most scanned ranges a group takes in one refresh, commit or prepare
(engine.node.MAX_SPANS): a transaction that scanned more in one group sends them coalesced."""
MAX_READ_KEY_BYTES = 4 << 20
"""The most bytes of read keys one commit, prepare or refresh names in a group: beside at most
half a frame of writes (engine.config.MAX_TXN_BYTES) and :data:`MAX_SPANS` ranges, the request
stays within the largest frame a node takes. A read set larger than that, or than the
adjudicator's :data:`~engine.adjudicator.MAX_TXN_KEYS` with the keys written, is sent as
coalesced ranges instead (see :func:`_validated`)."""
MAX_LOCK_KEY_BYTES = 1 << 20
"""The most bytes of read keys one prepare locks in a group (more are locked as coalesced
ranges, see :func:`_validated`): the prepared transaction's record holds them beside its
written keys and its scanned ranges (at most :data:`MAX_SPANS`), and a group refuses a record
over one stored value (engine.mvcc.MAX_VALUE_SIZE, 4 MiB)."""
READ_PAGE_BYTES = 4 << 20
"""The most bytes of keys one read request names (as the node's answers are paged,
engine.node.SCAN_PAGE_BYTES): far below the largest frame a node takes, however many keys
:meth:`Transaction.get_many` is given."""
READ_PAGE_KEYS = 10_000
"""The most keys one read request names: as many as a node answers at once
(engine.node.SCAN_PAGE_ITEMS)."""
MAX_SCAN_LIMIT = 2**63 - 1
"""The largest ``limit`` of :meth:`Transaction.scan` (``sys.maxsize``, as a caller may pass for
no limit): what the scan asks a node for, up to twice that, is still a count the nodes take
(msgpack's, below 2**64)."""
MAX_CONFLICTS_PAGE = 10_000
"""The largest ``limit`` of :meth:`Database.conflicts` (what a node answers at most)."""
COPY_PAGE = 1000
"""Keys per page when a keyspace's data is copied to its new home."""
CONNECT_ATTEMPT_S = 1.0
"""How long :func:`connect` first waits for one node's answer before it asks the next."""
MOVE_ROLLBACK_S = 5.0
"""How long a failed keyspace move tries to lift its fence in the old home."""
FENCE_ATTEMPTS = 3
"""How many times a move or drop sends one fence change whose outcome came back unknown."""
MAX_MERGE_TS = 2**64 - 2
"""The timestamp a transaction's own pending regional write is merged at when it reads it
back (above every committed write: its own is the newest it can see)."""
BACKGROUND_DRAIN_S = 2.0
"""How long closing a connection waits for intents it is still resolving in the background."""
_T = TypeVar("_T")


def _parse_address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, "nodes")
    except ConfigError as exc:
        raise InvalidArgumentError(f"bad node address: {exc.reason}") from None


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it
            raise InvalidArgumentError(
                f"{what} is a str that is not valid Unicode text ({exc.reason} at position "
                f"{exc.start}): pass bytes") from None
    raise InvalidArgumentError(f"{what} must be bytes or str, not {type(value).__name__}")


def refuse_awaitable(result: object, hint: str) -> None:
    """Refuses what a function given to ``run_transaction`` returned if it is an awaitable
    (closed first, so that it does not run later): committing would leave out what it was
    meant to do, and awaiting it afterwards would find the transaction over.

    Raises:
        InvalidArgumentError: ``result`` is awaitable; the message ends with ``hint``.
    """
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise InvalidArgumentError(
            f"the function given to run_transaction returned an awaitable {hint}")


def check_retry_policy(max_attempts: object, base_delay_s: object, max_delay_s: object) -> None:
    """Refuses a retry policy of ``run_transaction`` before its first attempt: a delay that
    is negative or not a number would fail only at the first conflict, as the sleep's error
    instead of the conflict, and ``base_delay_s`` above ``max_delay_s`` would wait longer
    than the maximum.

    Raises:
        InvalidArgumentError: ``max_attempts`` not an int >= 1, or not ``0 <= base_delay_s
            <= max_delay_s`` (finite numbers of seconds).
    """
    if type(max_attempts) is not int or max_attempts < 1:
        raise InvalidArgumentError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
    for name, value in (("base_delay_s", base_delay_s), ("max_delay_s", max_delay_s)):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 <= value < math.inf):
            raise InvalidArgumentError(f"{name} must be a finite number of seconds >= 0, not "
                                       f"{value!r}")
    if base_delay_s > max_delay_s:
        raise InvalidArgumentError(f"base_delay_s ({base_delay_s}) must be at most max_delay_s "
                                   f"({max_delay_s})")


MAX_REQUEST_TIMEOUT_S = 10**9
"""The longest ``request_timeout_s`` :func:`connect` takes (about 31 years): any finite
timeout a caller means, and one the clock's float deadlines can still count."""

_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_staleness(staleness: str) -> tuple[str, int]:
    # At most what a timestamp can count, in whole seconds (about 584 years): nodes take the
    # staleness in nanoseconds as an int in 0..MAX_TS.
    max_seconds = MAX_TS // 1_000_000_000
    expected = (f"expected 'exact:<seconds>' or 'bounded:<seconds>' with 0 <= seconds <= "
                f"{max_seconds}")
    if not isinstance(staleness, str):
        raise InvalidArgumentError(f"staleness must be a str ({expected}), not "
                                   f"{type(staleness).__name__}")
    kind, _, amount = staleness.partition(":")
    # A plain decimal number: float() would also take "1_0", " 1 ", "nan" and "inf" (one
    # beyond a float's range reads as inf, which the bound refuses).
    seconds = float(amount) if _SECONDS.fullmatch(amount) else -1.0
    if kind not in ("exact", "bounded") or not 0 <= seconds <= max_seconds:
        raise InvalidArgumentError(f"staleness {staleness!r:.80}: {expected}")
    return kind, int(seconds * 1e9)


@dataclass(slots=True)
class _NodeInfo:
    id: int
    region: str
    host: str
    port: int


class Database:
    """A connection to a cluster. Create it with :func:`connect`."""

    def __init__(self, nursery: trio.Nursery, describe: dict, region: str, *,
                 request_timeout_s: float, simulate_wan: bool,
                 clock: HybridClock | None = None) -> None:
        self._nursery = nursery
        self.region = region
        self.cluster = describe["cluster"]
        self.regions: tuple[str, ...] = tuple(describe["regions"])
        if region not in self.regions:
            raise InvalidArgumentError(f"unknown region {region!r} (regions: "
                                       f"{', '.join(self.regions)})")
        self._nodes = {int(i): _NodeInfo(int(i), r, h, p)
                       for i, (r, h, p) in describe["nodes"].items()}
        self._groups = {int(g): v for g, v in describe["groups"].items()}
        self._group_of_region = {v["region"]: g for g, v in self._groups.items()
                                 if v.get("kind", "data") == "data" and v["region"]}
        self._spread_of_region = {v["region"]: g for g, v in self._groups.items()
                                  if v.get("kind") == "spread"}
        self._meta_group = next(g for g, v in self._groups.items() if not v["region"])
        for g, v in self._groups.items():
            unknown = [n for n in (*v["voters"], *v["learners"])
                       if type(n) is not int or n not in self._nodes]
            if unknown:
                raise ValueError(f"group {g} names nodes that are not described: {unknown}")
        self._leaders = {g: leader for g, v in self._groups.items()
                         if (leader := self._leader_hint(v["leader"]))}
        self._latency = {}
        if simulate_wan:
            for a, b, ms in describe["wan_latency_ms"]:
                self._latency[(a, b)] = self._latency[(b, a)] = ms / 1000.0
        self.limits = describe["limits"]
        self.clock = clock or HybridClock(max_offset_ns=describe["max_clock_offset_ns"])
        self._request_timeout_s = request_timeout_s
        self._conns: dict[int, Any] = {}
        self._bytes_done: dict[int, list[int]] = {}  # node id -> [sent, received], closed conns
        self._connecting: dict[int, trio.Event] = {}
        self._keyspaces: dict[str, Keyspace] = {}
        self._keyspace_fetched: dict[str, float] = {}
        self._keyspace_refreshing: set[str] = set()
        self._keyspace_unreachable: dict[str, float] = {}  # name -> until when not to wait
        self._rng = random.Random(secrets.randbits(64))
        self._closed = False
        self._holding: set[trio.CancelScope] = set()  # one per connection, see _hold_connection
        self._background = 0
        self._background_done = trio.Event()
        # Nodes this handle must not reach (fault injection inside a node: a partition).
        self.unreachable: frozenset[int] = frozenset()

    def _leader_hint(self, hint: object) -> int:
        """A node's word on who leads a group, as the id of a node this client knows, or 0:
        anything else (not an int, or a node that is not described) is no hint."""
        return hint if type(hint) is int and hint in self._nodes else 0

    # ------------------------------------------------------------------ catalog

    async def create_keyspace(self, name: str, *, mode: str = "global",
                              home_region: str | None = None,
                              resolver: str = "lww", survive: str = "zone") -> Keyspace:
        """Creates a keyspace: ``mode="global"`` homed in ``home_region`` (default: the
        client's region), or ``mode="regional"``, writable in every region, whose concurrent
        writes are reconciled by ``resolver`` (``"lww"``, ``"counter"``, ``"max"`` or
        ``"add_wins_set"``, or ``"app:<name>"``, an application resolver of the nodes'
        ``[cluster.resolvers]``; see :mod:`engine.merge`). ``survive="region"`` (three regions or
        more) puts a global keyspace's voters in three regions: commits wait for a second
        region, and losing a whole region loses no acknowledged write.

        Raises:
            InvalidArgumentError: a bad name, an unknown ``mode``, ``survive`` or
                ``home_region``, or a ``resolver`` that names none (checked again by the node,
                which knows the application resolvers configured).
            KeyspaceExistsError: the name is taken (also while a drop of it is under way).
                Not raised for the keyspace this call created: sent again after its answer
                was lost, the call carries the same random token, and the node that finds
                it in the keyspace's record answers that record.
        """
        check_keyspace_name(name)
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, not "
                                       f"{mode!r:.80}")
        if survive not in SURVIVAL_GOALS:
            raise InvalidArgumentError(f"survive must be one of {', '.join(SURVIVAL_GOALS)}, "
                                       f"not {survive!r:.80}")
        if home_region is not None and home_region not in self.regions:
            raise InvalidArgumentError(f"home_region must be None or one of "
                                       f"{', '.join(self.regions)}, not {home_region!r:.80}")
        if not is_resolver_name(resolver):
            raise InvalidArgumentError(f"resolver must be one of {', '.join(RESOLVER_NAMES)} "
                                       f"or {APP_PREFIX}<name>, not {resolver!r:.80}")
        # Not a commit: the token makes the call safe to send again after its answer was
        # lost. Finding the keyspace it created, the node answers its record instead of
        # saying that it exists already.
        rec = await self._call_group(self._meta_group, "keyspace.create",
                                     {"name": name, "mode": mode, "resolver": resolver,
                                      "survive": survive, "home": home_region or self.region,
                                      "token": secrets.token_bytes(16)},
                                     expect=_KEYSPACE_RECORD)
        ks = keyspace_from_record(rec)
        self._keyspaces[name] = ks
        self._keyspace_fetched[name] = trio.current_time()
        return ks

    async def drop_keyspace(self, name: str) -> None:
        """Drops a keyspace: its name no longer resolves, and its data can no longer be read
        or written through it, even by a client that still has its record cached. (A stale
        read, ``staleness="exact:..."`` or ``"bounded:..."``, answered by a replica that has
        not yet applied the drop's fence may still return the keyspace as it was at a
        timestamp before the drop, within the staleness it allows.)

        Steps, safe to repeat (run the call again if it was interrupted): the drop begins in
        the catalog (the record is marked, and its epoch raised: the name resolves no more, a
        move of it can no longer begin, and one under way can no longer change a fence, see
        :attr:`~engine.catalog.Keyspace.epoch`); the keyspace's id is fenced against reads
        and writes in every group that may hold its data (its home group, or every region's
        data group for a regional keyspace, and the groups a move under way or unfinished
        was using), so that a client whose cache still names it is told that it ``moved``
        and looks the name up again; the groups are told they may erase its data there;
        last, the record is deleted. If the call fails before that, the name stays taken and
        no longer resolves until the call is run again (clients that cached the record may
        go on using the keyspace until its fences are set, or their cache expires, see
        :data:`KEYSPACE_CACHE_S`). Drops of one keyspace at once all work at the epoch of
        the first (``keyspace.begin``), and any of them may finish it.

        Each group's leader erases the data in the background, a bounded range at a time,
        once the maximum transaction lifetime has passed since the fence, so that its space
        is reused within about that lifetime (plus the garbage-collection interval) after
        the drop. The copy a moved keyspace leaves in its old home is erased the same way,
        by the move (or by the next move or drop, if the move stopped first or that region
        was out of reach).
        """
        ks = keyspace_from_record(await self._begin(name, "drop"))
        try:
            # Every group within reach is fenced, even past one out of reach: each fence
            # stops the clients that cached the record there at once, and the call run
            # again fences what is left.
            unreachable = None
            for group in self._groups_holding(ks):
                try:
                    await self._erase_copy(group, ks)
                except UnavailableError as exc:
                    unreachable = unreachable or exc
            if unreachable is not None:
                raise unreachable
            await self._call_group(self._meta_group, "keyspace.drop",
                                   {"name": name, "id": ks.id, "epoch": ks.epoch})
        except KeyspaceNotFoundError:
            pass  # another drop of it, begun at the same time, has ended it
        finally:
            self._forget_keyspace(name)

    async def list_keyspaces(self) -> list[Keyspace]:
        """Every keyspace's catalog record, by name, read a page at a time (each page at a
        snapshot of its own: a keyspace created or dropped meanwhile may or may not be
        listed; every other one is, once)."""
        out: list[Keyspace] = []
        after: str | None = ""
        while after is not None:
            page = await self._call_group(self._meta_group, "keyspace.list", {"after": after},
                                          expect=_KEYSPACE_PAGE)
            out.extend(keyspace_from_record(r) for r in page["keyspaces"])
            if page["next"] is not None and page["next"] <= after:
                # Names are listed in order: a page that does not move on would be asked
                # for again and again.
                raise UnavailableError(f"the catalog answered 'keyspace.list' after {after!r} "
                                       f"with a next page after {page['next']!r}: is it a "
                                       f"node of another version?")
            after = page["next"]
        return out

    async def keyspace(self, name: str) -> Keyspace:
        """The keyspace's catalog record (cached, for at most :data:`KEYSPACE_CACHE_S`)."""
        # Every operation on a keyspace starts here: once closed, each says so, even one
        # that a cached record would otherwise let run (up to its background lookup, which
        # the closed connection can no longer start).
        self._check_open()
        ks = self._keyspaces.get(name) if type(name) is str else None  # a list is unhashable
        if ks is None:
            check_keyspace_name(name)
            return await self._lookup_keyspace(name)
        now = trio.current_time()
        age = now - self._keyspace_fetched.get(name, -math.inf)
        if age > KEYSPACE_CACHE_S and now >= self._keyspace_unreachable.get(name, -math.inf):
            # Too old to be trusted: looked up before it is used, unless the catalog is out
            # of reach (see KEYSPACE_REVALIDATE_S).
            with trio.move_on_after(KEYSPACE_REVALIDATE_S):
                with contextlib.suppress(UnavailableError, OSError):
                    return await self._lookup_keyspace(name)
            self._keyspace_unreachable[name] = trio.current_time() + KEYSPACE_CACHE_S / 2
        if age > KEYSPACE_CACHE_S / 2 and name not in self._keyspace_refreshing:
            # Looked up again before it expires, beside the caller rather than in its way:
            # the lookup crosses regions (the catalog's group spans them).
            self._keyspace_refreshing.add(name)
            self._nursery.start_soon(self._refresh_keyspace, name)
        return ks

    async def _lookup_keyspace(self, name: str) -> Keyspace:
        """The keyspace's record from the catalog now (cached; a dropped one is forgotten)."""
        started = trio.current_time()
        try:
            rec = await self._call_group(self._meta_group, "keyspace.get", {"name": name},
                                         expect=_KEYSPACE_RECORD)
        except KeyspaceNotFoundError:
            self._forget_keyspace(name)
            raise
        ks = keyspace_from_record(rec)
        # Unless a lookup that started later has answered already (lookups may overlap: the
        # background refresh and a caller's own).
        if started >= self._keyspace_fetched.get(name, -math.inf) or name not in self._keyspaces:
            self._keyspaces[name] = ks
            self._keyspace_fetched[name] = started
        return ks

    async def _refresh_keyspace(self, name: str) -> None:
        try:
            await self._lookup_keyspace(name)
        except (MeridianError, OSError):
            pass  # tried again on the next use (a dropped keyspace is forgotten already)
        finally:
            self._keyspace_refreshing.discard(name)

    def _forget_keyspace(self, name: str | None = None) -> None:
        """Forgets the cached record of keyspace ``name`` (of every keyspace: None) with
        when it was looked up: the names of dropped keyspaces must not pile up in a
        long-lived handle."""
        cached = (self._keyspaces, self._keyspace_fetched, self._keyspace_unreachable)
        for by_name in cached:
            if name is None:
                by_name.clear()
            else:
                by_name.pop(name, None)

    def _groups_holding(self, ks: Keyspace) -> list[int]:
        """The groups that may hold a keyspace's data: every region's data group for a
        regional keyspace; else its home group first, then those of the regions its moves are
        copying it to or left copies in (``moving_to``, ``retired``, ``abandoned``)."""
        if ks.mode == "regional":
            return sorted(self._group_of_region.values())
        homes = [r for r in (ks.home, ks.moving_to, *ks.retired, *ks.abandoned) if r]
        return list(dict.fromkeys(self._group_in(ks, h) for h in homes))

    def group_of(self, ks: Keyspace) -> int:
        """The group a keyspace's keys are read and written in, from this client: its home
        region's, or this region's own for a regional keyspace."""
        if ks.mode == "regional":
            return self._group_of_region[self.region]
        if ks.survive == "region":
            return self._spread_of_region[ks.home]
        return self._group_of_region[ks.home]

    # ------------------------------------------------------------------ transactions

    def transaction(self, isolation: str = "snapshot") -> Transaction:
        """A new transaction; use it as ``async with db.transaction() as tx``. Refused on a
        closed handle (:class:`~engine.errors.InvalidArgumentError`)."""
        self._check_open()
        if isolation not in ISOLATION_LEVELS:
            raise InvalidArgumentError(f"isolation must be one of {ISOLATION_LEVELS}, "
                                       f"not {isolation!r}")
        return Transaction(self, isolation)

    async def run_transaction(self, fn: Callable[[Transaction], Awaitable[_T]], *,
                              isolation: str = "snapshot", max_attempts: int = 20,
                              base_delay_s: float = 0.002, max_delay_s: float = 0.5) -> _T:
        """Runs ``await fn(tx)`` in a transaction and commits it, again (in a new
        transaction) on every :class:`~engine.errors.TransactionConflictError`, raised by
        ``fn`` or the commit, after sleeping a random time up to a delay that doubles from
        ``base_delay_s`` to ``max_delay_s``; the conflict of the ``max_attempts``-th attempt is
        raised. Every other error is raised at once, without a retry: an
        :class:`~engine.errors.AmbiguousCommitError` above all, since the transaction may have
        committed (read to find out before running it again), and an
        :class:`~engine.errors.UnavailableError`. The only retry loop of the product:
        ``fn`` must be safe to run several times (no side effects outside ``tx``). ``fn`` may
        end the transaction itself (``commit()`` or ``rollback()``, as in ``async with``):
        it is then not committed again, nor run again once committed (a conflict it raises
        afterwards, from another transaction, is raised). ``fn`` returning an awaitable (an
        operation of ``tx`` not awaited: ``return tx.put(...)``) is refused, and so is ``fn``
        returning something that is not awaitable (a plain function): nothing is committed
        (but what ``fn`` committed itself, as the error then says). A bad policy (see
        :func:`check_retry_policy`), or an ``fn`` that is not callable, raises
        :class:`~engine.errors.InvalidArgumentError` before ``fn`` runs."""
        check_retry_policy(max_attempts, base_delay_s, max_delay_s)
        if not callable(fn):
            raise InvalidArgumentError(f"run_transaction takes an async function of the "
                                       f"transaction, not {fn!r:.60}")
        delay = base_delay_s
        for attempt in range(1, max_attempts + 1):
            tx = self.transaction(isolation)
            try:
                pending = fn(tx)
                if not inspect.isawaitable(pending):
                    # A plain function: awaiting what it returned would raise a TypeError
                    # about an ``await`` expression the caller never wrote.
                    raise InvalidArgumentError(
                        f"run_transaction takes an async function; {fn!r} returned "
                        f"{type(pending).__name__}, not an awaitable (run plain functions "
                        f"with engine.blocking.BlockingDatabase.run_transaction)")
                result = await pending
                # The function may have committed the transaction itself: the error says
                # so, since a caller told of a rollback would run it again.
                ended = ("committed (by the function)" if tx._state == "committed"
                         else "rolled back")
                refuse_awaitable(result, f"(an operation not awaited?): the transaction was "
                                         f"{ended}")
                if not tx._ended():
                    await tx.commit()
                return result
            except TransactionConflictError:
                # Not this transaction's conflict if ``fn`` committed it: running ``fn``
                # again would commit its writes a second time.
                committed = tx._state == "committed"
                tx._discard()
                if committed or attempt == max_attempts:
                    raise
            except BaseException:
                tx._discard()
                raise
            await trio.sleep(self._rng.uniform(0, delay))
            delay = min(max_delay_s, delay * 2)
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, keyspace: str, key: bytes | str, *,
                   staleness: str | None = None) -> bytes | None:
        """One key, outside any transaction: strong by default (a fresh snapshot at the
        leader), or from a replica in this client's region with ``staleness``."""
        return (await self.read_version(keyspace, key, staleness=staleness))[0]

    async def read_version(self, keyspace: str, key: bytes | str, *,
                           staleness: str | None = None) -> tuple[bytes | None, int]:
        """Like :meth:`read`, and also the timestamp the value was read at."""
        for attempt in range(MAX_SNAPSHOT_MOVES):
            try:
                return await self._read_version(keyspace, key, staleness)
            except TransactionConflictError as exc:
                if exc.reason != "moved" or attempt == MAX_SNAPSHOT_MOVES - 1:
                    raise
                await trio.sleep(0.01 * 2**attempt)  # the catalog is switching homes
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_version(self, keyspace: str, key: bytes | str,
                            staleness: str | None) -> tuple[bytes | None, int]:
        ks = await self.keyspace(keyspace)
        stored = encode_key(ks.id, _check_key(key))
        group = self.group_of(ks)
        if staleness is None:
            payload: dict = {"group": group, "keys": [stored]}
            for _ in range(MAX_SNAPSHOT_MOVES):
                try:
                    reply = await self._call_group(group, "read", payload,
                                                   expect=_READ_ANSWER)
                    break
                except _Restart as restart:
                    # A transaction this read waited for committed above its snapshot:
                    # read again at (or above) that commit.
                    payload = {"group": group, "keys": [stored], "ts": 0, "min_ts": restart.ts}
            else:
                raise UnavailableError(f"group {group}: the read's snapshot kept moving")
        else:
            kind, ns = _parse_staleness(staleness)
            payload = {"group": group, "keys": [stored], "stale": True}
            if kind == "exact":
                payload["ts"] = max(1, self.clock.now() - ns)
                if payload["ts"] < ks.moved_ts:
                    # Before the copy that brought the keyspace to its home: no group serves
                    # that snapshot any more (what its home answers, once it has applied the
                    # move; a replica that has not would read the keyspace as empty).
                    raise TransactionConflictError(
                        f"keyspace {keyspace!r} moved to {ks.home} after the read's timestamp",
                        "moved")
            else:
                payload["bounded_ns"] = max(1, ns)
                if ks.moved_ts:
                    # Never below the move's copy: a replica that has not applied it yet waits
                    # for it, or lets the group's voters answer.
                    payload["min_ts"] = ks.moved_ts
            try:
                reply = await self._call_local(group, "read", payload, expect=_READ_ANSWER)
            except TransactionConflictError as exc:
                if exc.reason != "too_old" or kind != "exact":
                    raise
                # A time further back than the group keeps versions for: unlike a
                # transaction's snapshot, no retry brings it within reach. The refusal names
                # the group's lifetime, which need not be the one this client was told.
                raise InvalidArgumentError(
                    f"staleness {staleness!r:.80} reaches further back than the cluster keeps "
                    f"versions for: {exc}") from None
        if len(reply["values"]) != 1:
            raise UnavailableError(f"group {group} answered {len(reply['values'])} values for "
                                   f"1 key")
        value = reply["values"][0]
        if ks.mode == "regional":
            cell = None if value is None else decode_cell(value)
            value = reader_for(ks.resolver).value_of(cell)
        return value, reply["ts"]

    async def move_keyspace(self, name: str, home_region: str) -> Keyspace:
        """Moves a global keyspace to another home region, online.

        Steps, safe to repeat (run the call again if it was interrupted):

        1. the move begins in the catalog: the record's epoch is raised (a move or drop
           that began before can no longer change a fence, see
           :attr:`~engine.catalog.Keyspace.epoch`); the copies earlier moves left behind
           are fenced off and erased (those that may still serve reads first, see
           :attr:`~engine.catalog.Keyspace.abandoned`; the erasure of those that cannot,
           :attr:`~engine.catalog.Keyspace.retired`, waits for a region out of reach);
        2. writes to the keyspace are fenced off in the old group (writers get a retryable
           ``moved`` conflict; :meth:`run_transaction` retries them, in the new home once it
           is there), and reads and writes in the new group, where a client whose cache
           still names that home from an earlier stay could otherwise write into the copy;
        3. its live keys are copied into the new group, a page at a time, each page read at
           a snapshot taken once the transactions prepared before the fence that wrote its
           keys have finished (keys left there by an earlier stay are deleted; only this
           move's copy passes the new group's fence); the new group serves reads from the
           copy's timestamp on;
        4. the old group refuses reads too, and the move waits for the transactions
           prepared there that read the keyspace (serializable reads lock what they read
           until resolved, which the new group cannot know of); the catalog's record points
           to the new home, if no other move or drop of the keyspace has begun since (a
           compare-and-set on the epoch);
        5. the new group accepts writes; the old group is told it may erase its copy (if
           its region is out of reach, the next move or drop tells it); the record forgets
           the copies erased.

        Reads are refused (and retried) only between the two parts of step 4; writes, from
        step 2 to step 5. A cancellation (a caller's timeout) is a failure before the catalog
        change; from it on, the change and the new group's first part of step 5 are made
        before the call ends. If a step before the catalog change fails, the copy is fenced off
        and erased, the old group's fence lifted again (the keyspace stays where it was,
        writable), and the error raised; if the copy cannot be fenced off, the old home stays
        fenced against writes until a move or drop ends it. A move or drop of the keyspace
        that begins meanwhile overtakes this one: before the catalog change, this call then
        fails with :class:`~engine.errors.TransactionConflictError`, reason
        ``catalog_changed``, and leaves every fence to the newer one; after it, it returns
        the record it made, and the newer one finishes step 5. If this call fails otherwise,
        or this client dies midway, the keyspace stays fenced until a move (this one run
        again, or one to anywhere, its current home included) or a drop ends it, which needs
        every region where a copy may serve reads (:attr:`~engine.catalog.Keyspace.abandoned`)
        in reach. Each group that takes the keyspace over stamps its first entries above the
        last read another copy served (:attr:`~engine.catalog.Keyspace.handoff_ts`).
        """
        if home_region not in self.regions:
            raise InvalidArgumentError(f"unknown region {home_region!r} (regions: "
                                       f"{', '.join(self.regions)})")
        ks = keyspace_from_record(await self._begin(name, "move", home_region))
        try:
            return await self._move(ks, home_region)
        finally:
            self._forget_keyspace(name)

    async def _move(self, ks: Keyspace, home_region: str) -> Keyspace:
        """:meth:`move_keyspace` once begun (``ks``: the record it began)."""
        old = self.group_of(ks)
        new = self._group_in(ks, home_region)
        erased: list[str] = []
        # The home lifts its fence only with an entry stamped above every read another
        # copy served (see Keyspace.handoff_ts): those of the copies this call closes too.
        floor = ks.handoff_ts
        try:
            for region in ks.abandoned:
                # A copy there may still serve reads (a client whose cache names that
                # region): fenced off before any home takes writes again.
                floor = max(floor, await self._erase_copy(self._group_in(ks, region), ks))
                erased.append(region)
        finally:
            if erased:  # whatever happens next, the record need not name them any more
                with trio.CancelScope(shield=True), trio.move_on_after(MOVE_ROLLBACK_S):
                    with contextlib.suppress(MeridianError, OSError):
                        await self._settle(ks, erased, done=False, handoff_ts=floor)
        for region in ks.retired:
            # Fenced against reads already: only its erasure waits, which a region out of
            # reach may delay (the next move or drop tries again). The target is left as
            # it is, to be copied over.
            if region != home_region:
                with trio.move_on_after(MOVE_ROLLBACK_S):
                    with contextlib.suppress(MeridianError, OSError):
                        await self._erase_copy(self._group_in(ks, region), ks)
                        erased.append(region)
        if old == new:
            # Already there: lift the write fence that a move here left (interrupted before
            # its last step), or that a move away from here did (rolled back, or interrupted
            # before the catalog change).
            await self._fence_at(new, ks, 0, ks.moved_ts, after=floor)
            return await self._settle(ks, erased)
        # Until this move has let the new group serve reads, it serves none if it is a
        # retired home (fenced off: keyspace.begin does not leave it listed when a move that
        # died may have opened it again) and this move's fences there only close it.
        may_serve = home_region not in ks.retired
        try:
            await self._fence_at(old, ks, 1, ks.moved_ts)  # no writes; reads as before
            await self._fence_at(new, ks, 1, MAX_TS)  # no reads, no writes until copied
            copied_at = await self._copy_keyspace(ks, old, new)
            may_serve = True
            await self._fence_at(new, ks, 1, copied_at)  # reads from the copy on
            # No reads; the old home served none above this stamp.
            floor = max(floor, (await self._fence_at(old, ks, 2))["ts"])
            # Nor takes any new lock: the new home takes no write before those held there
            # (a prepared serializable transaction's reads) are released.
            await self._call_group(old, "keyspace.unlocked",
                                   {"group": old, "keyspace_id": ks.id})
        except BaseException as exc:
            if isinstance(exc, TransactionConflictError) and exc.reason == "catalog_changed":
                raise  # overtaken: the fences are the newer move's or drop's now
            # The catalog still names the old home: fence the copy off (reads too: a client
            # whose cache names the new home must not read it once the old home takes
            # writes again), lift the old home's fence, and erase the copy. Best effort: if
            # it fails, running the move again ends it. A newer move or drop's fences are
            # left alone: each of these changes carries this move's epoch.
            with trio.CancelScope(shield=True), trio.move_on_after(MOVE_ROLLBACK_S):
                closed = not may_serve
                with contextlib.suppress(MeridianError, OSError):
                    if may_serve:
                        floor = max(floor, (await self._fence_at(new, ks, 2))["ts"])
                        closed = True
                    await self._fence_at(old, ks, 0, ks.moved_ts, after=floor)
                with contextlib.suppress(MeridianError, OSError):
                    await self._erase_copy(new, ks)
                    erased.append(home_region)
                if closed:
                    # The copy serves no reads: what is left of it is only to erase, which
                    # a region out of reach may delay (it is no longer this move's target).
                    with contextlib.suppress(MeridianError, OSError):
                        await self._settle(ks, erased, retire=[] if home_region in erased
                                           else [home_region], handoff_ts=floor)
            raise
        # From here on the move only goes forward, even if the caller cancels it: stopped
        # at the catalog change (whose outcome a rollback cannot know) or before the lift,
        # it would leave the keyspace fenced against writes until another move ended it.
        with trio.CancelScope(shield=True):
            # Refused if another move or drop began since (it ends or undoes this one); if
            # the answer is lost, running the move again finds out which.
            rec = await self._call_group(self._meta_group, "keyspace.rehome", {
                "name": ks.name, "id": ks.id, "epoch": ks.epoch, "home": home_region,
                "moved_ts": copied_at, "handoff_ts": floor}, expect=_KEYSPACE_RECORD)
            moved = keyspace_from_record(rec)
            try:
                # The old home refuses reads since before the catalog change.
                await self._fence_at(new, moved, 0, copied_at, after=floor)
            except TransactionConflictError as exc:
                if exc.reason != "catalog_changed":
                    raise
                return moved  # the move or drop that overtook this one finishes it
        with trio.move_on_after(MOVE_ROLLBACK_S):
            with contextlib.suppress(MeridianError, OSError):
                await self._erase_copy(old, moved)
                erased.append(ks.home)
        return await self._settle(moved, erased)

    async def _begin(self, name: str, op: str, to: str | None = None) -> dict:
        """Begins a move (to region ``to``) or a drop of keyspace ``name`` in the catalog:
        its record, at the move's or drop's own epoch (see ``keyspace.begin``). The begin
        names the keyspace's id, looked up first: if its answer is lost and the call is
        sent again, it must not begin with another keyspace that took the name meanwhile."""
        check_keyspace_name(name)
        self._forget_keyspace(name)
        found = await self._call_group(self._meta_group, "keyspace.get",
                                       {"name": name, "dropping": op == "drop"},
                                       expect=_KEYSPACE_RECORD)
        payload: dict[str, Any] = {"name": name, "op": op, "id": found["id"]}
        if to is not None:
            payload["to"] = to
        return await self._call_group(self._meta_group, "keyspace.begin", payload,
                                      expect=_KEYSPACE_RECORD)

    async def _settle(self, ks: Keyspace, erased: list[str], *, done: bool = True,
                      retire: Sequence[str] = (), handoff_ts: int = 0) -> Keyspace:
        """Ends a move in the catalog (with ``done``; else it only records what it erased):
        the record forgets the copies in the regions of ``erased``, and lists those of
        ``retire`` (fenced against reads, not yet erasable) as retired, its ``handoff_ts``
        raised to ``handoff_ts``. Answers the record, or ``ks`` if a newer move or drop has
        begun meanwhile (it owns the record now)."""
        try:
            return keyspace_from_record(await self._call_group(
                self._meta_group, "keyspace.settle",
                {"name": ks.name, "id": ks.id, "epoch": ks.epoch, "erased": erased,
                 "done": done, "retire": list(retire), "handoff_ts": handoff_ts},
                expect=_KEYSPACE_RECORD))
        except TransactionConflictError as exc:
            if exc.reason != "catalog_changed":
                raise
            return ks

    def _group_in(self, ks: Keyspace, region: str) -> int:
        """The group that holds ``ks`` when ``region`` is its home."""
        return self.group_of(dataclasses.replace(ks, home=region))

    async def _erase_copy(self, group: int, ks: Keyspace) -> int:
        """Fences off reads and writes of the keyspace in ``group``, which is not its home (or
        is being dropped), and lets the group erase what it holds of it. Returns a timestamp
        of the group above every read of the keyspace it served (the read fence's stamp, or
        a later one)."""
        # Level 3 needs level 2, and that level 2 is this epoch's once this change has been
        # applied (refused at the same epoch, it was set by this epoch already: a retry, or
        # a drop this one joined), so no expectation of its stamp is needed.
        reply = await self._fence_at(group, ks, 2)
        closed_at = reply["ts"]
        if reply["done"] or reply["fence"][0] == 2:
            reply = await self._fence_at(group, ks, 3)
        if not reply["done"] and reply["fence"][0] != 3:
            raise UnavailableError(f"keyspace {ks.name!r}: group {group} refused to fence it "
                                   f"off ({reply['fence']})")
        return closed_at

    async def _fence_at(self, group: int, ks: Keyspace, level: int,
                        available_from: int = 0, *, after: int = 0) -> dict:
        """Sets the keyspace's fence in ``group`` (see engine.group, FENCE) at the epoch of
        the move or drop that ``ks`` is the record of, with an entry stamped above ``after``.
        Answers the node's reply: ``ts``, a timestamp of the group at or after the change (a
        level 2 fence's stamp), and ``done``: false when the fence did not change, with
        ``fence``, the ``[level, available_from]`` found. Raises
        :class:`~engine.errors.TransactionConflictError`, reason ``catalog_changed``, if a
        newer move or drop has changed this fence since. A change whose outcome came back
        unknown (:class:`~engine.errors.AmbiguousCommitError`) is sent again, up to
        :data:`FENCE_ATTEMPTS` times in all."""
        payload = {"group": group, "keyspace_id": ks.id, "level": level,
                   "available_from": available_from, "epoch": ks.epoch}
        if after:
            payload["after"] = after
        for attempt in range(1, FENCE_ATTEMPTS + 1):
            try:
                reply = await self._call_group(group, "keyspace.fence", payload,
                                               expect=_FENCE_ANSWER)
                break
            except AmbiguousCommitError:
                # Whether it applied is unknown. Sent again at this epoch, it applies, or
                # is refused as no step forward, the fence found showing it (done false).
                if attempt == FENCE_ATTEMPTS:
                    raise
        if not reply["done"] and (reply.get("fence") is None or reply.get("epoch") is None):
            raise UnavailableError(f"group {group} answered 'keyspace.fence' with a refusal "
                                   f"that does not name the fence found: is its leader a node "
                                   f"of another version?")
        if not reply["done"] and reply["epoch"] > ks.epoch:
            raise TransactionConflictError(
                f"keyspace {ks.name!r}: a newer move or drop of it began (its epoch is "
                f"{reply['epoch']}, this one's {ks.epoch})", "catalog_changed")
        return reply

    async def _copy_keyspace(self, ks: Keyspace, old: int, new: int) -> int:
        """Copies the keyspace's live keys from ``old`` to ``new`` (deleting the keys ``new``
        has of it that ``old`` has not), a page at a time: the copy holds one page of the
        keyspace, whatever its size. Returns a timestamp of ``new`` above every commit of the
        copy, from which ``new`` may serve it.

        The keyspace is fenced against writes in both groups, so each page is read at a new
        strong snapshot: once the transactions prepared before the fence that wrote its keys
        have finished (the scan waits for them), its keys no longer change, and a copy that
        takes longer than the maximum transaction lifetime reads no snapshot the group has
        garbage-collected. Each batch is stamped above the snapshots read so far: the copy's
        writes must not show at timestamps where the old home did not have them yet."""
        lo, hi = keyspace_bounds(ks.id)
        snapshot = 0
        start = lo
        while start < hi:
            page, ts, end = await self._scan_page(ks, old, start, hi)
            snapshot = max(snapshot, ts)
            await self._copy_writes(new, ks, page, snapshot)
            # Keys an earlier stay left in the part of the range this page covers (the copy
            # has written there only the page's own keys).
            source = {k for k, _ in page}
            stale_start = start
            while stale_start < end:
                stale, _, stale_start = await self._scan_page(ks, new, stale_start, end,
                                                              ignore_fence=True)
                await self._copy_writes(new, ks, [[k, None] for k, _ in stale
                                                  if k not in source], snapshot)
            start = end
        # The fence stays as it is: the change, refused, only stamps an entry after the copy.
        return (await self._fence_at(new, ks, 1, MAX_TS, after=snapshot))["ts"]

    async def _copy_writes(self, group: int, ks: Keyspace, writes: list, after: int) -> None:
        """Commits ``writes`` of the copy into ``group`` in batches within the transaction
        limits, stamped above ``after``."""
        limits = self.limits
        batch: list = []
        size = 0
        for w in writes:
            w_size = len(w[0]) + len(w[1] or b"")
            if batch and (len(batch) >= limits["max_txn_keys"]
                          or size + w_size > limits["max_txn_bytes"]):
                await self._copy_batch(group, ks, batch, after)
                batch, size = [], 0
            batch.append(list(w))
            size += w_size
        if batch:
            await self._copy_batch(group, ks, batch, after)

    async def _scan_page(self, ks: Keyspace, group: int, start: bytes, end: bytes, *,
                         ignore_fence: bool = False) -> tuple[list, int, bytes]:
        """A page of the live keys in ``[start, end)`` of ``group`` at a new strong
        snapshot, read again while a transaction prepared before the fence commits under it
        (the snapshot must move): the items, the snapshot's timestamp, and where the part
        of the range the page covers ends (``end`` once the range is read)."""
        for _ in range(MAX_SNAPSHOT_MOVES):
            try:
                reply = await self._call_group(group, "scan", {
                    "group": group, "start": start, "end": end, "limit": COPY_PAGE, "ts": 0,
                    "ignore_fence": ignore_fence}, expect=_SCAN_ANSWER)
            except _Restart:
                continue
            except TransactionConflictError as exc:
                if exc.reason != "moved":
                    raise
                # The old home refuses reads of the keyspace before this move's own read
                # fence: a newer move or drop of it has fenced it.
                raise _overtaken(ks) from exc
            items = reply["items"]
            if not items or (len(items) < COPY_PAGE and reply.get("more") is not True):
                return items, reply["ts"], end
            return items, reply["ts"], items[-1][0] + b"\x00"
        raise UnavailableError(f"keyspace {ks.name!r} kept changing during its move")

    async def _copy_batch(self, group: int, ks: Keyspace, writes: list, after: int) -> None:
        """Commits a batch of the copy in the new group, through its fence (which refuses
        every other writer of the keyspace until the move is done, and every other move's
        copy), stamped above ``after``."""
        try:
            await self._call_group(group, "keyspace.copy", {
                "group": group, "keyspace_id": ks.id, "txn_id": secrets.randbits(63) + 1,
                "writes": writes, "epoch": ks.epoch, "after": after}, commit=True)
        except TransactionConflictError as exc:
            if exc.reason != "moved":
                raise
            # The fence is no longer this move's (1, MAX_TS): a newer move or drop set it.
            raise _overtaken(ks) from exc

    async def conflicts(self, keyspace: str, *, limit: int = 100) -> list[ConflictRecord]:
        """The conflict log of a regional keyspace in this client's region: one record per
        write that lost a concurrent conflict here, oldest key first (ARCH §6). At most
        ``limit`` records, fewer when their losing values are large (a page of a few MiB, at
        least one record): drain them (:meth:`drain_conflicts`) to read on.

        Raises:
            InvalidArgumentError: the keyspace is not regional, or ``limit`` is not an int in
                1..:data:`MAX_CONFLICTS_PAGE`.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_CONFLICTS_PAGE:
            raise InvalidArgumentError(f"limit must be an int in 1..{MAX_CONFLICTS_PAGE}, not "
                                       f"{limit!r:.40}")
        ks = await self.keyspace(keyspace)
        if ks.mode != "regional":
            raise InvalidArgumentError(f"keyspace {keyspace!r} is not regional: it has no "
                                       f"conflict log")
        lo, hi = keyspace_bounds(ks.id)
        group = self.group_of(ks)
        reply = await self._call_group(group, "conflicts.list", {
            "group": group, "start": lo, "end": hi, "limit": limit}, expect=_CONFLICTS_ANSWER)
        out = []
        for record_id, key, rec in reply["records"]:
            wts, worigin, lts, lorigin, lvalue, resolver, _ = rec
            out.append(ConflictRecord(decode_key(key)[1], (wts, worigin), (lts, lorigin),
                                      lvalue, resolver, record_id))
        return out

    async def drain_conflicts(self, keyspace: str, records: Sequence[ConflictRecord]) -> None:
        """Removes records (from :meth:`conflicts`) from the conflict log.

        Raises:
            InvalidArgumentError: a record of another keyspace's log, or something else than
                an iterable of :class:`ConflictRecord` (nothing is removed).
        """
        records = check_conflict_records(records)
        ks = await self.keyspace(keyspace)
        group = self.group_of(ks)
        # Not a commit: removing a record twice is removing it once, so a call whose answer
        # was lost is simply made again rather than reported as of unknown outcome.
        await self._call_group(group, "conflicts.drain", {
            "group": group, "keyspace_id": ks.id, "keys": [r.record_id for r in records]})

    async def statistics(self) -> dict:
        """Cluster statistics: ``replication_lag_ms`` of regional writes per region pair
        (``"origin->destination"``: p50, p99 and sample count of the writes applied in the
        last five minutes (``engine.node.LAG_WINDOW_S``), from the destination's leader, and
        ``behind_ms``, the age of the oldest write the destination has not applied yet, from
        the origin's leader: it grows while the pair's replication is stopped);
        ``cross_region_bytes`` the nodes of one region sent to those of another
        (``"from->to"``, since the nodes started: Raft replication, two-phase commit and
        regional replication between nodes; clients' own requests not included);
        ``replication_broken``, per region pair (``"origin->destination"``) whose destination
        lost regional writes -- the origin's outbox dropped them, after its retention, before
        the destination had them; it needs a full copy -- the timestamp of the newest one
        lost; and every node's status (see :meth:`status`: a node listed there as
        ``{"error": ...}`` counts for none of the figures)."""
        nodes = await self.status()
        lag = {}
        behind: dict[str, float] = {}
        traffic: dict[str, int] = {}
        broken: dict[str, int] = {}
        for st in nodes.values():
            for origin, destination, ts in st.get("replication_broken") or ():
                pair = (f"{self._groups.get(origin, {}).get('region', origin)}->"
                        f"{self._groups.get(destination, {}).get('region', destination)}")
                broken[pair] = max(broken.get(pair, 0), ts)
            for origin, figures in (st.get("replication_lag_ms") or {}).items():
                pair = f"{origin}->{st['region']}"
                if figures["samples"] > lag.get(pair, {}).get("samples", 0):
                    lag[pair] = figures
            for destination, ms in (st.get("replication_behind_ms") or {}).items():
                pair = f"{st['region']}->{destination}"
                behind[pair] = max(behind.get(pair, 0.0), ms)
            for region, figures in (st.get("bytes_by_region") or {}).items():
                if region != st.get("region"):
                    pair = f"{st['region']}->{region}"
                    traffic[pair] = traffic.get(pair, 0) + figures["sent"]
        for pair, ms in behind.items():
            lag[pair] = {**lag.get(pair, {"samples": 0, "p50": None, "p99": None}),
                         "behind_ms": ms}
        return {"replication_lag_ms": lag, "cross_region_bytes": traffic,
                "replication_broken": broken, "nodes": nodes}

    async def status(self) -> dict:
        """Every node's view of its groups (leaders, terms, applied and closed timestamps).
        The nodes are asked at once; one that cannot be reached, does not answer within
        ``request_timeout_s`` (paused, wedged), or answers in a form this client cannot read
        (a node of another version) is listed as ``{"error": ...}``.

        Raises:
            InvalidArgumentError: the connection is closed (said once, rather than as every
                node's error: the cluster is not down).
        """
        self._check_open()
        out: dict[int, dict] = {}
        deadline = trio.current_time() + self._request_timeout_s

        async def ask(node_id: int) -> None:
            try:
                answer = await self._call_node(node_id, "status", {}, deadline)
            except (MeridianError, OSError) as exc:
                out[node_id] = {"error": str(exc)}
                return
            problem = _malformed(answer, _STATUS_ANSWER)
            out[node_id] = answer if problem is None else {
                "error": f"node {node_id} answered 'status' with {problem}: is it a node of "
                         f"another version?"}

        async with trio.open_nursery() as nursery:
            for node_id in self._nodes:
                nursery.start_soon(ask, node_id)
        return {node_id: out[node_id] for node_id in self._nodes}

    # ------------------------------------------------------------------ background

    def _resolve_later(self, group: int, txn_id: int, commit_ts: int) -> None:
        """Resolves a transaction's intents in ``group`` after the caller has been answered
        (the second phase of two-phase commit is asynchronous). If this fails, or the
        connection closes first, the group's leader finishes the transaction from its record
        after the intents' deadline."""
        self._in_background(self._call_group, group, "resolve",
                            {"group": group, "txn_id": txn_id, "commit_ts": commit_ts})

    def _in_background(self, fn, *args) -> None:
        """Runs ``await fn(*args)`` after the caller has been answered; failures are left
        to recovery. Closing the connection waits a moment for these."""
        self._background += 1
        self._nursery.start_soon(self._run_background, fn, args)

    async def _run_background(self, fn, args) -> None:
        try:
            with trio.move_on_after(self._request_timeout_s):
                await fn(*args)
        except (MeridianError, OSError):
            pass  # recovery finishes it
        finally:
            self._background -= 1
            if not self._background:
                self._background_done.set()
                self._background_done = trio.Event()

    async def _drain(self) -> None:
        while self._background:
            await self._background_done.wait()

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError("the database connection is closed")

    def _close(self) -> None:
        """Closes the handle: no call starts any more, and its connections and tasks end."""
        self._closed = True
        for scope in self._holding:
            scope.cancel()
        self._nursery.cancel_scope.cancel()

    async def _connection(self, node_id: int, deadline: float = math.inf):
        """The open connection to ``node_id``, made now if there is none, by ``deadline``
        (else :class:`ConnectTimeoutError`): connecting to a node whose packets are dropped
        takes the whole connect timeout, which may end long after the caller's deadline."""
        self._check_open()
        conn = self._conns.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        with trio.move_on_at(deadline):
            return await self._connect(node_id)
        raise ConnectTimeoutError(f"no connection to node {node_id} by the call's deadline")

    async def _connect(self, node_id: int):
        pending = self._connecting.get(node_id)
        if pending is not None:
            await pending.wait()
            conn = self._conns.get(node_id)
            if conn is None or conn.closed:
                raise ConnectionLostError(f"cannot connect to node {node_id}")
            return conn
        done = self._connecting[node_id] = trio.Event()
        try:
            node = self._nodes[node_id]
            conn = await self._nursery.start(self._hold_connection, node)
            if isinstance(conn, BaseException):
                raise conn
            self._conns[node_id] = conn
            return conn
        finally:
            del self._connecting[node_id]
            done.set()

    async def _hold_connection(self, node: _NodeInfo, *, task_status) -> None:
        """Keeps a connection to ``node`` open in the handle's nursery; starts with it, or
        with the exception that stopped it from connecting (raised by the caller, outside
        the nursery machinery: a close of the handle at that moment would otherwise turn it
        into a group of errors that no caller's ``except`` matches).

        Once connected, only the handle's close ends it (see :meth:`_close`), not a cancel
        scope of the caller's around the handle: a call it cancels may still have shielded
        work to do through the connection (a move's rollback)."""
        conn = None
        with trio.CancelScope() as held:
            self._holding.add(held)
            if self._closed:
                held.cancel()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        conn = await stack.enter_async_context(connect_rpc(
                            node.host, node.port, clock_now=self.clock.now,
                            clock_update=self.clock.update, connect_timeout_s=2.0))
                    except (OSError, ConnectTimeoutError) as exc:
                        task_status.started(exc)
                        return
                    task_status.started(conn)
                    # A caller cancelled before it took the connection gets Cancelled, and
                    # ``started`` leaves this task in it: nothing uses the connection then,
                    # and the caller waits until it ends, so it must end now.
                    held.shield = trio.lowlevel.current_task().parent_nursery is self._nursery
                    try:
                        with contextlib.suppress(trio.Cancelled):
                            # Until the connection ends: a reconnect holds the new one in a
                            # task of its own, so this one must not outlive its connection.
                            await conn.wait_closed()
                    finally:
                        if self._conns.get(node.id) is conn:
                            del self._conns[node.id]
                        done = self._bytes_done.setdefault(node.id, [0, 0])
                        done[0] += conn.bytes_sent
                        done[1] += conn.bytes_received
            finally:
                self._holding.discard(held)
        if conn is None:
            task_status.started(ConnectionLostError(f"the connection to node {node.id} was "
                                                    f"closed while connecting"))

    def bytes_by_node(self) -> dict[int, tuple[int, int]]:
        """``{node id: (bytes sent, bytes received)}`` over this handle's connections so
        far (the frames; TCP and IP headers not counted)."""
        out = {n: list(v) for n, v in self._bytes_done.items()}
        for node_id, conn in self._conns.items():
            if conn is not None and not conn.closed:
                v = out.setdefault(node_id, [0, 0])
                v[0] += conn.bytes_sent
                v[1] += conn.bytes_received
        return {n: (v[0], v[1]) for n, v in out.items()}

    async def _call_node(self, node_id: int, method: str, payload,
                         deadline: float = math.inf) -> Any:
        return await self._call_on(await self._connection(node_id, deadline), node_id, method,
                                   payload, deadline)

    async def _call_on(self, conn, node_id: int, method: str, payload,
                       deadline: float = math.inf) -> Any:
        """One call on ``conn``, with the simulated WAN latency each way; its answer must
        arrive by ``deadline`` (else :class:`~engine.rpc.CallTimeoutError`)."""
        if node_id in self.unreachable:
            await trio.sleep(self._latency.get((self.region, self._nodes[node_id].region), 0.0))
            raise NotSentError(f"node {node_id} is unreachable (partitioned)")
        delay = self._latency.get((self.region, self._nodes[node_id].region), 0.0)
        if delay:
            await trio.sleep(delay)
        result = await conn.call(method, payload, deadline=deadline)
        if delay:
            await trio.sleep(delay)
        return result

    def _candidates(self, group: int) -> list[int]:
        """The known leader first, then the other voters; all voters in random order (to
        spread the search) when no leader is known."""
        voters = self._groups[group]["voters"]
        leader = self._leaders.get(group)
        if leader:
            return [leader, *(v for v in voters if v != leader)]
        voters = list(voters)
        self._rng.shuffle(voters)
        return voters

    async def _call_group(self, group: int, method: str, payload, *,
                          commit: bool = False, deadline: float | None = None,
                          expect: _Answer | None = None) -> Any:
        """Calls the group's leader, following hints and retrying until
        ``request_timeout_s`` (or ``deadline``, the end of a call that began earlier).
        ``commit``: a call that may have run is never retried. ``expect``: the fields the
        answer must be a map of, with their types (see :func:`_malformed`); an answer without
        them raises :class:`~engine.errors.UnavailableError` (for a commit,
        :class:`~engine.errors.AmbiguousCommitError`: it may have run).

        A node that takes the request and never answers (paused, or cut off without a
        reset) holds a call for at most half of ``request_timeout_s`` before the other
        voters are tried; a commit waits for it until the end (its outcome is then
        unknown: :class:`~engine.errors.AmbiguousCommitError`)."""
        if deadline is None:
            deadline = trio.current_time() + self._request_timeout_s
        backoff = 0.005
        last_error = "no attempt"
        while trio.current_time() < deadline:
            for node_id in self._candidates(group):
                if trio.current_time() >= deadline:
                    break  # no node is tried once the time is up (it could only time out)
                attempt_deadline = deadline if commit else min(
                    deadline, trio.current_time() + self._request_timeout_s / 2)
                try:
                    conn = await self._connection(node_id, attempt_deadline)
                except (OSError, ConnectTimeoutError, ConnectionLostError) as exc:
                    last_error = f"node {node_id}: {exc}"
                    continue
                try:
                    result = await self._call_on(conn, node_id, method, payload,
                                                 attempt_deadline)
                except NotSentError as exc:
                    # Not sent, yet not necessarily closed (a node this client cannot reach):
                    # _connection() replaces a closed connection itself.
                    last_error = f"node {node_id}: {exc}"
                    continue
                except CallTimeoutError as exc:
                    if commit:
                        raise AmbiguousCommitError(
                            f"node {node_id} did not answer the {method} within "
                            f"{self._request_timeout_s} s: the transaction may or may not "
                            f"have committed") from exc
                    last_error = f"node {node_id}: no answer in time"
                    if self._leaders.get(group) == node_id:
                        del self._leaders[group]
                    continue
                except ClockOffsetError as exc:
                    # The node's answer carries a timestamp too far ahead of our clock: its
                    # clock is off. Its answer is withheld; try another replica.
                    if commit:
                        raise AmbiguousCommitError(
                            f"node {node_id} answered the commit with a timestamp beyond the "
                            f"maximum clock offset: the outcome is unknown ({exc})") from exc
                    last_error = f"node {node_id}: {exc}"
                    if self._leaders.get(group) == node_id:
                        del self._leaders[group]  # it hands its groups over
                    continue
                except ConnectionLostError as exc:
                    if commit:
                        raise AmbiguousCommitError(
                            f"connection to node {node_id} lost during commit: the "
                            f"transaction may or may not have committed") from exc
                    last_error = f"node {node_id}: {exc}"
                    continue
                except RemoteError as exc:
                    if exc.code == "not_leader":
                        hint = self._leader_hint(exc.details.get("leader"))
                        last_error = f"node {node_id}: {exc.message}"
                        if hint and hint != node_id:
                            self._leaders[group] = hint
                            break  # try the hinted leader first
                        self._leaders.pop(group, None)
                        continue
                    if exc.code == "clock_offset":
                        # The node refused before running anything (its clock, or ours as
                        # it sees it, is beyond the maximum offset): it hands its groups
                        # over, and the other voters serve. Safe for a commit too.
                        last_error = f"node {node_id}: {exc.message}"
                        if self._leaders.get(group) == node_id:
                            del self._leaders[group]
                        continue
                    if exc.code == "moved" or exc.details.get("reason") == "moved":
                        # A keyspace moved to another group: look keyspaces up afresh.
                        self._forget_keyspace()
                    raise _translate(exc, node_id, method, commit=commit) from None
                self._leaders[group] = node_id
                problem = _malformed(result, expect)
                if problem is not None:
                    if commit:
                        raise AmbiguousCommitError(
                            f"node {node_id} answered the {method} with {problem}: the "
                            f"transaction may or may not have committed")
                    raise UnavailableError(f"node {node_id} answered {method!r} with {problem}: "
                                           f"is it a node of another version?")
                return result
            await trio.sleep(backoff)
            backoff = min(0.2, backoff * 2)
        raise UnavailableError(f"group {group} did not answer {method!r} within "
                               f"{self._request_timeout_s} s (last: {last_error})")

    async def _call_local(self, group: int, method: str, payload, *,
                          expect: _Answer | None = None) -> Any:
        """Calls a replica of ``group`` in this client's region (stale reads). A region holds
        one replica of a group homed elsewhere: when it does not answer, the group's voters
        serve the read instead (any replica can), at the price of a WAN round trip. The
        region's replicas get half of ``request_timeout_s`` between them, the voters the
        rest: the whole call gives up after ``request_timeout_s``, as any other."""
        g = self._groups[group]
        local = [n for n in (*g["voters"], *g["learners"])
                 if self._nodes[n].region == self.region]
        self._rng.shuffle(local)
        now = trio.current_time()
        deadline, local_deadline = now + self._request_timeout_s, now + self._request_timeout_s / 2
        for node_id in local:
            if trio.current_time() >= local_deadline:
                break
            try:
                result = await self._call_node(node_id, method, payload, local_deadline)
            except (OSError, ConnectTimeoutError, ConnectionLostError, CallTimeoutError,
                    ClockOffsetError):
                # The next replica (a closed connection is replaced when next used; one whose
                # answer carries a timestamp too far ahead has a clock that is off).
                pass
            except RemoteError as exc:
                if not exc.retryable and exc.code != "clock_offset":
                    raise _translate(exc, node_id, method) from None
                # Retryable: it lags (``not_closed``: cut off from its leader), or is not
                # serving yet; or it refuses to serve for its clock. The voters answer
                # instead.
            else:
                problem = _malformed(result, expect)
                if problem is not None:
                    raise UnavailableError(f"node {node_id} answered {method!r} with "
                                           f"{problem}: is it a node of another version?")
                return result
        return await self._call_group(group, method, payload, deadline=deadline,
                                      expect=expect)


class _Answer:
    """The form of an answer the client reads (see :func:`_malformed`), checked by closures
    made once from ``spec``: a map of field names to expectations. Each expectation is a type,
    matched exactly (a bool is no int); ``X | Y``, either (``X | None``: the field may be left
    out); ``list[X]``, a list of X; ``tuple[X, Y]``, a list of exactly an X and a Y; or a map
    of fields, checked the same way; ``dict[K, V]``, a map of any K keys to V values. Further
    fields are ignored."""

    __slots__ = ("spec", "_check")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._check = _compile(spec)

    def problem(self, answer: object) -> str | None:
        bad = self._check(answer)
        return None if bad is None else f"{bad[1]} (the answer{bad[0]})"


# A check answers None, or where in the value the first mismatch is (a path such as
# "['items'][3][1]", built only on failure) and what it is.
_Check = Callable[[object], "tuple[str, str] | None"]


def _compile(kind: Any) -> _Check:
    if isinstance(kind, dict):
        fields = [(name, _compile(field)) for name, field in kind.items()]

        def check_map(value):
            if type(value) is not dict:
                return "", f"a {type(value).__name__} where a map was expected"
            for name, check in fields:
                if (bad := check(value.get(name))) is not None:
                    return f"[{name!r}]{bad[0]}", bad[1]
            return None
        return check_map
    shape, args = typing.get_origin(kind), typing.get_args(kind)
    if shape is types.UnionType and all(typing.get_origin(a) is None for a in args):
        allowed = frozenset(args)  # plain types (NoneType among them): one set lookup

        def check_types(value):
            return None if type(value) in allowed else ("", _wrong(value, kind))
        return check_types
    if shape is types.UnionType:
        checks = [_compile(a) for a in args]

        def check_union(value):
            if any(check(value) is None for check in checks):
                return None
            return "", _wrong(value, kind)
        return check_union
    if shape is list:
        item = _compile(args[0])

        def check_list(value):
            if type(value) is not list:
                return "", _wrong(value, kind)
            for i, x in enumerate(value):
                if (bad := item(x)) is not None:
                    return f"[{i}]{bad[0]}", bad[1]
            return None
        return check_list
    if shape is dict:
        key, item = _compile(args[0]), _compile(args[1])

        def check_dict(value):
            if type(value) is not dict:
                return "", _wrong(value, kind)
            for k, x in value.items():
                if (bad := key(k)) is not None:
                    return f" key {k!r:.40}", bad[1]
                if (bad := item(x)) is not None:
                    return f"[{k!r:.40}]{bad[0]}", bad[1]
            return None
        return check_dict
    if shape is tuple:
        items = [_compile(a) for a in args]

        def check_tuple(value):
            if type(value) is not list or len(value) != len(items):
                return "", _wrong(value, kind)
            for i, (x, check) in enumerate(zip(value, items)):
                if (bad := check(x)) is not None:
                    return f"[{i}]{bad[0]}", bad[1]
            return None
        return check_tuple

    def check_type(value):
        return None if type(value) is kind else ("", _wrong(value, kind))
    return check_type


def _wrong(value: object, kind: Any) -> str:
    name = str(kind) if typing.get_origin(kind) is not None else kind.__name__
    return f"{type(value).__name__} {value!r:.80} where {name} was expected"


def _malformed(answer: object, expect: _Answer | None) -> str | None:
    """What is wrong with ``answer``, which must have ``expect``'s form, or None: a node of
    another version may answer in a form this client cannot read, and would otherwise fail
    it far from the call."""
    return None if expect is None else expect.problem(answer)


# What the client reads of each answer.
_READ_ANSWER = _Answer({"ts": int, "until": int | None, "values": list[bytes | None]})
_SCAN_ANSWER = _Answer({"ts": int, "until": int | None,
                        "items": list[tuple[bytes, bytes | None]]})
_READ_ANSWERS = {"read": _READ_ANSWER, "scan": _SCAN_ANSWER}
_COMMIT_ANSWER = _Answer({"ts": int})
_DECIDE_ANSWER = _Answer({"committed": bool, "ts": int})
_REFRESH_ANSWER = _Answer({"ok": bool})
_FENCE_ANSWER = _Answer({"ts": int, "done": bool, "fence": tuple[int, int] | None,
                         "epoch": int | None})
_KEYSPACE_RECORD = _Answer({"id": int, "name": str, "mode": str, "home": str,
                            "retired": list[str] | None, "abandoned": list[str] | None})
_KEYSPACE_PAGE = _Answer({"keyspaces": list[_KEYSPACE_RECORD.spec], "next": str | None})
_CONFLICTS_ANSWER = _Answer({"records": list[tuple[
    bytes, bytes, tuple[int, str, int, str, bytes | None, str, int]]]})
# What statistics() reads of a node's status (the rest is handed on as it is).
_LAG_FIGURES = {"samples": int}
_REGION_BYTES = {"sent": int}
_STATUS_ANSWER = _Answer({"region": str,
                          "replication_lag_ms": dict[str, _LAG_FIGURES] | None,
                          "replication_behind_ms": dict[str, float | int] | None,
                          "bytes_by_region": dict[str, _REGION_BYTES] | None,
                          "replication_broken": list[tuple[int, int, int]] | None})


class _Restart(Exception):
    """A read must move its snapshot up to ``ts`` (never escapes the library)."""

    def __init__(self, ts: int) -> None:
        super().__init__(ts)
        self.ts = ts


_NOT_RUN_CODES = ("unknown_method", "bad_version")
"""Error codes a node answers without running the request (engine.rpc)."""


def _translate(exc: RemoteError, node_id: int = 0, method: str = "", *,
               commit: bool = False) -> BaseException:
    """A node's error code as the library's exception. A code it does not know (``internal``:
    the handler failed; one from a node of another version) is
    :class:`~engine.errors.UnavailableError` naming the node and the method, or for a
    ``commit`` that may have run, :class:`~engine.errors.AmbiguousCommitError`."""
    if exc.code == "restart":
        ts = exc.details.get("ts")
        if type(ts) is int and ts > 0:
            return _Restart(ts)
    if exc.code == "conflict":
        key = exc.details.get("key")
        if isinstance(key, bytes):
            key = user_key(key)  # the caller's key, without the keyspace prefix
        return TransactionConflictError(exc.message, exc.details.get("reason", ""), key)
    if exc.code == "moved":
        return TransactionConflictError(exc.message, "moved")
    if exc.code == "not_found":
        return KeyspaceNotFoundError(exc.message)
    if exc.code == "already_exists":
        return KeyspaceExistsError(exc.message)
    if exc.code == "unknown_group":
        return UnavailableError(exc.message)
    if exc.code == "ambiguous":
        return AmbiguousCommitError(exc.message)
    if exc.code == "invalid_argument":
        return InvalidArgumentError(exc.message)
    if exc.code == "too_large":
        return RecordTooLargeError(exc.message)
    if exc.code == "limit_exceeded":
        return LimitExceededError(exc.message)
    if exc.code in ("not_closed", "clock_offset"):
        return UnavailableError(exc.message)
    if commit and exc.code not in _NOT_RUN_CODES:
        return AmbiguousCommitError(f"node {node_id} failed the {method} ({exc}): the "
                                    f"transaction may or may not have committed")
    return UnavailableError(f"node {node_id} failed {method!r} ({exc})")


def _check_key(key: object) -> bytes:
    k = _as_bytes(key, "key")
    if not k:
        raise InvalidArgumentError("keys must not be empty")
    if len(k) > MAX_USER_KEY_SIZE:
        raise RecordTooLargeError(f"key {k!r:.80} is {len(k)} bytes: keys are "
                                  f"1..{MAX_USER_KEY_SIZE} bytes")
    return k


def check_keys(keys: object) -> list:
    """The keys of a ``get_many``, as a list: an iterable of keys, not one key (a str or
    bytes is iterable too, as its characters or byte values: read as many one-letter keys,
    it would answer a list of values for keys nobody asked for).

    Raises:
        InvalidArgumentError: ``keys`` is one key, or not iterable.
    """
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"keys must be an iterable of keys, not one key "
                                   f"({keys!r:.80}): read one key with get()")
    try:
        return list(keys)
    except TypeError:
        raise InvalidArgumentError(f"keys must be an iterable of keys, not "
                                   f"{type(keys).__name__}") from None


def _overtaken(ks: Keyspace) -> TransactionConflictError:
    """A move's copy refused (``moved``) by the fence of a newer move or drop of ``ks``."""
    return TransactionConflictError(
        f"keyspace {ks.name!r}: a newer move or drop of it began during the copy",
        "catalog_changed")


def check_conflict_records(records: object) -> list[ConflictRecord]:
    """The records of a ``drain_conflicts``, as a list (taken once: an iterator is used up
    by one pass).

    Raises:
        InvalidArgumentError: ``records`` is one record, not iterable, or holds something
            else than a :class:`ConflictRecord`.
    """
    if isinstance(records, ConflictRecord):
        raise InvalidArgumentError("drain_conflicts takes a list of records, not one "
                                   "ConflictRecord: drain [record]")
    try:
        records = list(records)
    except TypeError:
        raise InvalidArgumentError(f"drain_conflicts takes the ConflictRecords that "
                                   f"conflicts() returned, not {type(records).__name__}") from None
    for r in records:
        if not isinstance(r, ConflictRecord):
            raise InvalidArgumentError(f"drain_conflicts takes the ConflictRecords that "
                                       f"conflicts() returned, not {type(r).__name__}")
    return records


def _check_bound(bound: object, name: str) -> bytes:
    """A scan's bound: bytes or str of at most one byte more than the longest key, so that
    ``key + b"\\x00"`` (the bound just past ``key``, where a scan goes on after it) is one
    for every key."""
    b = _as_bytes(bound, name)
    if len(b) > MAX_USER_KEY_SIZE + 1:
        raise InvalidArgumentError(f"{name} is {len(b)} bytes: a bound is at most "
                                   f"{MAX_USER_KEY_SIZE + 1} bytes (the longest key, "
                                   f"{MAX_USER_KEY_SIZE}, plus one)")
    return b


def _coalesced(spans: list[list]) -> list[list]:
    """At most about half of :data:`MAX_SPANS` ranges covering every key of ``spans`` (a span
    with a limit counts as its whole range), so that a transaction may scan any number of
    times. Validating them refuses every change validating ``spans`` would, and perhaps
    more (a key written between two ranges scanned): a conflict, never a missed one. Ranges
    of different keyspaces are never merged: a group checks a scanned range's keyspace (has
    it moved away?) by the keyspace its range starts in."""
    merged: dict[bytes, list[list]] = {}  # keyspace prefix -> its ranges, merged
    for start, end, _ in sorted((sp for sp in spans if sp[0] < sp[1]), key=lambda sp: sp[0]):
        ranges = merged.setdefault(start[:KEY_PREFIX_SIZE], [])
        if ranges and start <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([start, end, None])
    budget = max(1, (MAX_SPANS // 2) // max(1, len(merged)))  # ranges per keyspace
    out = []
    for ranges in merged.values():
        per = -(-len(ranges) // budget)  # ranges per coalesced range
        out += [[ranges[i][0], ranges[min(i + per, len(ranges)) - 1][1], None]
                for i in range(0, len(ranges), per)]
    return out


def _validated(reads: _GroupReads, written: int, room: int = MAX_READ_KEY_BYTES,
               ) -> tuple[list[bytes], list[list]]:
    """The keys and ranges that stand for ``reads`` in one commit, prepare or refresh beside
    ``written`` keys written: the keys read and the ranges scanned while they fit one request
    (``room`` bytes of keys, :data:`MAX_LOCK_KEY_BYTES` for a prepare's, and
    :data:`~engine.adjudicator.MAX_TXN_KEYS` keys with the writes), else no keys and ranges
    covering them all (:func:`_coalesced`): a conflict, never a missed one, so that a
    transaction may read any number of keys."""
    keys = sorted(reads.keys)
    if len(keys) + written <= MAX_TXN_KEYS and sum(len(k) for k in keys) <= room:
        return keys, reads.spans
    return [], _coalesced([*reads.spans, *([k, k + b"\x00", None] for k in keys)])


@dataclass(frozen=True)
class ConflictRecord:
    """A write to a regional keyspace that lost a concurrent conflict (see
    :meth:`Database.conflicts`)."""

    key: bytes
    winner: tuple[int, str]
    """(commit timestamp, origin region) of the version that was kept."""
    loser: tuple[int, str]
    """(commit timestamp, origin region) of the write that lost."""
    loser_value: bytes | None
    resolver: str
    """The resolver that decided (an application resolver by its name, without ``app:``);
    ``"lww (<name> failed)"`` when the application resolver failed on the pair and the last
    writer won instead (see :mod:`engine.merge`); ``"refused"`` for a write from another region
    that could not be merged here at all (the key holds a plain value or another resolver's
    cell), whose ``winner`` is the cell's version then (``(0, "")`` if none)."""
    record_id: bytes


@dataclass
class _GroupReads:
    """What a transaction read in one group: refreshed when its snapshot moves, validated
    (serializable) at commit."""

    keys: set[bytes]
    spans: list[list]
    fresh: int
    """The group's snapshot when the transaction first read there: a commit in the group
    between the transaction's snapshot and this one may have been acknowledged before the
    transaction began, so reads there look for one (and move the snapshot if they find it)."""


class Transaction:
    """A transaction (see the module docstring). Not safe to share between tasks."""

    def __init__(self, db: Database, isolation: str) -> None:
        self._db = db
        self.isolation = isolation
        self.txn_id = secrets.randbits(63) + 1
        self.read_ts = 0
        self._visited: dict[int, _GroupReads] = {}
        self._writes: dict[bytes, bytes | None] = {}
        self._merges: dict[bytes, tuple[str, bytes | None]] = {}  # regional: (resolver, value)
        self._write_group: dict[bytes, int] = {}
        self._keyspace_ids: dict[str, int] = {}  # name -> the id this transaction uses it at
        self._bytes = 0
        self._state = "open"
        self._started = trio.current_time()
        self.commit_ts = 0
        # A request that may commit it was sent (a one-phase commit, or a two-phase commit's
        # decision): until then, a cancelled commit has not committed and never will.
        self._sent = False

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._state == "open":
            await self.commit()
        else:
            self._discard()

    # ------------------------------------------------------------------ operations

    async def get(self, keyspace: str, key: bytes | str) -> bytes | None:
        """The key's value in this transaction's snapshot, or its own pending write."""
        return (await self.get_many(keyspace, [key]))[0]

    async def get_many(self, keyspace: str, keys) -> list[bytes | None]:
        """Several keys of one keyspace in one round trip: their values in this transaction's
        snapshot (or its own pending writes), in the order given. A serializable transaction
        does not read a regional keyspace (:class:`~engine.errors.InvalidArgumentError`):
        every region commits its writes on its own, and merges the others' when they arrive,
        so nothing could validate the read against them.

        Raises:
            InvalidArgumentError: ``keys`` is one key (a str or bytes) rather than an
                iterable of keys, or is not iterable (see :func:`check_keys`).
        """
        self._check_open()
        keys = check_keys(keys)
        self._check_serializable(await self._keyspace(keyspace))
        located = [await self._locate(keyspace, key, write=False) for key in keys]
        if not located:
            return []
        group = located[0][1]
        wanted = [stored for stored, _ in located if stored not in self._writes]
        found: dict[bytes, bytes | None] = {}
        rest = wanted
        while rest:
            # The node answers the values that fit one page, at least one (``more``: ask
            # again for the rest, at the same snapshot). The keys asked for at once fit a
            # page too (at least one).
            asked: list[bytes] = []
            size = 0
            for k in rest:
                if asked and (size + len(k) > READ_PAGE_BYTES or len(asked) == READ_PAGE_KEYS):
                    break
                asked.append(k)
                size += len(k)
            values = (await self._read(group, "read", {"keys": asked}))["values"]
            if not values or len(values) > len(asked):
                raise UnavailableError(f"group {group} answered {len(values)} values for "
                                       f"{len(asked)} keys")
            self._visited[group].keys.update(rest[:len(values)])
            found.update(zip(rest, values))
            rest = rest[len(values):]
        ks = await self._keyspace(keyspace)
        if ks.mode == "regional":
            return [self._regional_value(ks, s, found[s]) for s, _ in located]
        return [self._writes[s] if s in self._writes else found[s] for s, _ in located]

    async def get_for_update(self, keyspace: str, key: bytes | str) -> bytes | None:
        """Reads a key and adds it to the write set unchanged, so that a concurrent writer of
        it conflicts with this transaction (the way to prevent write skew under snapshot
        isolation, like ``SELECT ... FOR UPDATE``)."""
        if (await self._keyspace(keyspace)).mode == "regional":
            raise InvalidArgumentError(
                f"keyspace {keyspace!r} is regional: its writes commit in each region and "
                f"are merged, so there is no lock to take")
        value = await self.get(keyspace, key)
        stored, group = await self._locate(keyspace, key)
        if stored not in self._writes:
            self._buffer(stored, group, value)
        return value

    async def scan(self, keyspace: str, start: bytes | str = b"", end: bytes | str | None = None,
                   *, limit: int | None = None, reverse: bool = False
                   ) -> list[tuple[bytes, bytes]]:
        """Live keys in ``[start, end)`` of the keyspace in this snapshot, merged with this
        transaction's own writes; ``limit`` caps the count, ``reverse`` walks backwards.
        Under ``serializable`` the range is validated at commit (the keys returned, and
        the gaps between them: a key inserted there since the snapshot is a conflict), and
        locked against writers from prepare to resolution in a two-phase commit.

        Raises:
            InvalidArgumentError: a bound that is not bytes or str, or is more than one byte
                longer than the longest key (``key + b"\\x00"`` bounds the keys after any
                key), a ``limit`` that is not None or an int in 0..:data:`MAX_SCAN_LIMIT`, a
                ``reverse`` that is not a bool, or a regional keyspace under ``serializable``
                (see :meth:`get_many`).
        """
        if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_SCAN_LIMIT):
            raise InvalidArgumentError(f"limit must be None or an int in 0..{MAX_SCAN_LIMIT}, "
                                       f"not {limit!r:.40}")
        # Checked before anything is sent: the merge of the pages sorts with it, which takes
        # only a bool (or an int), and would fail once the range had been read.
        if not isinstance(reverse, bool):
            raise InvalidArgumentError(f"reverse must be a bool, not {reverse!r:.40}")
        self._check_open()
        first = _check_bound(b"" if start is None else start, "start")
        past = None if end is None else _check_bound(end, "end")
        ks = await self._keyspace(keyspace)
        self._check_serializable(ks)
        s = encode_key(ks.id, first)
        e = encode_key(ks.id, past) if past is not None else keyspace_bounds(ks.id)[1]
        group = self._db.group_of(ks)
        mine = {k: v for k, v in self._writes.items() if s <= k < e}
        pending = [k for k in self._merges if s <= k < e]
        fetch = None if limit is None else limit + len(mine) + len(pending)
        merged: dict[bytes, bytes | None] = {}
        page_start, page_end = s, e
        while True:
            reply = await self._read(group, "scan", {"start": page_start, "end": page_end,
                                                     "limit": fetch, "reverse": reverse})
            reads = self._visited[group]
            page = reply["items"]
            # The node answers a page at a time: ``more`` when it stopped at its page bounds
            # with the range going on past the page's last key.
            last = page[-1][0] if page else None
            cut = last is not None and reply.get("more") is True
            if cut:
                # Every key of the part read came back: refreshing it compares all of it.
                reads.spans.append([last, page_end, None] if reverse
                                   else [page_start, last + b"\x00", None])
            elif fetch is not None and last is not None and len(page) >= fetch:
                # Stopped at its limit: it covered the span up to its last key only (down to
                # it, in reverse). The keys past that were not read: a prepare locks the span
                # as a range, and must not keep writers out of them.
                reads.spans.append([last, page_end, None] if reverse
                                   else [page_start, last + b"\x00", None])
            else:
                reads.spans.append([page_start, page_end, fetch])  # to its end (or, limit 0, none)
            if len(reads.spans) > MAX_SPANS:
                reads.spans = _coalesced(reads.spans)
            merged.update((k, v) for k, v in page)
            reads.keys.update(k for k, _ in page)
            if not cut and (fetch is None or not page or len(page) < fetch):
                break  # the range is read to its end (or nothing was asked for)
            if ks.mode == "regional" and fetch is not None:
                # A regional keyspace keeps a deleted key as a tombstone cell, which the page
                # counts and a read does not return (nor a key this transaction deletes, nor
                # an emptied set): read on until what was read holds ``limit`` live keys.
                seen = {k for k in (*merged, *pending) if (last <= k if reverse else k <= last)}
                if sum(self._regional_value(ks, k, merged.get(k)) is not None
                       for k in seen) >= limit:
                    break
                # A long run of tombstones takes a few pages, not one per key.
                fetch = min(2 * fetch, 2 * MAX_SCAN_LIMIT)
            elif fetch is not None:
                if not cut:
                    break  # ``fetch`` keys read: enough
                fetch -= len(page)
            if reverse:
                page_end = last
            else:
                page_start = last + b"\x00"
        if ks.mode == "regional":
            merged = {k: self._regional_value(ks, k, merged.get(k))
                      for k in (*merged, *pending)}
        merged.update(mine)
        items = sorted(((k, v) for k, v in merged.items() if v is not None), reverse=reverse)
        if limit is not None:
            items = items[:limit]
        return [(decode_key(k)[1], v) for k, v in items]

    async def put(self, keyspace: str, key: bytes | str, value: bytes | str) -> None:
        """Writes ``value`` at ``key`` when the transaction commits (buffered here: later
        reads of this transaction see it). For a regional keyspace with the ``lww`` resolver
        (or an application's); the other merge types take :meth:`merge`.

        Raises:
            RecordTooLargeError: a key or value over the cluster's ``max_key_size`` (less the
                keyspace prefix) or ``max_value_size``.
            LimitExceededError: the transaction would write more than ``max_txn_keys`` keys
                or ``max_txn_bytes`` bytes.
        """
        stored, group = await self._locate(keyspace, key)
        v = _as_bytes(value, "value")
        if len(v) > self._db.limits["max_value_size"]:
            raise RecordTooLargeError(f"value of {len(v)} bytes for key {user_key(stored)!r:.80} "
                                      f"of keyspace {keyspace!r}: the limit is "
                                      f"{self._db.limits['max_value_size']}")
        await self._write(keyspace, stored, group, v)

    async def delete(self, keyspace: str, key: bytes | str) -> None:
        """Deletes ``key`` when the transaction commits (a write, counted as :meth:`put`'s).
        A key written under a larger ``max_key_size`` than today's can be deleted too."""
        stored, group = await self._locate(keyspace, key, write=False)
        await self._write(keyspace, stored, group, None)

    async def merge(self, keyspace: str, key: bytes | str, payload: bytes | str) -> None:
        """A write to a regional keyspace with a merge type (ARCH §6): ``payload`` in the
        resolver's format (:mod:`engine.merge`: an increment for ``counter``, a number for
        ``max``, an add or remove for ``add_wins_set``: :meth:`remove_from_set` makes the
        remove). One merge per key per transaction, except counter increments, which add
        up."""
        ks = await self._keyspace(keyspace)
        if ks.mode != "regional" or write_op(ks.resolver) == PUT:
            raise InvalidArgumentError(
                f"keyspace {keyspace!r} has no merge type ({ks.mode}, {ks.resolver}): use put")
        stored, group = await self._locate(keyspace, key)
        v = _as_bytes(payload, "payload")
        resolver = resolver_for(ks.resolver)
        # Checked now, with the resolver the group will use, rather than at commit; as a
        # write newer than anything observed (a set remove's tags are checked against it).
        resolver.merge(None, RemoteWrite(stored, v, MAX_MERGE_TS, self._db.region, MERGE))
        pending = self._merges.get(stored)
        if pending is not None:
            if ks.resolver == "counter":
                total = decode_int(pending[1]) + decode_int(v)
                if not -2**63 <= total < 2**63:
                    raise InvalidArgumentError(
                        f"the increments of {key!r} in this transaction add up to {total}, "
                        f"outside signed 64 bits (one increment's range): make some of them "
                        f"in another transaction")
                v = encode_int(total)
            elif ks.resolver == "max":
                v = max(pending[1], v, key=decode_int)
            else:
                raise InvalidArgumentError(
                    f"one {ks.resolver} operation per key per transaction (key {key!r})")
        if len(v) > self._db.limits["max_value_size"]:
            raise RecordTooLargeError(f"payload of {len(v)} bytes for key "
                                      f"{user_key(stored)!r:.80} of keyspace {keyspace!r}: the "
                                      f"limit is {self._db.limits['max_value_size']}")
        self._buffer(stored, group, v, resolver=ks.resolver)

    async def increment(self, keyspace: str, key: bytes | str, amount: int = 1) -> None:
        """Adds ``amount`` to a counter of a regional keyspace with the ``counter`` resolver.

        Raises:
            InvalidArgumentError: ``amount`` is not an int within signed 64 bits, or the
                keyspace's resolver is not ``counter`` (a ``max`` keyspace would take the
                amount as a number to keep the greater of).
        """
        if type(amount) is not int or not -2**63 <= amount < 2**63:
            raise InvalidArgumentError(f"amount must be an int in -2**63..2**63-1, not "
                                       f"{amount!r:.80}")
        ks = await self._keyspace(keyspace)
        if ks.mode != "regional" or ks.resolver != "counter":
            raise InvalidArgumentError(
                f"keyspace {keyspace!r} holds no counters ({ks.mode}, {ks.resolver})")
        await self.merge(keyspace, key, encode_int(amount))

    async def remove_from_set(self, keyspace: str, key: bytes | str,
                              element: bytes | str) -> None:
        """Removes ``element`` from a set of a regional keyspace with the ``add_wins_set``
        resolver when the transaction commits (one operation per key per transaction, as
        :meth:`merge`). It removes the adds of ``element`` that this transaction's snapshot
        holds, which is what a remove names (:mod:`engine.merge`): an add of it made
        concurrently in another region, not seen here yet, survives (add wins).

        Raises:
            InvalidArgumentError: the keyspace's resolver is not ``add_wins_set``.
        """
        ks = await self._keyspace(keyspace)
        if ks.mode != "regional" or ks.resolver != "add_wins_set":
            raise InvalidArgumentError(
                f"keyspace {keyspace!r} holds no add-wins sets ({ks.mode}, {ks.resolver})")
        stored, group = await self._locate(keyspace, key)
        elem = _as_bytes(element, "element")
        values = (await self._read(group, "read", {"keys": [stored]}))["values"]
        if len(values) != 1:
            raise UnavailableError(f"group {group} answered {len(values)} values for 1 key")
        cell = None if values[0] is None else decode_cell(values[0])
        await self.merge(keyspace, key,
                         encode_set_remove(elem, AddWinsSet.observed_tags(cell, elem)))

    async def _write(self, keyspace: str, stored: bytes, group: int,
                     value: bytes | None) -> None:
        ks = await self._keyspace(keyspace)
        if ks.mode != "regional":
            self._buffer(stored, group, value)
        elif write_op(ks.resolver) == PUT:
            self._buffer(stored, group, value, resolver=ks.resolver)
        else:
            raise InvalidArgumentError(
                f"keyspace {keyspace!r} merges its writes with {ks.resolver!r}: write it with "
                f"merge() (or increment() for a counter)")

    def _regional_value(self, ks: Keyspace, stored: bytes, raw: bytes | None) -> bytes | None:
        """What a read of a regional key returns: the stored cell's value, with this
        transaction's own pending write merged in (read your writes). An application
        resolver runs on the nodes, when the commit is applied: until then the transaction
        reads the value it wrote."""
        pending = self._merges.get(stored)
        if pending is not None and ks.resolver.startswith(APP_PREFIX):
            return pending[1]
        resolver = reader_for(ks.resolver)
        cell = None if raw is None else decode_cell(raw)
        if pending is not None:
            cell, _ = resolver.merge(cell, RemoteWrite(stored, pending[1], MAX_MERGE_TS,
                                                       self._db.region, write_op(ks.resolver)))
        return resolver.value_of(cell)

    async def commit(self) -> None:
        """Commits, or raises :class:`TransactionConflictError` (nothing was written).

        It may also raise :class:`~engine.errors.AmbiguousCommitError` (the commit was sent but
        its outcome is unknown: the connection ended or the answer did not come in time; read
        to find out, never blindly run it again), or :class:`~engine.errors.UnavailableError`
        (nothing was committed: no node could be asked). Either way the transaction is over.

        Writes in one group commit with one message to its leader. Writes in several groups
        (keyspaces homed in different regions) commit with two-phase commit: see the module
        docstring.

        Cancellation: once its request is sent (a two-phase commit's decision), a cancelled
        commit may still commit; the outcome is unknown, as after an AmbiguousCommitError (the
        blocking API raises that one instead). A later operation of the transaction says so;
        read to find out. Cancelled before that, it did not commit (a two-phase commit's
        prepares are aborted)."""
        self._check_open()
        self._state = "committing"
        try:
            if not self._writes and not self._merges:
                self._state = "committed"  # read-only: its snapshot was consistent
                return
            lifetime = self._db.limits["max_txn_lifetime_s"]
            if trio.current_time() - self._started > lifetime:
                raise TransactionConflictError(
                    f"transaction ran longer than the maximum lifetime ({lifetime} s)",
                    "too_old")
            writes: dict[int, list] = {}
            for k, v in self._writes.items():
                writes.setdefault(self._write_group[k], []).append([k, v])
            merges: dict[int, list] = {}
            for k, (resolver, v) in self._merges.items():
                merges.setdefault(self._write_group[k], []).append([k, resolver, v])
            serializable = self.isolation == "serializable"
            participants = set(writes) | set(merges)
            if serializable:
                participants.update(g for g, r in self._visited.items() if r.keys or r.spans)
            if merges and len(participants) > 1:
                raise InvalidArgumentError(
                    "a transaction that writes a regional keyspace commits in its own region: "
                    "it can also write global keyspaces homed there, not elsewhere")
            if len(participants) == 1:
                group = participants.pop()
                self._sent = True  # its one request
                await self._commit_one(group, writes, serializable, merges.get(group, []))
            else:
                await self._commit_two_phase(sorted(participants), writes, serializable)
            self._state = "committed"
        except BaseException as exc:
            unknown = isinstance(exc, AmbiguousCommitError) or (
                isinstance(exc, trio.Cancelled) and self._sent)
            self._state = "of unknown outcome (it may have committed)" if unknown else "failed"
            raise

    async def rollback(self) -> None:
        """Ends the transaction without committing: its writes were only buffered here, so
        nothing needs undoing. Later operations raise
        :class:`~engine.errors.TransactionClosedError`."""
        self._discard()

    # ------------------------------------------------------------------ commit protocols

    async def _commit_one(self, group: int, writes: dict[int, list], serializable: bool,
                          merges: list) -> None:
        payload = {"group": group, "txn_id": self.txn_id, "read_ts": self.read_ts,
                   "writes": writes.get(group, []), "serializable": serializable}
        if merges:
            payload["merges"] = merges
        if serializable and group in self._visited:
            payload["reads"], payload["spans"] = _validated(
                self._visited[group], len(payload["writes"]) + len(merges))
        reply = await self._db._call_group(group, "commit", payload, commit=True,
                                           expect=_COMMIT_ANSWER)
        self.commit_ts = reply["ts"]

    async def _commit_two_phase(self, groups: list[int], writes: dict[int, list],
                                serializable: bool) -> None:
        """Prepare everywhere in parallel; the decision is durable on the primary group
        before this returns; the other groups' intents are resolved in the background."""
        db = self._db
        # The record goes to a group that survives a region's loss if one takes part: an
        # undecided transaction's intents can be aborted only where its record is, and with
        # the record in a group of one region, losing that region would lock the keys it
        # prepared in a keyspace that is to stay writable without it. Else the client's own
        # region's group, which decides without a WAN round trip.
        spread = [g for g in groups if db._groups[g].get("kind") == "spread"]
        candidates = spread or groups
        here = [g for g in candidates if db._groups[g]["region"] == db.region]
        primary = here[0] if here else candidates[0]
        prepared: dict[int, int] = {}
        unanswered: list[int] = []  # prepares that may have installed intents all the same
        failures: list[BaseException] = []

        async def prepare(group: int) -> None:
            group_writes = writes.get(group, [])
            payload = {"group": group, "txn_id": self.txn_id, "read_ts": self.read_ts,
                       "writes": group_writes, "primary": primary,
                       "serializable": serializable}
            reads = self._visited.get(group)
            if serializable and reads is not None:
                # Read keys are locked until the transaction finishes: validated at its
                # snapshot now, and no other writer can commit them before its commit
                # timestamp (which is not known yet).
                # And the ranges it scanned: validated, and locked against inserts too.
                keys, payload["spans"] = _validated(reads, len(group_writes),
                                                    MAX_LOCK_KEY_BYTES)
                written = {w[0] for w in group_writes}
                payload["locks"] = [k for k in keys if k not in written]
            try:
                reply = await db._call_group(group, "prepare", payload, commit=True,
                                             expect=_COMMIT_ANSWER)
            except (MeridianError, OSError) as exc:
                failures.append(exc)
                if isinstance(exc, AmbiguousCommitError):
                    unanswered.append(group)
            else:
                prepared[group] = reply["ts"]

        undecided = True
        try:
            async with trio.open_nursery() as nursery:
                for group in groups:
                    nursery.start_soon(prepare, group)
            if failures:
                await self._finish_from_record(primary, [*prepared, *unanswered])
            undecided = False
        finally:
            if undecided:
                # Cancelled (the caller gave up) before any decision: it aborts now, rather
                # than leave the intents installed so far blocking their readers until
                # recovery finds them past their deadline -- in every group it was sent to,
                # answered or not: a prepare whose answer the cancellation cut off may have
                # installed them all the same.
                db._in_background(self._finish_from_record, primary, groups)
        if failures:
            for kind in (TransactionConflictError, InvalidArgumentError, LimitExceededError,
                         RecordTooLargeError):
                refusal = next((f for f in failures if isinstance(f, kind)), None)
                if refusal is not None:
                    raise refusal
            raise UnavailableError(f"transaction {self.txn_id:#x} was aborted: a group could "
                                   f"not prepare it ({failures[0]})") from failures[0]
        commit_ts = max(prepared.values())
        self._sent = True
        if planted.enabled("ack_before_decision"):
            await self._commit_before_deciding(primary, list(prepared), commit_ts)
            return
        try:
            reply = await db._call_group(primary, "decide", {
                "group": primary, "txn_id": self.txn_id, "commit_ts": commit_ts,
                "since": min(prepared.values()), "participants": list(prepared)}, commit=True,
                expect=_DECIDE_ANSWER)
        except (trio.Cancelled, MeridianError, OSError):
            # Cancelled, or the answer lost, with the decision not sent or not known to be
            # recorded: the record settles the transaction now (an abort, unless the decision
            # got there first), rather than leave its intents blocking readers and writers
            # until recovery finds them past their deadline.
            db._in_background(self._finish_from_record, primary, groups)
            raise
        if not reply["committed"]:
            # Somebody found its intents past their deadline and aborted it first.
            for group in prepared:
                if group != primary:
                    db._resolve_later(group, self.txn_id, 0)
            raise TransactionConflictError(
                f"transaction {self.txn_id:#x} was aborted: it did not commit before its "
                f"intents' deadline", "aborted")
        self.commit_ts = reply["ts"]
        for group in prepared:
            if group != primary:
                db._resolve_later(group, self.txn_id, commit_ts)

    async def _commit_before_deciding(self, primary: int, groups: list[int],
                                      commit_ts: int) -> None:
        """The planted bug ``ack_before_decision`` (engine.planted): the other participants
        commit, the caller is answered, and only then is the decision recorded."""
        db = self._db
        for group in groups:
            if group != primary:
                await db._call_group(group, "resolve", {
                    "group": group, "txn_id": self.txn_id, "commit_ts": commit_ts})
        self.commit_ts = commit_ts
        db._in_background(self._decide_later, primary, commit_ts)

    async def _decide_later(self, primary: int, commit_ts: int) -> None:
        await trio.sleep(0.05)
        await self._db._call_group(primary, "decide", {
            "group": primary, "txn_id": self.txn_id, "commit_ts": commit_ts,
            "since": commit_ts, "participants": [primary]})

    async def _finish_from_record(self, primary: int, groups: Sequence[int]) -> None:
        """Finishes the transaction as recovery would: the primary records an abort, unless
        its record holds a decision already (so that no recovery can commit it later), and
        the intents installed in ``groups`` follow the record (a group where it installed
        none is not changed); anything left over is recovered after the deadline."""
        try:
            reply = await self._db._call_group(primary, "decide", {
                "group": primary, "txn_id": self.txn_id, "commit_ts": 0}, commit=True,
                expect=_DECIDE_ANSWER)
        except (MeridianError, OSError):
            return  # undecided: the intents' recovery will abort it
        commit_ts = reply["ts"] if reply["committed"] else 0
        for group in groups:
            if group != primary:
                self._db._resolve_later(group, self.txn_id, commit_ts)

    # ------------------------------------------------------------------ snapshot

    async def _read(self, group: int, method: str, payload: dict) -> dict:
        """A read in ``group`` at this transaction's snapshot.

        The first read anywhere fixes the snapshot: the group's leader answers with a
        timestamp that covers every commit acknowledged before it (see the module
        docstring). The first read in another group is served at that snapshot too, with an
        *uncertainty window* up to that group's own new snapshot: a commit there in the window
        may have been acknowledged before this transaction began. If a read meets one (on the
        keys it reads), the snapshot moves up past the window, after checking that nothing
        this transaction read elsewhere changed in between (a *refresh*); otherwise the
        transaction could miss a commit that finished before it started. Reads that meet no
        such commit cost nothing more, whatever the groups' clocks."""
        self._check_open()
        db = self._db
        for _ in range(MAX_SNAPSHOT_MOVES):
            body = {**payload, "group": group}
            reads = self._visited.get(group)
            if not self.read_ts:
                body["ts"] = 0
            elif reads is None:
                body["ts"], body["min_ts"], body["at_min"] = 0, self.read_ts, True
            else:
                body["ts"], body["until"] = self.read_ts, max(reads.fresh, self.read_ts)
            try:
                reply = await db._call_group(group, method, body,
                                             expect=_READ_ANSWERS[method])
            except _Restart as restart:
                await self._move_snapshot(restart.ts)
                if reads is None:
                    # A first read in the group moves to the end of its window (or past it):
                    # that holds every commit of the group that may precede the transaction,
                    # so the read is asked again there without a new window, in which a key
                    # written often would have a commit every time.
                    self._visited[group] = _GroupReads(set(), [], restart.ts)
                continue
            if not self.read_ts:
                self.read_ts = reply["ts"]
            if reads is None:
                reads = self._visited[group] = _GroupReads(set(), [], 0)
            until = reply["until"]
            reads.fresh = max(reads.fresh, reply["ts"] if until is None else until)
            return reply
        raise TransactionConflictError(
            f"transaction {self.txn_id:#x}: its snapshot moved {MAX_SNAPSHOT_MOVES} times in "
            f"one read", "refresh")

    async def _move_snapshot(self, ts: int) -> None:
        """Moves the snapshot up to ``ts`` if nothing read so far changed in between."""
        if ts <= self.read_ts:
            return
        if self.read_ts == 0:
            self.read_ts = ts
            return
        db = self._db
        changed: list[tuple[int, dict]] = []
        failures: list[MeridianError] = []

        async def refresh(group: int, reads: _GroupReads) -> None:
            keys, spans = _validated(reads, 0)
            try:
                reply = await db._call_group(group, "refresh", {
                    "group": group, "keys": keys, "spans": spans,
                    "from_ts": self.read_ts, "to_ts": ts}, expect=_REFRESH_ANSWER)
            except MeridianError as exc:
                # Raised below as itself: two failing at once would leave the nursery as a
                # group of errors that no caller's ``except`` (run_transaction's) matches.
                failures.append(exc)
                return
            if not reply["ok"]:
                changed.append((group, reply))

        async with trio.open_nursery() as nursery:
            for group, reads in self._visited.items():
                if reads.keys or reads.spans:
                    nursery.start_soon(refresh, group, reads)
        if failures:
            raise failures[0]
        if changed:
            if any(reply.get("reason") == "moved" for _, reply in changed):
                # A keyspace it read moved away: the next attempt must look it up afresh.
                db._forget_keyspace()
            group, reply = changed[0]
            if reply.get("reason") == "too_old":
                # Nothing need have changed: the group no longer keeps versions that far back.
                raise TransactionConflictError(
                    f"transaction {self.txn_id:#x}: its snapshot {self.read_ts} is older than "
                    f"group {group} keeps versions for (the group's maximum transaction "
                    f"lifetime before its closed timestamp), so its reads cannot be checked "
                    f"for a move to a newer snapshot", "too_old")
            key = reply.get("key")
            if isinstance(key, bytes):
                key = user_key(key)
            raise TransactionConflictError(
                f"transaction {self.txn_id:#x}: a key it read changed before it could move its "
                f"snapshot to a newer group's ({changed[0][1].get('reason')})", "refresh", key)
        self.read_ts = ts

    # ------------------------------------------------------------------ internals

    def _discard(self) -> None:
        if self._state in ("open", "committing"):
            self._state = "rolled back"
        self._writes.clear()
        self._merges.clear()

    def _ended(self) -> bool:
        """Whether the transaction was committed or rolled back. (Not a failed one: committing
        that raises TransactionClosedError, so that a function that swallowed the failure of
        its own commit is not reported as a success.)"""
        return self._state in ("committed", "rolled back")

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransactionClosedError(f"transaction {self.txn_id:#x} is {self._state}")

    def _check_serializable(self, ks: Keyspace) -> None:
        """Refuses a serializable read of a regional keyspace: every region commits its
        writes on its own and merges the others' when they arrive, so no group could
        validate what the transaction read against them (write skew across regions would
        commit unseen)."""
        if self.isolation == "serializable" and ks.mode == "regional":
            raise InvalidArgumentError(
                f"keyspace {ks.name!r} is regional: other regions commit its writes without "
                f"checking them against this transaction's reads (they are merged when they "
                f"arrive), so a serializable transaction cannot read it; read it in a "
                f"snapshot transaction")

    async def _keyspace(self, name: str) -> Keyspace:
        """The keyspace named ``name``, as this transaction first used it: a keyspace of that
        name dropped and created again since is another keyspace, which the transaction's
        snapshot does not hold (what it read of the old one would leak into the new one).
        Refused as a ``moved`` conflict: the next attempt starts in the new keyspace."""
        ks = await self._db.keyspace(name)
        first = self._keyspace_ids.setdefault(name, ks.id)
        if ks.id != first:
            raise TransactionConflictError(
                f"transaction {self.txn_id:#x}: keyspace {name!r} was dropped and created "
                f"again since the transaction first used it", "moved")
        return ks

    async def _locate(self, keyspace: str, key, *, write: bool = True) -> tuple[bytes, int]:
        """The stored key of ``key`` and its group; a key to ``write`` is held to the
        cluster's ``max_key_size``, a key to read or delete only to the store's (a key written
        under a larger limit than today's stays readable, as scans and Database.read return
        it, and can be removed)."""
        self._check_open()
        ks = await self._keyspace(keyspace)
        group = self._db.group_of(ks)
        k = _check_key(key)
        # The cluster's max_key_size counts the stored key, keyspace prefix included (the
        # groups check it so): a longer key would be refused only at commit.
        limit = self._db.limits["max_key_size"] - KEY_PREFIX_SIZE
        if write and len(k) > limit:
            raise RecordTooLargeError(f"key {k!r:.80} of keyspace {keyspace!r} is {len(k)} "
                                      f"bytes: the limit is {limit}")
        return encode_key(ks.id, k), group

    def _buffer(self, stored: bytes, group: int, value: bytes | None, *,
                resolver: str | None = None) -> None:
        """Buffers a write (``resolver``: a regional keyspace's, merged at commit)."""
        self._check_open()
        limits = self._db.limits
        pending = self._writes if resolver is None else self._merges
        new_key = stored not in self._writes and stored not in self._merges
        if resolver is not None and value is not None and len(value) > MAX_APP_VALUE_SIZE:
            raise RecordTooLargeError(
                f"value of {len(value)} bytes: a regional keyspace's limit is "
                f"{MAX_APP_VALUE_SIZE} (the store's less the room of a conflict-log record, "
                f"which keeps a losing write's value)")
        if new_key and len(self._writes) + len(self._merges) >= limits["max_txn_keys"]:
            raise LimitExceededError(f"more than {limits['max_txn_keys']} keys written in one "
                                     f"transaction (at key {user_key(stored)!r:.80})")
        old = pending.get(stored)
        if resolver is not None and old is not None:
            old = old[1]
        size = self._bytes + len(value or b"") - len(old or b"") + (len(stored) if new_key
                                                                    else 0)
        if size > limits["max_txn_bytes"]:
            raise LimitExceededError(f"more than {limits['max_txn_bytes']} bytes written in "
                                     f"one transaction (at key {user_key(stored)!r:.80})")
        self._bytes = size
        if resolver is None:
            self._writes[stored] = value
        else:
            self._merges[stored] = (resolver, value)
        self._write_group[stored] = group


@asynccontextmanager
async def connect(nodes: Sequence[str], *, region: str | None = None,
                  request_timeout_s: float = 10.0,
                  simulate_wan: bool = True) -> AsyncIterator[Database]:
    """Connects to the cluster that ``nodes`` (``"host:port"`` client addresses) belong to.

    Args:
        nodes: one or more nodes to learn the cluster from; the first that answers is used.
        region: the client's region (default: the region of the node that answered). Stale
            reads are served there, and simulated WAN latency is counted from there.
        request_timeout_s: how long one request keeps retrying before
            :class:`~engine.errors.UnavailableError` (a commit whose node has not answered
            by then: :class:`~engine.errors.AmbiguousCommitError`).
        simulate_wan: add the configured WAN latency to requests (see the module docstring).

    Raises:
        InvalidArgumentError: ``nodes`` not a list of addresses, a bad address, a region
            that is not None and not one of the cluster's, or a ``request_timeout_s`` that is
            not a finite number of seconds > 0.
        UnavailableError: no node answered within ``request_timeout_s``.
    """
    # Finite: with no end, a call to a node that hangs would never try the group's other
    # voters (that takes half of the timeout), and a commit would wait for ever.
    if (isinstance(request_timeout_s, bool) or not isinstance(request_timeout_s, (int, float))
            or not 0 < request_timeout_s <= MAX_REQUEST_TIMEOUT_S):  # also refuses nan
        raise InvalidArgumentError(f"request_timeout_s must be a finite number of seconds > 0 "
                                   f"(at most {MAX_REQUEST_TIMEOUT_S:.0e}), not "
                                   f"{request_timeout_s!r:.40}")
    if region is not None and not isinstance(region, str):
        raise InvalidArgumentError(f"region must be None or a str, not {region!r:.40}")
    if isinstance(nodes, str):
        nodes = [nodes]
    if isinstance(nodes, (bytes, bytearray)) or not isinstance(nodes, Iterable):
        raise InvalidArgumentError(f"nodes must be a list of \"host:port\" addresses, not "
                                   f"{nodes!r:.40}")
    addresses = [_parse_address(n) for n in nodes]
    if not addresses:
        raise InvalidArgumentError("connect needs at least one node address")
    describe = None
    answered = ""  # the address whose description was taken
    errors_seen: dict[str, str] = {}
    deadline = trio.current_time() + request_timeout_s
    delay = 0.05
    # Each node gets CONNECT_ATTEMPT_S to connect and answer, twice that in the next round,
    # and so on: a paused node still completes TCP handshakes, and one whose packets are
    # dropped never completes them; either would otherwise hold the whole deadline while the
    # next address could answer at once.
    attempt_s = CONNECT_ATTEMPT_S
    # Nodes that are still starting refuse connections: keep trying until the deadline.
    while describe is None and trio.current_time() < deadline:
        for host, port in addresses:
            until = min(deadline, trio.current_time() + attempt_s)
            if until <= trio.current_time():
                break  # the time is up: the errors seen so far are the ones to report
            try:
                async with connect_rpc(host, port, connect_timeout_s=max(
                        0.0, until - trio.current_time())) as conn:
                    with trio.move_on_at(until):
                        describe = await conn.call("describe", None)
                    if describe is not None:
                        answered = f"{host}:{port}"
                        break
                    errors_seen[f"{host}:{port}"] = "no answer"
            except (OSError, ConnectTimeoutError, ConnectionLostError, RemoteError) as exc:
                errors_seen[f"{host}:{port}"] = str(exc)
        if describe is None:
            await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
            delay = min(1.0, delay * 2)
            attempt_s *= 2
    if describe is None:
        raise UnavailableError(f"no node answered within {request_timeout_s} s: " + "; ".join(
            f"{a}: {e}" for a, e in errors_seen.items()))
    async with trio.open_nursery() as nursery:
        try:
            # Only None means the answering node's region: an empty name is a region the
            # cluster does not have, not a request for whichever node answered first.
            db = Database(nursery, describe,
                          describe["region"] if region is None else region,
                          request_timeout_s=request_timeout_s, simulate_wan=simulate_wan)
        except InvalidArgumentError:
            raise  # a region of the caller's that the cluster does not have
        except (KeyError, IndexError, TypeError, ValueError, AttributeError,
                StopIteration) as exc:
            raise UnavailableError(
                f"{answered} answered a description of the cluster this client cannot read "
                f"({type(exc).__name__}: {exc}): is it a node of another version?"[:500]
            ) from None
        try:
            yield db
            with trio.move_on_after(BACKGROUND_DRAIN_S):
                await db._drain()
        finally:
            db._close()
