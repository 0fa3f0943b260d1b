"""``authzctl install`` and ``authzctl uninstall``: the legacy plugin under systemd (``authz.install``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from authz.cli.common import Context, UsageError
from authz.config import CPU_AFFINITY_MODES
from authz.doctor import DEFAULT_DAEMON_JSON, SOCKET_DIR
from authz.install import Installer, InstallOptions


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="authz", help="plugin name in daemon.json and of the units (default authz)")
    parser.add_argument(
        "--socket", default="", metavar="PATH", help=f"plugin socket (default {SOCKET_DIR}/NAME.sock; "
        "elsewhere, a NAME.spec in /etc/docker/plugins points to it)"
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print every change (diffs, commands, signal); "
                        "change nothing")  # fmt: skip
    parser.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR",
        help="write every file under DIR instead of /; run no systemctl; signal no daemon but --daemon-pid",
    )  # fmt: skip
    parser.add_argument("--daemon-json", default=DEFAULT_DAEMON_JSON, metavar="PATH", help="default %(default)s")
    parser.add_argument(
        "--daemon-pid", type=int, metavar="PID", help="the dockerd to check and reload (default: /run/docker.pid)"
    )


def register(subparsers: Any) -> None:
    install = subparsers.add_parser(
        "install",
        help="install the plugin as systemd units and enable it in dockerd (root)",
        description="Write NAME.socket and NAME.service, start the socket, check that the plugin answers "
        "/Plugin.Activate, add NAME to authorization-plugins in daemon.json, then reload dockerd (SIGHUP). "
        "Safe to run again. See docs/install.md.",
    )
    _common(install)
    install.add_argument("--authzctl", default="", metavar="PATH", help="program for ExecStart (default: this one)")
    install.add_argument("--workers", type=int, default=2, metavar="N", help="gunicorn workers (default 2)")
    install.add_argument("--cpu-affinity", choices=CPU_AFFINITY_MODES, default="none",
                         help="passed to `authzctl serve` (see its help; default none)")  # fmt: skip
    install.add_argument(
        "--inet", action="store_true", help="allow TCP (AF_INET/AF_INET6) for a PostgreSQL reached over the network"
    )
    install.set_defaults(handler=run_install)

    uninstall = subparsers.add_parser(
        "uninstall",
        help="take the plugin out of dockerd, then stop and remove its units (root)",
        description="Remove NAME from daemon.json, reload dockerd, and only then stop and remove the units. "
        "The environment file and the state directory (policy, audit) are kept.",
    )
    _common(uninstall)
    uninstall.set_defaults(handler=run_uninstall)


def _options(args: argparse.Namespace, **extra: Any) -> InstallOptions:
    if not args.root.is_absolute():
        raise UsageError(f"--root must be an absolute path, got {args.root}")
    return InstallOptions(
        name=args.name,
        socket=args.socket,
        root=args.root,
        daemon_json=args.daemon_json,
        daemon_pid=args.daemon_pid,
        dry_run=args.dry_run,
        **extra,
    )


def run_install(args: argparse.Namespace, ctx: Context) -> int:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    options = _options(args, program=args.authzctl, workers=args.workers, cpu_affinity=args.cpu_affinity,
                       inet=args.inet)  # fmt: skip
    return Installer(options, ctx.out).install()


def run_uninstall(args: argparse.Namespace, ctx: Context) -> int:
    return Installer(_options(args), ctx.out).uninstall()
