"""The peer-credential gateway against a real ``dockerd --tlsverify``, driven by the real docker CLI.

Two OS users are created for the module (``authz-gw-<random>``, deleted at teardown) and run
``docker`` through ``runuser``; two uids without a passwd entry run it through ``setpriv``.

- Identity without our plugin: a recording allow-all stand-in plugin (stdlib HTTP on a unix
  socket, registered by a spec file) shows the ``User`` / ``UserAuthNMethod`` dockerd derives.
- Streams through the gateway: ``exec -i`` and ``run -i`` (hijacked, half-closed stdin),
  ``logs -f``, ``events``.
- With the real plugin (``authzctl serve``): each OS user gets its own role's decision.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer
from typing import Any

import pytest
from harness import (
    DockerDaemon,
    PluginServer,
    PluginSpec,
    authzctl_bin,
    authzctl_env,
    clean_env,
    import_tiny,
    issue_token,
    run_authzctl,
    write_tiny_tar,
)
from hostutil import HarnessError, leftovers

from authz.gateway.ca import CertificateAuthority
from authz.gateway.proxy import ClientContexts

pytestmark = pytest.mark.e2e

DOCKER = shutil.which("docker") or "docker"
TIMEOUT = 120.0


# --- a recording allow-all plugin ----------------------------------------------------------------


class _Recorder(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True
    calls: list[dict[str, Any]]


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        payload = json.loads(raw) if raw else {}
        if self.path == "/AuthZPlugin.AuthZReq":
            self.server.calls.append(payload)
        reply = {"Implements": ["authz"]} if self.path == "/Plugin.Activate" else {"Allow": True}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class RecordingPlugin:
    """Allows everything; remembers ``User``/``UserAuthNMethod`` of every AuthZReq."""

    def __init__(self, path: Path) -> None:
        self.socket = path
        self.server = _Recorder(str(path), _RecordingHandler)
        self.server.calls = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def users_since(self, mark: int) -> set[tuple[str, str]]:
        return {(c.get("User", ""), c.get("UserAuthNMethod", "")) for c in self.server.calls[mark:]}

    def mark(self) -> int:
        return len(self.server.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.socket.unlink(missing_ok=True)


# --- OS identities ---------------------------------------------------------------------------------


@dataclass
class Caller:
    """Someone who runs the docker CLI: an OS user (``runuser``) or a bare uid (``setpriv``)."""

    name: str | None  # None: a uid with no passwd entry
    uid: int
    config: Path  # their DOCKER_CONFIG, owned by them

    def argv(self) -> list[str]:
        if self.name is not None:
            return ["runuser", "-u", self.name, "--", DOCKER]
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", DOCKER]

    def env(self) -> dict[str, str]:
        return clean_env({"DOCKER_CONFIG": str(self.config), "HOME": str(self.config)})

    def docker(self, sock: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv(), "-H", f"unix://{sock}", *args], env=self.env(), input=stdin,
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip

    def popen(self, sock: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.argv(), "-H", f"unix://{sock}", *args], env=self.env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip


def _free_uid(avoid: Sequence[int]) -> int:
    for uid in range(61000 + secrets.randbelow(2000), 64000):
        if uid in avoid:
            continue
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise HarnessError("no free uid in 61000-64000")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Users:
    alice: Caller  # OS user, identified by name
    bob: Caller  # OS user, identified by name
    nobody: Caller  # uid without a passwd entry: anonymous
    mapped: Caller  # uid without a passwd entry, named by the map file
    mapped_name: str
    created: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # short (sun_path) and traversable by the test users, who must reach the gateway socket
    path = Path(tempfile.mkdtemp(prefix="agw-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    left = leftovers(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"gateway tests left behind: {left}"


def _caller_config(workdir: Path, label: str, uid: int) -> Path:
    config = workdir / f"cfg-{label}"
    config.mkdir(mode=0o700)
    os.chown(config, uid, uid)
    return config


@pytest.fixture(scope="module")
def users(workdir: Path) -> Iterator[Users]:
    tag = secrets.token_hex(3)
    created: list[str] = []
    try:
        callers = []
        for label in ("a", "b"):
            name = f"authz-gw-{tag}{label}"
            subprocess.run(["useradd", "--no-create-home", name], check=True, capture_output=True)
            created.append(name)
            uid = pwd.getpwnam(name).pw_uid
            callers.append(Caller(name, uid, _caller_config(workdir, name, uid)))
        nobody_uid = _free_uid([])
        mapped_uid = _free_uid([nobody_uid])
        yield Users(
            alice=callers[0],
            bob=callers[1],
            nobody=Caller(None, nobody_uid, _caller_config(workdir, "nobody", nobody_uid)),
            mapped=Caller(None, mapped_uid, _caller_config(workdir, "mapped", mapped_uid)),
            mapped_name=f"mapped-{tag}",
            created=created,
        )
    finally:
        for name in created:
            subprocess.run(["userdel", name], check=False, capture_output=True)


# --- the gateway and a TLS daemon ------------------------------------------------------------------


class GatewayProcess:
    """``authzctl gateway serve`` as a child process, stopped by its PID."""

    def __init__(self, socket_path: Path, port: int, certs: Path, map_file: Path | None) -> None:
        self.socket = socket_path
        self.log = socket_path.with_suffix(".log")
        argv = [authzctl_bin(), "gateway", "serve", "--listen", str(socket_path),
                "--daemon", f"tcp://127.0.0.1:{port}", "--dir", str(certs)]  # fmt: skip
        if map_file is not None:
            argv += ["--map", str(map_file)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=clean_env({"AUTHZ_LOG_LEVEL": "DEBUG"}), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise HarnessError(f"gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _tls_args(certs: Path, port: int) -> tuple[str, ...]:
    return (f"--host=tcp://127.0.0.1:{port}", "--tlsverify", f"--tlscacert={certs / 'ca.pem'}",
            f"--tlscert={certs / 'server.pem'}", f"--tlskey={certs / 'server-key.pem'}")  # fmt: skip


@dataclass
class Env:
    certs: Path
    port: int
    gateway: Path  # the gateway's unix socket
    daemon: DockerDaemon
    users: Users
    workdir: Path
    recorder: RecordingPlugin | None = None


@pytest.fixture(scope="module")
def certs(workdir: Path) -> Path:
    path = workdir / "certs"
    out = subprocess.run(
        [authzctl_bin(), "gateway", "setup", "--dir", str(path)], capture_output=True, text=True,
        env=clean_env(), check=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert "--tlsverify" in out.stdout
    return path


@pytest.fixture(scope="module")
def recorded(workdir: Path, certs: Path, users: Users) -> Iterator[Env]:
    """dockerd --tlsverify with the recording plugin, plus a gateway with a map file."""
    map_file = workdir / "map.yaml"
    map_file.write_text(f"{users.mapped.uid}: {users.mapped_name}\n")
    port = _free_port()
    with ExitStack() as stack:
        recorder = RecordingPlugin(workdir / "rec.sock")
        stack.callback(recorder.close)
        spec = stack.enter_context(PluginSpec(recorder.socket, prefix="authz-gw"))
        daemon = stack.enter_context(DockerDaemon(workdir / "d1", spec.name, extra_args=_tls_args(certs, port)))
        import_tiny(daemon)
        gateway = GatewayProcess(workdir / "gw1.sock", port, certs, map_file)
        stack.callback(gateway.stop)
        yield Env(certs, port, gateway.socket, daemon, users, workdir, recorder)


# --- identity --------------------------------------------------------------------------------------


def test_each_os_user_reaches_the_daemon_as_itself(recorded: Env) -> None:
    assert recorded.recorder is not None
    users = recorded.users
    for caller, expected in [
        (users.alice, users.alice.name),
        (users.bob, users.bob.name),
        (users.nobody, "anonymous"),
        (users.mapped, users.mapped_name),
    ]:
        mark = recorded.recorder.mark()
        for _ in range(2):  # the second run resumes the TLS session of the first
            result = caller.docker(recorded.gateway, "version", "--format", "{{.Server.Version}}")
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip()
        assert recorded.recorder.users_since(mark) == {(expected, "TLS")}, caller
    # one log line per connection: pid, uid, gid, user, and which rule named the user
    log = recorded.gateway.with_suffix(".log").read_text()
    for caller, expected in [(users.alice, f"user={users.alice.name} (os)"),
                             (users.nobody, "user=anonymous (anonymous)"),
                             (users.mapped, f"user={users.mapped_name} (map-uid)")]:  # fmt: skip
        assert f"uid={caller.uid} gid={caller.uid} {expected}" in log
    # resumed sessions still carry the user's certificate: the daemon named alice every time
    assert f"user={users.alice.name} after" in log
    assert any(f"user={users.alice.name} after" in line and "(tls resumed)" in line for line in log.splitlines())


def test_the_daemon_socket_itself_names_nobody(recorded: Env) -> None:
    assert recorded.recorder is not None
    mark = recorded.recorder.mark()
    recorded.daemon.docker("version", check=True)
    assert recorded.recorder.users_since(mark) == {("", "")}


def test_service_certificate_for_a_ci_runner(recorded: Env) -> None:
    assert recorded.recorder is not None
    alice = recorded.users.alice
    out = recorded.workdir / "ci"
    subprocess.run(
        [authzctl_bin(), "gateway", "issue-client-cert", "ci.example.com", "--dir", str(recorded.certs),
         "--out", str(out), "--days", "2", "--owner", str(alice.name)],
        capture_output=True, text=True, env=clean_env(), check=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.stat().st_uid == alice.uid
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    mark = recorded.recorder.mark()
    env = clean_env({"DOCKER_CERT_PATH": str(out), "DOCKER_TLS_VERIFY": "1",
                     "DOCKER_CONFIG": str(alice.config)})  # fmt: skip
    result = subprocess.run(
        ["runuser", "-u", str(alice.name), "--", DOCKER, "-H", f"tcp://127.0.0.1:{recorded.port}", "version"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert recorded.recorder.users_since(mark) == {("ci.example.com", "TLS")}


def _tls_get(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status
    finally:
        conn.close()


def test_tls_port_wants_a_certificate_from_the_gateway_ca(recorded: Env, tmp_path: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(recorded.certs / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate at all
        _tls_get(recorded.port, trusting)
    stranger = CertificateAuthority.create()  # a certificate named alice, from another CA
    issued = stranger.issue_client(str(recorded.users.alice.name), dt.timedelta(hours=1))
    (tmp_path / "c.pem").write_bytes(issued.cert_pem + issued.key_pem)
    trusting.load_cert_chain(tmp_path / "c.pem")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_get(recorded.port, trusting)
    ours = ClientContexts(CertificateAuthority.load(recorded.certs)).context_for("probe")
    assert _tls_get(recorded.port, ours) == 200  # the same request with a gateway certificate


def test_upload_through_the_gateway(recorded: Env) -> None:
    alice = recorded.users.alice
    tar = write_tiny_tar(recorded.workdir / "upload.tar")  # ~2 MB of busybox, readable by alice
    tag = f"gw-upload-{secrets.token_hex(3)}"
    try:
        imported = alice.docker(recorded.gateway, "import", str(tar), tag)
        assert imported.returncode == 0, imported.stderr
        ran = alice.docker(recorded.gateway, "run", "--rm", "--network", "none", tag, "echo", "ok")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "ok\n"
    finally:
        tar.unlink(missing_ok=True)
        recorded.daemon.docker("rmi", "-f", tag)


# --- streams ---------------------------------------------------------------------------------------


def _name(prefix: str) -> str:
    return f"gw-{prefix}-{secrets.token_hex(3)}"


def test_exec_with_piped_stdin(recorded: Env) -> None:
    alice, sock = recorded.users.alice, recorded.gateway
    name = _name("exec")
    started = alice.docker(sock, "run", "-d", "--name", name, "--network", "none", "tiny", "sleep", "300")
    assert started.returncode == 0, started.stderr
    try:
        text = "hello\nthrough the gateway\n" * 500
        result = alice.docker(sock, "exec", "-i", name, "cat", stdin=text)
        assert result.returncode == 0, result.stderr
        assert result.stdout == text  # needs the stdin half-close to reach cat
    finally:
        recorded.daemon.docker("rm", "-f", name)


def test_run_attached_with_stdin(recorded: Env) -> None:
    result = recorded.users.bob.docker(
        recorded.gateway, "run", "-i", "--rm", "--network", "none", "tiny", "cat", stdin="ping\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ping\n"


def test_logs_follow(recorded: Env) -> None:
    alice, sock = recorded.users.alice, recorded.gateway
    name = _name("logs")
    script = "echo first; sleep 2; echo second"
    started = alice.docker(sock, "run", "-d", "--name", name, "--network", "none", "tiny", "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    try:
        result = alice.docker(sock, "logs", "-f", name)  # returns when the container exits
        assert result.returncode == 0, result.stderr
        assert result.stdout == "first\nsecond\n"
    finally:
        recorded.daemon.docker("rm", "-f", name)


def _readline_within(proc: subprocess.Popen[str], seconds: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline() if ready else ""


def test_events_stream(recorded: Env) -> None:
    alice, sock = recorded.users.alice, recorded.gateway
    name = _name("events")
    since = str(int(time.time()) - 1)
    events = alice.popen(sock, "events", "--since", since, "--filter", f"container={name}",
                         "--format", "{{.Action}}")  # fmt: skip
    try:
        created = alice.docker(sock, "create", "--name", name, "--network", "none", "tiny", "true")
        assert created.returncode == 0, created.stderr
        assert _readline_within(events, 60).strip() == "create"
        assert events.poll() is None  # still streaming
    finally:
        os.killpg(events.pid, signal.SIGKILL)  # our own child's group
        events.communicate(timeout=10)  # reaps it and closes its pipes
        recorded.daemon.docker("rm", "-f", name)


# --- with the real plugin --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enforced(workdir: Path, certs: Path, users: Users) -> Iterator[Env]:
    """The real plugin with a policy naming both OS users; dockerd --tlsverify; a gateway."""
    state = workdir / "plugin"
    state.mkdir()
    env = authzctl_env(state)
    policy = state / "policy.yaml"
    policy.write_text(
        "version: 1\nsettings: {anonymous_role: null}\nusers:\n"
        "  admin: {roles: [admin]}\n"
        f"  {users.alice.name}: {{roles: [viewer]}}\n"
        f"  {users.bob.name}: {{roles: [admin]}}\n"
    )
    run_authzctl(env, "init")
    run_authzctl(env, "policy", "apply", str(policy))
    port = _free_port()
    with ExitStack() as stack:
        plugin = stack.enter_context(PluginServer(workdir / "p2", env))
        spec = stack.enter_context(PluginSpec(plugin.socket, prefix="authz-gw"))
        daemon = stack.enter_context(DockerDaemon(workdir / "d2", spec.name, extra_args=_tls_args(certs, port)))
        import_tiny(daemon, issue_token(env, "admin", state / "admin-config"))
        gateway = GatewayProcess(workdir / "gw2.sock", port, certs, None)
        stack.callback(gateway.stop)
        yield Env(certs, port, gateway.socket, daemon, users, workdir)


def test_real_plugin_decides_per_os_user(enforced: Env) -> None:
    users, sock = enforced.users, enforced.gateway
    viewer_ps = users.alice.docker(sock, "ps")
    assert viewer_ps.returncode == 0, viewer_ps.stderr

    viewer_run = users.alice.docker(sock, "run", "--rm", "--network", "none", "tiny", "true")
    assert viewer_run.returncode != 0
    assert "authorization denied by plugin" in viewer_run.stderr
    assert str(users.alice.name) in viewer_run.stderr  # the deny names the caller the gateway vouched for

    admin_run = users.bob.docker(sock, "run", "--rm", "--network", "none", "tiny", "echo", "ok")
    assert admin_run.returncode == 0, admin_run.stderr
    assert admin_run.stdout == "ok\n"

    anonymous_ps = users.nobody.docker(sock, "ps")
    assert anonymous_ps.returncode != 0
    assert "authorization denied by plugin" in anonymous_ps.stderr
