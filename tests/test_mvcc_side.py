"""Tests of the MVCC store's side table: unversioned records written atomically with the
versions (prepared intents, transaction records), read back, kept across reopen and carried by
snapshots."""

from __future__ import annotations

import threading

import lmdb
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import errors
from engine._native import crc32c
from engine.mvcc import (
    MAX_SIDE_KEY_SIZE,
    MAX_TS,
    MAX_VALUE_SIZE,
    MIN_MAP_SIZE,
    SNAPSHOT_FORMAT_VERSION,
    MVCCStore,
)

SMALL_MAP = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    yield s
    s.close()


def decoded(chunks: list[bytes]) -> list[dict]:
    return [msgpack.unpackb(raw, raw=False) for raw in chunks]


def encoded(chunks: list[dict]) -> list[bytes]:
    return [msgpack.packb(chunk, use_bin_type=True) for chunk in chunks]


def reseal(chunks: list[bytes]) -> list[bytes]:
    """The stream with its trailer's counts and checksum recomputed, as a faulty writer (not a
    faulty disk) would."""
    body = chunks[:-1]
    crc = 0
    counts = {"versions": 0, "side": 0}
    for raw in body:
        crc = crc32c(raw, crc)
        chunk = msgpack.unpackb(raw, raw=False)
        if chunk["kind"] == "data":
            counts[chunk["db"]] = counts.get(chunk["db"], 0) + len(chunk["pairs"]) // 2
    trailer = {"kind": "trailer", "chunks": len(body), "entries": counts["versions"],
               "side_entries": counts["side"], "crc32c": crc}
    return body + encoded([trailer])


def format1(chunks: list[bytes]) -> list[bytes]:
    """A snapshot of the same versions in format 1, as written before the side table existed:
    no side_entries fields, no side chunks."""
    header, *body = decoded(chunks[:-1])
    header["format"] = 1
    del header["side_entries"]
    out = encoded([header]) + [
        raw for raw, chunk in zip(chunks[1:-1], body) if chunk["db"] == "versions"
    ]
    crc = 0
    for raw in out:
        crc = crc32c(raw, crc)
    trailer = {"kind": "trailer", "chunks": len(out), "entries": header["entries"], "crc32c": crc}
    return out + encoded([trailer])


def side_all(store: MVCCStore) -> list[tuple[bytes, bytes]]:
    return store.side_scan()


def fill(store: MVCCStore, n_side: int = 200) -> None:
    """Versions and side entries over applied indexes 1..3."""
    store.apply([(b"k%03d" % i, b"v%d" % i) for i in range(50)], 10, 1,
                side=[(b"txn/%05d" % i, b"record-%d" % i * 5) for i in range(n_side)])
    store.apply([(b"k001", None)], 20, 2,
                side=[(b"txn/%05d" % i, None) for i in range(0, n_side, 7)])
    store.apply([], 30, 3, side=[(b"intent/\x00a", b"\x00\xff"), (b"intent/a", b"")])


# ------------------------------------------------------------------------------- writing


def test_new_store_has_an_empty_side_table(store):
    assert store.side_get(b"x") is None
    assert store.side_scan() == []
    assert store.stats().side_entries == 0


def test_side_writes_land_with_the_versions_in_one_apply(store):
    assert store.apply([(b"k", b"v")], 10, 1, app_state=b"s1",
                       side=[(b"intent/1", b"I1"), (b"txn/1", b"T1")])
    assert store.get(b"k", MAX_TS) == b"v"
    assert store.side_get(b"intent/1") == b"I1" and store.side_get(b"txn/1") == b"T1"
    assert store.applied_index == 1 and store.app_state == b"s1"
    assert store.apply_batch([([(b"a", b"1")], 20), ([(b"b", b"2")], 30)], 2,
                             side=[(b"intent/1", None), (b"txn/2", b"T2")])
    assert store.side_scan() == [(b"txn/1", b"T1"), (b"txn/2", b"T2")]
    assert store.get(b"b", MAX_TS) == b"2"


def test_side_changes_alone_advance_the_applied_index(store):
    assert store.apply_batch([], 1, side=[(b"txn/1", b"T")])
    assert store.applied_index == 1 and store.side_get(b"txn/1") == b"T"
    assert store.stats().entries == 0


