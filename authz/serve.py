"""``authzctl serve``: gunicorn on the plugin's unix socket (an edge).

Each worker serves all its connections from one thread at a time (``authz.loop_worker``), handing
its loop to another thread when a decision must wait; with ``AUTHZ_AUDIT_FSYNC=always``, where
every decision waits, a thread per connection (``authz.worker``). ``AUTHZ_WORKER_CLASS`` picks
either. dockerd keeps several keep-alive connections open and waits without a timeout, so a
worker must never be stuck on one idle connection (each is closed after ``AUTHZ_IDLE_TIMEOUT``).
The socket is created with umask 0177 (mode 0600, root only): whoever can talk to it can
impersonate the daemon's questions.
Each worker composes its own Authorizer after the fork (database connections must not be shared).

CPU affinity (``--cpu-affinity spread``): each worker is pinned to one of the CPUs the master may
use, the one fewest live workers hold. Under saturation a pinned worker keeps its caches warm
instead of following the scheduler around the cores (on 2 vCPUs, 8 connections: 1.11x the
do-nothing plugin over a run instead of 0.98-1.03x, though the audit shipper then falls behind,
BENCHMARKS.md). But it cannot move off a CPU that something else keeps busy (a busy loop on one
CPU: p99 at one connection 4.1 ms pinned, 1.3-1.6 ms not), so it is not the default. The audit
shipper is never pinned: pinned beside a worker it doubled the p99 at one connection.

Socket activation (``authzctl install``'s systemd units): when systemd passes the bound socket
(``LISTEN_PID`` = our pid, ``LISTEN_FDS=1``), gunicorn serves on that inherited descriptor and the
socket file, which systemd owns, is left alone; it is never unlinked nor re-bound.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from authz.audit_ship_process import ShipperProcess
from authz.config import CPU_AFFINITY_MODES, DEFAULT_IDLE_TIMEOUT, Config
from authz.errors import ConfigError
from authz.worker import ConnectionCounts

log = logging.getLogger(__name__)

COUNTED_WORKERS = 64  # slots in the shared connection counts
SHIPPER_START_DELAY = 1.0  # s after the master starts, once its workers are booting


def choose_worker_cpu(allowed: set[int], live_workers: Iterable[object]) -> int | None:
    """The CPU a new worker is pinned to: of ``allowed``, the one fewest live workers hold (the
    lowest of those); None when there is nothing to choose between."""
    if len(allowed) < 2:
        return None
    held = Counter(getattr(worker, "authz_cpu", None) for worker in live_workers)
    return min(sorted(allowed), key=lambda cpu: held[cpu])


def _held_slots(arbiter: Any) -> set[int | None]:
    """The connection-count slots the master's live workers hold."""
    return {getattr(live, "authz_slot", None) for live in arbiter.WORKERS.values()}


def _slot_pre_fork(arbiter: Any, worker: Any) -> None:
    """gunicorn ``pre_fork`` (in the master): give the worker a slot in the connection counts the
    workers share (``authz.worker.ConnectionCounts``, mapped here before the first fork)."""
    counts = getattr(arbiter, "authz_connection_counts", None)
    if counts is None:
        counts = arbiter.authz_connection_counts = ConnectionCounts(COUNTED_WORKERS)
    held = _held_slots(arbiter)
    slot = next((free for free in range(counts.slots) if free not in held), None)
    if slot is not None:  # beyond COUNTED_WORKERS a worker accepts without looking at the others
        # The slot stays vacant until the worker accepts: the others must not wait for it while
        # it builds its app.
        counts.vacate(slot)
        worker.authz_connection_counts, worker.authz_slot = counts, slot


def _vacate_dead_slots(arbiter: Any) -> None:
    """The slots of workers that are gone (killed ones included) count as no worker."""
    counts = getattr(arbiter, "authz_connection_counts", None)
    if counts is None:
        return
    held = _held_slots(arbiter)
    for slot in range(counts.slots):
        if slot not in held:
            counts.vacate(slot)


def _spread_pre_fork(arbiter: Any, worker: Any) -> None:
    """gunicorn ``pre_fork`` (in the master): also choose the worker's CPU, so a respawn fills the gap."""
    _slot_pre_fork(arbiter, worker)
    worker.authz_cpu = choose_worker_cpu(os.sched_getaffinity(0), arbiter.WORKERS.values())


