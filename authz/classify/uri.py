"""``RequestUri`` → decoded, versionless path + API version + query, as the daemon reads it.

docker-authz.md 6.1. The daemon (Go ``net/http`` + gorilla/mux) routes on the percent-decoded
path of the request-target, after an optional ``/v{version:[0-9.]+}`` prefix, and handlers read
the query with Go's ``url.ParseQuery``. ``parse_uri`` reproduces that, and raises ``RouteError``
for every URI it cannot read exactly the same way, or that the daemon would never route:

* origin-form ``/v1.41/x?q`` or absolute-form ``http://any/v1.41/x?q`` (``http``/``https`` only);
* raw control characters, spaces, ``#`` and non-ASCII characters are refused (Go refuses control
  characters; a real client percent-encodes the rest, and Go's JSON encoder would have turned
  invalid UTF-8 into U+FFFD, hiding what the daemon saw);
* the path is percent-decoded once; invalid escapes, non-UTF-8 results, NUL and other control
  characters are refused;
* paths gorilla/mux would answer with a 301 clean-path redirect (``//``, ``.``, ``..`` segments)
  never reach a plugin, so they are refused too;
* API versions: the daemon compares versions numerically part by part, with missing parts as 0,
  so ``1.41.0`` *is* ``1.41`` everywhere in the daemon (range check and every handler's feature
  check). We accept ``MAJOR.MINOR`` followed by any number of ``.0`` parts, without leading zeros,
  and report it as ``MAJOR.MINOR``; anything else (``1``, ``.``, ``1.41.1``, ``01.41``) is refused.
  Versions below ``MIN_API_VERSION`` (1.24: HostConfig on start, B6) or above ``MAX_API_VERSION``
  (the newest API whose routes and bodies we know) are refused;
* the query follows ``url.ParseQuery``: ``&``-separated, ``+`` is a space, every value kept in
  order; a ``;`` or an invalid escape is an error in Go (handlers answer 400 or see a partial
  form), so it is an error here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from authz.errors import RouteError

__all__ = ["MAX_API_VERSION", "MIN_API_VERSION", "ParsedUri", "parse_uri", "percent_decode"]

MIN_API_VERSION = (1, 24)  # below: POST /containers/{id}/start applies a HostConfig body (B6)
MAX_API_VERSION = (1, 56)  # newest Engine API (master, docker-v29.x) this route table describes

_VERSION_PREFIX = re.compile(r"/v([0-9.]+)(/.*)", re.DOTALL)
_VERSION_PART = re.compile(r"0|[1-9][0-9]{0,5}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
# What a conforming client percent-encodes (see the module docstring): controls, space, DEL and
# everything above it, "#". One search each instead of loops over the characters: a URI with an
# ID in it (a delete, an exec start) is new every time, so the cache never holds it, and the two
# loops took 14 of the 32 µs of classifying such a call.
_RAW_REFUSED = re.compile("[\x00-\x20#\x7f-\U0010ffff]")
_DECODED_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedUri:
    """A request-target as the daemon routes it.

    ``path``: percent-decoded, without the version prefix and the query (``/containers/json``).
    ``api_version``: ``"1.41"`` or None when the URI has no prefix (the daemon's newest version).
    ``query``: every parameter with all its values in order (``Form.Get`` = first value).
    """

    raw: str
    path: str
    api_version: str | None
    query: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


# URIs repeat (every `docker ps` sends the same one; AuthZReq and AuthZRes of a call share theirs):
# a parsed one is kept, immutable, in a bounded cache. Long ones are parsed each time, so a caller
# cannot fill the cache with megabytes; errors are never cached.
_CACHED_URI_CHARS = 512
_URI_CACHE_SIZE = 4096


def parse_uri(uri: str) -> ParsedUri:
    """Parse ``RequestUri`` like the daemon; ``RouteError`` for anything it would read otherwise."""
    if isinstance(uri, str) and len(uri) <= _CACHED_URI_CHARS:
        return _parse_uri_cached(uri)
    return _parse_uri(uri)


def _parse_uri(uri: str) -> ParsedUri:
    if not isinstance(uri, str) or not uri:
        raise RouteError("empty RequestUri")
    refused = _RAW_REFUSED.search(uri)
    if refused is not None:  # fail closed on anything a conforming client percent-encodes
        raise RouteError(f"request-target contains a raw {refused.group()!r} character: {uri!r}")
    rest, _, raw_query = uri.partition("?")
    if not rest.startswith("/"):
        rest = _absolute_form_path(rest, uri)
    path = percent_decode(rest, plus_is_space=False, what="path")
    control = _DECODED_CONTROL.search(path)
    if control is not None:
        # No Engine object name contains control characters; Go's `.*` does not cross "\n" either.
        raise RouteError(f"decoded path contains control character {control.group()!r}: {uri!r}")
    if not _is_clean(path):
        # gorilla/mux answers these with a 301 redirect, so the daemon never asks us about them.
        raise RouteError(f"path is not clean (empty, '.' or '..' segment): {path!r}")
    version: str | None = None
    m = _VERSION_PREFIX.fullmatch(path)
    if m is not None:
        version = _check_version(m.group(1), uri)
        path = m.group(2)
    return ParsedUri(raw=uri, path=path, api_version=version, query=parse_query(raw_query))


_parse_uri_cached = functools.lru_cache(maxsize=_URI_CACHE_SIZE)(_parse_uri)


def _absolute_form_path(rest: str, uri: str) -> str:
    m = _SCHEME.fullmatch(rest)
    if m is None or m.group(1).lower() not in ("http", "https"):
        raise RouteError(f"request-target is neither origin-form nor http(s) absolute-form: {uri!r}")
    if not m.group(3):
        # Go leaves the path empty and mux redirects to "/": never routed.
        raise RouteError(f"absolute-form request-target has no path: {uri!r}")
    return m.group(3)


def _check_version(text: str, uri: str) -> str:
    parts = text.split(".")
    if len(parts) < 2 or not all(_VERSION_PART.fullmatch(p) for p in parts):
        raise RouteError(f"API version {text!r} is not MAJOR.MINOR: {uri!r}")
    if any(p != "0" for p in parts[2:]):
        # The daemon would compare 1.40.9 as between 1.40 and 1.41: no version we can reason about.
        raise RouteError(f"API version {text!r} has a non-zero patch part: {uri!r}")
    major_minor = (int(parts[0]), int(parts[1]))
    if not MIN_API_VERSION <= major_minor <= MAX_API_VERSION:
        lo, hi = (".".join(map(str, v)) for v in (MIN_API_VERSION, MAX_API_VERSION))
        raise RouteError(f"API version {text} is outside the supported range {lo}-{hi}: {uri!r}")
    return f"{major_minor[0]}.{major_minor[1]}"


def _is_clean(path: str) -> bool:
    """True when Go's mux ``cleanPath`` would leave the path unchanged."""
    if not path.startswith("/"):
        return False
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            return False
        if seg == "" and i != len(segments) - 1:  # "//" anywhere; a trailing "/" is kept
            return False
    return True


def parse_query(raw_query: str) -> Mapping[str, tuple[str, ...]]:
    """Go ``url.ParseQuery``, but every error Go would report is a ``RouteError`` here."""
    values: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if ";" in part:
            raise RouteError(f"query contains ';' (Go reports an error; handlers answer 400): {part!r}")
        if not part:
            continue
        key, _, value = part.partition("=")
        key = percent_decode(key, plus_is_space=True, what="query key")
        value = percent_decode(value, plus_is_space=True, what="query value")
        values.setdefault(key, []).append(value)
    return MappingProxyType({k: tuple(v) for k, v in values.items()})


def percent_decode(text: str, *, plus_is_space: bool, what: str) -> str:
    """Strict percent-decoding to UTF-8, as Go's ``unescape`` (path or query mode) plus UTF-8 check."""
    if "%" not in text and not (plus_is_space and "+" in text):
        decoded = text
    else:
        out = bytearray()
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "%":
                pair = text[i + 1 : i + 3]
                if len(pair) != 2 or not set(pair) <= _HEX:
                    raise RouteError(f"invalid percent-escape in {what}: {text!r}")
                out.append(int(pair, 16))
                i += 3
                continue
            out += b" " if plus_is_space and ch == "+" else ch.encode("utf-8")
            i += 1
        try:
            decoded = out.decode("utf-8")
        except UnicodeDecodeError:
            raise RouteError(f"{what} is not UTF-8 after percent-decoding: {text!r}") from None
    if "\x00" in decoded:
        raise RouteError(f"{what} contains a NUL byte: {text!r}")
    return decoded
