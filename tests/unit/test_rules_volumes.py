"""Volume rules (authz/policy/rules/volumes.py): drivers, driver options, named-volume ownership (B10).

Built from the captured volume-create, volume-create-bind, run-inline-volume-bind and
run-volume-hostroot requests and hostile variants; each test asserts decision, rule and field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from authz.classify import classify
from authz.memory import MemoryOwnership, StaticPolicySource
from authz.policy.compiled import CompiledPolicy, compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.rules import EvalContext
from authz.policy.schema import parse_policy
from authz.request import Decision, IdentitySource, Operation, Subject
from tests.support.captures import capture_names, capture_request

ROLES: dict[str, Any] = {
    "nfs": {"extends": ["developer"], "volumes": {"drivers": ["local", "nfs-*"], "driver_opts": True}},
}


def policy() -> CompiledPolicy:
    return compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": ROLES})).current())


def operation(label: str, *, edit: Callable[[Any], None] | None = None) -> Operation:
    name = next(n for n in capture_names() if n.startswith(f"{label}__02") and "_ping" not in n)
    request = capture_request(name)
    if edit is not None:
        doc = json.loads(request.body or b"{}")
        edit(doc)
        raw = json.dumps(doc).encode()
        request = replace(request, body=raw, headers={**request.headers, "Content-Length": str(len(raw))})
    return classify(request)


def decide(op: Operation, role: str, table: MemoryOwnership | None = None) -> Decision:
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    context = EvalContext(ownership=table or MemoryOwnership(), image_user=lambda _ref: "1000")
    return evaluate(policy(), subject, op, context)


def assert_denied(decision: Decision, role: str, rule: str, field: str) -> None:
    assert not decision.allow
    assert f"[rule roles.{role}.{rule}, field {field}]" in decision.message, decision.message


def hostroot_owned_by(owner: str) -> MemoryOwnership:
    table = MemoryOwnership()
    table.record("volume", "hostroot", "hostroot", owner)
    return table


def host_config(**changes: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["HostConfig"].update(changes)

    return edit


# ---------------------------------------------------------------- volume create


def test_a_plain_local_volume_is_allowed() -> None:
    assert decide(operation("volume-create"), "developer").allow


def _create_named(name: str, role: str, exists: Callable[[str], bool | None] | None,
                  table: MemoryOwnership | None = None) -> Decision:  # fmt: skip
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    context = EvalContext(ownership=table or MemoryOwnership(), volume_exists=exists)
    return evaluate(policy(), subject, operation("volume-create", edit=lambda d: d.update(Name=name)), context)


def test_a_volume_the_daemon_has_but_nobody_is_recorded_for_is_not_claimed() -> None:
    """Made before the plugin, or by the daemon for a run -v: asked of the daemon at the request."""
    denied = _create_named("pgdata", "developer", lambda name: name == "pgdata")
    assert_denied(denied, "developer", "ownership", "Name")
    assert "volume 'pgdata' already exists and is not recorded as created by anyone" in denied.message
    assert _create_named("newdata", "developer", lambda name: name == "pgdata").allow
    assert _create_named("pgdata", "admin", lambda _name: True).allow  # ownership: any is not asked
    unknown = _create_named("pgdata", "developer", lambda _name: None)
    assert "cannot be checked: the daemon did not say whether it exists" in unknown.message


def test_your_own_volume_is_not_asked_about_and_anonymous_names_are_refused() -> None:
    def never(name: str) -> bool:
        raise AssertionError(f"asked the daemon about {name}")

    mine = MemoryOwnership()
    mine.record("volume", "v1", "v1", "alice")
    assert _create_named("v1", "developer", never, mine).allow
    anonymous = _create_named("ab" * 32, "developer", None)  # no daemon reads: still refused
    assert "has the form of the daemon's names for anonymous volumes (64 hex digits)" in anonymous.message
    assert _create_named("ab" * 32, "admin", None).allow


def test_creating_a_volume_another_user_owns_is_refused_up_front() -> None:
    """The daemon would answer 201 with the existing volume (v1), which would still be bob's."""
    table = MemoryOwnership()
    table.record("volume", "v1", "v1", "bob")
    assert_denied(decide(operation("volume-create"), "developer", table), "developer", "ownership", "Name")
    assert decide(operation("volume-create"), "admin", table).allow
    mine = MemoryOwnership()
    mine.record("volume", "v1", "v1", "alice")
    assert decide(operation("volume-create"), "developer", mine).allow


def test_driver_options_are_denied_without_driver_opts() -> None:
    denied = decide(operation("volume-create-bind"), "developer")
    assert_denied(denied, "developer", "volumes.driver_opts", "DriverOpts")
    assert "(device=/,o=bind,type=none)" in denied.message
    assert_denied(decide(operation("volume-create-bind"), "operator"), "operator", "volumes.driver_opts", "DriverOpts")
    assert decide(operation("volume-create-bind"), "admin").allow


