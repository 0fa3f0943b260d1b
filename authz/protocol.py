"""The daemon's authz plugin wire format ⇄ ``DockerRequest`` / reply mappings.

dockerd posts JSON without a Content-Type; ``RequestBody``/``ResponseBody`` are base64 (Go
``[]byte``), ``RequestPeerCertificates`` are base64 of PEM text. Replies are always HTTP 200 with a
JSON boolean ``Allow``: a non-200 makes the daemon show a generic error, and an ``Err`` in a 200
reply is ignored by the daemon, so failures are denials with the reason in ``Msg``.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from typing import Any

import orjson
import pybase64

from authz.errors import RequestError
from authz.request import Decision, DockerRequest, Phase

ACTIVATE_REPLY: dict[str, Any] = {"Implements": ["authz"]}


def _b64(value: Any, key: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{key} is not a base64 string")
    try:
        # pybase64 decodes with SIMD: a 7.5 KB create body took 25-47 µs in binascii (strict mode),
        # 2 µs here. It refuses everything binascii's strict mode refuses, and also padding after a
        # complete quantum ("QUJD="), as Go's StdEncoding does; dockerd never sends either.
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{key} is not valid base64: {exc}") from None


def _headers(value: Any, key: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RequestError(f"{key} is not a map of strings")
    return value


def parse_request(raw: bytes, phase: Phase) -> DockerRequest:
    """Decode one AuthZReq/AuthZRes payload; anything malformed raises ``RequestError``."""
    return request_from_document(decode_document(raw), phase)


_ORJSON_MAX = 256 * 1024  # bytes


def decode_document(raw: bytes) -> dict[str, Any]:
    """The payload's JSON object, or ``RequestError``."""
    if not raw or not raw.strip():
        # The daemon re-sends a request with an empty body after a dropped connection (B19).
        raise RequestError("empty plugin request (the daemon retries with an empty body after a dropped connection)")
    try:
        # orjson: 1.6-9 µs instead of 7-29 for everyday payloads. It accepts less than json.loads
        # (only UTF-8; no NaN, lone surrogate escapes or nesting beyond 1,024) and reads an integer
        # beyond 64 bits as a float, which every numeric field refuses; dockerd's encoder writes
        # none of these. It holds ~13 bytes per byte read until it returns, so large payloads (a
        # 16 MiB AuthZRes took 277 MB) go to json.loads.
        doc = orjson.loads(raw) if len(raw) <= _ORJSON_MAX else json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: hostile nesting
        raise RequestError(f"plugin request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("plugin request is not a JSON object")
    return doc


def call_of(doc: Mapping[str, Any]) -> tuple[str, str]:
    """``RequestMethod`` and ``RequestUri`` only, without decoding bodies (the AuthZRes fast path)."""
    method, uri = doc.get("RequestMethod"), doc.get("RequestUri")
    if not isinstance(method, str) or not isinstance(uri, str):
        raise RequestError("plugin request lacks RequestMethod or RequestUri")
    return method, uri


def request_from_document(doc: Mapping[str, Any], phase: Phase) -> DockerRequest:
    """``decode_document``'s object as a ``DockerRequest``; ``RequestError`` for malformed fields."""
    method, uri = call_of(doc)
    if not method or not uri:
        raise RequestError("plugin request lacks RequestMethod or RequestUri")
    user = doc.get("User") or ""
    auth_method = doc.get("UserAuthNMethod") or ""
    if not isinstance(user, str) or not isinstance(auth_method, str):
        raise RequestError("User/UserAuthNMethod is not a string")
    certificates = doc.get("RequestPeerCertificates") or []
    if not isinstance(certificates, list):
        raise RequestError("RequestPeerCertificates is not a list")
    pems = []
    for index, item in enumerate(certificates):
        pem = _b64(item, f"RequestPeerCertificates[{index}]") or b""
        pems.append(pem.decode("utf-8", "replace"))
    status = doc.get("ResponseStatusCode")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise RequestError("ResponseStatusCode is not an integer")
    if status is not None and not 100 <= status <= 999:  # Go's net/http writes no other (it panics)
        raise RequestError(f"ResponseStatusCode {status} is not an HTTP status (100-999)")
    response_body = _b64(doc.get("ResponseBody"), "ResponseBody") if phase is Phase.RESPONSE else None
    return DockerRequest(
        method=method,
        uri=uri,
        headers=_headers(doc.get("RequestHeaders"), "RequestHeaders"),
        body=_b64(doc.get("RequestBody"), "RequestBody"),
        user=user,
        auth_method=auth_method,
        peer_certificates=tuple(pems),
        phase=phase,
        status_code=status,
        response_headers=_headers(doc.get("ResponseHeaders"), "ResponseHeaders") if phase is Phase.RESPONSE else {},
        response_body=response_body,
    )


def reply(decision: Decision) -> dict[str, Any]:
    """The JSON the daemon expects: ``Allow`` must be a JSON boolean."""
    out: dict[str, Any] = {"Allow": bool(decision.allow)}
    if not decision.allow:
        out["Msg"] = decision.message or "authz: denied"
    if decision.error:
        out["Err"] = decision.error
    return out
