"""Admin UI: the audit log — keyset pages, filters (checked against a brute-force filter), record
pages, the hourly chart and streamed CSV/JSONL exports."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import insert

from admin.audit_queries import AuditQueries, AuditQuery, Page, QueryError, export_fields
from admin.testing import AdminClient, make_app
from authz.audit import AuditEvent
from authz.storage.audit_store import AuditRecord
from authz.storage.db import Database
from authz.storage.models import AuditRow

T0 = 1_749_999_600.0  # on an hour boundary: the chart counts clock hours
XSS = "<script>alert(1)</script>"


def event(i: int, rng: random.Random) -> AuditEvent:
    allow = rng.random() < 0.7
    user = rng.choice(["alice", "bob", "carol", None])
    action = rng.choice(["container:create", "container:start", "image:pull", "volume:create", "system:info"])
    # times are not in id order, and some are equal: the order is (time, id), not id
    moment = T0 + rng.randrange(0, 48) * 1800 + (0 if i % 7 == 0 else rng.random())
    return AuditEvent(
        time=moment, request_id=f"r{i}", node="n1", phase="request", user=user,
        source="token" if user else "anonymous", roles=("developer",), action=action, method="POST",
        uri=f"/v1.41/containers/create?name=box{i}", object=f"box{i % 40}", allow=allow, mode="enforce",
        rule="roles.developer.allow[0]" if allow else "default-deny", role="developer" if allow else None,
        reason=("granted by role developer" if allow else f"needle{i % 5} was refused"), message="",
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Flask, Database, list[AuditRecord]]:
    app, db = make_app(tmp_path)
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not secrets
    events = [event(i, rng) for i in range(260)]
    rows = [item.to_dict() for item in events]
    with db.session(write=True) as session:
        session.execute(insert(AuditRow), rows)
    records = app.extensions["authz_admin"].audit.page(AuditQuery(), size=10_000).records
    assert len(records) == 260
    return app, db, records


def brute(records: list[AuditRecord], query: AuditQuery) -> list[int]:
    """The ids ``query`` must return, newest first, by plain Python over every record."""
    out = []
    for record in records:
        e = record.event
        if query.user is not None and e.user != query.user:
            continue
        if query.action is not None and not (
            e.action.startswith(query.action[:-1]) if query.action.endswith("*") else e.action == query.action
        ):
            continue
        if query.allow is not None and e.allow != query.allow:
            continue
        if query.since is not None and e.time < query.since:
            continue
        if query.until is not None and e.time >= query.until:
            continue
        if query.obj is not None and e.object != query.obj:
            continue
        if query.text is not None and not any(query.text.lower() in v.lower() for v in (e.reason, e.uri)):
            continue
        out.append(record.id)
    return out


def walk(queries: AuditQueries, query: AuditQuery, size: int = 25) -> list[Page]:
    pages = [queries.page(query, size=size)]
    while pages[-1].older is not None:
        pages.append(queries.page(query, before=pages[-1].older, size=size))
        assert len(pages) < 100
    return pages


def test_newest_first_by_time_then_id(setup: tuple[Flask, Database, list[AuditRecord]]) -> None:
    _app, _db, records = setup
    keys = [(r.event.time, r.id) for r in records]
    assert keys == sorted(keys, reverse=True)
    assert [r.id for r in records] != sorted((r.id for r in records), reverse=True)  # not plain id order


QUERIES = [
    AuditQuery(),
    AuditQuery(user="alice"),
    AuditQuery(action="image:pull"),
    AuditQuery(action="container:*"),
    AuditQuery(action="nothing:*"),
    AuditQuery(allow=False),
    AuditQuery(user="bob", allow=True, action="container:*"),
    AuditQuery(since=T0 + 10 * 3600, until=T0 + 20 * 3600),
    AuditQuery(obj="box3"),
    AuditQuery(text="NEEDLE2"),
    AuditQuery(text="name=box1", user="carol"),
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: repr(q.to_args()))
def test_keyset_pages_cover_the_filtered_set_exactly(
    setup: tuple[Flask, Database, list[AuditRecord]], query: AuditQuery
) -> None:
    app, _db, records = setup
    queries = app.extensions["authz_admin"].audit
    pages = walk(queries, query)
    assert [r.id for p in pages for r in p.records] == brute(records, query)
    assert all(len(p.records) == 25 for p in pages[:-1])
    assert not any(p.partial for p in pages)
    # and back again: each page's "newer" link returns the page before it
    for previous, current in itertools.pairwise(pages):
        assert current.newer is not None
        back = queries.page(query, after=current.newer, size=25)
        assert [r.id for r in back.records] == [r.id for r in previous.records]
    assert pages[0].newer is None


def test_unindexed_filters_scan_with_a_budget(setup: tuple[Flask, Database, list[AuditRecord]]) -> None:
    _app, db, records = setup
    queries = AuditQueries(db, scan_budget=30)
    query = AuditQuery(obj="box7")
    expected = brute(records, query)
    found: list[int] = []
    page = queries.page(query, size=25)
    partials = 0
    while True:
        found.extend(r.id for r in page.records)
        partials += page.partial
        if page.older is None:
            break
        page = queries.page(query, before=page.older, size=25)
    assert found == expected
    assert partials >= 5  # 260 records, 30 per walk: most pages stop at the budget and continue


def test_query_string_round_trip_and_errors() -> None:
    args = {"user": "alice", "action": "container:*", "decision": "deny", "since": "2025-06-15T12:00",
            "until": "1750003600", "object": "web", "q": "needle"}  # fmt: skip
    query = AuditQuery.from_args(args)
    assert (query.allow, query.since, query.until) == (False, 1749988800.0, 1750003600.0)
    assert AuditQuery.from_args(query.to_args()) == query
    for bad in ({"action": "container:*:x"}, {"action": "DROP TABLE"}, {"decision": "maybe"}, {"since": "yesterday"}):
        with pytest.raises(QueryError):
            AuditQuery.from_args(bad)


def test_page_filters_detail_and_escaping(setup: tuple[Flask, Database, list[AuditRecord]]) -> None:
    app, _db, records = setup
    app.extensions["authz_admin"].sink.write(
        AuditEvent(time=T0 + 200_000, request_id="x", node="n", phase="request", user="mallory", source="token",
                   roles=(), action="container:create", method="POST", uri=f"/containers/create?name={XSS}",
                   object=XSS, allow=False, mode="enforce", rule="default-deny", role=None, reason=XSS, message=XSS)
    )  # fmt: skip
    client = AdminClient(app)
    client.login("auditor")
    page = client.get("/audit?decision=deny&user=mallory").text
    assert XSS not in page
    assert "&lt;script&gt;" in page
    record_id = re.search(r'<a href="/audit/(\d+)">', page)
    assert record_id is not None
    detail = client.get(f"/audit/{record_id.group(1)}").text
    assert XSS not in detail
    assert "&lt;script&gt;" in detail
    assert client.get("/audit/999999").status_code == 404
    assert client.get("/audit?action=bad!").status_code == 400
    listing = client.get("/audit?user=alice").text
    ids = [int(i) for i in re.findall(r'<a href="/audit/(\d+)">', listing)]
    assert ids == brute(records, AuditQuery(user="alice"))[:50]
    older = re.search(r'href="([^"]+)" id="older"', listing)
    assert older is not None
    assert "user=alice" in older.group(1)
    assert "before=" in older.group(1)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_exports_stream_the_filtered_set(setup: tuple[Flask, Database, list[AuditRecord]], fmt: str) -> None:
    app, _db, records = setup
    client = AdminClient(app)
    client.login("auditor")
    response = client.get(f"/audit/export.{fmt}?action=container:*&decision=allow")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.headers["Content-Disposition"].startswith('attachment; filename="audit-')
    expected = brute(records, AuditQuery(action="container:*", allow=True))[::-1]  # oldest first
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert list(rows[0]) == list(export_fields())
        assert [int(r["id"]) for r in rows] == expected
        assert {r["allow"] for r in rows} == {"true"}
    else:
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert [line["id"] for line in lines] == expected
        assert all(line["action"].startswith("container:") and line["allow"] for line in lines)
    exported = app.extensions["authz_admin"].audit.page(AuditQuery(action="admin:audit-export")).records
    assert [(r.event.user, r.event.detail["format"]) for r in exported] == [("auditor", fmt)]


def test_hourly_counts_and_chart(setup: tuple[Flask, Database, list[AuditRecord]]) -> None:
    app, _db, records = setup
    queries = app.extensions["authz_admin"].audit
    for query in (
        AuditQuery(since=T0, until=T0 + 24 * 3600),
        AuditQuery(since=T0, until=T0 + 24 * 3600, text="needle"),
    ):
        buckets = queries.hourly(query, now=T0 + 99 * 3600)
        assert len(buckets) == 24
        for start, allowed, denied in buckets:
            inside = [r for r in records if start <= r.event.time < start + 3600
                      and r.id in set(brute(records, query))]  # fmt: skip
            assert (allowed, denied) == (sum(r.event.allow for r in inside), sum(not r.event.allow for r in inside))
    client = AdminClient(app)
    client.login("auditor")
    svg = client.get(f"/audit/chart.svg?since={T0}&until={T0 + 6 * 3600}")
    assert svg.mimetype == "image/svg+xml"
    assert svg.text.startswith("<svg")
    assert "<script" not in svg.text
    assert svg.text.count("<g><title>") == 6
