"""The tables of the store (SQLAlchemy 2 declarative, typed ``Mapped[...]``).

Roles are referred to by name from memberships, not by foreign key: the built-in roles exist
without a row (``authz.policy.builtin``), and a stored row only overrides one. Whether a role name
exists is checked by the repositories, through the policy schema, before anything is written.

Times are timezone-aware UTC datetimes (``UtcDateTime``), except ``audit_records.time`` which keeps
the epoch seconds of ``AuditEvent.time``. The migration in ``migrations/versions`` creates exactly
these tables; ``tests/integration/test_storage.py`` compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: alembic batch migrations on SQLite need them to alter tables.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH = 128  # policy names: ^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON}


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    tls_cn: Mapped[str | None] = mapped_column(String(255), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupRow(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoleRow(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)  # dump_role(role): a policy-v1 mapping
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)  # the stock copy stored by `init`
    description: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserRoleRow(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True, index=True)


class UserGroupRow(Base):
    __tablename__ = "user_groups"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True)


class GroupRoleRow(Base):
    __tablename__ = "group_roles"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True, index=True)


class SettingRow(Base):
    """``settings.<key>`` of the policy, one row per key, the value as JSON."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)


class TokenRow(Base):
    __tablename__ = "tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A name, not a foreign key: the record outlives the user (audit), and `user rm` revokes it.
    user: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    kid: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    note: Mapped[str | None] = mapped_column(Text)


class PolicyStateRow(Base):
    """The single row whose ``revision`` every plugin process polls (id is always 1)."""

    __tablename__ = "policy_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))


class PolicyHistoryRow(Base):
    __tablename__ = "policy_history"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    author: Mapped[str] = mapped_column(String(NAME_LENGTH))
    summary: Mapped[str] = mapped_column(Text)
    # The exported policy after the change; None for changes outside the document (token revocation).
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class BreakglassRow(Base):
    __tablename__ = "breakglass_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    expires_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    granted_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class OwnershipRow(Base):
    __tablename__ = "ownership"
    __table_args__ = (
        # An ID is unique per node: a volume's ID is its name, which each host's daemon has its own of.
        UniqueConstraint("kind", "object_id", "node", name="uq_ownership_kind_object_id_node"),
        Index("ix_ownership_kind_name", "kind", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # AUTHZ_NODE of the plugin that recorded it: names and objects are per daemon (fleet mode).
    # '' for records made before the column existed (and by tools that record for no node).
    node: Mapped[str] = mapped_column(String(255), default="", server_default="")


class AuditRow(Base):
    """One ``authz.audit.AuditEvent`` (same field names), plus the tamper-evident chain columns."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_time", "time"),
        Index("ix_audit_records_user_time", "user", "time"),
        Index("ix_audit_records_action_time", "action", "time"),
        Index("ix_audit_records_allow_time", "allow", "time"),
        # One row per (chain, seq): the journal shipper inserts with ON CONFLICT DO NOTHING, so a
        # record shipped twice is stored once; verify walks a chain by seq through this index.
        Index("uq_audit_records_chain_seq", "chain", "seq", unique=True),
        # Ids must never be reused: `audit tail --follow` and chain checks read "id > last seen".
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str] = mapped_column(String(128))
    node: Mapped[str] = mapped_column(String(255))
    phase: Mapped[str] = mapped_column(String(16))
    user: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    source: Mapped[str] = mapped_column(String(16))
    roles: Mapped[list[str]] = mapped_column(JSON)
    action: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(Text)
    object: Mapped[str | None] = mapped_column(Text)
    allow: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    reason: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    warnings: Mapped[list[str]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    body_digest: Mapped[str | None] = mapped_column(String(128))
    token_id: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    chain: Mapped[str | None] = mapped_column(String(128))  # id of the writer's hash chain
    seq: Mapped[int | None] = mapped_column(Integer)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    record_hash: Mapped[str | None] = mapped_column(String(64))


class AuditAnchorRow(Base):
    """Where a pruned chain now starts: seq and hash of the last record ``audit prune`` deleted."""

    __tablename__ = "audit_anchors"

    chain: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    record_hash: Mapped[str] = mapped_column(String(64))
    record_time: Mapped[float] = mapped_column(Float)  # time of that record
    pruned_at: Mapped[datetime] = mapped_column(default=utcnow)


class UiAccountRow(Base):
    """Accounts of the admin web UI (separate from docker users: different credentials, roles)."""

    __tablename__ = "ui_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    ui_role: Mapped[str] = mapped_column(String(32))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped by every sign-out: part of the session fingerprint, so it ends all of the account's
    # sessions, a copied cookie included.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
