"""A core that raised while stepping a message is left as the exception found it.

Integration test over the trio driver (real time, real files, every wait bounded): the error
stops the node (tests/test_raft_driver.py), and until it has, nothing derived from the core's
half-changed state may be persisted or sent.
"""

from __future__ import annotations

import threading

import pytest
import trio

from raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    Message,
    MessageType,
    RaftError,
    RaftInvariantError,
)

from test_raft_driver import TICK, cluster

MT = MessageType


async def test_a_ready_loop_busy_persisting_takes_no_ready_after_a_step_raised(tmp_path):
    """The victim's ready loop is waiting for its storage worker (a term change to persist)
    when an append arrives whose handling raises: stepping it moves the core to the append's
    term, then raises (an invariant broken, planted here: a malformed message is dropped
    before it changes anything). Once
    the write ends, the ready loop must stop the node — not take the next Ready, which would
    persist that term as the node's own."""
    saved_terms: list[int] = []
    entered, release = threading.Event(), threading.Event()
    bad_term = 10_000
    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path) as c:
            leader, victim_id, victim = await c.leader_and_follower()
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

            def broken(m):
                raise RaftInvariantError("planted: conflicts with the committed log")

            victim.core._handle_append = broken
            send = leader._transport.send  # what the victim receives as from the leader
            term, commit = victim.core.term, victim.core.commit
            # A leader of the next term: the victim persists that term through its worker.
            send(1, [Message(MT.HEARTBEAT, victim_id, leader.id, term + 1, commit=commit)])
            with trio.fail_after(10):
                while not entered.is_set():
                    await trio.sleep(TICK)
            send(1, [Message(MT.APPEND, victim_id, leader.id, bad_term, index=commit,
                             log_term=victim.core.term_at(commit),
                             entries=(Entry(bad_term, commit + 1),))])
            with trio.fail_after(10):
                while victim._step_error is None:
                    await trio.sleep(TICK)
            assert victim.core.term == bad_term  # the step changed the core, then raised
            # What its statistics say of a node that makes no progress: why, and on what.
            stats = victim.statistics()
            assert stats.storage_busy and "conflicts with the committed log" in stats.failure
            release.set()
            with trio.fail_after(10):
                while victim_id in c.nodes:
                    await trio.sleep(TICK)
    assert "conflicts with the committed log" in repr(info.value) or any(
        "conflicts with the committed log" in repr(e)
        for e in getattr(info.value, "exceptions", ()))
    assert saved_terms and bad_term not in saved_terms, saved_terms


# Once the core raised while stepping, every call on the node must fail at once with that error,
# rather than be accepted by the broken core until the node has stopped.
async def test_calls_after_a_step_error_fail_at_once_and_change_nothing(tmp_path):
    outcomes: dict[str, object] = {}
    with pytest.raises(BaseException) as info:
        async with cluster(tmp_path) as c:
            lid = await c.leader()
            leader = c.nodes[lid]
            follower = next(i for i in c.ids if i != lid)
            with trio.fail_after(10):
                await leader.propose(b"a")
            core = leader.core
            last, term = core.last_index, core.term

            def broken(m):
                raise RaftInvariantError("planted")

            core.step = broken
            # What the transport's receiving task does on a message; the ready loop, which
            # stops the node, has not run yet (no checkpoint since).
            leader._on_messages([Message(MT.HEARTBEAT_RESP, lid, follower, term)])

            def record(name, call):
                try:
                    call()
                    outcomes[name] = "accepted"
                except RaftError as exc:
                    outcomes[name] = str(exc)

            record("propose_nowait", lambda: leader.propose_nowait(b"b", lambda r, e: None))
            record("transfer_leader", lambda: leader.transfer_leader(follower))
            outcomes["core after the calls"] = (core.last_index, core.role, leader.leader)
            for name, call in [
                ("propose", lambda: leader.propose(b"c")),
                ("read_index", leader.read_index),
                ("linearizable_read", leader.linearizable_read),
                ("propose_conf_change",
                 lambda: leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 9))),
            ]:
                try:
                    with trio.fail_after(5):
                        await call()
                    outcomes[name] = "accepted"
                except RaftError as exc:
                    outcomes[name] = str(exc)
            with trio.fail_after(10):
                while lid in c.nodes:
                    await trio.sleep(TICK)
    assert "planted" in repr(info.value) or any(
        "planted" in repr(e) for e in getattr(info.value, "exceptions", ()))
    assert outcomes.pop("core after the calls") == (last, core.role, lid)
    assert set(outcomes) == {"propose_nowait", "transfer_leader", "propose", "read_index",
                             "linearizable_read", "propose_conf_change"}, outcomes
    for name, outcome in outcomes.items():
        assert "planted" in outcome, (name, outcome)
