"""``authzctl serve``: run the plugin (gunicorn) on a unix socket."""

from __future__ import annotations

import argparse
from typing import Any

from authz.cli.common import Context, UsageError
from authz.config import CPU_AFFINITY_MODES

DEFAULT_SOCKET = "/run/docker/plugins/authz.sock"


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="serve the authorization plugin on a unix socket")
    serve.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"default {DEFAULT_SOCKET}")
    serve.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes (default 2)")
    serve.add_argument(
        "--cpu-affinity",
        choices=CPU_AFFINITY_MODES,
        default="none",
        help="spread: pin each worker to its own CPU (faster under saturation on a host that runs "
        "little else; default none)",
    )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, ctx: Context) -> int:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    from authz.serve import run  # noqa: PLC0415 - gunicorn and the plugin app load only for serve

    _warn_if_schema_behind(ctx)
    run(args.socket, args.workers, ctx.config, cpu_affinity=args.cpu_affinity)
    return 0


def _warn_if_schema_behind(ctx: Context) -> None:
    """Say so at start when the store is at an older schema (an upgrade without `authzctl migrate`).

    The plugin still starts: refusing would stop every Docker API call on the host. A store that
    cannot be read now is the store-outage case the plugin already handles.
    """
    from authz.errors import StoreError  # noqa: PLC0415
    from authz.storage import SCHEMA_HEAD, schema_revision  # noqa: PLC0415 - not alembic: see SCHEMA_HEAD

    try:
        current, head = schema_revision(ctx.db), SCHEMA_HEAD
    except StoreError:
        return
    finally:
        ctx.db.dispose()  # no connection of the master's may be inherited by the workers it forks
    if current is not None and current != head:
        ctx.err.write(
            f"authzctl serve: the database is at schema {current}, this version needs {head}: run "
            "`authzctl migrate`. Until then what the newer schema holds fails closed (ownership records "
            "and lookups: roles with ownership: own are denied on existing objects)\n"
        )
        ctx.err.flush()
