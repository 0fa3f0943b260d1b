"""``DaemonImageInspector``: against a fake daemon on a unix socket, and (``e2e``) a real dockerd.

The e2e tests reuse the e2e harness (tests/e2e is put on ``sys.path`` for them): one private
dockerd with images imported with and without ``USER``; and a whole stack (plugin + dockerd)
where the plugin looks the USER up through the daemon, which calls the plugin back with the
internal token.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from authz.decide import INTERNAL_HEADER
from authz.errors import ConfigError
from authz.image_inspect import DaemonImageInspector, load_or_create_internal_token, unix_socket_path

TOKEN = "ab" * 32
E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"


class FakeDaemon:
    """A unix-socket HTTP server answering ``GET /images/{ref}/json`` from ``images``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images: dict[str, Any] = {}
        self.volumes: dict[str, Any] = {}  # GET /volumes/{name}
        self.volume_status: int | None = None  # answer every volume read with this status
        self.requests: list[tuple[str, str | None]] = []  # (path, internal header)
        self.delay = 0.0
        self.raw: bytes | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append((self.path, self.headers.get(INTERNAL_HEADER)))
                time.sleep(fake.delay)
                prefix, suffix = "/images/", "/json"
                ref = self.path[len(prefix) : -len(suffix)] if self.path.startswith(prefix) else ""
                volume = self.path.removeprefix("/volumes/") if self.path.startswith("/volumes/") else None
                if volume is not None:
                    status = fake.volume_status or (200 if volume in fake.volumes else 404)
                    body = json.dumps(fake.volumes.get(volume, {"message": "no such volume"})).encode()
                elif fake.raw is not None:
                    body, status = fake.raw, 200
                elif ref in fake.images:
                    body, status = json.dumps(fake.images[ref]).encode(), 200
                else:
                    body, status = b'{"message":"No such image"}', 404
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep the test output clean

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path / "d.sock") as daemon:
        yield daemon


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reads_config_user_and_sends_the_internal_token(fake: FakeDaemon) -> None:
    fake.images["tiny"] = {"Id": "sha256:x", "Config": {"User": "1000"}}
    fake.images["root"] = {"Config": {"User": ""}}
    fake.images["bare"] = {"Config": None}
    fake.images["docker.io/library/app:1"] = {"Config": {"User": "app"}}
    inspector = DaemonImageInspector(f"unix://{fake.path}", TOKEN)
    assert inspector.image_user("tiny") == "1000"
    assert inspector.image_user("root") == ""
    assert inspector.image_user("bare") == ""  # no config: the default user, root
    assert inspector.image_user("docker.io/library/app:1") == "app"
    assert fake.requests[0] == ("/images/tiny/json", TOKEN)
    assert fake.requests[3][0] == "/images/docker.io/library/app:1/json"


def test_failures_give_none(fake: FakeDaemon, tmp_path: Path) -> None:
    inspector = DaemonImageInspector(str(fake.path), TOKEN, timeout=0.5)
    assert inspector.image_user("missing") is None  # 404
    for ref in ("", "../containers/x", "a//b", "a b", "x\n"):
        assert inspector.image_user(ref) is None, ref
    fake.raw = b"not json"
    fake.images["tiny"] = {"Config": {"User": "1000"}}
    assert inspector.image_user("tiny") is None
    fake.raw = b'{"Config": {"User": 0}}'
    assert inspector.image_user("tiny") is None
    fake.raw = None
    assert DaemonImageInspector(str(tmp_path / "nothing.sock"), TOKEN).image_user("tiny") is None


def test_volume_exists_asks_the_daemon_every_time(fake: FakeDaemon, tmp_path: Path) -> None:
    """True on 200, False on 404, None when the daemon cannot tell: the volume rules deny then."""
    inspector = DaemonImageInspector(f"unix://{fake.path}", TOKEN)
    fake.volumes["pgdata"] = {"Name": "pgdata", "CreatedAt": "2026-11-01T00:00:00Z"}
    assert inspector.volume_exists("pgdata") is True
    assert inspector.volume_exists("new") is False
    fake.volumes["new"] = {"Name": "new"}
    assert inspector.volume_exists("new") is True  # never cached: a volume appears when a container makes it
    assert fake.requests[0] == ("/volumes/pgdata", TOKEN)
    for name in ("", "a/b", "..", "a b", "x\n"):
        assert inspector.volume_exists(name) is None, name
    fake.volume_status = 500
    assert inspector.volume_exists("pgdata") is None
    assert DaemonImageInspector(str(tmp_path / "nothing.sock"), TOKEN).volume_exists("pgdata") is None


def test_slow_daemon_times_out(fake: FakeDaemon) -> None:
    fake.images["tiny"] = {"Config": {"User": "1000"}}
    fake.delay = 1.0
    inspector = DaemonImageInspector(str(fake.path), TOKEN, timeout=0.2)
    started = time.monotonic()
    assert inspector.image_user("tiny") is None
    assert time.monotonic() - started < 0.9


def test_names_are_cached_briefly_digests_longer(fake: FakeDaemon) -> None:
    digest = "tiny@sha256:" + "a" * 64
    fake.images["tiny"] = {"Config": {"User": "1000"}}
    fake.images[digest] = {"Config": {"User": "1000"}}
    clock = Clock()
    inspector = DaemonImageInspector(str(fake.path), TOKEN, clock=clock)
    assert inspector.image_user("tiny") == "1000"
    assert inspector.image_user(digest) == "1000"
    assert len(fake.requests) == 2
    fake.images["tiny"] = {"Config": {"User": ""}}  # re-tagged to a root image
    clock.now += 0.5
    assert inspector.image_user("tiny") == "1000"  # within one request's evaluations
    clock.now += 1.0
    assert inspector.image_user("tiny") == ""  # a re-tag is seen after name_ttl
    assert inspector.image_user(digest) == "1000"
    assert len(fake.requests) == 3
    clock.now += 30.0
    assert inspector.image_user(digest) == "1000"
    assert len(fake.requests) == 4


