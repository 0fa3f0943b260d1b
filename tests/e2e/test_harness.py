"""The harness itself: daemons start, coexist, stop clean; plugin registration; the real stack.

Most tests here use a dockerd without our plugin, or with ``StandInPlugin``, a few lines of
stdlib HTTP that lives only in this file: it tests the plumbing (spec file, headers reaching the
plugin, deny messages reaching the client), never the policy. The last tests use the real stack.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer
from typing import Any

import pytest
from harness import DockerDaemon, HarnessError, PluginSpec, import_tiny
from hostutil import (
    alive,
    descendants,
    kill_referencing,
    leftovers,
    mounts_under,
    shim_sockets,
    unmount_all_under,
    wait_gone,
)
from stack import ANONYMOUS, Stack

pytestmark = pytest.mark.e2e


class _Server(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True
    requests: list[tuple[str, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    """Allow everything, except container creation for the token ``deny-me``."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        payload = json.loads(raw) if raw else {}
        self.server.requests.append((self.path, payload))
        if self.path == "/Plugin.Activate":
            reply: dict[str, Any] = {"Implements": ["authz"]}
        else:
            token = payload.get("RequestHeaders", {}).get("X-Authz-Token")
            deny = token == "deny-me" and "/containers/create" in payload.get("RequestUri", "")
            reply = {"Allow": False, "Msg": "stand-in says no"} if deny else {"Allow": True}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # unix-socket peers have no address to log


