"""The client library (engine/client.py) against a node whose answers are malformed: a field
missing or of the wrong type. Each must end as one of the library's errors, never as a
TypeError or KeyError from deep inside.

The node is the fake of test_client_faults: ``serve_rpc`` with just enough handlers.
"""

from __future__ import annotations

import pytest
import trio

import engine
from engine.errors import AmbiguousCommitError, TransactionClosedError, UnavailableError
from engine.rpc import RemoteError
from test_client_faults import GUARD_S, HOST, TIMEOUT_S, FakeNode, describe_for

BAD_ANSWERS = [None, [6], {}, {"ts": "6"}, {"ts": 6.0}, {"ts": True}, {"ts": [6]}]


async def answering(nursery, method: str, answer) -> FakeNode:
    """A fake node, started, that answers every ``method`` call with ``answer``."""
    node = FakeNode(nursery)

    async def handler(p, ctx):
        return answer

    node.handlers[method] = handler
    await node.start()
    return node


@pytest.mark.parametrize("answer", BAD_ANSWERS)
async def test_a_commit_answered_in_a_form_this_client_cannot_read_is_ambiguous(nursery,
                                                                                 answer):
    # The node ran the commit, then answered without an int "ts": the commit raised KeyError
    # or TypeError, and the transaction counted as failed (nothing written) though it may
    # have committed; a "ts" of another type became the transaction's commit_ts.
    node = FakeNode(nursery)
    ran = []

    async def commit(p, ctx):
        ran.append(p["group"])
        return answer

    node.handlers["commit"] = commit
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        tx = db.transaction()
        await tx.put("ks", b"k", b"v")
        with trio.fail_after(GUARD_S), pytest.raises(AmbiguousCommitError,
                                                     match="may or may not have committed"):
            await tx.commit()
        assert ran == [1]
        assert tx.commit_ts == 0
        with pytest.raises(TransactionClosedError, match="unknown outcome"):
            await tx.get("ks", b"k")


@pytest.mark.parametrize("answer", [*BAD_ANSWERS, {"ts": 5, "values": None},
                                    {"ts": 5, "values": {b"k": None}}])
@pytest.mark.parametrize("staleness", [None, "bounded:10"])
async def test_a_read_answered_in_a_form_this_client_cannot_read_is_unavailable(
        nursery, answer, staleness):
    # A read answered without an int "ts" and a list of "values" raised KeyError or
    # TypeError; a transaction took a "ts" of another type as its snapshot, and failed
    # later, in another call, comparing it.
    node = await answering(nursery, "read", answer)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="another version"):
            await db.read("ks", b"k", staleness=staleness)
        tx = db.transaction()
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="another version"):
            await tx.get("ks", b"k")
        assert tx.read_ts == 0


@pytest.mark.parametrize("answer", [None, {"ts": 5}, {"ts": "5", "items": []},
                                    {"ts": 5, "items": None}])
async def test_a_scan_answered_in_a_form_this_client_cannot_read_is_unavailable(nursery,
                                                                                 answer):
    node = await answering(nursery, "scan", answer)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        async with db.transaction() as tx:
            with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                         match="another version"):
                await tx.scan("ks")


@pytest.mark.parametrize("answer", [{"ts": 5, "values": [5]}, {"ts": 5, "values": ["v"]},
                                    {"ts": 5, "until": "9", "values": [None]},
                                    {"ts": 5, "until": 9.0, "values": [None]}])
async def test_a_read_answering_values_or_until_of_another_type_is_unavailable(nursery,
                                                                               answer):
    # A value of another type than bytes (or None) reached the caller as the key's value;
    # an ``until`` of another type failed comparing it, deep in the transaction.
    node = await answering(nursery, "read", answer)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 answered 'read'"):
            await db.read("ks", b"k")
        tx = db.transaction()
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 answered 'read'"):
            await tx.get("ks", b"k")


async def test_a_read_answering_no_value_for_its_key_is_unavailable(nursery):
    # IndexError: the one key asked for had no value in the answer.
    node = await answering(nursery, "read", {"ts": 5, "values": []})
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="0 values for 1 key"):
            await db.read("ks", b"k")


RECORD = {"id": 1, "name": "ks", "mode": "global", "home": "r1"}


@pytest.mark.parametrize("page", [
    None, {}, {"keyspaces": None, "next": None}, {"keyspaces": [5], "next": None},
    {"keyspaces": [{"id": 1, "name": "ks"}], "next": None},
    {"keyspaces": [{**RECORD, "id": "1"}], "next": None},
    {"keyspaces": [{**RECORD, "retired": "r2"}], "next": None},
    {"keyspaces": [RECORD], "next": 5},
    {"keyspaces": [RECORD], "next": ""},  # no step forward: asked for again and again
])
async def test_a_keyspace_list_page_this_client_cannot_read_is_unavailable(nursery, page):
    node = await answering(nursery, "keyspace.list", page)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="'keyspace.list'.*another version"):
            await db.list_keyspaces()


@pytest.mark.parametrize("record", [None, {"id": 1}, {**RECORD, "home": None},
                                    {**RECORD, "abandoned": [1]}])
async def test_a_keyspace_record_this_client_cannot_read_is_unavailable(nursery, record):
    node = await answering(nursery, "keyspace.get", record)
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 answered 'keyspace.get'"):
            await db.read("ks", b"k")


