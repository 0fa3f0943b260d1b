"""Bypass corpus, JSON parser differentials (B4, B5): bodies Go decodes differently from Python.

The CLI always sends canonical JSON, so these go through the raw API as ``dev``. Each body is
the allowed baseline (``tiny``, user 1000, network none) with ``Privileged`` or a host bind
smuggled past a naive, exact-case, last-object-wins reading. On 20.10 the daemon would create a
privileged container for each of them (docker-authz.md 6.2, observed); the plugin must deny.
"""

from __future__ import annotations

import pytest
from bypasslib import ADMIN, API, DEV, api_denied, container_json, unchanged
from stack import Stack

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
BASE = '"Image":"tiny","User":"1000","Cmd":["true"]'


def _post(stack: Stack, body: str) -> str:
    """POST the literal ``body`` as dev; assert our 403, nothing created; the reply's text."""
    with unchanged(stack):
        reply = stack.api_as(DEV, "POST", f"{API}/containers/create", body.encode(), JSON)
    api_denied(stack, reply)
    return reply.text


def test_lower_case_keys(e2e_env: Stack) -> None:
    """[B4] ``hostconfig``/``privileged``/``networkmode``: Go matches field names case-insensitively."""
    text = _post(e2e_env, '{"image":"tiny","user":"1000","cmd":["true"],'
                          '"hostconfig":{"networkmode":"none","privileged":true}}')  # fmt: skip
    assert "[rule roles.developer.containers.privileged, field HostConfig.Privileged]" in text


def test_unicode_folded_keys(e2e_env: Stack) -> None:
    """[B4] ``HoſtConfig``/``Bindſ`` (U+017F long s): Go's case folding maps ``ſ`` onto ``s``."""
    text = _post(e2e_env, "{" + BASE + ',"Ho\u017ftConfig":{"NetworkMode":"none","Bind\u017f":["/:/host"]}}')
    assert "non-ASCII key" in text


def test_kelvin_sign_key(e2e_env: Stack) -> None:
    """[B4] ``Lin\u212as`` (U+212A Kelvin sign) folds onto ``Links`` in Go."""
    text = _post(e2e_env, "{" + BASE + ',"HostConfig":{"NetworkMode":"none","Lin\u212as":["x:y"]}}')
    assert "non-ASCII key" in text


def test_duplicate_key_last_wins(e2e_env: Stack) -> None:
    """[B4] ``"Privileged": false, "privileged": true``: Go applies both, the last wins."""
    text = _post(e2e_env, "{" + BASE + ',"HostConfig":{"NetworkMode":"none","Privileged":false,"privileged":true}}')
    assert "keys 'Privileged' and 'privileged' that the daemon reads as the same field" in text


def test_duplicate_host_config_objects_merge(e2e_env: Stack) -> None:
    """[B4] Two ``HostConfig`` objects: Go merges them (privileged from the first survives), a
    Python dict keeps only the second."""
    text = _post(e2e_env, "{" + BASE + ',"HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"none"}}')
    assert "keys 'HostConfig' and 'HostConfig'" in text


def test_case_colliding_keys_in_a_struct_among_maps(e2e_env: Stack) -> None:
    """[B4] ``"Type":"volume","type":"bind"`` in a mount: map keys (labels) are free, but a mount
    is a struct, where Go lets the later key win and would bind-mount ``/``."""
    mount = '{"Type":"volume","type":"bind","Source":"/","Target":"/host"}'
    text = _post(e2e_env, "{" + BASE + ',"Labels":{"Team":"a","team":"b"},'
                          '"HostConfig":{"NetworkMode":"none","Mounts":[' + mount + "]}}")  # fmt: skip
    assert "JSON object HostConfig.Mounts[0] has keys 'Type' and 'type' that the daemon reads as the same field" in text


def test_map_keys_are_kept_as_sent(e2e_env: Stack) -> None:
    """[control] Labels, volumes and driver options are Go maps: the daemon keeps their keys as
    sent, so non-ASCII keys and keys differing only in case are allowed, and stored as given."""
    name = "json-map-keys"
    e2e_env.docker_as(ADMIN, "rm", "-f", name)  # a leftover of an interrupted run
    try:
        made = e2e_env.docker_as(DEV, "create", "--name", name, "--network", "none", "--user", "1000",
                                 "--label", "café=1", "--label", "Team=a", "--label", "team=b",
                                 "-v", "/données", "tiny", "true")  # fmt: skip
        assert made.returncode == 0, made.stderr
        config = container_json(e2e_env, name)["Config"]
        assert isinstance(config, dict)
        assert {"café": "1", "Team": "a", "team": "b"}.items() <= config["Labels"].items()
        assert "/données" in config["Volumes"]
    finally:
        e2e_env.docker_as(ADMIN, "rm", "-f", "-v", name)


def test_host_config_fields_at_the_top_level(e2e_env: Stack) -> None:
    """[B5] ``Privileged``/``Binds`` at the top level, no ``HostConfig``: 20.10 applies them."""
    text = _post(e2e_env, "{" + BASE + ',"Privileged":true,"Binds":["/:/host"],"NetworkMode":"none"}')
    assert "[rule roles.developer.containers.privileged, field HostConfig.Privileged]" in text
    assert "at the top level of the body is not allowed" in text


def test_trailing_data_after_the_body(e2e_env: Stack) -> None:
    """[B4] A second JSON value after the body: 20.10's create decoder stops after the first; a
    reader that takes the last (or a stream parser) sees another document."""
    text = _post(e2e_env, "{" + BASE + ',"HostConfig":{"NetworkMode":"none"}}{"HostConfig":{"Privileged":true}}')
    assert "JSON body is invalid" in text


def test_nan_number(e2e_env: Stack) -> None:
    """[B4] ``NaN``: Python's json accepts it, Go refuses it; a differential the plugin must not
    resolve in its own favour."""
    text = _post(e2e_env, "{" + BASE + ',"HostConfig":{"NetworkMode":"none","Memory":NaN}}')
    assert "NaN" in text


def test_invalid_utf8_in_a_string(e2e_env: Stack) -> None:
    """[B4] Invalid UTF-8 in a harmless string (``Hostname``): Go turns it into U+FFFD, so the
    plugin and the daemon would read different values; the body alone is the reason to deny."""
    body = ("{" + BASE + ',"Hostname":"a').encode() + b"\xff" + b'","HostConfig":{"NetworkMode":"none"}}'
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create", body, JSON)
    api_denied(e2e_env, reply, says="UTF-8")
