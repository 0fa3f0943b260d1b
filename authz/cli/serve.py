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

    run(args.socket, args.workers, ctx.config, cpu_affinity=args.cpu_affinity)
    return 0
