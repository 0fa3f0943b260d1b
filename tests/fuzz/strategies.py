"""Hypothesis strategies for the plugin's inputs: random bytes and JSON, and captured daemon
payloads (``/work/shared/reference/captures``) mutated field by field.

``mutated_wires(phase)`` draws one capture's exact wire JSON and applies one to four mutations:

* wire fields: deletion, insertion (known keys in odd case, unknown keys), type swaps;
* ``RequestUri``: percent-encoding, case, version prefixes, ``//``, ``.``/``..``, query injection,
  absolute form, control and non-ASCII characters (``URI_MUTATIONS``);
* ``RequestBody``: invalid base64, invalid UTF-8, 10,000-level nesting, huge numbers (``1e400``,
  ``2**70``), ``NaN``, duplicate and case-folded keys (``hostconfig``, ``HoſtConfig``), BOM,
  trailing data, huge arrays (``BODY_MUTATIONS``);
* ``RequestHeaders``: Content-Type (form, multipart, charset, odd casing), Content-Length
  (missing, 0, garbage), identity tokens (valid, expired, forged, another user's).

The result is a ``WireCase``: the document (or raw bytes when the mutation broke the JSON itself)
and the names of the mutations, which Hypothesis prints with a failing example.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from tests.support.captures import capture_names, load_capture

__all__ = [
    "BODY_MUTATIONS",
    "URI_MUTATIONS",
    "Draw",
    "WireCase",
    "json_values",
    "mutated_wires",
    "request_seeds",
    "response_seeds",
]


T = TypeVar("T")


class Draw(Protocol):
    """``draw`` of ``st.composite`` and ``st.data()`` alike."""

    def __call__(self, strategy: st.SearchStrategy[T], label: Any = ...) -> T: ...


@cache
def _seeds(section: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    found = []
    for name in capture_names():
        payload = load_capture(name).get(section)
        if payload is not None:
            found.append((name, payload["wire"]))
    return tuple(found)


def request_seeds() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, exact AuthZReq wire JSON) of every capture."""
    return _seeds("authz_req")


