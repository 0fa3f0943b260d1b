"""The plugin's own reads of the daemon: X-Authz-Internal allows exactly the read-only
INTERNAL_ACTIONS (image inspect; the container, network and volume listings and container inspect
that `authzctl ownership prune` compares the table with), with the right token."""

from __future__ import annotations

from typing import Any

import pytest

from authz.decide import INTERNAL_HEADER, Authorizer
from authz.memory import MemoryAuditSink, StaticPolicySource
from authz.policy.model import Policy
from authz.request import DockerRequest

TOKEN = "ab" * 32


def authorizer(token: str | None = TOKEN) -> tuple[Authorizer, MemoryAuditSink]:
    audit = MemoryAuditSink()
    return Authorizer(StaticPolicySource(Policy()), audit, internal_token=token), audit


def get(path: str, headers: dict[str, str]) -> DockerRequest:
    return DockerRequest(method="GET", uri=f"/v1.41{path}", headers=headers)


def test_internal_token_allows_image_inspect_and_is_audited() -> None:
    authz, audit = authorizer()
    decision = authz.authorize(get("/images/tiny/json", {INTERNAL_HEADER: TOKEN}))
    assert decision.allow
    assert decision.rule == "builtin:internal"
    (event,) = audit.events
    assert event.source == "internal"
    assert event.allow
    assert event.action == "image:inspect"
    assert event.user is None


def test_header_name_is_case_insensitive() -> None:
    authz, _ = authorizer()
    assert authz.authorize(get("/images/library/tiny:1/json", {"x-authz-internal": TOKEN})).allow


def test_without_the_header_the_same_request_is_judged_normally() -> None:
    authz, audit = authorizer()
    decision = authz.authorize(get("/images/tiny/json", {}))
    assert not decision.allow  # anonymous, no anonymous role
    assert audit.events[0].source == "anonymous"


def test_wrong_or_unconfigured_token_is_denied() -> None:
    authz, audit = authorizer()
    wrong = authz.authorize(get("/images/tiny/json", {INTERNAL_HEADER: "cd" * 32}))
    assert not wrong.allow
    assert "invalid X-Authz-Internal" in wrong.message
    assert audit.events[0].source == "internal"
    assert not authz.authorize(get("/images/tiny/json", {INTERNAL_HEADER: ""})).allow
    assert not authz.authorize(get("/images/tiny/json", {INTERNAL_HEADER: TOKEN + "\u00e9"})).allow
    unconfigured, _ = authorizer(None)
    assert not unconfigured.authorize(get("/images/tiny/json", {INTERNAL_HEADER: TOKEN})).allow


def test_the_token_allows_the_listings_the_ownership_sweep_reads() -> None:
    authz, audit = authorizer()
    for path, action in (("/containers/json?all=1", "container:list"), ("/containers/abc/json", "container:inspect"),
                         ("/networks", "network:list"), ("/volumes", "volume:list"),
                         ("/volumes/v", "volume:inspect")):  # fmt: skip
        decision = authz.authorize(get(path, {INTERNAL_HEADER: TOKEN}))
        assert decision.allow, path
        assert audit.events[-1].action == action
        assert audit.events[-1].source == "internal"


def test_the_token_allows_nothing_else() -> None:
    authz, _ = authorizer()
    for path in ("/images/json", "/info", "/containers/abc/logs", "/networks/n", "/exec/e/json"):
        decision = authz.authorize(get(path, {INTERNAL_HEADER: TOKEN}))
        assert not decision.allow, path
        allowed = "container:inspect, container:list, image:inspect, network:list, volume:inspect, volume:list"
        assert f"allows only {allowed}" in decision.message
    for method, path in (("DELETE", "/containers/abc"), ("POST", "/containers/abc/kill"), ("POST", "/volumes/prune")):
        request = DockerRequest(method, f"/v1.41{path}", headers={INTERNAL_HEADER: TOKEN})
        assert not authz.authorize(request).allow, path
    probe = authz.authorize(get("/version", {INTERNAL_HEADER: TOKEN}))  # authzctl ownership prune's probe
    assert not probe.allow
    assert "the plugin's own probe that the daemon consults it, denied on purpose" in probe.reason
    create = DockerRequest(
        "POST",
        "/v1.41/containers/create",
        headers={INTERNAL_HEADER: TOKEN, "Content-Type": "application/json", "Content-Length": "17"},
        body=b'{"Image": "tiny"}',
    )
    assert not authz.authorize(create).allow


def test_prepare_builds_the_compiled_policy_and_directory_index_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from authz.identity import resolve
    from authz.policy import compiled

    built: list[str] = []
    real_compile, real_index = compiled.compile_snapshot, resolve.DirectoryIndex.__init__

    def counting_compile(snapshot: Any, previous: Any = None) -> Any:
        built.append("compile")
        return real_compile(snapshot, previous)

    def counting_index(self: Any, policy: Any) -> None:
        built.append("index")
        real_index(self, policy)

    monkeypatch.setattr(compiled, "compile_snapshot", counting_compile)
    monkeypatch.setattr(resolve.DirectoryIndex, "__init__", counting_index)
    source = StaticPolicySource(Policy(), revision=9_000_001)  # a revision no other test memoised
    authorizer = Authorizer(source, MemoryAuditSink())
    authorizer.prepare(source.current())
    assert built == ["compile", "index"]
    authorizer.authorize(get("/v1.41/containers/json", {}))  # the request builds nothing more
    assert built == ["compile", "index"]
