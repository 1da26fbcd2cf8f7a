"""Tests of the hybrid logical clock and the clock-offset monitor (ARCH §5.1, §9).

Time is always injected: a fake physical clock for HybridClock, explicit times for the monitor.
Nothing here sleeps or depends on how fast it runs."""

from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import errors
from engine.hlc import ClockOffsetError, ClockOffsetMonitor, HybridClock, OffsetMeasurement
from engine.mvcc import MAX_TS

MS = 1_000_000
LIMIT = 250 * MS


class FakeClock:
    """A physical clock that returns whatever the test sets."""

    def __init__(self, ns: int = 1_000 * MS) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def make_clock(ns: int = 1_000 * MS, max_offset_ns: int = LIMIT):
    phys = FakeClock(ns)
    return phys, HybridClock(phys, max_offset_ns=max_offset_ns)


# --- HybridClock ------------------------------------------------------------------------------


def test_error_class_is_a_meridian_runtime_error():
    assert issubclass(ClockOffsetError, errors.MeridianError)
    assert issubclass(ClockOffsetError, RuntimeError)


def test_now_follows_the_physical_clock_while_it_advances():
    phys, clock = make_clock(5_000)
    assert clock.now() == 5_000
    phys.ns = 9_000
    assert clock.now() == 9_000
    assert clock.last == 9_000
    assert clock.physical_ns() == 9_000


def test_now_is_strictly_increasing_when_the_physical_clock_stalls_or_goes_back():
    phys, clock = make_clock(10_000)
    seen = [clock.now(), clock.now()]  # stalled
    phys.ns = 4_000  # stepped backwards (NTP, a VM migration)
    seen += [clock.now(), clock.now()]
    phys.ns = 10_001  # catches up to the logical surplus
    seen.append(clock.now())
    phys.ns = 20_000
    seen.append(clock.now())
    assert seen == [10_000, 10_001, 10_002, 10_003, 10_004, 20_000]


def test_update_with_a_remote_timestamp_ahead_moves_the_clock_past_it():
    phys, clock = make_clock(1_000 * MS)
    clock.now()
    remote = 1_000 * MS + 200 * MS  # ahead, within the limit
    ts = clock.update(remote)
    assert ts == remote + 1
    assert clock.last == ts
    assert clock.now() > remote  # everything after the message is ordered after it


def test_update_with_a_remote_timestamp_behind_still_ticks():
    phys, clock = make_clock(1_000 * MS)
    first = clock.now()
    ts = clock.update(500 * MS)
    assert ts == first + 1
    phys.ns = 2_000 * MS
    assert clock.update(500 * MS) == 2_000 * MS


def test_update_accepts_a_remote_exactly_at_the_limit():
    phys, clock = make_clock(1_000 * MS)
    assert clock.update(1_000 * MS + LIMIT) == 1_000 * MS + LIMIT + 1


def test_update_rejects_a_remote_beyond_the_maximum_offset_and_keeps_the_clock():
    phys, clock = make_clock(1_000 * MS)
    before = clock.now()
    with pytest.raises(ClockOffsetError) as info:
        clock.update(1_000 * MS + 300 * MS)
    message = str(info.value)
    assert "300.000 ms ahead" in message
    assert "250.000 ms" in message
    assert clock.last == before
    assert clock.now() == before + 1


def test_the_limit_is_measured_against_the_physical_clock_not_the_logical_one():
    """A clock pushed ahead by earlier messages must not widen what it accepts."""
    phys, clock = make_clock(1_000 * MS)
    clock.update(1_000 * MS + 200 * MS)
    with pytest.raises(ClockOffsetError):
        clock.update(1_000 * MS + 400 * MS)


def make_guarded_clock(ns: int = 1_000 * MS):
    """A clock with a monotonic clock as well (it starts at 0); the test moves both."""
    phys, mono = FakeClock(ns), FakeClock(0)
    return phys, mono, HybridClock(phys, max_offset_ns=LIMIT, monotonic=mono)


