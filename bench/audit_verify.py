"""Throwaway benchmark: time ``authzctl audit verify`` on a generated N-record chain, and the
journal's group-commit write latency.

    .venv/bin/python bench/audit_verify.py --records 1000000 [--state /var/tmp/authz-bench]
    .venv/bin/python bench/audit_verify.py --latency [--state DIR] [--writes 2000]

The chain is generated exactly as the journal writes it (``ChainState``), inserted with sqlite3
in bulk, checkpointed every 1,000 records with the real Ed25519 key, then verified end to end
through ``authz.cli.main`` (SQLAlchemy streaming, hashing, signature checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from authz.audit import AuditEvent
from authz.audit_chain import ChainState, Checkpoint, canonical_event
from authz.audit_journal import JournalAuditSink
from authz.audit_keys import AuditKey, CheckpointLog
from authz.cli import main
from authz.storage import migrate

COLUMNS = ("time", "request_id", "node", "phase", "user", "source", "roles", "action", "method", "uri", "object",
           "allow", "mode", "rule", "role", "reason", "message", "warnings", "error", "body_digest", "token_id",
           "status_code", "detail")  # fmt: skip
JSON_COLUMNS = {"roles", "warnings", "detail"}


def event(i: int, now: float) -> AuditEvent:
    return AuditEvent(time=now - 1_000_000 + i, request_id=f"{i:024x}", node="bench", phase="request",
                      user=f"user{i % 50}", source="token", roles=("developer",), action="container:create",
                      method="POST", uri="/v1.41/containers/create?name=web", object=None, allow=i % 7 != 0,
                      mode="enforce", rule="roles.developer.allow[0]", role="developer", reason="allowed by rule",
                      message="", body_digest="ab" * 32, token_id="f" * 32)  # fmt: skip


def generate(state: Path, records: int) -> str:
    migrate(f"sqlite:///{state / 'authz.db'}")
    key = AuditKey.load_or_create(state / "audit-keys")
    log = CheckpointLog(state / "checkpoints")
    chain = "bench:00c0ffee"
    head = ChainState(chain)
    now = time.time()
    conn = sqlite3.connect(state / "authz.db")
    columns = ", ".join((*COLUMNS, "chain", "seq", "prev_hash", "record_hash"))
    marks = ", ".join("?" * (len(COLUMNS) + 4))
    sql = f"INSERT INTO audit_records ({columns}) VALUES ({marks})"  # noqa: S608 - fixed column names
    batch: list[tuple[object, ...]] = []
    started = time.perf_counter()
    for i in range(1, records + 1):
        data = event(i, now).to_dict()
        prev = head.last_hash
        seq, digest, _line = head.append(canonical_event(data))
        values = [json.dumps(data[c]) if c in JSON_COLUMNS else data[c] for c in COLUMNS]
        batch.append((*values, chain, seq, prev, digest))
        if i % 1000 == 0:
            log.append(key.sign(Checkpoint("checkpoint", chain, seq, digest, now)))
        if len(batch) >= 20_000:
            conn.executemany(sql, batch)
            conn.commit()
            batch.clear()
    conn.executemany(sql, batch)
    conn.commit()
    conn.close()
    print(f"generated {records:,} records in {time.perf_counter() - started:.1f}s")
    return chain


def bench_verify(state: Path, records: int) -> None:
    generate(state, records)
    os.environ["AUTHZ_STATE_DIR"] = str(state)
    started, cpu = time.perf_counter(), time.process_time()
    code = main(["audit", "verify"])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"audit verify: exit {code}, {records:,} records in {elapsed:.1f}s wall, {cpu:.1f}s CPU "
          f"({records / elapsed:,.0f} records/s wall, load average {os.getloadavg()[0]:.1f})")  # fmt: skip


def bench_latency(state: Path, writes: int) -> None:
    for threads in (1, 8):
        sink = JournalAuditSink(state / f"journal-{threads}", "bench", checkpoints=CheckpointLog(state / "cp"),
                                key_dir=state / "audit-keys")  # fmt: skip
        for i in range(50):  # warm up: key creation, first segment, first checkpoint
            sink.write(event(i, time.time()))
        latencies: list[float] = []

        def writer(count: int, sink: JournalAuditSink = sink, out: list[float] = latencies) -> None:
            for i in range(count):
                started = time.perf_counter()
                sink.write(event(i, time.time()))
                out.append(time.perf_counter() - started)

        workers = [threading.Thread(target=writer, args=(writes // threads,)) for _ in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        print(f"{threads} thread(s): {len(latencies)} writes, p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
              f"{len(latencies) / elapsed:,.0f} writes/s ({state})")  # fmt: skip
        sink.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--latency", action="store_true", help="measure journal write latency instead")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--state", help="parent directory of the throwaway state (default: a temp dir)")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="authz-bench-", dir=args.state))
    try:
        if args.latency:
            bench_latency(state, args.writes)
        else:
            bench_verify(state, args.records)
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    run()
