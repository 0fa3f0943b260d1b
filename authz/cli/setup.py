"""``authzctl init`` and ``authzctl migrate``: prepare a host, upgrade the schema."""

from __future__ import annotations

import argparse
import stat
from typing import Any

from sqlalchemy.engine import make_url

from authz.cli.common import Context
from authz.errors import ConfigError
from authz.storage import current_revision, migrate


def register(subparsers: Any) -> None:
    init = subparsers.add_parser(
        "init",
        help="create the state directory, database schema, token keys and built-in roles",
        description="Prepare this host; safe to run again (it only adds what is missing).",
    )
    init.set_defaults(handler=run_init)
    mig = subparsers.add_parser("migrate", help="upgrade the database schema to this version")
    mig.set_defaults(handler=run_migrate)


def _database(ctx: Context) -> str:
    return make_url(ctx.config.database_url).render_as_string(hide_password=True)


def run_init(_args: argparse.Namespace, ctx: Context) -> int:
    from authz.identity.token import KeyStore  # noqa: PLC0415 - only init and token need the key files

    state = ctx.config.state_dir
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(state.stat().st_mode) != 0o700:
            state.chmod(0o700)  # keys, spool and (SQLite) the database: root only
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state}: {exc.strerror}") from exc
    ctx.out.write(f"state directory  {state} (0700)\n")
    before = current_revision(ctx.db)
    head = migrate(ctx.db)
    change = "up to date" if before == head else f"migrated from {before or 'empty'}"
    ctx.out.write(f"database         {_database(ctx)} at schema {head} ({change})\n")
    keys = KeyStore(ctx.config.keys_dir).load_or_create()
    ctx.out.write(f"token keys       {ctx.config.keys_dir} (signing key {keys.kid})\n")
    written = ctx.policy.store_builtin_roles()
    names = ", ".join(sorted(ctx.policy.builtin_roles))
    ctx.out.write(f"built-in roles   {names} ({written} stored or refreshed)\n")
    ctx.out.write(f"policy revision  {ctx.policy.revision()}\n")
    return 0


def run_migrate(_args: argparse.Namespace, ctx: Context) -> int:
    before = current_revision(ctx.db)
    head = migrate(ctx.db)
    if before == head:
        ctx.out.write(f"{_database(ctx)}: already at schema {head}\n")
    else:
        ctx.out.write(f"{_database(ctx)}: migrated from {before or 'empty'} to {head}\n")
    return 0
