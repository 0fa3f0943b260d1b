"""Docker users: list, create, disable/enable, delete, group and role membership, tokens.

A new token is shown once, on the page that answers the POST (never redirected to, never stored,
``Cache-Control: no-store``), with the ``~/.docker/config.json`` snippet that sends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.events import AdminEvent, record
from admin.permissions import UiPermission, requires
from admin.services import services
from authz.errors import AuthzError, PolicyError
from authz.identity.resolve import TOKEN_HEADER
from authz.identity.token import issue_token
from authz.storage.policy_store import Change
from authz.storage.tokens import RecordNotFound

bp = Blueprint("users", __name__, url_prefix="/users")

# Token lifetimes offered (label, seconds); the CLI allows at most 366 days as well.
TTL_CHOICES = (
    ("1 hour", 3600),
    ("8 hours", 8 * 3600),
    ("1 day", 86400),
    ("7 days", 7 * 86400),
    ("30 days", 30 * 86400),
    ("90 days", 90 * 86400),
    ("366 days", 366 * 86400),
)
_TTLS = {seconds for _label, seconds in TTL_CHOICES}
MAX_NOTE = 500
OWNED_CAP = 1000  # the user page counts owned objects up to this many ("1000+")


def _names(field: str) -> list[str]:
    return sorted({value.strip() for value in request.form.getlist(field) if value.strip()})


def _detail_url(name: str) -> str:
    return url_for("users.detail", name=name)


def _apply(change: Callable[[], Change], event: AdminEvent, name: str, done: str, unchanged: str) -> Response:
    """Run one policy change, report it, audit it, and go back to the user's page."""
    svc = services()
    try:
        result = change()
    except PolicyError as exc:
        flash(str(exc), "error")
        return redirect(_detail_url(name))
    if result.changed:
        record(svc.sink, svc.settings.base.node, event, f"{done} (policy revision {result.revision})", obj=name)
        flash(f"{done} (policy revision {result.revision}).", "ok")
    else:
        flash(f"{unchanged}: nothing to do.", "info")
    return redirect(_detail_url(name))


@bp.get("")
@requires(UiPermission.USERS_READ)
def index() -> str:
    svc = services()
    now = datetime.now(UTC)
    active: dict[str, int] = {}
    for token in svc.tokens.list():
        if token.status(now) == "active":
            active[token.user] = active.get(token.user, 0) + 1
    return render_template("users/list.html", users=svc.policy.list_users(), active=active)


@bp.route("/new", methods=["GET", "POST"])
@requires(UiPermission.USERS_WRITE)
def create() -> Response | str | tuple[str, int]:
    svc = services()
    policy = svc.policy.load_policy()
    form = {"name": "", "tls_cn": "", "roles": [], "groups": []}
    if request.method == "POST":
        name = request.form.get("name", "").strip()
        tls_cn = request.form.get("tls_cn", "").strip() or None
        roles, groups = _names("roles"), _names("groups")
        form = {"name": name, "tls_cn": tls_cn or "", "roles": roles, "groups": groups}
        try:
            change = svc.policy.add_user(name, g.account.name, roles=roles, groups=groups, tls_cn=tls_cn)
        except PolicyError as exc:
            return render_template("users/new.html", policy=policy, form=form, error=exc), 400
        record(svc.sink, svc.settings.base.node, AdminEvent.USER_CREATE,
               f"user {name} created with roles {', '.join(roles) or 'none'} (policy revision {change.revision})",
               obj=name, detail={"roles": roles, "groups": groups, "tls_cn": tls_cn})  # fmt: skip
        flash(f"User {name} created (policy revision {change.revision}).", "ok")
        return redirect(_detail_url(name))
    return render_template("users/new.html", policy=policy, form=form, error=None)


@bp.get("/<name>")
@requires(UiPermission.USERS_READ)
def detail(name: str) -> str:
    svc = services()
    try:
        user = svc.policy.get_user(name)
    except PolicyError:
        abort(404)
    policy = svc.policy.load_policy()
    now = datetime.now(UTC)
    tokens = sorted(svc.tokens.list(user=name), key=lambda t: t.issued_at, reverse=True)
    owned = len(svc.ownership.list(owner=name, limit=OWNED_CAP + 1))
    return render_template(
        "users/detail.html", user=user, policy=policy, tokens=tokens, now=now, ttl_choices=TTL_CHOICES,
        owned=owned, owned_cap=OWNED_CAP,
    )  # fmt: skip


@bp.post("/<name>/disable")
@requires(UiPermission.USERS_WRITE)
def disable(name: str) -> Response:
    author = g.account.name
    return _apply(lambda: services().policy.set_user_disabled(name, True, author), AdminEvent.USER_DISABLE, name,
                  f"user {name} disabled", f"user {name} is already disabled")  # fmt: skip


