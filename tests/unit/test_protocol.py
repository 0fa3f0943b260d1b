"""The wire format: decoding the daemon's payloads and shaping replies."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.errors import RequestError
from authz.protocol import parse_request, reply
from authz.request import Decision, Phase

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "captures"


def wire(name: str, phase: str = "authz_req") -> bytes:
    return json.dumps(json.loads((CAPTURES / name).read_text())[phase]["wire"]).encode()


def test_a_captured_create_decodes_with_its_body() -> None:
    request = parse_request(wire("run-privileged__02_POST_containers-create.json"), Phase.REQUEST)
    assert request.method == "POST"
    assert request.uri == "/v1.41/containers/create"
    assert request.body is not None
    assert json.loads(request.body)["HostConfig"]["Privileged"] is True
    assert request.header("content-type") == "application/json"


def test_a_captured_response_carries_status_and_body() -> None:
    request = parse_request(wire("run-privileged__02_POST_containers-create.json", "authz_res"), Phase.RESPONSE)
    assert request.status_code == 201
    assert request.response_body is not None
    assert "Id" in json.loads(request.response_body)


def test_tls_user_and_certificates_are_decoded() -> None:
    request = parse_request(wire("tls-version__02_GET_version.json"), Phase.REQUEST)
    assert request.user == "alice"
    assert request.auth_method == "TLS"
    assert request.peer_certificates[0].startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"[]",
        b'{"RequestUri": "/_ping"}',
        b'{"RequestMethod": "GET"}',
        b'{"RequestMethod": 1, "RequestUri": "/_ping"}',
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": "***"}',
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": 5}',
        # base64 that Go's StdEncoding refuses: spaces, data after padding, padding after a full quantum
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": "e30 ="}',
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": "e30=e30="}',
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": "QUJD="}',
        b'{"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": "QUJ"}',
        b'{"RequestMethod": "GET", "RequestUri": "/x", "RequestHeaders": {"A": 1}}',
        b'{"RequestMethod": "GET", "RequestUri": "/x", "RequestPeerCertificates": "x"}',
        b'{"RequestMethod": "GET", "RequestUri": "/x", "ResponseStatusCode": "200"}',
    ],
)
def test_malformed_payloads_raise_request_error(raw: bytes) -> None:
    with pytest.raises(RequestError):
        parse_request(raw, Phase.REQUEST)


@settings(max_examples=500)
@given(
    st.text(alphabet="AB+/=Q \n-_\x00é", max_size=12)
    | st.binary(max_size=24).map(lambda data: base64.b64encode(data).decode())
)
def test_bodies_decode_as_strict_binascii_would_or_are_refused(text: str) -> None:
    """pybase64 (the fast decoder) never accepts what binascii's strict mode refuses, and never
    decodes to other bytes; it refuses more (padding after a full quantum, as Go does)."""
    raw = json.dumps({"RequestMethod": "POST", "RequestUri": "/x", "RequestBody": text}).encode()
    try:
        decoded = parse_request(raw, Phase.REQUEST).body
    except RequestError:
        return
    assert decoded == binascii.a2b_base64(text, strict_mode=True)


def test_body_is_base64_decoded() -> None:
    body = base64.b64encode(b'{"Image":"tiny"}').decode()
    raw = json.dumps({"RequestMethod": "POST", "RequestUri": "/containers/create", "RequestBody": body})
    assert parse_request(raw.encode(), Phase.REQUEST).body == b'{"Image":"tiny"}'


def test_reply_allow_is_a_json_boolean_and_deny_carries_the_message() -> None:
    assert reply(Decision(True, "")) == {"Allow": True}
    denied = reply(Decision(False, "authz: denied x", error="boom"))
    assert denied == {"Allow": False, "Msg": "authz: denied x", "Err": "boom"}
    assert json.dumps(denied).startswith('{"Allow": false')
