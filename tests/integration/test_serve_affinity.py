"""``authzctl serve --cpu-affinity spread``: which CPU a new worker is pinned to.

The pinning itself, on a real gunicorn master with real workers, is tested in
test_audit_ship_process.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from authz.errors import ConfigError
from authz.serve import LOOP_WORKER, THREAD_WORKER, _vacate_dead_slots, choose_worker_cpu, gunicorn_options


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


def test_pinning_hooks_are_set_only_for_spread() -> None:
    plain = gunicorn_options("/tmp/x.sock", 2)
    assert plain["post_fork"] is None
    spread = gunicorn_options("/tmp/x.sock", 2, cpu_affinity="spread")
    assert callable(spread["post_fork"])
    several_cpus = len(os.sched_getaffinity(0)) > 1
    for options in (plain, spread):  # both give each worker a slot in the shared connection counts
        worker = SimpleNamespace()
        options["pre_fork"](SimpleNamespace(WORKERS={}), worker)
        assert worker.authz_slot == 0
        assert (getattr(worker, "authz_cpu", None) is not None) == (options is spread and several_cpus)
    with pytest.raises(ConfigError, match="none, spread"):
        gunicorn_options("/tmp/x.sock", 2, cpu_affinity="all")


def test_the_worker_class_follows_the_fsync_mode_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHZ_WORKER_CLASS", raising=False)
    assert gunicorn_options("/tmp/x.sock", 2)["worker_class"] == LOOP_WORKER
    assert gunicorn_options("/tmp/x.sock", 2, audit_fsync="always")["worker_class"] == THREAD_WORKER
    monkeypatch.setenv("AUTHZ_WORKER_CLASS", LOOP_WORKER)
    assert gunicorn_options("/tmp/x.sock", 2, audit_fsync="always")["worker_class"] == LOOP_WORKER


def test_slots_go_to_live_workers_and_are_vacated_when_they_are_gone() -> None:
    master = SimpleNamespace(WORKERS={})
    hook = gunicorn_options("/tmp/x.sock", 2)["pre_fork"]
    first, second = SimpleNamespace(), SimpleNamespace()
    for pid, worker in ((10, first), (11, second)):
        hook(master, worker)
        master.WORKERS[pid] = worker
    assert (first.authz_slot, second.authz_slot) == (0, 1)
    counts = master.authz_connection_counts
    counts.publish(0, 3)
    assert not counts.fewer_elsewhere(0, 3)  # the second worker does not accept yet: nobody to wait for
    counts.publish(1, 1)  # it accepts, and serves one connection
    assert counts.fewer_elsewhere(0, 3)  # so it takes the next one first
    assert not counts.fewer_elsewhere(1, 1)
    del master.WORKERS[11]  # the second worker died
    _vacate_dead_slots(master)
    assert not counts.fewer_elsewhere(0, 3)
    respawn = SimpleNamespace()
    hook(master, respawn)
    assert respawn.authz_slot == 1  # the free slot, vacant until the new worker accepts
    assert not counts.fewer_elsewhere(0, 3)
    counts.publish(1, 0)
    assert counts.fewer_elsewhere(0, 3)
    assert counts.fewer_elsewhere(1, 1) is False  # its own count is not compared