class StandInPlugin:
    """Allow-all authz plugin on a unix socket, recording every call. Self-test only."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.server = _Server(str(socket_path), _Handler)
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        return self.server.requests

    def __enter__(self) -> StandInPlugin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def daemon() -> Iterator[DockerDaemon]:
    """A private dockerd without authz, with ``tiny`` imported; asserts a clean stop."""
    with DockerDaemon() as d:
        import_tiny(d)
        yield d
    assert leftovers(d.dir) == []
    assert not d.dir.exists()


@pytest.fixture
def work() -> Iterator[Path]:
    """A short scratch dir under /tmp, removed afterwards even if the test failed half-way."""
    path = Path(tempfile.mkdtemp(prefix="authz-selftest-", dir="/tmp"))
    yield path
    kill_referencing(f"{path}/")
    unmount_all_under(path)
    shutil.rmtree(path, ignore_errors=True)


def _container_pid(d: DockerDaemon, name: str) -> int:
    return int(d.docker("inspect", "-f", "{{.State.Pid}}", name, check=True).stdout)


def test_tiny_runs_as_root_and_as_uid_1000(daemon: DockerDaemon) -> None:
    out = daemon.docker(
        "run", "--rm", "--network", "none", "tiny", "sh", "-c", "echo hello; id -u; whoami", check=True
    ).stdout
    assert out.split() == ["hello", "0", "root"]
    out = daemon.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "1000",
        "tiny",
        "sh",
        "-c",
        "id -u; whoami; ls /bin/busybox",
        check=True,
    ).stdout
    assert out.split() == ["1000", "user", "/bin/busybox"]


def test_stop_kills_running_containers_and_unmounts() -> None:
    d = DockerDaemon().start()
    try:
        import_tiny(d)
        d.docker("run", "-d", "--name", "sleeper", "--network", "none", "tiny", "sleep", "600", check=True)
        pid = _container_pid(d, "sleeper")
        assert alive(pid)
        assert mounts_under(d.exec_root), "a running container has its netns mounted under exec-root"
    finally:
        d.stop()
    assert wait_gone([pid], 5) == []
    assert leftovers(d.dir) == []
    assert not d.dir.exists()


def test_stop_cleans_up_after_dockerd_was_killed() -> None:
    d = DockerDaemon().start()
    try:
        import_tiny(d)
        d.docker("run", "-d", "--name", "orphan", "--network", "none", "tiny", "sleep", "600", check=True)
        pid = _container_pid(d, "orphan")
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)  # a crash: dockerd cannot stop its containers any more
        d.proc.wait(10)
        assert alive(pid), "the shim keeps the container alive after dockerd died"
        assert mounts_under(d.dir)
        sockets = shim_sockets(f"{d.dir}/")
        assert len(sockets) == 1
        assert sockets[0].exists()
    finally:
        d.stop()
    assert wait_gone([pid], 5) == []
    assert leftovers(d.dir) == []
    assert not sockets[0].exists(), "a SIGKILLed shim's socket is removed for it"


def test_two_daemons_coexist() -> None:
    with DockerDaemon() as a, DockerDaemon() as b:
        import_tiny(a)
        assert a.docker("images", "-q", "tiny", check=True).stdout.strip()
        assert b.docker("images", "-q", "tiny", check=True).stdout.strip() == ""
        a.docker("run", "-d", "--name", "only-in-a", "--network", "none", "tiny", "sleep", "600", check=True)
        assert "only-in-a" not in b.docker("ps", "-a", check=True).stdout
        a.stop()
        assert leftovers(a.dir) == []
        assert b.docker("version", "--format", "{{.Server.Version}}", check=True).stdout.strip()


def _config_dir(base: Path, token: str) -> Path:
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"HttpHeaders": {"X-Authz-Token": token}}))
    return base


def test_stand_in_plugin_sees_token_and_its_deny_reaches_the_client(work: Path) -> None:
    good, bad = _config_dir(work / "good", "tok-123"), _config_dir(work / "bad", "deny-me")
    with (
        StandInPlugin(work / "authz.sock") as plugin,
        PluginSpec(plugin.socket, prefix="authz-selftest") as spec,
    ):
        assert spec.path.read_text() == f"unix://{plugin.socket}\n"
        with DockerDaemon(work / "d", spec.name) as d:
            # activation at startup, then the harness's readiness ping went through authz
            assert plugin.requests[0] == ("/Plugin.Activate", {})
            assert plugin.requests[1][1]["RequestUri"] == "/_ping"
            seen = len(plugin.requests)
            import_tiny(d, good)
            ran = d.docker("run", "--rm", "--network", "none", "tiny", "echo", "ok", config_dir=good)
            assert ran.stdout == "ok\n", ran.stderr
            headers = [p.get("RequestHeaders", {}) for _, p in plugin.requests[seen:]]
            assert headers
            assert all(h.get("X-Authz-Token") == "tok-123" for h in headers)

            denied = d.docker("run", "--rm", "--network", "none", "tiny", "true", config_dir=bad)
            assert denied.returncode != 0
            assert f"authorization denied by plugin {spec.name}: stand-in says no" in denied.stderr

            create = {"Image": "tiny", "Cmd": ["true"]}
            reply = d.api("POST", "/v1.41/containers/create", create, config_dir=bad)
            assert reply.status == 403
            message = f"authorization denied by plugin {spec.name}: stand-in says no"
            assert reply.json() == {"message": message}
            sent = json.loads(base64.b64decode(plugin.requests[-1][1]["RequestBody"]))
            assert sent == {"Image": "tiny", "Cmd": ["true"]}
    assert not spec.path.exists()
    assert leftovers(work) == []


def test_plugin_spec_refuses_a_name_in_use(tmp_path: Path) -> None:
    with PluginSpec(tmp_path / "a.sock", prefix="authz-selftest") as first:
        with pytest.raises(HarnessError, match="already in use"):
            PluginSpec(tmp_path / "b.sock", name=first.name).register()
        assert first.path.read_text() == f"unix://{(tmp_path / 'a.sock').resolve()}\n"
    assert not first.path.exists()


def test_a_daemon_that_fails_to_start_reports_its_log_and_leaves_nothing() -> None:
    d = DockerDaemon(extra_args=("--no-such-flag",))
    with pytest.raises(HarnessError, match=r"(?s)dockerd exited with \d+:.*unknown flag: --no-such-flag"):
        d.start()
    assert leftovers(d.dir) == []
    assert not d.dir.exists()


def test_socket_paths_too_long_for_sun_path_are_refused() -> None:
    with pytest.raises(HarnessError, match="over the 107-byte limit"):
        DockerDaemon(Path("/tmp") / ("x" * 90))


def test_unmount_all_under_handles_nested_and_busy_mounts() -> None:
    root = Path(tempfile.mkdtemp(prefix="authz-mnt-", dir="/tmp"))
    (root / "a").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "a")], check=True)
    (root / "a" / "b").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "a" / "b")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "a" / "b")], check=True)  # stacked
    assert len(mounts_under(root)) == 3
    with (root / "a" / "b" / "busy").open("w"):  # an open file makes plain umount fail (EBUSY)
        unmount_all_under(root)
        assert mounts_under(root) == []
    assert list(root.iterdir()) == [root / "a"]
    assert list((root / "a").iterdir()) == [], "b lived in a's tmpfs"
    (root / "a").rmdir()
    root.rmdir()


def test_kill_referencing_kills_only_matching_trees() -> None:
    mine = subprocess.Popen(["sh", "-c", "sleep 300; true", "authz-selftest-marker-1"])
    other = subprocess.Popen(["sh", "-c", "sleep 300; true", "authz-selftest-marker-2"])
    try:
        deadline = time.monotonic() + 5
        while not (descendants([mine.pid]) and descendants([other.pid])) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = descendants([mine.pid])
        assert len(child) == 1, "sh forked its sleep"
        killed = kill_referencing("authz-selftest-marker-1")
        assert sorted(killed) == sorted([mine.pid, *child])
        mine.wait(5)  # SIGKILL, or exit 0 if it saw its sleep die first: gone either way
        assert not alive(child[0])
        assert other.poll() is None
        assert all(alive(pid) for pid in descendants([other.pid]))
    finally:
        # a plain kill of the sh would orphan its sleep: kill both trees the harness's way
        kill_referencing("authz-selftest-marker-1")
        kill_referencing("authz-selftest-marker-2")
        mine.wait(5)
        other.wait(5)


# --- the real stack -----------------------------------------------------------------------------


def test_real_stack_is_up_with_the_real_plugin(e2e_env: Stack) -> None:
    assert "authz" in e2e_env.plugin.activate()["Implements"]
    info = e2e_env.docker_as("admin", "info", "--format", "{{json .Plugins.Authorization}}", check=True)
    assert json.loads(info.stdout) == [e2e_env.plugin_name]
    images = e2e_env.docker_as("admin", "images", "--format", "{{.Repository}}:{{.Tag}}", check=True)
    assert "tiny:latest" in images.stdout.split()
    for user in ("admin", "dev", "dev2", "viewer", "operator"):
        config = json.loads((e2e_env.configs[user] / "config.json").read_text())
        assert config["HttpHeaders"]["X-Authz-Token"]


def test_real_plugin_denies_anonymous_and_allows_a_developer(e2e_env: Stack) -> None:
    anon = e2e_env.docker_as(ANONYMOUS, "ps")
    assert anon.returncode != 0
    assert e2e_env.denied_prefix() + "authz: denied" in anon.stderr
    dev = e2e_env.docker_as("dev", "run", "--rm", "--network", "none", "--user", "1000", "tiny", "echo", "hello")
    assert (dev.returncode, dev.stdout) == (0, "hello\n"), dev.stderr


def test_a_private_stack_shares_nothing_with_the_session_stack(e2e_env: Stack, own_e2e_env: Stack) -> None:
    own = own_e2e_env
    assert own.plugin_name != e2e_env.plugin_name
    assert own.workdir != e2e_env.workdir
    assert own.docker_as("admin", "ps").returncode == 0
    # the session stack's admin token was signed with other keys: the private plugin rejects it
    foreign = own.daemon.docker("ps", config_dir=e2e_env.configs["admin"])
    assert foreign.returncode != 0
    assert own.denied_prefix() in foreign.stderr
