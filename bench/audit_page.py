"""How long the admin UI takes to show the audit log with a million records in SQLite.

    .venv/bin/python bench/audit_page.py [--records 1000000] [--db /tmp/authz-bench/authz.db] [--runs 7]

Builds (or reuses) a migrated SQLite store holding ``--records`` audit records spread over 30
days (users, actions, allow/deny and objects drawn at random, a few rare values), then serves
the real admin app in-process (Flask test client, signed in as an auditor) and times full page
renders: the first page cold (first request of a fresh process and database connection) and
warm (median of ``--runs``), plus filtered pages, a page deep in the log reached by keyset
links, the hourly chart and the first 10,000 lines of a CSV export. Prints one line per case.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from admin.testing import AdminClient, make_settings, prepare_store
from authz.storage.db import Database
from authz.storage.models import AuditRow

USERS = [f"user{i:02d}" for i in range(40)]
ACTIONS = [
    "container:create", "container:start", "container:list", "container:inspect", "exec:start", "image:pull",
    "image:list", "volume:create", "network:create", "system:info", "container:delete",
]  # fmt: skip
DAY = 86400.0
BATCH = 50_000


def build(path: Path, records: int) -> None:
    """Fill the store at ``path`` with ``records`` audit rows (fast path: sqlite3 executemany)."""
    rng = random.Random(20240601)
    end = time.time()
    start = end - 30 * DAY
    columns = [c.name for c in AuditRow.__table__.columns if c.name != "id"]
    placeholders = ",".join("?" * len(columns))
    sql = f"INSERT INTO audit_records ({','.join(columns)}) VALUES ({placeholders})"  # noqa: S608 - our own column names
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    began = time.perf_counter()
    rows = []
    for i in range(records):
        allow = rng.random() < 0.8
        user = "rareuser" if i % 100_000 == 0 else rng.choice(USERS)
        moment = start + (end - start) * i / records + rng.random()  # roughly arrival order
        values = {
            "time": moment, "request_id": f"{i:012x}", "node": "node1", "phase": "request", "user": user,
            "source": "token", "roles": '["developer"]', "action": rng.choice(ACTIONS), "method": "POST",
            "uri": f"/v1.41/containers/create?name=c{i}", "object": f"c{i}", "allow": allow, "mode": "enforce",
            "rule": "roles.developer.allow[0]" if allow else "roles.developer.containers.privileged",
            "role": "developer",
            "reason": "granted by role developer" if allow else "privileged containers are not allowed",
            "message": "", "warnings": "[]", "error": None, "body_digest": None, "token_id": None, "status_code": None,
            "detail": "{}", "chain": None, "seq": None, "prev_hash": None, "record_hash": None,
        }  # fmt: skip
        rows.append(tuple(values.get(c) for c in columns))
        if len(rows) == BATCH:
            conn.executemany(sql, rows)
            rows.clear()
    if rows:
        conn.executemany(sql, rows)
    conn.commit()  # no ANALYZE: a real store has no sqlite_stat1 either, the planner works without
    conn.close()
    print(f"built {records:,} records in {time.perf_counter() - began:.1f} s")


def count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(AuditRow)) or 0)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "authz-bench" / "authz.db")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{args.db}"
    db = prepare_store(url)
    have = count(db)
    if have < args.records:  # the sign-ins of earlier runs add a few records: reuse the store
        db.dispose()
        args.db.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        db = prepare_store(url)
        build(args.db, args.records)
        db.dispose()
        db = Database(url)
    print(f"store: {args.db} ({count(db):,} audit records, {args.db.stat().st_size / 1e6:.0f} MB)")

    from admin import create_app  # after the store exists: the app opens it

    app = create_app(make_settings(args.db.parent / "state", url), db)
    accounts = app.extensions["authz_admin"].accounts
    if accounts.get("bench") is None:
        accounts.create("bench", "ui-auditor", "bench password long enough")
    client = AdminClient(app)
    assert client.login("bench", "bench password long enough").status_code == 302

    def page(path: str) -> Callable[[], object]:
        def get() -> object:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
            return response.data

        return get

    cold = timed(page("/audit"))
    print(f"{'first audit page, cold':<44} {cold * 1000:8.1f} ms")
    deep = "/audit"
    for _ in range(100):  # follow "Older" 100 times: page 101 by keyset links
        html = client.get(deep).text
        marker = 'href="/audit?before='
        deep = "/audit?before=" + html.split(marker, 1)[1].split('"', 1)[0]
    cases = {
        "first audit page, warm": "/audit",
        "page 101 (keyset)": deep,
        "user filter (common)": "/audit?user=user07",
        "user filter (rare)": "/audit?user=rareuser",
        "action filter": "/audit?action=image:pull",
        "action prefix container:*": "/audit?action=container:*",
        "decision deny": "/audit?decision=deny",
        "user + deny + prefix": "/audit?user=user07&decision=deny&action=container:*",
        "time range (one day, 20 days ago)": "/audit?since={0}&until={1}",
        "object (budgeted scan, no match)": "/audit?object=nothing-like-this",
        "text (budgeted scan)": "/audit?q=c999999",
        "chart, last 24 h": "/audit/chart.svg",
        "record detail": "/audit/1",
    }
    now = time.time()
    for name, template in cases.items():
        path = template.format(int(now - 20 * DAY), int(now - 19 * DAY))
        runs = [timed(page(path)) for _ in range(args.runs)]
        print(f"{name:<44} {statistics.median(runs) * 1000:8.1f} ms  (median of {args.runs})")

    def export() -> None:
        response = client.get("/audit/export.csv", buffered=False)
        lines = 0
        for chunk in response.response:
            lines += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
            if lines >= 10_000:
                break
        response.close()

    print(f"{'CSV export, first 10,000 lines':<44} {timed(export) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
