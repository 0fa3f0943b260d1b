"""``authzctl breakglass grant|list|end``: time-limited admin rights for an emergency, audited.

A grant is stored with ``BreakglassStore``, which bumps the policy revision in the same
transaction: every running plugin process picks it up within one poll (``AUTHZ_REVISION_POLL``,
0.5 s). While it is unexpired, identity resolution adds the role ``admin`` to the user, so every
decision made under it is audited with ``admin`` among the roles. Granting and ending are audit
events themselves: phase ``admin``, actions ``breakglass:grant`` / ``breakglass:end``, the
operator as user, the reason in ``reason`` and ``detail``.

The CLI talks to the store, not to the daemon: it works while dockerd refuses everything.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from authz.cli.common import (
    Context,
    UsageError,
    add_author,
    author,
    command_group,
    iso,
    parse_duration,
    record_admin_event,
    table,
)
from authz.errors import AuthzError, StoreError

MAX_TTL_SECONDS = 24 * 3600  # longer than a day is a role change, not an emergency
DEFAULT_TTL = "15m"


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "breakglass", "grant, list and end emergency admin rights")

    grant = commands.add_parser(
        "grant",
        help="make USER admin for a limited time (audited, with the reason)",
        description="USER becomes admin until the grant expires or `breakglass end USER`; running plugins "
        "see the grant within a second.",
    )
    grant.add_argument("user", metavar="USER", help="a known, enabled user")
    grant.add_argument("--ttl", default=DEFAULT_TTL, help=f"lifetime: 90s, 15m, 2h … (default {DEFAULT_TTL}, max 24h)")
    grant.add_argument("--reason", required=True, help="why (incident id, what is broken): shown in the audit")
    add_author(grant)
    grant.set_defaults(handler=run_grant)

    list_ = commands.add_parser("list", help="list active grants (--all: also expired and ended ones)")
    list_.add_argument("--all", action="store_true", help="include expired and ended grants")
    list_.set_defaults(handler=run_list)

    end = commands.add_parser("end", help="end every active grant of USER now")
    end.add_argument("user", metavar="USER")
    add_author(end)
    end.set_defaults(handler=run_end)


def run_grant(args: argparse.Namespace, ctx: Context) -> int:
    ttl = parse_duration(args.ttl)
    if ttl > MAX_TTL_SECONDS:
        raise UsageError(f"--ttl {args.ttl} is longer than {MAX_TTL_SECONDS // 3600}h: grant a role instead")
    reason = " ".join(args.reason.split())
    if not reason:
        raise UsageError("--reason must say why (it is audited with every request made under the grant)")
    user = ctx.policy.get_user(args.user)  # PolicyError "users.X: no such user" for an unknown user
    if user.disabled:
        raise UsageError(f"user {user.name} is disabled; a disabled user is refused before any role applies")
    by = author(args)
    record = ctx.breakglass.grant(user.name, time.time() + ttl, reason, by)
    until = iso(record.expires_at)
    detail = {"grant_id": record.id, "user": user.name, "expires_at": until, "ttl_seconds": ttl, "reason": reason}
    try:
        record_admin_event(ctx, by, "breakglass:grant", user.name,
                           f"break-glass for {user.name} until {until}: {reason}",
                           ["breakglass", "grant", user.name, "--ttl", args.ttl], detail)  # fmt: skip
    except AuthzError as exc:
        # Fail closed: admin rights that leave no audit trail must not stand.
        ctx.breakglass.end(user.name, by)
        raise StoreError(f"grant withdrawn: it could not be audited ({exc})") from exc
    ctx.out.write(
        f"break-glass: {user.name} is admin until {until} (grant {record.id}, policy revision "
        f"{ctx.policy.revision()}); end it with `authzctl breakglass end {user.name}`\n"
    )
    return 0


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    now = datetime.now(UTC)
    rows = []
    for grant in ctx.breakglass.list(active_only=not args.all):
        if grant.revoked_at is not None:
            status = f"ended {iso(grant.revoked_at)}"
        else:
            status = "expired" if grant.expires_at <= now else "active"
        rows.append((grant.id, grant.user, iso(grant.granted_at), iso(grant.expires_at), status, grant.granted_by,
                     grant.reason))  # fmt: skip
    table(ctx.out, ("ID", "USER", "GRANTED", "EXPIRES", "STATUS", "BY", "REASON"), rows)
    return 0


def run_end(args: argparse.Namespace, ctx: Context) -> int:
    by = author(args)
    count = ctx.breakglass.end(args.user, by)
    if count == 0:
        ctx.out.write(f"no active break-glass grant for {args.user}\n")
        return 0
    record_admin_event(ctx, by, "breakglass:end", args.user,
                       f"break-glass for {args.user} ended by {by} ({count} grant(s))",
                       ["breakglass", "end", args.user], {"user": args.user, "ended": count})  # fmt: skip
    ctx.out.write(f"break-glass for {args.user} ended ({count} grant(s); policy revision {ctx.policy.revision()})\n")
    return 0
