"""Bypass corpus, other people's objects and borrowed powers (B10-B13, B18), as ``dev``.

``dev2`` (another built-in developer) owns a created container, a volume and an internal
network; ``dev`` owns a created container and an internal network. The built-in developer has
``ownership: own``: dev may neither act on dev2's objects (by name, full ID, ID prefix, a new
name or a reused name), nor borrow their mounts and namespaces, nor prune them; nor turn a
volume into a host bind, nor exec as root or privileged into its own container.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bypasslib import API, DEV, api_denied, cli_denied, container_json, unchanged
from stack import Stack

pytestmark = pytest.mark.e2e

OWNERSHIP = "ownership"


def _owned(stack: Stack, user: str, kind: str, name: str, *create: str) -> Iterator[str]:
    stack.docker_as("admin", kind, "rm", name)  # a leftover of an interrupted run
    stack.docker_as(user, kind, "create", *create, name, check=True)
    yield name
    stack.docker_as("admin", kind, "rm", name)  # unchecked: a failed test may have removed it already


@pytest.fixture(scope="module")
def dev2_volume(e2e_env: Stack) -> Iterator[str]:
    yield from _owned(e2e_env, "dev2", "volume", "bypass-dev2-vol")


@pytest.fixture(scope="module")
def dev2_network(e2e_env: Stack) -> Iterator[str]:
    yield from _owned(e2e_env, "dev2", "network", "bypass-dev2-net", "--internal")


@pytest.fixture(scope="module")
def dev_network(e2e_env: Stack) -> Iterator[str]:
    yield from _owned(e2e_env, "dev", "network", "bypass-dev-net", "--internal")


def _networks_of(stack: Stack, container: str) -> dict[str, object]:
    settings = container_json(stack, container)["NetworkSettings"]
    assert isinstance(settings, dict)
    networks = settings["Networks"]
    assert isinstance(networks, dict)
    return networks


def _run(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    with unchanged(stack):
        return stack.docker_as(DEV, "run", "--network", "none", "--user", "1000", *args, "tiny", "true")


# --- volumes (B10) -----------------------------------------------------------------------------------


def test_volume_create_with_bind_options(e2e_env: Stack) -> None:
    """[B10] ``volume create --opt type=none --opt o=bind --opt device=/``: a named host bind."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "volume", "create", "--opt", "type=none", "--opt", "o=bind",
                                   "--opt", "device=/", "bypass-hostroot")  # fmt: skip
    cli_denied(e2e_env, result, action="volume:create", rule="volumes.driver_opts", field="DriverOpts")


def test_inline_volume_with_bind_options(e2e_env: Stack) -> None:
    """[B10] ``--mount type=volume,volume-driver=local,volume-opt=…,device=/``: the same bind,
    created inline by the container create."""
    mount = "type=volume,dst=/h,volume-driver=local,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/"
    result = _run(e2e_env, "--mount", mount)
    cli_denied(e2e_env, result, action="container:create", rule="volumes.driver_opts",
               field="HostConfig.Mounts[0].VolumeOptions.DriverConfig.Options")  # fmt: skip


@pytest.mark.parametrize("form", ["-v", "--mount"])
def test_another_users_volume(e2e_env: Stack, dev2_volume: str, form: str) -> None:
    """[B10] Mounting dev2's volume (``-v`` or ``--mount type=volume``): it may be a host bind
    made by a role with driver options, and it is not dev's."""
    spec = f"{dev2_volume}:/d" if form == "-v" else f"type=volume,src={dev2_volume},dst=/d"
    field = "HostConfig.Binds[0]" if form == "-v" else "HostConfig.Mounts[0].Source"
    result = _run(e2e_env, form, spec)
    cli_denied(e2e_env, result, rule=OWNERSHIP, field=field, says="owned by another user")


# --- borrowed namespaces and networks (B11) --------------------------------------------------------


@pytest.mark.parametrize("flag", ["--pid", "--ipc"])
def test_join_another_users_container_namespace(e2e_env: Stack, dev2_container: str, flag: str) -> None:
    """[B11] ``--pid``/``--ipc container:<dev2's>``: see and signal its processes, read its memory."""
    field = {"--pid": "HostConfig.PidMode", "--ipc": "HostConfig.IpcMode"}[flag]
    result = _run(e2e_env, flag, f"container:{dev2_container}")
    cli_denied(e2e_env, result, rule=OWNERSHIP, field=field)


