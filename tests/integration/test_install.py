"""``authzctl install|uninstall|doctor`` with ``--root``: the files, their modes, daemon.json kept
intact, idempotence, dry runs, refusals, and the reload ordering against a stand-in dockerd.

The stand-ins: ``FakePlugin`` answers ``POST /Plugin.Activate`` on a unix socket (the real plugin
is exercised in tests/e2e/test_install_e2e.py); ``FakeDaemon`` is a process whose argv[0] is
``dockerd`` and which counts the SIGHUPs it receives. Socket activation of the real ``authzctl
serve`` is tested here too, with the descriptor passed the way systemd passes it.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from authz.doctor import DaemonProcess, activate, resolve_plugin
from authz.errors import ConfigError
from authz.install_units import add_plugin, remove_plugin
from authz.serve import inherited_socket

AUTHZCTL = str(Path(sys.executable).parent / "authzctl")
ORIGINAL = {"log-level": "warn", "storage-driver": "vfs", "labels": ["site=a"], "debug": False}


class CliRun(Protocol):
    code: int
    out: str
    err: str


Cli = Callable[..., CliRun]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server.calls.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(server.reply)

    def log_message(self, *_args: Any) -> None:
        pass


class FakePlugin:
    """Answers Activate on ``path`` (mode 0600) until ``stop()``."""

    def __init__(self, path: Path, reply: bytes = b'{"Implements": ["authz"]}\n') -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.server: Any = socketserver.ThreadingUnixStreamServer(str(path), _Handler)
        self.server.reply = reply
        self.server.calls = []
        path.chmod(0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def calls(self) -> list[str]:
        return list(self.server.calls)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


class FakeDaemon:
    """A process named ``dockerd`` (argv[0]) with ``args``; counts SIGHUPs in a file."""

    CODE = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *_: open(sys.argv[1], 'a').write('HUP\\n'))\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "while True: time.sleep(1)\n"
    )

    def __init__(self, workdir: Path, *args: str) -> None:
        self.hups = workdir / "hups"
        ready = Path(f"{self.hups}.ready")
        ready.unlink(missing_ok=True)
        script = 'exec -a dockerd "$0" -c "$1" "${@:2}"'
        self.proc = subprocess.Popen(["bash", "-c", script, sys.executable, self.CODE, str(self.hups), *args])
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline, "fake dockerd did not start"
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signals(self) -> int:
        return len(self.hups.read_text().splitlines()) if self.hups.exists() else 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def root() -> Iterator[Path]:
    """A scratch root (short path: sockets live in it) holding a daemon.json with other keys, tab-indented."""
    path = Path(tempfile.mkdtemp(prefix="azi-", dir="/tmp"))
    (path / "etc/docker").mkdir(parents=True)
    daemon_json = path / "etc/docker/daemon.json"
    daemon_json.write_text(json.dumps(ORIGINAL, indent="\t") + "\n")
    daemon_json.chmod(0o640)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin(root: Path) -> Iterator[FakePlugin]:
    fake = FakePlugin(root / "run/docker/plugins/authz.sock")
    yield fake
    fake.stop()


@pytest.fixture
def daemon(root: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(root, f"--config-file={root}/etc/docker/daemon.json", "--host=unix:///x.sock")
    yield fake
    fake.stop()


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None, float]]:
    out: dict[str, tuple[int, bytes | None, float]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (info.st_mode, content, info.st_mtime)
    return out


def flat(text: str) -> str:
    """Whitespace runs as one space: the report aligns its columns."""
    return " ".join(text.split())


def daemon_json(root: Path) -> dict[str, Any]:
    data = json.loads((root / "etc/docker/daemon.json").read_text())
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------- install


def test_install_writes_units_env_file_and_daemon_json(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    result = cli("install", "--root", str(root))
    assert result.code == 0, result.err
    socket_unit = (root / "etc/systemd/system/authz.socket").read_text()
    for line in ("ListenStream=/run/docker/plugins/authz.sock", "SocketMode=0600", "Before=docker.service",
                 "WantedBy=sockets.target"):  # fmt: skip
        assert line in socket_unit.splitlines()
    service = (root / "etc/systemd/system/authz.service").read_text().splitlines()
    expected = [
        f"ExecStart={AUTHZCTL} serve --socket /run/docker/plugins/authz.sock --workers 2",
        "Type=notify", "Restart=always", "RestartSec=1", "NoNewPrivileges=yes", "ProtectSystem=strict",
        "Environment=TMPDIR=/var/lib/authz", "ReadWritePaths=/var/lib/authz", "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX", "SystemCallFilter=@system-service",
        "EnvironmentFile=/etc/authz/authz.env", "Environment=AUTHZ_DATABASE_URL=sqlite:////var/lib/authz/authz.db",
    ]  # fmt: skip
    for line in expected:
        assert line in service
    # the plugin must see the daemon's /tmp to judge bind sources there
    assert not any(line.startswith("PrivateTmp=") for line in service)
    # the venv of the tests lives under /root: the unit relaxes ProtectHome and says so
    assert any(line.startswith("ProtectHome=") for line in service)
    for name, mode in (("etc/systemd/system/authz.socket", 0o644), ("etc/systemd/system/authz.service", 0o644),
                       ("etc/authz/authz.env", 0o600), ("etc/docker/daemon.json", 0o640)):  # fmt: skip
        assert stat.S_IMODE((root / name).stat().st_mode) == mode, name
    assert "AUTHZ_DATABASE_URL=sqlite:////var/lib/authz/authz.db" in (root / "etc/authz/authz.env").read_text()
    data = daemon_json(root)
    assert list(data) == [*ORIGINAL, "authorization-plugins"]  # every key kept, in order; ours last
    assert {k: data[k] for k in ORIGINAL} == ORIGINAL
    assert data["authorization-plugins"] == ["authz"]
    assert (root / "etc/docker/daemon.json").read_text().startswith('{\n\t"log-level"')  # tabs kept
    assert plugin.calls.count("/Plugin.Activate") >= 1
    assert not (root / "etc/docker/plugins").exists()  # default socket: no spec needed
    prune = (root / "etc/systemd/system/authz-ownership-prune.service").read_text().splitlines()
    for line in (f"ExecStart={AUTHZCTL} ownership prune --if-configured", "Type=oneshot",
                 "EnvironmentFile=/etc/authz/authz.env", "ReadWritePaths=/var/lib/authz",
                 "ProtectSystem=strict"):  # fmt: skip
        assert line in prune
    timer = (root / "etc/systemd/system/authz-ownership-prune.timer").read_text().splitlines()
    assert "OnUnitActiveSec=1h" in timer
    assert "WantedBy=timers.target" in timer


def test_install_passes_workers_and_cpu_affinity_to_serve(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    result = cli("install", "--root", str(root), "--workers", "3", "--cpu-affinity", "spread")
    assert result.code == 0, result.err
    service = (root / "etc/systemd/system/authz.service").read_text().splitlines()
    assert (
        f"ExecStart={AUTHZCTL} serve --socket /run/docker/plugins/authz.sock --workers 3 --cpu-affinity spread"
        in service
    )
    assert cli("install", "--root", str(root), "--cpu-affinity", "all").code == 2


def test_install_is_idempotent(cli: Cli, root: Path, plugin: FakePlugin, daemon: FakeDaemon) -> None:
    assert cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid)).code == 0
    assert daemon.signals() == 1
    before = snapshot(root)
    again = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
    assert again.code == 0, again.err
    assert "nothing to change" in again.out
    assert "already lists authz; no reload needed" in again.out
    assert snapshot(root) == before
    assert daemon.signals() == 1  # no second reload


def test_dry_run_changes_nothing_and_shows_every_change(
    cli: Cli, root: Path, plugin: FakePlugin, daemon: FakeDaemon
) -> None:
    before = snapshot(root)
    result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid), "--dry-run")
    assert result.code == 0, result.err
    assert snapshot(root) == before
    assert daemon.signals() == 0
    out, words = result.out, flat(result.out)
    assert f"would write {root}/etc/systemd/system/authz.socket (0644, new)" in words
    assert "+ListenStream=/run/docker/plugins/authz.sock" in out
    assert f"would write {root}/etc/authz/authz.env (0600, new)" in words
    assert '+\t"authorization-plugins": [' in out  # the daemon.json diff
    assert f"would signal SIGHUP to dockerd (pid {daemon.pid})" in words
    assert out.rstrip().endswith("dry run: nothing was changed")

    assert cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid)).code == 0
    installed = snapshot(root)
    undo = cli("uninstall", "--root", str(root), "--daemon-pid", str(daemon.pid), "--dry-run")
    assert undo.code == 0, undo.err
    assert snapshot(root) == installed
    assert f"would remove {root}/etc/systemd/system/authz.service" in flat(undo.out)
    assert '-\t"authorization-plugins": [' in undo.out
    assert daemon.signals() == 1


def test_install_stops_before_daemon_json_when_the_plugin_does_not_answer(
    cli: Cli, root: Path, daemon: FakeDaemon
) -> None:
    original = (root / "etc/docker/daemon.json").read_text()
    result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
    assert result.code == 1
    assert "plugin authz not found" in result.err
    assert "it must answer before daemon.json names it" in result.err
    assert (root / "etc/docker/daemon.json").read_text() == original
    assert daemon.signals() == 0
    assert (root / "etc/systemd/system/authz.socket").exists()  # the units are in place for the next try

    # a socket file nobody listens on (a crashed plugin) is no better
    (root / "run/docker/plugins").mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(root / "run/docker/plugins/authz.sock"))
    stale.close()
    result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
    assert result.code == 1
    assert "does not answer POST /Plugin.Activate" in result.err
    assert (root / "etc/docker/daemon.json").read_text() == original
    assert daemon.signals() == 0


def test_install_refuses_a_plugin_that_is_not_authz(cli: Cli, root: Path, daemon: FakeDaemon) -> None:
    other = FakePlugin(root / "run/docker/plugins/authz.sock", b'{"Implements": ["VolumeDriver"]}')
    try:
        result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
    finally:
        other.stop()
    assert result.code == 1
    assert "Implements=['VolumeDriver'], not authz" in result.err
    assert "authorization-plugins" not in daemon_json(root)
    assert daemon.signals() == 0


def test_install_refuses_a_daemon_with_authorization_plugin_flags(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    flagged = FakeDaemon(root, f"--config-file={root}/etc/docker/daemon.json", "--authorization-plugin", "opa")
    try:
        before = snapshot(root)
        result = cli("install", "--root", str(root), "--daemon-pid", str(flagged.pid))
        assert result.code == 1
        assert f"dockerd (pid {flagged.pid}) runs with --authorization-plugin=opa" in result.err
        assert "rejects every reload" in result.err
        assert snapshot(root) == before  # refused before writing anything
        assert cli("uninstall", "--root", str(root), "--daemon-pid", str(flagged.pid)).code == 1
        assert flagged.signals() == 0
    finally:
        flagged.stop()


def test_install_refuses_a_daemon_reading_another_daemon_json(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    elsewhere = FakeDaemon(root, "--config-file=/srv/other/daemon.json")
    try:
        result = cli("install", "--root", str(root), "--daemon-pid", str(elsewhere.pid))
    finally:
        elsewhere.stop()
    assert result.code == 1
    assert "reads /srv/other/daemon.json" in result.err
    assert "--daemon-json /srv/other/daemon.json" in result.err


def test_daemon_pid_must_be_dockerd(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    result = cli("install", "--root", str(root), "--daemon-pid", str(os.getpid()))
    assert result.code == 1
    assert f"pid {os.getpid()} is not dockerd" in result.err


def test_uninstall_reverses_install_and_keeps_other_keys(
    cli: Cli, root: Path, plugin: FakePlugin, daemon: FakeDaemon
) -> None:
    path = root / "etc/docker/daemon.json"
    original = path.read_text()
    assert cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid)).code == 0
    result = cli("uninstall", "--root", str(root), "--daemon-pid", str(daemon.pid))
    assert result.code == 0, result.err
    assert path.read_text() == original  # byte for byte: the same keys, order and indentation
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert daemon.signals() == 2
    assert not (root / "etc/systemd/system/authz.socket").exists()
    assert not (root / "etc/systemd/system/authz.service").exists()
    assert not (root / "etc/systemd/system/authz-ownership-prune.service").exists()
    assert not (root / "etc/systemd/system/authz-ownership-prune.timer").exists()
    assert (root / "etc/authz/authz.env").exists()  # may hold the database password: kept
    # the order of the steps: daemon.json, then the signal, then the units
    out = result.out
    assert out.index("authorization-plugins -= authz") < out.index("SIGHUP") < out.index("remove")


def test_other_authorization_plugins_stay(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    path = root / "etc/docker/daemon.json"
    path.write_text(json.dumps({"authorization-plugins": ["opa"], "debug": True}, indent=4) + "\n")
    assert cli("install", "--root", str(root)).code == 0
    assert daemon_json(root) == {"authorization-plugins": ["opa", "authz"], "debug": True}
    assert cli("uninstall", "--root", str(root)).code == 0
    assert daemon_json(root) == {"authorization-plugins": ["opa"], "debug": True}


def test_no_reload_while_another_listed_plugin_is_dead(
    cli: Cli, root: Path, plugin: FakePlugin, daemon: FakeDaemon
) -> None:
    path = root / "etc/docker/daemon.json"
    path.write_text(json.dumps({"authorization-plugins": ["opa", "vendor/managed:1"]}, indent=2) + "\n")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(root / "run/docker/plugins/opa.sock"))  # a socket file nobody serves
    dead.close()
    before = path.read_text()
    result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
    assert result.code == 1
    assert "daemon.json also lists opa, which does not answer /Plugin.Activate" in result.err
    assert path.read_text() == before
    assert daemon.signals() == 0

    opa = FakePlugin(root / "run/docker/plugins/opa.sock.tmp")
    (root / "run/docker/plugins/opa.sock").unlink()
    opa.path.rename(root / "run/docker/plugins/opa.sock")
    opa.path = root / "run/docker/plugins/opa.sock"
    try:
        result = cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid))
        assert result.code == 0, result.err
        assert "vendor/managed:1 is no legacy plugin here" in flat(result.out)
        assert daemon_json(root)["authorization-plugins"] == ["opa", "vendor/managed:1", "authz"]
        assert daemon.signals() == 1
    finally:
        opa.stop()


def test_uninstall_keeps_units_it_did_not_write(cli: Cli, root: Path) -> None:
    unit = root / "etc/systemd/system/authz.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/true\n")
    result = cli("uninstall", "--root", str(root))
    assert result.code == 0, result.err
    assert unit.exists()
    assert "not written by authzctl install" in result.out


def test_env_file_is_never_overwritten(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    env = root / "etc/authz/authz.env"
    env.parent.mkdir(parents=True)
    env.write_text("AUTHZ_DATABASE_URL=postgresql+psycopg2://authz:secret@/authz?host=/run/postgresql\n")
    result = cli("install", "--root", str(root))
    assert result.code == 0, result.err
    assert "secret" in env.read_text()
    assert "secret" not in result.out


def test_custom_socket_gets_a_spec_file(cli: Cli, root: Path) -> None:
    served = FakePlugin(root / "srv/authz/p.sock")
    try:
        result = cli("install", "--root", str(root), "--socket", "/srv/authz/p.sock")
        assert result.code == 0, result.err
        spec = root / "etc/docker/plugins/authz.spec"
        assert spec.read_text() == "unix:///srv/authz/p.sock\n"
        assert resolve_plugin("authz", root) == root / "srv/authz/p.sock"
        assert "ListenStream=/srv/authz/p.sock" in (root / "etc/systemd/system/authz.socket").read_text()
        assert cli("uninstall", "--root", str(root), "--socket", "/srv/authz/p.sock").code == 0
        assert not spec.exists()
    finally:
        served.stop()


def test_a_name_taken_by_another_socket_is_refused(cli: Cli, root: Path) -> None:
    ours = FakePlugin(root / "srv/authz/p.sock")
    theirs = FakePlugin(root / "run/docker/plugins/authz.sock")  # found first by dockerd
    try:
        result = cli("install", "--root", str(root), "--socket", "/srv/authz/p.sock")
    finally:
        ours.stop()
        theirs.stop()
    assert result.code == 1
    assert "another plugin uses that name" in result.err
    assert "authorization-plugins" not in daemon_json(root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"debug": true, "debug": false}', "key 'debug' appears twice"),
        ('{"debug": true,}', "is not valid JSON"),
        ('{"authorization-plugins": "authz"}', "must be a list of plugin names"),
        ('{"Authorization-Plugins": ["x"]}', "write the key as 'authorization-plugins'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_daemon_json_that_cannot_be_edited_faithfully_is_refused(
    cli: Cli, root: Path, plugin: FakePlugin, text: str, message: str
) -> None:
    path = root / "etc/docker/daemon.json"
    path.write_text(text)
    result = cli("install", "--root", str(root))
    assert result.code == 1
    assert message in result.err
    assert path.read_text() == text


def test_invalid_names_are_refused(cli: Cli, root: Path) -> None:
    for name in ("../etc", "a/b", "", ".hidden", "x" * 64):
        result = cli("install", "--root", str(root), "--name", name)
        assert result.code == 1, name
        assert "invalid plugin name" in result.err


def test_installing_for_real_needs_root_and_systemd(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = cli("install")
    assert result.code == 1
    assert "run as root" in result.err


def test_daemon_json_edits_keep_unknown_keys_and_values() -> None:
    text = '{\n  "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 64000, "Soft": 64000}},\n  "x": "ü"\n}\n'
    added, changed = add_plugin(text, "authz")
    assert changed
    assert json.loads(added) == {**json.loads(text), "authorization-plugins": ["authz"]}
    assert '"x": "ü"' in added  # not \u-escaped
    removed, changed = remove_plugin(added, "authz")
    assert changed
    assert json.loads(removed) == json.loads(text)
    assert add_plugin(added, "authz") == (added, False)
    assert remove_plugin(text, "authz") == (text, False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(cli: Cli, root: Path, plugin: FakePlugin) -> None:
    assert cli("install", "--root", str(root), "--inet").code == 0
    units = root / "etc/systemd/system"
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in (units / "authz.service").read_text()
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./authz.socket", "./authz.service",
         "./authz-ownership-prune.service", "./authz-ownership-prune.timer"],
        cwd=units, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # unknown keys or values are reported (not failed) by verify: any output is a finding
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


# ---------------------------------------------------------------- socket activation (authz/serve.py)

LAUNCHER = """\
import os, sys
os.dup2(int(sys.argv[1]), 3)  # where sd_listen_fds(3) looks
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_serve_uses_the_socket_systemd_passes_and_leaves_it_alone(cli: Cli, root: Path) -> None:
    assert cli("init").code == 0
    path = root / "run/docker/plugins/authz.sock"
    path.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o600)
    listener.listen(16)
    inode = path.stat().st_ino
    log = (root / "serve.log").open("wb")
    argv = [sys.executable, "-c", LAUNCHER, str(listener.fileno()), AUTHZCTL, "serve", "--socket", str(path),
            "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, pass_fds=[listener.fileno()], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert activate(path, timeout=5) == ["authz"]
                break
            except OSError:
                assert proc.poll() is None, (root / "serve.log").read_text()
                assert time.monotonic() < deadline, (root / "serve.log").read_text()
                time.sleep(0.1)
        assert path.stat().st_ino == inode  # served, not re-bound
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
        listener.close()
    assert path.exists()  # systemd's socket outlives the service
    assert path.stat().st_ino == inode
    assert "Listening at: unix:" in (root / "serve.log").read_text()


def test_socket_activation_is_only_for_the_named_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert inherited_socket({}) is None
    assert inherited_socket({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, pid=2) is None
    with pytest.raises(ConfigError, match="exactly one socket"):
        inherited_socket({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, pid=7)
    check = (
        "import os, sys\n"
        "from authz.serve import inherited_socket\n"
        "fd = os.open(sys.executable, os.O_RDONLY)\n"
        "os.dup2(fd, 3)\n"
        "try:\n"
        "    inherited_socket({'LISTEN_PID': str(os.getpid()), 'LISTEN_FDS': '1'})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert "ConfigError socket activation: the passed descriptor is not a unix stream socket" in result.stdout


# ---------------------------------------------------------------- doctor


def doctor(cli: Cli, root: Path, *extra: str) -> tuple[int, dict[str, list[str]], str]:
    result = cli("doctor", "--root", str(root), *extra)
    statuses: dict[str, list[str]] = {}
    for line in result.out.splitlines():
        status, _, rest = line.partition(" ")
        if status in {"OK", "WARN", "FAIL"}:
            name = rest.strip().split("  ")[0]
            statuses.setdefault(name, []).append(status)
    return result.code, statuses, result.out


def test_doctor_passes_a_sound_installation(
    cli: Cli, authz_env: Path, root: Path, plugin: FakePlugin, daemon: FakeDaemon
) -> None:
    assert cli("init").code == 0
    assert cli("install", "--root", str(root), "--daemon-pid", str(daemon.pid)).code == 0
    code, statuses, out = doctor(cli, root, "--daemon-pid", str(daemon.pid))
    assert code == 0, out
    for name in ("plugin socket", "socket access", "daemon.json", "dockerd", "database", "clock", "token keys"):
        assert statuses.get(name) == ["OK"], out
    assert "FAIL" not in out
    assert statuses["daemon reads"] == ["WARN"], out  # AUTHZ_DOCKER_HOST is not set here
    assert "AUTHZ_DOCKER_HOST is not set" in out


def test_doctor_checks_the_daemon_reads_and_the_prune_timer(
    cli: Cli, authz_env: Path, root: Path, plugin: FakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket as socket_module

    assert cli("init").code == 0
    monkeypatch.setenv("AUTHZ_DOCKER_HOST", "unix:///run/docker.sock")
    _, statuses, out = doctor(cli, root)
    assert statuses["daemon reads"] == ["WARN"], out
    assert f"no unix socket at {root}/run/docker.sock" in out
    listener = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        listener.bind(str(root / "run/docker.sock"))
        _, statuses, out = doctor(cli, root)
        assert statuses["daemon reads"] == ["OK"], out
        assert statuses["ownership prune"] == ["WARN"], out  # not installed yet
        assert cli("install", "--root", str(root)).code == 0
        _, statuses, out = doctor(cli, root)
        assert statuses["ownership prune"] == ["OK"], out
        assert "authz-ownership-prune.timer installed" in out
    finally:
        listener.close()


def test_doctor_names_each_problem(
    cli: Cli, authz_env: Path, root: Path, plugin: FakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("init").code == 0
    assert cli("install", "--root", str(root)).code == 0
    flagged = FakeDaemon(root, f"--config-file={root}/etc/docker/daemon.json", "--authorization-plugin=authz")
    try:
        code, statuses, out = doctor(cli, root, "--daemon-pid", str(flagged.pid))
    finally:
        flagged.stop()
    assert code == 1
    assert statuses["dockerd"] == ["FAIL"]
    assert "runs with --authorization-plugin=authz" in out

    plugin.path.chmod(0o666)
    (authz_env / "keys" / "token-signing.pem").chmod(0o644)
    path = root / "etc/docker/daemon.json"
    path.write_text(json.dumps({"authorization-plugins": ["ghost"]}))
    db_file = authz_env / "authz.db"
    os.utime(db_file, (time.time() + 120, time.time() + 120))  # written "in the future": the clock went back
    code, statuses, out = doctor(cli, root)
    assert code == 1
    assert statuses["socket access"] == ["FAIL"]
    assert "mode 0666" in out
    assert statuses["token keys"] == ["FAIL"]
    assert statuses["daemon.json"] == ["FAIL", "WARN"]  # ours missing; ghost resolves to nothing
    assert "does not list authz" in out
    assert "ghost is not a legacy plugin" in out
    assert statuses["clock"] == ["FAIL"]
    assert statuses["dockerd"] == ["WARN"]  # no daemon found under the root
    assert "→ authzctl install --name authz" in out  # what to do is printed under the failure

    plugin.stop()
    monkeypatch.setenv("AUTHZ_DATABASE_URL", f"sqlite:///{root / 'empty.db'}")
    code, statuses, out = doctor(cli, root)
    assert statuses["plugin socket"] == ["FAIL"]
    assert "plugin authz not found" in out
    assert statuses["database"] == ["FAIL"]
    assert "at schema none" in out
    assert "→ authzctl migrate" in out


def test_doctor_daemon_process_parsing() -> None:
    daemon = DaemonProcess(1, ("/usr/bin/dockerd", "-H", "fd://", "--authorization-plugin", "a",
                               "--authorization-plugin=b", "--config-file", "/x.json"))  # fmt: skip
    assert daemon.authz_flags() == ["--authorization-plugin=a", "--authorization-plugin=b"]
    assert daemon.config_file() == "/x.json"
    assert DaemonProcess(1, ("dockerd",)).config_file() == "/etc/docker/daemon.json"
