"""Identity resolution: who is asking, from the TLS client-certificate CN and/or ``X-Authz-Token``.

Pure core (standard library only). ``identify`` is called on every request, so everything that
depends only on the policy snapshot (the CN index, each user's effective roles) is computed once
per snapshot by ``DirectoryIndex.for_snapshot``.

Rules, in order:

1. ``request.user`` (the daemon sets it from a verified client certificate) names the user whose
   ``tls_cn`` equals it, else the user of that name; no match is an error.
2. An ``X-Authz-Token`` header is verified; a revoked ``jti`` or an unknown ``sub`` is an error.
3. Both present must name the same user.
4. A disabled user is refused.
5. Neither present: anonymous, with ``settings.anonymous_role`` if one is set.

Roles are the user's own plus those of their groups, sorted and de-duplicated; ``extends`` is left
to the engine. An active break-glass grant adds ``admin``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from authz.errors import IdentityError
from authz.request import DockerRequest, IdentitySource, Subject

if TYPE_CHECKING:
    from authz.policy.model import Policy, PolicySnapshot, User
    from authz.ports import TokenClaims, TokenVerifier

__all__ = ["BREAKGLASS_ROLE", "TOKEN_HEADER", "DirectoryIndex", "identify", "token_claims"]

TOKEN_HEADER = "X-Authz-Token"  # noqa: S105 - a header name, not a secret
BREAKGLASS_ROLE = "admin"


class _Claims(Enum):
    VERIFY = "verify"  # ``identify``'s default: verify the request's token itself


_MEMO_SIZE = 4  # snapshots alive at once: the current one and a few in-flight older ones


def _quote(value: str) -> str:
    """Quote a caller-supplied name for a message (escapes control characters)."""
    return json.dumps(value[:200], ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's effective roles and groups, as far as the policy document says (no break-glass)."""

    roles: tuple[str, ...]
    groups: tuple[str, ...]
    unknown_groups: tuple[str, ...]  # named by the user but absent from policy.groups


