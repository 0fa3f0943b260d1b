"""Read-only queries of the audit log for the admin UI: filtered keyset pages, exports, the chart.

Order: newest first by ``(time, id)``. Paging is keyset, never OFFSET: a page link carries the id
of the record it continues from (``before=`` / ``after=``); its time is read back by primary key
and the next page is ``(time, id) < (t, id)``. The existing indexes ``(time)``, ``(user, time)``,
``(action, time)`` and ``(allow, time)`` return rows in exactly that order, so a page costs a few
index seeks whatever the table size (measured by ``bench/audit_page.py``).

Filters that no index serves (``object``, free ``text`` on reason/uri) make SQLite walk the
ordered rows; one page walks at most ``SCAN_BUDGET`` rows (a bounded subquery): when the budget
runs out before the page is full, the page is marked partial and its "older" link continues the
search where the walk stopped. Pages, exports and the chart use the same SQL predicates
(``_filters``), so all three agree. ``text`` is case-insensitive (``ILIKE``; on SQLite for ASCII
letters only, as its ``lower()``).

An action filter is an action (``container:create``) or a prefix pattern (``container:*``); a
pattern is expanded into the action values present in the table (a loose index scan) and then
queried with ``IN``, which SQLite and PostgreSQL answer from the ``(action, time)`` index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, and_, cast, func, or_, select, true, tuple_
from sqlalchemy.orm import Session

from authz.audit import AuditEvent, parse_instant
from authz.storage.audit_store import EVENT_FIELDS, AuditRecord
from authz.storage.db import Database
from authz.storage.models import AuditRow

__all__ = ["PAGE_SIZE", "SCAN_BUDGET", "AuditQueries", "AuditQuery", "Page", "QueryError"]

PAGE_SIZE = 50
SCAN_BUDGET = 100_000  # rows one page may walk for the unindexed filters
EXPORT_BATCH = 1000
MAX_CHART_HOURS = 72
_MAX_DISTINCT = 500  # more action values under one prefix than this: filter by range instead
_ACTION = re.compile(r"^(\*|[a-z][a-z0-9-]*:(\*|[a-z][a-z0-9-]*)|unknown)$")


class QueryError(ValueError):
    """A filter value the user typed cannot be read (shown next to the filter form)."""


def parse_time(text: str, name: str) -> float:
    """``authz.audit.parse_instant`` with the form's error (shown next to the filter)."""
    try:
        return parse_instant(text)
    except ValueError:
        raise QueryError(f"{name}: use a time such as 2024-06-01T12:00 (UTC)") from None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One filter of the audit log; every None field means "any"."""

    user: str | None = None
    action: str | None = None  # "container:create" or "container:*"
    allow: bool | None = None
    since: float | None = None  # inclusive, epoch seconds
    until: float | None = None  # exclusive
    obj: str | None = None  # exact object name/id as the request named it
    text: str | None = None  # case-insensitive substring of reason or uri

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AuditQuery:
        """From the query string of the audit page (``user``, ``action``, ``decision`` …)."""

        def get(key: str) -> str | None:
            value = (args.get(key) or "").strip()
            return value[:1000] or None

        action = get("action")
        if action is not None and not _ACTION.match(action):
            raise QueryError('action: an action such as container:create, or a pattern such as "container:*"')
        decision = get("decision")
        if decision not in (None, "allow", "deny"):
            raise QueryError("decision: allow or deny")
        since, until = get("since"), get("until")
        return cls(
            user=get("user"),
            action=None if action == "*" else action,
            allow=None if decision is None else decision == "allow",
            since=parse_time(since, "since") if since else None,
            until=parse_time(until, "until") if until else None,
            obj=get("object"),
            text=get("q"),
        )

    def to_args(self) -> dict[str, str]:
        """The query-string form (inverse of ``from_args``), for links that keep the filter."""
        out = {
            "user": self.user,
            "action": self.action,
            "decision": None if self.allow is None else ("allow" if self.allow else "deny"),
            "since": _iso(self.since),
            "until": _iso(self.until),
            "object": self.obj,
            "q": self.text,
        }
        return {key: value for key, value in out.items() if value}

    @property
    def scans(self) -> bool:
        """Whether a filter no index serves is set (pages are then walked with a budget)."""
        return self.obj is not None or self.text is not None

    def unindexed(self, columns: Any) -> ColumnElement[bool]:
        """The ``object``/``text`` filters over ``columns`` (the table's, or a subquery's ``.c``)."""
        clauses: list[ColumnElement[bool]] = []
        if self.obj is not None:
            clauses.append(columns.object == self.obj)
        if self.text is not None:
            clauses.append(or_(columns.reason.icontains(self.text, autoescape=True),
                               columns.uri.icontains(self.text, autoescape=True)))  # fmt: skip
        return and_(true(), *clauses)


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class Page:
    records: list[AuditRecord]  # newest first
    newer: int | None  # id to pass as after= for the newer page; None: this is the newest
    older: int | None  # id to pass as before= for the older page; None: nothing older
    partial: bool = False  # the scan budget ran out before the page was full
    scanned_to: float | None = None  # time the budgeted scan reached (partial pages)


def _order(time_col: Any, id_col: Any, forward: bool) -> tuple[Any, Any]:
    """Page order: oldest first when walking towards newer records, else newest first."""
    return (time_col.asc(), id_col.asc()) if forward else (time_col.desc(), id_col.desc())


def to_record(row: Any) -> AuditRecord:
    """An ``AuditRecord`` from an ``AuditRow`` or a result row with the same column names."""
    values: dict[str, Any] = {name: getattr(row, name) for name in EVENT_FIELDS}
    values["roles"] = tuple(row.roles or ())
    values["warnings"] = tuple(row.warnings or ())
    values["detail"] = dict(row.detail or {})
    return AuditRecord(row.id, AuditEvent(**values), row.chain, row.seq, row.prev_hash, row.record_hash)


class AuditQueries:
    def __init__(self, db: Database, scan_budget: int = SCAN_BUDGET) -> None:
        self.db = db
        self.scan_budget = scan_budget

    # ------------------------------------------------------------------ filters

    def _indexed(self, session: Session, query: AuditQuery) -> ColumnElement[bool] | None:
        """SQL for the indexed filters; None when nothing can match (an empty action pattern)."""
        clauses: list[ColumnElement[bool]] = []
        if query.user is not None:
            clauses.append(AuditRow.user == query.user)
        if query.action is not None:
            if query.action.endswith("*"):
                values = self._actions_with_prefix(session, query.action[:-1])
                if values == []:
                    return None
                clauses.append(
                    AuditRow.action.in_(values)
                    if values is not None
                    else AuditRow.action.startswith(query.action[:-1], autoescape=True)
                )
            else:
                clauses.append(AuditRow.action == query.action)
        if query.allow is not None:
            clauses.append(AuditRow.allow == query.allow)
        if query.since is not None:
            clauses.append(AuditRow.time >= query.since)
        if query.until is not None:
            clauses.append(AuditRow.time < query.until)
        return and_(true(), *clauses)

    def _actions_with_prefix(self, session: Session, prefix: str) -> list[str] | None:
        """Distinct stored actions starting with ``prefix`` by index seeks; None if too many."""
        found: list[str] = []
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
        current = prefix
        while len(found) <= _MAX_DISTINCT:
            seek = select(func.min(AuditRow.action)).where(AuditRow.action > current)
            if upper is not None:
                seek = seek.where(AuditRow.action < upper)
            value = session.scalar(seek)
            if value is None:
                return found
            if value.startswith(prefix):
                found.append(value)
            current = value
        return None

    # ------------------------------------------------------------------ pages

    def page(
        self, query: AuditQuery, before: int | None = None, after: int | None = None, size: int = PAGE_SIZE
    ) -> Page:
        """One page, newest first: the newest records, or those older than ``before`` / newer
        than ``after`` (record ids). An unknown cursor id starts from the newest."""
        with self.db.session() as session:
            where = self._indexed(session, query)
            if where is None:
                return Page([], None, None)
            forward = after is not None  # towards newer records
            cursor = self._key(session, after if forward else before)
            if cursor is not None:
                key = tuple_(AuditRow.time, AuditRow.id)
                where = and_(where, key > tuple_(*cursor) if forward else key < tuple_(*cursor))
            ids, resume = self._select_ids(session, query, where, forward, size + 1)
            more = len(ids) > size
            ids = ids[:size]
            rows = {row.id: row for row in session.scalars(select(AuditRow).where(AuditRow.id.in_(ids)))}
            records = [to_record(rows[i]) for i in ids]
        if forward:
            records.reverse()
            newer = resume[1] if resume else (records[0].id if more and records else None)
            older = records[-1].id if records else None
        else:
            newer = records[0].id if cursor is not None and records else None
            older = resume[1] if resume else (records[-1].id if more else None)
        return Page(records, newer, older, resume is not None, resume[0] if resume else None)

    def _key(self, session: Session, record_id: int | None) -> tuple[float, int] | None:
        if record_id is None:
            return None
        found = session.scalar(select(AuditRow.time).where(AuditRow.id == record_id))
        return (found, record_id) if found is not None else None

    def _select_ids(
        self, session: Session, query: AuditQuery, where: ColumnElement[bool], forward: bool, want: int
    ) -> tuple[list[int], tuple[float, int] | None]:
        """Ids of up to ``want`` matching records in page order, and where a budgeted walk stopped
        early (None: it did not run out, or there was no walk)."""
        order = _order(AuditRow.time, AuditRow.id, forward)
        if not query.scans:
            return list(session.scalars(select(AuditRow.id).where(where).order_by(*order).limit(want))), None
        walk = (
            select(AuditRow.id, AuditRow.time, AuditRow.object, AuditRow.reason, AuditRow.uri)
            .where(where)
            .order_by(*order)
            .limit(self.scan_budget)
            .subquery()
        )
        found = select(walk.c.id).where(query.unindexed(walk.c)).order_by(*_order(walk.c.time, walk.c.id, forward))
        ids = list(session.scalars(found.limit(want)))
        if len(ids) >= want:
            return ids, None
        # Where did the walk stop, and is there anything beyond it? (Both are index-only reads.)
        keys = select(AuditRow.time, AuditRow.id).where(where).order_by(*order).limit(self.scan_budget).subquery()
        last = session.execute(
            select(keys.c.time, keys.c.id).order_by(*_order(keys.c.time, keys.c.id, not forward)).limit(1)
        ).first()
        if last is None:
            return ids, None
        key = tuple_(AuditRow.time, AuditRow.id)
        beyond = key > tuple_(last.time, last.id) if forward else key < tuple_(last.time, last.id)
        more = session.scalar(select(AuditRow.id).where(where, beyond).limit(1))
        return ids, ((last.time, last.id) if more is not None else None)

    def get(self, record_id: int) -> AuditRecord | None:
        with self.db.session() as session:
            row = session.get(AuditRow, record_id)
            return to_record(row) if row is not None else None

    # ------------------------------------------------------------------ export

    def iter_records(self, query: AuditQuery) -> Iterator[AuditRecord]:
        """Every matching record, oldest first; one short transaction per batch (a long export
        must not hold a read snapshot, and with it the WAL, for its whole duration)."""
        columns = AuditRow.__table__.columns
        cursor: tuple[float, int] | None = None
        while True:
            with self.db.session() as session:
                where = self._indexed(session, query)
                if where is None:
                    return
                where = and_(where, query.unindexed(AuditRow))
                if cursor is not None:
                    where = and_(where, tuple_(AuditRow.time, AuditRow.id) > tuple_(*cursor))
                batch = session.execute(
                    select(*columns).where(where).order_by(AuditRow.time, AuditRow.id).limit(EXPORT_BATCH)
                ).all()
            yield from (to_record(row) for row in batch)
            if len(batch) < EXPORT_BATCH:
                return
            cursor = (batch[-1].time, batch[-1].id)

    # ------------------------------------------------------------------ chart

    def hourly(self, query: AuditQuery, now: float, hours: int = 24) -> list[tuple[float, int, int]]:
        """``(hour start, allowed, denied)`` for each hour of the filter's time range (default:
        the last ``hours``), oldest first, at most ``MAX_CHART_HOURS`` hours back from its end."""
        end = query.until if query.until is not None else now
        start = query.since if query.since is not None else end - hours * 3600
        start = max(start, end - MAX_CHART_HOURS * 3600)
        first, last = int(start // 3600), int((end - 1e-6) // 3600)
        counts: dict[tuple[int, bool], int] = {}
        with self.db.session() as session:
            where = self._indexed(session, query)
            if where is not None:
                where = and_(where, AuditRow.time >= start, AuditRow.time < end)
                for hour, allow, count in self._counts(session, query, where):
                    counts[(hour, allow)] = counts.get((hour, allow), 0) + count
        return [(h * 3600.0, counts.get((h, True), 0), counts.get((h, False), 0)) for h in range(first, last + 1)]

    def _counts(
        self, session: Session, query: AuditQuery, where: ColumnElement[bool]
    ) -> Iterator[tuple[int, bool, int]]:
        # floor(): SQLite's CAST truncates (times are positive), PostgreSQL's CAST would round.
        hour = cast(AuditRow.time / 3600, Integer) if self.db.sqlite else func.floor(AuditRow.time / 3600)
        grouped: Select[Any] = select(hour.label("hour"), AuditRow.allow, func.count())
        grouped = grouped.where(where, query.unindexed(AuditRow)).group_by("hour", AuditRow.allow)
        for value, allow, count in session.execute(grouped):
            yield int(value), bool(allow), int(count)


def export_fields() -> tuple[str, ...]:
    """Column order of exports: the CLI's (``authzctl audit export``)."""
    return ("id", *EVENT_FIELDS, "time_iso")
