"""``authzctl gateway …`` in-process: exit codes, messages and files (no daemon needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from authz.cli import main


def test_setup_prints_the_dockerd_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "gw"
    assert main(["gateway", "setup", "--dir", str(directory), "--hostname", "::1"]) == 0
    out = capsys.readouterr().out
    assert "CA: created" in out
    assert "127.0.0.1, localhost, ::1" in out
    assert f"--tlsverify --tlscacert {directory}/ca.pem --tlscert {directory}/server.pem" in out
    assert f"--tlskey {directory}/server-key.pem" in out
    assert '--group ""' in out
    assert main(["gateway", "setup", "--dir", str(directory)]) == 0
    assert "CA: kept" in capsys.readouterr().out


def test_issue_client_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, out = tmp_path / "gw", tmp_path / "svc"
    assert main(["gateway", "setup", "--dir", str(directory)]) == 0
    argv = ["gateway", "issue-client-cert", "monitoring.example.com", "--dir", str(directory)]
    assert main([*argv, "--out", str(out), "--days", "3"]) == 0
    assert f"DOCKER_CERT_PATH={out}" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "monitoring.example.com"
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["issue-client-cert", "anonymous", "--out", "{tmp}/o"], 1, "anonymous"),
        (["issue-client-cert", "svc", "--out", "{tmp}/o", "--days", "0"], 1, "--days"),
        (["issue-client-cert", "svc", "--out", "{tmp}/o", "--owner", "no-such-user-xyz"], 2, "no such user"),
        (["serve", "--listen", "{tmp}/s.sock", "--socket-mode", "999"], 2, "octal"),
        (["serve", "--listen", "{tmp}/s.sock", "--socket-group", "no-such-group-xyz"], 2, "no such group"),
        (["serve", "--listen", "{tmp}/s.sock", "--daemon", "unix:///x.sock"], 1, "tcp://"),
        (["serve", "--listen", "{tmp}/s.sock", "--map", "{tmp}/missing.yaml"], 1, "user map"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    directory = tmp_path / "gw"
    assert main(["gateway", "setup", "--dir", str(directory)]) == 0
    capsys.readouterr()
    filled = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["gateway", *filled[:1], "--dir", str(directory), *filled[1:]]) == code
    err = capsys.readouterr().err
    assert err.startswith("authzctl: ")
    assert message in err
    assert not (tmp_path / "s.sock").exists()  # nothing was bound


def test_serve_refuses_a_world_readable_ca_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "gw"
    assert main(["gateway", "setup", "--dir", str(directory)]) == 0
    (directory / "ca-key.pem").chmod(0o644)
    assert main(["gateway", "serve", "--listen", str(tmp_path / "s.sock"), "--dir", str(directory)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    assert not (tmp_path / "s.sock").exists()