def test_a_physical_clock_that_jumps_forward_is_not_followed_until_trusted():
    # A leader's wall clock jumps an hour ahead. Until its peers have measured it, the
    # timestamps it proposes would carry the jump into its groups' logs for good: instead the
    # clock runs on at the monotonic clock's pace from its last reading before the jump.
    hour = 3_600_000 * MS
    phys, mono, clock = make_guarded_clock(1_000 * MS)
    assert clock.now() == 1_000 * MS
    assert clock.jumped_since is None
    phys.ns, mono.ns = 1_010 * MS + hour, 10 * MS
    assert clock.now() == 1_010 * MS  # where the clock should be, not where it says it is
    assert clock.jumped_since == 10 * MS
    assert clock.physical_ns() == 1_010 * MS + hour  # what the monitor's pings measure
    with pytest.raises(ClockOffsetError):
        clock.update(1_010 * MS + hour)  # nor does the jump widen what it accepts
    phys.ns, mono.ns = 1_500 * MS + hour, 500 * MS
    assert clock.now() == 1_500 * MS
    assert clock.jumped_since == 10 * MS  # the same jump
    clock.trust_physical()  # its peers found the clock right as it now is
    assert clock.jumped_since is None
    assert clock.now() == 1_500 * MS + hour
    phys.ns, mono.ns = 1_600 * MS + hour, 600 * MS
    assert clock.now() == 1_600 * MS + hour


def test_a_jumped_clock_put_right_is_followed_again():
    phys, mono, clock = make_guarded_clock(1_000 * MS)
    clock.now()
    phys.ns, mono.ns = 1_100 * MS + 10 * LIMIT, 100 * MS
    assert clock.now() == 1_100 * MS
    phys.ns, mono.ns = 1_200 * MS, 200 * MS  # stepped back where it belongs
    assert clock.now() == 1_200 * MS
    assert clock.jumped_since is None


def test_a_step_within_the_maximum_offset_and_a_step_back_are_followed():
    phys, mono, clock = make_guarded_clock(1_000 * MS)
    clock.now()
    phys.ns, mono.ns = 1_100 * MS + LIMIT, 100 * MS  # a step forward the offset allows
    assert clock.now() == 1_100 * MS + LIMIT
    phys.ns, mono.ns = 700 * MS, 200 * MS  # back: timestamps still never go back
    assert clock.now() == 1_100 * MS + LIMIT + 1
    phys.ns, mono.ns = 1_500 * MS, 1_000 * MS  # forward again from the reading before
    assert clock.now() == 1_500 * MS
    assert clock.jumped_since is None


def test_another_step_of_a_jumped_clock_is_a_new_jump():
    # Peers that measured the clock at its first wrong time say nothing about the second.
    phys, mono, clock = make_guarded_clock(1_000 * MS)
    clock.now()
    phys.ns, mono.ns = 1_100 * MS + 10 * LIMIT, 100 * MS
    clock.now()
    phys.ns, mono.ns = 1_200 * MS + 20 * LIMIT, 200 * MS
    assert clock.now() == 1_200 * MS
    assert clock.jumped_since == 200 * MS


def test_restore_takes_a_timestamp_from_before_a_restart_however_far_ahead():
    phys, clock = make_clock()
    clock.restore(phys.ns + 3_600_000 * MS)  # the wall clock was an hour ahead back then
    assert clock.now() == phys.ns + 3_600_000 * MS + 1
    clock.restore(phys.ns)  # never moves the clock back
    assert clock.now() == phys.ns + 3_600_000 * MS + 2
    with pytest.raises(errors.InvalidArgumentError, match="ts must be"):
        clock.restore(-1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "250", None])
def test_max_offset_must_be_a_positive_int(bad):
    with pytest.raises(errors.InvalidArgumentError, match="max_offset_ns"):
        HybridClock(FakeClock(), max_offset_ns=bad)


def test_physical_must_be_callable():
    with pytest.raises(errors.InvalidArgumentError, match="physical"):
        HybridClock(12, max_offset_ns=LIMIT)
    with pytest.raises(errors.InvalidArgumentError, match="monotonic"):
        HybridClock(FakeClock(), max_offset_ns=LIMIT, monotonic=12)


@pytest.mark.parametrize("bad", [-1, 1.0, True, "5", None])
def test_update_rejects_a_malformed_remote_timestamp(bad):
    phys, clock = make_clock()
    before = clock.now()
    with pytest.raises(errors.InvalidArgumentError, match="remote_ts"):
        clock.update(bad)
    assert clock.last == before


