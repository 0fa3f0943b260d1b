"""``OwnershipRepository``: who created which container, network, volume or exec.

Objects are recorded by full ID (from the AuthZRes of the create call). A reference is resolved
the way the daemon resolves it (``daemon.GetContainer``, ``FindNetwork``): an exact full ID first,
then an exact name, then a unique ID prefix. An ambiguous prefix resolves to nothing, and the
caller then treats the owner as unknown (the daemon refuses the request as well).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update
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
        name = _name(kind, reference)
        params = {"kind": kind, "ref": reference, "name": name or "", "upper": reference + "\uffff"}
        try:
            with self.db.engine.connect() as connection:  # Core, no ORM session: this runs per request
                rows = connection.execute(_CANDIDATES, params).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {describe(exc)}") from exc
        by_id = [r for r in rows if r.object_id == reference]
        if by_id:
            self._remember(kind, reference, str(by_id[0].owner))
            return str(by_id[0].owner)
        named = [r for r in rows if name is not None and r.name == name]
        if named:
            return str(named[0].owner) if len(named) == 1 else None  # two claims on one name: refuse
        prefixed = [r for r in rows if r.object_id.startswith(reference)]
        return str(prefixed[0].owner) if len(prefixed) == 1 else None

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
        """Remember ``owner`` of ``object_id``; the first owner recorded for an ID keeps it."""
        name = _name(kind, name)
        with self.db.session(write=True) as session:
            if name is not None:
                # The daemon keeps names unique, so an older record holding this name is stale.
                session.execute(
                    update(OwnershipRow)
                    .where(
                        OwnershipRow.kind == kind,
                        OwnershipRow.name == name,
                        OwnershipRow.object_id != object_id,
                    )
                    .values(name=None)
                )
            row = session.scalar(
                select(OwnershipRow).where(OwnershipRow.kind == kind, OwnershipRow.object_id == object_id)
            )
            if row is None:
                session.add(OwnershipRow(kind=kind, object_id=object_id, name=name, owner=owner))
            elif name is not None:
                # Fail closed: a second create response for a known ID must not transfer ownership.
                row.name = name

    def forget(self, kind: str, reference: str) -> None:
        with self.db.session(write=True) as session:
            row = resolve_in(session, kind, reference)
            if row is not None:
                self._by_id.pop((kind, row.object_id), None)
                session.delete(row)

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
