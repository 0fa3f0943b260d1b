"""Allowed work still works: the ordinary workflows of each built-in role, on the real daemon.

The bypass corpus (tests/bypass) shows what the policy refuses; this module shows that the same
policy lets people do their jobs. Each test asserts success and the output a user would see.
Containers only ever run with ``--network none``; networks are created and connected to
created-but-never-started containers only. Everything is named ``wf-…`` and removed at the end
of its test (the ``cleanup`` fixture also removes what a failed test left).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import DockerDaemon, write_tiny_tar
from hostutil import clean_env
from pluginproc import run_authzctl
from stack import Stack

pytestmark = pytest.mark.e2e

RUN = ("run", "--network", "none", "--user", "1000")


def ok(stack: Stack, user: str, *args: str, input: str | None = None) -> str:
    """Run the CLI as ``user``; assert it succeeded; its stdout."""
    result = stack.docker_as(user, *args, input=input)
    assert result.returncode == 0, f"docker {' '.join(args)} as {user} failed:\n{result.stderr}"
    return result.stdout


def denied(stack: Stack, result: subprocess.CompletedProcess[str], action: str) -> None:
    assert result.returncode != 0, result.stdout
    assert f"{stack.denied_prefix()}authz: denied {action}" in result.stderr, result.stderr


@pytest.fixture
def cleanup(e2e_env: Stack) -> Iterator[list[tuple[str, ...]]]:
    """Admin commands run after the test, last added first, e.g. ``("rm", "-f", "x")``; failures ignored."""
    commands: list[tuple[str, ...]] = []
    yield commands
    for command in reversed(commands):
        e2e_env.docker_as("admin", *command)


def _wait_for_log(stack: Stack, user: str, container: str, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = ok(stack, user, "logs", container)
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)  # the container's first echo may not have run yet


# --- developer ---------------------------------------------------------------------------------------


def test_developer_runs_a_command(e2e_env: Stack) -> None:
    assert ok(e2e_env, "dev", *RUN, "--rm", "tiny", "echo", "hi") == "hi\n"


def test_developer_container_lifecycle(e2e_env: Stack, cleanup: list[tuple[str, ...]], tmp_path: Path) -> None:
    """run -d --name, ps, inspect, exec --user, cp in, logs, stop, start, kill, rm: own container."""
    name = "wf-dev-life"
    cleanup.append(("rm", "-f", name))
    ok(e2e_env, "dev", *RUN, "-d", "--name", name, "tiny", "sh", "-c", "echo started; exec sleep 300")
    assert name in ok(e2e_env, "dev", "ps", "--format", "{{.Names}}").split()
    assert ok(e2e_env, "dev", "inspect", "-f", "{{.Config.User}}", name).strip() == "1000"
    assert ok(e2e_env, "dev", "exec", "--user", "1000", name, "id", "-u").strip() == "1000"
    (tmp_path / "note").write_text("hello\n")
    ok(e2e_env, "dev", "cp", str(tmp_path / "note"), f"{name}:/tmp/note")
    assert ok(e2e_env, "dev", "exec", "--user", "1000", name, "cat", "/tmp/note") == "hello\n"
    assert "started" in _wait_for_log(e2e_env, "dev", name, "started")
    ok(e2e_env, "dev", "stop", "-t", "0", name)
    ok(e2e_env, "dev", "start", name)
    ok(e2e_env, "dev", "kill", name)
    ok(e2e_env, "dev", "rm", name)
    assert name not in ok(e2e_env, "admin", "ps", "-a", "--format", "{{.Names}}").split()


def test_developer_lists_and_reads(e2e_env: Stack) -> None:
    assert "tiny" in ok(e2e_env, "dev", "images", "--format", "{{.Repository}}").split()
    ok(e2e_env, "dev", "ps", "-a")
    ok(e2e_env, "dev", "version")
    ok(e2e_env, "dev", "info")
    ok(e2e_env, "dev", "volume", "ls")
    ok(e2e_env, "dev", "network", "ls")
    ok(e2e_env, "dev", "image", "inspect", "tiny")


def test_developer_network_lifecycle(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    """Create an internal network, put a created (never started) container on it, disconnect,
    connect, remove both."""
    net, name = "wf-dev-net", "wf-dev-netc"
    cleanup += [("network", "rm", net), ("rm", "-f", name)]
    ok(e2e_env, "dev", "network", "create", "--internal", net)
    ok(e2e_env, "dev", "create", "--name", name, "--network", net, "--user", "1000", "tiny", "true")
    ok(e2e_env, "dev", "network", "disconnect", net, name)
    ok(e2e_env, "dev", "network", "connect", net, name)
    networks = ok(e2e_env, "dev", "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name)
    assert networks.split() == [net]
    ok(e2e_env, "dev", "rm", name)
    ok(e2e_env, "dev", "network", "rm", net)


def test_developer_volume_lifecycle(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    volume = "wf-dev-vol"
    cleanup.append(("volume", "rm", "-f", volume))
    ok(e2e_env, "dev", "volume", "create", volume)
    kind = ok(e2e_env, "dev", *RUN, "--rm", "-v", f"{volume}:/data", "tiny", "stat", "-c", "%F", "/data")
    assert kind == "directory\n"
    ok(e2e_env, "dev", "volume", "inspect", volume)
    ok(e2e_env, "dev", "volume", "rm", volume)


def test_developer_runs_a_non_root_image_without_user(
    e2e_env: Stack, cleanup: list[tuple[str, ...]], tmp_path: Path
) -> None:
    """No ``--user``: the plugin reads the image's USER from the daemon (AUTHZ_DOCKER_HOST) and
    allows a non-root one; the same command on ``tiny`` (no USER) is refused."""
    image = "wf-tiny-user:latest"
    cleanup.append(("rmi", image))
    ok(e2e_env, "admin", "import", "--change", "USER 1000", str(write_tiny_tar(tmp_path / "rootfs.tar")), image)
    assert ok(e2e_env, "dev", "run", "--rm", "--network", "none", image, "id", "-u") == "1000\n"
    refused = e2e_env.docker_as("dev", "run", "--rm", "--network", "none", "tiny", "id", "-u")
    denied(e2e_env, refused, "container:create")
    assert "sets no USER" in refused.stderr


def test_one_worker_answers_its_own_image_lookup(e2e_stack_factory: Callable[..., Stack], tmp_path: Path) -> None:
    """With a single plugin worker, a create without ``--user`` makes that worker ask the daemon
    for the image's USER while the daemon waits for its answer; the daemon authorizes that lookup
    through the same worker, on another of its connections. The worker's loop goes on in another
    thread during the lookup (authz.blocking), so the lookup is answered and the create decided;
    otherwise the lookup times out and the create is denied."""
    stack = e2e_stack_factory(users=("admin", "dev"), workers=1)
    image = "wf-one-worker:latest"
    ok(stack, "admin", "import", "--change", "USER 1000", str(write_tiny_tar(tmp_path / "rootfs.tar")), image)
    for _ in range(3):  # names are cached for a second at most: each run looks the image up again
        assert ok(stack, "dev", "run", "--rm", "--network", "none", image, "id", "-u") == "1000\n"
        time.sleep(1.1)
    refused = stack.docker_as("dev", "run", "--rm", "--network", "none", "tiny", "id", "-u")
    denied(stack, refused, "container:create")
    assert "sets no USER" in refused.stderr  # looked up, not timed out


# --- operator ----------------------------------------------------------------------------------------


def test_operator_handles_a_developers_container(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    """Any container operation on anyone's container: inspect, logs, exec (also as root),
    pause, stop, start, restart, rename, rm."""
    name, renamed = "wf-op-target", "wf-op-renamed"
    cleanup += [("rm", "-f", name), ("rm", "-f", renamed)]
    ok(e2e_env, "dev", *RUN, "-d", "--name", name, "tiny", "sh", "-c", "echo up; exec sleep 300")
    assert ok(e2e_env, "operator", "inspect", "-f", "{{.Config.User}}", name).strip() == "1000"
    assert "up" in _wait_for_log(e2e_env, "operator", name, "up")
    assert ok(e2e_env, "operator", "exec", name, "id", "-u").strip() == "1000"  # the container's user
    assert ok(e2e_env, "operator", "exec", "-u", "0", name, "id", "-u").strip() == "0"
    ok(e2e_env, "operator", "pause", name)
    ok(e2e_env, "operator", "unpause", name)
    ok(e2e_env, "operator", "stop", "-t", "0", name)
    ok(e2e_env, "operator", "start", name)
    ok(e2e_env, "operator", "restart", "-t", "0", name)
    ok(e2e_env, "operator", "rename", name, renamed)
    ok(e2e_env, "operator", "rm", "-f", renamed)


def test_operator_tags_and_removes_images(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    cleanup.append(("rmi", "wf/operator:1"))
    ok(e2e_env, "operator", "tag", "tiny:latest", "wf/operator:1")
    assert "wf/operator:1" in ok(e2e_env, "operator", "images", "--format", "{{.Repository}}:{{.Tag}}").split()
    ok(e2e_env, "operator", "rmi", "wf/operator:1")


def test_operator_prunes(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    """Prune, limited by a label to this test's objects (the session daemon is shared): the
    labelled container, volume and network go, an unlabelled container stays."""
    label = "wf-prune=1"
    cleanup += [("rm", "-f", "wf-prune-keep"), ("rm", "-f", "wf-prune-go"), ("volume", "rm", "-f", "wf-prune-vol"),
                ("network", "rm", "wf-prune-net")]  # fmt: skip
    ok(e2e_env, "dev", "create", "--name", "wf-prune-keep", "--network", "none", "--user", "1000", "tiny", "true")
    ok(e2e_env, "dev", "create", "--name", "wf-prune-go", "--label", label, "--network", "none", "--user", "1000",
       "tiny", "true")  # fmt: skip
    ok(e2e_env, "dev", "volume", "create", "--label", label, "wf-prune-vol")
    ok(e2e_env, "dev", "network", "create", "--internal", "--label", label, "wf-prune-net")
    for kind in ("container", "volume", "network", "image"):
        ok(e2e_env, "operator", kind, "prune", "-f", "--filter", f"label={label}")
    names = ok(e2e_env, "admin", "ps", "-a", "--format", "{{.Names}}").split()
    assert "wf-prune-keep" in names
    assert "wf-prune-go" not in names
    assert "wf-prune-vol" not in ok(e2e_env, "admin", "volume", "ls", "-q").split()
    assert "wf-prune-net" not in ok(e2e_env, "admin", "network", "ls", "--format", "{{.Name}}").split()
    # The prunes' replies named what went: those owners are forgotten at once; the kept one stays.
    names = {(r["kind"], r["name"]) for r in owned(e2e_env, "dev")}
    assert ("container", "wf-prune-keep") in names
    assert not names & {("container", "wf-prune-go"), ("volume", "wf-prune-vol"), ("network", "wf-prune-net")}


def owned(stack: Stack, owner: str) -> list[dict[str, str]]:
    """``authzctl ownership list --json --owner OWNER``."""
    listing = stack.authzctl("ownership", "list", "--json", "--owner", owner).stdout
    return [json.loads(line) for line in listing.splitlines()]


def test_ownership_prune_forgets_what_the_daemon_removed_on_its_own(
    e2e_env: Stack, cleanup: list[tuple[str, ...]], tmp_path: Path
) -> None:
    """`docker run --rm` and exec instances go without a call the plugin sees: their records stay
    until `authzctl ownership prune` compares them with the daemon; live objects keep theirs."""
    cleanup.append(("rm", "-f", "wf-own-live"))
    cidfile = tmp_path / "cid"
    ok(e2e_env, "dev", *RUN, "--rm", "--cidfile", str(cidfile), "tiny", "true")
    removed = cidfile.read_text().strip()
    ok(e2e_env, "dev", *RUN, "-d", "--name", "wf-own-live", "tiny", "sleep", "300")
    ok(e2e_env, "dev", "exec", "-d", "--user", "1000", "wf-own-live", "sleep", "300")
    live = ok(e2e_env, "admin", "inspect", "-f", "{{.Id}}", "wf-own-live").strip()
    running_execs = json.loads(ok(e2e_env, "admin", "inspect", "-f", "{{json .ExecIDs}}", "wf-own-live"))
    assert running_execs, "the detached exec should still be running"
    before = {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    assert {("container", removed), ("container", live)} <= before
    assert {("exec", e) for e in running_execs} <= before

    dry = e2e_env.authzctl("ownership", "prune", "--dry-run").stdout
    assert removed in dry
    assert live not in dry
    assert "would forget" in dry
    assert ("container", removed) in {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}  # a dry run forgets nothing

    assert "forgot " in e2e_env.authzctl("ownership", "prune").stdout
    after = {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    assert ("container", removed) not in after
    assert ("container", live) in after
    assert {("exec", e) for e in running_execs} <= after
    # The live container is still the developer's: its owner was not lost.
    assert ok(e2e_env, "dev", "exec", "--user", "1000", "wf-own-live", "echo", "mine") == "mine\n"

    ok(e2e_env, "dev", "rm", "-f", "wf-own-live")  # its record goes with the delete; its execs' stay
    assert {("exec", e) for e in running_execs} <= {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    e2e_env.authzctl("ownership", "prune")
    left = {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    assert not {("exec", e) for e in running_execs} & left
    assert ("container", live) not in left

    # Each run of prune that forgot something is an admin audit event naming the objects.
    exported = e2e_env.authzctl("audit", "export", "--action", "ownership:prune").stdout
    events = [json.loads(line) for line in exported.splitlines()]
    forgotten = {item for event in events for item in event["detail"]["objects"]}
    assert f"container:{removed}:dev" in forgotten
    assert all(event["phase"] == "admin" and event["allow"] for event in events)
    # A wrong internal token: the plugin denies the daemon's listing, and nothing is forgotten.
    ok(e2e_env, "dev", *RUN, "--rm", "--cidfile", str(tmp_path / "cid2"), "tiny", "true")
    state = tmp_path / "state"
    state.mkdir()
    (state / "internal-token").write_text("ab" * 32 + "\n")
    refused = run_authzctl({**e2e_env.env, "AUTHZ_STATE_DIR": str(state)}, "ownership", "prune", check=False)
    assert refused.returncode == 1
    assert "answered 403" in refused.stderr
    assert "invalid X-Authz-Internal header" in refused.stderr
    gone = (tmp_path / "cid2").read_text().strip()
    assert ("container", gone) in {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    # The right token, but the audit journal cannot be written: the record comes first, so
    # nothing is forgotten without it.
    broken = tmp_path / "broken-state"
    broken.mkdir()
    (broken / "internal-token").write_text((Path(e2e_env.env["AUTHZ_STATE_DIR"]) / "internal-token").read_text())
    (broken / "audit-journal").write_text("not a directory\n")
    unrecorded = run_authzctl({**e2e_env.env, "AUTHZ_STATE_DIR": str(broken)}, "ownership", "prune", check=False)
    assert unrecorded.returncode == 1, unrecorded.stdout
    assert ("container", gone) in {(r["kind"], r["id"]) for r in owned(e2e_env, "dev")}
    # The daemon reads went through the plugin with its internal token, each audited.
    internal = e2e_env.authzctl("audit", "export", "--action", "container:list", "--decision", "allow").stdout
    assert any(json.loads(line)["source"] == "internal" for line in internal.splitlines())


# --- viewer and admin --------------------------------------------------------------------------------


def test_viewer_reads_but_cannot_run(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    name = "wf-viewed"
    cleanup.append(("rm", "-f", name))
    ok(e2e_env, "dev", *RUN, "--name", name, "tiny", "echo", "seen")
    assert name in ok(e2e_env, "viewer", "ps", "-a", "--format", "{{.Names}}").split()
    assert "tiny" in ok(e2e_env, "viewer", "images", "--format", "{{.Repository}}").split()
    assert ok(e2e_env, "viewer", "inspect", "-f", "{{.State.Status}}", name).strip() == "exited"
    assert ok(e2e_env, "viewer", "logs", name) == "seen\n"
    denied(e2e_env, e2e_env.docker_as("viewer", *RUN, "--rm", "tiny", "true"), "container:create")
    denied(e2e_env, e2e_env.docker_as("viewer", "rm", "-f", name), "container:delete")


def test_admin_may_create_host_powered_containers(e2e_env: Stack, cleanup: list[tuple[str, ...]]) -> None:
    """The decision only: privileged containers fail at the runtime in this sandbox, so they are
    created, inspected and removed, never started."""
    name = "wf-admin-priv"
    cleanup.append(("rm", "-f", name))
    ok(e2e_env, "admin", "create", "--name", name, "--privileged", "--network", "none", "-v", "/:/host:ro",
       "--pid", "host", "tiny", "true")  # fmt: skip
    shown = ok(e2e_env, "admin", "inspect", "-f", "{{.HostConfig.Privileged}} {{.HostConfig.PidMode}}", name)
    assert shown.split() == ["true", "host"]
    ok(e2e_env, "admin", "rm", name)


def test_ownership_prune_refuses_a_daemon_that_does_not_consult_the_plugin(e2e_env: Stack) -> None:
    """Pointed at another daemon (a wrong socket), every recorded object would look removed."""
    ok(e2e_env, "dev", "create", "--name", "wf-own-other", "--network", "none", "--user", "1000", "tiny", "true")
    try:
        with DockerDaemon() as other:  # no authorization plugin: it answers whatever it is asked
            run = e2e_env.authzctl("ownership", "prune", "--docker-host", other.host, check=False)
        assert run.returncode == 1
        assert "does not consult this plugin" in run.stderr
        assert "nothing forgotten" in run.stderr
        assert ("container", "wf-own-other") in {(r["kind"], r["name"]) for r in owned(e2e_env, "dev")}
    finally:
        e2e_env.docker_as("admin", "rm", "-f", "wf-own-other")


# --- docker-compose ------------------------------------------------------------------------------

COMPOSE_FILE = """\
version: "2.4"
services:
  app:
    image: tiny
    command: ["sh", "-c", "echo compose-up; exec sleep 300"]
    user: "1000"
    network_mode: none
    labels:
      team: café
      Team: platform
    volumes:
      - data:/data
