"""``authzctl policy apply|export|validate``: the whole policy as one YAML document."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import Context, PolicyFileError, add_author, author, command_group, output, read_input
from authz.errors import PolicyError
from authz.policy.compiled import compile_snapshot
from authz.policy.model import Policy, PolicySnapshot
from authz.policy.rules.containers_mounts import bind_prefix_warnings
from authz.policy.schema import parse_policy
from authz.storage.yamlio import export_yaml, load_mapping


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "policy", "apply, export or validate the policy document")
    apply = commands.add_parser(
        "apply",
        help="make the store hold exactly this policy (one transaction)",
        description="Validate FILE, show the difference to the stored policy and apply it atomically. "
        "Users, groups and roles missing from FILE are removed; removed users' tokens are revoked.",
    )
    apply.add_argument("file", metavar="FILE", help="policy-v1 YAML file, or - for standard input")
    apply.add_argument("--dry-run", action="store_true", help="show the difference, change nothing")
    add_author(apply)
    apply.set_defaults(handler=run_apply)

    export = commands.add_parser("export", help="print the stored policy as YAML (applies back unchanged)")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(handler=run_export)

    validate = commands.add_parser("validate", help="check a policy file without touching the store")
    validate.add_argument("file", metavar="FILE", help="policy-v1 YAML file, or - for standard input")
    validate.set_defaults(handler=run_validate)


def load_policy_file(path: str) -> Policy:
    """Read and validate a policy file; ``PolicyError`` names the file and the key path."""
    source = "<stdin>" if path == "-" else path
    doc = load_mapping(read_input(path), source)
    try:
        return parse_policy(doc)
    except PolicyError as exc:
        raise PolicyFileError(source, exc) from exc


def warn_about_host(policy: Policy, ctx: Context) -> None:
    """Say which of the file's roles this host's directories will keep from binding (stderr)."""
    if ctx.config.host_root is None:
        return  # a plugin that sees no host files refuses such binds anyway, and says why
    compiled = compile_snapshot(PolicySnapshot(revision=0, policy=policy))
    roles = {name: compiled.roles[name].containers for name in policy.roles if name in compiled.roles}
    for warning in bind_prefix_warnings(roles, ctx.config.host_root):
        ctx.err.write(f"authzctl: warning: {warning}\n")


def run_apply(args: argparse.Namespace, ctx: Context) -> int:
    policy = load_policy_file(args.file)
    warn_about_host(policy, ctx)
    result = ctx.policy.apply_policy(policy, author(args), dry_run=args.dry_run)
    ctx.out.write(result.diff)
    if not result.diff:
        ctx.out.write(f"no changes: the store already holds this policy (revision {result.revision})\n")
    elif args.dry_run:
        ctx.out.write(f"dry run: nothing changed (revision stays {result.revision})\n")
    else:
        ctx.out.write(f"applied: policy revision {result.revision}\n")
    return 0


def run_export(args: argparse.Namespace, ctx: Context) -> int:
    text = export_yaml(ctx.policy.load_policy())
    with output(args.output) as out:
        out.write(text)
    return 0


def run_validate(args: argparse.Namespace, ctx: Context) -> int:
    policy = load_policy_file(args.file)
    warn_about_host(policy, ctx)
    ctx.out.write(
        f"{args.file}: valid policy-v1 ({len(policy.roles)} roles, {len(policy.groups)} groups, "
        f"{len(policy.users)} users)\n"
    )
    return 0
