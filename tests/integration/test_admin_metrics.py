"""Metrics: the Authorizer's observer, prometheus multiprocess files written by several processes
and merged by the admin listener's /metrics (address allow-list), and the plugin's /healthz.

Multiprocess mode is per process and global in prometheus-client, so the processes that write
metrics are subprocesses; this process only reads the files (as the admin listener does).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin.testing import AdminClient, make_app
from authz.decide import Authorizer
from authz.identity.token import JwtVerifier, KeyStore, issue_token
from authz.memory import MemoryAuditSink, StaticPolicySource
from authz.metrics import clear_directory, token_failure_reason
from authz.policy.schema import parse_policy
from authz.request import Decision, DockerRequest

POLICY = {"version": 1, "users": {"dev": {"roles": ["developer"]}, "off": {"roles": ["viewer"], "disabled": True}}}

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from authz.decide import Authorizer
    from authz.identity.token import JwtVerifier, KeyStore
    from authz.memory import MemoryAuditSink, StaticPolicySource
    from authz.metrics import MeteredPolicySource, plugin_metrics
    from authz.policy.schema import parse_policy
    from authz.request import DockerRequest

    state, revision = Path(sys.argv[1]), int(sys.argv[2])
    metrics = plugin_metrics(state)
    assert metrics is not None
    source = MeteredPolicySource(StaticPolicySource(parse_policy({"version": 1}), revision=revision), metrics)
    verifier = JwtVerifier(KeyStore(state / "keys").load_or_create())
    authorizer = Authorizer(source, MemoryAuditSink(), verifier, observer=metrics.observe)
    authorizer.authorize(DockerRequest("HEAD", "/_ping"))
    authorizer.authorize(DockerRequest("GET", "/v1.41/containers/json"))
    authorizer.authorize(DockerRequest("GET", "/v1.41/containers/json", headers={"X-Authz-Token": "not-a-jwt"}))
    """
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_observer_sees_every_decision_with_its_action_and_time(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys").load_or_create()
    seen: list[tuple[Decision, str, float]] = []
    base = time.time()  # the clock also checks the token's times: keep it near now
    clock = iter([base, base + 0.25, base + 1, base + 1.5, base + 2, base + 2.125]).__next__
    authorizer = Authorizer(StaticPolicySource(parse_policy(POLICY)), MemoryAuditSink(), JwtVerifier(keys),
                            clock=clock, observer=lambda d, a, s: seen.append((d, a, s)))  # fmt: skip
    token = issue_token(keys, "dev", 3600, base - 1).token
    ok = authorizer.authorize(DockerRequest("GET", "/v1.41/containers/json", headers={"X-Authz-Token": token}))
    denied = authorizer.authorize(DockerRequest("GET", "/v1.41/swarm", headers={"X-Authz-Token": token}))
    broken = authorizer.record_unreadable("empty plugin request")
    assert [(d.allow, a, round(s, 6)) for d, a, s in seen] == [
        (True, "container:list", 0.25), (False, "swarm:inspect", 0.5), (False, "unknown", 0.125)]  # fmt: skip
    assert [d for d, _a, _s in seen] == [ok, denied, broken]


def test_a_failing_observer_never_changes_the_answer(tmp_path: Path) -> None:
    def explode(_d: Decision, _a: str, _s: float) -> None:
        raise RuntimeError("metrics broke")

    authorizer = Authorizer(StaticPolicySource(parse_policy(POLICY)), MemoryAuditSink(), observer=explode)
    assert authorizer.authorize(DockerRequest("HEAD", "/_ping")).allow


def test_identity_failures_get_a_reason_label(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys").load_or_create()
    other = KeyStore(tmp_path / "other").load_or_create()
    now = time.time()
    source = StaticPolicySource(parse_policy(POLICY), revoked=frozenset({"gone"}))
    authorizer = Authorizer(source, MemoryAuditSink(), JwtVerifier(keys))
    revoked = issue_token(keys, "dev", 3600, now)
    source.replace(parse_policy(POLICY), revoked=frozenset({revoked.token_id}))
    header, payload, signature = issue_token(keys, "dev", 3600, now).token.split(".")
    tampered = ".".join((header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")))
    cases = {
        "malformed": "not-a-jwt",
        "expired": issue_token(keys, "dev", 1, now - 3600).token,
        "revoked": revoked.token,
        "unknown_user": issue_token(keys, "ghost", 3600, now).token,
        "user_disabled": issue_token(keys, "off", 3600, now).token,
        "unknown_key": issue_token(other, "dev", 3600, now).token,
        "bad_signature": tampered,
    }
    for reason, token in cases.items():
        decision = authorizer.authorize(DockerRequest("GET", "/v1.41/info", headers={"X-Authz-Token": token}))
        assert not decision.allow
        assert token_failure_reason(decision) == reason, decision.reason
    assert token_failure_reason(Decision(False, "x", rule="default-deny")) is None


def test_metrics_of_several_processes_are_merged_on_the_admin_listener(tmp_path: Path) -> None:
    app, _db = make_app(tmp_path)
    state = app.extensions["authz_admin"].settings.state_dir
    for revision in ("3", "5"):
        subprocess.run([sys.executable, "-c", WRITER, str(state), revision], check=True, timeout=120)
    directory = state / "metrics"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert len(list(directory.glob("*.db"))) >= 2 * 3  # each process its own files
    response = AdminClient(app).get("/metrics")  # no session needed, loopback client
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    found = samples(response.text)
    deny = ("authz_decisions_total", (("action", "container:list"), ("result", "deny"), ("role", "none")))
    ping = ("authz_decisions_total", (("action", "system:ping"), ("result", "allow"), ("role", "none")))
    assert found[deny] == 4
    assert found[ping] == 2
    assert found[("authz_decision_seconds_count", ())] == 6
    assert found[("authz_token_failures_total", (("reason", "malformed"),))] == 2
    assert found[("authz_policy_revision", ())] == 5  # the highest revision of any worker
    assert clear_directory(directory) >= 6  # what a service start does before forking workers
    assert samples(AdminClient(app).get("/metrics").text) == {}


FORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from authz.metrics import plugin_metrics
    from authz.request import Decision

    metrics = plugin_metrics(Path(sys.argv[1]))
    allow = Decision(True, "ok", rule="r", role="developer")
    metrics.observe(allow, "system:ping", 0.001)
    child = os.fork()  # as gunicorn forks a worker
    if child == 0:
        for _ in range(3):
            metrics.observe(allow, "system:ping", 0.001)
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    metrics.observe(allow, "system:ping", 0.001)
    print(os.getpid(), child)
    """
)


def test_a_forked_child_writes_its_own_metric_files(tmp_path: Path) -> None:
    """The pid prometheus-client names the files by is cached; a fork must still change it."""
    app, _db = make_app(tmp_path)
    state = app.extensions["authz_admin"].settings.state_dir
    done = subprocess.run([sys.executable, "-c", FORKER, str(state)], check=True, timeout=120, capture_output=True,
                          text=True)  # fmt: skip
    parent, child = done.stdout.split()
    names = {path.name for path in (state / "metrics").glob("counter_*.db")}
    assert names == {f"counter_{parent}.db", f"counter_{child}.db"}
    found = samples(AdminClient(app).get("/metrics").text)
    ping = ("authz_decisions_total", (("action", "system:ping"), ("result", "allow"), ("role", "developer")))
    assert found[ping] == 5  # the parent's 2 and the child's 3, none lost or counted twice
    assert found[("authz_decision_seconds_count", ())] == 5


BACKLOG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from authz.metrics import plugin_metrics

    metrics = plugin_metrics(Path(sys.argv[1]))
    metrics.track_backlog(lambda: int(sys.argv[2]), every=0.05)
    time.sleep(0.3)
    print("ready", flush=True)
    sys.stdin.read()  # live until the test closes our stdin; then exit normally
    """
)


def test_audit_backlog_is_the_sum_over_live_workers(tmp_path: Path) -> None:
    app, _db = make_app(tmp_path)
    state = app.extensions["authz_admin"].settings.state_dir
    client = AdminClient(app)

    def backlog() -> float | None:
        return samples(client.get("/metrics").text).get(("authz_audit_backlog", ()))

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", BACKLOG, str(state), count], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for count in ("7", "5")
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        assert backlog() == 12
        first = workers[0]
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(timeout=30) == 0
        assert backlog() == 5  # a worker that ended took its share with it
    finally:
        for worker in workers:
            if worker.poll() is None:
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait(timeout=30)
            if worker.stdout is not None:
                worker.stdout.close()


@pytest.mark.parametrize(
    ("allow", "address", "forwarded", "trust", "status"),
    [
        (None, "127.0.0.1", None, 0, 200),
        (None, "::1", None, 0, 200),
        (None, "192.0.2.5", None, 0, 403),
        ("192.0.2.0/24", "192.0.2.5", None, 0, 200),
        ("192.0.2.0/24", "127.0.0.1", "192.0.2.9", 0, 403),  # X-Forwarded-For ignored without a proxy
        ("192.0.2.0/24", "127.0.0.1", "192.0.2.9", 1, 200),
        ("", "127.0.0.1", None, 0, 403),  # an empty list allows nobody
    ],
)
def test_metrics_allow_list(
    tmp_path: Path, allow: str | None, address: str, forwarded: str | None, trust: int, status: int
) -> None:
    from admin.settings import parse_networks

    overrides: dict[str, object] = {"trust_proxy": trust}
    if allow is not None:
        overrides["metrics_allow"] = parse_networks(allow)
    app, _db = make_app(tmp_path, **overrides)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address}, headers=headers)
    assert response.status_code == status


HEALTH = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    from authz.composition import build_plugin_app
    from authz.config import Config
    from authz.storage.db import Database

    state, db_file = Path(sys.argv[1]), Path(sys.argv[2])
    app = build_plugin_app(Config(database_url=f"sqlite:///{db_file}", state_dir=state, node="t"))
    client = app.test_client()
    first = client.get("/healthz")
    db_file.rename(db_file.with_suffix(".moved"))  # the store is gone (a new empty file is no store)
    for obj in gc.get_objects():  # pooled connections still hold the old file open: drop them
        if isinstance(obj, Database):
            obj.dispose()
    second = client.get("/healthz")
    print(json.dumps([[first.status_code, first.get_json()], [second.status_code, second.get_json()]]))
    """
)


def test_plugin_healthz_reports_policy_and_store(tmp_path: Path) -> None:
    _app, db = make_app(tmp_path)
    db.dispose()
    result = subprocess.run(
        [sys.executable, "-c", HEALTH, str(tmp_path / "plugin-state"), str(tmp_path / "authz.db")],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (status1, body1), (status2, body2) = json.loads(result.stdout.strip().splitlines()[-1])
    assert status1 == 200
    assert body1["ok"]
    assert body1["policy_loaded"]
    assert body1["db_reachable"]
    assert body1["policy_revision"] == body1["store_revision"]
    assert status2 == 503
    assert body2["policy_loaded"]
    assert not body2["db_reachable"]
    assert not body2["ok"]
    assert "db_error" in body2
