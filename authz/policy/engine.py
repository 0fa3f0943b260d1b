"""Evaluate: Policy × Subject × Operation → Decision.

The rules, in order:
1. ``system:ping`` is allowed to everyone: the CLI needs it to negotiate the API version, and it
   reveals nothing.
2. An explicit ``deny`` in any enforcing role of the caller denies (deny beats allow).
3. A role grants the request when it allows the action, the caller may act on the object
   (``ownership``) and none of the role's content checks objects. One granting role suffices.
4. Otherwise, roles in ``warn`` mode turn what would be denied into an allow with warnings, so
   admins can trial a stricter role; every would-be denial is audited.
5. Otherwise: deny, naming the user, the roles, the action, the rule and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from authz.policy.compiled import CompiledPolicy, EffectiveRole
from authz.policy.rules import CHECKS, EvalContext, Violation, families
from authz.ports import OwnershipStore
from authz.request import Decision, Mode, Operation, Subject

PING = "system:ping"
_FAMILIES = families  # imported for its side effect: every rule family registers its checks
# Object kinds whose creator is recorded; ``ownership: own`` limits a role to its own ones.
OWNED_KINDS = frozenset({"container", "network", "volume", "exec"})
_PREFIXED_KINDS = frozenset({"container", "network"})  # found by unique ID prefix too (not volumes, execs)
_SHORT_ID = re.compile(r"[0-9a-f]{1,63}", re.ASCII)
# The daemon's own networks belong to nobody; whether a role may use them is `networks.use`.
PREDEFINED_NETWORKS = frozenset({"bridge", "none", "host", "default"})
# Reads whose answer the daemon holds back until their AuthZRes is allowed (one buffered JSON
# write, docker-authz.md 2.8). Of an object with no recorded owner, the request cannot tell "there
# is none" from "someone else's, made without the plugin"; the answer can. So the read goes through
# and its answer is judged by the full ID it names (a 404 carries nothing to withhold). Clients
# inspect before they create: docker-compose asks for volume `proj_data`, then creates it.
RESPONSE_JUDGED_READS = frozenset({"container:inspect", "network:inspect", "volume:inspect", "exec:inspect"})


class _OwnerMemo:
    """One decision's owner lookups: each role and check asks about the same few objects, and each
    question to the store costs a round trip. Lives for one ``evaluate`` only, so never stale."""

    def __init__(self, store: OwnershipStore) -> None:
        self._store = store
        self._known: dict[tuple[str, str], str | None] = {}
        self.deferred: str | None = None  # the object whose read the answer decides (RESPONSE_JUDGED_READS)

    def owner_of(self, kind: str, reference: str) -> str | None:
        key = (kind, reference)
        if key not in self._known:
            self._known[key] = self._store.owner_of(kind, reference)  # a failure raises, is not kept
        return self._known[key]

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        self._store.record(kind, object_id, name, owner)

    def forget(self, kind: str, reference: str) -> None:
        self._store.forget(kind, reference)

    def forget_named(self, kind: str, name: str) -> None:
        self._store.forget_named(kind, name)

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        self._store.rename(kind, reference, new_name)


def denial_message(subject: Subject, action: str, detail: str) -> str:
    roles = ", ".join(subject.roles) if subject.roles else "none"
    return f"authz: denied {action} for {subject.display} (roles: {roles}): {detail}"


def ownership_violation(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Violation | None:
    """A role with ``ownership: own`` may act only on objects its user created."""
    if role.ownership == "any" or operation.target is None or operation.target_kind not in OWNED_KINDS:
        return None
    if operation.target_kind == "network" and operation.target in PREDEFINED_NETWORKS:
        return None
    owner = context.ownership.owner_of(operation.target_kind, operation.target) if context.ownership else None
    if owner is not None and owner == subject.name:
        return None
    if owner is None and context.defer_unknown_reads and operation.action in RESPONSE_JUDGED_READS:
        if isinstance(context.ownership, _OwnerMemo):
            context.ownership.deferred = f"{operation.target_kind} {operation.target!r}"
        return None
    whose = "an object created before the plugin or by another process" if owner is None else "owned by another user"
    hint = ""
    if owner is None and operation.target_kind in _PREFIXED_KINDS and _SHORT_ID.fullmatch(operation.target):
        # The daemon also finds these by a unique ID prefix; a short one may name several records.
        hint = f" (or, as an ID prefix, it matches more than one {operation.target_kind}: use more of the ID)"
    return Violation(
        rule="ownership",
        field=f"{operation.target_kind} {operation.target!r}",
        message=f"{operation.target_kind} {operation.target!r} is {whose}{hint}; role {role.name} may act only "
        "on objects you created (ownership: own)",
    )


def role_violations(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> list[Violation]:
    """Why ``role`` does not grant ``operation`` (empty: it does)."""
    if operation.action not in role.allowed:
        return [Violation("allow", operation.action, f"role {role.name} does not allow {operation.action}")]
    found: list[Violation] = []
    owned = ownership_violation(role, operation, subject, context)
    if owned is not None:
        found.append(owned)
    for check in CHECKS.get(operation.action, ()):
        found.extend(check(role, operation, subject, context))
    return found


def _role_violations(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext, memo: _OwnerMemo | None
) -> list[Violation]:
    if memo is not None:
        memo.deferred = None  # whether this role's grant leaves the read to its answer
    return role_violations(role, operation, subject, context)


def _describe(role: str, violations: Iterable[Violation]) -> str:
    return "; ".join(f"{v.message} [rule roles.{role}.{v.rule}, field {v.field}]" for v in violations)


def evaluate(policy: CompiledPolicy, subject: Subject, operation: Operation, context: EvalContext) -> Decision:
    action = operation.action
    if action == PING:
        return Decision(True, "", reason="ping is always allowed (API version negotiation)", rule="builtin:ping")

    roles = [policy.roles[name] for name in subject.roles if name in policy.roles]
    if not roles:
        detail = (
            "no identity was presented and no anonymous role is configured; send a token "
            "(X-Authz-Token in ~/.docker/config.json HttpHeaders) or a TLS client certificate"
            if subject.name is None
            else "the user has no roles"
        )
        return Decision(False, denial_message(subject, action, detail), reason=detail, rule="default-deny")

    memo: _OwnerMemo | None = None
    if context.ownership is not None:
        # Built directly (every field): dataclasses.replace costs ~5 µs, on every decision.
        memo = _OwnerMemo(context.ownership)
        context = EvalContext(ownership=memo, image_user=context.image_user, extras=context.extras,
                              volume_exists=context.volume_exists, host_root=context.host_root,
                              defer_unknown_reads=context.defer_unknown_reads)  # fmt: skip
    enforcing = [r for r in roles if r.mode is Mode.ENFORCE]
    warning_roles = [r for r in roles if r.mode is Mode.WARN]
    warnings: list[str] = []

    for role in enforcing:
        rule = role.denied.get(action)
        if rule is not None:
            detail = f"{action} is denied by role {role.name} ({rule})"
            return Decision(False, denial_message(subject, action, detail), reason=detail, rule=rule, role=role.name)
    for role in warning_roles:
        rule = role.denied.get(action)
        if rule is not None:
            warnings.append(f"role {role.name} (warn mode) would deny {action}: {rule}")

    failures: list[tuple[EffectiveRole, list[Violation]]] = []
    granted: EffectiveRole | None = None
    deferred: str | None = None
    for role in enforcing:
        violations = _role_violations(role, operation, subject, context, memo)
        if not violations:
            granted, deferred = role, memo.deferred if memo is not None else None
            break
        failures.append((role, violations))

    for role in warning_roles:
        if role.denied.get(action) is not None:
            continue
        violations = _role_violations(role, operation, subject, context, memo)
        if violations:
            warnings.append(f"role {role.name} (warn mode) would deny: {_describe(role.name, violations)}")
        elif granted is None:
            granted, deferred = role, memo.deferred if memo is not None else None

    if granted is not None:
        reason = f"granted by role {granted.name} ({granted.allowed.get(action, 'allow')})"
        if deferred is not None:
            reason += f"; {deferred} has no recorded owner: the daemon's answer is judged (AuthZRes)"
        return Decision(
            True, "", reason=reason, rule=granted.allowed.get(action), role=granted.name,
            mode=granted.mode, warnings=tuple(warnings),
        )  # fmt: skip
    if warning_roles:
        reason = "allowed in warn mode; would be denied: " + " | ".join(warnings)
        return Decision(True, "", reason=reason, rule="warn-mode", role=warning_roles[0].name,
                        mode=Mode.WARN, warnings=tuple(warnings))  # fmt: skip

    return _deny(subject, action, failures)


def _deny(subject: Subject, action: str, failures: list[tuple[EffectiveRole, list[Violation]]]) -> Decision:
    allowing = [(role, v) for role, v in failures if v[0].rule != "allow"]
    if not allowing:
        detail = f"none of your roles allows {action}"
        return Decision(False, denial_message(subject, action, detail), reason=detail, rule="default-deny")
    if len(allowing) == 1:
        role, violations = allowing[0]
        detail = _describe(role.name, violations)
    else:
        detail = " | ".join(f"role {role.name}: {_describe(role.name, v)}" for role, v in allowing)
    first_role, first = allowing[0]
    return Decision(
        False, denial_message(subject, action, detail), reason=detail,
        rule=f"roles.{first_role.name}.{first[0].rule}", role=first_role.name,
    )  # fmt: skip
