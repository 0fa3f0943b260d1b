"""Network rules (authz/policy/rules/networks.py): networks.create, networks.drivers, networks.use.

Built from the captured network-create/connect/disconnect and create-on-net requests, and hostile
variants of their bodies; each test asserts the decision and the rule/field of the message.
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

TESTNET_ID = "7e57" + "0" * 60
TESTNET2_ID = "7e58" + "0" * 60
ROLES: dict[str, Any] = {
    # own networks named dev-*; bridge only
    "dev": {"extends": ["developer"], "networks": {"create": ["dev-*"], "use": ["dev-*", "none"]}},
    # any driver by glob (macvlan is not included), any owner
    "wide": {"extends": ["operator"], "networks": {"drivers": ["*"]}},
    # macvlan listed by name
    "lan": {"extends": ["operator"], "networks": {"drivers": ["bridge", "macvlan"]}},
}


def policy() -> CompiledPolicy:
    return compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": ROLES})).current())


def operation(label: str, *, uri: str | None = None, edit: Callable[[Any], None] | None = None) -> Operation:
    name = next(n for n in capture_names() if n.startswith(f"{label}__") and "_ping" not in n)
    request = capture_request(name)
    if uri is not None:
        request = replace(request, uri=uri)
    if edit is not None:
        doc = json.loads(request.body or b"{}")
        edit(doc)
        raw = json.dumps(doc).encode()
        request = replace(request, body=raw, headers={**request.headers, "Content-Length": str(len(raw))})
    return classify(request)


def owners(**objects: str) -> MemoryOwnership:
    """alice's testnet, testnet2, box and netc, plus ``name=kind`` objects of bob."""
    table = MemoryOwnership()
    table.record("network", TESTNET_ID, "testnet", "alice")
    table.record("network", TESTNET2_ID, "testnet2", "alice")
    table.record("container", "b" * 64, "box", "alice")
    table.record("container", "c" * 64, "netc", "alice")
    for index, (name, kind) in enumerate(objects.items()):
        table.record(kind, f"{index:x}".rjust(64, "f"), name, "bob")
    return table


def decide(op: Operation, role: str, table: MemoryOwnership | None = None) -> Decision:
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    context = EvalContext(ownership=table if table is not None else owners(), image_user=lambda _ref: "1000")
    return evaluate(policy(), subject, op, context)


def assert_denied(decision: Decision, role: str, rule: str, field: str) -> None:
    assert not decision.allow
    assert f"[rule roles.{role}.{rule}, field {field}]" in decision.message, decision.message


