"""DurableState: the double-buffered small-state file (ARCH §2.2), one test per failure mode."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import tempfile
import textwrap

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine import (
    CorruptStateError,
    DiskFullError,
    InvalidArgumentError,
    MeridianError,
    RecordTooLargeError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
)
from engine import _logformat as ref
from engine import durable
from engine.durable import SLOT_HEADER_SIZE, SLOT_OVERHEAD, DurableState
from logtools import flip_byte, truncate, write_at, zero_range

SLOT = durable.DEFAULT_SLOT_SIZE


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state"


def stored(path, *values, **kwargs):
    """Stores the values one after the other and closes."""
    with DurableState(path, **kwargs) as s:
        for v in values:
            s.store(v)


def load(path, **kwargs):
    with DurableState(path, **kwargs) as s:
        return s.load()


def slot_bytes(path, index, slot_size=SLOT):
    with open(path, "rb") as f:
        f.seek(index * slot_size)
        return f.read(slot_size)


# ---------------------------------------------------------------- the API


def test_new_file_loads_none_and_round_trips(path):
    with DurableState(path) as s:
        assert s.load() is None and s.sequence == 0
        s.store(b"term=3")
        assert s.load() == b"term=3" and s.sequence == 1
        s.store(b"")
        assert s.load() == b"" and s.sequence == 2
    assert os.path.getsize(path) == 2 * SLOT
    assert not os.path.exists(str(path) + ".tmp")


def test_values_survive_reopen(path):
    stored(path, b"a", b"bb", b"ccc")
    with DurableState(path) as s:
        assert s.load() == b"ccc" and s.sequence == 3
        s.store(b"dddd")
    assert load(path) == b"dddd"


def test_nothing_stored_survives_reopen(path):
    DurableState(path).close()
    assert load(path) is None


def test_accepts_bytearray_and_memoryview_and_refuses_other_types(path):
    with DurableState(path) as s:
        s.store(bytearray(b"ab"))
        assert s.load() == b"ab" and type(s.load()) is bytes
        s.store(memoryview(bytes(range(8))).cast("Q"))
        assert s.load() == bytes(range(8))
        for bad in ("text", 3, None, [b"a"]):
            with pytest.raises(TypeError, match="bytes"):
                s.store(bad)
        assert s.load() == bytes(range(8)) and s.sequence == 2


def test_stores_alternate_between_the_slots(path):
    """Sequence s goes to slot s % 2, and a store never touches the other slot."""
    with DurableState(path) as s:
        before = slot_bytes(path, 0)
        s.store(b"one")
        assert slot_bytes(path, 0) == before  # slot 0 still says "nothing stored"
        one = slot_bytes(path, 1)
        assert b"one" in one
        s.store(b"two")
        assert slot_bytes(path, 1) == one and b"two" in slot_bytes(path, 0)
        two = slot_bytes(path, 0)
        s.store(b"three")
        assert slot_bytes(path, 0) == two and b"three" in slot_bytes(path, 1)


def test_the_worked_example_of_the_module_docstring(path):
    """The bytes in the docstring, with the CRC computed by the pure-Python reference."""
    stored(path, b"term=3")
    with open(path, "rb") as f:
        data = f.read()

    def slot(seq, length, payload):
        head = b"MERIDSTA" + struct.pack("<IIQI", 1, 4096, seq, length) + payload
        return head + struct.pack("<I", ref.mask(ref.crc32c(head)))

    slot0 = slot(0, 0xFFFFFFFF, b"")
    slot1 = slot(1, 6, b"term=3")
    assert slot0 == bytes.fromhex(
        "4d 45 52 49 44 53 54 41 01 00 00 00 00 10 00 00"
        "00 00 00 00 00 00 00 00 ff ff ff ff 66 c5 eb 51"
    )
    assert slot1 == bytes.fromhex(
        "4d 45 52 49 44 53 54 41 01 00 00 00 00 10 00 00"
        "01 00 00 00 00 00 00 00 06 00 00 00 74 65 72 6d"
        "3d 33 f7 5c 03 40"
    )
    assert data == slot0.ljust(4096, b"\0") + slot1.ljust(4096, b"\0")
    assert durable.encode_slot(1, b"term=3", 4096) == slot1.ljust(4096, b"\0")


def test_payload_limit_is_the_slot_size_minus_the_overhead(path):
    with DurableState(path) as s:
        assert s.max_payload == SLOT - SLOT_OVERHEAD == 4064
        s.store(b"x" * s.max_payload)
        with pytest.raises(RecordTooLargeError, match="4065 bytes is over the 4064-byte limit"):
            s.store(b"y" * (s.max_payload + 1))
        assert s.load() == b"x" * 4064 and s.sequence == 1
    assert load(path) == b"x" * 4064


def test_a_custom_slot_size_is_kept_by_the_file(path):
    with DurableState(path, slot_size=512) as s:
        assert s.max_payload == 480
        with pytest.raises(RecordTooLargeError):
            s.store(bytes(481))
        s.store(b"small")
    assert os.path.getsize(path) == 1024
    with DurableState(path) as s:  # the file's own slot size, not the default
        assert s.slot_size == 512 and s.load() == b"small"
    with pytest.raises(InvalidArgumentError, match="512-byte slots, not 4096"):
        DurableState(path, slot_size=4096)


@pytest.mark.parametrize("bad", [0, 100, 511, 513, 1000, durable.MAX_SLOT_SIZE + 512, True, "4096"])
def test_bad_slot_sizes_are_refused(path, bad):
    with pytest.raises(InvalidArgumentError, match="slot_size"):
        DurableState(path, slot_size=bad)
    assert not os.path.exists(path)


def test_closed_handle_raises(path):
    s = DurableState(path)
    s.store(b"v")
    s.close()
    s.close()  # idempotent
    assert s.closed and "closed" in repr(s)
    with pytest.raises(StoreClosedError, match="closed"):
        s.load()
    with pytest.raises(StoreClosedError):
        s.store(b"w")
    assert isinstance(StoreClosedError("x"), ValueError)


def test_lock_is_exclusive_across_handles_and_processes(path):
    with DurableState(path) as s:
        with pytest.raises(StoreLockedError, match="locked") as info:
            DurableState(path)
        assert info.value.errno == errno.EWOULDBLOCK
        code = textwrap.dedent(
            f"""
            from engine.durable import DurableState
            from engine import StoreLockedError
            try:
                DurableState({str(path)!r})
            except StoreLockedError as e:
                print("locked:", e)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.startswith("locked:"), out.stderr
        s.store(b"still mine")
    assert load(path) == b"still mine"  # released on close


