"""``authzctl ownership list|prune`` without a daemon: the listing, and the refusals that keep
prune from forgetting owners it cannot judge. (The sweep against a real dockerd, and a daemon that
refuses a wrong token, are in tests/e2e/test_workflows.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from authz.config import Config
from authz.storage import Database
from authz.storage.repositories import OwnershipRepository


class CliRun(Protocol):
    code: int
    out: str
    err: str


Cli = Callable[..., CliRun]


@pytest.fixture
def owners(cli: Cli) -> OwnershipRepository:
    assert cli("init").code == 0
    repository = OwnershipRepository(Database(Config.from_env().database_url))
    repository.record("container", "a" * 64, "web", "alice")
    repository.record("volume", "data", "data", "bob")
    repository.record("exec", "e" * 64, None, "alice")
    return repository


def test_list_shows_every_record_and_filters(cli: Cli, owners: OwnershipRepository) -> None:
    run = cli("ownership", "list")
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0].split() == ["KIND", "ID", "NAME", "OWNER", "CREATED", "NODE"]
    assert lines[1].split()[:4] == ["container", "a" * 12, "web", "alice"]
    assert lines[1].split()[-1] == "-"  # recorded without a node
    as_json = [json.loads(line) for line in cli("ownership", "list", "--json", "--owner", "alice").out.splitlines()]
    assert [(r["kind"], r["id"], r["name"]) for r in as_json] == [
        ("container", "a" * 64, "web"), ("exec", "e" * 64, None),
    ]  # fmt: skip
    volumes = cli("ownership", "list", "--json", "--kind", "volume").out.splitlines()
    assert [json.loads(line)["id"] for line in volumes] == ["data"]


def test_prune_needs_a_daemon_and_the_plugins_internal_token(
    cli: Cli, owners: OwnershipRepository, authz_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = cli("ownership", "prune")
    assert run.code == 2
    assert "no daemon to compare with" in run.err
    run = cli("ownership", "prune", "--docker-host", f"unix://{tmp_path}/docker.sock")
    assert run.code == 1
    assert "internal token" in run.err
    assert "AUTHZ_DOCKER_HOST" in run.err
    (authz_env / "internal-token").write_text("ab" * 32 + "\n")
    monkeypatch.setenv("AUTHZ_DOCKER_HOST", f"unix://{tmp_path}/docker.sock")  # nothing listens there
    run = cli("ownership", "prune")
    assert run.code == 1
    assert "nothing forgotten: the daemon's objects could not be read" in run.err
    assert owners.owner_of("container", "web") == "alice"


def test_prune_if_configured_skips_quietly_without_a_daemon(cli: Cli, owners: OwnershipRepository) -> None:
    """What the hourly systemd timer runs before the admin has set AUTHZ_DOCKER_HOST."""
    run = cli("ownership", "prune", "--if-configured")
    assert run.code == 0
    assert "ownership prune skipped: AUTHZ_DOCKER_HOST is not set" in run.out
    assert owners.owner_of("container", "web") == "alice"
