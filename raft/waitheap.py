"""Waits for a value that only rises (an applied index, a closed timestamp, the time), as a
heap.

The driver's reads waiting for the apply (:meth:`raft.driver.RaftNode.wait_applied`), a
replica's stale reads waiting for a closed timestamp (``engine.replica``) and a client
connection's calls waiting for their deadline (``engine.rpc``) keep their waiters here. A waiter
whose caller gives up (its timeout, or its answer) leaves at once, in constant time: removing
its entry would be a pass over the heap, and the waits on a stuck replica all give up, one after
another -- as many passes over as many entries, with the event loop (every group of the process)
stalled meanwhile. So a waiter that leaves is only marked, and the heap is rebuilt without the
marked ones once they are half of it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["WaitHeap"]

T = TypeVar("T")


class WaitHeap(Generic[T]):
    """Waiters (any objects) keyed by the value each waits for; not thread-safe."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._left: set[int] = set()  # ids of entries still in the heap whose waiter left
        self._ids = itertools.count()

    def __len__(self) -> int:
        """The waiters still waiting."""
        return len(self._heap) - len(self._left)

    def push(self, value: float, waiter: T) -> int:
        """Adds ``waiter``, waiting for ``value``; returns its id, for :meth:`leave`."""
        waiter_id = next(self._ids)
        heapq.heappush(self._heap, (value, waiter_id, waiter))
        return waiter_id

    def leave(self, waiter_id: int) -> None:
        """Forgets the waiter ``waiter_id`` (still in the heap: not popped yet)."""
        self._left.add(waiter_id)
        if 2 * len(self._left) > len(self._heap):
            self._heap[:] = [e for e in self._heap if e[1] not in self._left]
            heapq.heapify(self._heap)
            self._left.clear()

    def lowest(self) -> float:
        """The lowest value a waiter still waiting waits for (``math.inf`` when none does)."""
        heap = self._heap
        while heap and heap[0][1] in self._left:
            self._left.discard(heapq.heappop(heap)[1])
        return heap[0][0] if heap else math.inf

    def pop_up_to(self, value: float) -> Iterator[T]:
        """Takes out and yields the waiters waiting for ``value`` or less, lowest first."""
        heap = self._heap
        while heap and heap[0][0] <= value:
            _, waiter_id, waiter = heapq.heappop(heap)
            if waiter_id in self._left:
                self._left.discard(waiter_id)
            else:
                yield waiter

    def drain(self) -> list[T]:
        """Takes out every waiter still waiting."""
        waiting = [w for _, i, w in self._heap if i not in self._left]
        self._heap.clear()
        self._left.clear()
        return waiting
