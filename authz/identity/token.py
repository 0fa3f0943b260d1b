"""Ed25519-signed JWTs for ``X-Authz-Token``: the key store, issuing, and verification.

This is the only module in the project that imports ``jwt`` and ``cryptography``; every error they
raise is translated here (to ``IdentityError`` for tokens, ``ConfigError`` for key files).

Key files, in one directory (mode 0700)::

    token-signing.pem           the current private key (PKCS#8 PEM, mode 0600)
    token-verify-<kid>.pem      public keys retired by ``rotate()``; tokens they signed still verify

``kid`` is the first 16 hex digits of sha256 over the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from authz.errors import ConfigError, IdentityError

__all__ = ["DEFAULT_AUDIENCE", "Claims", "IssuedToken", "JwtVerifier", "KeyStore", "issue_token"]

DEFAULT_AUDIENCE = "docker-authz"
ALGORITHM = "EdDSA"
SIGNING_FILE = "token-signing.pem"
_VERIFY_RE = re.compile(r"token-verify-([0-9a-f]{16})\.pem")
_KID_RE = re.compile(r"[0-9a-f]{16}")
# Compact JWS only: three unpadded base64url parts. Anything else is refused before parsing.
_COMPACT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_MAX_TOKEN_CHARS = 8192  # ours are ~400 chars; the bound caps the work an attacker can cause
_MAX_KEY_FILE = 64 * 1024
_REFRESH_INTERVAL = 1.0  # seconds between disk rescans triggered by an unknown kid
# Header parameters our issuer writes. Others (crit, b64, jku, jwk, x5u …) change how a token is
# read or where keys come from; refuse them rather than let a library interpret them.
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti", "aud")
# Our own claim: the policy revision the token was issued at. Its user (and their roles) existed
# then, so a plugin that has not read that revision yet reads the store before deciding.
REVISION_CLAIM = "rev"
_MAX_REVISION = 2**63 - 1  # the revision column is a 64-bit integer


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path) -> bytes:
    """Read a key file without following symlinks; refuse one that group/others can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open token key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"token key {path} is not a regular file")
        # Fail closed: a key others could read may be stolen, one they could write may be planted.
        if info.st_mode & 0o077:
            mode = oct(stat.S_IMODE(info.st_mode))
            raise ConfigError(f"token key {path} has mode {mode}; run `chmod 600 {path}`")
        return handle.read(_MAX_KEY_FILE)