@pytest.mark.parametrize(("driver", "allowed"), [("", True), ("nfs-csi", True), ("nfs", False), ("rexray/ebs", False)])
def test_the_effective_driver_must_be_listed(driver: str, allowed: bool) -> None:
    decision = decide(operation("volume-create", edit=lambda d: d.update(Driver=driver)), "nfs")
    if allowed:
        assert decision.allow, decision.message
    else:
        assert_denied(decision, "nfs", "volumes.drivers", "Driver")
        assert f"volume driver {driver!r} is not allowed (allowed: local, nfs-*)" in decision.message


def test_lower_case_driver_opts_are_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        doc.clear()
        doc.update({"name": "x", "driver": "local", "driveropts": {"type": "none", "o": "bind", "device": "/"}})

    assert_denied(decide(operation("volume-create", edit=edit), "developer"), "developer", "volumes.driver_opts",
                  "DriverOpts")  # fmt: skip


def test_a_cluster_volume_needs_driver_opts() -> None:
    op = operation("volume-create", edit=lambda d: d.update(ClusterVolumeSpec={"AccessMode": {}}))
    assert_denied(decide(op, "developer"), "developer", "volumes.driver_opts", "ClusterVolumeSpec")


# ---------------------------------------------------------------- inline volumes in container create


def test_an_inline_local_bind_volume_is_denied() -> None:
    denied = decide(operation("run-inline-volume-bind"), "developer")
    field = "HostConfig.Mounts[0].VolumeOptions.DriverConfig.Options"
    assert_denied(denied, "developer", "volumes.driver_opts", field)
    assert "(device=/etc,o=bind,type=none)" in denied.message


def test_an_inline_volume_of_the_host_root_is_denied_for_operator_too() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Options"]["device"] = "/"

    denied = decide(operation("run-inline-volume-bind", edit=edit), "operator")
    assert_denied(denied, "operator", "volumes.driver_opts", "HostConfig.Mounts[0].VolumeOptions.DriverConfig.Options")
    assert "device=/," in denied.message


def test_inline_options_without_a_driver_name_use_local_and_are_denied() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"]["Name"] = ""

    denied = decide(operation("run-inline-volume-bind", edit=edit), "developer")
    assert_denied(denied, "developer", "volumes.driver_opts", "HostConfig.Mounts[0].VolumeOptions.DriverConfig.Options")


def test_the_inline_driver_name_is_checked() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["Mounts"][0]["VolumeOptions"]["DriverConfig"] = {"Name": "rexray"}

    denied = decide(operation("run-inline-volume-bind", edit=edit), "developer")
    assert_denied(denied, "developer", "volumes.drivers", "HostConfig.Mounts[0].VolumeOptions.DriverConfig.Name")


def test_the_volume_driver_of_the_host_config_is_checked() -> None:
    denied = decide(operation("run-volume-hostroot", edit=host_config(VolumeDriver="convoy")), "operator")
    assert_denied(denied, "operator", "volumes.drivers", "HostConfig.VolumeDriver")


def test_an_anonymous_inline_volume_without_options_is_allowed() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["Mounts"] = [{"Type": "volume", "Target": "/data"}]

    assert decide(operation("run-inline-volume-bind", edit=edit), "developer").allow


# ---------------------------------------------------------------- named volumes (ownership)


def test_a_named_volume_of_another_user_is_denied_for_own() -> None:
    denied = decide(operation("run-volume-hostroot"), "developer", hostroot_owned_by("bob"))
    assert_denied(denied, "developer", "ownership", "HostConfig.Binds[0]")
    assert "'hostroot' (owned by another user)" in denied.message


def test_an_unknown_named_volume_must_be_created_first() -> None:
    denied = decide(operation("run-volume-hostroot"), "developer")
    assert_denied(denied, "developer", "ownership", "HostConfig.Binds[0]")
    assert "create it first with `docker volume create hostroot`" in denied.message


def test_an_own_named_volume_is_allowed() -> None:
    assert decide(operation("run-volume-hostroot"), "developer", hostroot_owned_by("alice")).allow


def test_ownership_any_may_use_every_named_volume() -> None:
    assert decide(operation("run-volume-hostroot"), "operator", hostroot_owned_by("bob")).allow


def test_a_named_volume_in_mounts_is_checked_too() -> None:
    edit = host_config(Binds=None, Mounts=[{"Type": "volume", "Source": "hostroot", "Target": "/h"}])
    op = operation("run-volume-hostroot", edit=edit)
    assert_denied(decide(op, "developer", hostroot_owned_by("bob")), "developer", "ownership",
                  "HostConfig.Mounts[0].Source")  # fmt: skip
    assert decide(op, "developer", hostroot_owned_by("alice")).allow


def test_lower_case_binds_are_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        hc = doc.pop("HostConfig")
        hc.pop("Binds")
        hc["binds"] = ["hostroot:/h"]
        doc["hostconfig"] = hc

    denied = decide(operation("run-volume-hostroot", edit=edit), "developer", hostroot_owned_by("bob"))
    assert_denied(denied, "developer", "ownership", "HostConfig.Binds[0]")


def test_a_create_without_a_body_is_denied_not_ignored() -> None:
    request = capture_request(next(n for n in capture_names() if n.startswith("volume-create__02")))
    op = classify(replace(request, body=None, headers={"Content-Length": "0"}))
    assert_denied(decide(op, "developer"), "developer", "volumes", "body")
