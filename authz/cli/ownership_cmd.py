"""``authzctl ownership list|prune``: who owns which object, and forgetting what the daemon removed.

``list`` shows the records roles with ``ownership: own`` are judged by.

``prune`` compares the records with what the daemon has (``authz.ownership_sweep``): it lists
the daemon's containers, networks and volumes and inspects each container for its exec IDs,
through the daemon's socket (``--docker-host``, default ``AUTHZ_DOCKER_HOST``) with the plugin's
internal token, and forgets the records of objects that are gone. Only records created before the
listing began are judged. The forgetting is an audit event (phase ``admin``, ``ownership:prune``).
A daemon that does not consult this plugin (a wrong socket) is refused before anything is read.

On a database shared by several hosts (fleet mode) one daemon sees only its own objects, so
``prune`` judges only the records this node (``AUTHZ_NODE``) made; records from before nodes were
recorded only with ``--single-host`` (the database serves this daemon alone), and those of a
former name of this host only with ``--former-node NAME``. On SQLite, local to one host, it judges
every record.

``authzctl install`` runs ``prune --if-configured`` hourly from a systemd timer: it skips quietly
until ``AUTHZ_DOCKER_HOST`` is set.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from authz.cli.common import Context, UsageError, add_author, author, command_group, iso, record_admin_event, table
from authz.errors import AuthzError, ConfigError
from authz.ownership_sweep import RECORDED_KINDS as KINDS
from authz.ownership_sweep import stale_records

_DETAIL_IDS = 1000  # the audit event lists at most this many forgotten IDs (and says how many)


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "ownership", "list object owners; forget objects the daemon removed")

    list_ = commands.add_parser("list", help="list who created which container, network, volume and exec")
    list_.add_argument("--kind", choices=KINDS)
    list_.add_argument("--owner", metavar="USER")
    list_.add_argument("--json", action="store_true", help="one JSON object per line")
    list_.set_defaults(handler=run_list)

    prune = commands.add_parser(
        "prune",
        help="forget the owners of objects the daemon no longer has (--rm containers, execs, …)",
        description="Compare the ownership records with the daemon's containers, networks, volumes and "
        "exec instances, and forget those whose object is gone. Needs the plugin's internal token "
        "(the plugin makes it when it runs with AUTHZ_DOCKER_HOST).",
    )
    prune.add_argument("--docker-host", metavar="URL", help="the daemon's socket (default: AUTHZ_DOCKER_HOST)")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be forgotten")
    prune.add_argument(
        "--if-configured",
        action="store_true",
        help="exit quietly (0) when AUTHZ_DOCKER_HOST is not set (what the systemd timer runs)",
    )
    prune.add_argument(
        "--single-host",
        action="store_true",
        help="the (non-SQLite) database serves this daemon only: also judge records made before nodes were recorded",
    )
    prune.add_argument(
        "--former-node",
        action="append",
        default=[],
        metavar="NAME",
        help="(non-SQLite) also judge the records of NAME, a former AUTHZ_NODE of this host (repeatable)",
    )
    add_author(prune)
    prune.set_defaults(handler=run_prune)


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    records = ctx.ownership.list(kind=args.kind, owner=args.owner)
    if args.json:
        for r in records:
            line = {"kind": r.kind, "id": r.object_id, "name": r.name, "owner": r.owner, "created": iso(r.created_at),
                    "node": r.node or None}  # fmt: skip
            ctx.out.write(json.dumps(line) + "\n")
        return 0
    rows = [(r.kind, r.object_id[:12] if r.kind != "volume" else r.object_id, r.name, r.owner, iso(r.created_at),
             r.node or None) for r in records]  # fmt: skip
    table(ctx.out, ("KIND", "ID", "NAME", "OWNER", "CREATED", "NODE"), rows)
    return 0


def _internal_token(ctx: Context) -> str:
    from authz.image_inspect import INTERNAL_TOKEN_FILE  # noqa: PLC0415 - prune only

    path = ctx.config.state_dir / INTERNAL_TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the plugin's internal token {path} ({exc.strerror}): the plugin creates it when it "
            "runs with AUTHZ_DOCKER_HOST, and only root may read it"
        ) from exc
    if not token:
        raise ConfigError(f"the plugin's internal token {path} is empty")
    return token


def run_prune(args: argparse.Namespace, ctx: Context) -> int:
    from authz.daemon_api import DaemonError, DaemonReader, read_daemon_objects, unix_socket_path  # noqa: PLC0415

    docker_host = args.docker_host or ctx.environ.get("AUTHZ_DOCKER_HOST", "").strip()
    if args.if_configured and not docker_host:
        ctx.out.write("ownership prune skipped: AUTHZ_DOCKER_HOST is not set (see `authzctl ownership prune --help`)\n")
        return 0
    if not docker_host:
        raise UsageError("no daemon to compare with: pass --docker-host unix:///var/run/docker.sock or set "
                         "AUTHZ_DOCKER_HOST")  # fmt: skip
    reader = DaemonReader(unix_socket_path(docker_host), _internal_token(ctx))
    # A shared (fleet) database: this daemon speaks only for the records this node made.
    mine = None if ctx.db.sqlite else {ctx.config.node, *args.former_node, *([""] if args.single_host else [])}
    records = ctx.ownership.list(nodes=mine)
    listed_at = datetime.now(UTC)  # before the first listing: what is newer may be missing from it
    try:
        objects = read_daemon_objects(reader, with_execs=any(r.kind == "exec" for r in records))
    except DaemonError as exc:
        raise AuthzError(f"nothing forgotten: the daemon's objects could not be read ({exc})") from exc
    finally:
        reader.close()
    stale = stale_records(records, objects, listed_at)
    counts = Counter(r.kind for r in stale)
    summary = ", ".join(f"{counts[k]} {k}(s)" for k in KINDS if counts[k]) or "nothing"
    if args.dry_run:
        rows = [(r.kind, r.object_id, r.name, r.owner, iso(r.created_at)) for r in stale]
        table(ctx.out, ("KIND", "ID", "NAME", "OWNER", "CREATED"), rows)
        ctx.out.write(f"would forget {summary}\n")
        return 0
    if not stale:
        ctx.out.write("every ownership record names an object the daemon has: nothing forgotten\n")
        return 0
    detail = {
        "docker_host": docker_host,
        "stale": len(stale),
        "by_kind": {k: counts[k] for k in KINDS if counts[k]},
        "objects": [f"{r.kind}:{r.object_id}:{r.owner}" for r in stale[:_DETAIL_IDS]],
        "listed_at": iso(listed_at),
    }
    # Recorded before anything is forgotten: an owner is never dropped without a trace (a failed
    # record raises StoreError and the table stays as it was).
    record_admin_event(ctx, author(args), "ownership:prune", "-", f"forgetting {summary} the daemon no longer has",
                       ["ownership", "prune", "--docker-host", docker_host], detail)  # fmt: skip
    removed = ctx.ownership.forget_stale(stale, listed_at)
    if removed != len(stale):  # another prune, or a delete, took the others meanwhile
        summary = f"{removed} of the {len(stale)} stale record(s) ({summary}; the others were gone already)"
    ctx.out.write(f"forgot {summary} that the daemon at {docker_host} no longer has\n")
    return 0
