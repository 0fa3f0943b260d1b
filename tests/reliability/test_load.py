"""Sustained load through a real dockerd while policies change and tokens are revoked.

Short run in the default suite (``DURATION`` s); ``AUTHZ_LOAD_LONG=1`` runs ten minutes. Four
threads run the docker CLI (viewer ``ps``; developer ``create``/``inspect``/``rm``; developer
``create``/``start``/``rm -f``; developer ``create --privileged``), a fifth applies two policies in
turn, a sixth samples the workers' RSS, and the test revokes tokens and measures how long until
the revoked token is refused. Checked:

- zero failures other than the intended denials (the privileged creates);
- every operation audited exactly once; ``authzctl audit verify`` passes;
- workers' RSS does not grow beyond ``RSS_GROWTH_MB`` after the warm-up;
- each revocation is effective within 1 s of ``authzctl token revoke`` returning.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from auditlib import audit_total, verify
from harness import http_headers_of, issue_token
from loadgen import Load, assert_no_forbidden_allowed, check_audit, developer, developer_start, privileged, viewer
from nodes import Supervisor, require_daemon, start_node
from stack import TEST_POLICY, Stack

LONG = os.environ.get("AUTHZ_LOAD_LONG", "") == "1"
DURATION = 600.0 if LONG else 30.0
WARMUP = 5.0
REVOKE_EVERY = 30.0 if LONG else 2.0
RSS_GROWTH_MB = 40.0 if not LONG else 60.0
REVOCATION_WITHIN = 1.0
INTENDED_DENIALS = {"dev-privileged"}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Every second: the workers' RSS (MB, per PID) while the load runs."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(daemon=True)
        self.supervisor = supervisor
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append((time.monotonic(), {pid: rss_mb(pid) for pid in self.supervisor.workers()}))


class PolicyFlipper(threading.Thread):
    """Applies policy A and B in turn every ``every`` s (B adds a user; neither changes dev or viewer)."""

    def __init__(self, stack: Stack, other: Path, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.policies, self.every = stack, (other, TEST_POLICY), every
        self.applied = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.stack.authzctl("policy", "apply", str(self.policies[self.applied % 2]))
            self.applied += 1


def revoked_at(url: str, user: str) -> float:
    """When the newest revocation of ``user``'s tokens was written (epoch s, from the store)."""
    from datetime import UTC

    from sqlalchemy import func, select

    from authz.storage import Database
    from authz.storage.models import TokenRow

    db = Database(url)
    try:
        with db.session() as session:
            at = session.scalar(select(func.max(TokenRow.revoked_at)).where(TokenRow.user == user))
    finally:
        db.dispose()
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def revocation_latency(stack: Stack, user: str, workdir: Path) -> float:
    """Issue ``user`` a token, hammer with it, revoke it; s from the revocation's commit until the
    token was refused for good (by every worker: the last allow, or the first 403 if none came after)."""
    config = issue_token(stack.env, user, workdir / f"revoke-{time.monotonic_ns()}")
    token = http_headers_of(config)["X-Authz-Token"]
    assert stack.daemon.api("GET", "/containers/json", token=token).status == 200
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def hammer() -> None:
        first_refusal: float | None = None
        while not stop.is_set():
            status = stack.daemon.api("GET", "/containers/json", token=token).status
            answers.append((time.time(), status))
            if status == 403 and first_refusal is None:
                first_refusal = time.monotonic()
            if first_refusal is not None and time.monotonic() - first_refusal > 1.5:
                return  # long enough to see a late allow from a worker that had not polled yet

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    stack.authzctl("token", "revoke", "--user", user)
    thread.join(timeout=15)
    stop.set()
    revoked = revoked_at(stack.env["AUTHZ_DATABASE_URL"], user)
    refused = [at for at, status in answers if status == 403]
    assert refused, f"the revoked token of {user} was still accepted 15 s later"
    assert {status for _, status in answers} <= {200, 403}, answers
    late = [at for at, status in answers if status == 200 and at > revoked]  # a worker not yet polled
    return max([refused[0], *late]) - revoked


@pytest.mark.e2e
@pytest.mark.timeout(DURATION + 240)  # the long run lasts longer than the suite's per-test default
def test_sustained_load(tmp_path: Path) -> None:
    require_daemon()
    other = tmp_path / "policy-b.yaml"
    other.write_text(TEST_POLICY.read_text() + "  extra: {roles: [viewer]}\n")
    workdir = Path(tempfile.mkdtemp(prefix="authz-load-", dir="/tmp"))
    with start_node(workdir, users=("admin", "dev", "viewer")) as (stack, supervisor):
        url = stack.env["AUTHZ_DATABASE_URL"]
        before = audit_total(url)
        sampler, flipper = Sampler(supervisor), PolicyFlipper(stack, other)
        load = Load(stack, [viewer, developer, developer_start, privileged]).start()
        sampler.start()
        flipper.start()
        started = time.monotonic()
        revocations: list[float] = []
        try:
            time.sleep(WARMUP)
            ends = started + DURATION
            while time.monotonic() < ends - 6:  # one revocation takes about 5 s (two CLI runs, 1.5 s watch)
                revocations.append(revocation_latency(stack, "dev2", workdir))
                time.sleep(max(0.0, min(REVOKE_EVERY, ends - 6 - time.monotonic())))
            time.sleep(max(0.0, ends - time.monotonic()))
        finally:
            flipper.stop.set()
            flipper.join(timeout=60)
            ops = load.stop()
            sampler.stop.set()
            sampler.join(timeout=10)
        elapsed = time.monotonic() - started

        assert_no_forbidden_allowed(ops)
        unintended = [op for op in ops if op.kind not in INTENDED_DENIALS and op.outcome != "allowed"]
        tally = check_audit(url, ops, timeout=60)
        verify(stack.env)
        decisions = audit_total(url) - before
        warm = [sum(rss.values()) for at, rss in sampler.samples if at - started >= WARMUP]
        growth = (max(warm[len(warm) // 2 :]) - warm[0]) if len(warm) > 2 else 0.0
        figures = {
            "seconds": round(elapsed, 1),
            "cli_operations": len(ops),
            "plugin_decisions_audited": decisions,
            "decisions_per_s": round(decisions / elapsed, 1),
            "unintended_failures": len(unintended),
            "policy_applies": flipper.applied,
            "revocations_s": [round(r, 3) for r in revocations],
            "workers_rss_mb_start_end": (round(warm[0], 1), round(warm[-1], 1)) if warm else None,
            **tally,
        }
        print(f"\nload: {figures}")
        assert not unintended, f"{len(unintended)} unintended failures, e.g. {unintended[:3]}"
        assert flipper.applied >= 2
        assert revocations, "no revocation was measured"
        assert max(revocations) <= REVOCATION_WITHIN, revocations
        assert growth <= RSS_GROWTH_MB, f"workers' RSS grew {growth:.1f} MB: {warm}"
