"""One Engine API request as the simulator builds it, and the helpers that spell its path."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["ApiCall", "fake_id", "path", "with_query"]


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    path: str  # without the /vX.Y prefix, with the query string
    body: Any = None  # JSON value, None: no body
    headers: Mapping[str, str] = field(default_factory=dict)  # besides Content-Type/Length
    creates: tuple[str, str, str | None] | None = None  # (kind, id, name) the call creates
    what: str = ""  # one line for the admin: "create the container"


def path(*parts: str) -> str:
    """``path("containers", "web", "start")`` → ``/containers/web/start`` (names percent-encoded)."""
    return "/" + "/".join(quote(part, safe=":@") for part in parts)


def with_query(base: str, params: Sequence[tuple[str, str]]) -> str:
    """``base?k=v…`` encoded like Go's ``url.Values.Encode`` (sorted by key, ``+`` for spaces)."""
    return f"{base}?{urlencode(sorted(params))}" if params else base


def fake_id(*seed: str) -> str:
    """A stable 64-hex id standing in for the one the daemon would return."""
    return hashlib.sha256("\0".join(("simulated", *seed)).encode()).hexdigest()
