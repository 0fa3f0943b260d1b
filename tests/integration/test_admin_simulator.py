"""Admin UI: the simulator — docker command lines become the CLI's exact requests (checked against
captures of docker CLI 28.2.2), and the real engine decides them without audit or ownership writes."""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from admin.apicalls import ApiCall
from admin.cliflags import CommandError
from admin.dockercli import translate
from admin.simulation import simulate
from admin.testing import AdminClient, make_app
from authz.policy.schema import parse_policy
from authz.storage.db import Database
from authz.storage.models import AuditRow, OwnershipRow
from authz.storage.repositories import OwnershipRepository, PolicyStore
from authz.storage.source import StorePolicySource

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "captures"
HEX64 = re.compile(r"[0-9a-f]{64}")

# Capture labels whose command line the simulator supports; each is compared request by request.
LABELS = [
    "run-plain", "run-privileged", "run-mount-bind", "run-device", "run-memory", "run-sysctl", "run-cap-add",
    "run-attach-stdin", "run-detached", "run-tty", "run-user-root", "run-pid-host", "run-ipc-host",
    "run-inline-volume-bind", "run-tmpfs", "run-seccomp-unconfined", "run-read-only", "run-userns-host",
    "run-bind-root", "run-volume-hostroot", "run-d-box3", "tls-run",
    "create", "create-annotation-runtime", "create-gpus-run2", "create-join-namespaces", "create-network-host",
    "create-on-net", "create-publish", "create-publish-all", "create-systempaths-unconfined",
    "create-volumes-from-run2", "create-kitchen-sink-run2", "create-kitchen-sink-run3",
    "exec", "exec-detach-run2", "exec-env-workdir-run2", "exec-interactive", "exec-privileged", "exec-tty",
    "exec-user-root",
    "ps", "ps-a", "pull", "push", "tag", "tag-for-push", "rm", "rm-force", "stop", "start", "kill", "images",
    "rmi", "info", "network-create-run1", "network-create-run2", "network-create2", "network-connect-run1",
    "network-connect-run2", "network-connect-run3", "network-rm-run1", "network-ls", "volume-create",
    "volume-create-bind", "volume-ls",
]  # fmt: skip


def captured(label: str) -> tuple[str, list[dict[str, Any]]]:
    """(the docker command line, the captured AuthZReq requests except pings) of ``label``."""
    index = json.loads((CAPTURES / "_index.json").read_text())
    entries = [e for e in index if e["label"] == label and e["route_path"] != "/_ping"]
    argv = entries[0]["cli_argv"]
    # argv is the docker command itself (possibly after `timeout N`), or a shell string holding it
    # (bash -c "… | docker …", script -qec "docker …")
    inner = next((a for a in argv if a.startswith("docker ") or " docker " in a), None)
    command = shlex.join(argv[argv.index("docker") :]) if inner is None else inner[inner.index("docker") :]
    return command, [json.loads((CAPTURES / e["file"]).read_text())["authz_req"] for e in entries]


def normalise(uri: str) -> str:
    return HEX64.sub("<id>", uri)


def comparable(body: Any) -> Any:
    """Binds come from a Go map in the CLI: their order varies between runs."""
    if isinstance(body, dict) and isinstance(body.get("HostConfig"), dict):
        binds = body["HostConfig"].get("Binds")
        if binds:
            body = {**body, "HostConfig": {**body["HostConfig"], "Binds": sorted(binds)}}
    return body


