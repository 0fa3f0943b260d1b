"""Ownership: the node (``AUTHZ_NODE``) whose daemon the object lives on.

Docker names and the daemon's objects are per host; in fleet mode one table holds every host's
records. Lookups by name and prefix, the release of a reused name and ``ownership prune`` now keep
to the asking node's records (and to the records from before this column, whose node is unknown).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ownership") as batch:
        batch.add_column(sa.Column("node", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ownership") as batch:
        batch.drop_column("node")
