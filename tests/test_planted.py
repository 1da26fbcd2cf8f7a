"""Planted bugs: refused unless asked for in a test, and each one really breaks what it says
(the checkers' own tests show that they notice)."""

from __future__ import annotations

import pytest
import trio

import engine.node
from engine import errors, planted
from engine.local import open_local_cluster

TWO_REGIONS = ("us-east", "eu-west")


@pytest.fixture
def plant():
    yield lambda names: planted.plant(names, allow=True)
    planted.plant(None)


def test_planted_bugs_are_refused_unless_a_test_asks():
    with pytest.raises(errors.InvalidArgumentError, match="MERIDIAN_ALLOW_PLANTED_BUGS"):
        planted.plant("skip_adjudication")
    with pytest.raises(errors.InvalidArgumentError, match="unknown planted bug"):
        planted.plant("no_such_bug", allow=True)
    assert not any(planted.enabled(b) for b in planted.BUGS)
    planted.plant("")  # none: always allowed


async def test_skip_adjudication_lets_a_lost_update_through(plant):
    plant("skip_adjudication")
    async with open_local_cluster(("us-east",), 1, seed=31) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(30):
                await db.create_keyspace("k")
                await db.run_transaction(lambda tx: tx.put("k", b"x", b"0"))
                t1, t2 = db.transaction(), db.transaction()
                for tx in (t1, t2):
                    n = int(await tx.get("k", b"x"))
                    await tx.put("k", b"x", b"%d" % (n + 1))
                await t1.commit()
                await t2.commit()  # would be a write-write conflict
                assert await db.read("k", b"x") == b"1"  # two increments, one survives


async def test_ack_before_decision_leaves_a_dead_coordinators_transaction_half_done(
        plant, monkeypatch):
    monkeypatch.setattr(engine.node, "INTENT_TIMEOUT_S", 0.3)
    plant("ack_before_decision")
    async with open_local_cluster(TWO_REGIONS, 1, wan_latency_ms={TWO_REGIONS: 5},
                                  seed=32) as cluster:
        async with cluster.connect("us-east") as db:
            with trio.fail_after(30):
                await db.create_keyspace("e", home_region="us-east")
                await db.create_keyspace("w", home_region="eu-west")
        with trio.CancelScope() as coordinator:
            async with cluster.connect("us-east") as db:
                async with db.transaction() as tx:
                    await tx.put("e", b"k", b"1")
                    await tx.put("w", b"k", b"1")
                # Acknowledged; the coordinator dies before it records the decision.
                coordinator.cancel()
        async with cluster.connect("us-east") as db:
            with trio.fail_after(30):
                # eu-west committed; the primary (us-east) is aborted by recovery.
                assert await db.read("w", b"k") == b"1"
                assert await db.read("e", b"k") is None