def response_seeds() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, exact AuthZRes wire JSON) of every capture that has one."""
    return _seeds("authz_res")


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value Python can serialise (no NaN: ``json.dumps`` would write a non-JSON token)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
        max_leaves=max_leaves,
    )


# ------------------------------------------------------------------ RequestUri

_VERSIONS = ("", "/v1.41", "/v1.41.0", "/v1.41.0.0", "/v1.24", "/v1.23", "/v1.56", "/v1.57", "/v1", "/v01.41",
             "/v1.41.1", "/v.", "/V1.41", "/v1.4a", "/v99.0", "/v1..41", "/v1.41/v1.41")  # fmt: skip
_QUERIES = ("?x=/version", "&all=1", "?name=a;b", "?%zz=1", "?name=%ff", "#frag", "?force=1&force=0", "?fromSrc=-",
            "?fromImage=evil&fromSrc=-", "?container=b", "?name=/devbox", "?&&=&", "?a=%00", "?q=" + "x" * 3000,
            "?t=a&t=b&t=c", "?+=+", "?%2B=%2b")  # fmt: skip
_INSERTS = ("//", "/./", "/../", "/x/../", "%2F", "%2f", "%2e%2e/", "%00", "%0a", "%ff", "é", "\u212a", " ", "\t",
            "~", ";", "%", "%4", "%%", "\\", "/")  # fmt: skip


def _split(uri: str) -> tuple[str, str]:
    path, mark, query = uri.partition("?")
    return path, mark + query


def _percent_encode(draw: Draw, uri: str) -> str:
    path, query = _split(uri)
    if not path:
        return uri
    i = draw(st.integers(0, len(path) - 1))
    escape = f"%{ord(path[i]):02x}" if ord(path[i]) < 128 else path[i]
    escape = escape.upper() if draw(st.booleans()) else escape
    return path[:i] + escape + path[i + 1 :] + query


def _recase(draw: Draw, uri: str) -> str:
    path, query = _split(uri)
    how = draw(st.sampled_from((str.upper, str.lower, str.title, str.swapcase)))
    if draw(st.booleans()) or not path:
        return how(path) + query
    i = draw(st.integers(0, len(path) - 1))
    return path[:i] + how(path[i]) + path[i + 1 :] + query


def _reversion(draw: Draw, uri: str) -> str:
    path, query = _split(uri)
    rest = path
    if path.startswith("/v") and path.count("/") >= 2:
        candidate = path[2 : path.index("/", 1)]
        if candidate and all(c in "0123456789." for c in candidate):
            rest = path[path.index("/", 1) :]
    return draw(st.sampled_from(_VERSIONS)) + rest + query


def _insert(draw: Draw, uri: str) -> str:
    path, query = _split(uri)
    slashes = [i for i, c in enumerate(path) if c == "/"] or [0]
    i = draw(st.sampled_from([*slashes, len(path)]))
    return path[:i] + draw(st.sampled_from(_INSERTS)) + path[i:] + query


def _query(draw: Draw, uri: str) -> str:
    return uri + draw(st.sampled_from(_QUERIES) | st.text(max_size=20).map(lambda t: "?" + t))


def _absolute(draw: Draw, uri: str) -> str:
    prefix = draw(st.sampled_from(("http://x", "HTTPS://h:2375", "http://", "ftp://x", "http:/", "//x", "http://a@b")))
    return prefix + uri


def _random_uri(draw: Draw, uri: str) -> str:
    del uri
    return str(draw(st.text(max_size=60) | st.sampled_from(("", "/", "*", "?", "/v1.41", "/v1.41/"))))


URI_MUTATIONS: dict[str, Callable[[Draw, str], str]] = {
    "uri-percent": _percent_encode,
    "uri-case": _recase,
    "uri-version": _reversion,
    "uri-insert": _insert,
    "uri-query": _query,
    "uri-absolute": _absolute,
    "uri-random": _random_uri,
}


# ------------------------------------------------------------------ RequestBody

_DEEP = 10_000


def _nested_object(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def _first_key_swap(raw: bytes, make: Callable[[str], str]) -> bytes:
    """Rename the first key of a JSON object body (text-level, keeps everything else)."""
    start = raw.find(b'"')
    end = raw.find(b'"', start + 1)
    if start < 0 or end < 0:
        return raw
    key = raw[start + 1 : end].decode("utf-8", "replace")
    return raw[: start + 1] + make(key).encode("utf-8") + raw[end:]


def _inject(raw: bytes, member: bytes) -> bytes:
    """Add ``member`` (``"k": v``) as the first member of a JSON object body, or wrap it."""
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        rest = stripped[1:].lstrip()
        return b"{" + member + (b"" if rest.startswith(b"}") else b",") + rest
    return b"{" + member + b"}"


def _fold(key: str) -> str:
    return key.replace("s", "\u017f").replace("k", "\u212a").replace("K", "\u212a")


_BODY_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "body-bad-utf8": lambda raw: _inject(raw, b'"Image": "\xff\xfe"'),
    "body-bad-utf8-key": lambda raw: _inject(raw, b'"\xc3(": 1'),
    "body-deep-array": lambda raw: b"[" * _DEEP + b"]" * _DEEP,
    "body-deep-object": lambda raw: _nested_object(_DEEP),
    "body-deep-65": lambda raw: _inject(raw, b'"Labels": ' + b"[" * 65 + b"]" * 65),
    "body-1e400": lambda raw: _inject(raw, b'"Memory": 1e400'),
    "body-2pow70": lambda raw: _inject(raw, b'"Memory": ' + str(2**70).encode()),
    "body-neg-2pow70": lambda raw: _inject(raw, b'"CpuShares": -' + str(2**70).encode()),
    "body-long-int": lambda raw: _inject(raw, b'"Memory": ' + b"9" * 5000),
    "body-nan": lambda raw: _inject(raw, b'"Memory": NaN'),
    "body-infinity": lambda raw: _inject(raw, b'"NanoCpus": -Infinity'),
    "body-dup-key": lambda raw: _inject(_inject(raw, b'"Privileged": true'), b'"Privileged": false'),
    "body-dup-hostconfig": lambda raw: _inject(raw, b'"HostConfig": {"Privileged": true}'),
    "body-lower-hostconfig": lambda raw: _inject(raw, b'"hostconfig": {"privileged": true, "binds": ["/:/h"]}'),
    "body-fold-hostconfig": lambda raw: _inject(raw, '"HoſtConfig": {"Privileged": true}'.encode()),
    "body-fold-first-key": lambda raw: _first_key_swap(raw, _fold),
    # Go maps keep keys as sent: these are read alike (labels), or refused where the object is a struct.
    "body-labels-any-keys": lambda raw: _inject(
        raw, '"Labels": {"café": "1", "Team": "a", "team": "b", "x": "1", "x": "2"}'.encode()
    ),
    "body-labels-field-names": lambda raw: _inject(
        raw, b'"Labels": {"Privileged": "1", "privileged": "2", "Privileged": "3"}'
    ),
    "body-endpoint-fold": lambda raw: _inject(
        raw, '"NetworkingConfig": {"EndpointsConfig": {"réseau": {"Aliaſes": ["a"]}}}'.encode()
    ),
    "body-mount-fold": lambda raw: _inject(
        raw, b'"HostConfig": {"Mounts": [{"Type": "volume", "type": "bind", "Source": "/"}]}'
    ),
    "body-lower-first-key": lambda raw: _first_key_swap(raw, str.lower),
    "body-top-privileged": lambda raw: _inject(raw, b'"privileged": true'),
    "body-bom": lambda raw: b"\xef\xbb\xbf" + raw,
    "body-trailing": lambda raw: raw + b'{"Privileged": true}',
    "body-trailing-ws": lambda raw: raw + b" \n\t\r",
    "body-trailing-garbage": lambda raw: raw + b"\x00garbage",
    "body-huge-array": lambda raw: _inject(raw, b'"Env": [' + b'"A=1",' * 200_000 + b'"B=2"]'),
    "body-huge-number-array": lambda raw: b"[" + b"0," * 1_000_000 + b"0]",
    "body-lone-surrogate": lambda raw: _inject(raw, b'"Image": "\\ud800"'),
    "body-surrogate-pair": lambda raw: _inject(raw, b'"Image": "\\ud83d\\ude00"'),
    "body-null": lambda raw: b"null",
    "body-array": lambda raw: b"[]",
    "body-string": lambda raw: b'"{}"',
    "body-empty-object": lambda raw: b"{}",
    "body-whitespace": lambda raw: b" \n ",
    "body-truncated": lambda raw: raw[: len(raw) // 2],
    "body-utf16": lambda raw: raw.decode("utf-8", "replace").encode("utf-16"),
    "body-over-4mib": lambda raw: _inject(raw, b'"Labels": {"pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'),
}

BODY_MUTATIONS = tuple(_BODY_EDITS)


def _mutate_body(draw: Draw, wire: dict[str, Any]) -> str:
    encoded = wire.get("RequestBody")
    try:
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b"{}"
    except ValueError:
        raw = b"{}"
    choice = draw(st.sampled_from((*BODY_MUTATIONS, "body-bad-base64", "body-random-bytes", "body-random-json")))
    if choice == "body-bad-base64":
        text = base64.b64encode(raw).decode()
        wire["RequestBody"] = draw(st.sampled_from((text + "!", text[:-1], " " + text, text + "\n", "====", "*")))
        return choice
    if choice == "body-random-bytes":
        raw = draw(st.binary(max_size=200))
    elif choice == "body-random-json":
        raw = json.dumps(draw(json_values())).encode()
    else:
        raw = _BODY_EDITS[choice](raw)
    wire["RequestBody"] = base64.b64encode(raw).decode()
    if draw(st.booleans()):  # keep Content-Length honest half of the time
        headers = wire.get("RequestHeaders")
        if isinstance(headers, dict):
            headers["Content-Length"] = str(len(raw))
    return choice


# ------------------------------------------------------------------ RequestHeaders

_CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "Application/JSON", "APPLICATION/JSON",
                  "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "Multipart/Mixed",
                  "text/plain", "", " ", "application/json;", "application/jsonx", " application/json ",
                  "application/json, text/plain", "application/x-www-form-urlencoded; charset=utf-8",
                  "application/json\x00", "application/vnd.docker+json")  # fmt: skip
_LENGTHS = ("0", "1", "abc", "-1", " 12 ", "１２", "99999999999999999999999", "1e3", "0x10", "", "+5", "1048576",
            "4194305")  # fmt: skip
_HEADER_KEYS = ("Content-Type", "content-type", "CONTENT-TYPE", "Content-type", "Content-Length", "content-length",
                "X-Authz-Token", "x-authz-token", "Transfer-Encoding", "Authorization")  # fmt: skip


def _mutate_headers(draw: Draw, wire: dict[str, Any], tokens: dict[str, str]) -> str:
    headers = wire.get("RequestHeaders")
    headers = dict(headers) if isinstance(headers, dict) else {}
    choice = draw(st.sampled_from(("ctype", "clen", "drop-clen", "token", "odd-key", "many")))
    if choice == "ctype":
        headers[draw(st.sampled_from(_HEADER_KEYS[:4]))] = draw(st.sampled_from(_CONTENT_TYPES))
    elif choice == "clen":
        headers[draw(st.sampled_from(_HEADER_KEYS[4:6]))] = draw(st.sampled_from(_LENGTHS))
    elif choice == "drop-clen":
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    elif choice == "token":
        value = draw(st.sampled_from(sorted(tokens.values())) | st.text(max_size=30))
        headers[draw(st.sampled_from(_HEADER_KEYS[6:8]))] = value
    elif choice == "odd-key":
        headers[draw(st.sampled_from(_HEADER_KEYS))] = draw(st.text(max_size=30))
    else:
        headers.update({f"X-Pad-{i}": "v" for i in range(draw(st.integers(0, 300)))})
    wire["RequestHeaders"] = headers
    return f"headers-{choice}"


# ------------------------------------------------------------------ wire fields

_WIRE_KEYS = ("RequestMethod", "RequestUri", "RequestBody", "RequestHeaders", "User", "UserAuthNMethod",
              "RequestPeerCertificates", "ResponseStatusCode", "ResponseBody", "ResponseHeaders")  # fmt: skip
_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "Post", "", "CONNECT", "TRACE")


def _mutate_field(draw: Draw, wire: dict[str, Any]) -> str:
    choice = draw(st.sampled_from(("delete", "insert", "swap", "method", "user")))
    if choice == "delete" and wire:
        del wire[draw(st.sampled_from(sorted(wire)))]
    elif choice == "insert":
        key = draw(st.sampled_from(_WIRE_KEYS))
        wire[draw(st.sampled_from((key, key.lower(), key.upper(), f"X{key}")))] = draw(json_values(8))
    elif choice == "swap":
        key = draw(st.sampled_from(_WIRE_KEYS))
        wire[key] = draw(json_values(8).filter(lambda v: type(v) is not type(wire.get(key))))
    elif choice == "method":
        wire["RequestMethod"] = draw(st.sampled_from(_METHODS))
    else:
        wire["User"] = draw(st.sampled_from(("root", "dev", "val", "nobody", "alice", "", "ROOT")))
        wire["UserAuthNMethod"] = "TLS"
    return f"field-{choice}"


@dataclass(frozen=True)
class WireCase:
    """A mutated plugin call: the wire document (or raw bytes) and the mutations applied."""

    seed: str
    payload: dict[str, Any] | bytes
    mutations: tuple[str, ...]


@st.composite
def mutated_wires(draw: Draw, phase: str, tokens: dict[str, str]) -> WireCase:
    """A captured AuthZReq (``phase="req"``) or AuthZRes (``"res"``) with 1-4 mutations.

    A valid token of a random user (or none) is attached first, so that mutations are judged
    against every role and against anonymous callers.
    """
    seeds = request_seeds() if phase == "req" else response_seeds()
    name, original = draw(st.sampled_from(seeds))
    wire: dict[str, Any] = json.loads(json.dumps(original))  # deep copy
    user = draw(st.sampled_from((None, *sorted(tokens))))
    if user is not None:
        wire["RequestHeaders"] = {**(wire.get("RequestHeaders") or {}), "X-Authz-Token": tokens[user]}
    applied = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("field", "uri", "uri", "body", "body", "headers")))
        if kind == "field":
            applied.append(_mutate_field(draw, wire))
        elif kind == "uri":
            uri = wire.get("RequestUri")
            mutation = draw(st.sampled_from(sorted(URI_MUTATIONS)))
            wire["RequestUri"] = URI_MUTATIONS[mutation](draw, uri if isinstance(uri, str) else "/")
            applied.append(mutation)
        elif kind == "body":
            applied.append(_mutate_body(draw, wire))
        else:
            applied.append(_mutate_headers(draw, wire, tokens))
    payload: dict[str, Any] | bytes = wire
    if draw(st.integers(0, 19)) == 0:  # break the wire JSON itself now and then
        text = json.dumps(wire).encode()
        cut = draw(st.integers(0, len(text)))
        deep = text[:-1] + b', "Deep": ' + b"[" * _DEEP + b"]" * _DEEP + b"}"  # nesting in the wire JSON itself
        broken = (text[:cut], b"\xef\xbb\xbf" + text, text + b"x", text.replace(b"{", b"[", 1), deep)
        payload = draw(st.sampled_from(broken))
        applied.append("wire-broken")
    return WireCase(name, payload, tuple(applied))
