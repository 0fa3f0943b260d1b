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
from authz.protocol import parse_request, reply, request_from_document
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


@pytest.mark.parametrize("status", [2**64, 2**70, 1000, 99, 0, -200])
@pytest.mark.parametrize("padding", [0, 300 * 1024], ids=["orjson", "json"])
def test_a_status_no_http_server_writes_is_refused_whichever_decoder_reads_it(status: int, padding: int) -> None:
    """orjson reads an integer beyond 64 bits as a float, json.loads as an int (envelopes beyond
    256 KiB): both are refused, and no such number reaches the audit table's integer column."""
    raw = json.dumps({"RequestMethod": "GET", "RequestUri": "/x", "ResponseStatusCode": status,
                      "RequestHeaders": {"X-Pad": "p" * padding}}).encode()  # fmt: skip
    with pytest.raises(RequestError, match="ResponseStatusCode"):
        parse_request(raw, Phase.RESPONSE)
    assert parse_request(raw.replace(str(status).encode(), b"204"), Phase.RESPONSE).status_code == 204


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


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
_NEAR_JSON = st.text(alphabet='{}[]",:0123456789.eE+-\\ntrufalsNIy \x00\x1f\x7fé\u2028', max_size=30).map(str.encode)


_READ_FIELDS = (
    "RequestMethod", "RequestUri", "User", "UserAuthNMethod", "RequestHeaders", "RequestPeerCertificates",
    "RequestBody", "ResponseStatusCode", "ResponseHeaders", "ResponseBody",
)  # fmt: skip


# Values dockerd sends, and ones where the two decoders part: integers beyond 64 bits, an
# overflowing float, a lone surrogate escape.
_EDGE_FRAGMENTS = [b"200", b"18446744073709551616", b"-9223372036854775809", b"1e400", b'"e30="', b'["QQ=="]',
                   b'{"A": "b"}', b'"/_ping"', b'"\\ud800"']  # fmt: skip


@settings(max_examples=1500)
@given(
    st.sampled_from(_READ_FIELDS),
    _NEAR_JSON
    | st.binary(max_size=30)
    | _JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | _JSON_VALUES.map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    | st.sampled_from(_EDGE_FRAGMENTS),
)
def test_the_envelope_is_read_as_json_would_read_it_or_refused(field: str, fragment: bytes) -> None:
    """orjson (the envelope's decoder) never gives the plugin a request other than the standard
    library's decoder would; it refuses more (NaN, lone surrogates, non-UTF-8, and an integer
    beyond 64 bits, which it reads as a float: every field that takes a number wants an int)."""
    raw = b'{"RequestMethod": "GET", "RequestUri": "/x", "' + field.encode() + b'": ' + fragment + b"}"
    try:
        ours = parse_request(raw, Phase.RESPONSE)
    except RequestError:
        return
    assert ours == request_from_document(json.loads(raw), Phase.RESPONSE)


def test_body_is_base64_decoded() -> None:
    body = base64.b64encode(b'{"Image":"tiny"}').decode()
    raw = json.dumps({"RequestMethod": "POST", "RequestUri": "/containers/create", "RequestBody": body})
    assert parse_request(raw.encode(), Phase.REQUEST).body == b'{"Image":"tiny"}'


def test_reply_allow_is_a_json_boolean_and_deny_carries_the_message() -> None:
    assert reply(Decision(True, "")) == {"Allow": True}
    denied = reply(Decision(False, "authz: denied x", error="boom"))
    assert denied == {"Allow": False, "Msg": "authz: denied x", "Err": "boom"}
    assert json.dumps(denied).startswith('{"Allow": false')
