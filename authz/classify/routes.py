"""The anchored Engine API route table: every route the daemon authorizes, each with one action.

docker-authz.md 5.1/5.2. The table is the union of Engine 20.10 and current master, in the
daemon's registration order (checkpoint, container, image, system, volume, build, session, swarm,
plugin, distribution, grpc, network, debug); the first route that matches wins, as in
gorilla/mux. Patterns are gorilla/mux templates: ``{name:.*}`` is greedy and may contain ``/``,
``{id}`` without a pattern is ``[^/]+``, and a template matches the whole versionless path (the
version prefix is stripped by ``authz.classify.uri``). The method must be equal (``HEAD`` does
not match ``GET``), except for ``/debug/*``, which 20.10 registers for any method.

Routes only one of the two versions has are harmless in the other: the daemon never sends a
request for an unregistered route, and none of them shadows a route of the other version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from authz.actions import Action
from authz.errors import RequestError, RouteError

__all__ = ["ANY_METHOD", "ROUTES", "Body", "Route", "RouteMatch", "match_route", "resolve_action"]

ANY_METHOD = "*"


class Body(StrEnum):
    """What the route's handler reads from the request body."""

    NONE = "none"  # nothing; query/form parameters only
    JSON = "json"  # a JSON document the handler requires (forwarded to plugins when < 1 MiB)
    JSON_OPTIONAL = "json-optional"  # a JSON document the handler reads when one is sent
    RAW = "raw"  # tar or other raw stream: the daemon never forwards it
    WITHHELD = "withheld"  # JSON credentials the daemon withholds from plugins on purpose (/auth)


_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}")


def _compile(template: str) -> re.Pattern[str]:
    """gorilla/mux template → anchored regex (use with ``fullmatch``)."""
    out: list[str] = []
    pos = 0
    for m in _TEMPLATE_VAR.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) if m.group(2) is not None else '[^/]+'})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class Route:
    """One route registration (registered twice by the daemon: with and without ``/vX.Y``)."""

    method: str  # "GET", "POST" …, or ANY_METHOD
    pattern: str  # gorilla/mux template, as in the moby source
    action: str
    body: Body = Body.NONE
    target_kind: str | None = None  # "container", "image" … the kind of object the path names
    target_param: str | None = None  # path parameter naming that object
    target_query: str | None = None  # or query parameter naming it (POST /commit?container=)
    alt_action: str | None = None  # second action decided by the query (POST /images/create)
    sensitive: bool = False  # request body carries credentials or secret data: redact in audit
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile(self.pattern))

    @property
    def actions(self) -> tuple[str, ...]:
        """Every action this route can be classified as."""
        return (self.action,) if self.alt_action is None else (self.action, self.alt_action)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: Mapping[str, str]  # path parameters, percent-decoded (the path already is)


def _r(
    method: str,
    pattern: str,
    action: Action,
    body: Body = Body.NONE,
    kind: str | None = None,
    *,
    target_query: str | None = None,
    alt_action: Action | None = None,
    sensitive: bool = False,
) -> Route:
    param = None
    if kind is not None and target_query is None:
        param = _TEMPLATE_VAR.findall(pattern)[0][0]  # the first path parameter names the object
    alt = alt_action.value if alt_action is not None else None
    return Route(method, pattern, action.value, body, kind, param, target_query, alt, sensitive)


A, B = Action, Body  # short names keep the table one route per line
C, IMG, NET, VOL, PLG = "container", "image", "network", "volume", "plugin"
_CN = "/containers/{name:.*}"

