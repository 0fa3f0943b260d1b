"""``authzctl audit verify|prune``: check the tamper-evident chains, delete old records safely.

``verify`` walks every chain (or ``--chain C``) by seq, recomputes each hash, checks each link,
each checkpoint signature and that the database holds every checkpointed (seq, hash). It prints
one line per chain and exits 1 when any chain is broken, naming the first broken record.

``prune --older-than 30d`` deletes, per chain, the oldest records up to the last one older than
the cutoff, after verifying the chain (a broken chain is not pruned: that would erase the
evidence), and keeps an anchor (seq, hash of the last deleted record) in the database and as a
signed line in the chain's checkpoint log, so that ``verify`` starts there and still passes.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from authz.audit_chain import ChainReport, Checkpoint, verify_chain
from authz.audit_journal import journal_tail_seq
from authz.audit_keys import AuditKey, CheckpointLog, load_public_keys, signature_check
from authz.cli.common import Context, command_group, parse_duration

# A checkpoint beyond the stored tail is "in flight" only this long: the shipper ships in seconds.
PENDING_GRACE = 60.0


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "audit", "read the audit log")

    verify = commands.add_parser("verify", help="check the hash chains and signed checkpoints of the audit log")
    verify.add_argument("--chain", metavar="C", help="only this chain")
    verify.add_argument("--json", action="store_true", help="one JSON document instead of text")
    verify.add_argument(
        "--strict",
        action="store_true",
        help="also fail on chains without a local checkpoint, unsigned prune anchors and unchained records",
    )
    verify.set_defaults(handler=run_verify)

    prune = commands.add_parser("prune", help="delete records older than a cutoff, keeping the chains verifiable")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    prune.add_argument("--force", action="store_true", help="prune chains even when they fail verification")
    prune.set_defaults(handler=run_prune)


def _verify(ctx: Context, chain: str, strict: bool = False) -> ChainReport:
    config = ctx.config
    logs = CheckpointLog(config.checkpoints_dir)
    check = signature_check(load_public_keys(config.state_dir / "audit-keys"))
    report = verify_chain(
        chain,
        ctx.audit.iter_chain(chain),
        logs.read(chain),
        check,
        ctx.audit.anchor(chain),
        require_signed_anchor=strict,
        journaled_through=journal_tail_seq(config.state_dir / "audit-journal", chain),
        pending_since=time.time() - PENDING_GRACE,
    )
    if strict and report.ok and report.checkpoints == 0:
        report.notes.append("strict: no signed checkpoint on this host")
    return report


def run_verify(args: argparse.Namespace, ctx: Context) -> int:
    logs = CheckpointLog(ctx.config.checkpoints_dir)
    chains = [args.chain] if args.chain else sorted(set(ctx.audit.chains()) | set(logs.chains()))
    reports = [_verify(ctx, chain, args.strict) for chain in chains]
    unchained = 0 if args.chain else ctx.audit.unchained_count()
    failed = any(not r.ok for r in reports)
    if args.strict:
        failed = failed or unchained > 0 or any(r.checkpoints == 0 for r in reports)
    if args.json:
        document = {"ok": not failed, "chains": [r.to_dict() for r in reports], "unchained_records": unchained}
        ctx.out.write(json.dumps(document, indent=2) + "\n")
        return 1 if failed else 0
    for report in reports:
        ctx.out.write(report.summary() + "\n")
    if not reports:
        ctx.out.write("no audit chains in the database\n")
    if unchained:
        ctx.out.write(f"{unchained:,} records outside any chain (written before 0002 or inserted by hand): "
                      "not tamper-evident\n")  # fmt: skip
    broken = [r for r in reports if not r.ok]
    if broken:
        ctx.err.write(f"authzctl: audit log verification FAILED for {len(broken)} of {len(reports)} chain(s)\n")
    return 1 if failed else 0


def run_prune(args: argparse.Namespace, ctx: Context) -> int:
    cutoff = time.time() - parse_duration(args.older_than)
    logs = CheckpointLog(ctx.config.checkpoints_dir)
    key: AuditKey | None = None
    refused = 0
    for chain in ctx.audit.chains():
        point = ctx.audit.prune_point(chain, cutoff)
        if point is None:
            continue
        seq, record_hash, record_time = point
        report = _verify(ctx, chain)
        if not report.ok and not args.force:
            # Fail closed: pruning a broken chain would replace the evidence by a clean anchor.
            ctx.err.write(f"authzctl: not pruning chain {chain}: {report.problem.describe() if report.problem else ''}"
                          " (use --force to prune anyway)\n")  # fmt: skip
            refused += 1
            continue
        if args.dry_run:
            ctx.out.write(f"chain {chain}: would delete records up to seq {seq:,}\n")
            continue
        key = key or AuditKey.load_or_create(ctx.config.state_dir / "audit-keys")
        # Signed before the delete: a crash in between leaves a harmless extra line, never an
        # anchor nobody vouches for.
        logs.append(key.sign(Checkpoint("anchor", chain, seq, record_hash, time.time())))
        deleted = ctx.audit.prune_chain(chain, seq, record_hash, record_time)
        ctx.out.write(f"chain {chain}: deleted {deleted:,} records up to seq {seq:,} (anchor kept)\n")
    return 1 if refused else 0
