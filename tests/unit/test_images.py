"""authz.classify.images: references normalised like docker/distribution, and policy patterns."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from authz.classify.images import (
    ImageReference,
    looks_like_image_id,
    normalise_pattern,
    parse_reference,
    pattern_matches,
)
from authz.errors import RequestError

CAPTURES = Path("/work/shared/reference/captures")
HEX64 = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("ref", "registry", "path", "tag", "digest"),
    [
        ("tiny", "docker.io", "library/tiny", "latest", None),
        ("tiny:1.2", "docker.io", "library/tiny", "1.2", None),
        ("user/x", "docker.io", "user/x", "latest", None),
        ("docker.io/tiny", "docker.io", "library/tiny", "latest", None),
        ("index.docker.io/user/x:t", "docker.io", "user/x", "t", None),
        ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/a/b:t", "localhost:5000", "a/b", "t", None),
        ("127.0.0.1:5999/tiny:latest", "127.0.0.1:5999", "tiny", "latest", None),
        ("registry.example.com/team/app", "registry.example.com", "team/app", "latest", None),
        ("Registry.Example.com/x", "Registry.Example.com", "x", "latest", None),  # domains may be upper case
        ("foo:5000", "docker.io", "library/foo", "5000", None),  # no slash: a tag, not a port
        ("a__b-c/d.e", "docker.io", "a__b-c/d.e", "latest", None),
        (f"tiny@sha256:{HEX64}", "docker.io", "library/tiny", None, f"sha256:{HEX64}"),
        (f"tiny:1@sha256:{HEX64}", "docker.io", "library/tiny", "1", f"sha256:{HEX64}"),
    ],
)
def test_parse_reference(ref: str, registry: str, path: str, tag: str | None, digest: str | None) -> None:
    parsed = parse_reference(ref)
    assert (parsed.registry, parsed.path, parsed.tag, parsed.digest) == (registry, path, tag, digest)
    assert parsed.name == f"{registry}/{path}"


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "TINY",
        "Foo/bar",  # newer distribution versions read "Foo" as a registry: refused either way
        "user/X",
        "tiny:",
        "tiny:-bad",
        "tiny::x",
        "a/-b",
        "a//b",
        "/a",
        "a b",
        "a__b.c-d/e",  # the dot makes the first part a registry, and "_" is no host character
        "tiny@sha256:abc",
        f"tiny@sha256:{HEX64.upper()}",
        f"tiny@md5:{HEX64[:32]}",
        HEX64,  # a full ID is not a name
        f"sha256:{HEX64}",  # the daemon reads it as an ID, not as docker.io/library/sha256
        "sha256:abc",
        "t\u0131ny",  # dotless i
        "a" * 300,
        "tiny:" + "t" * 129,
    ],
)
def test_invalid_references(ref: str) -> None:
    with pytest.raises(RequestError):
        parse_reference(ref)


def test_canonical_and_familiar() -> None:
    assert parse_reference("tiny").canonical == "docker.io/library/tiny:latest"
    assert parse_reference("tiny").familiar == "tiny:latest"
    assert parse_reference("docker.io/library/a/b:t").familiar == "library/a/b:t"
    digested = parse_reference(f"user/x:1@sha256:{HEX64}")
    assert digested.canonical == f"docker.io/user/x@sha256:{HEX64}"  # the digest wins for lookups
    assert digested.familiar == f"user/x:1@sha256:{HEX64}"
    assert parse_reference("localhost:5000/a:t").familiar == "localhost:5000/a:t"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (HEX64, True),
        (f"sha256:{HEX64}", True),
        ("sha256:abc", True),
        ("abc123", True),  # a name, but also a possible ID prefix: the daemon tries both
        ("cafe", True),
        ("tiny", False),
        ("abc123:latest", False),
        ("ABC123", False),
        ("user/abc", False),
    ],
)
def test_looks_like_image_id(ref: str, expected: bool) -> None:
    assert looks_like_image_id(ref) is expected


@pytest.mark.parametrize(
    ("pattern", "normalised"),
    [
        ("alpine", "docker.io/library/alpine"),
        ("alpine:3.*", "docker.io/library/alpine:3.*"),
        ("user/*", "docker.io/user/*"),
        ("docker.io/library/*", "docker.io/library/*"),
        ("index.docker.io/x", "docker.io/library/x"),
        ("registry.example.com/team/**", "registry.example.com/team/**"),
        ("localhost:5000/a@sha256:00", "localhost:5000/a@sha256:00"),
        ("**", "**"),
        ("*/x", "*/x"),
        ("dev-*", "docker.io/library/dev-*"),
        ("*", "docker.io/library/*"),
    ],
)
def test_normalise_pattern(pattern: str, normalised: str) -> None:
    assert normalise_pattern(pattern) == normalised


def ref(text: str) -> ImageReference:
    return parse_reference(text)


@pytest.mark.parametrize(
    ("pattern", "image", "expected"),
    [
        ("docker.io/library/*", "tiny", True),
        ("docker.io/library/*", "alpine:3.19", True),
        ("docker.io/library/*", "library/a/b", False),  # one segment only
        ("docker.io/library/*", "user/tiny", False),
        ("docker.io/library/*", "evil.com/library/tiny", False),
        ("registry.example.com/team/**", "registry.example.com/team/app", True),
        ("registry.example.com/team/**", "registry.example.com/team/a/b/c:t", True),
        ("registry.example.com/team/**", "registry.example.com/team", False),
        ("registry.example.com/team/**", "registry.example.com/teamx/app", False),
        ("registry.example.com/team/**", "registry.example.com.evil.io/team/app", False),
        ("registry.example.com/team/**", "Registry.Example.com/team/app", False),
        ("alpine", "alpine:3.19", True),
        ("alpine:3.*", "alpine:3.19", True),
        ("alpine:3.*", "alpine:4.0", False),
        ("alpine:3.*", f"alpine@sha256:{HEX64}", False),  # no tag to match
        (f"alpine@sha256:{HEX64}", f"alpine@sha256:{HEX64}", True),
        (f"alpine@sha256:{HEX64}", "alpine:latest", False),
        ("dev-*", "dev-tools", True),
        ("dev-*", "prod-tools", False),
        ("docker.io/library/a.c", "abc", False),  # dots are literal
        ("**", "evil.com/x/y", True),
        ("*", "evil.com/x", False),
        ("*/x", "evil.com/x", True),
        ("localhost:5000/*", "localhost:5000/app", True),
    ],
)
def test_pattern_matches(pattern: str, image: str, expected: bool) -> None:
    assert pattern_matches(pattern, ref(image)) is expected


def test_captured_image_names() -> None:
    for name, expected in [
        ("run-privileged__02_POST_containers-create.json", "docker.io/library/tiny:latest"),
        ("service-create__02_POST_services-create.json", "127.0.0.1:5999/tiny:latest"),
    ]:
        wire = json.loads((CAPTURES / name).read_text())["authz_req"]["wire"]
        body = json.loads(base64.b64decode(wire["RequestBody"]))
        image = body.get("Image") or body["TaskTemplate"]["ContainerSpec"]["Image"]
        assert parse_reference(image).canonical == expected


def test_public_surface() -> None:
    from authz.classify import images

    assert set(images.__all__) == {
        "ImageReference",
        "looks_like_image_id",
        "normalise_pattern",
        "parse_reference",
        "pattern_matches",
    }
    assert all(hasattr(images, name) for name in images.__all__)
