"""Settings of the admin web UI, read from the environment once (on top of ``authz.config.Config``).

================================  ===============================================  ==================
variable                          meaning                                          default
================================  ===============================================  ==================
``AUTHZ_ADMIN_SECURE_COOKIES``    session cookie only over HTTPS (``Secure``)      ``false``
``AUTHZ_ADMIN_TRUST_PROXY``       reverse proxies in front whose ``X-Forwarded-``  ``0`` (none)
                                  ``For``/``-Proto`` headers are believed
``AUTHZ_ADMIN_SESSION_HOURS``     sign-in lifetime (absolute)                      ``8``
``AUTHZ_ADMIN_IDLE_MINUTES``      sign-out after this long without a request       ``60``
``AUTHZ_METRICS_ALLOW``           client addresses/CIDRs that may read /metrics    ``127.0.0.1,::1``
================================  ===============================================  ==================

Admin changes are audited through the plugin's journal (``authz.composition.build_audit_journal``:
a hash chain of the admin process, shipped into the store), so ``authzctl audit verify`` covers
them; ``audit_journal=False`` writes straight to the table instead (unchained; tests use it).

The cookie signing key lives in ``<state_dir>/admin/session.key`` (created 0600 on first start,
shared by every worker); sign-in throttling state in ``<state_dir>/admin/throttle.sqlite``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from authz.config import Config
from authz.errors import ConfigError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_METRICS_ALLOW = "127.0.0.1,::1"
N = TypeVar("N", int, float)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Sign-in throttling: after ``threshold`` failures within ``window`` seconds, each further
    failure locks the key for ``base_delay * 2**(failures - threshold)`` seconds, at most
    ``max_delay``. Keys are the account name and the client address (with separate thresholds).
    """

    account_threshold: int = 5
    address_threshold: int = 10
    window: float = 15 * 60
    base_delay: float = 30.0
    max_delay: float = 15 * 60


@dataclass(frozen=True, slots=True)
class AdminSettings:
    base: Config
    secret_key: bytes | None = None  # None: <state_dir>/admin/session.key
    secure_cookies: bool = False
    trust_proxy: int = 0
    session_lifetime: float = 8 * 3600
    idle_timeout: float = 3600
    metrics_allow: tuple[IpNetwork, ...] = field(default_factory=lambda: parse_networks(DEFAULT_METRICS_ALLOW))
    # argon2 parameters for new hashes (memory_cost, rounds, parallelism); empty = passlib defaults
    hash_params: Mapping[str, int] = field(default_factory=dict)
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    api_version: str = "1.41"  # the Engine API version the simulator prefixes paths with
    audit_journal: bool = True  # admin events through the journal (chained) or straight to the table

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AdminSettings:
        """Read ``AUTHZ_*``; raise ``ConfigError`` naming the variable on a bad value."""
        return cls(
            base=Config.from_env(environ),
            secure_cookies=_flag(environ, "AUTHZ_ADMIN_SECURE_COOKIES"),
            trust_proxy=_number(environ, "AUTHZ_ADMIN_TRUST_PROXY", 0, 0, 5, int),
            session_lifetime=_number(environ, "AUTHZ_ADMIN_SESSION_HOURS", 8, 0.1, 24 * 7, float) * 3600,
            idle_timeout=_number(environ, "AUTHZ_ADMIN_IDLE_MINUTES", 60, 1, 24 * 60, float) * 60,
            metrics_allow=parse_networks(environ.get("AUTHZ_METRICS_ALLOW", DEFAULT_METRICS_ALLOW)),
        )

    @property
    def state_dir(self) -> Path:
        return self.base.state_dir

    @property
    def admin_dir(self) -> Path:
        return self.base.state_dir / "admin"

    @property
    def metrics_dir(self) -> Path:
        return self.base.state_dir / "metrics"


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """``"127.0.0.1, ::1, 10.0.0.0/8"`` → networks; an empty list allows nobody."""
    out = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"AUTHZ_METRICS_ALLOW: {item!r} is not an address or CIDR") from None
    return tuple(out)


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _number(environ: Mapping[str, str], name: str, default: N, low: float, high: float, kind: type[N]) -> N:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value
