"""Fixtures for browser tests of the admin UI: Debian's chromium driven by Playwright, the real
``authzctl admin serve``, and the e2e stack (real dockerd + real plugin) from ``tests/e2e``.

- ``admin_ui`` (module): a private e2e stack (``tests/e2e/stack.start_stack``, the harness the e2e
  tests use), UI accounts ``root`` (ui-admin) and ``audra`` (ui-auditor) made with ``authzctl
  admin create-user``, and ``authzctl admin serve`` on a free loopback port over the stack's
  database and keys (tokens issued in the browser verify in the plugin).
- ``browser_context``: ``open()`` → a fresh Chromium profile (own user-data-dir) per call.

Never downloads a browser: ``/usr/bin/chromium`` via ``executable_path``. Skips locally without
chromium, dockerd or root; under ``CI=true`` each of those is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import pytest
from playwright.sync_api import BrowserContext, sync_playwright

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"

if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))  # the e2e harness is imported as top-level modules


def _load_e2e_conftest() -> ModuleType:
    """The e2e conftest as a module of its own name (both conftests would be ``conftest``)."""
    spec = importlib.util.spec_from_file_location("authz_e2e_conftest", E2E_DIR / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e = _load_e2e_conftest()
from browserkit import (  # noqa: E402 - needs E2E_DIR on sys.path first (it imports the harness)
    ADMIN_PASSWORD,
    AUDITOR_PASSWORD,
    BROWSER_DIR,
    CHROMIUM,
    CHROMIUM_ARGS,
    AdminUi,
)
from harness import authzctl_bin  # noqa: E402
from hostutil import clean_env, log_tail, stop_child  # noqa: E402
from stack import TEST_POLICY, start_stack  # noqa: E402

# The e2e fixtures, reused as they are (tests here may ask for a private stack of their own).
e2e_stack_factory = e2e.e2e_stack_factory


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in tests/browser is ``browser`` (and ``e2e``: it needs the real daemon)."""
    for item in items:
        if BROWSER_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not installed (apt-get install chromium); browser tests never download one"
        if _in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"authzctl admin serve exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"authzctl admin serve did not answer {url} in {timeout}s:\n{log_tail(log)}")


@pytest.fixture(scope="module")
def admin_ui(chromium: Path) -> Iterator[AdminUi]:
    """A private e2e stack with the admin UI served next to it (see the module docstring)."""
    e2e._require_daemon()
    e2e.sweep_stale_specs()
    workdir = Path(tempfile.mkdtemp(prefix="authz-ui-", dir="/tmp"))  # short: daemon sockets live here
    with ExitStack() as cleanup:
        stack = cleanup.enter_context(start_stack(workdir, TEST_POLICY, ("admin",)))
        stack.authzctl("admin", "create-user", "root", "--role", "ui-admin", "--password-stdin",
                       input=ADMIN_PASSWORD + "\n")  # fmt: skip
        stack.authzctl("admin", "create-user", "audra", "--role", "ui-auditor", "--password-stdin",
                       input=AUDITOR_PASSWORD + "\n")  # fmt: skip
        port = _free_port()
        log = workdir / "admin-ui.log"
        argv = [authzctl_bin(), "admin", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, env=clean_env(stack.env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        cleanup.callback(stop_child, proc, 15.0)
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/healthz", proc, log)
        yield AdminUi(base, stack, log)
    e2e._assert_clean(workdir)


@pytest.fixture
def browser_context(chromium: Path, tmp_path: Path) -> Iterator[Callable[..., BrowserContext]]:
    """``open(width, height)`` → a BrowserContext with a fresh user-data-dir; all closed after the test."""
    with sync_playwright() as playwright:
        opened: list[BrowserContext] = []

        def open_context(width: int = 1280, height: int = 900) -> BrowserContext:
            profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp_path))
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": width, "height": height}, accept_downloads=True,
            )  # fmt: skip
            opened.append(context)
            return context

        yield open_context
        for context in opened:
            context.close()
