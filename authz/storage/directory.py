"""``PolicyStore``: the policy document plus per-entry changes of users, groups and roles.

Each change is one transaction through ``PolicyDocumentStore.mutate``: the rows change, the whole
policy is re-validated, the revision is bumped and history records the exported document. A change
that would not change anything (granting a role a user already has) uses no revision. Removing
something that is not there is an error, so a mistyped revoke never looks like it worked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from authz.errors import PolicyError
from authz.policy.model import Policy, Role
from authz.policy.schema import dump_role
from authz.storage.models import NAME_LENGTH, GroupRoleRow, GroupRow, RoleRow, UserGroupRow, UserRoleRow, UserRow
from authz.storage.policy_store import Change, PolicyDocumentStore, revoke_tokens_of


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    tls_cn: str | None
    disabled: bool
    created_at: datetime
    effective_roles: tuple[str, ...]  # direct roles and those of the user's groups, sorted


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    roles: tuple[str, ...]
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoleInfo:
    role: Role
    source: str  # "builtin" (as shipped) | "override" (stored over a built-in) | "custom"
    users: tuple[str, ...]  # users granted the role directly
    groups: tuple[str, ...]


class PolicyStore(PolicyDocumentStore):
    """Everything about the policy: load, apply, history, and changes to single entries."""

    # ------------------------------------------------------------------ users

    def add_user(
        self,
        name: str,
        author: str,
        roles: Sequence[str] = (),
        groups: Sequence[str] = (),
        tls_cn: str | None = None,
    ) -> Change:
        def change(session: Session) -> bool:
            _fits(f"users.{name}", name)
            if _find_user(session, name) is not None:
                raise PolicyError(f"users.{name}", "already exists")
            if tls_cn is not None:
                if not 0 < len(tls_cn) <= 255:
                    raise PolicyError(f"users.{name}.tls_cn", "must be 1 to 255 characters")
                other = session.scalar(select(UserRow.name).where(UserRow.tls_cn == tls_cn))
                if other is not None:
                    raise PolicyError(f"users.{name}.tls_cn", f'"{tls_cn}" is already the tls_cn of {other}')
            _fits(f"users.{name}.roles", *roles)
            row = UserRow(name=name, tls_cn=tls_cn, disabled=False)
            session.add(row)
            session.flush()
            session.add_all(UserRoleRow(user_id=row.id, role=r) for r in sorted(set(roles)))
            for index, group in enumerate(sorted(set(groups))):
                group_row = _find_group(session, group)
                if group_row is None:
                    raise PolicyError(f"users.{name}.groups[{index}]", f'unknown group "{group}"')
                session.add(UserGroupRow(user_id=row.id, group_id=group_row.id))
            return True

        return self.mutate(author, f"user add {name}", change)

    def remove_user(self, name: str, author: str) -> Change:
        """Delete the user and revoke their tokens (a later user of the same name must not inherit them)."""

        def change(session: Session) -> bool:
            session.delete(_user(session, name))
            revoke_tokens_of(session, [name], author)
            return True

        return self.mutate(author, f"user rm {name}", change)

    def set_user_disabled(self, name: str, disabled: bool, author: str) -> Change:
        def change(session: Session) -> bool:
            row = _user(session, name)
            if row.disabled == disabled:
                return False
            row.disabled = disabled
            return True

        return self.mutate(author, f"user {'disable' if disabled else 'enable'} {name}", change)

    def grant_user_role(self, name: str, role: str, author: str) -> Change:
        def change(session: Session) -> bool:
            row = _user(session, name)
            _fits(f"users.{name}.roles", role)
            if session.get(UserRoleRow, (row.id, role)) is not None:
                return False
            session.add(UserRoleRow(user_id=row.id, role=role))
            return True

        return self.mutate(author, f"user grant {name} {role}", change)

    def revoke_user_role(self, name: str, role: str, author: str) -> Change:
        def change(session: Session) -> bool:
            row = _user(session, name)
            link = session.get(UserRoleRow, (row.id, role))
            if link is None:
                raise PolicyError(f"users.{name}.roles", f'user has no direct role "{role}"')
            session.delete(link)
            return True

        return self.mutate(author, f"user revoke-role {name} {role}", change)

    def join_group(self, name: str, group: str, author: str) -> Change:
        def change(session: Session) -> bool:
            row, group_row = _user(session, name), _group(session, group)
            if session.get(UserGroupRow, (row.id, group_row.id)) is not None:
                return False
            session.add(UserGroupRow(user_id=row.id, group_id=group_row.id))
            return True

        return self.mutate(author, f"user join {name} {group}", change)

    def leave_group(self, name: str, group: str, author: str) -> Change:
        def change(session: Session) -> bool:
            row, group_row = _user(session, name), _group(session, group)
            link = session.get(UserGroupRow, (row.id, group_row.id))
            if link is None:
                raise PolicyError(f"users.{name}.groups", f'user is not in group "{group}"')
            session.delete(link)
            return True

        return self.mutate(author, f"user leave {name} {group}", change)

    def get_user(self, name: str) -> UserInfo:
        for info in self.list_users(only=name):
            return info
        raise PolicyError(f"users.{name}", "no such user")

    def list_users(self, only: str | None = None) -> list[UserInfo]:
        with self.db.session() as session:
            policy = self.load_in(session)
            created = dict(session.execute(select(UserRow.name, UserRow.created_at)).all())
        out = []
        for name, user in policy.users.items():
            if only is not None and name != only:
                continue
            effective = set(user.roles)
            for group in user.groups:
                effective.update(policy.groups[group].roles)
            out.append(
                UserInfo(
                    name,
                    user.roles,
                    user.groups,
                    user.tls_cn,
                    user.disabled,
                    created[name],
                    tuple(sorted(effective)),
                )
            )
        return out

    # ------------------------------------------------------------------ groups

    def add_group(self, name: str, author: str, roles: Sequence[str] = ()) -> Change:
        def change(session: Session) -> bool:
            _fits(f"groups.{name}", name)
            if _find_group(session, name) is not None:
                raise PolicyError(f"groups.{name}", "already exists")
            _fits(f"groups.{name}.roles", *roles)
            row = GroupRow(name=name)
            session.add(row)
            session.flush()
            session.add_all(GroupRoleRow(group_id=row.id, role=r) for r in sorted(set(roles)))
            return True

        return self.mutate(author, f"group add {name}", change)

    def remove_group(self, name: str, author: str) -> Change:
        """Delete the group; its members lose the roles they had through it."""

        def change(session: Session) -> bool:
            row = _group(session, name)
            session.execute(delete(UserGroupRow).where(UserGroupRow.group_id == row.id))
            session.delete(row)
            return True

        return self.mutate(author, f"group rm {name}", change)

    def grant_group_role(self, name: str, role: str, author: str) -> Change:
        def change(session: Session) -> bool:
            row = _group(session, name)
            _fits(f"groups.{name}.roles", role)
            if session.get(GroupRoleRow, (row.id, role)) is not None:
                return False
            session.add(GroupRoleRow(group_id=row.id, role=role))
            return True

        return self.mutate(author, f"group grant {name} {role}", change)

    def revoke_group_role(self, name: str, role: str, author: str) -> Change:
        def change(session: Session) -> bool:
            link = session.get(GroupRoleRow, (_group(session, name).id, role))
            if link is None:
                raise PolicyError(f"groups.{name}.roles", f'group has no role "{role}"')
            session.delete(link)
            return True

        return self.mutate(author, f"group revoke-role {name} {role}", change)

    def list_groups(self) -> list[GroupInfo]:
        policy = self.load_policy()
        members: dict[str, list[str]] = {name: [] for name in policy.groups}
        for user in policy.users.values():
            for group in user.groups:
                members[group].append(user.name)
        return [GroupInfo(g.name, g.roles, tuple(sorted(members[g.name]))) for g in policy.groups.values()]

    # ------------------------------------------------------------------ roles

    def set_role(self, role: Role, author: str) -> Change:
        """Create or replace a stored role (a built-in name makes it an override)."""

        def change(session: Session) -> bool:
            row = session.scalar(select(RoleRow).where(RoleRow.name == role.name))
            if row is not None and not row.builtin and row.definition == dump_role(role):
                return False
            self._put_role(session, role, row)
            return True

        return self.mutate(author, f"role set {role.name}", change)

    def remove_role(self, name: str, author: str) -> Change:
        """Remove a stored role; refused while a user, group, role or the settings refer to it.

        Removing the override of a built-in role restores the built-in; a built-in itself stays.
        """

        def change(session: Session) -> bool:
            row = session.scalar(select(RoleRow).where(RoleRow.name == name, RoleRow.builtin.is_(False)))
            builtin = name in self._builtins(session)
            if row is None:
                raise PolicyError(
                    f"roles.{name}", "is a built-in role and cannot be removed" if builtin else "no such role"
                )
            if not builtin:
                users = session.scalars(
                    select(UserRow.name)
                    .join(UserRoleRow, UserRoleRow.user_id == UserRow.id)
                    .where(UserRoleRow.role == name)
                ).all()
                groups = session.scalars(
                    select(GroupRow.name)
                    .join(GroupRoleRow, GroupRoleRow.group_id == GroupRow.id)
                    .where(GroupRoleRow.role == name)
                ).all()
                policy = self.load_in(session)
                users_of = _uses(policy, name)
                holders = [f"users {', '.join(sorted(users))}"] if users else []
                holders += [f"groups {', '.join(sorted(groups))}"] if groups else []
                holders += users_of
                if holders:
                    raise PolicyError(f"roles.{name}", f"in use by {'; '.join(holders)}: remove those references first")
            session.delete(row)
            session.flush()
            self._store_stock(session)
            return True

        return self.mutate(author, f"role rm {name}", change)

    def get_role(self, name: str) -> RoleInfo:
        for info in self.list_roles(only=name):
            return info
        raise PolicyError(f"roles.{name}", "no such role")

    def list_roles(self, only: str | None = None) -> list[RoleInfo]:
        with self.db.session() as session:
            policy = self.load_in(session)
            builtins = self._builtins(session)
        out = []
        for name, role in policy.roles.items():
            if only is not None and name != only:
                continue
            source = "builtin" if role.builtin else "override" if name in builtins else "custom"
            users = tuple(u.name for u in policy.users.values() if name in u.roles)
            groups = tuple(g.name for g in policy.groups.values() if name in g.roles)
            out.append(RoleInfo(role, source, users, groups))
        return out


def _uses(policy: Policy, name: str) -> list[str]:
    """References to role ``name`` from other roles and from the settings."""
    out = []
    parents = sorted(r.name for r in policy.roles.values() if name in r.extends and r.name != name)
    if parents:
        out.append(f"roles {', '.join(parents)} (extends)")
    if policy.settings.anonymous_role == name:
        out.append("settings.anonymous_role")
    return out


def _fits(path: str, *names: str) -> None:
    """Refuse over-long names before the database does (PostgreSQL would raise, SQLite would not)."""
    for value in names:
        if len(value) > NAME_LENGTH:
            raise PolicyError(path, f"names are at most {NAME_LENGTH} characters")


def _find_user(session: Session, name: str) -> UserRow | None:
    return session.scalar(select(UserRow).where(UserRow.name == name))


def _user(session: Session, name: str) -> UserRow:
    row = _find_user(session, name)
    if row is None:
        raise PolicyError(f"users.{name}", "no such user")
    return row


def _find_group(session: Session, name: str) -> GroupRow | None:
    return session.scalar(select(GroupRow).where(GroupRow.name == name))


def _group(session: Session, name: str) -> GroupRow:
    row = _find_group(session, name)
    if row is None:
        raise PolicyError(f"groups.{name}", "no such group")
    return row