ROUTES: tuple[Route, ...] = (
    # checkpoint router: first, so that its DELETE is not masked by DELETE /containers/{name:.*}.
    # Checkpoints belong to a container, so the container is the target of all three.
    _r("GET", _CN + "/checkpoints", A.CHECKPOINT_LIST, kind=C),
    _r("POST", _CN + "/checkpoints", A.CHECKPOINT_CREATE, B.JSON, C),
    _r("DELETE", "/containers/{name}/checkpoints/{checkpoint}", A.CHECKPOINT_DELETE, kind=C),
    # container router
    _r("HEAD", _CN + "/archive", A.CONTAINER_COPY_STAT, kind=C),
    _r("GET", "/containers/json", A.CONTAINER_LIST),
    _r("GET", _CN + "/export", A.CONTAINER_EXPORT, kind=C),
    _r("GET", _CN + "/changes", A.CONTAINER_DIFF, kind=C),
    _r("GET", _CN + "/json", A.CONTAINER_INSPECT, kind=C),
    _r("GET", _CN + "/top", A.CONTAINER_TOP, kind=C),
    _r("GET", _CN + "/logs", A.CONTAINER_LOGS, kind=C),
    _r("GET", _CN + "/stats", A.CONTAINER_STATS, kind=C),
    _r("GET", _CN + "/attach/ws", A.CONTAINER_ATTACH, kind=C),
    _r("GET", "/exec/{id:.*}/json", A.EXEC_INSPECT, kind="exec"),
    _r("GET", _CN + "/archive", A.CONTAINER_COPY_OUT, kind=C),
    _r("POST", "/containers/create", A.CONTAINER_CREATE, B.JSON),
    _r("POST", _CN + "/kill", A.CONTAINER_KILL, kind=C),
    _r("POST", _CN + "/pause", A.CONTAINER_PAUSE, kind=C),
    _r("POST", _CN + "/unpause", A.CONTAINER_UNPAUSE, kind=C),
    _r("POST", _CN + "/restart", A.CONTAINER_RESTART, kind=C),
    # Body NONE: the legacy HostConfig body (API < 1.24, B6) is refused by uri and classify.
    _r("POST", _CN + "/start", A.CONTAINER_START, kind=C),
    _r("POST", _CN + "/stop", A.CONTAINER_STOP, kind=C),
    _r("POST", _CN + "/wait", A.CONTAINER_WAIT, kind=C),
    _r("POST", _CN + "/resize", A.CONTAINER_RESIZE, kind=C),
    _r("POST", _CN + "/attach", A.CONTAINER_ATTACH, kind=C),
    _r("POST", _CN + "/copy", A.CONTAINER_COPY_OUT, B.JSON, C),  # 20.10 only (API < 1.24 works)
    _r("POST", _CN + "/exec", A.CONTAINER_EXEC, B.JSON, C),
    _r("POST", "/exec/{name:.*}/start", A.EXEC_START, B.JSON, "exec"),
    _r("POST", "/exec/{name:.*}/resize", A.EXEC_RESIZE, kind="exec"),
    _r("POST", _CN + "/rename", A.CONTAINER_RENAME, kind=C),
    _r("POST", _CN + "/update", A.CONTAINER_UPDATE, B.JSON, C),
    _r("POST", "/containers/prune", A.CONTAINER_PRUNE),
    _r("POST", "/commit", A.CONTAINER_COMMIT, B.JSON_OPTIONAL, C, target_query="container"),
    _r("PUT", _CN + "/archive", A.CONTAINER_COPY_IN, B.RAW, C),
    _r("DELETE", _CN, A.CONTAINER_DELETE, kind=C),
    # image router
    _r("GET", "/images/json", A.IMAGE_LIST),
    _r("GET", "/images/search", A.IMAGE_SEARCH),
    _r("GET", "/images/get", A.IMAGE_SAVE),
    _r("GET", "/images/{name:.*}/get", A.IMAGE_SAVE, kind=IMG),
    _r("GET", "/images/{name:.*}/history", A.IMAGE_HISTORY, kind=IMG),
    _r("GET", "/images/{name:.*}/json", A.IMAGE_INSPECT, kind=IMG),
    _r("GET", "/images/{name:.*}/attestations", A.IMAGE_ATTESTATIONS, kind=IMG),  # API >= 1.55
    _r("POST", "/images/load", A.IMAGE_LOAD, B.RAW),
    # fromImage → pull, fromSrc → import (resolve_action); a tar body when fromSrc=-.
    _r("POST", "/images/create", A.IMAGE_PULL, B.RAW, alt_action=A.IMAGE_IMPORT),
    # 20.10 reads an AuthConfig JSON body when X-Registry-Auth is absent (stripped before us).
    _r("POST", "/images/{name:.*}/push", A.IMAGE_PUSH, B.JSON_OPTIONAL, IMG, sensitive=True),
    _r("POST", "/images/{name:.*}/tag", A.IMAGE_TAG, kind=IMG),
    _r("POST", "/images/prune", A.IMAGE_PRUNE),
    _r("DELETE", "/images/{name:.*}", A.IMAGE_DELETE, kind=IMG),
    # system router
    _r("OPTIONS", "/{anyroute:.*}", A.SYSTEM_OPTIONS),
    _r("GET", "/_ping", A.SYSTEM_PING),
    _r("HEAD", "/_ping", A.SYSTEM_PING),
    _r("GET", "/events", A.SYSTEM_EVENTS),
    _r("GET", "/info", A.SYSTEM_INFO),
    _r("GET", "/version", A.SYSTEM_VERSION),
    _r("GET", "/system/df", A.SYSTEM_DF),
    _r("POST", "/auth", A.SYSTEM_AUTH, B.WITHHELD, sensitive=True),
    # volume router
    _r("GET", "/volumes", A.VOLUME_LIST),
    _r("GET", "/volumes/{name:.*}", A.VOLUME_INSPECT, kind=VOL),
    _r("POST", "/volumes/create", A.VOLUME_CREATE, B.JSON),
    _r("POST", "/volumes/prune", A.VOLUME_PRUNE),
    _r("PUT", "/volumes/{name:.*}", A.VOLUME_UPDATE, B.JSON, VOL),  # API >= 1.42
    _r("DELETE", "/volumes/{name:.*}", A.VOLUME_DELETE, kind=VOL),
    # build router
    _r("POST", "/build", A.IMAGE_BUILD, B.RAW),
    _r("POST", "/build/prune", A.BUILD_PRUNE),
    _r("POST", "/build/cancel", A.BUILD_CANCEL),
    # session router
    _r("POST", "/session", A.BUILD_SESSION),
    # swarm router
    _r("POST", "/swarm/init", A.SWARM_INIT, B.JSON, sensitive=True),
    _r("POST", "/swarm/join", A.SWARM_JOIN, B.JSON, sensitive=True),
    _r("POST", "/swarm/leave", A.SWARM_LEAVE),
    _r("GET", "/swarm", A.SWARM_INSPECT),
    _r("GET", "/swarm/unlockkey", A.SWARM_UNLOCKKEY),
    _r("POST", "/swarm/update", A.SWARM_UPDATE, B.JSON),
    _r("POST", "/swarm/unlock", A.SWARM_UNLOCK, B.JSON, sensitive=True),
    _r("GET", "/services", A.SERVICE_LIST),
    _r("GET", "/services/{id}", A.SERVICE_INSPECT, kind="service"),
    _r("POST", "/services/create", A.SERVICE_CREATE, B.JSON),
    _r("POST", "/services/{id}/update", A.SERVICE_UPDATE, B.JSON, "service"),
    _r("DELETE", "/services/{id}", A.SERVICE_DELETE, kind="service"),
    _r("GET", "/services/{id}/logs", A.SERVICE_LOGS, kind="service"),
    _r("GET", "/nodes", A.NODE_LIST),
    _r("GET", "/nodes/{id}", A.NODE_INSPECT, kind="node"),
    _r("DELETE", "/nodes/{id}", A.NODE_DELETE, kind="node"),
    _r("POST", "/nodes/{id}/update", A.NODE_UPDATE, B.JSON, "node"),
    _r("GET", "/tasks", A.TASK_LIST),
    _r("GET", "/tasks/{id}", A.TASK_INSPECT, kind="task"),
    _r("GET", "/tasks/{id}/logs", A.TASK_LOGS, kind="task"),
    _r("GET", "/secrets", A.SECRET_LIST),
    _r("POST", "/secrets/create", A.SECRET_CREATE, B.JSON, sensitive=True),
    _r("DELETE", "/secrets/{id}", A.SECRET_DELETE, kind="secret"),
    _r("GET", "/secrets/{id}", A.SECRET_INSPECT, kind="secret"),
    _r("POST", "/secrets/{id}/update", A.SECRET_UPDATE, B.JSON, "secret", sensitive=True),
    _r("GET", "/configs", A.CONFIG_LIST),
    _r("POST", "/configs/create", A.CONFIG_CREATE, B.JSON, sensitive=True),
    _r("DELETE", "/configs/{id}", A.CONFIG_DELETE, kind="config"),
    _r("GET", "/configs/{id}", A.CONFIG_INSPECT, kind="config"),
    _r("POST", "/configs/{id}/update", A.CONFIG_UPDATE, B.JSON, "config", sensitive=True),
    # plugin router
    _r("GET", "/plugins", A.PLUGIN_LIST),
    _r("GET", "/plugins/{name:.*}/json", A.PLUGIN_INSPECT, kind=PLG),
    _r("GET", "/plugins/privileges", A.PLUGIN_PRIVILEGES),
    _r("DELETE", "/plugins/{name:.*}", A.PLUGIN_DELETE, kind=PLG),
    _r("POST", "/plugins/{name:.*}/enable", A.PLUGIN_ENABLE, kind=PLG),
    _r("POST", "/plugins/{name:.*}/disable", A.PLUGIN_DISABLE, kind=PLG),
    _r("POST", "/plugins/pull", A.PLUGIN_INSTALL, B.JSON),
    _r("POST", "/plugins/{name:.*}/push", A.PLUGIN_PUSH, kind=PLG),
    _r("POST", "/plugins/{name:.*}/upgrade", A.PLUGIN_UPGRADE, B.JSON, PLG),
    _r("POST", "/plugins/{name:.*}/set", A.PLUGIN_SET, B.JSON, PLG),
    _r("POST", "/plugins/create", A.PLUGIN_CREATE, B.RAW),
    # distribution router
    _r("GET", "/distribution/{name:.*}/json", A.IMAGE_DISTRIBUTION, kind=IMG),
    # grpc router
    _r("POST", "/grpc", A.BUILD_GRPC),
    # network router
    _r("GET", "/networks", A.NETWORK_LIST),
    _r("GET", "/networks/", A.NETWORK_LIST),
    _r("GET", "/networks/{id:.+}", A.NETWORK_INSPECT, kind=NET),
    _r("POST", "/networks/create", A.NETWORK_CREATE, B.JSON),
    _r("POST", "/networks/{id:.*}/connect", A.NETWORK_CONNECT, B.JSON, NET),
    _r("POST", "/networks/{id:.*}/disconnect", A.NETWORK_DISCONNECT, B.JSON, NET),
    _r("POST", "/networks/prune", A.NETWORK_PRUNE),
    _r("DELETE", "/networks/{id:.*}", A.NETWORK_DELETE, kind=NET),
    # debug routes: 20.10 registers them for any method and without version prefix; master for
    # GET with and without it. The union (any method, both forms) only adds requests no daemon
    # routes, and they come last, so they shadow nothing.
    _r(ANY_METHOD, "/debug/vars", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/cmdline", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/profile", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/symbol", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/trace", A.SYSTEM_DEBUG),
    _r(ANY_METHOD, "/debug/pprof/{name}", A.SYSTEM_DEBUG),
)


