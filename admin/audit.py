"""The audit log: filtered keyset pages (newest first), one record, the hourly chart, exports.

Exports stream the filtered set (CSV or JSON lines, the columns of ``authzctl audit export``)
batch by batch, so a million records never sit in memory; each export is itself audited.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, render_template, request, stream_with_context, url_for

from admin.audit_queries import AuditQuery, QueryError, export_fields
from admin.charts import hourly_svg
from admin.events import AdminEvent, record
from admin.permissions import UiPermission, requires
from admin.services import services
from authz.actions import ALL_ACTIONS
from authz.storage.audit_store import csv_cell

bp = Blueprint("audit", __name__, url_prefix="/audit")

_FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


def _query() -> tuple[AuditQuery, str | None]:
    try:
        return AuditQuery.from_args(request.args), None
    except QueryError as exc:
        return AuditQuery(), str(exc)


def _cursor(name: str) -> int | None:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() else None


@bp.get("")
@requires(UiPermission.AUDIT_READ)
def index() -> tuple[str, int]:
    svc = services()
    query, error = _query()
    page = svc.audit.page(query, before=_cursor("before"), after=_cursor("after"))
    args = query.to_args()
    actions = sorted({*ALL_ACTIONS, *(e.value for e in AdminEvent)})
    body = render_template("audit/list.html", page=page, query=query, args=args, error=error, actions=actions,
                           users=list(svc.policy.load_policy().users),
                           chart_url=url_for("audit.chart", **dict[str, Any](args)))  # fmt: skip
    return body, 400 if error else 200


@bp.get("/<int:record_id>")
@requires(UiPermission.AUDIT_READ)
def detail(record_id: int) -> str:
    found = services().audit.get(record_id)
    if found is None:
        abort(404)
    data = found.to_dict()
    return render_template("audit/detail.html", record=found, event=found.event,
                           pretty=json.dumps(data, indent=2, sort_keys=True, default=str))  # fmt: skip


@bp.get("/chart.svg")
@requires(UiPermission.AUDIT_READ)
def chart() -> Response:
    query, error = _query()
    if error:
        abort(400, error)
    buckets = services().audit.hourly(query, now=time.time())
    title = f"Decisions per hour (UTC), {len(buckets)} hours"
    return Response(hourly_svg(buckets, title), mimetype="image/svg+xml")


def _lines(query: AuditQuery, fmt: str) -> Iterator[str]:
    records = services().audit.iter_records(query)
    if fmt == "jsonl":
        for item in records:
            yield json.dumps(item.to_dict(), separators=(",", ":"), default=str) + "\n"
        return
    columns = export_fields()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for item in records:
        data = item.to_dict()
        writer.writerow([csv_cell(data.get(column)) for column in columns])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@bp.get("/export.<fmt>")
@requires(UiPermission.AUDIT_READ)
def export(fmt: str) -> Response:
    if fmt not in _FORMATS:
        abort(404)
    query, error = _query()
    if error:
        abort(400, error)
    svc = services()
    filters = ", ".join(f"{k}={v}" for k, v in sorted(query.to_args().items())) or "no filter"
    record(svc.sink, svc.settings.base.node, AdminEvent.AUDIT_EXPORT, f"audit log exported as {fmt} ({filters})",
           detail={"format": fmt, "filter": query.to_args()})  # fmt: skip
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Response(
        stream_with_context(_lines(query, fmt)),
        mimetype=_FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"'},
    )
