"""Tests of the MVCC store (ARCH §2.3): one named test per behaviour and failure mode, and a
hypothesis state machine that checks the store against a dict-of-versions model."""

from __future__ import annotations

import errno
import re

import shutil
import struct
import tempfile
import threading

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine import errors
from engine._native import crc32c
from engine.mvcc import (
    MAX_KEY_SIZE,
    MAX_TS,
    MAX_VALUE_SIZE,
    MIN_MAP_SIZE,
    GCResult,
    MVCCStats,
    MVCCStore,
)

SMALL_MAP = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    yield s
    s.close()


def dump(store: MVCCStore) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    """Everything a store holds: applied index, GC watermark and the raw version entries."""
    pairs: list[tuple[bytes, bytes]] = []
    with store.snapshot_chunks(4096) as stream:
        for raw in stream:
            chunk = msgpack.unpackb(raw, raw=False)
            if chunk["kind"] == "data":
                flat = chunk["pairs"]
                pairs.extend(zip(flat[0::2], flat[1::2]))
    return store.applied_index, store.gc_watermark, pairs


def chunks_of(store: MVCCStore, chunk_bytes: int = 4096) -> list[bytes]:
    return list(store.snapshot_chunks(chunk_bytes))


def repack(chunks: list[bytes], i: int, **changes) -> list[bytes]:
    """The stream with chunk ``i`` decoded, changed and re-encoded (checksum not fixed)."""
    chunk = msgpack.unpackb(chunks[i], raw=False)
    chunk.update(changes)
    out = list(chunks)
    out[i] = msgpack.packb(chunk, use_bin_type=True)
    return out


def reseal(chunks: list[bytes]) -> list[bytes]:
    """The stream with its trailer recomputed, as a faulty writer (not a faulty disk) would."""
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
    return body + [msgpack.packb(trailer, use_bin_type=True)]


def fill(store: MVCCStore, n_keys: int = 30) -> None:
    """Several versions and tombstones over a few keys, applied indexes 1..4."""
    keys = [b"k%03d" % i for i in range(n_keys)]
    store.apply([(k, b"v1-" + k) for k in keys], 10, 1)
    store.apply([(k, b"v2-" + k) for k in keys[::2]], 20, 2)
    store.apply([(k, None) for k in keys[::3]], 30, 3)
    store.apply([(k, b"v4-" + k) for k in keys[::5]], 40, 4)


# ------------------------------------------------------------------------------- reads, writes


def test_new_store_is_empty(store):
    assert store.applied_index == 0
    assert store.get(b"a", MAX_TS) is None
    assert store.get_version(b"a", MAX_TS) is None
    assert store.scan(b"", None, MAX_TS) == []
    assert store.stats().entries == 0


def test_get_sees_newest_version_at_or_before_ts(store):
    store.apply([(b"k", b"v10")], 10, 1)
    store.apply([(b"k", b"v20")], 20, 2)
    store.apply([(b"k", b"v30")], 30, 3)
    assert store.get(b"k", 9) is None
    assert store.get(b"k", 10) == b"v10"
    assert store.get(b"k", 19) == b"v10"
    assert store.get(b"k", 20) == b"v20"
    assert store.get(b"k", 29) == b"v20"
    assert store.get(b"k", 30) == b"v30"
    assert store.get(b"k", MAX_TS) == b"v30"
    assert store.get_version(b"k", 25) == (20, b"v20")
    assert store.get(b"other", MAX_TS) is None


def test_versions_may_arrive_out_of_timestamp_order(store):
    store.apply([(b"k", b"late")], 30, 1)
    store.apply([(b"k", b"early")], 10, 2)
    assert store.get(b"k", 15) == b"early"
    assert store.get(b"k", 35) == b"late"


def test_tombstone_hides_the_key_from_its_timestamp_on(store):
    store.apply([(b"k", b"v")], 10, 1)
    store.apply([(b"k", None)], 20, 2)
    store.apply([(b"k", b"back")], 30, 3)
    assert store.get(b"k", 15) == b"v"
    assert store.get(b"k", 20) is None
    assert store.get_version(b"k", 25) == (20, None)
    assert store.get(b"k", 30) == b"back"
    assert store.scan(b"", None, 25) == []
    assert store.scan(b"", None, 30) == [(b"k", b"back")]


def test_empty_value_is_not_a_delete(store):
    store.apply([(b"k", b"")], 10, 1)
    assert store.get(b"k", 10) == b""
    assert store.get_version(b"k", 10) == (10, b"")
    assert store.scan(b"", None, 10) == [(b"k", b"")]


def test_repeated_key_in_one_batch_last_write_wins(store):
    store.apply([(b"k", b"first"), (b"j", b"x"), (b"k", b"second")], 10, 1)
    assert store.get(b"k", 10) == b"second"
    store.apply([(b"k", b"third"), (b"k", None)], 20, 2)
    assert store.get(b"k", 20) is None


def test_rewriting_a_version_replaces_it(store):
    store.apply([(b"k", b"a")], 10, 1)
    store.apply([(b"k", b"b")], 10, 2)
    assert store.get(b"k", 10) == b"b"
    assert store.stats().entries == 1


def test_apply_is_idempotent_by_applied_index(store):
    assert store.apply([(b"k", b"v1")], 10, 1) is True
    assert store.apply([(b"k", b"v2")], 20, 2) is True
    before = dump(store)
    assert store.apply([(b"k", b"again")], 30, 2) is False
    assert store.apply([(b"k", b"again")], 30, 1) is False
    assert dump(store) == before
    assert store.applied_index == 2
    # Gaps are fine: entries that touch no key are not applied here.
    assert store.apply([], 40, 7) is True
    assert store.applied_index == 7


def test_skipped_apply_does_not_read_its_writes(store):
    store.apply([], 10, 5)

    def writes():
        raise AssertionError("the writes of an entry applied before were read")
        yield  # pragma: no cover

    assert store.apply(writes(), 20, 5) is False


def test_applied_index_and_data_survive_reopen(tmp_path):
    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        fill(s)
        before = dump(s)
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        assert s.applied_index == 4
        assert dump(s) == before


def test_keys_with_zero_bytes_and_prefixes_keep_their_order(store):
    # Byte order: b"a" < b"a\x00" < b"a\x00\x00" < b"a\x00\x01" < b"a\x01" < b"ab" < b"b".
    keys = [b"a", b"a\x00", b"a\x00\x00", b"a\x00\x01", b"a\x01", b"ab", b"b", b"\x00", b"\xff\x00"]
    store.apply([(k, b"v" + k) for k in reversed(keys)], 10, 1)
    store.apply([(k, b"w" + k) for k in keys], 20, 2)
    expected = sorted(keys)
    assert [k for k, _ in store.scan(b"", None, 15)] == expected
    assert [k for k, _ in store.scan(b"", None, 15, reverse=True)] == expected[::-1]
    for k in keys:
        assert store.get(k, 15) == b"v" + k
        assert store.get(k, 25) == b"w" + k
    # A key is never confused with its extensions, in either direction.
    store.apply([(b"a\x00", None)], 30, 3)
    assert store.get(b"a", 30) == b"wa"
    assert store.get(b"a\x00", 30) is None
    assert store.get(b"a\x00\x00", 30) == b"wa\x00\x00"


def test_scan_forward_and_reverse_with_bounds_and_limit(store):
    fill(store)
    # Reference: the visible keys at ts 35 — deleted at 30: every third key.
    visible = [
        (b"k%03d" % i, (b"v2-" if i % 2 == 0 else b"v1-") + b"k%03d" % i)
        for i in range(30)
        if i % 3 != 0
    ]
    assert store.scan(b"", None, 35) == visible
    assert store.scan(b"", None, 35, reverse=True) == visible[::-1]
    assert store.scan(b"k005", b"k011", 35) == [p for p in visible if b"k005" <= p[0] < b"k011"]
    assert store.scan(b"k005", b"k011", 35, reverse=True) == [
        p for p in visible[::-1] if b"k005" <= p[0] < b"k011"
    ]
    assert store.scan(b"", None, 35, limit=3) == visible[:3]
    assert store.scan(b"", None, 35, limit=3, reverse=True) == visible[::-1][:3]
    assert store.scan(b"k", b"k004", 35, limit=10) == visible[:2]
    assert store.scan(b"k010", b"k010", 35) == []
    assert store.scan(b"k020", b"k010", 35) == []
    assert store.scan(b"", None, 35, limit=0) == []
    assert store.scan(b"", None, 5) == []
    # End bound between keys and past the last key; start bound before the first one.
    assert store.scan(b"k0285", None, 35) == [p for p in visible if p[0] > b"k0285"]
    assert store.scan(b"", b"zzz", 35, reverse=True) == visible[::-1]
    assert store.scan(b"\x00", b"k0015", 35) == visible[:1]
    # A byte budget ends a page after the pair that reaches it (each pair here: 4 + 7 bytes).
    assert store.scan(b"", None, 35, max_bytes=23) == visible[:3]
    assert store.scan(b"", None, 35, max_bytes=22) == visible[:2]
    assert store.scan(b"", None, 35, max_bytes=1, reverse=True) == visible[::-1][:1]
    assert store.scan(b"", None, 35, max_bytes=1 << 20) == visible


