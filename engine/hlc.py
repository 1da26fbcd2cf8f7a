"""Hybrid logical clock and clock-offset monitor (ARCH §5.1, §9).

Timestamps
----------
A timestamp is a plain ``int``: nanoseconds since the Unix epoch, with the logical part of a
hybrid logical clock folded into the low digits. A clock issues ``max(last + 1,
physical_now_ns)``, so a timestamp stays within nanoseconds of real time while the clock is
ahead of every message it has seen, and still orders totally when the physical clock stalls or
goes backwards: the "logical counter" is just the surplus over physical time. Timestamps fit in
a u64 and are used as they are for MVCC commit and read timestamps
(:data:`engine.mvcc.MIN_TS`..:data:`engine.mvcc.MAX_TS`); comparing two of them is an ``int``
comparison, and no pair of (wall, logical) fields ever has to be encoded.

Causality: every RPC carries its sender's timestamp, and the receiver calls
:meth:`HybridClock.update` with it before acting on the message. Every timestamp the receiver
issues afterwards is above the sender's, so "happened before" implies "smaller timestamp".

Why the offset limit matters
----------------------------
The transaction protocol's real-time guarantee (ARCH §5: a transaction that starts after
another committed sees it, from any region) holds only while physical clocks differ by at most
``max_clock_offset``. Two defences enforce the failure model (ARCH §9) instead of silently
leaving it:

- :meth:`HybridClock.update` refuses a timestamp more than ``max_offset_ns`` ahead of the local
  physical clock. Adopting it would drag this node's clock (and every node it talks to) into
  the future, beyond what the uncertainty interval covers; a peer that far ahead is broken.
- :class:`ClockOffsetMonitor` estimates each peer's offset from ping round trips. If a majority
  of recently measured peers are beyond the limit, the fault is probably this node's clock, and
  the node must stop serving rather than break the guarantees. If only a minority is, those
  peers are the ones at fault, and their own monitors will stop them.
- The monitor needs a round of pings to notice a physical clock that jumps forward, and in the
  meantime a leader would write the jump into its groups' logs (a closed or commit timestamp an
  hour ahead stays there: every later snapshot of the group is at least that far ahead, and
  no other node takes it). Given a monotonic clock, :class:`HybridClock` does not follow a
  jump forward beyond ``max_offset_ns``: it goes on from its last trusted reading, carried
  forward by the monotonic clock, until :meth:`HybridClock.trust_physical` says that the peers
  have measured the clock as it now is and found it right.

Example::

    clock = HybridClock(max_offset_ns=250_000_000)
    read_ts = clock.now()                  # begin a transaction
    clock.update(message.ts)               # on every received RPC
    assert clock.now() > message.ts

Nothing here sleeps or does I/O; the monitor does not even read a clock (the caller passes the
time in), so both are easy to drive deterministically in tests and in the simulator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .errors import InvalidArgumentError, MeridianError
from .mvcc import MAX_TS

__all__ = [
    "ClockOffsetError",
    "HybridClock",
    "ClockOffsetMonitor",
    "OffsetMeasurement",
]


class ClockOffsetError(MeridianError, RuntimeError):
    """Clocks are further apart than the configured maximum offset (ARCH §9).

    Raised when a received timestamp is too far ahead of the local physical clock, and when a
    majority of peers disagree with this node's clock by more than the maximum offset. Either
    way the system is outside its failure model: the node must not go on serving as if it were
    not. It is not retryable in the sense of a transaction conflict.
    """


def _ms(ns: int) -> str:
    """A nanosecond amount as milliseconds for messages: ``1_500_000`` -> ``'1.500 ms'``."""
    return f"{ns / 1_000_000:.3f} ms"


def _check_ns(name: str, value: object, *, positive: bool = False) -> int:
    """Validates a nanosecond argument: an ``int`` (not a bool), >= 0 (or > 0), <= MAX_TS."""
    if type(value) is not int:
        raise InvalidArgumentError(
            f"{name} must be an int of nanoseconds, got {type(value).__name__} {value!r}"
        )
    low = 1 if positive else 0
    if not low <= value <= MAX_TS:
        raise InvalidArgumentError(f"{name} must be in {low}..{MAX_TS}, got {value}")
    return value


class HybridClock:
    """A hybrid logical clock whose timestamps are ints of nanoseconds (ARCH §5.1).

    Invariant: every value returned by :meth:`now` or :meth:`update` is greater than every
    value returned before it and than every remote timestamp accepted before it; :attr:`last`
    is the largest of these.

    Args:
        physical: the physical clock, returning nanoseconds since the Unix epoch. Injected so
            that tests and the simulator can drive it (and skew it) deterministically.
        max_offset_ns: the largest clock offset the cluster tolerates
            (``ClusterConfig.max_clock_offset_ns``); remote timestamps further ahead than this
            are refused.
        monotonic: a clock that never jumps (nanoseconds, any origin), or None. When given,
            timestamps do not follow a jump forward of ``physical`` beyond ``max_offset_ns``
            (see :attr:`jumped_since`); the clock then runs on from its last trusted reading
            at the monotonic clock's pace.

    Raises:
        InvalidArgumentError: ``physical`` (or a ``monotonic`` given) is not callable, or
            ``max_offset_ns`` is not a positive int.

    Thread-safety: all methods may be called from any thread; a lock orders them, so
    timestamps stay unique and increasing across threads.
    """

    __slots__ = ("_physical", "_max_offset_ns", "_last", "_lock", "_monotonic", "_trusted",
                 "_jump")

    def __init__(
        self, physical: Callable[[], int] = time.time_ns, *, max_offset_ns: int,
        monotonic: Callable[[], int] | None = None,
    ) -> None:
        for name, clock in (("physical", physical), ("monotonic", monotonic)):
            if not (callable(clock) or (name == "monotonic" and clock is None)):
                raise InvalidArgumentError(
                    f"{name} must be a callable returning nanoseconds, "
                    f"got {type(clock).__name__}"
                )
        self._physical = physical
        self._monotonic = monotonic
        self._max_offset_ns = _check_ns("max_offset_ns", max_offset_ns, positive=True)
        self._last = 0
        self._lock = threading.Lock()
        # The last physical reading timestamps followed, with the monotonic time it was read
        # at; and while the physical clock is ahead of it by more than the maximum offset,
        # (how far ahead, monotonic time that jump was first seen).
        self._trusted: tuple[int, int] | None = None
        self._jump: tuple[int, int] | None = None

    @property
    def max_offset_ns(self) -> int:
        """The largest tolerated clock offset, in nanoseconds."""
        return self._max_offset_ns

    @property
    def last(self) -> int:
        """The largest timestamp issued or accepted so far (0 before the first)."""
        return self._last

    @property
    def jumped_since(self) -> int | None:
        """While timestamps do not follow the physical clock because it jumped forward
        (further than the maximum offset since the last trusted reading): the monotonic
        time the jump was first seen. None otherwise, and always without a monotonic clock.
        """
        jump = self._jump
        return None if jump is None else jump[1]

    def trust_physical(self) -> None:
        """Timestamps follow the physical clock as it now is, even after a jump forward: the
        caller knows it to be right (peers measured it after the jump, see
        :attr:`jumped_since`, and found it within the maximum offset of theirs)."""
        with self._lock:
            if self._monotonic is not None:
                self._trusted = (self.physical_ns(), self._monotonic_ns())
            self._jump = None

    def restore(self, ts: int) -> None:
        """Raises :attr:`last` to ``ts``, a timestamp issued or accepted before this clock
        existed (by the same node, before a restart), so that timestamps do not go back
        across the restart.

        Unlike :meth:`update`, it refuses no timestamp for being ahead of the physical clock:
        one that is says that the clock was ahead, or was stepped back since, and the
        timestamps go on from it all the same, as they would have without the restart.

        Raises:
            InvalidArgumentError: ``ts`` is not an int in ``0..MAX_TS``.
        """
        _check_ns("ts", ts)
        with self._lock:
            self._last = max(self._last, ts)

    def physical_ns(self) -> int:
        """Reads the physical clock, checking that it returns a usable value.

        Returns:
            Nanoseconds since the Unix epoch, as the physical clock reports them (not adjusted
            by the hybrid clock: it may be below :attr:`last`).

        Raises:
            InvalidArgumentError: the physical clock returned something other than an int in
                ``0..MAX_TS`` (a broken injected clock, not a runtime condition).
        """
        value = self._physical()
        if type(value) is not int or not 0 <= value <= MAX_TS:
            raise InvalidArgumentError(
                f"the physical clock must return an int of nanoseconds in 0..{MAX_TS}, "
                f"got {type(value).__name__} {value!r}"
            )
        return value

    def _monotonic_ns(self) -> int:
        """Reads the monotonic clock, checking that it returns an int of nanoseconds.

        Its readings are added to a trusted physical reading to give the time timestamps
        follow after a jump: a float there (``time.monotonic`` passed for
        ``time.monotonic_ns``) would make timestamps floats, which lose the low digits at
        today's magnitudes, so that ``last + 1`` no longer exceeds ``last``.

        Raises:
            InvalidArgumentError: the monotonic clock returned something other than an int.
        """
        value = self._monotonic()  # type: ignore[misc]
        if type(value) is not int:
            raise InvalidArgumentError(
                f"the monotonic clock must return an int of nanoseconds, "
                f"got {type(value).__name__} {value!r}"
            )
        return value

    def now(self) -> int:
        """Issues a timestamp: ``max(last + 1, physical now)``.

        Returns:
            A timestamp strictly greater than every one issued or accepted before, even if the
            physical clock went backwards.

        Raises:
            ClockOffsetError: the timestamp space is exhausted (:attr:`last` is ``MAX_TS``),
                which only a physical clock centuries ahead can cause.
            InvalidArgumentError: the injected physical (or monotonic) clock returned a bad value.
        """
        with self._lock:
            return self._tick(self._last, self._followed_ns())

    def update(self, remote_ts: int) -> int:
        """Takes in the timestamp carried by a received RPC, then issues a timestamp.

        The clock moves up to ``remote_ts`` if it is ahead, so that everything this node does
        after the message is ordered after the message (the HLC receive rule).

        Args:
            remote_ts: the sender's timestamp (an int in ``0..MAX_TS``).

        Returns:
            A timestamp strictly greater than ``remote_ts`` and than every timestamp issued or
            accepted before.

        Raises:
            ClockOffsetError: ``remote_ts`` is more than :attr:`max_offset_ns` ahead of this
                node's physical clock (as timestamps follow it, see :attr:`jumped_since`), or
                beyond ``MAX_TS`` (as far ahead as a clock can be: the wire carries up to
                ``2**64 - 1``). The clock is left unchanged: a peer that far ahead is outside
                the failure model (ARCH §9), and following it would push this node, and every
                node it talks to, into the future.
            InvalidArgumentError: ``remote_ts`` is not an int >= 0.
        """
        if type(remote_ts) is int and remote_ts > MAX_TS:
            raise ClockOffsetError(f"remote timestamp {remote_ts} is beyond the largest "
                                   f"timestamp ({MAX_TS}); refusing to move the clock forward")
        _check_ns("remote_ts", remote_ts)
        with self._lock:
            physical = self._followed_ns()
            ahead = remote_ts - physical
            if ahead > self._max_offset_ns:
                raise ClockOffsetError(
                    f"remote timestamp {remote_ts} is {_ms(ahead)} ahead of this node's "
                    f"physical clock ({physical}), beyond the maximum clock offset of "
                    f"{_ms(self._max_offset_ns)}; refusing to move the clock forward"
                )
            return self._tick(max(self._last, remote_ts), physical)

    def _followed_ns(self) -> int:
        """The physical time timestamps follow (the caller holds the lock): the physical
        clock, unless it is further ahead of the last trusted reading (carried forward by the
        monotonic clock) than the maximum offset; then that carried-forward reading. A jump
        back is followed (the timestamps themselves never go back)."""
        physical = self.physical_ns()
        if self._monotonic is None:
            return physical
        mono = self._monotonic_ns()
        if self._trusted is not None:
            expected = self._trusted[0] + (mono - self._trusted[1])
            jump = physical - expected
            if jump > self._max_offset_ns:
                if self._jump is None or abs(jump - self._jump[0]) > self._max_offset_ns:
                    self._jump = (jump, mono)  # a new jump, or another step since
                return min(max(expected, 0), MAX_TS)
        self._trusted = (physical, mono)
        self._jump = None
        return physical

    def _tick(self, floor: int, physical: int) -> int:
        """Issues ``max(floor + 1, physical)``; the caller holds the lock."""
        ts = max(floor + 1, physical)
        if ts > MAX_TS:
            raise ClockOffsetError(
                f"timestamp space exhausted: the clock is at {floor}, the largest timestamp is "
                f"{MAX_TS}"
            )
        self._last = ts
        return ts

    def __repr__(self) -> str:
        return f"HybridClock(last={self._last}, max_offset_ns={self._max_offset_ns})"


@dataclass(frozen=True, slots=True)
class OffsetMeasurement:
    """One estimate of a peer's clock offset, from a ping round trip.

    The peer read its clock at some moment between ``send_ns`` and ``recv_ns`` (local time),
    so its true offset lies in ``offset_ns ± uncertainty_ns``.

    Invariant: ``uncertainty_ns >= 0``.
    """

    peer: Hashable
    offset_ns: int
    """Peer clock minus local clock: positive when the peer is ahead."""
    uncertainty_ns: int
    """Half the round trip, rounded up: the true offset is within this of ``offset_ns``."""
    measured_at_ns: int
    """Local physical time the reply arrived; freshness is judged from it."""

    @property
    def certain_offset_ns(self) -> int:
        """The offset this measurement proves, either way: ``|offset| - uncertainty``, or 0."""
        return max(0, abs(self.offset_ns) - self.uncertainty_ns)


class ClockOffsetMonitor:
    """Decides from measured peer offsets whether this node's clock is still trustworthy.

    Fed with ping round trips (:meth:`record`), it keeps the newest measurement per peer,
    unless the newest is less precise than the one held and agrees with it. At a given time,
    the peers measured within ``stale_after_ns`` are *fresh*; a fresh peer is *beyond the
    limit* when its offset, less the measurement's uncertainty, exceeds ``max_offset_ns`` (so
    a slow round trip never condemns a node for network delay, nor clears one that a more
    precise measurement condemns). The node is unhealthy when a strict majority of fresh
    peers are beyond the limit: then this node is the odd one out. A minority beyond the limit
    means those peers are wrong, and it is for them to stop.

    With no fresh measurement at all the monitor reports healthy: it knows of nothing wrong.
    Whether a node that cannot reach anyone should serve is for the node to say (it does not
    until some peer has measured its clock once).

    Pure logic: no I/O, no clock reads, no threads of its own; time is passed in.

    Args:
        self_id: this node's id; it may appear in ``peers`` and is then left out.
        peers: the ids of the nodes whose clocks are measured.
        max_offset_ns: the largest tolerated offset, in nanoseconds (> 0).
        stale_after_ns: measurements older than this are ignored (> 0).

    Raises:
        InvalidArgumentError: a bad duration, or a peer listed twice.

    Thread-safety: none; call it from one thread (the node's event loop).
    """

    __slots__ = ("_self_id", "_peers", "_max_offset_ns", "_stale_after_ns", "_latest")

    def __init__(
        self,
        self_id: Hashable,
        peers: Iterable[Hashable],
        max_offset_ns: int,
        *,
        stale_after_ns: int,
    ) -> None:
        self._self_id = self_id
        self._max_offset_ns = _check_ns("max_offset_ns", max_offset_ns, positive=True)
        self._stale_after_ns = _check_ns("stale_after_ns", stale_after_ns, positive=True)
        listed: list[Hashable] = []
        for peer in peers:
            if peer in listed:
                raise InvalidArgumentError(f"peer {peer!r} is listed twice")
            listed.append(peer)
        self._peers = tuple(p for p in listed if p != self_id)
        self._latest: dict[Hashable, OffsetMeasurement] = {}

    @property
    def self_id(self) -> Hashable:
        return self._self_id

    @property
    def peers(self) -> tuple[Hashable, ...]:
        """The monitored peers, in the order given, without this node."""
        return self._peers

    @property
    def max_offset_ns(self) -> int:
        return self._max_offset_ns

    @property
    def stale_after_ns(self) -> int:
        return self._stale_after_ns

    def record(
        self, peer: Hashable, send_ns: int, peer_physical_ns: int, recv_ns: int
    ) -> OffsetMeasurement:
        """Records one ping round trip to ``peer``.

        Args:
            peer: a monitored peer.
            send_ns: local physical time the ping was sent.
            peer_physical_ns: the peer's physical clock as carried in its reply.
            recv_ns: local physical time the reply arrived (>= ``send_ns``).

        Returns:
            The measurement now held for ``peer``. A reply that arrives out of order (older
            than the one held, by ``recv_ns``, by at most ``stale_after_ns``) does not replace
            it, and the held one is returned; nor does a less precise one (a slower round trip)
            whose range of offsets overlaps that of a held one measured within half of
            ``stale_after_ns``.

        Raises:
            InvalidArgumentError: an unknown peer, a time that is not an int in ``0..MAX_TS``,
                or ``recv_ns < send_ns``.
        """
        if peer not in self._peers:
            raise InvalidArgumentError(
                f"unknown peer {peer!r}: monitored peers are {list(self._peers)!r}"
            )
        _check_ns("send_ns", send_ns)
        _check_ns("peer_physical_ns", peer_physical_ns)
        _check_ns("recv_ns", recv_ns)
        if recv_ns < send_ns:
            raise InvalidArgumentError(
                f"recv_ns ({recv_ns}) is before send_ns ({send_ns}): pass times from one "
                f"local clock"
            )
        # The peer read its clock somewhere in [send, recv]: estimate at the midpoint. Rounding
        # the uncertainty up keeps the true offset inside offset ± uncertainty.
        measurement = OffsetMeasurement(
            peer=peer,
            offset_ns=peer_physical_ns - (send_ns + recv_ns) // 2,
            uncertainty_ns=(recv_ns - send_ns + 1) // 2,
            measured_at_ns=recv_ns,
        )
        held = self._latest.get(peer)
        if held is not None and recv_ns < held.measured_at_ns <= recv_ns + self._stale_after_ns:
            # A reply overtaken by a newer one. A held measurement stamped further in the future
            # than the freshness window is not that: the local clock was stepped back (the
            # usual cure for a clock found ahead), and the held one must not outlive it.
            return held
        if (held is not None and held.uncertainty_ns < measurement.uncertainty_ns
                and recv_ns - self._stale_after_ns // 2 <= held.measured_at_ns
                and abs(measurement.offset_ns - held.offset_ns)
                <= measurement.uncertainty_ns + held.uncertainty_ns):
            # Both ranges hold the true offset, and the held one says more: one slow round
            # trip must not let a clock found beyond the limit pass for a round. Ranges apart
            # mean that a clock was stepped since, and the new one is taken. So is one that
            # comes when the held one is past half its freshness: kept to the end of it, the
            # held one would go stale before the next round trip replaced it, and for that
            # while the peer, measured a moment ago, would count as not measured at all.
            return held
        self._latest[peer] = measurement
        return measurement

    def offset(self, peer: Hashable) -> OffsetMeasurement | None:
        """The newest measurement of ``peer``, however old, or None if never measured.

        Raises:
            InvalidArgumentError: ``peer`` is not monitored.
        """
        if peer not in self._peers:
            raise InvalidArgumentError(
                f"unknown peer {peer!r}: monitored peers are {list(self._peers)!r}"
            )
        return self._latest.get(peer)

    def fresh(self, now_ns: int) -> tuple[OffsetMeasurement, ...]:
        """The measurements taken within ``stale_after_ns`` of ``now_ns``, in peer order.

        A measurement stamped after ``now_ns`` (times read on another thread) counts as fresh,
        unless it is more than ``stale_after_ns`` ahead: then the local clock was stepped back
        since, and the measurement says nothing about the clock as it is now.
        """
        _check_ns("now_ns", now_ns)
        horizon = now_ns - self._stale_after_ns
        ceiling = now_ns + self._stale_after_ns
        return tuple(
            m
            for p in self._peers
            if (m := self._latest.get(p)) is not None and horizon <= m.measured_at_ns <= ceiling
        )

    def beyond_limit(self, now_ns: int) -> tuple[OffsetMeasurement, ...]:
        """The fresh measurements whose offset certainly exceeds ``max_offset_ns``."""
        return self._judge(now_ns)[1]

    def healthy(self, now_ns: int) -> bool:
        """False when a strict majority of the fresh peers are beyond the limit.

        Args:
            now_ns: the local physical time (same clock as the measurements).

        Raises:
            InvalidArgumentError: ``now_ns`` is not an int in ``0..MAX_TS``.
        """
        fresh, bad = self._judge(now_ns)
        return 2 * len(bad) <= len(fresh)

    def check(self, now_ns: int) -> None:
        """Raises if this node's clock disagrees with a majority of its peers.

        Args:
            now_ns: the local physical time (same clock as the measurements).

        Raises:
            ClockOffsetError: a strict majority of the fresh peers are beyond the limit; the
                message lists each of them with its offset and how far past the limit it is.
            InvalidArgumentError: ``now_ns`` is not an int in ``0..MAX_TS``.
        """
        fresh, bad = self._judge(now_ns)
        if 2 * len(bad) <= len(fresh):
            return
        limit = self._max_offset_ns
        details = ", ".join(
            f"{m.peer!r} at {'+' if m.offset_ns >= 0 else '-'}{_ms(abs(m.offset_ns))} "
            f"(±{_ms(m.uncertainty_ns)}), {_ms(m.certain_offset_ns - limit)} beyond"
            for m in bad
        )
        raise ClockOffsetError(
            f"node {self._self_id!r}: clock offset beyond the maximum of {_ms(limit)} with "
            f"{len(bad)} of {len(fresh)} peers measured in the last "
            f"{_ms(self._stale_after_ns)}: {details}; this node's clock is the likely fault, "
            f"so it must stop serving"
        )

    def _judge(
        self, now_ns: int
    ) -> tuple[tuple[OffsetMeasurement, ...], tuple[OffsetMeasurement, ...]]:
        """(fresh measurements, those of them beyond the limit)."""
        fresh = self.fresh(now_ns)
        return fresh, tuple(m for m in fresh if m.certain_offset_ns > self._max_offset_ns)

    def __repr__(self) -> str:
        return (
            f"ClockOffsetMonitor(self_id={self._self_id!r}, peers={list(self._peers)!r}, "
            f"max_offset_ns={self._max_offset_ns}, stale_after_ns={self._stale_after_ns})"
        )
