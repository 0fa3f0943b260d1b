"""Admin UI: roles — the form covers every policy-v1 key, errors name the key, deletes are guarded."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from admin.role_form import FIELDS, field_of, form_values, role_document
from admin.testing import AdminClient, make_app
from authz.policy.builtin import BUILTIN_ROLES
from authz.policy.model import ContainerRules
from authz.policy.schema import _ROLE_KEYS, _SECTIONS, parse_policy, parse_role
from authz.storage.db import Database
from authz.storage.models import AuditRow
from authz.storage.repositories import PolicyStore

XSS = "<script>alert(1)</script>"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Flask, Database, AdminClient]:
    app, db = make_app(tmp_path)
    client = AdminClient(app)
    assert client.login().status_code == 302
    return app, db, client


def submitted(values: dict[str, object]) -> MultiDict[str, str]:
    """The form a browser submits for ``form_values`` (unchecked boxes are absent)."""
    form: MultiDict[str, str] = MultiDict()
    for f in FIELDS:
        value = values[f.key]
        if f.kind == "list":
            assert isinstance(value, dict)
            if value["set"]:
                form.add(f"{f.key}.set", "on")
            form.add(f.key, value["text"])
        elif f.kind == "roles":
            assert isinstance(value, list)
            for item in value:
                form.add(f.key, item)
        else:
            form.add(f.key, str(value))
    return form


def test_the_form_has_a_field_for_every_key_of_a_role() -> None:
    keys = {f.key for f in FIELDS}
    top = {k for k in _ROLE_KEYS if k not in _SECTIONS}
    nested = {f"{section}.{name}" for section, (_cls, readers) in _SECTIONS.items() for name in readers}
    assert keys == top | nested
    assert all(f.help for f in FIELDS)


@pytest.mark.parametrize("name", sorted(BUILTIN_ROLES))
def test_form_round_trip_keeps_every_builtin_role(name: str) -> None:
    role = BUILTIN_ROLES[name]
    again = parse_role(name, role_document(submitted(form_values(role))))
    assert again == role.__class__(**{**{f: getattr(role, f) for f in role.__slots__}, "builtin": False})


def test_field_of_maps_error_paths_to_fields() -> None:
    assert field_of("roles.r.containers.capabilities[2]", "r") == "containers.capabilities"
    assert field_of("roles.r.allow[0]", "r") == "allow"
    assert field_of("roles.other.allow[0]", "r") is None


def _role_form(**fields: str | list[str]) -> dict[str, object]:
    data: dict[str, object] = {"allow": "container:*\nimage:pull", "ownership": "own"}
    data.update(fields)
    return data


def test_create_role_with_constraints(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    form = _role_form(
        name="builder",
        description="CI builds",
        extends=["viewer"],
        **{
            "containers.privileged": "false",
            "containers.capabilities.set": "on",
            "containers.capabilities": "net_bind_service\nCAP_CHOWN",
            "containers.published_ports.set": "on",
            "containers.published_ports": "8000-8999",
            "containers.max_memory": "512m",
            "containers.max_cpus": "1.5",
            "containers.max_pids": "100",
            "containers.require_limits": "true",
            "images.allow.set": "on",
            "images.allow": "docker.io/library/*",
        },
    )
    response = client.post("/roles/new", form)
    assert response.status_code == 302, response.text
    info = PolicyStore(db).get_role("builder")
    assert info.source == "custom"
    role = info.role
    assert (role.description, role.extends, role.allow, role.ownership) == (
        "CI builds", ("viewer",), ("container:*", "image:pull"), "own")  # fmt: skip
    assert role.containers == ContainerRules(
        privileged=False, capabilities=("NET_BIND_SERVICE", "CHOWN"), published_ports=("8000-8999",),
        max_memory=512 * 1024**2, max_cpus=1.5, max_pids=100, require_limits=True,
    )  # fmt: skip
    assert role.images.allow == ("docker.io/library/*",)
    assert role.exec.privileged is None  # untouched: inherited
    with db.session() as session:
        event = session.scalar(select(AuditRow).where(AuditRow.action == "admin:role-set"))
    assert event is not None
    assert (event.object, event.user) == ("builder", "admin")
    page = client.get("/roles/builder").text
    assert "max_memory: 512m" in page


def test_errors_name_the_key_and_mark_the_field(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    form = _role_form(name="bad", **{"containers.capabilities.set": "on", "containers.capabilities": "SYS_ADMN"})
    response = client.post("/roles/new", form)
    assert response.status_code == 400
    text = html.unescape(response.text)
    assert "roles.bad.containers.capabilities[0]" in text
    assert 'unknown capability "SYS_ADMN"' in text
    assert 'field field-error">\n      <span class="label">Capabilities' in response.text
    assert "SYS_ADMN" in response.text  # the submitted value is kept for correction
    assert PolicyStore(db).list_roles(only="bad") == []
    response = client.post("/roles/new", _role_form(name="r2", allow="container:frobnicate"))
    assert response.status_code == 400
    assert "roles.r2.allow[0]" in html.unescape(response.text)
    response = client.post("/roles/new", _role_form(name="r3", **{"containers.max_cpus": "lots"}))
    assert response.status_code == 400
    assert "roles.r3.containers.max_cpus" in html.unescape(response.text)


def test_edit_saves_changes_and_noop_uses_no_revision(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    store = PolicyStore(db)
    client.post("/roles/new", _role_form(name="ops"))
    revision = store.revision()
    values = form_values(store.get_role("ops").role)
    assert client.post("/roles/ops/edit", submitted(values)).status_code == 302
    assert store.revision() == revision  # saved unchanged: nothing to do
    values["mode"] = "warn"
    client.post("/roles/ops/edit", submitted(values))
    assert store.get_role("ops").role.mode is not None
    assert store.get_role("ops").role.mode.value == "warn"
    assert store.revision() == revision + 1


def test_editing_a_builtin_stores_an_override(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    values = form_values(BUILTIN_ROLES["viewer"])
    values["description"] = "read-only, overridden"
    assert client.post("/roles/viewer/edit", submitted(values)).status_code == 302
    assert PolicyStore(db).get_role("viewer").source == "override"


def test_detail_shows_holders_directly_and_through_groups(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    PolicyStore(db).apply_policy(parse_policy({
        "version": 1, "groups": {"team": {"roles": ["operator"]}},
        "users": {"ann": {"roles": ["operator"]}, "ben": {"groups": ["team"]}},
    }), "setup")  # fmt: skip
    page = client.get("/roles/operator").text
    assert 'href="/users/ann">ann</a>' in page
    assert "<strong>team</strong>: ben" in page


def test_delete_is_refused_while_in_use(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    client.post("/roles/new", _role_form(name="temp"))
    PolicyStore(db).add_user("carl", "setup", roles=["temp"])
    page = client.post("/roles/temp/delete", follow_redirects=True).text
    assert "was not deleted" in page
    assert "in use by users carl" in page
    assert PolicyStore(db).list_roles(only="temp")
    PolicyStore(db).revoke_user_role("carl", "temp", "setup")
    assert client.post("/roles/temp/delete").headers["Location"] == "/roles"
    assert PolicyStore(db).list_roles(only="temp") == []
    assert client.get("/roles/developer/delete").status_code == 200
    assert "built-in" in client.post("/roles/developer/delete", follow_redirects=True).text


def test_role_description_is_escaped(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, _db, client = setup
    assert client.post("/roles/new", _role_form(name="x", description=XSS)).status_code == 302
    for path in ("/roles", "/roles/x", "/roles/x/edit"):
        page = client.get(path).text
        assert XSS not in page, path
        assert "&lt;script&gt;" in page, path
