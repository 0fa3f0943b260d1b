"""Initial schema: directory, roles, settings, tokens, revision and history, break-glass,
ownership, audit records and admin UI accounts.

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from authz.storage.models import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("tls_cn", sa.String(255), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.UniqueConstraint("tls_cn", name="uq_users_tls_cn"),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_roles"),
        sa.UniqueConstraint("name", name="uq_roles_name"),
    )
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", NAME, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_user_roles_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "role", name="pk_user_roles"),
    )
    op.create_index("ix_user_roles_role", "user_roles", ["role"])
    op.create_table(
        "user_groups",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_user_groups_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_user_groups_group_id_groups", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "group_id", name="pk_user_groups"),
    )
    op.create_index("ix_user_groups_group_id", "user_groups", ["group_id"])
    op.create_table(
        "group_roles",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("role", NAME, nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_group_roles_group_id_groups", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "role", name="pk_group_roles"),
    )
    op.create_index("ix_group_roles_role", "group_roles", ["role"])
    op.create_table(
        "settings",
        sa.Column("key", NAME, nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )
    op.create_table(
        "tokens",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("user", NAME, nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_by", NAME, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("jti", name="pk_tokens"),
    )
    op.create_index("ix_tokens_user", "tokens", ["user"])
    op.create_table(
        "policy_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("updated_by", NAME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_policy_state"),
    )
    op.create_table(
        "policy_history",
        sa.Column("revision", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("author", NAME, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("revision", name="pk_policy_history"),
    )
    op.create_table(
        "breakglass_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", NAME, nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_by", NAME, nullable=False),
        sa.Column("granted_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_breakglass_grants"),
    )
    op.create_index("ix_breakglass_grants_user", "breakglass_grants", ["user"])
    op.create_table(
        "ownership",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("owner", NAME, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ownership"),
        sa.UniqueConstraint("kind", "object_id", name="uq_ownership_kind_object_id"),
    )
    op.create_index("ix_ownership_kind_name", "ownership", ["kind", "name"])
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("user", NAME, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("object", sa.Text(), nullable=True),
        sa.Column("allow", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("rule", sa.Text(), nullable=True),
        sa.Column("role", NAME, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("body_digest", sa.String(128), nullable=True),
        sa.Column("token_id", sa.String(64), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("chain", sa.String(128), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("record_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_records"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_records_time", "audit_records", ["time"])
    op.create_index("ix_audit_records_user_time", "audit_records", ["user", "time"])
    op.create_index("ix_audit_records_action_time", "audit_records", ["action", "time"])
    op.create_index("ix_audit_records_allow_time", "audit_records", ["allow", "time"])
    op.create_table(
        "ui_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("ui_role", sa.String(32), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ui_accounts"),
        sa.UniqueConstraint("name", name="uq_ui_accounts_name"),
    )
    # The one row every plugin polls; revision 0 = nothing applied yet.
    policy_state = sa.table(
        "policy_state",
        sa.column("id", sa.Integer()),
        sa.column("revision", sa.Integer()),
        sa.column("updated_at", UtcDateTime()),
        sa.column("updated_by", NAME),
    )
    op.bulk_insert(
        policy_state,
        [{"id": 1, "revision": 0, "updated_at": datetime.now(UTC), "updated_by": "migration"}],
    )


def downgrade() -> None:
    for table in (
        "ui_accounts",
        "audit_records",
        "ownership",
        "breakglass_grants",
        "policy_history",
        "policy_state",
        "tokens",
        "settings",
        "group_roles",
        "user_groups",
        "user_roles",
        "roles",
        "groups",
        "users",
    ):
        op.drop_table(table)
