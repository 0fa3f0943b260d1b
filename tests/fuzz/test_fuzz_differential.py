"""Property 2, differential safety: a rewrite of a create body that Go's ``encoding/json`` reads
the same way (``variants.py``) never turns a deny into an allow (docs/fuzzing.md).

For a canonical body and the developer user, the canonical decision is computed through the
plugin app; every variant must then be denied too if the canonical form was. The test compares
canonical with variant, so it exercises whatever the content rules in ``authz.policy.rules``
decide today. A second, rule-independent property checks the parser directly: a variant is
either refused (fail closed) or read into exactly the canonical effective configuration.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.classify import classify
from authz.classify.containers import ContainerCreate
from authz.errors import AuthzError
from authz.policy import engine  # noqa: F401 - importing the engine registers every rule family
from authz.policy.rules import CHECKS
from authz.request import DockerRequest, Operation
from tests.fuzz.harness import CASES, FuzzStack, Reply, check_reply, fuzz_settings
from tests.fuzz.variants import Variant, canonical_bodies, variants

_CANONICAL_URI = "/v1.41/containers/create"
_VARIANTS_PER_BODY = 3


def _wire(uri: str, body: bytes, content_type: str, token: str) -> dict[str, Any]:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "X-Authz-Token": token}
    return {"RequestMethod": "POST", "RequestUri": uri, "RequestBody": base64.b64encode(body).decode(),
            "RequestHeaders": headers}  # fmt: skip


def _decide(stack: FuzzStack, uri: str, body: bytes, content_type: str, user: str, label: str) -> Reply:
    reply = stack.call(_wire(uri, body, content_type, stack.tokens[user]), count_as=label)
    check_reply(reply)
    return reply


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@fuzz_settings(100)
@given(data=st.data())
def test_variants_never_loosen_the_decision(stack: FuzzStack, data: st.DataObject) -> None:
    body = data.draw(canonical_bodies(), label="canonical")
    canonical = _decide(stack, _CANONICAL_URI, _canonical(body), "application/json", "dev", "differential canonical")
    for _ in range(_VARIANTS_PER_BODY):
        variant: Variant = data.draw(variants(body), label="variant")
        reply = _decide(stack, variant.uri, variant.body, variant.content_type, "dev", "differential variant")
        if not canonical.allow:
            assert not reply.allow, (
                f"canonical body denied ({canonical.body.get('Msg')}) but the variant "
                f"{variant.transforms} was allowed: {variant.body[:600]!r}"
            )


# Fields of the effective configuration that name keys as spelled in the body, or come from maps
# whose iteration order follows the body: compared as sets, or not at all.
_SPELLING_FIELDS = ("unknown_host_config_keys", "top_level_host_config_keys")
_ORDERLESS_FIELDS = ("port_bindings", "exposed_ports", "endpoints")


def _normalised(view: ContainerCreate) -> ContainerCreate:
    changes: dict[str, Any] = dict.fromkeys(_SPELLING_FIELDS, ())
    for name in _ORDERLESS_FIELDS:
        changes[name] = tuple(sorted(getattr(view, name), key=repr))
    return dataclasses.replace(view, **changes)


def _classify(uri: str, body: bytes, content_type: str) -> Operation:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    return classify(DockerRequest(method="POST", uri=uri, headers=headers, body=body))


@fuzz_settings(300)
@given(data=st.data())
def test_variants_are_read_like_the_canonical_body(data: st.DataObject) -> None:
    """Rule-independent: a variant is refused, or classified to the same action, target, query
    and effective configuration as its canonical body."""
    body = data.draw(canonical_bodies(), label="canonical")
    variant: Variant = data.draw(variants(body), label="variant")
    CASES["differential parser"] += 1
    _path, mark, query = variant.uri.partition("?")
    try:
        canonical = _classify(_CANONICAL_URI + mark + query, _canonical(body), "application/json")
    except AuthzError:
        return  # the canonical body itself is refused: nothing can be loosened
    try:
        read = _classify(variant.uri, variant.body, variant.content_type)
    except AuthzError:
        return  # refusing is always safe
    assert (read.action, read.path, read.target, dict(read.query)) == (
        canonical.action, canonical.path, canonical.target, dict(canonical.query),
    ), variant.transforms  # fmt: skip
    assert _normalised(read.view) == _normalised(canonical.view), variant.transforms


def _sample_canonical_decisions(stack: FuzzStack, examples: int) -> list[tuple[dict[str, Any], Reply]]:
    """Canonical bodies and the developer's decisions on them (a fixed, derandomized sample)."""
    seen: list[tuple[dict[str, Any], Reply]] = []

    @fuzz_settings(examples)
    @given(body=canonical_bodies())
    def run(body: dict[str, Any]) -> None:
        seen.append((body, _decide(stack, _CANONICAL_URI, _canonical(body), "application/json", "dev", "canonical")))

    run()
    return seen


def test_content_rules_deny_some_canonical_bodies(stack: FuzzStack) -> None:
    """The differential property is only as strong as the decisions it compares: once content
    rules exist, the canonical sample must contain both allowed and denied bodies, and every
    privileged one must be denied (the built-in developer role has ``privileged: false``)."""
    if not CHECKS.get("container:create"):
        pytest.skip("authz.policy.rules.CHECKS has no container:create check yet: developer creates are only "
                    "judged by action and ownership, so every canonical body is allowed")  # fmt: skip
    seen = _sample_canonical_decisions(stack, 200)
    allowed = [body for body, reply in seen if reply.allow]
    denied = [body for body, reply in seen if not reply.allow]
    assert denied, "no canonical body was denied: the content rules never fire on the fuzzed fields"
    assert allowed, "every canonical body was denied: the differential property compares nothing"
    privileged = [body for body in allowed if body.get("HostConfig", {}).get("Privileged") is True]
    assert not privileged, f"the developer was allowed a privileged container: {privileged[0]}"
