"""authz.classify.uri: the request-target read as the daemon reads it (docker-authz.md 6.1)."""

from __future__ import annotations

import contextlib
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.classify.uri import ParsedUri, parse_uri
from authz.errors import RouteError


@pytest.mark.parametrize(
    ("uri", "path", "version"),
    [
        ("/v1.41/containers/json", "/containers/json", "1.41"),
        ("/containers/json", "/containers/json", None),
        ("/_ping", "/_ping", None),
        ("/v1.41/containers%2Fjson", "/containers/json", "1.41"),
        ("/v1.41/%63ontainers/json", "/containers/json", "1.41"),
        ("/%761.41/containers/json", "/containers/json", "1.41"),  # the prefix is matched decoded
        ("http://docker/v1.41/containers/json", "/containers/json", "1.41"),
        ("HTTPS://docker:2376/v1.41/containers/json", "/containers/json", "1.41"),
        ("http://docker/_ping", "/_ping", None),
        ("/v1.41.0/containers/json", "/containers/json", "1.41"),
        ("/v1.41.0.0/containers/json", "/containers/json", "1.41"),
        ("/v1.24/info", "/info", "1.24"),
        ("/v1.56/info", "/info", "1.56"),
        ("/v1.41/containers/a%252Fb/json", "/containers/a%2Fb/json", "1.41"),  # decoded once only
        ("/v1.41/networks/", "/networks/", "1.41"),  # a trailing slash is clean
        ("/v1.41/", "/", "1.41"),
        ("/v1.41", "/v1.41", None),  # no "/" after the version: no prefix (OPTIONS catch-all)
        ("/images/a+b/json", "/images/a+b/json", None),  # "+" is not a space in a path
        ("/v1.41/v1.40/containers/json", "/v1.40/containers/json", "1.41"),  # stripped once
    ],
)
def test_paths_and_versions(uri: str, path: str, version: str | None) -> None:
    parsed = parse_uri(uri)
    assert (parsed.path, parsed.api_version, parsed.raw) == (path, version, uri)


@pytest.mark.parametrize(
    "uri",
    [
        "/v1/containers/json",
        "/v99/containers/json",
        "/v./containers/json",
        "/v1.11/containers/json",
        "/v1.23/containers/x/start",  # B6: HostConfig on start
        "/v1.57/containers/json",
        "/v2.0/containers/json",
        "/v01.41/containers/json",
        "/v1.041/containers/json",
        "/v1.41.1/containers/json",
        "/v1.40.9/containers/json",
        "/v1..41/containers/json",
        "/v1.41./containers/json",
        "/v.1.41/containers/json",
        "/v99999999999999999999.1/containers/json",
    ],
)
def test_unsupported_versions_are_refused(uri: str) -> None:
    with pytest.raises(RouteError, match="API version"):
        parse_uri(uri)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("", "empty"),
        ("containers/json", "neither origin-form"),
        ("*", "neither origin-form"),
        ("ftp://x/v1.41/containers/json", "neither origin-form"),
        ("unix:///v1.41/containers/json", "neither origin-form"),
        ("http:/v1.41/containers/json", "neither origin-form"),
        ("http://docker", "no path"),
        ("http://docker?x=1", "no path"),
        ("/v1.41/containers/json#frag", "raw"),
        ("/v1.41/containers/a b/json", "raw"),
        ("/v1.41/containers/a\tb/json", "raw"),
        ("/v1.41/containers/\u00e9/json", "raw"),
        ("/v1.41/containers/\ufffd/json", "raw"),
        ("/v1.41/containers/a\x7f/json", "raw"),
        ("/v1.41/containers/json?a=\nb", "raw"),
        ("/v1.41/containers/%/json", "percent-escape"),
        ("/v1.41/containers/%2/json", "percent-escape"),
        ("/v1.41/containers/%zz/json", "percent-escape"),
        ("/v1.41/containers/%2G/json", "percent-escape"),
        ("/v1.41/containers/%FF/json", "not UTF-8"),
        ("/v1.41/containers/%C3%28/json", "not UTF-8"),
        ("/v1.41/containers/%ED%A0%80/json", "not UTF-8"),  # encoded surrogate
        ("/v1.41/containers/a%00/json", "NUL"),
        ("/v1.41/containers/a%0Ab/json", "control"),
        ("/v1.41//containers/json", "not clean"),
        ("/v1.41/containers/./json", "not clean"),
        ("/v1.41/containers/x/../json", "not clean"),
        ("/v1.41/containers/x%2F..%2Fjson", "not clean"),
        ("/v1.41/containers/x/.", "not clean"),
        ("//docker/v1.41/containers/json", "not clean"),
        ("/v1.41/containers/json?a=1;b=2", "';'"),
        ("/v1.41/containers/json?a=%zz", "percent-escape"),
        ("/v1.41/containers/json?a=%FF", "not UTF-8"),
        ("/v1.41/containers/json?a=%00", "NUL"),
        ("/v1.41/containers/json?%00=a", "NUL"),
    ],
)
def test_unreadable_uris_are_refused(uri: str, why: str) -> None:
    with pytest.raises(RouteError, match=why):
        parse_uri(uri)


