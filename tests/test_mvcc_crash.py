"""A real crash test of the MVCC store: a child process applies batches in a loop, reporting each
applied index; the parent SIGKILLs it at seeded random moments and checks the store after each
kill.

Batch ``i`` writes the same 50 keys with value ``str(i)`` at ``commit_ts = i`` and
``applied_index = i`` (and every 40 batches the child also collects garbage below ``i - 10``).
The map starts small, so kills also land in the middle of map growth. Invariant after every
kill: the applied index ``A`` is at least the last index the child reported, and every key's
newest value is ``str(A)`` — the data and the applied index are one atomic unit. The next child
then carries on from ``A + 1``.

The kill moments vary from run to run with scheduling; the invariant must hold for all of them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from crashtools import KilledChild
from engine.mvcc import MAX_TS, MIN_MAP_SIZE, MVCCStore

KEYS = [b"key-%02d" % j for j in range(50)]

CHILD = r"""
import sys
from engine.mvcc import MVCCStore

keys = [b"key-%02d" % j for j in range(50)]
store = MVCCStore(sys.argv[1], map_size=int(sys.argv[2]))
i = store.applied_index + 1
sys.stdout.write(f"start {i}\n")
sys.stdout.flush()
while True:
    value = str(i).encode()
    store.apply([(k, value) for k in keys], i, i)
    if i % 40 == 0:
        result = store.gc(i - 10)
        while result.resume is not None:
            result = store.gc(i - 10, start=result.resume)
    sys.stdout.write(f"{i}\n")
    sys.stdout.flush()
    i += 1
"""


def check_store(path: Path, reported: int) -> int:
    """Reopens the store after a kill and checks the invariant; returns the applied index."""
    with MVCCStore(path, map_size=MIN_MAP_SIZE) as store:
        applied = store.applied_index
        assert applied >= reported, f"index {reported} was reported but the store is at {applied}"
        want = str(applied).encode()
        assert store.scan(b"", None, MAX_TS) == [(k, want) for k in KEYS], (
            f"applied index {applied}, but the newest values are not all {want!r}"
        )
        for k in KEYS[::7]:
            assert store.get_version(k, MAX_TS) == (applied, want)
            if applied > 1:  # the previous batch is above every GC watermark so far
                assert store.get(k, applied - 1) == str(applied - 1).encode()
        return applied


def run_campaign(tmp_path: Path, seed: int, kills: int, deadline_s: float) -> None:
    rng = random.Random(seed)
    path = tmp_path / "mvcc"
    end = time.monotonic() + deadline_s
    applied = 0
    for k in range(kills):
        assert time.monotonic() < end, f"seed {seed}: out of time after {k} kills"
        reported = applied
        with KilledChild(CHILD, str(path), str(MIN_MAP_SIZE), deadline=end) as child:
            first = child.line()
            assert first == b"start %d" % (applied + 1), (
                f"seed {seed}: the child starts at {first!r}, not at {applied + 1}"
            )
            for _ in range(rng.randint(1, 150)):
                reported = int(child.line())
            # Let it run a little further, so that the kill lands anywhere in a batch.
            time.sleep(rng.random() * 0.005)
        applied = check_store(path, reported)


def test_sigkill_keeps_data_and_applied_index_atomic(tmp_path):
    """Reference: ARCH §2.3 (applied index in the same LMDB transaction as the data)."""
    run_campaign(tmp_path, seed=20261128, kills=25, deadline_s=90)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_campaign_long(tmp_path, seed):
    run_campaign(tmp_path, seed=seed, kills=100, deadline_s=900)
