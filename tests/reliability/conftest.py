"""Fixtures of the reliability suite (RELIABILITY.md): faults, crashes, load, fleet mode.

- Marker ``reliability`` on every test here; tests that need a real dockerd carry ``e2e`` and
  are skipped without one (root and dockerd), tests that need PostgreSQL carry ``postgres``.
  Under ``CI=true`` a missing dockerd or PostgreSQL fails the test instead of skipping it.
- ``pg_cluster``: a private PostgreSQL cluster of the test's own (tests/support/postgres.py), so a
  test may stop, pause and restart it without disturbing any other test.
- ``nodes.require_daemon()``: called first by every test that starts dockerd.
- ``AUTHZ_LOAD_LONG=1`` selects the long load run (test_load.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PgCluster, require_postgres

HERE = Path(__file__).resolve().parent
E2E_DIR = HERE.parent / "e2e"
# harness, stack, hostutil are imported by bare name; tests/e2e goes first so that no other
# directory's module of the same name (tests/fuzz has a harness.py) can shadow them.
if str(E2E_DIR) in sys.path:
    sys.path.remove(str(E2E_DIR))
sys.path.insert(0, str(E2E_DIR))

from nodes import daemon_unavailable, in_ci  # noqa: E402  (needs the path above)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault, crash, load and fleet tests (tests/reliability)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    reason = daemon_unavailable()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.reliability)
        # in CI the test fails in require_daemon instead: a green run must mean it ran
        if item.get_closest_marker("e2e") is not None and reason and not in_ci():
            item.add_marker(pytest.mark.skip(reason=f"e2e: {reason}"))


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for this test alone (stopped and removed afterwards)."""
    cluster = PgCluster.create(require_postgres(), prefix="authz-rel-pg-")
    try:
        yield cluster
    finally:
        cluster.destroy()