def test_a_bound_just_past_the_longest_key_continues_after_it(store):
    """``key + b"\\x00"`` is the bound just past a key: what a paged scan continues from (a
    keyspace move's copy, a regional scan). It must work after a key of the longest size too,
    zero bytes included (whose encoding is the longest), in every call that takes a bound."""
    longest = [b"\x00" * MAX_KEY_SIZE, b"\x00" * (MAX_KEY_SIZE - 1) + b"\x01", b"z" * MAX_KEY_SIZE]
    store.apply([(k, k[-1:]) for k in longest] + [(b"\x00", b"s"), (b"zz", b"t")], 10, 1)
    everything = store.scan(b"", None, 10)
    assert len(everything) == 5
    for i, (key, _) in enumerate(everything):
        after = key + b"\x00"
        assert store.scan(after, None, 10) == everything[i + 1:]
        assert store.scan(after, None, 10, reverse=True) == everything[i + 1:][::-1]
        assert store.scan(b"", after, 10) == everything[:i + 1]
        assert store.scan(b"", after, 10, reverse=True) == everything[:i + 1][::-1]
        assert store.count_versions(after, b"\xff") == (len(everything) - i - 1, None)
        assert store.count_versions(b"", after) == (i + 1, None)
        assert store.gc(5, start=after) == GCResult(0, None)
    with pytest.raises(errors.InvalidArgumentError, match="start"):
        store.scan(b"z" * (MAX_KEY_SIZE + 2), None, 10)


def test_scan_takes_each_keys_version_at_ts(store):
    fill(store)
    at_40 = dict(store.scan(b"", None, 40))
    assert at_40[b"k005"] == b"v4-k005"  # rewritten at 40
    assert b"k015" in at_40  # deleted at 30, rewritten at 40
    assert b"k003" not in at_40  # deleted at 30
    at_10 = dict(store.scan(b"", None, 10))
    assert len(at_10) == 30 and all(v.startswith(b"v1-") for v in at_10.values())


def test_large_values_round_trip(store):
    big = bytes(range(256)) * (MAX_VALUE_SIZE // 256)
    assert len(big) == MAX_VALUE_SIZE
    store.apply([(b"big", big), (b"small", b"s")], 10, 1)
    assert store.get(b"big", 10) == big
    assert store.scan(b"", None, 10) == [(b"big", big), (b"small", b"s")]
    assert store.stats().map_resizes >= 1


def test_longest_key_of_zero_bytes_fits(store):
    key = b"\x00" * MAX_KEY_SIZE  # the worst case of the encoding: every byte doubled
    store.apply([(key, b"v")], 10, 1)
    assert store.get(key, 10) == b"v"
    assert store.scan(b"", None, 10) == [(key, b"v")]


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "key, error",
    [
        (b"", errors.InvalidArgumentError),
        ("text", errors.InvalidArgumentError),
        (None, errors.InvalidArgumentError),
        (7, errors.InvalidArgumentError),
        (b"x" * (MAX_KEY_SIZE + 1), errors.RecordTooLargeError),
    ],
    ids=["empty", "str", "None", "int", "too-long"],
)
def test_bad_keys_are_rejected_before_any_write(store, key, error):
    with pytest.raises(error, match="key"):
        store.apply([(b"good", b"v"), (key, b"v")], 10, 1)
    with pytest.raises(error, match="key"):
        store.get(key, 10)
    with pytest.raises(error, match="key"):
        store.get_version(key, 10)
    assert store.applied_index == 0 and store.get(b"good", 10) is None


@pytest.mark.parametrize("ts", [0, -1, MAX_TS + 1, 2**64, True, 1.5, "10", None])
def test_bad_timestamps_are_rejected(store, ts):
    with pytest.raises(errors.InvalidArgumentError, match="commit_ts"):
        store.apply([(b"k", b"v")], ts, 1)
    with pytest.raises(errors.InvalidArgumentError, match="ts"):
        store.get(b"k", ts)
    with pytest.raises(errors.InvalidArgumentError, match="ts"):
        store.scan(b"", None, ts)
    with pytest.raises(errors.InvalidArgumentError, match="watermark"):
        store.gc(ts)
    assert store.applied_index == 0


def test_timestamp_extremes_are_accepted(store):
    store.apply([(b"k", b"min")], 1, 1)
    store.apply([(b"k", b"max")], MAX_TS, 2)
    assert store.get(b"k", 1) == b"min"
    assert store.get(b"k", MAX_TS - 1) == b"min"
    assert store.get(b"k", MAX_TS) == b"max"
    assert store.scan(b"", None, MAX_TS) == [(b"k", b"max")]
    assert store.scan(b"", None, 1, reverse=True) == [(b"k", b"min")]


@pytest.mark.parametrize("index", [0, -3, 2**64, False, 2.0, None])
def test_bad_applied_index_is_rejected(store, index):
    with pytest.raises(errors.InvalidArgumentError, match="applied_index"):
        store.apply([(b"k", b"v")], 10, index)


@pytest.mark.parametrize(
    "value, error",
    [
        ("text", errors.InvalidArgumentError),
        (12, errors.InvalidArgumentError),
        (b"x" * (MAX_VALUE_SIZE + 1), errors.RecordTooLargeError),
    ],
    ids=["str", "int", "too-long"],
)
def test_bad_values_are_rejected(store, value, error):
    with pytest.raises(error, match="value"):
        store.apply([(b"k", value)], 10, 1)
    assert store.applied_index == 0


@pytest.mark.parametrize("write", [b"k", (b"k",), (b"k", b"v", b"extra"), 5])
def test_malformed_writes_are_rejected(store, write):
    with pytest.raises(errors.InvalidArgumentError, match="pair"):
        store.apply([write], 10, 1)


def test_bad_scan_arguments_are_rejected(store):
    with pytest.raises(errors.InvalidArgumentError, match="start"):
        store.scan("a", None, 10)
    with pytest.raises(errors.InvalidArgumentError, match="end"):
        store.scan(b"a", "b", 10)
    with pytest.raises(errors.InvalidArgumentError, match="end"):
        store.scan(b"a", b"z" * (MAX_KEY_SIZE + 2), 10)
    with pytest.raises(errors.InvalidArgumentError, match="limit"):
        store.scan(b"a", None, 10, limit=-1)
    with pytest.raises(errors.InvalidArgumentError, match="limit"):
        store.scan(b"a", None, 10, limit=True)
    with pytest.raises(errors.InvalidArgumentError, match="max_bytes"):
        store.scan(b"a", None, 10, max_bytes=0)


def test_bad_store_arguments_are_rejected(tmp_path, store):
    with pytest.raises(errors.InvalidArgumentError, match="map_size"):
        MVCCStore(tmp_path / "x", map_size=MIN_MAP_SIZE - 1)
    with pytest.raises(errors.InvalidArgumentError, match="max_versions"):
        store.gc(10, max_versions=0)
    with pytest.raises(errors.InvalidArgumentError, match="chunk_bytes"):
        store.snapshot_chunks(10)


def test_errors_are_meridian_errors_and_builtins():
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.CorruptStateError, OSError)
    assert issubclass(errors.StoreClosedError, errors.MeridianError)


# ------------------------------------------------------------------------------- lifetime


