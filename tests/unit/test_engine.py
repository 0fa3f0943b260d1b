"""The evaluation rules: ping, default deny, deny beats allow, inheritance, ownership, warn mode."""

from __future__ import annotations

from typing import Any

import pytest

from authz.policy.compiled import compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.model import PolicySnapshot
from authz.policy.rules import EvalContext
from authz.policy.schema import parse_policy
from authz.request import IdentitySource, Mode, Operation, Subject


class Owners:
    """In-memory OwnershipStore."""

    def __init__(self, owners: dict[tuple[str, str], str]) -> None:
        self.owners = owners

    def owner_of(self, kind: str, reference: str) -> str | None:
        return self.owners.get((kind, reference))

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        self.owners[(kind, object_id)] = owner

    def forget(self, kind: str, reference: str) -> None:
        self.owners.pop((kind, reference), None)

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        self.owners[(kind, new_name)] = self.owners.pop((kind, reference))


def compiled(doc: dict[str, Any]) -> Any:
    return compile_snapshot(PolicySnapshot(revision=1, policy=parse_policy({"version": 1, **doc})))


def user(name: str | None, *roles: str) -> Subject:
    source = IdentitySource.TOKEN if name else IdentitySource.ANONYMOUS
    return Subject(name=name, source=source, roles=tuple(sorted(roles)))


def op(action: str, target: str | None = None, kind: str | None = None) -> Operation:
    return Operation(action=action, method="POST", path="/x", api_version="1.41", target=target, target_kind=kind)


CTX = EvalContext(ownership=Owners({("container", "mine"): "alice", ("container", "theirs"): "bob"}))


def test_ping_is_allowed_to_everyone() -> None:
    decision = evaluate(compiled({}), user(None), op("system:ping"), CTX)
    assert decision.allow


def test_anonymous_without_anonymous_role_is_denied_with_guidance() -> None:
    decision = evaluate(compiled({}), user(None), op("system:version"), CTX)
    assert not decision.allow
    assert decision.message.startswith("authz: denied system:version for anonymous (roles: none): ")
    assert "X-Authz-Token" in decision.message


def test_viewer_reads_but_cannot_create() -> None:
    policy = compiled({})
    assert evaluate(policy, user("v", "viewer"), op("container:list"), CTX).allow
    denied = evaluate(policy, user("v", "viewer"), op("container:create"), CTX)
    assert not denied.allow
    assert (
        denied.message
        == "authz: denied container:create for v (roles: viewer): none of your roles allows container:create"
    )


def test_deny_in_one_role_beats_allow_in_another() -> None:
    policy = compiled({"roles": {"locked": {"allow": [], "deny": ["container:export"]}}})
    decision = evaluate(policy, user("alice", "admin", "locked"), op("container:export"), CTX)
    assert not decision.allow
    assert decision.rule == 'roles.locked.deny[0] "container:export"'
    assert "denied by role locked" in decision.message


def test_extends_inherits_allow_and_deny() -> None:
    policy = compiled({"roles": {
        "base": {"allow": ["volume:*"], "deny": ["volume:prune"]},
        "child": {"extends": ["base"], "allow": ["network:list"]},
    }})  # fmt: skip
    child = user("c", "child")
    assert evaluate(policy, child, op("volume:list"), CTX).allow
    assert evaluate(policy, child, op("network:list"), CTX).allow
    assert not evaluate(policy, child, op("volume:prune"), CTX).allow
    assert policy.roles["child"].denied["volume:prune"] == 'roles.base.deny[0] "volume:prune"'


def test_constraints_overlay_child_over_parent_over_defaults() -> None:
    policy = compiled({"roles": {
        "base": {"containers": {"privileged": True, "run_as_root": True}},
        "child": {"extends": ["base"], "containers": {"privileged": False}},
    }})  # fmt: skip
    child = policy.roles["child"]
    assert child.containers.privileged is False
    assert child.containers.run_as_root is True
    assert child.containers.host_namespaces is False  # restrictive default
    assert child.ownership == "own"


