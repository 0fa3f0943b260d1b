"""``authzctl user ...``: docker users, their roles, groups and TLS identity."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from authz.cli.common import Context, add_author, author, command_group, csv_list, iso, table
from authz.storage.policy_store import Change
from authz.storage.yamlio import dump_yaml


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "user", "manage docker users")

    add = commands.add_parser("add", help="add a user")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", action="append", default=[], metavar="ROLE", help="grant ROLE (repeatable)")
    add.add_argument("--group", action="append", default=[], metavar="GROUP", help="join GROUP (repeatable)")
    add.add_argument("--tls-cn", metavar="CN", help="client-certificate common name that identifies the user")
    add_author(add)
    add.set_defaults(handler=run_add)

    commands.add_parser("list", help="list users").set_defaults(handler=run_list)

    show = commands.add_parser("show", help="show one user (YAML)")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(handler=run_show)

    for verb, handler, text in (
        ("disable", run_disable, "deny every request of the user (tokens are kept)"),
        ("enable", run_enable, "allow the user again"),
        ("rm", run_rm, "remove the user and revoke their tokens"),
    ):
        parser = commands.add_parser(verb, help=text)
        parser.add_argument("name", metavar="NAME")
        add_author(parser)
        parser.set_defaults(handler=handler)

    for verb, handler, metavar, text in (
        ("grant", run_grant, "ROLE", "grant a role to the user"),
        ("revoke-role", run_revoke_role, "ROLE", "take a directly granted role away"),
        ("join", run_join, "GROUP", "add the user to a group"),
        ("leave", run_leave, "GROUP", "remove the user from a group"),
    ):
        parser = commands.add_parser(verb, help=text)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("target", metavar=metavar)
        add_author(parser)
        parser.set_defaults(handler=handler)


def report(ctx: Context, change: Change, done: str, unchanged: str) -> int:
    if change.changed:
        ctx.out.write(f"{done} (policy revision {change.revision})\n")
    else:
        ctx.out.write(f"{unchanged}: nothing to do\n")
    return 0


def run_add(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.add_user(args.name, author(args), roles=args.role, groups=args.group, tls_cn=args.tls_cn)
    return report(ctx, change, f"user {args.name} added", f"user {args.name} exists")


def run_list(_args: argparse.Namespace, ctx: Context) -> int:
    rows = [
        (u.name, csv_list(u.roles), csv_list(u.groups), u.tls_cn, "disabled" if u.disabled else "enabled")
        for u in ctx.policy.list_users()
    ]
    table(ctx.out, ("NAME", "ROLES", "GROUPS", "TLS-CN", "STATE"), rows)
    return 0


def run_show(args: argparse.Namespace, ctx: Context) -> int:
    user = ctx.policy.get_user(args.name)
    now = datetime.now(UTC)
    statuses = [token.status(now) for token in ctx.tokens.list(user=user.name)]
    doc = {
        "name": user.name,
        "roles": list(user.roles),
        "groups": list(user.groups),
        "effective_roles": list(user.effective_roles),
        "tls_cn": user.tls_cn,
        "disabled": user.disabled,
        "created_at": iso(user.created_at),
        "tokens": {state: statuses.count(state) for state in ("active", "expired", "revoked")},
    }
    ctx.out.write(dump_yaml(doc))
    return 0


def run_disable(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.set_user_disabled(args.name, True, author(args))
    return report(ctx, change, f"user {args.name} disabled", f"user {args.name} is already disabled")


def run_enable(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.set_user_disabled(args.name, False, author(args))
    return report(ctx, change, f"user {args.name} enabled", f"user {args.name} is already enabled")


def run_rm(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.remove_user(args.name, author(args))
    return report(ctx, change, f"user {args.name} removed, their tokens revoked", "")


def run_grant(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.grant_user_role(args.name, args.target, author(args))
    return report(ctx, change, f"granted {args.target} to {args.name}", f"{args.name} already has {args.target}")


def run_revoke_role(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.revoke_user_role(args.name, args.target, author(args))
    return report(ctx, change, f"revoked {args.target} from {args.name}", "")


def run_join(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.join_group(args.name, args.target, author(args))
    return report(ctx, change, f"{args.name} joined {args.target}", f"{args.name} is already in {args.target}")


def run_leave(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.leave_group(args.name, args.target, author(args))
    return report(ctx, change, f"{args.name} left {args.target}", "")
