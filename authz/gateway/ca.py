"""The gateway's certificate authority: the CA, the daemon's server certificate, client certificates.

Every key is ECDSA P-256 with ECDSA-SHA256 signatures: Go's crypto/tls (dockerd 20.10 is built with
Go 1.19) accepts it for server and client certificates, as do OpenSSL and the docker CLI.

Layout of the gateway directory (mode 0700, keys 0600, owned by whoever ran ``setup``):

=====================  ===========================================================
``ca.pem``             the CA certificate (``dockerd --tlscacert``)
``ca-key.pem``         the CA key: whoever reads it can be any user to the daemon
``server.pem``         the daemon's server certificate (``--tlscert``)
``server-key.pem``     its key (``--tlskey``)
=====================  ===========================================================

Client certificates carry the authz user name as their only subject attribute (CN): the daemon
passes exactly that CN to the plugin as ``User``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authz.errors import ConfigError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CertificateAuthority",
    "IssuedCert",
    "check_private_dir",
    "check_private_file",
    "ensure_private_dir",
    "validate_common_name",
    "write_file",
]

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"

CA_DAYS = 3650
SERVER_DAYS = 825
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before in the past: a daemon clock slightly behind still accepts
MAX_CN = 64  # X.520 ub-common-name


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validate_common_name(name: str) -> str:
    """Return ``name`` if it can be a certificate CN that the plugin will read back unchanged.

    Raises ``ConfigError``: empty, longer than 64 characters, surrounding blanks or control
    characters (the daemon would pass them on, but no policy key could match them safely).
    """
    if not name or len(name) > MAX_CN:
        raise ConfigError(f"certificate name {name!r} must be 1 to {MAX_CN} characters")
    if name != name.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ConfigError(f"certificate name {name!r} has surrounding blanks or control characters")
    return name


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate and its private key, both PEM (key: unencrypted PKCS#8)."""

    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """A CA certificate with its key; issues server and client certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if cert.public_key() != key.public_key():
            raise ConfigError("the CA certificate and the CA key do not belong together")
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls, common_name: str = "docker-authz gateway CA", days: int = CA_DAYS, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """A new self-signed CA that may sign end-entity certificates only (path length 0)."""
        now = now or _utcnow()
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, validate_common_name(common_name))])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Read ``ca.pem`` and ``ca-key.pem``; refuse a key that others can read."""
        key_path = directory / CA_KEY
        try:
            check_private_file(key_path)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the gateway CA in {directory}: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"the gateway CA in {directory} is not valid PEM: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an ECDSA key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        """Write ``ca.pem`` (0644) and ``ca-key.pem`` (0600) into ``directory``."""
        write_file(directory / CA_KEY, _key_pem(self.key), 0o600)
        write_file(directory / CA_CERT, self.cert_pem, 0o644)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hosts: Sequence[str], days: int = SERVER_DAYS, now: dt.datetime | None = None) -> IssuedCert:
        """The daemon's certificate: every ``hosts`` entry as an IP or DNS SAN, EKU serverAuth."""
        if not hosts:
            raise ConfigError("a server certificate needs at least one host name or address")
        names = list(dict.fromkeys(_san(h) for h in hosts))
        return self._issue(hosts[0], dt.timedelta(days=days), ExtendedKeyUsageOID.SERVER_AUTH, names, now)

    def issue_client(self, common_name: str, lifetime: dt.timedelta, now: dt.datetime | None = None) -> IssuedCert:
        """A client certificate whose CN is the authz user name, EKU clientAuth, no SAN."""
        return self._issue(common_name, lifetime, ExtendedKeyUsageOID.CLIENT_AUTH, [], now)

    def _issue(
        self,
        common_name: str,
        lifetime: dt.timedelta,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        now: dt.datetime | None,
    ) -> IssuedCert:
        now = now or _utcnow()
        if lifetime <= dt.timedelta(0):
            raise ConfigError(f"certificate lifetime must be positive, got {lifetime}")
        # Never outlive the CA: the daemon would reject the chain at that point anyway.
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, validate_common_name(common_name))])
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), not_after)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- files -------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Atomically replace ``path`` with ``data``; the file has ``mode`` from its first byte on."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def ensure_private_dir(path: Path, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` as 0700 if missing; refuse an existing one others can enter or that we don't own."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)
        if owner is not None:
            os.chown(path, *owner)
        return
    check_private_dir(path, owner[0] if owner is not None else None)


def check_private_dir(path: Path, uid: int | None = None) -> None:
    """Raise ``ConfigError`` unless ``path`` is a directory owned by ``uid`` (default: us), mode 0700."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise ConfigError(f"cannot use directory {path}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a directory")
    expected = os.geteuid() if uid is None else uid
    # Fail closed: keys in a directory someone else controls could be swapped or read.
    if info.st_uid != expected:
        raise ConfigError(f"{path} is owned by uid {info.st_uid}, expected {expected}")
    if info.st_mode & 0o077:
        raise ConfigError(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; run: chmod 700 {path}")


def check_private_file(path: Path) -> None:
    """Raise ``ConfigError`` if the key file ``path`` is readable by group or others."""
    info = os.stat(path)
    if info.st_mode & 0o077:
        # Fail closed: a key others could read may already be copied; re-run setup after chmod 600.
        raise ConfigError(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; run: chmod 600 {path}")
