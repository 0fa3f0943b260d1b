"""``authzctl role ...``: built-in, overriding and custom roles."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import Context, PolicyFileError, add_author, author, command_group, read_input, table
from authz.cli.users import report
from authz.errors import PolicyError
from authz.policy.schema import dump_role, parse_role
from authz.storage.yamlio import dump_yaml, load_mapping


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "role", "manage roles")

    commands.add_parser("list", help="list roles").set_defaults(handler=run_list)

    show = commands.add_parser("show", help="print one role as YAML (the format `role set` reads)")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(handler=run_show)

    set_ = commands.add_parser(
        "set",
        help="create or replace a role from a YAML file",
        description="FILE holds the body of one role (description, extends, allow, deny, containers …), "
        "as `role show` prints it. Using a built-in name overrides the built-in role.",
    )
    set_.add_argument("name", metavar="NAME")
    set_.add_argument("file", metavar="FILE", help="YAML file, or - for standard input")
    add_author(set_)
    set_.set_defaults(handler=run_set)

    rm = commands.add_parser("rm", help="remove a role (refused while a user or group has it)")
    rm.add_argument("name", metavar="NAME")
    add_author(rm)
    rm.set_defaults(handler=run_rm)


def run_list(_args: argparse.Namespace, ctx: Context) -> int:
    rows = [(i.role.name, i.source, len(i.users), len(i.groups), i.role.description) for i in ctx.policy.list_roles()]
    table(ctx.out, ("NAME", "SOURCE", "USERS", "GROUPS", "DESCRIPTION"), rows)
    return 0


def run_show(args: argparse.Namespace, ctx: Context) -> int:
    info = ctx.policy.get_role(args.name)
    ctx.out.write(f"# role {info.role.name} ({info.source})\n")
    ctx.out.write(dump_yaml(dump_role(info.role)))
    return 0


def run_set(args: argparse.Namespace, ctx: Context) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    doc = load_mapping(read_input(args.file), source)
    try:
        role = parse_role(args.name, doc)
    except PolicyError as exc:
        raise PolicyFileError(source, exc) from exc
    change = ctx.policy.set_role(role, author(args))
    return report(ctx, change, f"role {args.name} stored", f"role {args.name} is already defined like that")


def run_rm(args: argparse.Namespace, ctx: Context) -> int:
    builtin = args.name in ctx.policy.builtin_roles
    change = ctx.policy.remove_role(args.name, author(args))
    done = (
        f"override of {args.name} removed: the built-in role applies again" if builtin else f"role {args.name} removed"
    )
    return report(ctx, change, done, "")
