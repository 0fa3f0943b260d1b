"""``authzctl admin serve|create-user|list-users``: the admin web UI and its accounts.

``serve`` runs the UI (``admin.create_app``) under gunicorn on its own TCP listener — never the
plugin's unix socket: whoever reaches the plugin socket speaks for the daemon. Bind to loopback
(the default) and put a TLS-terminating proxy in front for remote use (then set
``AUTHZ_ADMIN_TRUST_PROXY=1`` and ``AUTHZ_ADMIN_SECURE_COOKIES=true``), or give ``--certfile``
and ``--keyfile`` to serve HTTPS directly (cookies are then ``Secure``).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from typing import Any

from authz.cli.common import Context, UsageError, command_group, iso, table

DEFAULT_BIND = "127.0.0.1:8080"


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "admin", "run the admin web UI and manage its accounts")

    serve = commands.add_parser("serve", help="serve the admin web UI (gunicorn, own TCP listener)")
    serve.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help=f"default {DEFAULT_BIND}")
    serve.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes (default 2)")
    serve.add_argument("--certfile", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    serve.add_argument("--keyfile", metavar="PEM", help="private key of --certfile")
    serve.set_defaults(handler=run_serve)

    create = commands.add_parser("create-user", help="create an account of the admin web UI")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--role",
        required=True,
        choices=("ui-admin", "ui-auditor"),
        help="ui-admin may change everything; ui-auditor may read the audit log and policies",
    )
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.set_defaults(handler=run_create_user)

    commands.add_parser("list-users", help="list the accounts of the admin web UI").set_defaults(handler=run_list)


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[v6]:PORT`` → (host, port); unix sockets are refused (see module doc)."""
    if text.startswith(("unix:", "/", "fd:")):
        raise UsageError("--bind takes HOST:PORT; the admin UI never listens on a unix socket (that is the plugin's)")
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--bind {text!r}: expected HOST:PORT such as 127.0.0.1:8080")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_serve(args: argparse.Namespace, ctx: Context) -> int:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError("--certfile and --keyfile go together")
    host, port = parse_bind(args.bind)
    if not _is_loopback(host) and not args.certfile:
        ctx.err.write(f"authzctl: warning: serving the admin UI over plain HTTP on {host}; "
                      "use a TLS proxy or --certfile/--keyfile\n")  # fmt: skip
    if args.certfile:
        os.environ["AUTHZ_ADMIN_SECURE_COOKIES"] = "true"  # HTTPS only: the cookie must never leave it
    from admin.serve import run  # noqa: PLC0415 - gunicorn and Flask load only for serve

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    run(bind, args.workers, certfile=args.certfile, keyfile=args.keyfile)
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ")
    return first


def _store(ctx: Context) -> Any:
    from admin.accounts import AccountStore  # noqa: PLC0415 - passlib loads only for account commands

    return AccountStore(ctx.db)


def run_create_user(args: argparse.Namespace, ctx: Context) -> int:
    from admin.accounts import AccountError  # noqa: PLC0415 - see _store

    password = _read_password(args.password_stdin)
    try:
        account = _store(ctx).create(args.name, args.role, password)
    except AccountError as exc:
        raise UsageError(str(exc)) from exc
    ctx.out.write(f"admin UI account {account.name} created ({account.role})\n")
    return 0


def run_list(_args: argparse.Namespace, ctx: Context) -> int:
    rows = [(a.name, a.role, "disabled" if a.disabled else "enabled", iso(a.created_at)) for a in _store(ctx).list()]
    table(ctx.out, ("NAME", "ROLE", "STATE", "CREATED"), rows)
    return 0