def test_missing_directory_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError) as info:
        DurableState(tmp_path / "nope" / "state")
    assert info.value.errno == errno.ENOENT


def test_a_link_to_a_missing_file_is_a_storage_error_not_a_hang(tmp_path):
    # Creating the file found its name taken (by the link) and started over, for ever: a
    # node whose IDENTITY links to a volume not mounted never started and never said why.
    import threading

    link = tmp_path / "state"
    link.symlink_to(tmp_path / "unmounted" / "state")
    raised = []
    opener = threading.Thread(target=lambda: raised.append(_error_of(DurableState, link)),
                              daemon=True)
    opener.start()
    opener.join(timeout=10)
    assert not opener.is_alive(), "opening a dangling link never returned"
    assert isinstance(raised[0], StorageError) and raised[0].errno == errno.ENOENT
    assert "symbolic link to a missing file" in str(raised[0])
    assert os.path.islink(link) and not os.path.lexists(str(link) + ".tmp")


def _error_of(fn, *args) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    return None


def test_a_leftover_temporary_file_is_reused(path):
    """A creation that crashed before its rename leaves NAME.tmp and no NAME: nothing stored."""
    with open(str(path) + ".tmp", "wb") as f:
        f.write(b"half-made garbage")
    assert load(path) is None
    assert not os.path.exists(str(path) + ".tmp")
    assert os.path.getsize(path) == 2 * SLOT