def test_a_replayed_apply_writes_nothing(store):
    store.apply([(b"k", b"v")], 10, 5, side=[(b"txn/1", b"T1")])
    for index in (5, 4):
        assert store.apply([(b"k", b"replayed")], 20, index, app_state=b"x",
                           side=[(b"txn/1", b"replayed"), (b"txn/2", b"new")]) is False
        assert store.apply_batch([([(b"j", b"x")], 30)], index, side=[(b"txn/1", None)]) is False
    assert store.get(b"k", MAX_TS) == b"v" and store.get(b"j", MAX_TS) is None
    assert store.side_scan() == [(b"txn/1", b"T1")]
    assert store.applied_index == 5 and store.app_state == b""


def test_a_replayed_apply_does_not_read_its_side_changes(store):
    store.apply([], 10, 5)

    def side():
        raise AssertionError("read")
        yield

    assert store.apply([], 20, 5, side=side()) is False
    assert store.apply([], 20, 5, side=[b"not a pair"]) is False


def test_delete_overwrite_and_deleting_a_missing_key(store):
    store.apply([], 10, 1, side=[(b"a", b"1"), (b"b", b"2")])
    store.apply([], 20, 2, side=[(b"a", b"one"), (b"b", None), (b"missing", None)])
    assert store.side_scan() == [(b"a", b"one")]
    assert store.side_get(b"b") is None and store.side_get(b"missing") is None
    store.apply([], 30, 3, side=[(b"b", None)])  # deleting twice is fine too
    assert store.side_scan() == [(b"a", b"one")]


def test_side_keys_are_the_keys_of_side_scan(store):
    store.apply([], 10, 1, side=[(b"a", b"1"), (b"b", b"x" * 5000), (b"c", b"3"), (b"d", b"")])
    for start, end, limit in ((b"", None, None), (b"b", b"d", None), (b"a", None, 2),
                              (b"c", b"b", None), (b"", None, 0)):
        pairs = store.side_scan(start, end, limit=limit)
        assert store.side_keys(start, end, limit=limit) == [k for k, _ in pairs]
    with pytest.raises(errors.InvalidArgumentError, match="limit"):
        store.side_keys(limit=-1)


def test_side_scan_stops_after_the_pair_that_reaches_max_bytes(store):
    store.apply([], 10, 1, side=[(b"a", b"x" * 100), (b"b", b"y" * 100), (b"c", b"z")])
    assert store.side_scan(max_bytes=1) == [(b"a", b"x" * 100)]  # at least one pair
    assert store.side_scan(max_bytes=101) == [(b"a", b"x" * 100)]  # key and value count
    assert [k for k, _ in store.side_scan(max_bytes=102)] == [b"a", b"b"]
    assert [k for k, _ in store.side_scan(max_bytes=300)] == [b"a", b"b", b"c"]
    assert [k for k, _ in store.side_scan(limit=1, max_bytes=300)] == [b"a"]
    with pytest.raises(errors.InvalidArgumentError, match="max_bytes"):
        store.side_scan(max_bytes=0)


def test_within_one_call_the_last_pair_for_a_key_wins(store):
    store.apply([], 10, 1, side=[(b"a", b"1"), (b"a", b"2"), (b"b", b"x"), (b"b", None),
                                 (b"c", None), (b"c", b"3")])
    assert store.side_scan() == [(b"a", b"2"), (b"c", b"3")]
    # Across the groups of one batch as well: side changes are in one list, applied in order.
    store.apply_batch([([], 20), ([], 30)], 2, side=(p for p in [(b"a", None), (b"a", b"4")]))
    assert store.side_get(b"a") == b"4"


def test_empty_values_and_binary_keys_round_trip(store):
    longest = b"\x00" * MAX_SIDE_KEY_SIZE
    store.apply([], 10, 1, side=[(b"e", b""), (longest, b"L"), (b"\xff", b"\x00")])
    assert store.side_get(b"e") == b""  # an empty value is not a delete
    assert store.side_get(longest) == b"L"
    assert store.side_scan() == [(longest, b"L"), (b"e", b""), (b"\xff", b"\x00")]


def test_side_scan_continues_after_a_key_of_the_longest_size(store):
    """``last + b"\\x00"``, the continuation side_scan documents, after the longest key."""
    longest = b"\x00" * MAX_SIDE_KEY_SIZE
    store.apply([], 10, 1, side=[(b"\x00", b"a"), (longest, b"L"), (b"\x01", b"b")])
    assert store.side_scan(longest + b"\x00") == [(b"\x01", b"b")]
    assert store.side_scan(b"", longest + b"\x00") == [(b"\x00", b"a"), (longest, b"L")]
    assert store.side_keys(longest + b"\x00") == [b"\x01"]


