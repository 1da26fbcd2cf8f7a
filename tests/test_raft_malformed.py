"""What a peer sends can be malformed (a bug, a damaged or hostile peer): the node drops it
and counts it — never acknowledges it, never lets it into the log, never stops because of it.

The table-driven part feeds each malformed message to a running core (tests/raftnet.py) and
then checks that every node keeps its invariants and that the group keeps electing leaders
and committing. The driver part sends a malformed append over the in-memory transport to a
running node (real files, every wait bounded).
"""

from __future__ import annotations

import pytest
import trio

from raft.core import RaftCore
from raft.types import (
    MAX_MEMBERS,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
    StateRole,
)
from raft.wire import encode_frame

from raftnet import Network, encode_state
from test_raft_driver import TICK, cluster

MT = MessageType
U64_MAX = 2**64 - 1


def _encodable(m: Message) -> bool:
    """Raises if ``m`` could not cross the wire; never drops it (a network filter)."""
    encode_frame(1, [m])
    return False


def _running_group() -> Network:
    """Three nodes, node 1 leading, a few entries committed everywhere; every message any node
    sends from now on must be encodable."""
    net = Network((1, 2, 3), seed=3)
    net.add_filter(_encodable)
    net.elect(1)
    for k in range(3):
        net.propose(1, b"w%d" % k)
    return net


def _check_invariants(core: RaftCore) -> None:
    log = core.entries(core.first_index, core.last_index + 1)
    assert [e.index for e in log] == list(range(core.first_index, core.last_index + 1)), core
    terms = [e.term for e in log]
    assert terms == sorted(terms) and all(t <= core.term for t in terms), core
    assert core.applied <= core.commit <= core.last_index, core
    assert core.persisted_index <= core.last_index, core


def _append(net: Network, *entries: Entry, index: int | None = None, term: int | None = None
            ) -> Message:
    """An append from the leader (1) to follower 2, after the follower's last entry."""
    f = net.core(2)
    index = f.last_index if index is None else index
    term = net.core(1).term if term is None else term
    return Message(MT.APPEND, 2, 1, term, log_term=f.term_at(index), index=index,
                   entries=entries, commit=f.commit)


def _next(net: Network, offset: int = 1, term: int | None = None, **kw) -> Entry:
    return Entry(net.core(1).term if term is None else term, net.core(2).last_index + offset,
                 **kw)


def _snapshot(net: Network, meta: SnapshotMeta) -> Message:
    data = encode_state([])
    return Message(MT.SNAPSHOT, 2, 1, net.core(1).term, snapshot=meta, chunk=data,
                   snapshot_size=len(data))


# (name, recipient, message built from the running group, whether it is malformed)
CASES = [
    ("append: a gap between entries", 2,
     lambda n: _append(n, _next(n, 1), _next(n, 3)), True),
    ("append: an index repeated", 2,
     lambda n: _append(n, _next(n, 1), _next(n, 1)), True),
    ("append: the first entry not after the index", 2,
     lambda n: _append(n, _next(n, 5)), True),
    ("append: the first entry at the index itself", 2,
     lambda n: _append(n, _next(n, 0)), True),
    ("append: terms that decrease", 2,
     lambda n: _append(n, _next(n, 1, n.core(1).term + 1), _next(n, 2),
                       term=n.core(1).term + 1), True),
    ("append: an entry term above the message's", 2,
     lambda n: _append(n, _next(n, 1, n.core(1).term + 5)), True),
    ("append: an entry term below the previous entry's", 2,
     lambda n: _append(n, _next(n, 1, 0)), True),
    ("append: a membership change that does not decode", 2,
     lambda n: _append(n, _next(n, 1, data=b"zz", type=EntryType.CONF_CHANGE)), True),
    ("append: a membership change of node 0", 2,
     lambda n: _append(n, _next(n, 1, data=ConfChange(ConfChangeType.ADD_VOTER, 0).encode(),
                                type=EntryType.CONF_CHANGE)), True),
    ("append: from this node itself", 2,
     lambda n: Message(MT.APPEND, 2, 2, n.core(2).term,
                       log_term=n.core(2).term_at(n.core(2).last_index),
                       index=n.core(2).last_index), True),
    ("heartbeat: from node 0", 2,
     lambda n: Message(MT.HEARTBEAT, 2, 0, n.core(2).term + 1), True),
    ("heartbeat: a term no election could follow", 2,
     lambda n: Message(MT.HEARTBEAT, 2, 3, U64_MAX), True),
    ("snapshot: no voters", 2,
     lambda n: _snapshot(n, SnapshotMeta(50, n.core(1).term, ConfState((), (1, 2, 3)))), True),
    ("snapshot: a voter of id 0", 2,
     lambda n: _snapshot(n, SnapshotMeta(50, n.core(1).term, ConfState((0, 1, 2, 3)))), True),
    ("snapshot: a term above the message's", 2,
     lambda n: _snapshot(n, SnapshotMeta(50, n.core(1).term + 1, ConfState((1, 2, 3)))), True),
    ("snapshot: more members than the storage can hold", 2,
     lambda n: _snapshot(n, SnapshotMeta(50, n.core(1).term,
                                         ConfState(tuple(range(1, MAX_MEMBERS + 2))))), True),
    ("snapshot: an index the storage cannot hold", 2,
     lambda n: _snapshot(n, SnapshotMeta(2**63, n.core(1).term, ConfState((1, 2, 3)))), True),
    ("append answer: beyond the leader's log", 1,
     lambda n: Message(MT.APPEND_RESP, 1, 2, n.core(1).term, index=n.core(1).last_index + 7),
     True),
    ("append answer: from the leader itself", 1,
     lambda n: Message(MT.APPEND_RESP, 1, 1, n.core(1).term, index=n.core(1).last_index + 7),
     True),
    # Well-formed, if odd: handled, not dropped.
    ("heartbeat: a commit index beyond the log", 2,
     lambda n: Message(MT.HEARTBEAT, 2, 1, n.core(1).term, commit=10**6), False),
    ("read index answer: an unknown context", 2,
     lambda n: Message(MT.READ_INDEX_RESP, 2, 1, n.core(1).term, index=10**6,
                       context=b"nobody asked"), False),
    ("append: addressed to another node", 2,
     lambda n: Message(MT.APPEND, 9, 1, n.core(1).term, index=n.core(2).last_index,
                       log_term=n.core(2).term_at(n.core(2).last_index),
                       entries=(_next(n, 5),)), False),
    ("append answer: from a node not in the group", 1,
     lambda n: Message(MT.APPEND_RESP, 1, 9, n.core(1).term, index=n.core(1).last_index),
     False),
    ("append answer: a rejection far beyond the log", 1,
     lambda n: Message(MT.APPEND_RESP, 1, 2, n.core(1).term, index=10**9, reject=True,
                       reject_hint=10**9), False),
    ("snapshot answer: an offset beyond any snapshot", 1,
     lambda n: Message(MT.SNAPSHOT_RESP, 1, 2, n.core(1).term, index=n.core(1).commit,
                       chunk_offset=10**9), False),
]