def body(**changes: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc.update(changes)

    return edit


# ---------------------------------------------------------------- network create


@pytest.mark.parametrize("label", ["network-create-run1", "network-create-run2", "network-create2"])
def test_captured_network_creates_are_allowed_to_the_developer(label: str) -> None:
    assert decide(operation(label), "developer").allow


def test_a_network_name_another_user_owns_is_refused() -> None:
    """Without CheckDuplicate the daemon would make a second ``bobnet``; its record would take the
    name from bob's."""
    op = operation("network-create2", edit=body(Name="bobnet", CheckDuplicate=False))
    assert_denied(decide(op, "developer", owners(bobnet="network")), "developer", "ownership", "Name")
    assert decide(op, "admin", owners(bobnet="network")).allow


@pytest.mark.parametrize(("name", "allowed"), [("dev-x", True), ("devx", False), ("testnet", False)])
def test_network_names_must_match_a_create_pattern(name: str, allowed: bool) -> None:
    decision = decide(operation("network-create2", edit=body(Name=name)), "dev")
    if allowed:
        assert decision.allow, decision.message
    else:
        assert_denied(decision, "dev", "networks.create", "Name")
        assert f"network name {name!r} is not allowed (allowed: dev-*)" in decision.message


@pytest.mark.parametrize("driver", ["macvlan", "ipvlan", "host"])
def test_host_attached_drivers_are_not_included_in_star(driver: str) -> None:
    denied = decide(operation("network-create2", edit=body(Driver=driver)), "wide")
    assert_denied(denied, "wide", "networks.drivers", "Driver")
    assert "must be listed by name, * does not include them" in denied.message


def test_a_driver_listed_by_name_may_use_parent() -> None:
    op = operation("network-create2", edit=body(Driver="macvlan", Options={"parent": "eth0"}))
    assert decide(op, "lan").allow


def test_an_empty_driver_is_bridge() -> None:
    assert decide(operation("network-create2", edit=body(Driver="")), "developer").allow
    denied = decide(operation("network-create2", edit=body(Driver="overlay")), "developer")
    assert_denied(denied, "developer", "networks.drivers", "Driver")


@pytest.mark.parametrize("key", ["com.docker.network.bridge.name", "parent"])
def test_options_that_attach_to_the_host_need_the_driver_listed_by_name(key: str) -> None:
    op = operation("network-create2", edit=body(Options={key: "br0"}))
    denied = decide(op, "wide")  # bridge is allowed only through "*"
    assert_denied(denied, "wide", "networks.drivers", f"Options[{key}]")
    assert "listed by name" in denied.message
    assert decide(op, "lan").allow  # lists bridge by name


def test_lower_case_keys_are_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        doc.clear()
        doc.update({"name": "testnet3", "driver": "macvlan", "options": {"parent": "eth0"}})

    assert_denied(decide(operation("network-create2", edit=edit), "wide"), "wide", "networks.drivers", "Driver")


def test_an_ingress_network_is_admin_only() -> None:
    op = operation("network-create2", edit=body(Ingress=True, Driver="overlay"))
    denied = decide(op, "operator")
    assert_denied(denied, "operator", "containers.unconfined", "Ingress")
    assert decide(op, "admin").allow


def test_config_from_is_judged_as_use_and_needs_the_driver_listed_by_name() -> None:
    op = operation("network-create2", edit=body(ConfigFrom={"Network": "lan-config"}))
    assert_denied(decide(op, "developer"), "developer", "ownership", "ConfigFrom.Network")
    assert_denied(decide(op, "wide"), "wide", "networks.drivers", "ConfigFrom.Network")
    assert decide(op, "lan").allow
    dev_op = operation("network-create2", edit=body(Name="dev-a", ConfigFrom={"Network": "lan-config"}))
    assert_denied(decide(dev_op, "dev", owners(**{"lan-config": "network"})), "dev", "ownership", "ConfigFrom.Network")


# ---------------------------------------------------------------- container create: NetworkMode, EndpointsConfig


def test_create_on_an_own_network_is_allowed() -> None:
    assert decide(operation("create-on-net"), "developer").allow


def test_create_on_a_network_of_another_user_is_denied_for_own() -> None:
    op = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode="team"))
    denied = decide(op, "developer", owners(team="network"))
    assert_denied(denied, "developer", "ownership", "HostConfig.NetworkMode")
    assert "'team' (owned by another user)" in denied.message
    assert decide(op, "operator", owners(team="network")).allow


@pytest.mark.parametrize(("mode", "allowed"), [("none", True), ("default", False), ("bridge", False)])
def test_predefined_networks_are_names_in_use(mode: str, allowed: bool) -> None:
    op = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode=mode))
    decision = decide(op, "dev")
    if allowed:
        assert decision.allow, decision.message
    else:
        assert_denied(decision, "dev", "networks.use", "HostConfig.NetworkMode")
    assert decide(op, "developer").allow  # predefined networks need no ownership


def test_an_absent_network_mode_is_the_default_network() -> None:
    op = operation("create-on-net", edit=lambda d: d["HostConfig"].pop("NetworkMode"))
    assert_denied(decide(op, "dev"), "dev", "networks.use", "HostConfig.NetworkMode")


def test_use_patterns_compare_whole_names() -> None:
    table = owners()
    table.record("network", "d" * 64, "dev-x", "alice")
    table.record("network", "e" * 64, "devx", "alice")
    dash = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode="dev-x"))
    plain = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode="devx"))
    assert decide(dash, "dev", table).allow
    assert_denied(decide(plain, "dev", table), "dev", "networks.use", "HostConfig.NetworkMode")


