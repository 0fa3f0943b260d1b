"""Admin UI: sign-in, throttling, re-hashing, sessions, CSRF, headers and who may do what."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Blueprint, Flask
from sqlalchemy import select

from admin import create_app
from admin.accounts import make_context
from admin.permissions import UiPermission, UiRole, can, check_every_view, permission_of
from admin.security import CSP
from admin.testing import PASSWORD, AdminClient, make_app, make_settings
from authz.storage.db import Database
from authz.storage.models import AuditRow, UiAccountRow


@pytest.fixture
def app_db(tmp_path: Path) -> tuple[Flask, Database]:
    return make_app(tmp_path)


@pytest.fixture
def app(app_db: tuple[Flask, Database]) -> Flask:
    return app_db[0]


@pytest.fixture
def admin(app: Flask) -> AdminClient:
    client = AdminClient(app)
    assert client.login().status_code == 302
    return client


@pytest.fixture
def auditor(app: Flask) -> AdminClient:
    client = AdminClient(app)
    assert client.login("auditor").status_code == 302
    return client


def events(db: Database, action: str) -> list[AuditRow]:
    with db.session() as session:
        return list(session.scalars(select(AuditRow).where(AuditRow.action == action).order_by(AuditRow.id)))


def test_sign_in_sets_a_strict_http_only_cookie_and_is_audited(app_db: tuple[Flask, Database]) -> None:
    app, db = app_db
    client = AdminClient(app)
    response = client.login()
    assert response.status_code == 302
    assert response.headers["Location"] == "/users"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    assert client.get("/users").status_code == 200
    [event] = events(db, "admin:session-sign-in")
    assert (event.user, event.source, event.allow, event.roles) == ("admin", "admin-ui", True, ["ui-admin"])


def test_secure_cookie_when_configured(tmp_path: Path) -> None:
    app, _db = make_app(tmp_path, secure_cookies=True)
    assert "Secure" in AdminClient(app).login().headers["Set-Cookie"]


@pytest.mark.parametrize(("trust_proxy", "secure"), [(0, False), (1, True)])
def test_forwarded_proto_counts_only_behind_a_trusted_proxy(tmp_path: Path, trust_proxy: int, secure: bool) -> None:
    app, _db = make_app(tmp_path, trust_proxy=trust_proxy)
    response = AdminClient(app).login(headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.7"})
    assert response.status_code == 302
    assert ("Secure" in response.headers["Set-Cookie"]) is secure


def test_wrong_password_is_refused_and_audited(app_db: tuple[Flask, Database]) -> None:
    app, db = app_db
    client = AdminClient(app)
    response = client.login(password="wrong password!!")
    assert response.status_code == 401
    assert "Wrong account name or password" in response.text
    assert client.get("/users").status_code == 302  # still not signed in
    [event] = events(db, "admin:session-sign-in")
    assert (event.user, event.allow) == ("admin", False)
    # an unknown name gets the same answer, and the audit record names no account
    assert client.login("nobody").status_code == 401
    assert events(db, "admin:session-sign-in")[-1].user is None


def test_five_failures_lock_the_account_with_a_growing_delay(app: Flask) -> None:
    now = [1_000_000.0]
    throttle = app.extensions["authz_admin"].throttle
    throttle.clock = lambda: now[0]
    client = AdminClient(app)
    for _ in range(4):
        assert client.login(password="wrong password!!").status_code == 401
    assert client.login(password="wrong password!!").status_code == 401  # the fifth failure locks
    locked = client.login()  # even the right password is not checked now
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) == 31
    now[0] += 31
    assert client.login(password="wrong password!!").status_code == 401  # sixth failure: 60 s
    now[0] += 59
    assert client.login().status_code == 429
    now[0] += 2
    assert client.login().status_code == 302
    assert throttle.locked("admin", "127.0.0.1") is None  # success clears the account key


def test_one_address_guessing_many_accounts_is_locked(app: Flask) -> None:
    client = AdminClient(app)
    for index in range(10):
        assert client.login(f"guess{index}", "wrong password!!").status_code == 401
    assert client.login().status_code == 429  # the address is locked, whatever the account
    other = AdminClient(app)
    assert other.login(environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 302


def test_a_hash_with_old_parameters_is_replaced_at_sign_in(app_db: tuple[Flask, Database]) -> None:
    app, db = app_db
    old = make_context({"memory_cost": 512, "rounds": 1, "parallelism": 1}).hash(PASSWORD)
    with db.session(write=True) as session:
        row = session.scalar(select(UiAccountRow).where(UiAccountRow.name == "admin"))
        assert row is not None
        row.password_hash = old
    assert "m=512," in old
    assert AdminClient(app).login().status_code == 302
    with db.session() as session:
        new = session.scalar(select(UiAccountRow.password_hash).where(UiAccountRow.name == "admin"))
    assert new is not None
    assert new != old
    assert new.startswith("$argon2id$")
    assert "m=1024," in new


def test_disabling_the_account_or_changing_its_password_ends_the_session(app: Flask, admin: AdminClient) -> None:
    accounts = app.extensions["authz_admin"].accounts
    accounts.set_password("admin", "another long password")
    assert admin.get("/users").status_code == 302
    admin.login(password="another long password")
    assert admin.get("/users").status_code == 200
    accounts.set_disabled("admin", True)
    assert admin.get("/users").status_code == 302
    assert admin.login(password="another long password").status_code == 401


def test_idle_and_old_sessions_end(app: Flask, admin: AdminClient) -> None:
    with admin.client.session_transaction() as session:
        session["seen"] -= 3601
    assert admin.get("/users").status_code == 302
    admin.login()
    with admin.client.session_transaction() as session:
        session["auth_at"] -= 9 * 3600
    assert admin.get("/users").status_code == 302


def test_sign_out(admin: AdminClient) -> None:
    assert admin.post("/logout").status_code == 302
    assert admin.get("/users").status_code == 302


def test_sign_out_ends_every_session_of_the_account_a_copied_cookie_included(app: Flask) -> None:
    first, second, auditor = AdminClient(app), AdminClient(app), AdminClient(app)
    for client, name in ((first, "admin"), (second, "admin"), (auditor, "auditor")):
        assert client.login(name).status_code == 302
    with first.client.session_transaction() as session:
        copied = dict(session)  # what a stolen cookie carries
    assert first.post("/logout").status_code == 302
    thief = AdminClient(app)
    with thief.client.session_transaction() as session:
        session.update(copied)
    assert thief.get("/users").status_code == 302  # the copy is refused
    assert second.get("/users").status_code == 302  # and so is the account's other session
    assert auditor.get("/audit").status_code == 200  # other accounts keep theirs
    assert second.login().status_code == 302
    assert second.get("/users").status_code == 200  # signing in again works


def test_redirect_after_sign_in_stays_on_this_site(app: Flask) -> None:
    client = AdminClient(app)
    assert client.get("/audit?user=x").headers["Location"] == "/login?next=/audit?user%3Dx"
    ok = client.post("/login", {"username": "admin", "password": PASSWORD, "next": "/audit?user=x"})
    assert ok.headers["Location"] == "/audit?user=x"
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        other = AdminClient(app)
        response = other.post("/login", {"username": "admin", "password": PASSWORD, "next": target})
        assert response.headers["Location"] == "/users", target


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_post_without_the_right_csrf_token_is_refused(app: Flask, admin: AdminClient, token: str | None) -> None:
    data = {"name": "mallory"} if token is None else {"name": "mallory", "csrf_token": token}
    response = admin.post("/users/new", data, csrf=False)
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert "mallory" not in [u.name for u in app.extensions["authz_admin"].policy.list_users()]


def test_a_cross_site_post_is_refused_even_with_the_token(admin: AdminClient) -> None:
    response = admin.post("/users/new", {"name": "mallory"}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    response = admin.post("/users/new", {"name": "mallory"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403


def test_sign_in_itself_needs_the_csrf_token(app: Flask) -> None:
    client = AdminClient(app)
    client.get("/login")
    response = client.post("/login", {"username": "admin", "password": PASSWORD}, csrf=False)
    assert response.status_code == 403


def test_security_headers_on_every_page(admin: AdminClient) -> None:
    for path in ("/login", "/users", "/audit", "/policy", "/does-not-exist"):
        response = admin.get(path)
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in CSP
    assert "script-src 'self'" in CSP


def test_pages_carry_no_inline_script_or_style(admin: AdminClient) -> None:
    for path in ("/login", "/users", "/users/new", "/roles", "/roles/developer/edit", "/policy", "/audit", "/simulate"):
        html = admin.get(path).text
        assert "<script" not in html, path
        assert "style=" not in html, path
        assert "<style" not in html, path
        assert not re.search(r"\son[a-z]+=", html), path  # no event handler attributes


def test_every_view_states_its_permission(app: Flask) -> None:
    for endpoint in app.view_functions:
        if endpoint != "static":
            assert permission_of(app, endpoint) is not None, endpoint
    extra = Blueprint("extra", __name__)
    extra.add_url_rule("/open", "open", lambda: "open")
    naked = Flask("naked")
    naked.register_blueprint(extra)
    with pytest.raises(RuntimeError, match=r"extra\.open"):
        check_every_view(naked)


def test_grants_of_the_ui_roles() -> None:
    assert all(can("ui-admin", p) for p in UiPermission)
    assert {p for p in UiPermission if can("ui-auditor", p)} == {UiPermission.AUDIT_READ, UiPermission.POLICY_READ}
    assert not any(can(role, UiPermission.AUDIT_READ) for role in ("", None, "admin", "UI-ADMIN"))
    assert {r.value for r in UiRole} == {"ui-admin", "ui-auditor"}


def _sample(rule: str) -> str:
    values = {"name": "developer", "jti": "0" * 32, "revision": "1", "record_id": "1", "fmt": "csv"}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values.get(m.group(1), "x"), rule)


def test_an_auditor_can_read_but_never_change_anything(app: Flask, auditor: AdminClient) -> None:
    before = app.extensions["authz_admin"].policy.revision()
    posted = 0
    for rule in app.url_map.iter_rules():
        if "POST" not in (rule.methods or set()) or rule.endpoint.startswith("auth."):
            continue
        response = auditor.post(_sample(rule.rule), {"name": "x", "role": "admin", "ttl": "3600", "text": "version: 1"})
        assert response.status_code == 403, rule.rule
        posted += 1
    assert posted >= 15
    assert app.extensions["authz_admin"].policy.revision() == before
    for path in ("/users", "/users/new", "/roles/new", "/roles/developer/edit", "/simulate"):
        assert auditor.get(path).status_code == 403, path
    for path in ("/audit", "/audit/chart.svg", "/audit/export.csv", "/policy", "/policy/history", "/roles"):
        assert auditor.get(path).status_code == 200, path
    page = auditor.get("/roles/developer").text
    assert 'href="/roles/developer/edit"' not in page  # no write controls shown either
    assert "/users" not in auditor.get("/audit").text.split("<main")[0]


def test_unknown_pages_and_signed_out_requests(app: Flask) -> None:
    client = AdminClient(app)
    assert client.get("/users").status_code == 302
    client.get("/login")
    assert client.post("/users/new", {"name": "x"}).status_code == 401


def test_the_app_builds_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'authz.db'}"
    monkeypatch.setenv("AUTHZ_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AUTHZ_DATABASE_URL", url)
    monkeypatch.setenv("AUTHZ_METRICS_ALLOW", "10.0.0.0/8")
    from admin.testing import prepare_store

    prepare_store(url).dispose()
    apps = [create_app(), create_app()]  # two workers
    try:
        settings = apps[0].extensions["authz_admin"].settings
        assert [str(n) for n in settings.metrics_allow] == ["10.0.0.0/8"]
        assert settings.audit_journal  # admin events are chained in production
        key = tmp_path / "state" / "admin" / "session.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert apps[0].secret_key == apps[1].secret_key  # every worker signs with the same key
        assert make_settings(tmp_path, url).secret_key == b"k" * 32
    finally:
        for app in apps:
            services = app.extensions["authz_admin"]
            services.shipper.stop()
            services.sink.close()


def test_public_surface() -> None:
    import admin
    import authz.metrics

    assert admin.__all__ == ["create_app"]
    assert all(hasattr(authz.metrics, name) for name in authz.metrics.__all__)
