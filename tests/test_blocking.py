"""The blocking client (engine.blocking) against an in-process cluster.

Integration tests: one single-node cluster runs in a background thread for the whole module and
the tests talk to it over loopback from the test thread, as a non-async application would.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import math
import subprocess
import sys
import threading
import time

import pytest
import trio

from engine import errors
from engine.blocking import (
    BlockingDatabase,
    BlockingTransaction,
    _ambiguous_on_close,
    _closed_error,
    connect_blocking,
)
from engine.client import Database, Transaction
from engine.local import free_base_port
from engine.merge import decode_int, encode_int

from clusterthread import ClusterThread


@pytest.fixture(scope="module")
def addresses():
    cluster = ClusterThread()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def db(addresses):
    with connect_blocking(addresses) as database:
        yield database


_names = itertools.count()


@pytest.fixture
def ks(db) -> str:
    """A fresh keyspace for the test (the cluster is shared by the module)."""
    name = f"b{next(_names)}"
    db.create_keyspace(name)
    return name


def _client_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "meridian-blocking-client"}


# ---------------------------------------------------------------------- basics


def test_create_keyspace_and_list_it(db):
    created = db.create_keyspace("blocking-catalog")
    assert created.name == "blocking-catalog" and created.home == "us-east"
    assert "blocking-catalog" in [k.name for k in db.list_keyspaces()]
    assert db.keyspace("blocking-catalog") == created
    db.drop_keyspace("blocking-catalog")
    assert "blocking-catalog" not in [k.name for k in db.list_keyspaces()]
    assert isinstance(db, BlockingDatabase) and db.region == "us-east"


def test_transaction_commits_on_clean_exit_with_read_your_writes(db, ks):
    with db.transaction() as tx:
        assert isinstance(tx, BlockingTransaction)
        assert tx.get(ks, b"a") is None
        tx.put(ks, b"a", b"1")
        tx.put(ks, "b", "2")  # text is UTF-8
        assert tx.get(ks, b"a") == b"1"  # its own pending write
        assert tx.scan(ks) == [(b"a", b"1"), (b"b", b"2")]
        assert tx.get_many(ks, [b"b", b"zz", "a"]) == [b"2", None, b"1"]
        tx.delete(ks, b"b")
        assert tx.scan(ks) == [(b"a", b"1")]
        assert tx.commit_ts == 0
    assert tx.read_ts > 0 and tx.commit_ts > tx.read_ts and tx.txn_id > 0
    assert db.read(ks, b"a") == b"1"
    value, ts = db.read_version(ks, b"a")
    assert value == b"1" and ts >= tx.commit_ts
    assert db.read(ks, b"b") is None


@pytest.mark.parametrize("keys", ["alice", b"alice", None, 5])
def test_get_many_of_one_key_or_no_iterable_is_refused(db, ks, keys):
    # One key given as the keys: a str was read as its letters, answering five values (None)
    # for keys nobody asked for while "alice" held a value; a bytes as its byte values ("key
    # must be bytes or str, not int"); None or an int failed as a TypeError from list().
    with db.transaction() as tx:
        tx.put(ks, b"alice", b"1")
    with db.transaction() as tx:
        with pytest.raises(errors.InvalidArgumentError, match="keys must be an iterable"):
            tx.get_many(ks, keys)
        assert tx.get_many(ks, iter([b"alice"])) == [b"1"]


def test_run_transaction_does_not_run_again_a_transaction_its_function_committed(db, ks):
    # A conflict raised by the function after its own commit (another transaction's) was
    # retried: the function ran again and committed its increment a second time.
    def add_one(tx):
        tx.put(ks, b"n", b"%d" % (int(tx.get(ks, b"n") or b"0") + 1))
        tx.commit()
        raise errors.TransactionConflictError("another transaction's conflict", "write_write")

    with pytest.raises(errors.TransactionConflictError, match="another transaction's"):
        db.run_transaction(add_one, base_delay_s=0, max_delay_s=0)
    assert db.read(ks, b"n") == b"1"


def test_transaction_rolls_back_on_exception_and_explicit_rollback(db, ks):
    with pytest.raises(KeyError):
        with db.transaction() as tx:
            tx.put(ks, b"k", b"lost")
            raise KeyError("boom")
    assert db.read(ks, b"k") is None

    tx = db.transaction()
    tx.put(ks, b"k", b"lost too")
    tx.rollback()
    assert db.read(ks, b"k") is None
    with pytest.raises(errors.TransactionClosedError):
        tx.put(ks, b"k", b"v")

    tx = db.transaction("serializable")
    assert tx.isolation == "serializable"
    tx.put(ks, b"k", b"kept")
    tx.commit()
    assert db.read(ks, b"k") == b"kept"
    with pytest.raises(errors.TransactionClosedError):
        tx.commit()


def test_scan_limit_reverse_and_get_for_update(db, ks):
    db.run_transaction(lambda tx: [tx.put(ks, b"k%d" % i, b"v%d" % i) for i in range(5)])
    with db.transaction() as tx:
        assert tx.scan(ks, b"k1", b"k4") == [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", b"v3")]
        assert tx.scan(ks, limit=2, reverse=True) == [(b"k4", b"v4"), (b"k3", b"v3")]
        assert tx.get_for_update(ks, b"k0") == b"v0"


def test_status_reports_every_node(db):
    # The one node leads every group once its elections are over (the first test of a fresh
    # cluster may come before they are).
    deadline = time.monotonic() + 10
    while True:
        status = db.status()
        assert len(status) == 1
        (node,) = status.values()
        roles = {g["role"] for g in node["groups"].values()}
        if roles == {"leader"} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert roles == {"leader"}


# ---------------------------------------------------------------------- conflicts


def test_two_transactions_writing_the_same_key_one_conflicts(db, ks):
    db.run_transaction(lambda tx: tx.put(ks, b"x", b"0"))
    t1, t2 = db.transaction(), db.transaction()
    assert t1.get(ks, b"x") == b"0" and t2.get(ks, b"x") == b"0"
    t1.put(ks, b"x", b"1")
    t2.put(ks, b"x", b"2")
    t1.commit()
    with pytest.raises(errors.TransactionConflictError) as info:
        t2.commit()
    assert info.value.reason == "write_write"
    assert db.read(ks, b"x") == b"1"


def test_run_transaction_retries_a_conflict(db, ks):
    db.run_transaction(lambda tx: tx.put(ks, b"n", b"10"))
    attempts = []

    def increment(tx):
        attempts.append(tx.txn_id)
        n = int(tx.get(ks, b"n"))
        if len(attempts) == 1:
            # Another transaction commits the key after this one's snapshot: this commit
            # must be refused and the function run again.
            with db.transaction() as other:
                other.put(ks, b"n", b"100")
        tx.put(ks, b"n", b"%d" % (n + 1))
        return n + 1

    assert db.run_transaction(increment) == 101
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert db.read(ks, b"n") == b"101"


def test_run_transaction_gives_up_after_max_attempts(db, ks):
    attempts = 0

    def always_loses(tx):
        nonlocal attempts
        attempts += 1
        tx.get(ks, b"hot")
        db.run_transaction(lambda other: other.put(ks, b"hot", b"%d" % attempts))
        tx.put(ks, b"hot", b"mine")

    with pytest.raises(errors.TransactionConflictError):
        db.run_transaction(always_loses, max_attempts=3, base_delay_s=0.0)
    assert attempts == 3
    assert db.read(ks, b"hot") == b"3"


def test_run_transaction_rolls_back_and_reraises_other_errors(db, ks):
    def fails(tx):
        tx.put(ks, b"never", b"1")
        raise ZeroDivisionError("no")

    with pytest.raises(ZeroDivisionError):
        db.run_transaction(fails)
    assert db.read(ks, b"never") is None


def test_run_transaction_refuses_async_functions(db, ks):
    async def coro_fn(tx):  # pragma: no cover - never called
        pass

    with pytest.raises(errors.InvalidArgumentError, match="plain function"):
        db.run_transaction(coro_fn)
    with pytest.raises(errors.InvalidArgumentError, match="awaitable"):
        db.run_transaction(lambda tx: coro_fn(tx))
    with pytest.raises(errors.InvalidArgumentError, match="max_attempts"):
        db.run_transaction(lambda tx: None, max_attempts=0)


BAD_RETRY_POLICIES = ({"base_delay_s": -0.1}, {"base_delay_s": math.nan},
                      {"max_delay_s": math.inf}, {"base_delay_s": 1.0, "max_delay_s": 0.1},
                      {"max_attempts": 2.5}, {"max_attempts": True})


def test_run_transaction_refuses_a_bad_retry_policy_before_running(db, ks):
    # A negative or NaN delay went unnoticed until the first conflict, when the backoff's
    # sleep raised ValueError in place of the conflict, without running the function again;
    # a base delay above the maximum slept longer than the maximum.
    runs = 0

    def loses_once(tx):
        nonlocal runs
        runs += 1
        if runs == 1:
            raise errors.TransactionConflictError("lost", "write_write")

    for policy in BAD_RETRY_POLICIES:
        with pytest.raises(errors.InvalidArgumentError):
            db.run_transaction(loses_once, **policy)
        assert runs == 0, policy
    db.run_transaction(loses_once, base_delay_s=0.0, max_delay_s=0.0)
    assert runs == 2


def test_threads_can_share_a_database(db, ks):
    db.run_transaction(lambda tx: tx.put(ks, b"c", b"0"))

    def increment(tx):
        tx.put(ks, b"c", b"%d" % (int(tx.get(ks, b"c")) + 1))

    failures = []

    def worker():
        try:
            for _ in range(5):
                db.run_transaction(increment, max_attempts=100)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
    assert db.read(ks, b"c") == b"20"


# ---------------------------------------------------------------------- errors


def test_errors_reach_the_caller_with_their_type(db, ks):
    with pytest.raises(errors.InvalidArgumentError, match="does not exist"):
        db.read("no-such-keyspace", b"k")
    with db.transaction() as tx:
        with pytest.raises(errors.InvalidArgumentError, match="does not exist"):
            tx.get("no-such-keyspace", b"k")
        with pytest.raises(errors.InvalidArgumentError, match="empty"):
            tx.put(ks, b"", b"v")
        with pytest.raises(errors.RecordTooLargeError):
            tx.put(ks, b"k", b"x" * (db.limits["max_value_size"] + 1))
        with pytest.raises(errors.InvalidArgumentError, match="limit"):
            tx.scan(ks, limit=-1)
    with pytest.raises(errors.InvalidArgumentError, match="isolation"):
        db.transaction("chaos")
    with pytest.raises(errors.InvalidArgumentError, match="staleness"):
        db.read(ks, b"k", staleness="fresh:1")
    with pytest.raises(errors.InvalidArgumentError, match="keyspace name"):
        db.create_keyspace("Bad Name")
    # The very exception object crosses the thread boundary, not a copy or a wrapper.
    try:
        db.read("no-such-keyspace", b"k")
    except errors.InvalidArgumentError as exc:
        assert type(exc) is errors.KeyspaceNotFoundError


def test_connect_failures_propagate_and_leave_no_thread(addresses):
    before = _client_threads()
    port = free_base_port(1)  # nothing listens there
    with pytest.raises(errors.UnavailableError, match="no node answered"):
        connect_blocking([f"127.0.0.1:{port}"], request_timeout_s=0.5)
    with pytest.raises(errors.InvalidArgumentError, match="unknown region"):
        connect_blocking(addresses, region="mars")
    with pytest.raises(errors.InvalidArgumentError, match="host:port"):
        connect_blocking(["not-an-address"])
    assert _client_threads() == before


def test_calls_from_inside_trio_are_refused(db, ks, addresses):
    async def misuse():
        with pytest.raises(RuntimeError, match="async client"):
            db.read(ks, b"k")
        with pytest.raises(RuntimeError, match="async client"):
            connect_blocking(addresses)

    trio.run(misuse)
    assert db.read(ks, b"k") is None  # still usable from a plain thread


# ---------------------------------------------------------------------- closing


def test_use_after_close_raises_and_close_is_idempotent(addresses):
    before = _client_threads()
    db = connect_blocking(addresses)
    name = f"b{next(_names)}"
    db.create_keyspace(name)
    tx = db.transaction()
    tx.put(name, b"k", b"v")
    assert db.closed is False
    db.close()
    db.close()
    assert db.closed is True
    closed = "the database connection is closed"
    with pytest.raises(errors.InvalidArgumentError, match=closed):
        db.read(name, b"k")
    with pytest.raises(errors.InvalidArgumentError, match=closed):
        db.transaction()
    with pytest.raises(errors.InvalidArgumentError, match=closed):
        tx.commit()
    with pytest.raises(errors.InvalidArgumentError, match=closed):
        db.run_transaction(lambda tx: None)
    # A transaction block failing after the close reports its own error, not the close.
    with pytest.raises(ZeroDivisionError):
        with tx:
            raise ZeroDivisionError
    with db:  # entering a closed database is allowed; leaving it closes nothing new
        pass
    assert _client_threads() == before


def test_ending_a_transaction_needs_no_connection(addresses):
    """A rollback is local (the writes were only buffered), as in the async API: it succeeds
    after the connection is closed, and so does the end of a ``with`` block whose commit
    failed inside it (the application has that failure; the close adds none)."""
    db = connect_blocking(addresses)
    name = f"b{next(_names)}"
    db.create_keyspace(name)
    db.run_transaction(lambda tx: tx.put(name, b"x", b"0"))
    pending = db.transaction()
    pending.put(name, b"k", b"v")
    with db.transaction() as tx:
        winner = db.transaction()
        assert tx.get(name, b"x") == winner.get(name, b"x") == b"0"
        tx.put(name, b"x", b"1")
        winner.put(name, b"x", b"2")
        winner.commit()
        with pytest.raises(errors.TransactionConflictError):
            tx.commit()
        db.close()
    pending.rollback()
    pending.rollback()
    assert pending._tx._state == "rolled back"
    with connect_blocking(addresses) as other:
        assert other.read(name, b"x") == b"2" and other.read(name, b"k") is None


def test_a_failure_to_close_does_not_hide_the_exception_leaving_the_block(addresses):
    """The exception leaving ``with connect_blocking(...)`` is the application's own even when
    closing then fails (here: a background task of the connection raises as it is cancelled);
    the failure to close is noted on it. With no exception leaving, the failure is raised."""

    async def fails_when_cancelled():
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("closing failed")

    def start_failing_task(db):
        db._portal.call(lambda: db._db()._nursery.start_soon(fails_when_cancelled),
                        is_async=False)

    with pytest.raises(KeyError) as info:
        with connect_blocking(addresses) as db:
            start_failing_task(db)
            raise KeyError("the application's own")
    assert info.value.args == ("the application's own",)
    assert any("closing failed" in note for note in info.value.__notes__)
    assert db.closed and not db._portal.thread.is_alive()

    with pytest.raises(RuntimeError, match="closing failed"):
        with connect_blocking(addresses) as db:
            start_failing_task(db)


def test_no_thread_is_left_behind(addresses):
    before = _client_threads()
    for _ in range(3):
        with connect_blocking(addresses) as db:
            thread = db._portal.thread
            # A daemon: exiting never waits for it (the exit hook closes the connection).
            assert thread is not None and thread.is_alive() and thread.daemon
            assert thread in _client_threads()
            db.list_keyspaces()
        assert not thread.is_alive()
    assert _client_threads() == before


def _parked_call(db, **options) -> tuple[threading.Thread, list[BaseException]]:
    """A thread whose call into ``db``'s loop waits for ever (``options``: the portal's, such
    as ``on_cancel``), started and waiting; and the list that gets what the call raised."""
    started = threading.Event()
    outcome: list[BaseException] = []

    async def parked():
        started.set()
        await trio.sleep_forever()

    def caller():
        try:
            db._portal.call(parked, **options)
        except BaseException as exc:  # checked by the test thread
            outcome.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    assert started.wait(10)
    return t, outcome


@pytest.mark.parametrize("on_cancel, error, message", [
    (_closed_error, errors.InvalidArgumentError, "connection is closed"),
    (_ambiguous_on_close, errors.AmbiguousCommitError, "may or may not have committed"),
])
def test_close_cancels_calls_in_flight(addresses, on_cancel, error, message):
    """close() from another thread ends a call that is still running: with the "closed" error,
    or AmbiguousCommitError for a commit (it may have been applied)."""
    db = connect_blocking(addresses)
    t, outcome = _parked_call(db, on_cancel=on_cancel)
    db.close()
    t.join()
    assert len(outcome) == 1 and type(outcome[0]) is error
    assert message in str(outcome[0])


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_close_does_not_fail_the_block_of_a_transaction_already_ended(addresses, end):
    """A transaction committed (or rolled back) inside its ``with`` block has a known outcome:
    the connection closed by another thread before the block ends does not turn the end of the
    block into an error, as if the transaction had failed."""
    db = connect_blocking(addresses)
    name = f"b{next(_names)}"
    db.create_keyspace(name)
    with db.transaction() as tx:
        tx.put(name, b"k", b"v")
        getattr(tx, end)()
        closer = threading.Thread(target=db.close)
        closer.start()
        closer.join()
    assert db.closed
    with connect_blocking(addresses) as other:
        assert other.read(name, b"k") == (b"v" if end == "commit" else None)


def test_ctrl_c_during_a_call_cancels_the_call_and_the_connection_stays_usable(db, ks):
    """KeyboardInterrupt in the calling thread while a call runs (Ctrl-C in a script or a
    REPL): the call is cancelled in the client's thread before the interrupt reaches the
    application, so nothing it gave up on goes on behind its back, and the connection
    serves the next call."""
    import signal

    started, ended = threading.Event(), threading.Event()

    async def parked():
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    def ctrl_c():
        assert started.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    t = threading.Thread(target=ctrl_c)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            db._portal.call(parked)
    finally:
        t.join()
    assert ended.is_set()  # cancelled and ended before the interrupt surfaced
    with db.transaction() as tx:
        tx.put(ks, b"after", b"ctrl-c")
    with db.transaction() as tx:
        assert tx.get(ks, b"after") == b"ctrl-c"


def test_a_dropped_database_is_closed_by_the_garbage_collector(addresses):
    db = connect_blocking(addresses)
    thread = db._portal.thread
    del db
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()


def _run_script(script: str, timeout: float = 60) -> list[str]:
    """Runs ``script`` in a fresh interpreter, which must exit with status 0 within
    ``timeout`` seconds; returns the lines it printed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_interpreter_exits_with_a_connection_never_closed(addresses):
    script = (
        "import sys\n"
        "from engine.blocking import connect_blocking\n"
        f"db = connect_blocking({addresses!r})\n"
        "db.list_keyspaces()\n"
        "print('connected')\n"
    )
    assert _run_script(script) == ["connected"]


