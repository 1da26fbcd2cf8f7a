"""What a leader knows about each follower's log, and how fast it may send (etcd ``tracker``).

A follower's progress is in one of three states (etcd-io/raft ``tracker/state.go``):

- PROBE: the leader does not know where the follower's log matches. It sends one append at a
  time and waits for the answer (or the next heartbeat response) before sending another.
- REPLICATE: the logs match up to ``match``; appends are pipelined optimistically (``next``
  advances as they are sent), at most ``max_inflight`` unacknowledged messages at once.
- SNAPSHOT: the follower needs entries the leader has compacted; the leader streams its
  snapshot in chunks and sends no appends until the follower has installed it.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["ProgressState", "Progress"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflights",
        "max_inflight",
        "recent_active",
        "pending_snapshot",
        "snapshot_offset",
        "snapshot_sent_tick",
        "heard_tick",
    )

    def __init__(self, next_index: int, max_inflight: int):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights: deque[int] = deque()  # last index of each unacknowledged append
        self.max_inflight = max_inflight
        self.recent_active = True
        self.pending_snapshot = 0  # index of the snapshot being sent (SNAPSHOT state)
        self.snapshot_offset = 0  # bytes of it the follower has acknowledged
        self.snapshot_sent_tick = 0  # the leader's tick count when the last chunk went out
        self.heard_tick = 0  # the leader's tick count when this follower last answered

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, {self.state.value}, "
                f"inflight={len(self.inflights)})")

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.state = state
        self.inflights.clear()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # The follower installed (or gave up on) the snapshot: resume after it.
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``; False if it tells nothing new."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejected append at ``rejected``; ``match_hint`` is the follower's (or the
        leader's refinement of its) guess at where the logs may match. False if stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an old rejection, overtaken by a later acknowledgement
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting on
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def sent_entries(self, last: int) -> None:
        """Entries up to ``last`` went out in one append."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflights.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
