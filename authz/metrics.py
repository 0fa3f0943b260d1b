"""Prometheus metrics of the plugin (an edge: the only importer of ``prometheus_client``).

gunicorn runs several worker processes, so the metrics live in prometheus-client's multiprocess
mode: every worker writes its values to memory-mapped files in ``<state_dir>/metrics`` (mode 0700)
and whoever serves ``/metrics`` (the admin listener, ``admin.metrics``) merges the files of all
workers with ``MultiProcessCollector``.

==================================  =========  ================================================
metric                              type       labels / meaning
==================================  =========  ================================================
``authz_decisions_total``           counter    ``result`` (allow, deny, warn), ``action``, ``role``
``authz_decision_seconds``          histogram  time from receiving an AuthZReq to its answer
``authz_token_failures_total``      counter    ``reason`` (expired, revoked, bad_signature …)
``authz_policy_revision``           gauge      policy revision the workers decide with (max)
``authz_audit_backlog``             gauge      journaled audit records not yet in the database
                                               (sum over live workers, sampled every 5 s)
==================================  =========  ================================================

The ``Authorizer`` stays pure: it calls an observer ``(decision, action, seconds)`` after every
decision; ``PluginMetrics.observe`` is that observer, wired by ``authz.composition``.

Stale files: values of exited workers stay in the directory (counters must not go backwards while
the service runs); a worker that exits normally removes its live-gauge files (backlog). Wipe the
directory when the whole service (re)starts, never while it runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from authz.errors import ConfigError
from authz.policy.model import PolicySnapshot
from authz.ports import PolicySource
from authz.request import Decision, Mode

__all__ = [
    "CONTENT_TYPE_LATEST",
    "ENV_VAR",
    "MeteredPolicySource",
    "PluginMetrics",
    "clear_directory",
    "collect",
    "enable_multiprocess",
    "metrics_dir",
    "plugin_metrics",
    "token_failure_reason",
]

log = logging.getLogger(__name__)

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
SUBDIR = "metrics"
# Latency buckets: decisions take well under a millisecond unless the store or the daemon is slow.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Label sets are results × actions × policy roles; the cap only guards against a policy with
# thousands of roles (beyond it, labels() is simply called every time).
_MAX_CACHED_LABELS = 4096

# (substring of an identity failure, reason label); the first match wins.
_TOKEN_REASONS = (
    ("was revoked", "revoked"),
    ("expired", "expired"),
    ("signature is invalid", "bad_signature"),
    ("unknown key", "unknown_key"),
    ("audience", "audience"),
    ("algorithm", "algorithm"),
    ("is not a known user", "unknown_user"),
    ("is disabled", "user_disabled"),
    ("TLS client certificate", "tls_mismatch"),
    ("issued in the future", "not_yet_valid"),
    ("not valid before", "not_yet_valid"),
    ("malformed", "malformed"),
    ("not base64url", "malformed"),
    ("not configured", "not_configured"),
)


class _ProcessState:
    """What this process has set up (prometheus-client's multiprocess mode is per process)."""

    lock = threading.Lock()
    directory: Path | None = None
    metrics: PluginMetrics | None = None


class _ProcessId:
    """``os.getpid()`` without a system call: prometheus-client asks for it on every update.

    Its multiprocess values compare the pid with the one they opened their file for (a fork
    changes it) before each increment: three ``getpid`` calls per decision. The pid is read once
    and again in every child ``os.fork`` makes (gunicorn forks its workers with it).
    """

    value = os.getpid()

    @classmethod
    def refresh(cls) -> None:
        cls.value = os.getpid()

    @classmethod
    def get(cls) -> int:
        return cls.value


os.register_at_fork(after_in_child=_ProcessId.refresh)


def metrics_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SUBDIR


def enable_multiprocess(directory: Path) -> Path:
    """Create ``directory`` (0700) and switch this process to multiprocess values written there.

    Call before any metric of this process is created. One directory per process: asking for
    another one raises ``ConfigError`` (prometheus-client keeps one set of files per process).
    """
    directory = Path(directory)
    with _ProcessState.lock:
        if _ProcessState.directory is not None:
            if _ProcessState.directory != directory:
                raise ConfigError(f"metrics already go to {_ProcessState.directory}; cannot switch to {directory}")
            return directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(directory.stat().st_mode) != 0o700:
                directory.chmod(0o700)  # the files reveal who does what; not for other local users
        except OSError as exc:
            raise ConfigError(f"cannot prepare the metrics directory {directory}: {exc}") from exc
        os.environ[ENV_VAR] = str(directory)
        # prometheus-client picks its value class when first imported; switch it explicitly, as
        # its own multiprocess tests do, so the import order of this process does not matter.
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue(_ProcessId.get)  # type: ignore[no-untyped-call]
        _ProcessState.directory = directory
        return directory


def token_failure_reason(decision: Decision) -> str | None:
    """The ``reason`` label of an identity failure, or None when the decision is not one."""
    if decision.rule != "identity":
        return None
    for needle, label in _TOKEN_REASONS:
        if needle in decision.reason:
            return label
    return "other"


def _result(decision: Decision) -> str:
    if not decision.allow:
        return "deny"
    return "warn" if decision.mode is Mode.WARN and decision.warnings else "allow"


class PluginMetrics:
    """The plugin's metrics. Not registered anywhere: in multiprocess mode the files are the registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.decisions = Counter(
            "authz_decisions_total",
            "Authorization decisions, by result, action and the role that decided (AuthZReq, and the AuthZRes "
            "denials of inspects judged on the daemon's answer)",
            ("result", "action", "role"),
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "authz_decision_seconds",
            "Seconds from receiving an AuthZReq to its answer (audit write included)",
            buckets=BUCKETS,
            registry=registry,
        )
        self.token_failures = Counter(
            "authz_token_failures_total",
            "Requests denied because the caller's identity was rejected, by reason",
            ("reason",),
            registry=registry,
        )
        self.policy_revision = Gauge(
            "authz_policy_revision",
            "Policy revision the plugin decides with (the highest of all workers)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.audit_backlog = Gauge(
            "authz_audit_backlog",
            "Audit records in the local journal not yet shipped to the database",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._sampler: threading.Thread | None = None
        self._decision_counters: dict[tuple[str, str, str], Any] = {}

    def observe(self, decision: Decision, action: str, seconds: float) -> None:
        """The ``Authorizer`` observer: count the decision and its duration."""
        key = (_result(decision), action, decision.role or "none")
        counter = self._decision_counters.get(key)
        if counter is None:  # labels() validates and locks on every call: keep the child
            counter = self.decisions.labels(*key)
            if len(self._decision_counters) < _MAX_CACHED_LABELS:
                self._decision_counters[key] = counter
        counter.inc()
        self.decision_seconds.observe(max(seconds, 0.0))
        reason = token_failure_reason(decision)
        if reason is not None:
            self.token_failures.labels(reason).inc()

    def track_backlog(self, backlog: Callable[[], int], every: float = 5.0) -> None:
        """Set ``authz_audit_backlog`` from ``backlog()`` every ``every`` seconds (daemon thread).

        Sampled rather than set per decision: an idle plugin must still report a draining backlog.
        """
        if self._sampler is not None:
            return

        def sample() -> None:
            while True:
                try:
                    self.audit_backlog.set(backlog())
                except Exception:  # a failing probe must not end the sampling; the next one may work
                    log.exception("audit backlog probe failed")
                time.sleep(every)

        self._sampler = threading.Thread(target=sample, name="authz-metrics-backlog", daemon=True)
        self._sampler.start()


class MeteredPolicySource:
    """A ``PolicySource`` that reports the revision of every snapshot it hands out."""

    def __init__(self, inner: PolicySource, metrics: PluginMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._reported: int | None = None

    def current(self, at_least: int = 0) -> PolicySnapshot:
        snapshot = self._inner.current(at_least)
        if snapshot.revision != self._reported:
            self._metrics.policy_revision.set(snapshot.revision)
            self._reported = snapshot.revision
        return snapshot

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        return self._inner.last_known(at_least)


def plugin_metrics(state_dir: Path) -> PluginMetrics | None:
    """This process's metrics in ``<state_dir>/metrics``, created once; None if that is impossible.

    None is logged, not raised: metrics are an aid, and a read-only state directory must not stop
    the plugin from answering the daemon (fail open for metrics only, never for decisions).
    """
    try:
        enable_multiprocess(metrics_dir(state_dir))
    except ConfigError as exc:
        log.warning("metrics disabled: %s", exc)
        return None
    with _ProcessState.lock:
        if _ProcessState.metrics is None:
            _ProcessState.metrics = PluginMetrics()
            # A worker that ends normally takes its live gauges (backlog) with it.
            atexit.register(_forget_process, os.getpid(), str(metrics_dir(state_dir)))
        return _ProcessState.metrics


def _forget_process(pid: int, directory: str) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the handler
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def clear_directory(directory: Path) -> int:
    """Remove the value files in ``directory``; returns how many. For the service's start only
    (gunicorn master, before forking workers): while workers run it would lose their counts."""
    removed = 0
    for path in Path(directory).glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def collect(directory: Path) -> bytes:
    """The merged metrics of every process that wrote to ``directory``, in the text format.

    A missing directory (the plugin never ran, or metrics are off) gives an empty exposition.
    """
    registry = CollectorRegistry()
    if Path(directory).is_dir():
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)
