"""A core that raised while stepping a message is left as the exception found it.

Integration test over the trio driver (real time, real files, every wait bounded): the error
stops the node (tests/test_raft_driver.py), and until it has, nothing derived from the core's
half-changed state may be persisted or sent.
"""

from __future__ import annotations

import threading

import pytest
import trio

from raft.types import Entry, Message, MessageType

from test_raft_driver import TICK, cluster

MT = MessageType


async def test_a_ready_loop_busy_persisting_takes_no_ready_after_a_step_raised(tmp_path):
    """The victim's ready loop is waiting for its storage worker (a term change to persist)
    when a malformed append arrives: stepping it moves the core to the append's term, then
    raises (its entries do not follow its index and conflict with the committed log). Once
    the write ends, the ready loop must stop the node — not take the next Ready, which would
    persist that term as the node's own."""
    saved_terms: list[int] = []
    entered, release = threading.Event(), threading.Event()
    bad_term = 10_000
    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path) as c:
            lid = await c.leader()
            leader = c.nodes[lid]
            victim_id = next(i for i in c.ids if i != lid)
            victim = c.nodes[victim_id]
            with trio.fail_after(10):
                await leader.propose(b"x")
                await victim.wait_applied(leader.core.commit)
            storage = victim._storage
            real_save = storage.save

            def save(**kwargs):  # runs in the victim's storage worker thread
                hs = kwargs.get("hard_state")
                if hs is not None:
                    saved_terms.append(hs.term)
                if not entered.is_set():
                    entered.set()
                    release.wait(10)
                real_save(**kwargs)

            storage.save = save
            send = leader._transport.send  # what the victim receives as from the leader
            term, commit = victim.core.term, victim.core.commit
            # A leader of the next term: the victim persists that term through its worker.
            send(1, [Message(MT.HEARTBEAT, victim_id, lid, term + 1, commit=commit)])
            with trio.fail_after(10):
                while not entered.is_set():
                    await trio.sleep(TICK)
            send(1, [Message(MT.APPEND, victim_id, lid, bad_term, index=commit,
                             log_term=victim.core.term_at(commit),
                             entries=(Entry(bad_term, commit),))])
            with trio.fail_after(10):
                while victim._step_error is None:
                    await trio.sleep(TICK)
            assert victim.core.term == bad_term  # the step changed the core, then raised
            release.set()
            with trio.fail_after(10):
                while victim_id in c.nodes:
                    await trio.sleep(TICK)
    assert "conflicts with the committed log" in repr(info.value) or any(
        "conflicts with the committed log" in repr(e)
        for e in getattr(info.value, "exceptions", ()))
    assert saved_terms and bad_term not in saved_terms, saved_terms
