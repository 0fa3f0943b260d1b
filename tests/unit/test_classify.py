"""authz.classify.classify: captured daemon payloads and the body rules (docker-authz.md 3.5, 8)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.actions import ALL_ACTIONS
from authz.classify import FORWARD_LIMIT, classify
from authz.errors import AuthzError, BodyError, RequestError, RouteError
from authz.request import DockerRequest, Operation
from tests.support.captures import TruncatedCapture, capture_names, capture_request, load_capture

# Experiment captures the plugin must deny (the `case` notes of captures/_index.json).
EXPECTED_DENIED: dict[str, type[RequestError]] = {
    "retry-test__02_EMPTY-BODY_AuthZPlugin-AuthZReq.json": RequestError,  # B19 empty retry
    "cve-tests__04_POST_containers-create.json": BodyError,  # B1 oversized, Content-Length
    "cve-tests__05_POST_containers-create.json": BodyError,  # B1 oversized, chunked
    "ctype-tests__01_POST_services-create.json": BodyError,  # B3 text/plain decoded by 20.10
    "ctype-tests__02_POST_services-create.json": BodyError,
    "ctype-tests__03_POST_services-create.json": BodyError,  # B3 no Content-Type
    "ctype-tests__04_POST_containers-create.json": BodyError,
    "form-body-tests__01_POST_images-tiny-latest-tag.json": BodyError,  # B7
    "form-body-tests__02_POST_images-create.json": BodyError,
    "form-body-tests__03_POST_containers-nonexistent-kill.json": BodyError,
    "json-differential__10_POST_containers-create.json": BodyError,  # B4 HostConfig twice
    "json-differential__13_POST_containers-create.json": BodyError,  # B4 Privileged/privileged
    "json-differential__16_POST_containers-create.json": BodyError,  # B4 "Bindſ"
    "start-hostconfig-test__03_POST_containers-starthc-start.json": RouteError,  # B6 /v1.23
    "path-tests__06_GET_containers-json.json": RouteError,  # /v1/
    "path-tests__08_GET_containers-json.json": RouteError,  # /v99/
    "path-tests__09_GET_containers-json.json": RouteError,  # /v1.11/
    "path-tests__10_GET_containers-json.json": RouteError,  # /v./
}

# What each CLI command does, from docker-authz.md section 4 (the ping is left out).
LABEL_ACTIONS: dict[str, set[str]] = {
    "version": {"system:version"},
    "info": {"system:info"},
    "ps-a": {"container:list"},
    "images": {"image:list"},
    "run-plain": {"container:create", "container:attach", "container:wait", "container:start"},
    "run-detached": {"container:create", "container:wait", "container:start"},
    "exec": {"container:inspect", "container:exec", "exec:start", "exec:inspect"},
    "attach": {"container:wait", "container:inspect", "container:attach", "container:kill"},
    "logs": {"container:inspect", "container:logs"},
    "cp-in": {"container:copy-stat", "container:copy-in"},
    "cp-out": {"container:copy-out"},
    "commit": {"container:commit"},
    "tag": {"image:tag"},
    "save": {"image:save"},
    "load": {"image:load"},
    "import": {"image:import"},
    "pull": {"image:pull"},
    "push": {"image:push"},
    "rmi": {"image:delete"},
    "history": {"image:history"},
    "search": {"image:search"},
    "build": {"image:build"},
    "builder-prune": {"build:prune"},
    "system-prune": {"container:prune", "network:prune", "image:prune", "build:prune"},
    "system-df": {"system:df"},
    "events": {"system:events"},
    "network-create-run1": {"network:create"},
    "network-connect-run1": {"network:connect"},
    "network-disconnect-run1": {"network:disconnect"},
    "network-rm-run1": {"network:inspect", "network:delete"},
    "volume-create": {"volume:create"},
    "volume-rm-run1": {"volume:delete"},
    "login": {"system:auth"},
    "plugin-ls": {"plugin:list"},
    "plugin-set": {"plugin:set"},
    "plugin-create": {"plugin:create"},
    "plugin-install": {"plugin:privileges", "plugin:install"},
    "service-create": {"service:create"},
    "secret-create": {"secret:create"},
    "node-ls": {"node:list"},
    "swarm-inspect": {"swarm:inspect"},
    "rename": {"container:rename"},
    "update": {"container:update"},
    "top": {"container:top"},
    "diff": {"container:diff"},
    "export": {"container:export"},
    "stats": {"container:stats"},
}


# Captures whose derived `api.query` disagrees with the exact wire `RequestUri` (the wire wins).
QUERY_ERRATA: dict[str, dict[str, tuple[str, ...]]] = {
    "cp-in__02_HEAD_containers-box-archive.json": {"path": ("/tmp/cpin.txt",)},  # api says /srv/…
    "cp-out__02_GET_containers-box-archive.json": {"path": ("/tmp/cpin.txt",)},
}


def _request(name: str) -> DockerRequest:
    try:
        return capture_request(name)
    except TruncatedCapture:
        # cve-tests__06 stores only the start of its 1048372-byte body ("just under 1 MiB"):
        # rebuild a body of that size with the same shape (a padded label).
        data = load_capture(name)
        wire = data["authz_req"]["wire"]
        size = int(wire["RequestHeaders"]["Content-Length"])
        head = b'{"Image": "tiny", "Cmd": ["true"], "Labels": {"pad": "'
        body = head + b"x" * (size - len(head) - 3) + b'"}}'
        return DockerRequest(wire["RequestMethod"], wire["RequestUri"], wire["RequestHeaders"], body)


def _norm_version(version: str | None) -> str | None:
    return None if version is None else ".".join(version.split(".")[:2])


@pytest.mark.parametrize("name", capture_names())
def test_capture_classifies_or_is_denied(name: str) -> None:
    request = _request(name)
    if name in EXPECTED_DENIED:
        with pytest.raises(EXPECTED_DENIED[name]):
            classify(request)
        return
    op = classify(request)
    api = load_capture(name)["api"]
    assert op.action in ALL_ACTIONS
    assert op.method == request.method
    assert op.path == api["route_path"]
    assert op.api_version == _norm_version(api["api_version"])
    expected_query = QUERY_ERRATA.get(name) or {k: tuple(v) for k, v in api["query"].items()}
    assert op.query == expected_query
    if request.body and op.route != "/auth":
        assert op.body_digest == hashlib.sha256(request.body).hexdigest()


def test_capture_corpus_is_complete() -> None:
    names = capture_names()
    assert len(names) == 489
    assert set(EXPECTED_DENIED) <= set(names)


def test_cli_commands_map_to_their_actions() -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    for name in capture_names():
        label = name.split("__")[0]
        if label in LABEL_ACTIONS and name not in EXPECTED_DENIED:
            seen[label].add(classify(_request(name)).action)
    assert {label: actions - {"system:ping"} for label, actions in seen.items()} == LABEL_ACTIONS


def test_response_phase_classifies_like_the_request() -> None:
    for name in ("run-plain__02_POST_containers-create.json", "version__02_GET_version.json"):
        assert classify(capture_request(name, "response")) == classify(capture_request(name))


def test_forwarded_create_body_is_decoded() -> None:
    op = classify(capture_request("run-privileged__02_POST_containers-create.json"))
    assert op.action == "container:create"
    assert op.body.field("HostConfig").field("Privileged") is True


# --- synthetic requests -------------------------------------------------------------------------

JSON = "application/json"


def req(method: str, uri: str, body: bytes | None = None, **headers: str) -> DockerRequest:
    h = {k.replace("_", "-"): v for k, v in headers.items()}
    if body is not None and "Content-Length" not in h:
        h["Content-Length"] = str(len(body))
    return DockerRequest(method, uri, h, body)


def test_missing_method_or_uri_is_denied() -> None:
    for request in (DockerRequest("", ""), DockerRequest("GET", ""), DockerRequest("", "/_ping")):
        with pytest.raises(RequestError, match="no RequestMethod or RequestUri"):
            classify(request)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8",
     "multipart/form-data; boundary=x", "MULTIPART/mixed"],
)  # fmt: skip
@pytest.mark.parametrize(("method", "uri"), [("POST", "/v1.41/images/x/tag?repo=a"), ("GET", "/v1.41/info")])
def test_form_bodies_are_denied(content_type: str, method: str, uri: str) -> None:
    with pytest.raises(BodyError, match="form bodies override"):
        classify(req(method, uri, Content_Type=content_type, Content_Length="5"))


def test_form_content_type_without_body_is_still_denied() -> None:
    with pytest.raises(BodyError):
        classify(req("POST", "/v1.41/containers/x/kill", Content_Type="application/x-www-form-urlencoded",
                     Content_Length="0"))  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Content-Length": str(FORWARD_LIMIT), "Content-Type": JSON}, "CVE-2026-34040"),
        ({"Content-Length": "5000000", "Content-Type": JSON}, "CVE-2026-34040"),
        ({"Content-Type": JSON}, "chunked"),
        ({"Content-Length": "131", "Content-Type": "text/plain"}, "text/plain, not application/json"),
        ({"Content-Length": "131"}, "absent, not application/json"),
        ({}, "absent"),
        ({"Content-Length": "20", "Content-Type": JSON}, "duplicate headers"),
    ],
)
@pytest.mark.parametrize(
    "uri",
    ["/v1.41/containers/create", "/v1.41/services/create", "/v1.41/containers/x/update", "/v1.41/commit",
     "/v1.41/plugins/pull", "/v1.41/exec/e/start", "/v1.41/swarm/init"],
)  # fmt: skip
def test_announced_but_missing_json_body_is_denied(headers: dict[str, str], reason: str, uri: str) -> None:
    with pytest.raises(BodyError, match="did not receive the request body") as exc:
        classify(DockerRequest("POST", uri, headers, None))
    assert reason in str(exc.value)


def test_volume_update_is_a_json_put() -> None:
    with pytest.raises(BodyError):
        classify(DockerRequest("PUT", "/v1.42/volumes/v", {"Content-Type": JSON}, None))


@pytest.mark.parametrize("uri", ["/v1.41/containers/create", "/v1.41/commit", "/v1.41/networks/n/connect"])
def test_content_length_zero_means_no_body(uri: str) -> None:
    op = classify(req("POST", uri, Content_Length="0", Content_Type=JSON))
    assert op.body is None
    assert op.body_digest is None


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", "0x10", "", "٣"])
def test_unreadable_content_length_is_denied(value: str) -> None:
    with pytest.raises(BodyError, match="Content-Length"):
        classify(req("POST", "/v1.41/containers/create", Content_Length=value))


def test_forwarded_json_body_is_decoded_with_digest() -> None:
    raw = b'{"Image":"tiny","HostConfig":{"Privileged":true}}'
    op = classify(req("POST", "/v1.41/containers/create?name=c1", raw, Content_Type="application/json; charset=utf-8"))
    assert op.action == "container:create"
    assert op.body == {"Image": "tiny", "HostConfig": {"Privileged": True}}
    assert op.body_digest == hashlib.sha256(raw).hexdigest()
    assert op.param("name") == "c1"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Image":"x","image":"y"}',
        b'{"Bind\xc5\xbf":[]}',
        b'{"Memory": NaN}',
        b'{"Image":"x"} {}',
        b"\xff",
        b"[1,",
    ],
)
def test_json_the_daemon_reads_differently_is_denied(raw: bytes) -> None:
    with pytest.raises(BodyError):
        classify(req("POST", "/v1.41/containers/create", raw, Content_Type=JSON))


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/jsonx"])
def test_forwarded_body_with_non_json_type_is_denied(content_type: str | None) -> None:
    headers = {"Content-Length": "2"} | ({"Content-Type": content_type} if content_type else {})
    with pytest.raises(BodyError, match="duplicate Content-Type"):
        classify(DockerRequest("POST", "/v1.41/containers/create", headers, b"{}"))


def test_json_typed_body_missing_on_a_bodiless_route_is_denied() -> None:
    # The daemon forwards any JSON-typed body under 1 MiB; when it did not, it saw another first
    # Content-Type (possibly a form that overrides repo/tag, B7) or an oversized body.
    with pytest.raises(BodyError, match="duplicate headers"):
        classify(req("POST", "/v1.41/images/tiny/tag?repo=safe&tag=ok", Content_Type=JSON, Content_Length="23"))


@pytest.mark.parametrize(
    ("method", "uri", "content_type", "action"),
    [
        ("POST", "/v1.41/build?t=x", "application/x-tar", "image:build"),
        ("POST", "/v1.41/images/load?quiet=1", "application/x-tar", "image:load"),
        ("POST", "/v1.41/images/create?fromSrc=-&repo=r%3At", "text/plain", "image:import"),
        ("PUT", "/v1.41/containers/box/archive?path=%2Ftmp", "text/plain", "container:copy-in"),
        ("POST", "/v1.41/plugins/create?name=p", "application/x-tar", "plugin:create"),
    ],
)
def test_raw_and_bodiless_routes_proceed_without_the_body(
    method: str, uri: str, content_type: str, action: str
) -> None:
    op = classify(DockerRequest(method, uri, {"Content-Type": content_type}, None))  # chunked
    assert (op.action, op.body, op.body_digest) == (action, None, None)


@pytest.mark.parametrize(
    ("uri", "headers"),
    [
        # Verified on 20.10.24: with "Content-Type: application/x-www-form-urlencoded" first and
        # this one last, the daemon tags laundered:evil from the body (the plugin sees only this).
        ("/v1.41/images/tiny/tag?repo=safe&tag=ok", {"Content-Type": "text/plain", "Content-Length": "23"}),
        ("/v1.41/images/tiny/tag?repo=safe&tag=ok", {"Content-Type": "text/plain"}),  # chunked
        ("/v1.41/images/tiny/tag?repo=safe&tag=ok", {"Content-Type": "", "Content-Length": "23"}),
        ("/v1.41/containers/c/rename?name=x", {"Content-Type": "application/x-tar"}),
        ("/v1.41/images/create?fromImage=alpine", {"Content-Type": "text/plain"}),  # a pull reads no body
        ("/v1.41/images/create?fromSrc=http%3A%2F%2Fx%2Fa.tar", {"Content-Type": "text/plain"}),
    ],
)
def test_unforwarded_body_on_a_bodiless_route_is_denied(uri: str, headers: dict[str, str]) -> None:
    with pytest.raises(BodyError, match="reads no body"):
        classify(DockerRequest("POST", uri, headers, None))


@pytest.mark.parametrize(
    ("uri", "headers", "action"),
    [
        ("/v1.41/containers/c/start", {}, "container:start"),  # curl -X POST: no length, no type
        ("/v1.41/containers/c/attach?stream=1", {"Content-Type": "text/plain", "Content-Length": "0"},
         "container:attach"),
        ("/v1.41/containers/c", {"Content-Type": "text/plain", "Content-Length": "5"}, "container:delete"),
        ("/v1.41/images/json", {"Content-Type": "text/plain", "Content-Length": "5"}, "image:list"),
    ],
)  # fmt: skip
def test_bodies_go_never_parses_as_forms_are_allowed(uri: str, headers: dict[str, str], action: str) -> None:
    method = {"container:delete": "DELETE", "image:list": "GET"}.get(action, "POST")
    assert classify(DockerRequest(method, uri, headers, None)).action == action


def test_body_on_a_bodiless_route_is_ignored_but_digested() -> None:
    op = classify(req("POST", "/v1.41/containers/box/kill", b'{"x":1}', Content_Type=JSON))
    assert op.body is None
    assert op.body_digest == hashlib.sha256(b'{"x":1}').hexdigest()


@pytest.mark.parametrize("raw", [b"{}", b"null", b" { } \n", b"{}\n"])
def test_start_with_empty_body_is_allowed(raw: bytes) -> None:
    op = classify(req("POST", "/v1.41/containers/c1/start", raw, Content_Type=JSON))
    assert op.action == "container:start"
    assert op.target == "c1"


@pytest.mark.parametrize("raw", [b'{"Binds":["/:/host"]}', b'{"privileged":true}', b"[]", b'""', b"{", b"0"])
def test_start_with_hostconfig_body_is_denied(raw: bytes) -> None:
    with pytest.raises(BodyError):
        classify(req("POST", "/containers/c1/start", raw, Content_Type=JSON))


def test_auth_body_is_neither_decoded_nor_digested() -> None:
    raw = b'{"username":"u","password":"p","serveraddress":"r"}'
    forwarded = classify(req("POST", "/v1.41/auth", raw, Content_Type=JSON))  # Debian 20.10.24
    withheld = classify(req("POST", "/v1.41/auth", Content_Type=JSON, Content_Length=str(len(raw))))  # upstream
    for op in (forwarded, withheld):
        assert (op.action, op.body, op.body_digest) == ("system:auth", None, None)


@pytest.mark.parametrize(
    ("method", "uri", "target", "kind"),
    [
        ("POST", "/v1.41/containers/a%2Fb/start", "a/b", "container"),
        ("GET", "/v1.41/images/reg%3A5000/ns/img:tag/json", "reg:5000/ns/img:tag", "image"),
        ("DELETE", "/v1.41/networks/n%20x", "n x", "network"),
        ("GET", "/v1.41/exec/e1/json", "e1", "exec"),
        ("POST", "/v1.41/commit?container=c1&container=c2&repo=r", "c1", "container"),
        ("POST", "/v1.41/commit?repo=r", None, "container"),
        ("DELETE", "/v1.41/containers/c1/checkpoints/cp1", "c1", "container"),
        ("POST", "/v1.41/images/create?fromImage=alpine", None, None),
        ("GET", "/v1.41/containers/json", None, None),
    ],
)
def test_targets(method: str, uri: str, target: str | None, kind: str | None) -> None:
    op = classify(req(method, uri, Content_Length="0"))
    assert (op.target, op.target_kind) == (target, kind)


@pytest.mark.parametrize(
    ("uri", "action", "path"),
    [
        ("/v1.41/containers/json?x=/version", "container:list", "/containers/json"),
        ("/containers/json?x=/v1.41/containers/create", "container:list", "/containers/json"),
        ("/v1.41/images/json?fromImage=/images/create", "image:list", "/images/json"),
        ("http://docker/v1.41/%63ontainers/json?all=1", "container:list", "/containers/json"),
    ],
)
def test_query_text_never_reclassifies(uri: str, action: str, path: str) -> None:
    op = classify(req("GET", uri))
    assert (op.action, op.path, op.route) == (action, path, path)


def test_images_create_with_both_sources_is_denied() -> None:
    with pytest.raises(RequestError, match="ambiguous"):
        classify(req("POST", "/v1.41/images/create?fromImage=a&fromSrc=-", Content_Length="0"))


def test_operation_fields() -> None:
    op = classify(req("GET", "/v1.41/containers/c1/logs?follow=1&tail=all"))
    assert op == Operation(
        action="container:logs", method="GET", path="/containers/c1/logs", api_version="1.41",
        query={"follow": ("1",), "tail": ("all",)}, target="c1", target_kind="container",
        route="/containers/{name:.*}/logs",
    )  # fmt: skip


_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", ""])
_URIS = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="/v1.4%2F0?&=;+#acontiersjbu:-", max_size=60),
    st.sampled_from(
        [
            "/v1.41/containers/create",
            "/containers/x/start",
            "/v1.41/images/create?fromSrc=-",
            "/v1.41/auth",
            "/v1.41/build",
            "/v1.41/services/create",
            "/debug/vars",
        ]
    ),
)
_HEADER_VALUES = st.one_of(st.text(max_size=20), st.sampled_from([JSON, "text/plain", "0", "10", "2000000"]))
_HEADERS = st.dictionaries(st.sampled_from(["Content-Type", "content-length", "Content-Length", "X-A"]), _HEADER_VALUES)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_BODIES = st.one_of(st.none(), st.binary(max_size=40), _JSON_VALUES.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_METHODS, _URIS, _HEADERS, _BODIES)
def test_fuzz_only_authz_errors_escape(method: str, uri: str, headers: dict[str, str], body: bytes | None) -> None:
    try:
        op = classify(DockerRequest(method, uri, headers, body))
    except AuthzError:
        return
    assert op.action in ALL_ACTIONS
    assert op.path.startswith("/")
