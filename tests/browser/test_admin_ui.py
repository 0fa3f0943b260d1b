"""The admin UI in a real browser, against the real plugin and a real dockerd.

Flow: sign in, create a role with constraints, create a user, issue a token and use it with the
docker CLI, see the allow and the deny in the audit log, filter it, export it; an auditor cannot
change anything; a POST without the CSRF token is refused; the main pages are screenshotted and
checked for layout breakage (nothing wider than the viewport, key elements visible).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from browserkit import ADMIN_PASSWORD, AUDITOR_PASSWORD, SCREENSHOTS, AdminUi
from playwright.sync_api import BrowserContext, Page, expect

Open = Callable[..., BrowserContext]

# Which elements must be visible on each main page (the page is broken without them).
PAGES = {
    "users": ("/users", ["#users-table", "nav.mainnav", "#sign-out"]),
    "user": ("/users/dave", ["#tokens-table", "#issue-form", "#user-roles"]),
    "roles": ("/roles", ["#roles-table"]),
    "role": ("/roles/reviewer", ["#role-users", "pre.yaml"]),
    "role-edit": ("/roles/reviewer/edit", ["#section-containers", "#save-role"]),
    "policy": ("/policy", ["#policy-yaml", "#download-policy"]),
    "history": ("/policy/history", ["#history-table"]),
    "simulator": ("/simulate", ["#simulate-form"]),
    "audit": ("/audit", ["#audit-table", "#audit-filter", "figure.chart img", "#export-csv"]),
    "objects": ("/objects", ["#objects-table", "#objects-filter"]),
}

LAYOUT_PROBLEMS = """
() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  if (document.documentElement.scrollWidth > window.innerWidth) {
    problems.push(`page is ${document.documentElement.scrollWidth}px wide, viewport ${window.innerWidth}px`);
  }
  const clipped = (el) => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(up).overflowX)) return true;
    }
    return false;
  };
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || clipped(el)) continue;
    if (box.right > width + 1 || box.left < -1) {
      const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + "." + el.className;
      problems.push(`${name}: ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return problems.slice(0, 10);
}
"""


# A wide table scrolls inside its .table-wrap box: that box must fit, the table may be wider.
VISIBLE_BOX = """
(el) => {
  const box = (el.closest(".table-wrap") || el).getBoundingClientRect();
  return {x: box.x, width: box.width, height: box.height};
}
"""


def sign_in(page: Page, ui: AdminUi, name: str, password: str) -> None:
    page.goto(ui.url("/login"))
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    expect(page.locator("#sign-out")).to_be_visible()


def show_eventually(page: Page, url: str, text: str, timeout: float = 15.0) -> None:
    """Reload ``url`` until the audit table shows ``text`` (records reach the table asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        if text in page.locator("#audit-table").inner_text() or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    expect(page.locator("#audit-table")).to_contain_text(text)


def csrf_of(page: Page) -> str:
    token = page.get_attribute("input[name=csrf_token]", "value")
    assert token
    return token


def test_role_user_token_docker_audit_export(admin_ui: AdminUi, browser_context: Open, tmp_path: Path) -> None:
    page = browser_context().new_page()
    sign_in(page, admin_ui, "root", ADMIN_PASSWORD)
    expect(page).to_have_url(admin_ui.url("/users"))

    # a role with constraints
    page.goto(admin_ui.url("/roles/new"))
    page.fill("#name", "builder")
    page.fill("#f-description", "CI builds: own containers, never privileged")
    page.fill("#f-allow", "container:*\nimage:pull")
    page.select_option("#f-ownership", "own")
    page.select_option("#f-containers-privileged", "false")
    page.select_option("#f-containers-run_as_root", "true")
    page.check("#f-containers-capabilities-set")
    page.fill("#f-containers-capabilities", "NET_BIND_SERVICE")
    page.check("#f-images-allow-set")
    page.fill("#f-images-allow", "docker.io/library/*")
    page.click("#save-role")
    expect(page.locator(".flash-ok")).to_contain_text("Role builder created")
    expect(page.locator("pre.yaml")).to_contain_text("privileged: false")

    # a user with that role
    page.goto(admin_ui.url("/users/new"))
    page.fill("#name", "carol")
    page.check("input[name=roles][value=builder]")
    page.click("#create-user")
    expect(page.locator(".flash-ok")).to_contain_text("User carol created")

    # a token, pasted into the docker CLI's config.json as the page says
    page.select_option("#ttl", str(8 * 3600))
    page.fill("#note", "browser test")
    page.click("#issue-form button[type=submit]")
    snippet = json.loads(page.locator("#docker-config").inner_text())
    token = snippet["HttpHeaders"]["X-Authz-Token"]
    config = tmp_path / "carol-docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(snippet))
    page.goto(admin_ui.url("/users/carol"))
    expect(page.locator("#tokens-table")).to_contain_text("active")
    assert token not in page.content()  # shown once only

    # the real docker CLI, through the real plugin
    daemon = admin_ui.stack.daemon
    allowed = daemon.docker("run", "--rm", "--network", "none", "tiny", "true", config_dir=config)
    assert allowed.returncode == 0, allowed.stderr
    denied = daemon.docker("run", "--rm", "--network", "none", "--privileged", "tiny", "true", config_dir=config)
    assert denied.returncode != 0
    assert "privileged containers are not allowed" in denied.stderr

    # both decisions in the audit log (the plugin journals them; they reach the table within moments)
    show_eventually(page, admin_ui.url("/audit?user=carol&decision=deny"), "container:create")
    page.goto(admin_ui.url("/audit"))
    page.fill("#audit-filter input[name=user]", "carol")
    page.click("#audit-filter button[type=submit]")
    rows = page.locator("#audit-table tbody tr")
    expect(rows.filter(has_text="container:create").filter(has_text="allow")).not_to_have_count(0)
    deny_rows = rows.filter(has_text="container:create").filter(has_text="deny")
    expect(deny_rows).to_have_count(1)
    expect(deny_rows).to_contain_text("roles.builder.containers.privileged")
    page.select_option("#audit-filter select[name=decision]", "deny")
    page.click("#audit-filter button[type=submit]")
    assert "decision=deny" in page.url
    assert "user=carol" in page.url
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    page.locator("#audit-table tbody tr a").first.click()
    expect(page.locator("#record-facts")).to_contain_text("privileged containers are not allowed")
    page.go_back()

    # exports of the filtered set
    with page.expect_download() as csv_download:
        page.click("#export-csv")
    rows_csv = list(csv.DictReader(io.StringIO(Path(csv_download.value.path()).read_text())))
    assert [(r["user"], r["action"], r["allow"]) for r in rows_csv] == [("carol", "container:create", "false")]
    with page.expect_download() as jsonl_download:
        page.click("#export-jsonl")
    lines = [json.loads(line) for line in Path(jsonl_download.value.path()).read_text().splitlines()]
    assert [(line["user"], line["allow"], line["rule"]) for line in lines] == [
        ("carol", False, "roles.builder.containers.privileged")]  # fmt: skip
    # admin changes are audited too (through the journal: shipped to the table within moments)
    show_eventually(page, admin_ui.url("/audit?user=root&action=admin:*"), "admin:audit-export")
    for action in ("admin:role-set", "admin:user-create", "admin:token-issue", "admin:session-sign-in"):
        expect(page.locator("#audit-table")).to_contain_text(action)

    # the plugin's metrics, merged on the admin listener
    metrics = page.request.get(admin_ui.url("/metrics")).text()
    assert re.search(r'authz_decisions_total\{action="container:create",result="deny",role="builder"\} [1-9]', metrics)


def test_an_auditor_cannot_change_anything(admin_ui: AdminUi, browser_context: Open) -> None:
    context = browser_context()
    page = context.new_page()
    sign_in(page, admin_ui, "audra", AUDITOR_PASSWORD)
    expect(page).to_have_url(admin_ui.url("/audit"))
    expect(page.locator("nav.mainnav")).not_to_contain_text("Users")
    expect(page.locator("nav.mainnav")).not_to_contain_text("Simulator")
    expect(page.locator("nav.mainnav")).not_to_contain_text("Objects")
    for path in ("/users", "/users/new", "/roles/new", "/roles/builder/edit", "/simulate", "/objects"):
        response = page.goto(admin_ui.url(path))
        assert response is not None, path
        assert response.status == 403, path
    page.goto(admin_ui.url("/roles/builder"))
    expect(page.locator("a", has_text="Edit")).to_have_count(0)
    page.goto(admin_ui.url("/policy"))
    expect(page.locator("#upload-form")).to_have_count(0)
    token = csrf_of(page)
    before = admin_ui.stack.authzctl("policy", "export").stdout
    for path, form in [
        ("/users/new", {"name": "eve"}),
        ("/users/carol/disable", {}),
        ("/roles/builder/delete", {}),
        ("/policy/preview", {"text": "version: 1\n"}),
        ("/simulate", {"user": "carol", "command": "docker ps"}),
    ]:
        response = context.request.post(admin_ui.url(path), form={**form, "csrf_token": token}, max_redirects=0)
        assert response.status == 403, path
    assert admin_ui.stack.authzctl("policy", "export").stdout == before
    assert page.goto(admin_ui.url("/audit")).status == 200  # type: ignore[union-attr]


def test_a_post_without_the_csrf_token_is_refused(admin_ui: AdminUi, browser_context: Open) -> None:
    context = browser_context()
    page = context.new_page()
    sign_in(page, admin_ui, "root", ADMIN_PASSWORD)
    refused = context.request.post(admin_ui.url("/users/new"), form={"name": "nocsrf"}, max_redirects=0)
    assert refused.status == 403
    assert "CSRF" in refused.text()
    accepted = context.request.post(
        admin_ui.url("/users/new"), form={"name": "withcsrf", "csrf_token": csrf_of(page)}, max_redirects=0
    )
    assert accepted.status == 302
    users = admin_ui.stack.authzctl("user", "list").stdout
    assert "withcsrf" in users
    assert "nocsrf" not in users


def test_objects_show_who_created_what_and_filter(admin_ui: AdminUi, browser_context: Open) -> None:
    """The ownership table as the plugin recorded it from real creates through dockerd."""
    stack = admin_ui.stack
    assert stack.docker_as("admin", "volume", "create", "ui-objects-vol").returncode == 0
    created = stack.docker_as("admin", "create", "--name", "ui-objects-box", "--network", "none", "tiny", "true")
    assert created.returncode == 0, created.stderr
    container_id = created.stdout.strip()
    try:
        page = browser_context().new_page()
        sign_in(page, admin_ui, "root", ADMIN_PASSWORD)
        page.click("nav.mainnav >> text=Objects")
        table = page.locator("#objects-table")
        expect(table).to_contain_text("ui-objects-vol")
        row = table.locator("tr", has_text="ui-objects-box")
        expect(row).to_contain_text(container_id[:12])
        expect(row.locator("td").nth(3)).to_have_text("admin")
        page.select_option("select[name=kind]", "volume")
        page.click("#objects-filter button[type=submit]")
        expect(table).to_contain_text("ui-objects-vol")
        expect(table).not_to_contain_text("ui-objects-box")
        page.goto(admin_ui.url("/users/admin"))
        expect(page.locator("#user-objects")).not_to_have_text("0")
        page.click("#user-objects")
        expect(page.locator("input[name=owner]")).to_have_value("admin")
        expect(table).to_contain_text("ui-objects-box")
        page.fill("input[name=owner]", "nobody-at-all")
        page.click("#objects-filter button[type=submit]")
        expect(table).to_contain_text("No objects recorded for this filter.")
    finally:
        stack.docker_as("admin", "rm", "-f", "ui-objects-box")
        stack.docker_as("admin", "volume", "rm", "ui-objects-vol")


REVIEWER = """\
description: Reviews <things> with a long description that must wrap instead of widening the page at all
allow: ["container:list", "container:inspect", "image:list"]
containers: {privileged: false, capabilities: [], max_memory: 1g}
"""


@pytest.fixture(scope="module")
def layout_data(admin_ui: AdminUi) -> None:
    """A role and a user for the pages to show (made with the CLI: independent of the flow test)."""
    admin_ui.stack.authzctl("role", "set", "reviewer", "-", input=REVIEWER)
    admin_ui.stack.authzctl("user", "add", "dave", "--role", "reviewer")
    admin_ui.stack.authzctl("token", "issue", "dave", "--ttl", "1h", "--note", "layout check")


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
@pytest.mark.usefixtures("layout_data")
def test_main_pages_lay_out_within_the_viewport(
    admin_ui: AdminUi, browser_context: Open, width: int, height: int
) -> None:
    page = browser_context(width, height).new_page()
    sign_in(page, admin_ui, "root", ADMIN_PASSWORD)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, (path, selectors) in PAGES.items():
        response = page.goto(admin_ui.url(path))
        assert response is not None, path
        assert response.status == 200, path
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate(LAYOUT_PROBLEMS) == [], f"{path} at {width}px"
        for selector in selectors:
            element = page.locator(selector).first
            expect(element).to_be_visible()
            box = element.evaluate(VISIBLE_BOX)
            assert box is not None, (path, selector)
            assert box["width"] > 0, (path, selector)
            assert box["height"] > 0, (path, selector)
            assert box["x"] >= 0, (path, selector, box)
            assert box["x"] + box["width"] <= width + 1, (path, selector, box)
    page.goto(admin_ui.url("/login"))
    page.screenshot(path=str(SCREENSHOTS / f"login-{width}.png"), full_page=True)