def test_closed_store_raises(tmp_path):
    s = MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    s.apply([(b"k", b"v")], 10, 1)
    s.close()
    s.close()  # idempotent
    assert s.closed
    for call in (
        lambda: s.get(b"k", 10),
        lambda: s.get_version(b"k", 10),
        lambda: s.scan(b"", None, 10),
        lambda: s.apply([(b"k", b"v")], 20, 2),
        lambda: s.apply([(b"k", b"v")], 20, 1),
        lambda: s.gc(10),
        lambda: s.snapshot_chunks(),
        lambda: s.restore([]),
        lambda: s.checkpoint(),
        lambda: s.stats(),
        lambda: s.applied_index,
    ):
        with pytest.raises(errors.StoreClosedError):
            call()


def test_second_handle_is_refused(tmp_path):
    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP):
        with pytest.raises(errors.StoreLockedError):
            MVCCStore(path, map_size=SMALL_MAP)
    with MVCCStore(path, map_size=SMALL_MAP) as s:  # free again after close
        assert s.applied_index == 0


def test_a_lock_that_fails_otherwise_than_held_is_a_storage_error(tmp_path, monkeypatch):
    # flock can fail for other reasons than another handle (ENOLCK on some network file
    # systems): that came out as a bare OSError, and the lock file's descriptor leaked.
    import fcntl
    import os

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    opened = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(errors.StorageError, match="cannot lock") as caught:
        MVCCStore(tmp_path / "store", map_size=SMALL_MAP)
    assert caught.value.errno == errno.ENOLCK
    assert len(os.listdir("/proc/self/fd")) == opened


def test_another_programs_lmdb_database_is_refused_not_adopted(tmp_path):
    """An LMDB data file without the store's tables is new only while empty: another
    program's database is refused, and nothing is written into it."""
    import lmdb

    path = tmp_path / "store"
    with lmdb.open(str(path), map_size=SMALL_MAP) as env, env.begin(write=True) as txn:
        txn.put(b"some", b"other program's data")
    with pytest.raises(errors.CorruptStateError, match="no MVCC store") as info:
        MVCCStore(path, map_size=SMALL_MAP)
    assert info.value.path == str(path / "data.mdb")
    with lmdb.open(str(path), map_size=SMALL_MAP) as env, env.begin() as txn:
        assert list(txn.cursor()) == [(b"some", b"other program's data")]


def test_a_first_open_cut_short_between_its_tables_is_completed(tmp_path):
    """Each table is made by a commit of its own: a first open cut short after the first
    (power lost, the process killed) leaves a data file holding only that table, which is
    still this store's to complete, not another program's database."""
    import lmdb

    path = tmp_path / "store"
    with lmdb.open(str(path), map_size=SMALL_MAP, max_dbs=8) as env:
        env.open_db(b"versions")
    with MVCCStore(path, map_size=SMALL_MAP) as store:
        store.apply([(b"k", b"v")], 5, 1)
        assert store.get(b"k", 5) == b"v"


def test_missing_directory_without_create(tmp_path):
    with pytest.raises(errors.StorageError):
        MVCCStore(tmp_path / "absent", create=False)


@pytest.mark.parametrize("content", ["zeros", "garbage", "short", "foreign"])
def test_a_data_file_that_is_no_store_is_corruption(tmp_path, content):
    """A data.mdb that is not an LMDB file, or an LMDB file whose tables are something else,
    is a store of an unknown format: CorruptStateError, not an I/O error."""
    import lmdb

    path = tmp_path / "store"
    path.mkdir()
    if content == "foreign":
        with lmdb.open(str(path), map_size=SMALL_MAP) as env, env.begin(write=True) as txn:
            txn.put(b"versions", b"not a table")
    else:
        blob = {"zeros": bytes(1 << 16), "garbage": bytes(range(256)) * 256,
                "short": b"\x01" * 100}[content]
        (path / "data.mdb").write_bytes(blob)
    with pytest.raises(errors.CorruptStateError, match="cannot open MVCC store"):
        MVCCStore(path, map_size=SMALL_MAP)


def test_a_damaged_page_met_by_a_read_or_a_write_is_corruption_naming_the_store(tmp_path):
    """A node runs one store per group: corruption found inside a store, after it opened,
    names the store (in the message, and as the error's path), as an open that finds it does."""
    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        s.apply([(b"key-%03d" % i, b"v") for i in range(5)], 10, 1)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    page = next(p for p in range(2, len(raw) // 4096)  # past the two meta pages
                if b"key-001\x00\x01" in raw[p * 4096:(p + 1) * 4096])
    struct.pack_into("<H", raw, page * 4096 + 10, 0)  # the page header's flags: no page type
    data.write_bytes(bytes(raw))
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        for call in (lambda: s.get(b"key-001", 10), lambda: s.scan(b"", None, 10),
                     lambda: s.apply([(b"key-009", b"v")], 20, 2), lambda: s.gc(5)):
            with pytest.raises(errors.CorruptStateError, match=re.escape(str(path))) as caught:
                call()
            assert caught.value.path == str(data)


@pytest.mark.parametrize("newer", ["store format", "lmdb data format"])
def test_a_store_of_a_newer_format_is_refused_and_left_alone(tmp_path, newer):
    """A newer format of the store, or of LMDB's data file under it, is an unknown format:
    CorruptStateError saying so (not an I/O error), and the data file is not touched."""
    import lmdb

    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        s.apply([(b"k", b"v")], 10, 1)
    data = path / "data.mdb"
    if newer == "store format":
        with lmdb.open(str(path), max_dbs=8, map_size=data.stat().st_size) as env:
            with env.begin(write=True, db=env.open_db(b"meta")) as txn:
                txn.put(b"format", (2).to_bytes(8, "big"))
        message = "has format 2; this code reads format 1"
    else:
        raw = bytearray(data.read_bytes())
        for meta_page in (0, 4096):  # each meta page: a 16-byte page header, magic, version
            assert struct.unpack_from("<I", raw, meta_page + 16)[0] == 0xBEEFC0DE
            struct.pack_into("<I", raw, meta_page + 20, 2)
        data.write_bytes(bytes(raw))
        message = "cannot open MVCC store"
    image = data.read_bytes()
    with pytest.raises(errors.CorruptStateError, match=message):
        MVCCStore(path, map_size=SMALL_MAP)
    assert data.read_bytes() == image


def test_checkpoint_and_sync_mode(tmp_path):
    with MVCCStore(tmp_path / "store", map_size=SMALL_MAP, sync=True) as s:
        s.apply([(b"k", b"v")], 10, 1)
        s.checkpoint()
        st = s.stats()
        assert isinstance(st, MVCCStats) and st.sync and st.applied_index == 1


def test_a_checkpoint_writes_the_map_back_slice_by_slice(tmp_path, monkeypatch):
    """With a writable map, a checkpoint writes the data file's dirty pages back a slice at a
    time (every slice of the file, in order) before its final sync; an error there is a
    StorageError naming the store."""
    import engine.mvcc as mvcc
    from engine._native import write_back

    calls = []

    def recording(fd, offset, length):
        calls.append((offset, length))
        write_back(fd, offset, length)

    monkeypatch.setattr(mvcc, "_WRITE_BACK_SLICE", 1 << 20)
    monkeypatch.setattr(mvcc, "write_back", recording)
    with MVCCStore(tmp_path / "store", map_size=4 << 20) as s:
        s.apply([(b"k%d" % i, b"v" * 1000) for i in range(500)], 10, 1)
        s.checkpoint()
        size = (tmp_path / "store" / "data.mdb").stat().st_size
        assert calls == [(offset, 1 << 20) for offset in range(0, size, 1 << 20)]

        def failing(fd, offset, length):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(mvcc, "write_back", failing)
        with pytest.raises(errors.StorageError, match="checkpoint of .*store failed"):
            s.checkpoint()
    with pytest.raises(OSError) as info:
        write_back(-1, 0, 4096)
    assert info.value.errno == errno.EBADF


def test_after_a_failed_checkpoint_the_store_refuses_checkpoints_and_writes(tmp_path,
                                                                            monkeypatch):
    """fsyncgate: after a failed write-back or sync the kernel may have dropped the map's dirty
    pages and marked them clean, so a retried checkpoint could succeed without them and let
    the Raft log be compacted behind data that is not on disk. The store refuses checkpoints
    and writes until it is reopened; reads go on."""
    import engine.mvcc as mvcc

    def failing(fd, offset, length):
        raise OSError(errno.EIO, "I/O error")

    path = tmp_path / "store"
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        s.apply([(b"k", b"v1")], 10, 1)
        with monkeypatch.context() as m:
            m.setattr(mvcc, "write_back", failing)
            with pytest.raises(errors.StorageError, match="checkpoint of .*store failed"):
                s.checkpoint()
        with pytest.raises(errors.StoreFailedError, match="failed an earlier checkpoint"):
            s.checkpoint()
        with pytest.raises(errors.StoreFailedError):
            s.apply([(b"k", b"v2")], 20, 2)
        with pytest.raises(errors.StoreFailedError):
            s.gc(5)
        assert s.get(b"k", 30) == b"v1" and s.applied_index == 1
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        s.checkpoint()
        assert s.apply([(b"k", b"v2")], 20, 2)


def test_the_map_grows_and_the_store_closes_while_a_checkpoint_writes_back(tmp_path,
                                                                            monkeypatch):
    """The slices are written back outside the reader gate, on a descriptor of their own: a
    write that must grow the map does not wait for them, nor does close()."""
    import engine.mvcc as mvcc
    from engine._native import write_back

    started, release = threading.Event(), threading.Event()

    def held(fd, offset, length):
        started.set()
        assert release.wait(10), "the test never released the write-back"
        write_back(fd, offset, length)

    monkeypatch.setattr(mvcc, "write_back", held)
    s = MVCCStore(tmp_path / "store", map_size=1 << 20)
    errors_seen = []

    def checkpoint():
        try:
            s.checkpoint()
        except BaseException as exc:  # checked below
            errors_seen.append(exc)

    t = threading.Thread(target=checkpoint)
    t.start()
    try:
        assert started.wait(10)
        before = s.stats().map_size
        s.apply([(b"k%d" % i, b"v" * 2000) for i in range(2000)], 10, 1)  # grows the map
        assert s.stats().map_size > before
    finally:
        release.set()
        t.join()
    assert errors_seen == []
    s.close()


@pytest.mark.parametrize("writemap", [True, False])
def test_both_map_modes_store_the_same(tmp_path, writemap):
    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE, writemap=writemap) as s:
        for i in range(1, 40):
            s.apply([(b"k%04d" % j, b"%d" % i * 50) for j in range(100)], i, i)
        assert s.stats().writemap is writemap
        assert s.stats().map_resizes >= 1
        assert s.scan(b"", None, 20, limit=1) == [(b"k0000", b"20" * 50)]
        assert len(s.scan(b"", None, MAX_TS)) == 100