def test_failed_sync_leaves_the_value_and_the_handle_usable(path, monkeypatch):
    with DurableState(path) as s:
        s.store(b"old")

        def eio(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(durable.os, "fdatasync", eio)
        with pytest.raises(StorageError) as info:
            s.store(b"new")
        assert info.value.errno == errno.EIO and str(path) in str(info.value)
        assert s.load() == b"old" and s.sequence == 1
        monkeypatch.undo()
        s.store(b"newer")
        assert s.sequence == 2
    assert load(path) == b"newer"


def test_disk_full_is_reported_as_such(path, monkeypatch):
    with DurableState(path) as s:

        def enospc(fd, data, offset):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(durable.os, "pwrite", enospc)
        with pytest.raises(DiskFullError):
            s.store(b"v")
        assert s.load() is None


# ---------------------------------------------------------------- torn writes and damage


def _newer_slot_layout(path, newer_slot):
    """Stores so that the newest value sits in ``newer_slot``; returns (older, newer)."""
    if newer_slot == 1:
        stored(path, b"first", b"older value", b"newer value")  # seq 3 -> slot 1
    else:
        stored(path, b"older value", b"newer value")  # seq 2 -> slot 0
    return b"older value", b"newer value"


TORN = {
    # The newer slot's write reached the disk only in part.
    "header zeroed": lambda p, base: zero_range(p, base, base + SLOT_HEADER_SIZE),
    "payload zeroed": lambda p, base: zero_range(p, base + SLOT_HEADER_SIZE, base + 40),
    "checksum flipped": lambda p, base: flip_byte(p, base + SLOT_HEADER_SIZE + 11),
    "payload bit flipped": lambda p, base: flip_byte(p, base + SLOT_HEADER_SIZE + 3, 0x10),
    "sequence flipped": lambda p, base: flip_byte(p, base + 16),
    "length flipped": lambda p, base: flip_byte(p, base + 24, 0x40),
    "magic flipped": lambda p, base: flip_byte(p, base),
    "only the first sector": lambda p, base: write_at(p, base + 20, b"\xee" * 100),
    "whole slot zeroed": lambda p, base: zero_range(p, base, base + SLOT),
}


@pytest.mark.parametrize("newer_slot", [0, 1])
@pytest.mark.parametrize("damage", sorted(TORN))
def test_a_torn_newer_slot_falls_back_to_the_older_value(path, newer_slot, damage):
    older, _ = _newer_slot_layout(path, newer_slot)
    TORN[damage](path, newer_slot * SLOT)
    with DurableState(path) as s:
        assert s.load() == older
        # The next store overwrites the damaged slot and wins.
        s.store(b"after")
        assert s.sequence % 2 == newer_slot
    assert load(path) == b"after"


@pytest.mark.parametrize(
    "cut", [SLOT, SLOT + 10, SLOT + SLOT_HEADER_SIZE + 5, SLOT + SLOT_OVERHEAD + 10]
)
def test_a_truncated_newer_slot_1_falls_back_to_slot_0(path, cut):
    """Cut inside slot 1's header, payload or checksum (b"newer value" ends at 32 + 11)."""
    older, _ = _newer_slot_layout(path, 1)
    truncate(path, cut)
    assert load(path) == older
    with DurableState(path) as s:
        s.store(b"after")  # rewrites slot 1 whole
    assert os.path.getsize(path) == 2 * SLOT
    assert load(path) == b"after"


def test_a_cut_only_through_the_zero_fill_loses_nothing(path):
    _, newer = _newer_slot_layout(path, 1)
    truncate(path, SLOT + SLOT_OVERHEAD + len(newer))
    assert load(path) == newer


def test_damage_to_the_older_slot_does_not_matter(path):
    _, newer = _newer_slot_layout(path, 1)
    flip_byte(path, 0 + SLOT_HEADER_SIZE + 2)
    assert load(path) == newer


def test_zero_fill_after_the_checksum_is_not_read(path):
    _, newer = _newer_slot_layout(path, 1)
    write_at(path, SLOT + 200, b"\xff" * 50)
    assert load(path) == newer


def test_a_torn_first_store_falls_back_to_nothing_stored(path):
    """Slot 0 holds "nothing stored" from creation, so even the first store can tear."""
    stored(path, b"first")
    zero_range(path, SLOT + SLOT_HEADER_SIZE, SLOT + SLOT_HEADER_SIZE + 3)
    with DurableState(path) as s:
        assert s.load() is None and s.sequence == 0
        s.store(b"again")
    assert load(path) == b"again"


def test_a_torn_slot_0_of_a_non_default_slot_size(path):
    """Slot 1 is found where its own slot-size field says it starts, even in a short file."""
    stored(path, b"a", b"b", slot_size=8192)  # b is seq 2, in slot 0
    zero_range(path, 0, 64)
    truncate(path, 8192 + 100)
    with DurableState(path) as s:
        assert s.slot_size == 8192 and s.load() == b"a"
        s.store(b"c")
    assert load(path) == b"c"


def test_both_slots_bad_is_corruption_naming_the_file(path):
    stored(path, b"one", b"two")
    flip_byte(path, SLOT_HEADER_SIZE + 1)
    flip_byte(path, SLOT + SLOT_HEADER_SIZE + 1)
    with pytest.raises(CorruptStateError) as info:
        DurableState(path)
    err = info.value
    assert str(path) in str(err) and err.path == str(path) and err.offset == 0
    assert "checksum mismatch" in str(err)
    assert isinstance(err, OSError) and isinstance(err, MeridianError)
    assert err.errno == errno.EIO


def test_the_only_value_damaged_beside_an_empty_slot_is_corruption(path):
    """Slot 1 damaged and slot 0's creation record damaged too: nothing to fall back on."""
    stored(path, b"one")
    zero_range(path, 0, 8)
    flip_byte(path, SLOT + 30)
    with pytest.raises(CorruptStateError, match="no valid slot"):
        DurableState(path)


@pytest.mark.parametrize("size", [0, 100, SLOT, 2 * SLOT])
def test_a_file_of_zeros_is_corruption_not_a_new_file(path, size):
    """This code never leaves a blank file at NAME (it creates by rename): one means damage,
    and reading it as "nothing stored" could make a node forget its vote."""
    with open(path, "wb") as f:
        f.write(bytes(size))
    with pytest.raises(CorruptStateError, match="no valid slot") as info:
        DurableState(path)
    assert info.value.path == str(path)


def test_a_file_of_another_format_version_is_refused_not_rolled_back(path):
    stored(path, b"a", b"b", b"c")  # c in slot 1
    body = b"MERIDSTA" + struct.pack("<IIQI", 2, SLOT, 5, 1) + b"z"
    write_at(path, SLOT, body + struct.pack("<I", ref.mask(ref.crc32c(body))))
    with pytest.raises(CorruptStateError, match="format version 2") as info:
        DurableState(path)
    assert info.value.offset == SLOT


def test_a_newer_slot_of_another_layout_is_refused_not_taken_for_a_torn_one(path):
    """A newer format version may keep its length and checksum elsewhere: its slot must not
    read as a torn slot of this version, which would roll the state back to the other slot."""
    stored(path, b"a", b"b", b"c")  # b:2 in slot 0, c:3 in slot 1
    # Version 2 with, say, a 64-bit sequence and length and the checksum at the slot's end.
    body = b"MERIDSTA" + struct.pack("<IIQQ", 2, SLOT, 4, 1) + b"d"
    write_at(path, SLOT, body)
    write_at(path, 2 * SLOT - 4, struct.pack("<I", ref.mask(ref.crc32c(body))))
    image = path.read_bytes()
    with pytest.raises(CorruptStateError, match="slot 1 has format version 2") as info:
        DurableState(path)
    assert info.value.path == str(path) and info.value.offset == SLOT
    assert path.read_bytes() == image


def test_a_slot_copied_into_the_wrong_place_is_not_trusted(path):
    """A valid slot image at the wrong index (sequence parity) is not a valid slot."""
    stored(path, b"a", b"b", b"c")  # a:1 (overwritten by c), b:2 slot 0, c:3 slot 1
    write_at(path, 0, slot_bytes(path, 1))  # slot 1's image (seq 3) now in slot 0 as well
    flip_byte(path, SLOT + SLOT_HEADER_SIZE)  # and the real slot 1 torn
    with pytest.raises(CorruptStateError):
        DurableState(path)


def test_misuse_raises_library_errors(path):
    with pytest.raises(StorageError):
        DurableState(path.parent)  # a directory
    with DurableState(path) as s:
        with pytest.raises(RecordTooLargeError):
            s.store(bytes(10**6))
        assert s.load() is None


# ---------------------------------------------------------------- a model


def _flatten(ops):
    """("then", store, damage) stands for store, damage, reopen: the torn-newest case."""
    out = []
    for op in ops:
        out.extend(op[1:] + (("reopen",),) if op[0] == "then" else (op,))
    return out


_damage_op = st.tuples(
    st.just("damage"),
    st.integers(0, 1),
    st.sampled_from(["flip", "zero", "garbage", "truncate", "pad"]),
    st.one_of(st.integers(0, 96), st.integers(0, 511)),  # mostly in the used part of a slot
    st.integers(1, 512),
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.binary(max_size=64)),
        _damage_op,
        st.tuples(st.just("reopen")),
        st.tuples(st.just("store"), st.binary(max_size=64)).flatmap(
            lambda store: st.tuples(st.just("then"), st.just(store), _damage_op)
        ),
    ),
    max_size=25,
).map(_flatten)


