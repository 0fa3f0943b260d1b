"""How long an ownership record waits for SQLite's write lock while the audit shipper inserts.

    .venv/bin/python bench/ownership_lock_bench.py [--batches 100,20,adaptive] [--checkpoints off,on]
                                                   [--seconds 10] [--pooled]

SQLite has one write lock. The audit shipper process (``authz.audit_ship_process``) takes it for
every batch of journal records it inserts; a create's AuthZRes records the new object's owner in
the same database, and dockerd waits for that answer. For each batch size, a child process
inserts audit records at ``--rate`` records/s (``AuditStore.insert_chained``, the shipper's own
call) in batches of that size, or ``adaptive``: as the shipper sizes them while it is behind. This
process records an owner every 2 ms meanwhile (``OwnershipRepository.record``, the AuthZRes's own
call). Printed: how long each batch's insert took (SQLite's write lock is held for about that
long), the inserting process's CPU per record and the latency of the ownership records.
``--checkpoints off`` records owners as the plugin's workers do (their commits leave WAL
checkpoints to the shipper, ``leave_checkpoints_to_others``), ``on`` as they did before. The
owners are written through a connection held out of the pool, as the workers do since the ninth
session (``OwnershipRepository(hold_connections=True)``); ``--pooled`` writes through the pool, as
the figures before it were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from authz.audit_chain import JournalRecord
from authz.audit_shipper import JournalShipper
from authz.storage.db import Database, leave_checkpoints_to_others
from authz.storage.ownership import OwnershipRepository
from authz.storage.repositories import AuditStore

ROOT = Path(__file__).resolve().parent.parent
AUTHZCTL = str(ROOT / ".venv" / "bin" / "authzctl")

_EVENT = {
    "time": 0.0, "request_id": "0" * 16, "node": "bench", "phase": "request", "user": "bench", "source": "token",
    "roles": ["developer"], "action": "container:list", "method": "GET", "uri": "/v1.41/containers/json",
    "object": None, "allow": True, "mode": "enforce", "rule": "allow", "role": "developer",
    "reason": "allowed by role developer (container:list)", "message": "", "warnings": [], "error": None,
    "body_digest": None, "token_id": "t" * 16, "status_code": None, "detail": {},
}  # fmt: skip


def insert_audit(url: str, batch: str, rate: float, seconds: float) -> None:
    """The child: insert batches like the shipper does; print the insert durations as JSON.

    ``batch`` is a number of rows, or ``adaptive``: the shipper's own rule (``_next_limit``, as
    ``authz.audit_ship_process`` sets it) for a shipper that is always behind, its worst case.
    """
    store = AuditStore(Database(url))
    shipper = JournalShipper(Path(url), store, batch_rows=20, max_batch_rows=500, lock_budget=0.002, grow_after=1.0)
    limit = shipper.batch_rows if batch == "adaptive" else int(batch)
    held: list[float] = []
    seq = 0
    started, cpu_start = time.monotonic(), time.process_time()
    while time.monotonic() - started < seconds:
        records = []
        for _ in range(limit):
            seq += 1
            records.append(JournalRecord("bench:1", seq, "0" * 64, f"{seq:064x}", {**_EVENT, "time": time.time()}))
        begin = time.perf_counter()
        store.insert_chained(records)
        held.append(time.perf_counter() - begin)
        if batch == "adaptive":
            limit = shipper._next_limit(limit, len(records), held[-1], time.monotonic() - started)
        # Keep to the rate: the next batch is due when `rate` would have produced it.
        time.sleep(max(0.0, started + seq / rate - time.monotonic()))
    print(json.dumps({"held": held, "cpu_per_record": (time.process_time() - cpu_start) / max(seq, 1)}))


def record_owners(url: str, seconds: float, checkpoints: bool, held: bool) -> list[float]:
    db = Database(url)
    repo = OwnershipRepository(db if checkpoints else leave_checkpoints_to_others(db), hold_connections=held)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline:
        index += 1
        begin = time.perf_counter()
        repo.record("container", f"{index % 500:064x}", f"box{index % 500}", "bench")
        latencies.append(time.perf_counter() - begin)
        time.sleep(0.002)
    return latencies


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"{at(0.5):8.2f}{at(0.9):8.2f}{at(0.99):8.2f}{ordered[-1] * 1000:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="100,20,adaptive",
                        help="comma-separated batch sizes to compare; adaptive: the shipper's rule")  # fmt: skip
    parser.add_argument("--checkpoints", default="off,on", help="whether the owners' commits run WAL checkpoints")
    parser.add_argument("--rate", type=float, default=2500.0, help="audit records inserted per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pooled", action="store_true", help="record owners through the pool, not a held connection")
    parser.add_argument("--child", nargs=2, metavar=("URL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        insert_audit(args.child[0], args.child[1], args.rate, args.seconds)
        return

    print(f"audit inserts at {args.rate:,.0f} records/s; an ownership record every 2 ms; {args.seconds:g} s each")
    print(f"{'batch':>8}{'ckpt':>5} | {'insert ms: p50':>13}{'p99':>8}{'CPU/record µs':>14} | "
          f"{'ownership record ms: p50':>24}{'p90':>8}{'p99':>8}{'max':>8}{'n':>7}")  # fmt: skip
    runs = [(b, mode) for b in args.batches.split(",") for mode in args.checkpoints.split(",")]
    for batch, mode in runs:
        tmp = Path(tempfile.mkdtemp(prefix="authz-lock-bench-"))
        try:
            url = f"sqlite:///{tmp}/authz.db"
            env = {**os.environ, "AUTHZ_DATABASE_URL": url, "AUTHZ_STATE_DIR": str(tmp / "state")}
            subprocess.run([AUTHZCTL, "init"], env=env, check=True, capture_output=True)
            child = subprocess.Popen(
                [sys.executable, __file__, "--child", url, batch, "--rate", str(args.rate),
                 "--seconds", str(args.seconds + 1)],
                env=env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(0.5)  # the child is inserting
            latencies = record_owners(url, args.seconds, checkpoints=mode == "on", held=not args.pooled)
            child_figures = json.loads(child.communicate(timeout=60)[0])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        insert = quantiles(child_figures["held"]).split()
        print(f"{batch:>8}{mode:>5} | {insert[0]:>13}{insert[2]:>8}{child_figures['cpu_per_record'] * 1e6:>14.0f} | "
              f"{quantiles(latencies)[:8]:>24}{quantiles(latencies)[8:]}{len(latencies):>7}")  # fmt: skip


if __name__ == "__main__":
    main()
