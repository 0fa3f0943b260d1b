"""Break-glass against the real daemon: a developer's ``docker run --privileged`` is denied, allowed
while a grant is active (running plugins see it within a second), denied again after ``end`` or
expiry; every request made meanwhile is audited with ``admin`` among its roles, and the grant
itself is an audit event carrying the reason. CLI validation: tests/integration/test_breakglass_cli.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stack import Stack

from authz.storage import Database
from authz.storage.repositories import AuditFilter, AuditStore

PROBE = "bg-probe"
PRIVILEGED = {"Image": "tiny:latest", "Cmd": ["true"], "HostConfig": {"Privileged": True, "NetworkMode": "none"}}


def privileged_create(stack: Stack) -> int:
    """POST /containers/create (privileged) as dev; the HTTP status. A created probe is removed as admin."""
    reply = stack.api_as("dev", "POST", f"/containers/create?name={PROBE}", PRIVILEGED)
    if reply.status == 201:
        stack.docker_as("admin", "rm", "-f", PROBE, check=True)
    return reply.status


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def audit(stack: Stack, user: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
    """Audit records in the stack's store (read directly: polling through the CLI is slow)."""
    db = Database(stack.env["AUTHZ_DATABASE_URL"])
    try:
        return [r.to_dict() for r in AuditStore(db).iter_query(AuditFilter(user=user, action=action))]
    finally:
        db.dispose()


def test_breakglass_grant_end_and_expiry(e2e_stack_factory: Callable[..., Stack]) -> None:
    stack = e2e_stack_factory(users=("admin", "dev"))
    denied = stack.denied_prefix() + "authz: denied container:create for dev (roles: developer)"

    before = stack.docker_as("dev", "run", "--rm", "--network", "none", "--privileged", "tiny:latest", "true")
    assert before.returncode != 0
    assert denied in before.stderr

    reason = "INC-4711 registry mirror down; dev repairs it"
    granted_at = time.time()
    stack.authzctl("breakglass", "grant", "dev", "--ttl", "15m", "--reason", reason, "--author", "oncall")
    seen_after = wait_for("grant picked up", lambda: privileged_create(stack) == 201, timeout=5)
    # one revision poll (0.5 s) plus a request; measured here ~0.0-0.6 s
    assert seen_after < 1.5, f"the plugin saw the grant after {seen_after:.2f}s"
    print(f"break-glass grant effective after {seen_after:.2f}s")

    run = stack.docker_as("dev", "run", "--rm", "--network", "none", "--privileged", "tiny:latest", "true")
    assert stack.denied_prefix() not in run.stderr  # allowed; the runtime may still fail here

    stack.authzctl("breakglass", "end", "dev", "--author", "oncall")
    ended_after = wait_for("end picked up", lambda: privileged_create(stack) == 403, timeout=5)
    assert ended_after < 1.5
    ended_at = time.time()
    again = stack.docker_as("dev", "run", "--rm", "--network", "none", "--privileged", "tiny:latest", "true")
    assert denied in again.stderr

    # expiry without any further command
    stack.authzctl("breakglass", "grant", "dev", "--ttl", "3s", "--reason", "expiry check")
    wait_for("short grant picked up", lambda: privileged_create(stack) == 201, timeout=5)
    wait_for("grant expired", lambda: privileged_create(stack) == 403, timeout=8)

    # every decision for dev while the first grant was in force carried admin: from the first allowed
    # privileged create to the first denied one after it
    def first_grant_window() -> list[dict[str, Any]]:
        rows = [r for r in audit(stack, user="dev") if r["phase"] == "request" and r["time"] >= granted_at]
        creates = [r for r in rows if r["action"] == "container:create"]
        start = next((r["time"] for r in creates if r["allow"]), None)
        end = next((r["time"] for r in creates if start is not None and r["time"] > start and not r["allow"]), None)
        if start is None or end is None or end > ended_at:
            return []
        return [r for r in rows if start <= r["time"] < end]

    wait_for("audit shipped", lambda: any(r["action"] == "container:start" for r in first_grant_window()), timeout=10)
    records = first_grant_window()
    assert {r["action"] for r in records} >= {"container:create", "container:start"}
    assert all("admin" in r["roles"] and "developer" in r["roles"] for r in records)

    events = audit(stack, action="breakglass:*")
    grant = next(e for e in events if e["action"] == "breakglass:grant" and e["detail"]["reason"] == reason)
    assert grant["phase"] == "admin"
    assert grant["user"] == "oncall"
    assert grant["object"] == "dev"
    assert reason in grant["reason"]
    assert granted_at - 5 <= grant["time"] <= records[0]["time"]
    assert any(e["action"] == "breakglass:end" and e["object"] == "dev" for e in events)