def test_join_another_users_container_network(e2e_env: Stack, dev2_container: str) -> None:
    """[B11] ``--network container:<dev2's>``: share its network namespace and loopback."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", f"container:{dev2_container}", "--user", "1000",
                                   "tiny", "true")  # fmt: skip
    cli_denied(e2e_env, result, rule=OWNERSHIP, field="HostConfig.NetworkMode")


def test_run_on_another_users_network(e2e_env: Stack, dev2_network: str) -> None:
    """[B11] ``--network <dev2's network>``: reach dev2's containers on their private network."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "create", "--network", dev2_network, "--user", "1000", "tiny", "true")
    cli_denied(e2e_env, result, rule=OWNERSHIP, field="HostConfig.NetworkMode")


def test_connect_own_container_to_another_users_network(e2e_env: Stack, dev_container: str, dev2_network: str) -> None:
    """[B11] ``network connect <dev2's network> <own container>``."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "network", "connect", dev2_network, dev_container)
    cli_denied(e2e_env, result, action="network:connect", rule=OWNERSHIP)
    assert list(_networks_of(e2e_env, dev_container)) == ["none"]


def test_connect_another_users_container_to_own_network(e2e_env: Stack, dev2_container: str, dev_network: str) -> None:
    """[B11] ``network connect <own network> <dev2's container>``: pull it onto dev's network."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "network", "connect", dev_network, dev2_container)
    cli_denied(e2e_env, result, action="network:connect", rule=OWNERSHIP, field="Container")
    assert list(_networks_of(e2e_env, dev2_container)) == ["none"]


# --- acting on someone else's container (B18) ------------------------------------------------------

CLI_ACTIONS = [
    pytest.param(("stop", "-t", "0"), "container:stop", id="stop"),
    pytest.param(("start",), "container:start", id="start"),
    pytest.param(("kill",), "container:kill", id="kill"),
    pytest.param(("restart", "-t", "0"), "container:restart", id="restart"),
    pytest.param(("rm", "-f"), "container:delete", id="rm"),
    pytest.param(("rename",), "container:rename", id="rename"),
    pytest.param(("inspect",), "container:inspect", id="inspect"),
    pytest.param(("update", "--memory", "64m"), "container:update", id="update"),
]


@pytest.mark.parametrize(("args", "action"), CLI_ACTIONS)
def test_act_on_another_users_container_by_name(
    e2e_env: Stack, dev2_container: str, args: tuple[str, ...], action: str
) -> None:
    """[B18] ``docker <verb> <dev2's container>`` by name."""
    tail = ("bypass-stolen",) if args == ("rename",) else ()
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, *args, dev2_container, *tail)
    cli_denied(e2e_env, result, action=action, rule=OWNERSHIP, field=f"container '{dev2_container}'")


API_ACTIONS = [
    pytest.param("GET", "logs?stdout=1&stderr=1", None, "container:logs", id="logs"),
    pytest.param("POST", "exec", {"User": "1000", "Cmd": ["id"]}, "container:exec", id="exec"),
    pytest.param("GET", "archive?path=/etc/passwd", None, "container:copy-out", id="copy-out"),
    pytest.param("POST", "attach?stream=1&stdout=1", None, "container:attach", id="attach"),
]


@pytest.mark.parametrize(("method", "tail", "body", "action"), API_ACTIONS)
def test_reach_into_another_users_container(
    e2e_env: Stack, dev2_container: str, method: str, tail: str, body: object, action: str
) -> None:
    """[B18] Logs, exec, copy-out and attach of dev2's container (raw API: the CLI inspects
    first, and that inspect would be the deny we saw)."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, method, f"{API}/containers/{dev2_container}/{tail}", body)
    api_denied(e2e_env, reply, action=action, rule=OWNERSHIP, field=f"container '{dev2_container}'")
    assert container_json(e2e_env, dev2_container)["ExecIDs"] is None


def test_export_another_users_container(e2e_env: Stack, dev2_container: str, tmp_path: Path) -> None:
    """[B18] ``docker export <dev2's container>``: its whole filesystem (the developer may not
    export at all: the role's deny list names it)."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "export", "-o", str(tmp_path / "fs.tar"), dev2_container)
    cli_denied(e2e_env, result, action="container:export", says="container:export is denied by role developer")


