"""A pure-Python reference of the log format (``native/FORMAT.md``).

Nothing at run time uses this module: it exists so that tests can prove that the C log store
writes exactly these bytes and recovers exactly as this code says (STYLE §4), and so that a
person can read the format and the recovery rule in a few dozen lines. It is slow on purpose:
every byte goes through plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CorruptLogError

SEGMENT_HEADER_SIZE = 32
RECORD_HEADER_SIZE = 9
RECORD_TYPE_FULL = 1
MAX_RECORD_SIZE = 64 << 20
SECTOR_SIZE = 512
WITNESS_CRC_BUDGET = 256 << 20
WITNESS_CHECKPOINT = 4096  # LS_WITNESS_CHECKPOINT
WITNESS_SOLVE_COST = 4096  # LS_WITNESS_SOLVE_COST
SEGMENT_MAGIC = b"MERIDLOG"
SEGMENT_VERSION = 1
PAGE = 4096


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), extending ``crc``; bit by bit from the polynomial's table."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """LevelDB's mask: rotate right by 15 bits and add a constant (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def segment_name(first_pos: int) -> str:
    return f"{first_pos:020d}.log"


def segment_header(first_pos: int) -> bytes:
    head = SEGMENT_MAGIC + SEGMENT_VERSION.to_bytes(4, "little") + bytes(4)
    head += first_pos.to_bytes(8, "little") + bytes(4)
    return head + mask(crc32c(head)).to_bytes(4, "little")


def frame(pos: int, payload: bytes) -> bytes:
    """A record as it lies on disk: masked CRC, length, type, payload.

    The CRC covers the position (u64 little-endian) — not stored, implied by where the record
    sits — then the length and type bytes, then the payload.
    """
    len_type = len(payload).to_bytes(4, "little") + bytes([RECORD_TYPE_FULL])
    crc = mask(crc32c(len_type + payload, crc32c(pos.to_bytes(8, "little"))))
    return crc.to_bytes(4, "little") + len_type + payload


# ---------------------------------------------------------------------------- writing


@dataclass
class _Segment:
    first_pos: int
    data: bytearray
    end: int = SEGMENT_HEADER_SIZE
    offsets: list[int] = field(default_factory=list)


class ReferenceLog:
    """The files a log directory holds after a sequence of operations.

    Mirrors ``native/logstore.c`` decision for decision (when to roll, how big a new segment
    is, what truncation zeroes) so that tests can compare directories byte for byte.
    """

    def __init__(self, segment_size: int, initial_pos: int = 1) -> None:
        self.segment_size = segment_size
        self.segments: list[_Segment] = []
        self.next_pos = initial_pos
        self._create(initial_pos, 0)

    def _create(self, first_pos: int, min_bytes: int) -> None:
        size = self.segment_size
        if SEGMENT_HEADER_SIZE + min_bytes > size:
            size = (SEGMENT_HEADER_SIZE + min_bytes + PAGE - 1) // PAGE * PAGE
        data = bytearray(size)
        data[:SEGMENT_HEADER_SIZE] = segment_header(first_pos)
        self.segments.append(_Segment(first_pos, data))

    @property
    def first_pos(self) -> int:
        return self.segments[0].first_pos

    def append(self, records: list[bytes]) -> range:
        first = self.next_pos
        if not records:
            return range(first, first)
        framed = [frame(first + i, r) for i, r in enumerate(records)]
        total = sum(map(len, framed))
        seg = self.segments[-1]
        if seg.offsets and seg.end + total > len(seg.data):
            self._create(first, total)
            seg = self.segments[-1]
        blob = b"".join(framed)
        if seg.end + total > len(seg.data):  # an empty segment takes any batch
            seg.data.extend(bytes(seg.end + total - len(seg.data)))
        seg.data[seg.end : seg.end + total] = blob
        o = seg.end
        for f in framed:
            seg.offsets.append(o)
            o += len(f)
        seg.end += total
        self.next_pos += len(records)
        return range(first, self.next_pos)

    def truncate_after(self, pos: int) -> None:
        if not (self.first_pos - 1 <= pos < self.next_pos):
            raise IndexError(pos)
        target = pos + 1
        if target == self.next_pos:
            return
        # The segment holding `target` stays (emptied from it on); later ones go.
        while len(self.segments) > 1 and self.segments[-1].first_pos > target:
            self.segments.pop()
        seg = self.segments[-1]
        keep = target - seg.first_pos
        cut = seg.offsets[keep]
        seg.data[cut : seg.end] = bytes(seg.end - cut)
        seg.end = cut
        del seg.offsets[keep:]
        self.next_pos = target

    def drop_before(self, pos: int) -> None:
        if pos > self.next_pos:
            raise IndexError(pos)
        while len(self.segments) > 1 and self.segments[1].first_pos <= pos:
            self.segments.pop(0)

    def files(self) -> dict[str, bytes]:
        return {segment_name(s.first_pos): bytes(s.data) for s in self.segments}

    def records(self) -> list[tuple[int, bytes]]:
        out = []
        for s in self.segments:
            for i, o in enumerate(s.offsets):
                n = int.from_bytes(s.data[o + 4 : o + 8], "little")
                out.append((s.first_pos + i, bytes(s.data[o + 9 : o + 9 + n])))
        return out