@pytest.mark.parametrize(
    ("target", "allowed"),
    [("mine", True), ("theirs", False), ("unknown-to-plugin", False)],
)
def test_ownership_own_limits_to_own_objects(target: str, allowed: bool) -> None:
    policy = compiled({"roles": {"dev": {"allow": ["container:stop"], "ownership": "own"}}})
    decision = evaluate(policy, user("alice", "dev"), op("container:stop", target, "container"), CTX)
    assert decision.allow is allowed
    if not allowed:
        assert "ownership: own" in decision.message
        assert decision.rule == "roles.dev.ownership"


def test_an_ambiguous_id_prefix_is_explained() -> None:
    """Two recorded containers start with "abc": the daemon would refuse "abc" too, but the user
    is told to give more of the ID, not only that the object may predate the plugin."""
    from authz.memory import MemoryOwnership

    owners = MemoryOwnership()
    owners.record("container", "abc1" + "0" * 60, "web", "alice")
    owners.record("container", "abc2" + "0" * 60, "db", "bob")
    policy = compiled({"roles": {"dev": {"allow": ["container:stop", "volume:delete"], "ownership": "own"}}})
    context = EvalContext(ownership=owners)
    ambiguous = evaluate(policy, user("alice", "dev"), op("container:stop", "abc", "container"), context)
    assert not ambiguous.allow
    assert "as an ID prefix, it matches more than one container: use more of the ID" in ambiguous.message
    assert evaluate(policy, user("alice", "dev"), op("container:stop", "abc1", "container"), context).allow
    by_name = evaluate(policy, user("alice", "dev"), op("container:stop", "gone", "container"), context)
    assert "ID prefix" not in by_name.message  # not hex: a name, no prefix hint
    volume = evaluate(policy, user("alice", "dev"), op("volume:delete", "abc", "volume"), context)
    assert "ID prefix" not in volume.message  # volumes are found by exact name only


def test_one_decision_asks_the_store_once_per_object() -> None:
    asked: list[tuple[str, str]] = []

    class Counting(Owners):
        def owner_of(self, kind: str, reference: str) -> str | None:
            asked.append((kind, reference))
            return super().owner_of(kind, reference)

    store = Counting({("container", "theirs"): "bob"})
    doc = {"roles": {name: {"allow": ["container:stop"], "ownership": "own"} for name in ("a", "b", "c")}}
    stop = op("container:stop", "theirs", "container")
    for _ in range(2):
        decision = evaluate(compiled(doc), user("alice", "a", "b", "c"), stop, EvalContext(ownership=store))
        assert not decision.allow
        assert decision.message.count("owned by another user") == 3  # all three roles explain
    assert asked == [("container", "theirs")] * 2  # once per decision, never carried into the next


def test_ownership_any_acts_on_everything() -> None:
    policy = compiled({"roles": {"ops": {"allow": ["container:stop"], "ownership": "any"}}})
    assert evaluate(policy, user("alice", "ops"), op("container:stop", "theirs", "container"), CTX).allow


def test_warn_mode_allows_and_records_the_would_be_denial() -> None:
    policy = compiled({"roles": {"trial": {"mode": "warn", "allow": ["container:list"]}}})
    decision = evaluate(policy, user("alice", "trial"), op("container:create"), CTX)
    assert decision.allow
    assert decision.mode is Mode.WARN
    assert any("would deny" in w for w in decision.warnings)


def test_default_mode_warn_applies_to_roles_without_mode() -> None:
    policy = compiled({"settings": {"default_mode": "warn"}, "roles": {"r": {"allow": []}}})
    assert policy.roles["r"].mode is Mode.WARN
    assert policy.roles["admin"].mode is Mode.WARN


def test_warn_role_does_not_override_an_enforced_deny() -> None:
    policy = compiled({"roles": {
        "trial": {"mode": "warn", "allow": ["*"]},
        "strict": {"allow": [], "deny": ["image:push"]},
    }})  # fmt: skip
    assert not evaluate(policy, user("alice", "strict", "trial"), op("image:push"), CTX).allow