# ------------------------------------------------------------------------------- map growth


def test_map_grows_and_nothing_is_lost(tmp_path):
    """20 MB of values through a 1 MiB map: every MapFullError is absorbed by growing."""
    path = tmp_path / "store"
    value = bytes(range(100))
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        for b in range(200):
            writes = [(b"key-%06d-%05d" % (i, b), value + b"%d" % b) for i in range(1000)]
            s.apply(writes, b + 1, b + 1)
        st = s.stats()
        assert st.entries == 200_000
        assert st.map_resizes >= 4
        assert st.map_size >= st.used_bytes > 20_000_000
        map_size = st.map_size
    with MVCCStore(path, map_size=SMALL_MAP) as s:
        assert s.stats().map_size >= map_size  # reopening keeps the grown map
        for b in range(0, 200, 7):
            for i in range(0, 1000, 13):
                assert s.get(b"key-%06d-%05d" % (i, b), MAX_TS) == value + b"%d" % b
        assert len(s.scan(b"key-000999-", None, MAX_TS)) == 200
        assert s.applied_index == 200


def test_reads_run_while_the_map_grows(tmp_path):
    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"fixed", b"F")], 1, 1)
        stop = threading.Event()
        failures: list[BaseException] = []

        def reader():
            try:
                while not stop.is_set():
                    assert s.get(b"fixed", MAX_TS) == b"F"
                    got = s.scan(b"k", b"l", MAX_TS, limit=5, reverse=True)
                    assert all(v == b"x" * 200 for _, v in got)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for b in range(2, 60):
                s.apply([(b"k%03d-%04d" % (b, i), b"x" * 200) for i in range(200)], b, b)
            # A write transaction that fails half-way is aborted while the readers run on.
            bad = _corruptions(chunks_of(s))["entries out of order"]
            with pytest.raises(errors.CorruptStateError):
                s.restore(bad)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not failures, failures[0]
        assert s.stats().map_resizes >= 3


def test_growth_waits_for_an_open_snapshot_which_stays_consistent(tmp_path):
    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"k%04d" % i, b"old") for i in range(100)], 1, 1)
        stream = s.snapshot_chunks(4096)
        assert stream.applied_index == 1
        resizes = s.stats().map_resizes
        done = threading.Event()
        failures: list[BaseException] = []

        def writer():
            try:  # far more than the map holds: it must grow, so it waits for the snapshot
                s.apply([(b"k%04d" % i, b"new" * 1000) for i in range(2000)], 2, 2)
            except BaseException as exc:
                failures.append(exc)
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        got = list(stream)  # reads (and gets) still run while the writer waits
        assert s.get(b"k0000", MAX_TS) in (b"old", b"new" * 1000)
        t.join(30)
        assert done.is_set() and not failures
        assert s.stats().map_resizes > resizes
        with MVCCStore(tmp_path / "copy", map_size=MIN_MAP_SIZE) as restored:
            assert restored.restore(got) == 1
            assert restored.scan(b"", None, MAX_TS) == [(b"k%04d" % i, b"old") for i in range(100)]


def test_growth_interrupts_an_interruptible_snapshot_instead_of_waiting_for_it(tmp_path):
    """A snapshot read by its own thread while the owner writes (a Raft snapshot built for a
    follower): a write that must grow the map waits only for the chunk in progress, which
    comes out whole, and not for the reader to come back; the next chunk says the snapshot
    was ended."""
    from engine.mvcc import SnapshotInterruptedError

    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"k%04d" % i, b"old") for i in range(100)], 1, 1)
        stream = s.snapshot_chunks(4096, interruptible=True)
        next(stream)  # the header
        data_chunk = stream._data_chunk
        in_chunk = threading.Event()
        written = threading.Event()
        outcome: list[object] = []

        def slow_data_chunk():
            # The chunk is finished only once the writer waits for it.
            in_chunk.set()
            for _ in range(10_000):
                if s._hold:
                    break
                threading.Event().wait(0.001)
            return data_chunk()

        stream._data_chunk = slow_data_chunk

        def reader():
            outcome.append(next(stream))
            outcome.append(written.wait(10))  # the write did not wait for this reader
            try:
                outcome.append(next(stream))
            except SnapshotInterruptedError as exc:
                outcome.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        assert in_chunk.wait(10)
        resizes = s.stats().map_resizes
        s.apply([(b"k%04d" % i, b"new" * 1000) for i in range(2000)], 2, 2)  # must grow
        written.set()
        t.join(30)
        assert s.stats().map_resizes > resizes
        assert len(outcome) == 3
        assert msgpack.unpackb(outcome[0])["kind"] == "data"
        assert outcome[1] is True
        assert isinstance(outcome[2], SnapshotInterruptedError)
        assert list(stream) == []  # ended
        with s.snapshot_chunks() as again:  # a new one sees the write
            assert again.applied_index == 2


def test_growth_does_not_wait_for_an_interruptible_snapshot_between_chunks(tmp_path):
    """An interruptible snapshot whose reader is away between chunks (writing the last one
    out, or not yet started) holds no chunk in progress: a write that must grow the map ends
    it there and then, and the snapshot's next chunk says so."""
    from engine.mvcc import SnapshotInterruptedError

    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"k%04d" % i, b"old") for i in range(100)], 1, 1)
        idle = s.snapshot_chunks(4096, interruptible=True)  # not read yet
        started = s.snapshot_chunks(4096, interruptible=True)
        next(started)  # the header; its reader is away now
        done = threading.Event()

        def writer():  # must grow the map
            s.apply([(b"k%04d" % i, b"new" * 1000) for i in range(2000)], 2, 2)
            done.set()

        resizes = s.stats().map_resizes
        t = threading.Thread(target=writer)
        t.start()
        try:
            assert done.wait(10), "the write waited for snapshots nobody was reading"
        finally:
            if not done.is_set():  # let a waiting writer finish, so that the thread ends
                idle.close()
                started.close()
            t.join(30)
        assert s.stats().map_resizes > resizes
        for stream in (idle, started):
            with pytest.raises(SnapshotInterruptedError):
                next(stream)
            assert list(stream) == []  # ended
        with s.snapshot_chunks() as again:
            assert again.applied_index == 2


