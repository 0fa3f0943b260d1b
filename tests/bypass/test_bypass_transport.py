"""Bypass corpus, transport (B1-B3, B6-B8): what the HTTP framing and the URI hide from a plugin.

Raw API requests over the daemon's unix socket as ``dev``: ``http.client`` (``Stack.api_as``)
where it can say it, exact bytes (``send_raw``) for chunked bodies, duplicate headers, absolute
URIs and bodies the daemon stops reading. The privileged create body is the payload throughout:
if any of these reached the daemon unjudged, 20.10 would create a privileged container.
"""

from __future__ import annotations

import json

import pytest
from bypasslib import (
    API,
    DEV,
    api_denied,
    container_json,
    create_body,
    daemon_refused,
    daemon_rejects,
    raw_denied,
    send_raw,
    unchanged,
)
from stack import Stack

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
PRIVILEGED = json.dumps(create_body(Privileged=True)).encode()
PRIVILEGED_RULE = {"rule": "containers.privileged", "field": "HostConfig.Privileged"}
MIB = 1024 * 1024


def _oversized() -> bytes:
    """The privileged create padded past the daemon's 1 MiB forwarding limit with a label."""
    body = create_body(Privileged=True, Binds=["/:/host"])
    body["Labels"] = {"pad": "x" * MIB}
    return json.dumps(body).encode()


def _create_head(path: str = f"{API}/containers/create", *headers: str) -> str:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: docker", *headers])


# --- bodies the daemon does not forward (B1-B3) ----------------------------------------------------


def test_oversized_body_with_content_length(e2e_env: Stack) -> None:
    """[B1] CVE-2026-34040: a ≥ 1 MiB body is executed by 20.10 but not forwarded to the plugin."""
    body = _oversized()
    head = _create_head(f"{API}/containers/create", "Content-Type: application/json", f"Content-Length: {len(body)}")
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, body)
    raw_denied(e2e_env, reply, says="over the 1 MiB the daemon forwards (CVE-2026-34040)")


def test_oversized_body_chunked(e2e_env: Stack) -> None:
    """[B1] The same ≥ 1 MiB body sent chunked (no Content-Length for the plugin to see)."""
    body = _oversized()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = _create_head(f"{API}/containers/create", "Content-Type: application/json", "Transfer-Encoding: chunked")
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, chunked)
    raw_denied(e2e_env, reply, says="it was sent chunked")


def test_small_chunked_body_is_forwarded_and_judged(e2e_env: Stack) -> None:
    """[B2] CVE-2024-41110: a small chunked body; this daemon forwards it, and it is judged."""
    chunked = f"{len(PRIVILEGED):x}\r\n".encode() + PRIVILEGED + b"\r\n0\r\n\r\n"
    head = _create_head(f"{API}/containers/create", "Content-Type: application/json", "Transfer-Encoding: chunked")
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, chunked)
    raw_denied(e2e_env, reply, action="container:create", **PRIVILEGED_RULE)


def test_content_length_zero_with_a_body_behind_it(e2e_env: Stack) -> None:
    """[§2.7] ``Content-Length: 0`` followed by the privileged body: neither the plugin nor the
    daemon reads it; the create has no readable body and is denied."""
    head = _create_head(f"{API}/containers/create", "Content-Type: application/json", "Content-Length: 0")
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, PRIVILEGED)
    raw_denied(e2e_env, reply, action="container:create", says="without a readable JSON body cannot be judged")


@daemon_rejects
def test_content_length_longer_than_the_body(e2e_env: Stack) -> None:
    """[§2.7] ``Content-Length`` larger than the bytes sent (here: none): the daemon fails reading
    the body (500 ``unexpected EOF``) before any plugin is asked."""
    head = _create_head(f"{API}/containers/create", "Content-Type: application/json", "Content-Length: 50")
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, b"", close_write=True)
    daemon_refused(reply.status, reply.text, 500)
    assert "unexpected EOF" in reply.text


def test_text_plain_body_on_services_create(e2e_env: Stack) -> None:
    """[B3] ``text/plain`` on ``/services/create``: 20.10 decodes it anyway, but withholds it from
    the plugin (swarm is not initialised here; the deny comes first)."""
    spec = {"Name": "evil", "TaskTemplate": {"ContainerSpec": {"Image": "tiny", "Mounts": [
        {"Type": "bind", "Source": "/", "Target": "/host"}]}}}  # fmt: skip
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/services/create", json.dumps(spec), {"Content-Type": "text/plain"})
    api_denied(e2e_env, reply, says="its Content-Type is text/plain, not application/json")


def test_no_content_type_on_create(e2e_env: Stack) -> None:
    """[B3] The privileged body without any ``Content-Type``: not forwarded, so not judgeable."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create", PRIVILEGED)
    api_denied(e2e_env, reply, says="its Content-Type is absent")


def test_charset_parameter_is_forwarded_and_judged(e2e_env: Stack) -> None:
    """[B3] ``application/json; charset=utf-8`` is JSON to the daemon, which forwards it: the
    privileged body is judged (denied), and the same header on a harmless body is accepted."""
    typed = {"Content-Type": "application/json; charset=utf-8"}
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create", PRIVILEGED, typed)
    api_denied(e2e_env, reply, action="container:create", **PRIVILEGED_RULE)
    allowed = e2e_env.api_as(DEV, "POST", f"{API}/containers/create", json.dumps(create_body()), typed)
    assert allowed.status == 201, allowed.text
    e2e_env.docker_as("admin", "rm", "-f", allowed.json()["Id"], check=True)


def test_form_body_overrides_the_query(e2e_env: Stack) -> None:
    """[B7] A form-encoded body on ``/images/tiny/tag?repo=safe``: Go's ParseForm lets the body's
    ``repo=laundered`` win over the query the plugin sees."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/images/tiny/tag?repo=safe&tag=ok", "repo=laundered&tag=evil", form)
    api_denied(e2e_env, reply, says="form bodies override query parameters")