def test_failures_are_not_cached(fake: FakeDaemon) -> None:
    inspector = DaemonImageInspector(str(fake.path), TOKEN, clock=Clock())
    assert inspector.image_user("late") is None
    fake.images["late"] = {"Config": {"User": "1000"}}  # pulled meanwhile
    assert inspector.image_user("late") == "1000"


def test_docker_host_forms() -> None:
    assert unix_socket_path("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert unix_socket_path("/run/docker.sock") == "/run/docker.sock"
    for bad in ("tcp://127.0.0.1:2375", "unix://relative.sock", "docker.sock"):
        with pytest.raises(ConfigError, match="AUTHZ_DOCKER_HOST"):
            unix_socket_path(bad)


def test_internal_token_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "internal-token"
    token = load_or_create_internal_token(path)
    assert len(token) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_internal_token(path) == token
    path.unlink()
    assert load_or_create_internal_token(path) != token


def test_composition_wires_inspector_and_token(tmp_path: Path, fake: FakeDaemon) -> None:
    from authz.composition import build_image_inspector
    from authz.config import Config

    config = Config(database_url="sqlite://", state_dir=tmp_path, node="n")
    assert build_image_inspector(config, {}) == (None, None)
    inspector, token = build_image_inspector(config, {"AUTHZ_DOCKER_HOST": f"unix://{fake.path}"})
    assert inspector is not None
    assert token == (tmp_path / "internal-token").read_text().strip()
    fake.images["tiny"] = {"Config": {"User": "7"}}
    assert inspector.image_user("tiny") == "7"
    assert fake.requests[-1][1] == token


# ---------------------------------------------------------------- real dockerd


def _daemon_unavailable() -> str | None:
    if shutil.which("dockerd") is None:
        return "dockerd not installed"
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    return None


@pytest.fixture(scope="module")
def e2e_harness() -> Iterator[Any]:
    reason = _daemon_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"e2e: {reason}")
        pytest.skip(f"e2e: {reason}")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(E2E_DIR))  # the harness modules import each other top-level
        import harness

        yield harness
    for name in ("harness", "hostutil", "pluginproc", "tinyimage", "stack"):
        sys.modules.pop(name, None)


def _import(daemon: Any, harness: Any, tag: str, *changes: str, config_dir: Path | None = None) -> None:
    tar = harness.write_tiny_tar(daemon.dir / f"{tag.replace(':', '_')}.tar")
    args = [arg for change in changes for arg in ("-c", change)]
    daemon.docker("import", *args, str(tar), tag, check=True, config_dir=config_dir)
    tar.unlink()


@pytest.mark.e2e
def test_image_user_from_a_real_daemon(e2e_harness: Any) -> None:
    with e2e_harness.DockerDaemon() as daemon:
        _import(daemon, e2e_harness, "tiny:latest")
        _import(daemon, e2e_harness, "tiny-user:1", "USER 1000")
        _import(daemon, e2e_harness, "tiny-root:1", "USER root:root")
        image_id = daemon.docker("image", "inspect", "-f", "{{.Id}}", "tiny-user:1", check=True).stdout.strip()
        inspector = DaemonImageInspector(daemon.host, TOKEN)
        assert inspector.image_user("tiny") == ""
        assert inspector.image_user("tiny:latest") == ""
        assert inspector.image_user("docker.io/library/tiny-user:1") == "1000"
        assert inspector.image_user(image_id) == "1000"
        assert inspector.image_user(image_id.removeprefix("sha256:")[:12]) == "1000"
        assert inspector.image_user("tiny-root:1") == "root:root"
        assert inspector.image_user("absent:1") is None


@pytest.fixture
def stack_with_lookup(e2e_harness: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import stack as stack_module

    work = Path(tempfile.mkdtemp(prefix="authz-ii-", dir="/tmp"))
    # The plugin inherits our environment (clean_env keeps AUTHZ_*): point it at its own daemon.
    monkeypatch.setenv("AUTHZ_DOCKER_HOST", f"unix://{work / 'docker.sock'}")
    with stack_module.start_stack(work, users=("admin", "dev")) as running:
        _import(running.daemon, e2e_harness, "tiny-user:1", "USER 1000", config_dir=running.configs["admin"])
        yield running


@pytest.mark.e2e
def test_plugin_reads_the_image_user_through_the_daemon(stack_with_lookup: Any) -> None:
    """The daemon calls the plugin back for the lookup: no deadlock, and the token is accepted."""
    run: Callable[..., Any] = stack_with_lookup.docker_as
    root = run("dev", "run", "--rm", "--network", "none", "tiny", "id", "-u")
    assert root.returncode != 0
    assert "image 'tiny' sets no USER, so it runs as root" in root.stderr
    user = run("dev", "run", "--rm", "--network", "none", "tiny-user:1", "id", "-u")
    assert user.returncode == 0, user.stderr
    assert user.stdout.strip() == "1000"
    explicit = run("dev", "run", "--rm", "--network", "none", "--user", "1000", "tiny", "id", "-u")
    assert explicit.returncode == 0, explicit.stderr
    exported = stack_with_lookup.authzctl("audit", "export", "--action", "image:inspect").stdout
    lookups = [json.loads(line) for line in exported.splitlines() if line.strip()]
    internal = [r for r in lookups if r.get("source") == "internal" and r.get("phase") == "request"]
    assert internal, exported
    assert all(r["allow"] and r["rule"] == "builtin:internal" for r in internal)
