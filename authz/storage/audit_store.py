"""``AuditStore``: the audit table as ``authz.ports.AuditSink``, plus tail, query and export.

``write`` commits before it returns (the daemon's reply waits for the record). Reading never
needs the whole table in memory: queries page by id.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from authz.audit import AuditEvent
from authz.errors import StoreError
from authz.storage.db import Database
from authz.storage.models import AuditRow

EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
EXPORT_FORMATS = ("jsonl", "csv")
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which records to read; every field None means "any". ``until`` is exclusive."""

    since: float | None = None
    until: float | None = None
    user: str | None = None
    action: str | None = None  # exact, or a prefix pattern ending in "*" ("container:*")
    allow: bool | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    event: AuditEvent
    chain: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    record_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id}
        data.update(self.event.to_dict())
        data["time_iso"] = datetime.fromtimestamp(self.event.time, UTC).isoformat()
        return data


def _row(event: AuditEvent) -> AuditRow:
    values = {name: getattr(event, name) for name in EVENT_FIELDS}
    values["roles"] = list(event.roles)
    values["warnings"] = list(event.warnings)
    values["detail"] = dict(event.detail)
    return AuditRow(**values)


def _record(row: AuditRow) -> AuditRecord:
    values = {name: getattr(row, name) for name in EVENT_FIELDS}
    values["roles"] = tuple(row.roles or ())
    values["warnings"] = tuple(row.warnings or ())
    values["detail"] = dict(row.detail or {})
    return AuditRecord(row.id, AuditEvent(**values), row.chain, row.seq, row.prev_hash, row.record_hash)


def _filtered(query: Select[AuditRow], flt: AuditFilter) -> Select[AuditRow]:
    if flt.since is not None:
        query = query.where(AuditRow.time >= flt.since)
    if flt.until is not None:
        query = query.where(AuditRow.time < flt.until)
    if flt.user is not None:
        query = query.where(AuditRow.user == flt.user)
    if flt.action is not None:
        if flt.action.endswith("*"):
            query = query.where(AuditRow.action.startswith(flt.action[:-1], autoescape=True))
        else:
            query = query.where(AuditRow.action == flt.action)
    if flt.allow is not None:
        query = query.where(AuditRow.allow.is_(flt.allow))
    return query


class AuditStore:
    """Implements ``authz.ports.AuditSink``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def write(self, event: AuditEvent) -> None:
        """Insert and commit; raises ``StoreError`` if the record is not durably stored."""
        with self.db.session(write=True) as session:
            session.add(_row(event))

    def query(self, flt: AuditFilter | None = None, after_id: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records matching ``flt`` with id > ``after_id``, oldest first."""
        query = _filtered(select(AuditRow), flt or AuditFilter()).where(AuditRow.id > after_id).order_by(AuditRow.id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.session() as session:
            return [_record(row) for row in session.scalars(query)]

    def iter_query(self, flt: AuditFilter | None = None) -> Iterator[AuditRecord]:
        """Every matching record, oldest first, read one page per transaction."""
        after = 0
        while True:
            page = self.query(flt, after_id=after, limit=_PAGE)
            yield from page
            if len(page) < _PAGE:
                return
            after = page[-1].id

    def last(self, limit: int, flt: AuditFilter | None = None) -> list[AuditRecord]:
        """The newest ``limit`` matching records, oldest first."""
        query = _filtered(select(AuditRow), flt or AuditFilter()).order_by(AuditRow.id.desc()).limit(limit)
        with self.db.session() as session:
            rows = list(session.scalars(query))
        return [_record(row) for row in reversed(rows)]

    def tail(
        self,
        limit: int = 20,
        follow: bool = False,
        poll: float = 1.0,
        stop: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[AuditRecord]:
        """The last ``limit`` records; with ``follow``, then every new one until ``stop()`` is true."""
        records = self.last(limit)
        yield from records
        last_id = records[-1].id if records else self._max_id()
        while follow and not (stop is not None and stop()):
            page = self.query(after_id=last_id, limit=_PAGE)
            if page:
                yield from page
                last_id = page[-1].id
            else:
                sleep(poll)

    def _max_id(self) -> int:
        with self.db.session() as session:
            return _max_id(session)

    def export(self, out: TextIO, fmt: str, flt: AuditFilter | None = None) -> int:
        """Write matching records to ``out`` as JSON lines or CSV; returns how many."""
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"unknown export format {fmt!r} (use {' or '.join(EXPORT_FORMATS)})")
        count = 0
        writer: Any = None
        for record in self.iter_query(flt):
            data = record.to_dict()
            if fmt == "jsonl":
                out.write(json.dumps(data, sort_keys=False, separators=(",", ":"), default=str) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(data), lineterminator="\n")
                    writer.writeheader()
                writer.writerow({key: _csv_cell(value) for key, value in data.items()})
            count += 1
        if fmt == "csv" and writer is None:
            header = ["id", *EVENT_FIELDS, "time_iso"]
            csv.writer(out, lineterminator="\n").writerow(header)
        return count


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _max_id(session: Session) -> int:
    value = session.scalar(select(AuditRow.id).order_by(AuditRow.id.desc()).limit(1))
    return int(value) if value is not None else 0
