"""container:exec content rules (exec.privileged, exec.run_as_root) on captures and variants."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.classify import classify
from authz.memory import MemoryOwnership
from authz.policy.compiled import compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.model import Policy, PolicySnapshot
from authz.policy.rules import EvalContext
from authz.request import Decision, DockerRequest, IdentitySource, Operation, Subject
from tests.support.captures import capture_request

BUILTIN = compile_snapshot(PolicySnapshot(revision=1, policy=Policy()))
BOX = "b0" * 32


def decide(operation: Operation, role: str = "developer") -> Decision:
    owners = MemoryOwnership()
    owners.record("container", BOX, "box", "alice")  # the captures exec into alice's "box"
    subject = Subject("alice", IdentitySource.TOKEN, roles=(role,))
    return evaluate(BUILTIN, subject, operation, EvalContext(ownership=owners))


def exec_op(body: dict[str, Any] | None) -> Operation:
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
    return classify(DockerRequest("POST", "/v1.41/containers/box/exec", headers=headers, body=data or None))


def denied(decision: Decision, rule: str, field: str, *words: str) -> None:
    assert not decision.allow, decision.reason
    assert f"[rule roles.{decision.role}.{rule}, field {field}]" in decision.message, decision.message
    for word in words:
        assert word in decision.message, decision.message


def test_privileged_exec_capture() -> None:
    operation = classify(capture_request("exec-privileged__03_POST_containers-box-exec.json"))
    denied(decide(operation), "exec.privileged", "Privileged", "privileged exec (docker exec --privileged)")
    denied(decide(operation, "operator"), "exec.privileged", "Privileged")  # operator may exec as root, not privileged
    assert decide(operation, "admin").allow


def test_root_exec_capture() -> None:
    operation = classify(capture_request("exec-user-root__03_POST_containers-box-exec.json"))
    denied(decide(operation), "exec.run_as_root", "User", "user 'root' is root", "pass --user UID")
    assert decide(operation, "operator").allow
    assert decide(operation, "admin").allow


def test_exec_without_user_is_denied_when_root_is_forbidden() -> None:
    operation = classify(capture_request("exec__03_POST_containers-box-exec.json"))
    denied(decide(operation), "exec.run_as_root", "User", "runs as the container's user", "pass --user UID")
    assert decide(operation, "operator").allow


@pytest.mark.parametrize("user", ["0", "0:0", "root:root", ":1000", "+0", "1000:0", "1000:root"])
def test_root_spellings(user: str) -> None:
    denied(decide(exec_op({"User": user, "Cmd": ["id"]})), "exec.run_as_root", "User", "exec as root is not allowed")


@pytest.mark.parametrize("user", ["1000", "1000:1000", "app"])
def test_non_root_exec_is_allowed(user: str) -> None:
    assert decide(exec_op({"User": user, "Cmd": ["id"]})).allow


def test_lower_case_keys_are_read_like_go() -> None:
    denied(decide(exec_op({"user": "1000", "privileged": True, "cmd": ["id"]})), "exec.privileged", "Privileged")


def test_missing_exec_body_is_denied() -> None:
    operation = exec_op(None)
    denied(decide(operation), "exec", "body", "cannot be judged")
    denied(decide(operation, "admin"), "exec", "body")


def test_exec_into_someone_elses_container_is_an_ownership_matter() -> None:
    data = json.dumps({"User": "1000", "Cmd": ["id"]}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
    other = classify(DockerRequest("POST", "/v1.41/containers/theirs/exec", headers=headers, body=data))
    denied(decide(other), "ownership", "container 'theirs'")
