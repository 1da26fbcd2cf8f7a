"""A blocking client for code that is not async: scripts, shells, WSGI apps, notebooks.

Example::

    from engine.blocking import connect_blocking

    with connect_blocking(["127.0.0.1:7101"], region="us-east") as db:
        db.create_keyspace("accounts")

        def transfer(tx):
            a = int(tx.get("accounts", b"alice") or b"0")
            b = int(tx.get("accounts", b"bob") or b"0")
            tx.put("accounts", b"alice", b"%d" % (a - 10))
            tx.put("accounts", b"bob", b"%d" % (b + 10))

        db.run_transaction(transfer)
        with db.transaction() as tx:
            print(tx.get("accounts", b"alice"))

Design
------
:func:`connect_blocking` starts one thread that runs ``trio.run`` and holds an
:func:`engine.client.connect` open in it until :meth:`BlockingDatabase.close`. Every method
call hands its coroutine to that thread with ``trio.from_thread.run`` and blocks the calling
thread until it is done, so the semantics (routing, retries inside ``request_timeout_s``,
isolation, errors) are exactly those of :mod:`engine.client`: an exception raised there reaches
the caller as the same object, of the same type.

The one loop that lives on the caller's side is :meth:`BlockingDatabase.run_transaction`'s
retry loop, because its function is ordinary blocking code and must run in the caller's thread.

Thread-safety: a :class:`BlockingDatabase` may be shared by any number of threads (each call
is its own task in the connection's trio loop). A :class:`BlockingTransaction`, like
:class:`engine.client.Transaction`, must not be used by two threads at once: a call made while
another thread's call of it runs is refused with :class:`~engine.errors.InvalidArgumentError`.

Closing: :meth:`BlockingDatabase.close` cancels the calls still running (a commit cancelled so
raises :class:`~engine.errors.AmbiguousCommitError`, the others the "closed" error), closes the
connections and joins the thread. It is idempotent. A database never closed is closed when it
is garbage-collected and, at the latest, when the interpreter shuts down, so a forgotten
connection never keeps the process alive; threads still using it after the main thread has
returned keep it until they end. If the connection's loop stops by itself (a crash), the calls
still running raise :class:`~engine.errors.UnavailableError` caused by the crash, and a commit
:class:`~engine.errors.AmbiguousCommitError`; later calls raise that UnavailableError at once,
and the database is closed (``closed`` is true).

Ctrl-C: a ``KeyboardInterrupt`` in a thread waiting for a call cancels that call in the
connection's thread and waits for it to end before it reaches the application (a second
Ctrl-C stops the wait), so that nothing the application gave up on goes on behind its back. A
commit interrupted so may or may not have been applied: its ``KeyboardInterrupt`` carries a note
that says so (or that it committed, when the interrupt came as its answer did). The connection
stays open.

Fork: a connection belongs to the process that made it. In a child made by ``os.fork()`` (or
a ``multiprocessing`` pool that forks) its calls raise :class:`~engine.errors.InvalidArgumentError`
at once, and closing it does nothing there: connect again in the child.

Do not use this module from inside a trio run: it would block the event loop. Use
:func:`engine.client.connect` there; the calls raise :class:`RuntimeError` to say so. So do
they from a thread running an asyncio event loop: call them from a worker thread
(``asyncio.to_thread``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import random
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import trio

from .catalog import Keyspace
from .client import (
    ConflictRecord,
    Database,
    Transaction,
    check_conflict_records,
    check_keys,
    check_retry_policy,
    connect,
    refuse_awaitable,
)
from .errors import (
    AmbiguousCommitError,
    InvalidArgumentError,
    TransactionConflictError,
    UnavailableError,
)

__all__ = ["connect_blocking", "BlockingDatabase", "BlockingTransaction"]

_T = TypeVar("_T")

# What _Portal._invoke returns instead of a result: the call was refused because the portal
# is stopping, or it started and was cancelled by close().
_REFUSED = object()
_CANCELLED = object()

_CLOSED_MESSAGE = "the database connection is closed"
_FORKED_MESSAGE = ("the database connection was made before this process was forked and "
                   "belongs to the parent process: connect again in this one")


def _closed_error() -> InvalidArgumentError:
    return InvalidArgumentError(_CLOSED_MESSAGE)


def _only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is trio.Cancelled, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _check_not_in_event_loop(what: str) -> None:
    """Refuses a blocking call from a thread that runs an event loop: it would stop the loop
    for the call's duration, and with it whatever the call waits for on that loop."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(f"{what} blocks, and this thread is running a trio event loop: use "
                           f"the async client (engine.client.connect) here")
    # No asyncio loop can run in a process that never imported asyncio: not imported here.
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks, and this thread is running an asyncio event loop: "
                       f"call it from a worker thread (asyncio.to_thread) instead")


