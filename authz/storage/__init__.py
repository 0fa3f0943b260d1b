"""The store: SQLAlchemy models, repositories implementing the core's ports, alembic migrations.

``migrate(url)`` upgrades a database to the newest schema; ``Database(url)`` opens it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from authz.errors import StoreError
from authz.storage.db import Database, describe, make_engine, session_scope

__all__ = [
    "MIGRATIONS_DIR",
    "Database",
    "current_revision",
    "head_revision",
    "make_engine",
    "migrate",
    "session_scope",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migrations found in the package")
    return head


def current_revision(db: Database) -> str | None:
    """The schema revision the database is at; None before the first migration."""
    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {describe(exc)}") from exc


def migrate(target: str | Database) -> str:
    """Upgrade the database (a URL or an open ``Database``) to the head revision; return it.

    Runs in one transaction holding the write lock, so two concurrent `authzctl init` runs do not
    interleave DDL (on PostgreSQL the second waits on alembic_version).
    """
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
