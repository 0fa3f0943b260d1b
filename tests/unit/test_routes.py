"""authz.classify.routes: the anchored route table and gorilla/mux matching semantics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authz.actions import ALL_ACTIONS, RESOURCES, Action, expand, is_valid_pattern, matches
from authz.classify.routes import ANY_METHOD, ROUTES, Body, Route, match_route, resolve_action
from authz.classify.uri import parse_uri
from authz.errors import RequestError, RouteError

REFERENCE = Path("/work/shared/reference/docker-authz.md")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
_VAR = re.compile(r"\{([A-Za-z_]+)(?::([^{}]*))?\}")


def concrete(pattern: str, sample: str = "a1") -> tuple[str, dict[str, str]]:
    """A path the pattern matches, with ``sample`` in every variable; ``[^/]+`` variables get "a1"."""
    params: dict[str, str] = {}

    def fill(m: re.Match[str]) -> str:
        value = sample if m.group(2) in (".*", ".+") else "a1"
        params[m.group(1)] = value
        return value

    return _VAR.sub(fill, pattern), params


def _route_id(route: Route) -> str:
    return f"{route.method} {route.pattern}"


def test_catalogue_size() -> None:
    # docker-authz.md 5.2: 121 registrations in 20.10 and 122 in master; the union adds the legacy
    # copy route (20.10) to master's, so 123 routes.
    assert len(ROUTES) == 123
    assert len({(r.method, r.pattern) for r in ROUTES}) == len(ROUTES)


def test_every_action_is_used_and_every_route_action_is_in_the_catalogue() -> None:
    used = {a for r in ROUTES for a in r.actions}
    assert used <= ALL_ACTIONS
    assert used == {a.value for a in Action}


def test_target_kinds_and_params_are_consistent() -> None:
    kinds = {"container", "image", "network", "volume", "exec", "plugin", "service", "node", "task",
             "secret", "config"}  # fmt: skip
    for route in ROUTES:
        if route.target_kind is None:
            assert route.target_param is None, route
            assert route.target_query is None, route
            continue
        assert route.target_kind in kinds, route
        if route.target_query is None:
            assert route.target_param in route.regex.groupindex, route


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
@pytest.mark.parametrize("prefix", ["", "/v1.41"])
@pytest.mark.parametrize("sample", ["a1", "ns/a1:tag"])
def test_each_route_matches_its_own_concrete_path(route: Route, prefix: str, sample: str) -> None:
    path, params = concrete(route.pattern, sample)
    parsed = parse_uri(prefix + path)
    methods = ("GET", "POST", "DELETE", "PATCH") if route.method == ANY_METHOD else (route.method,)
    for method in methods:
        match = match_route(method, parsed.path)
        assert match.route is route
        assert dict(match.params) == params
        assert parsed.api_version == ("1.41" if prefix else None)


@pytest.mark.parametrize("route", [r for r in ROUTES if r.method != ANY_METHOD], ids=_route_id)
def test_other_methods_never_select_the_route(route: Route) -> None:
    path, _ = concrete(route.pattern)
    for method in METHODS:
        if method == route.method:
            continue
        try:
            match = match_route(method, path)
        except RouteError:
            continue
        assert match.route is not route
        assert match.route.method in (method, ANY_METHOD)


@pytest.mark.parametrize(
    ("method", "path", "action", "params"),
    [
        ("HEAD", "/_ping", "system:ping", {}),
        ("GET", "/_ping", "system:ping", {}),
        ("POST", "/containers/a/b/start", "container:start", {"name": "a/b"}),
        ("POST", "/containers/a/start/kill", "container:kill", {"name": "a/start"}),  # order wins
        ("POST", "/containers/create/start", "container:start", {"name": "create"}),
        ("DELETE", "/containers/a/checkpoints/b", "checkpoint:delete", {"name": "a", "checkpoint": "b"}),
        ("DELETE", "/containers/a/b/checkpoints/c", "container:delete", {"name": "a/b/checkpoints/c"}),
        ("GET", "/containers/a/checkpoints", "checkpoint:list", {"name": "a"}),
        ("GET", "/networks/", "network:list", {}),
        ("GET", "/networks/a/b", "network:inspect", {"id": "a/b"}),
        ("GET", "/volumes/", "volume:inspect", {"name": ""}),
        ("GET", "/images/reg:5000/ns/img:tag/json", "image:inspect", {"name": "reg:5000/ns/img:tag"}),
        ("POST", "/images/127.0.0.1:5999/tiny/push", "image:push", {"name": "127.0.0.1:5999/tiny"}),
        ("DELETE", "/images/a/b/json", "image:delete", {"name": "a/b/json"}),
        ("GET", "/images/get", "image:save", {}),
        ("GET", "/exec/a/json", "exec:inspect", {"id": "a"}),
        ("OPTIONS", "/", "system:options", {"anyroute": ""}),
        ("OPTIONS", "/containers/create", "system:options", {"anyroute": "containers/create"}),
        ("OPTIONS", "/debug/vars", "system:options", {"anyroute": "debug/vars"}),  # catch-all first
        ("PUT", "/debug/pprof/heap", "system:debug", {"name": "heap"}),
        ("DELETE", "/debug/vars", "system:debug", {}),
        ("GET", "/plugins/privileges", "plugin:privileges", {}),
        ("POST", "/plugins/pull/push", "plugin:push", {"name": "pull"}),
    ],
)
def test_gorilla_semantics(method: str, path: str, action: str, params: dict[str, str]) -> None:
    match = match_route(method, path)
    assert (match.route.action, dict(match.params)) == (action, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/containers/a/json"),  # HEAD does not match GET routes
        ("HEAD", "/version"),
        ("get", "/version"),  # methods are case-sensitive
        ("GET", "/Version"),
        ("GET", "/version/"),
        ("GET", "/containers/json/"),
        ("POST", "/containers/createx"),
        ("POST", "/containers/create/"),
        ("GET", "/x/version"),
        ("GET", "/version/x"),
        ("GET", "/_ping/x"),
        ("GET", "/services/a/b"),  # {id} stops at "/"
        ("GET", "/debug/pprof/a/b"),
        ("GET", "/debug/varsx"),
        ("POST", "/containers/a/copy/x"),
        ("GET", "/"),
        ("PATCH", "/containers/a"),
        ("GET", "/containers/a\n/json"),  # Go's "." does not cross a newline either
        ("GET", "/v1.41/containers/json"),  # match_route takes the versionless path
    ],
)
def test_unknown_routes_are_refused(method: str, path: str) -> None:
    with pytest.raises(RouteError, match="no Engine API route"):
        match_route(method, path)


def _images_create(query: str) -> str:
    parsed = parse_uri("/v1.41/images/create?" + query)
    return resolve_action(match_route("POST", parsed.path), parsed.query)


@pytest.mark.parametrize(
    ("query", "action"),
    [
        ("fromImage=alpine&tag=3", "image:pull"),
        ("fromImage=alpine&fromImage=", "image:pull"),
        ("fromSrc=-&repo=x%3Ay", "image:import"),
        ("fromSrc=http%3A%2F%2Fexample.com%2Fx.tar", "image:import"),
        ("fromImage=&fromImage=evil&fromSrc=-", "image:import"),  # Form.Get reads the first value
        ("fromImage=&fromSrc=-", "image:import"),
    ],
)
def test_images_create_action_follows_the_handler(query: str, action: str) -> None:
    assert _images_create(query) == action


@pytest.mark.parametrize("query", ["", "fromImage=&fromSrc=", "fromImage=a&fromSrc=-", "repo=x", "fromimage=a"])
def test_images_create_ambiguous_or_empty_is_refused(query: str) -> None:
    with pytest.raises(RequestError, match="/images/create"):
        _images_create(query)


def test_body_kinds_of_key_routes() -> None:
    kinds = {(r.method, r.pattern): r.body for r in ROUTES}
    assert kinds[("POST", "/containers/create")] is Body.JSON
    assert kinds[("POST", "/build")] is Body.RAW
    assert kinds[("PUT", "/containers/{name:.*}/archive")] is Body.RAW
    assert kinds[("POST", "/auth")] is Body.WITHHELD
    assert kinds[("POST", "/containers/{name:.*}/start")] is Body.NONE
    assert kinds[("POST", "/commit")] is Body.JSON_OPTIONAL


# --- the catalogue against the route table of docker-authz.md 5.2 --------------------------------

_ACTION_TOKEN = re.compile(r"^[a-z]+:[a-z-]+(?:/[a-z-]+)*$")


def _reference_rows() -> list[tuple[list[str], list[str], list[str]]]:
    """(methods, path patterns, actions) for every table row of section 5.2."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("### 5.2 Routes", 1)[1].split("\n## 6.", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("Method", "") or set(cells[0]) <= set("-"):
            continue
        methods = [m for m in re.split(r"[,/]\s*", cells[0]) if m]
        paths: list[str] = []
        for cell_token in re.findall(r"`([^`]+)`", cells[1]):
            token = cell_token
            if not token.startswith("/"):  # "`/containers/{name:.*}/pause` / `unpause`"
                token = paths[-1].rsplit("/", 1)[0] + "/" + token
            alternatives = re.fullmatch(r"(.*)\{([a-z,A-Z]+,[a-zA-Z,]+)\}", token)
            if alternatives:  # "/debug/pprof/{cmdline,profile,…,NAME}"
                for alt in alternatives.group(2).split(","):
                    paths.append(alternatives.group(1) + ("{name}" if alt == "NAME" else alt))
            else:
                paths.append(token)
        actions: list[str] = []
        for token in re.findall(r"`([^`]+)`", cells[2]):
            if _ACTION_TOKEN.match(token):
                resource, _, verbs = token.partition(":")
                actions += [f"{resource}:{verb}" for verb in verbs.split("/")]
        rows.append((methods, paths, actions))
    return rows