def test_side_keys_do_not_mix_with_version_keys(store):
    store.apply([(b"same", b"version")], 10, 1, side=[(b"same", b"side")])
    assert store.get(b"same", MAX_TS) == b"version" and store.side_get(b"same") == b"side"
    assert store.scan(b"", None, MAX_TS) == [(b"same", b"version")]
    store.apply([(b"same", None)], 20, 2)
    assert store.side_get(b"same") == b"side"


def test_large_side_values_grow_the_map_and_survive(tmp_path):
    value = bytes(range(256)) * 400  # 100 KiB
    with MVCCStore(tmp_path / "s", map_size=MIN_MAP_SIZE) as s:
        for i in range(1, 21):
            s.apply([(b"k%02d" % i, b"v")], i, i, side=[(b"big/%02d" % i, value + b"%d" % i)])
        assert s.stats().map_resizes >= 1
        assert s.side_get(b"big/07") == value + b"7"
        s.apply([], 30, 30, side=[(b"max", b"m" * MAX_VALUE_SIZE)])
        assert s.side_get(b"max") == b"m" * MAX_VALUE_SIZE
        assert s.stats().side_entries == 21


# ------------------------------------------------------------------------------- bad input


BAD_SIDE = [
    ([(b"", b"v")], "side key 0"),
    ([(b"ok", b"v"), (b"k" * (MAX_SIDE_KEY_SIZE + 1), b"v")], "side key 1"),
    ([(b"ok", b"v"), (b"ok2", None), ("text", b"v")], "side key 2"),
    ([(bytearray(b"k"), b"v")], "side key 0"),
    ([(b"k", "text")], "side value 0"),
    ([(b"k", 7)], "side value 0"),
    ([(b"k", bytearray(b"v"))], "side value 0"),
    ([(b"k", b"v" * (MAX_VALUE_SIZE + 1))], "side value 0"),
    ([(b"k", b"v"), b"kv"], "side pair 1"),
    ([(b"k", b"v", b"extra")], "side pair 0"),
    ([None], "side pair 0"),
    (7, "side must be"),
    (None, "side must be"),
]


@pytest.mark.parametrize("side, what", BAD_SIDE)
def test_bad_side_input_is_rejected_and_nothing_is_written(store, side, what):
    store.apply([(b"k", b"old")], 10, 1, side=[(b"ok", b"old")])
    with pytest.raises(errors.InvalidArgumentError, match=what):
        store.apply([(b"k", b"new")], 20, 2, app_state=b"new", side=side)
    with pytest.raises(errors.InvalidArgumentError, match=what):
        store.apply_batch([([(b"k", b"new")], 20)], 2, side=side)
    assert store.applied_index == 1 and store.app_state == b""
    assert store.get(b"k", MAX_TS) == b"old"
    assert store.side_scan() == [(b"ok", b"old")]


def test_bad_writes_leave_the_side_table_alone(store):
    with pytest.raises(errors.InvalidArgumentError):
        store.apply([(b"", b"v")], 10, 1, side=[(b"txn/1", b"T")])
    with pytest.raises(errors.RecordTooLargeError):
        store.apply([(b"k", b"v" * (MAX_VALUE_SIZE + 1))], 10, 1, side=[(b"txn/1", b"T")])
    assert store.side_scan() == [] and store.applied_index == 0


def test_bad_read_arguments_are_rejected(store):
    for key in (b"", b"k" * (MAX_SIDE_KEY_SIZE + 1), "text", bytearray(b"k"), None):
        with pytest.raises(errors.InvalidArgumentError):
            store.side_get(key)
    for kwargs in ({"start": "a"}, {"end": 5}, {"start": b"k" * (MAX_SIDE_KEY_SIZE + 2)},
                   {"limit": -1}, {"limit": True}, {"limit": 1.5}):
        with pytest.raises(errors.InvalidArgumentError):
            store.side_scan(**kwargs)


def test_closed_store_raises_on_side_calls(tmp_path):
    s = MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    s.apply([], 10, 1, side=[(b"k", b"v")])
    s.close()
    for call in (
        lambda: s.side_get(b"k"),
        lambda: s.side_scan(),
        lambda: s.side_scan(b"b", b"a"),
        lambda: s.side_scan(limit=0),
        lambda: s.apply([], 20, 2, side=[(b"k", None)]),
        lambda: s.apply([], 20, 1, side=[(b"k", None)]),
    ):
        with pytest.raises(errors.StoreClosedError):
            call()


