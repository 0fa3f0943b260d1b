"""Admin changes as audit events: every change made in the UI lands in the audit log.

Grammar of an admin action (``AdminEvent``)::

    admin-action = "admin:" subject "-" verb      e.g. "admin:user-create", "admin:token-issue"

The event's ``user`` is the UI account, ``source`` is ``admin-ui``, ``roles`` its UI role,
``method``/``uri`` the HTTP request that made the change, ``object`` what was changed and
``reason`` one sentence saying what happened. Secrets never go in: a token is named by its id.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from flask import flash, g, request

from authz.audit import AuditEvent, redact_uri
from authz.ports import AuditSink

log = logging.getLogger(__name__)

SOURCE = "admin-ui"


class AdminEvent(StrEnum):
    SIGN_IN = "admin:session-sign-in"
    SIGN_OUT = "admin:session-sign-out"
    USER_CREATE = "admin:user-create"
    USER_DELETE = "admin:user-delete"
    USER_DISABLE = "admin:user-disable"
    USER_ENABLE = "admin:user-enable"
    USER_GRANT = "admin:user-grant"
    USER_REVOKE = "admin:user-revoke"
    USER_JOIN = "admin:user-join"
    USER_LEAVE = "admin:user-leave"
    TOKEN_ISSUE = "admin:token-issue"  # noqa: S105 - an action name, not a secret
    TOKEN_REVOKE = "admin:token-revoke"  # noqa: S105 - an action name, not a secret
    ROLE_SET = "admin:role-set"
    ROLE_DELETE = "admin:role-delete"
    POLICY_APPLY = "admin:policy-apply"
    AUDIT_EXPORT = "admin:audit-export"


def admin_event(
    action: AdminEvent,
    *,
    account: str | None,
    role: str | None,
    node: str,
    reason: str,
    obj: str | None = None,
    allow: bool = True,
    detail: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """The audit event of one admin action (pure: the caller supplies who and where)."""
    return AuditEvent(
        time=time.time(),
        request_id=secrets.token_hex(12),
        node=node,
        phase="admin",
        user=account,
        source=SOURCE,
        roles=(role,) if role else (),
        action=action.value,
        method=request.method,
        uri=redact_uri(request.full_path.rstrip("?")),
        object=obj,
        allow=allow,
        mode="enforce",
        rule=None,
        role=role,
        reason=reason,
        message="" if allow else reason,
        detail=dict(detail or {}),
    )


def record(
    sink: AuditSink,
    node: str,
    action: AdminEvent,
    reason: str,
    obj: str | None = None,
    allow: bool = True,
    account: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> bool:
    """Write the event of the signed-in account's action; False (and a warning shown) on failure.

    The change itself is already committed (and in policy_history with its author), so a failed
    audit write is reported loudly rather than undone: undoing could fail the same way.
    """
    current = getattr(g, "account", None)
    name = account if account is not None else (current.name if current is not None else None)
    role = current.role if current is not None else None
    event = admin_event(action, account=name, role=role, node=node, reason=reason, obj=obj, allow=allow,
                        detail=detail)  # fmt: skip
    try:
        sink.write(event)
    except Exception:
        log.exception("admin audit event %s could not be written", action.value)
        flash("The change was made, but its audit record could not be written: check the store.", "error")
        return False
    return True
