"""Property 1 over the plugin's HTTP endpoints (docs/fuzzing.md).

Whatever reaches the plugin socket — random bytes, random JSON, captured daemon payloads with
mutated fields, URIs, bodies and headers — the daemon gets HTTP 200 with a JSON object whose
``Allow`` is a boolean, within the time budget, and no exception escapes (``check_reply``).

Every *allow* must also be justified (``check_justified``), by oracles independent of the code
under test: the request parses and classifies, its caller is one unambiguous known user (or it is
a ping), that user's built-in role allows the action, and a JSON body the route reads is one Go
and Python read the same way.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.classify import classify
from authz.classify.routes import Body, match_route
from authz.classify.uri import MAX_API_VERSION, MIN_API_VERSION, parse_uri
from authz.errors import RouteError
from authz.protocol import parse_request
from authz.request import Phase
from tests.fuzz.harness import CASES, USERS, FuzzStack, Reply, check_reply, fuzz_settings
from tests.fuzz.oracles import claimed_users, go_reads_differently, role_may
from tests.fuzz.strategies import URI_MUTATIONS, json_values, mutated_wires, request_seeds, response_seeds

_JSON_BODIES = (Body.JSON, Body.JSON_OPTIONAL)
_START = "/containers/{name:.*}/start"


def check_justified(stack: FuzzStack, payload: dict[str, Any] | bytes, reply: Reply) -> None:
    """An AuthZReq allow must be explainable without trusting the plugin's own decision."""
    if not reply.allow:
        return
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = parse_request(raw, Phase.REQUEST)  # allowed, so it must parse
    operation = classify(request)
    route = match_route(request.method, operation.path).route
    if request.body is not None and (route.body in _JSON_BODIES or route.pattern == _START):
        differs = go_reads_differently(request.body)
        assert differs is None, f"allowed a {operation.action} body Go reads differently: {differs}"
    if operation.action == "system:ping":
        return
    valid = {user: token for user, token in stack.tokens.items() if user in USERS}
    users = claimed_users(request, valid)
    assert len(users) == 1, f"allowed {operation.action} with identity claims {users or 'none'}"
    (user,) = users
    assert user in USERS, f"allowed {operation.action} for unknown user {user!r}"
    assert role_may(USERS[user], operation.action), f"allowed {operation.action} to {user} ({USERS[user]})"


def _both_phases(stack: FuzzStack, payload: dict[str, Any] | bytes) -> None:
    reply = stack.call(payload, "AuthZReq")
    check_reply(reply, "AuthZReq")
    check_justified(stack, payload, reply)
    check_reply(stack.call(payload, "AuthZRes"), "AuthZRes")


@fuzz_settings(200)
@given(raw=st.binary(max_size=600) | st.sampled_from((b"", b" ", b"\n", b"null", b"{}", b"[]", b'""', b"0")))
def test_random_bytes(stack: FuzzStack, raw: bytes) -> None:
    reply = stack.call(raw, "AuthZReq")
    check_reply(reply)
    assert reply.allow is False, f"random bytes were allowed: {raw!r}"
    check_reply(stack.call(raw, "AuthZRes"), "AuthZRes")
    check_reply(stack.post("/Plugin.Activate", raw, count_as="Activate"), "Activate")


@fuzz_settings(200)
@given(doc=json_values())
def test_random_json(stack: FuzzStack, doc: Any) -> None:
    _both_phases(stack, json.dumps(doc).encode())


_WIRE_VALUES = json_values(6)


@fuzz_settings(200)
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "RequestMethod": st.sampled_from(("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS")) | _WIRE_VALUES,
            "RequestUri": st.sampled_from(("/_ping", "/v1.41/containers/json", "/containers/create", "/info"))
            | st.text(max_size=40)
            | _WIRE_VALUES,
            "RequestBody": st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()) | _WIRE_VALUES,
            "RequestHeaders": st.dictionaries(st.text(max_size=15), st.text(max_size=30), max_size=4) | _WIRE_VALUES,
            "User": st.sampled_from(("root", "dev", "val", "nobody", "")) | _WIRE_VALUES,
            "UserAuthNMethod": st.just("TLS") | _WIRE_VALUES,
            "RequestPeerCertificates": st.lists(st.text(max_size=20), max_size=2) | _WIRE_VALUES,
            "ResponseStatusCode": st.integers(-(2**70), 2**70) | _WIRE_VALUES,
            "ResponseBody": _WIRE_VALUES,
            "ResponseHeaders": _WIRE_VALUES,
        },
    )
)
def test_wire_shaped_json(stack: FuzzStack, doc: dict[str, Any]) -> None:
    _both_phases(stack, doc)


@fuzz_settings(400)
@given(data=st.data())
def test_mutated_captured_requests(stack: FuzzStack, data: st.DataObject) -> None:
    case = data.draw(mutated_wires("req", stack.tokens), label="case")
    reply = stack.call(case.payload, "AuthZReq", count_as="AuthZReq mutated")
    check_reply(reply)
    check_justified(stack, case.payload, reply)


