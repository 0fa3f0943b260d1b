"""``authzctl breakglass grant|list|end`` in-process: validation, revision bumps, audit events.

The real-daemon proof (denied → allowed within a second → denied again) is tests/e2e/test_breakglass.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from authz.cli.common import ADMIN_PHASE
from authz.config import Config
from authz.storage import Database
from authz.storage.repositories import AuditFilter, AuditStore, BreakglassStore, PolicyStore
from authz.storage.source import StorePolicySource


class CliRun(Protocol):
    code: int
    out: str
    err: str


Cli = Callable[..., CliRun]

POLICY = "version: 1\nusers:\n  dev: {roles: [developer]}\n  gone: {roles: [viewer], disabled: true}\n"


@pytest.fixture
def initialised(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("init").code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    assert cli("policy", "apply", str(policy)).code == 0
    return cli


def stores() -> tuple[Database, PolicyStore, BreakglassStore, AuditStore]:
    db = Database(Config.from_env().database_url)
    return db, PolicyStore(db), BreakglassStore(db), AuditStore(db)


def test_grant_is_stored_bumps_the_revision_and_is_audited(initialised: Cli) -> None:
    db, _policy, grants, audit = stores()
    source = StorePolicySource(db, poll=0)
    before = source.current()
    assert "dev" not in before.breakglass
    result = initialised(
        "breakglass", "grant", "dev", "--ttl", "15m", "--reason", "INC-1  disk full", "--author", "ann"
    )
    assert result.code == 0, result.err
    assert "dev is admin until" in result.out
    after = source.current()
    assert after.revision > before.revision  # running plugins rebuild their snapshot on this
    assert 14 * 60 < after.breakglass["dev"] - time.time() <= 15 * 60
    [grant] = grants.list()
    assert (grant.user, grant.reason, grant.granted_by) == ("dev", "INC-1 disk full", "ann")
    [event] = audit.query(AuditFilter(action="breakglass:*"))
    assert event.event.phase == ADMIN_PHASE
    assert event.event.action == "breakglass:grant"
    assert event.event.user == "ann"
    assert event.event.object == "dev"
    assert "INC-1 disk full" in event.event.reason
    assert event.event.detail["reason"] == "INC-1 disk full"
    assert event.chain is not None  # journaled: part of a hash chain like the plugin's records
    db.dispose()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("nobody", "--reason", "x"), "users.nobody: no such user"),
        (("gone", "--reason", "x"), "user gone is disabled"),
        (("dev", "--ttl", "25h", "--reason", "x"), "longer than 24h"),
        (("dev", "--ttl", "0", "--reason", "x"), "invalid duration"),
        (("dev", "--reason", "   "), "--reason must say why"),
    ],
)
def test_grant_refusals(initialised: Cli, argv: tuple[str, ...], message: str) -> None:
    result = initialised("breakglass", "grant", *argv)
    assert result.code == 2
    assert message in result.err
    db, _policy, grants, audit = stores()
    assert grants.list() == []
    assert audit.query(AuditFilter(action="breakglass:*")) == []
    db.dispose()


def test_grant_without_reason_is_a_usage_error(initialised: Cli) -> None:
    assert initialised("breakglass", "grant", "dev").code == 2


def test_list_and_end(initialised: Cli) -> None:
    assert initialised("breakglass", "grant", "dev", "--reason", "first").code == 0
    listed = initialised("breakglass", "list")
    assert listed.code == 0
    row = listed.out.splitlines()[1].split()
    assert row[1] == "dev"
    assert row[4] == "active"
    db, policy, grants, audit = stores()
    revision = policy.revision()
    ended = initialised("breakglass", "end", "dev", "--author", "bob")
    assert ended.code == 0
    assert "ended (1 grant(s)" in ended.out
    assert policy.revision() > revision
    assert grants.active() == {}
    assert initialised("breakglass", "list").out.splitlines()[1:] == []  # nothing active
    history = initialised("breakglass", "list", "--all").out
    assert "ended " in history
    assert "first" in history
    actions = [r.event.action for r in audit.query(AuditFilter(action="breakglass:*"))]
    assert actions == ["breakglass:grant", "breakglass:end"]
    again = initialised("breakglass", "end", "dev")
    assert again.code == 0
    assert "no active break-glass grant for dev" in again.out
    assert len(audit.query(AuditFilter(action="breakglass:*"))) == 2  # nothing ended, nothing audited
    db.dispose()


def test_breakglass_without_a_subcommand_grants(initialised: Cli) -> None:
    """`authzctl breakglass --ttl 15m --reason R USER` is the form issue 4 names."""
    result = initialised("breakglass", "--ttl", "15m", "--reason", "INC-9 daemon locked", "dev")
    assert result.code == 0, result.err
    assert "dev is admin until" in result.out
    _db, _policy, grants, _audit = stores()
    assert [grant.user for grant in grants.list()] == ["dev"]
    assert initialised("breakglass", "list").code == 0  # the subcommands keep their meaning
    assert initialised("breakglass", "--ttl", "15m", "dev").code == 2  # still no grant without a reason


def test_shorthand_expansion_leaves_other_commands_alone() -> None:
    from authz.cli import expand_shorthands

    assert expand_shorthands(["breakglass", "dev", "--reason", "x"]) == ["breakglass", "grant", "dev", "--reason", "x"]
    assert expand_shorthands(["breakglass", "end", "dev"]) == ["breakglass", "end", "dev"]
    assert expand_shorthands(["breakglass", "--help"]) == ["breakglass", "--help"]
    assert expand_shorthands(["breakglass"]) == ["breakglass"]
    assert expand_shorthands(["user", "list"]) == ["user", "list"]
    assert expand_shorthands(["--version"]) == ["--version"]
