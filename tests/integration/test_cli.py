"""``authzctl`` end to end: in-process through ``main([...])``, and as the installed console script."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from authz.audit import AuditEvent
from authz.config import Config
from authz.errors import ConfigError
from authz.identity.token import JwtVerifier, KeyStore
from authz.storage import Database, head_revision
from authz.storage.repositories import AuditStore, PolicyStore, TokenStore


class CliRun(Protocol):  # conftest.CliRun; not imported, since other test dirs have a conftest too
    code: int
    out: str
    err: str


Cli = Callable[..., CliRun]

POLICY = """\
version: 1
settings:
  anonymous_role: null
  default_mode: warn
roles:
  builder:
    description: builds images
    extends: [viewer]
    allow: ["image:build", "image:pull"]
    containers:
      capabilities: [NET_BIND_SERVICE]
      max_memory: 512m
groups:
  ml-team: {roles: [builder]}
users:
  alice: {roles: [], groups: [ml-team]}
  bob: {roles: [admin]}
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def stores() -> tuple[PolicyStore, TokenStore, AuditStore]:
    db = Database(Config.from_env().database_url)
    return PolicyStore(db), TokenStore(db), AuditStore(db)


@pytest.fixture
def initialised(cli: Cli) -> Cli:
    assert cli("init").code == 0
    return cli


def test_init_is_idempotent(cli: Cli, authz_env: Path) -> None:
    first = cli("init")
    assert first.code == 0, first.err
    assert "migrated from empty" in first.out
    assert stat.S_IMODE(authz_env.stat().st_mode) == 0o700
    assert (authz_env / "keys" / "token-signing.pem").exists()
    key = (authz_env / "keys" / "token-signing.pem").read_bytes()
    authz_env.chmod(0o755)
    second = cli("init")
    assert second.code == 0, second.err
    assert "up to date" in second.out
    assert "(0 stored or refreshed)" in second.out
    assert stat.S_IMODE(authz_env.stat().st_mode) == 0o700  # tightened again
    assert (authz_env / "keys" / "token-signing.pem").read_bytes() == key  # key kept
    roles = cli("role", "list")
    assert [line.split()[:2] for line in roles.out.splitlines()[1:]] == [
        ["admin", "builtin"],
        ["developer", "builtin"],
        ["operator", "builtin"],
        ["viewer", "builtin"],
    ]
    assert cli("migrate").out.endswith(f"already at schema {head_revision()}\n")