@pytest.mark.parametrize("answer", [None, {"ts": 5}, {"ts": "5", "done": True},
                                    {"ts": 5, "done": False},
                                    {"ts": 5, "done": False, "fence": [2], "epoch": 1},
                                    {"ts": 5, "done": False, "fence": [2, 0], "epoch": "1"}])
async def test_a_fence_answer_this_client_cannot_read_is_unavailable(nursery, answer):
    # Dropping a keyspace fences it off in its group: an answer without the fields the drop
    # reads raised KeyError, TypeError or IndexError.
    node = FakeNode(nursery)

    async def begin(p, ctx):
        return {**RECORD, "epoch": 1, "dropping": True}

    async def fence(p, ctx):
        return answer

    node.handlers.update({"keyspace.begin": begin, "keyspace.fence": fence})
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="keyspace.fence.*another version"):
            await db.drop_keyspace("ks")


@pytest.mark.parametrize("answer", [None, {}, {"ok": 1}, {"ok": "false"}])
async def test_a_refresh_answer_this_client_cannot_read_is_unavailable(nursery, answer):
    # A read in a second group moves the snapshot: the first group is refreshed, and its
    # answer without a bool "ok" raised KeyError or TypeError, or, truthy, was taken as
    # nothing having changed.
    node = FakeNode(nursery, data_groups=2)
    base_read = node._read

    async def read(p, ctx):
        if p["group"] == 2 and p.get("min_ts") == 5:
            raise RemoteError("restart", "a commit in the window", retryable=True,
                              details={"ts": 9})
        return await base_read(p, ctx)

    async def refresh(p, ctx):
        return answer

    node.handlers.update(read=read, refresh=refresh)
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        tx = db.transaction()
        await tx.get("ks1", b"a")
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 answered 'refresh'"):
            await tx.get("ks2", b"b")
        assert tx.read_ts == 5


@pytest.mark.parametrize("records", [
    None, [[b"id", b"\x00\x00\x00\x01k"]], [[b"id", 5, [1, "r1", 2, "r2", b"v", "lww", 3]]],
    [[b"id", b"\x00\x00\x00\x01k", [1, "r1", 2, "r2", 7, "lww", 3]]],
    [[b"id", b"\x00\x00\x00\x01k", [1, "r1", 2, "r2", b"v", "lww"]]],
])
async def test_a_conflict_log_answer_this_client_cannot_read_is_unavailable(nursery, records):
    node = FakeNode(nursery)

    async def keyspace_get(p, ctx):
        return {**RECORD, "mode": "regional"}

    async def conflicts(p, ctx):
        return {"records": records}

    node.handlers.update({"keyspace.get": keyspace_get, "conflicts.list": conflicts})
    await node.start()
    async with engine.connect([node.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S), pytest.raises(UnavailableError,
                                                     match="node 1 answered 'conflicts.list'"):
            await db.conflicts("ks")


STATUS = {"node": 2, "region": "r1", "groups": {},
          "replication_lag_ms": {"r2": {"samples": 3, "p50": 1.0, "p99": 2.0}},
          "replication_behind_ms": {"r2": 4.0}, "bytes_by_region": {"r2": {"sent": 7}},
          "replication_broken": [[1, 2, 9]]}


@pytest.mark.parametrize("status", [
    None, [1], {}, {**STATUS, "region": 5}, {**STATUS, "replication_lag_ms": {"r2": 5}},
    {**STATUS, "replication_lag_ms": {"r2": {}}}, {**STATUS, "replication_lag_ms": [1]},
    {**STATUS, "replication_behind_ms": {"r2": "4"}}, {**STATUS, "bytes_by_region": {"r2": 7}},
    {**STATUS, "bytes_by_region": {5: {"sent": 7}}}, {**STATUS, "replication_broken": [[1]]},
    {**STATUS, "replication_broken": [[1, 2, "9"]]},
])
async def test_a_status_this_client_cannot_read_lists_its_node_as_an_error(nursery, status):
    # statistics() read every node's status unchecked: one node answering in another form
    # failed the whole call with a KeyError, TypeError or ValueError; status() handed the
    # answer on as the node's view.
    good, bad = FakeNode(nursery), FakeNode(nursery)

    async def describe(p, ctx):
        d = describe_for(good.port, data_groups=2)
        d["nodes"] = {1: ["r1", HOST, good.port], 2: ["r2", HOST, bad.port]}
        return d

    async def good_status(p, ctx):
        return {**STATUS, "node": 1}

    async def bad_status(p, ctx):
        return status

    good.handlers.update(describe=describe, status=good_status)
    bad.handlers.update(describe=describe, status=bad_status)
    await good.start()
    await bad.start()
    async with engine.connect([good.address], request_timeout_s=TIMEOUT_S) as db:
        with trio.fail_after(GUARD_S):
            stats = await db.statistics()
        assert stats["nodes"][1]["node"] == 1
        assert set(stats["nodes"][2]) == {"error"}
        assert "node 2 answered 'status'" in stats["nodes"][2]["error"]
        assert "another version" in stats["nodes"][2]["error"]
        # The figures are those of the node whose answer could be read.
        assert stats["replication_lag_ms"] == {
            "r2->r1": {"samples": 3, "p50": 1.0, "p99": 2.0},
            "r1->r2": {"samples": 0, "p50": None, "p99": None, "behind_ms": 4.0}}
        assert stats["cross_region_bytes"] == {"r1->r2": 7}
        assert stats["replication_broken"] == {"r1->r2": 9}
