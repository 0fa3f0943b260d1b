"""The plugin's audit shipper as one process beside the gunicorn workers (an edge).

Shipping costs CPU (reading the journal, inserting rows). In a worker it competed for that
process's GIL with the request threads and set the p99 of decisions (BENCHMARKS.md); in a process
of its own, at a lower CPU priority (``AUTHZ_SHIPPER_NICE``, default 10), it only takes what the
workers leave. The workers keep writing their journals exactly as before: nothing waits on the
shipper, and a record is durable in the journal before the daemon gets its answer.

``ShipperProcess`` is the master's side: started with the server, restarted when it exits,
stopped after the workers (so its last passes drain their finished journals). The child
(``python -m authz.audit_ship_process``) follows every live chain, claims orphans, publishes its
progress in ``audit-journal/shipper.json`` (the workers report their backlog from it) and exits
when told or when the master is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from authz.audit_shipper import JournalShipper
from authz.config import Config

__all__ = ["STATUS_FILE", "ShipperProcess", "main"]

log = logging.getLogger(__name__)

STATUS_FILE = "shipper.json"  # in <state>/audit-journal
DRAIN_SECONDS = 8.0  # the master's graceful timeout is 10 s
_RESTART_PAUSE = 1.0  # between a quick exit and the next start (a crash loop must not spin)
_PR_SET_PDEATHSIG = 1


class ShipperProcess:
    """The shipper child of the gunicorn master: start, keep running, stop."""

    def __init__(self, config: Config, environ: Mapping[str, str] = os.environ) -> None:
        env = {key: value for key, value in environ.items() if not key.startswith("LISTEN_")}  # socket activation
        # The child reads the same settings as the workers (Config.from_env), whatever the CLI resolved;
        # the state directory goes on its command line (``start``).
        env.update(AUTHZ_DATABASE_URL=config.database_url, AUTHZ_NODE=config.node)
        self._env = env
        self._state_dir = str(config.state_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    def start(self) -> None:
        # The state directory is on the command line too: whoever looks for our processes by it finds this one.
        command = [sys.executable, "-m", "authz.audit_ship_process", "--master-pid", str(os.getpid()),
                   "--state-dir", self._state_dir]  # fmt: skip
        self._process = subprocess.Popen(command, env=self._env, stdin=subprocess.DEVNULL, close_fds=True)
        self._started = time.monotonic()
        log.info("audit shipper started (pid %d)", self._process.pid)

    def ensure_running(self) -> None:
        """Restart the child if it has exited (called from the master's loop, about once a second)."""
        process = self._process
        if process is None:
            self.start()
            return
        if process.poll() is None:
            return
        if time.monotonic() - self._started < _RESTART_PAUSE:
            return
        log.error("audit shipper (pid %d) has exited (%s); restarting it", process.pid, _describe_exit(process))
        self.start()

    def reap(self) -> None:
        """Take the child's exit status if it has exited: the master's ``reap_workers`` waits with
        waitpid(-1), which would take it first (Popen then sees ECHILD and reports 0)."""
        if self._process is not None:
            self._process.poll()  # a no-op once its status is taken

    def stop(self, timeout: float = DRAIN_SECONDS + 2) -> None:
        """Ask the child to drain and exit; kill it after ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("audit shipper (pid %d) did not stop within %gs; killing it", process.pid, timeout)
            process.kill()
            process.wait()


def _describe_exit(process: subprocess.Popen[bytes]) -> str:
    code = process.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _exit_with(master_pid: int) -> None:
    """Get SIGTERM when the master dies (even by SIGKILL), and leave now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != master_pid:
        raise SystemExit(0)


def _niceness(environ: Mapping[str, str]) -> int:
    raw = environ.get("AUTHZ_SHIPPER_NICE", "").strip() or "10"
    try:
        value = int(raw)
    except ValueError:
        log.error("AUTHZ_SHIPPER_NICE=%r is not a number; using 10", raw)
        return 10
    return min(max(value, 0), 19)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="authz.audit_ship_process")
    parser.add_argument("--master-pid", type=int, required=True)
    parser.add_argument("--state-dir", required=True, help="as AUTHZ_STATE_DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("AUTHZ_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",  # as gunicorn's lines
        datefmt="%Y-%m-%d %H:%M:%S %z",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: wait for the master's TERM
    _exit_with(args.master_pid)
    os.nice(_niceness(os.environ))

    from authz.storage.db import Database  # noqa: PLC0415 - after the checks above: a quick exit stays cheap
    from authz.storage.repositories import AuditStore  # noqa: PLC0415
    from authz.storage.source import recycle_on_corruption  # noqa: PLC0415

    config = Config.from_env({**os.environ, "AUTHZ_STATE_DIR": args.state_dir})
    journal = config.state_dir / "audit-journal"
    journal.mkdir(mode=0o700, parents=True, exist_ok=True)  # the workers create it at their first record
    db = recycle_on_corruption(Database(config.database_url))
    # An ownership record (dockerd waits for it) queues behind the shipper's transaction for SQLite's
    # one write lock: 100 rows held it 6-8 ms (a record's p99 4-9 ms), 20 rows ~1.5 ms (p99 1.5-5 ms)
    # for a third more CPU per row (bench/ownership_lock_bench.py, BENCHMARKS.md section 4). So 20
    # rows, and more only after 1 s behind and while a batch's insert stays within 2 ms.
    shipper = JournalShipper(journal, AuditStore(db), follow_live=True, scan_interval=1.0, batch_rows=20,
                             max_batch_rows=500, lock_budget=0.002, grow_after=1.0,
                             status_path=journal / STATUS_FILE)  # fmt: skip
    shipper.start()
    while not stop.wait(1.0):
        if os.getppid() != args.master_pid:
            break  # the master is gone (PDEATHSIG may be unavailable)
    shipper.stop()
    shipped = shipper.drain(DRAIN_SECONDS)
    log.info("audit shipper stopping; %d records shipped in the last passes", shipped)
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
