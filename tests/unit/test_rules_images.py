"""Image rules (authz/policy/rules/images.py): images.allow, require_digest, local_builds, builds.

Every test goes through classify + evaluate with captured daemon requests (or hostile variants of
them) and asserts the decision and the rule/field the message names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from authz.classify import classify
from authz.errors import RequestError
from authz.memory import MemoryOwnership, StaticPolicySource
from authz.policy.compiled import CompiledPolicy, compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.rules import EvalContext
from authz.policy.schema import parse_policy
from authz.request import Decision, IdentitySource, Operation, Subject
from tests.support.captures import capture_names, capture_request

DIGEST = "sha256:" + "ab" * 32
# A developer that may mint names (tag/commit/import/load/build) within its allowlist.
BUILDER = {
    "extends": ["developer"],
    "allow": ["image:tag", "image:build", "image:import", "image:load", "container:commit", "image:push"],
    "images": {"local_builds": True},
}


def policy(roles: dict[str, Any] | None = None) -> CompiledPolicy:
    return compile_snapshot(StaticPolicySource(parse_policy({"version": 1, "roles": roles or {}})).current())


def operation(label: str, *, uri: str | None = None, edit: Callable[[Any], None] | None = None) -> Operation:
    """The captured request ``label``, optionally with another URI or an edited JSON body."""
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


def decide(
    op: Operation, role: str, roles: dict[str, Any] | None = None, owners: MemoryOwnership | None = None
) -> Decision:
    subject = Subject(name="alice", source=IdentitySource.TOKEN, roles=(role,))
    context = EvalContext(ownership=owners or MemoryOwnership(), image_user=lambda _ref: "1000")
    return evaluate(policy(roles), subject, op, context)


def assert_denied(decision: Decision, role: str, rule: str, field: str) -> None:
    assert not decision.allow
    assert f"[rule roles.{role}.{rule}, field {field}]" in decision.message, decision.message


def pull(query: str) -> Operation:
    return operation("pull", uri=f"/v1.41/images/create?{query}")


# ---------------------------------------------------------------- pull


def test_pull_from_an_unlisted_registry_is_denied_naming_the_reference() -> None:
    decision = decide(operation("pull"), "developer")
    assert_denied(decision, "developer", "images.allow", "fromImage")
    assert "pulling 127.0.0.1:5999/nothing:latest is not allowed (allowed: docker.io/library/*)" in decision.message


def test_pull_of_a_listed_registry_is_allowed() -> None:
    roles = {"mirror": {"extends": ["developer"], "images": {"allow": ["127.0.0.1:5999/**"]}}}
    decision = decide(operation("pull"), "mirror", roles)
    assert decision.allow, decision.message
    assert decision.role == "mirror"


def test_official_image_pull_is_allowed_for_the_developer() -> None:
    assert decide(pull("fromImage=alpine&tag=3.20"), "developer").allow


@pytest.mark.parametrize(
    "query",
    [
        "fromImage=localhost:5000/x&tag=latest",  # "localhost" is a registry, not library/localhost
        "fromImage=docker.io/evil/alpine&tag=latest",
        "fromImage=index.docker.io/evil/x&tag=1",
    ],
)
def test_pull_outside_the_library_is_denied(query: str) -> None:
    assert_denied(decide(pull(query), "developer"), "developer", "images.allow", "fromImage")


def test_pull_with_an_upper_case_registry_does_not_match_a_lower_case_pattern() -> None:
    roles = {"team": {"extends": ["developer"], "images": {"allow": ["registry.example.com/team/**"]}}}
    assert decide(pull("fromImage=registry.example.com/team/app&tag=1"), "team", roles).allow
    denied = decide(pull("fromImage=REGISTRY.example.com/team/app&tag=1"), "team", roles)
    assert_denied(denied, "team", "images.allow", "fromImage")
    assert "REGISTRY.example.com/team/app:1" in denied.message


def test_pull_of_a_path_traversal_name_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="invalid image reference"):
        decide(pull("fromImage=docker.io/library/../x&tag=latest"), "developer")


def test_the_tag_parameter_replaces_a_tag_inside_fromimage() -> None:
    roles = {"pinned": {"extends": ["developer"], "images": {"allow": ["alpine:3.*"]}}}
    assert decide(pull("fromImage=alpine:3.20"), "pinned", roles).allow
    denied = decide(pull("fromImage=alpine:3.20&tag=edge"), "pinned", roles)
    assert_denied(denied, "pinned", "images.allow", "fromImage")
    assert "docker.io/library/alpine:edge" in denied.message


@pytest.mark.parametrize("query", ["fromImage=alpine", "fromImage=alpine:"])
def test_pull_without_a_tag_pulls_every_tag_and_no_tag_pattern_covers_it(query: str) -> None:
    roles = {"pinned": {"extends": ["developer"], "images": {"allow": ["alpine:3.*"]}}}
    denied = decide(pull(query), "pinned", roles)
    assert_denied(denied, "pinned", "images.allow", "fromImage")
    assert "docker.io/library/alpine (all tags)" in denied.message
    assert decide(pull(query), "developer").allow  # a name-only pattern covers every tag


def test_require_digest_accepts_a_digest_in_the_tag_parameter_or_in_fromimage() -> None:
    roles = {"strict": {"extends": ["developer"], "images": {"require_digest": True}}}
    assert decide(pull(f"fromImage=alpine&tag={DIGEST}"), "strict", roles).allow
    assert decide(pull(f"fromImage=alpine@{DIGEST}"), "strict", roles).allow
    denied = decide(pull("fromImage=alpine&tag=3.20"), "strict", roles)
    assert_denied(denied, "strict", "images.require_digest", "fromImage")
    assert "must be pinned by digest" in denied.message


def test_a_digest_pattern_matches_only_that_digest() -> None:
    roles = {"one": {"extends": ["developer"], "images": {"allow": [f"alpine@{DIGEST}"]}}}
    assert decide(pull(f"fromImage=alpine&tag={DIGEST}"), "one", roles).allow
    other = "sha256:" + "cd" * 32
    assert_denied(decide(pull(f"fromImage=alpine&tag={other}"), "one", roles), "one", "images.allow", "fromImage")


# ---------------------------------------------------------------- push


@pytest.mark.parametrize("label", ["push", "push-tagged"])
def test_push_is_judged_by_the_name_in_the_path(label: str) -> None:
    assert decide(operation(label), "operator").allow
    denied = decide(operation(label), "builder", {"builder": BUILDER})
    assert_denied(denied, "builder", "images.allow", "name")
    assert "pushing 127.0.0.1:5999/tiny:latest is not allowed" in denied.message


def test_push_without_a_tag_pushes_every_tag() -> None:
    roles = {"pusher": {**BUILDER, "images": {"local_builds": True, "allow": ["127.0.0.1:5999/tiny:latest"]}}}
    assert decide(operation("push"), "pusher", roles).allow
    every = operation("push", uri="/v1.41/images/127.0.0.1:5999/tiny/push")
    denied = decide(every, "pusher", roles)
    assert_denied(denied, "pusher", "images.allow", "name")
    assert "127.0.0.1:5999/tiny (all tags)" in denied.message


# ---------------------------------------------------------------- container create


def test_create_with_an_official_image_is_allowed() -> None:
    assert decide(operation("create-on-net", edit=_network("none")), "developer").allow


def _network(mode: str) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["NetworkMode"] = mode

    return edit


def _image(image: str) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        doc["Image"] = image
        doc["HostConfig"]["NetworkMode"] = "none"

    return edit


@pytest.mark.parametrize("image", ["3f2a9c", "sha256:3f2a9c", "cafe", "ab" * 32])
def test_create_with_an_image_id_or_prefix_needs_double_star(image: str) -> None:
    op = operation("create-on-net", edit=_image(image))
    denied = decide(op, "developer")
    assert_denied(denied, "developer", "images.allow", "Image")
    assert "may be resolved as a local image ID or ID prefix" in denied.message
    assert decide(op, "operator").allow  # images.allow: ["**"]


def test_create_with_an_image_outside_the_allowlist_is_denied() -> None:
    denied = decide(operation("create-on-net", edit=_image("localhost:5000/x")), "developer")
    assert_denied(denied, "developer", "images.allow", "Image")
    assert "image localhost:5000/x:latest is not allowed" in denied.message


def test_create_with_lower_case_keys_is_read_like_the_daemon() -> None:
    def edit(doc: Any) -> None:
        del doc["Image"]
        doc["image"] = "evil.example.com/x"
        doc["HostConfig"]["NetworkMode"] = "none"

    assert_denied(decide(operation("create-on-net", edit=edit), "developer"), "developer", "images.allow", "Image")


def test_create_requires_a_digest_when_the_role_says_so() -> None:
    roles = {"strict": {"extends": ["developer"], "images": {"require_digest": True}}}
    denied = decide(operation("create-on-net", edit=_image("alpine:3.20")), "strict", roles)
    assert_denied(denied, "strict", "images.require_digest", "Image")
    assert decide(operation("create-on-net", edit=_image(f"alpine@{DIGEST}")), "strict", roles).allow


def test_an_image_mount_is_judged_like_the_image() -> None:
    def edit(doc: Any) -> None:
        doc["HostConfig"]["NetworkMode"] = "none"
        doc["HostConfig"]["Mounts"] = [{"Type": "image", "Source": "evil.example.com/x", "Target": "/x"}]

    denied = decide(operation("create-on-net", edit=edit), "admin-unconfined", {"admin-unconfined": {
        "extends": ["developer"], "containers": {"unconfined": True}}})  # fmt: skip
    assert_denied(denied, "admin-unconfined", "images.allow", "HostConfig.Mounts[0].Source")


# ---------------------------------------------------------------- minting names (B9)


@pytest.mark.parametrize(
    ("label", "field"),
    [("tag", "repo"), ("commit", "repo"), ("import", "fromSrc"), ("load", "body"), ("build", "t")],
)
def test_minting_an_image_name_needs_local_builds(label: str, field: str) -> None:
    owners = MemoryOwnership()
    owners.record("container", "c" * 64, "box", "alice")  # commit acts on alice's container
    roles = {"builder": BUILDER, "minter": {**BUILDER, "images": {"local_builds": False}}}
    denied = decide(operation(label), "minter", roles, owners)
    assert_denied(denied, "minter", "images.local_builds", field)
    assert "it needs images.local_builds: true" in denied.message
    assert decide(operation(label), "builder", roles, owners).allow


def test_the_developer_may_not_mint_names() -> None:
    assert_denied(decide(operation("tag"), "developer"), "developer", "images.local_builds", "repo")


@pytest.mark.parametrize(
    ("label", "uri", "field"),
    [
        ("tag-for-push", None, "repo"),
        ("tag", "/v1.41/images/tiny:latest/tag?repo=evil.example.com/tiny&tag=latest", "repo"),
        ("commit", "/v1.41/commit?container=box&repo=evil.example.com/x&tag=v1", "repo"),
        ("build", "/v1.41/build?t=built:v1&t=evil.example.com/x:1&networkmode=none&version=1", "t[1]"),
    ],
)
def test_minted_names_must_match_the_allowlist(label: str, uri: str | None, field: str) -> None:
    owners = MemoryOwnership()
    owners.record("container", "c" * 64, "box", "alice")
    denied = decide(operation(label, uri=uri), "builder", {"builder": BUILDER}, owners)
    assert_denied(denied, "builder", "images.allow", field)
    assert "the new image name" in denied.message


def test_import_from_a_url_needs_double_star() -> None:
    op = classify(
        replace(
            capture_request(next(n for n in capture_names() if n.startswith("import__02"))),
            uri="/v1.41/images/create?fromSrc=http%3A%2F%2F169.254.169.254%2Fx.tar&repo=tiny",
            headers={"Content-Length": "0"},
        )
    )
    denied = decide(op, "builder", {"builder": BUILDER})
    assert_denied(denied, "builder", "images.allow", "fromSrc")
    assert "download it over the host's network" in denied.message
    assert decide(op, "operator").allow


# ---------------------------------------------------------------- build options (B16, B22)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("remote=https://example.com/ctx.tar", "remote"),
        ("version=2", "version"),
        ("session=abc", "session"),
        ("networkmode=host", "networkmode"),
        ("networkmode=container:box", "networkmode"),
        ("securityopt=seccomp%3Dunconfined", "securityopt"),
        ("cgroupparent=/", "cgroupparent"),
    ],
)
def test_build_options_that_reach_the_host_are_admin_only(query: str, field: str) -> None:
    op = operation("build", uri=f"/v1.41/build?t=built:v1&{query}")
    denied = decide(op, "operator")
    assert_denied(denied, "operator", "containers.unconfined", field)
    assert "admin-like roles" in denied.message
    assert decide(op, "admin").allow


def test_a_legacy_build_on_no_network_is_allowed_to_a_builder() -> None:
    decision = decide(operation("build"), "builder", {"builder": BUILDER})
    assert decision.allow, decision.message


def test_build_network_names_follow_networks_use_and_ownership() -> None:
    op = operation("build", uri="/v1.41/build?t=built:v1&networkmode=teamnet&version=1")
    assert_denied(decide(op, "builder", {"builder": BUILDER}), "builder", "ownership", "networkmode")
    owners = MemoryOwnership()
    owners.record("network", "e" * 64, "teamnet", "alice")
    assert decide(op, "builder", {"builder": BUILDER}, owners).allow
    narrow = {**BUILDER, "networks": {"use": ["none"]}, "ownership": "any"}
    assert_denied(decide(op, "narrow", {"narrow": narrow}), "narrow", "networks.use", "networkmode")


def test_a_create_without_a_body_is_denied_not_ignored() -> None:
    request = capture_request(next(n for n in capture_names() if n.startswith("create-on-net__02")))
    op = classify(replace(request, body=None, headers={"Content-Length": "0"}))
    assert_denied(decide(op, "admin"), "admin", "images", "body")