# ------------------------------------------------------------------------------- reading


def test_side_scan_bounds_order_and_limit(store):
    keys = [b"a", b"a\x00", b"a\x00\x00", b"ab", b"b", b"b\xff", b"c"]
    store.apply([], 10, 1, side=[(k, b"=" + k) for k in reversed(keys)])
    everything = [(k, b"=" + k) for k in keys]
    assert store.side_scan() == everything
    assert store.side_scan(b"", None) == everything
    assert store.side_scan(b"a\x00", b"b") == everything[1:4]
    assert store.side_scan(b"a\x00\x00\x00", b"b\xff") == everything[3:5]
    assert store.side_scan(b"b") == everything[4:]
    assert store.side_scan(end=b"a\x00") == everything[:1]
    assert store.side_scan(b"d") == []
    assert store.side_scan(b"b", b"b") == [] and store.side_scan(b"c", b"a") == []
    assert store.side_scan(limit=2) == everything[:2]
    assert store.side_scan(b"ab", limit=2) == everything[3:5]
    assert store.side_scan(b"ab", b"b", limit=5) == everything[3:4]
    assert store.side_scan(limit=0) == []
    assert store.side_scan(limit=100) == everything


def test_side_scan_pages_through_a_large_table(store):
    keys = [b"txn/%06d" % i for i in range(3000)]
    store.apply([], 10, 1, side=[(k, k[::-1]) for k in keys])
    got: list[bytes] = []
    start = b""
    while page := store.side_scan(start, limit=700):
        got.extend(k for k, _ in page)
        start = page[-1][0] + b"\x00"
    assert got == keys
    assert store.stats().side_entries == 3000


def test_stats_count_side_entries(store):
    store.apply([(b"k", b"v")], 10, 1, side=[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    st = store.stats()
    assert st.side_entries == 3 and st.entries == 1
    store.apply([(b"k", None)], 20, 2, side=[(b"a", None), (b"d", b"4"), (b"zz", None)])
    st = store.stats()
    assert st.side_entries == 3 and st.entries == 2


def test_gc_leaves_the_side_table_alone(store):
    store.apply([(b"k", b"v1")], 10, 1, side=[(b"txn/1", b"T")])
    store.apply([(b"k", None)], 20, 2)
    while store.gc(MAX_TS).resume is not None:
        pass
    assert store.stats().entries == 0
    assert store.side_scan() == [(b"txn/1", b"T")]


def test_side_reads_run_while_the_map_grows(tmp_path):
    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([], 1, 1, side=[(b"fixed", b"F")])
        stop = threading.Event()
        failures: list[BaseException] = []

        def reader():
            try:
                while not stop.is_set():
                    assert s.side_get(b"fixed") == b"F"
                    got = s.side_scan(b"t", b"u", limit=5)
                    assert all(v == b"x" * 200 for _, v in got)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for b in range(2, 50):
                s.apply([], b, b, side=[(b"t%03d-%04d" % (b, i), b"x" * 200) for i in range(200)])
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not failures, failures[0]
        assert s.stats().map_resizes >= 3


# ------------------------------------------------------------------------------- persistence


def test_side_entries_survive_reopen(tmp_path):
    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        fill(s)
        expected = side_all(s)
    assert len(expected) == 200 - len(range(0, 200, 7)) + 2
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        assert side_all(s) == expected
        assert s.side_get(b"intent/\x00a") == b"\x00\xff"
        assert s.applied_index == 3 and s.stats().side_entries == len(expected)


def test_a_store_without_a_side_table_gets_an_empty_one(tmp_path):
    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        s.apply([(b"k", b"v")], 10, 1)
    # Take the side table away, as a store written before it existed would be.
    env = lmdb.open(str(path), max_dbs=8, map_size=SMALL_MAP)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"side", txn=txn), delete=True)
        with env.begin() as txn:
            assert txn.get(b"side") is None  # the main database names the sub-databases
    finally:
        env.close()
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        assert s.get(b"k", MAX_TS) == b"v" and s.applied_index == 1
        assert s.side_scan() == []
        assert s.apply([], 20, 2, side=[(b"txn/1", b"T")])
        assert s.side_get(b"txn/1") == b"T"


