"""``classify(DockerRequest) -> Operation``: what a request does, read exactly as the daemon will.

Steps: parse the URI (``uri.parse_uri``), match the route (``routes.match_route``), apply the
body rules of docker-authz.md 3.5 (items 1-3) and bypasses B1, B2, B3, B6, B7 and B19, then
decide the query-dependent action (``routes.resolve_action``). The daemon forwards a request body
only when its *first* ``Content-Type`` is ``application/json`` and it is smaller than 1 MiB
(2.7), and Go's form parser also reads the first ``Content-Type``; the header map we get holds
the *last* value of each header. Therefore:

* no ``RequestMethod`` or ``RequestUri`` (the empty retry of B19) → ``RequestError``;
* a form or multipart ``Content-Type`` → ``BodyError`` (form bodies override the query, B7);
* a body is *announced* by ``Content-Length`` ≥ 1, or by a POST/PUT without ``Content-Length``
  (Go drops ``Transfer-Encoding`` from the map: that is a chunked body); ``Content-Length: 0``
  is no body;
* an announced body we did not receive → ``BodyError``
  - on routes that read JSON (oversized, B1; chunked on unpatched daemons, B2; not JSON-typed
    but decoded anyway by 20.10, B3),
  - on every route when the visible ``Content-Type`` is JSON (the daemon saw another first
    ``Content-Type``, or an oversized body),
  - on POST/PUT routes that read no body, when any ``Content-Type`` is present: a first, hidden
    ``Content-Type`` can turn the body into form parameters (B7 with duplicate headers, verified
    on 20.10.24). A POST without ``Content-Length`` *and* without ``Content-Type`` (curl
    ``-X POST``) is allowed: Go never parses such a body as a form;
* a forwarded body whose visible ``Content-Type`` is not JSON → ``BodyError`` (duplicate headers);
* JSON routes: a forwarded body is decoded with ``authz.gojson.loads`` (``BodyError`` on any
  document Go would read differently);
* ``POST /containers/{id}/start`` with a body other than ``{}``/``null`` → ``BodyError`` (B6);
* raw routes (tar: build, load, import with ``fromSrc=-``, PUT archive, plugin create) proceed:
  the daemon never forwards their body, the policy decides on the action. Residual risk: a
  duplicate ``Content-Type`` header can still smuggle form parameters into these handlers;
* ``POST /auth``: the body (registry credentials) is never decoded nor digested.

``body_digest`` is the sha256 of the forwarded body. No exception other than ``AuthzError``
leaves ``classify``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from authz import gojson
from authz.classify.bodies import (
    exec_create_view,
    network_connect_view,
    network_create_view,
    service_spec_view,
    volume_create_view,
)
from authz.classify.containers import container_create_view, container_update_view
from authz.classify.map_fields import MAP_FIELDS
from authz.classify.routes import Body, Route, RouteMatch, match_route, resolve_action
from authz.classify.uri import ParsedUri, parse_uri
from authz.errors import AuthzError, BodyError, RequestError
from authz.request import DockerRequest, Operation

__all__ = ["FORWARD_LIMIT", "VIEWS", "classify", "route_action"]

# action -> builder of the typed view content rules read (once per request, not once per role).
VIEWS: dict[str, Callable[[gojson.GoObject, str | None], Any]] = {
    "container:create": container_create_view,
    "container:update": container_update_view,
    "container:exec": lambda body, _version: exec_create_view(body),
    "network:create": lambda body, _version: network_create_view(body),
    "network:connect": lambda body, _version: network_connect_view(body),
    "network:disconnect": lambda body, _version: network_connect_view(body),
    "volume:create": lambda body, _version: volume_create_view(body),
    "service:create": lambda body, _version: service_spec_view(body),
    "service:update": lambda body, _version: service_spec_view(body),
}

FORWARD_LIMIT = 1024 * 1024  # bodies of this size or more are not forwarded before 29.3.1 (B1)
_START_ROUTE = "/containers/{name:.*}/start"
_EMPTY_START_BODIES: tuple[Any, ...] = (None, {})  # JSON null or {}: ignored by the daemon


def classify(request: DockerRequest, views: bool = True) -> Operation:
    """Classify one AuthZReq/AuthZRes request; raise a ``RequestError`` subclass to deny.

    ``views=False`` (an AuthZRes: the call was decided at its AuthZReq) leaves ``Operation.view``
    and ``Operation.body`` unset: the response phase needs the action, the target and the body's
    digest; the body itself was read and judged when the call was decided (decoding a create's
    body again cost a third of its AuthZRes). The header and length checks still run.
    """
    if not request.method or not request.uri:
        # B19: after a dropped connection the daemon retries with an empty AuthZReq.
        raise RequestError("the daemon sent no RequestMethod or RequestUri (empty or retried AuthZReq)")
    parsed = parse_uri(request.uri)
    match = match_route(request.method, parsed.path)
    body, digest = _read_body(request, match.route, parsed, decode=views)
    action = resolve_action(match, parsed.query)  # after the body rules: a form body could set it
    return Operation(
        action=action,
        method=request.method,
        path=parsed.path,
        api_version=parsed.api_version,
        query=parsed.query,
        target=_target(match, parsed),
        target_kind=match.route.target_kind,
        body=body,
        body_digest=digest,
        route=match.route.pattern,
        view=_view(action, body, parsed.api_version) if views else None,
    )


def route_action(method: str, uri: str) -> str:
    """The action of a call from its method and URI alone (no body rules): for AuthZRes routing."""
    parsed = parse_uri(uri)
    return resolve_action(match_route(method, parsed.path), parsed.query)


def _view(action: str, body: Any, api_version: str | None) -> Any:
    builder = VIEWS.get(action)
    if builder is None or body is None:
        return None  # rules of actions with a view treat a missing body as unjudgeable (deny)
    if not isinstance(body, gojson.GoObject):
        raise BodyError(f"the {action} body must be a JSON object")
    return builder(body, api_version)


def _target(match: RouteMatch, parsed: ParsedUri) -> str | None:
    route = match.route
    if route.target_param is not None:
        return match.params.get(route.target_param)
    if route.target_query is not None:
        values = parsed.query.get(route.target_query, ())
        return values[0] if values else None  # Form.Get: the first value
    return None


def _media_type(request: DockerRequest) -> str | None:
    """The visible Content-Type's media type, lower-cased, like Go's ``mime.ParseMediaType``."""
    value = request.header("Content-Type")
    if value is None:
        return None
    return value.partition(";")[0].strip().lower()


def _announced_length(request: DockerRequest) -> int | None:
    """Bytes the client announced: ``Content-Length``, -1 for chunked, None for no body."""
    value = request.header("Content-Length")
    if value is None:
        # Go removes Transfer-Encoding from the map: a POST/PUT without a length is chunked.
        return -1 if request.method in ("POST", "PUT") else None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        # Go's server refuses such a request; a value we cannot read is never "no body".
        raise BodyError(f"Content-Length {value!r} is not a decimal number")
    length = int(text)
    return length if length > 0 else None


def _streams_raw_body(route: Route, parsed: ParsedUri) -> bool:
    """Whether the handler reads a raw (tar) body from this request: RAW routes, and
    ``/images/create`` only for ``fromSrc=-`` (a pull or URL import reads no body)."""
    if route.body is not Body.RAW:
        return False
    if route.alt_action is not None:
        return parsed.query.get("fromSrc", ("",))[0] == "-"
    return True


def _read_body(request: DockerRequest, route: Route, parsed: ParsedUri, decode: bool) -> tuple[Any, str | None]:
    media_type = _media_type(request)
    if media_type is not None and (
        media_type == "application/x-www-form-urlencoded" or media_type.startswith("multipart/")
    ):
        # B7: Go's ParseForm merges a form body over the query, invisibly to the plugin.
        raise BodyError(f"Content-Type {media_type} is refused: form bodies override query parameters")
    is_json = media_type == "application/json"
    announced = _announced_length(request)
    raw = request.body or None  # an empty RequestBody is never sent: omitempty

    if route.body is Body.WITHHELD:
        # Registry credentials: upstream withholds them, Debian 20.10.24 forwards them. A digest of
        # a password-bearing body would allow offline guessing, so keep neither.
        return None, None
    if raw is not None and not is_json:
        # The daemon forwarded it, so its first Content-Type was JSON: the headers are ambiguous.
        raise BodyError(
            f"the daemon forwarded a body but the Content-Type seen is {media_type or 'absent'}: "
            "duplicate Content-Type headers are refused"
        )
    if raw is None and announced is not None:
        reads_json = route.body in (Body.JSON, Body.JSON_OPTIONAL)
        if reads_json or is_json:
            raise BodyError(_missing_body_reason(announced, media_type, route))
        if media_type is not None and request.method in ("POST", "PUT") and not _streams_raw_body(route, parsed):
            # B7 with two Content-Type headers: Go's ParseForm reads the first (a form can hide
            # there), the plugin sees only the last. No client sends a body to these routes.
            raise BodyError(
                f"{route.method} {route.pattern} reads no body, but one was sent with Content-Type "
                f"{media_type or '(empty)'}: refused, a hidden first Content-Type could make it a form"
            )
    if raw is None:
        return None, None
    digest = hashlib.sha256(raw).hexdigest()
    if not decode:
        return None, digest
    if route.body in (Body.JSON, Body.JSON_OPTIONAL):
        return _decode(raw, MAP_FIELDS.get(route.action, frozenset())), digest
    if route.pattern == _START_ROUTE:
        # B6: a start body is a legacy HostConfig the daemon applies for API < 1.24.
        decoded = _decode(raw)
        if decoded not in _EMPTY_START_BODIES:
            raise BodyError("POST /containers/{id}/start with a HostConfig body is refused (set it at create)")
    return None, digest  # NONE and RAW routes: the handler ignores or streams it


def _missing_body_reason(announced: int, media_type: str | None, route: Route) -> str:
    where = f"{route.method} {route.pattern}"
    if media_type != "application/json":
        why = (
            f"its Content-Type is {media_type or 'absent'}, not application/json, "
            "so the daemon withheld it (20.10 still decodes it on some routes)"
        )
    elif announced < 0:
        why = "it was sent chunked: 1 MiB or more (CVE-2026-34040), or a daemon without the CVE-2024-41110 fix"
    elif announced >= FORWARD_LIMIT:
        why = f"it has {announced} bytes, over the 1 MiB the daemon forwards (CVE-2026-34040)"
    else:
        why = "the daemon read a different first Content-Type (duplicate headers)"
    return f"the plugin did not receive the request body of {where}: {why}"


def _decode(raw: bytes, maps: frozenset[str] = frozenset()) -> Any:
    try:
        return gojson.loads(raw, maps=maps)
    except AuthzError:
        raise
    except Exception as exc:  # a decoder bug must still deny, with a reason
        raise BodyError(f"request body could not be decoded: {exc}") from exc
