"""The policy revision: one counter that every change bumps and every plugin process polls.

A change and its revision bump commit in the same transaction, so a plugin that reads revision N
and then rebuilds its snapshot sees every change up to N. On PostgreSQL the ``UPDATE`` row lock
serialises concurrent changes; on SQLite the write transaction (``BEGIN IMMEDIATE``) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from authz.storage.models import PolicyHistoryRow, PolicyStateRow, utcnow

STATE_ID = 1


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    revision: int
    at: datetime
    author: str
    summary: str
    document: dict[str, Any] | None


def read_revision(session: Session) -> int:
    """The current revision; 0 when nothing was ever changed (or the row is missing)."""
    value = session.scalar(select(PolicyStateRow.revision).where(PolicyStateRow.id == STATE_ID))
    return int(value) if value is not None else 0


def bump_revision(session: Session, author: str, summary: str, document: dict[str, Any] | None = None) -> int:
    """Increment the revision, record the change in policy_history, and return the new revision."""
    now = utcnow()
    result = session.execute(
        update(PolicyStateRow)
        .where(PolicyStateRow.id == STATE_ID)
        .values(revision=PolicyStateRow.revision + 1, updated_at=now, updated_by=author)
        .returning(PolicyStateRow.revision)
    )
    revision = result.scalar_one_or_none()
    if revision is None:  # a database created without the migration's seed row
        session.add(PolicyStateRow(id=STATE_ID, revision=1, updated_at=now, updated_by=author))
        revision = 1
    session.add(PolicyHistoryRow(revision=revision, at=now, author=author, summary=summary, document=document))
    session.flush()
    return int(revision)


def history(session: Session, limit: int = 50) -> list[HistoryEntry]:
    rows = session.scalars(select(PolicyHistoryRow).order_by(PolicyHistoryRow.revision.desc()).limit(limit))
    return [HistoryEntry(r.revision, r.at, r.author, r.summary, r.document) for r in rows]
