"""engine.errors: every error survives pickling and copying (a process pool's worker sends its
exception back pickled), with its message, errno and attributes."""

from __future__ import annotations

import copy
import errno
import inspect
import pickle

import pytest

import engine.errors as E

# Constructor arguments of the classes whose constructor takes more (or other) than a message.
ARGUMENTS = {
    E.StorageError: (errno.EACCES, "permission denied"),
    E.TransactionConflictError: ("lost to another writer", "write_write", b"alice-account"),
    E.CorruptionError: ("bad crc", "/data/seg-1", 42),
    E.CorruptLogError: ("torn record", "/data/seg-2", 4096),
    E.CorruptStateError: ("bad snapshot", "/data/state", 7),
    E.NotLeaderError: ("not the leader", 3, 2),
}

CLASSES = sorted((cls for name, cls in vars(E).items()
                  if inspect.isclass(cls) and issubclass(cls, BaseException)
                  and not name.startswith("_") and cls.__module__ == E.__name__),
                 key=lambda cls: cls.__name__)


def _state(exc: BaseException) -> tuple:
    return (type(exc), exc.args, str(exc), repr(exc), vars(exc),
            getattr(exc, "errno", None), getattr(exc, "strerror", None),
            getattr(exc, "retryable", None))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_pickles_and_copies_with_its_attributes(cls):
    exc = cls(*ARGUMENTS.get(cls, ("something went wrong",)))
    exc.__notes__ = ["while testing"]  # added attributes travel too
    for back in (pickle.loads(pickle.dumps(exc)), copy.copy(exc), copy.deepcopy(exc)):
        assert _state(back) == _state(exc)


def test_the_attributes_of_the_errors_that_have_some():
    conflict = pickle.loads(pickle.dumps(E.TransactionConflictError("lost", "intent", b"k")))
    assert (str(conflict), conflict.reason, conflict.key, conflict.retryable) == \
        ("lost", "intent", b"k", True)
    corrupt = pickle.loads(pickle.dumps(E.CorruptLogError("bad crc", "/x/seg", 42)))
    assert (str(corrupt), corrupt.errno, corrupt.path, corrupt.offset) == \
        ("bad crc", errno.EIO, "/x/seg", 42)
    full = pickle.loads(pickle.dumps(E.DiskFullError("disk full")))
    assert (str(full), full.errno) == ("disk full", errno.ENOSPC)
