"""``gateway setup`` and ``gateway issue-client-cert``: the files, not the printing.

``setup_gateway`` is idempotent: an existing CA is kept (service certificates issued from it keep
working); the server certificate is (re)issued when missing, asked for, about to expire, or not
naming every requested host.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from authz.errors import ConfigError
from authz.gateway.ca import (
    CA_CERT,
    CA_KEY,
    SERVER_CERT,
    SERVER_DAYS,
    SERVER_KEY,
    CertificateAuthority,
    check_private_dir,
    ensure_private_dir,
    validate_common_name,
    write_file,
)
from authz.gateway.users import ANONYMOUS

__all__ = [
    "DEFAULT_HOSTS",
    "SERVICE_CERT_DAYS",
    "SetupResult",
    "dockerd_flags",
    "setup_gateway",
    "write_client_bundle",
]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
SERVICE_CERT_DAYS = 30
RENEW_WITHIN = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class SetupResult:
    directory: Path
    created_ca: bool
    issued_server: bool
    hosts: tuple[str, ...]
    server_not_after: dt.datetime


def setup_gateway(
    directory: Path,
    hostnames: Sequence[str] = (),
    *,
    renew_server: bool = False,
    server_days: int = SERVER_DAYS,
    now: dt.datetime | None = None,
) -> SetupResult:
    """Create (or complete) the gateway directory; see the module docstring for what is kept."""
    now = now or dt.datetime.now(dt.UTC)
    hosts = tuple(dict.fromkeys([*DEFAULT_HOSTS, *hostnames]))
    ensure_private_dir(directory)
    created = not (directory / CA_KEY).exists()
    if created:
        if (directory / CA_CERT).exists():
            # Fail closed: a CA certificate without its key is someone else's half-finished setup.
            raise ConfigError(f"{directory / CA_CERT} exists without {CA_KEY}; move it away first")
        ca = CertificateAuthority.create(now=now)
        ca.save(directory)
    else:
        ca = CertificateAuthority.load(directory)
    current = _server_cert(directory)
    if current is not None and not (renew_server or created or _needs_renewal(current, ca, hosts, now)):
        return SetupResult(directory, created, False, hosts, current.not_valid_after_utc)
    issued = ca.issue_server(hosts, days=server_days, now=now)
    write_file(directory / SERVER_KEY, issued.key_pem, 0o600)
    write_file(directory / SERVER_CERT, issued.cert_pem, 0o644)
    return SetupResult(directory, created, True, hosts, issued.not_after)


def _server_cert(directory: Path) -> x509.Certificate | None:
    if not (directory / SERVER_CERT).exists() or not (directory / SERVER_KEY).exists():
        return None
    try:
        return x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
    except ValueError:
        return None  # unreadable: issue a fresh one


def _needs_renewal(cert: x509.Certificate, ca: CertificateAuthority, hosts: Sequence[str], now: dt.datetime) -> bool:
    if cert.issuer != ca.cert.subject or cert.not_valid_after_utc - now < RENEW_WITHIN:
        return True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return any(_normal_host(h) not in have for h in hosts)


def _normal_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def dockerd_flags(directory: Path, listen: str = "tcp://127.0.0.1:2376") -> list[str]:
    """The dockerd arguments that make it require certificates from this gateway's CA."""
    return [
        "-H", listen,
        "--tlsverify",
        "--tlscacert", str(directory / CA_CERT),
        "--tlscert", str(directory / SERVER_CERT),
        "--tlskey", str(directory / SERVER_KEY),
    ]  # fmt: skip


def write_client_bundle(
    directory: Path,
    name: str,
    out: Path,
    *,
    days: int = SERVICE_CERT_DAYS,
    owner: tuple[int, int] | None = None,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Write ``ca.pem``, ``cert.pem`` (CN ``name``), ``key.pem`` (0600) into ``out`` (0700).

    ``owner`` (uid, gid) hands ``out`` and its files to a service account. Returns the paths.
    """
    validate_common_name(name)
    if name == ANONYMOUS:
        raise ConfigError(f"{ANONYMOUS!r} is the CN of unmapped gateway callers; pick another name")
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    check_private_dir(directory)
    ca = CertificateAuthority.load(directory)
    issued = ca.issue_client(name, dt.timedelta(days=days), now)
    ensure_private_dir(out, owner)
    paths = [out / "ca.pem", out / "cert.pem", out / "key.pem"]
    write_file(paths[0], ca.cert_pem, 0o644, owner)
    write_file(paths[1], issued.cert_pem, 0o644, owner)
    write_file(paths[2], issued.key_pem, 0o600, owner)
    return paths
