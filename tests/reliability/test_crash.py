"""Crash safety under sustained load from a real dockerd (RELIABILITY.md, "crashes").

One supervised node (``nodes.start_node``: real ``authzctl serve`` restarted like systemd's
``Restart=always``, a private dockerd, the audit journal on a tmpfs of its own) takes load from
three threads running the docker CLI (viewer ``ps``; developer ``create``/``inspect``/``rm``;
developer ``create --privileged``, which the policy denies) while each fault is injected:

(a) kill -9 of a gunicorn worker; (b) kill -9 of the gunicorn master; (c) the audit journal's
filesystem full; (d) clock jumps (in process, and a token at the edge of its expiry on the real
daemon); (e) ``authzctl policy apply`` of a large policy killed halfway.

After each: no privileged create was allowed, every operation that got a decision is in the
audit log exactly once (by its marker), ``authzctl audit verify`` passes, and the service was
back within 2 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from auditlib import verify
from harness import authzctl_bin
from hostutil import clean_env
from loadgen import Load, Op, assert_no_forbidden_allowed, check_audit, developer, privileged, viewer
from nodes import Supervisor, answers, require_daemon, start_node
from stack import TEST_POLICY, Stack

BACK_WITHIN = 2.0
Node = tuple[Stack, Supervisor]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require_daemon()
    workdir = Path(tempfile.mkdtemp(prefix="authz-crash-", dir="/tmp"))  # short: dockerd's sockets live here
    with start_node(workdir, journal_tmpfs_mb=16) as started:
        yield started


def under_load(stack: Stack, fault: Callable[[], dict[str, Any]], before: float = 1.5,
               after: float = 2.0) -> tuple[list[Op], dict[str, Any]]:  # fmt: skip
    """Run the load, inject ``fault`` after ``before`` s, keep going ``after`` s; ops and fault figures."""
    load = Load(stack, [viewer, developer, privileged]).start()
    try:
        time.sleep(before)
        figures = fault()
        time.sleep(after)
    finally:
        ops = load.stop()
    return ops, figures


def settle(stack: Stack, ops: list[Op], figures: dict[str, Any]) -> dict[str, Any]:
    """The checks every fault ends with; the tally for the report."""
    assert_no_forbidden_allowed(ops)
    tally = check_audit(stack.env["AUTHZ_DATABASE_URL"], ops)
    verify(stack.env)
    assert tally.get("allowed", 0) > 0, f"nothing was allowed under load: {tally}"
    return {**figures, **tally}


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.e2e
def test_a_kill_worker(node: Node) -> None:
    stack, supervisor = node

    def kill_worker() -> dict[str, Any]:
        workers = supervisor.workers()
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        back = wait_for(lambda: victim not in supervisor.workers() and len(supervisor.workers()) == len(workers)
                        and answers(stack.plugin.socket), 10)  # fmt: skip
        return {"worker_replaced_s": round(back, 3)}

    ops, figures = under_load(stack, kill_worker)
    result = settle(stack, ops, figures)
    print(f"\n(a) kill -9 worker: {result}")
    assert figures["worker_replaced_s"] <= BACK_WITHIN
    assert result.get("error", 0) == 0, [op for op in ops if op.outcome == "error"][:3]


@pytest.mark.e2e
def test_b_kill_master(node: Node) -> None:
    stack, supervisor = node

    def kill_master() -> dict[str, Any]:
        master = supervisor.master()
        restarts = len(supervisor.restarts)
        killed = time.monotonic()
        os.kill(master, signal.SIGKILL)
        wait_for(lambda: len(supervisor.restarts) > restarts, 30)
        back = time.monotonic() - killed
        assert answers(stack.plugin.socket)
        return {"master_restart_s": round(back, 3), "supervisor_start_s": round(supervisor.restarts[-1], 3)}

    ops, figures = under_load(stack, kill_master, after=3.0)
    result = settle(stack, ops, figures)
    print(f"\n(b) kill -9 master: {result}")
    assert figures["master_restart_s"] <= BACK_WITHIN
    assert result.get("error", 0) == 0, [op for op in ops if op.outcome == "error"][:3]


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte with one file; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (256 * 1024, 4096, 64, 1):  # big writes first, then what a page cannot hold
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue
    return filler


@pytest.mark.e2e
def test_c_journal_disk_full(node: Node) -> None:
    stack, _ = node
    journal = Path(stack.env["AUTHZ_STATE_DIR"]) / "audit-journal"

    def disk_full() -> dict[str, Any]:
        filler = fill(journal)
        try:
            time.sleep(2.0)  # load goes on against a full disk
            denied = stack.api_as("viewer", "GET", "/containers/json")
        finally:
            filler.unlink()
        freed = time.monotonic()
        wait_for(lambda: stack.api_as("viewer", "GET", "/containers/json").status == 200, 10)
        assert denied.status == 403, denied.text
        assert "audit log cannot be written" in denied.text, denied.text
        return {"back_after_space_freed_s": round(time.monotonic() - freed, 3), "freed_at": freed}

    ops, figures = under_load(stack, disk_full)
    result = settle(stack, ops, figures)
    print(f"\n(c) audit journal disk full: {result}")
    assert result.get("denied-audit", 0) > 0, "the full disk never refused a decision"
    assert figures["back_after_space_freed_s"] <= BACK_WITHIN
    assert result.get("error", 0) == 0, [op for op in ops if op.outcome == "error"][:3]
    # A CLI whose _ping the full disk refused, its request made once the space was back: only then.
    back = figures["freed_at"] + BACK_WITHIN
    late = [op for op in ops if op.outcome == "ping-refused" and op.started > back]
    assert not late, late[:3]


@pytest.mark.e2e
def test_d_token_at_the_edge_of_expiry(node: Node) -> None:
    """A token whose validity (exp + the verifier's 30 s leeway) ends in 1.5 s: allowed, then denied."""
    from authz.identity.token import KeyStore, issue_token

    stack, _ = node
    keys = KeyStore(Path(stack.env["AUTHZ_STATE_DIR"]) / "keys").load_or_create()
    token = issue_token(keys, "viewer", 1, time.time() - 29.5)
    ends = token.expires_at + 30
    # Each call is bracketed by when it was sent and when its answer came back: the plugin decided
    # somewhere in between, so an allowed call must have been *sent* before the end and a refused
    # one *answered* after it (the reply time alone would blame a call answered a few ms late).
    seen: list[tuple[float, float, int, str]] = []
    while time.time() < ends + 1.5:
        sent = time.time()
        reply = stack.daemon.api("GET", "/containers/json", token=token.token)
        seen.append((sent, time.time(), reply.status, reply.text))
        time.sleep(0.05)
    allowed = [sent for sent, _, status, _ in seen if status == 200]
    denied = [(answered, text) for _, answered, status, text in seen if status == 403]
    assert allowed, "the token was never accepted"
    assert denied, "the expired token was never refused"
    assert max(allowed) < ends, "accepted after its end"
    assert min(at for at, _ in denied) >= ends, "refused before its end"
    assert all(status in (200, 403) for _, _, status, _ in seen), seen
    assert "expired" in denied[0][1], denied[0][1]


def _write_locked_for(path: Path, seconds: float, timeout: float = 30.0) -> float:
    """Wait until someone has held SQLite's write lock on ``path`` for ``seconds`` in a row.

    The shipper and ownership writes hold it for milliseconds; ``policy apply`` holds it for its
    whole transaction. Returns when the lock was first seen taken.
    """
    import sqlite3

    held_since: float | None = None
    deadline = time.monotonic() + timeout
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        while time.monotonic() < deadline:
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                held_since = None
            except sqlite3.OperationalError:  # "database is locked": a writer holds it
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since >= seconds:
                    return held_since
            time.sleep(0.01)
    finally:
        probe.close()
    raise AssertionError(f"no writer held the lock for {seconds}s within {timeout}s")


@pytest.mark.e2e
def test_e_policy_apply_killed_halfway(node: Node, tmp_path: Path) -> None:
    """kill -9 of ``policy apply`` while its transaction holds the write lock: old policy, whole."""
    stack, _ = node
    big = tmp_path / "big.yaml"
    bulk = "".join(f"  bulk{i:05d}: {{roles: [viewer]}}\n" for i in range(1000))
    big.write_text(TEST_POLICY.read_text().replace("users:\n", "users:\n" + bulk, 1))
    database = Path(stack.env["AUTHZ_DATABASE_URL"].removeprefix("sqlite:///"))
    outcomes: list[str] = []

    def interrupted_applies() -> dict[str, Any]:
        phase_started = time.monotonic()
        for into in (0.3, 0.8):  # seconds into the write transaction
            before = _export(stack)
            revision = _revision(stack)
            with subprocess.Popen([authzctl_bin(), "policy", "apply", str(big)], env=clean_env(stack.env),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as apply:  # fmt: skip
                locked = _write_locked_for(database, 0.25)
                time.sleep(max(0.0, locked + into - time.monotonic()))
                apply.send_signal(signal.SIGKILL)
                code = apply.wait()
            after = _export(stack)
            if code == -signal.SIGKILL and after == before:
                outcomes.append(f"killed {into}s into its transaction: old policy kept (revision {revision})")
                assert _revision(stack) == revision
            else:  # it finished before the kill: then the whole new policy is there
                outcomes.append(f"{into}s: completed before the kill (exit {code}), whole new policy")
                assert "bulk00999" in after
                assert _revision(stack) == revision + 1
                stack.authzctl("policy", "apply", str(TEST_POLICY))
            _assert_revision_consistent(stack)
        started = time.monotonic()
        wait_for(lambda: stack.api_as("viewer", "GET", "/containers/json").status == 200, 10)
        return {"apply_outcomes": outcomes, "viewer_ok_after_s": round(time.monotonic() - started, 3),
                "applies_took_s": round(started - phase_started, 1)}  # fmt: skip

    ops, figures = under_load(stack, interrupted_applies, after=1.0)
    settled = time.monotonic()
    result = settle(stack, ops, figures)
    result["checks_took_s"] = round(time.monotonic() - settled, 1)
    print(f"\n(e) policy apply killed halfway: {result}")
    assert any("old policy kept" in outcome for outcome in outcomes), outcomes
    # nothing half-written blocks the next change: an apply after the kills goes through whole
    small = tmp_path / "small.yaml"
    small.write_text(TEST_POLICY.read_text() + "  after-the-kills: {roles: [viewer]}\n")
    assert "applied: policy revision" in stack.authzctl("policy", "apply", str(small)).stdout
    stack.authzctl("policy", "apply", str(TEST_POLICY))
    _assert_revision_consistent(stack)


def _export(stack: Stack) -> str:
    """The stored policy as ``authzctl policy export`` prints it (read in this process: faster)."""
    from authz.storage import Database
    from authz.storage.directory import PolicyStore
    from authz.storage.yamlio import export_yaml

    db = Database(stack.env["AUTHZ_DATABASE_URL"])
    try:
        return export_yaml(PolicyStore(db).load_policy())
    finally:
        db.dispose()


def _revision(stack: Stack) -> int:
    from authz.storage import Database
    from authz.storage.revision import read_revision

    db = Database(stack.env["AUTHZ_DATABASE_URL"])
    try:
        with db.session() as session:
            return read_revision(session)
    finally:
        db.dispose()


def _assert_revision_consistent(stack: Stack) -> None:
    """The revision counter equals the newest history entry: no change without its bump."""
    from sqlalchemy import func, select

    from authz.storage import Database
    from authz.storage.models import PolicyHistoryRow

    db = Database(stack.env["AUTHZ_DATABASE_URL"])
    try:
        with db.session() as session:
            newest = session.scalar(select(func.max(PolicyHistoryRow.revision)))
        assert _revision(stack) == (newest or 0)
    finally:
        db.dispose()


def test_d_clock_jumps_in_process(tmp_path: Path) -> None:
    """The Authorizer's clock (``time.time`` in the plugin) jumps forward and back.

    Token times are checked against it (30 s leeway); nothing else in a decision reads the wall
    clock (the policy poll runs on ``time.monotonic``), so a jump changes token validity only.
    """
    from authz.decide import Authorizer
    from authz.identity.token import JwtVerifier, KeyStore, issue_token
    from authz.memory import MemoryAuditSink, StaticPolicySource
    from authz.policy.schema import parse_policy
    from authz.protocol import parse_request
    from authz.request import Phase
    from authz.storage.yamlio import load_mapping

    offset = [0.0]
    keys = KeyStore(tmp_path / "keys").load_or_create()
    token = issue_token(keys, "viewer", 3600, time.time()).token
    audit = MemoryAuditSink()
    authorizer = Authorizer(StaticPolicySource(parse_policy(load_mapping(TEST_POLICY.read_text()))), audit,
                            JwtVerifier(keys), clock=lambda: time.time() + offset[0])  # fmt: skip
    raw = json.dumps({"RequestMethod": "GET", "RequestUri": "/v1.47/containers/json",
                      "RequestHeaders": {"X-Authz-Token": token}}).encode()  # fmt: skip

    def decide(jump: float) -> tuple[bool, str]:
        offset[0] = jump
        decision = authorizer.authorize(parse_request(raw, Phase.REQUEST))
        return decision.allow, decision.message

    assert decide(0) == (True, "")
    assert decide(3500)[0]  # an hour ahead, still inside the token's life
    allowed, message = decide(3600 + 31)  # past exp + leeway
    assert not allowed
    assert "expired" in message
    allowed, message = decide(-31)  # before iat - leeway: the clock went back
    assert not allowed
    assert "issued in the future" in message
    assert decide(0) == (True, "")  # back to normal: accepted again
    assert len(audit.events) == 5  # every decision, allowed or not, was recorded
    assert [event.time for event in audit.events][2] > audit.events[0].time + 3600  # audit carries the jump


def test_c_journal_unwritable_at_each_phase(tmp_path: Path) -> None:
    """In process, with the journal on /dev/full: what each kind of answer becomes.

    AuthZReq allow → deny (nothing is allowed unrecorded); AuthZReq deny → still a deny, saying
    it went unrecorded; AuthZRes of a create → still an allow (the container exists already:
    denying the response would only tell the client it failed), ownership still recorded.
    """
    from authz.audit_journal import JournalAuditSink
    from authz.decide import Authorizer
    from authz.identity.token import JwtVerifier, KeyStore, issue_token
    from authz.memory import MemoryOwnership, StaticPolicySource
    from authz.policy.schema import parse_policy
    from authz.protocol import parse_request
    from authz.request import Phase
    from authz.storage.yamlio import load_mapping

    keys = KeyStore(tmp_path / "keys").load_or_create()
    token = issue_token(keys, "dev", 3600, time.time()).token
    ownership = MemoryOwnership()
    journal = JournalAuditSink(tmp_path / "journal", "n1", journal_path=Path("/dev/full"), sync="interval")
    authorizer = Authorizer(StaticPolicySource(parse_policy(load_mapping(TEST_POLICY.read_text()))), journal,
                            JwtVerifier(keys), ownership=ownership)  # fmt: skip

    def wire(uri: str, body: dict[str, Any], response: dict[str, Any] | None = None) -> bytes:
        import base64

        doc: dict[str, Any] = {"RequestMethod": "POST", "RequestUri": uri,
                               "RequestHeaders": {"X-Authz-Token": token, "Content-Type": "application/json"},
                               "RequestBody": base64.b64encode(json.dumps(body).encode()).decode()}  # fmt: skip
        if response is not None:
            doc.update(ResponseStatusCode=201, ResponseBody=base64.b64encode(json.dumps(response).encode()).decode())
        return json.dumps(doc).encode()

    plain = {"Image": "tiny", "User": "1000", "HostConfig": {"NetworkMode": "none"}}
    allowed = authorizer.authorize(parse_request(wire("/v1.47/containers/create?name=a", plain), Phase.REQUEST))
    assert not allowed.allow
    assert "nothing is allowed unrecorded" in allowed.message
    risky = {**plain, "HostConfig": {"NetworkMode": "none", "Privileged": True}}
    denied = authorizer.authorize(parse_request(wire("/v1.47/containers/create?name=b", risky), Phase.REQUEST))
    assert not denied.allow
    assert "privileged" in denied.message
    assert "(not recorded: the audit log cannot be written)" in denied.message
    response = wire("/v1.47/containers/create?name=c", plain, {"Id": "c" * 64})
    after = authorizer.observe_response(parse_request(response, Phase.RESPONSE))
    assert after.allow
    assert after.error is not None
    assert "audit write failed" in after.error
    assert ownership.owner_of("container", "c" * 64) == "dev"
    journal.close()
