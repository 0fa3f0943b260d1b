"""``authzctl admin create-user|list-users|serve``."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from admin.accounts import AccountStore
from authz.storage import Database

PASSWORD = "a long enough password"


@pytest.fixture
def initialised(cli: Callable[..., Any], authz_env: Path) -> Path:
    result = cli("init")
    assert result.code == 0, result
    return authz_env


def run_with_stdin(cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, text: str, *argv: str) -> Any:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    return cli(*argv)


def test_create_user_reads_the_password_from_stdin(
    cli: Callable[..., Any], initialised: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_with_stdin(cli, monkeypatch, PASSWORD + "\n", "admin", "create-user", "ann", "--role", "ui-auditor",
                            "--password-stdin")  # fmt: skip
    assert result.code == 0
    assert "ann created (ui-auditor)" in result.out
    db = Database(f"sqlite:///{initialised / 'authz.db'}")
    try:
        account = AccountStore(db).authenticate("ann", PASSWORD)
        assert account is not None
        assert account.role == "ui-auditor"
    finally:
        db.dispose()
    listing = cli("admin", "list-users")
    assert "ann" in listing.out
    assert "ui-auditor" in listing.out


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (("ann", "--role", "ui-admin", "--password-stdin"), "short\n", "at least 12 characters"),
        (("bad name", "--role", "ui-admin", "--password-stdin"), PASSWORD + "\n", "invalid account name"),
        (("ann", "--role", "ui-admin"), "", "use --password-stdin"),
    ],
)
def test_create_user_refusals(
    cli: Callable[..., Any],
    initialised: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    stdin: str,
    message: str,
) -> None:
    result = run_with_stdin(cli, monkeypatch, stdin, "admin", "create-user", *argv)
    assert result.code == 2
    assert message in result.err


def test_create_user_twice_is_refused(
    cli: Callable[..., Any], initialised: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ("admin", "create-user", "ann", "--role", "ui-admin", "--password-stdin")
    assert run_with_stdin(cli, monkeypatch, PASSWORD, *argv).code == 0
    again = run_with_stdin(cli, monkeypatch, PASSWORD, *argv)
    assert again.code == 2
    assert "already exists" in again.err


@pytest.mark.parametrize("bind", ["unix:/tmp/admin.sock", "/run/docker/plugins/authz.sock", "127.0.0.1", "host:99999"])
def test_serve_refuses_anything_but_host_and_port(cli: Callable[..., Any], initialised: Path, bind: str) -> None:
    result = cli("admin", "serve", "--bind", bind)
    assert result.code == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_gunicorn_on_its_own_listener(initialised: Path, authzctl_bin: Path) -> None:
    port = _free_port()
    env = {**os.environ, "AUTHZ_STATE_DIR": str(initialised)}
    proc = subprocess.Popen(
        [str(authzctl_bin), "admin", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "admin serve did not answer in 30 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as reply:
            page = reply.read().decode()
            assert "Sign in" in page
            assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'")
        key = initialised / "admin" / "session.key"
        assert key.exists()
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
