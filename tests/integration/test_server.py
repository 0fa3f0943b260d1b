"""The plugin's Flask app in-process: real protocol, classifier, engine, tokens; in-memory store."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from authz.decide import Authorizer
from authz.identity.token import JwtVerifier, KeyStore, issue_token
from authz.memory import MemoryAuditSink, MemoryOwnership, StaticPolicySource
from authz.policy.schema import parse_policy
from authz.server import create_app

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "captures"
POLICY = {
    "version": 1,
    "users": {"alice": {"roles": ["developer"]}, "root": {"roles": ["admin"]}, "val": {"roles": ["viewer"]}},
}


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.keys = KeyStore(tmp / "keys").load_or_create()
        self.source = StaticPolicySource(parse_policy(POLICY))
        self.audit = MemoryAuditSink()
        self.ownership = MemoryOwnership()
        self.authorizer = Authorizer(self.source, self.audit, JwtVerifier(self.keys), self.ownership, node="t")
        self.client: FlaskClient = create_app(self.authorizer).test_client()

    def token(self, user: str) -> str:
        return issue_token(self.keys, user, 3600, time.time()).token

    def call(self, payload: dict[str, Any] | bytes, phase: str = "AuthZReq") -> dict[str, Any]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = self.client.post(f"/AuthZPlugin.{phase}", data=data)  # no Content-Type, like dockerd
        assert response.status_code == 200
        result: dict[str, Any] = json.loads(response.data)
        return result


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def capture(name: str, phase: str = "authz_req") -> dict[str, Any]:
    wire: dict[str, Any] = json.loads((CAPTURES / name).read_text())[phase]["wire"]
    return wire


def with_token(payload: dict[str, Any], token: str) -> dict[str, Any]:
    return {**payload, "RequestHeaders": {**payload.get("RequestHeaders", {}), "X-Authz-Token": token}}


def test_activate_answers_authz(stack: Stack) -> None:
    response = stack.client.post("/Plugin.Activate", data=b"")
    assert json.loads(response.data) == {"Implements": ["authz"]}


def test_ping_is_allowed_without_identity(stack: Stack) -> None:
    assert stack.call(capture("version__01_HEAD_ping.json")) == {"Allow": True}


def test_anonymous_version_is_denied_and_audited(stack: Stack) -> None:
    result = stack.call(capture("version__02_GET_version.json"))
    assert result["Allow"] is False
    assert "anonymous" in result["Msg"]
    assert stack.audit.events[-1].allow is False
    assert stack.audit.events[-1].action == "system:version"


def test_viewer_token_lists_containers(stack: Stack) -> None:
    result = stack.call(with_token(capture("ps__02_GET_containers-json.json"), stack.token("val")))
    assert result == {"Allow": True}
    event = stack.audit.events[-1]
    assert (event.user, event.source, event.action, event.allow) == ("val", "token", "container:list", True)


def test_admin_may_run_privileged_and_viewer_may_not(stack: Stack) -> None:
    payload = capture("run-privileged__02_POST_containers-create.json")
    assert stack.call(with_token(payload, stack.token("root")))["Allow"] is True
    denied = stack.call(with_token(payload, stack.token("val")))
    assert denied["Allow"] is False
    assert denied["Msg"].startswith("authz: denied container:create for val (roles: viewer)")


def test_create_response_records_the_owner(stack: Stack) -> None:
    token = stack.token("alice")
    response = with_token(capture("run-plain__02_POST_containers-create.json", "authz_res"), token)
    assert stack.call(response, "AuthZRes") == {"Allow": True}
    container_id = json.loads(base64.b64decode(response["ResponseBody"]))["Id"]
    assert stack.ownership.owner_of("container", container_id) == "alice"
    assert stack.ownership.owner_of("container", container_id[:12]) == "alice"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'{"RequestMethod":"GET"}',
        b"\xff\xfe",
        json.dumps({"RequestMethod": "GET", "RequestUri": "/nope"}).encode(),
    ],
)
def test_garbage_is_denied_never_5xx(stack: Stack, raw: bytes) -> None:
    result = stack.call(raw)
    assert result["Allow"] is False
    assert result["Msg"].startswith("authz: denied")
    assert stack.audit.events, "the denial must be audited too"


def test_expired_token_is_denied_with_a_clear_message(stack: Stack) -> None:
    old = issue_token(stack.keys, "val", 60, time.time() - 3600).token
    result = stack.call(with_token(capture("ps__02_GET_containers-json.json"), old))
    assert result["Allow"] is False
    assert "expired" in result["Msg"]


def test_audit_failure_turns_an_allow_into_a_deny(stack: Stack) -> None:
    def broken(_event: object) -> None:
        raise OSError("disk full")

    stack.audit.write = broken  # type: ignore[method-assign]
    result = stack.call(with_token(capture("ps__02_GET_containers-json.json"), stack.token("val")))
    assert result["Allow"] is False
    assert "audit" in result["Msg"]


def test_response_phase_never_denies(stack: Stack) -> None:
    assert stack.call(b"{}", "AuthZRes")["Allow"] is True
