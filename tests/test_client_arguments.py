"""The client library (engine/client.py, engine/blocking.py) given arguments out of range: each
is refused at the call, as an InvalidArgumentError naming the argument and what it may be,
before anything is sent; never as an error from deep inside (the request's encoding, a
node's answer).

The node is the fake of test_client_faults: ``serve_rpc`` with just enough handlers.
"""

from __future__ import annotations

import sys

import pytest
import trio

import engine
from engine.client import MAX_CONFLICTS_PAGE, MAX_SCAN_LIMIT
from engine.blocking import connect_blocking
from engine.errors import InvalidArgumentError
from engine.placement import encode_key
from test_client_faults import GUARD_S, TIMEOUT_S, FakeNode


def regional(p, ctx):
    return {"id": 1, "name": p["name"], "mode": "regional", "home": "r1"}


@pytest.mark.parametrize("limit", [MAX_SCAN_LIMIT + 1, 2**64, 2**70, -1, 1.5, True, "5"])
async def test_a_scan_limit_out_of_range_is_refused_at_the_call(nursery, limit):
    # A limit of 2**64 or more passed the check and failed as the request's encoding ("the
    # payload cannot be encoded as msgpack"), naming neither the limit nor its range.
    node = FakeNode(nursery)
    asked = []

    async def scan(p, ctx):
        asked.append(p["limit"])
        return {"ts": 5, "until": 5, "items": []}

    node.handlers["scan"] = scan
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(
                    InvalidArgumentError, match=rf"limit must be None or an int in "
                                                rf"0\.\.{MAX_SCAN_LIMIT}, not "):
                await tx.scan("ks", limit=limit)
        assert asked == []


async def test_a_regional_scan_without_a_real_limit_reads_past_a_page_of_tombstones(nursery):
    # sys.maxsize is a limit a caller passes for none. A regional scan reads on past a page
    # of tombstones asking for twice as many keys each time: soon over 2**64, a count the
    # request could not encode, and the scan failed on its third page.
    node = FakeNode(nursery)
    asked = []

    async def scan(p, ctx):
        asked.append(p["limit"])
        if len(asked) <= 2:  # a page of one tombstone, and more to read after it
            key = encode_key(1, b"k%d" % len(asked))
            return {"ts": 5, "until": 5, "items": [[key, None]], "more": True}
        return {"ts": 5, "until": 5, "items": []}

    async def keyspace_get(p, ctx):
        return regional(p, ctx)

    node.handlers.update({"scan": scan, "keyspace.get": keyspace_get})
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S):
                assert await tx.scan("ks", limit=sys.maxsize) == []
    assert len(asked) == 3 and all(n < 2**64 for n in asked)


@pytest.mark.parametrize("limit", [0, -1, MAX_CONFLICTS_PAGE + 1, 2**64, 2**70, 1.5, True,
                                   None])
async def test_a_conflict_log_page_size_out_of_range_is_refused_at_the_call(nursery, limit):
    # The limit was sent as it was: 2**64 or more failed as the request's encoding, naming
    # neither the limit nor its range; the others went to the catalog and the node first.
    node = FakeNode(nursery)
    asked = []

    async def keyspace_get(p, ctx):
        asked.append("keyspace.get")
        return regional(p, ctx)

    async def conflicts(p, ctx):
        asked.append("conflicts.list")
        return {"records": []}

    node.handlers.update({"keyspace.get": keyspace_get, "conflicts.list": conflicts})
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(
                InvalidArgumentError,
                match=rf"limit must be an int in 1\.\.{MAX_CONFLICTS_PAGE}, not "):
            await db.conflicts("ks", limit=limit)
        assert asked == []
        with trio.fail_after(GUARD_S):
            assert await db.conflicts("ks", limit=MAX_CONFLICTS_PAGE) == []


@pytest.mark.parametrize("records", [[b"id"], [None], b"id", [("k", b"id")]])
async def test_draining_something_else_than_conflict_records_is_refused(nursery, records):
    # AttributeError ('bytes' object has no attribute 'record_id'), after the catalog lookup.
    node = FakeNode(nursery)
    asked = []

    async def drain(p, ctx):
        asked.append(p)
        return {}

    node.handlers["conflicts.drain"] = drain
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(InvalidArgumentError,
                                                     match="takes the ConflictRecords"):
            await db.drain_conflicts("ks", records)
        assert asked == []


@pytest.mark.parametrize("timeout_s", [0, -1, -0.5, float("nan"), float("-inf"), "10", None,
                                       True, float("inf"), 10**400, 10**9 + 1])
