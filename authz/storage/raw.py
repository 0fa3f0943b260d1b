"""``RawStatements``: statements compiled once, run on pooled DBAPI connections.

For the few statements on the request path and the audit shipper's inserts: SQLAlchemy's per-call
statement building, events and result objects cost 3 to 25 times what the database itself spends
(an ownership lookup: 200 µs around an 8 µs query). The SQL still comes from SQLAlchemy, compiled
for the engine's dialect with its parameter style and its type conversions (bind processors);
only the execution is direct. Failures are handled as Core would: the connection is discarded,
and after a damaged SQLite file the whole pool (``db.STALE_SQLITE_ERRORS``).
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ClauseElement, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler

from authz.blocking import about_to_wait
from authz.errors import StoreError
from authz.storage.db import BUSY_TIMEOUT_MS, STALE_SQLITE_ERRORS, Database, describe


class _Compiled:
    def __init__(
        self,
        statement: ClauseElement,
        db: Database,
        column_keys: Sequence[str] | None,
        converters: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        dialect = db.engine.dialect
        compiled = cast(
            SQLCompiler, statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        )
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        for name, converter in (converters or {}).items():
            if name not in compiled.binds:
                raise ValueError(f"no parameter {name!r} in {self.sql}")
            processors[name] = converter
        self.processors = processors
        if self.order is not None:  # positional: pick the parameters used in C, convert the few typed ones
            order = self.order
            self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
                operator.itemgetter(*order) if len(order) > 1 else lambda values: tuple(values[key] for key in order)
            )
            self._convert = tuple((index, processors[key]) for index, key in enumerate(order) if key in processors)

    def args(self, values: Mapping[str, Any]) -> Any:
        processors = self.processors
        if self.order is not None:
            picked = self._pick(values)
            if not self._convert:
                return picked
            converted = list(picked)
            for index, convert in self._convert:
                converted[index] = convert(converted[index])
            return tuple(converted)
        if processors:
            return {key: processors[key](value) if key in processors else value for key, value in values.items()}
        return values


_LOCK_POLL_FIRST = 0.0001  # s
_LOCK_POLL_MAX = 0.002


def _begin_immediate(cursor: Any, error: type[Exception]) -> None:
    """``BEGIN IMMEDIATE`` on a pooled connection: its ``busy_timeout`` bounds the wait for the
    lock (``_poll_write_lock``) and is restored before anything else runs on the connection."""
    timeout_ms = int(cursor.execute("PRAGMA busy_timeout").fetchone()[0])
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        _poll_write_lock(cursor, error, time.monotonic() + timeout_ms / 1000)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")


def _poll_write_lock(cursor: Any, error: type[Exception], deadline: float) -> None:
    """``BEGIN IMMEDIATE`` on a connection whose ``busy_timeout`` is 0, polling for SQLite's write
    lock here rather than in SQLite, until ``deadline`` (``time.monotonic()``).

    SQLite's busy handler sleeps 1, 2, 5, 10, 15 ms... between attempts, so a writer that arrived
    during the audit shipper's few-ms transaction took the lock up to 10-20 ms after it was free
    (an ownership record, which dockerd waits for). Polling from 0.1 ms, doubling up to 2 ms, takes
    it soon after its release.
    """
    pause = _LOCK_POLL_FIRST
    while True:
        try:
            cursor.execute("BEGIN IMMEDIATE")
            return
        except error as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        about_to_wait()  # another process writes: the worker's other connections go on meanwhile
        time.sleep(pause)
        pause = min(pause * 2, _LOCK_POLL_MAX)


class Transaction:
    """One transaction's statements: ``run`` returns rows, ``many`` runs one statement per row."""

    def __init__(self, cursor: Any, compiled: Mapping[str, _Compiled]) -> None:
        self._cursor = cursor
        self._compiled = compiled

    def run(self, name: str, values: Mapping[str, Any]) -> list[Any]:
        statement = self._compiled[name]
        self._cursor.execute(statement.sql, statement.args(values))
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

    def count(self, name: str, values: Mapping[str, Any]) -> int:
        """Run ``name`` (an UPDATE or DELETE) and return how many rows it changed."""
        statement = self._compiled[name]
        self._cursor.execute(statement.sql, statement.args(values))
        return int(self._cursor.rowcount)

    def many(self, name: str, arguments: Sequence[Any]) -> None:
        """Run ``name`` once per entry of ``arguments`` (from ``RawStatements.arguments``)."""
        self._cursor.executemany(self._compiled[name].sql, arguments)