@pytest.mark.parametrize("ts", [MAX_TS + 1, 2**64 - 1, 2**70])
def test_a_remote_timestamp_beyond_the_largest_is_a_clock_offset(ts):
    # The wire carries up to 2**64 - 1, one more than the largest timestamp: a node that
    # sends it is as far ahead as a clock can be, not a caller's bad argument (a commit
    # answered so ran, and must be reported as of unknown outcome).
    phys, clock = make_clock()
    before = clock.now()
    with pytest.raises(ClockOffsetError, match="beyond the largest timestamp"):
        clock.update(ts)
    assert clock.last == before


@pytest.mark.parametrize("bad", [1.5e18, -3, None])
def test_a_broken_physical_clock_is_reported_clearly(bad):
    clock = HybridClock(lambda: bad, max_offset_ns=LIMIT)
    with pytest.raises(errors.InvalidArgumentError, match="physical clock"):
        clock.now()


def test_timestamp_space_exhaustion_is_an_error_not_a_wrap():
    phys, clock = make_clock(MAX_TS)
    assert clock.now() == MAX_TS
    with pytest.raises(ClockOffsetError, match="exhausted"):
        clock.now()
    assert clock.last == MAX_TS


def test_default_physical_clock_is_wall_time():
    clock = HybridClock(max_offset_ns=LIMIT)
    a = clock.now()
    assert a > 1_600_000_000 * 10**9  # after 2020, in nanoseconds
    assert clock.now() > a


def test_concurrent_callers_get_unique_increasing_timestamps():
    """Thread-safety smoke test: a stalled physical clock makes every timestamp a logical
    tick, so a lost update would show up as a duplicate. (With the clock's lock replaced by a
    no-op, this test fails.)"""
    phys, clock = make_clock(1_000 * MS)
    per_thread = 2_000
    results: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def work(out: list[int], k: int) -> None:
        start.wait()
        for i in range(per_thread):
            if i % 3 == 0:
                out.append(clock.update(1_000 * MS + k))
            else:
                out.append(clock.now())

    threads = [threading.Thread(target=work, args=(out, k)) for k, out in enumerate(results)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: more interleavings
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    everything = [ts for out in results for ts in out]
    assert len(set(everything)) == len(everything) == 8 * per_thread
    for out in results:
        assert all(a < b for a, b in zip(out, out[1:]))
    assert clock.last == max(everything)


_op = st.one_of(
    st.tuples(st.just("now"), st.just(0)),
    st.tuples(st.just("update"), st.integers(-2 * LIMIT, 2 * LIMIT)),  # remote - physical
    st.tuples(st.just("physical"), st.integers(-3 * LIMIT, 3 * LIMIT)),  # clock step
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=60))
def test_any_interleaving_of_now_and_update_is_strictly_increasing(ops):
    phys, clock = make_clock(10**18)
    issued: list[int] = []
    for kind, arg in ops:
        if kind == "physical":
            phys.ns = max(0, phys.ns + arg)
        elif kind == "now":
            ts = clock.now()
            assert ts >= phys.ns  # never behind the physical clock
            issued.append(ts)
        else:
            remote = max(0, phys.ns + arg)
            if arg > LIMIT:
                before = clock.last
                with pytest.raises(ClockOffsetError):
                    clock.update(remote)
                assert clock.last == before
            else:
                ts = clock.update(remote)
                assert ts > remote and ts >= phys.ns
                issued.append(ts)
        if issued:
            assert clock.last == issued[-1]
    assert all(a < b for a, b in zip(issued, issued[1:]))


# --- ClockOffsetMonitor -----------------------------------------------------------------------

STALE = 10_000 * MS
T0 = 1_000_000 * MS


def monitor(peers=(2, 3, 4), self_id=1):
    return ClockOffsetMonitor(self_id, peers, LIMIT, stale_after_ns=STALE)


