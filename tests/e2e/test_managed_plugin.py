"""The managed (v2) plugin built by plugin/build.py, run by a private dockerd.

``docker plugin create`` from the built directory, mounts pointed at a scratch state and policy
directory, ``docker plugin enable`` (timed: enable → socket listening → Activate answering, against
the daemon's dial schedule of 0.5 s then 3 retries 3 s apart), then daemon.json names it and a
SIGHUP makes the daemon consult it: anonymous ``docker ps`` denied, the admin allowed, and a
developer's ``docker plugin disable`` (which would drop the plugin from the chain) denied.
The timings are printed and written to test-output/managed-plugin.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import DockerDaemon, issue_token, run_authzctl
from hostutil import log_tail
from stack import TEST_POLICY

from authz.doctor import activate

REPO = Path(__file__).resolve().parents[2]
HOST_PLUGIN_RUNTIME = Path("/run/docker/plugins")  # dockerd keeps v2 plugin sockets here, by plugin id
DIAL_WINDOW = 0.5 + 3 * 3.0  # the daemon's last dial after start; a plugin listening later is disabled


@pytest.fixture(scope="module")
def built_plugin() -> Iterator[tuple[Path, float]]:
    """plugin/build.py into a per-run directory under plugin/build (gitignored); (dir, seconds)."""
    out = REPO / "plugin" / "build" / f"e2e-{secrets.token_hex(4)}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "plugin" / "build.py"), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    try:
        assert result.returncode == 0, result.stderr + result.stdout
        assert seconds < 180, f"building the plugin took {seconds:.0f}s; CI allows well under 3 minutes"
        yield out / "authz-plugin", seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


class StartupProbe(threading.Thread):
    """Times when ``path`` first accepts a connection (what the daemon dials for) and first answers
    Activate (a worker is up), counted from ``started``."""

    def __init__(self, path: Path, started: float, timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.path, self.started, self.timeout = path, started, timeout
        self.listening: float | None = None
        self.answering: float | None = None

    def run(self) -> None:
        while time.monotonic() - self.started < self.timeout:
            if self.listening is None:
                with socket.socket(socket.AF_UNIX) as probe:
                    try:
                        probe.connect(str(self.path))
                    except OSError:
                        time.sleep(0.02)
                        continue
                self.listening = time.monotonic() - self.started
            try:
                if "authz" in activate(self.path, timeout=5):
                    self.answering = time.monotonic() - self.started
                    return
            except (OSError, ValueError):
                time.sleep(0.02)


def test_managed_plugin_decides_and_guards_its_disable(built_plugin: tuple[Path, float]) -> None:
    plugin_dir, build_seconds = built_plugin
    workdir = Path(tempfile.mkdtemp(prefix="azp-", dir="/tmp"))
    state, policy_dir = workdir / "state", workdir / "policy"
    policy_dir.mkdir()
    # Applied by the entrypoint (the store has no users), with a role allowed to bind below /srv.
    policy = yaml.safe_load(TEST_POLICY.read_text())
    policy.setdefault("roles", {})["binder"] = {"extends": ["developer"], "containers": {"bind_mounts": ["/srv"]}}
    policy["users"]["binder"] = {"roles": ["binder"]}
    (policy_dir / "policy.yaml").write_text(yaml.safe_dump(policy))
    env = {"AUTHZ_DATABASE_URL": f"sqlite:///{state}/authz.db", "AUTHZ_STATE_DIR": str(state)}
    run_authzctl(env, "init")
    name = f"authz-e2e-{secrets.token_hex(4)}:latest"
    daemon = DockerDaemon(workdir)
    plugin_id = ""
    admin: Path | None = None
    try:
        daemon.start()
        started = time.monotonic()
        daemon.docker("plugin", "create", name, str(plugin_dir), check=True, timeout=300)
        create_seconds = time.monotonic() - started
        daemon.docker("plugin", "set", name, f"state.source={state}", f"policy.source={policy_dir}", check=True)
        plugin_id = daemon.docker("plugin", "inspect", "-f", "{{.Id}}", name, check=True).stdout.strip()

        started = time.monotonic()
        probe = StartupProbe(HOST_PLUGIN_RUNTIME / plugin_id / "authz.sock", started)
        probe.start()
        enabled = daemon.docker("plugin", "enable", name, timeout=120)
        enable_seconds = time.monotonic() - started
        probe.join(30)
        assert enabled.returncode == 0, enabled.stderr + log_tail(daemon.log)
        timings = {
            "build_seconds": round(build_seconds, 2),
            "plugin_create_seconds": round(create_seconds, 2),
            "enable_to_listening_seconds": probe.listening and round(probe.listening, 2),
            "enable_to_activate_answer_seconds": probe.answering and round(probe.answering, 2),
            "docker_plugin_enable_seconds": round(enable_seconds, 2),
            "daemon_dial_window_seconds": DIAL_WINDOW,
        }
        report = REPO / "test-output" / "managed-plugin.json"
        report.parent.mkdir(exist_ok=True)
        report.write_text(json.dumps(timings, indent=2) + "\n")
        print(f"managed plugin timings: {timings}")
        assert probe.answering is not None, f"the plugin never answered Activate:\n{log_tail(daemon.log)}"
        assert probe.answering < DIAL_WINDOW

        users = run_authzctl(env, "user", "list").stdout
        assert "admin" in users  # the entrypoint applied policy.yaml from the policy mount
        admin = issue_token(env, "admin", workdir / "users" / "admin")
        dev = issue_token(env, "dev", workdir / "users" / "dev")
        binder = issue_token(env, "binder", workdir / "users" / "binder")

        daemon.config_file.write_text(json.dumps({"authorization-plugins": [name]}) + "\n")
        os.kill(daemon.pids()[0], signal.SIGHUP)
        prefix = f"authorization denied by plugin {name}: "
        deadline = time.monotonic() + 10
        while (anonymous := daemon.docker("ps")).returncode == 0:
            assert time.monotonic() < deadline, f"the daemon does not consult the plugin:\n{log_tail(daemon.log)}"
            time.sleep(0.1)
        assert prefix + "authz: denied container:list for anonymous" in anonymous.stderr
        assert daemon.docker("ps", config_dir=admin).returncode == 0

        # Its rootfs holds none of the host's files (AUTHZ_HOST_ROOT=none): a bind cannot be judged.
        # (--pull never: were it allowed, the CLI must not go looking for the absent image in a registry)
        bind = daemon.docker("create", "--pull", "never", "--network", "none", "--user", "1000", "-v", "/srv:/x:ro",
                             "tiny", "true", config_dir=binder)  # fmt: skip
        assert bind.returncode != 0
        assert prefix + "authz: denied container:create for binder (roles: binder): bind mount of host path /srv " \
            "cannot be judged: this plugin does not see the host's files" in bind.stderr, bind.stderr  # fmt: skip

        disable = daemon.docker("plugin", "disable", name, config_dir=dev)
        assert disable.returncode != 0
        assert prefix + "authz: denied plugin:disable for dev (roles: developer)" in disable.stderr
        still = daemon.docker("plugin", "inspect", "-f", "{{.Enabled}}", name, config_dir=admin, check=True)
        assert still.stdout.strip() == "true"
        assert daemon.docker("ps").returncode != 0  # still in the chain
    finally:
        if daemon.pids() and plugin_id:
            # the admin may: disabling takes it out of the chain, then it can go
            daemon.docker("plugin", "disable", "-f", name, config_dir=admin)
            daemon.docker("plugin", "rm", "-f", name, config_dir=admin)
        daemon.stop()
        if plugin_id:
            shutil.rmtree(HOST_PLUGIN_RUNTIME / plugin_id, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