def test_the_interpreter_exits_when_a_collection_in_the_exit_hook_closes_a_connection(addresses):
    """A collection may start at any allocation, so also while the exit hook holds the lock of
    the open connections. If it frees a database never closed (in a reference cycle), its
    finalizer closes it and waits for the client's thread, which must then end without that
    lock. Here the collection is made to run at that moment. (weakref.finalize stops running
    finalizers at exit, in its own exit hook: one made before the first connection, as
    tempfile and many libraries make them, runs after the client's, and so too late.)"""
    script = (
        "import gc, weakref\n"
        "import engine.blocking as blocking\n"
        "gc.disable()  # collections run only where the script says\n"
        "class Resource:\n"
        "    pass\n"
        "resource = Resource()\n"
        "weakref.finalize(resource, lambda: None)\n"
        "class CollectedWhileListed(set):\n"
        "    def __iter__(self):\n"
        "        gc.collect()\n"
        "        return super().__iter__()\n"
        "blocking._open_portals = CollectedWhileListed()\n"
        f"db = blocking.connect_blocking({addresses!r})\n"
        "db.list_keyspaces()\n"
        "db.cycle = db\n"
        "del db\n"
        "print('connected', flush=True)\n"
    )
    assert _run_script(script, timeout=30) == ["connected"]


