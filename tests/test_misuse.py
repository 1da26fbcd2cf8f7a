"""No input reachable from Python crashes the interpreter or escapes as a foreign exception:
every public call of the MVCC store and the durable state, fed arbitrary arguments, either
works or raises a library error (or TypeError for a wrong type)."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from engine import DurableState, MeridianError, MVCCStore

weird = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**64 - 2, 2**64 - 1, 2**64, -1]),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=300),
    st.floats(allow_nan=True),
    st.lists(st.tuples(st.binary(max_size=4), st.one_of(st.none(), st.binary(max_size=4))),
             max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=2), st.binary(max_size=2)), max_size=3),
)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _call(fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            for _ in result:
                pass
    except (MeridianError, TypeError):
        pass


@FUZZ
@given(calls=st.lists(st.tuples(st.sampled_from(
    ["apply", "get", "get_version", "scan", "gc", "snapshot", "restore", "close", "stats"]),
    weird, weird, weird), max_size=15))
def test_mvcc_misuse(tmp_path_factory, calls):
    store = MVCCStore(tmp_path_factory.mktemp("mvcc"), map_size=1 << 20)
    store.apply([(b"k", b"v")], commit_ts=5, applied_index=1)
    try:
        for name, a, b, c in calls:
            if name == "apply":
                _call(store.apply, a, b, c)
            elif name in ("get", "get_version"):
                _call(getattr(store, name), a, b)
            elif name == "scan":
                _call(store.scan, a, b, c, limit=a if isinstance(a, int) else None)
            elif name == "gc":
                _call(store.gc, a, max_versions=b if isinstance(b, int) else 10)
            elif name == "snapshot":
                _call(store.snapshot_chunks, a if isinstance(a, int) else 1 << 20)
            elif name == "restore":
                _call(store.restore, a if isinstance(a, list) else [a])
            elif name == "close":
                store.close()
            else:
                _call(store.stats)
    finally:
        store.close()


@FUZZ
@given(calls=st.lists(st.tuples(st.sampled_from(["store", "load", "close"]), weird),
                      max_size=10))
def test_durable_state_misuse(tmp_path_factory, calls):
    state = DurableState(tmp_path_factory.mktemp("state") / "hard")
    try:
        for name, a in calls:
            if name == "store":
                _call(state.store, a)
            elif name == "load":
                _call(state.load)
            else:
                state.close()
    finally:
        state.close()
