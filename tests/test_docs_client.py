"""What README.md and the client's docstrings promise about errors and retries:
``run_transaction``'s retry policy (conflicts only, the last one raised; an ambiguous commit
never run again), which error a limit raises, and the staleness syntax.

One in-process single-node cluster per test; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import inspect

import pytest
import trio

from engine import errors
from engine.blocking import BlockingDatabase
from engine.client import Database
from engine.config import Limits
from engine.local import open_local_cluster

TIMEOUT_S = 30


def test_both_run_transactions_have_the_documented_retry_policy():
    documented = {"isolation": "snapshot", "max_attempts": 20, "base_delay_s": 0.002,
                  "max_delay_s": 0.5}
    for method in (Database.run_transaction, BlockingDatabase.run_transaction):
        params = inspect.signature(method).parameters
        assert {name: params[name].default for name in documented} == documented
        assert "max_attempts" in method.__doc__ and "AmbiguousCommitError" in method.__doc__


async def test_run_transaction_retries_conflicts_only_and_raises_the_last():
    async with open_local_cluster(("us-east",), 1, seed=81) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(TIMEOUT_S):
                await db.create_keyspace("ks")
                calls = []

                async def conflicting(tx):
                    calls.append(tx.txn_id)
                    raise errors.TransactionConflictError(f"attempt {len(calls)}", "write_write")

                with pytest.raises(errors.TransactionConflictError, match="attempt 3"):
                    await db.run_transaction(conflicting, max_attempts=3, base_delay_s=0)
                assert len(set(calls)) == 3  # a new transaction each time

                for error in (errors.AmbiguousCommitError("unknown"),
                              errors.UnavailableError("down")):
                    calls.clear()

                    async def failing(tx, error=error):
                        calls.append(tx.txn_id)
                        raise error

                    with pytest.raises(type(error)):
                        await db.run_transaction(failing, base_delay_s=0)
                    assert len(calls) == 1  # never run again: the caller decides


async def test_documented_errors_of_the_client():
    limits = Limits(max_txn_keys=3)
    async with open_local_cluster(("us-east",), 1, seed=82, limits=limits) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(TIMEOUT_S):
                await db.create_keyspace("ks")
                with pytest.raises(errors.KeyspaceExistsError):
                    await db.create_keyspace("ks")
                with pytest.raises(errors.KeyspaceNotFoundError):
                    await db.read("nope", b"k")
                with pytest.raises(errors.InvalidArgumentError):
                    db.transaction(isolation="repeatable_read")

                # A key or value over its size is RecordTooLargeError; a transaction over
                # its limits (keys or bytes written) is LimitExceededError. Both ValueErrors.
                async with db.transaction() as tx:
                    with pytest.raises(errors.RecordTooLargeError):
                        await tx.put("ks", b"k", b"v" * (db.limits["max_value_size"] + 1))
                    with pytest.raises(errors.RecordTooLargeError):
                        await tx.put("ks", b"k" * 247, b"v")
                    for i in range(3):
                        await tx.put("ks", b"k%d" % i, b"v")
                    with pytest.raises(errors.LimitExceededError):
                        await tx.put("ks", b"k3", b"v")
                assert issubclass(errors.RecordTooLargeError, ValueError)
                assert issubclass(errors.LimitExceededError, ValueError)

                with pytest.raises(errors.TransactionClosedError):
                    await tx.get("ks", b"k0")
                assert await db.read("ks", b"k2") == b"v"


async def test_staleness_syntax():
    async with open_local_cluster(("us-east",), 1, seed=83) as cluster:
        async with cluster.connect() as db:
            with trio.fail_after(TIMEOUT_S):
                await db.create_keyspace("ks")
                async with db.transaction() as tx:
                    await tx.put("ks", b"k", b"v")
                for good in ("bounded:5", "bounded:0.25", "exact:0", "bounded:0"):
                    assert await db.read("ks", b"k", staleness=good) in (b"v", None)
                for bad in ("bounded", "5", "stale:5", "bounded:-1", "exact:nan",
                            "bounded:5s", 5):
                    with pytest.raises(errors.InvalidArgumentError, match="staleness"):
                        await db.read("ks", b"k", staleness=bad)