volumes:
  data:
    labels:
      purpose: wf
"""


def compose(stack: Stack, user: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's docker-compose (v1, on docker-py) as ``user``: its token comes from the same
    config.json ``HttpHeaders`` as the CLI's."""
    env = clean_env({"DOCKER_CONFIG": str(stack.configs[user]), "DOCKER_HOST": stack.daemon.host})
    return subprocess.run(["docker-compose", "--project-name", "wfc", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip


def test_developer_runs_a_compose_project(e2e_env: Stack, cleanup: list[tuple[str, ...]], tmp_path: Path) -> None:
    """docker-compose up, ps, logs, exec, down -v as a developer: another client than the CLI, with
    label filters, a named volume it inspects before creating it (the daemon answers 404) and
    labels the daemon keeps as sent; another developer sees the container listed but cannot take
    the project down."""
    assert shutil.which("docker-compose"), "docker-compose is missing: scripts/setup.sh installs it"
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    cleanup += [("volume", "rm", "-f", "wfc_data"), ("rm", "-f", "wfc_app_1")]

    def ok_compose(user: str, *args: str) -> str:
        result = compose(e2e_env, user, tmp_path, *args)
        assert result.returncode == 0, f"docker-compose {' '.join(args)} as {user} failed:\n{result.stderr}"
        return result.stdout

    ok_compose("dev", "up", "-d")
    assert "wfc_app_1" in ok_compose("dev", "ps")
    assert "compose-up" in ok_compose("dev", "logs", "--no-color", "app")
    assert ok_compose("dev", "exec", "-T", "--user", "1000", "app", "id", "-u").strip() == "1000"
    assert ok_compose("dev", "run", "--rm", "-T", "app", "echo", "one-off").strip() == "one-off"
    labels = json.loads(ok(e2e_env, "dev", "inspect", "-f", "{{json .Config.Labels}}", "wfc_app_1"))
    assert labels["team"] == "café"
    assert labels["Team"] == "platform"
    assert "wfc_app_1" in ok(e2e_env, "dev2", "ps", "--format", "{{.Names}}").split()  # listing is everyone's
    refused = compose(e2e_env, "dev2", tmp_path, "down", "-v")  # the project's objects are dev's
    assert refused.returncode != 0, refused.stderr
    assert e2e_env.denied_prefix() in refused.stderr, refused.stderr
    assert "is owned by another user" in refused.stderr, refused.stderr
    assert "wfc_app_1" in ok(e2e_env, "admin", "ps", "--format", "{{.Names}}").split()
    ok_compose("dev", "down", "-v")
    assert "wfc_app_1" not in ok(e2e_env, "admin", "ps", "-a", "--format", "{{.Names}}").split()
    assert "wfc_data" not in ok(e2e_env, "admin", "volume", "ls", "--format", "{{.Name}}").split()


def test_developer_creates_a_compose_project_on_its_default_network(
    e2e_env: Stack, cleanup: list[tuple[str, ...]], tmp_path: Path
) -> None:
    """docker-compose up --no-start, then down: compose inspects, then creates, the project's
    default network and connects the container to it (never started: bridge networks carry no
    traffic in these tests)."""
    (tmp_path / "docker-compose.yml").write_text('version: "2.4"\nservices:\n  app:\n    image: tiny\n'
                                                 '    command: ["true"]\n    user: "1000"\n')  # fmt: skip
    cleanup += [("network", "rm", "wfc_default"), ("rm", "-f", "wfc_app_1")]
    for args in (("up", "--no-start"), ("ps",), ("down",)):
        result = compose(e2e_env, "dev", tmp_path, *args)
        assert result.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{result.stderr}"
        if args == ("up", "--no-start"):
            networks = ok(e2e_env, "dev", "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
                          "wfc_app_1")  # fmt: skip
            assert networks.strip() == "wfc_default"
    assert "wfc_default" not in ok(e2e_env, "admin", "network", "ls", "--format", "{{.Name}}").split()
