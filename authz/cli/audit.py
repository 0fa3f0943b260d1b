"""``authzctl audit tail|export``: read the decision log."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from authz.cli.common import Context, UsageError, command_group, iso, output, parse_time
from authz.storage.audit_store import EXPORT_FORMATS, AuditFilter, AuditRecord


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "audit", "read the audit log")

    tail = commands.add_parser("tail", help="print the newest decisions")
    tail.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new decisions until Ctrl-C")
    tail.set_defaults(handler=run_tail)

    export = commands.add_parser("export", help="write decisions as JSON lines or CSV")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--since", metavar="ISO", help="from this time on (ISO 8601; no zone = UTC)")
    export.add_argument("--until", metavar="ISO", help="before this time (exclusive)")
    export.add_argument("--user", metavar="USER")
    export.add_argument("--action", metavar="ACTION", help='an action, or a prefix pattern like "container:*"')
    export.add_argument("--decision", choices=("allow", "deny"))
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    export.set_defaults(handler=run_export)


def format_record(record: AuditRecord) -> str:
    event = record.event
    verdict = "ALLOW" if event.allow else "DENY "
    who = event.user or f"({event.source})"
    line = f"{iso(event.time)} {record.id:>7} {verdict} {who} {event.action} {event.method} {event.uri}"
    detail = event.message or event.reason
    return f"{line} — {detail}" if detail else line


def run_tail(args: argparse.Namespace, ctx: Context) -> int:
    if args.lines < 0:
        raise UsageError("-n must be 0 or more")
    try:
        for record in ctx.audit.tail(limit=args.lines, follow=args.follow):
            ctx.out.write(format_record(record) + "\n")
            if args.follow:
                ctx.out.flush()
    except KeyboardInterrupt:  # the normal way to end --follow
        return 0
    return 0


def run_export(args: argparse.Namespace, ctx: Context) -> int:
    flt = AuditFilter(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        user=args.user,
        action=args.action,
        allow=None if args.decision is None else args.decision == "allow",
    )
    with output(args.output, mode=0o600) as out:  # who did what: not for every local user to read
        count = ctx.audit.export(out, args.format, flt)
    if args.output:
        print(f"exported {count} record(s) to {args.output}", file=sys.stderr)
    return 0