# ---------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Recovered:
    """What opening a log directory yields.

    ``first_pos``/``next_pos`` bound the records; ``records`` are ``(position, payload)``;
    ``files`` are the segment files as they are after recovery (a torn tail zeroed).
    """

    first_pos: int
    next_pos: int
    records: tuple[tuple[int, bytes], ...]
    files: dict[str, bytes]


def _expected(buf: bytes, o: int, pos: int) -> tuple[int, bytes] | None:
    """``(payload length, checksum bytes)`` a record for ``pos`` at offset ``o`` must carry,
    from its header and payload as they are; None if its header is not one or it does not
    fit in ``buf``."""
    if o + RECORD_HEADER_SIZE > len(buf):
        return None
    n = int.from_bytes(buf[o + 4 : o + 8], "little")
    if buf[o + 8] != RECORD_TYPE_FULL or n > MAX_RECORD_SIZE:
        return None
    if o + RECORD_HEADER_SIZE + n > len(buf):
        return None
    want = mask(crc32c(buf[o + 4 : o + 9 + n], crc32c(pos.to_bytes(8, "little"))))
    return n, want.to_bytes(4, "little")


def _valid_at(buf: bytes, o: int, pos: int) -> int | None:
    """Payload length of a valid record for ``pos`` at offset ``o``, or None."""
    expected = _expected(buf, o, pos)
    if expected is None or expected[1] != buf[o : o + 4]:
        return None
    return expected[0]


def _find_witness(buf: bytes, g: int, o: int, bad_pos: int) -> int | None:
    """Smallest offset after ``o`` where a valid record for a position after ``bad_pos``
    starts (at most ``bad_pos + (w - o) // RECORD_HEADER_SIZE``: the records from ``bad_pos``
    on each take a header at least).

    Returns None when there is none; raises ``_Exhausted`` past the budget, which counts what
    the C code checksums: per candidate, the bytes from the checkpoint before its length field
    and from the checkpoint before the end of its checksummed range (``g`` at most: the zeros
    after it cost a shift), checkpoints lying every ``WITNESS_CHECKPOINT`` bytes from ``o``, and
    ``WITNESS_SOLVE_COST`` for finding the one position its checksum can be for.
    """
    budget = WITNESS_CRC_BUDGET
    w = o + 1
    while w + RECORD_HEADER_SIZE <= len(buf):
        t = buf.find(RECORD_TYPE_FULL, w + 8)
        if t < 0:
            return None
        w = t - 8
        n = int.from_bytes(buf[w + 4 : w + 8], "little")
        last_q = bad_pos + (w - o) // RECORD_HEADER_SIZE
        if n <= MAX_RECORD_SIZE and w + RECORD_HEADER_SIZE + n <= len(buf) and last_q > bad_pos:
            m = min(w + RECORD_HEADER_SIZE + n, g)
            cost = (w + 4 - o) % WITNESS_CHECKPOINT + (m - o) % WITNESS_CHECKPOINT
            cost += WITNESS_SOLVE_COST
            if budget < cost:
                raise _Exhausted
            budget -= cost
            for q in range(bad_pos + 1, last_q + 1):
                if _valid_at(buf, w, q) is not None:
                    return w
        w += 1
    return None


