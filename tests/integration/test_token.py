"""The real Ed25519 KeyStore/JwtVerifier, alone and through identify(), on key files in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import authz.identity.token as token_mod
from authz.errors import ConfigError, IdentityError
from authz.identity.resolve import TOKEN_HEADER, identify
from authz.identity.token import SIGNING_FILE, Claims, JwtVerifier, KeyStore, issue_token
from authz.policy.model import Group, Policy, PolicySnapshot, User
from authz.request import DockerRequest, IdentitySource

CAPTURES = Path("/work/shared/reference/captures")
NOW = 1_800_000_000.0
LEEWAY = 30


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys").load_or_create()


@pytest.fixture
def verifier(keys: KeyStore) -> JwtVerifier:
    return JwtVerifier(keys, leeway_seconds=LEEWAY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "exp": int(NOW) + 600,
        "iat": int(NOW),
        "jti": "0" * 32,
        "aud": "docker-authz",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(keys: KeyStore, payload: dict[str, Any], **header: Any) -> str:
    """A token signed with the store's real key but with hand-chosen claims/header."""
    return jwt.encode(payload, keys.signing_key, algorithm="EdDSA", headers={"kid": keys.kid, **header})


def decoded(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"x" * 64) -> str:
    return f"{segment(header)}.{segment(payload)}.{b64(signature)}"


# --- KeyStore --------------------------------------------------------------------------------


def test_load_or_create_makes_private_files_and_a_stable_kid(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "keys"
    first = KeyStore(directory).load_or_create()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / SIGNING_FILE).stat().st_mode) == 0o600
    raw = first.signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert first.kid == hashlib.sha256(raw).hexdigest()[:16]
    assert KeyStore(directory).load_or_create().kid == first.kid  # loaded, not regenerated


