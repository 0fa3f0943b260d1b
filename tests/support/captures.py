"""Shared helpers for the captured daemon payloads in /work/shared/reference/captures.

``load_capture(name)`` returns a capture file as a dict; ``capture_request(name, phase)`` turns
its exact wire JSON into a ``DockerRequest`` the way the daemon's fields map (docker-authz.md
2.2/2.3). Both accept the file name with or without ``.json``. Import them with
``from tests.support.captures import capture_request`` or use the fixtures of the same purpose.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from authz.request import DockerRequest, Phase

# shared/ lies beside the repository (CI copies it there too).
CAPTURES_DIR = Path(
    os.environ.get("AUTHZ_CAPTURES_DIR", Path(__file__).resolve().parents[3] / "shared" / "reference" / "captures")
)


class TruncatedCapture(ValueError):
    """The fixture stores a shortened body (the capture tool cut bodies it could not keep)."""


def capture_names() -> list[str]:
    """Every request capture file name (without the helper files starting with ``_``)."""
    return sorted(p.name for p in CAPTURES_DIR.glob("*.json") if not p.name.startswith("_"))


def load_capture(name: str) -> dict[str, Any]:
    path = CAPTURES_DIR / (name if name.endswith(".json") else f"{name}.json")
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TruncatedCapture(f"{what} is not valid base64 (truncated fixture?): {value[-40:]!r}") from exc


def wire_to_request(wire: dict[str, Any], phase: Phase = Phase.REQUEST) -> DockerRequest:
    """The daemon's AuthZReq/AuthZRes JSON (absent keys = empty, ``omitempty``) → DockerRequest."""
    body = wire.get("RequestBody")
    response_body = wire.get("ResponseBody")
    return DockerRequest(
        method=wire.get("RequestMethod", ""),
        uri=wire.get("RequestUri", ""),
        headers=dict(wire.get("RequestHeaders") or {}),
        body=_b64(body, "RequestBody") if body else None,
        user=wire.get("User", ""),
        auth_method=wire.get("UserAuthNMethod", ""),
        peer_certificates=tuple(
            _b64(c, "certificate").decode("ascii") for c in wire.get("RequestPeerCertificates") or ()
        ),
        phase=phase,
        status_code=wire.get("ResponseStatusCode"),
        response_headers=dict(wire.get("ResponseHeaders") or {}),
        response_body=_b64(response_body, "ResponseBody") if response_body else None,
    )


def capture_request(name: str, phase: str = "request") -> DockerRequest:
    """The capture's AuthZReq (``phase="request"``) or AuthZRes (``"response"``) as a DockerRequest.

    Captures of an empty plugin call (the daemon's retry, B19) give a request with empty method
    and URI, which is what the protocol layer makes of an empty AuthZReq.
    """
    wanted = Phase(phase)
    data = load_capture(name)
    section = data.get("authz_req" if wanted is Phase.REQUEST else "authz_res")
    if section is None:
        if data.get("body", None) == "":
            return DockerRequest(method="", uri="", phase=wanted)
        raise KeyError(f"capture {name} has no {wanted.value} payload")
    return wire_to_request(section["wire"], wanted)
