"""identify(): TLS CN, X-Authz-Token, both, neither; roles through groups; break-glass.

Tokens are checked by a tiny fake verifier here; tests/integration/test_token.py runs the same
paths with the real Ed25519 verifier.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from authz.errors import IdentityError
from authz.identity.resolve import TOKEN_HEADER, DirectoryIndex, identify
from authz.policy.model import Group, Policy, PolicySnapshot, Settings, User
from authz.request import DockerRequest, IdentitySource, Subject

CAPTURES = Path("/work/shared/reference/captures")
NOW = 1_800_000_000.0


def capture(name: str) -> DockerRequest:
    """The AuthZReq the daemon really sent, as a DockerRequest (only the fields identity reads)."""
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"capture {path} is not available")
    wire: dict[str, Any] = json.loads(path.read_text())["authz_req"]["wire"]
    return DockerRequest(
        method=wire["RequestMethod"],
        uri=wire["RequestUri"],
        headers=wire.get("RequestHeaders") or {},
        user=wire.get("User", ""),
        auth_method=wire.get("UserAuthNMethod", ""),
    )


def plain(headers: dict[str, str] | None = None, user: str = "") -> DockerRequest:
    return DockerRequest(method="GET", uri="/v1.41/version", headers=headers or {}, user=user)


@dataclass(frozen=True)
class FakeClaims:
    subject: str
    token_id: str
    expires_at: float = NOW + 3600
    policy_revision: int = 0


class FakeVerifier:
    """Accepts exactly the tokens it was given; records every call."""

    def __init__(self, tokens: dict[str, FakeClaims]) -> None:
        self.tokens = tokens
        self.calls: list[tuple[str, float]] = []

    def verify(self, token: str, now: float) -> FakeClaims:
        self.calls.append((token, now))
        if token not in self.tokens:
            raise IdentityError("token signature is invalid")
        return self.tokens[token]


POLICY = Policy(
    settings=Settings(),
    groups={
        "ml-team": Group("ml-team", roles=("developer",)),
        "ops": Group("ops", roles=("operator", "developer")),
    },
    users={
        "alice": User("alice", groups=("ml-team",)),
        "bob": User("bob", roles=("admin",)),
        "ci-runner": User("ci-runner", roles=("developer",), tls_cn="ci.example.com"),
        "carol": User("carol", roles=("viewer",), disabled=True),
        "dave": User("dave", roles=("viewer", "developer"), groups=("ops", "ml-team")),
    },
)


def snapshot(policy: Policy = POLICY, **kwargs: Any) -> PolicySnapshot:
    return PolicySnapshot(revision=kwargs.pop("revision", 1), policy=policy, **kwargs)


VERIFIER = FakeVerifier(
    {
        "tok-from-config": FakeClaims("alice", "jti-alice"),
        "tok-bob": FakeClaims("bob", "jti-bob"),
        "tok-carol": FakeClaims("carol", "jti-carol"),
        "tok-ghost": FakeClaims("ghost", "jti-ghost"),
    }
)


# --- TLS -------------------------------------------------------------------------------------


def test_tls_cn_from_real_capture_names_alice() -> None:
    request = capture("tls-version__02_GET_version.json")
    assert request.user == "alice"
    subject = identify(request, snapshot(), None, NOW)
    assert subject == Subject(name="alice", source=IdentitySource.TLS, roles=("developer",), groups=("ml-team",))


def test_tls_cn_matches_users_tls_cn() -> None:
    subject = identify(plain(user="ci.example.com"), snapshot(), None, NOW)
    assert (subject.name, subject.source, subject.roles) == ("ci-runner", IdentitySource.TLS, ("developer",))


def test_tls_cn_match_wins_over_user_name() -> None:
    policy = Policy(
        users={
            "shared": User("shared", roles=("viewer",)),
            "svc": User("svc", roles=("operator",), tls_cn="shared"),
        }
    )
    assert identify(plain(user="shared"), snapshot(policy), None, NOW).name == "svc"


def test_unknown_tls_cn_is_refused() -> None:
    with pytest.raises(IdentityError, match=r'^TLS client certificate CN "mallory" is not a known user$'):
        identify(plain(user="mallory"), snapshot(), None, NOW)


def test_tls_cn_claimed_by_two_users_is_refused() -> None:
    policy = Policy(users={"a": User("a", tls_cn="dup"), "b": User("b", tls_cn="dup")})
    with pytest.raises(IdentityError, match=r"several users \(a, b\)"):
        identify(plain(user="dup"), snapshot(policy), None, NOW)


def test_cn_with_control_characters_is_escaped_in_the_message() -> None:
    with pytest.raises(IdentityError) as info:
        identify(plain(user="eve\n\x1b[31m"), snapshot(), None, NOW)
    assert "\n" not in str(info.value)
    assert "\x1b" not in str(info.value)


# --- token -----------------------------------------------------------------------------------


def test_token_from_real_capture_names_alice() -> None:
    request = capture("custom-header__02_GET_version.json")
    assert request.user == ""
    verifier = FakeVerifier(VERIFIER.tokens)
    subject = identify(request, snapshot(), verifier, NOW)
    assert subject == Subject(
        name="alice",
        source=IdentitySource.TOKEN,
        roles=("developer",),
        groups=("ml-team",),
        token_id="jti-alice",
    )
    assert verifier.calls == [("tok-from-config", NOW)]


def test_token_header_is_found_case_insensitively() -> None:
    subject = identify(plain({"x-authz-token": "tok-bob"}), snapshot(), VERIFIER, NOW)
    assert (subject.name, subject.roles) == ("bob", ("admin",))


def test_token_rejected_by_verifier_is_refused() -> None:
    # custom-header__03: a raw-HTTP request whose X-Authz-Token is "third", not a real token.
    request = capture("custom-header__03_GET_version.json")
    with pytest.raises(IdentityError, match="signature is invalid"):
        identify(request, snapshot(), VERIFIER, NOW)


def test_revoked_token_is_refused() -> None:
    snap = snapshot(revoked_tokens=frozenset({"jti-bob"}))
    with pytest.raises(IdentityError, match=r"^token jti-bob was revoked$"):
        identify(plain({TOKEN_HEADER: "tok-bob"}), snap, VERIFIER, NOW)


def test_token_for_unknown_user_is_refused() -> None:
    with pytest.raises(IdentityError, match=r'token subject "ghost" is not a known user'):
        identify(plain({TOKEN_HEADER: "tok-ghost"}), snapshot(), VERIFIER, NOW)


def test_token_without_a_verifier_is_refused_not_anonymous() -> None:
    snap = snapshot(Policy(settings=Settings(anonymous_role="viewer"), users=POLICY.users))
    with pytest.raises(IdentityError, match="token authentication is not configured"):
        identify(plain({TOKEN_HEADER: "tok-bob"}), snap, None, NOW)


def test_empty_token_header_is_still_verified() -> None:
    verifier = FakeVerifier({})
    with pytest.raises(IdentityError):
        identify(plain({TOKEN_HEADER: ""}), snapshot(), verifier, NOW)
    assert verifier.calls == [("", NOW)]


# --- both ------------------------------------------------------------------------------------


def test_tls_and_token_naming_the_same_user_are_accepted() -> None:
    request = replace(capture("tls-version__02_GET_version.json"), headers={TOKEN_HEADER: "tok-from-config"})
    subject = identify(request, snapshot(), VERIFIER, NOW)
    assert (subject.name, subject.source, subject.token_id) == ("alice", IdentitySource.TLS, "jti-alice")


def test_tls_and_token_naming_different_users_are_refused() -> None:
    request = replace(capture("tls-version__02_GET_version.json"), headers={TOKEN_HEADER: "tok-bob"})
    with pytest.raises(IdentityError) as info:
        identify(request, snapshot(), VERIFIER, NOW)
    assert '"alice"' in str(info.value)
    assert '"bob"' in str(info.value)


# --- disabled, anonymous ---------------------------------------------------------------------


@pytest.mark.parametrize("request_", [plain(user="carol"), plain({TOKEN_HEADER: "tok-carol"})])
def test_disabled_user_is_refused(request_: DockerRequest) -> None:
    with pytest.raises(IdentityError, match=r'^user "carol" is disabled$'):
        identify(request_, snapshot(), VERIFIER, NOW)


def test_anonymous_without_anonymous_role_has_no_roles() -> None:
    verifier = FakeVerifier({})
    subject = identify(plain(), snapshot(), verifier, NOW)
    assert subject == Subject(name=None, source=IdentitySource.ANONYMOUS, roles=())
    assert subject.display == "anonymous"
    assert verifier.calls == []


def test_anonymous_gets_the_anonymous_role() -> None:
    snap = snapshot(Policy(settings=Settings(anonymous_role="viewer")))
    subject = identify(plain(), snap, None, NOW)
    assert subject == Subject(name=None, source=IdentitySource.ANONYMOUS, roles=("viewer",))


# --- roles -----------------------------------------------------------------------------------


def test_roles_of_groups_are_merged_sorted_and_deduplicated() -> None:
    subject = identify(plain(user="dave"), snapshot(), None, NOW)
    assert subject.roles == ("developer", "operator", "viewer")
    assert subject.groups == ("ml-team", "ops")


def test_role_inheritance_is_not_expanded_here() -> None:
    # developer extends viewer in the built-ins; the engine expands that, not identify().
    assert identify(plain(user="ci.example.com"), snapshot(), None, NOW).roles == ("developer",)


def test_unknown_group_is_refused() -> None:
    policy = Policy(users={"zed": User("zed", roles=("viewer",), groups=("nope",))})
    with pytest.raises(IdentityError, match=r'^user "zed" belongs to unknown group\(s\) nope; fix users\.zed\.groups$'):
        identify(plain(user="zed"), snapshot(policy), None, NOW)


def test_active_breakglass_adds_admin() -> None:
    snap = snapshot(breakglass={"alice": NOW + 60})
    subject = identify(plain(user="alice"), snap, None, NOW)
    assert subject.roles == ("admin", "developer")


@pytest.mark.parametrize("expiry", [NOW, NOW - 1])
def test_expired_breakglass_adds_nothing(expiry: float) -> None:
    snap = snapshot(breakglass={"alice": expiry})
    assert identify(plain(user="alice"), snap, None, NOW).roles == ("developer",)


def test_breakglass_does_not_duplicate_admin() -> None:
    snap = snapshot(breakglass={"bob": NOW + 60})
    assert identify(plain(user="bob"), snap, None, NOW).roles == ("admin",)


def test_breakglass_of_another_user_does_not_apply() -> None:
    snap = snapshot(breakglass={"bob": NOW + 60})
    assert identify(plain(user="alice"), snap, None, NOW).roles == ("developer",)


# --- index memoisation, purity ---------------------------------------------------------------


def test_index_is_built_once_per_snapshot_object() -> None:
    snap = snapshot(revision=41)
    assert DirectoryIndex.for_snapshot(snap) is DirectoryIndex.for_snapshot(snap)


def test_index_is_not_shared_by_snapshots_with_the_same_revision() -> None:
    first = snapshot(Policy(users={"u": User("u", roles=("viewer",))}), revision=7)
    second = snapshot(Policy(users={"u": User("u", roles=("admin",))}), revision=7)
    assert identify(plain(user="u"), first, None, NOW).roles == ("viewer",)
    assert identify(plain(user="u"), second, None, NOW).roles == ("admin",)


def test_resolve_does_not_import_jwt_or_cryptography() -> None:
    code = (
        "import sys, authz.identity, authz.identity.resolve;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jwt', 'cryptography')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