def _lookup(method: str, pattern: str) -> Route | None:
    path, _ = concrete(pattern)
    try:
        route = match_route(method, path).route
    except RouteError:
        return None
    return route if route.pattern == pattern else None


def test_reference_table_is_parsed() -> None:
    rows = _reference_rows()
    assert len(rows) > 90
    assert (["GET", "HEAD"], ["/_ping"], ["system:ping"]) in rows


@pytest.mark.parametrize("row", _reference_rows(), ids=lambda row: " ".join(row[1])[:60])
def test_catalogue_covers_reference_row(row: tuple[list[str], list[str], list[str]]) -> None:
    methods, paths, actions = row
    assert methods
    assert paths
    assert actions
    if len(actions) == 1 or len(paths) == len(actions):
        for i, pattern in enumerate(paths):
            expected = actions[0] if len(actions) == 1 else actions[i]
            for method in methods:
                route = _lookup(method, pattern)
                assert route is not None, f"{method} {pattern} missing"
                assert route.actions == (expected,), f"{method} {pattern}: {route.actions} != {expected}"
    elif len(paths) == 1:  # one route, several query-dependent actions (/images/create)
        for method in methods:
            route = _lookup(method, paths[0])
            assert route is not None
            assert set(route.actions) == set(actions)
    else:  # "GET/POST/DELETE | /secrets, /secrets/create, … | secret:list/create/…"
        found: set[str] = set()
        for pattern in paths:
            routes = [r for r in (_lookup(m, pattern) for m in methods) if r is not None]
            assert routes, f"{pattern} missing"
            found.update(a for r in routes for a in r.actions)
        assert found == set(actions)


