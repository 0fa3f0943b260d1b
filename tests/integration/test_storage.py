"""The store against real databases: SQLite files per test, PostgreSQL for tests marked so."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, text

from authz.audit import AuditEvent
from authz.errors import PolicyError, StoreError
from authz.policy.builtin import BUILTIN_ROLES
from authz.policy.schema import parse_policy, parse_role
from authz.storage import Database, current_revision, head_revision, migrate
from authz.storage.db import BUSY_TIMEOUT_MS, leave_checkpoints_to_others
from authz.storage.models import Base
from authz.storage.repositories import (
    AuditFilter,
    AuditStore,
    BreakglassStore,
    OwnershipRepository,
    PolicyStore,
    RecordNotFound,
    TokenStore,
)
from authz.storage.source import StorePolicySource
from authz.storage.yamlio import export_yaml, load_mapping

POLICY_YAML = """
version: 1
settings:
  anonymous_role: null
  default_mode: enforce
roles:
  builder:
    description: builds images
    extends: [viewer]
    allow: ["image:build", "image:pull"]
    containers:
      max_memory: 2g
groups:
  ml-team: {roles: [builder]}
users:
  alice: {roles: [], groups: [ml-team]}
  bob: {roles: [admin]}
  ci: {roles: [developer], tls_cn: ci.example.com}
"""


def policy_from(text_: str) -> Any:
    return parse_policy(load_mapping(text_))


def event_(**changes: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "time": 1_700_000_000.0,
        "request_id": "r1",
        "node": "n1",
        "phase": "request",
        "user": "alice",
        "source": "token",
        "roles": ("developer",),
        "action": "container:create",
        "method": "POST",
        "uri": "/v1.41/containers/create",
        "object": None,
        "allow": True,
        "mode": "enforce",
        "rule": "roles.developer.allow[0]",
        "role": "developer",
        "reason": "allowed",
        "message": "",
    }
    base.update(changes)
    return AuditEvent(**base)


# ---------------------------------------------------------------- schema and engine


def test_migration_matches_models_and_is_idempotent(store_db: Database) -> None:
    with store_db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []
    assert current_revision(store_db) == head_revision()
    assert migrate(store_db) == head_revision()  # second run is a no-op
    names = set(inspect(store_db.engine).get_table_names())
    assert {"users", "groups", "roles", "tokens", "policy_state", "audit_records", "ownership"} <= names
    assert PolicyStore(store_db).revision() == 0


def test_sqlite_pragmas_on_every_connection(store_db: Database) -> None:
    for _ in range(2):
        with store_db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        store_db.engine.dispose()  # the next round gets a brand-new connection


def test_sqlalchemy_errors_become_store_errors(tmp_path: Path) -> None:
    unmigrated = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError, match="authzctl migrate"):
        PolicyStore(unmigrated).revision()
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="database error"):
        PolicyStore(Database(f"sqlite:///{tmp_path / 'dir.db'}")).revision()
    with pytest.raises(StoreError, match="unsupported database"):
        Database("mysql://x/y")


# ---------------------------------------------------------------- policy document


def test_apply_export_round_trip_and_history(store_db: Database) -> None:
    store = PolicyStore(store_db)
    first = store.apply_policy(policy_from(POLICY_YAML), "alice-admin")
    assert first.changed
    assert first.revision == 1
    assert "+  builder:" in first.diff
    assert "+  ci:" in first.diff
    exported = export_yaml(store.load_policy())
    again = store.apply_policy(policy_from(exported), "alice-admin")
    assert (again.diff, again.revision, again.changed) == ("", 1, False)  # no-op uses no revision
    assert export_yaml(store.load_policy()) == exported
    entry = store.history(1)[0]
    assert (entry.revision, entry.author) == (1, "alice-admin")
    assert "users +alice +bob +ci" in entry.summary
    assert entry.document == load_mapping(exported)


def test_dry_run_changes_nothing(store_db: Database) -> None:
    store = PolicyStore(store_db)
    store.apply_policy(policy_from(POLICY_YAML), "admin")
    before = export_yaml(store.load_policy())
    changed = POLICY_YAML.replace("bob: {roles: [admin]}", "bob: {roles: [viewer]}")
    result = store.apply_policy(policy_from(changed), "admin", dry_run=True)
    assert "-    - admin" in result.diff
    assert "+    - viewer" in result.diff
    assert (result.revision, result.changed) == (1, False)
    assert export_yaml(store.load_policy()) == before
    assert store.revision() == 1


def test_builtin_roles_available_and_overridable(store_db: Database) -> None:
    store = PolicyStore(store_db)
    policy = store.load_policy()
    assert set(BUILTIN_ROLES) <= set(policy.roles)
    assert policy.roles["viewer"] == BUILTIN_ROLES["viewer"]
    override = parse_role("viewer", {"description": "site viewer", "allow": ["system:ping"]})
    store.set_role(override, "admin")
    loaded = store.load_policy().roles["viewer"]
    assert (loaded.allow, loaded.builtin) == (("system:ping",), False)
    assert "viewer:" in export_yaml(store.load_policy())  # overrides are exported …
    assert "developer:" not in export_yaml(store.load_policy())  # … built-ins are not
    store.remove_role("viewer", "admin")
    assert store.load_policy().roles["viewer"] == BUILTIN_ROLES["viewer"]
    with pytest.raises(PolicyError, match="built-in role and cannot be removed"):
        store.remove_role("viewer", "admin")


def test_apply_removes_users_and_revokes_their_tokens(store_db: Database) -> None:
    store, tokens = PolicyStore(store_db), TokenStore(store_db)
    store.apply_policy(policy_from(POLICY_YAML), "admin")
    now = time.time()
    tokens.record("jti-bob", "bob", kid="k", issued_at=now, expires_at=now + 3600)
    without_bob = POLICY_YAML.replace("  bob: {roles: [admin]}\n", "")
    result = store.apply_policy(policy_from(without_bob), "admin")
    assert "-  bob:" in result.diff
    assert "bob" not in store.load_policy().users
    assert tokens.get("jti-bob").revoked_by == "admin"
    assert "jti-bob" in tokens.revoked_ids()


def test_apply_swaps_tls_names_in_one_transaction(store_db: Database) -> None:
    store = PolicyStore(store_db)
    doc = "version: 1\nusers:\n  a: {roles: [viewer], tls_cn: one}\n  b: {roles: [viewer], tls_cn: two}\n"
    store.apply_policy(policy_from(doc), "admin")
    swapped = doc.replace("tls_cn: one", "tls_cn: X").replace("tls_cn: two", "tls_cn: one").replace("X", "two")
    store.apply_policy(policy_from(swapped), "admin")
    users = store.load_policy().users
    assert (users["a"].tls_cn, users["b"].tls_cn) == ("two", "one")


def test_apply_rewrites_only_the_users_that_changed(store_db: Database) -> None:
    """A change to one user must not rewrite the others' rows: at 1,000 users that held SQLite's
    write lock for 2 s. Every kind of change still lands (roles, groups, TLS name, disabled, a
    user added, a group removed under its members)."""
    from sqlalchemy import select

    from authz.storage.models import UserRow

    store = PolicyStore(store_db)
    doc = (
        "version: 1\ngroups:\n  g1: {roles: [viewer]}\n  g2: {roles: [developer]}\n"
        "users:\n"
        "  u_same: {roles: [viewer], groups: [g1]}\n"
        "  u_roles: {roles: [viewer]}\n"
        "  u_groups: {roles: [], groups: [g1]}\n"
        "  u_tls: {roles: [viewer], tls_cn: old.example.com}\n"
        "  u_paused: {roles: [viewer]}\n"
        "  u_ingone: {roles: [viewer], groups: [g2]}\n"
    )
    store.apply_policy(policy_from(doc), "admin")

    def rows() -> dict[str, set[tuple[str, int]]]:
        with store_db.session() as session:
            names = dict(session.execute(select(UserRow.id, UserRow.name)).all())
            found: dict[str, set[tuple[str, int]]] = {name: set() for name in names.values()}
            # SQLite's rowid: a row deleted and inserted again gets a new one
            for row_id, uid in session.execute(text("SELECT rowid, user_id FROM user_roles")):
                found[names[uid]].add(("role", row_id))
            for row_id, uid in session.execute(text("SELECT rowid, user_id FROM user_groups")):
                found[names[uid]].add(("group", row_id))
            return found

    before = rows()
    changed = (
        doc.replace("  g2: {roles: [developer]}\n", "")
        .replace("u_roles: {roles: [viewer]}", "u_roles: {roles: [developer]}")
        .replace("u_groups: {roles: [], groups: [g1]}", "u_groups: {roles: [], groups: []}")
        .replace("tls_cn: old.example.com", "tls_cn: new.example.com")
        .replace("u_paused: {roles: [viewer]}", "u_paused: {roles: [viewer], disabled: true}")
        .replace("u_ingone: {roles: [viewer], groups: [g2]}", "u_ingone: {roles: [viewer]}")
        + "  u_new: {roles: [viewer], groups: [g1]}\n"
    )
    store.apply_policy(policy_from(changed), "admin")
    assert export_yaml(store.load_policy()) == export_yaml(policy_from(changed))
    after = rows()
    assert after["u_same"] == before["u_same"]  # not deleted and inserted again
    assert after["u_roles"] != before["u_roles"]
    assert after["u_new"]


def test_an_apply_prepared_while_another_change_lands_is_prepared_again(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diff is made without the write lock; a change that commits between it and the write is
    noticed (the revision moved) and the apply is diffed again against it."""
    store, other = PolicyStore(store_db), PolicyStore(store_db)
    store.apply_policy(policy_from(POLICY_YAML), "admin")
    with_dave = POLICY_YAML + "  dave: {roles: [viewer]}\n"
    wanted = POLICY_YAML.replace("bob: {roles: [admin]}", "bob: {roles: [viewer]}")
    prepare = store._prepare_apply
    prepared_at: list[int] = []

    def prepare_then_someone_else_applies(session: Any, new_doc: dict[str, Any]) -> Any:
        prepared = prepare(session, new_doc)
        prepared_at.append(prepared.revision)
        if len(prepared_at) == 1:
            other.apply_policy(policy_from(with_dave), "other-admin")
        return prepared

    monkeypatch.setattr(store, "_prepare_apply", prepare_then_someone_else_applies)
    result = store.apply_policy(policy_from(wanted), "admin")
    assert prepared_at == [1, 2]
    assert result.revision == 3
    assert "-  dave:" in result.diff  # diffed against what was there when it was written
    assert export_yaml(store.load_policy()) == export_yaml(policy_from(wanted))


