"""The admin UI's defences: session cookie, sign-in state, CSRF, security headers, signing key.

- Session: Flask's signed cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when configured
  or (only with ``AUTHZ_ADMIN_TRUST_PROXY``) when the proxy says the request came over HTTPS. It
  holds the account name, the fingerprint of its password hash, the sign-in and last-seen times
  and the CSRF token. Every request re-reads the account: a disabled account, a changed role or
  password, an expired or idle session ends the sign-in at once.
- CSRF: one random token per session, required in the ``csrf_token`` form field (or the
  ``X-CSRF-Token`` header) of every request that is not GET/HEAD/OPTIONS; compared in constant
  time. Cross-site requests (``Sec-Fetch-Site: cross-site``, or an ``Origin`` of another host)
  are refused as well.
- Headers: a strict CSP (no inline script or style), ``nosniff``, ``no-referrer``, no framing,
  ``Cache-Control: no-store`` (pages may show a token once; it must not stay in a cache).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.wrappers import Response

from admin.settings import AdminSettings
from authz.errors import ConfigError

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_NAME = "authz_admin"
_KEY_FILE = "session.key"


class AdminSessionInterface(SecureCookieSessionInterface):
    """``Secure`` per request: always when configured, else only for HTTPS behind a trusted proxy."""

    def get_cookie_secure(self, app: Flask) -> bool:
        settings: AdminSettings = app.extensions["authz_admin"].settings
        if settings.secure_cookies:
            return True
        return bool(settings.trust_proxy and has_request_context() and request.is_secure)


def load_secret_key(directory: Path) -> bytes:
    """The cookie signing key of every worker: ``directory/session.key``, created 0600 once."""
    path = directory / _KEY_FILE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            tmp = directory / f".{_KEY_FILE}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # create-if-absent: concurrent workers end up with one key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
                # Fail closed: whoever can read the key can forge an admin session.
                raise ConfigError(f"{path} is readable by others; run `chmod 600 {path}`")
            text = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read or create the admin session key {path}: {exc}") from exc
    if len(text) < 32:
        raise ConfigError(f"{path} holds no usable key; delete it to generate a new one")
    return text.encode()


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Abort 403 unless an unsafe request carries this session's token and comes from this site."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        abort(403, "cross-site request refused")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        abort(403, "request from another origin refused")
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(403, "CSRF token missing or invalid: reload the page and try again")


def sign_in(name: str, fingerprint: str) -> None:
    """Start a fresh session for ``name`` (a new CSRF token too: no session fixation)."""
    session.clear()
    now = time.time()
    session.update(account=name, fp=fingerprint, auth_at=now, seen=now, csrf=secrets.token_urlsafe(32))


def sign_out() -> None:
    session.clear()


def load_account() -> None:
    """Set ``g.account`` from the session when the sign-in is still valid; clear it otherwise."""
    g.account = None
    if request.endpoint == "static":
        return  # the stylesheet needs no account (and no database query)
    name = session.get("account")
    if not isinstance(name, str):
        return
    services = current_app.extensions["authz_admin"]
    settings: AdminSettings = services.settings
    now = time.time()
    auth_at, seen = _number(session.get("auth_at")), _number(session.get("seen"))
    account = services.accounts.get(name)
    if (
        account is None
        or account.disabled
        or not hmac.compare_digest(str(session.get("fp", "")), account.fingerprint)
        or now - auth_at > settings.session_lifetime
        or now - seen > settings.idle_timeout
    ):
        sign_out()
        return
    if now - seen > 60:  # refresh the idle clock at most once a minute (each refresh is a cookie)
        session["seen"] = now
    g.account = account


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def add_security_headers(response: Response) -> Response:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.endpoint != "static":  # the stylesheet may be cached; pages may hold a token
        headers["Cache-Control"] = "no-store"
    return response


def client_address() -> str:
    """The client address (``X-Forwarded-For`` counts only behind a configured proxy: ProxyFix)."""
    return request.remote_addr or "unknown"