def test_copy_into_another_users_container(e2e_env: Stack, dev2_container: str) -> None:
    """[B13] ``PUT /containers/<dev2's>/archive``: the tar (invisible to the plugin) would be
    written into its filesystem and through its mounts."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("planted")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "PUT", f"{API}/containers/{dev2_container}/archive?path=/tmp", data.getvalue(),
                               {"Content-Type": "application/x-tar"})  # fmt: skip
    api_denied(e2e_env, reply, action="container:copy-in", rule=OWNERSHIP)


@pytest.mark.parametrize("length", [64, 12, 5], ids=["full-id", "short-id", "unique-prefix"])
def test_act_on_another_users_container_by_id(e2e_env: Stack, dev2_container: str, length: int) -> None:
    """[B18] ``docker rm -f <ID>``: the full ID, the 12-digit ID and a 5-digit unique prefix
    all name dev2's container."""
    reference = str(container_json(e2e_env, dev2_container)["Id"])[:length]
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "rm", "-f", reference)
    cli_denied(e2e_env, result, action="container:delete", rule=OWNERSHIP, field=f"container '{reference}'")


def test_act_after_the_owner_renamed_it(e2e_env: Stack, dev2_container: str) -> None:
    """[B18] Ownership follows the container, not its name: dev2 renames, dev uses the new name."""
    e2e_env.docker_as("dev2", "rename", dev2_container, "bypass-renamed", check=True)
    try:
        with unchanged(e2e_env):
            result = e2e_env.docker_as(DEV, "rm", "-f", "bypass-renamed")
    finally:
        e2e_env.docker_as("dev2", "rename", "bypass-renamed", dev2_container, check=True)
    cli_denied(e2e_env, result, action="container:delete", rule=OWNERSHIP)


def test_inspect_of_an_object_the_plugin_has_no_owner_for(e2e_env: Stack) -> None:
    """[B18] ``docker inspect`` of a container with no ownership record (made before the plugin:
    its record is deleted here): the request cannot tell it from a missing one, which clients
    inspect before they create; the daemon's answer can, and it is withheld."""
    name = "bypass-unrecorded"
    e2e_env.docker_as("admin", "rm", "-f", name)  # a leftover of an interrupted run
    e2e_env.docker_as("dev2", "create", "--name", name, "--network", "none", "--user", "1000", "--env",
                      "TOKEN=dev2-secret", "tiny", "true", check=True)  # fmt: skip
    try:
        with sqlite3.connect(e2e_env.workdir / "authz.db") as db:
            assert db.execute("DELETE FROM ownership WHERE kind = 'container' AND name = ?", (name,)).rowcount == 1
        result = e2e_env.docker_as(DEV, "inspect", name)
        missing = e2e_env.docker_as(DEV, "volume", "inspect", "bypass-no-such-volume")
    finally:
        e2e_env.docker_as("admin", "rm", "-f", name)
    cli_denied(e2e_env, result, action="container:inspect", rule=OWNERSHIP, says="judged on the daemon's answer")
    assert "dev2-secret" not in result.stdout + result.stderr
    assert missing.returncode != 0
    assert "no such volume" in missing.stderr, missing.stderr  # the daemon's own answer, not a denial
    assert e2e_env.denied_prefix() not in missing.stderr


def test_claim_a_volume_made_before_the_plugin_by_creating_it_again(e2e_env: Stack) -> None:
    """[B18] ``docker volume create pgdata`` of an existing volume with no ownership record (here
    made by the daemon for an admin's ``run -v``, as volumes made before the plugin have none):
    the daemon answers 201 with that volume, unchanged; recorded as dev's, it would be dev's to
    mount. The plugin asks the daemon first (tests/e2e/test_volume_claims.py: without daemon reads)."""
    name = "bypass-old-vol"
    e2e_env.docker_as("admin", "volume", "rm", "-f", name)  # a leftover of an interrupted run
    e2e_env.docker_as("admin", "run", "--rm", "--network", "none", "-v", f"{name}:/d", "tiny", "true", check=True)
    try:
        with sqlite3.connect(e2e_env.workdir / "authz.db") as db:
            assert db.execute("SELECT 1 FROM ownership WHERE object_id = ?", (name,)).fetchall() == []
        with unchanged(e2e_env):
            claim = e2e_env.docker_as(DEV, "volume", "create", name)
        mount = e2e_env.docker_as(DEV, "run", "--rm", "--network", "none", "--user", "1000", "-v", f"{name}:/d",
                                  "tiny", "true")  # fmt: skip
    finally:
        e2e_env.docker_as("admin", "volume", "rm", "-f", name)
    cli_denied(e2e_env, claim, action="volume:create", rule=OWNERSHIP, field="Name",
               says="already exists and is not recorded as created by anyone")  # fmt: skip
    cli_denied(e2e_env, mount, action="container:create", rule=OWNERSHIP)


