"""The whole thing wired together: database, policy, real plugin, registration, dockerd, identities.

``start_stack`` is what the e2e fixtures, the bypass tests and the demo use, so all three run the
same processes the same way. It is a context manager: leaving it stops everything it started, in
reverse order, and raises ``HarnessError`` if a process or mount naming its directories survived.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    DockerDaemon,
    HttpReply,
    PluginServer,
    PluginSpec,
    authzctl_env,
    import_tiny,
    issue_token,
    run_authzctl,
)
from hostutil import HarnessError, leftovers

__all__ = ["ANONYMOUS", "DEFAULT_USERS", "TEST_POLICY", "Stack", "start_stack"]

ANONYMOUS = "anonymous"  # key in Stack.configs: a DOCKER_CONFIG without any token
TEST_POLICY = Path(__file__).resolve().parent / "policy.yaml"
DEFAULT_USERS = ("admin", "dev", "dev2", "viewer", "operator")


@dataclass
class Stack:
    """A running plugin + dockerd pair and one DOCKER_CONFIG dir per user."""

    workdir: Path  # database, keys, logs, users' config dirs
    runtime_dir: Path  # sockets and the daemon's data/exec roots (short path)
    env: dict[str, str]  # AUTHZ_* variables the plugin and CLI run with
    plugin: PluginServer
    spec: PluginSpec
    daemon: DockerDaemon
    configs: dict[str, Path] = field(default_factory=dict)

    @property
    def plugin_name(self) -> str:
        return self.spec.name

    def authzctl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``authzctl ARGS`` against this stack's database and keys."""
        return run_authzctl(self.env, *args, check=check, input=input)

    def docker_as(
        self, user: str, *args: str, check: bool = False, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI as ``user`` (a key of ``configs``; ``ANONYMOUS`` for no token)."""
        return self.daemon.docker(*args, config_dir=self.configs[user], check=check, input=input, timeout=timeout)

    def api_as(
        self,
        user: str,
        method: str,
        path: str,
        body: bytes | str | object | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpReply:
        """A raw Engine API request carrying ``user``'s token headers."""
        return self.daemon.api(method, path, body, headers=headers, config_dir=self.configs[user])

    def denied_prefix(self) -> str:
        """How the daemon prefixes every deny message of our plugin."""
        return f"authorization denied by plugin {self.plugin_name}: "


@contextmanager
def start_stack(
    workdir: Path,
    policy: Path = TEST_POLICY,
    users: Sequence[str] = DEFAULT_USERS,
    *,
    runtime_dir: Path | None = None,
    admin_user: str = "admin",
    workers: int = 2,
    spec_prefix: str = "authz-e2e",
    remove_workdir: bool = True,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Bring a full stack up in ``workdir`` (sockets in ``runtime_dir``, default ``workdir``).

    Order: ``authzctl init`` → ``policy apply`` → plugin serve → spec file → dockerd with the
    plugin → one token per user → ``tiny:latest`` imported as ``admin_user``. On exit, all of it
    is stopped and ``leftovers`` of both directories is asserted empty. ``settings``: more
    ``AUTHZ_*`` variables for the plugin and the CLI (e.g. ``AUTHZ_REVISION_POLL``;
    ``AUTHZ_DOCKER_HOST=""``: a plugin that does not read the daemon).
    """
    workdir = workdir.resolve()
    runtime = (runtime_dir or workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runtime.mkdir(parents=True, exist_ok=True)
    env = authzctl_env(workdir)
    # The plugin reads an image's USER from the daemon (a create without --user); without it such
    # creates are always denied. DockerDaemon(runtime) listens on runtime/docker.sock.
    env["AUTHZ_DOCKER_HOST"] = f"unix://{runtime / 'docker.sock'}"
    env.update(settings or {})
    try:
        with ExitStack() as cleanup:
            run_authzctl(env, "init")
            run_authzctl(env, "policy", "apply", str(policy))
            plugin = cleanup.enter_context(PluginServer(runtime, env, workers=workers))
            spec = cleanup.enter_context(PluginSpec(plugin.socket, prefix=spec_prefix))
            daemon = cleanup.enter_context(DockerDaemon(runtime, spec.name))
            if env["AUTHZ_DOCKER_HOST"] and daemon.host != env["AUTHZ_DOCKER_HOST"]:  # DockerDaemon renamed its socket
                raise HarnessError(f"plugin looks images up at {env['AUTHZ_DOCKER_HOST']}, daemon is {daemon.host}")
            stack = Stack(workdir, runtime, env, plugin, spec, daemon)
            stack.configs[ANONYMOUS] = daemon.anonymous_config
            # each authzctl run is mostly interpreter start-up: overlap them
            with ThreadPoolExecutor(max_workers=3) as pool:
                dirs = pool.map(lambda user: issue_token(env, user, workdir / "users" / user), users)
                stack.configs.update(zip(users, dirs, strict=True))
            if admin_user in stack.configs:
                import_tiny(daemon, stack.configs[admin_user])
            yield stack
    except BaseException as exc:
        # a failed start must not leak either; keep the directory (logs) for inspection
        left = _leftovers(workdir, runtime)
        exc.add_note(f"stack directory kept: {workdir}" + (f"; left behind: {left}" if left else ""))
        raise
    left = _leftovers(workdir, runtime)
    if left:
        raise HarnessError(f"teardown left things behind under {workdir}: {left}")
    if remove_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


def _leftovers(*dirs: Path) -> list[str]:
    return sorted({item for d in dirs for item in leftovers(d)})
