"""``authzctl group ...``: groups and the roles they grant to their members."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import Context, add_author, author, command_group, csv_list, table
from authz.cli.users import report


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "group", "manage groups")

    add = commands.add_parser("add", help="add a group")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", action="append", default=[], metavar="ROLE", help="grant ROLE (repeatable)")
    add_author(add)
    add.set_defaults(handler=run_add)

    commands.add_parser("list", help="list groups").set_defaults(handler=run_list)

    rm = commands.add_parser("rm", help="remove a group (members lose the roles it granted)")
    rm.add_argument("name", metavar="NAME")
    add_author(rm)
    rm.set_defaults(handler=run_rm)

    for verb, handler, text in (
        ("grant", run_grant, "grant a role to every member"),
        ("revoke-role", run_revoke_role, "take a role away from the group"),
    ):
        parser = commands.add_parser(verb, help=text)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("role", metavar="ROLE")
        add_author(parser)
        parser.set_defaults(handler=handler)


def run_add(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.add_group(args.name, author(args), roles=args.role)
    return report(ctx, change, f"group {args.name} added", "")


def run_list(_args: argparse.Namespace, ctx: Context) -> int:
    rows = [(g.name, csv_list(g.roles), csv_list(g.members)) for g in ctx.policy.list_groups()]
    table(ctx.out, ("NAME", "ROLES", "MEMBERS"), rows)
    return 0


def run_rm(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.remove_group(args.name, author(args))
    return report(ctx, change, f"group {args.name} removed", "")


def run_grant(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.grant_group_role(args.name, args.role, author(args))
    return report(ctx, change, f"granted {args.role} to group {args.name}", f"{args.name} already has {args.role}")


def run_revoke_role(args: argparse.Namespace, ctx: Context) -> int:
    change = ctx.policy.revoke_group_role(args.name, args.role, author(args))
    return report(ctx, change, f"revoked {args.role} from group {args.name}", "")