def test_builtin_admin_allows_plugin_routes_and_developer_does_not() -> None:
    policy = compiled({})
    assert evaluate(policy, user("root", "admin"), op("plugin:disable", "authz", "plugin"), CTX).allow
    for role in ("developer", "operator", "viewer"):
        assert not evaluate(policy, user("u", role), op("plugin:disable", "authz", "plugin"), CTX).allow


def test_expanded_patterns_are_exactly_what_matches_covers() -> None:
    from authz import actions

    resources = sorted(actions.RESOURCES)
    patterns = ["*", *(f"{r}:*" for r in resources), *sorted(actions.ALL_ACTIONS), "nope:*", "container:", "", "**"]
    for pattern in patterns:
        assert actions.covered(pattern) == {a for a in actions.ALL_ACTIONS if actions.matches(pattern, a)}
    assert actions.covered(["container:*"]) == frozenset()  # type: ignore[arg-type]  # not a string: nothing


def test_compiled_cache_keeps_the_revision_in_use_while_the_next_is_prepared() -> None:
    from authz.policy.compiled import CompiledCache

    doc = {"version": 1, "users": {"ann": {"roles": ["developer"]}}}
    old = PolicySnapshot(revision=1, policy=parse_policy(doc))
    new = PolicySnapshot(revision=2, policy=parse_policy(doc))
    cache = CompiledCache()
    in_use = cache.get(old)
    prepared = cache.get(new)  # the poller compiles the next revision
    assert cache.get(old) is in_use  # requests still on the old one do not recompile it
    assert cache.get(new) is prepared
    assert prepared.revision == 2
    cache.get(PolicySnapshot(revision=3, policy=parse_policy(doc)))
    assert cache.get(old) is not in_use  # only the two newest are kept


# ---------------------------------------------------------------- compiling a new revision


REUSE_DOC: dict[str, Any] = {
    "roles": {
        "base": {"allow": ["container:list"]},
        "child": {"extends": ["base"], "allow": ["container:create"]},
        "other": {"allow": ["image:list"], "deny": ["image:delete"]},
    },
    "users": {"ann": {"roles": ["child"]}},
}


def _revision(number: int, doc: dict[str, Any]) -> PolicySnapshot:
    return PolicySnapshot(revision=number, policy=parse_policy({"version": 1, **doc}))


def test_a_revision_that_changes_no_role_compiles_nothing_again() -> None:
    first = compile_snapshot(_revision(1, REUSE_DOC))
    users_only = compile_snapshot(_revision(2, {**REUSE_DOC, "users": {"bob": {"roles": ["other"]}}}), first)
    assert users_only.revision == 2
    assert all(users_only.roles[name] is first.roles[name] for name in first.roles)


def test_a_changed_role_is_compiled_again_with_every_role_that_extends_it() -> None:
    first = compile_snapshot(_revision(1, REUSE_DOC))
    changed = {**REUSE_DOC, "roles": {**REUSE_DOC["roles"], "base": {"allow": ["container:list", "image:list"]}}}
    second = compile_snapshot(_revision(2, changed), first)
    assert second.roles["other"] is first.roles["other"]
    assert second.roles["base"] is not first.roles["base"]
    assert second.roles["child"] is not first.roles["child"]  # inherits the change
    assert "image:list" in second.roles["child"].allowed
    assert second.roles == compile_snapshot(_revision(2, changed)).roles  # the same as from scratch


def test_a_new_default_mode_compiles_every_role_again() -> None:
    first = compile_snapshot(_revision(1, REUSE_DOC))
    second = compile_snapshot(_revision(2, {**REUSE_DOC, "settings": {"default_mode": "warn"}}), first)
    assert all(second.roles[name] is not first.roles[name] for name in first.roles)
    assert second.roles["other"].mode is Mode.WARN
