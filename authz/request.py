"""The values that flow through the core, as frozen dataclasses.

``DockerRequest`` is what the daemon sent (protocol → core), ``Operation`` is what the request
does (classify → evaluate), ``Subject`` is who asks (identify → evaluate) and ``Decision`` is the
answer (evaluate → audit → protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    REQUEST = "request"  # AuthZPlugin.AuthZReq: decide
    RESPONSE = "response"  # AuthZPlugin.AuthZRes: correlate, record ownership


class IdentitySource(StrEnum):
    TLS = "tls"
    TOKEN = "token"  # noqa: S105 - an identity source, not a secret
    ANONYMOUS = "anonymous"


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class DockerRequest:
    """One AuthZReq or AuthZRes payload, decoded from the wire but not interpreted."""

    method: str
    uri: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None: the daemon forwarded no RequestBody
    user: str = ""  # TLS client-certificate CN, set by the daemon only with --tlsverify
    auth_method: str = ""
    peer_certificates: tuple[str, ...] = ()  # PEM text, first = the client's own
    phase: Phase = Phase.REQUEST
    status_code: int | None = None  # AuthZRes only
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response_body: bytes | None = None

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name (the daemon canonicalises keys, clients may not)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Operation:
    """What a request does, read exactly as the daemon will read it."""

    action: str  # "resource:verb" from authz.actions
    method: str
    path: str  # percent-decoded, without the /vX.Y prefix and without the query
    api_version: str | None
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    target: str | None = None  # the object named in the path ({name}, {id})
    target_kind: str | None = None  # "container", "image", "network", "volume", "exec", "plugin" …
    body: Any = None  # Go-decoded JSON body (authz.gojson), None when the route has none
    body_digest: str | None = None  # sha256 hex of the raw body, for the audit record
    route: str = ""  # the route pattern that matched, e.g. "/containers/{name:.*}/start"
    view: Any = None  # typed view of the body for content rules (authz.classify.VIEWS), built once

    def param(self, name: str) -> str | None:
        """First value of a query parameter, as Go's ``Form.Get`` returns it."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking, after identity resolution."""

    name: str | None  # None: anonymous
    source: IdentitySource
    roles: tuple[str, ...] = ()  # effective role names: direct and through groups, sorted
    groups: tuple[str, ...] = ()
    token_id: str | None = None  # jti of the token that identified the caller

    @property
    def display(self) -> str:
        return self.name if self.name is not None else "anonymous"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer, with everything the user message and the audit record need."""

    allow: bool
    message: str  # shown to the docker user on deny (Msg)
    reason: str = ""  # why, in one sentence (also audited on allow)
    rule: str | None = None  # the policy key that decided, e.g. "roles.developer.deny[0]"
    role: str | None = None  # the role whose rule decided
    mode: Mode = Mode.ENFORCE
    warnings: tuple[str, ...] = ()  # would-be denials of roles in warn mode
    error: str | None = None  # internal failure (Err); always with allow=False
