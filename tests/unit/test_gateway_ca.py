"""The gateway's certificates (authz.gateway.ca, authz.gateway.setup): names, usages, lifetimes, files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authz.errors import ConfigError
from authz.gateway.ca import CertificateAuthority, validate_common_name
from authz.gateway.setup import dockerd_flags, setup_gateway, write_client_bundle

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(now=NOW)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


T = TypeVar("T", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[T]) -> T:
    return cert.extensions.get_extension_for_class(kind).value


def test_ca_is_a_p256_ca_limited_to_end_entities(ca: CertificateAuthority) -> None:
    cert = ca.cert
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.ca
    assert constraints.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert cert.issuer == cert.subject


def test_client_cert_names_the_user_only(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("alice", dt.timedelta(hours=24), NOW)
    cert = issued.certificate
    assert _cn(cert) == "alice"
    assert len(list(cert.subject)) == 1  # the daemon reads CN; nothing else to confuse
    assert cert.issuer == ca.cert.subject
    assert _ext(cert, x509.ExtendedKeyUsage) == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    usage = _ext(cert, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # signed by the CA
    cert.verify_directly_issued_by(ca.cert)


def test_client_cert_lifetime(ca: CertificateAuthority) -> None:
    cert = ca.issue_client("alice", dt.timedelta(hours=24), NOW).certificate
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=24)
    assert NOW - dt.timedelta(minutes=10) < cert.not_valid_before_utc < NOW  # small clock-skew allowance


def test_certs_never_outlive_the_ca(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("svc", dt.timedelta(days=100_000), NOW)
    assert issued.not_after == ca.cert.not_valid_after_utc
    assert issued.certificate.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_server_cert_sans_and_usage(ca: CertificateAuthority) -> None:
    cert = ca.issue_server(["127.0.0.1", "localhost", "::1", "docker.internal"], now=NOW).certificate
    sans = _ext(cert, x509.SubjectAlternativeName)
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "docker.internal"]
    assert _ext(cert, x509.ExtendedKeyUsage) == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    cert.verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize("name", ["", " alice", "alice ", "a\nb", "x" * 65, "del\x7f"])
def test_bad_common_names(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(ConfigError):
        validate_common_name(name)
    with pytest.raises(ConfigError):
        ca.issue_client(name, dt.timedelta(hours=1), NOW)


def test_nonpositive_lifetime_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="positive"):
        ca.issue_client("alice", dt.timedelta(0), NOW)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_setup_creates_private_directory_and_keys(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    result = setup_gateway(directory, ["10.0.0.5"], now=NOW)
    assert result.created_ca
    assert result.issued_server
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca-key.pem") == 0o600
    assert _mode(directory / "server-key.pem") == 0o600
    assert (directory / "ca-key.pem").stat().st_uid == os.geteuid()
    server = x509.load_pem_x509_certificate((directory / "server.pem").read_bytes())
    sans = _ext(server, x509.SubjectAlternativeName)
    assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert dockerd_flags(directory) == [
        "-H", "tcp://127.0.0.1:2376", "--tlsverify",
        "--tlscacert", f"{directory}/ca.pem",
        "--tlscert", f"{directory}/server.pem",
        "--tlskey", f"{directory}/server-key.pem",
    ]  # fmt: skip


def test_setup_again_keeps_the_ca_and_reissues_only_when_needed(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    setup_gateway(directory, now=NOW)
    ca_pem = (directory / "ca.pem").read_bytes()
    server_pem = (directory / "server.pem").read_bytes()
    again = setup_gateway(directory, now=NOW)
    assert not again.created_ca
    assert not again.issued_server
    assert (directory / "server.pem").read_bytes() == server_pem
    more = setup_gateway(directory, ["gw.example"], now=NOW)  # a new name: new server cert
    assert more.issued_server
    assert not more.created_ca
    assert (directory / "ca.pem").read_bytes() == ca_pem
    late = setup_gateway(directory, ["gw.example"], now=NOW + dt.timedelta(days=810))  # near expiry
    assert late.issued_server


def test_setup_refuses_a_shared_directory(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        setup_gateway(directory, now=NOW)


def test_ca_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    setup_gateway(directory, now=NOW)
    (directory / "ca-key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        CertificateAuthority.load(directory)


def test_client_bundle_for_a_service(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    setup_gateway(directory, now=NOW)
    out = tmp_path / "ci"
    paths = write_client_bundle(directory, "ci.example.com", out, days=7, now=NOW)
    assert [p.name for p in paths] == ["ca.pem", "cert.pem", "key.pem"]
    assert _mode(out) == 0o700
    assert _mode(out / "key.pem") == 0o600
    assert (out / "ca.pem").read_bytes() == (directory / "ca.pem").read_bytes()
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert _cn(cert) == "ci.example.com"
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=7)
    assert _ext(cert, x509.ExtendedKeyUsage) == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    ca = CertificateAuthority.load(directory)
    cert.verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize(("name", "days", "fragment"), [("anonymous", 7, "anonymous"), ("ci", 0, "--days")])
def test_client_bundle_refusals(tmp_path: Path, name: str, days: int, fragment: str) -> None:
    directory = tmp_path / "gw"
    setup_gateway(directory, now=NOW)
    with pytest.raises(ConfigError, match=fragment):
        write_client_bundle(directory, name, tmp_path / "out", days=days, now=NOW)
    assert not (tmp_path / "out").exists()
