"""The Raft log as the core sees it: a compacted prefix plus the entries after it, in memory.

Indexes (etcd's ``raftLog``, flattened into one list because the whole uncompacted log is kept in
memory; the driver persists it and rebuilds it on restart)::

    offset         first_index ........ persisted ..... handed_out ...... last_index
      |<- compacted ->|<--- durable locally --->|<- given to the driver, not yet durable ->|

- ``offset``/``offset_term``: the last compacted entry (0/0 for a fresh log). Its term is kept so
  that an append right after it can be checked.
- ``persisted``: the highest index known durable on this node (after ``advance``).
- ``unstable``: the first index not yet handed to the driver for persistence.
- ``committed``: known durable on a quorum; ``applied``: applied to the state machine;
  ``applying``: handed to the driver for applying, not yet acknowledged.

Entries are never rewritten at or below ``committed`` — trying is a :class:`RaftInvariantError`.
"""

from __future__ import annotations

from .types import Entry, RaftInvariantError

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "offset",
        "offset_term",
        "_entries",
        "committed",
        "applied",
        "applying",
        "persisted",
        "unstable",
    )

    def __init__(self, offset: int = 0, offset_term: int = 0, entries=(), committed: int = 0):
        self.offset = offset
        self.offset_term = offset_term
        self._entries: list[Entry] = []
        for i, e in enumerate(entries):
            if e.index != offset + 1 + i:
                raise RaftInvariantError(
                    f"restored log is not contiguous: entry {e.index} at position {offset + 1 + i}"
                )
            self._entries.append(e)
        self.persisted = self.last_index  # restored entries are durable
        self.unstable = self.last_index + 1
        if committed > self.last_index:
            raise RaftInvariantError(
                f"commit index {committed} is beyond the durable log's last index "
                f"{self.last_index}: acknowledged entries were lost"
            )
        self.committed = max(committed, offset)
        self.applied = offset
        self.applying = offset

    # ---------------------------------------------------------------- queries

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.offset + len(self._entries):
            return self._entries[index - self.offset - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``; at least one (if any) and then up to ``max_size`` data bytes."""
        if lo <= self.offset:
            raise RaftInvariantError(f"entries from {lo} requested, but the log starts at "
                                     f"{self.first_index}")
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        start, stop = lo - self.offset - 1, hi - self.offset - 1
        entries = self._entries
        if max_size is not None:
            # Counted before slicing: a follower far behind must not cost a copy of the whole
            # rest of the log per append sent to it.
            size = 0
            for n in range(start, stop):
                size += len(entries[n].data)
                if size > max_size and n > start:
                    return entries[start:n]
        return entries[start:stop]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as ours
        (§5.4.1: later term wins; same term, longer log wins)."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (or the compaction point).

        Used for fast backtracking: a follower that rejects an append answers with this hint, so
        the leader can skip a whole term of mismatching entries per round trip.
        """
        index = min(index, self.last_index)
        while index > self.offset:
            t = self.term_at(index)
            if t is not None and t <= term:
                break
            index -= 1
        return index

    # ---------------------------------------------------------------- changes

    def append(self, entries: list[Entry]) -> None:
        """Appends entries that directly follow the last one (the leader's own proposals)."""
        if entries and entries[0].index != self.last_index + 1:
            raise RaftInvariantError(
                f"append at {entries[0].index} after last index {self.last_index}"
            )
        self._entries.extend(entries)

    def maybe_append(self, prev_index: int, prev_term: int, committed: int,
                     entries: tuple[Entry, ...]) -> int | None:
        """A follower's AppendEntries (§5.3). Returns the last index now known to match the
        leader's log, or None if the entry before ``entries`` does not match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftInvariantError(
                    f"entry {conflict} conflicts with the committed log (commit "
                    f"{self.committed})"
                )
            start = conflict - (prev_index + 1)
            self._truncate_and_append(list(entries[start:]))
        self.commit_to(min(committed, last_new))
        return last_new

    def _find_conflict(self, entries) -> int:
        """The index of the first entry that is new or disagrees with ours (0 if none)."""
        for e in entries:
            if e.index <= self.offset:
                continue  # already compacted, hence committed, hence equal
            t = self.term_at(e.index)
            if t != e.term:
                return e.index
        return 0

    def _truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self.offset:
            raise RaftInvariantError(f"truncation at {first} below the compaction point")
        del self._entries[first - self.offset - 1 :]
        self._entries.extend(entries)
        # Anything from ``first`` on is new and must be (re)persisted before it counts.
        self.unstable = min(self.unstable, first)
        self.persisted = min(self.persisted, first - 1)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise RaftInvariantError(
                    f"commit {index} is beyond the last index {self.last_index}"
                )
            self.committed = index
            return True
        return False

    def restore(self, index: int, term: int) -> None:
        """Replaces the whole log by a snapshot ending at (index, term)."""
        self._entries.clear()
        self.offset = index
        self.offset_term = term
        self.committed = index
        self.unstable = index + 1
        self.persisted = min(self.persisted, index)

    def compact(self, index: int) -> None:
        """Drops entries up to and including ``index`` (which must be applied)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise RaftInvariantError(f"compaction at {index} beyond applied {self.applied}")
        term = self.term_at(index)
        del self._entries[: index - self.offset]
        self.offset = index
        self.offset_term = term

    # ------------------------------------------------------- handing out work

    def unstable_entries(self) -> list[Entry]:
        return self._entries[self.unstable - self.offset - 1 :] if self.unstable <= \
            self.last_index else []

    def next_committed(self, max_size: int) -> list[Entry]:
        """Committed, locally durable entries not yet handed out for applying."""
        hi = min(self.committed, self.persisted)
        if hi <= self.applying:
            return []
        return self.entries(self.applying + 1, hi + 1, max_size)
