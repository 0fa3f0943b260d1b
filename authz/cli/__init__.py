"""``authzctl``: administer the authorization plugin (console script ``authz.cli:main``).

Each command family is a module with ``register(subparsers)``; it adds its parsers and sets
``handler(args, ctx) -> exit code`` on them. Adding a family is one line in ``COMMAND_MODULES``.

Exit codes: 0 ok, 2 usage or validation error (bad arguments, invalid policy), 1 any other
failure. Expected errors (``AuthzError``) print one line ``authzctl: <message>`` on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from authz import __version__
from authz.cli.common import Context, UsageError
from authz.errors import AuthzError, PolicyError

# Order = order in `authzctl --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "authz.cli.setup",  # init, migrate
    "authz.cli.policy",
    "authz.cli.users",
    "authz.cli.groups",
    "authz.cli.roles",
    "authz.cli.tokens",
    "authz.cli.audit",
    "authz.cli.audit_verify",  # audit verify, audit prune
    "authz.cli.serve",
    "authz.cli.admin_cmd",  # admin serve, create-user, list-users
    "authz.cli.gateway_cmd",  # gateway setup, serve, issue-client-cert
    "authz.cli.breakglass_cmd",  # breakglass grant, list, end
    "authz.cli.ownership_cmd",  # ownership list, prune
    "authz.cli.install_cmd",  # install, uninstall (systemd units + daemon.json)
    "authz.cli.doctor_cmd",  # doctor
)

__all__ = ["COMMAND_MODULES", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authzctl",
        description="Administer the docker-authz authorization plugin. "
        "Settings come from AUTHZ_DATABASE_URL, AUTHZ_STATE_DIR and the other AUTHZ_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"authzctl {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _fail(message: str) -> None:
    print(f"authzctl: {' '.join(message.split())}", file=sys.stderr)


# `authzctl breakglass --ttl 15m --reason R USER`, as issue 4 names it, means `breakglass grant`.
_DEFAULT_SUBCOMMANDS = {"breakglass": ("grant", frozenset({"grant", "list", "end", "-h", "--help"}))}


def expand_shorthands(argv: Sequence[str]) -> list[str]:
    """Insert a command family's default subcommand when none is given."""
    args = list(argv)
    for index, token in enumerate(args):
        if not token.startswith("-"):
            default = _DEFAULT_SUBCOMMANDS.get(token)
            following = args[index + 1] if index + 1 < len(args) else None
            if default is not None and following is not None and following not in default[1]:
                args.insert(index + 1, default[0])
            break
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(expand_shorthands(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    ctx = Context()
    try:
        return int(handler(args, ctx))
    except (PolicyError, UsageError) as exc:
        _fail(str(exc))
        return 2
    except AuthzError as exc:
        _fail(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `authzctl audit export | head`: the reader left, not an error of ours
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        ctx.close()