def test_claim_another_users_anonymous_volume(e2e_env: Stack) -> None:
    """[B18] dev2's container has an anonymous volume (``-v /data``); dev lists volumes, sees its
    64-hex name and creates a volume of that name at once, within the second it appeared."""
    name = "bypass-anon"
    e2e_env.docker_as("admin", "rm", "-f", "-v", name)  # a leftover of an interrupted run
    before = set(e2e_env.docker_as(DEV, "volume", "ls", "-q", check=True).stdout.split())
    e2e_env.docker_as("dev2", "create", "--name", name, "--network", "none", "--user", "1000", "-v", "/data",
                      "tiny", "true", check=True)  # fmt: skip
    try:
        (anonymous,) = set(e2e_env.docker_as(DEV, "volume", "ls", "-q", check=True).stdout.split()) - before
        with unchanged(e2e_env):
            claim = e2e_env.docker_as(DEV, "volume", "create", anonymous)
    finally:
        e2e_env.docker_as("admin", "rm", "-f", "-v", name)
    cli_denied(e2e_env, claim, action="volume:create", rule=OWNERSHIP, field="Name",
               says="the daemon's names for anonymous volumes")  # fmt: skip


def test_name_reused_after_removal(e2e_env: Stack) -> None:
    """[B18] dev created and removed ``bypass-reused``; dev2 creates a new container under that
    name: dev's old claim on the name must not carry over."""
    name = "bypass-reused"
    e2e_env.docker_as(DEV, "create", "--name", name, "--network", "none", "--user", "1000", "tiny", "true", check=True)
    e2e_env.docker_as(DEV, "rm", name, check=True)
    e2e_env.docker_as("dev2", "create", "--name", name, "--network", "none", "--user", "1000", "tiny", "true",
                      check=True)  # fmt: skip
    try:
        with unchanged(e2e_env):
            result = e2e_env.docker_as(DEV, "rm", "-f", name)
    finally:
        e2e_env.docker_as("admin", "rm", "-f", name, check=True)
    cli_denied(e2e_env, result, action="container:delete", rule=OWNERSHIP)


@pytest.mark.parametrize("kind", ["container", "volume", "network", "image"])
def test_prune(e2e_env: Stack, dev2_container: str, kind: str) -> None:
    """[B18] ``docker <kind> prune``: removes every owner's unused objects (dev2's created
    container is among them)."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, kind, "prune", "-f")
    cli_denied(e2e_env, result, action=f"{kind}:prune", says=f"{kind}:prune is denied by role developer")


# --- exec into one's own container (B12) ----------------------------------------------------------

EXECS = [
    pytest.param(("--privileged", "--user", "1000"), "exec.privileged", "Privileged", id="privileged"),
    pytest.param(("-u", "0"), "exec.run_as_root", "User", id="user-0"),
    pytest.param(("-u", "root"), "exec.run_as_root", "User", id="user-root"),
    pytest.param((), "exec.run_as_root", "User", id="no-user"),
]


@pytest.mark.parametrize(("args", "rule", "field"), EXECS)
def test_exec_escalation_in_own_container(
    e2e_env: Stack, dev_container: str, args: tuple[str, ...], rule: str, field: str
) -> None:
    """[B12] ``docker exec --privileged`` / ``-u 0`` / ``-u root`` / no ``--user`` (the
    container's user, which may be root) into dev's own container. The container is created
    but not running: the deny must come before the daemon's "not running"."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "exec", *args, dev_container, "id")
    cli_denied(e2e_env, result, action="container:exec", rule=rule, field=field)
    assert container_json(e2e_env, dev_container)["ExecIDs"] is None
