"""The admin web UI: a Flask app on its own listener (``authzctl admin serve``), never the plugin socket.

Server-rendered Jinja templates, no build step; every write is a plain HTML form (no JavaScript
needed). One blueprint per resource:

===============  ==========================================================================
``auth``         sign-in/out of UI accounts (``ui_accounts``), throttled
``users``        docker users, their groups and roles, their tokens (issue, list, revoke)
``roles``        roles: list, create, edit every policy-v1 section, delete
``policy``       the policy document: view, download, upload → diff → apply, history
``simulator``    what the plugin would decide for a user and a docker command (read-only)
``audit``        the audit log: filters, keyset pages, record detail, chart, CSV/JSONL export
``metrics``      ``/metrics`` of the plugin workers (Prometheus; address allow-list, no session)
===============  ==========================================================================

``create_app(config, db)`` is the composition root: settings from the environment unless given,
the database of ``AUTHZ_DATABASE_URL`` unless given.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, g, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from admin import audit, auth, metrics, objects, policy, roles, simulator, users
from admin.permissions import UiPermission, can, check_every_view
from admin.security import (
    COOKIE_NAME,
    AdminSessionInterface,
    add_security_headers,
    check_csrf,
    csrf_token,
    load_account,
    load_secret_key,
)
from admin.services import Services
from admin.settings import AdminSettings
from authz.storage.db import Database

__all__ = ["create_app"]

MAX_UPLOAD = 9 * 1024 * 1024  # a policy document may be 8 MiB (authz.storage.yamlio)
BLUEPRINTS = (auth.bp, users.bp, roles.bp, policy.bp, simulator.bp, audit.bp, objects.bp, metrics.bp)


def create_app(config: AdminSettings | None = None, db: Database | None = None) -> Flask:
    """The admin app. ``config``: settings (default ``AdminSettings.from_env()``); ``db``: the
    store (default: opened from ``config``). Refuses to start when a view states no permission."""
    settings = config or AdminSettings.from_env()
    database = db or Database(settings.base.database_url)
    app = Flask("admin", static_folder="static", template_folder="templates")
    app.extensions["authz_admin"] = Services.build(settings, database)
    app.config.update(
        SECRET_KEY=settings.secret_key or load_secret_key(settings.admin_dir),
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=settings.session_lifetime,
        MAX_CONTENT_LENGTH=MAX_UPLOAD,
        MAX_FORM_MEMORY_SIZE=MAX_UPLOAD,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.session_interface = AdminSessionInterface()
    if settings.trust_proxy:
        # Only when configured: otherwise any client could claim another address or HTTPS.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trust_proxy, x_proto=settings.trust_proxy, x_host=0
        )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

    app.before_request(load_account)
    app.before_request(check_csrf)
    app.after_request(add_security_headers)
    app.register_error_handler(HTTPException, _error_page)
    app.jinja_env.globals.update(csrf_token=csrf_token, can=_can, UiPermission=UiPermission)
    app.jinja_env.filters.update(when=when)
    check_every_view(app)
    return app


def _can(permission: UiPermission) -> bool:
    account = getattr(g, "account", None)
    return account is not None and can(account.role, permission)


def when(value: datetime | float | None) -> str:
    """UTC time for tables: ``2024-06-01 12:00:05``."""
    if value is None:
        return "–"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _error_page(exc: HTTPException) -> Response | tuple[str, int]:
    if exc.code is None or exc.code < 400:
        return exc.get_response()
    return render_template("error.html", error=exc), exc.code