# ---------------------------------------------------------------- directory changes


def test_directory_changes_bump_revision_and_validate(store_db: Database) -> None:
    store = PolicyStore(store_db)
    assert store.add_group("devs", "admin", roles=["developer"]).revision == 1
    assert store.add_user("carol", "admin", roles=["viewer"], groups=["devs"], tls_cn="carol.example").revision == 2
    carol = store.get_user("carol")
    assert carol.effective_roles == ("developer", "viewer")
    assert store.grant_user_role("carol", "viewer", "admin").changed is False  # already granted
    assert store.revision() == 2
    with pytest.raises(PolicyError, match=r'users\.carol\.roles\[0\]: unknown role "nope"'):
        store.grant_user_role("carol", "nope", "admin")
    assert store.revision() == 2  # the failed change was rolled back
    assert store.get_user("carol").roles == ("viewer",)
    with pytest.raises(PolicyError, match="already the tls_cn of carol"):
        store.add_user("dave", "admin", tls_cn="carol.example")
    with pytest.raises(PolicyError, match="no such group"):
        store.join_group("carol", "ghosts", "admin")
    with pytest.raises(PolicyError, match="has no direct role"):
        store.revoke_user_role("carol", "admin", "admin")
    store.set_user_disabled("carol", True, "admin")
    assert store.load_policy().users["carol"].disabled is True
    store.leave_group("carol", "devs", "admin")
    assert store.get_user("carol").effective_roles == ("viewer",)
    store.remove_group("devs", "admin")
    store.remove_user("carol", "admin")
    assert store.load_policy().users == {}
    assert [h.summary for h in store.history(3)] == [
        "user rm carol",
        "group rm devs",
        "user leave carol devs",
    ]


def test_role_rm_refused_while_in_use(store_db: Database) -> None:
    store = PolicyStore(store_db)
    store.set_role(parse_role("ops", {"allow": ["container:list"]}), "admin")
    store.set_role(parse_role("ops2", {"extends": ["ops"], "allow": []}), "admin")
    store.add_user("erin", "admin", roles=["ops"])
    store.add_group("g", "admin", roles=["ops"])
    with pytest.raises(PolicyError, match=r"roles\.ops: in use by users erin; groups g; roles ops2 \(extends\)"):
        store.remove_role("ops", "admin")
    store.remove_user("erin", "admin")
    store.remove_group("g", "admin")
    store.remove_role("ops2", "admin")
    revision = store.revision()
    store.remove_role("ops", "admin")
    assert store.revision() == revision + 1
    assert "ops" not in store.load_policy().roles
    with pytest.raises(PolicyError, match="no such role"):
        store.remove_role("ops", "admin")


