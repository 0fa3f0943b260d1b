"""Alembic migrations of the store; run them with ``authz.storage.migrate(url)`` or ``authzctl migrate``."""
