"""Application resolvers of regional keyspaces (ARCH §6): configured on the nodes
(``[cluster.resolvers]``), chosen per keyspace (``resolver="app:<name>"``), and run when a
write is applied, local or shipped from another region, in every region alike.

The state-machine tests apply log entries to one group directly; the cluster test runs two
regions in-process.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import trio

from engine import errors
from engine.config import ClusterConfig, ConfigError, application_resolvers, parse_node_config
from engine.config import dump_node_config, default_local_cluster
from engine.group import GroupStateMachine, Outcome, encode_commit, encode_remote
from engine.local import open_local_cluster
from engine.merge import Version, decode_cell, hypothesis_check_convergence, reader_for
from engine.mvcc import MAX_TS, MVCCStore
from raft.types import Entry
from test_regional import _converged

KEY = (7).to_bytes(4, "big") + b"note"
T = 1_700_000_000_000_000_000  # timestamps as the hybrid logical clock reads them


def longest(local: Version, remote: Version) -> Version:
    """Keeps the longest value (a delete is shorter than any); ties by (ts, origin)."""
    def rank(v: Version):
        return (-1 if v.value is None else len(v.value), v.ts, v.origin)

    return max(local, remote, key=rank)


def picky(local: Version, remote: Version) -> Version:
    """``longest``, but it cannot stand the value b"boom"."""
    if b"boom" in (local.value, remote.value):
        raise ValueError("no booms")
    return longest(local, remote)


def test_the_resolver_used_here_converges():
    # As an application tests its own resolver (engine.merge), with the resolver the nodes
    # import from the configuration.
    resolver = application_resolvers(_cluster(longest=f"{__name__}:longest"))["app:longest"]
    hypothesis_check_convergence(resolver, st.binary(max_size=6), max_examples=40)


# ----------------------------------------------------------------------- configuration

def _cluster(**resolvers) -> ClusterConfig:
    import dataclasses

    return dataclasses.replace(default_local_cluster(("us-east",), 1), resolvers=resolvers)


def test_resolvers_are_read_from_toml_imported_and_written_back():
    cfg = parse_node_config(dump_node_config(_node_config(longest=f"{__name__}:longest")))
    assert dict(cfg.cluster.resolvers) == {"longest": f"{__name__}:longest"}
    [(kind, resolver)] = application_resolvers(cfg.cluster).items()
    assert kind == "app:longest" and resolver.fn is longest


def _node_config(**resolvers):
    from engine.config import NodeConfig

    return NodeConfig(node_id=1, data_dir="/tmp/d", cluster=_cluster(**resolvers))


@pytest.mark.parametrize("resolvers, message", [
    ({"Bad": "m:f"}, "resolvers.Bad: a resolver name is 1-64 characters"),
    ({"ok": "no colon"}, 'resolvers.ok: expected "module:function"'),
    ({"ok": 12}, 'resolvers.ok: expected "module:function", got 12'),
])
def test_a_bad_resolver_entry_is_a_config_error_naming_it(resolvers, message):
    with pytest.raises(ConfigError, match=message):
        _cluster(**resolvers)


@pytest.mark.parametrize("target, message", [
    ("no_such_module_here:f", "cannot import 'no_such_module_here': ModuleNotFoundError"),
    (f"{__name__}:nothing", "has no 'nothing'"),
    (f"{__name__}:KEY", "is not a function"),
])
def test_a_resolver_that_cannot_be_imported_is_a_config_error_naming_it(target, message):
    with pytest.raises(ConfigError, match=f"cluster.resolvers.r: .*{message}"):
        application_resolvers(_cluster(r=target))


def test_a_function_given_in_code_has_no_toml_form():
    with pytest.raises(ConfigError, match="module:function"):
        dump_node_config(_node_config(longest=longest))


# ----------------------------------------------------------------------- the state machine

class _Group:
    def __init__(self, path, resolvers) -> None:
        self.store = MVCCStore(path, map_size=1 << 22)
        self.sm = GroupStateMachine(self.store, max_txn_lifetime_ns=10**9, origin="us-east",
                                    resolvers=application_resolvers(_cluster(**resolvers)))
        self.index = 0
        self.kind = "app:longest"

    def apply(self, data: bytes):
        self.index += 1
        [result] = self.sm.apply([Entry(term=1, index=self.index, data=data)])
        return result

    def commit(self, ts: int, value: bytes, resolver: str = "app:longest"):
        return self.apply(encode_commit(self.index + 1, 0, ts, [],
                                        merges=[(KEY, resolver, value)]))

    def remote(self, after: int, up_to: int, ts: int, value: bytes,
               resolver: str = "app:longest"):
        return self.apply(encode_remote(2, up_to + 1, after, up_to,
                                        [[KEY, resolver, value, ts, "eu-west", 0, ""]]))

    def value(self) -> bytes | None:
        raw = self.store.get(KEY, MAX_TS)
        return reader_for(self.kind).value_of(None if raw is None else decode_cell(raw))

    def close(self) -> None:
        self.sm.close()
        self.store.close()


@pytest.fixture
def group(tmp_path):
    g = _Group(tmp_path / "g", {"longest": longest, "picky": picky})
    yield g
    g.close()


def test_local_and_shipped_writes_go_through_the_resolver(group):
    assert group.commit(T + 100, b"a long value").committed
    # Newer, from another region: last-writer-wins would keep it; the resolver does not.
    assert group.remote(0, T + 300, T + 200, b"short").committed
    assert group.value() == b"a long value"
    # A newer local write too.
    assert group.commit(T + 400, b"tiny").committed
    assert group.value() == b"a long value"
    assert group.commit(T + 500, b"the longest value of all").committed
    assert group.value() == b"the longest value of all"
    logged = group.sm.conflicts(b"", b"\xff")
    assert [rec[5] for _, _, rec in logged] == ["longest"]  # the shipped write, concurrent
    assert logged[0][2][4] == b"short"


def test_a_resolver_that_raises_refuses_a_local_write_and_the_group_goes_on(group):
    group.kind = "app:picky"
    assert group.commit(T + 100, b"fine", resolver="app:picky").committed
    refused = group.commit(T + 200, b"boom", resolver="app:picky")
    assert refused.outcome is Outcome.INVALID
    assert "resolver 'picky' raised ValueError: no booms" in refused.reason
    assert group.commit(T + 300, b"finer", resolver="app:picky").committed
    assert group.value() == b"finer"


def test_a_shipped_write_the_resolver_fails_on_is_merged_by_last_writer(group):
    # Refusing it would keep each region's own value for good: here, b"boom" where it was
    # committed, b"fine" in the other region. By last writer, both keep the newer.
    group.kind = "app:picky"
    assert group.commit(T + 100, b"fine", resolver="app:picky").committed
    assert group.remote(0, T + 350, T + 300, b"boom", resolver="app:picky").committed
    assert group.value() == b"boom"
    assert group.remote(T + 350, T + 450, T + 400, b"ok", resolver="app:picky").committed
    assert group.value() == b"ok"  # "longest" would keep b"boom"; picky fails on it
    assert [(rec[5], rec[4]) for _, _, rec in group.sm.conflicts(b"", b"\xff")] == [
        ("lww (picky failed)", b"fine"), ("lww (picky failed)", b"boom")]


def test_a_batch_with_two_writes_the_resolver_fails_on_is_applied(group):
    # In eu-west the key's first write b"boom" was stored without calling the function, a
    # newer write from here replaced it by last writer, and b"ok" merged with that one. The
    # function fails on b"boom" and b"ok", shipped in one batch: merged by last writer like
    # any pair of a shipped write, not a refusal of the batch, which would stop the stream.
    group.kind = "app:picky"
    result = group.apply(encode_remote(2, T + 400, 0, T + 300, [
        [KEY, "app:picky", b"boom", T + 100, "eu-west", 0, ""],
        [KEY, "app:picky", b"ok", T + 300, "eu-west", T + 200, "us-east"]]))
    assert result.committed, result.reason
    assert group.value() == b"ok"
    assert group.sm.watermark(2) == T + 300


def test_regions_agree_when_the_resolver_fails_on_what_each_holds(tmp_path):
    # Each region commits a first write (stored without calling the resolver), then receives
    # the other's: the function fails on the pair in both, and both keep the same one.
    east = _Group(tmp_path / "east", {"picky": picky})
    west = _Group(tmp_path / "west", {"picky": picky})
    east.kind = west.kind = "app:picky"
    try:
        assert east.commit(T + 100, b"boom", resolver="app:picky").committed
        assert west.commit(T + 200, b"fine", resolver="app:picky").committed
        # (each _Group ships as "eu-west": origins only break ties here, and there are none)
        assert east.remote(0, T + 250, T + 200, b"fine", resolver="app:picky").committed
        assert west.remote(0, T + 150, T + 100, b"boom", resolver="app:picky").committed
        assert east.value() == west.value() == b"fine"
    finally:
        east.close()
        west.close()


def quits(local: Version, remote: Version) -> Version:
    """``longest``, but it exits on the value b"quit" (as a call of sys.exit would)."""
    if remote.value == b"quit":
        raise SystemExit(3)
    return longest(local, remote)


def huge(local: Version, remote: Version) -> Version:
    return Version((local.value or b"") * 2 ** 22, remote.ts, remote.origin)


def starves(local: Version, remote: Version) -> Version:
    raise MemoryError


class Unspeakable(Exception):
    """An exception whose message fails, as one that decodes the values as text does on
    bytes that are not UTF-8."""

    def __str__(self) -> str:
        return b"\xff".decode()


class Unshowable:
    def __repr__(self) -> str:
        raise Unspeakable()


def mute(local: Version, remote: Version) -> Version:
    raise Unspeakable()


@pytest.mark.parametrize("fn, value, reason", [
    (quits, b"quit", "raised SystemExit: 3"),
    (huge, b"x", "returned a value of 41943040 bytes, over the"),
    (lambda local, remote: "not a version", b"x", "returned 'not a version', not a Version"),
    (mute, b"x", "raised Unspeakable: <Unspeakable, which cannot be shown>"),
    (lambda local, remote: Unshowable(), b"x",
     "returned <Unshowable, which cannot be shown>, not a Version"),
])
def test_any_failure_of_the_function_is_a_refusal_of_a_local_write(tmp_path, fn, value, reason):
    g = _Group(tmp_path / "g", {"f": fn})
    try:
        assert g.commit(T + 100, b"0123456789", resolver="app:f").committed
        refused = g.commit(T + 200, value, resolver="app:f")
        assert refused.outcome is Outcome.INVALID and reason in refused.reason
        # Shipped: merged by last writer.
        assert g.remote(0, T + 350, T + 300, value, resolver="app:f").committed
        g.kind = "app:f"
        assert g.value() == value
    finally:
        g.close()


def test_a_resolver_out_of_memory_stops_the_replica_rather_than_refuse(tmp_path):
    # Unlike the function's own answer, one replica may run out of memory where the others
    # do not: a refusal here alone would leave it unlike its group.
    g = _Group(tmp_path / "g", {"starves": starves})
    try:
        assert g.commit(T + 100, b"fine", resolver="app:starves").committed
        with pytest.raises(MemoryError):
            g.commit(T + 200, b"more", resolver="app:starves")
    finally:
        g.close()


def test_a_replica_without_the_resolver_stops_rather_than_apply_differently(tmp_path):
    g = _Group(tmp_path / "g", {})
    try:
        with pytest.raises(errors.ResolverUnavailableError, match="'longest' in "
                                                                  r"\[cluster.resolvers\]"):
            g.commit(T + 100, b"value")
        assert g.value() is None
    finally:
        g.close()


# ----------------------------------------------------------------------- a cluster

async def test_regions_converge_on_what_the_application_resolver_keeps():
    regions = ("us-east", "eu-west")
    async with open_local_cluster(regions, 1, seed=31, resolvers={"longest": longest},
                                  wan_latency_ms={regions: 10}) as cluster:
        async with cluster.connect("us-east") as a, cluster.connect("eu-west") as b:
            with trio.fail_after(60):
                with pytest.raises(errors.InvalidArgumentError, match="cluster.resolvers"):
                    await a.create_keyspace("x", mode="regional", resolver="app:nope")
                await a.create_keyspace("notes", mode="regional", resolver="app:longest")
                with pytest.raises(errors.InvalidArgumentError, match="use put"):
                    async with a.transaction() as tx:
                        await tx.merge("notes", b"k", b"x")
                async with a.transaction() as tx:
                    await tx.put("notes", b"k", b"written in us-east")
                    # Read your writes: the value written (the resolver runs at commit).
                    assert await tx.get("notes", b"k") == b"written in us-east"
                await _converged(cluster, (a, b), "notes", [b"k"])
                # Newer and shorter, in the other region: kept by neither.
                async with b.transaction() as tx:
                    await tx.put("notes", b"k", b"eu")
                    await tx.put("notes", b"j", b"only eu")
                final = await _converged(cluster, (a, b), "notes", [b"k", b"j"])
                assert final == {b"k": b"written in us-east", b"j": b"only eu"}
