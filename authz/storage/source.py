"""What the plugin reads from the store while deciding, bounded so that no answer waits on it.

- ``StorePolicySource``: the compiled ``PolicySnapshot``, refreshed by revision: the one-row
  revision is read at most once per ``poll`` s and the snapshot (policy, revoked token ids,
  break-glass grants, one transaction) rebuilt only when it moved. Started (the plugin) it polls
  in a background thread and ``current()`` never touches the store (to catch up with a revision
  a token names, issued just after a change, it wakes the poller and waits at most ``deadline``);
  unstarted (tests, CLI, simulator) ``current()`` polls inline. When the store fails,
  ``on_error`` decides: ``last-known`` decides from the last snapshot (fail static), ``deny``
  refuses everything until the store answers; with no snapshot ever loaded both deny.
- ``DeadlineOwnership``: ownership lookups and changes bounded by the decision deadline (a late
  or failed lookup is "owner unknown", which denies ``own`` roles; changes queue and retry).
- ``bounded_database``: statements give up after a timeout; ``recycle_on_corruption``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from authz.blocking import about_to_wait
from authz.errors import AuthzError, StoreError
from authz.policy.model import PolicySnapshot
from authz.ports import OwnershipStore
from authz.storage.db import STALE_SQLITE_ERRORS, Database, is_sqlite
from authz.storage.directory import PolicyStore
from authz.storage.revision import read_revision
from authz.storage.tokens import active_grants_in, revoked_ids_in

__all__ = [
    "ON_STORE_ERROR_MODES",
    "DeadlineOwnership",
    "StorePolicySource",
    "bounded_database",
    "recycle_on_corruption",
]

log = logging.getLogger(__name__)

ON_STORE_ERROR_MODES = ("last-known", "deny")
_MIN_BACKGROUND_POLL = 0.05  # AUTHZ_REVISION_POLL=0 must not become a busy loop in the poller


# SQLite errors after which a pooled connection must not be reused: it may hold the garbage it read.


def recycle_on_corruption(db: Database) -> Database:
    """Make SQLite's "not a database"/"malformed" errors drop the whole connection pool.

    A connection that read a damaged file keeps the damaged first page in its cache for as long as
    the WAL index does not move, which it will not while every write fails: it would go on
    failing after the file is repaired or restored. Counting these errors as disconnects makes
    SQLAlchemy discard the pool, so the next connection reads the file afresh.
    """
    if not db.sqlite:
        return db

    @event.listens_for(db.engine, "handle_error")
    def _stale(context: Any) -> None:
        if any(text in str(context.original_exception) for text in STALE_SQLITE_ERRORS):
            context.is_disconnect = True

    return db


def bounded_database(url: str, timeout: float) -> Database:
    """A ``Database`` whose every statement gives up after about ``timeout`` seconds.

    SQLite waits for a lock at most ``timeout`` (instead of ``db.BUSY_TIMEOUT_MS``); PostgreSQL
    cancels statements and lock waits after it and gives up connecting after
    ``max(2, ceil(timeout))`` s (libpq's minimum). Callers that need a hard bound still run the
    call in a thread (``DeadlineOwnership``): a server that accepts but never answers is only cut
    off by ``connect_timeout``.
    """
    millis = max(1, round(timeout * 1000))
    if not is_sqlite(url):
        options = f"-c statement_timeout={millis} -c lock_timeout={millis}"
        return Database(url, connect_args={"connect_timeout": max(2, math.ceil(timeout)), "options": options})
    db = recycle_on_corruption(Database(url))

    @event.listens_for(db.engine, "connect")
    def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        # Registered after Database's own listener, so it runs later and wins.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={millis}")
        finally:
            cursor.close()

    return db


class StorePolicySource:
    """Implements ``authz.ports.PolicySource``; one per process, safe to share between threads."""

    def __init__(
        self,
        db: Database,
        poll: float = 0.5,
        store: PolicyStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        on_error: str = "last-known",
        deadline: float = 0.2,
    ) -> None:
        """``deadline``: how long ``current()`` waits for the first snapshot once started."""
        if on_error not in ON_STORE_ERROR_MODES:
            raise ValueError(f"on_error must be one of {ON_STORE_ERROR_MODES}, not {on_error!r}")
        self.db = db
        self.poll = poll
        self.store = store or PolicyStore(db)
        self.on_error = on_error
        self.deadline = deadline
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._loaded = threading.Condition()
        self._snapshot: PolicySnapshot | None = None
        self._checked_at = -float("inf")  # start of the last poll that succeeded
        self._polled_at = -float("inf")  # start of the last poll, whatever its outcome
        self._failing = False
        self._error: str | None = None  # why the last poll failed (None: it succeeded)
        self._attempted = False  # a poll has finished (succeeded or failed) at least once
        self._polls_finished = 0  # counts polls (any outcome): a catch-up waits for one it asked for
        self._polling = False  # a poll is under way (it may have read the revision too early)
        self._futile_until = -float("inf")  # no catch-up before this (monotonic): the last one fell short
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a catch-up asks the poller for a poll now
        self._prepare: tuple[Callable[[PolicySnapshot], None], ...] = ()

    def on_new_snapshot(self, prepare: Callable[[PolicySnapshot], None]) -> None:
        """Run ``prepare`` on every newly loaded snapshot before it is served, and now on the current one.

        The authorizer compiles the policy there: in the poller's thread, not in the first request
        after a change (15 ms for 100 roles, more with more). Every authorizer sharing this source
        registers its own.
        """
        self._prepare = (*self._prepare, prepare)
        snapshot = self._snapshot
        if snapshot is not None:
            self._run_prepare(snapshot, (prepare,))

    @staticmethod
    def _run_prepare(snapshot: PolicySnapshot, callbacks: tuple[Callable[[PolicySnapshot], None], ...]) -> None:
        for prepare in callbacks:
            try:
                prepare(snapshot)
            except Exception:  # the request that needs it will try again and say what failed
                log.exception("preparing policy revision %d failed", snapshot.revision)

    # ------------------------------------------------------------ background mode

    def start(self) -> StorePolicySource:
        """Poll in a daemon thread from now on (call after the fork: threads are per process)."""
        with self._loaded:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-poll", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        interval = max(self.poll, _MIN_BACKGROUND_POLL)
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._refresh()
            except Exception:  # the poller must outlive any failure; _refresh recorded the error
                log.debug("policy poll failed", exc_info=True)
            self._wake.wait(interval)
            self._wake.clear()

    @property
    def stale_after(self) -> float:
        """Seconds without a successful poll after which the store counts as failing (a hung poll)."""
        return 2 * max(self.poll, _MIN_BACKGROUND_POLL) + 1.0

    def problem(self) -> str | None:
        """Why the snapshot may be out of date (the store failed or hangs), or None."""
        if self._failing:
            return f"the policy store failed: {self._error}"
        age = self._monotonic() - self._checked_at
        if self._thread is not None and self._snapshot is not None and age > self.stale_after:
            return f"the policy store has not answered for {age:.1f}s"
        return None

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: the revision held, how old the last good poll is, the error if any."""
        snapshot = self._snapshot
        age = self._monotonic() - self._checked_at
        return {
            "policy_revision": snapshot.revision if snapshot is not None else None,
            "policy_age_seconds": round(age, 3) if math.isfinite(age) else None,
            "policy_problem": self.problem(),
            "on_store_error": self.on_error,
        }

    # ------------------------------------------------------------ the port

    def current(self, at_least: int = 0) -> PolicySnapshot:
        """The newest snapshot, or ``StoreError``: none loaded yet, or the store fails under ``deny``.

        ``at_least``: see ``authz.ports.PolicySource``; an older snapshot is refreshed first.
        """
        if self._thread is None:
            snapshot = self._current_inline()
            return snapshot if snapshot.revision >= at_least else self._catch_up(snapshot, at_least)
        snapshot = self._snapshot if self._snapshot is not None else self._wait_first()
        if snapshot.revision < at_least:
            snapshot = self._catch_up(snapshot, at_least)
        if self.on_error == "deny":
            problem = self.problem()
            if problem is not None:
                # Fail closed by configuration: a stale policy may still allow a revoked token.
                raise StoreError(f"{problem}; AUTHZ_ON_STORE_ERROR=deny refuses to decide without it")
        return snapshot

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        """The newest snapshot loaded whatever ``on_error`` says; ``StoreError`` if none ever was."""
        if self._thread is None:
            try:
                snapshot = self._current_inline()
            except StoreError:
                if self._snapshot is None:
                    raise
                snapshot = self._snapshot
        else:
            snapshot = self._snapshot if self._snapshot is not None else self._wait_first()
        return snapshot if snapshot.revision >= at_least else self._catch_up(snapshot, at_least)

    def _catch_up(self, held: PolicySnapshot, at_least: int) -> PolicySnapshot:
        """A snapshot of revision ``at_least`` if the store has it, within ``deadline``; else ``held``.

        Started, the poller thread is woken to poll now and the caller waits for that poll (at
        most ``deadline``): the store is still read only by the poller, so a hung store delays
        this request by the deadline, no more. Unstarted, the caller polls itself. A revision
        the store did not reach (a token issued against another database, or before a restore),
        or no poll within the deadline, makes the catch-ups of the next ``_MIN_BACKGROUND_POLL``
        s serve the held snapshot at once: such tokens must not make every request wait.
        """
        if self._monotonic() < self._futile_until:
            return held
        if self._thread is None:
            snapshot = self._poll_inline(held)
        else:
            about_to_wait()  # for the poller's next poll
            with self._loaded:
                # A poll that starts after this: the one under way may have read the revision early.
                wanted = self._polls_finished + (2 if self._polling else 1)
                self._wake.set()
                self._loaded.wait_for(
                    lambda: (
                        self._polls_finished >= wanted
                        or (self._snapshot is not None and self._snapshot.revision >= at_least)
                    ),
                    timeout=self.deadline,
                )
                snapshot = self._snapshot or held
        if snapshot.revision < at_least:
            self._futile_until = self._monotonic() + _MIN_BACKGROUND_POLL
        return snapshot

    def _poll_inline(self, held: PolicySnapshot) -> PolicySnapshot:
        with self._lock:
            try:
                return self._refresh()
            except StoreError:
                return self._snapshot or held

    def _wait_first(self) -> PolicySnapshot:
        about_to_wait()  # for the poller's first poll
        with self._loaded:
            self._loaded.wait_for(lambda: self._snapshot is not None or self._attempted, timeout=self.deadline)
            snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        # Fail closed: with no policy ever loaded there is nothing safe to decide with.
        if self._error is not None:
            raise StoreError(f"no policy loaded and the store failed: {self._error}")
        raise StoreError(f"no policy loaded yet: the store did not answer within {self.deadline * 1000:.0f} ms")

    def _current_inline(self) -> PolicySnapshot:
        snapshot = self._snapshot
        if snapshot is not None and self._monotonic() - self._polled_at < self.poll:
            return snapshot
        # Another thread is refreshing: serve the snapshot we have rather than queue behind it.
        if not self._lock.acquire(blocking=snapshot is None):
            return snapshot  # type: ignore[return-value]  # non-blocking only when snapshot is set
        try:
            if self._snapshot is not None and self._monotonic() - self._polled_at < self.poll:
                return self._snapshot
            try:
                return self._refresh()
            except StoreError:
                if self._snapshot is None or self.on_error == "deny":
                    raise
                return self._snapshot
        finally:
            self._lock.release()

    # ------------------------------------------------------------ polling

    def _refresh(self) -> PolicySnapshot:
        """Poll once (caller holds ``_lock``); ``StoreError`` when the store failed."""
        previous = self._snapshot
        started = self._polled_at = self._monotonic()
        with self._loaded:
            self._polling = True
        try:
            with self.db.session(consistent=True) as session:
                revision = read_revision(session)
                if previous is not None and previous.revision == revision:
                    snapshot = previous
                else:
                    now = self._wall()
                    snapshot = PolicySnapshot(
                        revision=revision,
                        policy=self.store.load_in(session),
                        revoked_tokens=revoked_ids_in(session, now),
                        breakglass=active_grants_in(session, now),
                    )
        except (AuthzError, OSError) as exc:
            # Fail static, not open: the last good policy keeps denying what it denied; denying
            # everyone during an outage would stop the admins who must fix it (on_error=deny
            # chooses that anyway). Changes made meanwhile (revocations) apply once it is back.
            self._error = str(exc)
            if not self._failing and previous is not None:
                log.error("policy store failed, keeping revision %d until it recovers: %s", previous.revision, exc)
            elif not self._failing:
                log.error("policy store failed and no policy is loaded: every request is denied: %s", exc)
            self._failing = True
            self._finish_attempt()
            if previous is None:
                raise StoreError(f"no policy loaded and the store failed: {exc}") from exc
            raise StoreError(f"the policy store failed: {exc}") from exc
        if snapshot is not previous:
            self._run_prepare(snapshot, self._prepare)
        if self._failing:
            log.warning("policy store recovered at revision %d", snapshot.revision)
        self._failing, self._error = False, None
        self._snapshot, self._checked_at = snapshot, started
        self._finish_attempt()
        return snapshot

    def _finish_attempt(self) -> None:
        with self._loaded:
            self._attempted = True
            self._polling = False
            self._polls_finished += 1
            self._loaded.notify_all()


class DeadlineOwnership:
    """Implements ``authz.ports.OwnershipStore`` over two repositories, bounded in time.

    ``lookups`` answers ``owner_of`` (use one on a ``bounded_database``), within ``deadline``: in a
    pool thread, so that a store that stops answering (a PostgreSQL server behind a dead network)
    costs the request the deadline, not its life. ``inline_lookups`` (a local SQLite file, whose
    readers never wait for its writer in WAL mode, and whose ``busy_timeout`` is then the deadline)
    runs them in the caller's thread: the hop to the pool and back cost an exec or a start
    100-400 µs.
    ``writes`` takes ``record``/``forget``/``rename`` in a single writer thread, in call order,
    retried with backoff while the store fails (at most ``queue_limit`` waiting; beyond that a
    write is dropped and logged: its object's owner stays unknown, which denies ``own`` roles).
    The caller (an AuthZRes, not a decision) waits up to ``healthy_wait`` while the store is
    healthy, so that ordinary lock contention (SQLite has one writer) does not leave a fresh
    container ownerless for the user's next command. A change queued behind others waits until the
    oldest one has waited ``healthy_wait`` (``deadline`` at least); once writes fail, ``deadline``.
    ``inline_writes`` (the local SQLite file again) first makes a change in the caller's thread
    through ``lookups`` when nothing is queued and the store is healthy; only a change that fails
    there goes to the writer thread. The hop to the writer and back cost a create's AuthZRes
    50-90 µs, and 3-4 ms when the woken writer waited for the GIL (3-5 % of them at 1 connection).
    """

    def __init__(
        self,
        lookups: OwnershipStore,
        writes: OwnershipStore,
        deadline: float,
        *,
        threads: int = 4,
        queue_limit: int = 10_000,
        max_backoff: float = 5.0,
        healthy_wait: float = 2.0,
        inline_lookups: bool = False,
        inline_writes: bool = False,
    ) -> None:
        self._lookups = lookups
        self._inline_lookups = inline_lookups
        self._inline_writes = inline_writes
        self._healthy_wait = max(healthy_wait, deadline)
        self._write_failing = False  # the last write attempt failed (cleared by the next success)
        self._lookups_failing = False  # for logging the change only
        self._writes = writes
        self.deadline = deadline
        self._threads = threads
        self._queue_limit = queue_limit
        self._max_backoff = max_backoff
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        # (op, args, done, when it was queued): the oldest one's healthy wait bounds those behind it.
        self._queue: collections.deque[tuple[str, tuple[str, ...], threading.Event, float]] = collections.deque()
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False
        # Owners recorded by this process that the store has not taken yet: (kind, id or name) -> owner.
        self._pending_owners: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------ lookups

    def owner_of(self, kind: str, reference: str) -> str | None:
        """The owner, or None: unknown, ambiguous, or the store did not answer (see ``take_failure``)."""
        with self._cond:
            pending = self._pending_owners.get((kind, _plain_name(kind, reference)))
        if pending is not None:
            return pending  # created through this process a moment ago; the store has it soon
        failed = getattr(self._local, "failure", None)
        if failed is not None and time.monotonic() - failed[1] < self.deadline:
            return None  # this request already waited once: do not wait again for each object
        try:
            owner = self._lookup(kind, reference)
        except concurrent.futures.TimeoutError:
            reason = f"the ownership store did not answer within {self.deadline * 1000:.0f} ms"
        except Exception as exc:
            reason = f"the ownership store failed ({exc})"
        else:
            if self._lookups_failing:
                log.warning("ownership lookups answer again")
                self._lookups_failing = False
            return owner
        # Fail closed: an owner we cannot read is an owner we do not know; own-only roles deny.
        self._local.failure = (reason, time.monotonic())
        if not self._lookups_failing:  # once per outage, not once per request
            log.error("ownership lookups fail, owners count as unknown until the store answers: %s", reason)
            self._lookups_failing = True
        return None

    def _lookup(self, kind: str, reference: str) -> str | None:
        if self._inline_lookups:
            return self._lookups.owner_of(kind, reference)
        if self._pool is None:
            with self._cond:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="ownership")
        future = self._pool.submit(self._lookups.owner_of, kind, reference)
        about_to_wait()
        try:
            return future.result(timeout=self.deadline)
        except concurrent.futures.TimeoutError:
            future.cancel()  # still queued behind stuck lookups: drop it
            raise

    def take_failure(self) -> str | None:
        """Why a lookup on this thread answered "unknown" since the last call (and forget it)."""
        failure: tuple[str, float] | None = getattr(self._local, "failure", None)
        self._local.failure = None
        return failure[0] if failure is not None else None

    # ------------------------------------------------------------ writes

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        self._submit("record", (kind, object_id, name or "", owner))

    def forget(self, kind: str, reference: str) -> None:
        self._submit("forget", (kind, reference))

    def forget_named(self, kind: str, name: str) -> None:
        self._submit("forget_named", (kind, name))

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        self._submit("rename", (kind, reference, new_name))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (queued writes are given ``timeout`` to finish)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, op: str, args: tuple[str, ...]) -> None:
        started = time.monotonic()
        if self._inline_writes and self._apply_inline(op, args):
            return
        spent = time.monotonic() - started  # a failed inline try counts against the wait below
        done = threading.Event()
        with self._cond:
            if self._closed:
                raise StoreError("ownership store is closed")
            # A store that fails gets the deadline only: do not hang the daemon. A change queued
            # behind others waits as long as the oldest one's healthy wait lasts, the deadline at
            # least: answered before it lands, its container would be ownerless on the other workers
            # while a policy apply holds SQLite's lock for a moment; and an outage still costs the
            # AuthZRes of its first healthy wait only.
            if self._write_failing:
                wait = self.deadline - spent
            elif self._queue:
                wait = max(self.deadline, self._queue[0][3] + self._healthy_wait - time.monotonic())
            else:
                wait = self._healthy_wait - spent
            if len(self._queue) >= self._queue_limit:
                raise StoreError(f"{len(self._queue)} ownership changes are waiting for the store; dropped this one")
            self._queue.append((op, args, done, started))
            if op == "record":
                kind, object_id, name, owner = args
                self._pending_owners[(kind, object_id)] = owner
                if name:
                    self._pending_owners[(kind, _plain_name(kind, name))] = owner
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="ownership-writer", daemon=True)
                self._writer.start()
            self._cond.notify()
        about_to_wait()
        if not self._wait_for(done, wait):
            # The daemon must not wait on the store; the change stays queued and lands when it can.
            raise StoreError(f"the store did not take the ownership change in time ({self._error_hint()}); "
                             "queued, retrying")  # fmt: skip

    def _apply_inline(self, op: str, args: tuple[str, ...]) -> bool:
        """Make the change in this thread; False when it must go through the writer's queue."""
        with self._cond:
            if self._closed or self._queue or self._write_failing:
                return False  # queued changes go first, in order; a failing store gets the writer's retries
        try:
            self._apply(op, args, self._lookups)
        except StoreError as exc:  # e.g. the lock was busy past the deadline: the writer waits longer
            log.info("ownership %s not made inline, queued for the writer: %s", op, exc)
            return False
        return True

    def _wait_for(self, done: threading.Event, wait: float) -> bool:
        """Whether ``done`` was set within ``wait`` s; a failing store cuts the wait to the deadline."""
        started = time.monotonic()
        while not done.wait(0.02):
            waited = time.monotonic() - started
            if waited >= wait or (self._write_failing and waited >= self.deadline):
                return False
        return True

    def _error_hint(self) -> str:
        return "the store fails" if self._write_failing else "the store is busy"

    def _write_loop(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                op, args, done, _ = self._queue[0]
            try:
                self._apply(op, args, self._writes)
            except StoreError as exc:
                if not self._write_failing:
                    log.error("ownership changes wait for the store (retrying with backoff): %s", exc)
                self._write_failing = True
                if self._closed:
                    return
                backoff = min(self._max_backoff, backoff * 2 or 0.05)
                time.sleep(backoff)
                continue
            except Exception:
                log.exception("ownership %s %s failed; dropped", op, args[:2])
            if self._write_failing:
                log.warning("ownership changes reach the store again")
            backoff, self._write_failing = 0.0, False
            with self._cond:
                self._queue.popleft()
                if op == "record":
                    self._pending_owners.pop((args[0], args[1]), None)
                    self._pending_owners.pop((args[0], _plain_name(args[0], args[2])), None)
            done.set()

    @staticmethod
    def _apply(op: str, args: tuple[str, ...], store: OwnershipStore) -> None:
        if op == "record":
            store.record(args[0], args[1], args[2] or None, args[3])
        elif op == "forget":
            store.forget(*args)
        elif op == "forget_named":
            store.forget_named(*args)
        else:
            store.rename(*args)


def _plain_name(kind: str, reference: str) -> str:
    """Container names as the daemon compares them: with or without the leading "/"."""
    return reference.removeprefix("/") if kind == "container" else reference
