"""The real plugin as a process: ``authzctl`` helpers, ``PluginServer``, ``PluginSpec``.

- ``PluginServer(workdir, env)`` runs the real ``authzctl serve`` on ``workdir/authz.sock`` and
  is ready once ``/Plugin.Activate`` answers ``{"Implements": ["authz"]}``.
- ``PluginSpec(socket)`` registers that socket under a name unique to this run in
  ``/etc/docker/plugins`` (the plugin directory is shared by every daemon on the host).
- ``issue_token`` gives a user a DOCKER_CONFIG dir whose config.json sends their token.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from hostutil import (
    HarnessError,
    check_unix_path,
    clean_env,
    http_headers_of,
    log_tail,
    stop_child,
    unix_request,
)

SPEC_DIR = Path("/etc/docker/plugins")
SOCKET_DIR = Path("/run/docker/plugins")


def authzctl_bin() -> str:
    """The authzctl of the interpreter running the tests (the project's .venv), else PATH's."""
    beside = Path(sys.executable).parent / "authzctl"
    if beside.exists():
        return str(beside)
    found = shutil.which("authzctl")
    if found is None:
        raise HarnessError("authzctl not found: run scripts/setup.sh (pip install -e '.[test]')")
    return found


def authzctl_env(workdir: Path) -> dict[str, str]:
    """``AUTHZ_*`` settings that put the plugin's database and keys inside ``workdir``."""
    return {
        "AUTHZ_DATABASE_URL": f"sqlite:///{workdir.resolve() / 'authz.db'}",
        "AUTHZ_STATE_DIR": str(workdir.resolve() / "state"),
    }


def run_authzctl(
    env: Mapping[str, str],
    *args: str,
    check: bool = True,
    input: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``authzctl ARGS`` with ``env`` added; ``check`` raises with its output on failure."""
    result = subprocess.run(
        [authzctl_bin(), *args],
        env=clean_env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise HarnessError(f"authzctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result


def issue_token(env: Mapping[str, str], user: str, config_dir: Path, ttl: str = "8h") -> Path:
    """Give ``user`` a DOCKER_CONFIG dir whose config.json sends their token; return the dir."""
    config_dir.mkdir(parents=True, exist_ok=True)
    run_authzctl(env, "token", "issue", user, "--ttl", ttl, "--docker-config", str(config_dir))
    token = http_headers_of(config_dir).get("X-Authz-Token")
    if not token:
        raise HarnessError(f"authzctl token issue {user} wrote no HttpHeaders.X-Authz-Token in {config_dir}")
    return config_dir


class PluginServer:
    """The real ``authzctl serve --socket WORKDIR/authz.sock --workers N``, stopped by PID."""

    def __init__(self, workdir: Path, env: Mapping[str, str], *, workers: int = 2, start_timeout: float = 30.0) -> None:
        self.dir = workdir.resolve()
        self.env = dict(env)
        self.workers = workers
        self.start_timeout = start_timeout
        self.socket = self.dir / "authz.sock"
        self.log = self.dir / "plugin.log"
        self.proc: subprocess.Popen[bytes] | None = None
        check_unix_path(self.socket)

    def start(self) -> Self:
        """Start the server and wait until ``/Plugin.Activate`` answers ``Implements: [authz]``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        argv = [authzctl_bin(), "serve", "--socket", str(self.socket), "--workers", str(self.workers)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=clean_env(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        last = "no socket yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                last = f"authzctl serve exited with {self.proc.returncode}"
                break
            if self.socket.exists():
                try:
                    reply = self.activate()
                except (OSError, ValueError) as exc:
                    last = repr(exc)
                else:
                    if "authz" in reply.get("Implements", []):
                        return self
                    last = f"Activate answered {reply!r}"
            time.sleep(0.1)
        self.stop()  # also its workers, if the master died and left them
        raise HarnessError(f"plugin not ready in {self.start_timeout}s ({last}):\n{log_tail(self.log)}")

    def activate(self) -> dict[str, list[str]]:
        """POST /Plugin.Activate as dockerd does (no Content-Type, empty body); the decoded reply."""
        reply = unix_request(
            self.socket,
            "POST",
            "/Plugin.Activate",
            b"",
            headers={"Accept": "application/vnd.docker.plugins.v1.2+json"},
            timeout=5,
        )
        if reply.status != 200:
            raise ValueError(f"status {reply.status}: {reply.text}")
        value = reply.json()
        if not isinstance(value, dict):
            raise ValueError(f"not an object: {reply.text}")
        return value

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (gunicorn drains its workers), SIGKILL its group if it lingers."""
        if self.proc is not None:
            stop_child(self.proc, timeout)
            self.proc = None
        self.socket.unlink(missing_ok=True)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PluginSpec:
    """``/etc/docker/plugins/NAME.spec`` → our socket, under a name no other daemon uses."""

    def __init__(self, socket: Path, name: str | None = None, prefix: str = "authz-e2e") -> None:
        self.socket = socket.resolve()
        self.name = name or f"{prefix}-{secrets.token_hex(4)}"
        self.path = SPEC_DIR / f"{self.name}.spec"

    def register(self) -> Self:
        # a socket of that name in /run/docker/plugins would win over our spec: refuse to shadow it
        for taken in (self.path, SOCKET_DIR / f"{self.name}.sock", SOCKET_DIR / self.name):
            if taken.exists():
                raise HarnessError(f"plugin name {self.name} already in use on this host ({taken})")
        SPEC_DIR.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"unix://{self.socket}\n")
        return self

    def unregister(self) -> None:
        # only our own file: it still points at our socket
        if self.path.exists() and self.path.read_text().strip() == f"unix://{self.socket}":
            self.path.unlink()

    def __enter__(self) -> Self:
        return self.register()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unregister()


def sweep_stale_specs(prefixes: tuple[str, ...] = ("authz-e2e-", "authz-selftest-", "authz-demo-")) -> list[Path]:
    """Remove our spec files whose socket is gone: left by a run that was killed before teardown.

    Safe for runs still going: a live stack removes its spec before its socket, never after.
    """
    removed = []
    for spec in sorted(SPEC_DIR.glob("*.spec")) if SPEC_DIR.is_dir() else []:
        target = spec.read_text().strip()
        ours = spec.name.startswith(prefixes) and target.startswith("unix://")
        if ours and not Path(target.removeprefix("unix://")).exists():
            spec.unlink(missing_ok=True)
            removed.append(spec)
    return removed