class _Exhausted(Exception):
    pass


def _lost_head_explains(buf: bytes, o: int, b: int, pos: int) -> bool:
    """Whether losing the rest of o's sector (all zero, ``b`` its end) explains the bad record:
    with fewer than 4 bytes there (only low checksum bytes), the checksum recomputed from the
    rest of the record must match the checksum bytes stored past ``b``."""
    if b - o >= 4:
        return True
    expected = _expected(buf, o, pos)
    return expected is not None and expected[1][b - o :] == buf[b : o + 4]


def _looks_torn(buf: bytes, o: int, w: int, pos: int) -> bool:
    """The rest of o's sector is zero and that explains the record at o (position ``pos``),
    or a sector wholly inside [o, w) is zero."""
    b = (o // SECTOR_SIZE + 1) * SECTOR_SIZE
    if b <= w and not any(buf[o:b]) and _lost_head_explains(buf, o, b, pos):
        return True
    zero = bytes(SECTOR_SIZE)
    s = b
    while s + SECTOR_SIZE <= w:
        if buf[s : s + SECTOR_SIZE] == zero:
            return True
        s += SECTOR_SIZE
    return False


def _nonzero_end(buf: bytes, start: int) -> int:
    return max(start, len(buf.rstrip(b"\0")))


def recover(files: dict[str, bytes], dirname: str = ".") -> Recovered:
    """Recovers a log from its segment files (name -> content), as ``LogStore`` does on open.

    Raises:
        CorruptLogError: with the path (``dirname/name``) and offset the C store reports.
    """
    names = sorted(n for n in files if len(n) == 24 and n.endswith(".log")
                   and n[:20].isascii() and n[:20].isdigit())
    names.sort(key=lambda n: int(n[:20]))
    out_files = dict(files)
    records: list[tuple[int, bytes]] = []
    if not names:
        return Recovered(1, 1, (), {})
    first = int(names[0][:20])
    if first == 0:
        path = f"{dirname}/{names[0]}"
        raise CorruptLogError(f"segment {path} names position 0", path, 0)
    pos = first
    for i, name in enumerate(names):
        path = f"{dirname}/{name}"
        seg_first = int(name[:20])
        buf = files[name]
        if seg_first != pos:
            raise CorruptLogError(
                f"segment {path} starts at position {seg_first} but the log before it ends at "
                f"position {pos - 1}: a segment is missing",
                path,
                0,
            )
        if len(buf) < SEGMENT_HEADER_SIZE:
            raise CorruptLogError(f"segment {path} is shorter than its header", path, 0)
        if buf[:SEGMENT_HEADER_SIZE] != segment_header(seg_first):
            raise CorruptLogError(f"segment {path} has a bad header", path, 0)
        o = SEGMENT_HEADER_SIZE
        while (n := _valid_at(buf, o, pos)) is not None:
            records.append((pos, bytes(buf[o + 9 : o + 9 + n])))
            o += RECORD_HEADER_SIZE + n
            pos += 1
        g = _nonzero_end(buf, o)
        if g == o:
            continue
        if i + 1 < len(names):
            raise CorruptLogError(f"corrupt record at offset {o} of {path}", path, o)
        try:
            w = _find_witness(buf, g, o, pos)
        except _Exhausted:
            raise CorruptLogError(f"bad record at offset {o} of {path}", path, o) from None
        if w is None or _looks_torn(buf, o, w, pos):
            out_files[name] = bytes(buf[:o]) + bytes(g - o) + bytes(buf[g:])
            continue
        raise CorruptLogError(f"checksum mismatch at offset {o} of {path}", path, o)
    return Recovered(first, pos, tuple(records), out_files)