# ---------------------------------------------------------------- tokens and break-glass


def test_tokens_record_list_revoke(store_db: Database) -> None:
    tokens, store = TokenStore(store_db), PolicyStore(store_db)
    now = time.time()
    tokens.record("t1", "alice", kid="k1", issued_at=now, expires_at=now + 60, note="laptop")
    tokens.record("t2", "alice", kid="k1", issued_at=now, expires_at=now + 60)
    tokens.record("t3", "bob", kid="k1", issued_at=now - 7200, expires_at=now - 3600 * 25)
    assert [t.jti for t in tokens.list(user="alice")] == ["t1", "t2"]
    assert tokens.get("t1").note == "laptop"
    assert tokens.revoked_ids() == frozenset()
    assert tokens.revoke("t1", "admin").revoked_by == "admin"
    assert store.revision() == 1  # plugins must notice the revocation
    tokens.revoke("t1", "admin")  # again: no error, no new revision
    assert store.revision() == 1
    assert tokens.revoke_user("alice", "admin") == 1
    assert store.revision() == 2
    assert tokens.revoke_user("alice", "admin") == 0
    tokens.revoke("t3", "admin")  # expired more than a day ago: no longer needs listing
    assert tokens.revoked_ids() == frozenset({"t1", "t2"})
    with pytest.raises(RecordNotFound):
        tokens.revoke("nope", "admin")


def test_breakglass_grants(store_db: Database) -> None:
    grants = BreakglassStore(store_db)
    now = time.time()
    grants.grant("alice", now + 600, "incident 42", "admin")
    grants.grant("bob", now - 1, "already over", "admin")
    assert set(grants.active()) == {"alice"}
    assert grants.active()["alice"] == pytest.approx(now + 600, abs=1e-3)
    assert grants.end("alice", "admin") == 1
    assert grants.active() == {}
    assert len(grants.list()) == 2
    with pytest.raises(StoreError, match="needs a reason"):
        grants.grant("alice", now + 60, "  ", "admin")


# ---------------------------------------------------------------- audit


def test_audit_write_query_tail_export(store_db: Database) -> None:
    audit = AuditStore(store_db)
    audit.write(event_(time=100.0, user="alice", action="container:create", allow=True, detail={"k": "v"}))
    audit.write(event_(time=200.0, user="bob", action="container:exec", allow=False, warnings=("w",)))
    audit.write(event_(time=300.0, user="alice", action="image:pull", allow=False, roles=()))
    assert [r.event.user for r in audit.query()] == ["alice", "bob", "alice"]
    assert audit.query()[0].event == event_(time=100.0, detail={"k": "v"})  # every field survives
    assert [r.event.time for r in audit.query(AuditFilter(user="alice"))] == [100.0, 300.0]
    assert [r.event.time for r in audit.query(AuditFilter(allow=False))] == [200.0, 300.0]
    assert [r.event.time for r in audit.query(AuditFilter(action="container:*"))] == [100.0, 200.0]
    assert [r.event.time for r in audit.query(AuditFilter(since=200.0, until=300.0))] == [200.0]
    assert [r.event.time for r in audit.tail(limit=2)] == [200.0, 300.0]

    out = io.StringIO()
    assert audit.export(out, "jsonl", AuditFilter(user="bob")) == 1
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert (record["user"], record["warnings"], record["allow"]) == ("bob", ["w"], False)
    assert record["time_iso"].startswith("1970-01-01T00:03:20")
    out = io.StringIO()
    assert audit.export(out, "csv", AuditFilter(allow=True)) == 1
    header, row = out.getvalue().splitlines()
    assert header.startswith("id,time,request_id,")
    assert ",true," in row
    assert '"{""k"":""v""}"' in row


def test_audit_tail_follow_sees_new_records(store_db: Database) -> None:
    audit = AuditStore(store_db)
    audit.write(event_(time=1.0))
    seen: list[float] = []
    polls = iter(range(100))

    def sleep(_seconds: float) -> None:
        if next(polls) == 0:
            audit.write(event_(time=2.0))  # arrives while tail waits

    for record in audit.tail(limit=5, follow=True, poll=0, stop=lambda: len(seen) >= 2, sleep=sleep):
        seen.append(record.event.time)
    assert seen == [1.0, 2.0]


# ---------------------------------------------------------------- ownership


@pytest.mark.parametrize("hold_connections", [False, True], ids=["pooled", "held"])
def test_ownership_resolution(store_db: Database, hold_connections: bool) -> None:
    own = OwnershipRepository(store_db, hold_connections=hold_connections)
    own.record("container", "abc123" + "0" * 58, "/web", "alice")
    own.record("container", "abd999" + "0" * 58, "db", "bob")
    own.record("container", "web" + "f" * 61, "other", "carol")  # an ID that starts like a name
    own.record("network", "abc123" + "0" * 58, "net", "dave")
    assert own.owner_of("container", "abc123" + "0" * 58) == "alice"  # full ID
    assert own.owner_of("container", "web") == "alice"  # exact name beats the ID prefix "web…"
    assert own.owner_of("container", "/web") == "alice"  # the daemon's "/name" form
    assert own.owner_of("container", "abc") == "alice"  # unique prefix
    assert own.owner_of("container", "ab") is None  # ambiguous prefix
    assert own.owner_of("container", "ABC") is None  # IDs are case-sensitive hex
    assert own.owner_of("container", "a%") is None  # LIKE wildcards are literal
    assert own.owner_of("container", "") is None
    assert own.owner_of("network", "abc") == "dave"  # kinds are separate namespaces
    own.rename("container", "web", "/frontend")
    assert own.owner_of("container", "frontend") == "alice"
    assert own.owner_of("container", "web") == "carol"  # now only the ID prefix matches
    own.record("container", "fff" + "1" * 61, "frontend", "eve")  # the daemon reused the name
    assert own.owner_of("container", "frontend") == "eve"
    own.record("container", "abc123" + "0" * 58, None, "mallory")  # a repeated create never transfers
    assert own.owner_of("container", "abc123") == "alice"
    own.record("container", "abc123" + "0" * 58, "renamed", "mallory")  # nor does one with a name
    assert own.owner_of("container", "renamed") == "alice"
    assert own.owner_of("container", "abc123") == "alice"
    own.rename("container", "renamed", "web")
    own.forget("container", "abc1")
    assert own.owner_of("container", "abc123" + "0" * 58) is None
    assert own.owner_of("container", "ab") == "bob"  # the prefix is unique again
    own.record("container", "cafe" + "2" * 60, "caf", "frank")  # its name is also a prefix of its ID
    assert own.owner_of("container", "caf") == "frank"  # found twice by the query, counted once


