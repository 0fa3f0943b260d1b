"""The composition root: build concrete objects from a ``Config`` (an edge).

Only this module, the CLI and the app factories know which concrete classes implement the core's
ports.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from authz.audit import audit_level
from authz.audit_journal import JournalAuditSink
from authz.audit_keys import CheckpointLog
from authz.audit_ship_process import STATUS_FILE
from authz.audit_shipper import JournalShipper, ShipperStatus
from authz.config import Config
from authz.decide import Authorizer
from authz.identity.token import JwtVerifier, KeyStore
from authz.image_inspect import INTERNAL_TOKEN_FILE, DaemonImageInspector, load_or_create_internal_token
from authz.metrics import MeteredPolicySource, plugin_metrics
from authz.ports import AuditSink
from authz.server import create_app
from authz.storage.db import Database, is_sqlite, leave_checkpoints_to_others
from authz.storage.repositories import AuditStore, OwnershipRepository
from authz.storage.revision import read_revision
from authz.storage.source import DeadlineOwnership, StorePolicySource, bounded_database, recycle_on_corruption


def build_image_inspector(
    config: Config, environ: Mapping[str, str] = os.environ
) -> tuple[DaemonImageInspector | None, str | None]:
    """The daemon image lookup and the internal token it sends, from ``AUTHZ_DOCKER_HOST``.

    Unset: no lookup, no token. Creates without a ``User`` are then denied for roles that forbid
    root (the image's USER cannot be read: fail closed), and the internal header is never valid.
    The lookup runs in a worker while the daemon calls back into the plugin for it: the worker
    hands its loop to another thread first (``authz.blocking``), and the 2 s timeout bounds it.
    """
    docker_host = environ.get("AUTHZ_DOCKER_HOST", "").strip()
    if not docker_host:
        return None, None
    token = load_or_create_internal_token(config.state_dir / INTERNAL_TOKEN_FILE)
    return DaemonImageInspector(docker_host, token), token


def build_audit_journal(config: Config, db: Database) -> tuple[JournalAuditSink, JournalShipper]:
    """This process's audit journal and the started shipper that copies it into the store.

    Journal in ``<state>/audit-journal``, checkpoints in ``config.checkpoints_dir``, their key in
    ``<state>/audit-keys`` (created on first use). Call after the fork: the threads are per process.
    """
    sink = build_journal_sink(config)
    shipper = JournalShipper(sink.directory, AuditStore(db), sink)
    shipper.start()
    atexit.register(shipper.stop)  # registered after the sink's close: runs before it
    return sink, shipper


def build_journal_sink(config: Config) -> JournalAuditSink:
    """This process's audit journal alone (``authzctl serve``: a process beside the workers ships it)."""
    journal_dir = config.state_dir / "audit-journal"
    sink = JournalAuditSink(
        journal_dir,
        config.node,
        checkpoints=CheckpointLog(config.checkpoints_dir),
        key_dir=config.state_dir / "audit-keys",
        sync=config.audit_fsync,
    )
    atexit.register(sink.close)
    return sink


# The shipper process publishes at least every 5 s; silent for longer, it is reported in /healthz.
_SHIPPER_SILENT_AFTER = 15.0

# Statement timeout of the request path's own engine: generous, because a loaded host can be slow;
# the decision deadline itself is enforced by the callers (a thread, a wait with a timeout).
_REQUEST_PATH_STATEMENT_TIMEOUT = 1.0


def build_policy_source(config: Config) -> StorePolicySource:
    """The started policy poller of this process (call after the fork: its thread is per process).

    It reads through its own engine with short timeouts (``bounded_database``), so a locked or
    hung store delays the poll, never a decision (``AUTHZ_ON_STORE_ERROR`` says what then); a
    request whose token names a newer revision waits for the poll it wakes at most the decision
    deadline.
    """
    poll_db = bounded_database(config.database_url, _REQUEST_PATH_STATEMENT_TIMEOUT)
    source = StorePolicySource(poll_db, poll=config.revision_poll, on_error=config.on_store_error,
                               deadline=config.decision_deadline)  # fmt: skip
    atexit.register(source.stop)
    return source.start()


def build_ownership(config: Config, db: Database) -> DeadlineOwnership:
    """Ownership lookups and changes bounded by ``AUTHZ_DECISION_DEADLINE_MS`` (see ``DeadlineOwnership``).

    SQLite: lookups and, while the store is healthy, changes run in the request's thread, their
    lock wait bounded by the deadline itself.
    """
    local = is_sqlite(config.database_url)
    timeout = config.decision_deadline if local else _REQUEST_PATH_STATEMENT_TIMEOUT
    bounded = bounded_database(config.database_url, timeout)
    if not db.checkpoints:
        leave_checkpoints_to_others(bounded)  # its connections make the inline changes too
    # Names and objects are per daemon: records are this node's, references resolve among them.
    lookups = OwnershipRepository(bounded, hold_connections=True, node=config.node)
    ownership = DeadlineOwnership(lookups, OwnershipRepository(db, node=config.node), config.decision_deadline,
                                  inline_lookups=local, inline_writes=local)  # fmt: skip
    atexit.register(ownership.close)
    return ownership


def build_authorizer(
    config: Config,
    db: Database | None = None,
    environ: Mapping[str, str] = os.environ,
    audit: AuditSink | None = None,
    source: StorePolicySource | None = None,
) -> Authorizer:
    """``audit``: the sink to write decisions to (default: a new journal, ``build_audit_journal``);
    ``source``: the policy poller (default: a new one, ``build_policy_source``)."""
    db = db or recycle_on_corruption(Database(config.database_url))
    level = audit_level(environ)  # a bad AUTHZ_AUDIT_LEVEL stops the worker at start, not per request
    if audit is None:
        audit, _ = build_audit_journal(config, db)
    keys = KeyStore(config.keys_dir)
    keys.load_or_create()
    inspector, internal_token = build_image_inspector(config, environ)
    metrics = plugin_metrics(config.state_dir)  # None: metrics unavailable, the plugin still decides
    policy = source or build_policy_source(config)
    authorizer = Authorizer(
        policy=MeteredPolicySource(policy, metrics) if metrics is not None else policy,
        audit=audit,
        verifier=JwtVerifier(keys, audience=config.token_audience),
        ownership=build_ownership(config, db),
        node=config.node,
        image_user=inspector.image_user if inspector is not None else None,
        volume_exists=inspector.volume_exists if inspector is not None else None,
        internal_token=internal_token,
        host_root=config.host_root,
        observer=metrics.observe if metrics is not None else None,
        audit_level=level,
    )
    policy.on_new_snapshot(authorizer.prepare)
    return authorizer


def build_plugin_app(config: Config, *, ship_in_process: bool = True) -> Flask:
    """The plugin's Flask app for one worker.

    ``ship_in_process=False`` (``authzctl serve``): the journal is shipped by the master's shipper
    process (``authz.audit_ship_process``) and the backlog is read from what that process publishes.
    """
    db = recycle_on_corruption(Database(config.database_url))  # a repaired file is read afresh
    if not ship_in_process:
        leave_checkpoints_to_others(db)  # the shipper process checkpoints the WAL it mostly writes
    backlog: Callable[[], int]
    ship_error: Callable[[], str | None]
    if ship_in_process:
        journal, shipper = build_audit_journal(config, db)
        backlog, ship_error = shipper.backlog, lambda: shipper.last_error
    else:
        journal = build_journal_sink(config)
        status_path = journal.directory / STATUS_FILE

        def backlog() -> int:
            status = ShipperStatus.read(status_path)
            return status.backlog(journal.chain, journal.durable_seq) if status else journal.durable_seq

        def ship_error() -> str | None:
            status = ShipperStatus.read(status_path)
            if status is None or time.time() - status.updated > _SHIPPER_SILENT_AFTER:
                when = "never" if status is None else f"{time.time() - status.updated:.0f}s ago"
                return f"the audit shipper process last reported {when}"
            return status.error

    source = build_policy_source(config)
    authorizer = build_authorizer(config, db, audit=journal, source=source)
    metrics = plugin_metrics(config.state_dir)  # this process's (build_authorizer made it)
    if metrics is not None:
        metrics.track_backlog(backlog)

    def health() -> dict[str, Any]:
        """``ok`` only when a policy is loaded and the store answers (a stale policy is not ok)."""
        status: dict[str, Any] = {"policy_loaded": False, "db_reachable": False}
        try:
            status.update(policy_loaded=True, policy_revision=source.current().revision)
        except Exception as exc:
            status["policy_error"] = str(exc)
        status.update(source.status())
        try:
            with db.session() as session:
                status.update(db_reachable=True, store_revision=read_revision(session))
        except Exception as exc:
            status["db_error"] = str(exc)
        # Records are safe in the journal while the store is down; the backlog says how far behind.
        status["audit_backlog"] = backlog()
        error = ship_error()
        if error:
            status["audit_ship_error"] = error
        status["ok"] = status["policy_loaded"] and status["db_reachable"]
        return status

    return create_app(authorizer, health=health)
