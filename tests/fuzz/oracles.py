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

__all__ = ["GO_MAPS", "MAX_BODY", "MAX_DEPTH", "claimed_users", "go_reads_differently", "role_may", "wire_body"]

MAX_BODY = 4 * 1024 * 1024  # the daemon forwards at most 4 MiB (docker-authz.md 2.7)
MAX_DEPTH = 64  # the plugin's documented nesting limit (authz.gojson)


class _Differs(Exception):
    """Raised inside the JSON hooks: the document is one Go reads differently."""


class _StructTrouble(dict[str, Any]):
    """An object whose keys Go would match to struct fields differently: fine only as a Go map."""

    reason = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        reason = ""
        if not key.isascii():
            reason = f"non-ASCII key {key!r} (Go folds U+017F/U+212A onto s/k)"
        elif key.lower() in seen:
            reason = f"keys colliding case-insensitively: {key!r}"
        if reason:
            troubled = _StructTrouble(pairs)
            troubled.reason = reason
            return troubled
        seen.add(key.lower())
    return dict(pairs)


# The Go maps of the request bodies (moby api/types: ``map[string]…`` fields), written from the API
# types for this oracle: ``.`` between struct fields (lower case), ``[]`` array elements, ``*`` map values.
_HOST_CONFIG_MAPS = ("portbindings", "logconfig.config", "storageopt", "tmpfs", "sysctls", "annotations",
                     "mounts[].volumeoptions.labels", "mounts[].volumeoptions.driverconfig.options",
                     "devicerequests[].options")  # fmt: skip
_CREATE_MAPS = ("labels", "volumes", "exposedports", "networkingconfig.endpointsconfig",
                "networkingconfig.endpointsconfig.*.driveropts", *_HOST_CONFIG_MAPS,
                *("hostconfig." + path for path in _HOST_CONFIG_MAPS))  # fmt: skip
GO_MAPS: dict[str, frozenset[str]] = {
    "container:create": frozenset(_CREATE_MAPS),
    "container:update": frozenset(("devicerequests[].options",)),
    "volume:create": frozenset(("labels", "driveropts")),
    "network:create": frozenset(("labels", "options", "ipam.options", "ipam.config[].auxiliaryaddresses")),
    "network:connect": frozenset(("endpointconfig.driveropts",)),
    "secret:create": frozenset(("labels", "driver.options", "templating.options")),
    "secret:update": frozenset(("labels", "driver.options", "templating.options")),
    "config:create": frozenset(("labels", "templating.options")),
    "config:update": frozenset(("labels", "templating.options")),
}
_SERVICE_MAPS = frozenset(("labels", "networks[].driveropts", "tasktemplate.networks[].driveropts",
                           "tasktemplate.logdriver.options", "tasktemplate.containerspec.labels",
                           "tasktemplate.containerspec.sysctls",
                           "tasktemplate.containerspec.mounts[].volumeoptions.labels",
                           "tasktemplate.containerspec.mounts[].volumeoptions.driverconfig.options"))  # fmt: skip
GO_MAPS["service:create"] = GO_MAPS["service:update"] = _SERVICE_MAPS


def _struct_trouble(value: Any, maps: frozenset[str]) -> str | None:
    """The reason of the first troubled object that Go decodes into a struct, not a map."""
    todo: list[tuple[Any, str]] = [(value, "")]
    while todo:
        node, path = todo.pop()
        if isinstance(node, list):
            todo.extend((item, path + "[]") for item in node)
        elif isinstance(node, dict):
            as_map = path in maps
            if isinstance(node, _StructTrouble) and not as_map:
                return node.reason
            for key, child in node.items():
                todo.append((child, path + ".*" if as_map else (path + "." if path else "") + key.lower()))
    return None


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


def go_reads_differently(raw: bytes, maps: frozenset[str] = frozenset()) -> str | None:
    """Why the plugin must refuse ``raw`` as a JSON request body, or None if it must accept it.

    ``maps``: the paths of the body's Go maps (``GO_MAPS``), where any keys are read alike.
    """
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
    return _struct_trouble(value, maps)


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