@pytest.mark.parametrize("hold_connections", [False, True], ids=["pooled", "held"])
def test_volumes_and_execs_resolve_by_exact_id_only(store_db: Database, hold_connections: bool) -> None:
    """The daemon finds volumes by exact name and execs by exact ID: neither a prefix nor a name
    may resolve (or forget) one. Forgetting "data" once forgot the record of "data2"."""
    own = OwnershipRepository(store_db, hold_connections=hold_connections)
    own.record("volume", "data2", "data2", "alice")
    own.record("exec", "e" * 64, None, "bob")
    assert own.owner_of("volume", "data2") == "alice"
    assert own.owner_of("volume", "data") is None
    assert own.owner_of("exec", "e" * 12) is None
    own.forget("volume", "data")  # another volume, made before the plugin: not data2
    own.forget("exec", "e" * 12)
    assert own.owner_of("volume", "data2") == "alice"
    assert own.owner_of("exec", "e" * 64) == "bob"
    own.forget("volume", "data2")
    assert own.owner_of("volume", "data2") is None


@pytest.mark.parametrize("hold_connections", [False, True], ids=["pooled", "held"])
def test_names_and_prefixes_resolve_among_the_nodes_own_records(store_db: Database, hold_connections: bool) -> None:
    """Fleet mode: each host's daemon has its own names. node1's "web" and node2's "web" are two
    containers; a create on node2 does not take the name from node1's record; records for no node
    (from before nodes were recorded) still count on every node."""
    one = OwnershipRepository(store_db, hold_connections=hold_connections, node="node1")
    two = OwnershipRepository(store_db, hold_connections=hold_connections, node="node2")
    anywhere = OwnershipRepository(store_db)
    one.record("container", "a1" + "0" * 62, "web", "alice")
    two.record("container", "b2" + "0" * 62, "web", "bob")
    assert one.owner_of("container", "web") == "alice"
    assert two.owner_of("container", "web") == "bob"
    assert one.owner_of("container", "b2") is None  # node2's container is no prefix on node1
    assert one.owner_of("container", "b2" + "0" * 62) is None
    assert anywhere.owner_of("container", "web") is None  # unscoped: two records claim the name
    anywhere.record("container", "c3" + "0" * 62, "legacy", "carol")  # made before nodes were recorded
    assert one.owner_of("container", "legacy") == "carol"
    assert two.owner_of("container", "c3") == "carol"
    one.rename("container", "web", "front")
    assert one.owner_of("container", "front") == "alice"
    assert two.owner_of("container", "web") == "bob"  # untouched by node1's rename
    two.forget_named("container", "front")  # node2 has no "front": node1's record stays
    assert one.owner_of("container", "front") == "alice"
    assert [(r.object_id[:2], r.node) for r in anywhere.list(kind="container")] == [
        ("a1", "node1"), ("b2", "node2"), ("c3", ""),
    ]  # fmt: skip
    assert [r.object_id[:2] for r in one.list(nodes={"node1"})] == ["a1"]
    assert [r.object_id[:2] for r in one.list(nodes={"node1", ""})] == ["a1", "c3"]


