"""Signed audit checkpoints at the edge: the Ed25519 key and the checkpoint logs (outside the DB).

Files::

    <state>/audit-keys/               mode 0700, separate from the token keys
        audit-signing.pem             the private key (PKCS#8 PEM, mode 0600), created on first use
        audit-verify-<kid>.pem        public keys kept after a key was replaced by hand
    <state>/checkpoints/<chain>.log   one JSON line per checkpoint or prune anchor (append only)

``kid`` is the first 16 hex digits of sha256 over the raw public key. Only this module (and
``authz.identity.token``) import ``cryptography``; its errors become ``ConfigError``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from authz.audit_chain import Checkpoint, parse_checkpoint
from authz.errors import ConfigError

__all__ = ["AuditKey", "CheckpointLog", "load_public_keys", "signature_check"]

SIGNING_FILE = "audit-signing.pem"
_MAX_KEY_FILE = 64 * 1024


def _kid(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(directory.stat().st_mode) != 0o700:
            directory.chmod(0o700)  # others must not read or plant key and checkpoint files
    except OSError as exc:
        raise ConfigError(f"cannot prepare {directory}: {exc.strerror or exc}") from exc


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open audit key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        # Fail closed: a key others could read may be stolen (forged checkpoints), or planted.
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise ConfigError(f"audit key {path} must be a regular file with mode 0600 (`chmod 600 {path}`)")
        return handle.read(_MAX_KEY_FILE)


class AuditKey:
    """The checkpoint signing key. ``load_or_create`` is safe to race from many processes."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.kid = _kid(private.public_key())

    @classmethod
    def load_or_create(cls, directory: Path) -> AuditKey:
        _private_dir(directory)
        path = directory / SIGNING_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")  # mode 0600
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)  # create-if-absent: a racing worker's key wins, we load it
            except OSError as exc:
                raise ConfigError(f"cannot write audit key {path}: {exc.strerror}") from exc
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        try:
            key = serialization.load_pem_private_key(_read_key(path), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def sign(self, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint`` with this key's kid and signature over its payload."""
        unsigned = replace(checkpoint, kid=self.kid, sig="")
        signature = self._private.sign(unsigned.payload())
        return replace(unsigned, sig=base64.b64encode(signature).decode("ascii"))


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every key that may have signed a checkpoint here: the signing key's and ``audit-verify-*``."""
    keys: dict[str, Ed25519PublicKey] = {}
    if (directory / SIGNING_FILE).exists():
        public = AuditKey.load_or_create(directory)._private.public_key()
        keys[_kid(public)] = public
    for path in sorted(directory.glob("audit-verify-*.pem")):
        try:
            key = serialization.load_pem_public_key(_read_key(path))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
        if isinstance(key, Ed25519PublicKey):
            keys[_kid(key)] = key
    return keys


def signature_check(keys: dict[str, Ed25519PublicKey]) -> Callable[[Checkpoint], bool]:
    """A ``SignatureCheck`` for ``authz.audit_chain.verify_chain`` over ``keys`` (kid → key)."""

    def check(checkpoint: Checkpoint) -> bool:
        key = keys.get(checkpoint.kid)
        if key is None:
            return False  # an unknown key vouches for nothing
        try:
            key.verify(base64.b64decode(checkpoint.sig, validate=True), checkpoint.payload())
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


class CheckpointLog:
    """The append-only checkpoint logs, one file per chain."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, chain: str) -> Path:
        return self.directory / f"{chain}.log"

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one signed line and fdatasync it; ``OSError`` when it cannot be made durable."""
        if not self.directory.is_dir():
            _private_dir(self.directory)
        fd = os.open(self.path(checkpoint.chain), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, checkpoint.to_line())  # one write of one short line: appended whole
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def chains(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.name[: -len(".log")] for path in self.directory.glob("*.log"))

    def read(self, chain: str) -> Iterator[Checkpoint]:
        """The lines of ``chain``'s log in file order; a malformed line yields kind ``malformed``."""
        path = self.path(chain)
        if not path.exists():
            return
        with path.open(encoding="utf-8", errors="replace") as handle:
            last_seq = 0
            for line in handle:
                if not line.endswith("\n"):
                    return  # a line torn by a crash mid-append was never a complete checkpoint
                if not line.strip():
                    continue
                try:
                    checkpoint = parse_checkpoint(line)
                except ValueError:
                    yield Checkpoint("malformed", chain, last_seq, "", 0.0)
                    return
                last_seq = checkpoint.seq
                yield checkpoint
