"""Every name ``engine`` exports, and every public method of the classes users hold, has a
docstring (README.md points to them for the details)."""

from __future__ import annotations

import inspect

import pytest

import engine
from engine.blocking import BlockingDatabase, BlockingTransaction
from engine.client import Database, Transaction
from engine.local import LocalCluster


def test_every_exported_name_has_a_docstring():
    missing = [name for name in engine.__all__ if not inspect.getdoc(getattr(engine, name))]
    assert missing == []


@pytest.mark.parametrize("cls", [Database, Transaction, BlockingDatabase,
                                 BlockingTransaction, LocalCluster, engine.LogStore])
def test_every_public_method_has_a_docstring(cls):
    missing = [name for name, member in vars(cls).items()
               if not name.startswith("_") and callable(member) and not member.__doc__]
    assert missing == []
