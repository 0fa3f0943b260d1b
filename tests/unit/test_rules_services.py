"""Swarm service rules (authz/policy/rules/services.py, B15) and self-protection of the built-in roles.

A ServiceSpec is judged as strictly as a container create for every role that allows
service:create/update. Built from the captured service-create request (bind of /, CAP_SYS_ADMIN,
an image from a local registry) and variants of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from authz import actions
from authz.classify import classify
from authz.memory import MemoryOwnership, StaticPolicySource
from authz.policy.compiled import CompiledPolicy, compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.rules import EvalContext
from authz.policy.schema import parse_policy
from authz.request import Decision, IdentitySource, Operation, Subject
from tests.support.captures import capture_names, capture_request

SPEC = "TaskTemplate.ContainerSpec"
# A developer that may run services; its image allowlist covers the captured local registry.
ROLES: dict[str, Any] = {
    "svc": {
        "extends": ["developer"],
        "allow": ["service:*"],
        "images": {"allow": ["127.0.0.1:5999/**", "docker.io/library/*"]},
        "containers": {"bind_mounts": ["/srv"], "bind_mounts_read_only": True},
    },
}


def policy() -> CompiledPolicy:
    return compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": ROLES})).current())


def service(edit: Callable[[Any], None] | None = None, *, uri: str | None = None) -> Operation:
    """The captured service create, made acceptable to ``svc`` unless ``edit`` changes it back."""
    request = capture_request(next(n for n in capture_names() if n.startswith("service-create__02")))
    doc = json.loads(request.body or b"{}")
    spec = doc["TaskTemplate"]["ContainerSpec"]
    spec["Mounts"] = [{"Type": "bind", "Source": "/srv/data", "Target": "/data", "ReadOnly": True}]
    spec["CapabilityAdd"] = ["CAP_NET_BIND_SERVICE"]
    spec["User"] = "1000"
    if edit is not None:
        edit(doc)
    raw = json.dumps(doc).encode()
    headers = {**request.headers, "Content-Length": str(len(raw))}
    return classify(replace(request, uri=uri or request.uri, body=raw, headers=headers))


def captured() -> Operation:
    return classify(capture_request(next(n for n in capture_names() if n.startswith("service-create__02"))))


def decide(op: Operation, role: str, owners: MemoryOwnership | None = None, image_user: str | None = None) -> Decision:
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    context = EvalContext(ownership=owners or MemoryOwnership(), image_user=lambda _ref: image_user)
    return evaluate(policy(), subject, op, context)


def assert_denied(decision: Decision, role: str, rule: str, field: str) -> None:
    assert not decision.allow
    assert f"[rule roles.{role}.{rule}, field {field}]" in decision.message, decision.message


def container_spec(**changes: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["TaskTemplate"]["ContainerSpec"].update(changes)

    return edit


def task_template(**changes: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["TaskTemplate"].update(changes)

    return edit


# ---------------------------------------------------------------- the captured spec


def test_the_captured_service_is_denied_for_each_of_its_powers() -> None:
    denied = decide(captured(), "svc")
    assert_denied(denied, "svc", "containers.bind_mounts", f"{SPEC}.Mounts[0].Source")
    assert_denied(denied, "svc", "containers.capabilities", f"{SPEC}.CapabilityAdd[0]")
    assert_denied(denied, "svc", "containers.run_as_root", f"{SPEC}.User")
    assert "bind mount of host path / is not allowed (allowed prefixes: /srv)" in denied.message
    assert "capability SYS_ADMIN is not allowed (allowed: NET_BIND_SERVICE)" in denied.message


def test_the_captured_service_is_allowed_to_admin() -> None:
    assert decide(captured(), "admin").allow


def test_a_confined_service_is_allowed() -> None:
    decision = decide(service(), "svc")
    assert decision.allow, decision.message


def test_update_is_judged_like_create() -> None:
    op = service(container_spec(CapabilityAdd=["CAP_SYS_ADMIN"]), uri="/v1.41/services/svc/update?version=3")
    assert op.action == "service:update"
    assert_denied(decide(op, "svc"), "svc", "containers.capabilities", f"{SPEC}.CapabilityAdd[0]")


# ---------------------------------------------------------------- image, mounts, user


@pytest.mark.parametrize(
    ("image", "rule"),
    [("evil.example.com/x:1", "images.allow"), ("3f2a9c", "images.allow"), ("", "images.allow")],
)
def test_the_service_image_follows_the_allowlist(image: str, rule: str) -> None:
    assert_denied(decide(service(container_spec(Image=image)), "svc"), "svc", rule, f"{SPEC}.Image")


def test_lower_case_keys_are_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        spec = doc["TaskTemplate"].pop("ContainerSpec")
        del spec["Image"]
        doc["TaskTemplate"]["containerspec"] = {**spec, "image": "evil.example.com/x"}

    assert_denied(decide(service(edit), "svc"), "svc", "images.allow", f"{SPEC}.Image")


def test_bind_mounts_must_be_read_only_and_keep_private_propagation() -> None:
    rw = [{"Type": "bind", "Source": "/srv/data", "Target": "/data"}]
    assert_denied(decide(service(container_spec(Mounts=rw)), "svc"), "svc", "containers.bind_mounts_read_only",
                  f"{SPEC}.Mounts[0].ReadOnly")  # fmt: skip
    shared = [{**rw[0], "ReadOnly": True, "BindOptions": {"Propagation": "rshared"}}]
    assert_denied(decide(service(container_spec(Mounts=shared)), "svc"), "svc", "containers.unconfined",
                  f"{SPEC}.Mounts[0].BindOptions.Propagation")  # fmt: skip


def test_bind_prefixes_compare_whole_path_components() -> None:
    mounts = [{"Type": "bind", "Source": "/srvx/../etc", "Target": "/data", "ReadOnly": True}]
    denied = decide(service(container_spec(Mounts=mounts)), "svc")
    assert_denied(denied, "svc", "containers.bind_mounts", f"{SPEC}.Mounts[0].Source")
    assert "host path /etc" in denied.message


def test_service_volumes_follow_the_volume_rules() -> None:
    inline = [{"Type": "volume", "Target": "/h", "VolumeOptions": {"DriverConfig": {"Name": "local",
               "Options": {"type": "none", "o": "bind", "device": "/"}}}}]  # fmt: skip
    assert_denied(decide(service(container_spec(Mounts=inline)), "svc"), "svc", "volumes.driver_opts",
                  f"{SPEC}.Mounts[0].VolumeOptions.DriverConfig.Options")  # fmt: skip
    named = [{"Type": "volume", "Source": "hostroot", "Target": "/h"}]
    assert_denied(decide(service(container_spec(Mounts=named)), "svc"), "svc", "ownership",
                  f"{SPEC}.Mounts[0].Source")  # fmt: skip


def test_mount_types_the_plugin_cannot_judge_are_denied() -> None:
    npipe = [{"Type": "npipe", "Source": "x", "Target": "/x"}]
    assert_denied(decide(service(container_spec(Mounts=npipe)), "svc"), "svc", "containers.unconfined",
                  f"{SPEC}.Mounts[0].Type")  # fmt: skip
    tmpfs = [{"Type": "tmpfs", "Target": "/tmp"}]
    assert decide(service(container_spec(Mounts=tmpfs)), "svc").allow


@pytest.mark.parametrize("user", ["root", "0", "00", "1000:0", ":1000"])
def test_root_users_and_groups_are_denied(user: str) -> None:
    denied = decide(service(container_spec(User=user)), "svc")
    assert_denied(denied, "svc", "containers.run_as_root", f"{SPEC}.User")


def test_an_unset_user_is_judged_by_the_image_user() -> None:
    op = service(container_spec(User=""))
    assert decide(op, "svc", image_user="app").allow
    assert_denied(decide(op, "svc", image_user=""), "svc", "containers.run_as_root", f"{SPEC}.User")
    assert_denied(decide(op, "svc", image_user=None), "svc", "containers.run_as_root", f"{SPEC}.User")


def test_the_root_group_is_denied() -> None:
    assert_denied(decide(service(container_spec(Groups=["0"])), "svc"), "svc", "containers.run_as_root",
                  f"{SPEC}.Groups[0]")  # fmt: skip


# ---------------------------------------------------------------- confinement


@pytest.mark.parametrize(
    ("privileges", "field"),
    [
        ({"Seccomp": {"Mode": "unconfined"}}, "Seccomp.Mode"),
        ({"Seccomp": {"Mode": "custom", "Profile": "e30="}}, "Seccomp.Mode"),
        ({"AppArmor": {"Mode": "disabled"}}, "AppArmor.Mode"),
        ({"SELinuxContext": {"Disable": True}}, "SELinuxContext.Disable"),
        ({"SELinuxContext": {"Type": "spc_t"}}, "SELinuxContext.Type"),
    ],
)
def test_weakened_confinement_needs_unconfined(privileges: dict[str, Any], field: str) -> None:
    denied = decide(service(container_spec(Privileges=privileges)), "svc")
    assert_denied(denied, "svc", "containers.unconfined", f"{SPEC}.Privileges.{field}")


def test_sysctls_follow_the_container_list() -> None:
    denied = decide(service(container_spec(Sysctls={"net.ipv4.ip_forward": "1"})), "svc")
    assert_denied(denied, "svc", "containers.sysctls", f"{SPEC}.Sysctls[net.ipv4.ip_forward]")


# ---------------------------------------------------------------- networks and ports


def test_the_host_network_needs_host_namespaces() -> None:
    denied = decide(service(task_template(Networks=[{"Target": "host"}])), "svc")
    assert_denied(denied, "svc", "containers.host_namespaces", "Networks[0].Target")


def test_service_networks_must_be_own_for_ownership_own() -> None:
    op = service(task_template(Networks=[{"Target": "team", "Aliases": ["db"]}]))
    assert_denied(decide(op, "svc"), "svc", "ownership", "Networks[0].Target")
    owners = MemoryOwnership()
    owners.record("network", "a" * 64, "team", "alice")
    assert decide(op, "svc", owners).allow


def test_aliases_on_a_network_of_another_user_are_denied_under_any() -> None:
    roles = {**ROLES, "ops": {"extends": ["operator"], "allow": ["service:*"], "containers": {"bind_mounts": ["/srv"]}}}
    compiled = compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": roles})).current())
    owners = MemoryOwnership()
    owners.record("network", "b" * 64, "team", "bob")
    owners.record("network", "a" * 64, "mine", "alice")
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=("ops",))
    context = EvalContext(ownership=owners)
    theirs = service(task_template(Networks=[{"Target": "team", "Aliases": ["db"]}]))
    denied = evaluate(compiled, subject, theirs, context)
    assert_denied(denied, "ops", "networks.use", "Networks[0].Target")
    assert "alias 'db' on network 'team'" in denied.message
    mine = service(task_template(Networks=[{"Target": "mine", "Aliases": ["db"]}]))
    assert evaluate(compiled, subject, mine, context).allow


@pytest.mark.parametrize(("published", "allowed"), [(8080, True), (80, False), (0, True)])
def test_published_ports_follow_the_container_list(published: int, allowed: bool) -> None:
    def edit(doc: Any) -> None:
        doc["EndpointSpec"]["Ports"] = [{"TargetPort": 80, "PublishedPort": published}]

    decision = decide(service(edit), "svc")
    if allowed:
        assert decision.allow, decision.message
    else:
        assert_denied(decision, "svc", "containers.published_ports", "EndpointSpec.Ports[0].PublishedPort")


def test_a_swarm_chosen_port_needs_the_swarm_range() -> None:
    roles = {**ROLES, "narrow": {**ROLES["svc"], "containers": {**ROLES["svc"]["containers"],
             "published_ports": ["8000-8999"]}}}  # fmt: skip

    def edit(doc: Any) -> None:
        doc["EndpointSpec"]["Ports"] = [{"TargetPort": 80}]

    compiled = compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": roles})).current())
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=("narrow",))
    denied = evaluate(compiled, subject, service(edit), EvalContext(ownership=MemoryOwnership()))
    assert_denied(denied, "narrow", "containers.published_ports", "EndpointSpec.Ports[0].PublishedPort")


def test_global_mode_is_fine() -> None:
    assert decide(service(lambda d: d.update(Mode={"Global": {}})), "svc").allow


# ---------------------------------------------------------------- admin-only parts


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: _plugin(d, "plugin"), "TaskTemplate.Runtime"),
        (lambda d: _plugin(d, ""), "TaskTemplate.PluginSpec"),
        (task_template(NetworkAttachmentSpec={"ContainerID": "x"}), "TaskTemplate.NetworkAttachmentSpec"),
        (container_spec(Secrets=[{"SecretName": "db-password"}]), f"{SPEC}.Secrets"),
        (container_spec(Configs=[{"ConfigName": "app"}]), f"{SPEC}.Configs"),
    ],
)
def test_plugins_attachments_secrets_and_configs_are_admin_only(edit: Callable[[Any], None], field: str) -> None:
    op = service(edit)
    assert_denied(decide(op, "svc"), "svc", "containers.unconfined", field)
    assert decide(op, "admin").allow


def _plugin(doc: Any, runtime: str) -> None:
    # A plugin service is global; its spec has no ContainerSpec the image rules could judge.
    doc["Mode"] = {"Global": {}}
    doc["TaskTemplate"]["Runtime"] = runtime
    doc["TaskTemplate"]["PluginSpec"] = {"Name": "x", "Remote": "evil/plugin"}


# ---------------------------------------------------------------- self-protection (issue 3 item 7)

# Every action that controls the plugin chain, the swarm, build back doors (BuildKit's unseen
# gRPC) or the daemon's internals. system:auth is left out on purpose: it checks registry
# credentials the caller already holds and controls neither the daemon nor the plugin.
ADMIN_ONLY_PREFIXES = ("plugin:", "swarm:", "service:", "node:", "secret:", "config:")
ADMIN_ONLY_ACTIONS = ("build:grpc", "build:session", "system:debug")
ADMIN_ONLY = sorted(a for a in actions.ALL_ACTIONS if a.startswith(ADMIN_ONLY_PREFIXES) or a in ADMIN_ONLY_ACTIONS)


def _self_protection_operation(action: str) -> Operation:
    if action == "service:create":
        return captured()
    if action == "service:update":
        raw = capture_request(next(n for n in capture_names() if n.startswith("service-create__02")))
        return classify(replace(raw, uri="/v1.41/services/svc/update?version=1"))
    return Operation(action=action, method="POST", path="/", api_version="1.41")


def test_the_admin_only_set_covers_every_resource_it_names() -> None:
    assert len(ADMIN_ONLY) == len([a for a in actions.Action if a.value in ADMIN_ONLY])
    for prefix in ADMIN_ONLY_PREFIXES:
        assert any(a.startswith(prefix) for a in ADMIN_ONLY), prefix


@pytest.mark.parametrize("action", ADMIN_ONLY)
def test_builtin_roles_other_than_admin_deny_admin_only_actions(action: str) -> None:
    compiled = compile_snapshot(StaticPolicySource(parse_policy({"version": 1})).current())
    op = _self_protection_operation(action)
    context = EvalContext(ownership=MemoryOwnership())
    for role in ("viewer", "developer", "operator"):
        decision = evaluate(compiled, Subject("alice", IdentitySource.TOKEN, (role,)), op, context)
        assert not decision.allow, f"{role} may {action}"
        assert decision.message.endswith(f"none of your roles allows {action}")
    decision = evaluate(compiled, Subject("root", IdentitySource.TOKEN, ("admin",)), op, context)
    assert decision.allow, decision.message


def test_a_service_without_a_body_is_denied_not_ignored() -> None:
    request = capture_request(next(n for n in capture_names() if n.startswith("service-create__02")))
    op = classify(replace(request, body=None, headers={"Content-Length": "0"}))
    assert_denied(decide(op, "admin"), "admin", "containers", "body")