def test_a_volume_name_is_one_object_per_node(store_db: Database) -> None:
    """A volume's ID is its name, and every host's daemon has its own "data": alice's on node1 and
    bob's on node2 are two records, each node judging by its own; forgetting one leaves the other."""
    one = OwnershipRepository(store_db, node="node1")
    two = OwnershipRepository(store_db, node="node2")
    one.record("volume", "data", "data", "alice")
    two.record("volume", "data", "data", "bob")
    two.record("volume", "data", "data", "mallory")  # a repeated create never transfers, per node too
    assert (one.owner_of("volume", "data"), two.owner_of("volume", "data")) == ("alice", "bob")
    OwnershipRepository(store_db).record("volume", "cache", "cache", "carol")  # recorded for no node
    two.record("volume", "cache", "cache", "dave")  # node2's own "cache": its record wins there
    assert (one.owner_of("volume", "cache"), two.owner_of("volume", "cache")) == ("carol", "dave")
    one.forget("volume", "data")
    assert (one.owner_of("volume", "data"), two.owner_of("volume", "data")) == (None, "bob")
    stale = [r for r in two.list(kind="volume", nodes={"node2"}) if r.object_id == "data"]
    assert two.forget_stale(stale, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert two.owner_of("volume", "data") is None


def test_forget_named_matches_a_name_and_never_an_id_prefix(store_db: Database) -> None:
    own = OwnershipRepository(store_db)
    own.record("network", "cafe" + "0" * 60, "backend", "alice")
    own.record("network", "beef" + "0" * 60, "cafe", "bob")
    own.forget_named("network", "caf")
    own.forget_named("network", "beef")
    assert own.owner_of("network", "backend") == "alice"
    assert own.owner_of("network", "cafe") == "bob"
    own.forget_named("network", "cafe")  # the network named "cafe", not the one whose ID starts so
    assert own.owner_of("network", "beef" + "0" * 60) is None
    assert own.owner_of("network", "cafe" + "0" * 60) == "alice"


def test_a_recorded_owner_is_known_without_asking_and_never_a_second_creators(store_db: Database) -> None:
    """``record`` reads back the owner it leaves stored: the next lookup of that ID needs no query,
    and a repeated create by someone else teaches the repository nothing false."""
    own = OwnershipRepository(store_db, hold_connections=True)
    first, second = "e" * 64, "f" * 64
    own.record("container", first, "web", "alice")
    own.record("container", second, None, "bob")
    own.record("container", second, None, "mallory")  # DO NOTHING: no row back, nothing learnt
    own.record("container", first, "web2", "mallory")  # DO UPDATE: the stored owner comes back
    with store_db.engine.begin() as connection:  # behind the repository's back
        connection.exec_driver_sql("DELETE FROM ownership")
    assert own.owner_of("container", first) == "alice"  # from what record read back
    assert own.owner_of("container", second) == "bob"
    assert own.owner_of("container", "web2") is None  # names always ask the store
    assert OwnershipRepository(store_db).owner_of("container", first) is None  # another process asks


def test_forget_by_full_id_wins_over_a_name_that_spells_it(store_db: Database) -> None:
    """A full ID matches before a name (as the daemon resolves it); names and prefixes still work."""
    own = OwnershipRepository(store_db, hold_connections=True)
    spelled = "a" * 64
    own.record("container", spelled, "first", "alice")
    own.record("container", "b" * 64, spelled, "bob")  # a container named like the other's ID
    own.record("container", "c" * 64, "third", "carol")
    own.forget("container", spelled)
    assert own.owner_of("container", "first") is None
    assert own.owner_of("container", "b" * 64) == "bob"
    own.forget("container", spelled)  # now only the name matches
    assert own.owner_of("container", "b" * 64) is None
    own.forget("container", "ccc")  # a unique prefix
    assert own.owner_of("container", "third") is None
    own.forget("container", "nothing-here")  # unknown: nothing happens


def test_the_held_writer_recovers_after_an_error_and_after_the_engine_is_disposed(store_db: Database) -> None:
    """A failed write leaves no half transaction behind, and the writes after it, and after the
    engine's disposal (what a damaged or replaced file causes), land on a working connection."""
    from authz.storage.raw import RawStatements

    raw = RawStatements(store_db, {"put": text("INSERT INTO ownership (kind, object_id, owner, created_at) "
                                                "VALUES ('container', :id, 'alice', '2026-01-01 00:00:00')")},
                        hold_connections=True)  # fmt: skip

    def put(*ids: str, then: Exception | None = None) -> None:
        with raw.transaction(write=True) as tx:
            for object_id in ids:
                tx.run("put", {"id": object_id})
            if then is not None:
                raise then

    put("one")
    with pytest.raises(StoreError, match="UNIQUE"):
        put("two", "one")  # the constraint fails: the whole transaction is undone
    with pytest.raises(RuntimeError):
        put("three", then=RuntimeError("the caller's own failure"))  # rolled back, the connection kept
    store_db.engine.dispose()
    put("four")
    with store_db.engine.connect() as connection:
        ids = connection.exec_driver_sql("SELECT object_id FROM ownership ORDER BY object_id").scalars().all()
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
    assert ids == ["four", "one"]


def test_held_readers_see_every_commit_and_share_out_under_load(store_db: Database) -> None:
    """Reads on held connections see each write as it commits (no snapshot stays open on them),
    keep their busy timeout, and more threads than connections still all get answers."""
    import threading

    from authz.storage.raw import RawStatements

    raw = RawStatements(store_db, {"count": text("SELECT count(*) FROM ownership"),
                                   "timeout": text("PRAGMA busy_timeout")}, hold_connections=True)  # fmt: skip
    own = OwnershipRepository(store_db, hold_connections=True)

    def count() -> int:
        with raw.transaction(write=False) as tx:
            return int(tx.run("count", {})[0][0])

    with raw.transaction(write=False) as tx:
        assert tx.run("timeout", {})[0][0] == BUSY_TIMEOUT_MS
    for i in range(5):
        own.record("container", f"{i:064x}", f"n{i}", "alice")
        assert count() == i + 1  # a reader that kept its snapshot would lag behind
    errors: list[BaseException] = []
    seen: list[int] = []

    def reader() -> None:
        try:
            for _ in range(50):
                seen.append(count())
                assert own.owner_of("container", "n3") == "alice"
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(12)]  # three times the held readers
    for thread in threads:
        thread.start()
    own.record("container", "f" * 64, "late", "bob")
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(seen) == 600
    assert set(seen) <= {5, 6}
    store_db.engine.dispose()  # retires the held readers; the next read opens a new one
    assert count() == 6
    assert own.owner_of("container", "late") == "bob"


def test_ownership_lookup_searches_indexes_only(store_db: Database) -> None:
    """The lookup runs on every action on an existing object: a scan would grow with the table."""
    from authz.storage.ownership import _CANDIDATES

    for node in ("", "node1"):  # the node is a filter on the rows the indexes find
        params = {"kind": "container", "ref": "abc", "name": "abc", "upper": "abc\uffff", "node": node}
        with store_db.engine.connect() as connection:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {_CANDIDATES}", params).all()
        details = [row[-1] for row in plan]
        assert any("USING INDEX" in d for d in details), details
        assert not [d for d in details if d.startswith("SCAN ownership")], details