@pytest.mark.parametrize(
    ("raw_query", "expected"),
    [
        ("", {}),
        ("all=1", {"all": ("1",)}),
        ("t=a&t=b&t=a", {"t": ("a", "b", "a")}),
        ("a=x+y&b=x%2By", {"a": ("x y",), "b": ("x+y",)}),
        ("flag", {"flag": ("",)}),
        ("&&a=1&&", {"a": ("1",)}),
        ("a=b=c", {"a": ("b=c",)}),
        ("a=b?c", {"a": ("b?c",)}),
        ("x=/version", {"x": ("/version",)}),
        (
            "filters=%7B%22dangling%22%3A%7B%22true%22%3Atrue%7D%7D",
            {"filters": ('{"dangling":{"true":true}}',)},
        ),
        ("%66romImage=x", {"fromImage": ("x",)}),
        ("=v", {"": ("v",)}),
    ],
)
def test_query_is_parsed_like_go(raw_query: str, expected: dict[str, tuple[str, ...]]) -> None:
    assert parse_uri(f"/v1.41/containers/json?{raw_query}").query == expected


def test_query_never_changes_the_path() -> None:
    parsed = parse_uri("/v1.41/containers/json?x=/v1.41/version&y=..%2F..")
    assert parsed.path == "/containers/json"
    assert parsed.query == {"x": ("/v1.41/version",), "y": ("../..",)}


def test_parsed_uri_is_immutable() -> None:
    parsed = parse_uri("/v1.41/containers/json?all=1")
    assert isinstance(parsed, ParsedUri)
    with pytest.raises(TypeError):
        parsed.query["all"] = ("0",)  # type: ignore[index]


_SEGMENT = st.text(
    st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="/"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))


@given(st.lists(_SEGMENT, min_size=1, max_size=5), st.booleans())
def test_percent_encoded_paths_decode_to_the_original(segments: list[str], versioned: bool) -> None:
    path = "/" + "/".join(segments)
    if any(ch == "\x7f" for ch in path) or (versioned is False and path.startswith("/v")):
        return
    uri = ("/v1.41" if versioned else "") + quote(path, safe="/")
    parsed = parse_uri(uri)
    assert parsed.path == path
    assert parsed.api_version == ("1.41" if versioned else None)


_QCHARS = st.text(st.characters(codec="utf-8", min_codepoint=0x21, exclude_characters="&;=#"), max_size=8)


@given(st.lists(st.tuples(_QCHARS, _QCHARS), max_size=6))
def test_query_matches_a_reference_parser(pairs: list[tuple[str, str]]) -> None:
    raw = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    parsed = parse_uri("/info?" + raw).query
    reference: dict[str, list[str]] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        reference.setdefault(k, []).append(v)
    assert parsed == {k: tuple(v) for k, v in reference.items()}


@given(st.text(max_size=60))
def test_any_text_is_parsed_or_refused_with_route_error(uri: str) -> None:
    try:
        parsed = parse_uri(uri)
    except RouteError:
        return
    assert parsed.path.startswith("/")
    assert "\x00" not in parsed.path


@given(st.text(alphabet="/v1.4%2F0?&=;+#ac", max_size=40))
def test_uri_shaped_text_is_parsed_or_refused_with_route_error(uri: str) -> None:
    with contextlib.suppress(RouteError):
        parse_uri(uri)


def test_parsed_uris_are_cached_only_when_short_and_valid() -> None:
    """The cache holds short URIs (immutable results, shared); long ones cannot fill it; an
    invalid URI is refused every time, never remembered as anything."""
    short = "/v1.41/containers/json?all=1&filters=%7B%7D"
    first = parse_uri(short)
    assert parse_uri(short) is first  # the same immutable object: cached
    with pytest.raises(TypeError):
        first.query["all"] = ("0",)  # type: ignore[index]
    long_uri = "/v1.41/containers/" + "a" * 600 + "/json"
    assert parse_uri(long_uri) == parse_uri(long_uri)
    assert parse_uri(long_uri) is not parse_uri(long_uri)  # parsed each time, not kept
    for _ in range(2):
        with pytest.raises(RouteError):
            parse_uri("/v1.41/containers/../json")