def test_policy_apply_export_round_trip(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    applied = cli("policy", "apply", write(tmp_path / "p.yaml", POLICY), "--author", "ops-lead")
    assert applied.code == 0, applied.err
    assert "+  builder:" in applied.out
    assert "applied: policy revision 1" in applied.out
    exported = cli("policy", "export")
    assert exported.code == 0
    assert "default_mode: warn" in exported.out
    assert "max_memory: 512m" in exported.out
    again = cli("policy", "apply", write(tmp_path / "e.yaml", exported.out))
    assert again.code == 0
    assert again.out == "no changes: the store already holds this policy (revision 1)\n"
    assert cli("policy", "export", "-o", str(tmp_path / "out.yaml")).code == 0
    assert (tmp_path / "out.yaml").read_text() == exported.out
    assert PolicyStore(Database(Config.from_env().database_url)).history(1)[0].author == "ops-lead"


def test_policy_apply_warns_of_bind_prefixes_this_host_will_refuse(initialised: Cli, tmp_path: Path) -> None:
    """A prefix through a directory a user can write: every bind below it will be refused."""
    cli = initialised
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    os.chown(home, 1000, 1000)
    roles = {"homes": {"extends": ["developer"], "containers": {"bind_mounts": [str(home / "proj")]}},
             "trusting": {"extends": ["developer"], "containers": {"bind_mounts": [str(home / "proj")],
                                                                  "bind_mounts_user_writable": True}},
             "closed": {"extends": ["developer"], "containers": {"bind_mounts": [str(tmp_path)]}}}  # fmt: skip
    path = write(tmp_path / "binds.yaml", json.dumps({"version": 1, "roles": roles}))
    warning = (f"authzctl: warning: role homes: bind prefix {home / 'proj'} runs through {home} (writable by its "
               "owner, uid 1000) on this host, so every bind below it will be refused "
               "(containers.bind_mounts_user_writable is false)\n")  # fmt: skip
    for command in (("policy", "validate", path), ("policy", "apply", path)):
        result = cli(*command)
        assert result.code == 0, result.err
        assert result.err == warning
    assert "applied: policy revision" in result.out


def test_validation_error_names_key_path_and_exits_2(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    bad = write(tmp_path / "bad.yaml", POLICY.replace("[NET_BIND_SERVICE]", "[NET_BIND_SERVICE, SYS_ADMN]"))
    for command in (("policy", "apply", bad), ("policy", "validate", bad)):
        result = cli(*command)
        assert result.code == 2
        assert result.err == (
            f'authzctl: {bad}: roles.builder.containers.capabilities[1]: unknown capability "SYS_ADMN"\n'
        )
    assert cli("policy", "export").out.count("users: {}") == 1  # nothing was applied
    duplicate = write(tmp_path / "dup.yaml", POLICY + "  bob: {roles: []}\n")
    result = cli("policy", "validate", duplicate)
    assert (result.code, result.err) == (2, f"authzctl: {duplicate}: line 18: duplicate key 'bob'\n")
    missing = cli("policy", "validate", str(tmp_path / "nope.yaml"))
    assert missing.code == 2
    assert "cannot read" in missing.err
    good = cli("policy", "validate", write(tmp_path / "ok.yaml", POLICY))
    assert good.code == 0
    assert "valid policy-v1 (1 roles, 1 groups, 2 users)" in good.out


def test_dry_run_changes_nothing(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    cli("policy", "apply", write(tmp_path / "p.yaml", POLICY))
    before = cli("policy", "export").out
    changed = write(tmp_path / "c.yaml", POLICY.replace("bob: {roles: [admin]}", "bob: {roles: [viewer]}"))
    result = cli("policy", "apply", changed, "--dry-run")
    assert result.code == 0
    assert "-    - admin" in result.out
    assert "+    - viewer" in result.out
    assert "dry run: nothing changed (revision stays 1)" in result.out
    assert cli("policy", "export").out == before


def test_user_group_role_commands(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    assert cli("group", "add", "devs", "--role", "developer").code == 0
    added = cli("user", "add", "carol", "--role", "viewer", "--group", "devs", "--tls-cn", "carol.example")
    assert added.out == "user carol added (policy revision 2)\n"
    assert cli("user", "add", "carol").code == 2  # exists
    unknown = cli("user", "add", "dan", "--role", "nope")
    assert (unknown.code, unknown.err) == (2, 'authzctl: users.dan.roles[0]: unknown role "nope"\n')
    listing = cli("user", "list").out.splitlines()
    assert listing[1].split() == ["carol", "viewer", "devs", "carol.example", "enabled"]
    shown = cli("user", "show", "carol").out
    assert "effective_roles:\n- developer\n- viewer\n" in shown
    assert cli("user", "grant", "carol", "operator").code == 0
    assert cli("user", "grant", "carol", "operator").out == "carol already has operator: nothing to do\n"
    assert cli("user", "revoke-role", "carol", "operator").code == 0
    assert cli("user", "revoke-role", "carol", "operator").code == 2  # a no-op revoke is an error
    assert cli("user", "leave", "carol", "devs").code == 0
    assert cli("user", "join", "carol", "devs").code == 0
    assert cli("user", "disable", "carol").code == 0
    assert cli("user", "list").out.splitlines()[1].endswith("disabled")
    assert cli("user", "enable", "carol").code == 0
    assert cli("group", "grant", "devs", "operator").code == 0
    assert cli("group", "list").out.splitlines()[1].split() == ["devs", "developer,operator", "carol"]
    assert cli("group", "revoke-role", "devs", "operator").code == 0

    role_file = write(tmp_path / "role.yaml", "description: log reader\nallow: [container:logs]\n")
    assert cli("role", "set", "logs", role_file).code == 0
    shown_role = cli("role", "show", "logs").out
    assert shown_role.startswith("# role logs (custom)\n")
    assert "- container:logs" in shown_role
    assert cli("role", "set", "logs", write(tmp_path / "r2.yaml", shown_role)).out.endswith("nothing to do\n")
    bad_role = cli("role", "set", "logs", write(tmp_path / "bad.yaml", "allow: [container:lgs]\n"))
    assert bad_role.code == 2
    assert "roles.logs.allow[0]" in bad_role.err
    assert cli("user", "grant", "carol", "logs").code == 0
    refused = cli("role", "rm", "logs")
    assert refused.code == 2
    assert refused.err == "authzctl: roles.logs: in use by users carol: remove those references first\n"
    assert cli("user", "revoke-role", "carol", "logs").code == 0
    assert cli("role", "rm", "logs").code == 0
    assert cli("role", "show", "logs").code == 2
    assert cli("role", "rm", "viewer").code == 2  # built-in
    assert cli("group", "rm", "devs").code == 0
    assert cli("user", "rm", "carol").code == 0
    assert cli("user", "show", "carol").err == "authzctl: users.carol: no such user\n"


def test_token_issue_merges_docker_config(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    cli("user", "add", "alice", "--role", "developer")
    config_dir = tmp_path / "home" / ".docker"
    config_dir.mkdir(parents=True)
    existing = {
        "auths": {"registry.example": {"auth": "c2VjcmV0"}},
        "HttpHeaders": {"X-Other": "1"},
        "psFormat": "x",
    }
    (config_dir / "config.json").write_text(json.dumps(existing))
    (config_dir / "config.json").chmod(0o644)
    issued = cli("token", "issue", "alice", "--ttl", "2h", "--docker-config", str(config_dir), "--note", "laptop")
    assert issued.code == 0, issued.err
    token = issued.out.strip()
    data = json.loads((config_dir / "config.json").read_text())
    assert data == {**existing, "HttpHeaders": {"X-Other": "1", "X-Authz-Token": token}}
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    claims = JwtVerifier(KeyStore(Config.from_env().keys_dir).load_or_create()).verify(token, time.time())
    assert claims.subject == "alice"
    assert claims.expires_at - time.time() == pytest.approx(7200, abs=5)
    listed = cli("token", "list", "--user", "alice").out.splitlines()
    assert listed[1].split()[0] == claims.token_id
    assert listed[1].split()[-2:] == ["active", "laptop"]

    fresh = tmp_path / "new" / "dir"
    assert cli("token", "issue", "alice", "--docker-config", str(fresh)).code == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert list(json.loads((fresh / "config.json").read_text())) == ["HttpHeaders"]

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").symlink_to(tmp_path / "home" / ".docker" / "config.json")
    refused = cli("token", "issue", "alice", "--docker-config", str(linked))
    assert refused.code == 2
    assert "symbolic link" in refused.err
    (config_dir / "config.json").write_text("{not json")
    broken = cli("token", "issue", "alice", "--docker-config", str(config_dir))
    assert broken.code == 2
    assert (config_dir / "config.json").read_text() == "{not json"

    assert cli("token", "issue", "nobody").code == 2
    assert cli("token", "issue", "alice", "--ttl", "3x").code == 2
    cli("user", "disable", "alice")
    assert "is disabled" in cli("token", "issue", "alice").err


def test_token_revoke_bumps_revision(initialised: Cli) -> None:
    cli = initialised
    cli("user", "add", "alice", "--role", "developer")
    tokens = [cli("token", "issue", "alice").out.strip() for _ in range(3)]
    assert len(set(tokens)) == 3
    policy, token_store, _ = stores()
    jtis = [t.jti for t in token_store.list(user="alice")]
    revision = policy.revision()
    result = cli("token", "revoke", jtis[0])
    assert result.code == 0
    assert f"(policy revision {revision + 1})" in result.out
    assert token_store.revoked_ids() == {jtis[0]}
    assert "revoked 2 token(s) of alice" in cli("token", "revoke", "--user", "alice").out
    assert policy.revision() == revision + 2
    assert token_store.revoked_ids() == set(jtis)
    assert cli("token", "revoke", "nope").code == 1  # not found: a failure, not a usage error
    assert cli("token", "revoke").code == 2  # neither JTI nor --user


def audit_event(t: float, user: str | None, action: str, allow: bool) -> AuditEvent:
    return AuditEvent(
        time=t, request_id=f"r{t}", node="n", phase="request", user=user,
        source="token" if user else "anonymous", roles=("developer",), action=action, method="POST",
        uri=f"/v1.41/{action}", object=None, allow=allow, mode="enforce", rule=None, role=None,
        reason="because", message="" if allow else "authz: denied",
    )  # fmt: skip


def test_audit_tail_and_export(initialised: Cli, tmp_path: Path) -> None:
    cli = initialised
    _, _, audit = stores()
    audit.write(audit_event(1_717_200_000.0, "alice", "container:create", True))  # 2024-06-01T00:00:00Z
    audit.write(audit_event(1_717_286_400.0, "bob", "container:exec", False))  # 2024-06-02
    audit.write(audit_event(1_717_372_800.0, None, "image:pull", False))  # 2024-06-03
    tail = cli("audit", "tail", "-n", "2").out.splitlines()
    assert len(tail) == 2
    assert tail[0].startswith("2024-06-02T00:00:00Z")
    assert "DENY  bob container:exec" in tail[0]
    assert "(anonymous) image:pull" in tail[1]

    jsonl = cli("audit", "export", "--format", "jsonl", "--decision", "deny").out.splitlines()
    assert [json.loads(line)["action"] for line in jsonl] == ["container:exec", "image:pull"]
    window = cli("audit", "export", "--since", "2024-06-01T12:00:00Z", "--until", "2024-06-03").out
    assert [json.loads(line)["user"] for line in window.splitlines()] == ["bob"]
    by_user = cli("audit", "export", "--user", "alice", "--action", "container:*").out
    assert [json.loads(line)["user"] for line in by_user.splitlines()] == ["alice"]
    out_file = tmp_path / "audit.csv"
    result = cli("audit", "export", "--format", "csv", "--action", "image:pull", "-o", str(out_file))
    assert result.code == 0
    assert "exported 1 record(s)" in result.err
    lines = out_file.read_text().splitlines()
    assert lines[0].startswith("id,time,")
    assert len(lines) == 2
    assert ",image:pull," in lines[1]
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert cli("audit", "export", "--since", "yesterday").code == 2


def test_serve_calls_the_server_lazily(initialised: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import authz.serve

    calls: list[tuple[str, int, Config, str]] = []
    monkeypatch.setattr(authz.serve, "run", lambda socket, workers, config, cpu_affinity: calls.append(
        (socket, workers, config, cpu_affinity)))  # fmt: skip
    assert initialised("serve", "--socket", "/tmp/x.sock", "--workers", "3").code == 0
    assert initialised("serve", "--cpu-affinity", "spread").code == 0
    assert calls == [("/tmp/x.sock", 3, Config.from_env(), "none"),
                     ("/run/docker/plugins/authz.sock", 2, Config.from_env(), "spread")]  # fmt: skip
    assert initialised("serve", "--workers", "0").code == 2
    assert initialised("serve", "--cpu-affinity", "all").code == 2


def test_usage_errors_and_unmigrated_store(cli: Cli) -> None:
    assert cli().code == 2
    assert cli("frobnicate").code == 2
    assert cli("user").code == 2  # a family without its command
    assert cli("--version").code == 0
    result = cli("user", "list")  # no init: no state dir, no database
    assert result.code == 1
    assert result.err.startswith("authzctl: database error")
    assert result.err[-1] == "\n"
    assert result.err.count("\n") == 1


def test_console_script_subprocess(authzctl_bin: Path, authz_env: Path, tmp_path: Path) -> None:
    env = {**os.environ}
    init = subprocess.run([authzctl_bin, "init"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nusers:\n  eve: {roles: [root]}\n")
    result = subprocess.run(
        [authzctl_bin, "policy", "apply", str(bad)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f'authzctl: {bad}: users.eve.roles[0]: unknown role "root"\n'  # no traceback
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    applied = subprocess.run(
        [authzctl_bin, "policy", "apply", str(good)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0
    assert "applied: policy revision 1" in applied.stdout


def test_config_from_env_defaults_and_errors(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config.from_env({"AUTHZ_STATE_DIR": str(tmp_path)})
    assert config.database_url == f"sqlite:///{tmp_path}/authz.db"
    assert (config.token_audience, config.revision_poll) == ("docker-authz", 0.5)
    assert config.keys_dir == tmp_path / "keys"
    assert Config.from_env({}).state_dir == Path("/var/lib/authz")
    custom = Config.from_env(
        {"AUTHZ_DATABASE_URL": "postgresql://db/authz", "AUTHZ_REVISION_POLL": "2", "AUTHZ_NODE": "n7"}
    )
    assert (custom.database_url, custom.revision_poll, custom.node) == ("postgresql://db/authz", 2.0, "n7")
    monkeypatch.setenv("AUTHZ_REVISION_POLL", "soon")
    result = cli("user", "list")
    assert result.code == 1
    assert result.err == "authzctl: AUTHZ_REVISION_POLL must be a number of seconds, got 'soon'\n"
    monkeypatch.setenv("AUTHZ_REVISION_POLL", "0.5")
    monkeypatch.setenv("AUTHZ_STATE_DIR", "relative/dir")
    assert "must be an absolute path" in cli("user", "list").err


@pytest.mark.parametrize("raw", ["0", "1.5", "3601", "-1", "soon"])
def test_idle_timeout_takes_whole_seconds_in_range(raw: str) -> None:
    assert Config.from_env({}).idle_timeout == 75
    assert Config.from_env({"AUTHZ_IDLE_TIMEOUT": " 30 "}).idle_timeout == 30
    message = f"AUTHZ_IDLE_TIMEOUT must be whole seconds between 1 and 3600, got {raw!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_env({"AUTHZ_IDLE_TIMEOUT": raw})


def test_host_root_is_where_the_host_is_seen_or_none() -> None:
    assert Config.from_env({}).host_root == "/"
    assert Config.from_env({"AUTHZ_HOST_ROOT": " /host "}).host_root == "/host"
    assert Config.from_env({"AUTHZ_HOST_ROOT": "None"}).host_root is None
    with pytest.raises(ConfigError, match=re.escape("AUTHZ_HOST_ROOT must be an absolute path or none, got 'host'")):
        Config.from_env({"AUTHZ_HOST_ROOT": "host"})


def test_serve_warns_when_the_database_is_at_an_older_schema(
    cli: Cli, authz_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade without `authzctl migrate`: serve still starts (refusing would stop every Docker
    call on the host) but says what to run."""
    from alembic import command

    import authz.serve
    from authz.storage import _alembic_config

    started: list[str] = []
    monkeypatch.setattr(authz.serve, "run", lambda socket, *_args, **_kwargs: started.append(socket))
    assert cli("init").code == 0
    quiet = cli("serve", "--socket", "/tmp/x.sock")
    assert (quiet.code, started) == (0, ["/tmp/x.sock"])
    assert "schema" not in quiet.err
    db = Database(Config.from_env().database_url)
    try:
        config = _alembic_config()
        with db.writer.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
    finally:
        db.dispose()
    warned = cli("serve", "--socket", "/tmp/x.sock")
    assert warned.code == 0
    assert started == ["/tmp/x.sock", "/tmp/x.sock"]
    assert f"the database is at schema 0003, this version needs {head_revision()}: run `authzctl migrate`" in warned.err


def test_the_schema_check_of_serve_loads_no_alembic(cli: Cli) -> None:
    """alembic (and mako) in the gunicorn master would be inherited by every worker: 10 MiB each.
    SCHEMA_HEAD stands in for alembic's head, and must be it."""
    import subprocess
    import sys

    from authz.storage import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD
    assert cli("init").code == 0
    code = (
        "import sys; from authz.cli.common import Context; from authz.cli.serve import _warn_if_schema_behind; "
        "_warn_if_schema_behind(Context()); print(sorted(m for m in ('alembic', 'mako') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert result.stderr == ""