# ------------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_snapshot_round_trip_carries_the_side_table(tmp_path, chunk_bytes):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        fill(a)
        b.apply([(b"stale", b"x")], 99, 99, side=[(b"stale", b"s"), (b"txn/00001", b"old")])
        with a.snapshot_chunks(chunk_bytes) as stream:
            chunks = list(stream)
            assert stream.side_entries == len(side_all(a)) and stream.entries == 51
        header, *_, trailer = decoded(chunks)
        assert header["format"] == SNAPSHOT_FORMAT_VERSION == 2
        assert header["side_entries"] == trailer["side_entries"] == len(side_all(a))
        dbs = [c["db"] for c in decoded(chunks) if c["kind"] == "data"]
        assert dbs == sorted(dbs, key=["versions", "side"].index)  # versions first
        if chunk_bytes == 4096:
            assert dbs.count("side") >= 2  # the side table is streamed in several chunks
        assert b.restore(chunks) == 3
        assert side_all(b) == side_all(a)
        assert b.side_get(b"stale") is None  # absent from the snapshot: gone
        assert b.side_get(b"txn/00001") == a.side_get(b"txn/00001")
        assert b.scan(b"", None, MAX_TS) == a.scan(b"", None, MAX_TS)
        assert b.stats().side_entries == a.stats().side_entries
        assert b.apply([], 40, 4, side=[(b"after", b"restore")])