def test_threads_still_using_a_connection_after_the_main_thread_returns_keep_it(addresses):
    """The connection is closed at exit only after the application's (non-daemon) threads
    have ended, and then it is closed cleanly; the process exits."""
    script = (
        "import atexit, threading\n"
        "from engine.blocking import connect_blocking\n"
        "main_returned = threading.Event()\n"
        "# Registered before the client's hooks, so it runs after any the client registers\n"
        "# for the moment the main thread ends (LIFO).\n"
        "threading._register_atexit(main_returned.set)\n"
        "# Likewise, runs after the client's own atexit hook.\n"
        "atexit.register(lambda: print('closed at exit:', db.closed,\n"
        "                              db._portal.thread.is_alive(), flush=True))\n"
        f"db = connect_blocking({addresses!r})\n"
        "db.create_keyspace('exit-workers')\n"
        "def worker():\n"
        "    main_returned.wait()\n"
        "    for i in range(5):\n"
        "        db.run_transaction(lambda tx: tx.put('exit-workers', 'k', str(i)))\n"
        "    print('worker committed', db.read('exit-workers', 'k'), flush=True)\n"
        "threading.Thread(target=worker).start()\n"
    )
    assert _run_script(script) == ["worker committed b'4'", "closed at exit: True False"]


# ---------------------------------------------------------------------- the whole API


