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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ClauseElement
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler

from authz.errors import StoreError
from authz.storage.db import STALE_SQLITE_ERRORS, Database, describe


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
    """``BEGIN IMMEDIATE``, polling for SQLite's write lock here rather than in SQLite.

    SQLite's busy handler sleeps 1, 2, 5, 10, 15 ms... between attempts, so a writer that arrived
    during the audit shipper's few-ms transaction took the lock up to 10-20 ms after it was free
    (an ownership record, which dockerd waits for). Polling from 0.1 ms, doubling up to 2 ms, takes
    it soon after its release. The connection's ``busy_timeout`` still bounds the whole wait and
    is restored before anything else runs on the connection.
    """
    timeout_ms = int(cursor.execute("PRAGMA busy_timeout").fetchone()[0])
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        pause = _LOCK_POLL_FIRST
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except error as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LOCK_POLL_MAX)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")


class Transaction:
    """One transaction's statements: ``run`` returns rows, ``many`` runs one statement per row."""

    def __init__(self, cursor: Any, compiled: Mapping[str, _Compiled]) -> None:
        self._cursor = cursor
        self._compiled = compiled

    def run(self, name: str, values: Mapping[str, Any]) -> list[Any]:
        statement = self._compiled[name]
        self._cursor.execute(statement.sql, statement.args(values))
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

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
    ) -> None:
        self._db = db
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
        try:
            raw = self._db.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc
        except self._dbapi_error as exc:  # raised as is by a connect listener (SQLite pragmas)
            self._forget_stale(exc)
            raise StoreError(f"database error: {exc}") from exc
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

    def _forget_stale(self, exc: Exception) -> None:
        if any(marker in str(exc) for marker in STALE_SQLITE_ERRORS):
            self._db.engine.dispose(close=False)  # other pooled connections cache the bad page too