def test_snapshot_without_side_entries_empties_the_side_table(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        a.apply([(b"k", b"v")], 10, 1)
        b.apply([], 10, 5, side=[(b"txn/1", b"T"), (b"txn/2", b"T")])
        chunks = list(a.snapshot_chunks())
        assert [c["kind"] for c in decoded(chunks)] == ["header", "data", "trailer"]
        assert decoded(chunks)[0]["side_entries"] == 0
        assert b.restore(chunks) == 1
        assert b.side_scan() == [] and b.get(b"k", MAX_TS) == b"v"


def test_snapshot_of_only_side_entries(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        a.apply([], 10, 1, side=[(b"txn/1", b"T")])
        chunks = list(a.snapshot_chunks())
        assert [(c["kind"], c.get("db")) for c in decoded(chunks)] == [
            ("header", None), ("data", "side"), ("trailer", None)]
        b.apply([(b"k", b"v")], 10, 1)
        assert b.restore(chunks) == 1
        assert b.side_scan() == [(b"txn/1", b"T")] and b.scan(b"", None, MAX_TS) == []


def test_snapshot_is_a_point_in_time_for_the_side_table(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        fill(a)
        expected = side_all(a)
        stream = a.snapshot_chunks(4096)
        first = next(stream)
        a.apply([], 40, 4, side=[(b"txn/00001", None), (b"txn/99999", b"later")])
        chunks = [first, *stream]
        b.restore(chunks)
        assert side_all(b) == expected


def test_previous_format_snapshot_still_restores(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        fill(a)
        a.gc(15)
        old = format1(list(a.snapshot_chunks(4096)))
        assert decoded(old)[0]["format"] == 1
        assert all(c.get("db") in (None, "versions") for c in decoded(old))
        b.apply([], 10, 7, side=[(b"txn/1", b"T")])
        assert b.restore(old) == 3
        assert b.side_scan() == []  # the old format has no side entries
        assert b.scan(b"", None, MAX_TS) == a.scan(b"", None, MAX_TS)
        assert b.gc_watermark == 15 and b.app_state == a.app_state


def _side_corruptions(chunks: list[bytes]) -> dict[str, list[bytes]]:
    parsed = decoded(chunks)
    side = [i for i, c in enumerate(parsed) if c.get("db") == "side"]
    versions = [i for i, c in enumerate(parsed) if c.get("db") == "versions"]
    assert len(side) >= 3 and versions
    mid = side[len(side) // 2]
    flipped = bytearray(chunks[mid])
    flipped[len(flipped) // 2] ^= 0x40

    def changed(i: int, **changes) -> list[bytes]:
        out = list(chunks)
        out[i] = encoded([{**parsed[i], **changes}])[0]
        return out

    pairs = parsed[side[0]]["pairs"]
    header = parsed[0]
    trailer = parsed[-1]
    return {
        "byte flipped in a side chunk": chunks[:mid] + [bytes(flipped)] + chunks[mid + 1:],
        "side chunk truncated": chunks[:mid] + [chunks[mid][:-50]] + chunks[mid + 1:],
        "side chunk missing": chunks[:mid] + chunks[mid + 1:],
        "stream truncated after a side chunk": chunks[: mid + 1],
        "trailer missing": chunks[:-1],
        "header side count wrong": reseal(changed(0, side_entries=header["side_entries"] + 1)),
        "header side count missing": reseal(
            encoded([{k: v for k, v in header.items() if k != "side_entries"}]) + chunks[1:]),
        "trailer side count wrong": changed(len(chunks) - 1,
                                            side_entries=trailer["side_entries"] - 1),
        "empty side key": reseal(changed(mid, pairs=[b"", b"v"])),
        "side key too long": reseal(changed(mid, pairs=[b"k" * (MAX_SIDE_KEY_SIZE + 1), b"v"])),
        "side value not bytes": reseal(changed(mid, pairs=[b"k", "text"])),
        "side pairs odd": reseal(changed(mid, pairs=pairs[:3])),
        "unknown table": reseal(changed(mid, db="intents")),
        "versions after side": reseal(  # the last versions chunk moved behind the side ones
            [c for i, c in enumerate(chunks[:-1]) if i != versions[-1]]
            + [chunks[versions[-1]], chunks[-1]]
        ),
        "side chunk in a format-1 stream": reseal(changed(0, format=1)),
        # Intact but out of key order: only the write transaction notices, and rolls back.
        "side entries out of order": reseal(changed(side[0], pairs=pairs[2:4] + pairs[0:2]
                                                    + pairs[4:])),
    }


def test_corrupt_snapshots_are_refused_and_leave_the_side_table_unchanged(tmp_path):
    with MVCCStore(tmp_path / "src", map_size=SMALL_MAP) as src:
        fill(src, n_side=400)
        chunks = list(src.snapshot_chunks(4096))
        expected = side_all(src)
    with MVCCStore(tmp_path / "dst", map_size=SMALL_MAP) as dst:
        dst.apply([(b"mine", b"m")], 7, 9, side=[(b"mine", b"M"), (b"txn/00001", b"mine too")])
        for name, bad in _side_corruptions(chunks).items():
            with pytest.raises(errors.CorruptStateError):
                dst.restore(bad)
            assert dst.side_scan() == [(b"mine", b"M"), (b"txn/00001", b"mine too")], name
            assert dst.get(b"mine", MAX_TS) == b"m" and dst.applied_index == 9, name
        assert dst.restore(chunks) == 3  # and the good stream still restores
        assert side_all(dst) == expected


def test_out_of_order_side_entries_fail_in_the_write_transaction(tmp_path):
    with MVCCStore(tmp_path / "src", map_size=SMALL_MAP) as src:
        fill(src, n_side=400)
        chunks = list(src.snapshot_chunks(4096))
    bad = _side_corruptions(chunks)["side entries out of order"]
    with MVCCStore(tmp_path / "dst", map_size=SMALL_MAP) as dst:
        with pytest.raises(errors.CorruptStateError, match="side-table entries .* key order"):
            dst.restore(bad)


# ------------------------------------------------------------------------------- the model


OPS = st.lists(
    st.tuples(
        st.sampled_from([b"a", b"a\x00", b"b", b"\x00", b"\xff" * 3, b"txn/1"]),
        st.one_of(st.none(), st.binary(max_size=20)),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(OPS, max_size=12))
def test_side_table_matches_a_dict(tmp_path_factory, calls):
    path = tmp_path_factory.mktemp("model")
    model: dict[bytes, bytes] = {}
    with MVCCStore(path / "s", map_size=SMALL_MAP) as s, \
            MVCCStore(path / "copy", map_size=SMALL_MAP) as copy:
        for index, pairs in enumerate(calls, start=1):
            s.apply([], index, index, side=pairs)
            for key, value in pairs:
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
            assert s.side_scan() == sorted(model.items())
        for key in (b"a", b"b", b"zz"):
            assert s.side_get(key) == model.get(key)
        assert s.side_scan(b"a", b"b") == sorted(kv for kv in model.items() if b"a" <= kv[0] < b"b")
        assert s.stats().side_entries == len(model)
        copy.apply([], 1, 1, side=[(b"stale", b"x")])
        copy.restore(s.snapshot_chunks(4096))
        assert copy.side_scan() == sorted(model.items())