class RawStatements:
    """``statements`` by name; ``column_keys`` names the columns an INSERT sets (all given per row);
    ``converters`` replaces the type's conversion of some parameters (a faster JSON encoder)."""

    def __init__(
        self,
        db: Database,
        statements: Mapping[str, ClauseElement],
        column_keys: Mapping[str, Sequence[str]] | None = None,
        converters: Mapping[str, Mapping[str, Callable[[Any], Any]]] | None = None,
        *,
        hold_connections: bool = False,
    ) -> None:
        self._db = db
        # SQLite, ``hold_connections``: transactions run on connections kept out of the pool.
        held = hold_connections and db.sqlite
        self._writer = _HeldWriter(db) if held else None
        self._readers = _HeldReaders(db) if held else None
        keys, convert = column_keys or {}, converters or {}
        self._compiled = {name: _Compiled(statement, db, keys.get(name), convert.get(name))
                          for name, statement in statements.items()}  # fmt: skip
        dialect = db.engine.dialect
        dbapi = getattr(dialect, "loaded_dbapi", None) or dialect.dbapi
        self._dbapi_error: type[Exception] = dbapi.Error if dbapi is not None else Exception

    def arguments(self, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The DBAPI parameters of ``rows`` for ``Transaction.many``: converted before the
        transaction, so SQLite's write lock is held only while the database itself works."""
        statement = self._compiled[name]
        return [statement.args(row) for row in rows]

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[Transaction]:
        """One transaction, committed at the end when ``write``; database errors become ``StoreError``."""
        if write and self._writer is not None:
            with self._writer.transaction(self._connect, self._dbapi_error, self._forget_stale) as cursor:
                yield Transaction(cursor, self._compiled)
            return
        held = self._readers.take(self._connect) if not write and self._readers is not None else None
        if held is not None and self._readers is not None:
            yield from self._held_read(self._readers, *held)
            return
        raw = self._connect()
        try:
            cursor = raw.cursor()
            try:
                if write and self._db.sqlite:
                    _begin_immediate(cursor, self._dbapi_error)  # take the write lock first, as Core does
                yield Transaction(cursor, self._compiled)
                if write:
                    raw.commit()
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            raw.invalidate(exc)
            self._forget_stale(exc)
            raise StoreError(f"database error: {exc}") from exc
        finally:
            raw.close()  # back to the pool, which rolls back whatever was left open

    def _connect(self) -> Any:
        """A connection from the pool (the held ones are taken from it too); ``StoreError`` if none."""
        try:
            return self._db.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc
        except self._dbapi_error as exc:  # raised as is by a connect listener (SQLite pragmas)
            self._forget_stale(exc)
            raise StoreError(f"database error: {exc}") from exc

    def _held_read(self, readers: _HeldReaders, connection: Any, generation: int) -> Iterator[Transaction]:
        """A read on a held connection: autocommit statements, no transaction to end; closing the
        cursor resets a statement left unfinished, so no snapshot outlives the read."""
        broken = False
        try:
            cursor = connection.cursor()
            try:
                yield Transaction(cursor, self._compiled)
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            broken = True
            self._forget_stale(exc)
            raise StoreError(f"database error: {exc}") from exc
        finally:
            readers.give(connection, generation, broken)

    def _forget_stale(self, exc: Exception) -> None:
        if any(marker in str(exc) for marker in STALE_SQLITE_ERRORS):
            self._db.engine.dispose(close=False)  # other pooled connections cache the bad page too


class _HeldReaders:
    """Up to ``limit`` SQLite connections kept out of the pool for a repository's reads.

    A lookup through the pool (an ownership lookup by name, on every ``docker exec box``) paid for
    the checkout and the checkin, events and reset rollback included: the exec create of
    ``bench/decision_cpu.py``, which looks its container up by name, took 157 µs at least, 137
    through these. They keep their ``busy_timeout`` (a WAL reader can meet a checkpoint's lock).
    More concurrent reads than ``limit`` use the pool; the engine's disposal closes the idle ones
    and retires those in use; a forked child opens its own.
    """

    def __init__(self, db: Database, limit: int = 4) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._open = 0  # of the current generation, idle or in use
        self._generation = 0
        self._pid = os.getpid()
        event.listen(db.engine, "engine_disposed", self._on_dispose)

    def _on_dispose(self, _engine: Any) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
            self._open = 0
        for connection in idle:
            _close(connection, None)

    def take(self, connect: Callable[[], Any]) -> tuple[Any, int] | None:
        """An idle connection, or a new one from ``connect`` while fewer than ``limit`` are open;
        None: use the pool."""
        with self._lock:
            if self._pid != os.getpid():  # never touch the parent's connections
                self._idle, self._open, self._pid = [], 0, os.getpid()
                self._generation += 1
            if self._idle:
                return self._idle.pop(), self._generation
            if self._open >= self._limit:
                return None
            self._open += 1
            generation = self._generation
        try:
            return connect(), generation
        except BaseException:
            with self._lock:
                if generation == self._generation:
                    self._open -= 1
            raise

    def give(self, connection: Any, generation: int, broken: bool) -> None:
        with self._lock:
            current = generation == self._generation and self._pid == os.getpid()
            if current and not broken:
                self._idle.append(connection)
                return
            if current:
                self._open -= 1
        _close(connection, None)


def _close(connection: Any, exc: BaseException | None) -> None:
    """Close a held connection for good (it never goes back to the pool)."""
    with contextlib.suppress(Exception):
        connection.invalidate(exc)
        connection.close()


class _HeldWriter:
    """One SQLite connection kept out of the pool for a repository's write transactions.

    A write through the pool paid for the checkout and the checkin (its reset rollback), and for
    reading, zeroing and restoring ``busy_timeout`` around ``BEGIN IMMEDIATE``: the AuthZRes that
    records a create's owner took 135 µs at least, 113 through this connection
    (``bench/decision_cpu.py``), its statements alone 26. This connection's ``busy_timeout``
    is read once, when it is opened, and then set to 0 for good (``_poll_write_lock`` waits within
    it instead); it never goes back to the pool. Writes of the process take turns on it, as they
    would on SQLite's one write lock. After a database error, a fork, or the engine's disposal
    (a damaged or replaced file) the next write opens a new one.
    """

    def __init__(self, db: Database) -> None:
        self._lock = threading.Lock()
        self._connection: Any = None  # the pool's connection wrapper, checked out for good
        self._pid = 0
        self._timeout = 0.0  # s: the connection's busy_timeout as opened
        self._disposed = False
        event.listen(db.engine, "engine_disposed", self._on_dispose)

    def _on_dispose(self, _engine: Any) -> None:
        self._disposed = True  # another thread may be writing: the next write drops the connection

    @contextlib.contextmanager
    def transaction(
        self, connect: Callable[[], Any], error: type[Exception], forget_stale: Callable[[Exception], None]
    ) -> Iterator[Any]:
        started = time.monotonic()
        budget = self._timeout or BUSY_TIMEOUT_MS / 1000  # not open yet: the default bounds the wait
        if not self._lock.acquire(blocking=False):
            about_to_wait()  # another thread of this process writes
            if not self._lock.acquire(timeout=budget):
                raise StoreError(f"database error: database is locked (this process's writes waited {budget:g} s)")
        try:
            connection = self._open(connect, error, forget_stale)
            try:
                cursor = connection.cursor()
                try:
                    try:
                        _poll_write_lock(cursor, error, started + self._timeout)
                    except error as exc:
                        if "locked" not in str(exc):
                            raise
                        # Busy past the timeout: no transaction began, the connection stays good.
                        raise StoreError(f"database error: {exc}") from exc
                    try:
                        yield cursor
                    except BaseException:
                        try:
                            connection.rollback()
                        except error as exc:  # the connection's state is unknown: never write on it again
                            self._drop(exc)
                        raise
                    connection.commit()
                finally:
                    with contextlib.suppress(Exception):
                        cursor.close()
            except error as exc:
                self._drop(exc)
                forget_stale(exc)
                raise StoreError(f"database error: {exc}") from exc
        finally:
            self._lock.release()

    def _open(
        self, connect: Callable[[], Any], error: type[Exception], forget_stale: Callable[[Exception], None]
    ) -> Any:
        if self._connection is not None and (self._disposed or self._pid != os.getpid()):
            if self._pid == os.getpid():
                self._drop(None)
            self._connection = None  # a forked child never touches its parent's connection
        if self._connection is None:
            self._disposed = False
            connection = connect()
            try:
                cursor = connection.cursor()
                try:
                    self._timeout = int(cursor.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
                    cursor.execute("PRAGMA busy_timeout=0")
                finally:
                    cursor.close()
            except error as exc:
                _close(connection, exc)
                forget_stale(exc)
                raise StoreError(f"database error: {exc}") from exc
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def _drop(self, exc: BaseException | None) -> None:
        """Close the connection for good (its ``busy_timeout`` of 0 must not reach the pool)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            _close(connection, exc)
