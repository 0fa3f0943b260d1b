"""Helpers for tests of the admin UI (like ``flask.testing``): a fresh store, an app, a client.

``AdminClient`` signs in through the real form and adds the session's CSRF token to every POST
it sends (``post(..., csrf=False)`` sends none, to test the refusal).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from admin import create_app
from admin.settings import AdminSettings
from authz.config import Config
from authz.storage import Database, migrate
from authz.storage.repositories import PolicyStore

__all__ = ["FAST_HASH", "AdminClient", "make_app", "make_settings", "prepare_store"]

# argon2 parameters that keep a sign-in cheap in tests (the defaults take ~0.3 s per hash).
FAST_HASH = {"memory_cost": 1024, "rounds": 1, "parallelism": 1}
PASSWORD = "correct horse battery staple"  # noqa: S105 - the test accounts' password


def prepare_store(url: str) -> Database:
    """A migrated store holding the stock built-in roles (what ``authzctl init`` leaves)."""
    migrate(url)
    db = Database(url)
    PolicyStore(db).store_builtin_roles()
    return db


def make_settings(state_dir: Path, database_url: str, **overrides: Any) -> AdminSettings:
    base = Config(database_url=database_url, state_dir=state_dir, node="test-node")
    # Straight to the table: a test reads the audit record right after the action (no shipper lag).
    values: dict[str, Any] = {"base": base, "hash_params": FAST_HASH, "secret_key": b"k" * 32, "audit_journal": False}
    values.update(overrides)
    return AdminSettings(**values)


def make_app(tmp_path: Path, **overrides: Any) -> tuple[Flask, Database]:
    """An app over a fresh SQLite store in ``tmp_path`` with accounts ``admin`` and ``auditor``."""
    url = f"sqlite:///{tmp_path / 'authz.db'}"
    db = prepare_store(url)
    app = create_app(make_settings(tmp_path / "state", url, **overrides), db)
    accounts = app.extensions["authz_admin"].accounts
    accounts.create("admin", "ui-admin", PASSWORD)
    accounts.create("auditor", "ui-auditor", PASSWORD)
    return app, db


class AdminClient:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()

    def csrf(self) -> str:
        with self.client.session_transaction() as session:
            token = session.get("csrf")
        if not isinstance(token, str):
            self.client.get("/login")  # a first page view creates the session and its token
            with self.client.session_transaction() as session:
                token = session["csrf"]
        return str(token)

    def login(self, name: str = "admin", password: str = PASSWORD, **kwargs: Any) -> TestResponse:
        return self.post("/login", {"username": name, "password": password}, **kwargs)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: Mapping[str, Any] | None = None, csrf: bool = True, **kwargs: Any) -> TestResponse:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.csrf())
        return self.client.post(path, data=form, **kwargs)