def _public(cls) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}


def test_every_public_method_of_the_async_client_has_a_blocking_twin():
    for async_cls, blocking_cls in [(Database, BlockingDatabase),
                                    (Transaction, BlockingTransaction)]:
        blocking = _public(blocking_cls)
        for name, method in _public(async_cls).items():
            if not callable(method):
                continue
            assert name in blocking, f"{blocking_cls.__name__} has no {name}"
            params = list(inspect.signature(method).parameters.values())
            twin = list(inspect.signature(blocking[name]).parameters.values())
            # Same names, kinds and defaults (annotations may differ: Blocking* types).
            assert [(p.name, p.kind, p.default) for p in params] == \
                [(p.name, p.kind, p.default) for p in twin], name


@pytest.fixture(scope="module")
def two_regions():
    cluster = ClusterThread(regions=("us-east", "eu-west"), nodes_per_region=1, seed=13)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_regional_keyspaces_conflict_logs_statistics_and_moves(two_regions):
    with connect_blocking(two_regions, region="us-east") as db:
        counters = db.create_keyspace("b-counters", mode="regional", resolver="counter")
        assert (counters.mode, counters.resolver) == ("regional", "counter")
        with db.transaction() as tx:
            tx.increment("b-counters", "hits", 5)
            tx.increment("b-counters", "hits")
            tx.merge("b-counters", "hits", encode_int(10))
        assert decode_int(db.read("b-counters", "hits")) == 16
        assert db.conflicts("b-counters") == []
        db.drain_conflicts("b-counters", [])
        assert db.group_of(counters) == db.group_of(db.keyspace("b-counters"))

        db.create_keyspace("b-moving")
        db.run_transaction(lambda tx: tx.put("b-moving", "k", "v"))
        moved = db.move_keyspace("b-moving", "eu-west")
        assert moved.home == "eu-west"
        assert db.read("b-moving", "k") == b"v"

        stats = db.statistics()
        assert {"replication_lag_ms", "cross_region_bytes", "nodes"} <= set(stats)
        sent_received = db.bytes_by_node()
        assert sent_received and all(s > 0 and r > 0 for s, r in sent_received.values())


