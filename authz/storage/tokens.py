"""Issued tokens and break-glass grants: the parts of a snapshot that are not the policy document.

Revoking a token or granting/ending break-glass bumps the policy revision in the same
transaction, so every plugin process rebuilds its snapshot within one poll interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from authz.errors import StoreError
from authz.storage.db import Database
from authz.storage.models import BreakglassRow, TokenRow, utcnow
from authz.storage.revision import bump_revision

# Revoked tokens stay in the snapshot this long past their expiry: the verifier accepts a token up
# to its leeway (30 s) after exp, and a wrong clock must not bring a revoked token back.
REVOKED_RETENTION = timedelta(days=1)


class RecordNotFound(StoreError):
    """The token, grant or object named does not exist in the store."""


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    jti: str
    user: str
    kid: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    note: str | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


def _token(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        row.jti, row.user, row.kid, row.issued_at, row.expires_at, row.revoked_at, row.revoked_by, row.note
    )


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self, jti: str, user: str, *, kid: str, issued_at: float, expires_at: float, note: str | None = None
    ) -> TokenRecord:
        """Remember an issued token (by its claims) so it can be listed and revoked."""
        row = TokenRow(
            jti=jti,
            user=user,
            kid=kid,
            issued_at=to_datetime(issued_at),
            expires_at=to_datetime(expires_at),
            note=note,
        )
        with self.db.session(write=True) as session:
            session.add(row)
        return _token(row)

    def get(self, jti: str) -> TokenRecord:
        with self.db.session() as session:
            row = session.get(TokenRow, jti)
            if row is None:
                raise RecordNotFound(f"no token with id {jti!r} (see `authzctl token list`)")
            return _token(row)

    def list(self, user: str | None = None) -> list[TokenRecord]:
        query = select(TokenRow).order_by(TokenRow.issued_at, TokenRow.jti)
        if user is not None:
            query = query.where(TokenRow.user == user)
        with self.db.session() as session:
            return [_token(row) for row in session.scalars(query)]

    def revoke(self, jti: str, by: str) -> TokenRecord:
        """Revoke one token. Revoking an already revoked token changes nothing and is not an error."""
        with self.db.session(write=True) as session:
            row = session.get(TokenRow, jti)
            if row is None:
                raise RecordNotFound(f"no token with id {jti!r} (see `authzctl token list`)")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.revoked_by = by
                bump_revision(session, by, f"token revoke {jti} (user {row.user})")
            return _token(row)

    def revoke_user(self, user: str, by: str) -> int:
        """Revoke every unrevoked token of ``user``; returns how many."""
        with self.db.session(write=True) as session:
            result = session.execute(
                update(TokenRow)
                .where(TokenRow.user == user, TokenRow.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_by=by)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
            if count:
                bump_revision(session, by, f"token revoke --user {user} ({count} tokens)")
            return count

    def revoked_ids(self, now: float | None = None) -> frozenset[str]:
        with self.db.session() as session:
            return revoked_ids_in(session, now)


def revoked_ids_in(session: Session, now: float | None = None) -> frozenset[str]:
    cutoff = to_datetime(time.time() if now is None else now) - REVOKED_RETENTION
    query = select(TokenRow.jti).where(TokenRow.revoked_at.is_not(None), TokenRow.expires_at > cutoff)
    return frozenset(session.scalars(query))


@dataclass(frozen=True, slots=True)
class BreakglassGrant:
    id: int
    user: str
    expires_at: datetime
    reason: str
    granted_by: str
    granted_at: datetime
    revoked_at: datetime | None


def _grant(row: BreakglassRow) -> BreakglassGrant:
    return BreakglassGrant(row.id, row.user, row.expires_at, row.reason, row.granted_by, row.granted_at, row.revoked_at)


class BreakglassStore:
    """Time-limited emergency grants; the engine gives an active grant's user admin rights."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def grant(self, user: str, expires_at: float, reason: str, granted_by: str) -> BreakglassGrant:
        if not reason.strip():
            raise StoreError("a break-glass grant needs a reason (it is audited)")
        with self.db.session(write=True) as session:
            row = BreakglassRow(user=user, expires_at=to_datetime(expires_at), reason=reason, granted_by=granted_by)
            session.add(row)
            session.flush()
            bump_revision(session, granted_by, f"breakglass grant {user} until {row.expires_at.isoformat()}")
            return _grant(row)

    def end(self, user: str, by: str) -> int:
        """End every active grant of ``user`` now; returns how many."""
        now = utcnow()
        with self.db.session(write=True) as session:
            result = session.execute(
                update(BreakglassRow)
                .where(
                    BreakglassRow.user == user,
                    BreakglassRow.revoked_at.is_(None),
                    BreakglassRow.expires_at > now,
                )
                .values(revoked_at=now)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
            if count:
                bump_revision(session, by, f"breakglass end {user}")
            return count

    def list(self, active_only: bool = False, now: float | None = None) -> list[BreakglassGrant]:
        query = select(BreakglassRow).order_by(BreakglassRow.granted_at, BreakglassRow.id)
        if active_only:
            query = query.where(*_active(now))
        with self.db.session() as session:
            return [_grant(row) for row in session.scalars(query)]

    def active(self, now: float | None = None) -> dict[str, float]:
        with self.db.session() as session:
            return active_grants_in(session, now)


def _active(now: float | None) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    moment = to_datetime(time.time() if now is None else now)
    return (BreakglassRow.revoked_at.is_(None), BreakglassRow.expires_at > moment)


def active_grants_in(session: Session, now: float | None = None) -> dict[str, float]:
    """user → latest expiry (epoch seconds) of their unrevoked, unexpired grants."""
    out: dict[str, float] = {}
    for row in session.scalars(select(BreakglassRow).where(*_active(now))):
        out[row.user] = max(out.get(row.user, 0.0), row.expires_at.timestamp())
    return out