def _spread_post_fork(_arbiter: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` (in the worker): pin it to the CPU the master chose."""
    cpu = getattr(worker, "authz_cpu", None)
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a CPU taken offline since: serve unpinned rather than not at all
        worker.log.warning("Worker %d not pinned to CPU %d: %s", os.getpid(), cpu, exc)
    else:  # through gunicorn's logger, beside its "Booting worker" line (ours logs no INFO here)
        worker.log.info("Worker %d pinned to CPU %d", os.getpid(), cpu)


class ShippingArbiter(Arbiter):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's master, which also keeps the audit shipper process (``authz.audit_ship_process``) running."""

    def __init__(self, app: PluginApplication) -> None:
        super().__init__(app)
        self.shipper = ShipperProcess(app.authz_config)

    def start(self) -> None:
        super().start()
        # The shipper's start (a fresh interpreter and its imports) would take CPU from the workers
        # booting beside it on a small machine; records wait in the journal meanwhile.
        self._shipper_due = time.monotonic() + SHIPPER_START_DELAY

    def reap_workers(self) -> None:
        self.shipper.reap()  # first: gunicorn's waitpid(-1) would take the shipper's exit status
        super().reap_workers()
        _vacate_dead_slots(self)

    def manage_workers(self) -> None:
        super().manage_workers()
        if time.monotonic() >= self._shipper_due:
            self.shipper.ensure_running()

    def stop(self, graceful: bool = True) -> None:
        super().stop(graceful)  # the workers first: they close their journals, the shipper drains them
        self.shipper.stop()


class PluginApplication(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, options: dict[str, Any], config: Config) -> None:
        self._options = options
        self.authz_config = config
        super().__init__()

    def run(self) -> None:
        try:
            ShippingArbiter(self).run()
        except RuntimeError as exc:  # as gunicorn's own run(): a bad setting is one line on stderr
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from authz.composition import build_plugin_app  # noqa: PLC0415 - built per worker, after fork

        interval = os.environ.get("AUTHZ_SWITCH_INTERVAL")
        if interval:
            sys.setswitchinterval(float(interval))

        app = build_plugin_app(self.authz_config, ship_in_process=False)
        # What the worker built at start (modules, the app, the first policy) lives as long as the
        # worker: keep it out of the cyclic collector, whose full passes over it paused a decision
        # for ~70 ms every few seconds of load. No gc.collect() first: it found nothing to free and
        # took 0.1 s of every (re)start before the worker answers.
        gc.freeze()
        return app


LOOP_WORKER = "authz.loop_worker.LoopWorker"
THREAD_WORKER = "authz.worker.ConnectionThreadWorker"


def default_worker_class(audit_fsync: str) -> str:
    """The loop worker, but for ``AUTHZ_AUDIT_FSYNC=always``: there every decision waits for the
    group fsync and hands the loop over, which cost 22 % of the rate at 8 connections against a
    thread per connection (BENCHMARKS.md). ``AUTHZ_WORKER_CLASS`` overrides either."""
    return THREAD_WORKER if audit_fsync == "always" else LOOP_WORKER


def gunicorn_options(socket_path: str, workers: int, threads: int = 4, cpu_affinity: str = "none",
                     idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
                     audit_fsync: str = "interval") -> dict[str, Any]:  # fmt: skip
    if cpu_affinity not in CPU_AFFINITY_MODES:
        raise ConfigError(f"CPU affinity must be one of {', '.join(CPU_AFFINITY_MODES)}, not {cpu_affinity!r}")
    spread = cpu_affinity == "spread"
    return {
        "bind": [f"unix:{socket_path}"],
        "workers": workers,
        "worker_class": os.environ.get("AUTHZ_WORKER_CLASS") or default_worker_class(audit_fsync),
        "threads": threads,
        "worker_connections": 64,
        "umask": 0o177,  # the socket becomes 0600
        # How long a connection may stay idle, or a request stall (authz.worker): dockerd reuses its
        # connections, so do not close them under it.
        "keepalive": idle_timeout,
        "timeout": 30,
        "graceful_timeout": 10,
        "preload_app": False,
        "control_socket_disable": True,  # gunicorn >= 25 opens a control socket by default
        "accesslog": None,
        "errorlog": "-",
        "loglevel": os.environ.get("AUTHZ_LOG_LEVEL", "info"),
        "proc_name": "authz-plugin",
        "pre_fork": _spread_pre_fork if spread else _slot_pre_fork,
        "post_fork": _spread_post_fork if spread else None,  # None: gunicorn's own (empty) hook
    }


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor


def inherited_socket(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> str | None:
    """The path of the unix socket systemd passed to this process, or None without socket activation.

    Raises ``ConfigError`` when the activation is unusable (several sockets, not a unix stream socket):
    serving on something else than the socket the daemon dials would leave the daemon failing.
    """
    if environ.get("LISTEN_PID", "") != str(os.getpid() if pid is None else pid):
        return None  # not for us (e.g. inherited by a child of the activated process)
    count = environ.get("LISTEN_FDS", "")
    if count != "1":
        raise ConfigError(f"socket activation passed LISTEN_FDS={count!r}; the plugin serves exactly one socket")
    not_unix = ConfigError("socket activation: the passed descriptor is not a unix stream socket")
    try:
        if not stat.S_ISSOCK(os.fstat(SD_LISTEN_FDS_START).st_mode):
            raise not_unix
        probe = socket.socket(fileno=os.dup(SD_LISTEN_FDS_START))
    except OSError as exc:
        raise ConfigError(f"socket activation: descriptor {SD_LISTEN_FDS_START} is unusable: {exc}") from exc
    with probe:
        if probe.family != socket.AF_UNIX or probe.type != socket.SOCK_STREAM:
            raise not_unix
        name = probe.getsockname()
    return name if isinstance(name, str) else name.decode(errors="replace")


def run(socket_path: str, workers: int, config: Config, threads: int = 4, cpu_affinity: str = "none") -> None:
    """Serve until stopped. Removes a stale socket file first (a crashed previous run).

    Under systemd socket activation the inherited socket is served instead; ``socket_path`` is
    then only compared with it (a mismatch is logged: the daemon dials what systemd bound).
    """
    inherited = inherited_socket()
    if inherited is not None:
        if inherited != socket_path:
            log.warning("serving the socket systemd passed (%s), not --socket %s", inherited, socket_path)
        # gunicorn reads LISTEN_FDS/LISTEN_PID itself and uses the descriptor instead of binding.
        options = gunicorn_options(inherited, workers, threads, cpu_affinity, config.idle_timeout, config.audit_fsync)
        PluginApplication(options, config).run()
        return
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    # Before the fork: metric files of workers from an earlier run (killed ones included) go.
    from authz.metrics import clear_directory  # noqa: PLC0415 - prometheus is needed only here

    clear_directory(config.state_dir / "metrics")
    options = gunicorn_options(socket_path, workers, threads, cpu_affinity, config.idle_timeout, config.audit_fsync)
    PluginApplication(options, config).run()