def test_a_loop_that_stops_by_itself_is_reported_as_such(addresses, monkeypatch):
    """The client's trio side crashing by itself (here: a background task of the connection
    fails) reaches the call in flight as UnavailableError caused by that crash, not as the
    "closed" error of a connection the application never closed, however late the client's
    thread gets to record it; and close() then does not raise it again as a failure of its
    own."""
    real_run = trio.run
    reported = threading.Event()

    def run_slow_to_report(*args, **kwargs):
        try:
            return real_run(*args, **kwargs)
        finally:
            # The client's thread is slow to hand on how the run ended (the calling thread
            # is scheduled first): it waits until the caller has seen its error.
            if threading.current_thread().name == "meridian-blocking-client":
                reported.wait(30)

    monkeypatch.setattr(trio, "run", run_slow_to_report)
    db = connect_blocking(addresses)

    async def boom():
        raise RuntimeError("a background task crashed")

    async def crash_and_wait():
        db._db()._nursery.start_soon(boom)
        await trio.sleep_forever()

    try:
        with pytest.raises(errors.UnavailableError, match="connection stopped") as info:
            db._portal.call(crash_and_wait)
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(errors.UnavailableError, match="connection stopped"):
            db.list_keyspaces()
    finally:
        reported.set()
    db.close()  # the crash was reported already: not a failure of closing
    with pytest.raises(errors.InvalidArgumentError, match="connection is closed"):
        db.list_keyspaces()