@fuzz_settings(200)
@given(data=st.data())
def test_mutated_captured_responses(stack: FuzzStack, data: st.DataObject) -> None:
    case = data.draw(mutated_wires("res", stack.tokens), label="case")
    check_reply(stack.call(case.payload, "AuthZRes", count_as="AuthZRes mutated"), "AuthZRes")


_ENDPOINTS = ("/Plugin.Activate", "/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes", "/", "/AuthZPlugin.authzreq",
              "/Plugin.Activate/x", "/AuthZPlugin.AuthZReq?x=1", "//AuthZPlugin.AuthZReq")  # fmt: skip
_PLUGIN_CTYPES = (None, "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                  "multipart/form-data", "text/plain; charset=latin-1", "application/json; charset=utf-16",
                  "")  # fmt: skip


@fuzz_settings(150)
@given(
    endpoint=st.sampled_from(_ENDPOINTS),
    method=st.sampled_from(("POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS")),
    content_type=st.sampled_from(_PLUGIN_CTYPES),
    raw=st.binary(max_size=200) | st.just(b'{"RequestMethod":"HEAD","RequestUri":"/_ping"}') | st.just(b"a=1&b=2"),
)
def test_plugin_http_level(stack: FuzzStack, endpoint: str, method: str, content_type: str | None, raw: bytes) -> None:
    """The plugin's own HTTP surface: wrong methods, paths and Content-Types still get a JSON reply."""
    reply = stack.post(endpoint, raw, content_type=content_type, method=method, count_as="plugin HTTP")
    routed = {"/Plugin.Activate": "Activate", "/AuthZPlugin.AuthZReq": "AuthZReq", "/AuthZPlugin.AuthZRes": "AuthZRes"}
    phase = routed.get(endpoint.partition("?")[0], "other") if method == "POST" else "other"
    check_reply(reply, phase)


def test_oversized_plugin_call_is_a_json_deny(stack: FuzzStack) -> None:
    """Over MAX_CONTENT_LENGTH (64 MiB): Flask's 413 must still reach the daemon as a JSON deny."""
    reply = stack.post("/AuthZPlugin.AuthZReq", b" " * (64 * 1024 * 1024 + 1), count_as="oversized")
    check_reply(reply, "other")
    assert reply.allow is False


@pytest.mark.parametrize("phase", ["AuthZReq", "AuthZRes"])
def test_every_capture_is_decided_cleanly(stack: FuzzStack, phase: str) -> None:
    """The unmutated seeds, for every user and anonymous: the baseline the mutations start from."""
    seeds = request_seeds() if phase == "AuthZReq" else response_seeds()
    allowed = 0
    for _name, wire in seeds:
        users = USERS if phase == "AuthZReq" else ("root",)  # AuthZRes: the owner-recording paths
        for token in (None, *(stack.tokens[u] for u in users)):
            payload = dict(wire)
            if token is not None:
                payload["RequestHeaders"] = {**(wire.get("RequestHeaders") or {}), "X-Authz-Token": token}
            reply = stack.call(payload, phase, count_as=f"{phase} captures")
            check_reply(reply, phase)
            if phase == "AuthZReq":
                check_justified(stack, payload, reply)
                allowed += reply.allow
    if phase == "AuthZReq":
        assert allowed > len(seeds), "the admin alone should be allowed nearly every captured request"


@fuzz_settings(300)
@given(data=st.data())
def test_parse_uri_raises_only_route_error(data: st.DataObject) -> None:
    """Any RequestUri: a RouteError, or a clean decoded path and a supported version."""
    seed = data.draw(st.sampled_from([wire["RequestUri"] for _, wire in request_seeds()]) | st.text(max_size=50))
    for _ in range(data.draw(st.integers(0, 3))):
        seed = URI_MUTATIONS[data.draw(st.sampled_from(sorted(URI_MUTATIONS)))](data.draw, seed)
    CASES["parse_uri"] += 1
    try:
        parsed = parse_uri(seed)
    except RouteError:
        return
    assert parsed.path.startswith("/"), parsed
    segments = parsed.path.split("/")[1:]
    assert "" not in segments[:-1], parsed  # no "//" (a trailing "/" is kept by the router)
    assert "." not in segments, parsed
    assert ".." not in segments, parsed
    assert not any(ch < " " or ch == "\x7f" for ch in parsed.path), parsed
    if parsed.api_version is not None:
        major, minor = map(int, parsed.api_version.split("."))
        assert MIN_API_VERSION <= (major, minor) <= MAX_API_VERSION, parsed


@pytest.mark.parametrize("phase", ["AuthZReq", "AuthZRes"])
@pytest.mark.parametrize("nest", [b"[", b'{"a":'])
def test_deeply_nested_wire_document(stack: FuzzStack, phase: str, nest: bytes) -> None:
    """10,000 levels inside the plugin-call JSON itself (not the base64 body): a clean decision."""
    close = b"]" if nest == b"[" else b"}"
    raw = b'{"RequestMethod": "GET", "RequestUri": "/_ping", "X": ' + nest * 10_000 + b"1" * (nest != b"[")
    raw += close * 10_000 + b"}"
    reply = stack.call(raw, phase, count_as="deep wire")
    check_reply(reply, phase)
    if phase == "AuthZReq":
        assert reply.allow is False
