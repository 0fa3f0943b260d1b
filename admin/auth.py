"""Sign-in and sign-out of UI accounts.

A sign-in attempt is refused without checking the password while the account or the client
address is locked out (``admin.throttle``); the answer never says whether the account exists.
Both successful and failed sign-ins are audited (``admin:session-sign-in``, allow true/false).
"""

from __future__ import annotations

import logging

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.events import AdminEvent, record
from admin.permissions import UiPermission, can, is_local, public
from admin.security import client_address, sign_in, sign_out
from admin.services import services
from authz.errors import AuthzError

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

_START_PAGES = (
    (UiPermission.USERS_READ, "users.index"),
    (UiPermission.AUDIT_READ, "audit.index"),
)


def start_page() -> str:
    account = g.account
    for permission, endpoint in _START_PAGES:
        if can(account.role, permission):
            return url_for(endpoint)
    return url_for("policy.index")


@bp.get("/")
@public
def home() -> Response:
    if getattr(g, "account", None) is None:
        return redirect(url_for("auth.login"))
    return redirect(start_page())


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Response | tuple[str, int] | str:
    next_page = request.values.get("next", "")
    if request.method == "GET":
        return render_template("auth/login.html", next=next_page if is_local(next_page) else "")
    svc = services()
    name = request.form.get("username", "").strip()[:128]
    password = request.form.get("password", "")
    address = client_address()
    lockout = svc.throttle.locked(name, address)
    if lockout is not None:
        wait = int(lockout.retry_after) + 1
        page = render_template("auth/login.html", next=next_page, username=name,
                               error=f"Too many failed sign-ins. Try again in {wait} seconds.")  # fmt: skip
        return Response(page, status=429, headers={"Retry-After": str(wait)})
    account = svc.accounts.authenticate(name, password) if name and password else None
    if account is None:
        svc.throttle.failure(name, address)
        known = svc.accounts.get(name) is not None
        record(svc.sink, svc.settings.base.node, AdminEvent.SIGN_IN, f"failed sign-in from {address}",
               obj=address, allow=False, account=name if known else None)  # fmt: skip
        error = "Wrong account name or password, or the account is disabled."
        return render_template("auth/login.html", next=next_page, username=name, error=error), 401
    svc.throttle.success(name)
    sign_in(account.name, account.fingerprint)
    g.account = account
    record(svc.sink, svc.settings.base.node, AdminEvent.SIGN_IN, f"signed in from {address}", obj=address)
    return redirect(next_page if is_local(next_page) else start_page())


@bp.post("/logout")
@public  # signing out needs no permission, only the CSRF token every POST carries
def logout() -> Response:
    svc = services()
    account = getattr(g, "account", None)
    if account is not None:
        record(svc.sink, svc.settings.base.node, AdminEvent.SIGN_OUT, "signed out")
        try:
            svc.accounts.end_sessions(account.name)  # a copied cookie dies with this one
        except AuthzError as exc:
            log.error("sign-out of %s: other sessions could not be ended: %s", account.name, exc)
            flash("Signed out here; other sessions of this account could not be ended.", "error")
    sign_out()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))
