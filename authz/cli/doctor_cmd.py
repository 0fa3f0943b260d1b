"""``authzctl doctor``: check this host's plugin installation; exit 1 if any check fails."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from authz.cli.common import Context, UsageError
from authz.doctor import DEFAULT_DAEMON_JSON, DoctorOptions, print_checks, run_checks


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="check the installation: socket, daemon.json, dockerd flags, database, keys, clock, disk, daemon reads",
        description="One line per check with OK, WARN or FAIL and what to do. Exit 1 on any FAIL.",
    )
    doctor.add_argument("--name", default="authz", help="plugin name (default authz)")
    doctor.add_argument("--socket", default="", metavar="PATH", help="plugin socket (default: found by name)")
    doctor.add_argument("--daemon-json", default=DEFAULT_DAEMON_JSON, metavar="PATH", help="default %(default)s")
    doctor.add_argument("--daemon-pid", type=int, metavar="PID", help="the dockerd to check (default /run/docker.pid)")
    doctor.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="look for the files under DIR")
    doctor.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, ctx: Context) -> int:
    if not args.root.is_absolute():
        raise UsageError(f"--root must be an absolute path, got {args.root}")
    options = DoctorOptions(
        name=args.name,
        socket=args.socket,
        root=args.root,
        daemon_json=args.daemon_json,
        daemon_pid=args.daemon_pid,
        docker_host=ctx.environ.get("AUTHZ_DOCKER_HOST", "").strip(),
    )
    return print_checks(run_checks(options, ctx.config), ctx.out)