def test_a_loop_killed_by_an_internal_error_is_closed_and_says_why(addresses):
    """An internal error in the client's loop (here: a callback run in it raises, which trio
    reports as TrioInternalError) kills the run from outside the connection's task. The call
    running then, and every later call at once, raise UnavailableError caused by that error
    (not the "closed" error of a connection the application never closed, nor a bare
    Cancelled), and the handle says it is closed."""
    db = connect_blocking(addresses)
    t, outcome = _parked_call(db)

    def internal_error():
        raise RuntimeError("an internal error")

    db._portal._token.run_sync_soon(internal_error)
    t.join(30)
    assert not t.is_alive() and len(outcome) == 1
    assert type(outcome[0]) is errors.UnavailableError
    assert isinstance(outcome[0].__cause__, trio.TrioInternalError)
    assert db.closed is True and repr(db).endswith("closed>")
    with pytest.raises(errors.UnavailableError, match="TrioInternalError") as info:
        db.list_keyspaces()
    assert info.value.__cause__ is outcome[0].__cause__
    db.close()  # not a failure of closing
    assert not db._portal.thread.is_alive()


def test_run_transaction_does_not_commit_again_a_transaction_its_function_ended(db, ks):
    with db.transaction() as tx:
        tx.put(ks, b"alice", b"100")
    runs = 0

    def debit(tx):
        nonlocal runs
        runs += 1
        balance = int(tx.get(ks, b"alice"))
        tx.put(ks, b"alice", b"%d" % (balance - 10))
        tx.commit()

    db.run_transaction(debit)
    assert runs == 1
    assert db.read(ks, b"alice") == b"90"
    db.run_transaction(lambda tx: (tx.put(ks, b"alice", b"0"), tx.rollback()))
    assert db.read(ks, b"alice") == b"90"


