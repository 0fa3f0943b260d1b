"""A private PostgreSQL cluster for tests: initdb under /tmp, unix socket only, no TCP listener.

One implementation for every test that needs a real server (tests/integration's ``pg_server``,
tests/reliability's outage and fleet tests):

- ``PgCluster.create()`` runs initdb and starts the server; ``destroy()`` stops it and removes
  its directory. As root, the PostgreSQL tools run as the ``postgres`` system user (the server
  refuses to run as root).
- ``stop()`` / ``start()``: an outage and the recovery (same data, same socket).
- ``pause()`` / ``resume()``: SIGSTOP/SIGCONT of the postmaster and its backends: a server that
  accepts connections but never answers (the "slow" store).
- ``new_database()``: a fresh database, returned as a SQLAlchemy URL.
- ``require_postgres()``: the binaries' directory, or skip (a failure under ``CI=true``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest

__all__ = ["PgCluster", "pg_bindir", "require_postgres"]


def pg_bindir() -> Path | None:
    """The directory of initdb/pg_ctl: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The binaries' directory; skip without them, except under ``CI=true`` (then fail)."""
    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL binaries (initdb) not installed; install the postgresql package", pytrace=False)
        pytest.skip("PostgreSQL binaries (initdb) not installed")
    return bindir


def _as_pg_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, run its tools as the postgres system user.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PgCluster:
    """A running private cluster. ``socket_dir`` is its unix socket directory; ``user`` its superuser."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.socket_dir = base
        self.log = base / "log"
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        self.counter = itertools.count(1)

    @classmethod
    def create(cls, bindir: Path | None = None, prefix: str = "authz-pg-") -> PgCluster:
        """initdb in a new directory under /tmp and start the server."""
        bindir = bindir or require_postgres()
        base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        cluster = cls(bindir, base)
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-U", cluster.user, "--auth=trust", "-E", "UTF8")
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            _as_pg_user([str(self.bindir / tool), *args]), capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} exited {result.returncode}: {result.stderr}\n{log}")
        return result

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        """Start (or restart after ``stop``) and wait until it accepts connections."""
        options = f"-k {self.socket_dir} -c listen_addresses='' -F"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, disconnect everyone)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def _pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, background workers)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    def pause(self) -> list[int]:
        """SIGSTOP the server: connections are accepted by the kernel but nothing answers."""
        pids = self._pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int] | None = None) -> None:
        for pid in pids if pids is not None else self._pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue

    def new_database(self, name: str | None = None) -> str:
        """Create a database (default: a fresh unique name) and return its URL."""
        import psycopg2

        name = name or f"authz_test_{os.getpid()}_{next(self.counter)}"
        conn = psycopg2.connect(dbname="postgres", user=self.user, host=str(self.socket_dir))
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server (resuming it first if paused) and remove its directory."""
        self.resume()
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
            deadline = time.monotonic() + 10
            while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
