"""The fuzzed system: the plugin's Flask app in-process, and the checks every reply must pass.

``FuzzStack`` composes what production composes, minus storage: the real protocol, classifier,
identity (Ed25519 tokens from a real ``KeyStore``), engine with the built-in roles, and in-memory
ownership. The audit sink keeps only the newest events, so a 100,000-case run stays small.

``check_reply`` is the contract of property 1 (docs/fuzzing.md): HTTP 200, a JSON object,
``Allow`` a JSON boolean, no ``Err`` from an exception that escaped the parsers, and within the
time budget. ``fuzz_settings`` sizes every property for the default run or for the long run
(``AUTHZ_FUZZ_LONG=1``); ``CASES`` counts the requests sent, for the end-of-run summary.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings

from authz.audit import AuditEvent
from authz.decide import Authorizer
from authz.identity.token import JwtVerifier, KeyStore, issue_token
from authz.memory import MemoryOwnership, StaticPolicySource
from authz.policy.schema import parse_policy
from authz.server import create_app

__all__ = [
    "CASES",
    "LONG",
    "POLICY",
    "REQUEST_BUDGET",
    "USERS",
    "FuzzStack",
    "Reply",
    "RingAuditSink",
    "check_reply",
    "fuzz_settings",
]

LONG = os.environ.get("AUTHZ_FUZZ_LONG", "") not in ("", "0")
# The long run multiplies every property's examples; 25 x the default sizes gives > 100,000 cases.
LONG_FACTOR = int(os.environ.get("AUTHZ_FUZZ_FACTOR", "25"))
# CPU seconds one plugin call may take. A safety bound, not a benchmark: real calls take ~1 ms.
# CPU time of the calling thread (the test client runs the app in it), so that other load on the
# machine cannot fail the suite while a slow parser still does.
REQUEST_BUDGET = float(os.environ.get("AUTHZ_FUZZ_REQUEST_BUDGET", "1.0"))

# One user per built-in role the properties talk about; "nobody" exists but has no roles.
USERS = {"root": "admin", "dev": "developer", "val": "viewer"}
POLICY: dict[str, Any] = {
    "version": 1,
    "users": {**{name: {"roles": [role]} for name, role in USERS.items()}, "nobody": {"roles": []}},
}

CASES: Counter[str] = Counter()  # property name -> plugin calls made (printed by the conftest)


def fuzz_settings(examples: int, *, name: str = "") -> settings:
    """Hypothesis settings for one property: ``examples`` by default, ``LONG_FACTOR`` x that when long.

    The default run is derandomized (same cases on every CI run, no example database written);
    the long run draws fresh random cases each time (a failure prints its seed and a reproduce blob).
    """
    del name  # kept in call sites for readability of the sizing table
    common: dict[str, Any] = {
        "deadline": None,  # per-request time is asserted by check_reply, not per example
        "database": None,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example,
        ],
        "print_blob": True,
    }
    if LONG:
        return settings(max_examples=examples * LONG_FACTOR, derandomize=False, **common)
    return settings(max_examples=examples, derandomize=True, **common)


class RingAuditSink:
    """``AuditSink`` keeping the newest ``size`` events (and a count of all), thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self.events: deque[AuditEvent] = deque(maxlen=size)
        self.written = 0
        self._lock = Lock()

    def write(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)
            self.written += 1


@dataclass(frozen=True, slots=True)
class Reply:
    """One plugin reply: the decoded JSON, the CPU seconds and the wall seconds the call took."""

    body: dict[str, Any]
    seconds: float
    wall: float = 0.0

    @property
    def allow(self) -> bool:
        value = self.body["Allow"]
        assert isinstance(value, bool)
        return value


