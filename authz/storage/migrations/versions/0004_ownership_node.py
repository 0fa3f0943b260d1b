"""Ownership: the node (``AUTHZ_NODE``) whose daemon the object lives on.

Docker names, volume names (a volume's ID) and the daemon's objects are per host; in fleet mode
one table holds every host's records. Each record now carries the node that made it ('' for the
records from before this column, and for tools that record for no node), an object ID is unique
per node, and lookups, the release of a reused name, forgetting and ``ownership prune`` keep to the
asking node's records and the '' ones.

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
        batch.add_column(sa.Column("node", sa.String(255), nullable=False, server_default=""))
        batch.drop_constraint("uq_ownership_kind_object_id", type_="unique")
        batch.create_unique_constraint("uq_ownership_kind_object_id_node", ["kind", "object_id", "node"])


def downgrade() -> None:
    with op.batch_alter_table("ownership") as batch:
        batch.drop_constraint("uq_ownership_kind_object_id_node", type_="unique")
        batch.create_unique_constraint("uq_ownership_kind_object_id", ["kind", "object_id"])
        batch.drop_column("node")
