"""Policy documents: validation with key paths, and the dump/parse round trip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.errors import PolicyError
from authz.policy.schema import dump_policy, parse_policy, parse_size

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "policy-v1.md"


def reference_example() -> dict[str, Any]:
    text = REFERENCE.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    doc: dict[str, Any] = yaml.safe_load(block.group(1))
    return doc


def minimal(**extra: Any) -> dict[str, Any]:
    return {"version": 1, **extra}


def error_of(doc: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value


def test_the_reference_example_parses_with_every_section() -> None:
    policy = parse_policy(reference_example())
    dev = policy.roles["developer"]
    assert dev.extends == ("viewer",)
    assert dev.deny == ("container:export",)
    assert dev.containers.capabilities == ("NET_BIND_SERVICE",)
    assert dev.containers.max_memory == 4 * 1024**3
    assert dev.containers.max_cpus == 2.0
    assert dev.images.allow == ("docker.io/library/*", "registry.example.com/team/**")
    assert dev.networks.use == ("dev-*", "none")
    assert policy.users["ci-runner"].tls_cn == "ci.example.com"
    assert policy.users["alice"].groups == ("ml-team",)
    assert policy.groups["ml-team"].roles == ("developer",)


def test_dump_parses_back_to_an_equal_policy() -> None:
    policy = parse_policy(reference_example())
    dumped = dump_policy(policy)
    assert parse_policy(yaml.safe_load(yaml.safe_dump(dumped))) == policy
    assert dumped["roles"]["developer"]["containers"]["max_memory"] == "4g"


def test_unknown_capability_names_the_key_path() -> None:
    doc = minimal(roles={"developer": {"containers": {"capabilities": ["CHOWN", "cap_net_raw", "SYS_ADMN"]}}})
    err = error_of(doc)
    assert str(err) == 'roles.developer.containers.capabilities[2]: unknown capability "SYS_ADMN"'


def test_capabilities_are_normalised() -> None:
    policy = parse_policy(minimal(roles={"r": {"containers": {"capabilities": ["cap_net_raw", "Chown"]}}}))
    assert policy.roles["r"].containers.capabilities == ("NET_RAW", "CHOWN")


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"version": 2}, "version"),
        ({"roles": {}}, "version"),
        (minimal(rolez={}), "rolez"),
        (minimal(roles={"r": {"allow": ["container:crate"]}}), "roles.r.allow[0]"),
        (minimal(roles={"r": {"deny": [1]}}), "roles.r.deny[0]"),
        (minimal(roles={"r": {"containers": {"privileged": "no"}}}), "roles.r.containers.privileged"),
        (minimal(roles={"r": {"containers": {"max_memory": "lots"}}}), "roles.r.containers.max_memory"),
        (minimal(roles={"r": {"containers": {"published_ports": ["90000"]}}}), "roles.r.containers.published_ports[0]"),
        (minimal(roles={"r": {"containers": {"bind_mounts": ["srv"]}}}), "roles.r.containers.bind_mounts[0]"),
        (minimal(roles={"r": {"containers": {"bogus": True}}}), "roles.r.containers.bogus"),
        (minimal(roles={"r": {"mode": "audit"}}), "roles.r.mode"),
        (minimal(roles={"r": {"ownership": "mine"}}), "roles.r.ownership"),
        (minimal(roles={"r": {"extends": ["nope"]}}), "roles.r.extends[0]"),
        (minimal(users={"u": {"roles": ["nope"]}}), "users.u.roles[0]"),
        (minimal(users={"u": {"groups": ["g"]}}), "users.u.groups[0]"),
        (minimal(groups={"g": {"roles": ["nope"]}}), "groups.g.roles[0]"),
        (minimal(settings={"anonymous_role": "nope"}), "settings.anonymous_role"),
        (minimal(settings={"default_mode": "loud"}), "settings.default_mode"),
        (minimal(users={"bad name": {}}), "users.bad name"),
    ],
)
def test_errors_name_the_offending_key(doc: dict[str, Any], path: str) -> None:
    assert error_of(doc).path == path


def test_inheritance_cycles_are_errors() -> None:
    err = error_of(minimal(roles={"a": {"extends": ["b"]}, "b": {"extends": ["a"]}}))
    assert "cycle" in err.message
    assert err.path in {"roles.a.extends", "roles.b.extends"}


def test_duplicate_tls_cn_is_an_error() -> None:
    err = error_of(minimal(users={"a": {"tls_cn": "x"}, "b": {"tls_cn": "x"}}))
    assert err.path == "users.b.tls_cn"


def test_builtin_roles_can_be_referenced_without_definition() -> None:
    policy = parse_policy(minimal(users={"bob": {"roles": ["admin"]}}, roles={"r": {"extends": ["developer"]}}))
    assert policy.users["bob"].roles == ("admin",)


@pytest.mark.parametrize(
    ("text", "size"),
    [("4g", 4 * 1024**3), ("512m", 512 * 1024**2), ("1GB", 1024**3), (1024, 1024), ("1.5g", 1536 * 1024**2)],
)
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text, "x") == size


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"roles": ["viewer", "ghost"]}, r'users\.ann\.roles\[1\]: unknown role "ghost"'),
        ({"roles": ["viewer", 7]}, r"users\.ann\.roles\[1\]: expected a string, got 7"),
        ({"groups": ["ops", "nope"]}, r'users\.ann\.groups\[1\]: unknown group "nope"'),
        ({"roles": "viewer"}, r"users\.ann\.roles: expected a list, got str"),
    ],
)
def test_user_references_name_the_failing_item(user: dict[str, object], message: str) -> None:
    doc = {"version": 1, "groups": {"ops": {"roles": ["viewer"]}}, "users": {"ann": user}}
    with pytest.raises(PolicyError, match=f"^{message}$"):
        parse_policy(doc)


def test_user_references_that_all_resolve_are_kept_in_order() -> None:
    doc = {"version": 1, "groups": {"ops": {"roles": []}}, "users": {"ann": {"roles": ["viewer", "admin"],
                                                                             "groups": ["ops"]}}}  # fmt: skip
    user = parse_policy(doc).users["ann"]
    assert user.roles == ("viewer", "admin")
    assert user.groups == ("ops",)