class DirectoryIndex:
    """Lookups derived from one snapshot's users and groups; immutable once built."""

    __slots__ = ("_ambiguous_cns", "_by_cn", "_members", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        claimants: dict[str, list[str]] = {}
        for key, user in policy.users.items():
            if user.tls_cn:
                claimants.setdefault(user.tls_cn, []).append(key)
        self._by_cn = {cn: keys[0] for cn, keys in claimants.items() if len(keys) == 1}
        self._ambiguous_cns = {cn: tuple(sorted(keys)) for cn, keys in claimants.items() if len(keys) > 1}
        self._members = {user.name: _membership(policy, user) for user in policy.users.values()}

    @classmethod
    def for_snapshot(cls, snapshot: PolicySnapshot) -> DirectoryIndex:
        """The index of ``snapshot``, built on first use and memoised for that snapshot object."""
        with _memo_lock:
            entry = _memo.get(snapshot.revision)
            # Identity, not revision alone: two snapshot objects may share a revision number.
            if entry is not None and entry[0] is snapshot:
                return entry[1]
        index = cls(snapshot.policy)
        with _memo_lock:
            _memo[snapshot.revision] = (snapshot, index)
            while len(_memo) > _MEMO_SIZE:
                del _memo[next(iter(_memo))]
        return index

    def user_by_cn(self, cn: str) -> User:
        """The user a TLS client-certificate CN names: ``tls_cn`` match first, then user name."""
        if cn in self._ambiguous_cns:
            # Fail closed: picking one of several users would be a guess.
            names = ", ".join(self._ambiguous_cns[cn])
            raise IdentityError(f"TLS client certificate CN {_quote(cn)} is the tls_cn of several users ({names})")
        key = self._by_cn.get(cn, cn)
        user = self.policy.users.get(key)
        if user is None:
            raise IdentityError(f"TLS client certificate CN {_quote(cn)} is not a known user")
        return user

    def user_by_name(self, name: str) -> User | None:
        return self.policy.users.get(name)

    def membership(self, name: str) -> Membership:
        return self._members[name]


_memo: dict[int, tuple[PolicySnapshot, DirectoryIndex]] = {}
_memo_lock = threading.Lock()


def _membership(policy: Policy, user: User) -> Membership:
    roles = set(user.roles)
    unknown = []
    for group_name in user.groups:
        group = policy.groups.get(group_name)
        if group is None:
            unknown.append(group_name)
        else:
            roles.update(group.roles)
    return Membership(tuple(sorted(roles)), tuple(sorted(set(user.groups))), tuple(unknown))


def token_claims(request: DockerRequest, verifier: TokenVerifier | None, now: float) -> TokenClaims | None:
    """The verified claims of the request's ``X-Authz-Token``; None without one; else ``IdentityError``.

    Called before the snapshot is chosen: a token issued at a revision newer than the snapshot
    held asks the policy source to read the store first (``PolicySource.current(at_least)``).
    """
    token = request.header(TOKEN_HEADER)
    if token is None:
        return None
    if verifier is None:
        # Fail closed: a caller who claims an identity we cannot check must not become anonymous.
        raise IdentityError(f"{TOKEN_HEADER} was sent but token authentication is not configured")
    return verifier.verify(token, now)


def identify(
    request: DockerRequest,
    snapshot: PolicySnapshot,
    verifier: TokenVerifier | None,
    now: float,
    *,
    claims: TokenClaims | Literal[_Claims.VERIFY] | None = _Claims.VERIFY,
) -> Subject:
    """The ``Subject`` behind ``request``, or ``IdentityError`` saying why it cannot be trusted.

    ``verifier`` checks token signature, audience and times, unless ``claims`` holds what
    ``token_claims`` returned for this request (None: it has no token); revocation is checked
    here on every request against ``snapshot.revoked_tokens``. ``now`` is seconds since the epoch.
    """
    index = DirectoryIndex.for_snapshot(snapshot)
    tls_user = index.user_by_cn(request.user) if request.user else None

    token_user: User | None = None
    token_id: str | None = None
    if claims is _Claims.VERIFY:
        claims = token_claims(request, verifier, now)
    if claims is not None:
        if claims.token_id in snapshot.revoked_tokens:
            raise IdentityError(f"token {claims.token_id} was revoked")
        token_user = index.user_by_name(claims.subject)
        if token_user is None:
            raise IdentityError(f"token subject {_quote(claims.subject)} is not a known user")
        token_id = claims.token_id

    if tls_user is not None and token_user is not None and tls_user.name != token_user.name:
        raise IdentityError(
            f"TLS client certificate identifies user {_quote(tls_user.name)} but {TOKEN_HEADER} "
            f"names user {_quote(token_user.name)}; send one identity"
        )
    user = tls_user or token_user
    if user is None:
        role = snapshot.policy.settings.anonymous_role
        return Subject(name=None, source=IdentitySource.ANONYMOUS, roles=(role,) if role else ())
    if user.disabled:
        raise IdentityError(f"user {_quote(user.name)} is disabled")

    member = index.membership(user.name)
    if member.unknown_groups:
        # Fail closed: a missing group might have carried a deny rule; skipping it could widen access.
        missing = ", ".join(member.unknown_groups)
        raise IdentityError(
            f"user {_quote(user.name)} belongs to unknown group(s) {missing}; fix users.{user.name}.groups"
        )
    roles = member.roles
    # Break-glass: an unexpired emergency grant makes the user admin. The audit records the role.
    if snapshot.breakglass.get(user.name, float("-inf")) > now and BREAKGLASS_ROLE not in roles:
        roles = tuple(sorted((*roles, BREAKGLASS_ROLE)))
    # The certificate is the stronger proof, so it names the source when both agree.
    source = IdentitySource.TLS if tls_user is not None else IdentitySource.TOKEN
    return Subject(name=user.name, source=source, roles=roles, groups=member.groups, token_id=token_id)