@pytest.mark.parametrize("name, to, build, malformed", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_message_is_dropped_and_the_group_keeps_serving(name, to, build,
                                                                    malformed):
    net = _running_group()
    node = net.nodes[to]
    before = [(e.index, e.term) for e in node.log()]
    m = build(net)
    out = node.step(m)  # what it answers, before anything else moves
    acks = [r for r in out if r.type is MT.APPEND_RESP and not r.reject
            and r.index > len(before)]
    assert not acks, f"{name}: acknowledged {acks}"
    if malformed:
        assert out == [] and node.core.malformed_messages == 1, (name, out)
        assert [(e.index, e.term) for e in node.log()] == before
        assert node.core.last_malformed
    else:
        assert node.core.malformed_messages == 0, node.core.last_malformed
    net.send(*out)
    for n in net.nodes.values():
        _check_invariants(n.core)
    # The group goes on: it elects a leader (after the old one is cut off, to make it) and
    # commits on every node.
    net.tick(times=3 * 10)
    net.isolate(1)
    net.tick(times=4 * 10)
    net.recover()
    net.tick(times=2 * 10)
    lid = net.leader()
    assert lid != 0 and net.core(lid).role is StateRole.LEADER
    _, index = net.propose(lid, b"after")
    net.tick(times=3)
    for n in net.nodes.values():
        _check_invariants(n.core)
        assert n.core.applied >= index, (n.core, index)
        assert n.applied_data()[-1] == b"after"


async def test_a_running_node_drops_a_malformed_append_and_keeps_applying(tmp_path):
    """Over the driver: an append whose entries skip an index reaches a follower. It must be
    neither acknowledged nor written (the storage would refuse the gap and stop the node); the
    node counts it and goes on applying what the leader proposes."""
    async with cluster(tmp_path) as c:
        leader, victim_id, victim = await c.leader_and_follower(b"a")
        core = victim.core
        last, term = core.last_index, leader.core.term
        leader._transport.send(1, [Message(
            MT.APPEND, victim_id, leader.id, term, log_term=core.term_at(last), index=last,
            entries=(Entry(term, last + 1, b"x"), Entry(term, last + 3, b"y")),
            commit=core.commit)])
        with trio.fail_after(10):
            while victim.statistics().messages_malformed == 0:
                await trio.sleep(TICK)
        assert victim.core.last_index == last
        with trio.fail_after(10):
            await leader.propose(b"b")
            await victim.wait_applied(leader.core.commit)
        assert c.sms[victim_id].items == [b"a", b"b"]
        assert victim_id in c.nodes


async def test_a_running_node_drops_a_snapshot_the_storage_cannot_hold(tmp_path):
    """Over the driver: a snapshot naming more members than the storage's snapshot header takes
    reaches a follower. Written, it would make the storage refuse the save and stop the node;
    the node counts it and goes on applying."""
    async with cluster(tmp_path) as c:
        leader, victim_id, victim = await c.leader_and_follower(b"a")
        term = leader.core.term
        data = encode_state([])
        leader._transport.send(1, [Message(
            MT.SNAPSHOT, victim_id, leader.id, term,
            snapshot=SnapshotMeta(victim.core.commit + 100, term,
                                  ConfState(tuple(range(1, MAX_MEMBERS + 2)))),
            chunk=data, snapshot_size=len(data))])
        with trio.fail_after(10):
            while victim.statistics().messages_malformed == 0:
                await trio.sleep(TICK)
        with trio.fail_after(10):
            await leader.propose(b"b")
            await victim.wait_applied(leader.core.commit)
        assert c.sms[victim_id].items == [b"a", b"b"]
        assert victim.statistics().failure is None
