"""Independent oracles the fuzz properties compare the plugin against.

Each is written from the specification (docker-authz.md 6.2, policy-v1.md, the built-in role
table), not from the product code, so that a bug in the product is not mirrored here:

* ``go_reads_differently(raw)``: why Go's ``encoding/json`` and Python's ``json`` could read this
  body differently (or the plugin's limits refuse it), or ``None`` when both read it the same;
* ``role_may(role, action)``: whether a built-in role allows an action (deny beats allow);
* ``claimed_users(request)``: the users a request could be acting as.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from authz.policy.builtin import BUILTIN_ROLES
from authz.request import DockerRequest

__all__ = ["MAX_BODY", "MAX_DEPTH", "claimed_users", "go_reads_differently", "role_may", "wire_body"]

MAX_BODY = 4 * 1024 * 1024  # the daemon forwards at most 4 MiB (docker-authz.md 2.7)
MAX_DEPTH = 64  # the plugin's documented nesting limit (authz.gojson)


class _Differs(Exception):
    """Raised inside the JSON hooks: the document is one Go reads differently."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if not key.isascii():
            raise _Differs(f"non-ASCII key {key!r} (Go folds U+017F/U+212A onto s/k)")
        if key.lower() in seen:
            raise _Differs(f"keys colliding case-insensitively: {key!r}")
        seen.add(key.lower())
    return dict(pairs)


def _constant(name: str) -> Any:
    raise _Differs(f"{name} literal (Go has none)")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Differs(f"number {text[:30]} overflows float64")
    return value


def _depth_and_strings(value: Any) -> tuple[int, list[str]]:
    """Nesting depth (a scalar is 0, ``[]`` is 1) and every string value, without recursion."""
    deepest, strings = 0, []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
        elif isinstance(node, str):
            strings.append(node)
    return deepest, strings


def go_reads_differently(raw: bytes) -> str | None:
    """Why the plugin must refuse ``raw`` as a JSON request body, or None if it must accept it."""
    if len(raw) > MAX_BODY:
        return "larger than 4 MiB"
    if raw.startswith(b"\xef\xbb\xbf"):
        return "UTF-8 BOM (Go: invalid character)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8 (Go silently substitutes U+FFFD)"
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except _Differs as exc:
        return str(exc)
    except RecursionError:
        return "nesting beyond Python's recursion limit"
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python's digit limit
        return f"not JSON: {exc}"
    depth, strings = _depth_and_strings(value)
    if depth > MAX_DEPTH:
        return f"nests {depth} levels (> {MAX_DEPTH})"
    if any("\ud800" <= ch <= "\udfff" for s in strings for ch in s):
        return "lone UTF-16 surrogate (Go substitutes U+FFFD)"
    return None


def _pattern_matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return action.startswith(pattern[:-1])
    return pattern == action


def role_may(role: str, action: str) -> bool:
    """Whether built-in ``role`` (with what it ``extends``) allows ``action`` at the action level."""
    if action == "system:ping":
        return True  # everyone may ping (policy-v1: the CLI negotiates the version with it)
    chain, todo = [], [role]
    while todo:
        name = todo.pop()
        definition = BUILTIN_ROLES[name]
        chain.append(definition)
        todo.extend(definition.extends)
    if any(_pattern_matches(p, action) for r in chain for p in r.deny):
        return False
    return any(_pattern_matches(p, action) for r in chain for p in r.allow)


def claimed_users(request: DockerRequest, tokens: dict[str, str]) -> set[str]:
    """Users the request presents: the one whose token it carries, and the TLS ``User`` field.

    ``tokens`` maps user → valid token. An unknown or forged token claims nobody.
    """
    claimed: set[str] = set()
    token = request.header("X-Authz-Token")
    claimed.update(user for user, value in tokens.items() if value == token)
    if request.user:
        claimed.add(request.user)
    return claimed


def wire_body(wire: Any) -> bytes | None:
    """The body bytes a wire document carries, if ``RequestBody`` is valid strict base64."""
    if not isinstance(wire, dict):
        return None
    value = wire.get("RequestBody")
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
