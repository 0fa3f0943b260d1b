"""Fixtures of the bypass corpus: the e2e fixtures re-exported, and one private custom-role stack.

- ``e2e_env`` (session): tests/e2e/conftest.py's own fixture, loaded from that file (with its
  skip/CI rules: ``pytest_collection_modifyitems``), so the corpus runs the same processes the
  same way. Each conftest defines its own session stack, so a run of
  both directories starts two (pytest scopes conftest fixtures to their directory); one shared
  stack needs the fixtures moved to tests/conftest.py.
- ``dev_container`` / ``dev2_container`` (module): a created, never started container of each
  developer, for the techniques that target an existing container.
- ``custom_env`` (module): a private stack whose user ``binder`` has the role ``binder``: the
  built-in developer plus read-only binds below ``<bind_root>/allowed``, for the host-path tricks
  the built-in developer (no binds at all) cannot show. ``<bind_root>/allowed/etc-link`` is a
  symlink to /etc.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

E2E_DIR = Path(__file__).resolve().parent.parent / "e2e"
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))  # harness, stack, hostutil are imported by bare name

from bypasslib import CustomEnv  # noqa: E402  (needs the path above)
from hostutil import leftovers  # noqa: E402
from stack import Stack, start_stack  # noqa: E402


def _load_e2e_conftest() -> ModuleType:
    # Under a name of its own: pytest imports tests/e2e/conftest.py as "conftest" when it collects
    # that directory, and the two copies must not replace each other in sys.modules.
    spec = importlib.util.spec_from_file_location("_e2e_conftest_for_bypass", E2E_DIR / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_e2e = _load_e2e_conftest()
e2e_env = _e2e.e2e_env
pytest_collection_modifyitems = _e2e.pytest_collection_modifyitems


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "daemon_rejects: the daemon refuses this technique before asking any plugin")


# --- containers to aim at -------------------------------------------------------------------------


def _created(stack: Stack, user: str, name: str) -> Iterator[str]:
    stack.docker_as("admin", "rm", "-f", name)  # a leftover of an interrupted run
    stack.docker_as(user, "create", "--name", name, "--network", "none", "--user", "1000",
                    "tiny", "sleep", "300", check=True)  # fmt: skip
    yield name
    stack.docker_as("admin", "rm", "-f", name)  # unchecked: a failed test may have removed it already


@pytest.fixture(scope="module")
def dev_container(e2e_env: Stack) -> Iterator[str]:
    """Name of a created (never started) container owned by ``dev``."""
    yield from _created(e2e_env, "dev", "bypass-dev-own")


@pytest.fixture(scope="module")
def dev2_container(e2e_env: Stack) -> Iterator[str]:
    """Name of a created (never started) container owned by ``dev2``."""
    yield from _created(e2e_env, "dev2", "bypass-dev2-own")


# --- the custom-role stack ---------------------------------------------------------------------


_CUSTOM_POLICY = """\
version: 1
settings: {{anonymous_role: null, default_mode: enforce}}
roles:
  binder:
    description: the built-in developer plus read-only binds below one directory
    extends: [developer]
    containers:
      bind_mounts: ["{allowed}"]
      bind_mounts_read_only: true
  trusting:
    description: binder, also through directories non-root users can write (a control, not advice)
    extends: [binder]
    containers:
      bind_mounts_user_writable: true
users:
  admin: {{roles: [admin]}}
  binder: {{roles: [binder]}}
  trusting: {{roles: [trusting]}}
"""


@pytest.fixture(scope="module")
def custom_env() -> Iterator[CustomEnv]:
    """A private stack with the ``binder`` role (see the module docstring); torn down per module."""
    _e2e._require_daemon()  # the e2e skip/CI rule: skip without dockerd, fail when CI=true
    bind_root = Path(tempfile.mkdtemp(prefix="authz-binds-", dir="/tmp"))
    allowed = bind_root / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "etc-link").symlink_to("/etc")
    workdir = Path(tempfile.mkdtemp(prefix="authz-bypass-", dir="/tmp"))  # short: socket paths
    policy = bind_root / "policy.yaml"
    policy.write_text(_CUSTOM_POLICY.format(allowed=allowed))
    try:
        with start_stack(workdir, policy, ("admin", "binder", "trusting"), spec_prefix="authz-e2e") as stack:
            yield CustomEnv(stack, allowed)
        left = leftovers(workdir)
        assert not left, f"teardown left processes or mounts behind: {left}"
    finally:
        shutil.rmtree(bind_root, ignore_errors=True)
