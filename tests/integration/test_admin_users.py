"""Admin UI: docker users, memberships and tokens; every change audited as admin:<verb>."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from admin.testing import AdminClient, make_app
from authz.identity.token import JwtVerifier, KeyStore
from authz.policy.schema import parse_policy
from authz.storage.audit_store import AuditStore
from authz.storage.db import Database
from authz.storage.models import AuditRow
from authz.storage.repositories import PolicyStore, TokenStore

XSS = "<script>alert(1)</script>"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Flask, Database, AdminClient]:
    app, db = make_app(tmp_path)
    PolicyStore(db).apply_policy(
        parse_policy({"version": 1, "groups": {"ml": {"roles": ["operator"]}},
                      "users": {"alice": {"roles": ["developer"]}}}),
        author="setup",
    )  # fmt: skip
    client = AdminClient(app)
    assert client.login().status_code == 302
    return app, db, client


def audit_rows(db: Database, prefix: str = "admin:") -> list[AuditRow]:
    with db.session() as session:
        query = select(AuditRow).where(AuditRow.action.startswith(prefix)).order_by(AuditRow.id)
        return [row for row in session.scalars(query) if row.action != "admin:session-sign-in"]


def test_list_shows_users_with_effective_roles(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, _db, client = setup
    page = client.get("/users").text
    assert ">alice</a>" in page
    assert "developer" in page


def test_create_user_with_roles_and_groups(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    response = client.post("/users/new", {"name": "bob", "roles": ["viewer"], "groups": ["ml"], "tls_cn": "bob.cn"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/users/bob"
    user = PolicyStore(db).get_user("bob")
    assert (user.roles, user.groups, user.tls_cn, user.effective_roles) == (
        ("viewer",), ("ml",), "bob.cn", ("operator", "viewer"))  # fmt: skip
    [event] = audit_rows(db)
    assert (event.action, event.user, event.source, event.object, event.allow) == (
        "admin:user-create", "admin", "admin-ui", "bob", True)  # fmt: skip
    assert event.method == "POST"
    assert event.uri == "/users/new"
    assert "Created" in client.get("/users/bob").text


def test_invalid_user_is_refused_with_the_key_path(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    response = client.post("/users/new", {"name": "bad name!"})
    assert response.status_code == 400
    assert "users.bad name!" in html.unescape(response.text)
    response = client.post("/users/new", {"name": "alice"})
    assert response.status_code == 400
    assert "already exists" in response.text
    assert audit_rows(db) == []


def test_disable_enable_grant_revoke_join_leave(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    store = PolicyStore(db)
    steps = [
        ("/users/alice/disable", {}, lambda u: u.disabled),
        ("/users/alice/enable", {}, lambda u: not u.disabled),
        ("/users/alice/roles/grant", {"role": "viewer"}, lambda u: u.roles == ("developer", "viewer")),
        ("/users/alice/roles/revoke", {"role": "developer"}, lambda u: u.roles == ("viewer",)),
        ("/users/alice/groups/join", {"group": "ml"}, lambda u: u.groups == ("ml",)),
        ("/users/alice/groups/leave", {"group": "ml"}, lambda u: u.groups == ()),
    ]
    for path, data, check in steps:
        response = client.post(path, data)
        assert response.status_code == 302, path
        assert check(store.get_user("alice")), path
    actions = [row.action for row in audit_rows(db)]
    assert actions == ["admin:user-disable", "admin:user-enable", "admin:user-grant", "admin:user-revoke",
                       "admin:user-join", "admin:user-leave"]  # fmt: skip
    # a change that changes nothing is not an event; a bad one is an error message
    client.post("/users/alice/enable")
    page = client.post("/users/alice/roles/revoke", {"role": "admin"}, follow_redirects=True).text
    assert "user has no direct role" in html.unescape(page)
    assert len(audit_rows(db)) == 6


def test_issue_token_shows_it_once_and_it_verifies(setup: tuple[Flask, Database, AdminClient]) -> None:
    app, db, client = setup
    response = client.post("/users/alice/tokens", {"ttl": "3600", "note": "laptop"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = re.search(r'<pre class="secret" id="token-value">([^<]+)</pre>', response.text)
    assert token is not None
    snippet = re.search(r'<pre class="secret" id="docker-config">([^<]+)</pre>', response.text)
    assert snippet is not None
    assert json.loads(html.unescape(snippet.group(1))) == {"HttpHeaders": {"X-Authz-Token": token.group(1)}}
    keys = KeyStore(app.extensions["authz_admin"].settings.base.keys_dir).load_or_create()
    claims = JwtVerifier(keys).verify(token.group(1), time.time())
    assert claims.subject == "alice"
    assert 3590 < claims.expires_at - time.time() <= 3600
    [record] = TokenStore(db).list(user="alice")
    assert (record.jti, record.note) == (claims.token_id, "laptop")
    detail = client.get("/users/alice").text
    assert claims.token_id in detail
    assert token.group(1) not in detail
    [event] = audit_rows(db)
    assert (event.action, event.object) == ("admin:token-issue", claims.token_id)
    assert token.group(1) not in json.dumps(event.detail) + event.reason


def test_revoke_token(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    client.post("/users/alice/tokens", {"ttl": "3600"})
    [record] = TokenStore(db).list(user="alice")
    response = client.post(f"/users/tokens/{record.jti}/revoke")
    assert response.status_code == 302
    [revoked] = TokenStore(db).list(user="alice")
    assert revoked.revoked_at is not None
    assert revoked.revoked_by == "admin"
    assert audit_rows(db)[-1].action == "admin:token-revoke"
    assert client.post("/users/tokens/nope/revoke").status_code == 404


@pytest.mark.parametrize("ttl", ["", "5", str(400 * 86400)])
def test_only_offered_lifetimes_are_accepted(setup: tuple[Flask, Database, AdminClient], ttl: str) -> None:
    _app, db, client = setup
    assert client.post("/users/alice/tokens", {"ttl": ttl}).status_code == 400
    assert TokenStore(db).list(user="alice") == []


def test_no_token_for_a_disabled_user(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    client.post("/users/alice/disable")
    page = client.post("/users/alice/tokens", {"ttl": "3600"}, follow_redirects=True).text
    assert "is disabled" in page
    assert TokenStore(db).list(user="alice") == []


def test_delete_user_revokes_tokens(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, db, client = setup
    client.post("/users/alice/tokens", {"ttl": "3600"})
    assert "revoked" in client.get("/users/alice/delete").text
    assert client.post("/users/alice/delete").status_code == 302
    assert [u.name for u in PolicyStore(db).list_users()] == []
    assert TokenStore(db).list(user="alice")[0].revoked_at is not None
    assert audit_rows(db)[-1].action == "admin:user-delete"
    assert client.get("/users/alice").status_code == 404


def test_user_supplied_text_is_escaped(setup: tuple[Flask, Database, AdminClient]) -> None:
    _app, _db, client = setup
    client.post("/users/alice/tokens", {"ttl": "3600", "note": XSS})
    page = client.get("/users/alice").text
    assert XSS not in page
    assert html.escape(XSS) in page or "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_admin_events_go_through_the_hash_chained_journal(tmp_path: Path) -> None:
    app, db = make_app(tmp_path, audit_journal=True)
    svc = app.extensions["authz_admin"]
    try:
        client = AdminClient(app)
        assert client.login().status_code == 302
        assert client.post("/users/new", {"name": "zoe", "roles": ["viewer"]}).status_code == 302
        deadline = time.monotonic() + 10
        while True:
            svc.shipper.ship_once()
            rows = audit_rows(db)
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        [event] = rows
        assert (event.action, event.user, event.object) == ("admin:user-create", "admin", "zoe")
        assert event.chain is not None
        assert event.chain.startswith("test-node:")
        assert event.seq is not None
        assert event.record_hash is not None
        assert TokenStore(db).list() == []
        assert AuditStore(db).unchained_count() == 0  # sign-in and change both chained
    finally:
        svc.shipper.stop()
        svc.sink.close()
