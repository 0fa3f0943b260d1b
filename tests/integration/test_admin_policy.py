"""Admin UI: the policy document — view, download, upload → validate → diff → apply, history."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from admin.testing import AdminClient, make_app
from authz.policy.schema import parse_policy
from authz.storage.db import Database
from authz.storage.models import AuditRow
from authz.storage.repositories import PolicyStore
from authz.storage.yamlio import export_yaml, load_mapping

POLICY = """\
version: 1
roles:
  builder:
    description: CI
    allow: ["container:*"]
    containers: {capabilities: [CHOWN]}
users:
  alice: {roles: [builder]}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Flask, Database, AdminClient]:
    app, db = make_app(tmp_path)
    client = AdminClient(app)
    assert client.login().status_code == 302
    return app, db, client


def upload(client: AdminClient, text: str, as_file: bool = True) -> tuple[int, str]:
    data: dict[str, object] = {"file": (io.BytesIO(text.encode()), "policy.yaml")} if as_file else {"text": text}
    response = client.post("/policy/preview", data, content_type="multipart/form-data")
    return response.status_code, response.text


def confirm(client: AdminClient, page: str) -> int:
    revision = re.search(r'name="revision" value="(\d+)"', page)
    document = re.search(r'<textarea name="document" hidden>(.*?)</textarea>', page, re.S)
    assert revision
    assert document
    response = client.post(
        "/policy/apply", {"revision": revision.group(1), "document": html.unescape(document.group(1))}
    )
    return response.status_code


def test_view_and_download(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    PolicyStore(db).apply_policy(parse_policy(load_mapping(POLICY)), "setup")
    page = client.get("/policy").text
    assert "revision 1" in page
    assert "builder:" in page
    response = client.get("/policy/download")
    assert response.headers["Content-Disposition"] == 'attachment; filename="policy-r1.yaml"'
    assert response.text == export_yaml(PolicyStore(db).load_policy())
    assert parse_policy(load_mapping(response.text)) == parse_policy(load_mapping(POLICY))


def test_upload_shows_the_diff_and_applies_only_on_confirm(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    store = PolicyStore(db)
    status, page = upload(client, POLICY)
    assert status == 200
    assert '<span class="diff-add">+  builder:</span>' in page
    assert store.revision() == 0
    assert store.list_users() == []
    assert confirm(client, page) == 302
    assert store.revision() == 1
    assert [u.name for u in store.list_users()] == ["alice"]
    assert store.get_role("builder").role.containers.capabilities == ("CHOWN",)
    with db.session() as session:
        event = session.scalar(select(AuditRow).where(AuditRow.action == "admin:policy-apply"))
    assert event is not None
    assert event.user == "admin"
    assert event.object == "revision 1"
    history = client.get("/policy/history").text
    assert "<td>admin</td>" in history
    assert "users +alice" in history


def test_pasted_text_works_too(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    status, page = upload(client, POLICY, as_file=False)
    assert status == 200
    assert confirm(client, page) == 302
    assert PolicyStore(db).revision() == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nroles:\n  r: {allow: [nope]}\n", "roles.r.allow[0]"),
        ("version: 1\nroles:\n  r: {containers: {capabilities: [SYS_ADMN]}}\n", "roles.r.containers.capabilities[0]"),
        ("version: 1\nusers:\n  bob: {roles: [ghost]}\n", 'users.bob.roles[0]: unknown role "ghost"'),
        ("version: 2\n", "version: expected 1"),
        ("version: 1\nroles: [\n", "not valid YAML"),
        ("version: 1\nusers:\n  a: {}\n  a: {}\n", "duplicate key 'a'"),
    ],
)
def test_invalid_upload_names_the_key(setup: tuple[Flask, Database, AdminClient], text: str, expected: str) -> None:
    _app, db, client = setup
    status, page = upload(client, text)
    assert status == 400
    assert expected in html.unescape(re.sub(r"<[^>]+>", "", page))  # the text, without the markup
    assert PolicyStore(db).revision() == 0


def test_a_stale_preview_is_not_applied(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    store = PolicyStore(db)
    _status, _page = upload(client, POLICY)
    store.add_user("zed", "someone-else")  # the store moves on meanwhile
    response = client.post("/policy/apply", {"revision": "0", "document": POLICY})
    assert response.status_code == 409
    assert "changed since the preview" in html.unescape(response.text)
    assert "-  zed:" in response.text  # the new diff shows what applying would now remove
    assert [u.name for u in store.list_users()] == ["zed"]
    assert confirm(client, response.text) == 302
    assert [u.name for u in store.list_users()] == ["alice"]


def test_revision_page_shows_what_changed(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    store = PolicyStore(db)
    store.apply_policy(parse_policy(load_mapping(POLICY)), "setup")
    store.add_user("bob", "setup", roles=["viewer"])
    page = client.get("/policy/history/2").text
    assert '<span class="diff-add">+  bob:</span>' in page
    assert "Changes since revision 1" in page
    assert client.get("/policy/history/99").status_code == 404
