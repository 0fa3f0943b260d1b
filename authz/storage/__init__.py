"""The store: SQLAlchemy models, repositories implementing the core's ports, alembic migrations.

``migrate(url)`` upgrades a database to the newest schema; ``Database(url)`` opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from authz.errors import StoreError
from authz.storage.db import Database, describe, make_engine, session_scope

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# alembic is imported inside the functions: every `authzctl serve` start (and so every restart of
# the plugin after a crash) would otherwise pay 0.25-0.4 s for it without running a migration.

__all__ = [
    "MIGRATIONS_DIR",
    "SCHEMA_HEAD",
    "Database",
    "current_revision",
    "head_revision",
    "make_engine",
    "migrate",
    "schema_revision",
    "session_scope",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest revision under migrations/versions (a test checks it against alembic's head): lets
# `authzctl serve` check the schema without loading alembic, 10 MiB in every worker it forks.
SCHEMA_HEAD = "0004"


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # noqa: PLC0415 - see the module comment

    config = AlembicConfig(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - see the module comment

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migrations found in the package")
    return head


def current_revision(db: Database) -> str | None:
    """The schema revision the database is at; None before the first migration."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415 - see the module comment

    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {describe(exc)}") from exc


def schema_revision(db: Database) -> str | None:
    """``current_revision`` read with one SELECT (no alembic import). ``StoreError`` when it cannot
    be read, a database never migrated (no ``alembic_version`` table) included."""
    from sqlalchemy import text  # noqa: PLC0415

    try:
        with db.engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {describe(exc)}") from exc


def migrate(target: str | Database) -> str:
    """Upgrade the database (a URL or an open ``Database``) to the head revision; return it.

    Runs in one transaction holding the write lock, so two concurrent `authzctl init` runs do not
    interleave DDL (on PostgreSQL the second waits on alembic_version).
    """
    from alembic import command  # noqa: PLC0415 - see the module comment

    db = Database(target) if isinstance(target, str) else target
    config = _alembic_config()
    try:
        with db.writer.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {describe(exc)}") from exc
    finally:
        if isinstance(target, str):
            db.dispose()
    return head_revision()