def _write_key_file(path: Path, data: bytes, *, exclusive: bool) -> bool:
    """Write ``data`` atomically with mode 0600. ``exclusive``: never replace an existing file.

    Returns False when ``exclusive`` and the file already exists (another process won the race).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pem")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent: concurrent workers agree on one key
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write token key {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


class KeyStore:
    """The signing key and every public key that may verify a token, kept in ``directory``.

    Call ``load_or_create()`` before use. Safe to share between threads: the key maps are replaced
    whole, never mutated in place.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._signing: Ed25519PrivateKey | None = None
        self._kid = ""
        self._public: dict[str, Ed25519PublicKey] = {}
        self._last_refresh = -math.inf
        self._lock = threading.Lock()

    def load_or_create(self) -> KeyStore:
        """Load the keys, creating the directory (0700) and a signing key (0600) if absent."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(self.directory.stat().st_mode) != 0o700:
                self.directory.chmod(0o700)  # others must not swap or read key files
        except OSError as exc:
            raise ConfigError(f"cannot prepare token key directory {self.directory}: {exc}") from exc
        signing_path = self.directory / SIGNING_FILE
        if not signing_path.exists():
            # Losing the race to another worker is fine: we then load the key it wrote.
            _write_key_file(signing_path, _private_pem(Ed25519PrivateKey.generate()), exclusive=True)
        self.refresh()
        return self

    def refresh(self) -> None:
        """Re-read every key file (another process may have rotated)."""
        with self._lock:
            signing = _load_private(self.directory / SIGNING_FILE)
            public = {key_id(signing.public_key()): signing.public_key()}
            for path in sorted(self.directory.glob("token-verify-*.pem")):
                match = _VERIFY_RE.fullmatch(path.name)
                if match is None:
                    raise ConfigError(f"unexpected file name {path}; expected token-verify-<16 hex>.pem")
                key = _load_public(path)
                # Fail closed: a file whose name and content disagree was edited by hand or swapped.
                if key_id(key) != match.group(1):
                    raise ConfigError(f"{path} holds the key with kid {key_id(key)}, not {match.group(1)}")
                public[match.group(1)] = key
            self._signing, self._kid, self._public = signing, key_id(signing.public_key()), public
            self._last_refresh = time.monotonic()

    def rotate(self) -> str:
        """Start signing with a new key; keep the old public key for verification. Returns the new kid."""
        self.signing_key  # noqa: B018 - raises ConfigError when not loaded
        with _directory_lock(self.directory):
            # Re-read under the lock: another process may have rotated since we loaded, and its
            # signing key is the one that must be kept as a verify key.
            self.refresh()
            old_public_pem = self.signing_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            # The old public key is saved before the signing key is replaced, so no token becomes
            # unverifiable if we crash in between.
            _write_key_file(self.directory / f"token-verify-{self.kid}.pem", old_public_pem, exclusive=False)
            new_pem = _private_pem(Ed25519PrivateKey.generate())
            _write_key_file(self.directory / SIGNING_FILE, new_pem, exclusive=False)
            self.refresh()
        return self.kid

    def retire(self, kid: str) -> None:
        """Forget a rotated-out public key: tokens it signed stop verifying (after a refresh)."""
        if kid == self.kid:
            raise ConfigError(f"kid {kid} is the current signing key; rotate() before retiring it")
        if not _KID_RE.fullmatch(kid):
            raise ConfigError(f"{kid!r} is not a key id (16 lowercase hex digits)")
        path = self.directory / f"token-verify-{kid}.pem"
        with _directory_lock(self.directory):
            try:
                path.unlink()
            except FileNotFoundError as exc:
                raise ConfigError(f"no retired key with kid {kid} in {self.directory}") from exc
            self.refresh()

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        if self._signing is None:
            raise ConfigError("token keys are not loaded; call KeyStore.load_or_create() first")
        return self._signing

    @property
    def kid(self) -> str:
        """Key id of the current signing key."""
        if self._signing is None:
            raise ConfigError("token keys are not loaded; call KeyStore.load_or_create() first")
        return self._kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id that verifies tokens, sorted."""
        return tuple(sorted(self._public))

    def has_key(self, kid: str) -> bool:
        """Whether ``kid`` is loaded now (no disk access)."""
        return kid in self._public

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The verification key for ``kid``; on a miss, rescan the directory at most once a second."""
        key = self._public.get(kid)
        # Rate-limited so tokens with random kids cannot turn every request into disk reads.
        stale = time.monotonic() - self._last_refresh >= _REFRESH_INTERVAL
        if key is None and stale and _KID_RE.fullmatch(kid):
            self.refresh()
            key = self._public.get(kid)
        return key


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock serialising key changes between processes."""
    try:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock token key directory {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed token and the facts an admin needs to record or revoke it."""

    token: str
    token_id: str  # jti
    subject: str
    issued_at: int
    expires_at: int
    kid: str
    policy_revision: int = 0


def issue_token(
    keys: KeyStore,
    subject: str,
    ttl_seconds: int,
    now: float,
    audience: str = DEFAULT_AUDIENCE,
    policy_revision: int = 0,
) -> IssuedToken:
    """Sign a token for ``subject`` valid from ``now`` for ``ttl_seconds`` with the current key.

    ``policy_revision``: the store's revision read after ``subject`` was found there (0: none
    written). Plugins that hold an older snapshot read the store before deciding on the token,
    so a user created or granted a role just before gets their first command right.
    """
    if not isinstance(subject, str) or not subject:
        raise IdentityError("token subject must be a non-empty user name")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise IdentityError(f"token lifetime must be a positive number of seconds, not {ttl_seconds!r}")
    if not _is_revision(policy_revision):
        raise IdentityError(f"policy revision must be an integer from 0 to {_MAX_REVISION}, not {policy_revision!r}")
    issued_at = int(now)
    expires_at = issued_at + ttl_seconds
    token_id = secrets.token_hex(16)  # 128 random bits
    kid = keys.kid
    claims: dict[str, Any] = {"sub": subject, "exp": expires_at, "iat": issued_at, "jti": token_id, "aud": audience}
    if policy_revision:
        claims[REVISION_CLAIM] = policy_revision
    token = jwt.encode(claims, keys.signing_key, algorithm=ALGORITHM, headers={"kid": kid})
    return IssuedToken(token, token_id, subject, issued_at, expires_at, kid, policy_revision)


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of a token (implements ``authz.ports.TokenClaims``)."""

    subject: str
    token_id: str
    expires_at: float
    issued_at: float
    policy_revision: int = 0  # the ``rev`` claim; 0 for tokens issued without one