class _Call:
    """One call into the trio thread, as the calling thread may need to cancel it."""

    __slots__ = ("scope", "interrupted", "done")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None  # set in the trio thread once it runs
        self.interrupted = False  # set in the trio thread by _Portal._interrupt
        self.done = threading.Event()  # it ended, or never started


class _Portal:
    """The trio thread and the way into it.

    State shared between threads is guarded by ``_lock``: ``_close_requested`` and ``_token``.
    Everything else is written by the trio thread before ``_ready`` is set (``db``) or only
    touched in the trio thread (``_stopping``, ``_inflight``, ``_scope``).
    """

    def __init__(self) -> None:
        # A child made by fork() has a copy of this object and none of the thread: its calls
        # would wait for ever for a loop that does not run there.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._close_requested = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._stopping = False
        self._inflight: set[trio.CancelScope] = set()
        self.db: Database | None = None
        # Why the trio side stopped, if it did by itself (a failed connect, a crash), or
        # what it raised while close() ended it.
        self.error: BaseException | None = None
        self._failed_closing = False  # the run raised while close() ended it
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifetime

    def start(self, nodes: Sequence[str], options: dict[str, Any]) -> None:
        """Starts the thread and waits until it is connected; raises what connecting raised.
        """
        # A daemon thread, so that exiting never waits for it: the exit hook below closes the
        # connection, once the application's own threads (which may still use it after the
        # main thread has returned) have ended.
        self._thread = threading.Thread(target=self._thread_main, args=(nodes, options),
                                        name="meridian-blocking-client", daemon=True)
        _register(self)
        try:
            self._thread.start()
        except BaseException:
            _unregister(self)
            raise
        try:
            self._ready.wait()
        except BaseException:  # KeyboardInterrupt while connecting: don't leave it behind
            self.close()
            raise
        if self.db is None:
            self.close()
            if self.error is not None:
                raise self.error
            raise _closed_error()

    def _thread_main(self, nodes: Sequence[str], options: dict[str, Any]) -> None:
        try:
            trio.run(self._main, nodes, options)
        except BaseException as exc:  # handed to the caller: start, later calls or close
            if self.error is None:  # raised by trio itself, outside _main
                self.error = exc
        finally:
            self._ready.set()
            _unregister(self)

    async def _main(self, nodes: Sequence[str], options: dict[str, Any]) -> None:
        # Whether close() ended the run, decided in this thread when the run begins to end.
        ended_by_close = False
        try:
            with trio.CancelScope() as scope:
                # No checkpoint between setting _scope and publishing the token: a _stop
                # queued through the token always finds the scope.
                self._scope = scope
                with self._lock:
                    self._token = trio.lowlevel.current_trio_token()
                    if self._close_requested:
                        return
                async with connect(nodes, **options) as db:
                    self.db = db
                    self._ready.set()
                    try:
                        await trio.sleep_forever()
                    finally:
                        ended_by_close = self._stopping
        except BaseException as exc:
            # Recorded here, in the main task, rather than once trio.run has returned: the
            # calls still waiting learn that the run ended (their tasks are cancelled, new
            # ones refused) only after this task has ended, so they always find the error.
            # Only Cancelled: the run is torn down from outside this task (an internal
            # error); trio.run raises why, and _thread_main records that.
            if not _only_cancelled(exc):
                self.error = exc
                self._failed_closing = ended_by_close
            raise

    def _stop(self) -> None:
        """In the trio thread: refuse new calls, cancel running ones, end the run."""
        self._stopping = True
        for scope in self._inflight:
            scope.cancel()
        if self._scope is not None:
            self._scope.cancel()

    def close(self) -> None:
        """Idempotent; safe from any thread, including the trio thread itself (a finalizer
        may run there), where it cannot wait for the thread to end. Raises, once, what the
        trio side raised while shutting down (closing connections), if anything. In a child
        process forked since the connection was made it does nothing: the connection is the
        parent's."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._close_requested = True
            token = self._token
        if token is not None:
            try:
                token.run_sync_soon(self._stop)
            except trio.RunFinishedError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join()
            with self._lock:
                failed, self._failed_closing = self._failed_closing, False
            if failed and self.error is not None:
                raise self.error

    @property
    def closed(self) -> bool:
        """Closed by close(), or stopped by itself (then calls say why)."""
        return self._close_requested or self.error is not None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ------------------------------------------------------------------ calls

    async def _invoke(self, fn: Callable[..., Any], is_async: bool, call: _Call) -> Any:
        try:
            if self._stopping or call.interrupted:
                return _REFUSED
            with trio.CancelScope() as scope:
                call.scope = scope
                self._inflight.add(scope)
                try:
                    return (await fn()) if is_async else fn()
                finally:
                    self._inflight.discard(scope)
            return _CANCELLED  # close() or an interrupt cancelled it
        finally:
            call.done.set()

    def call(self, fn: Callable[..., Any], *args: Any, is_async: bool = True,
             on_cancel: Callable[[], BaseException] | None = None, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` (awaited when ``is_async``) in the trio thread and
        returns its result or raises its exception. ``on_cancel`` makes the error raised
        when the call is cut short after it started: cancelled by close(), or ended with the
        run stopping by itself (then caused by why it stopped). Without it: the "closed"
        error, or the UnavailableError that says why the run stopped."""
        _check_not_in_event_loop("the blocking client")
        if os.getpid() != self._pid:  # before the lock, which another thread may have held
            raise InvalidArgumentError(_FORKED_MESSAGE)
        with self._lock:
            closed, token = self._close_requested, self._token
        if closed or token is None:
            raise _closed_error()
        bound = functools.partial(fn, *args, **kwargs)
        call = _Call()
        try:
            result = trio.from_thread.run(self._invoke, bound, is_async, call, trio_token=token)
        except KeyboardInterrupt:
            self._interrupt(call, token)
            raise
        except (trio.RunFinishedError, trio.Cancelled) as exc:
            # The run ended before or while the call ran: closed, or it stopped by itself
            # (then the error names why, as its cause). Cancelled: while it ran, so that a
            # commit may have been sent.
            error = self._gone_error()
            if isinstance(exc, trio.Cancelled) and on_cancel is not None:
                raise on_cancel() from error.__cause__
            raise error from error.__cause__
        if result is _REFUSED:
            raise _closed_error()
        if result is _CANCELLED:
            raise (on_cancel or _closed_error)()
        return result

    def _interrupt(self, call: _Call, token: trio.lowlevel.TrioToken) -> None:
        """Ctrl-C (KeyboardInterrupt) in the calling thread while it waited for ``call``: the
        call is cancelled in the trio thread, as close() cancels calls, and waited for, so that
        nothing the application gave up on goes on behind its back (a commit cut short this
        way may or may not have been applied). A second Ctrl-C stops the wait."""

        def cancel() -> None:  # in the trio thread: it must not raise
            call.interrupted = True
            if call.scope is not None:
                call.scope.cancel()
            try:
                trio.lowlevel.spawn_system_task(settle)
            except RuntimeError:  # the run is ending: every call is being cancelled
                call.done.set()

        async def settle() -> None:
            # A call that was queued has started (and seen the interrupt) by the next
            # scheduler round; one that has not was never queued: nothing to wait for.
            try:
                await trio.lowlevel.checkpoint()
            finally:
                if call.scope is None:
                    call.done.set()

        try:
            token.run_sync_soon(cancel)
        except trio.RunFinishedError:
            return
        thread = self._thread
        while not call.done.wait(0.5):
            if thread is None or not thread.is_alive():
                return  # the trio thread is gone, and the call with it

    def _gone_error(self) -> BaseException:
        thread = self._thread
        if not self._close_requested and self.error is None and thread is not None:
            # The run is ending by itself, torn down from outside the main task: why is
            # known once trio.run has returned, in the thread's last steps.
            thread.join()
        if self._close_requested or self.error is None:
            return _closed_error()
        error = UnavailableError(f"the database connection stopped: {self.error!r}")
        error.__cause__ = self.error
        return error


