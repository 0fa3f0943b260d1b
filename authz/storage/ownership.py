"""``OwnershipRepository``: who created which container, network, volume or exec.

Objects are recorded by full ID (from the AuthZRes of the create call). A reference is resolved
the way the daemon resolves it (``daemon.GetContainer``, ``FindNetwork``): an exact full ID first,
then an exact name, then a unique ID prefix. An ambiguous prefix resolves to nothing, and the
caller then treats the owner as unknown (the daemon refuses the request as well). Volumes and exec
instances are found by exact ID only, as the daemon finds them (``EXACT_ONLY_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, or_, select, text, true, update
from sqlalchemy.orm import Session

from authz.ports import EXACT_ONLY_KINDS
from authz.storage.db import Database
from authz.storage.models import OwnershipRow, utcnow
from authz.storage.raw import RawStatements


@dataclass(frozen=True, slots=True)
class OwnedObject:
    kind: str
    object_id: str
    name: str | None
    owner: str
    created_at: datetime
    node: str = ""  # the AUTHZ_NODE that recorded it; '' before the column existed


def _name(kind: str, name: str | None) -> str | None:
    """The daemon keeps container names as "/name" and looks them up with or without the "/"."""
    if name is None:
        return None
    stripped = name.removeprefix("/") if kind == "container" else name
    return stripped or None


def _on_node(node: str) -> Any:
    """Rows of ``node`` and rows recorded for no node ('': every row)."""
    return true() if not node else or_(OwnershipRow.node == node, OwnershipRow.node == "")


def resolve_in(session: Session, kind: str, reference: str, node: str = "") -> OwnershipRow | None:
    """The row ``reference`` names for ``kind`` on ``node``, or None (unknown or ambiguous)."""
    if not reference:
        return None
    here = _on_node(node)
    rows = session.scalars(
        select(OwnershipRow).where(OwnershipRow.kind == kind, OwnershipRow.object_id == reference, here)
    ).all()
    if rows or kind in EXACT_ONLY_KINDS:
        # A volume name can have this node's record and one from before nodes were: the node's wins.
        return min(rows, key=lambda r: r.node == "") if rows else None
    name = _name(kind, reference)
    if name is not None:
        named = session.scalars(
            select(OwnershipRow).where(OwnershipRow.kind == kind, OwnershipRow.name == name, here).limit(2)
        ).all()
        if len(named) == 1:
            return named[0]
        if named:
            return None  # two live records claim one name: refuse to guess whose object it is
    # LIKE may be case-insensitive (SQLite): re-check the prefix exactly in Python.
    candidates = session.scalars(
        select(OwnershipRow).where(
            OwnershipRow.kind == kind, OwnershipRow.object_id.startswith(reference, autoescape=True), here
        )
    ).all()
    exact = [c for c in candidates if c.object_id.startswith(reference)]
    return exact[0] if len(exact) == 1 else None


# Exact ID, exact name and ID prefix candidates in one statement: three index searches joined by
# UNION ALL. (One WHERE with ORs made SQLite scan every row of the kind: 0.5 ms at 2,000 objects,
# growing with the table; this stays at a few µs.) Two candidates already make a name or a prefix
# ambiguous, hence LIMIT 2; the wrapping SELECTs let both SQLite and PostgreSQL take a LIMIT there.
#
# Docker names and objects are per daemon: with a node, each branch keeps to that node's rows and
# to the rows recorded for no node (''); a repository for no node (:node = '') sees every row. In
# fleet mode another host's "web" must not answer for this host's "web".
_CANDIDATES = (
    "SELECT object_id, name, owner, node FROM ownership WHERE kind = :kind AND object_id = :ref "
    "AND (node = :node OR node = '' OR :node = '') "
    "UNION ALL SELECT * FROM (SELECT object_id, name, owner, node FROM ownership "
    "WHERE kind = :kind AND name = :name AND (node = :node OR node = '' OR :node = '') LIMIT 2) AS named "
    "UNION ALL SELECT * FROM (SELECT object_id, name, owner, node FROM ownership "
    "WHERE kind = :kind AND object_id >= :ref AND object_id < :upper AND (node = :node OR node = '' OR :node = '') "
    "ORDER BY object_id LIMIT 2) AS prefixed"
)


_TABLE: Table = OwnershipRow.__table__  # type: ignore[assignment]  # declarative tables are Tables


Row = tuple[str, str | None, str, str]  # (object ID, name, owner, node)


def _params(kind: str, reference: str, node: str) -> dict[str, str]:
    name = _name(kind, reference) or ""
    return {"kind": kind, "ref": reference, "name": name, "upper": reference + "\uffff", "node": node}


def _pick(rows: Iterable[Row], kind: str, reference: str) -> tuple[str, str] | None:
    """(object ID, owner) among ``_CANDIDATES`` rows, resolved like ``resolve_in``, or None."""
    name = _name(kind, reference)
    # One object can come back from two branches (its name and its ID prefix): count it once. A
    # volume name can have this node's record and one recorded for no node: the node's wins.
    unique = list({row[0]: row for row in sorted(rows, key=lambda r: r[3] != "")}.values())
    by_id = [r for r in unique if r[0] == reference]
    if by_id:
        return str(by_id[0][0]), str(by_id[0][2])
    if kind in EXACT_ONLY_KINDS:
        return None
    named = [r for r in unique if name is not None and r[1] == name]
    if named:
        # two live records claim one name: refuse to guess whose object it is
        return (str(named[0][0]), str(named[0][2])) if len(named) == 1 else None
    prefixed = [r for r in unique if r[0].startswith(reference)]
    return (str(prefixed[0][0]), str(prefixed[0][2])) if len(prefixed) == 1 else None


# The statements of ``record``, run in one write transaction.
_INSERT = (
    "INSERT INTO ownership (kind, object_id, name, owner, created_at, node) "
    "VALUES (:kind, :object_id, :name, :owner, :created_at, :node) ON CONFLICT (kind, object_id, node) "
)
# "(node = :node OR node = '' OR :node = '')": this node's rows and those recorded for no node (a
# repository for no node: every row).
_RECORD = {
    "release_name": "UPDATE ownership SET name = NULL WHERE kind = :kind AND name = :name "
    "AND object_id != :object_id AND (node = :node OR node = '' OR :node = '')",
    # One statement for "new ID: insert; known ID: take the name, keep the owner" (the first owner
    # recorded for an ID keeps it: a second create response must not transfer ownership). SQLite
    # 3.24+ and PostgreSQL 9.5+ both read this ON CONFLICT form.
    "record_named": _INSERT + "DO UPDATE SET name = excluded.name",
    "record_unnamed": _INSERT + "DO NOTHING",
    "delete": "DELETE FROM ownership WHERE kind = :kind AND object_id = :object_id "
    "AND (node = :node OR node = '' OR :node = '')",
    "named": "SELECT object_id FROM ownership WHERE kind = :kind AND name = :name "
    "AND (node = :node OR node = '' OR :node = '')",
}
# What ``record`` leaves stored is read back in the same statement where the database can
# (SQLite 3.35+, PostgreSQL): the owner of a full ID never changes, so this process then knows it
# without asking. No row back (``DO NOTHING`` on a known ID) teaches nothing.
_RETURNING = " RETURNING owner"


class OwnershipRepository:
    """Implements ``authz.ports.OwnershipStore``."""

    def __init__(
        self, db: Database, cache_size: int = 20_000, *, hold_connections: bool = False, node: str = ""
    ) -> None:
        """``hold_connections``: read and write through connections of its own, not the pool's
        (``RawStatements``); for the one repository per process on the request path. ``node``: the
        plugin's ``AUTHZ_NODE``; records are made for it and references resolve among its records
        (and those recorded for no node). '': records for no node, and every record is looked at
        (the admin UI's listing, single-host tools)."""
        self.db = db
        self.node = node
        # (kind, full ID) -> owner. Safe to keep in each process: an ID's owner never changes (the
        # first record wins) and IDs are never reused, so an entry can at worst outlive its object,
        # which the daemon then refuses to act on anyway. Names and prefixes always ask the store.
        self._by_id: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size
        suffix = _RETURNING if db.engine.dialect.insert_returning else ""
        record = {name: text(sql + suffix if name.startswith("record_") else sql) for name, sql in _RECORD.items()}
        self._raw = RawStatements(db, {"candidates": text(_CANDIDATES), **record}, hold_connections=hold_connections)
        stamp = _TABLE.c.created_at.type.bind_processor(db.engine.dialect)  # text() binds have no type
        self._stamp: Callable[[datetime], Any] = stamp if stamp is not None else (lambda value: value)

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
        found = _pick(self._candidates(kind, reference), kind, reference)
        if found is None:
            return None
        object_id, owner = found
        if object_id == reference:
            self._remember(kind, object_id, owner)
        return owner

    def _candidates(self, kind: str, reference: str) -> list[Row]:
        with self._raw.transaction(write=False) as tx:
            found = tx.run("candidates", _params(kind, reference, self.node))
        return [(row[0], row[1], row[2], row[3]) for row in found]

    def _remember(self, kind: str, object_id: str, owner: str) -> None:
        if len(self._by_id) >= self._cache_size:
            self._by_id.clear()  # crude but bounded; misses just ask the store again
        self._by_id[(kind, object_id)] = owner

    def resolve(self, kind: str, reference: str) -> OwnedObject | None:
        with self.db.session() as session:
            row = resolve_in(session, kind, reference, self.node)
            if row is None:
                return None
            return _owned(row)

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        """Remember ``owner`` of ``object_id``; the first owner recorded for an ID keeps it.

        Runs on the AuthZRes of every create, inside one write transaction.
        """
        name = _name(kind, name)
        row = {"kind": kind, "object_id": object_id, "name": name, "owner": owner,
               "created_at": self._stamp(utcnow()), "node": self.node}  # fmt: skip
        with self._raw.transaction(write=True) as tx:
            if name is not None:
                # The daemon keeps names unique, so an older record holding this name is stale.
                tx.run("release_name", {"kind": kind, "name": name, "object_id": object_id, "node": self.node})
                stored = tx.run("record_named", row)
            else:
                stored = tx.run("record_unnamed", row)
        if stored:  # committed: the delete or start that follows finds it here
            self._remember(kind, object_id, str(stored[0][0]))

    def forget(self, kind: str, reference: str) -> None:
        """Drop the record ``reference`` names (resolved like ``owner_of``), on the AuthZRes of a
        delete: raw statements in one write transaction, like ``record`` (through Core it took
        three times as long)."""
        if not reference:
            return
        with self._raw.transaction(write=True) as tx:
            # A full ID (what the CLI sends) matches before any name or prefix: one statement then.
            if tx.count("delete", {"kind": kind, "object_id": reference, "node": self.node}) == 0:
                found = _pick(tx.run("candidates", _params(kind, reference, self.node)), kind, reference)
                if found is None:
                    return
                tx.run("delete", {"kind": kind, "object_id": found[0], "node": self.node})
                reference = found[0]
        self._by_id.pop((kind, reference), None)

    def forget_named(self, kind: str, name: str) -> None:
        """Drop the record named exactly ``name`` (never an ID or a prefix): the network a prune
        reports."""
        plain = _name(kind, name)
        if plain is None:
            return
        with self._raw.transaction(write=True) as tx:
            ids = [str(row[0]) for row in tx.run("named", {"kind": kind, "name": plain, "node": self.node})]
            for object_id in ids:
                tx.run("delete", {"kind": kind, "object_id": object_id, "node": self.node})
        for object_id in ids:
            self._by_id.pop((kind, object_id), None)

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        name = _name(kind, new_name)
        with self.db.session(write=True) as session:
            row = resolve_in(session, kind, reference, self.node)
            if row is None:
                return
            if name is not None:
                session.execute(
                    update(OwnershipRow)
                    .where(OwnershipRow.kind == kind, OwnershipRow.name == name, OwnershipRow.id != row.id)
                    .where(_on_node(self.node))
                    .values(name=None)
                )
            row.name = name

    def forget_stale(self, records: Sequence[OwnedObject], listed_at: datetime) -> int:
        """Drop ``records`` (``authz.ownership_sweep.stale_records``) in one transaction; how many
        went. A record is only dropped if it is still the one judged: same ID, created before
        ``listed_at`` (a concurrent create of the same ID cannot happen; IDs are never reused)."""
        removed = 0
        with self.db.session(write=True) as session:
            for record in records:
                result = session.execute(
                    delete(OwnershipRow).where(
                        OwnershipRow.kind == record.kind,
                        OwnershipRow.object_id == record.object_id,
                        OwnershipRow.created_at < listed_at,
                        OwnershipRow.node == record.node,
                    )
                )
                removed += int(getattr(result, "rowcount", 0) or 0)
        for record in records:
            self._by_id.pop((record.kind, record.object_id), None)
        return removed

    def list(
        self,
        kind: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        *,
        nodes: Collection[str] | None = None,
    ) -> list[OwnedObject]:
        """Records by kind, then age; ``nodes``: only those recorded by these nodes ('' for the
        records of no node)."""
        query = select(OwnershipRow).order_by(OwnershipRow.kind, OwnershipRow.created_at, OwnershipRow.id)
        if limit is not None:
            query = query.limit(limit)
        if kind is not None:
            query = query.where(OwnershipRow.kind == kind)
        if owner is not None:
            query = query.where(OwnershipRow.owner == owner)
        if nodes is not None:
            query = query.where(OwnershipRow.node.in_(nodes))
        with self.db.session() as session:
            return [_owned(r) for r in session.scalars(query)]


def _owned(row: OwnershipRow) -> OwnedObject:
    return OwnedObject(row.kind, row.object_id, row.name, row.owner, row.created_at, row.node)
