"""Roles: list, show (with who holds them), create, edit every policy-v1 section, delete.

Saving goes through ``parse_role`` and ``PolicyStore.set_role``, which re-validates the whole
policy; errors name the key path and are shown beside the field. Deleting a role that a user,
group, role or the settings still refers to is refused by the store.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.events import AdminEvent, record
from admin.permissions import UiPermission, requires
from admin.role_form import FIELDS, SECTIONS, field_of, form_values, role_document
from admin.services import services
from authz.errors import PolicyError
from authz.policy.schema import dump_role, parse_role
from authz.storage.directory import RoleInfo
from authz.storage.yamlio import dump_yaml

bp = Blueprint("roles", __name__, url_prefix="/roles")


def _info(name: str) -> RoleInfo:
    try:
        return services().policy.get_role(name)
    except PolicyError:
        abort(404)


@bp.get("")
@requires(UiPermission.POLICY_READ)
def index() -> str:
    return render_template("roles/list.html", roles=services().policy.list_roles())


@bp.get("/<name>")
@requires(UiPermission.POLICY_READ)
def detail(name: str) -> str:
    info = _info(name)
    policy = services().policy.load_policy()
    through_groups = {
        group: sorted(u.name for u in policy.users.values() if group in u.groups) for group in info.groups
    }
    extended_by = sorted(r.name for r in policy.roles.values() if name in r.extends)
    return render_template("roles/detail.html", info=info, yaml=dump_yaml(dump_role(info.role)),
                           through_groups=through_groups, extended_by=extended_by)  # fmt: skip


def _form(
    name: str | None, values: dict[str, object], error: PolicyError | None, status: int = 200, role: str = ""
) -> tuple[str, int]:
    """The role form; ``name`` None for a new role, ``role`` the name an error path refers to."""
    policy = services().policy.load_policy()
    others = [r for r in policy.roles if r != name]
    error_field = field_of(error.path, role or name or "") if error is not None else None
    page = render_template("roles/form.html", name=name, values=values, fields=FIELDS, sections=SECTIONS,
                           other_roles=others, error=error, error_field=error_field)  # fmt: skip
    return page, status


@bp.route("/new", methods=["GET", "POST"])
@requires(UiPermission.POLICY_WRITE)
def create() -> Response | tuple[str, int]:
    if request.method == "GET":
        return _form(None, form_values(None), None)
    name = request.form.get("name", "").strip()
    if services().policy.list_roles(only=name):
        return _form(None, _submitted(), PolicyError(f"roles.{name}", "already exists: edit it instead"), 400)
    return _save(name, is_new=True)


@bp.route("/<name>/edit", methods=["GET", "POST"])
@requires(UiPermission.POLICY_WRITE)
def edit(name: str) -> Response | tuple[str, int]:
    info = _info(name)
    if request.method == "GET":
        return _form(name, form_values(info.role), None)
    return _save(name, is_new=False)


def _submitted() -> dict[str, object]:
    """The values as submitted, to show the form again after an error."""
    values: dict[str, object] = {}
    for f in FIELDS:
        if f.kind == "list":
            values[f.key] = {"set": request.form.get(f"{f.key}.set") == "on", "text": request.form.get(f.key, "")}
        elif f.kind == "roles":
            values[f.key] = request.form.getlist(f.key)
        else:
            values[f.key] = request.form.get(f.key, "")
    values["name"] = request.form.get("name", "")
    return values


def _save(name: str, is_new: bool) -> Response | tuple[str, int]:
    svc = services()
    shown = None if is_new else name
    try:
        role = parse_role(name, role_document(request.form))
        change = svc.policy.set_role(role, g.account.name)
    except PolicyError as exc:
        return _form(shown, _submitted(), exc, 400, role=name)
    if change.changed:
        verb = "created" if is_new else "saved"
        record(svc.sink, svc.settings.base.node, AdminEvent.ROLE_SET,
               f"role {name} {verb} (policy revision {change.revision})", obj=name,
               detail={"definition": dump_role(role)})  # fmt: skip
        flash(f"Role {name} {verb} (policy revision {change.revision}).", "ok")
    else:
        flash(f"Role {name} is already defined like that: nothing to do.", "info")
    return redirect(url_for("roles.detail", name=name))


@bp.route("/<name>/delete", methods=["GET", "POST"])
@requires(UiPermission.POLICY_WRITE)
def delete(name: str) -> Response | str:
    info = _info(name)
    if request.method == "GET":
        return render_template("roles/delete.html", info=info)
    svc = services()
    try:
        change = svc.policy.remove_role(name, g.account.name)
    except PolicyError as exc:
        flash(f"Role {name} was not deleted: {exc}", "error")
        return redirect(url_for("roles.detail", name=name))
    record(svc.sink, svc.settings.base.node, AdminEvent.ROLE_DELETE,
           f"role {name} deleted (policy revision {change.revision})", obj=name)  # fmt: skip
    if info.source == "override":
        flash(f"The override of {name} was removed: the built-in role applies again.", "ok")
        return redirect(url_for("roles.detail", name=name))
    flash(f"Role {name} deleted (policy revision {change.revision}).", "ok")
    return redirect(url_for("roles.index"))
