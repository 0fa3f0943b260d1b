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

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz.cli import main
from authz.storage import Database, migrate
from tests.support.postgres import PgCluster, require_postgres


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgCluster]:
    """One private cluster per session (tests/support/postgres.py; skipped without PostgreSQL)."""
    cluster = PgCluster.create(require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_server: PgCluster) -> str:
    return pg_server.new_database()