# Connections still open when the interpreter exits are closed by an atexit hook. atexit runs
# after the interpreter has joined every non-daemon thread, so no thread of the application is
# still using a connection then (the client threads are daemons, and are still running).
_open_portals: set[_Portal] = set()
_open_portals_lock = threading.Lock()
_hook_registered = False


def _close_open_portals() -> None:
    with _open_portals_lock:
        portals = list(_open_portals)
    for portal in portals:
        # One connection failing to close cleanly must not leave the others open.
        try:
            portal.close()
        except Exception:
            pass  # the process is exiting: nobody is left to hand the error to


def _register(portal: _Portal) -> None:
    global _hook_registered
    with _open_portals_lock:
        _open_portals.add(portal)
        if not _hook_registered:
            atexit.register(_close_open_portals)
            _hook_registered = True


def _unregister(portal: _Portal) -> None:
    # Without the lock (a set's discard is atomic): a collection may start at any allocation
    # in a thread that holds it (the exit hook's, copying the set) and free a database never
    # closed, whose finalizer closes it and waits for its thread, which comes here last.
    _open_portals.discard(portal)


# ---------------------------------------------------------------------- public API


class BlockingDatabase:
    """A blocking connection to a cluster; create it with :func:`connect_blocking`.

    The methods mirror :class:`engine.client.Database`, take the same arguments and raise the
    same exceptions. After :meth:`close` every call raises
    :class:`~engine.errors.InvalidArgumentError` ("the database connection is closed"), but
    a transaction's rollback, which needs no connection.
    A ``with`` block left by an exception raises that exception even if closing then fails
    (the failure is added to it as a note).

    Thread-safety: safe to share between threads.

    Attributes:
        region: the client's region.
        regions: every region of the cluster.
        cluster: the cluster's name.
        limits: the cluster's transaction limits (a dict).
    """

    def __init__(self, portal: _Portal) -> None:
        db = portal.db
        assert db is not None
        self._portal = portal
        self.region: str = db.region
        self.regions: tuple[str, ...] = db.regions
        self.cluster: str = db.cluster
        self.limits: dict = dict(db.limits)
        self._rng = random.Random(secrets.randbits(64))
        # Closes the connection if the last reference is dropped without close(). Transactions
        # hold a reference to the database, so it outlives them.
        self._finalizer = weakref.finalize(self, portal.close)
        self._finalizer.atexit = False  # the exit hook above (_close_open_portals) does it

    def __enter__(self) -> BlockingDatabase:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as close_error:
            # The exception leaving the block is what the application must see, not a
            # failure to close that it caused or met on the way out.
            exc.add_note(f"closing the database connection then failed: {close_error!r}")

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<BlockingDatabase cluster={self.cluster!r} region={self.region!r} {state}>"

    def close(self) -> None:
        """Cancels running calls, closes the connections and waits for the client thread to
        end. Idempotent; later calls raise the "closed" error."""
        self._finalizer.detach()
        self._portal.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called, or the connection's loop stopped by itself."""
        return self._portal.closed

    def _db(self) -> Database:
        db = self._portal.db
        assert db is not None
        return db

    # ------------------------------------------------------------------ catalog

    def create_keyspace(self, name: str, *, mode: str = "global",
                        home_region: str | None = None,
                        resolver: str = "lww", survive: str = "zone") -> Keyspace:
        """Creates a keyspace: ``mode="global"`` homed in ``home_region`` (default: the
        client's region), or ``mode="regional"``, writable in every region, whose concurrent
        writes are reconciled by ``resolver`` (``"lww"``, ``"counter"``, ``"max"`` or
        ``"add_wins_set"``, or ``"app:<name>"``, an application resolver of the nodes'
        ``[cluster.resolvers]``; see :mod:`engine.merge`). ``survive="region"`` (three regions or
        more) puts a global keyspace's voters in three regions: commits wait for a second
        region, and losing a whole region loses no acknowledged write."""
        return self._portal.call(self._db().create_keyspace, name, mode=mode,
                                 home_region=home_region, resolver=resolver, survive=survive)

    def drop_keyspace(self, name: str) -> None:
        """Drops a keyspace; see :meth:`engine.client.Database.drop_keyspace` for what an
        interrupted drop leaves (run the call again to finish it)."""
        self._portal.call(self._db().drop_keyspace, name)

    def list_keyspaces(self) -> list[Keyspace]:
        """Every keyspace's catalog record, by name; see
        :meth:`engine.client.Database.list_keyspaces`."""
        return self._portal.call(self._db().list_keyspaces)

    def keyspace(self, name: str) -> Keyspace:
        """The keyspace's catalog record (cached, for at most
        :data:`engine.client.KEYSPACE_CACHE_S`)."""
        return self._portal.call(self._db().keyspace, name)

    def group_of(self, ks: Keyspace) -> int:
        """The group a keyspace's keys are read and written in, from this client: its home
        region's, or this region's own for a regional keyspace."""
        return self._portal.call(self._db().group_of, ks, is_async=False)

    def move_keyspace(self, name: str, home_region: str) -> Keyspace:
        """Moves a global keyspace to another home region, online, and returns its new
        record; see :meth:`engine.client.Database.move_keyspace` for the steps and what an
        interrupted move leaves (run the call again to finish it)."""
        return self._portal.call(self._db().move_keyspace, name, home_region)

    def conflicts(self, keyspace: str, *, limit: int = 100) -> list[ConflictRecord]:
        """The conflict log of a regional keyspace in this client's region: one record per
        write that lost a concurrent conflict here, oldest key first (ARCH §6). At most
        ``limit`` records, fewer when their losing values are large: drain them to read on."""
        return self._portal.call(self._db().conflicts, keyspace, limit=limit)

    def drain_conflicts(self, keyspace: str, records: Sequence[ConflictRecord]) -> None:
        """Removes records (from :meth:`conflicts`) from the conflict log."""
        self._portal.call(self._db().drain_conflicts, keyspace, check_conflict_records(records))

    # ------------------------------------------------------------------ reads

    def read(self, keyspace: str, key: bytes | str, *,
             staleness: str | None = None) -> bytes | None:
        """One key outside any transaction; see :meth:`engine.client.Database.read`."""
        return self._portal.call(self._db().read, keyspace, key, staleness=staleness)

    def read_version(self, keyspace: str, key: bytes | str, *,
                     staleness: str | None = None) -> tuple[bytes | None, int]:
        """Like :meth:`read`, and also the timestamp the value was read at."""
        return self._portal.call(self._db().read_version, keyspace, key, staleness=staleness)

    def status(self) -> dict:
        """Every node's view of its groups; see :meth:`engine.client.Database.status`."""
        return self._portal.call(self._db().status)

    def statistics(self) -> dict:
        """Cluster statistics: ``replication_lag_ms`` of regional writes per region pair,
        ``cross_region_bytes`` the nodes of one region sent to those of another, and every
        node's status; see :meth:`engine.client.Database.statistics`."""
        return self._portal.call(self._db().statistics)

    def bytes_by_node(self) -> dict[int, tuple[int, int]]:
        """``{node id: (bytes sent, bytes received)}`` over this handle's connections so
        far (the frames; TCP and IP headers not counted)."""
        # The connections belong to the trio thread: they are counted there.
        return self._portal.call(self._db().bytes_by_node, is_async=False)

    # ------------------------------------------------------------------ transactions

    def transaction(self, isolation: str = "snapshot") -> BlockingTransaction:
        """A new transaction; use it as ``with db.transaction() as tx``.

        Raises:
            InvalidArgumentError: an isolation level not in
                :data:`engine.client.ISOLATION_LEVELS`.
        """
        # Transaction() reads the trio clock, so it is made in the trio thread.
        tx = self._portal.call(self._db().transaction, isolation, is_async=False)
        return BlockingTransaction(self, tx)

    def run_transaction(self, fn: Callable[[BlockingTransaction], _T], *,
                        isolation: str = "snapshot", max_attempts: int = 20,
                        base_delay_s: float = 0.002, max_delay_s: float = 0.5) -> _T:
        """Runs ``fn(tx)`` in a transaction and commits it, again on every
        :class:`~engine.errors.TransactionConflictError`, sleeping a random time up to a
        delay that doubles from ``base_delay_s`` to ``max_delay_s`` between attempts (the
        defaults of :meth:`engine.client.Database.run_transaction`).

        ``fn`` is an ordinary function, called in this thread; it must be safe to run several
        times (no side effects outside ``tx``). It may end the transaction itself
        (``commit()`` or ``rollback()``): it is then not committed again, nor run again once
        committed (a conflict it raises afterwards, from another transaction, is raised).

        Returns:
            What the successful ``fn`` returned.

        Raises:
            TransactionConflictError: still conflicting after ``max_attempts`` attempts.
            InvalidArgumentError: a bad retry policy (see
                :func:`engine.client.check_retry_policy`), or ``fn`` is async or not
                callable.
            Anything else ``fn`` or the commit raise, at once, without a retry; the
                transaction is rolled back first. An
                :class:`~engine.errors.AmbiguousCommitError` means it may have committed:
                read to find out before running it again.
        """
        check_retry_policy(max_attempts, base_delay_s, max_delay_s)
        if not callable(fn):
            raise InvalidArgumentError(f"run_transaction takes a function of the transaction, "
                                       f"not {fn!r:.60}")
        if inspect.iscoroutinefunction(fn):
            raise InvalidArgumentError("run_transaction takes a plain function; run async "
                                       "functions with engine.client.Database.run_transaction")
        delay = base_delay_s
        for attempt in range(1, max_attempts + 1):
            tx = self.transaction(isolation)
            try:
                result = fn(tx)
                refuse_awaitable(result, "(run async functions with "
                                         "engine.client.Database.run_transaction)")
                if not tx._tx._ended():
                    tx.commit()
                return result
            except TransactionConflictError as conflict:
                # Not this transaction's conflict if ``fn`` committed it: running ``fn``
                # again would commit its writes a second time.
                committed = tx._tx._state == "committed"
                _roll_back_after(tx, conflict)
                if committed or attempt == max_attempts:
                    raise
            except BaseException as failure:
                _roll_back_after(tx, failure)
                raise
            time.sleep(self._rng.uniform(0, delay))
            delay = min(max_delay_s, delay * 2)
        raise AssertionError("unreachable")  # pragma: no cover


