"""What the plugin would decide, without the daemon, without audit records, without writes.

The real ``Authorizer`` runs (classify → identify → evaluate, with its error handling) on
requests shaped exactly as the daemon forwards them, against one snapshot of the current policy
and the real ownership table, read through ``SimulatedOwnership``: lookups see the table plus
what earlier steps of the same command created (a ``docker run`` may start the container its
create made); nothing is ever written to the table. The audit sink is an in-memory list that is
thrown away, and the identity is the chosen user (``SimulatedVerifier``), never a token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from admin.apicalls import ApiCall
from authz.classify import classify
from authz.decide import Authorizer
from authz.errors import AuthzError, IdentityError
from authz.identity.resolve import TOKEN_HEADER
from authz.memory import MemoryAuditSink, MemoryOwnership
from authz.policy.model import PolicySnapshot
from authz.ports import OwnershipStore
from authz.request import Decision, DockerRequest, Operation

__all__ = ["SimulatedOwnership", "SimulatedVerifier", "Simulation", "Step", "simulate"]

USER_AGENT = "Docker-Client/28.2.2 (linux) authz-simulator"
SIMULATED_TOKEN = "simulated.admin.ui"  # noqa: S105 - a placeholder, verified only by SimulatedVerifier
SIMULATED_JTI = "simulation"


@dataclass(frozen=True, slots=True)
class _Claims:
    subject: str
    token_id: str
    expires_at: float
    policy_revision: int = 0  # the simulation decides with one snapshot whatever a token says


class SimulatedVerifier:
    """Accepts only the simulator's placeholder, as the chosen user (``authz.ports.TokenVerifier``)."""

    def __init__(self, user: str) -> None:
        self.user = user

    def verify(self, token: str, now: float) -> _Claims:
        if token != SIMULATED_TOKEN:
            raise IdentityError("the simulator accepts no other token")
        return _Claims(self.user, SIMULATED_JTI, now + 3600)


class SimulatedOwnership:
    """The real table, read-only, plus an in-memory overlay for objects the simulation created."""

    def __init__(self, real: OwnershipStore) -> None:
        self._real = real
        self._overlay = MemoryOwnership()

    def owner_of(self, kind: str, reference: str) -> str | None:
        owner = self._overlay.owner_of(kind, reference)
        return owner if owner is not None else self._real.owner_of(kind, reference)

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        self._overlay.record(kind, object_id, name, owner)

    def forget(self, kind: str, reference: str) -> None:
        self._overlay.forget(kind, reference)

    def forget_named(self, kind: str, name: str) -> None:
        self._overlay.forget_named(kind, name)

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        self._overlay.rename(kind, reference, new_name)


class _FixedSource:
    """Every step of one simulation sees the same snapshot."""

    def __init__(self, snapshot: PolicySnapshot) -> None:
        self._snapshot = snapshot

    def current(self, at_least: int = 0) -> PolicySnapshot:
        return self._snapshot

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        return self._snapshot


@dataclass(frozen=True, slots=True)
class Step:
    call: ApiCall
    request: DockerRequest
    operation: Operation | None
    classify_error: str | None
    decision: Decision | None  # None: not sent (an earlier step was denied)

    @property
    def body_text(self) -> str:
        return self.request.body.decode("utf-8", "replace") if self.request.body else ""


@dataclass(frozen=True, slots=True)
class Simulation:
    user: str | None
    revision: int
    steps: list[Step]

    @property
    def allowed(self) -> bool:
        return all(step.decision is not None and step.decision.allow for step in self.steps)

    @property
    def deciding(self) -> Step | None:
        """The step that decided the outcome: the first deny, else the last step."""
        for step in self.steps:
            if step.decision is not None and not step.decision.allow:
                return step
        return self.steps[-1] if self.steps else None


def to_request(call: ApiCall, api_version: str, user: str | None) -> DockerRequest:
    """The AuthZReq the daemon would forward for ``call`` (headers as CLI 28 sends them)."""
    headers = {"User-Agent": USER_AGENT, **call.headers}
    body: bytes | None = None
    if call.body is not None:
        body = call.body if isinstance(call.body, bytes) else json.dumps(call.body, separators=(",", ":")).encode()
        headers["Content-Type"] = headers.get("Content-Type", "application/json")
        headers["Content-Length"] = str(len(body))
    elif call.method in ("POST", "PUT"):
        headers["Content-Length"] = "0"
    if user is not None:
        headers[TOKEN_HEADER] = SIMULATED_TOKEN
    uri = f"/v{api_version}{call.path}" if api_version else call.path
    return DockerRequest(method=call.method, uri=uri, headers=headers, body=body)


def simulate(
    snapshot: PolicySnapshot,
    ownership: OwnershipStore,
    user: str | None,
    calls: Sequence[ApiCall],
    api_version: str = "1.41",
) -> Simulation:
    """Decide ``calls`` in order as ``user`` (None: anonymous); stop sending after a deny."""
    owned = SimulatedOwnership(ownership)
    authorizer = Authorizer(
        policy=_FixedSource(snapshot),
        audit=MemoryAuditSink(),  # decisions of a simulation are not audit records
        verifier=SimulatedVerifier(user) if user is not None else None,
        ownership=owned,
        clock=time.time,
        node="admin-simulator",
    )
    steps: list[Step] = []
    denied = False
    for call in calls:
        request = to_request(call, api_version, user)
        operation: Operation | None = None
        error: str | None = None
        try:
            operation = classify(request)
        except AuthzError as exc:
            error = str(exc)
        decision = None if denied else authorizer.authorize(request)
        steps.append(Step(call, request, operation, error, decision))
        if decision is None:
            continue
        if not decision.allow:
            denied = True  # the CLI stops at the first refused request
        elif call.creates is not None and user is not None:
            kind, object_id, name = call.creates
            owned.record(kind, object_id, name, user)
    return Simulation(user, snapshot.revision, steps)
