"""Alembic environment: migrate the connection ``authz.storage.migrate`` hands over, or a URL.

Run by hand, the URL comes from ``sqlalchemy.url`` in the ini file or from ``AUTHZ_DATABASE_URL``
(``authz.config``). SQLite gets batch mode, since it cannot ALTER most of a table in place.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from authz.config import Config
from authz.storage.db import make_engine
from authz.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transactional_ddl=True,  # SQLite DDL is transactional too (db.py emits BEGIN itself)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)  # the alembic command line
    url = config.get_main_option("sqlalchemy.url") or Config.from_env().database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against the database")
run_migrations_online()