def test_a_network_id_prefix_is_judged_only_by_ownership() -> None:
    op = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode="7e57"))
    assert decide(op, "developer").allow  # alice's testnet, by ID prefix
    foreign = operation("create-on-net", edit=lambda d: d["HostConfig"].update(NetworkMode="abc123"))
    denied = decide(foreign, "operator")
    assert_denied(denied, "operator", "networks.use", "HostConfig.NetworkMode")
    assert "network ID or ID prefix" in denied.message
    assert decide(foreign, "admin").allow  # "*" in use and host_namespaces: may be any network


def test_endpoints_config_keys_are_checked_too() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["NetworkMode"] = "testnet"
        doc["NetworkingConfig"]["EndpointsConfig"] = {"team": {}}

    denied = decide(operation("create-on-net", edit=edit), "developer", owners(team="network"))
    assert_denied(denied, "developer", "ownership", "NetworkingConfig.EndpointsConfig[team]")


def test_the_host_network_in_endpoints_config_needs_host_namespaces() -> None:
    def edit(doc: Any) -> None:
        doc["NetworkingConfig"]["EndpointsConfig"] = {"host": {}}

    denied = decide(operation("create-on-net", edit=edit), "operator")
    assert_denied(denied, "operator", "containers.host_namespaces", "NetworkingConfig.EndpointsConfig[host]")


@pytest.mark.parametrize(
    "endpoint",
    [{"Aliases": ["db"]}, {"IPAMConfig": {"IPv4Address": "10.0.0.5"}}, {"MacAddress": "02:42:ac:11:00:02"}],
)
def test_static_addresses_and_aliases_only_on_own_networks(endpoint: dict[str, Any]) -> None:
    def on(network: str) -> Callable[[Any], None]:
        def edit(doc: Any) -> None:
            doc["HostConfig"]["NetworkMode"] = network
            doc["NetworkingConfig"]["EndpointsConfig"] = {network: endpoint}

        return edit

    table = owners(team="network")
    denied = decide(operation("create-on-net", edit=on("team")), "operator", table)
    assert_denied(denied, "operator", "networks.use", "NetworkingConfig.EndpointsConfig[team]")
    assert "could take over another container's address or DNS name" in denied.message
    assert decide(operation("create-on-net", edit=on("testnet")), "operator", table).allow


# ---------------------------------------------------------------- connect and disconnect


@pytest.mark.parametrize(
    "label",
    ["network-connect-run1", "network-connect-run2", "network-connect-run3", "network-disconnect-run1",
     "network-disconnect-run2"],
)  # fmt: skip
def test_captured_connects_on_own_objects_are_allowed(label: str) -> None:
    assert decide(operation(label), "developer").allow


def test_connect_to_an_unlisted_network_is_denied() -> None:
    assert_denied(decide(operation("network-connect-run1"), "dev"), "dev", "networks.use", "{id}")


def test_connect_by_network_id_prefix_of_another_user_is_denied() -> None:
    table = owners(team="network")
    op = operation("network-connect-run1", uri="/v1.41/networks/ffff/connect")
    assert_denied(decide(op, "operator", table), "operator", "networks.use", "{id}")


@pytest.mark.parametrize("label", ["network-connect-run2", "network-connect-run3"])
def test_connect_with_alias_or_ip_to_a_network_of_another_user_is_denied(label: str) -> None:
    table = MemoryOwnership()
    table.record("network", TESTNET2_ID, "testnet2", "bob")
    denied = decide(operation(label), "operator", table)
    assert_denied(denied, "operator", "networks.use", "EndpointConfig")
    assert "alias 'foo'" in denied.message
    assert decide(operation("network-connect-run1", uri="/v1.41/networks/testnet2/connect"), "operator", table).allow


def test_a_create_without_a_body_is_denied_not_ignored() -> None:
    request = capture_request(next(n for n in capture_names() if n.startswith("network-create2__02")))
    op = classify(replace(request, body=None, headers={"Content-Length": "0"}))
    denied = decide(op, "developer")
    assert_denied(denied, "developer", "networks", "body")
    assert "needs a JSON request body" in denied.message
