"""RaftStorage edges: at restart, files lost or out of range beside ones that are intact are
reported with the path concerned, never taken for a fresh storage; at the API, arguments that
would store a log the next restart refuses, or fail deep inside the core later, are refused
where they are given (see test_raft_storage.py for the round trips and the other recovery
checks)."""

from __future__ import annotations

import os
import shutil

import pytest

from engine import CorruptStateError, InvalidArgumentError, LogStore
from raft import storage as storage_module
from raft.storage import FLAG_LOG_RESET, InconsistentStateError, RaftStorage, encode_snapshot_header
from raft.types import ConfState, Entry, HardState, RaftInvariantError, Snapshot, SnapshotMeta

SEGMENT = 4096
CONF = ConfState(voters=(1, 2, 3))


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(term, i, b"entry-%d-%d" % (term, i)) for i in range(lo, hi)]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "group"


def reopen(path) -> RaftStorage:
    return RaftStorage.open(path, segment_size=SEGMENT)


def empty_log_dir(path) -> None:
    for name in os.listdir(path / "log"):
        os.unlink(path / "log" / name)


# ============================================================ a lost log


@pytest.mark.parametrize("loss", ["directory removed", "segments removed"])
def test_a_log_lost_beside_a_stored_hard_state_is_reported_not_started_empty(path, loss):
    """The entries were acknowledged in term 3; the commit index is stored lazily (0 here), so
    only the log's absence beside the stored term and vote tells that they are gone. Started
    empty, the node could vote for a candidate missing entries it helped commit."""
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 3), hard_state=HardState(3, 2, 0))
    if loss == "directory removed":
        shutil.rmtree(path / "log")
    else:
        empty_log_dir(path)
    for _ in range(2):  # the failed open does not make an empty log that the next one accepts
        with pytest.raises(InconsistentStateError, match="entries it held are lost") as info:
            reopen(path)
        assert info.value.path == str(path / "log")
        assert isinstance(info.value, RaftInvariantError)
    assert not os.path.exists(path / "log") or not [
        name for name in os.listdir(path / "log") if name.endswith(".log")]


def test_a_log_lost_beside_a_local_snapshot_is_reported(path):
    """Entries after a compaction snapshot are in the log alone."""
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 2), hard_state=HardState(2, 1, 10))
        st.save_snapshot(Snapshot(SnapshotMeta(10, 2, CONF), b"state@10"))
    shutil.rmtree(path / "log")
    with pytest.raises(InconsistentStateError, match="log .* is missing") as info:
        reopen(path)
    assert info.value.path == str(path / "log")


def test_a_storage_whose_first_open_stopped_before_its_log_opens_fresh(path):
    """The hard state file is made first; a crash before the log leaves nothing stored."""
    with reopen(path):
        pass
    shutil.rmtree(path / "log")
    with reopen(path) as st:
        assert st.initial_state().hard_state == HardState()
        assert (st.first_index, st.last_index) == (1, 0)


def test_an_install_cut_before_its_new_log_had_a_segment_is_finished(path):
    """A crash while the new log of a snapshot install is made leaves an empty directory and
    the old log beside it: the install is finished, not reported."""
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 1), hard_state=HardState(1, 0, 3))
        st._write_snapshot(Snapshot(SnapshotMeta(40, 4, CONF), b"state@40"), FLAG_LOG_RESET)
        st.close(sync=False)  # the commit point of the install, and no further
    os.rename(path / "log", path / "log.old")
    os.mkdir(path / "log")
    with reopen(path) as st:
        assert (st.first_index, st.last_index) == (41, 40)
        assert sorted(os.listdir(path)) == ["hardstate", "log", "snapshot"]


def test_a_log_restarted_after_a_snapshot_keeps_its_old_log_until_the_new_one_exists(
        path, monkeypatch):
    """Open restarts a log that ends below a local snapshot; a crash while it does so must
    leave either log: the old one is removed only once the new one is made."""
    with reopen(path) as st:
        st.save(entries=ents(1, 21, 2), hard_state=HardState(2, 1, 10))
        st.save_snapshot(Snapshot(SnapshotMeta(10, 2, CONF), b"state@10"))
    with LogStore(path / "log", segment_size=SEGMENT) as log:
        log.truncate_after(5)  # a tail covered by the snapshot lost
    os.rename(path / "log", path / "log.old")  # a restart of it cut after the rename

    real = storage_module.LogStore
    calls = []

    def crash_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(storage_module, "LogStore", crash_once)
    with pytest.raises(OSError, match="crash"):
        reopen(path)
    monkeypatch.setattr(storage_module, "LogStore", real)
    assert os.path.exists(path / "log.old")
    with reopen(path) as st:
        assert (st.first_index, st.last_index) == (11, 10)
        assert st.initial_state().hard_state == HardState(2, 1, 10)