def _hold_write_lock(db_file: Path, seconds: float, held: Any) -> Any:
    """A thread holding SQLite's write lock on ``db_file`` for ``seconds`` (``held`` set once it has it)."""
    import sqlite3
    import threading

    def hold() -> None:
        other = sqlite3.connect(db_file, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        other.execute("ROLLBACK")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return thread


@pytest.mark.parametrize("hold_connections", [False, True], ids=["pooled", "held"])
def test_raw_writes_wait_for_the_write_lock_and_keep_the_busy_timeout(
    store_db: Database, tmp_path: Path, hold_connections: bool
) -> None:
    """``RawStatements`` polls for the lock itself; the wait is still bounded by the busy timeout,
    and no connection goes back to the pool without it (the held writer's never goes back)."""
    import threading

    from authz.storage.source import bounded_database

    own = OwnershipRepository(store_db, hold_connections=hold_connections)
    db_file = Path(store_db.engine.url.database or "")
    holder = _hold_write_lock(db_file, 0.3, threading.Event())
    own.record("container", "c" * 64, "waited", "alice")  # queued behind the holder, then written
    holder.join()
    assert own.owner_of("container", "waited") == "alice"
    with store_db.engine.connect() as connection:  # a pooled connection: its busy_timeout is intact
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS

    impatient = bounded_database(str(store_db.engine.url), 0.05)
    try:
        late = OwnershipRepository(impatient, hold_connections=hold_connections)
        holder = _hold_write_lock(db_file, 0.5, threading.Event())
        with pytest.raises(StoreError, match="database is locked"):
            late.record("container", "d" * 64, "late", "bob")
        holder.join()
        with impatient.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 50
    finally:
        impatient.dispose()
    assert own.owner_of("container", "late") is None


# ---------------------------------------------------------------- StorePolicySource


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_queries(db: Database) -> list[str]:
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    return statements


def test_source_polls_revision_and_rebuilds_only_on_change(store_db: Database) -> None:
    clock = FakeClock()
    source = StorePolicySource(store_db, poll=0.5, monotonic=clock)
    store, tokens, grants = PolicyStore(store_db), TokenStore(store_db), BreakglassStore(store_db)
    first = source.current()
    assert first.revision == 0
    assert "viewer" in first.policy.roles
    queries = count_queries(store_db)
    for _ in range(50):
        assert source.current() is first
    assert queries == []  # within the poll interval: no database access at all
    store.add_user("zed", "admin", roles=["viewer"])
    clock.now += 0.4
    assert source.current() is first  # change not visible before the interval is over
    clock.now += 0.2
    second = source.current()
    assert second.revision == 1
    assert "zed" in second.policy.users
    clock.now += 1
    queries.clear()
    assert source.current() is second  # revision unchanged: same snapshot object, one cheap query
    assert [q.split()[:2] for q in queries if q != "BEGIN"] == [["SELECT", "policy_state.revision"]]
    now = time.time()
    tokens.record("j1", "zed", kid="k", issued_at=now, expires_at=now + 60)
    tokens.revoke("j1", "admin")
    grants.grant("zed", now + 60, "incident", "admin")
    clock.now += 1
    third = source.current()
    assert third.revoked_tokens == frozenset({"j1"})
    assert set(third.breakglass) == {"zed"}


def test_source_prepares_each_new_revision_before_serving_it(store_db: Database) -> None:
    clock = FakeClock()
    source = StorePolicySource(store_db, poll=0.5, monotonic=clock)
    first = source.current()
    prepared: list[tuple[int, int]] = []  # (revision prepared, revision served while preparing)

    def prepare(snapshot: Any) -> None:
        prepared.append((snapshot.revision, source._snapshot.revision if source._snapshot else -1))

    source.on_new_snapshot(prepare)
    assert prepared == [(first.revision, first.revision)]  # the current one, at once
    clock.now += 1
    source.current()
    assert len(prepared) == 1  # same revision: nothing to prepare
    PolicyStore(store_db).add_user("zed", "admin", roles=["viewer"])
    clock.now += 1
    second = source.current()
    assert prepared[1:] == [(second.revision, first.revision)]  # prepared while the old one was served

    def broken(_snapshot: Any) -> None:
        raise RuntimeError("compile failed")

    source.on_new_snapshot(broken)  # a second authorizer's: both run; a failing one is logged
    PolicyStore(store_db).add_user("amy", "admin", roles=["viewer"])
    clock.now += 1
    third = source.current()
    assert "amy" in third.policy.users  # still served
    assert prepared[2:] == [(third.revision, second.revision)]  # the first callback still ran


@pytest.mark.parametrize("started", [False, True], ids=["inline", "background"])
def test_source_catches_up_with_the_revision_a_token_names(store_db: Database, started: bool) -> None:
    clock = FakeClock()
    source = StorePolicySource(store_db, poll=60, monotonic=clock)
    if started:
        source.start()
    try:
        first = source.current()
        change = PolicyStore(store_db).add_user("carol", "admin", roles=["developer"])
        assert source.current() is first  # the poll interval is not over: no store read
        assert "carol" not in source.last_known().policy.users
        # a token issued at the new revision: read the store now, whichever way it is asked
        caught = source.current(at_least=change.revision)
        assert caught.revision == change.revision
        assert "carol" in caught.policy.users
        assert source.last_known(at_least=change.revision) is caught
        queries = count_queries(store_db)
        assert source.current(at_least=change.revision) is caught
        assert queries == []  # caught up: no second read

        PolicyStore(store_db).add_user("dave", "admin", roles=["viewer"])
        assert "dave" in source.last_known(at_least=change.revision + 1).policy.users  # the AuthZRes path

        # A revision the store never reached (a token from another database): served what is held,
        # and the next catch-ups within 50 ms do not read the store again.
        held = source.current()
        assert source.current(at_least=held.revision + 100) is held
        queries.clear()
        for _ in range(20):
            assert source.current(at_least=held.revision + 100) is held
        assert queries == []
        clock.now += 0.06
        assert source.current(at_least=held.revision + 100) is held
        assert [q.split()[:2] for q in queries if q != "BEGIN"] == [["SELECT", "policy_state.revision"]]
    finally:
        source.stop()


def test_a_catch_up_waits_for_a_hung_store_no_longer_than_the_deadline(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()  # the 50-ms window below is the source's monotonic time; waits are real
    source = StorePolicySource(store_db, poll=60, deadline=0.2, monotonic=clock).start()
    release = threading.Event()
    try:
        held = source.current()
        change = PolicyStore(store_db).add_user("carol", "admin", roles=["developer"])
        load_in = source.store.load_in

        def hung(session: Any) -> Any:
            release.wait(10)  # the store answers the revision, then hangs on the policy
            return load_in(session)

        monkeypatch.setattr(source.store, "load_in", hung)
        started = time.monotonic()
        assert source.current(at_least=change.revision) is held  # the request is answered meanwhile
        waited = time.monotonic() - started
        assert 0.15 < waited < 2.0, waited  # the 0.2-s deadline, not the store's 10 s
        assert source.current(at_least=change.revision) is held  # within 50 ms: served at once,
        assert not source._wake.is_set()  # without asking the (still hung) poller again
        release.set()
        give_up = time.monotonic() + 10
        while source.current().revision != change.revision and time.monotonic() < give_up:
            time.sleep(0.01)
        assert "carol" in source.current().policy.users  # the hung poll, once it answers
    finally:
        release.set()
        source.stop()


def test_source_keeps_last_snapshot_when_database_unreadable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "authz.db"
    url = f"sqlite:///{path}"
    migrate(url)
    PolicyStore(Database(url)).add_user("amy", "admin", roles=["viewer"])
    with Database(url).engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    good = path.read_bytes()
    from sqlalchemy.pool import NullPool

    db = Database(url, poolclass=NullPool)  # every poll opens the file anew
    clock = FakeClock()
    source = StorePolicySource(db, poll=0.5, monotonic=clock)
    loaded = source.current()
    assert "amy" in loaded.policy.users

    path.write_bytes(b"this is not a database" * 300)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR, logger="authz.storage.source"):
        for _ in range(3):
            clock.now += 1
            assert source.current() is loaded
    failures = [r for r in caplog.records if "keeping revision 1" in r.getMessage()]
    assert len(failures) == 1  # logged once, not per request

    with pytest.raises(StoreError, match="no policy loaded"):
        StorePolicySource(db, poll=0.5).current()  # never loaded: nothing to fall back to

    path.write_bytes(good)
    PolicyStore(db).add_user("ben", "admin", roles=["viewer"])
    clock.now += 1
    assert "ben" in source.current().policy.users  # recovered


def test_source_rejects_invalid_stored_policy_but_keeps_serving(store_db: Database) -> None:
    clock = FakeClock()
    source = StorePolicySource(store_db, poll=0.5, monotonic=clock)
    PolicyStore(store_db).add_user("kim", "admin", roles=["viewer"])
    good = source.current()
    with store_db.session(write=True) as session:  # a hand edit the schema would refuse
        session.execute(text("UPDATE user_roles SET role = 'no-such-role'"))
        session.execute(text("UPDATE policy_state SET revision = revision + 1"))
    clock.now += 1
    assert source.current() is good
    with pytest.raises(PolicyError, match="unknown role"):
        PolicyStore(store_db).load_policy()


def test_yaml_loader_refuses_duplicate_keys() -> None:
    with pytest.raises(PolicyError, match="line 4: duplicate key 'alice'"):
        load_mapping("version: 1\nusers:\n  alice: {roles: [admin]}\n  alice: {roles: []}\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_mapping("version: [1\n")
    with pytest.raises(PolicyError, match="expected a YAML mapping"):
        load_mapping("- 1\n")


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_ownership_records_from_before_nodes_survive_the_upgrade(backend: str, tmp_path: Path, request: Any) -> None:
    """0004 on a table with records: they get node '', count on every node, and a node may then
    record its own object of the same ID (a volume name its daemon has too)."""
    from alembic import command
    from sqlalchemy import text

    from authz.storage import _alembic_config

    url = f"sqlite:///{tmp_path / 'up.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    try:
        config = _alembic_config()
        with db.writer.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        with db.writer.begin() as conn:
            insert = (
                "INSERT INTO ownership (kind, object_id, name, owner, created_at) "
                "VALUES ('volume', 'data', 'data', 'alice', :at)"
            )
            conn.execute(text(insert), {"at": datetime.now(UTC)})
        assert migrate(db) == head_revision() == "0004"
        node = OwnershipRepository(db, node="node1")
        assert node.owner_of("volume", "data") == "alice"
        assert [(r.object_id, r.node) for r in node.list()] == [("data", "")]
        OwnershipRepository(db, node="node2").record("volume", "data", "data", "bob")
        assert OwnershipRepository(db, node="node2").owner_of("volume", "data") == "bob"
        assert node.owner_of("volume", "data") == "alice"
    finally:
        db.dispose()


@pytest.mark.postgres
def test_postgres_migrate_apply_and_snapshot(pg_url: str) -> None:
    assert migrate(pg_url) == head_revision()
    assert migrate(pg_url) == head_revision()
    db = Database(pg_url)
    try:
        with db.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diffs == []
        store = PolicyStore(db)
        result = store.apply_policy(policy_from(POLICY_YAML), "admin")
        assert result.revision == 1
        assert store.apply_policy(policy_from(export_yaml(store.load_policy())), "admin").changed is False
        now = time.time()
        TokenStore(db).record("pg1", "bob", kid="k", issued_at=now, expires_at=now + 60)
        TokenStore(db).revoke("pg1", "admin")
        AuditStore(db).write(event_(user=None, source="anonymous", detail={"n": 1}))
        assert AuditStore(db).query(AuditFilter(allow=True))[0].event.user is None
        OwnershipRepository(db).record("network", "n_1", "net1", "bob")
        OwnershipRepository(db).record("network", "nx2", "net2", "amy")
        assert OwnershipRepository(db).owner_of("network", "n_") == "bob"  # "_" is no wildcard
        assert OwnershipRepository(db).owner_of("network", "n") is None  # ambiguous
        OwnershipRepository(db).record("volume", "v_1", "v_1", "bob")
        assert OwnershipRepository(db).owner_of("volume", "v_") is None  # volumes: exact names only
        OwnershipRepository(db).forget_named("network", "n_")  # a name, never an ID prefix
        assert OwnershipRepository(db).owner_of("network", "n_1") == "bob"
        OwnershipRepository(db).forget_named("network", "net1")
        assert OwnershipRepository(db).owner_of("network", "n_1") is None
        OwnershipRepository(db).record("container", "c" * 64, "web", "bob")
        OwnershipRepository(db).record("container", "c" * 64, "web2", "eve")  # renamed, never transferred
        OwnershipRepository(db).record("container", "c" * 64, None, "eve")
        assert OwnershipRepository(db).owner_of("container", "web2") == "bob"
        own = OwnershipRepository(db)  # RETURNING reads the owner back; a full ID is deleted in one go
        own.record("container", "d" * 64, "db", "amy")
        own.record("container", "d" * 64, None, "eve")
        assert own.owner_of("container", "d" * 64) == "amy"
        own.forget("container", "d" * 64)
        assert own.owner_of("container", "d" * 64) is None
        snapshot = StorePolicySource(db, poll=0).current()
        assert (snapshot.revision, snapshot.revoked_tokens) == (2, frozenset({"pg1"}))
        assert snapshot.policy.users["ci"].tls_cn == "ci.example.com"
    finally:
        db.dispose()


def test_concurrent_writers_queue_instead_of_failing(tmp_path: Path) -> None:
    """Audit writes and policy changes from many threads (as gunicorn workers do) all commit."""
    import threading

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    migrate(url)
    errors: list[BaseException] = []

    def audit_writer(worker: int) -> None:
        db = Database(url)  # one engine per worker, like separate processes
        try:
            for i in range(25):
                AuditStore(db).write(event_(request_id=f"{worker}-{i}"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            db.dispose()

    def admin(worker: int) -> None:
        db = Database(url)
        try:
            for i in range(5):
                PolicyStore(db).add_user(f"u{worker}-{i}", "admin", roles=["viewer"])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=audit_writer, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=admin, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    db = Database(url)
    assert len(AuditStore(db).query()) == 100
    assert PolicyStore(db).revision() == 10  # every change got its own revision
    assert len(PolicyStore(db).load_policy().users) == 10


# ---------------------------------------------------------------- WAL checkpoints


def _write_wal(db: Database, megabytes: int) -> None:
    """``megabytes`` of rows in 100 KB commits: well past the 1,000-page autocheckpoint threshold."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (data BLOB)")
    for _ in range(megabytes * 10):
        with db.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO filler VALUES (randomblob(100000))")


def test_left_checkpoints_commits_do_not_copy_the_wal_into_the_database(tmp_path: Path) -> None:
    default = Database(f"sqlite:///{tmp_path / 'default.db'}")
    leaving = leave_checkpoints_to_others(Database(f"sqlite:///{tmp_path / 'workers.db'}"))
    try:
        for db in (default, leaving):
            _write_wal(db, 6)
        # Sizes read with both pools open (closing the last connection checkpoints anyway):
        assert (tmp_path / "default.db").stat().st_size > 2_000_000  # its commits checkpointed
        assert (tmp_path / "workers.db").stat().st_size < 1_000_000  # every page still in the WAL only
        assert (tmp_path / "workers.db-wal").stat().st_size > 6_000_000
    finally:
        default.dispose()
        leaving.dispose()


WAL_PRAGMA = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from authz.composition import build_plugin_app
    from authz.config import Config

    state, db_file, in_process = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    app = build_plugin_app(Config(database_url=f"sqlite:///{db_file}", state_dir=state, node="t"),
                           ship_in_process=in_process)
    authorizer = app.extensions["authz.protocol_routes"]["/AuthZPlugin.AuthZReq"].__self__.authorizer
    ownership = authorizer._ownership
    # The repositories that record owners: the writer thread's, and the lookups' (inline changes).
    for repository in (ownership._writes, ownership._lookups):
        with repository.db.engine.connect() as conn:
            print(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
    """
)


@pytest.mark.parametrize(("in_process", "expected"), [("0", ["0", "0"]), ("1", ["1000", "1000"])])
def test_plugin_workers_leave_wal_checkpoints_to_the_shipper_process(tmp_path: Path, in_process: str,
                                                                     expected: list[str]) -> None:  # fmt: skip
    """Under ``authzctl serve`` (the shipper is another process) the workers' ownership commits
    never checkpoint; a plugin that ships its own journal keeps SQLite's default."""
    migrate(f"sqlite:///{tmp_path / 'authz.db'}")
    result = subprocess.run(
        [sys.executable, "-c", WAL_PRAGMA, str(tmp_path / "state"), str(tmp_path / "authz.db"), in_process],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


# ---------------------------------------------------------------- changes and SQLite's write lock


def _write_lock_free(db: Database) -> bool:
    """Whether another connection could take SQLite's write lock right now (without waiting)."""
    import sqlite3

    path = db.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


def test_a_change_is_validated_without_holding_the_write_lock(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validating the whole policy took 50-110 ms (1,000 users) under SQLite's one write lock, which
    a create's AuthZRes needs for its owner record; it now runs on a private copy first."""
    store = PolicyStore(store_db)
    seen: list[bool] = []
    real_load_in = PolicyStore.load_in

    def watching_load_in(self: PolicyStore, session: Any) -> Any:
        seen.append(_write_lock_free(store_db))
        return real_load_in(self, session)

    monkeypatch.setattr(PolicyStore, "load_in", watching_load_in)
    change = store.add_user("zed", "admin", roles=["viewer"])
    assert seen == [True]  # validated once, while the store's write lock was free
    assert change.changed
    assert change.revision == 1
    monkeypatch.undo()
    assert "zed" in store.load_policy().users
    assert store.history(1)[0].document is not None
    assert "zed" in store.history(1)[0].document["users"]  # type: ignore[index]
    with pytest.raises(PolicyError, match=r'users\.amy\.roles\[0\]: unknown role "nope"'):
        store.add_user("amy", "admin", roles=["nope"])  # an invalid change fails as before …
    assert store.revision() == 1  # … and changes nothing
    assert "amy" not in store.load_policy().users


def test_a_change_retries_when_another_lands_during_its_validation(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = PolicyStore(store_db), PolicyStore(store_db)
    real_dry_run = PolicyStore._dry_run
    tries: list[int] = []

    def racing_dry_run(self: PolicyStore, change: Any) -> Any:
        result = real_dry_run(self, change)
        tries.append(result[0])
        if len(tries) == 1:
            monkeypatch.setattr(PolicyStore, "_dry_run", real_dry_run)  # the other change runs plainly
            other.add_user("bob", "admin", roles=["viewer"])  # lands between the dry run and the write
            monkeypatch.setattr(PolicyStore, "_dry_run", racing_dry_run)
        return result

    monkeypatch.setattr(PolicyStore, "_dry_run", racing_dry_run)
    change = store.add_user("amy", "admin", roles=["viewer"])
    assert tries == [0, 1]  # tried at revision 0, found revision 1 under the lock, tried again
    assert change.revision == 2
    recorded = store.history(1)[0].document
    assert recorded is not None
    assert {"amy", "bob"} <= set(recorded["users"])  # the history holds the state both made
    assert {"amy", "bob"} <= set(store.load_policy().users)


def test_a_change_raced_on_every_try_is_made_under_the_lock(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = PolicyStore(store_db), PolicyStore(store_db)
    real_dry_run = PolicyStore._dry_run
    racers = iter(range(100))

    def always_raced(self: PolicyStore, change: Any) -> Any:
        result = real_dry_run(self, change)
        monkeypatch.setattr(PolicyStore, "_dry_run", real_dry_run)
        other.add_user(f"racer{next(racers)}", "admin", roles=["viewer"])
        monkeypatch.setattr(PolicyStore, "_dry_run", always_raced)
        return result

    monkeypatch.setattr(PolicyStore, "_dry_run", always_raced)
    change = store.add_user("amy", "admin", roles=["viewer"])
    assert change.revision == 4  # three racers, then amy's change validated under the lock
    assert set(store.load_policy().users) >= {"amy", "racer0", "racer1", "racer2"}


def test_raw_statement_converters_replace_the_column_types_and_name_only_real_parameters(store_db: Database) -> None:
    from sqlalchemy import insert

    from authz.storage.models import SettingRow
    from authz.storage.raw import RawStatements

    statement = insert(SettingRow.__table__)
    raw = RawStatements(store_db, {"put": statement}, column_keys={"put": ["key", "value"]},
                        converters={"put": {"value": lambda value: f'"{value}!"'}})  # fmt: skip
    with raw.transaction(write=True) as tx:
        tx.many("put", raw.arguments("put", [{"key": "k", "value": "v"}]))
    with store_db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT value FROM settings WHERE key = 'k'").scalar() == '"v!"'
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        RawStatements(store_db, {"put": statement}, column_keys={"put": ["key", "value"]},
                      converters={"put": {"nope": str}})  # fmt: skip
