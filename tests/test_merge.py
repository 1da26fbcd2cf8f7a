"""The resolvers of regional keyspaces (engine/merge.py, ARCH §6): every built-in converges
whatever the arrival order and duplicates, each keeps its documented semantics, cells survive
encoding and refuse corrupt bytes, and the convergence test catches broken application
resolvers. Pure code: no trio, no file system."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CorruptStateError, InvalidArgumentError
from engine.merge import (
    MERGE,
    PUT,
    RESOLVER_NAMES,
    AddWinsSet,
    ApplicationResolver,
    Cell,
    Conflict,
    CounterAdd,
    LastWriterWins,
    MaxValue,
    RemoteWrite,
    Version,
    apply_writes,
    check_convergence,
    decode_cell,
    decode_int,
    decode_set,
    encode_cell,
    encode_int,
    encode_set_add,
    encode_set_remove,
    hypothesis_check_convergence,
    resolver_for,
    writes_strategy,
)

K = b"k"
US, EU, AP = "us-east", "eu-west", "ap-south"


def put(value, ts, origin, prev=None):
    return RemoteWrite(K, value, ts, origin, PUT, prev)


def incr(delta, ts, origin):
    return RemoteWrite(K, encode_int(delta), ts, origin, MERGE)


def maxw(value, ts, origin):
    return RemoteWrite(K, encode_int(value), ts, origin, MERGE)


def add(elem, ts, origin):
    return RemoteWrite(K, encode_set_add(elem), ts, origin, MERGE)


def remove(elem, tags, ts, origin):
    return RemoteWrite(K, encode_set_remove(elem, tags), ts, origin, MERGE)


def fold(resolver, writes):
    cell, _ = apply_writes(resolver, writes)
    return cell


def read(resolver, writes):
    return resolver.value_of(fold(resolver, writes))


# --------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("name", RESOLVER_NAMES)
def test_builtin_converges_in_any_order_with_duplicates(name):
    """Hypothesis draws write sets (ties on ts across origins, prev links, set removes that
    list some observed tags); each is applied in pairs, reorderings and with duplicates."""
    hypothesis_check_convergence(resolver_for(name), max_examples=100, orders=20)


@pytest.mark.parametrize("resolver", [CounterAdd(), AddWinsSet()], ids=lambda r: r.name)
@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_compaction_keeps_reads_and_convergence(resolver, data):
    """Compacting at the per-origin watermarks reads the same, gives one state whatever the
    order, and keeps treating re-deliveries at or below the watermarks as duplicates."""
    writes = data.draw(writes_strategy(resolver))
    order = data.draw(st.permutations(writes))
    stable = {}
    for w in writes:
        stable[w.origin] = max(stable.get(w.origin, 0), w.ts)
    a, b = fold(resolver, writes), fold(resolver, order)
    if a is None:
        return
    ca, cb = resolver.compact(a, stable), resolver.compact(b, stable)
    assert encode_cell(ca) == encode_cell(cb)
    assert resolver.value_of(ca) == resolver.value_of(a)
    again, _ = apply_writes(resolver, order, ca)
    assert encode_cell(again) == encode_cell(ca)
    assert decode_cell(encode_cell(ca)) == ca


# ------------------------------------------------------------------------------------ lww


def test_lww_newer_write_wins_in_both_orders():
    lww = LastWriterWins()
    old, new = put(b"old", 5, US), put(b"new", 9, EU)
    assert read(lww, [old, new]) == read(lww, [new, old]) == b"new"
    assert fold(lww, [new, old]).version == (9, EU)


def test_lww_equal_timestamps_are_ordered_by_origin():
    lww = LastWriterWins()
    a, b = put(b"from-us", 7, US), put(b"from-eu", 7, EU)
    assert US > EU
    assert read(lww, [a, b]) == read(lww, [b, a]) == b"from-us"


def test_lww_tombstone_is_not_resurrected_by_an_older_write():
    lww = LastWriterWins()
    delete, older = put(None, 10, EU), put(b"older", 5, US)
    cell = fold(lww, [delete, older])
    assert lww.value_of(cell) is None
    assert cell.version == (10, EU) and cell.state[0] is None
    # The tombstone's version survives encoding, so it still wins after a round trip.
    cell, _ = lww.merge(decode_cell(encode_cell(cell)), older)
    assert lww.value_of(cell) is None
    assert read(lww, [delete, put(b"newer", 11, US)]) == b"newer"


def test_lww_older_remote_write_never_overwrites_a_newer_value():
    lww = LastWriterWins()
    cell = fold(lww, [put(b"v2", 20, US)])
    after, conflict = lww.merge(cell, put(b"v1", 15, EU))
    assert after is cell
    assert conflict == Conflict(K, (20, US), (15, EU), b"v1", "lww")


def test_lww_conflict_names_the_overwritten_local_value():
    lww = LastWriterWins()
    cell = fold(lww, [put(b"local", 5, US)])
    cell, conflict = lww.merge(cell, put(b"remote", 6, EU))
    assert lww.value_of(cell) == b"remote"
    assert conflict == Conflict(K, (6, EU), (5, US), b"local", "lww")


def test_lww_causal_overwrites_and_duplicates_are_not_conflicts():
    lww = LastWriterWins()
    first = put(b"a", 5, US)
    cell = fold(lww, [first])
    assert lww.merge(cell, first) == (cell, None)                   # duplicate
    assert lww.merge(cell, put(b"b", 6, US))[1] is None               # same origin
    assert lww.merge(cell, put(b"b", 6, EU, prev=(5, US)))[1] is None  # saw it
    # The overwriter saw a later write of the same origin: also causal.
    assert lww.merge(cell, put(b"b", 9, EU, prev=(7, US)))[1] is None
    # It saw something else: concurrent.
    assert lww.merge(cell, put(b"b", 9, EU, prev=(4, AP)))[1] is not None
    # The same rules when the arriving write is the older one (the cell's prev decides).
    newer = fold(lww, [put(b"n", 9, EU, prev=(5, US))])
    assert lww.merge(newer, first) == (newer, None)
    assert lww.merge(newer, put(b"x", 6, AP))[1] == Conflict(K, (9, EU), (6, AP), b"x", "lww")


def test_lww_refuses_merge_writes_and_other_cells():
    lww = LastWriterWins()
    with pytest.raises(InvalidArgumentError, match="takes 'put' writes"):
        lww.merge(None, incr(1, 1, US))
    with pytest.raises(InvalidArgumentError, match="cannot use a cell of kind 'counter'"):
        lww.merge(fold(CounterAdd(), [incr(1, 1, US)]), put(b"x", 2, US))


# ---------------------------------------------------------------------------------- counter


def test_counter_sums_increments_and_ignores_duplicates():
    counter = CounterAdd()
    writes = [incr(5, 1, US), incr(-2, 2, EU), incr(10, 2, US), incr(1, 3, AP)]
    expected = b"14"
    assert read(counter, writes) == expected
    doubled = writes + writes[::-1] + [writes[0]] * 3
    random.Random(1).shuffle(doubled)
    assert read(counter, doubled) == expected
    assert decode_int(read(counter, doubled)) == 14
    assert counter.value_of(None) is None
    assert read(counter, [incr(3, 1, US), incr(-3, 2, US)]) == b"0"


def test_counter_keeps_each_origins_contributions_apart():
    cell = fold(CounterAdd(), [incr(1, 7, US), incr(2, 7, EU)])   # same ts, two origins
    assert cell.state == ((EU, 0, 0, ((7, 2),)), (US, 0, 0, ((7, 1),)))
    assert CounterAdd().value_of(cell) == b"3"


def test_counter_compaction_folds_below_the_watermark():
    counter = CounterAdd()
    cell = fold(counter, [incr(1, 1, US), incr(2, 5, US), incr(4, 3, EU)])
    compacted = counter.compact(cell, {US: 4, EU: 2})
    assert compacted.state == ((EU, 2, 0, ((3, 4),)), (US, 4, 1, ((5, 2),)))
    assert counter.value_of(compacted) == b"7"
    assert counter.merge(compacted, incr(1, 1, US))[0] is compacted  # re-delivery
    assert counter.value_of(counter.merge(compacted, incr(1, 6, US))[0]) == b"8"


def test_counter_sums_beyond_64_bits_round_trip():
    counter = CounterAdd()
    big = 2**63 - 1
    cell = fold(counter, [incr(big, ts, US) for ts in range(1, 5)])
    cell = counter.compact(cell, {US: 4})
    assert cell.state[0][2] == 4 * big
    assert decode_cell(encode_cell(cell)) == cell
    assert decode_int(counter.value_of(cell)) == 4 * big


@pytest.mark.parametrize("payload", [b"1.5", b"01", b"-0", b"+1", b" 1", b"", b"x",
                                     b"9223372036854775808", None])
def test_counter_refuses_malformed_increments(payload):
    with pytest.raises(InvalidArgumentError):
        CounterAdd().merge(None, RemoteWrite(K, payload, 1, US, MERGE))


def test_int_payload_helpers():
    assert encode_int(-42) == b"-42"
    with pytest.raises(InvalidArgumentError):
        encode_int(2**63)
    with pytest.raises(InvalidArgumentError):
        encode_int(True)
    with pytest.raises(InvalidArgumentError):
        decode_int(b"1e3")
    # Past what a counter can hold: refused as such, not a ValueError from int() (past 4,300
    # digits Python refuses to convert).
    assert decode_int(str(-(2**127)).encode()) == -(2**127)
    with pytest.raises(InvalidArgumentError, match="counter or max holds"):
        decode_int(b"1" * 5000)


# -------------------------------------------------------------------------------------- max


def test_max_keeps_the_greatest_value():
    mx = MaxValue()
    writes = [maxw(3, 1, US), maxw(-7, 2, EU), maxw(12, 3, AP), maxw(5, 4, US)]
    for order in (writes, writes[::-1], writes + writes):
        assert read(mx, order) == b"12"
    assert fold(mx, writes).version == (4, US)     # the cell's version still advances


def test_max_ties_are_held_by_the_greater_version():
    mx = MaxValue()
    a, b = maxw(9, 3, EU), maxw(9, 3, US)
    assert fold(mx, [a, b]) == fold(mx, [b, a])
    assert fold(mx, [a, b]).state == (9, 3, US)


def test_merge_types_cannot_delete():
    for resolver in (CounterAdd(), MaxValue(), AddWinsSet()):
        with pytest.raises(InvalidArgumentError):
            resolver.merge(None, RemoteWrite(K, None, 1, US, MERGE))


# -------------------------------------------------------------------------------------- set


def test_set_concurrent_add_and_remove_keeps_the_element():
    aws = AddWinsSet()
    first = add(b"x", 1, US)
    # eu-west removes the x it observed (tag 1/us-east) while ap-south adds x again.
    rm = remove(b"x", [(1, US)], 5, EU)
    again = add(b"x", 4, AP)
    for order in ([first, rm, again], [again, rm, first], [rm, again, first]):
        assert decode_set(read(aws, order)) == [b"x"]


def test_set_remove_after_observed_add_removes_it_in_any_order():
    aws = AddWinsSet()
    a = add(b"x", 1, US)
    cell = fold(aws, [a])
    rm = remove(b"x", AddWinsSet.observed_tags(cell, b"x"), 2, EU)
    assert AddWinsSet.observed_tags(cell, b"x") == ((1, US),)
    for order in ([a, rm], [rm, a], [a, rm, a], [rm, a, rm, a]):
        assert decode_set(read(aws, order)) == []


def test_set_holds_several_elements_sorted():
    aws = AddWinsSet()
    cell = fold(aws, [add(b"b", 1, US), add(b"a", 2, EU), add(b"c", 3, AP),
                      remove(b"c", [(3, AP)], 4, AP), remove(b"a", [(1, US)], 5, US)])
    assert decode_set(aws.value_of(cell)) == [b"a", b"b"]
    assert AddWinsSet.observed_tags(cell, b"zzz") == ()
    assert AddWinsSet.observed_tags(None, b"a") == ()


def test_set_compaction_drops_tombstones_but_keeps_re_deliveries_out():
    aws = AddWinsSet()
    a, rm = add(b"x", 1, US), remove(b"x", [(1, US)], 2, EU)
    cell = fold(aws, [a, rm])
    assert cell.state[1] == ((b"x", ((1, US),)),)
    compacted = aws.compact(cell, {US: 1, EU: 2})
    assert compacted.state == ((), (), ((EU, 2), (US, 1)))
    assert aws.merge(compacted, a)[0] == compacted


def test_set_re_adding_an_element_keeps_the_cell_bounded():
    """An element added again and again (a membership refreshed by each region) holds one
    tag per origin: each region's add supersedes its own earlier ones. Else the cell grows
    by a tag per add, is rewritten whole at each write, and once over the store's value
    limit every write to the key is refused (and shipped ones are dropped, diverging)."""
    aws = AddWinsSet()
    cell = fold(aws, [add(b"x", 1, US), add(b"x", 2, EU)])
    for ts in range(3, 2003):
        cell, _ = aws.merge(cell, add(b"x", ts, (US, EU)[ts % 2]))
        cell = aws.compact(cell, {(US, EU)[ts % 2]: ts - 1})
    assert decode_set(aws.value_of(cell)) == [b"x"]
    assert AddWinsSet.observed_tags(cell, b"x") == ((2001, EU), (2002, US))
    assert len(encode_cell(cell)) < 100  # two tags and two floors (was 12 bytes per add)
    # A remove that observed the latest tags removes the element; one that observed only
    # older ones does not (the newer adds are concurrent with it: add wins), in any order.
    late = [add(b"x", 1, US), add(b"x", 3, US), add(b"x", 2, EU)]
    observed = remove(b"x", [(3, US), (2, EU)], 4, AP)
    stale = remove(b"x", [(1, US)], 5, AP)
    for order in (late + [observed], [observed] + late, [late[1], observed, late[0], late[2]]):
        assert decode_set(read(aws, order)) == []
    for order in (late + [stale], [stale] + late, [late[0], stale, late[1], late[2]]):
        assert decode_set(read(aws, order)) == [b"x"]


def test_set_refuses_a_remove_naming_a_tag_not_older_than_itself():
    # Such a tag became a tombstone that superseded the origin's later adds of the element:
    # us-east removed x naming a tag from its future, added x again, and x stayed absent,
    # in every region.
    aws = AddWinsSet()
    for tag in [(9, US), (5, US), (5, "zz-last")]:
        with pytest.raises(InvalidArgumentError, match="not older than the remove"):
            aws.merge(fold(aws, [add(b"x", 1, US)]), remove(b"x", [(1, US), tag], 5, US))
    # Tags older than the remove are taken, a concurrent add still winning.
    cell = fold(aws, [add(b"x", 1, US), remove(b"x", [(1, US), (5, AP)], 5, US),
                      add(b"x", 7, US)])
    assert decode_set(aws.value_of(cell)) == [b"x"]


@pytest.mark.parametrize("payload", [
    msgpack.packb(["add", "text, not bin"]),
    msgpack.packb(["add"]),
    msgpack.packb(["remove", b"x"], use_bin_type=True),
    msgpack.packb(["remove", b"x", [[0, US]]], use_bin_type=True),
    msgpack.packb(["clear"]),
    b"\xc1",
])
def test_set_refuses_malformed_payloads(payload):
    with pytest.raises(InvalidArgumentError):
        AddWinsSet().merge(None, RemoteWrite(K, payload, 1, US, MERGE))


def test_set_payload_helpers():
    assert msgpack.unpackb(encode_set_add(b"e")) == ["add", b"e"]
    assert msgpack.unpackb(encode_set_remove(b"e", [(3, EU), (1, US), (3, EU)]), raw=False) \
        == ["remove", b"e", [[1, US], [3, EU]]]
    with pytest.raises(InvalidArgumentError):
        encode_set_add("e")
    with pytest.raises(InvalidArgumentError):
        decode_set(b"\x91\xa1e")   # an array of str, not bin


# ------------------------------------------------------------------------------ cell encoding


@pytest.mark.parametrize("name", RESOLVER_NAMES)
@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_cells_round_trip(name, data):
    resolver = resolver_for(name)
    writes = data.draw(writes_strategy(resolver))
    cell = fold(resolver, writes)
    if cell is not None:
        assert decode_cell(encode_cell(cell)) == cell
        assert encode_cell(decode_cell(encode_cell(cell))) == encode_cell(cell)


def test_application_cells_round_trip():
    app = ApplicationResolver(_greater, "greater")
    cell = fold(app, [put(b"a", 1, US), put(None, 2, EU, prev=(1, US))])
    assert cell.kind == "app:greater"
    assert decode_cell(encode_cell(cell)) == cell


def _pack(*parts):
    return msgpack.packb(list(parts), use_bin_type=True)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",                                            # never used by msgpack
    encode_cell(Cell("lww", 5, US, (b"v", None)))[:-1],  # truncated
    encode_cell(Cell("lww", 5, US, (b"v", None))) + b"\x00",  # trailing byte
    _pack(2, "lww", 5, US, [b"v", None]),              # unknown format
    _pack(1, "lww", 0, US, [b"v", None]),              # ts out of range
    _pack(1, "lww", 5, "", [b"v", None]),              # no origin
    _pack(1, "lww", 5, US, ["v", None]),               # str value
    _pack(1, "lww", 5, US, [b"v", [1]]),               # bad prev
    _pack(1, "nope", 5, US, [b"v", None]),             # unknown kind
    _pack(1, "app:Bad Name", 5, US, [b"v", None]),
    _pack(1, "app:mine", 5, US, [b"v", None]),                     # no holder
    _pack(1, "app:mine", 5, US, [b"v", None, [6, US]]),            # holder above the cell
    _pack(1, "counter", 5, US, [[US, 0, 0, [[2, 1], [1, 1]]]]),      # unsorted
    _pack(1, "counter", 5, US, [[US, 0, 0, []], [EU, 0, 0, []]]),    # unsorted origins
    _pack(1, "counter", 5, US, [[US, 3, 0, [[2, 1]]]]),              # below base_ts
    _pack(1, "counter", 5, US, [[US, 0, "12", []]]),                 # sum as str in range
    _pack(1, "max", 5, US, [1, 9, US]),                              # above the cell
    _pack(1, "max", 5, US, [True, 1, US]),
    _pack(1, "add_wins_set", 5, US, [[[b"x", []]], [], []]),         # no tags
    _pack(1, "add_wins_set", 5, US, [[[b"x", [[1, US]]]], [[b"x", 1, US]], []]),
    _pack(1, "add_wins_set", 5, US, [[[b"b", [[1, US]]], [b"a", [[1, US]]]], [], []]),
    msgpack.packb([1, "lww", 5, US, {"value": b"v"}], use_bin_type=True),
    # A valid cell in a non-canonical encoding (ts as uint64 instead of a fixint).
    b"\x95\x01\xa3lww\xcf" + (5).to_bytes(8, "big") + b"\xa7us-east\x92\xc4\x01v\xc0",
])
def test_malformed_cells_are_corrupt(data):
    with pytest.raises(CorruptStateError) as info:
        decode_cell(data)
    assert isinstance(info.value, OSError)


def test_counter_cell_with_a_sum_no_origin_can_reach_is_corrupt():
    # An origin folds at most one int64 increment per timestamp: its sum stays below 2**127.
    # A longer string must be refused before int(), which raises ValueError past 4300 digits.
    for digits in (41, 5000):
        with pytest.raises(CorruptStateError):
            decode_cell(_pack(1, "counter", 5, US, [[US, 0, "9" * digits, []]]))
    cell = decode_cell(_pack(1, "counter", 5, US, [[US, 0, str(-(2**127) + 1), []]]))
    assert cell.state[0][2] == -(2**127) + 1


def test_encode_and_decode_refuse_wrong_types():
    with pytest.raises(InvalidArgumentError):
        decode_cell("not bytes")
    with pytest.raises(InvalidArgumentError):
        encode_cell((b"v", 5, US))
    with pytest.raises(InvalidArgumentError):
        encode_cell(Cell("lww", 5, US, ("str value", None)))
    with pytest.raises(InvalidArgumentError):
        encode_cell(Cell("counter", 0, US, ()))


def test_remote_write_validation():
    with pytest.raises(InvalidArgumentError):
        RemoteWrite("k", b"v", 1, US)
    with pytest.raises(InvalidArgumentError):
        RemoteWrite(K, "v", 1, US)
    with pytest.raises(InvalidArgumentError):
        RemoteWrite(K, b"v", 0, US)
    with pytest.raises(InvalidArgumentError):
        RemoteWrite(K, b"v", 1, "")
    with pytest.raises(InvalidArgumentError):
        RemoteWrite(K, b"v", 1, US, "append")
    with pytest.raises(InvalidArgumentError):
        RemoteWrite(K, b"v", 1, US, PUT, prev=(1,))
    assert RemoteWrite(K, b"v", 2, US, PUT, prev=[1, EU]).prev == (1, EU)


# ---------------------------------------------------------------------------- resolver_for


def test_resolver_for_builtins():
    assert isinstance(resolver_for("lww"), LastWriterWins)
    assert isinstance(resolver_for("counter"), CounterAdd)
    assert isinstance(resolver_for("max"), MaxValue)
    assert isinstance(resolver_for("add_wins_set"), AddWinsSet)
    assert [resolver_for(n).name for n in RESOLVER_NAMES] == list(RESOLVER_NAMES)


@pytest.mark.parametrize("spec", ["LWW", "add-wins-set", "", None, 3])
def test_resolver_for_unknown_names_lists_the_valid_ones(spec):
    with pytest.raises(InvalidArgumentError) as info:
        resolver_for(spec)
    for name in RESOLVER_NAMES:
        assert name in str(info.value)


# ----------------------------------------------------------------- application resolvers


def _greater(local: Version, remote: Version) -> Version:
    """A correct resolver: the greater (ts, origin) wins (last writer wins)."""
    return max(local, remote, key=lambda v: (v.ts, v.origin))


def _union(local: Version, remote: Version) -> Version:
    """A correct merge: the union of the bytes of both values, sorted."""
    merged = bytes(sorted(set(local.value or b"") | set(remote.value or b"")))
    return Version(merged, max(local.ts, remote.ts), local.origin)


def _keep_local(local: Version, remote: Version) -> Version:
    return local


def _keep_remote(local: Version, remote: Version) -> Version:
    return remote


def _concatenate(local: Version, remote: Version) -> Version:
    return Version((local.value or b"") + (remote.value or b""), remote.ts, remote.origin)


def _greater_ignoring_case(local: Version, remote: Version) -> Version:
    """Keeps the value greater when case is ignored, but on a tie keeps the local one instead
    of breaking it by (ts, origin)."""
    return remote if (remote.value or b"").lower() > (local.value or b"").lower() else local


WRITES = [put(b"b", 3, US), put(b"a", 5, EU), put(b"c", 5, AP, prev=(3, US)),
          put(b"ab", 8, US)]


def test_check_convergence_passes_correct_application_resolvers():
    greater = ApplicationResolver(_greater, "greater")
    assert check_convergence(greater, WRITES, orders=50, seed=3) == fold(greater, WRITES)
    hypothesis_check_convergence(greater, max_examples=30, orders=10)
    union = ApplicationResolver(_union, "union")
    assert union.value_of(check_convergence(union, WRITES, orders=50)) == b"abc"
    # Its values must be canonical (sorted, no repeats): the first write is stored as it is,
    # so union(v, v) must give v back exactly.
    canonical = st.sets(st.integers(0, 4)).map(lambda s: bytes(sorted(s)))
    hypothesis_check_convergence(union, canonical, max_examples=30, orders=10)


def test_check_convergence_catches_a_non_canonical_union():
    union = ApplicationResolver(_union, "union")
    with pytest.raises(AssertionError, match="a duplicate changes the state"):
        check_convergence(union, [put(b"ba", 1, US)])


@pytest.mark.parametrize("fn, what", [
    (_keep_local, "either order"),
    (_keep_remote, "either order"),
    (_concatenate, "a duplicate changes the state"),
], ids=lambda x: getattr(x, "__name__", x))
def test_check_convergence_catches_broken_application_resolvers(fn, what):
    resolver = ApplicationResolver(fn, fn.__name__.strip("_").replace("_", "-"))
    with pytest.raises(AssertionError) as info:
        check_convergence(resolver, WRITES, orders=50)
    message = str(info.value)
    assert what in message
    for part in ("order A:", "order B:", "state A:", "state B:"):
        assert part in message
    # The explanation is shrunk to the writes that matter: here two, or one delivered twice.
    assert message.count("\n  w") <= 2


def test_check_convergence_catches_a_non_associative_resolver():
    """Rock-paper-scissors is commutative and idempotent, so every pair converges, but not
    associative: only three writes in different orders show it."""
    beats = {(b"R", b"S"), (b"S", b"P"), (b"P", b"R")}

    def rock_paper_scissors(local: Version, remote: Version) -> Version:
        if local.value == remote.value:
            return max(local, remote, key=lambda v: (v.ts, v.origin))
        return local if (local.value, remote.value) in beats else remote

    resolver = ApplicationResolver(rock_paper_scissors, "rps")
    writes = [put(b"R", 1, US), put(b"P", 2, EU), put(b"S", 3, AP)]
    with pytest.raises(AssertionError, match="a reordering with duplicates") as info:
        check_convergence(resolver, writes, orders=50, seed=0)
    assert "order A: w0, w1, w2" in str(info.value)


def test_check_convergence_catches_a_missing_tie_break():
    resolver = ApplicationResolver(_greater_ignoring_case, "no-tiebreak")
    writes = [put(b"abc", 1, US), put(b"ABC", 2, EU)]
    with pytest.raises(AssertionError, match="either order"):
        check_convergence(resolver, writes)


def test_hypothesis_check_convergence_catches_a_broken_resolver():
    with pytest.raises(AssertionError, match="does not converge"):
        hypothesis_check_convergence(ApplicationResolver(_keep_local, "keep-local"),
                                     max_examples=50)


def test_check_convergence_validates_its_input():
    lww = LastWriterWins()
    assert check_convergence(lww, []) is None
    with pytest.raises(InvalidArgumentError, match="share a"):
        check_convergence(lww, [put(b"a", 1, US), put(b"b", 1, US)])
    with pytest.raises(InvalidArgumentError, match="one key"):
        check_convergence(lww, [put(b"a", 1, US), RemoteWrite(b"other", b"b", 2, US)])


def test_application_resolver_reports_the_discarded_concurrent_write():
    app = ApplicationResolver(_greater, "greater")
    cell = fold(app, [put(b"local", 5, US)])
    cell, conflict = app.merge(cell, put(b"remote", 4, EU))
    assert app.value_of(cell) == b"local"
    assert conflict == Conflict(K, (5, US), (4, EU), b"remote", "greater")
    union = ApplicationResolver(_union, "union")
    merged, conflict = union.merge(fold(union, [put(b"a", 5, US)]), put(b"b", 4, EU))
    assert union.value_of(merged) == b"ab" and conflict is None
    assert merged.version == (5, US)


def _smallest(local: Version, remote: Version) -> Version:
    """A correct resolver: the smaller value wins, a tie by the greater (ts, origin)."""
    return min(local, remote, key=lambda v: (v.value or b"", -v.ts, [-ord(c) for c in v.origin]))


def _longest(local: Version, remote: Version) -> Version:
    """A correct resolver: the longer value wins, a tie by the greater (ts, origin)."""
    return max(local, remote, key=lambda v: (len(v.value or b""), v.ts, v.origin))


def test_application_resolver_logs_the_write_whose_value_lost():
    app = ApplicationResolver(_smallest, "smallest")
    a, b, c = put(b"1", 1, US), put(b"5", 2, EU), put(b"0", 3, AP)
    cell, conflicts = apply_writes(app, [a, b, c])
    assert app.value_of(cell) == b"0" and cell.version == (3, AP)
    # b lost to a, then a (whose value the cell held under b's newer version) lost to c.
    # Before, the second record named b again, with a's value: a's loss was never logged,
    # and in the group's log (keyed by the loser) it overwrote b's record.
    assert conflicts == [Conflict(K, (1, US), (2, EU), b"5", "smallest"),
                         Conflict(K, (3, AP), (1, US), b"1", "smallest")]
    # The write that kept its value wins over a later one under its own version, not b's.
    cell, conflict = app.merge(fold(app, [a, b]), put(b"3", 4, AP, prev=(2, EU)))
    assert app.value_of(cell) == b"1"
    assert conflict == Conflict(K, (1, US), (4, AP), b"3", "smallest")


def test_application_resolver_ties_are_broken_by_the_held_values_version():
    """Before, ``fn`` saw the held value under the cell's newest version, which may be that of
    a write whose value lost: a resolver breaking ties by (ts, origin), as it must, then
    depended on the arrival order."""
    app = ApplicationResolver(_longest, "longest")
    writes = [put(b"x", 1, US), put(b"y", 2, EU), put(b"", 3, AP)]
    assert read(app, [writes[0], writes[2], writes[1]]) == b"y"
    assert app.value_of(check_convergence(app, writes, orders=50)) == b"y"
    hypothesis_check_convergence(app, st.sampled_from([b"", b"x", b"y", b"zz"]),
                                 max_examples=50, orders=10)
    hypothesis_check_convergence(ApplicationResolver(_smallest, "smallest"),
                                 st.sampled_from([b"1", b"2", b"3"]), max_examples=50,
                                 orders=10)


def test_application_resolver_validation():
    with pytest.raises(InvalidArgumentError):
        ApplicationResolver("not callable", "x")
    with pytest.raises(InvalidArgumentError):
        ApplicationResolver(_greater, "Bad Name")
    bad = ApplicationResolver(lambda local, remote: b"raw bytes", "raw")
    cell = fold(bad, [put(b"a", 1, US)])
    with pytest.raises(InvalidArgumentError, match="not a Version"):
        bad.merge(cell, put(b"b", 2, EU))
    with pytest.raises(InvalidArgumentError, match="cannot use a cell of kind 'app:raw'"):
        ApplicationResolver(_greater, "other").merge(cell, put(b"b", 2, EU))


def test_lww_logs_every_write_its_final_winner_never_saw():
    """Three regions commit with prev set to their local version and exchange writes in random
    order with duplicates. Every write outside the final winner's causal history (what its
    origin had applied, transitively, when it committed) is in some region's conflict log
    (ARCH §6)."""
    unseen_total = 0
    for seed in range(30):
        unseen, logged = _exchange_lww_writes(seed)
        assert unseen <= logged, seed
        unseen_total += len(unseen)
    assert unseen_total > 30          # the runs do overwrite concurrently


def _exchange_lww_writes(seed):
    """(versions outside the final winner's causal history, versions logged as losers)."""
    rng = random.Random(seed)
    lww = LastWriterWins()
    regions = (US, EU, AP)
    cells = dict.fromkeys(regions)
    history = {r: frozenset() for r in regions}     # causal history of each region's state
    causal = {}                                       # write -> its causal history
    pending = {r: [] for r in regions}
    logged = set()
    clock = 0
    for step in range(40):
        region = rng.choice(regions)
        if rng.random() < 0.4 or not pending[region]:
            clock += rng.randint(0, 2)
            ts = max(clock, cells[region].ts + 1 if cells[region] else 1)
            w = put(bytes([step]), ts, region,
                    prev=cells[region].version if cells[region] else None)
            causal[w] = history[region] | {w}
            targets = [r for r in regions if r != region]
        else:
            w = pending[region].pop(rng.randrange(len(pending[region])))
            targets = [region] if rng.random() < 0.2 else []    # a duplicate, sometimes
        cells[region], conflict = lww.merge(cells[region], w)
        history[region] |= causal[w]
        if conflict is not None:
            logged.add(conflict.loser)
        for r in targets:
            pending[r].append(w)
    for region in regions:
        for w in pending[region]:
            cells[region], conflict = lww.merge(cells[region], w)
            if conflict is not None:
                logged.add(conflict.loser)
    assert len({encode_cell(c) for c in cells.values()}) == 1
    winner = next(w for w in causal if w.version == cells[US].version)
    unseen = {w.version for w in causal if w not in causal[winner]}
    return unseen, logged