async def test_a_request_timeout_that_is_no_positive_number_is_refused_at_connect(
        nursery, timeout_s):
    # connect() tried no node at all and said that none answered ("no node answered within
    # nan s: "), with a node up and listening; or failed with a TypeError adding the
    # timeout to the clock. An infinite one was taken: a call to a node that hung then never
    # moved on to another voter, and a commit waited for ever.
    node = FakeNode(nursery)
    await node.start()
    with trio.fail_after(GUARD_S), pytest.raises(
            InvalidArgumentError, match="request_timeout_s must be a finite number of seconds > 0"):
        async with engine.connect([node.address], request_timeout_s=timeout_s):
            pass


def test_a_request_timeout_that_is_no_positive_number_is_refused_by_connect_blocking():
    # Said that no node answered, having asked none.
    with pytest.raises(InvalidArgumentError, match=r"request_timeout_s must be a finite "
                                                   r"number of seconds > 0 \(at most 1e\+09\), "
                                                   r"not -1"):
        connect_blocking(["127.0.0.1:1"], request_timeout_s=-1)


@pytest.mark.parametrize("amount", [2**63, -2**63 - 1, 2**70, 1.5, True, "5", None])
async def test_an_increment_amount_out_of_range_is_refused_at_the_call(nursery, amount):
    # An amount of 2**63 or more was refused by the payload's encoding ("expected an int
    # within signed 64 bits, not ..."), naming neither the amount nor the call; a float or a
    # bool was said to be no int, without the range.
    node = FakeNode(nursery)
    asked = []

    async def keyspace_get(p, ctx):
        asked.append("keyspace.get")
        return {**regional(p, ctx), "resolver": "counter"}

    node.handlers["keyspace.get"] = keyspace_get
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(
                InvalidArgumentError,
                match=r"amount must be an int in -2\*\*63\.\.2\*\*63-1, not "):
            async with db.transaction() as tx:
                await tx.increment("ks", "k", amount)


@pytest.mark.parametrize("argument, value, refusal", [
    ("mode", "local", r"mode must be one of global, regional, not 'local'"),
    ("mode", None, r"mode must be one of global, regional, not None"),
    ("survive", "planet", r"survive must be one of zone, region, not 'planet'"),
    ("survive", {}, r"survive must be one of zone, region, not \{\}"),
    ("home_region", "mars", r"home_region must be None or one of r1, not 'mars'"),
    ("home_region", "", r"home_region must be None or one of r1, not ''"),
    ("home_region", 5, r"home_region must be None or one of r1, not 5"),
    ("resolver", "sum", r"resolver must be one of lww, counter, max, add_wins_set or "
                        r"app:<name>, not 'sum'"),
    ("resolver", ["lww"], r"resolver must be one of .* not \['lww'\]"),
])
async def test_a_keyspace_to_create_with_a_bad_argument_is_refused_at_the_call(
        nursery, argument, value, refusal):
    # Each was sent to the node: an empty home_region made the keyspace in the client's
    # region, and a resolver the node could not look up (a list) failed there, with an
    # internal error the client took for an unknown outcome ("may or may not have committed").
    node = FakeNode(nursery)
    asked = []

    async def create(p, ctx):
        asked.append(p)
        return {"id": 1, "name": p["name"], "mode": p["mode"], "home": p["home"]}

    node.handlers["keyspace.create"] = create
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(InvalidArgumentError, match=refusal):
            await db.create_keyspace("ks", **{argument: value})
        assert asked == []


@pytest.mark.parametrize("name", [["ks"], {"ks": 1}, {"ks"}, bytearray(b"ks")])
async def test_a_keyspace_name_that_is_no_str_is_refused_at_the_call(nursery, name):
    # A name that cannot be a dict key (a list, a set) failed in the lookup of the cached
    # records, as a TypeError ("unhashable type") from inside the library.
    node = FakeNode(nursery)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            with pytest.raises(InvalidArgumentError, match="bad keyspace name"):
                await db.read(name, b"k")
            with pytest.raises(InvalidArgumentError, match="bad keyspace name"):
                async with db.transaction() as tx:
                    await tx.put(name, b"k", b"v")


@pytest.mark.parametrize("keys", ["alice", b"alice", bytearray(b"alice"), None, 5])
async def test_get_many_of_one_key_or_no_iterable_is_refused_at_the_call(nursery, keys):
    # A str was read as its letters: get_many("ks", "alice") asked for the keys "a", "l",
    # "i", "c", "e" and answered five values, none of them alice's; a bytes failed on its
    # first byte value ("key must be bytes or str, not int"); None or an int as a TypeError.
    node = FakeNode(nursery)
    asked = []

    async def read(p, ctx):
        asked.append(p["keys"])
        return {"ts": 5, "until": 5, "values": [b"1" for _ in p["keys"]]}

    node.handlers["read"] = read
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(
                    InvalidArgumentError, match="keys must be an iterable of keys"):
                await tx.get_many("ks", keys)
        assert asked == []