def test_every_route_is_in_the_reference_table() -> None:
    documented: set[tuple[str, str]] = set()
    for methods, paths, _ in _reference_rows():
        documented.update((m, p) for m in methods for p in paths)
    for route in ROUTES:
        method = "GET" if route.method == ANY_METHOD else route.method
        assert (method, route.pattern) in documented, _route_id(route)


def test_json_routes_are_post_or_put() -> None:
    # classify infers a chunked body from a missing Content-Length only on POST and PUT.
    for route in ROUTES:
        if route.body in (Body.JSON, Body.JSON_OPTIONAL, Body.RAW, Body.WITHHELD):
            assert route.method in ("POST", "PUT"), _route_id(route)


# --- authz.actions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("*", True),
        ("container:create", True),
        ("container:copy-in", True),
        ("container:*", True),
        ("build:*", True),
        ("system:ping", True),
        ("", False),
        ("**", False),
        ("container", False),
        ("container:", False),
        ("*:create", False),
        ("container:crea*", False),
        ("Container:create", False),
        (" container:create", False),
        ("container:create ", False),
        ("widget:*", False),
        ("container:fly", False),
        ("container:create:x", False),
    ],
)
def test_is_valid_pattern(pattern: str, valid: bool) -> None:
    assert is_valid_pattern(pattern) is valid


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("*", "swarm:init", True),
        ("container:*", "container:exec", True),
        ("container:*", "exec:start", False),  # exec instances are their own resource
        ("image:pull", "image:pull", True),
        ("image:pull", "image:push", False),
        ("image:*", "build:grpc", False),
        ("*", "widget:frob", False),  # not in the catalogue: matched by nothing
        ("container:crea*", "container:create", False),  # invalid pattern: matches nothing
        ("container", "container:create", False),
    ],
)
def test_matches(pattern: str, action: str, expected: bool) -> None:
    assert matches(pattern, action) is expected


def test_expand_and_resources() -> None:
    assert expand("*") == ALL_ACTIONS
    assert expand("exec:*") == {"exec:start", "exec:resize", "exec:inspect"}
    assert expand("system:ping") == {"system:ping"}
    assert {"container", "image", "system", "swarm", "checkpoint", "build"} <= RESOURCES
    assert {a.split(":")[0] for a in ALL_ACTIONS} == RESOURCES
    assert all(re.fullmatch(r"[a-z]+:[a-z]+(-[a-z]+)*", a) for a in ALL_ACTIONS)
    with pytest.raises(ValueError, match="not an action pattern"):
        expand("container:crea*")