def _when(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"epoch {timestamp!r}"


@dataclass(frozen=True, slots=True)
class _Cached:
    claims: Claims
    kid: str
    not_before: float | None


class JwtVerifier:
    """Verifies ``X-Authz-Token`` values (implements ``authz.ports.TokenVerifier``).

    ``verify`` raises ``IdentityError`` for every bad token; no pyjwt or cryptography exception
    escapes. Successful verifications are cached by sha256 of the token until the token's ``exp``;
    the time checks run again on every call and revocation is the caller's job (never cached).
    """

    def __init__(
        self,
        keys: KeyStore,
        audience: str = DEFAULT_AUDIENCE,
        leeway_seconds: float = 30,
        cache_size: int = 10_000,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.leeway = float(leeway_seconds)
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, now: float) -> Claims:
        """Verify signature, algorithm, key id, audience, claims and times against ``now``.

        Raises ``IdentityError`` for a bad token, ``ConfigError`` when a key file cannot be read.
        """
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or not _COMPACT_RE.fullmatch(token):
            raise IdentityError("X-Authz-Token is malformed: expected a JWT (three base64url parts joined by dots)")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None:
                self._cache.move_to_end(digest)
        # A hit skips only the signature; times are rechecked and a retired key no longer counts.
        if hit is not None and now < hit.claims.expires_at and self.keys.has_key(hit.kid):
            self._check_times(hit.claims, now, hit.not_before)
            return hit.claims
        claims, kid, not_before = self._verify_uncached(token, now)
        if now < claims.expires_at:  # never cache past exp (leeway-only validity is not cached)
            with self._lock:
                self._cache[digest] = _Cached(claims, kid, not_before)
                self._cache.move_to_end(digest)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return claims

    def _verify_uncached(self, token: str, now: float) -> tuple[Claims, str, float | None]:
        header = _unverified_header(token)
        alg = header.get("alg")
        # Algorithm confusion (alg none, HS256 keyed with our public key …): only EdDSA is accepted.
        if alg != ALGORITHM:
            shown = repr(alg)[:40]  # attacker-chosen: keep the message short
            raise IdentityError(f"token algorithm {shown} is not allowed; only {ALGORITHM} tokens are accepted")
        extra = sorted(set(header) - _ALLOWED_HEADER)
        if extra:
            raise IdentityError(f"token header has unsupported parameters: {', '.join(extra)}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise IdentityError("token header has no kid (key id)")
        key = self.keys.public_key(kid)
        if key is None:
            raise IdentityError(f"token was signed by an unknown key (kid {kid[:32]!r}); issue a new token")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                # pyjwt reads the wall clock; times are checked below against the ``now`` we are given.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "strict_aud": True,
                    "require": list(_REQUIRED_CLAIMS),
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise IdentityError("token signature is invalid (tampered, or signed by another key)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise IdentityError(f"token is missing the {exc.claim!r} claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise IdentityError(f"token audience is not {self.audience!r}") from exc
        except (jwt.PyJWTError, InvalidSignature, ValueError, TypeError) as exc:
            raise IdentityError(f"token is malformed: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError on hostile JSON: still just a bad token
            raise IdentityError(f"token is malformed: {type(exc).__name__}") from exc
        claims = _claims(payload)
        nbf = payload.get("nbf")
        not_before = None if nbf is None else _number(nbf, "nbf")
        self._check_times(claims, now, not_before)
        return claims, kid, not_before

    def _check_times(self, claims: Claims, now: float, not_before: float | None) -> None:
        if now >= claims.expires_at + self.leeway:
            raise IdentityError(
                f"token {claims.token_id} expired at {_when(claims.expires_at)} (now {_when(now)}); "
                "ask an admin for a new one"
            )
        if claims.issued_at > now + self.leeway:
            raise IdentityError(
                f"token {claims.token_id} is issued in the future ({_when(claims.issued_at)}, "
                f"now {_when(now)}); check the clocks"
            )
        if not_before is not None and not_before > now + self.leeway:
            raise IdentityError(f"token {claims.token_id} is not valid before {_when(not_before)}")


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header as a dict, decoded strictly (no duplicate keys)."""
    try:
        raw = base64.urlsafe_b64decode(token.split(".", 1)[0] + "==")
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # binascii/Unicode/JSON errors are ValueErrors
        raise IdentityError(f"token header is not base64url JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise IdentityError("token header is not a JSON object")
    return header


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        # Fail closed: parsers disagree on which duplicate wins (e.g. two "alg" values).
        if name in result:
            raise ValueError(f"duplicate key {name!r}")
        result[name] = value
    return result


def _number(value: object, name: str) -> float:
    """A NumericDate claim as a finite float (bools, strings, NaN and huge integers are refused)."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        with contextlib.suppress(OverflowError):
            if math.isfinite(number := float(value)):
                return number
    raise IdentityError(f"token claim {name!r} must be a number of seconds since the epoch")


def _is_revision(value: object) -> TypeGuard[int]:
    """A policy revision: an int (not a bool) that the 64-bit revision column can hold, 0 included."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_REVISION


def _claims(payload: dict[str, Any]) -> Claims:
    subject, token_id = payload["sub"], payload["jti"]
    if not isinstance(subject, str) or not subject:
        raise IdentityError("token claim 'sub' must be a non-empty user name")
    if not isinstance(token_id, str) or not token_id:
        raise IdentityError("token claim 'jti' must be a non-empty string")
    expires_at, issued_at = _number(payload["exp"], "exp"), _number(payload["iat"], "iat")
    if expires_at <= issued_at:
        raise IdentityError(f"token {token_id} expires before it was issued")
    revision = payload.get(REVISION_CLAIM, 0)
    if not _is_revision(revision):
        raise IdentityError(f"token claim {REVISION_CLAIM!r} must be a policy revision (a non-negative integer)")
    return Claims(subject=subject, token_id=token_id, expires_at=expires_at, issued_at=issued_at,
                  policy_revision=revision)  # fmt: skip
