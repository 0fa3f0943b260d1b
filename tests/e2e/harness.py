"""Real processes for the e2e tests: a private dockerd, the real plugin, its registration, identities.

This module is the single import point (``from harness import ...``):

- ``DockerDaemon(workdir, plugin_name)`` (here) runs one dockerd whose every path (socket,
  data-root, exec-root with its own managed containerd, pidfile, daemon.json) lies in
  ``workdir``, so any number of daemons coexist. ``stop()`` leaves no process naming ``workdir``
  and no mount under it.
- ``PluginServer``, ``PluginSpec``, ``issue_token``, ``run_authzctl`` (pluginproc.py): the real
  ``authzctl serve``, its registration under a per-run name, identities.
- ``write_tiny_tar``, ``import_tiny`` (tinyimage.py): the ``tiny:latest`` busybox image.
- process, mount and unix-socket HTTP helpers (hostutil.py).

Every failure raises ``HarnessError`` with the log lines needed to act on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from hostutil import (
    HarnessError,
    HttpReply,
    check_unix_path,
    clean_env,
    http_headers_of,
    kill_referencing,
    log_tail,
    shim_sockets,
    stop_child,
    unix_raw,
    unix_request,
    unmount_all_under,
)
from pluginproc import (
    SOCKET_DIR,
    SPEC_DIR,
    PluginServer,
    PluginSpec,
    authzctl_bin,
    authzctl_env,
    issue_token,
    run_authzctl,
    sweep_stale_specs,
)
from tinyimage import BUSYBOX, TINY_APPLETS, import_tiny, write_tiny_tar

__all__ = [
    "BUSYBOX",
    "SOCKET_DIR",
    "SPEC_DIR",
    "TINY_APPLETS",
    "DockerDaemon",
    "HarnessError",
    "HttpReply",
    "PluginServer",
    "PluginSpec",
    "authzctl_bin",
    "authzctl_env",
    "clean_env",
    "http_headers_of",
    "import_tiny",
    "issue_token",
    "run_authzctl",
    "sweep_stale_specs",
    "write_tiny_tar",
]


class DockerDaemon:
    """A private dockerd. ``workdir=None`` makes (and later removes) a short dir under /tmp."""

    def __init__(
        self,
        workdir: Path | None = None,
        plugin_name: str | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 30.0,
    ) -> None:
        if shutil.which("dockerd") is None:  # before making a directory nobody would remove
            raise HarnessError("dockerd not found on PATH: run scripts/setup.sh (installs docker.io)")
        self.owns_workdir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="authz-e2e-", dir="/tmp")).resolve()
        self.plugin_name = plugin_name
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.socket = self.dir / "docker.sock"
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.pidfile = self.dir / "pid"
        self.config_file = self.dir / "daemon.json"
        self.log = self.dir / "dockerd.log"
        self.anonymous_config = self.dir / "anonymous-config"  # a DOCKER_CONFIG with no token
        self.proc: subprocess.Popen[bytes] | None = None
        # the longest socket the daemon makes: its managed containerd's debug socket
        check_unix_path(self.exec_root / "containerd" / "containerd-debug.sock")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def argv(self) -> list[str]:
        args = [
            "dockerd",
            # a private, empty daemon.json: /etc/docker/daemon.json must not change our daemon
            f"--config-file={self.config_file}",
            f"--host={self.host}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--storage-driver=vfs",
            "--shutdown-timeout=5",  # busybox as PID 1 ignores SIGTERM; don't wait 15 s per container
        ]
        if self.plugin_name:
            args.append(f"--authorization-plugin={self.plugin_name}")
        return args + list(self.extra_args)

    def start(self) -> Self:
        """Start dockerd and wait until its API socket answers; raise with its log on failure."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.anonymous_config.mkdir(exist_ok=True)
        self.config_file.write_text("{}\n")
        for stale in (self.socket, self.pidfile):
            stale.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C in a terminal must not reach it directly
            )
        deadline = time.monotonic() + self.start_timeout
        failure = f"dockerd did not answer within {self.start_timeout}s"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                failure = f"dockerd exited with {self.proc.returncode}"
                break
            if self.socket.exists():
                try:
                    # any HTTP answer means the API is up; an authz plugin may still deny this user
                    self.api("GET", "/_ping", timeout=5)
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        failure += f":\n{log_tail(self.log)}"  # read before stop() may remove the directory
        self.stop()  # a half-started daemon may have left containerd or mounts
        raise HarnessError(failure)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dockerd; kill what it left (containerd, shims, containers), unmount, remove state.

        ``timeout`` bounds the graceful part: dockerd gives each running container 10 s to obey
        SIGTERM, which busybox as PID 1 never does; past it we kill and clean up ourselves.
        """
        if self.proc is not None:
            stop_child(self.proc, timeout)
            self.proc = None
        shim_litter = shim_sockets(f"{self.dir}/")
        kill_referencing(f"{self.dir}/")  # containerd, shims (and their containers)
        for path in shim_litter:
            path.unlink(missing_ok=True)
        unmount_all_under(self.dir)
        if self.owns_workdir:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for path in (self.data_root, self.exec_root):
                shutil.rmtree(path, ignore_errors=True)
            for path in (self.socket, self.pidfile):
                path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def docker(
        self,
        *args: str,
        config_dir: Path | None = None,
        check: bool = False,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real docker CLI against this daemon as the identity in ``config_dir``.

        ``config_dir=None`` is the anonymous caller (an empty DOCKER_CONFIG, never ~/.docker).
        """
        env = clean_env({"DOCKER_CONFIG": str(config_dir or self.anonymous_config)})
        result = subprocess.run(
            ["docker", "-H", self.host, *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise HarnessError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def api(
        self,
        method: str,
        path: str,
        body: bytes | str | object | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        config_dir: Path | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> HttpReply:
        """One raw Engine API request. ``body``: bytes/str as is, anything else as JSON.

        ``config_dir`` adds the ``HttpHeaders`` of its config.json, as the CLI does; ``token``
        sets ``X-Authz-Token`` directly.
        """
        sent: dict[str, str] = {}
        if config_dir is not None:
            sent.update(http_headers_of(config_dir))
        if token is not None:
            sent["X-Authz-Token"] = token
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        return unix_request(self.socket, method, path, data, headers=sent, timeout=timeout)

    def raw(self, data: bytes, timeout: float = 60.0) -> bytes:
        """Send exact request bytes to the daemon; see ``hostutil.unix_raw``."""
        return unix_raw(self.socket, data, timeout)

    def pids(self) -> list[int]:
        """dockerd's PID while running (for tests that signal it, e.g. SIGHUP)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
