"""AuthZRes: the creator of what already ran is recorded, and audited, even while the store fails."""

from __future__ import annotations

import base64
import json

from authz.decide import Authorizer
from authz.errors import StoreError
from authz.memory import MemoryAuditSink, MemoryOwnership
from authz.policy.model import PolicySnapshot
from authz.policy.schema import parse_policy
from authz.request import DockerRequest, Phase

POLICY = parse_policy({"version": 1, "users": {"alice": {"roles": ["developer"], "tls_cn": "alice"}}})
CONTAINER_ID = "c0ffee" * 10 + "abcd"


class RefusingSource:
    """The store is down under AUTHZ_ON_STORE_ERROR=deny: no new decisions, the last snapshot kept."""

    def current(self, at_least: int = 0) -> PolicySnapshot:
        raise StoreError("the policy store failed: down; AUTHZ_ON_STORE_ERROR=deny refuses to decide without it")

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        return PolicySnapshot(revision=3, policy=POLICY)


def create_response() -> DockerRequest:
    body = json.dumps({"Image": "tiny"}).encode()
    return DockerRequest(
        method="POST",
        uri="/v1.41/containers/create?name=web",
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
        body=body,
        user="alice",
        auth_method="TLS",
        phase=Phase.RESPONSE,
        status_code=201,
        response_body=base64.b64decode(base64.b64encode(json.dumps({"Id": CONTAINER_ID}).encode())),
    )


def test_the_creator_is_recorded_while_new_decisions_are_refused() -> None:
    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    authorizer = Authorizer(RefusingSource(), audit, ownership=ownership)
    decision = authorizer.observe_response(create_response())
    assert decision.allow
    assert ownership.owner_of("container", "web") == "alice"
    (event,) = audit.events
    assert (event.phase, event.user, event.action) == ("response", "alice", "container:create")
    assert "owned by alice" in event.reason


def test_a_store_with_no_policy_at_all_still_audits_the_response() -> None:
    class Empty(RefusingSource):
        def last_known(self, at_least: int = 0) -> PolicySnapshot:
            raise StoreError("no policy loaded and the store failed: down")

    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    decision = Authorizer(Empty(), audit, ownership=ownership).observe_response(create_response())
    assert decision.allow  # the call already ran; a deny cannot undo it
    assert ownership.owner_of("container", "web") is None
    (event,) = audit.events
    assert event.user == "alice"  # the daemon's TLS name, though no policy maps it
    assert "no policy loaded" in event.reason


def test_request_and_response_of_one_call_share_the_request_id() -> None:
    from dataclasses import replace

    from authz.memory import StaticPolicySource

    audit = MemoryAuditSink()
    authorizer = Authorizer(StaticPolicySource(POLICY), audit, ownership=MemoryOwnership())
    response = create_response()
    authorizer.authorize(replace(response, phase=Phase.REQUEST, status_code=None, response_body=None))
    authorizer.observe_response(response)
    other = replace(response, body=b'{"Image": "other"}', headers={**response.headers, "Content-Length": "18"})
    authorizer.observe_response(other)
    first, second, third = audit.events
    assert (first.phase, second.phase) == ("request", "response")
    assert first.request_id == second.request_id
    assert third.request_id != first.request_id  # another body is another call


def test_a_response_reads_the_network_name_from_the_request_body_and_decodes_no_other_body() -> None:
    from dataclasses import replace

    from authz.classify import classify
    from authz.memory import StaticPolicySource

    network = replace(
        create_response(),
        uri="/v1.41/networks/create",
        body=b'{"name": "team-net", "Driver": "bridge"}',  # Go matches field names case-insensitively
        headers={"Content-Type": "application/json", "Content-Length": "40"},
        response_body=json.dumps({"Id": "n" * 64, "Warning": ""}).encode(),
    )
    ownership = MemoryOwnership()
    authorizer = Authorizer(StaticPolicySource(POLICY), MemoryAuditSink(), ownership=ownership)
    assert authorizer.observe_response(network).allow
    assert ownership.owner_of("network", "team-net") == "alice"
    assert ownership.owner_of("network", "n" * 64) == "alice"

    operation = classify(create_response(), views=False)  # the response phase: judged already
    assert operation.body is None
    assert operation.view is None
    assert operation.body_digest == classify(replace(create_response(), phase=Phase.REQUEST)).body_digest