def test_duplicate_content_type_headers(e2e_env: Stack) -> None:
    """[B7] Form first, JSON last: the daemon parses the first, the plugin is shown the last."""
    body = b"repo=laundered&tag=evil"
    head = "\r\n".join([
        f"POST {API}/images/tiny/tag?repo=safe&tag=ok HTTP/1.1", "Host: docker",
        "Content-Type: application/x-www-form-urlencoded", "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ])  # fmt: skip
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, body)
    raw_denied(e2e_env, reply, says="different first Content-Type (duplicate headers)")


# --- the legacy start body (B6) --------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1.23", "v1.41"])
def test_host_config_body_on_start(e2e_env: Stack, dev_container: str, version: str) -> None:
    """[B6] ``POST /vX/containers/<own>/start`` with a HostConfig body: API < 1.24 on 20.10
    applies it to the created container (privileged, ``/`` bound, host PID namespace)."""
    body = {"Privileged": True, "Binds": ["/:/host"], "PidMode": "host"}
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"/{version}/containers/{dev_container}/start", body)
    api_denied(e2e_env, reply)
    host_config = container_json(e2e_env, dev_container)["HostConfig"]
    assert isinstance(host_config, dict)
    assert (host_config["Privileged"], host_config["Binds"], host_config["PidMode"]) == (False, None, "")


# --- URIs (B8) ---------------------------------------------------------------------------------------

AUTHZ_PATHS = [
    pytest.param(f"{API}/containers%2Fcreate", id="percent-encoded-slash"),
    pytest.param(f"{API}/%63ontainers/create", id="percent-encoded-letter"),
    pytest.param("/containers/create", id="versionless"),
    pytest.param("/v1.41.0/containers/create", id="three-part-version"),
    pytest.param(f"{API}/containers/create?x=/version", id="query-mentions-another-route"),
    pytest.param(f"{API}/containers/create?name=a%2Fb", id="percent-encoded-query"),
]


@pytest.mark.parametrize("path", AUTHZ_PATHS)
def test_uri_spellings_of_create(e2e_env: Stack, path: str) -> None:
    """[B8] Other spellings of ``/v1.41/containers/create`` the daemon routes to the create
    handler: the plugin decodes them the same way and judges the body."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", path, PRIVILEGED, JSON)
    api_denied(e2e_env, reply, action="container:create", **PRIVILEGED_RULE)


@pytest.mark.parametrize("path", ["/v1/containers/create", "/v99/containers/create"], ids=["v1", "v99"])
def test_api_versions_outside_the_window(e2e_env: Stack, path: str) -> None:
    """[B8] ``/v1/`` and ``/v99/``: authz runs before the daemon's version check, so the plugin
    must refuse versions it cannot read (the daemon would answer 400 afterwards)."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", path, PRIVILEGED, JSON)
    api_denied(e2e_env, reply, says="is not MAJOR.MINOR")


def test_absolute_form_request_target(e2e_env: Stack) -> None:
    """[B8] ``POST http://evil/v1.41/containers/create``: the daemon routes the path part."""
    head = _create_head(
        f"http://evil{API}/containers/create", "Content-Type: application/json", f"Content-Length: {len(PRIVILEGED)}"
    )
    with unchanged(e2e_env):
        reply = send_raw(e2e_env, DEV, head, PRIVILEGED)
    raw_denied(e2e_env, reply, action="container:create", **PRIVILEGED_RULE)


DAEMON_PATHS = [
    pytest.param(f"{API}//containers/create", 301, id="double-slash-redirect"),
    pytest.param(f"{API}/./containers/create", 301, id="dot-segment-redirect"),
    pytest.param(f"{API}/containers/create/", 404, id="trailing-slash"),
    pytest.param(f"{API}/containers/create;x=1", 404, id="semicolon-params"),
    pytest.param("/V1.41/containers/create", 404, id="upper-case-version"),
]


@daemon_rejects
@pytest.mark.parametrize(("path", "status"), DAEMON_PATHS)
def test_uri_spellings_the_daemon_refuses(e2e_env: Stack, path: str, status: int) -> None:
    """[B8] Unclean or unknown spellings: the router answers (301 to the clean path, or 404)
    without asking any plugin and without calling the handler."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", path, PRIVILEGED, JSON)
    daemon_refused(reply.status, reply.text, status)


def test_query_with_both_from_src_and_from_image(e2e_env: Stack) -> None:
    """[B8] ``/images/create?fromSrc=-&fromImage=evil.example/x``: one route, two meanings
    (import or pull) chosen by the query; the plugin refuses the ambiguous mix."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/images/create?fromSrc=-&fromImage=evil.example/x&repo=tiny", b"")
    api_denied(e2e_env, reply, says="both fromImage and fromSrc")


def test_repeated_query_parameter_first_wins(e2e_env: Stack) -> None:
    """[B8] ``fromImage=evil.example/x&fromImage=docker.io/library/tiny``: Go's ``Form.Get``
    reads the first; a plugin reading the last would allow a pull from another registry."""
    query = "fromImage=evil.example/x&fromImage=docker.io/library/tiny&tag=latest"
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/images/create?{query}")
    api_denied(e2e_env, reply, action="image:pull", rule="images.allow", field="fromImage",
               says="pulling evil.example/x:latest")  # fmt: skip
