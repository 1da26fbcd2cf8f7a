"""LogStore recovery under damage to synced segments: the store opens (cutting a torn tail) or
refuses with CorruptLogError, never crashes the process, never returns a record that was not
written at its position, and never silently drops a synced record that an intact later record
proves was not a torn tail (native/FORMAT.md, Recovery).

The damaged directories are opened by a child process, so that a crash in C shows as a failed
test rather than killing the test run."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from logtools import flip_byte, read_dir, segments, write_dir

from engine import CorruptLogError, LogStore
from engine import _logformat as ref

SEG = 4096
SECTOR = ref.SECTOR_SIZE

OPENER = r"""
import json, sys
from engine import CorruptLogError, LogStore
for line in sys.stdin:
    try:
        with LogStore(line.strip(), segment_size=int(sys.argv[1]), create=False) as log:
            out = {"records": [[p, r.hex()] for p, r in log.scan()]}
    except CorruptLogError as e:
        out = {"corrupt": [e.path, e.offset]}
    except Exception as e:
        out = {"other": repr(e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def opener():
    """Opens log directories in a child process, one per line; returns what it found."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OPENER, str(SEG)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def open_in_child(directory) -> dict:
        proc.stdin.write(f"{directory}\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"the process opening {directory} died with status {proc.wait()}"
        return json.loads(line)

    try:
        yield open_in_child
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def _nonzero(rng: random.Random, n: int) -> bytes:
    """Payload bytes without zeros: no sector of a record reads as never written."""
    return bytes(rng.randrange(1, 256) for _ in range(n))


def _synced_log(directory, rng: random.Random) -> dict[int, bytes]:
    written: dict[int, bytes] = {}
    with LogStore(directory, segment_size=SEG) as log:
        for _ in range(rng.randint(1, 10)):
            batch = [_nonzero(rng, rng.choice([0, 3, rng.randrange(700), rng.randrange(1600)]))
                     for _ in range(rng.randint(1, 4))]
            written.update(zip(log.append(batch), batch))
        log.sync()
    return written


def _layout(files: dict[str, bytes], written: dict[int, bytes]) -> list[tuple[str, int, int]]:
    """(segment name, offset, position) of every record, in order."""
    out = []
    for name in sorted(files):
        pos, o = int(name[:20]), ref.SEGMENT_HEADER_SIZE
        while pos in written and ref._valid_at(files[name], o, pos) is not None:
            out.append((name, o, pos))
            o += ref.RECORD_HEADER_SIZE + len(written[pos])
            pos += 1
    return out


damages = st.tuples(
    st.sampled_from(
        ["flip", "junk", "zero", "truncate", "header", "other_index", "junk_then_valid"]
    ),
    st.floats(0, 1),  # which segment (the last one most of the time)
    st.floats(0, 1),  # where in it
    st.integers(0, 2**32 - 1),  # everything else
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(damage=damages)
def test_damaged_synced_log_opens_safely_or_is_corruption(tmp_path_factory, opener, damage):
    """Bit flips, junk, zeroed ranges, truncation at any byte of the header or the records, a
    bad header, a header naming another position, junk followed by a valid later record."""
    kind, which, where, r = damage
    rng = random.Random(r)
    d = tmp_path_factory.mktemp("fz")
    written = _synced_log(d, rng)
    files = read_dir(d)
    names = sorted(files)
    name = names[-1] if which < 0.7 else names[int(which * len(names)) % len(names)]
    data = bytearray(files[name])
    layout = _layout(files, written)
    records_end = max([o + ref.RECORD_HEADER_SIZE + len(written[p]) for n, o, p in layout
                       if n == name], default=ref.SEGMENT_HEADER_SIZE)
    at = ref.SEGMENT_HEADER_SIZE + int(where * (records_end + 16 - ref.SEGMENT_HEADER_SIZE))
    at = min(at, len(data) - 1)
    zeroing = kind in ("zero", "truncate")
    if kind == "flip":
        data[at] ^= 1 << (r % 8)
        zeroing = data[at] == 0
    elif kind == "junk":
        junk = _nonzero(rng, rng.randint(1, 16))
        data[at : at + len(junk)] = junk
        del data[len(files[name]) :]
    elif kind == "zero":
        stop = min(len(data), at + rng.randint(1, 700))
        data[at:stop] = bytes(stop - at)
    elif kind == "truncate":
        at = int(where * (records_end + 1))  # any byte of the header or of the records
        del data[at:]
    elif kind == "header":
        at = int(where * ref.SEGMENT_HEADER_SIZE) % ref.SEGMENT_HEADER_SIZE
        data[at] ^= 1 << (r % 8)
    elif kind == "other_index":
        at = 0
        data[: ref.SEGMENT_HEADER_SIZE] = ref.segment_header(int(name[:20]) + 1 + r % 3)
    else:  # junk, then a valid record for a later position
        at = records_end
        pos = max(written) + 1 + r % 3
        blob = _nonzero(rng, rng.randint(1, 40)) + ref.frame(pos, _nonzero(rng, r % 30))
        data[at : at + len(blob)] = blob
    files[name] = bytes(data)
    write_dir(d, files)

    out = opener(d)
    assert "other" not in out, out["other"]
    if "corrupt" in out:
        return
    got = {p: bytes.fromhex(h) for p, h in out["records"]}
    positions = sorted(got)
    assert positions == list(range(min(got, default=0), max(got, default=-1) + 1))
    for p, record in got.items():
        assert written.get(p) == record, f"position {p} holds bytes never written there"
    for n, o, p in layout:
        if n < name or (n == name and o + ref.RECORD_HEADER_SIZE + len(written[p]) <= at):
            assert p in got, f"record {p}, synced and before the damage at {at}, was dropped"
    if not zeroing and kind in ("flip", "junk") and name == names[-1]:
        for n, o, p in layout:
            if n == name and o > at and ref._valid_at(files[name], o, p) is not None:
                assert p in got, (
                    f"record {p} is intact after the damage at offset {at}, yet the open "
                    "dropped it without an error"
                )


def _record_at_sector_end(k: int) -> tuple[bytes, bytes, bytes]:
    """Payloads of three records: the second starts k bytes before a sector boundary, and the
    low k bytes of its stored checksum are zero (as they are for 1 record in 256**k)."""
    first = bytes([7]) * (SECTOR - k - ref.SEGMENT_HEADER_SIZE - ref.RECORD_HEADER_SIZE)
    for i in range(1 << 20):
        second = i.to_bytes(4, "little") + bytes([9]) * 96
        if not any(ref.frame(2, second)[:k]):
            return first, second, bytes([5]) * 50
    raise AssertionError("no such payload")  # pragma: no cover


@pytest.mark.parametrize("k", [1, 2])
def test_a_bit_flip_in_a_record_whose_checksum_starts_with_zeros_at_a_sector_end_is_corruption(
    tmp_path, k
):
    """The rest of the record's first sector is zero only because its checksum's low bytes are:
    a bit flipped further into the record must not pass for a lost sector."""
    d = tmp_path / "log"
    with LogStore(d, segment_size=SEG) as log:
        log.append(list(_record_at_sector_end(k)))
    seg = d / segments(d)[0]
    flip_byte(seg, SECTOR + 40, 0x10)  # the payload of record 2
    with pytest.raises(CorruptLogError) as info:
        LogStore(d, segment_size=SEG)
    assert info.value.offset == SECTOR - k
    files = read_dir(d)
    with pytest.raises(CorruptLogError):
        ref.recover(files, str(d))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_lost_first_sector_holding_only_checksum_bytes_is_still_a_torn_tail(tmp_path, k):
    """The counterpart: the record's first sector did not reach the disk (its checksum bytes
    there read as zero) while the rest of the write did — an unsynced write, cut off."""
    d = tmp_path / "log"
    first = bytes([7]) * (SECTOR - k - ref.SEGMENT_HEADER_SIZE - ref.RECORD_HEADER_SIZE)
    second = bytes([9]) * 100
    while not all(ref.frame(2, second)[:k]):
        second = bytes([second[0] + 1]) + second[1:]
    with LogStore(d, segment_size=SEG) as log:
        log.append([first, second, bytes([5]) * 50])
    seg = d / segments(d)[0]
    with open(seg, "r+b") as f:
        f.seek(SECTOR - k)
        f.write(bytes(k))
    with LogStore(d, segment_size=SEG) as log:
        assert [p for p, _ in log.scan()] == [1]
