"""``authzctl install|uninstall|doctor`` against a real dockerd (systemd is not running here).

The scratch root stands in for ``/``: install writes the units, the environment file and the
daemon.json there. The test then does what systemd would do with those units — bind the unit's
``ListenStream`` (with its ``SocketMode``) and start its ``ExecStart`` with the socket passed as fd 3
(``LISTEN_FDS``) and the unit's environment — so the real plugin runs exactly as the units say.
The private dockerd reads ``<root>/etc/docker/daemon.json`` and has no ``--authorization-plugin``
flag; a spec file in /etc/docker/plugins (unique name, removed at teardown) lets it find the
plugin socket in the scratch root.
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import DockerDaemon, PluginSpec, authzctl_env, clean_env, issue_token, run_authzctl
from hostutil import log_tail, stop_child
from stack import TEST_POLICY

LAUNCHER = """\
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[2], sys.argv[2:])
"""


def unit_values(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


class SocketActivated:
    """What systemd does with NAME.socket + NAME.service, with every path placed under ``root``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        units = root / "etc/systemd/system"
        self.socket_unit = unit_values(units / f"{name}.socket")
        self.service_unit = unit_values(units / f"{name}.service")
        self.path = self.under(self.socket_unit["ListenStream"][0])
        self.log = root / "plugin.log"
        self.listener: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def under(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def environment(self) -> dict[str, str]:
        env = dict(value.split("=", 1) for value in self.service_unit["Environment"])
        for line in self.under(self.service_unit["EnvironmentFile"][0]).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        return env

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.path.chmod(int(self.socket_unit["SocketMode"][0], 8))
        self.listener.listen(128)
        argv = shlex.split(self.service_unit["ExecStart"][0])
        argv[argv.index("--socket") + 1] = str(self.path)  # the unit's path, seen from the scratch root
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(self.listener.fileno()), *argv],
                pass_fds=[self.listener.fileno()],
                env=clean_env(self.environment()),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 15)
            self.proc = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.path.unlink(missing_ok=True)  # RemoveOnStop=yes


@dataclass
class Scene:
    root: Path
    name: str
    env: dict[str, str]
    daemon: DockerDaemon
    admin: Path
    plugin: SocketActivated | None = None

    def authzctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        common = ("--root", str(self.root), "--name", self.name)
        return run_authzctl(self.env, *args, *common, "--daemon-pid", str(self.daemon.pids()[0]), check=False)

    def daemon_json(self) -> dict[str, object]:
        data = json.loads((self.root / "etc/docker/daemon.json").read_text())
        assert isinstance(data, dict)
        return data


@pytest.fixture
def scene() -> Iterator[Scene]:
    root = Path(tempfile.mkdtemp(prefix="azr-", dir="/tmp"))
    name = f"authz-e2e-{secrets.token_hex(4)}"
    env = authzctl_env(root / "store")
    run_authzctl(env, "init")
    run_authzctl(env, "policy", "apply", str(TEST_POLICY))
    admin = issue_token(env, "admin", root / "users" / "admin")
    # the environment file the service unit will read (install writes one only when none exists)
    (root / "etc/authz").mkdir(parents=True)
    (root / "etc/authz/authz.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (root / "etc/authz/authz.env").chmod(0o600)
    with ExitStack() as cleanup:
        daemon = DockerDaemon(root / "d")
        daemon.config_file = root / "etc/docker/daemon.json"
        daemon.config_file.parent.mkdir(parents=True)
        cleanup.callback(daemon.stop)
        daemon.start()  # writes an empty daemon.json first
        daemon.config_file.write_text(json.dumps({"labels": ["authz-e2e=install"], "debug": False}, indent=4))
        spec = cleanup.enter_context(PluginSpec(root / f"run/docker/plugins/{name}.sock", name=name))
        scene = Scene(root, name, env, daemon, admin)
        cleanup.callback(lambda: scene.plugin.stop() if scene.plugin else None)
        assert spec.path.exists()
        yield scene
    shutil.rmtree(root, ignore_errors=True)


def test_install_reload_doctor_uninstall(scene: Scene) -> None:
    daemon, prefix = scene.daemon, f"authorization denied by plugin {scene.name}: "
    assert daemon.docker("ps").returncode == 0  # no plugin yet: anyone may

    # 1. the plugin does not answer yet: install writes the units but leaves daemon.json alone
    refused = scene.authzctl("install")
    assert refused.returncode == 1
    assert "it must answer before daemon.json names it" in refused.stderr
    assert "authorization-plugins" not in scene.daemon_json()
    assert daemon.pids(), "dockerd must still run"
    assert daemon.docker("ps").returncode == 0

    # 2. "systemd" starts the socket and the service from the units install wrote
    scene.plugin = SocketActivated(scene.root, scene.name)
    scene.plugin.start()
    installed = scene.authzctl("install")
    assert installed.returncode == 0, installed.stderr + installed.stdout + log_tail(scene.plugin.log)
    assert "answers /Plugin.Activate" in installed.stdout
    assert f"SIGHUP to dockerd (pid {daemon.pids()[0]})" in installed.stdout
    assert scene.daemon_json() == {
        "labels": ["authz-e2e=install"],
        "debug": False,
        "authorization-plugins": [scene.name],
    }
    assert daemon.pids(), f"dockerd exited on the reload:\n{log_tail(daemon.log)}"
    anonymous = daemon.docker("ps")
    assert anonymous.returncode != 0
    assert prefix + "authz: denied container:list for anonymous" in anonymous.stderr
    assert daemon.docker("ps", config_dir=scene.admin).returncode == 0
    assert "Listening at: unix:" in scene.plugin.log.read_text()

    # 3. again: nothing to change, no second reload
    again = scene.authzctl("install")
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert "SIGHUP" not in again.stdout

    # 4. doctor agrees
    doctor = scene.authzctl("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for check in ("plugin socket", "socket access", "daemon.json", "dockerd", "database", "token keys"):
        assert any(line.startswith("OK") and check in line for line in doctor.stdout.splitlines()), doctor.stdout

    # 5. uninstall: key out, reload, units gone; the daemon stops asking the plugin
    removed = scene.authzctl("uninstall")
    assert removed.returncode == 0, removed.stderr
    assert scene.daemon_json() == {"labels": ["authz-e2e=install"], "debug": False}
    assert not (scene.root / f"etc/systemd/system/{scene.name}.service").exists()
    assert daemon.pids()
    assert daemon.docker("ps").returncode == 0  # anonymous again allowed: authz is off
    scene.plugin.stop()  # safe now: nothing names it any more
    assert daemon.docker("ps").returncode == 0
