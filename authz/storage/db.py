"""Engines, sessions and the translation of database errors.

SQLite is the default store: every connection gets WAL (readers never block the one writer),
foreign keys, a busy timeout and ``synchronous=NORMAL``. pysqlite's own transaction handling is
switched off and we emit ``BEGIN`` ourselves (SQLAlchemy's documented recipe), so that SAVEPOINTs
work and writers can start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
writes can fail at once with "database is locked" instead of waiting for the busy timeout.

PostgreSQL (``postgresql://`` or ``postgresql+psycopg2://``) is used as is.

Every SQLAlchemy error leaving ``Database.session()`` is a ``StoreError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from authz.errors import AuthzError, StoreError

BUSY_TIMEOUT_MS = 5000
_BEGIN_OPTION = "authz_sqlite_begin"


def describe(exc: BaseException) -> str:
    """One line naming the database error, without the SQL statement and its parameters."""
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {detail[0] if detail else ''}"


def _hint(exc: BaseException) -> str:
    text = str(exc)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return " (is the database migrated? run `authzctl init` or `authzctl migrate`)"
    return ""


# SQLite errors after which a pooled connection keeps failing: it caches the damaged first page.
STALE_SQLITE_ERRORS = ("file is not a database", "database disk image is malformed")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite connections get the pragmas listed in the module docstring."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid AUTHZ_DATABASE_URL: {exc}") from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, **kwargs)
            _configure_sqlite(engine)
            return engine
        if parsed.get_backend_name() == "postgresql":
            kwargs.setdefault("pool_pre_ping", True)  # survive server restarts between requests
            return create_engine(parsed, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot create database engine for {parsed.render_as_string()}: {exc}") from exc
    raise StoreError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:// or postgresql://")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())


def leave_checkpoints_to_others(db: Database) -> Database:
    """SQLite: commits on ``db``'s connections never run a WAL checkpoint; another process does.

    A checkpoint runs inside the commit that takes the WAL past 1,000 pages: it copies them into
    the database file and fsyncs it. Under ``authzctl serve`` the workers' commits are ownership
    records, which dockerd waits for, while the audit shipper process writes most of the WAL and
    keeps checkpointing it. Left to chance, a record paid for the checkpoint now and then: beside
    the shipper's inserts its p99 was 2.24 ms (median of 9 runs), 1.48 ms without
    (``bench/ownership_lock_bench.py``, 7 of 9 interleaved pairs better).
    Only for processes with such a companion: the WAL would otherwise grow without bound.
    """
    if db.sqlite and db.checkpoints:
        db.checkpoints = False

        @event.listens_for(db.engine, "connect")
        def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    return db


class Database:
    """One engine and the session factories over it; share one per process."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.checkpoints = True  # SQLite: commits run WAL checkpoints (see leave_checkpoints_to_others)
        # Writers take SQLite's write lock up front so they queue on busy_timeout instead of failing.
        self.writer: Engine = (
            self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) if self.sqlite else self.engine
        )
        self._read = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._write = sessionmaker(bind=self.writer, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self, write: bool = False, consistent: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error.

        ``write``: the transaction will write (SQLite: take the write lock at BEGIN).
        ``consistent``: every read sees the same snapshot (PostgreSQL: REPEATABLE READ; a SQLite
        transaction always does). SQLAlchemy errors (raised inside the block or on commit) become
        ``StoreError``; our own errors (``PolicyError`` …) pass through unchanged after the rollback.
        """
        factory = self._write if write else self._read
        try:
            with factory() as session, session.begin():
                if consistent and not self.sqlite:
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                yield session
        except AuthzError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}{_hint(exc)}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def session_scope(db: Database, write: bool = False) -> Iterator[Session]:
    """``with session_scope(db) as session:`` — the same as ``db.session(write)``."""
    with db.session(write) as session:
        yield session