# ============================================================ snapshot metadata out of range


@pytest.mark.parametrize("index", [2**63, 2**64 - 1])
def test_a_snapshot_index_beyond_any_log_position_is_reported_with_the_file(path, index):
    """Written with valid checksums (another writer's file): the index is one this storage
    never writes, so it is the snapshot file that is named, not a log position."""
    with reopen(path) as st:
        st.save(entries=ents(1, 4, 1), hard_state=HardState(1, 0, 2))
    data = b"state"
    (path / "snapshot").write_bytes(
        encode_snapshot_header(SnapshotMeta(index, 1, CONF), data) + data)
    with pytest.raises(CorruptStateError, match="index") as info:
        reopen(path)
    assert info.value.path == str(path / "snapshot")
    assert str(path / "snapshot") in str(info.value)


# ============================================================ arguments


@pytest.mark.parametrize("lo, hi", [("1", 3), (1.0, 3), (1, 3.0), (None, 3), (1, "3")])
def test_entries_with_indexes_that_are_not_ints_are_a_type_error(path, lo, hi):
    """Not a range error claiming that 1 lies outside 1..5."""
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 1))
        with pytest.raises(TypeError, match="must be ints"):
            st.entries(lo, hi)
        assert st.entries(1, 3) == ents(1, 3, 1)


@pytest.mark.parametrize("case", ["append", "after reopen", "conflict", "append_nowait",
                                  "after a snapshot", "with a snapshot"])
def test_entries_whose_term_is_below_the_entry_before_them_are_refused(path, case):
    """Raft terms never go back along the log; entries that would make them are refused
    before anything is written, not stored to make the next open fail."""
    with reopen(path) as st:
        st.save(entries=ents(1, 6, 3), hard_state=HardState(3, 2, 2))
    with reopen(path) as st:
        if case != "after reopen":
            st.save(entries=ents(6, 8, 4))
        before = (st.last_index, st.hard_state)
        with pytest.raises(InvalidArgumentError, match="below the term"):
            if case in ("append", "after reopen"):
                st.save(entries=ents(st.last_index + 1, st.last_index + 3, 2))
            elif case == "conflict":
                st.save(entries=ents(4, 9, 2))  # replaces 4.. after entry 3, of term 3
            elif case == "append_nowait":
                st.append_nowait(ents(8, 9, 3))
            elif case == "after a snapshot":
                st.save(snapshot=Snapshot(SnapshotMeta(20, 5, CONF), b"state@20"))
                st.save(entries=ents(21, 22, 4))
            else:
                st.save(snapshot=Snapshot(SnapshotMeta(20, 5, CONF), b"state@20"),
                        entries=ents(21, 22, 4))
        after = (st.last_index, st.hard_state)
        assert after == (20, before[1]) if case == "after a snapshot" else after == before
        # Entries of the right terms still follow, and the log restarts.
        last = st.last_index
        st.save(entries=ents(last + 1, last + 3, 5))
    with reopen(path) as st:
        got = st.initial_state()
        assert got.entries[-1].index == last + 2 and got.entries[-1].term == 5


@pytest.mark.parametrize("bootstrap", [(1, 2, 3), [1], None, {"voters": (1,)}])
def test_a_bootstrap_membership_that_is_not_a_conf_state_is_a_type_error(path, bootstrap):
    """Refused where it is given, not an AttributeError from deep inside the core later."""
    with reopen(path) as st:
        with pytest.raises(TypeError, match="bootstrap membership must be a ConfState"):
            st.initial_state(bootstrap)
        assert st.initial_state(CONF).conf == CONF


@pytest.mark.parametrize("new", [HardState(4, 3, 2), HardState(4, 0, 2)])
def test_a_vote_changed_within_its_term_is_refused(path, new):
    """A node votes at most once per term: storing another vote (or none) over a stored vote of
    the same term would let it vote again after a restart. Nothing is written."""
    with reopen(path) as st:
        st.save(entries=ents(1, 4, 4), hard_state=HardState(4, 2, 1))
        with pytest.raises(RaftInvariantError, match="vote"):
            st.save(entries=ents(4, 5, 4), hard_state=new)
        assert (st.last_index, st.hard_state) == (3, HardState(4, 2, 1))
        st.save(hard_state=HardState(4, 2, 3))  # the same vote, a later commit
        st.save(hard_state=HardState(5, 1, 3))  # a new term, a new vote
    with reopen(path) as st:
        assert st.hard_state == HardState(5, 1, 3)
