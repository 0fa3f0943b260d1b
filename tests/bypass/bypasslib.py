"""Assertions shared by the bypass corpus: "the daemon refused with OUR message" and "nothing changed".

Every bypass test sends one technique as ``dev`` (built-in developer) to the real dockerd and
checks two things:

- ``cli_denied`` / ``api_denied`` / ``raw_denied``: the daemon answered with the deny message of
  our plugin (``authorization denied by plugin <name>: authz: denied ...``), naming the policy
  rule and request field where the technique has one;
- ``unchanged(stack)``: the daemon's objects, as the admin sees them, are the same before and
  after (no container, image tag, volume, network, plugin or swarm state appeared, vanished or
  changed state).

Techniques the daemon itself refuses before asking any plugin (301 redirects, 404 routes, a body
shorter than its Content-Length) are marked ``@daemon_rejects`` and assert ``daemon_refused``:
the plugin was never asked, so the message is the daemon's, and nothing changed either.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostutil import HttpReply, http_headers_of
from stack import Stack

__all__ = [
    "API",
    "DEV",
    "CustomEnv",
    "RawReply",
    "api_denied",
    "cli_denied",
    "container_json",
    "create_body",
    "daemon_refused",
    "daemon_rejects",
    "objects",
    "raw_denied",
    "send_raw",
    "unchanged",
]

DEV = "dev"
API = "/v1.41"  # the version the CLI negotiates with 20.10.24
ADMIN = "admin"

# Marks a technique the daemon refuses before any plugin is asked (counted apart in the corpus).
daemon_rejects = pytest.mark.daemon_rejects


@dataclass(frozen=True)
class CustomEnv:
    """The private stack of ``conftest.custom_env``: user ``binder`` may bind ``allowed`` read-only."""

    stack: Stack
    allowed: Path


# --- what exists on the daemon -------------------------------------------------------------------


def _get(stack: Stack, path: str) -> Any:  # decoded JSON of the Engine API
    reply = stack.api_as(ADMIN, "GET", path)
    assert reply.status == 200, f"admin GET {path}: {reply.status} {reply.text}"
    return reply.json()


def objects(stack: Stack) -> frozenset[str]:
    """Every object an admin can list, with the state a technique could change, one line each."""
    found: set[str] = set()
    for c in _get(stack, f"{API}/containers/json?all=1"):
        found.add(f"container {c['Id'][:12]} {','.join(c['Names'])} {c['State']} {c['Image']}")
    for i in _get(stack, f"{API}/images/json"):
        for tag in i.get("RepoTags") or ["<untagged>"]:
            found.add(f"image {i['Id']} {tag}")
    volumes = _get(stack, f"{API}/volumes")
    for v in volumes.get("Volumes") or []:
        found.add(f"volume {v['Name']} {v['Driver']} {json.dumps(v.get('Options'), sort_keys=True)}")
    for n in _get(stack, f"{API}/networks"):
        found.add(f"network {n['Id'][:12]} {n['Name']} {n['Driver']}")
    for p in _get(stack, f"{API}/plugins"):
        found.add(f"plugin {p['Name']} enabled={p['Enabled']}")
    info = _get(stack, f"{API}/info")
    found.add(f"swarm {info['Swarm']['LocalNodeState']}")
    found.add(f"authorization plugins {info['Plugins']['Authorization']}")
    return frozenset(found)


@contextmanager
def unchanged(stack: Stack) -> Iterator[None]:
    """Assert that the block left the daemon's objects exactly as they were.

    What a failing technique created is removed first (containers, volumes, networks, tags), so
    one hole does not cascade into every later test of the shared stack.
    """
    before = objects(stack)
    yield
    after = objects(stack)
    if before == after:
        return
    added = sorted(after - before)
    for line in added:
        kind, ident, name, *_ = [*line.split(" "), "", ""]
        if kind == "container":
            stack.docker_as(ADMIN, "rm", "-f", ident)
        elif kind in ("volume", "network"):
            stack.docker_as(ADMIN, kind, "rm", ident)
        elif kind == "image" and name != "<untagged>":
            stack.docker_as(ADMIN, "rmi", name)
    raise AssertionError(f"the daemon changed: added {added}, removed {sorted(before - after)}")


def container_json(stack: Stack, name: str) -> dict[str, object]:
    """``docker inspect`` of a container, as the admin."""
    value = _get(stack, f"{API}/containers/{name}/json")
    assert isinstance(value, dict)
    return value


def create_body(**host_config: object) -> dict[str, object]:
    """A create body that is allowed for ``dev`` except for the HostConfig fields given."""
    return {"Image": "tiny", "User": "1000", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none", **host_config}}


# --- the deny message --------------------------------------------------------------------------


def _expect_message(
    stack: Stack,
    text: str,
    *,
    action: str | None,
    rule: str | None,
    field: str | None,
    says: str | None,
    role: str,
    user: str,
) -> None:
    ours = stack.denied_prefix() + "authz: denied "
    assert ours in text, f"expected our deny ({ours!r}), got: {text}"
    if action is not None:
        assert f"authz: denied {action} for {user} " in text, f"expected a deny of {action}: {text}"
    if rule is not None:
        bracket = f"[rule roles.{role}.{rule}" + (f", field {field}]" if field is not None else ",")
        assert bracket in text, f"expected {bracket!r} in: {text}"
    if says is not None:
        assert says in text, f"expected {says!r} in: {text}"


def cli_denied(
    stack: Stack,
    result: subprocess.CompletedProcess[str],
    *,
    action: str | None = None,
    rule: str | None = None,
    field: str | None = None,
    says: str | None = None,
    role: str = "developer",
    user: str = DEV,
) -> None:
    """The CLI failed with ``Error response from daemon: <our deny>`` (and the rule/field named)."""
    output = result.stderr + result.stdout
    assert result.returncode != 0, f"the command succeeded: {output}"
    assert f"Error response from daemon: {stack.denied_prefix()}authz: denied" in output, output
    _expect_message(stack, output, action=action, rule=rule, field=field, says=says, role=role, user=user)


def api_denied(
    stack: Stack,
    reply: HttpReply,
    *,
    action: str | None = None,
    rule: str | None = None,
    field: str | None = None,
    says: str | None = None,
    role: str = "developer",
    user: str = DEV,
) -> None:
    """HTTP 403 carrying our deny message (JSON ``message``, or plain text for API < 1.24)."""
    assert reply.status == 403, f"expected 403, got {reply.status}: {reply.text}"
    _expect_message(stack, reply.text, action=action, rule=rule, field=field, says=says, role=role, user=user)


# --- raw HTTP for what http.client will not send --------------------------------------------------


@dataclass(frozen=True)
class RawReply:
    status: int
    text: str  # headers and body


def send_raw(stack: Stack, user: str, head: str, body: bytes = b"", *, close_write: bool = False) -> RawReply:
    """Send ``head`` (request line + headers, no blank line) and ``body`` byte for byte as ``user``.

    Adds the user's token header and ``Connection: close``. The daemon may answer (and close)
    before reading a large body: a broken pipe while sending is expected then, and whatever it
    answered is still read. ``close_write`` shuts our sending side afterwards, for a body
    shorter than announced (the daemon then reads EOF instead of waiting for the rest).
    """
    headers: Mapping[str, str] = http_headers_of(stack.configs[user])
    extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    data = f"{head.rstrip()}\r\n{extra}Connection: close\r\n\r\n".encode() + body
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(stack.daemon.socket))
        # the daemon may answer and close early; its answer is then in our receive queue
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        # it closed with our unread body pending: what it sent before is already in chunks
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks).decode("utf-8", "replace")
    status_line = raw.split("\r\n", 1)[0]
    assert status_line.startswith("HTTP/1.1 "), f"no HTTP answer: {raw[:500]!r}"
    return RawReply(int(status_line.split()[1]), raw)


def raw_denied(stack: Stack, reply: RawReply, **expect: str) -> None:
    assert reply.status == 403, f"expected 403, got: {reply.text[:800]}"
    _expect_message(stack, reply.text, action=expect.get("action"), rule=expect.get("rule"),
                    field=expect.get("field"), says=expect.get("says"), role="developer", user=DEV)  # fmt: skip


def daemon_refused(status: int, text: str, expected_status: int) -> None:
    """The daemon answered ``expected_status`` itself: no plugin verdict is in the answer."""
    assert status == expected_status, f"expected the daemon's {expected_status}, got {status}: {text}"
    assert "authorization denied by plugin" not in text, text
