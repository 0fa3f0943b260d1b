"""``AuditStore``: the audit table as ``authz.ports.AuditSink``, plus tail, query and export, and
the chained side used by the journal shipper, ``audit verify`` and ``audit prune``.

``write`` commits before it returns (the daemon's reply waits for the record); it writes an
unchained row and is kept for tools and tests, the plugin writes through ``authz.audit_journal``.
``insert_chained`` is idempotent per (chain, seq). Reading never needs the whole table in memory:
queries page by id, chain walks page by seq.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import orjson
from sqlalchemy import Insert, Select, Table, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from authz.audit import AuditEvent
from authz.audit_chain import Anchor, ChainRow, JournalRecord
from authz.errors import StoreError
from authz.storage.db import Database
from authz.storage.models import AuditAnchorRow, AuditRow, utcnow
from authz.storage.raw import RawStatements

EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_CHAINED_COLUMNS = (*EVENT_FIELDS, "chain", "seq", "prev_hash", "record_hash")
_NO_EVENT = dict.fromkeys(EVENT_FIELDS)  # a journal line without some field stores NULL there
_JSON_FIELDS = ("roles", "warnings", "detail")
EXPORT_FORMATS = ("jsonl", "csv")
_PAGE = 1000
_CHAIN_PAGE = 5000
_TABLE = cast(Table, AuditRow.__table__)
_CHAIN_COLUMNS = (_TABLE.c.id, _TABLE.c.seq, _TABLE.c.prev_hash, _TABLE.c.record_hash,
                  *(_TABLE.c[name] for name in EVENT_FIELDS))  # fmt: skip


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

    # ------------------------------------------------------------ chained records

    def insert_chained(self, records: Sequence[JournalRecord]) -> None:
        """Insert journal records in one transaction; rows already stored (same chain, seq) are kept."""
        if not records:
            return
        arguments = self._raw_insert.arguments("insert", [_chained_row(record) for record in records])
        with self._raw_insert.transaction(write=True) as tx:
            tx.many("insert", arguments)

    @functools.cached_property
    def _raw_insert(self) -> RawStatements:
        # The shipper's hot path: through Core, building the parameters cost more than SQLite's insert.
        # Its transactions go through one connection held out of the pool, like the ownership
        # writer's: a checkout, a checkin (its reset rollback) and three busy_timeout PRAGMAs per
        # batch cost the plugin 4-7 % of its rate at 8 connections (three series of six pairs).
        insert = _insert_ignoring_duplicates(self.db)
        converters = {"insert": dict.fromkeys(_JSON_FIELDS, _json_text)}
        return RawStatements(self.db, {"insert": insert}, column_keys={"insert": _CHAINED_COLUMNS},
                             converters=converters, hold_connections=True)  # fmt: skip

    def max_seq(self, chain: str) -> int:
        """The highest seq of ``chain`` stored or pruned (its anchor); 0 for an unknown chain."""
        with self.db.session() as session:
            stored = session.scalar(select(func.max(AuditRow.seq)).where(AuditRow.chain == chain))
            anchored = session.scalar(select(AuditAnchorRow.seq).where(AuditAnchorRow.chain == chain))
        return max(int(stored or 0), int(anchored or 0))

    def chains(self) -> list[str]:
        """Every chain with stored records or an anchor, sorted."""
        with self.db.session() as session:
            stored = session.scalars(select(AuditRow.chain).where(AuditRow.chain.is_not(None)).distinct())
            names = {name for name in stored if name is not None}
            names.update(session.scalars(select(AuditAnchorRow.chain)))
        return sorted(names)

    def unchained_count(self) -> int:
        """Rows outside any chain (written by ``write`` or by hand): not tamper-evident."""
        with self.db.session() as session:
            query = (
                select(func.count()).select_from(AuditRow).where(or_(AuditRow.chain.is_(None), AuditRow.seq.is_(None)))
            )
            return int(session.scalar(query) or 0)

    def iter_chain(self, chain: str, after_seq: int = 0, page: int = _CHAIN_PAGE) -> Iterator[ChainRow]:
        """The rows of ``chain`` with seq > ``after_seq`` in seq order, one page per transaction."""
        last = after_seq
        while True:
            query = (select(*_CHAIN_COLUMNS).where(_TABLE.c.chain == chain, _TABLE.c.seq > last)
                     .order_by(_TABLE.c.seq).limit(page))  # fmt: skip
            with self.db.session() as session:
                rows = session.execute(query).all()
            for row in rows:
                yield ChainRow(row[0], row[1], row[2], row[3], dict(zip(EVENT_FIELDS, row[4:], strict=True)))
            if len(rows) < page:
                return
            last = rows[-1][1]

    def anchor(self, chain: str) -> Anchor | None:
        with self.db.session() as session:
            row = session.get(AuditAnchorRow, chain)
            return Anchor(row.chain, row.seq, row.record_hash) if row is not None else None

    def prune_point(self, chain: str, cutoff: float) -> tuple[int, str, float] | None:
        """(seq, hash, time) of the last record of ``chain`` such that it and all before it are older
        than ``cutoff``; None when nothing (more) can be pruned."""
        with self.db.session() as session:
            first_kept = session.scalar(
                select(func.min(AuditRow.seq)).where(AuditRow.chain == chain, AuditRow.time >= cutoff)
            )
            query = select(AuditRow.seq, AuditRow.record_hash, AuditRow.time).where(AuditRow.chain == chain)
            if first_kept is not None:
                query = query.where(AuditRow.seq < first_kept)
            row = session.execute(query.order_by(AuditRow.seq.desc()).limit(1)).first()
        if row is None or row[1] is None:
            return None
        return int(row[0] or 0), str(row[1]), float(row[2])

    def prune_chain(self, chain: str, seq: int, record_hash: str, record_time: float) -> int:
        """Delete records of ``chain`` up to ``seq`` and store the anchor, in one transaction.

        Returns how many records were deleted. Raises ``StoreError`` if the anchor record changed
        since ``prune_point`` (a concurrent prune or tampering): nothing is deleted then.
        """
        with self.db.session(write=True) as session:
            current = session.scalar(select(AuditRow.record_hash).where(AuditRow.chain == chain, AuditRow.seq == seq))
            if current != record_hash:
                raise StoreError(f"audit chain {chain}: record seq {seq} changed while pruning; nothing deleted")
            result = session.execute(delete(AuditRow).where(AuditRow.chain == chain, AuditRow.seq <= seq))
            anchor = session.get(AuditAnchorRow, chain)
            if anchor is None:
                session.add(AuditAnchorRow(chain=chain, seq=seq, record_hash=record_hash, record_time=record_time))
            else:
                anchor.seq, anchor.record_hash, anchor.record_time = seq, record_hash, record_time
                anchor.pruned_at = utcnow()
            return int(getattr(result, "rowcount", 0) or 0)

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
                writer.writerow({key: csv_cell(value) for key, value in data.items()})
            count += 1
        if fmt == "csv" and writer is None:
            header = ["id", *EVENT_FIELDS, "time_iso"]
            csv.writer(out, lineterminator="\n").writerow(header)
        return count


def _chained_row(record: JournalRecord) -> dict[str, Any]:
    # Merged in C: the statement picks its columns, so fields a newer writer added are left out.
    return {**_NO_EVENT, **record.event, "chain": record.chain, "seq": record.seq, "prev_hash": record.prev_hash,
            "record_hash": record.record_hash}  # fmt: skip


def _json_text(value: Any) -> str:
    """A JSON column's text for the shipper: orjson (0.3 µs instead of 2.5) for what it writes as
    ``json.dumps`` reads it back, lists of strings and an empty mapping (roles, warnings, the default
    level's detail); anything else as the column type would write it (NaN, big ints, other types)."""
    if (type(value) is list and all(type(item) is str for item in value)) or (type(value) is dict and not value):
        return orjson.dumps(value).decode()
    return json.dumps(value)


def _insert_ignoring_duplicates(db: Database) -> Insert:
    """INSERT … ON CONFLICT (chain, seq) DO NOTHING in the database's dialect."""
    if db.sqlite:
        return sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["chain", "seq"])
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=["chain", "seq"])
    raise StoreError(f"idempotent audit insert is not implemented for {db.engine.dialect.name}")


def csv_cell(value: Any) -> str:
    """One audit field as CSV text. Text a spreadsheet would run as a formula (a URI or reason
    starting with = + - @) gets a leading apostrophe: exports are opened by auditors."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return str(value)


def _max_id(session: Session) -> int:
    value = session.scalar(select(AuditRow.id).order_by(AuditRow.id.desc()).limit(1))
    return int(value) if value is not None else 0