def test_a_commit_in_flight_when_the_loop_stops_by_itself_is_ambiguous(addresses, monkeypatch):
    # UnavailableError promises that nothing was committed by the request that raised it; a
    # commit sent, or perhaps sent, before the connection's loop stopped may have been applied.
    db = connect_blocking(addresses)
    try:
        name = f"b{next(_names)}"
        db.create_keyspace(name)
        in_flight = threading.Event()

        async def commit_then_crash(self, *args):
            # The commit is on its way to the leader when a background task of the
            # connection fails, which stops the client's loop.
            in_flight.set()

            async def boom():
                raise RuntimeError("a background task crashed")

            self._db._nursery.start_soon(boom)
            await trio.sleep_forever()

        monkeypatch.setattr(Transaction, "_commit_one", commit_then_crash)
        tx = db.transaction()
        tx.put(name, b"alice", b"90")
        with pytest.raises(errors.AmbiguousCommitError,
                           match="may or may not have committed") as info:
            tx.commit()
        assert in_flight.is_set()
        assert isinstance(info.value.__cause__, RuntimeError)  # why the loop stopped
        # Calls other than commits still say that the connection stopped.
        with pytest.raises(errors.UnavailableError, match="connection stopped"):
            db.list_keyspaces()
    finally:
        db.close()


def test_a_forked_child_is_refused_the_parents_connection(addresses):
    """A child made by fork() has a copy of the handle but not the client's thread: its calls
    are refused at once (they waited for ever), closing there leaves the parent's connection
    alone, and the parent goes on using it."""
    script = (
        "import os, signal\n"
        "from engine.blocking import connect_blocking\n"
        f"db = connect_blocking({addresses!r})\n"
        "db.create_keyspace('forked')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.alarm(5)  # a child that hangs must not outlive the test\n"
        "    try:\n"
        "        db.read('forked', 'k')\n"
        "    except Exception as exc:\n"
        "        print('child:', type(exc).__name__, exc, flush=True)\n"
        "    db.close()\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('child exit:', os.waitstatus_to_exitcode(status))\n"
        "db.run_transaction(lambda tx: tx.put('forked', 'k', 'parent'))\n"
        "print('parent:', db.read('forked', 'k'))\n"
        "db.close()\n"
    )
    lines = _run_script(script, timeout=40)
    assert lines[0].startswith("child: InvalidArgumentError")
    assert "before this process was forked" in lines[0]
    assert lines[1:] == ["child exit: 0", "parent: b'parent'"]


def test_a_transaction_used_by_two_threads_at_once_is_refused(db, ks):
    """A transaction is not safe to use from two threads at once: a call made while another
    thread's call of it runs (here: a read waiting for its answer) is refused, rather than
    racing with it (a commit sent then would not validate the read, which would still move
    the snapshot of a transaction already committed). One thread at a time is fine."""
    tx = db.transaction("serializable")
    started, release = threading.Event(), threading.Event()
    real_get_many = tx._tx.get_many

    async def slow_get_many(keyspace, keys):
        started.set()
        await trio.to_thread.run_sync(release.wait)
        return await real_get_many(keyspace, keys)

    tx._tx.get_many = slow_get_many
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(tx.get(ks, b"k")))
    reader.start()
    try:
        assert started.wait(10)
        for use in (lambda: tx.put(ks, b"k", b"v"), tx.commit, tx.rollback):
            with pytest.raises(errors.InvalidArgumentError, match="two threads at once"):
                use()
    finally:
        release.set()
        reader.join()
    assert outcome == [None]
    tx.put(ks, b"k", b"v")
    tx.commit()
    assert db.read(ks, b"k") == b"v"


