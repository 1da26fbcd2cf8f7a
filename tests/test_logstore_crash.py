"""A real crash test: a child process appends and syncs in a loop, reporting each synced
position; the parent SIGKILLs it at seeded random moments and checks the log after each kill.

Invariant after every kill: every record whose sync was reported is present and byte-identical,
and every record present is exactly what was written at its position (nothing never written
appears). The moments vary from run to run with scheduling, but the invariant must hold for
every one of them."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from crashtools import KilledChild
from engine import LogStore

SEGMENT_SIZE = 64 << 10

CHILD = r"""
import hashlib, sys
from engine import LogStore

def content(pos):
    size = (pos * 7919) % 3000
    seed = hashlib.blake2b(pos.to_bytes(8, "little"), digest_size=32).digest()
    return (seed * (size // 32 + 1))[:size]

log = LogStore(sys.argv[1], segment_size=int(sys.argv[2]))
pos = log.next_position
for i in range(100000):
    n = 1 + (pos * 31) % 17
    log.append([content(p) for p in range(pos, pos + n)])
    pos += n
    log.sync()
    sys.stdout.write(f"{pos - 1}\n")
    sys.stdout.flush()
"""


def content(pos: int) -> bytes:
    size = (pos * 7919) % 3000
    seed = hashlib.blake2b(pos.to_bytes(8, "little"), digest_size=32).digest()
    return (seed * (size // 32 + 1))[:size]


def check_log(path, reported: int) -> int:
    with LogStore(path, segment_size=SEGMENT_SIZE) as log:
        last = log.last_position
        assert last >= reported, f"synced position {reported} reported but the log ends at {last}"
        for pos, rec in log.scan():
            assert rec == content(pos), f"position {pos} holds bytes never written there"
        return last


def run_campaign(tmp_path, seed: int, kills: int, deadline_s: float) -> None:
    rng = random.Random(seed)
    path = tmp_path / "log"
    end = time.monotonic() + deadline_s
    reported = 0
    for k in range(kills):
        assert time.monotonic() < end, f"seed {seed}: out of time after {k} kills"
        with KilledChild(CHILD, str(path), str(SEGMENT_SIZE), deadline=end) as child:
            for _ in range(rng.randint(1, 60)):
                reported = int(child.line())
        check_log(path, reported)


def test_sigkill_never_loses_a_synced_record(tmp_path):
    """Reference: ARCH §2.1 (recovery rule) and §9 (crash-recover with durable disks)."""
    run_campaign(tmp_path, seed=20261128, kills=20, deadline_s=240)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_campaign_long(tmp_path, seed):
    run_campaign(tmp_path, seed=seed, kills=100, deadline_s=900)