def test_existing_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    KeyStore(directory).load_or_create()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    kids: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        kids.append(KeyStore(directory).load_or_create().kid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 8
    assert len(set(kids)) == 1
    assert [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")] == []


def test_world_readable_signing_key_is_refused(keys: KeyStore) -> None:
    os.chmod(keys.directory / SIGNING_FILE, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        KeyStore(keys.directory).load_or_create()


def test_symlinked_signing_key_is_refused(tmp_path: Path, keys: KeyStore) -> None:
    target = tmp_path / "elsewhere.pem"
    os.replace(keys.directory / SIGNING_FILE, target)
    (keys.directory / SIGNING_FILE).symlink_to(target)
    with pytest.raises(ConfigError):
        KeyStore(keys.directory).load_or_create()


def test_verify_file_whose_name_lies_about_its_kid_is_refused(keys: KeyStore) -> None:
    old = keys.kid
    keys.rotate()
    os.replace(keys.directory / f"token-verify-{old}.pem", keys.directory / "token-verify-0123456789abcdef.pem")
    with pytest.raises(ConfigError, match="not 0123456789abcdef"):
        keys.refresh()


def test_unloaded_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="load_or_create"):
        issue_token(KeyStore(tmp_path), "alice", 60, NOW)


# --- issue and verify ------------------------------------------------------------------------


def test_issued_token_round_trips(keys: KeyStore, verifier: JwtVerifier) -> None:
    issued = issue_token(keys, "alice", 3600, NOW + 0.7)
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == keys.kid == issued.kid
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(payload) == {"sub", "exp", "iat", "jti", "aud"}
    assert payload["aud"] == "docker-authz"
    assert (issued.issued_at, issued.expires_at) == (int(NOW), int(NOW) + 3600)
    assert len(issued.token_id) == 32
    int(issued.token_id, 16)
    assert verifier.verify(issued.token, NOW) == Claims("alice", issued.token_id, NOW + 3600, NOW)


def test_the_policy_revision_a_token_was_issued_at_travels_in_rev(keys: KeyStore, verifier: JwtVerifier) -> None:
    issued = issue_token(keys, "alice", 3600, NOW, policy_revision=42)
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert (payload["rev"], issued.policy_revision) == (42, 42)
    assert verifier.verify(issued.token, NOW).policy_revision == 42
    # a token issued before the claim existed (or by a store with no revision yet) reads as 0
    assert verifier.verify(signed(keys, claims()), NOW).policy_revision == 0


@pytest.mark.parametrize("revision", [-1, 2**63, True, 1.5, "7"])
def test_issue_refuses_a_revision_that_is_not_one(keys: KeyStore, revision: Any) -> None:
    with pytest.raises(IdentityError, match="policy revision"):
        issue_token(keys, "alice", 60, NOW, policy_revision=revision)


def test_token_ids_are_random(keys: KeyStore) -> None:
    assert issue_token(keys, "a", 60, NOW).token_id != issue_token(keys, "a", 60, NOW).token_id


@pytest.mark.parametrize(("subject", "ttl"), [("", 60), ("alice", 0), ("alice", -5), ("alice", True)])
def test_issue_refuses_bad_arguments(keys: KeyStore, subject: str, ttl: int) -> None:
    with pytest.raises(IdentityError):
        issue_token(keys, subject, ttl, NOW)


def test_leeway_applies_to_expiry_and_issue_time(keys: KeyStore, verifier: JwtVerifier) -> None:
    issued = issue_token(keys, "alice", 60, NOW)
    assert verifier.verify(issued.token, NOW + 60 + LEEWAY - 1).subject == "alice"
    with pytest.raises(IdentityError, match=r"expired at 2027-01-15T08:01:00Z"):
        verifier.verify(issued.token, NOW + 60 + LEEWAY)
    assert verifier.verify(issued.token, NOW - LEEWAY).subject == "alice"
    with pytest.raises(IdentityError, match="issued in the future"):
        verifier.verify(issued.token, NOW - LEEWAY - 1)


def test_not_before_in_the_future_is_refused(keys: KeyStore, verifier: JwtVerifier) -> None:
    token = signed(keys, claims(nbf=int(NOW) + 300))
    with pytest.raises(IdentityError, match="not valid before"):
        verifier.verify(token, NOW)
    assert verifier.verify(token, NOW + 300).subject == "alice"


DUPLICATE_ALG = b'{"alg":"none","alg":"EdDSA","kid":"x"}'


# Bad tokens, built from the store's key unless they are about the key. Each names the message
# fragment the caller must see.
def bad_tokens(keys: KeyStore, tmp_path: Path) -> dict[str, tuple[str, str]]:
    other = KeyStore(tmp_path / "other").load_or_create()
    good = issue_token(keys, "alice", 600, NOW).token
    head, body, sig = good.split(".")
    public_pem = keys.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = segment({"alg": "HS256", "typ": "JWT", "kid": keys.kid})
    hs_input = f"{hs_header}.{segment(claims())}".encode()
    return {
        "not a jwt (real capture value)": ("tok-from-config", "malformed"),
        "bearer prefix": (f"Bearer {good}", "malformed"),
        "oversized": (good + "A" * 9000, "malformed"),
        "alg none, empty signature": (raw_token({"alg": "none"}, claims(), b""), "malformed"),
        "alg none": (raw_token({"alg": "none", "kid": keys.kid}, claims()), "algorithm 'none'"),
        "hs256 keyed with public pem": (
            f"{hs_input.decode()}.{b64(hmac.new(public_pem, hs_input, hashlib.sha256).digest())}",
            "algorithm 'HS256'",
        ),
        "alg Ed25519 alias": (raw_token({"alg": "Ed25519", "kid": keys.kid}, claims()), "algorithm"),
        "wrong audience": (signed(keys, claims(aud="kubernetes")), "audience"),
        "audience list": (signed(keys, claims(aud=["docker-authz", "x"])), "audience"),
        "signed by another key under our kid": (
            jwt.encode(claims(), other.signing_key, algorithm="EdDSA", headers={"kid": keys.kid}),
            "signature is invalid",
        ),
        "tampered payload": (f"{head}.{segment(claims(sub='bob'))}.{sig}", "signature is invalid"),
        "tampered header": (
            f"{segment({'alg': 'EdDSA', 'kid': keys.kid, 'typ': 'jwt'})}.{body}.{sig}",
            "signature",
        ),
        "unknown kid": (issue_token(other, "alice", 600, NOW).token, "unknown key"),
        "no kid": (jwt.encode(claims(), keys.signing_key, algorithm="EdDSA"), "no kid"),
        "missing jti": (signed(keys, claims(jti=None)), "missing the 'jti' claim"),
        "missing exp": (signed(keys, claims(exp=None)), "missing the 'exp' claim"),
        "missing aud": (signed(keys, claims(aud=None)), "missing the 'aud' claim"),
        "sub not a string": (signed(keys, claims(sub=7)), "malformed"),
        "exp as string": (signed(keys, claims(exp="never")), "'exp' must be a number"),
        "exp before iat": (signed(keys, claims(exp=int(NOW) - 1)), "expires before it was issued"),
        "rev negative": (signed(keys, claims(rev=-1)), "claim 'rev' must be a policy revision"),
        "rev beyond 64 bits": (signed(keys, claims(rev=2**63)), "claim 'rev' must be a policy revision"),
        "rev as boolean": (signed(keys, claims(rev=True)), "claim 'rev' must be a policy revision"),
        "rev as float": (signed(keys, claims(rev=3.0)), "claim 'rev' must be a policy revision"),
        "rev as string": (signed(keys, claims(rev="3")), "claim 'rev' must be a policy revision"),
        "crit header": (signed(keys, claims(), crit=["exp"]), "unsupported parameters: crit"),
        "jku header": (signed(keys, claims(), jku="http://127.0.0.1/keys"), "unsupported parameters: jku"),
        "duplicate alg": (
            f"{b64(DUPLICATE_ALG)}.{body}.{sig}",
            "duplicate key",
        ),
        "header not json": (f"{b64(b'nope')}.{body}.{sig}", "not base64url JSON"),
        "header is a list": (f"{segment(['EdDSA'])}.{body}.{sig}", "not a JSON object"),
        "deeply nested payload, signed": (
            jwt.api_jws.PyJWS().encode(b"[" * 5000, keys.signing_key, algorithm="EdDSA", headers={"kid": keys.kid}),
            "malformed",
        ),
        "payload not an object, signed": (
            jwt.api_jws.PyJWS().encode(b'"alice"', keys.signing_key, algorithm="EdDSA", headers={"kid": keys.kid}),
            "malformed",
        ),
        "expired": (issue_token(keys, "alice", 60, NOW - 3600).token, "expired at"),
        "issued in the future": (issue_token(keys, "alice", 600, NOW + 3600).token, "issued in the future"),
    }


def test_every_bad_token_is_refused_with_its_reason(tmp_path: Path, keys: KeyStore, verifier: JwtVerifier) -> None:
    for case, (token, fragment) in bad_tokens(keys, tmp_path).items():
        with pytest.raises(IdentityError) as info:
            verifier.verify(token, NOW)
        assert fragment in str(info.value), (case, str(info.value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_mutated_tokens_only_ever_raise_identity_error(data: st.DataObject, verifier: JwtVerifier) -> None:
    good = issue_token(verifier.keys, "alice", 600, NOW).token
    position = data.draw(st.integers(0, len(good) - 1))
    junk = data.draw(st.text(alphabet='ABCxyz019-_.=+/ {}"', min_size=0, max_size=8))
    mutated = good[:position] + junk + good[position + 1 :]
    try:
        verifier.verify(mutated, NOW)
    except IdentityError:
        return
    # Accepted: only if it decodes to exactly the signed bytes (e.g. unused low bits of base64).
    assert [decoded(part) for part in mutated.split(".")] == [decoded(part) for part in good.split(".")]


# --- rotation --------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid(keys: KeyStore, verifier: JwtVerifier) -> None:
    before = issue_token(keys, "alice", 600, NOW)
    old_kid = keys.kid
    new_kid = keys.rotate()
    assert new_kid != old_kid
    assert stat.S_IMODE((keys.directory / f"token-verify-{old_kid}.pem").stat().st_mode) == 0o600
    after = issue_token(keys, "bob", 600, NOW)
    assert after.kid == new_kid
    assert keys.kids == tuple(sorted((old_kid, new_kid)))
    assert verifier.verify(before.token, NOW).subject == "alice"
    assert verifier.verify(after.token, NOW).subject == "bob"
    # A fresh process loads both.
    fresh = JwtVerifier(KeyStore(keys.directory).load_or_create())
    assert fresh.verify(before.token, NOW).subject == "alice"


def test_rotation_by_another_process_is_picked_up(monkeypatch: pytest.MonkeyPatch, keys: KeyStore) -> None:
    monkeypatch.setattr(token_mod, "_REFRESH_INTERVAL", 0.0)
    running = JwtVerifier(KeyStore(keys.directory).load_or_create())
    before = issue_token(keys, "alice", 600, NOW)
    keys.rotate()  # "another process": the running verifier's store has not seen it
    after = issue_token(keys, "alice", 600, NOW)
    assert running.verify(after.token, NOW).subject == "alice"
    assert running.verify(before.token, NOW).subject == "alice"


def test_stale_store_rotating_keeps_the_other_processes_key(keys: KeyStore) -> None:
    stale = KeyStore(keys.directory).load_or_create()
    keys.rotate()
    current = issue_token(keys, "alice", 600, NOW)
    stale.rotate()  # must save keys' current key, not its own outdated view
    assert JwtVerifier(stale).verify(current.token, NOW).subject == "alice"


def test_retired_key_stops_verifying_even_when_cached(keys: KeyStore, verifier: JwtVerifier) -> None:
    old = issue_token(keys, "alice", 600, NOW)
    assert verifier.verify(old.token, NOW).subject == "alice"
    keys.rotate()
    with pytest.raises(ConfigError, match="current signing key"):
        keys.retire(keys.kid)
    keys.retire(old.kid)
    with pytest.raises(IdentityError, match="unknown key"):
        verifier.verify(old.token, NOW)


# --- cache -----------------------------------------------------------------------------------


class CountingDecode:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._decode = jwt.decode
        monkeypatch.setattr(jwt, "decode", self)  # token.py calls jwt.decode through the module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._decode(*args, **kwargs)


def test_successful_verification_is_cached(monkeypatch: pytest.MonkeyPatch, keys: KeyStore) -> None:
    counter = CountingDecode(monkeypatch)
    verifier = JwtVerifier(keys)
    token = issue_token(keys, "alice", 600, NOW).token
    for offset in range(5):
        assert verifier.verify(token, NOW + offset).subject == "alice"
    assert counter.calls == 1


def test_cache_never_outlives_expiry(monkeypatch: pytest.MonkeyPatch, keys: KeyStore) -> None:
    counter = CountingDecode(monkeypatch)
    verifier = JwtVerifier(keys, leeway_seconds=LEEWAY)
    token = issue_token(keys, "alice", 60, NOW).token
    verifier.verify(token, NOW)
    verifier.verify(token, NOW + 60)  # at exp: within leeway, but verified again, not served from cache
    assert counter.calls == 2
    with pytest.raises(IdentityError, match="expired"):
        verifier.verify(token, NOW + 60 + LEEWAY)


def test_cached_token_is_rechecked_against_an_earlier_now(keys: KeyStore, verifier: JwtVerifier) -> None:
    token = issue_token(keys, "alice", 600, NOW).token
    verifier.verify(token, NOW)
    with pytest.raises(IdentityError, match="issued in the future"):
        verifier.verify(token, NOW - 3600)


def test_failures_are_not_cached(keys: KeyStore, verifier: JwtVerifier) -> None:
    token = issue_token(keys, "alice", 600, NOW + 3600).token
    with pytest.raises(IdentityError):
        verifier.verify(token, NOW)
    assert verifier.verify(token, NOW + 3600).subject == "alice"


def test_cache_is_bounded_lru(monkeypatch: pytest.MonkeyPatch, keys: KeyStore) -> None:
    counter = CountingDecode(monkeypatch)
    verifier = JwtVerifier(keys, cache_size=2)
    t1, t2, t3 = (issue_token(keys, "alice", 600, NOW).token for _ in range(3))
    verifier.verify(t1, NOW)
    verifier.verify(t2, NOW)
    verifier.verify(t1, NOW)  # t1 most recent: t2 is evicted next
    verifier.verify(t3, NOW)
    assert counter.calls == 3
    verifier.verify(t1, NOW)
    assert counter.calls == 3
    verifier.verify(t2, NOW)
    assert counter.calls == 4


# --- through identify() with realistic requests ----------------------------------------------


POLICY = Policy(
    groups={"ml-team": Group("ml-team", roles=("developer",))},
    users={"alice": User("alice", groups=("ml-team",)), "bob": User("bob", roles=("admin",))},
)


def capture(name: str) -> DockerRequest:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"capture {path} is not available")
    wire = json.loads(path.read_text())["authz_req"]["wire"]
    return DockerRequest(
        method=wire["RequestMethod"],
        uri=wire["RequestUri"],
        headers=wire.get("RequestHeaders") or {},
        user=wire.get("User", ""),
    )


def with_token(request: DockerRequest, token: str) -> DockerRequest:
    return replace(request, headers={**request.headers, TOKEN_HEADER: token})


def test_identify_with_a_real_token_from_the_cli_config(keys: KeyStore, verifier: JwtVerifier) -> None:
    issued = issue_token(keys, "alice", 600, NOW)
    request = with_token(capture("custom-header__02_GET_version.json"), issued.token)
    subject = identify(request, PolicySnapshot(1, POLICY), verifier, NOW)
    assert (subject.name, subject.source, subject.roles, subject.token_id) == (
        "alice",
        IdentitySource.TOKEN,
        ("developer",),
        issued.token_id,
    )


def test_identify_checks_revocation_on_every_request(keys: KeyStore, verifier: JwtVerifier) -> None:
    issued = issue_token(keys, "alice", 600, NOW)
    request = with_token(capture("custom-header__01_HEAD_ping.json"), issued.token)
    assert identify(request, PolicySnapshot(1, POLICY), verifier, NOW).name == "alice"  # now cached
    revoked = PolicySnapshot(2, POLICY, revoked_tokens=frozenset({issued.token_id}))
    with pytest.raises(IdentityError, match=f"token {issued.token_id} was revoked"):
        identify(request, revoked, verifier, NOW)


def test_identify_tls_and_token_must_agree(keys: KeyStore, verifier: JwtVerifier) -> None:
    tls = capture("tls-version__02_GET_version.json")
    snap = PolicySnapshot(1, POLICY)
    same = identify(with_token(tls, issue_token(keys, "alice", 600, NOW).token), snap, verifier, NOW)
    assert (same.name, same.source) == ("alice", IdentitySource.TLS)
    with pytest.raises(IdentityError, match=r'"alice".*"bob"'):
        identify(with_token(tls, issue_token(keys, "bob", 600, NOW).token), snap, verifier, NOW)


def test_identify_refuses_every_bad_token(tmp_path: Path, keys: KeyStore, verifier: JwtVerifier) -> None:
    request = capture("custom-header__02_GET_version.json")
    snap = PolicySnapshot(1, POLICY)
    for case, (token, fragment) in bad_tokens(keys, tmp_path).items():
        with pytest.raises(IdentityError) as info:
            identify(with_token(request, token), snap, verifier, NOW)
        assert fragment in str(info.value), (case, str(info.value))