@bp.post("/<name>/enable")
@requires(UiPermission.USERS_WRITE)
def enable(name: str) -> Response:
    author = g.account.name
    return _apply(lambda: services().policy.set_user_disabled(name, False, author), AdminEvent.USER_ENABLE, name,
                  f"user {name} enabled", f"user {name} is already enabled")  # fmt: skip


@bp.post("/<name>/roles/grant")
@requires(UiPermission.USERS_WRITE)
def grant(name: str) -> Response:
    role, author = request.form.get("role", "").strip(), g.account.name
    return _apply(lambda: services().policy.grant_user_role(name, role, author), AdminEvent.USER_GRANT, name,
                  f"role {role} granted to {name}", f"{name} already has {role}")  # fmt: skip


@bp.post("/<name>/roles/revoke")
@requires(UiPermission.USERS_WRITE)
def revoke_role(name: str) -> Response:
    role, author = request.form.get("role", "").strip(), g.account.name
    return _apply(lambda: services().policy.revoke_user_role(name, role, author), AdminEvent.USER_REVOKE, name,
                  f"role {role} taken from {name}", "")  # fmt: skip


@bp.post("/<name>/groups/join")
@requires(UiPermission.USERS_WRITE)
def join(name: str) -> Response:
    group, author = request.form.get("group", "").strip(), g.account.name
    return _apply(lambda: services().policy.join_group(name, group, author), AdminEvent.USER_JOIN, name,
                  f"{name} joined group {group}", f"{name} is already in {group}")  # fmt: skip


@bp.post("/<name>/groups/leave")
@requires(UiPermission.USERS_WRITE)
def leave(name: str) -> Response:
    group, author = request.form.get("group", "").strip(), g.account.name
    return _apply(lambda: services().policy.leave_group(name, group, author), AdminEvent.USER_LEAVE, name,
                  f"{name} left group {group}", "")  # fmt: skip


@bp.route("/<name>/delete", methods=["GET", "POST"])
@requires(UiPermission.USERS_WRITE)
def delete(name: str) -> Response | str:
    svc = services()
    try:
        user = svc.policy.get_user(name)
    except PolicyError:
        abort(404)
    if request.method == "GET":
        return render_template("users/delete.html", user=user)
    change = svc.policy.remove_user(name, g.account.name)
    record(svc.sink, svc.settings.base.node, AdminEvent.USER_DELETE,
           f"user {name} removed, tokens revoked (policy revision {change.revision})", obj=name)  # fmt: skip
    flash(f"User {name} removed; their tokens are revoked (policy revision {change.revision}).", "ok")
    return redirect(url_for("users.index"))


@bp.post("/<name>/tokens")
@requires(UiPermission.USERS_WRITE)
def issue(name: str) -> Response | str:
    svc = services()
    try:
        user = svc.policy.get_user(name)
    except PolicyError:
        abort(404)
    try:
        ttl = int(request.form.get("ttl", ""))
    except ValueError:
        ttl = 0
    if ttl not in _TTLS:
        abort(400, "choose one of the offered lifetimes")
    if user.disabled:
        flash(f"User {name} is disabled: enable the user before issuing a token.", "error")
        return redirect(_detail_url(name))
    note = request.form.get("note", "").strip()[:MAX_NOTE] or None
    settings = svc.settings.base
    try:
        revision = svc.policy.revision()  # read after the user: the token names a revision that has them
        issued = issue_token(svc.keys(), user.name, ttl, time.time(), audience=settings.token_audience,
                             policy_revision=revision)  # fmt: skip
        svc.tokens.record(issued.token_id, issued.subject, kid=issued.kid, issued_at=issued.issued_at,
                          expires_at=issued.expires_at, note=note)  # fmt: skip
    except AuthzError as exc:
        flash(f"The token could not be issued: {exc}", "error")
        return redirect(_detail_url(name))
    record(svc.sink, settings.node, AdminEvent.TOKEN_ISSUE, f"token {issued.token_id} issued to {name}",
           obj=issued.token_id, detail={"user": name, "expires_at": issued.expires_at, "note": note})  # fmt: skip
    snippet = json.dumps({"HttpHeaders": {TOKEN_HEADER: issued.token}}, indent=2)
    return render_template("users/token.html", user=user, issued=issued, note=note, snippet=snippet)


@bp.post("/tokens/<jti>/revoke")
@requires(UiPermission.USERS_WRITE)
def revoke_token(jti: str) -> Response:
    svc = services()
    try:
        token = svc.tokens.revoke(jti, g.account.name)
    except RecordNotFound:
        abort(404)
    record(svc.sink, svc.settings.base.node, AdminEvent.TOKEN_REVOKE, f"token {jti} of {token.user} revoked", obj=jti)
    flash(f"Token {jti} of {token.user} revoked.", "ok")
    return redirect(_detail_url(token.user))