# The routes each method can match, in registration order (the any-method routes included): a
# GET tries the GET routes only. Methods no route names match the any-method routes alone.
_ANY_ONLY = tuple(route for route in ROUTES if route.method == ANY_METHOD)
_BY_METHOD = {
    method: tuple(route for route in ROUTES if route.method in (method, ANY_METHOD))
    for method in {route.method for route in ROUTES} - {ANY_METHOD}
}


def match_route(method: str, path: str) -> RouteMatch:
    """The first route (registration order) whose method and anchored pattern match ``path``.

    ``path`` is the decoded, versionless path from ``parse_uri``. ``RouteError`` when none does.
    """
    for route in _BY_METHOD.get(method, _ANY_ONLY):
        m = route.regex.fullmatch(path)
        if m is not None:
            return RouteMatch(route, MappingProxyType(m.groupdict()))
    raise RouteError(f"no Engine API route for {method} {path}")


def resolve_action(match: RouteMatch, query: Mapping[str, tuple[str, ...]]) -> str:
    """The action of a matched route, deciding the query-dependent ones.

    ``POST /images/create`` pulls when ``Form.Get("fromImage")`` (the first value) is non-empty
    and imports otherwise, from ``fromSrc`` (moby ``postImagesCreate``, 20.10 and master).
    """
    route = match.route
    if route.alt_action is None:
        return route.action

    def first(name: str) -> str:
        values = query.get(name, ())
        return values[0] if values else ""

    from_image, from_src = first("fromImage"), first("fromSrc")
    if from_image and from_src:
        # The daemon pulls and ignores fromSrc; no client sends both, so a policy could misread it.
        raise RequestError("POST /images/create with both fromImage and fromSrc is ambiguous")
    if from_image:
        return route.action
    if from_src:
        return route.alt_action
    # The daemon would try to import from "http://" (an empty fromSrc): nothing to authorize.
    raise RequestError("POST /images/create needs a non-empty fromImage (pull) or fromSrc (import)")