def _roll_back_after(tx: BlockingTransaction, failure: BaseException) -> None:
    """Rolls back the transaction of a function that raised ``failure``: a rollback that
    fails too (say, the transaction held by another thread) is noted on ``failure`` rather
    than raised in its place, so the caller still sees why the function failed."""
    try:
        tx.rollback()
    except Exception as exc:
        failure.add_note(f"rolling transaction {tx.txn_id:#x} back failed too: "
                         f"{type(exc).__name__}: {exc}")


def _ambiguous_on_close() -> AmbiguousCommitError:
    return AmbiguousCommitError("the database connection was closed, or stopped, while the "
                                "commit was in flight: the transaction may or may not have "
                                "committed")


class BlockingTransaction:
    """A transaction of a :class:`BlockingDatabase`; see :class:`engine.client.Transaction`.

    ``with db.transaction() as tx`` commits when the block ends without an exception and rolls
    back otherwise.

    Thread-safety: not safe to use from two threads at once. A call made while another
    thread's call of the same transaction runs raises
    :class:`~engine.errors.InvalidArgumentError` (it would have raced with it: a read landing
    after the commit was sent, say, is not validated by it).

    Attributes:
        isolation: ``"snapshot"`` or ``"serializable"``.
        txn_id: the transaction's id.
        read_ts: the snapshot timestamp, fixed by the first read (0 before).
        commit_ts: the commit timestamp once committed (0 before, and for read-only ones).
    """

    def __init__(self, db: BlockingDatabase, tx: Transaction) -> None:
        self._database = db  # keeps the connection alive while the transaction is
        self._portal = db._portal
        self._tx = tx
        self.isolation: str = tx.isolation
        self.txn_id: int = tx.txn_id
        self._busy = threading.Lock()  # held while a call of this transaction runs

    @property
    def read_ts(self) -> int:
        return self._tx.read_ts

    @property
    def commit_ts(self) -> int:
        return self._tx.commit_ts

    def __repr__(self) -> str:
        return (f"<BlockingTransaction {self.txn_id:#x} {self.isolation} "
                f"read_ts={self.read_ts} commit_ts={self.commit_ts}>")

    def __enter__(self) -> BlockingTransaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._tx._state == "open":
            self.commit()
        elif not self._tx._ended():
            # An exception, or a commit that failed in the block (the application has its
            # error): rolled back, which needs no connection, perhaps closed since.
            self.rollback()

    def get(self, keyspace: str, key: bytes | str) -> bytes | None:
        """The key's value in this transaction's snapshot, or its own pending write."""
        return self._call(self._tx.get, keyspace, key)

    def get_many(self, keyspace: str, keys) -> list[bytes | None]:
        """Several keys of one keyspace in one round trip, in the order given."""
        return self._call(self._tx.get_many, keyspace, check_keys(keys))

    def get_for_update(self, keyspace: str, key: bytes | str) -> bytes | None:
        """Reads a key and adds it to the write set unchanged, so a concurrent writer of it
        conflicts with this transaction (prevents write skew under snapshot isolation)."""
        return self._call(self._tx.get_for_update, keyspace, key)

    def scan(self, keyspace: str, start: bytes | str = b"", end: bytes | str | None = None,
             *, limit: int | None = None, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """Live keys in ``[start, end)``, merged with this transaction's own writes."""
        return self._call(self._tx.scan, keyspace, start, end, limit=limit, reverse=reverse)

    def put(self, keyspace: str, key: bytes | str, value: bytes | str) -> None:
        """Writes ``value`` at ``key`` when the transaction commits; see
        :meth:`engine.client.Transaction.put`."""
        self._call(self._tx.put, keyspace, key, value)

    def delete(self, keyspace: str, key: bytes | str) -> None:
        """Deletes ``key`` when the transaction commits."""
        self._call(self._tx.delete, keyspace, key)

    def merge(self, keyspace: str, key: bytes | str, payload: bytes | str) -> None:
        """A write to a regional keyspace with a merge type (ARCH §6): ``payload`` in the
        resolver's format (:mod:`engine.merge`: an increment for ``counter``, a number for
        ``max``, an add or remove for ``add_wins_set``). One merge per key per transaction,
        except counter increments, which add up."""
        self._call(self._tx.merge, keyspace, key, payload)

    def increment(self, keyspace: str, key: bytes | str, amount: int = 1) -> None:
        """Adds ``amount`` to a counter of a regional keyspace with the ``counter`` resolver."""
        self._call(self._tx.increment, keyspace, key, amount)

    def remove_from_set(self, keyspace: str, key: bytes | str, element: bytes | str) -> None:
        """Removes ``element`` from a set of a regional keyspace with the ``add_wins_set``
        resolver (see :meth:`engine.client.Transaction.remove_from_set`)."""
        self._call(self._tx.remove_from_set, keyspace, key, element)

    def commit(self) -> None:
        """Commits, or raises :class:`~engine.errors.TransactionConflictError` (nothing was
        written).

        Raises:
            AmbiguousCommitError: the outcome is unknown (also when the database was closed
                while the commit was in flight).
        """
        self._commit(self._tx.commit)

    def rollback(self) -> None:
        """Discards the transaction's writes; nothing was sent, so nothing needs undoing. As
        in the async API it needs no connection: it also succeeds once the database is closed
        (or its connection's loop has stopped)."""
        with self._in_use():
            try:
                self._portal.call(self._tx.rollback)
            except (InvalidArgumentError, UnavailableError):
                if not self._portal.closed:
                    raise
                # The loop runs no call of this transaction (this thread holds it) and starts
                # none any more: the writes are dropped here.
                self._tx._discard()

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        """Holds the transaction for one call; refused while another thread's call of it runs."""
        if not self._busy.acquire(blocking=False):
            raise InvalidArgumentError(f"transaction {self.txn_id:#x} is in use by another "
                                       f"thread: a transaction must not be used by two threads "
                                       f"at once")
        try:
            yield
        finally:
            self._busy.release()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The portal's call, refused while another thread's call of this transaction runs."""
        with self._in_use():
            return self._portal.call(fn, *args, **kwargs)

    def _commit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs a commit; a Ctrl-C that cut it short once sent says that its outcome is unknown,
        as AmbiguousCommitError would, and one that came once it was applied says so (the
        application may not keep the transaction to ask)."""
        try:
            self._call(fn, *args, on_cancel=_ambiguous_on_close)
        except KeyboardInterrupt as interrupt:
            state = self._tx._state
            # Still committing: a second Ctrl-C stopped the wait for the cancelled commit.
            if state == "committing" or state.startswith("of unknown outcome"):
                interrupt.add_note(f"transaction {self.txn_id:#x} was interrupted while it "
                                   f"committed: it may or may not have committed (read to "
                                   f"find out before running it again)")
            elif state == "committed":
                interrupt.add_note(f"transaction {self.txn_id:#x} had committed when it was "
                                   f"interrupted (do not run it again)")
            raise


def connect_blocking(nodes: Sequence[str] | str, *, region: str | None = None,
                     request_timeout_s: float = 10.0,
                     simulate_wan: bool = True) -> BlockingDatabase:
    """Connects to a cluster for blocking use; the arguments are those of
    :func:`engine.client.connect`.

    Returns:
        A :class:`BlockingDatabase`, also a context manager that closes it.

    Raises:
        UnavailableError: no node answered.
        InvalidArgumentError: a bad address, an unknown region, or a ``request_timeout_s``
            that is not a number of seconds > 0.
        RuntimeError: called from inside a trio run (use :func:`engine.client.connect`) or
            from a thread running an asyncio event loop (use ``asyncio.to_thread``).
        Whatever else connecting raised; the client thread has ended by then.
    """
    _check_not_in_event_loop("connect_blocking")
    portal = _Portal()
    portal.start(nodes, {"region": region, "request_timeout_s": request_timeout_s,
                         "simulate_wan": simulate_wan})
    return BlockingDatabase(portal)
