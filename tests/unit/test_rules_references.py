"""Objects named in bodies (authz/policy/rules/references.py): VolumesFrom, container:<ref> joins,
the Container of network connect/disconnect (B11, B18).

Built from the captured create-volumes-from-run2, create-join-namespaces and network
connect/disconnect requests; each test asserts decision, rule and field.
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
    # ownership any, may bind the whole host read-only
    "hostro": {"extends": ["operator"], "containers": {"bind_mounts": ["/"], "bind_mounts_read_only": True}},
    # ownership any, may bind /srv only
    "srv": {"extends": ["operator"], "containers": {"bind_mounts": ["/srv"]}},
}


def policy() -> CompiledPolicy:
    return compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": ROLES})).current())


def operation(label: str, *, edit: Callable[[Any], None] | None = None) -> Operation:
    name = next(n for n in capture_names() if n.startswith(f"{label}__02"))
    request = capture_request(name)
    if edit is not None:
        doc = json.loads(request.body or b"{}")
        edit(doc)
        raw = json.dumps(doc).encode()
        request = replace(request, body=raw, headers={**request.headers, "Content-Length": str(len(raw))})
    return classify(request)


def table(**containers: str) -> MemoryOwnership:
    """Networks testnet/testnet2 of alice, and containers ``name=owner``."""
    owners = MemoryOwnership()
    owners.record("network", "1" * 64, "testnet", "alice")
    owners.record("network", "2" * 64, "testnet2", "alice")
    for index, (name, owner) in enumerate(containers.items()):
        owners.record("container", f"{index:x}".rjust(64, "c"), name, owner)
    return owners


def decide(op: Operation, role: str, owners: MemoryOwnership) -> Decision:
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    return evaluate(policy(), subject, op, EvalContext(ownership=owners, image_user=lambda _ref: "1000"))


def assert_denied(decision: Decision, role: str, rule: str, field: str) -> None:
    assert not decision.allow
    assert f"[rule roles.{role}.{rule}, field {field}]" in decision.message, decision.message


def host_config(**changes: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["HostConfig"].update(changes)

    return edit


# ---------------------------------------------------------------- VolumesFrom


def test_volumes_from_an_own_container_is_allowed() -> None:
    assert decide(operation("create-volumes-from-run2"), "developer", table(sink="alice")).allow


@pytest.mark.parametrize("owner", ["bob", None])
def test_volumes_from_a_container_you_do_not_own_is_denied_for_own(owner: str | None) -> None:
    owners = table(sink=owner) if owner else table()
    denied = decide(operation("create-volumes-from-run2"), "developer", owners)
    assert_denied(denied, "developer", "ownership", "HostConfig.VolumesFrom[0]")
    assert "VolumesFrom container 'sink'" in denied.message


def test_volumes_from_a_foreign_container_needs_slash_in_bind_mounts_even_under_any() -> None:
    op = operation("create-volumes-from-run2")
    denied = decide(op, "operator", table(sink="bob"))
    assert_denied(denied, "operator", "containers.bind_mounts", "HostConfig.VolumesFrom[0]")
    assert "host binds the plugin cannot see" in denied.message
    assert_denied(decide(op, "srv", table(sink="bob")), "srv", "containers.bind_mounts", "HostConfig.VolumesFrom[0]")
    assert decide(op, "hostro", table(sink="bob")).allow  # sink:ro and bind_mounts ["/"]
    assert decide(op, "admin", table(sink="bob")).allow


def test_volumes_from_must_be_read_only_when_binds_must_be() -> None:
    op = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=["sink"]))
    denied = decide(op, "hostro", table(sink="bob"))
    assert_denied(denied, "hostro", "containers.bind_mounts_read_only", "HostConfig.VolumesFrom[0]")
    assert "(sink:ro)" in denied.message


def test_volumes_from_is_resolved_by_id_prefix_like_the_daemon() -> None:
    owners = table(sink="bob", mine="alice")  # mine's ID starts with "c…c1"
    op = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=["c" * 63 + "1"]))
    assert decide(op, "developer", owners).allow
    foreign = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=["c" * 63 + "0:ro"]))
    assert_denied(decide(foreign, "developer", owners), "developer", "ownership", "HostConfig.VolumesFrom[0]")


# ---------------------------------------------------------------- Links


@pytest.mark.parametrize("link", ["sink", "sink:db", "/sink:/new/db"])
def test_linking_an_own_container_is_allowed(link: str) -> None:
    op = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=[], Links=[link]))
    assert decide(op, "developer", table(sink="alice")).allow


@pytest.mark.parametrize("link", ["sink", "sink:db", "/sink:/new/db"])
def test_linking_a_container_of_another_user_is_denied_for_own(link: str) -> None:
    op = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=[], Links=["mine:m", link]))
    denied = decide(op, "developer", table(sink="bob", mine="alice"))
    assert_denied(denied, "developer", "ownership", "HostConfig.Links[1]")
    assert "linking container 'sink' (owned by another user)" in denied.message
    assert "HostConfig.Links[0]" not in denied.message
    assert decide(op, "operator", table(sink="bob", mine="alice")).allow  # ownership: any


@pytest.mark.parametrize("link", ["", "a:b:c", ":alias"])
def test_a_link_the_daemon_cannot_parse_is_denied_for_every_role(link: str) -> None:
    op = operation("create-volumes-from-run2", edit=host_config(VolumesFrom=[], Links=[link]))
    assert_denied(decide(op, "operator", table()), "operator", "ownership", "HostConfig.Links[0]")


def test_endpoint_links_are_checked_too() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"].update(VolumesFrom=[], NetworkMode="testnet")
        doc["NetworkingConfig"] = {"EndpointsConfig": {"testnet": {"Links": ["sink:s"]}}}

    op = operation("create-volumes-from-run2", edit=edit)
    denied = decide(op, "developer", table(sink="bob"))
    assert_denied(denied, "developer", "ownership", "NetworkingConfig.EndpointsConfig.testnet.Links[0]")
    assert decide(op, "developer", table(sink="alice")).allow


def test_connect_endpoint_links_need_own_containers() -> None:
    op = operation("network-connect-run1", edit=lambda d: d.update(EndpointConfig={"Links": ["sink:s"]}))
    denied = decide(op, "developer", table(box="alice", sink="bob"))
    assert_denied(denied, "developer", "ownership", "EndpointConfig.Links[0]")
    assert decide(op, "developer", table(box="alice", sink="alice")).allow


# ---------------------------------------------------------------- container:<ref> namespace joins


def test_joining_own_containers_is_allowed() -> None:
    assert decide(operation("create-join-namespaces"), "developer", table(box5="alice")).allow


def test_joining_a_container_of_another_user_is_denied_for_each_namespace() -> None:
    denied = decide(operation("create-join-namespaces"), "developer", table(box5="bob"))
    for field in ("HostConfig.NetworkMode", "HostConfig.PidMode", "HostConfig.IpcMode"):
        assert_denied(denied, "developer", "ownership", field)
    assert "joining the namespaces of container 'box5' (owned by another user)" in denied.message


def test_joins_are_allowed_under_ownership_any() -> None:
    assert decide(operation("create-join-namespaces"), "operator", table(box5="bob")).allow


def test_a_cgroup_join_is_checked_too() -> None:
    edit = host_config(NetworkMode="none", PidMode="", IpcMode="", Cgroup="container:box5")
    denied = decide(operation("create-join-namespaces", edit=edit), "developer", table(box5="bob"))
    assert_denied(denied, "developer", "ownership", "HostConfig.Cgroup")


def test_a_join_naming_no_container_is_denied() -> None:
    edit = host_config(NetworkMode="none", PidMode="container:", IpcMode="")
    denied = decide(operation("create-join-namespaces", edit=edit), "operator", table())
    assert_denied(denied, "operator", "ownership", "HostConfig.PidMode")


def test_lower_case_join_keys_are_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        hc = doc.pop("HostConfig")
        del hc["PidMode"], hc["IpcMode"], hc["NetworkMode"]
        doc["hostconfig"] = {**hc, "pidmode": "container:box5", "networkmode": "none"}

    denied = decide(operation("create-join-namespaces", edit=edit), "developer", table(box5="bob"))
    assert_denied(denied, "developer", "ownership", "HostConfig.PidMode")


# ---------------------------------------------------------------- network connect/disconnect Container


@pytest.mark.parametrize(
    ("label", "container"),
    [("network-connect-run1", "box"), ("network-connect-run2", "netc"), ("network-disconnect-run1", "box"),
     ("network-disconnect-run2", "netc")],
)  # fmt: skip
def test_connect_and_disconnect_need_the_container_to_be_own(label: str, container: str) -> None:
    assert decide(operation(label), "developer", table(**{container: "alice"})).allow
    denied = decide(operation(label), "developer", table(**{container: "bob"}))
    assert_denied(denied, "developer", "ownership", "Container")
    assert f"container {container!r} (owned by another user)" in denied.message
    assert decide(operation(label), "operator", table(**{container: "bob"})).allow


def test_connect_naming_no_container_is_denied() -> None:
    op = operation("network-connect-run1", edit=lambda d: d.update(Container=""))
    denied = decide(op, "developer", table())
    assert_denied(denied, "developer", "ownership", "Container")
    assert "network connect names no container" in denied.message


@pytest.mark.parametrize("label", ["network-connect-run1", "network-disconnect-run1"])
def test_a_connect_without_a_body_is_denied_not_ignored(label: str) -> None:
    request = capture_request(next(n for n in capture_names() if n.startswith(f"{label}__02")))
    op = classify(replace(request, body=None, headers={"Content-Length": "0"}))
    assert_denied(decide(op, "operator", table()), "operator", "ownership", "body")
