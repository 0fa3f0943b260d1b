"""``OwnershipRepository``: who created which container, network, volume or exec.

Objects are recorded by full ID (from the AuthZRes of the create call). A reference is resolved
the way the daemon resolves it (``daemon.GetContainer``, ``FindNetwork``): an exact full ID first,
then an exact name, then a unique ID prefix. An ambiguous prefix resolves to nothing, and the
caller then treats the owner as unknown (the daemon refuses the request as well).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from authz.errors import StoreError
from authz.storage.db import Database, describe
from authz.storage.models import OwnershipRow


@dataclass(frozen=True, slots=True)
class OwnedObject:
    kind: str
    object_id: str
    name: str | None
    owner: str
    created_at: datetime


def _name(kind: str, name: str | None) -> str | None:
    """The daemon keeps container names as "/name" and looks them up with or without the "/"."""
    if name is None:
        return None
    stripped = name.removeprefix("/") if kind == "container" else name
    return stripped or None


def resolve_in(session: Session, kind: str, reference: str) -> OwnershipRow | None:
    """The row ``reference`` names for ``kind``, or None (unknown or ambiguous)."""
    if not reference:
        return None
    row = session.scalar(select(OwnershipRow).where(OwnershipRow.kind == kind, OwnershipRow.object_id == reference))
    if row is not None:
        return row
    name = _name(kind, reference)
    if name is not None:
        named = session.scalars(
            select(OwnershipRow).where(OwnershipRow.kind == kind, OwnershipRow.name == name).limit(2)
        ).all()
        if len(named) == 1:
            return named[0]
        if named:
            return None  # two live records claim one name: refuse to guess whose object it is
    # LIKE may be case-insensitive (SQLite): re-check the prefix exactly in Python.
    candidates = session.scalars(
        select(OwnershipRow).where(
            OwnershipRow.kind == kind, OwnershipRow.object_id.startswith(reference, autoescape=True)
        )
    ).all()
    exact = [c for c in candidates if c.object_id.startswith(reference)]
    return exact[0] if len(exact) == 1 else None


# Exact ID, exact name, and ID prefix candidates in one indexed query ((kind, object_id) and
# (kind, name) indexes). Two prefix candidates already make the prefix ambiguous, hence LIMIT.
_CANDIDATES = text(
    "SELECT object_id, name, owner FROM ownership WHERE kind = :kind AND "
    "(object_id = :ref OR name = :name OR (object_id >= :ref AND object_id < :upper)) "
    "ORDER BY CASE WHEN object_id = :ref THEN 0 WHEN name = :name THEN 1 ELSE 2 END LIMIT 4"
)


_TABLE: Table = OwnershipRow.__table__  # type: ignore[assignment]  # declarative tables are Tables


def _resolve(connection: Connection, kind: str, reference: str) -> tuple[str, str] | None:
    """(object ID, owner) that ``reference`` names, resolved like ``resolve_in``, or None."""
    if not reference:
        return None
    name = _name(kind, reference)
    params = {"kind": kind, "ref": reference, "name": name or "", "upper": reference + "\uffff"}
    rows = connection.execute(_CANDIDATES, params).all()
    by_id = [r for r in rows if r.object_id == reference]
    if by_id:
        return str(by_id[0].object_id), str(by_id[0].owner)
    named = [r for r in rows if name is not None and r.name == name]
    if named:
        # two live records claim one name: refuse to guess whose object it is
        return (str(named[0].object_id), str(named[0].owner)) if len(named) == 1 else None
    prefixed = [r for r in rows if r.object_id.startswith(reference)]
    return (str(prefixed[0].object_id), str(prefixed[0].owner)) if len(prefixed) == 1 else None


class OwnershipRepository:
    """Implements ``authz.ports.OwnershipStore``."""

    def __init__(self, db: Database, cache_size: int = 20_000) -> None:
        self.db = db
        # (kind, full ID) -> owner. Safe to keep in each process: an ID's owner never changes (the
        # first record wins) and IDs are never reused, so an entry can at worst outlive its object,
        # which the daemon then refuses to act on anyway. Names and prefixes always ask the store.
        self._by_id: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size

    def owner_of(self, kind: str, reference: str) -> str | None:
        """The hot path (every action on an existing object): one indexed query, no ORM.

        Same resolution as ``resolve_in``: exact full ID, then a unique exact name, then a unique
        ID prefix. Candidates are re-checked in Python, so collation quirks cannot widen a match.
        """
        if not reference:
            return None
        cached = self._by_id.get((kind, reference))
        if cached is not None:
            return cached
        try:
            with self.db.engine.connect() as connection:  # Core, no ORM session: this runs per request
                found = _resolve(connection, kind, reference)
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc
        if found is None:
            return None
        object_id, owner = found
        if object_id == reference:
            self._remember(kind, object_id, owner)
        return owner

    def _remember(self, kind: str, object_id: str, owner: str) -> None:
        if len(self._by_id) >= self._cache_size:
            self._by_id.clear()  # crude but bounded; misses just ask the store again
        self._by_id[(kind, object_id)] = owner

    def resolve(self, kind: str, reference: str) -> OwnedObject | None:
        with self.db.session() as session:
            row = resolve_in(session, kind, reference)
            if row is None:
                return None
            return OwnedObject(row.kind, row.object_id, row.name, row.owner, row.created_at)

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        """Remember ``owner`` of ``object_id``; the first owner recorded for an ID keeps it.

        Runs on the AuthZRes of every create: Core statements in one write transaction.
        """
        name = _name(kind, name)
        table = _TABLE
        try:
            with self.db.writer.begin() as connection:
                if name is not None:
                    # The daemon keeps names unique, so an older record holding this name is stale.
                    connection.execute(
                        table.update()
                        .where(table.c.kind == kind, table.c.name == name, table.c.object_id != object_id)
                        .values(name=None)
                    )
                known = connection.execute(
                    select(table.c.id).where(table.c.kind == kind, table.c.object_id == object_id)
                ).first()
                if known is None:
                    connection.execute(table.insert().values(kind=kind, object_id=object_id, name=name, owner=owner))
                elif name is not None:
                    # Fail closed: a second create response for a known ID must not transfer ownership.
                    connection.execute(table.update().where(table.c.id == known.id).values(name=name))
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc

    def forget(self, kind: str, reference: str) -> None:
        table = _TABLE
        try:
            with self.db.writer.begin() as connection:
                found = _resolve(connection, kind, reference)
                if found is not None:
                    self._by_id.pop((kind, found[0]), None)
                    connection.execute(table.delete().where(table.c.kind == kind, table.c.object_id == found[0]))
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        name = _name(kind, new_name)
        with self.db.session(write=True) as session:
            row = resolve_in(session, kind, reference)
            if row is None:
                return
            if name is not None:
                session.execute(
                    update(OwnershipRow)
                    .where(OwnershipRow.kind == kind, OwnershipRow.name == name, OwnershipRow.id != row.id)
                    .values(name=None)
                )
            row.name = name

    def list(self, kind: str | None = None, owner: str | None = None) -> list[OwnedObject]:
        query = select(OwnershipRow).order_by(OwnershipRow.kind, OwnershipRow.created_at, OwnershipRow.id)
        if kind is not None:
            query = query.where(OwnershipRow.kind == kind)
        if owner is not None:
            query = query.where(OwnershipRow.owner == owner)
        with self.db.session() as session:
            return [OwnedObject(r.kind, r.object_id, r.name, r.owner, r.created_at) for r in session.scalars(query)]
