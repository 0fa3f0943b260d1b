"""Audit events: what is recorded for every decision, and what is never recorded.

An ``AuditEvent`` is built by the core for every AuthZReq decision (and AuthZRes correlation) and
handed to an ``AuditSink`` before the reply goes back to the daemon. Secrets never reach it: request
bodies are reduced to a digest, query values of secret-bearing parameters are masked, and no header
value but the token's id is kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

REDACTED = "<redacted>"

# Query parameters whose values can carry credentials or secret material.
_SECRET_QUERY_KEYS = frozenset({"password", "token", "secret", "registryauth", "x-registry-auth"})


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One decision, as it is stored. Field names are the column names of the audit table."""

    time: float  # epoch seconds
    request_id: str  # correlates AuthZReq and AuthZRes of the same API call
    node: str  # which plugin host decided
    phase: str  # "request" | "response"
    user: str | None  # None: anonymous
    source: str  # "tls" | "token" | "anonymous" | "unknown" (identity failed)
    roles: tuple[str, ...]
    action: str  # "container:create", or "unknown" when classification failed
    method: str
    uri: str  # redacted request URI
    object: str | None  # the object named in the path
    allow: bool
    mode: str  # "enforce" | "warn"
    rule: str | None
    role: str | None
    reason: str
    message: str
    warnings: tuple[str, ...] = ()
    error: str | None = None
    body_digest: str | None = None
    token_id: str | None = None
    status_code: int | None = None  # AuthZRes only
    detail: Mapping[str, Any] = field(default_factory=dict)  # level=request extras, already redacted

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        data["warnings"] = list(self.warnings)
        data["detail"] = dict(self.detail)
        return data


def redact_uri(uri: str) -> str:
    """The URI with values of secret-bearing query parameters replaced."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        parts.append(f"{key}={REDACTED}" if eq and key.lower() in _SECRET_QUERY_KEYS else pair)
    return f"{path}?{'&'.join(parts)}"


def chain_hash(previous_hash: str, event: AuditEvent) -> str:
    """sha256 over the predecessor's hash and the canonical JSON of the event (tamper evidence)."""
    canonical = json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{previous_hash}\n{canonical}".encode()).hexdigest()
