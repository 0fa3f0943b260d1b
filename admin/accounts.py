"""Accounts of the admin UI (``ui_accounts``): argon2id password hashes through passlib.

Hashes come from ``CryptContext(schemes=["argon2"])`` (argon2id). A successful sign-in whose hash
was made with other parameters than the current ones is re-hashed on the spot
(``verify_and_update``), so raising the cost reaches every account at its next sign-in.

``authenticate`` spends the same work on unknown and disabled accounts as on real ones (a dummy
hash is verified), so the response time does not tell which account names exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from passlib.context import CryptContext
from sqlalchemy import select

from admin.permissions import UiRole
from authz.errors import AuthzError
from authz.storage.db import Database
from authz.storage.models import NAME_LENGTH, UiAccountRow

__all__ = ["MIN_PASSWORD_LENGTH", "Account", "AccountError", "AccountStore", "make_context"]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes any length; the bound caps the work per attempt
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class AccountError(AuthzError):
    """An account cannot be created or changed as asked (name taken, password too short …)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    role: str  # a UiRole value
    disabled: bool
    created_at: datetime
    fingerprint: str  # changes with the password hash and at every sign-out: sessions made before end


def make_context(params: Mapping[str, int] | None = None) -> CryptContext:
    """argon2id; ``params`` (memory_cost, rounds, parallelism) override passlib's defaults."""
    options = {f"argon2__{key}": value for key, value in (params or {}).items()}
    return CryptContext(schemes=["argon2"], argon2__type="ID", **options)


def _fingerprint(password_hash: str, session_epoch: int) -> str:
    return hashlib.sha256(f"{password_hash}\n{session_epoch}".encode()).hexdigest()[:16]


def _account(row: UiAccountRow) -> Account:
    fingerprint = _fingerprint(row.password_hash, row.session_epoch or 0)
    return Account(row.id, row.name, row.ui_role, row.disabled, row.created_at, fingerprint)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


class AccountStore:
    def __init__(self, db: Database, context: CryptContext | None = None) -> None:
        self.db = db
        self.context = context or make_context()

    @cached_property
    def _dummy_hash(self) -> str:
        return str(self.context.hash("not a password of anyone"))

    def create(self, name: str, role: str, password: str) -> Account:
        if not _NAME.match(name) or len(name) > NAME_LENGTH:
            raise AccountError(f"invalid account name {name!r} (letters, digits, _ . @ -; at most 128)")
        try:
            ui_role = UiRole(role)
        except ValueError:
            raise AccountError(f"unknown UI role {role!r} (use {' or '.join(r.value for r in UiRole)})") from None
        check_password(password)
        password_hash = self.context.hash(password)
        with self.db.session(write=True) as session:
            if session.scalar(select(UiAccountRow.id).where(UiAccountRow.name == name)) is not None:
                raise AccountError(f"account {name} already exists")
            row = UiAccountRow(name=name, password_hash=password_hash, ui_role=ui_role.value, disabled=False)
            session.add(row)
            session.flush()
            return _account(row)

    def get(self, name: str) -> Account | None:
        with self.db.session() as session:
            row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == name))
            return _account(row) if row is not None else None

    def list(self) -> list[Account]:
        with self.db.session() as session:
            return [_account(row) for row in session.scalars(select(UiAccountRow).order_by(UiAccountRow.name))]

    def authenticate(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is right and the account is enabled; else None."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return None
        with self.db.session() as session:
            row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == name))
            stored = row.password_hash if row is not None else None
        if row is None or stored is None:
            self.context.verify(password, self._dummy_hash)  # same work as a real account
            return None
        ok, new_hash = self.context.verify_and_update(password, stored)
        if not ok or row.disabled:
            return None
        if new_hash is not None:
            self._replace_hash(row.id, stored, new_hash)
        return self.get(name)

    def _replace_hash(self, account_id: int, old: str, new: str) -> None:
        """Store the re-hash, unless the password changed meanwhile (then keep the newer one)."""
        with self.db.session(write=True) as session:
            row = session.get(UiAccountRow, account_id)
            if row is not None and row.password_hash == old:
                row.password_hash = new

    def set_password(self, name: str, password: str) -> Account:
        check_password(password)
        password_hash = self.context.hash(password)
        with self.db.session(write=True) as session:
            row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == name))
            if row is None:
                raise AccountError(f"no account {name}")
            row.password_hash = password_hash
            session.flush()
            return _account(row)

    def end_sessions(self, name: str) -> None:
        """End every session of ``name`` (sign-out): their fingerprint no longer matches."""
        with self.db.session(write=True) as session:
            row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == name))
            if row is not None:
                row.session_epoch = (row.session_epoch or 0) + 1

    def set_disabled(self, name: str, disabled: bool) -> Account:
        with self.db.session(write=True) as session:
            row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == name))
            if row is None:
                raise AccountError(f"no account {name}")
            row.disabled = disabled
            session.flush()
            return _account(row)
