"""Settings of the plugin and of ``authzctl``, read from the environment once.

=================================  ===========================================  =====================
variable                           meaning                                      default
=================================  ===========================================  =====================
``AUTHZ_DATABASE_URL``             SQLAlchemy URL of the store                  ``sqlite:///<state>/authz.db``
``AUTHZ_STATE_DIR``                token keys, audit spool, checkpoints         ``/var/lib/authz``
``AUTHZ_NODE``                     name of this plugin host in audit records    the host name
``AUTHZ_TOKEN_AUDIENCE``           ``aud`` claim of issued and accepted tokens  ``docker-authz``
``AUTHZ_REVISION_POLL``            seconds between policy revision checks       ``0.5``
``AUTHZ_AUDIT_FSYNC``              ``interval`` (fsync every 0.1 s; survives    ``interval``
                                   any plugin crash) or ``always`` (fsync
                                   before every answer; survives power loss)
``AUTHZ_ON_STORE_ERROR``           ``last-known`` (keep deciding from the last  ``last-known``
                                   policy loaded while the store fails) or
                                   ``deny`` (deny everything until it is back)
``AUTHZ_DECISION_DEADLINE_MS``     longest wait on the store in one decision    ``200``
                                   (first policy load, ownership lookups;
                                   changes once the store fails); past it:
                                   deny / owner unknown / change queued
``AUTHZ_IDLE_TIMEOUT``             whole seconds a plugin connection may stay   ``75``
                                   idle, or a request may stall, before the
                                   plugin closes it
``AUTHZ_HOST_ROOT``                where the plugin sees the daemon host's      ``/``
                                   files, to judge bind sources; ``none``: it
                                   does not (the managed plugin), and only
                                   roles allowed ``/`` may bind host paths
=================================  ===========================================  =====================
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from authz.errors import ConfigError

DEFAULT_STATE_DIR = "/var/lib/authz"
DEFAULT_AUDIENCE = "docker-authz"
DEFAULT_REVISION_POLL = 0.5
# A revoked token must stop working soon: more than a minute of staleness is a misconfiguration.
_MAX_REVISION_POLL = 60.0
# dockerd keeps its connections to the plugin open between calls; closing them under it costs a
# reconnect, keeping a stalled one holds a worker thread.
DEFAULT_IDLE_TIMEOUT = 75
_IDLE_TIMEOUT_RANGE = (1, 3600)
DEFAULT_DEADLINE_MS = 200
# dockerd waits for a legacy plugin without any timeout: a deadline above a minute protects nothing.
_DEADLINE_MS_RANGE = (10, 60_000)
ON_STORE_ERROR = ("last-known", "deny")
CPU_AFFINITY_MODES = ("none", "spread")  # ``authzctl serve --cpu-affinity`` (authz.serve)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the edges need to build the store, the key store and the server."""

    database_url: str
    state_dir: Path
    node: str
    token_audience: str = DEFAULT_AUDIENCE
    revision_poll: float = DEFAULT_REVISION_POLL
    audit_fsync: str = "interval"
    on_store_error: str = "last-known"
    decision_deadline: float = DEFAULT_DEADLINE_MS / 1000  # seconds
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT  # seconds
    host_root: str | None = "/"  # the daemon host's / as the plugin sees it; None: not at all

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read the ``AUTHZ_*`` variables; raise ``ConfigError`` naming the variable on a bad value."""
        state_raw = environ.get("AUTHZ_STATE_DIR", "").strip() or DEFAULT_STATE_DIR
        state_dir = Path(state_raw)
        if not state_dir.is_absolute():
            # A relative state dir would move with the working directory of whoever runs us.
            raise ConfigError(f"AUTHZ_STATE_DIR must be an absolute path, got {state_raw!r}")
        url = environ.get("AUTHZ_DATABASE_URL", "").strip() or f"sqlite:///{state_dir / 'authz.db'}"
        node = environ.get("AUTHZ_NODE", "").strip() or socket.gethostname()
        audience = environ.get("AUTHZ_TOKEN_AUDIENCE", "").strip() or DEFAULT_AUDIENCE
        return cls(
            database_url=url,
            state_dir=state_dir,
            node=node,
            token_audience=audience,
            revision_poll=_poll(environ.get("AUTHZ_REVISION_POLL", "").strip()),
            audit_fsync=_fsync_mode(environ.get("AUTHZ_AUDIT_FSYNC", "").strip()),
            on_store_error=_on_store_error(environ.get("AUTHZ_ON_STORE_ERROR", "").strip()),
            decision_deadline=_deadline(environ.get("AUTHZ_DECISION_DEADLINE_MS", "").strip()),
            idle_timeout=_idle_timeout(environ.get("AUTHZ_IDLE_TIMEOUT", "").strip()),
            host_root=_host_root(environ.get("AUTHZ_HOST_ROOT", "").strip()),
        )

    @property
    def keys_dir(self) -> Path:
        """Token signing and verification keys (``authz.identity.token.KeyStore``)."""
        return self.state_dir / "keys"

    @property
    def audit_spool_dir(self) -> Path:
        """Audit events waiting for the store when it is unreachable."""
        return self.state_dir / "audit-spool"

    @property
    def checkpoints_dir(self) -> Path:
        """Audit chain checkpoints."""
        return self.state_dir / "checkpoints"


def _poll(raw: str) -> float:
    if not raw:
        return DEFAULT_REVISION_POLL
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"AUTHZ_REVISION_POLL must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or not 0 <= value <= _MAX_REVISION_POLL:
        raise ConfigError(f"AUTHZ_REVISION_POLL must be between 0 and {_MAX_REVISION_POLL:g} seconds, got {raw!r}")
    return value


def _host_root(raw: str) -> str | None:
    if raw.lower() == "none":
        return None
    value = raw or "/"
    if not value.startswith("/"):
        raise ConfigError(f"AUTHZ_HOST_ROOT must be an absolute path or none, got {raw!r}")
    return value


def _fsync_mode(raw: str) -> str:
    value = raw.lower() or "interval"
    if value not in ("interval", "always"):
        raise ConfigError(f"AUTHZ_AUDIT_FSYNC must be interval or always, got {raw!r}")
    return value


def _on_store_error(raw: str) -> str:
    value = raw.lower() or ON_STORE_ERROR[0]
    if value not in ON_STORE_ERROR:
        raise ConfigError(f"AUTHZ_ON_STORE_ERROR must be last-known or deny, got {raw!r}")
    return value


def _deadline(raw: str) -> float:
    """``AUTHZ_DECISION_DEADLINE_MS`` (whole milliseconds) in seconds."""
    if not raw:
        return DEFAULT_DEADLINE_MS / 1000
    low, high = _DEADLINE_MS_RANGE
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"AUTHZ_DECISION_DEADLINE_MS must be whole milliseconds between {low} and {high}, "
                          f"got {raw!r}")  # fmt: skip
    return int(raw) / 1000


def _idle_timeout(raw: str) -> int:
    """``AUTHZ_IDLE_TIMEOUT`` in whole seconds (gunicorn's ``keepalive`` takes whole seconds)."""
    if not raw:
        return DEFAULT_IDLE_TIMEOUT
    low, high = _IDLE_TIMEOUT_RANGE
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"AUTHZ_IDLE_TIMEOUT must be whole seconds between {low} and {high}, got {raw!r}")
    return int(raw)