@pytest.mark.parametrize("label", LABELS)
def test_translation_matches_the_captured_cli(label: str) -> None:
    command, requests = captured(label)
    calls = translate(command)
    assert [(c.method, normalise(f"/v1.41{c.path}")) for c in calls] == [
        (r["wire"]["RequestMethod"], normalise(r["wire"]["RequestUri"])) for r in requests
    ], command
    for call, request in zip(calls, requests, strict=True):
        expected = request.get("decoded_request_body")
        assert comparable(call.body) == comparable(expected["json"] if expected else None), command


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("docker run --frobnicate busybox", "unsupported flag --frobnicate"),
        ("docker run -X busybox", "unsupported flag -X"),
        ("docker run --security-opt seccomp=/tmp/p.json busybox", "seccomp=<file>"),
        ("docker compose up", "docker compose is not supported"),
        ("docker run", "no image given"),
        ("docker run --memory lots busybox", "--memory: invalid size"),
        ("docker pull 'Bad:Ref'", "docker pull"),
        ("docker run 'unterminated", "cannot split"),
    ],
)
def test_unsupported_input_is_an_error_not_a_guess(command: str, message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        translate(command)


def test_flag_forms_are_read_like_pflag() -> None:
    [create, attach, *_] = translate("docker run -it -p80:80 --memory=1g -eA=1 --rm busybox sh -c 'echo hi'")
    body = create.body
    assert body["Tty"]
    assert body["OpenStdin"]
    assert body["HostConfig"]["AutoRemove"]
    assert body["HostConfig"]["Memory"] == 1024**3
    assert body["Env"] == ["A=1"]
    assert body["Cmd"] == ["sh", "-c", "echo hi"]
    assert body["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "80"}]}
    assert "stdin=1" in attach.path
    [only] = translate("docker create --privileged=false busybox")
    assert only.body["HostConfig"]["Privileged"] is False
    assert only.body["HostConfig"]["NetworkMode"] == "default"


POLICY = {
    "version": 1,
    "users": {
        "dev": {"roles": ["developer"]},
        "op": {"roles": ["operator"]},
        "off": {"roles": ["admin"], "disabled": True},
    },
}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Flask, Database, AdminClient]:
    app, db = make_app(tmp_path)
    PolicyStore(db).apply_policy(parse_policy(POLICY), "setup")
    client = AdminClient(app)
    assert client.login().status_code == 302
    return app, db, client


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        audit = session.scalar(select(func.count()).select_from(AuditRow))
        owned = session.scalar(select(func.count()).select_from(OwnershipRow))
    return int(audit or 0), int(owned or 0)


def run_sim(db: Database, user: str | None, command: str | list[ApiCall]) -> Any:
    snapshot = StorePolicySource(db, poll=0).current()
    calls = translate(command) if isinstance(command, str) else command
    return simulate(snapshot, OwnershipRepository(db), user, calls)


def test_a_privileged_run_is_denied_by_the_developer_rule(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, _client = setup
    before = counts(db)
    result = run_sim(db, "dev", "docker run --rm --user 1000 --privileged busybox true")
    assert not result.allowed
    step = result.deciding
    assert step.operation.action == "container:create"
    assert (step.decision.role, step.decision.rule) == ("developer", "roles.developer.containers.privileged")
    assert "privileged containers are not allowed" in step.decision.reason
    assert [s.decision is None for s in result.steps] == [False, True, True, True]  # the CLI stops there
    assert counts(db) == before  # no audit record, no ownership row


def test_a_run_of_ones_own_container_is_allowed_end_to_end(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, _client = setup
    before = counts(db)
    result = run_sim(db, "dev", "docker run -d --name web --user 1000 busybox sleep 5")
    assert [s.operation.action for s in result.steps] == ["container:create", "container:wait", "container:start"]
    assert result.allowed, [s.decision for s in result.steps]
    # the start names the new container by id: allowed because the simulated create made dev its owner
    assert result.steps[-1].decision.rule is not None
    assert counts(db) == before


def test_ownership_is_read_from_the_real_table(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, _client = setup
    OwnershipRepository(db).record("container", "a" * 64, "theirs", "op")
    denied = run_sim(db, "dev", "docker stop theirs")
    assert not denied.allowed
    assert "owned by another user" in denied.deciding.decision.reason
    allowed = run_sim(db, "op", "docker stop theirs")
    assert allowed.allowed


def test_identity_rules_apply(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, _client = setup
    disabled = run_sim(db, "off", "docker ps")
    assert not disabled.allowed
    assert "is disabled" in disabled.deciding.decision.reason
    anonymous = run_sim(db, None, "docker ps")
    assert not anonymous.allowed
    assert anonymous.deciding.decision.rule == "default-deny"


def test_raw_requests_are_classified_as_the_daemon_would(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, _client = setup
    body = b'{"Image": "busybox", "User": "1000", "HostConfig": {"Privileged": true}}'
    result = run_sim(db, "dev", [ApiCall("POST", "/containers/create", body)])
    assert result.deciding.decision.rule == "roles.developer.containers.privileged"
    duplicate = run_sim(db, "op", [ApiCall("POST", "/containers/create", b'{"Image":"a","Image":"b"}')])
    assert not duplicate.allowed
    assert duplicate.deciding.decision.rule == "classify"


def test_the_page(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    before = counts(db)
    page = client.post("/simulate", {"user": "dev", "mode": "cli", "command": "docker run --privileged busybox"})
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "<h2>Denied</h2>" in text
    assert "roles.developer.containers.privileged" in text
    assert "POST /v1.41/containers/create" in text
    raw = client.post(
        "/simulate", {"user": "op", "mode": "api", "method": "GET", "path": "/containers/json", "version": ""}
    )
    assert "<h2>Allowed</h2>" in raw.text
    assert "GET /containers/json" in raw.text
    bad = client.post("/simulate", {"user": "dev", "mode": "cli", "command": "docker run --nope x"})
    assert bad.status_code == 400
    assert "unsupported flag --nope" in bad.text
    assert counts(db)[0] == before[0] + 0  # simulations are never audited


@pytest.mark.postgres
def test_on_a_fleet_database_the_simulator_judges_as_this_hosts_plugin(pg_url: str, tmp_path: Path) -> None:
    """Names are per host: with a shared database the simulator resolves them among the records of
    the admin host's node (AUTHZ_NODE), as the plugin there would, not another host's."""
    from admin.services import Services
    from admin.testing import make_settings, prepare_store

    db = prepare_store(pg_url)
    try:
        PolicyStore(db).apply_policy(parse_policy(POLICY), "setup")
        services = Services.build(make_settings(tmp_path / "state", pg_url), db)  # node "test-node"
        OwnershipRepository(db, node="other-host").record("container", "b" * 64, "web", "dev")
        OwnershipRepository(db, node="test-node").record("container", "c" * 64, "web", "op")
        snapshot = StorePolicySource(db, poll=0).current()
        result = simulate(snapshot, services.ownership, "dev", translate("docker stop web"))
        assert not result.allowed  # this host's "web" is op's
        assert "owned by another user" in result.deciding.decision.reason
        assert simulate(snapshot, services.ownership, "op", translate("docker stop web")).allowed
    finally:
        db.dispose()
