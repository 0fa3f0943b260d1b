"""``authzctl serve --cpu-affinity spread``: which CPU a new worker is pinned to.

The pinning itself, on a real gunicorn master with real workers, is tested in
test_audit_ship_process.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from authz.errors import ConfigError
from authz.serve import choose_worker_cpu, gunicorn_options


def workers(*cpus: int | None) -> list[SimpleNamespace]:
    return [SimpleNamespace(authz_cpu=cpu) for cpu in cpus]


@pytest.mark.parametrize(
    ("allowed", "live", "chosen"),
    [
        ({0, 1}, workers(), 0),
        ({0, 1}, workers(0), 1),
        ({0, 1}, workers(1), 0),  # a respawn takes the CPU its predecessor left
        ({0, 1}, workers(0, 1), 0),  # more workers than CPUs: they double up, lowest first
        ({0, 1}, workers(0, 1, 0), 1),
        ({2, 5, 7}, workers(2, 7), 5),  # a cpuset: only the CPUs the master may use
        ({0, 1}, workers(3, 3), 0),  # a CPU no longer allowed counts for nothing
        ({0, 1}, [SimpleNamespace()], 0),  # a worker forked before the option: unpinned
    ],
)
def test_a_new_worker_gets_the_allowed_cpu_fewest_live_workers_hold(
    allowed: set[int], live: list[SimpleNamespace], chosen: int
) -> None:
    assert choose_worker_cpu(allowed, live) == chosen


def test_one_allowed_cpu_pins_nothing() -> None:
    assert choose_worker_cpu({3}, workers()) is None


def test_the_hooks_are_set_only_for_spread() -> None:
    plain = gunicorn_options("/tmp/x.sock", 2)
    assert (plain["pre_fork"], plain["post_fork"]) == (None, None)
    spread = gunicorn_options("/tmp/x.sock", 2, cpu_affinity="spread")
    assert callable(spread["pre_fork"])
    assert callable(spread["post_fork"])
    with pytest.raises(ConfigError, match="none, spread"):
        gunicorn_options("/tmp/x.sock", 2, cpu_affinity="all")
