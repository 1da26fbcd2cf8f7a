"""Small helpers for log store tests: corrupting files the way disks and crashes do
(after LevelDB's log_test.cc)."""

from __future__ import annotations

import os

from engine import _logformat as ref

HEADER = ref.SEGMENT_HEADER_SIZE
REC = ref.RECORD_HEADER_SIZE


def segments(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".log"))


def record_offsets(sizes: list[int]) -> list[int]:
    """Offsets of records with these payload sizes written back to back into one segment."""
    out, o = [], HEADER
    for n in sizes:
        out.append(o)
        o += REC + n
    return out


def flip_byte(path, offset: int, xor: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def write_at(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def zero_range(path, start: int, stop: int) -> None:
    write_at(path, start, bytes(stop - start))


def truncate(path, size: int) -> None:
    os.truncate(path, size)


def read_dir(path) -> dict[str, bytes]:
    out = {}
    for n in segments(path):
        with open(os.path.join(path, n), "rb") as f:
            out[n] = f.read()
    return out


def write_dir(path, files: dict[str, bytes]) -> None:
    for n in segments(path):
        os.unlink(os.path.join(path, n))
    for n, data in files.items():
        with open(os.path.join(path, n), "wb") as f:
            f.write(data)