def _notes_of_interrupted(commit, ctrl_c, *, then=None) -> list[str]:
    """The notes of the KeyboardInterrupt ``commit()`` raises while ``ctrl_c`` (run in a
    thread, sending SIGINT to the main thread) interrupts it; ``then`` runs once it has."""
    t = threading.Thread(target=ctrl_c)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            commit()
    finally:
        t.join()
        if then is not None:
            then()
    return getattr(info.value, "__notes__", [])


def test_ctrl_c_during_a_commit_says_its_outcome_is_unknown(db, ks, monkeypatch):
    """A commit cut short by Ctrl-C once sent may have been applied: the KeyboardInterrupt
    says so (a note, as AmbiguousCommitError would), from commit(), the end of a ``with``
    block and run_transaction alike, where the application no longer holds the transaction
    to ask it."""
    import signal

    in_flight = threading.Event()

    async def parked_commit(self, *args):
        in_flight.set()
        await trio.sleep_forever()

    def ctrl_c():
        assert in_flight.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def in_a_block():
        with db.transaction() as tx:
            tx.put(ks, b"k", b"v")

    def explicitly():
        tx = db.transaction()
        tx.put(ks, b"k", b"v")
        tx.commit()

    assert threading.current_thread() is threading.main_thread()
    monkeypatch.setattr(Transaction, "_commit_one", parked_commit)
    for commit in (explicitly, in_a_block,
                   lambda: db.run_transaction(lambda tx: tx.put(ks, b"k", b"v"))):
        in_flight.clear()
        notes = _notes_of_interrupted(commit, ctrl_c)
        assert len(notes) == 1 and "may or may not have committed" in notes[0]


def test_ctrl_c_as_a_commit_completes_says_that_it_committed(db, ks, monkeypatch):
    """Ctrl-C reaching the application after its commit was applied (the answer was on its
    way back): the KeyboardInterrupt says that the transaction committed, so that it is not
    taken for one cut short before it was sent and run again."""
    import signal

    committed = threading.Event()
    real_commit = Transaction.commit

    async def commit_then_park(self):
        await real_commit(self)
        committed.set()
        await trio.sleep_forever()  # the answer not yet back in the calling thread

    def ctrl_c():
        assert committed.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    monkeypatch.setattr(Transaction, "commit", commit_then_park)
    tx = db.transaction()
    tx.put(ks, b"k", b"v")
    notes = _notes_of_interrupted(tx.commit, ctrl_c)
    assert len(notes) == 1 and "had committed" in notes[0]
    assert db.read(ks, b"k") == b"v"


def test_a_second_ctrl_c_during_a_commit_still_says_its_outcome_is_unknown(db, ks, monkeypatch):
    """A second Ctrl-C stops the wait for the commit the first one cancelled: the commit may
    still be applied, and the KeyboardInterrupt says so."""
    import signal

    from engine import blocking

    in_flight, cancelled, release = threading.Event(), threading.Event(), threading.Event()

    class WatchedCall(blocking._Call):
        @property
        def interrupted(self):
            return self._interrupted

        @interrupted.setter
        def interrupted(self, value):
            self._interrupted = value
            if value:
                cancelled.set()

    async def slow_commit_one(self, *args):
        in_flight.set()
        await trio.to_thread.run_sync(release.wait)  # not cut short by the cancellation

    def ctrl_c_twice():
        assert in_flight.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        assert cancelled.wait(10)  # the first one cancelled the call: the caller waits for it
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    monkeypatch.setattr(blocking, "_Call", WatchedCall)
    monkeypatch.setattr(Transaction, "_commit_one", slow_commit_one)
    tx = db.transaction()
    tx.put(ks, b"k", b"v")
    notes = _notes_of_interrupted(tx.commit, ctrl_c_twice, then=release.set)
    assert len(notes) == 1 and "may or may not have committed" in notes[0]
