"""Real plugin nodes for the crash, load and fleet tests: the e2e harness's pieces, assembled with
the options those tests need (``start_stack`` has none of them):

- ``env``: extra ``AUTHZ_*`` settings, e.g. a shared ``AUTHZ_DATABASE_URL`` and an ``AUTHZ_NODE``;
- ``apply_policy=None``: skip ``policy apply`` (fleet nodes after the first share its store);
- ``keys_from``: copy another node's token keys first (a fleet verifies the same tokens);
- ``journal_tmpfs_mb``: the audit journal on a tmpfs of that size, mounted by us under the node's
  own directory and unmounted at teardown (the disk-full test fills it);
- a ``Supervisor`` that restarts ``authzctl serve`` whenever it dies, as systemd's
  ``Restart=always`` would, and records how long each restart took.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from harness import DockerDaemon, PluginServer, PluginSpec, authzctl_env, import_tiny, issue_token, run_authzctl
from hostutil import HarnessError, command_line, descendants, leftovers, mounts_under, unix_request
from stack import ANONYMOUS, DEFAULT_USERS, TEST_POLICY, Stack


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def daemon_unavailable() -> str | None:
    """Why real-daemon tests cannot run here, or None when they can."""
    if shutil.which("dockerd") is None:
        return "dockerd not installed (bash scripts/setup.sh installs docker.io)"
    if os.geteuid() != 0:
        return "real-daemon tests need root (dockerd, mounts, /etc/docker/plugins)"
    return None


def require_daemon() -> None:
    """Call first in a test that starts dockerd: skip without one, fail under ``CI=true``."""
    reason = daemon_unavailable()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but the reliability e2e tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# The plugin gates every docker call: give it the CPU before the load it gates (systemd: Nice=-10).
PLUGIN_NICE = -10


class Supervisor:
    """Keeps one ``PluginServer`` running: a thread restarts it as soon as its master is gone,
    the way systemd does for the unit ``authzctl install`` writes (without its ``RestartSec=1``).

    The plugin is started from the supervisor's thread, whose nice value (``PLUGIN_NICE``) the
    plugin inherits, as a unit with ``Nice=-10`` would run it.
    """

    def __init__(self, plugin: PluginServer) -> None:
        self.plugin = plugin
        self.restarts: list[float] = []  # seconds from the master's death to the plugin answering
        self.masters: list[int] = []  # every master PID started (their orphaned workers die with them)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        self._ready.wait(120)
        if self._failed is not None:
            raise self._failed
        return self

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PLUGIN_NICE)  # this thread only
        try:
            self.plugin.start()
            self.masters.append(self.plugin.proc.pid if self.plugin.proc else 0)
        except BaseException as exc:  # re-raised by start()
            self._failed = exc
            return
        finally:
            self._ready.set()
        while not self._stop.is_set():
            proc = self.plugin.proc
            if proc is not None and proc.poll() is not None and not self._stop.is_set():
                died = time.monotonic()
                # When the main process dies, systemd kills what is left of the unit (KillMode=mixed,
                # as authzctl install writes it: SIGKILL for the rest), then restarts it at once
                # (Restart=always; the unit's RestartSec=1 would add its second here).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self.plugin.start()
                self.restarts.append(time.monotonic() - died)
                self.masters.append(self.plugin.proc.pid if self.plugin.proc else 0)
            time.sleep(0.01)

    def master(self) -> int:
        pid = self.plugin.pid()
        if pid is None:
            raise HarnessError("the plugin is not running")
        return pid

    def workers(self) -> list[int]:
        """The master's gunicorn workers (not its audit shipper process)."""
        return [pid for pid in descendants([self.master()]) if "authz.audit_ship_process" not in command_line(pid)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.plugin.stop()
        for master in self.masters:  # workers orphaned by a killed master keep its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)


def answers(socket: Path, timeout: float = 1.0) -> bool:
    """Whether the plugin on ``socket`` answers an AuthZReq now (with anything: allow or deny)."""
    doc = b'{"RequestMethod":"GET","RequestUri":"/_ping","RequestHeaders":{}}'
    try:
        reply = unix_request(socket, "POST", "/AuthZPlugin.AuthZReq", doc, timeout=timeout)
    except OSError:
        return False
    return reply.status == 200 and b'"Allow"' in reply.body


@contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB mounted at ``path`` (ours: under the test's directory)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # dockerd's teardown (DockerDaemon.stop) may have unmounted it already: it sweeps its dir
        for _ in range(50):
            if str(path) not in mounts_under(path.parent):
                break
            if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # a process of ours may still be closing files on it
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def start_node(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    apply_policy: Path | None = TEST_POLICY,
    users: Sequence[str] = DEFAULT_USERS,
    keys_from: Path | None = None,
    journal_tmpfs_mb: int | None = None,
    workers: int = 2,
    spec_prefix: str = "authz-e2e",
) -> Iterator[tuple[Stack, Supervisor]]:
    """A supervised plugin, its registration and a private dockerd, with tokens for ``users``.

    Same order as ``stack.start_stack``; leaving it stops everything and asserts nothing of ours
    is left under ``workdir``.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    node_env = {**authzctl_env(workdir), "AUTHZ_DOCKER_HOST": f"unix://{workdir / 'docker.sock'}", **(env or {})}
    state = Path(node_env["AUTHZ_STATE_DIR"])
    try:
        with ExitStack() as cleanup:
            if keys_from is not None:
                state.mkdir(mode=0o700, parents=True, exist_ok=True)
                shutil.copytree(keys_from, state / "keys")
            if journal_tmpfs_mb is not None:
                cleanup.enter_context(tmpfs(state / "audit-journal", journal_tmpfs_mb))
            run_authzctl(node_env, "init")
            if apply_policy is not None:
                run_authzctl(node_env, "policy", "apply", str(apply_policy))
            supervisor = Supervisor(PluginServer(workdir, node_env, workers=workers)).start()
            cleanup.callback(supervisor.stop)
            spec = cleanup.enter_context(PluginSpec(supervisor.plugin.socket, prefix=spec_prefix))
            daemon = cleanup.enter_context(DockerDaemon(workdir, spec.name))
            stack = Stack(workdir, workdir, node_env, supervisor.plugin, spec, daemon)
            stack.configs[ANONYMOUS] = daemon.anonymous_config
            with ThreadPoolExecutor(max_workers=3) as pool:
                dirs = pool.map(lambda user: issue_token(node_env, user, workdir / "users" / user), users)
                stack.configs.update(zip(users, dirs, strict=True))
            if "admin" in stack.configs:
                import_tiny(daemon, stack.configs["admin"])
            yield stack, supervisor
    except BaseException as exc:
        exc.add_note(f"node directory kept: {workdir}; left behind: {leftovers(workdir)}")
        raise
    stragglers = leftovers(workdir)
    if stragglers:
        raise HarnessError(f"teardown left things behind under {workdir}: {stragglers}")
    shutil.rmtree(workdir, ignore_errors=True)
