"""LogStore against models: a list (hypothesis stateful) and the pure-Python reference of the
format (identical bytes on disk, identical recovery from any damage)."""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import CorruptLogError, LogStore, PositionError, _native
from engine import _logformat as ref
from logtools import read_dir, write_dir

SEG = 4096
records = st.lists(st.binary(max_size=1500), min_size=1, max_size=6)


class LogStoreMachine(RuleBasedStateMachine):
    """The store behaves like a list of records with a first position, across any interleaving
    of append / sync / read / scan / truncate_after / drop_before / close+reopen."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="logmodel-")
        self.log = LogStore(self.dir, segment_size=SEG)
        self.first = 1
        self.model: list[bytes] = []  # model[i] is the record at position first + i
        self.synced = 0

    def teardown(self):
        self.log.close(sync=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def next_pos(self):
        return self.first + len(self.model)

    @rule(batch=records)
    def append(self, batch):
        got = self.log.append(batch)
        assert got == range(self.next_pos, self.next_pos + len(batch))
        self.model.extend(batch)

    @rule()
    def sync(self):
        self.log.sync()
        self.synced = self.next_pos - 1

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read(self, data):
        pos = data.draw(st.integers(self.first, self.next_pos - 1))
        assert self.log.read(pos) == self.model[pos - self.first]

    @rule(data=st.data())
    def scan(self, data):
        start = data.draw(st.integers(self.first, self.next_pos))
        end = data.draw(st.integers(start, self.next_pos))
        want = [(p, self.model[p - self.first]) for p in range(start, end)]
        assert list(self.log.scan(start, end)) == want

    @rule(data=st.data())
    def truncate_after(self, data):
        pos = data.draw(st.integers(self.first - 1, self.next_pos - 1))
        noop = pos == self.next_pos - 1
        self.log.truncate_after(pos)
        del self.model[pos + 1 - self.first :]
        if not noop:  # a real truncation syncs what it keeps
            self.synced = pos

    @rule(data=st.data())
    def drop_before(self, data):
        pos = data.draw(st.integers(self.first, self.next_pos))
        self.log.drop_before(pos)
        new_first = self.log.first_position
        assert self.first <= new_first <= pos
        del self.model[: new_first - self.first]
        self.first = new_first

    @rule(bad=st.integers(min_value=1, max_value=5))
    def read_out_of_range(self, bad):
        for pos in (self.first - bad, self.next_pos - 1 + bad):
            if pos >= 0:
                try:
                    self.log.read(pos)
                except PositionError:
                    pass
                else:
                    raise AssertionError(f"read({pos}) outside the log did not raise")

    @rule(clean=st.booleans())
    def reopen(self, clean):
        # A process crash (no sync on close) keeps what the OS has: everything appended.
        self.log.close(sync=clean)
        self.log = LogStore(self.dir, segment_size=SEG)
        self.synced = self.next_pos - 1

    @invariant()
    def bounds_agree(self):
        s = self.log.stats()
        assert (s.first_position, s.next_position) == (self.first, self.next_pos)
        assert self.first - 1 <= s.synced_position <= self.next_pos - 1
        assert s.synced_position >= min(self.synced, self.next_pos - 1)


TestLogStoreMachine = LogStoreMachine.TestCase
TestLogStoreMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------- the reference


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), records),
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("drop"), st.floats(0, 1)),
    ),
    min_size=1,
    max_size=25,
)


def run_both(ops_list, directory):
    model = ref.ReferenceLog(SEG)
    with LogStore(directory, segment_size=SEG) as log:
        for op, arg in ops_list:
            if op == "append":
                assert log.append(arg) == model.append(arg)
            elif op == "truncate":
                pos = model.first_pos - 1 + int(arg * (model.next_pos - model.first_pos))
                log.truncate_after(pos)
                model.truncate_after(pos)
            else:
                pos = model.first_pos + int(arg * (model.next_pos - model.first_pos))
                log.drop_before(pos)
                model.drop_before(pos)
    return model


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops_list=ops)
def test_c_store_writes_exactly_the_reference_bytes(tmp_path_factory, ops_list):
    d = tmp_path_factory.mktemp("ref")
    model = run_both(ops_list, d)
    assert read_dir(d) == model.files()
    with LogStore(d, segment_size=SEG) as log:
        assert list(log.scan()) == model.records()


damage = st.lists(
    st.tuples(
        st.sampled_from(["flip", "zero", "truncate", "garbage", "remove"]),
        st.floats(0, 1),  # which segment
        st.floats(0, 1),  # where in it
        st.integers(1, 700),  # how much
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=3,
)


def apply_damage(files: dict[str, bytes], damages) -> dict[str, bytes]:
    files = dict(files)
    for kind, which, where, amount, junk in damages:
        names = sorted(files)
        if not names:
            break
        name = names[min(int(which * len(names)), len(names) - 1)]
        data = bytearray(files[name])
        if not data:
            continue
        at = min(int(where * len(data)), len(data) - 1)
        if kind == "flip":
            data[at] ^= 1 << (amount % 8)
        elif kind == "zero":
            data[at : at + amount] = bytes(len(data[at : at + amount]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "garbage":
            data[at : at + len(junk)] = junk
        else:
            del files[name]
            continue
        files[name] = bytes(data)
    return files


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops_list=ops, damages=damage)
def test_c_recovery_matches_the_reference_after_any_damage(tmp_path_factory, ops_list, damages):
    d = tmp_path_factory.mktemp("dmg")
    model = run_both(ops_list, d)
    damaged = apply_damage(model.files(), damages)
    assume(damaged)
    write_dir(d, damaged)
    try:
        want = ref.recover(damaged, str(d))
    except CorruptLogError as e:
        want = e
    try:
        with LogStore(d, segment_size=SEG) as log:
            got = (log.first_position, log.next_position, tuple(log.scan()))
        files_after = read_dir(d)
    except CorruptLogError as e:
        event("corrupt")
        assert isinstance(want, CorruptLogError), f"C says corrupt ({e}), reference recovers"
        assert (e.path, e.offset) == (want.path, want.offset), (str(e), str(want))
        return
    assert not isinstance(want, CorruptLogError), f"C recovers, reference says {want}"
    event("torn tail cut" if files_after != damaged else "recovered as is")
    assert got == (want.first_pos, want.next_pos, want.records)
    assert files_after == want.files


def test_reference_and_c_agree_on_crc32c():
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert ref.crc32c(data) == _native.crc32c(data)
    assert ref.crc32c(b"123456789") == 0xE3069283  # the standard check value


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_both_crc_paths_agree(data, seed):
    hw = _native.lib.meridian_crc32c_hardware()
    try:
        _native.lib.meridian_crc32c_select(0)
        portable = _native.crc32c(data, seed)
        _native.lib.meridian_crc32c_select(1)
        fast = _native.crc32c(data, seed)
    finally:
        _native.lib.meridian_crc32c_select(hw)
    assert portable == fast == ref.crc32c(data, seed)