def _damage(path, index, kind, start, length, slot_size):
    base = index * slot_size
    size = os.path.getsize(path)
    if kind == "truncate" and index == 1:  # cuts only slot 1
        truncate(path, min(size, base + start % slot_size))
        return
    lo = base + start % slot_size
    hi = min(base + slot_size, lo + length)
    if lo >= size:
        return
    hi = min(hi, size)
    with open(path, "rb") as f:
        f.seek(lo)
        old = f.read(hi - lo)
    if kind == "flip":
        new = bytes(b ^ 0x5A for b in old[:1]) + old[1:]
    elif kind == "garbage":
        new = bytes((b * 7 + i * 13 + 1) & 0xFF for i, b in enumerate(old))
    elif kind == "pad":  # damage only inside the zero fill past the checksum
        return
    else:  # zero, and truncate of slot 0 (which would cut slot 1 too): a torn write's zeros
        new = bytes(len(old))
    write_at(path, lo, new)


def _of_another_version(slot: bytes) -> bool:
    return (len(slot) >= SLOT_HEADER_SIZE and slot[:8] == durable.MAGIC
            and struct.unpack_from("<I", slot, 8)[0] != durable.FORMAT_VERSION)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops)
def test_model_stores_and_single_slot_damage(ops):
    """Against a model of the two slots: after damage, open returns the newest value whose
    slot is intact — the last stored or the one before — or raises when no slot is intact.

    The model knows no format but the magic and version: a slot is intact when the bytes its
    store left (up to the end of its checksum, ``SLOT_OVERHEAD + len(payload)``) are unchanged,
    and a version field changed under an intact magic is refused whichever slot it is in.
    """
    slot_size = 512  # small slots: damage lands in the used part more often
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state")
        s = DurableState(path, slot_size=slot_size)
        # slot index -> (sequence, value, bytes written by its last store)
        written = {0: (0, None, slot_bytes(path, 0, slot_size)[:SLOT_OVERHEAD])}
        history = [None]  # values in store order
        current = 0  # sequence of the value the open handle holds
        # A slot that open fell back from keeps its bytes until the next store overwrites it:
        # damage undone by a later flip of the same byte makes it valid again.
        fallen = None
        try:
            for op in ops:
                if op[0] == "store":
                    fallen = None
                    s.store(op[1])
                    current += 1
                    history.append(op[1])
                    image = slot_bytes(path, current % 2, slot_size)
                    written[current % 2] = (current, op[1], image[: SLOT_OVERHEAD + len(op[1])])
                    assert s.load() == op[1] and s.sequence == current
                elif op[0] == "damage":
                    _damage(path, *op[1:], slot_size)
                else:
                    s.close()
                    intact = {}
                    for i, (seq, value, image) in written.items():
                        if slot_bytes(path, i, slot_size)[: len(image)] == image:
                            intact[seq] = value
                    if fallen is not None:
                        seq, value, image = fallen
                        if slot_bytes(path, seq % 2, slot_size)[: len(image)] == image:
                            intact[seq] = value
                    if any(_of_another_version(slot_bytes(path, i, slot_size)) for i in (0, 1)):
                        # Its version changed under an intact magic: no torn write does that,
                        # and another version's layout cannot be judged, so nothing is trusted.
                        event("another format version: refused")
                        with pytest.raises(CorruptStateError, match="format version"):
                            DurableState(path)
                        return
                    if not intact:
                        event("no intact slot: corruption")
                        with pytest.raises(CorruptStateError):
                            DurableState(path)
                        return
                    s = DurableState(path)
                    newest = max(intact)
                    assert s.sequence == newest and s.load() == intact[newest]
                    if fallen is not None and newest == fallen[0]:
                        event("damage undone: the newer slot is valid again")
                        history.append(fallen[1])
                        written[newest % 2] = fallen
                        fallen = None
                        current = newest
                        continue
                    # Exactly the last stored value, or the one before it.
                    assert s.load() in history[-2:]
                    event("fell back" if newest != current else "newest intact")
                    if newest != current:
                        assert s.load() == history[-2] and newest == current - 1
                        # The handle now continues from the older value.
                        history.pop()
                        fallen = written.pop(current % 2)
                    current = newest
        finally:
            s.close()
