"""``authzctl gateway setup | serve | issue-client-cert``: the peer-credential gateway.

The gateway package (and with it ``cryptography``) is imported inside the handlers, so other
``authzctl`` commands do not pay for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import logging
import os
import pwd
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from authz.cli.common import Context, UsageError

__all__ = ["register"]

DEFAULT_DIR = "/etc/authz/gateway"
DEFAULT_DAEMON = "tcp://127.0.0.1:2376"
DEFAULT_LISTEN = "/run/authz-gateway.sock"


def register(subparsers: Any) -> None:
    gateway = subparsers.add_parser(
        "gateway",
        help="serve a unix socket that reaches dockerd's TLS port as the calling OS user",
        description="Identify callers by SO_PEERCRED and forward them to dockerd --tlsverify with a "
        "client certificate whose CN is their user name. See docs/gateway.md.",
    )
    commands = gateway.add_subparsers(title="gateway commands", metavar="COMMAND", required=True)

    setup = commands.add_parser("setup", help="create the CA and the daemon's server certificate")
    setup.add_argument("--dir", default=DEFAULT_DIR, type=Path, help=f"gateway directory (default {DEFAULT_DIR})")
    setup.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="HOST",
        help="extra IP or DNS name for the server certificate (127.0.0.1 and localhost are always in)",
    )
    setup.add_argument("--renew-server", action="store_true", help="issue a new server certificate")
    setup.add_argument("--listen", default=DEFAULT_DAEMON, metavar="URL", help="dockerd TLS address to print")
    setup.set_defaults(handler=run_setup)

    serve = commands.add_parser("serve", help="accept callers on a unix socket and forward them")
    serve.add_argument("--listen", required=True, type=Path, metavar="PATH", help=f"e.g. {DEFAULT_LISTEN}")
    serve.add_argument("--daemon", default=DEFAULT_DAEMON, metavar="URL", help=f"default {DEFAULT_DAEMON}")
    serve.add_argument("--dir", default=DEFAULT_DIR, type=Path, help=f"gateway directory (default {DEFAULT_DIR})")
    serve.add_argument("--map", type=Path, metavar="FILE", help="YAML/JSON {uid or user name: authz user}")
    serve.add_argument("--map-only", action="store_true", help="no OS user-name fallback: unmapped = anonymous")
    serve.add_argument("--refuse-anonymous", action="store_true", help="close anonymous callers' connections")
    serve.add_argument("--socket-mode", default="0666", metavar="OCTAL", help="default 0666")
    serve.add_argument("--socket-group", metavar="GROUP", help="group owning the socket (name or gid)")
    serve.add_argument("--cert-hours", type=float, default=24.0, help="client certificate lifetime (default 24)")
    serve.add_argument("--max-connections", type=int, default=512, metavar="N", help="default 512")
    serve.set_defaults(handler=run_serve)

    issue = commands.add_parser(
        "issue-client-cert", help="write ca.pem, cert.pem, key.pem for a service (DOCKER_CERT_PATH)"
    )
    issue.add_argument("name", metavar="NAME", help="certificate CN (the policy user's tls_cn)")
    issue.add_argument("--dir", default=DEFAULT_DIR, type=Path, help=f"gateway directory (default {DEFAULT_DIR})")
    issue.add_argument("--out", required=True, type=Path, metavar="OUTDIR", help="created 0700 if missing")
    issue.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    issue.add_argument("--owner", metavar="USER[:GROUP]", help="hand OUTDIR and the files to this account")
    issue.set_defaults(handler=run_issue)


def run_setup(args: argparse.Namespace, ctx: Context) -> int:
    from authz.gateway.setup import dockerd_flags, setup_gateway  # noqa: PLC0415 - see module docstring

    directory = args.dir.resolve()
    result = setup_gateway(directory, args.hostname, renew_server=args.renew_server)
    print(f"gateway directory: {directory} (0700)")
    print(f"CA: {'created' if result.created_ca else 'kept'} {directory / 'ca.pem'}")
    state = "issued" if result.issued_server else "kept"
    until = f"{result.server_not_after:%Y-%m-%d}"
    print(f"server certificate: {state} for {', '.join(result.hosts)}, valid until {until}")
    flags = " ".join(dockerd_flags(directory, args.listen))
    print(
        f"\nStart dockerd with these flags (or the same keys in daemon.json):\n"
        f"  {flags}\n"
        f'and keep its unix socket root-only: -H unix:///var/run/docker.sock --group ""\n'
        f"(socket root:root 0660; with systemd socket activation set SocketGroup=root in docker.socket).\n"
        f"Members of the docker group reach that socket without an identity: empty the group.\n"
        f"Then run: authzctl gateway serve --listen {DEFAULT_LISTEN} --daemon {args.listen} --dir {directory}"
    )
    return 0


def run_serve(args: argparse.Namespace, ctx: Context) -> int:
    from authz.gateway.ca import CertificateAuthority, check_private_dir  # noqa: PLC0415
    from authz.gateway.proxy import (  # noqa: PLC0415
        ClientContexts,
        DaemonAddress,
        Gateway,
        bind_unix_socket,
    )
    from authz.gateway.users import UserMap, UserMapFile  # noqa: PLC0415

    _configure_logging()
    mode = _octal_mode(args.socket_mode)
    gid = _group_id(args.socket_group) if args.socket_group else None
    if args.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    daemon = DaemonAddress.parse(args.daemon)
    directory = args.dir.resolve()
    check_private_dir(directory)
    contexts = ClientContexts(CertificateAuthority.load(directory), dt.timedelta(hours=args.cert_hours))
    if args.map is not None:
        map_file = UserMapFile(args.map.resolve())
        user_map = map_file.current
    else:
        empty = UserMap()

        def user_map() -> UserMap:
            return empty

    listener = bind_unix_socket(args.listen.resolve(), mode, gid)
    gateway = Gateway(
        listener,
        daemon,
        contexts,
        user_map,
        os_fallback=not args.map_only,
        refuse_anonymous=args.refuse_anonymous,
        max_connections=args.max_connections,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        gateway.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("authz.gateway").info(
        "gateway: listening on %s (mode %04o), forwarding to %s", args.listen, mode, daemon
    )
    gateway.serve_forever()
    return 0


def run_issue(args: argparse.Namespace, ctx: Context) -> int:
    from authz.gateway.setup import write_client_bundle  # noqa: PLC0415

    owner = _owner(args.owner) if args.owner else None
    paths = write_client_bundle(args.dir.resolve(), args.name, args.out.resolve(), days=args.days, owner=owner)
    out = args.out.resolve()
    print(f"wrote {', '.join(str(p) for p in paths)} (CN={args.name}, {args.days} days)")
    print(f"use: DOCKER_CERT_PATH={out} DOCKER_TLS_VERIFY=1 DOCKER_HOST={DEFAULT_DAEMON} docker version")
    print(f"policy: users: {{SERVICE: {{roles: [...], tls_cn: {args.name}}}}}")
    return 0


def _configure_logging() -> None:
    level = os.environ.get("AUTHZ_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"--socket-mode must be octal like 0660, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise UsageError(f"--socket-mode {text} is not a permission mode")
    return mode


def _group_id(text: str) -> int:
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        if text.isdigit():
            return int(text)
        raise UsageError(f"group {text!r}: no such group") from None


def _owner(text: str) -> tuple[int, int]:
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise UsageError(f"--owner {text!r}: no such user") from None
    return entry.pw_uid, _group_id(group) if group else entry.pw_gid