@pytest.mark.parametrize("seed", range(3))
def test_growth_under_interruptible_snapshot_readers_stress(tmp_path, seed):
    """Readers stream interruptible snapshots with pauses between chunks (and close or drop
    some of them early) while a writer grows the map several times: each snapshot either
    completes, and restores to exactly the state at its index, or says it was interrupted;
    the writer never waits for a reader that is away between chunks."""
    import gc
    import random
    import time

    from engine.mvcc import SnapshotInterruptedError

    value = b"v" * 2000

    def keys(index):
        return [b"w%04d-%02d" % (index, j) for j in range(20)]

    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(k, value) for k in keys(1)], 1, 1)
        stop = threading.Event()
        complete: list[list[bytes]] = []
        outcomes = {"complete": 0, "interrupted": 0, "closed": 0, "dropped": 0}
        failures: list[BaseException] = []
        lock = threading.Lock()

        def reader(rng):
            try:
                for _ in range(40):
                    if stop.is_set():
                        break
                    mode = rng.choice(("full", "full", "full", "close", "drop", "cycle"))
                    stream = s.snapshot_chunks(32 << 10, interruptible=True)
                    cut = rng.randrange(1, 6)
                    chunks: list[bytes] = []
                    try:
                        for chunk in stream:
                            chunks.append(chunk)
                            if mode != "full" and len(chunks) >= cut:
                                break
                            # Away between chunks: now and then long enough for a grower.
                            time.sleep(rng.choice((0, 0, 0.0002, 0.001, 0.005)))
                    except SnapshotInterruptedError:
                        assert list(stream) == []
                        outcome = "interrupted"
                    else:
                        if mode == "full":
                            assert msgpack.unpackb(chunks[-1])["kind"] == "trailer"
                            outcome = "complete"
                        elif mode == "close":
                            stream.close()
                            assert list(stream) == []
                            outcome = "closed"
                        else:
                            if mode == "cycle":
                                stream.cycle = stream  # freed by the cycle collector only
                            del stream
                            gc.collect()
                            outcome = "dropped"
                    with lock:
                        outcomes[outcome] += 1
                        if outcome == "complete" and len(complete) < 3:
                            complete.append(chunks)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        readers = [
            threading.Thread(target=reader, args=(random.Random(seed * 10 + n),))
            for n in range(3)
        ]
        for t in readers:
            t.start()
        never_read = s.snapshot_chunks(interruptible=True)
        slowest = 0.0
        index = 1

        def writer(rng):
            nonlocal slowest, index
            try:
                while s.stats().map_resizes < 4 and index < 200:
                    time.sleep(rng.choice((0, 0.001, 0.003)))
                    began = time.monotonic()
                    s.apply([(k, value) for k in keys(index + 1)], index + 1, index + 1)
                    slowest = max(slowest, time.monotonic() - began)
                    index += 1
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        w = threading.Thread(target=writer, args=(random.Random(seed),))
        w.start()
        try:
            w.join(30)
            if w.is_alive():  # let a waiting writer finish, so that the thread ends
                never_read.close()
                w.join(30)
        finally:
            stop.set()
            for t in readers:
                t.join(30)
        assert not any(t.is_alive() for t in readers + [w])
        assert not failures, failures
        assert s.stats().map_resizes >= 4
        # A write waits for a chunk in progress at most (milliseconds), never for a reader.
        assert slowest < 5, f"a write waited {slowest:.2f}s for snapshot readers"
        with pytest.raises(SnapshotInterruptedError):
            next(never_read)
        gc.collect()
        assert s._open_snapshots == 0 and not s._idle_snapshots
        assert outcomes["complete"] and outcomes["interrupted"], outcomes
        for n, chunks in enumerate(complete):
            with MVCCStore(tmp_path / f"restored{n}", map_size=MIN_MAP_SIZE) as r:
                at = r.restore(chunks)
                for i in range(1, index + 1):
                    for k in keys(i):
                        assert (r.get(k, MAX_TS) == value) == (i <= at), (at, i)


def test_an_interruptible_snapshot_dropped_unfinished_is_collected(tmp_path):
    """The store keeps no strong reference to an idle interruptible snapshot: one dropped
    between chunks is collected and releases its read transaction."""
    import gc
    import weakref

    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"k%04d" % i, b"v") for i in range(100)], 1, 1)
        stream = s.snapshot_chunks(4096, interruptible=True)
        next(stream)
        ref = weakref.ref(stream)
        del stream
        gc.collect()
        assert ref() is None
        assert s._open_snapshots == 0


def test_growth_meets_an_interruptible_snapshot_being_collected(tmp_path):
    """A dropped interruptible snapshot collected by the cycle collector is dead in the
    store's idle list for a moment before it leaves it: a write that must grow the map then
    waits for it to release itself, and fails with no KeyError."""
    import gc
    import weakref

    with MVCCStore(tmp_path / "store", map_size=MIN_MAP_SIZE) as s:
        s.apply([(b"k%04d" % i, b"old") for i in range(100)], 1, 1)
        stream = s.snapshot_chunks(4096, interruptible=True)
        next(stream)
        stream.cycle = stream  # freed by the cycle collector only
        collecting = threading.Event()
        written = threading.Event()
        outcome: list[object] = []

        def writer():  # must grow the map
            assert collecting.wait(10)
            try:
                s.apply([(b"k%04d" % i, b"new" * 1000) for i in range(2000)], 2, 2)
                outcome.append("written")
            except BaseException as exc:
                outcome.append(exc)
            written.set()

        def on_collect(_):
            # Runs before the idle list's own callback (the newer weak reference first): the
            # writer meets the dead entry. Let it go until it fails or waits for the stream.
            collecting.set()
            for _ in range(10_000):
                if written.wait(0.001):
                    return
                if s._resize_wanted and s._gate.acquire(timeout=0.001):
                    s._gate.release()  # the writer waits in the gate
                    return

        ref = weakref.ref(stream, on_collect)
        t = threading.Thread(target=writer)
        t.start()
        del stream
        gc.collect()
        t.join(10)
        assert ref() is None
        assert outcome == ["written"]
        assert s._open_snapshots == 0
        with s.snapshot_chunks() as again:
            assert again.applied_index == 2


# ------------------------------------------------------------------------------- GC


def test_gc_keeps_newest_version_at_or_below_watermark(store):
    for i, ts in enumerate((10, 20, 30, 40), start=1):
        store.apply([(b"k", b"v%d" % ts)], ts, i)
    result = store.gc(25)
    assert result == GCResult(removed=1, resume=None)
    got = [store.get(b"k", ts) for ts in (25, 30, 39, 40, MAX_TS)]
    assert got == [b"v20", b"v30", b"v30", b"v40", b"v40"]
    assert store.get(b"k", 15) is None  # below the watermark: history is gone
    assert store.stats().entries == 3
    assert store.gc(25).removed == 0  # nothing left to do


def test_gc_publishes_its_watermark_before_its_deletions_commit(store, monkeypatch):
    # GC runs in a worker thread; readers check the watermark, read, and check it again.
    # For that to catch a read of collected versions, the watermark must be up no later
    # than the deletions are visible.
    for i, ts in enumerate((10, 20, 30), start=1):
        store.apply([(b"k", b"v%d" % ts)], ts, i)
    seen = []
    grow = store._maybe_grow_early

    def after_commit(env):  # called by the write path right after its commit
        seen.append((store.gc_watermark, store.get(b"k", 15)))
        grow(env)

    monkeypatch.setattr(store, "_maybe_grow_early", after_commit)
    store.gc(25)
    assert seen == [(25, None)]  # the version at 10 is gone, and the watermark says so


def test_gc_removes_a_tombstone_with_nothing_newer(store):
    store.apply([(b"dead", b"a"), (b"alive", b"a")], 10, 1)
    store.apply([(b"dead", None), (b"alive", None)], 20, 2)
    store.apply([(b"alive", b"b")], 40, 3)
    assert store.gc(30).removed == 3  # dead: both versions; alive: its value at 10
    assert store.get_version(b"dead", MAX_TS) is None
    assert store.get(b"alive", 30) is None
    assert store.get_version(b"alive", 30) == (20, None)  # kept: hides nothing newer
    assert store.get(b"alive", 40) == b"b"
    assert store.scan(b"", None, MAX_TS) == [(b"alive", b"b")]


