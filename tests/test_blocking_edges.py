"""Misuse of the blocking client and the in-process cluster that must be refused at once,
with a message that says what to do: a blocking call from a thread running an asyncio loop
(it would stop that loop), and a data directory that is a file."""

from __future__ import annotations

import asyncio

import pytest
import trio

from engine.blocking import connect_blocking
from engine.errors import InvalidArgumentError
from engine.local import open_local_cluster

from test_blocking import addresses, db  # noqa: F401  (fixtures)


def test_connect_blocking_from_an_asyncio_loop_is_refused():
    async def main() -> None:
        with pytest.raises(RuntimeError, match="asyncio event loop.*asyncio.to_thread"):
            connect_blocking(["127.0.0.1:1"], region="us-east")

    asyncio.run(main())


def test_a_blocking_call_from_an_asyncio_loop_is_refused_and_from_its_worker_thread_works(db):  # noqa: F811
    async def main() -> list:
        with pytest.raises(RuntimeError, match="asyncio event loop"):
            db.list_keyspaces()
        return await asyncio.to_thread(db.list_keyspaces)

    assert isinstance(asyncio.run(main()), list)


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_a_data_directory_that_is_a_file_is_refused(tmp_path, where):
    a_file = tmp_path / "data"
    a_file.write_bytes(b"not a directory")
    directory = a_file if where == "file" else a_file / "cluster"

    async def main() -> None:
        async with open_local_cluster(["us-east"], nodes_per_region=1,
                                      directory=str(directory)):
            raise AssertionError("a cluster started in a file")

    with pytest.raises(InvalidArgumentError, match="is not a directory"):
        trio.run(main)
    assert a_file.read_bytes() == b"not a directory"


def test_a_failed_rollback_does_not_hide_why_the_function_failed(db, monkeypatch):  # noqa: F811
    from engine.blocking import BlockingTransaction

    def failing_rollback(self) -> None:
        raise InvalidArgumentError("the rollback failed")

    monkeypatch.setattr(BlockingTransaction, "rollback", failing_rollback)

    def fn(tx) -> None:
        raise KeyError("the function's own error")

    with pytest.raises(KeyError, match="the function's own error") as info:
        db.run_transaction(fn)
    assert any("the rollback failed" in note for note in info.value.__notes__)
