"""Audit chain: one row per (chain, seq), and the anchors that pruned chains start from.

Revision ID: 0002
Revises: 0001
Create Date: 2024-06-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from authz.storage.models import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision have no chain (NULL), and NULLs never collide.
    op.create_index("uq_audit_records_chain_seq", "audit_records", ["chain", "seq"], unique=True)
    op.create_table(
        "audit_anchors",
        sa.Column("chain", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
        sa.Column("record_time", sa.Float(), nullable=False),
        sa.Column("pruned_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain", name="pk_audit_anchors"),
    )


def downgrade() -> None:
    op.drop_table("audit_anchors")
    op.drop_index("uq_audit_records_chain_seq", table_name="audit_records")