class FuzzStack:
    """The in-process plugin app with users ``root`` (admin), ``dev`` (developer), ``val`` (viewer)."""

    def __init__(self, key_dir: Path) -> None:
        self.keys = KeyStore(key_dir).load_or_create()
        self.source = StaticPolicySource(parse_policy(POLICY))
        self.audit = RingAuditSink()
        self.ownership = MemoryOwnership()
        self.authorizer = Authorizer(self.source, self.audit, JwtVerifier(self.keys), self.ownership, node="fuzz")
        self.app = create_app(self.authorizer)
        self.client: FlaskClient = self.app.test_client()
        now = time.time()
        # Long-lived tokens: a long run must not see its tokens expire halfway.
        self.tokens = {user: issue_token(self.keys, user, 7 * 86400, now).token for user in (*USERS, "nobody")}
        self.expired = issue_token(self.keys, "root", 60, now - 7200).token
        # Objects owned by dev and by root, so that mutated container paths hit both ownership branches.
        self.ownership.record("container", "a" * 64, "devbox", "dev")
        self.ownership.record("container", "b" * 64, "rootbox", "root")

    def post(
        self,
        endpoint: str,
        data: bytes,
        *,
        content_type: str | None = None,
        method: str = "POST",
        count_as: str = "",
    ) -> Reply:
        """Send raw ``data`` to ``endpoint`` (no Content-Type, like dockerd, unless given)."""
        headers = {} if content_type is None else {"Content-Type": content_type}
        # The budget judges what an input costs the plugin. A collection of the run's own garbage
        # (Hypothesis's: 0.9 s for 850,000 objects once in a long run) lands in whichever call
        # allocates next; it waits until after the call instead.
        collecting = gc.isenabled()
        gc.disable()
        try:
            cpu, wall = time.thread_time(), time.perf_counter()
            response = self.client.open(endpoint, method=method, data=data, headers=headers)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        finally:
            if collecting:
                gc.enable()
        CASES[count_as or endpoint] += 1
        return _decode(response.status_code, response.data, cpu, wall, endpoint)

    def call(self, payload: dict[str, Any] | bytes, phase: str = "AuthZReq", *, count_as: str = "") -> Reply:
        """One AuthZReq/AuthZRes call with a wire document (dict) or raw bytes."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.post(f"/AuthZPlugin.{phase}", data, count_as=count_as or phase)


def _decode(status: int, data: bytes, cpu: float, wall: float, endpoint: str) -> Reply:
    assert status == 200, f"{endpoint} answered HTTP {status}: {data[:300]!r}"
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise AssertionError(f"{endpoint} answered non-JSON {data[:300]!r}: {exc}") from None
    assert isinstance(body, dict), f"{endpoint} answered a JSON {type(body).__name__}, not an object"
    return Reply(body, cpu, wall)


# Errors a reply may carry in Err without meaning that an exception escaped: AuthZRes turns an
# unreadable payload (RequestError and subclasses) into a recorded allow with the reason.
_EXPECTED_RES_ERRORS = ("RequestError(", "RouteError(", "BodyError(")
# The only AuthZRes a deny may answer: nothing ran that a deny would hide (docker-authz.md 2.8).
_JUDGED = ("container:inspect", "network:inspect", "volume:inspect", "exec:inspect", "volume:create")
_JUDGED_ANSWERS = tuple(f"authz: denied {action}" for action in _JUDGED)


def check_reply(reply: Reply, phase: str = "AuthZReq", *, budget: float = REQUEST_BUDGET) -> None:
    """Property 1: the reply the daemon gets is always a well-formed, timely decision.

    - ``Allow`` is a JSON boolean (a string or a missing key makes the daemon fail the API call);
    - ``Msg`` is a string starting ``authz: denied`` on a deny;
    - no ``Err`` on AuthZReq (every ``Err`` there comes from an exception that escaped classify,
      identify or evaluate, or from a failing store, and the in-memory store never fails);
    - on AuthZRes, ``Allow`` is true (its verdict cannot undo what already ran: server.py), except
      for the answers the plugin judges (an inspect's details, a volume create that found the
      volume existing: decide.py), whose deny says so; an ``Err`` may only name an unreadable
      payload;
    - any other call (wrong path or method, oversized) gets a JSON deny from the error handler;
    - ``/Plugin.Activate`` (``phase="Activate"``) answers ``{"Implements": ["authz"]}``;
    - the call took less than ``budget`` CPU seconds (``REQUEST_BUDGET`` by default).
    """
    body = reply.body
    assert reply.seconds < budget, f"plugin call took {reply.seconds:.3f} CPU s (budget {budget}s)"
    if phase == "Activate":
        assert body == {"Implements": ["authz"]}, body
        return
    assert "Allow" in body, f"reply without Allow: {body}"
    assert isinstance(body["Allow"], bool), f"Allow is not a JSON boolean: {body}"
    assert set(body) <= {"Allow", "Msg", "Err"}, f"unexpected reply keys: {body}"
    if phase == "AuthZReq":
        assert "Err" not in body, f"an exception escaped the decision: {body}"
        if not body["Allow"]:
            assert isinstance(body.get("Msg"), str), body
            assert body["Msg"].startswith("authz: denied"), body
    elif phase == "AuthZRes":
        if not body["Allow"]:
            assert str(body.get("Msg")).startswith(_JUDGED_ANSWERS), f"AuthZRes denied what it must allow: {body}"
        err = body.get("Err")
        assert err is None or err.startswith(_EXPECTED_RES_ERRORS), f"an exception escaped AuthZRes: {body}"
    else:  # any other call (wrong path or method, 413): the error handler's JSON deny
        assert body["Allow"] is False, body
        assert isinstance(body.get("Msg"), str), body
