"""Fixtures for tests against a real dockerd with the real plugin.

- ``e2e_env`` (session): one stack (plugin + dockerd + tokens for ``DEFAULT_USERS`` + ``tiny``)
  shared by every test that does not change global state. Tests must not leave containers,
  networks or volumes that other tests could trip over: clean up by name or use ``--rm``.
- ``e2e_stack_factory`` (function): ``make(policy=..., users=...)`` builds an independent stack
  (own database, plugin name, daemon) for tests that restart, reload or break things.
- ``own_e2e_env`` (function): ``e2e_stack_factory()`` with the test policy.

Skips: without dockerd (or without root) the e2e tests are skipped with the reason, except when
``CI=true``: there a missing dockerd or any harness failure is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from harness import sweep_stale_specs
from hostutil import leftovers
from stack import DEFAULT_USERS, TEST_POLICY, Stack, start_stack

E2E_DIR = Path(__file__).resolve().parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable() -> str | None:
    """Why real-daemon tests cannot run here, or None when they can."""
    if shutil.which("dockerd") is None:
        return "dockerd not installed (bash scripts/setup.sh installs docker.io)"
    if os.geteuid() != 0:
        return "real-daemon tests need root (dockerd, mounts, /etc/docker/plugins)"
    return None


def _needs_daemon(item: pytest.Item) -> bool:
    return E2E_DIR in Path(str(item.path)).resolve().parents or item.get_closest_marker("e2e") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e``; skip them all locally when no daemon can run."""
    reason = _unavailable()
    for item in items:
        if not _needs_daemon(item):
            continue
        item.add_marker(pytest.mark.e2e)
        # in CI the fixtures fail loudly instead: a green run must mean the e2e tests ran
        if reason and not _in_ci():
            item.add_marker(pytest.mark.skip(reason=f"e2e: {reason}"))


def _require_daemon() -> None:
    reason = _unavailable()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"CI=true but e2e tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _assert_clean(workdir: Path) -> None:
    left = leftovers(workdir)
    assert not left, f"teardown left processes or mounts behind: {left}"
    assert not workdir.exists(), f"teardown left {workdir}"


def _new_workdir(tag: str) -> Path:
    # under /tmp, short: the daemon's sockets must fit in sun_path (108 bytes)
    return Path(tempfile.mkdtemp(prefix=f"authz-{tag}-", dir="/tmp"))


@pytest.fixture(scope="session")
def e2e_env() -> Iterator[Stack]:
    """The shared stack: ``.daemon``, ``.configs[user]``, ``.plugin``, ``.workdir``, ``.authzctl()``."""
    _require_daemon()
    sweep_stale_specs()
    workdir = _new_workdir("e2e")
    with start_stack(workdir, TEST_POLICY, DEFAULT_USERS) as stack:
        yield stack
    _assert_clean(workdir)


StackFactory = Callable[..., Stack]


@pytest.fixture
def e2e_stack_factory() -> Iterator[StackFactory]:
    """``make(policy=TEST_POLICY, users=DEFAULT_USERS, settings=None, workers=2)`` → a fresh, private
    stack per call."""
    _require_daemon()
    made: list[Path] = []
    with ExitStack() as stacks:

        def make(
            policy: Path = TEST_POLICY,
            users: Sequence[str] = DEFAULT_USERS,
            settings: Mapping[str, str] | None = None,
            workers: int = 2,
        ) -> Stack:
            workdir = _new_workdir("e2e")
            made.append(workdir)
            return stacks.enter_context(start_stack(workdir, policy, users, settings=settings, workers=workers))

        yield make
    for workdir in made:
        _assert_clean(workdir)


@pytest.fixture
def own_e2e_env(e2e_stack_factory: StackFactory) -> Stack:
    """A private stack with the test policy, for tests that must not share a daemon."""
    return e2e_stack_factory()
