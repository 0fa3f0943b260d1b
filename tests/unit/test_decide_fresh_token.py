"""A token issued at a revision the worker has not read yet: the Authorizer asks its source for it.

The source here holds two snapshots: revision 1 without carol, revision 2 with her (an admin added
her, then issued her token at revision 2). What the store does to catch up is tested with a real
database in tests/integration/test_storage.py; here, that both phases ask for it and decide with
what they get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from authz.decide import Authorizer
from authz.memory import MemoryAuditSink, MemoryOwnership
from authz.policy.model import PolicySnapshot
from authz.policy.schema import parse_policy
from authz.request import DockerRequest, Phase

NOW = 1_800_000_000.0
BEFORE = PolicySnapshot(revision=1, policy=parse_policy({"version": 1, "users": {"admin": {"roles": ["admin"]}}}))
AFTER = PolicySnapshot(
    revision=2,
    policy=parse_policy({"version": 1, "users": {"admin": {"roles": ["admin"]}, "carol": {"roles": ["developer"]}}}),
)
CONTAINER_ID = "c0ffee" * 10 + "abcd"


class CatchingUpSource:
    """Serves revision 1 until asked for revision 2 or later; records every ``at_least`` asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def current(self, at_least: int = 0) -> PolicySnapshot:
        self.asked.append(("current", at_least))
        return AFTER if at_least >= 2 else BEFORE

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        self.asked.append(("last_known", at_least))
        return AFTER if at_least >= 2 else BEFORE


@dataclass(frozen=True)
class Claims:
    subject: str
    token_id: str
    expires_at: float
    policy_revision: int


class Verifier:
    def __init__(self, revision: int) -> None:
        self.revision = revision

    def verify(self, token: str, now: float) -> Claims:
        return Claims(token, f"jti-{token}", now + 3600, self.revision)


def create(phase: Phase) -> DockerRequest:
    body = json.dumps({"Image": "tiny", "User": "1000", "HostConfig": {"NetworkMode": "none"}}).encode()
    request = DockerRequest(
        method="POST",
        uri="/v1.41/containers/create?name=web",
        headers={"Content-Type": "application/json", "Content-Length": str(len(body)), "X-Authz-Token": "carol"},
        body=body,
        phase=Phase.REQUEST,
    )
    if phase is Phase.REQUEST:
        return request
    response = json.dumps({"Id": CONTAINER_ID}).encode()
    return replace(request, phase=Phase.RESPONSE, status_code=201, response_body=response)


def authorizer(token_revision: int) -> tuple[Authorizer, CatchingUpSource, MemoryOwnership, MemoryAuditSink]:
    source, ownership, audit = CatchingUpSource(), MemoryOwnership(), MemoryAuditSink()
    authz = Authorizer(source, audit, verifier=Verifier(token_revision), ownership=ownership, clock=lambda: NOW)
    return authz, source, ownership, audit


def test_a_token_from_a_newer_revision_is_decided_and_recorded_with_that_revision() -> None:
    authz, source, ownership, audit = authorizer(token_revision=2)
    decision = authz.authorize(create(Phase.REQUEST))
    assert decision.allow, decision.message
    authz.observe_response(create(Phase.RESPONSE))
    assert ownership.owner_of("container", "web") == "carol"
    assert source.asked == [("current", 2), ("last_known", 2)]
    assert [(event.user, event.roles) for event in audit.events] == [("carol", ("developer",))] * 2


def test_a_token_without_a_revision_is_decided_with_the_snapshot_held() -> None:
    authz, source, ownership, _audit = authorizer(token_revision=0)
    decision = authz.authorize(create(Phase.REQUEST))
    assert not decision.allow
    assert 'token subject "carol" is not a known user' in decision.message
    authz.observe_response(create(Phase.RESPONSE))
    assert ownership.owner_of("container", "web") is None
    assert source.asked == [("current", 0), ("last_known", 0)]