def ping(m: ClockOffsetMonitor, peer, offset_ns: int, *, at: int = T0, rtt: int = 2 * MS):
    """Records a round trip sent at ``at`` to a peer whose clock is ``offset_ns`` ahead and
    that answered exactly mid-way."""
    return m.record(peer, at, at + rtt // 2 + offset_ns, at + rtt)


def test_record_estimates_offset_and_uncertainty_from_the_round_trip():
    m = monitor()
    got = m.record(2, 1_000, 1_050 + 500, 1_100)
    assert got == OffsetMeasurement(peer=2, offset_ns=500, uncertainty_ns=50, measured_at_ns=1_100)
    assert m.offset(2) == got
    assert m.offset(3) is None


@given(
    send=st.integers(0, 10**12),
    rtt=st.integers(0, 10**9),
    read_at=st.floats(0, 1),
    true_offset=st.integers(-(10**12), 10**12),
)
def test_the_true_offset_lies_within_the_uncertainty(send, rtt, read_at, true_offset):
    recv = send + rtt
    peer_read_local = send + int(rtt * read_at)  # when, on our clock, the peer read its clock
    peer_physical = peer_read_local + true_offset
    if peer_physical < 0:
        return
    got = monitor().record(2, send, peer_physical, recv)
    assert abs(got.offset_ns - true_offset) <= got.uncertainty_ns
    assert got.certain_offset_ns <= abs(true_offset)


def test_a_minority_of_peers_beyond_the_limit_is_their_fault_not_ours():
    m = monitor()
    ping(m, 2, 400 * MS)
    ping(m, 3, 1 * MS)
    ping(m, 4, -2 * MS)
    assert m.healthy(T0)
    m.check(T0)  # does not raise
    assert [x.peer for x in m.beyond_limit(T0)] == [2]


def test_a_majority_of_peers_beyond_the_limit_means_our_clock_is_off():
    m = monitor()
    ping(m, 2, -400 * MS)
    ping(m, 3, -300 * MS)
    ping(m, 4, 0)
    assert not m.healthy(T0)
    with pytest.raises(ClockOffsetError) as info:
        m.check(T0)
    message = str(info.value)
    assert "2 of 3 peers" in message
    assert "2 at -400.000 ms" in message and "149.000 ms beyond" in message
    assert "3 at -300.000 ms" in message and "49.000 ms beyond" in message
    assert "4 at" not in message
    assert "250.000 ms" in message


def test_half_is_not_a_majority():
    m = monitor(peers=(2, 3))
    ping(m, 2, 400 * MS)
    ping(m, 3, 0)
    assert m.healthy(T0)
    ping(m, 3, 400 * MS, at=T0 + MS)
    assert not m.healthy(T0 + MS)


def test_a_slow_round_trip_does_not_condemn_a_clock():
    """An offset of 300 ms measured over a 200 ms round trip may really be 200 ms."""
    m = monitor(peers=(2,))
    ping(m, 2, 300 * MS, rtt=200 * MS)
    assert m.offset(2).uncertainty_ns == 100 * MS
    assert m.healthy(T0 + 200 * MS)
    ping(m, 2, 300 * MS, at=T0 + 1_000 * MS, rtt=20 * MS)
    assert not m.healthy(T0 + 1_000 * MS)


def test_one_slow_round_trip_does_not_clear_a_clock_found_beyond_the_limit():
    """A node whose clock is 1 s off, with one ping to a peer slowed to 1.6 s: that ping proves
    only 200 ms, but agrees with the 1 s measured a round before. It used to replace it, and
    the node, found beyond the limit by one peer of two, served again for a round."""
    m = monitor(peers=(2, 3))
    precise = ping(m, 2, -1_000 * MS)
    ping(m, 3, -1_000 * MS)
    assert not m.healthy(T0 + 2 * MS)
    later = T0 + 1_000 * MS
    assert ping(m, 2, -1_000 * MS, at=later, rtt=1_600 * MS) == precise
    ping(m, 3, -1_000 * MS, at=later + 1_598 * MS)
    assert not m.healthy(later + 1_600 * MS)


def test_a_peer_measured_every_round_stays_fresh_while_a_precise_measurement_ages():
    """A peer's pings all slower than one precise round trip, and agreeing with it: the
    precise one was kept until it went stale, and from then until the next ping the peer
    counted as not measured. With one of two peers beyond the limit, that peer was then a
    majority of one, and this node stopped serving although its clock was right."""
    m = monitor(peers=(2, 3))
    ping(m, 3, 0, at=T0 - 500 * MS, rtt=2 * MS)  # precise
    for i in range(1, 12):
        at = T0 + i * 1_000 * MS
        ping(m, 2, 2_000 * MS, at=at)  # beyond the limit: the fault is node 2's
        ping(m, 3, 0, at=at, rtt=4 * MS)
        check = at + 700 * MS
        assert [x.peer for x in m.fresh(check)] == [2, 3]
        assert m.healthy(check)


def test_a_slow_round_trip_replaces_a_measurement_it_contradicts_or_a_stale_one():
    m = monitor(peers=(2,))
    ping(m, 2, -1_000 * MS)
    assert not m.healthy(T0 + 2 * MS)
    fixed = ping(m, 2, 0, at=T0 + 1_000 * MS, rtt=200 * MS)  # the clock was stepped right
    assert m.offset(2) == fixed
    assert m.healthy(T0 + 1_200 * MS)
    ping(m, 2, -1_000 * MS, at=T0 + 2_000 * MS)
    slow = ping(m, 2, -1_000 * MS, at=T0 + 2_002 * MS + STALE, rtt=1_600 * MS)
    assert m.offset(2) == slow  # the precise one was no longer fresh


def test_stale_measurements_are_ignored():
    m = monitor()
    ping(m, 2, 900 * MS, at=T0)
    ping(m, 3, 900 * MS, at=T0)
    ping(m, 4, 0, at=T0 + 5_000 * MS)
    recv = T0 + 2 * MS
    assert not m.healthy(recv + STALE)  # exactly at the horizon: still fresh
    later = recv + STALE + 1
    assert [x.peer for x in m.fresh(later)] == [4]
    assert m.healthy(later)
    m.check(later)
    assert m.offset(2).offset_ns == 900 * MS  # still there, just not counted


def test_only_stale_measurements_mean_nothing_is_known_to_be_wrong():
    m = monitor()
    assert m.healthy(T0)
    ping(m, 2, 900 * MS)
    assert not m.healthy(T0)
    assert m.healthy(T0 + 2 * STALE)


def test_a_late_reply_does_not_replace_a_newer_measurement():
    m = monitor()
    newer = ping(m, 2, 5 * MS, at=T0 + 100 * MS)
    assert ping(m, 2, 900 * MS, at=T0) == newer
    assert m.offset(2) == newer


def test_a_clock_stepped_back_serves_again_once_peers_are_measured_again():
    """A node whose clock ran an hour ahead is rightly condemned; once its clock is stepped
    back (NTP), the measurements stamped an hour in its future must not stay "fresh" for that
    hour, and new pings must replace them."""
    m = monitor()
    hour = 3_600_000 * MS
    for peer in (2, 3, 4):
        ping(m, peer, -hour, at=T0 + hour)
    assert not m.healthy(T0 + hour)
    fixed = T0 + 1_000 * MS  # the clock is right again
    for peer in (2, 3, 4):
        ping(m, peer, 0, at=fixed)
    assert m.offset(2).offset_ns == 0
    assert m.healthy(fixed + 2 * MS)
    m.check(fixed + 2 * MS)


def test_self_is_left_out_of_the_peers():
    m = ClockOffsetMonitor(1, [1, 2, 3], LIMIT, stale_after_ns=STALE)
    assert m.peers == (2, 3)
    with pytest.raises(errors.InvalidArgumentError, match="unknown peer 1"):
        m.record(1, 0, 0, 0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((7, 0, 0, 0), "unknown peer 7"),
        ((2, 10, 0, 5), "recv_ns"),
        ((2, -1, 0, 5), "send_ns"),
        ((2, 0, 1.0, 5), "peer_physical_ns"),
        ((2, 0, 0, None), "recv_ns"),
    ],
)
def test_record_rejects_bad_measurements(args, match):
    m = monitor()
    with pytest.raises(errors.InvalidArgumentError, match=match):
        m.record(*args)
    assert m.offset(2) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(peers=[2, 2]), "listed twice"),
        (dict(max_offset_ns=0), "max_offset_ns"),
        (dict(max_offset_ns=2.5), "max_offset_ns"),
        (dict(stale_after_ns=0), "stale_after_ns"),
        (dict(stale_after_ns=-5), "stale_after_ns"),
    ],
)
def test_monitor_rejects_bad_arguments(kwargs, match):
    args = dict(self_id=1, peers=[2, 3], max_offset_ns=LIMIT, stale_after_ns=STALE)
    args.update(kwargs)
    with pytest.raises(errors.InvalidArgumentError, match=match):
        ClockOffsetMonitor(
            args["self_id"], args["peers"], args["max_offset_ns"],
            stale_after_ns=args["stale_after_ns"],
        )


def test_healthy_and_check_validate_now():
    m = monitor()
    with pytest.raises(errors.InvalidArgumentError, match="now_ns"):
        m.healthy(-1)
    with pytest.raises(errors.InvalidArgumentError, match="now_ns"):
        m.check("now")


def test_offset_of_an_unknown_peer_is_an_error():
    with pytest.raises(errors.InvalidArgumentError, match="unknown peer 9"):
        monitor().offset(9)