def test_gc_is_bounded_and_resumes(store):
    keys = [b"k%03d" % i for i in range(50)]
    for ts in (10, 20, 30):
        store.apply([(k, b"%d" % ts) for k in keys], ts, ts)
    before = store.scan(b"", None, 30)
    removed, calls, start = 0, 0, b""
    while True:
        result = store.gc(25, start=start, max_versions=7)
        removed += result.removed
        calls += 1
        assert result.removed <= 7 + 2  # budget checked at key boundaries
        if result.resume is None:
            break
        assert result.resume > start
        start = result.resume
    assert removed == 50
    assert calls >= 50 * 2 // 7
    assert store.scan(b"", None, 30) == before
    assert store.scan(b"", None, 25) == [(k, b"20") for k in keys]
    assert store.gc_watermark == 25
    store.gc(5)
    assert store.gc_watermark == 25  # never lowered


@pytest.mark.parametrize("newest", [b"last", None])
def test_gc_is_bounded_inside_a_key_with_many_versions(store, newest):
    # A hot key piles up versions between two passes: one call must not delete them all in
    # one write transaction (applies wait for it), and a call that stops inside the key must
    # leave it reading as it did -- a newest tombstone, removed with the rest, included.
    store.apply_batch([([(b"hot", b"%d" % ts)], ts) for ts in range(1, 100)]
                      + [([(b"hot", newest), (b"cold", b"c")], 100)], 1)
    removed, calls, start = 0, 0, b""
    while True:
        result = store.gc(150, start=start, max_versions=10)
        assert result.removed <= 11  # the budget, and a tombstone once its key is done
        assert store.get(b"hot", 150) == newest
        assert store.get(b"cold", 150) == b"c"
        removed += result.removed
        calls += 1
        if result.resume is None:
            break
        start = result.resume
        assert calls < 100
    assert calls >= 99 // 10
    assert removed == (99 if newest else 100)
    assert store.get_version(b"hot", MAX_TS) == ((100, newest) if newest else None)
    assert store.stats().entries == (2 if newest else 1)


def test_gc_watermark_survives_reopen(tmp_path):
    with MVCCStore(tmp_path / "s", map_size=SMALL_MAP) as s:
        s.apply([(b"k", b"v")], 10, 1)
        s.gc(50)
    with MVCCStore(tmp_path / "s", map_size=SMALL_MAP) as s:
        assert s.gc_watermark == 50
        assert s.stats().gc_watermark == 50


# ------------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_snapshot_round_trip(tmp_path, chunk_bytes):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        fill(a, n_keys=300)
        a.gc(15)
        b.apply([(b"stale", b"x")], 99, 99)  # replaced, even with a higher applied index
        chunks = chunks_of(a, chunk_bytes)
        if chunk_bytes == 4096:
            assert len(chunks) > 4
        assert b.restore(chunks) == 4
        assert dump(b) == dump(a)
        assert b.applied_index == 4 and b.gc_watermark == 15
        for ts in (15, 25, 35, MAX_TS):
            assert b.scan(b"", None, ts) == a.scan(b"", None, ts)
        assert b.apply([(b"k000", b"next")], 50, 5) is True


def test_snapshot_of_an_empty_store(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=SMALL_MAP) as a,
        MVCCStore(tmp_path / "b", map_size=SMALL_MAP) as b,
    ):
        b.apply([(b"k", b"v")], 10, 3)
        chunks = chunks_of(a)
        assert len(chunks) == 2  # header and trailer
        assert b.restore(chunks) == 0
        assert dump(b) == (0, 0, [])


def test_snapshot_is_a_point_in_time(store):
    fill(store)
    expected = dump(store)
    stream = store.snapshot_chunks(4096)
    first = next(stream)
    store.apply([(b"k001", b"later")], 50, 5)
    store.gc(45)
    chunks = [first, *stream]
    assert stream.applied_index == 4
    other = MVCCStore(tempfile.mkdtemp(), map_size=SMALL_MAP)
    try:
        other.restore(chunks)
        assert dump(other) == expected
    finally:
        other.close()
        shutil.rmtree(other.path)


def test_snapshot_restores_into_a_store_whose_map_must_grow(tmp_path):
    with (
        MVCCStore(tmp_path / "a", map_size=8 << 20) as a,
        MVCCStore(tmp_path / "b", map_size=MIN_MAP_SIZE) as b,
    ):
        a.apply([(b"k%05d" % i, b"v" * 500) for i in range(10_000)], 10, 1)
        b.restore(a.snapshot_chunks())
        assert b.stats().map_resizes >= 1
        assert dump(b) == dump(a)


def test_snapshot_stream_closed_early_releases_the_store(store):
    fill(store)
    stream = store.snapshot_chunks(4096)
    next(stream)
    stream.close()
    assert list(stream) == []
    store.close()  # does not wait for anything


def test_closing_the_store_fails_an_open_snapshot(tmp_path):
    s = MVCCStore(tmp_path / "s", map_size=SMALL_MAP)
    fill(s)
    stream = s.snapshot_chunks(4096)
    next(stream)
    s.close()
    with pytest.raises(errors.StoreClosedError):
        next(stream)
    assert list(stream) == []


