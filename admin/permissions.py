"""Who may do what in the admin UI: UI roles, UI permissions, and the decorator every view wears.

Grammar of a permission (``UiPermission``)::

    permission = area ":" verb
    area       = "audit" | "policy" | "users" | "simulator"
    verb       = "read" | "write" | "run"

``audit:read`` covers the audit log, its records, chart and exports; ``policy:read`` the policy
document, its history and the roles; ``policy:write`` uploading a policy and editing roles;
``users:read``/``users:write`` users, their memberships and tokens (``users:read`` also the objects
they own); ``simulator:run`` the simulator (it reads users and ownership, so it is not for
auditors).

UI roles (``ui_accounts.ui_role``): ``ui-admin`` holds every permission, ``ui-auditor`` only
``audit:read`` and ``policy:read``.

Every view is decorated with ``@requires(permission)`` or ``@public``; ``check_every_view``
refuses to start an app with an undecorated view, so a forgotten decorator cannot open a route.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar, cast

from flask import Flask, abort, g, redirect, request, url_for
from werkzeug.wrappers import Response

__all__ = ["GRANTS", "UiPermission", "UiRole", "can", "check_every_view", "public", "requires"]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "ui_permission"
_PUBLIC = "public"
_FLASK_OWN = frozenset({"static"})


class UiPermission(StrEnum):
    AUDIT_READ = "audit:read"
    POLICY_READ = "policy:read"
    POLICY_WRITE = "policy:write"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    SIMULATOR_RUN = "simulator:run"


class UiRole(StrEnum):
    ADMIN = "ui-admin"
    AUDITOR = "ui-auditor"


GRANTS: Mapping[UiRole, frozenset[UiPermission]] = {
    UiRole.ADMIN: frozenset(UiPermission),
    UiRole.AUDITOR: frozenset({UiPermission.AUDIT_READ, UiPermission.POLICY_READ}),
}


def can(role: str | None, permission: UiPermission) -> bool:
    """Whether UI role ``role`` holds ``permission``; unknown roles hold nothing (fail closed)."""
    try:
        return permission in GRANTS[UiRole(role or "")]
    except ValueError:
        return False


def requires(permission: UiPermission) -> Callable[[F], F]:
    """The view needs a signed-in account holding ``permission``.

    Not signed in: GET is redirected to the sign-in page, anything else gets 401. Signed in
    without the permission: 403.
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            account = getattr(g, "account", None)
            if account is None:
                if request.method in ("GET", "HEAD"):
                    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
                abort(401)
            if not can(account.role, permission):
                abort(403)
            return view(*args, **kwargs)

        setattr(wrapper, _ATTR, permission)
        return cast(F, wrapper)

    return decorator


def public(view: F) -> F:
    """The view is open without a session (sign-in page, /metrics with its own address check)."""
    setattr(view, _ATTR, _PUBLIC)
    return view


def permission_of(app: Flask, endpoint: str | None) -> UiPermission | str | None:
    view = app.view_functions.get(endpoint or "")
    return getattr(view, _ATTR, None) if view is not None else None


def check_every_view(app: Flask) -> None:
    """Refuse an app with a view that states no permission (fail closed at start, not at use)."""
    missing = [name for name in app.view_functions if name not in _FLASK_OWN and permission_of(app, name) is None]
    if missing:
        raise RuntimeError(f"admin views without @requires or @public: {', '.join(sorted(missing))}")


def redirect_back(default: str) -> Response:
    """Redirect to the page the form came from when it is ours, else to ``default``."""
    target = request.form.get("next", "")
    return redirect(target if is_local(target) else default)


def is_local(target: str) -> bool:
    """A path on this site (``/users``), never another origin (``//evil``, ``https://…``, ``/\\evil``)."""
    return target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target
