"""The policy document: view and download as YAML, upload → validate → diff → apply, history.

Applying is two steps: the upload is validated (errors name the key path) and compared with the
stored policy (a dry run); the preview page carries the document and the revision it was compared
with, and "Apply" applies it only if the store is still at that revision — otherwise the admin
would confirm a diff that no longer describes the change.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from admin.events import AdminEvent, record
from admin.permissions import UiPermission, requires
from admin.services import services
from authz.errors import PolicyError
from authz.policy.model import Policy
from authz.policy.schema import parse_policy
from authz.storage.models import PolicyHistoryRow
from authz.storage.policy_store import unified_diff
from authz.storage.revision import HistoryEntry
from authz.storage.yamlio import dump_yaml, export_yaml, load_mapping

bp = Blueprint("policy", __name__, url_prefix="/policy")

HISTORY_LIMIT = 200


def _parse(text: str, source: str) -> Policy:
    return parse_policy(load_mapping(text, source))


def _index_page(error: PolicyError | None = None, text: str = "", status: int = 200) -> tuple[str, int]:
    svc = services()
    current = svc.policy.load_policy()
    page = render_template("policy/view.html", yaml=export_yaml(current), revision=svc.policy.revision(),
                           policy=current, error=error, text=text)  # fmt: skip
    return page, status


@bp.get("")
@requires(UiPermission.POLICY_READ)
def index() -> tuple[str, int]:
    return _index_page()


@bp.get("/download")
@requires(UiPermission.POLICY_READ)
def download() -> Response:
    svc = services()
    revision = svc.policy.revision()
    text = export_yaml(svc.policy.load_policy())
    return Response(text, mimetype="application/yaml", headers={
        "Content-Disposition": f'attachment; filename="policy-r{revision}.yaml"'})  # fmt: skip


def _uploaded_text() -> tuple[str, str]:
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        raw = upload.read()
        try:
            return raw.decode("utf-8"), upload.filename
        except UnicodeDecodeError:
            raise PolicyError("", f"{upload.filename}: not UTF-8 text") from None
    return request.form.get("text", ""), "pasted text"


@bp.post("/preview")
@requires(UiPermission.POLICY_WRITE)
def preview() -> tuple[str, int]:
    svc = services()
    text = ""
    try:
        text, source = _uploaded_text()
        if not text.strip():
            raise PolicyError("", "choose a YAML file or paste the policy")
        result = svc.policy.apply_policy(_parse(text, source), g.account.name, dry_run=True)
    except PolicyError as exc:
        return _index_page(exc, text, 400)
    page = render_template("policy/preview.html", diff=result.diff, revision=result.revision, text=text,
                           source=source)  # fmt: skip
    return page, 200


@bp.post("/apply")
@requires(UiPermission.POLICY_WRITE)
def apply() -> Response | tuple[str, int]:
    svc = services()
    text = request.form.get("document", "")
    try:
        base = int(request.form.get("revision", ""))
        policy = _parse(text, "the previewed policy")
    except (ValueError, PolicyError) as exc:
        flash(f"The preview could not be applied: {exc}", "error")
        return redirect(url_for("policy.index"))
    current = svc.policy.revision()
    if current != base:
        # Fail closed: the admin confirmed a diff against revision `base`; this one would differ.
        flash(f"The policy changed since the preview (revision {base} → {current}): review the new diff.", "error")
        result = svc.policy.apply_policy(policy, g.account.name, dry_run=True)
        page = render_template("policy/preview.html", diff=result.diff, revision=result.revision, text=text,
                               source="the previewed policy")  # fmt: skip
        return page, 409
    try:
        result = svc.policy.apply_policy(policy, g.account.name)
    except PolicyError as exc:
        flash(f"The policy was not applied: {exc}", "error")
        return redirect(url_for("policy.index"))
    if result.changed:
        record(svc.sink, svc.settings.base.node, AdminEvent.POLICY_APPLY,
               f"policy applied: revision {result.revision}", obj=f"revision {result.revision}",
               detail={"diff_lines": result.diff.count("\n")})  # fmt: skip
        flash(f"Policy applied: revision {result.revision}.", "ok")
    else:
        flash("The store already holds this policy: nothing changed.", "info")
    return redirect(url_for("policy.index"))


@bp.get("/history")
@requires(UiPermission.POLICY_READ)
def history() -> str:
    return render_template("policy/history.html", entries=services().policy.history(limit=HISTORY_LIMIT))


def _entry(number: int) -> tuple[HistoryEntry | None, HistoryEntry | None]:
    """The history entry of a revision and the newest earlier one that stored a document.

    Entries without a document (token revocations …) are skipped in Python: a JSON column may
    hold JSON null rather than SQL NULL for them.
    """
    with services().db.session() as session:
        row = session.get(PolicyHistoryRow, number)
        earlier = session.scalars(
            select(PolicyHistoryRow)
            .where(PolicyHistoryRow.revision < number)
            .order_by(PolicyHistoryRow.revision.desc())
            .limit(HISTORY_LIMIT)
        )
        previous = next((r for r in earlier if r.document is not None), None)

        def entry(r: PolicyHistoryRow | None) -> HistoryEntry | None:
            return HistoryEntry(r.revision, r.at, r.author, r.summary, r.document) if r is not None else None

        return entry(row), entry(previous)


@bp.get("/history/<int:revision>")
@requires(UiPermission.POLICY_READ)
def revision(revision: int) -> str:
    entry, previous = _entry(revision)
    if entry is None:
        abort(404)
    diff = ""
    if entry.document is not None:
        before = previous.document if previous is not None and previous.document is not None else {}
        old_name = f"revision {previous.revision}" if previous is not None else "empty"
        diff = unified_diff(before, entry.document, old_name, f"revision {entry.revision}")
    yaml_text = dump_yaml(entry.document) if entry.document is not None else None
    return render_template("policy/revision.html", entry=entry, previous=previous, diff=diff, yaml=yaml_text)