def _corruptions(chunks: list[bytes]) -> dict[str, list]:
    data = [i for i, c in enumerate(chunks) if msgpack.unpackb(c, raw=False)["kind"] == "data"]
    assert len(data) >= 3
    mid = data[len(data) // 2]
    flipped = bytearray(chunks[mid])
    flipped[len(flipped) // 2] ^= 0x40  # inside an entry's bytes
    header = msgpack.unpackb(chunks[0], raw=False)
    out: dict[str, list] = {
        "byte flipped": chunks[:mid] + [bytes(flipped)] + chunks[mid + 1 :],
        "trailer missing": chunks[:-1],
        "data chunk missing": chunks[:mid] + chunks[mid + 1 :],
        "data chunks swapped": chunks[:mid] + [chunks[mid + 1], chunks[mid]] + chunks[mid + 2 :],
        "chunk truncated": chunks[:mid] + [chunks[mid][:-100]] + chunks[mid + 1 :],
        "chunk after trailer": chunks + [chunks[mid]],
        "header missing": chunks[1:],
        "empty stream": [],
        "not msgpack": [b"\xc1"] + chunks[1:],
        "not bytes": chunks[:mid] + ["text"] + chunks[mid + 1 :],
        "unknown format": reseal(repack(chunks, 0, format=99)),
        "bad magic": reseal(repack(chunks, 0, magic="something-else")),
        "header count wrong": reseal(repack(chunks, 0, entries=header["entries"] + 1)),
        "unknown chunk kind": reseal(repack(chunks, mid, kind="mystery")),
        "malformed entry": reseal(repack(chunks, mid, pairs=[b"short", b"\x01v"])),
        "bad value tag": reseal(
            repack(chunks, mid, pairs=[b"zz\x00\x01" + b"\x00" * 7 + b"\x05", b"\x07v"])
        ),
    }
    # A stream that is intact but whose entries are out of key order: only the write
    # transaction notices (LMDB's append refuses them), and must then roll back.
    first = msgpack.unpackb(chunks[data[0]], raw=False)["pairs"]
    swapped = first[2:4] + first[0:2] + first[4:]
    out["entries out of order"] = reseal(repack(chunks, data[0], pairs=swapped))
    return out


def test_corrupt_snapshots_are_rejected_and_leave_the_store_unchanged(tmp_path):
    with MVCCStore(tmp_path / "src", map_size=SMALL_MAP) as src:
        fill(src, n_keys=300)
        chunks = chunks_of(src, 4096)
    with MVCCStore(tmp_path / "dst", map_size=SMALL_MAP) as dst:
        dst.apply([(b"mine", b"m"), (b"k001", b"mine too")], 7, 9)
        before = dump(dst)
        for name, bad in _corruptions(chunks).items():
            with pytest.raises(errors.CorruptStateError):
                dst.restore(bad)
            assert dump(dst) == before, f"{name}: the store changed"
        assert dst.restore(chunks) == 4  # and the good stream still restores


def test_snapshot_with_an_over_long_key_or_value_is_rejected(tmp_path):
    """A version whose key or value is over the store's limits is refused like a side entry
    over them: the store could not read such a key (``get`` refuses it), and a state machine
    reloading it (the adjudicator's table) would fail on every restart."""
    with MVCCStore(tmp_path / "src", map_size=SMALL_MAP) as src:
        src.apply([(b"a", b"1"), (b"c", b"3")], 10, 1)
        chunks = chunks_of(src)
    [data] = [i for i, c in enumerate(chunks) if msgpack.unpackb(c, raw=False)["kind"] == "data"]
    pairs = msgpack.unpackb(chunks[data], raw=False)["pairs"]
    ts = pairs[0][-8:]
    # In key order and in number as the header says: only the limits are broken.
    long_key = b"b" * (MAX_KEY_SIZE + 1) + b"\x00\x01" + ts
    bad = {
        "key over the limit": reseal(repack(chunks, data, pairs=pairs[:2] + [long_key, b"\x01v"])),
        "value over the limit": reseal(
            repack(chunks, data, pairs=[pairs[0], b"\x01" + b"v" * (MAX_VALUE_SIZE + 1)]
                   + pairs[2:])),
    }
    with MVCCStore(tmp_path / "dst", map_size=SMALL_MAP) as dst:
        dst.apply([(b"mine", b"m")], 7, 9)
        before = dump(dst)
        for name, stream in bad.items():
            with pytest.raises(errors.CorruptStateError):
                dst.restore(stream)
            assert dump(dst) == before, f"{name}: the store changed"
        assert dst.restore(chunks) == 1


def test_restore_of_a_failing_source_leaves_the_store_unchanged(store):
    fill(store)
    before = dump(store)

    def source():
        yield chunks_of(store)[0]
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        store.restore(source())
    assert dump(store) == before


# ------------------------------------------------------------------------------- the model


# Few keys, so that they collide; among them prefixes of each other and zero bytes.
KEY_ALPHABET = [b"\x00", b"\x01", b"a"]
keys_st = st.lists(st.sampled_from(KEY_ALPHABET), min_size=1, max_size=2).map(b"".join)
bounds_st = st.lists(st.sampled_from(KEY_ALPHABET), min_size=0, max_size=3).map(b"".join)
values_st = st.one_of(st.none(), st.binary(max_size=6))
# Timestamps are drawn as offsets above the highest GC watermark, so that writes overlap and
# reads land where the model is exact; MAX_TS stands for "the newest".
offset_st = st.integers(0, 25)
read_offset_st = st.one_of(st.integers(0, 30), st.just(None))


class MVCCModel(RuleBasedStateMachine):
    """The store against a dict key -> {commit_ts: value or None}.

    GC makes history below its watermark disappear, so reads are checked at ts >= the highest
    watermark given so far, where they must match the model exactly (apart from get_version
    reporting a collected tombstone as missing, which gc documents). Writes go above that
    watermark, as the real system guarantees."""

    def __init__(self) -> None:
        super().__init__()
        self.dirs: list[str] = []
        self.store = self._new_store()
        self.model: dict[bytes, dict[int, bytes | None]] = {}
        self.applied = 0
        self.watermark = 0

    def _new_store(self) -> MVCCStore:
        d = tempfile.mkdtemp(prefix="mvcc-model-")
        self.dirs.append(d)
        return MVCCStore(d, map_size=MIN_MAP_SIZE)

    def teardown(self) -> None:
        self.store.close()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    # --- the model's answers

    def visible(self, key: bytes, ts: int) -> tuple[int, bytes | None] | None:
        versions = self.model.get(key, {})
        older = [t for t in versions if t <= ts]
        if not older:
            return None
        t = max(older)
        return t, versions[t]

    def model_scan(self, start, end, ts, limit, reverse):
        out = []
        for key in sorted(self.model, reverse=reverse):
            if key < start or (end is not None and key >= end):
                continue
            v = self.visible(key, ts)
            if v is not None and v[1] is not None:
                out.append((key, v[1]))
        return out if limit is None else out[:limit]

    # --- rules

    def read_ts(self, offset: int | None) -> int:
        return MAX_TS if offset is None else max(1, self.watermark + offset)

    def do_apply(self, writes, offset, gap):
        ts = self.watermark + 1 + offset
        self.applied += gap
        assert self.store.apply(writes, ts, self.applied) is True
        for key, value in writes:
            self.model.setdefault(key, {})[ts] = value

    @initialize(
        batches=st.lists(
            st.tuples(st.lists(st.tuples(keys_st, values_st), max_size=8), offset_st),
            max_size=6,
        )
    )
    def history(self, batches):
        """Starts most runs with several versions per key."""
        for writes, offset in batches:
            self.do_apply(writes, offset, 1)

    @rule(
        writes=st.lists(st.tuples(keys_st, values_st), max_size=6),
        offset=offset_st,
        gap=st.integers(1, 3),
    )
    def apply(self, writes, offset, gap):
        self.do_apply(writes, offset, gap)

    @precondition(lambda self: self.applied > 0)
    @rule(
        writes=st.lists(st.tuples(keys_st, values_st), max_size=3),
        offset=offset_st,
        back=st.integers(0, 2),
    )
    def reapply_is_ignored(self, writes, offset, back):
        index = max(1, self.applied - back)
        assert self.store.apply(writes, self.watermark + 1 + offset, index) is False

    @rule(key=keys_st, offset=read_offset_st)
    def get(self, key, offset):
        ts = self.read_ts(offset)
        expected = self.visible(key, ts)
        assert self.store.get(key, ts) == (None if expected is None else expected[1])
        got = self.store.get_version(key, ts)
        if expected is not None and expected[1] is None and expected[0] <= self.watermark:
            assert got in (expected, None)
        else:
            assert got == expected

    @rule(
        start=bounds_st,
        end=st.one_of(st.none(), bounds_st),
        offset=read_offset_st,
        limit=st.one_of(st.none(), st.integers(0, 4)),
        reverse=st.booleans(),
    )
    def scan(self, start, end, offset, limit, reverse):
        ts = self.read_ts(offset)
        got = self.store.scan(start, end, ts, limit=limit, reverse=reverse)
        assert got == self.model_scan(start, end, ts, limit, reverse)

    @rule(delta=st.integers(-3, 12), budget=st.integers(1, 4))
    def gc(self, delta, budget):
        watermark = max(1, self.watermark + delta)  # sometimes below the last one: a no-op
        start = b""
        for _ in range(1000):
            result = self.store.gc(watermark, start=start, max_versions=budget)
            assert result.removed >= 0
            if result.resume is None:
                break
            assert result.resume >= start  # the same key again: one with many versions
            start = result.resume
        else:
            raise AssertionError("gc did not finish")
        self.watermark = max(self.watermark, watermark)

    @rule(chunk_bytes=st.sampled_from([4096, 1 << 16]))
    def snapshot_and_restore(self, chunk_bytes):
        before = dump(self.store)
        fresh = self._new_store()
        assert fresh.restore(self.store.snapshot_chunks(chunk_bytes)) == self.applied
        assert dump(fresh) == before
        self.store.close()
        self.store = fresh  # carry on with the copy

    @rule()
    def reopen(self):
        path = self.store.path
        self.store.close()
        self.store = MVCCStore(path, map_size=MIN_MAP_SIZE)

    @invariant()
    def applied_index_matches(self):
        assert self.store.applied_index == self.applied

    @precondition(lambda self: self.model)
    @invariant()
    def full_scan_at_newest_matches(self):
        assert self.store.scan(b"", None, MAX_TS) == self.model_scan(b"", None, MAX_TS, None, False)


MVCCModel.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_mvcc_model = MVCCModel.TestCase


@pytest.mark.slow
def test_mvcc_model_long():
    run_state_machine_as_test(
        MVCCModel,
        settings=settings(
            max_examples=2000,
            stateful_step_count=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ---------------------------------------------------------------------- batches and app state


def test_apply_batch_writes_every_group_at_its_timestamp_in_one_step(store):
    assert store.apply_batch([([(b"a", b"1")], 10), ([(b"a", b"2"), (b"b", None)], 20)], 3,
                             app_state=b"s3")
    assert store.applied_index == 3 and store.app_state == b"s3"
    assert store.get(b"a", 15) == b"1" and store.get(b"a", 25) == b"2"
    assert store.get_version(b"b", 25) == (20, None)
    # At or below the applied index nothing is written, app_state included.
    assert not store.apply_batch([([(b"a", b"x")], 30)], 3, app_state=b"other")
    assert store.get(b"a", 35) == b"2" and store.app_state == b"s3"


def test_apply_batch_rejects_a_bad_group_before_writing(store):
    with pytest.raises(errors.InvalidArgumentError, match="commit_ts"):
        store.apply_batch([([(b"a", b"1")], 10), ([(b"b", b"2")], 0)], 1)
    with pytest.raises(errors.InvalidArgumentError, match="pair"):
        store.apply_batch([b"nope"], 1)
    with pytest.raises(errors.InvalidArgumentError, match="app_state"):
        store.apply([], 5, 1, app_state="text")
    assert store.applied_index == 0 and store.get(b"a", 20) is None


def test_erase_removes_a_ranges_versions_at_or_below_a_timestamp_before_the_batch(store):
    keys = [b"a", b"b", b"b\x00", b"ba", b"c"]  # b"b\x00" sorts between b"b" and b"ba"
    for i, ts in enumerate((10, 20, 30), start=1):
        store.apply([(k, b"%s@%d" % (k, ts)) for k in keys], ts, i)
    store.apply_batch([([(b"b", b"new"), (b"ba", b"new")], 15)], 4,
                      erase=[(b"b", b"c", 20)])
    # [b, c) lost its versions at or below 20, except the ones this very batch wrote.
    assert store.get_version(b"b", 20) == (15, b"new")
    assert store.get_version(b"b\x00", 25) is None
    assert store.get(b"ba", 25) == b"new" and store.get(b"b\x00", 30) == b"b\x00@30"
    for k in (b"a", b"c"):  # outside the range: untouched
        assert [store.get(k, ts) for ts in (10, 20, 30)] == [b"%s@%d" % (k, t)
                                                              for t in (10, 20, 30)]
    assert store.count_versions(b"b", b"c") == (5, None)  # b, ba: 30 and 15; b\x00: 30
    assert store.applied_index == 4


def test_count_versions_counts_at_or_below_a_timestamp_and_stops_at_key_boundaries(store):
    keys = [b"k%02d" % i for i in range(10)]
    for i, ts in enumerate((10, 20, 30), start=1):
        store.apply([(k, b"v") for k in keys], ts, i)
    assert store.count_versions(b"", b"\xff") == (30, None)
    assert store.count_versions(b"k03", b"k05", max_ts=20) == (4, None)
    assert store.count_versions(b"k00", b"k10", max_ts=5) == (0, None)
    # A limit of 5 at two versions per key: two whole keys (a third would go over), then
    # where to go on.
    assert store.count_versions(b"k00", b"k10", max_ts=20, limit=5) == (4, b"k02")
    # A key with more versions than the limit is not counted, and is where to go on.
    assert store.count_versions(b"k00", b"k10", limit=2) == (0, b"k00")
    start, total, steps = b"k00", 0, 0
    while start is not None:
        count, resume = store.count_versions(start, b"k10", max_ts=20, limit=5)
        if resume is not None:
            store.apply_batch([], 10 + steps, erase=[(start, resume, 20)])
        total, start, steps = total + count, resume, steps + 1
    assert total == 20 and steps == 5


def test_one_key_with_many_versions_is_erased_in_bounded_steps_oldest_first(store):
    """A key with more versions than an erase may take is erased a bounded number at a time,
    oldest first: counting stops inside it, and oldest_versions says where the step ends."""
    for ts in range(1, 101):
        store.apply([(b"hot", b"v%d" % ts)], ts, ts)
    store.apply([(b"next", b"n")], 5, 101)
    assert store.count_versions(b"", b"\xff", max_ts=90, limit=30) == (0, b"hot")
    assert store.oldest_versions(b"hot", 30, max_ts=90) == (30, b"next")
    assert store.oldest_versions(b"hot", 90, max_ts=90) is None  # no more than 90: whole
    assert store.oldest_versions(b"next", 1) is None
    assert store.oldest_versions(b"missing", 1) is None
    index, walked = 102, []
    while True:
        count, resume = store.count_versions(b"hot", b"hot\x00", max_ts=90, limit=30)
        if resume is None:
            store.apply_batch([], index, erase=[(b"hot", b"hot\x00", 90)])
            walked.append(count)
            break
        ts, after = store.oldest_versions(resume, 30, max_ts=90)
        before = store.count_versions(b"hot", b"hot\x00")[0]
        store.apply_batch([], index, erase=[(b"hot", after, ts)])
        walked.append(before - store.count_versions(b"hot", b"hot\x00")[0])
        index += 1
    assert walked == [30, 30, 30]  # the last 30 are no more than the limit: counted whole
    # What a read at the horizon (90) or later needs is left, and nothing older.
    assert [store.get_version(b"hot", ts)[0] for ts in (91, 100)] == [91, 100]
    assert store.get_version(b"hot", 90) is None
    assert store.count_versions(b"hot", b"hot\x00") == (10, None)
    assert store.get(b"next", 5) == b"n"


def test_erase_of_side_ranges_runs_before_the_batchs_side_changes(store):
    store.apply([], 1, 1, side=[(b"c1", b"x"), (b"c2", b"x"), (b"c3", b"x"), (b"d", b"x")])
    store.apply_batch([], 2, side=[(b"c2", b"again")], side_erase=[(b"c", b"c3")])
    assert store.side_scan() == [(b"c2", b"again"), (b"c3", b"x"), (b"d", b"x")]


def test_bad_erase_ranges_are_rejected_before_writing(store):
    with pytest.raises(errors.InvalidArgumentError, match="erase range 0 must be a tuple"):
        store.apply_batch([], 1, erase=[(b"a", b"b")])
    with pytest.raises(errors.InvalidArgumentError, match="erase range 0 max_ts"):
        store.apply_batch([], 1, erase=[(b"a", b"b", 0)])
    with pytest.raises(errors.InvalidArgumentError, match="erase range 0 end"):
        store.apply_batch([], 1, erase=[(b"a", "b", 5)])
    with pytest.raises(errors.InvalidArgumentError, match="side_erase must be an iterable"):
        store.apply_batch([], 1, side_erase=5)
    with pytest.raises(errors.InvalidArgumentError, match="limit"):
        store.count_versions(b"a", b"b", limit=0)
    assert store.applied_index == 0


def test_app_state_survives_reopen_and_travels_with_snapshots(tmp_path):
    with MVCCStore(tmp_path / "a") as a:
        a.apply([(b"k", b"v")], 7, 1, app_state=b"closed=7")
        a.apply([], 9, 2)  # no app_state: unchanged
        chunks = list(a.snapshot_chunks())
    with MVCCStore(tmp_path / "a") as a:
        assert a.app_state == b"closed=7"
    with MVCCStore(tmp_path / "b") as b:
        b.apply([], 3, 1, app_state=b"old")
        assert b.restore(chunks) == 2
        assert b.app_state == b"closed=7" and b.get(b"k", 8) == b"v"


def test_latest_versions_lists_each_keys_newest_commit_above_a_timestamp(store):
    store.apply([(b"a", b"1"), (b"b\x00", b"1"), (b"c", b"1")], 10, 1)
    store.apply([(b"a", b"2")], 30, 2)
    store.apply([(b"c", None)], 40, 3)
    assert list(store.latest_versions()) == [(b"a", 30), (b"b\x00", 10), (b"c", 40)]
    assert list(store.latest_versions(20)) == [(b"a", 30), (b"c", 40)]
    assert list(store.latest_versions(40)) == []
    with pytest.raises(errors.InvalidArgumentError):
        list(store.latest_versions(-1))


def test_latest_versions_pages_through_many_keys(store):
    keys = [b"k%05d" % i for i in range(5000)]
    store.apply([(k, b"") for k in keys], 5, 1)
    assert [k for k, _ in store.latest_versions()] == keys


def test_latest_versions_pages_by_keys_looked_at_not_keys_listed(store, monkeypatch):
    """It never holds a read transaction open for long (a map resize, and every read behind
    it, would wait for it): also when few keys, or none, are above ``since_ts`` -- as when a
    state machine reloads the commits above its low water."""
    keys = [b"k%05d" % i for i in range(10_000)]
    store.apply([(k, b"") for k in keys], 5, 1)
    store.apply([(keys[-1], b"new")], 50, 2)
    reads = []
    enter = store._enter_read
    monkeypatch.setattr(store, "_enter_read", lambda: reads.append(1) or enter())
    assert list(store.latest_versions(10)) == [(keys[-1], 50)]
    assert len(reads) >= 3  # pages of a few thousand keys each
