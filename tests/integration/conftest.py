"""Fixtures for the store and CLI tests: a fresh SQLite file per test, the CLI in-process, and a
private PostgreSQL server for tests marked ``postgres``.

- ``authz_env``: ``AUTHZ_STATE_DIR`` (and the default SQLite URL under it) in ``tmp_path``.
- ``cli``: ``cli("user", "add", "bob")`` runs ``authz.cli.main`` and returns code, stdout, stderr.
- ``authzctl_bin``: path of the installed console script, for subprocess tests.
- ``store_db``: a migrated ``Database`` on a fresh SQLite file.
- ``pg_url``: a fresh database on a private PostgreSQL cluster (initdb under /tmp, unix socket
  only, no TCP listener), started once per session. Without PostgreSQL binaries the tests are
  skipped, except under ``CI=true`` where that is an error.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest

from authz.cli import main
from authz.storage import Database, migrate


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


@pytest.fixture
def authz_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state directory (not yet created) that the CLI and Config.from_env will use."""
    state = tmp_path / "state"
    for name in ("AUTHZ_DATABASE_URL", "AUTHZ_TOKEN_AUDIENCE", "AUTHZ_REVISION_POLL", "SUDO_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTHZ_STATE_DIR", str(state))
    monkeypatch.setenv("AUTHZ_NODE", "test-node")
    return state


@pytest.fixture
def cli(authz_env: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    def run(*argv: str) -> CliRun:
        capsys.readouterr()  # drop output of earlier steps
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


@pytest.fixture
def authzctl_bin() -> Path:
    path = Path(sys.executable).parent / "authzctl"
    assert path.exists(), f"console script missing at {path}: is the package installed (pip install -e .)?"
    return path


@pytest.fixture
def store_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    db = Database(url)
    yield db
    db.dispose()


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PgServer:
    socket_dir: Path
    user: str
    counter: itertools.count[int]

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.socket_dir}"


def _as_pg_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, run its tools as the postgres system user.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL binaries (initdb) not installed; install the postgresql package")
        pytest.skip("PostgreSQL binaries (initdb) not installed")
    base = Path(tempfile.mkdtemp(prefix="authz-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    subprocess.run(
        _as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    options = f"-k {base} -c listen_addresses='' -F"
    subprocess.run(
        _as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield PgServer(base, user, itertools.count(1))
    finally:
        subprocess.run(
            _as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    import psycopg2

    name = f"authz_test_{os.getpid()}_{next(pg_server.counter)}"
    conn = psycopg2.connect(dbname="postgres", user=pg_server.user, host=str(pg_server.socket_dir))
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return pg_server.url(name)
