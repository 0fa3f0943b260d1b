"""The plugin's own requests to the Docker daemon (an edge: HTTP over the daemon's unix socket).

The daemon passes them through the authorization plugins, ours included, so they carry
``X-Authz-Internal: <token>`` and the Authorizer allows exactly the read-only
``authz.decide.INTERNAL_ACTIONS`` for that token (each is audited with source ``internal``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from typing import Any
from urllib.parse import quote

from authz.decide import INTERNAL_HEADER
from authz.errors import AuthzError, ConfigError
from authz.ownership_sweep import DaemonObjects, UnexpectedReply, container_ids, exec_ids, network_ids, volume_names

__all__ = [
    "DaemonError",
    "DaemonReader",
    "UnixHTTPConnection",
    "check_daemon_consults_plugin",
    "read_daemon_objects",
    "unix_socket_path",
]

# A listing of 10,000 containers is about 20 MB; more than this is not a daemon answering.
_MAX_REPLY = 256 * 1024 * 1024


class DaemonError(AuthzError):
    """The daemon could not be asked, refused, or answered something we cannot read."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal, None when there was no reply


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the daemon's API socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_socket_path(docker_host: str) -> str:
    """``unix:///var/run/docker.sock`` or ``/var/run/docker.sock`` → the socket path.

    Only unix sockets are supported: a TCP daemon would need TLS client credentials of its own.
    """
    path = docker_host.removeprefix("unix://") if docker_host.startswith("unix://") else docker_host
    if not path.startswith("/"):
        raise ConfigError(f"AUTHZ_DOCKER_HOST must be unix:///absolute/path, got {docker_host!r}")
    return path


class DaemonReader:
    """``GET`` requests with the internal token, over one kept-alive connection."""

    def __init__(
        self, socket_path: str, internal_token: str, timeout: float = 30.0, max_reply: int = _MAX_REPLY
    ) -> None:
        self._path = socket_path
        self._token = internal_token
        self._timeout = timeout
        self._max_reply = max_reply
        self._connection: UnixHTTPConnection | None = None

    @property
    def socket_path(self) -> str:
        return self._path

    def get_json(self, path: str) -> Any:
        """The decoded JSON reply to ``GET path``; ``DaemonError`` for anything but a 200 with JSON."""
        if self._connection is None:
            self._connection = UnixHTTPConnection(self._path, self._timeout)
        try:
            self._connection.request("GET", path, headers={INTERNAL_HEADER: self._token})
            response = self._connection.getresponse()
            data = response.read(self._max_reply + 1)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DaemonError(f"GET {path} on {self._path}: {exc}") from exc
        if response.status != 200:
            message = data[:300].decode("utf-8", "replace").strip()
            raise DaemonError(f"GET {path}: the daemon answered {response.status}: {message}", response.status)
        if len(data) > self._max_reply:
            raise DaemonError(f"GET {path}: the reply is larger than {self._max_reply} bytes")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise DaemonError(f"GET {path}: the reply is not JSON ({exc})") from exc

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
            self._connection = None


# Outside INTERNAL_ACTIONS: a daemon that consults this plugin refuses it with this text in its reply.
_PROBE_PATH = "/version"
_PROBE_REFUSAL = f"{INTERNAL_HEADER} allows only"


def check_daemon_consults_plugin(reader: DaemonReader) -> None:
    """``DaemonError`` unless the daemon behind ``reader`` asks this plugin about its requests.

    The listings are only the truth about objects this plugin recorded if they come from a daemon
    it authorizes: another daemon (a wrong socket, a second daemon on the host) would make every
    object look removed. A request for an action the internal token does not allow tells: our
    plugin refuses it, a daemon that does not consult us answers it.
    """
    try:
        reader.get_json(_PROBE_PATH)
    except DaemonError as exc:
        if exc.status == 403 and _PROBE_REFUSAL in str(exc):
            return
        raise
    raise DaemonError(f"the daemon at {reader.socket_path} answered GET {_PROBE_PATH} with the internal "
                      "token: it does not consult this plugin, so its objects say nothing about the "
                      "objects this plugin recorded")  # fmt: skip


def read_daemon_objects(reader: DaemonReader, *, with_execs: bool = True) -> DaemonObjects:
    """Every container, network and volume the daemon has, and (``with_execs``) the exec IDs of
    every container, from a daemon that consults this plugin (``check_daemon_consults_plugin``).

    The exec IDs cost one inspect per container (each a decision of the plugin, audited): read
    them only when there are exec records to judge. A container listed but gone by the time it is
    inspected (404) has no execs left either.
    """
    check_daemon_consults_plugin(reader)
    try:
        containers = container_ids(reader.get_json("/containers/json?all=1"))
        networks = network_ids(reader.get_json("/networks"))
        volumes = volume_names(reader.get_json("/volumes"))
        if not with_execs:
            return DaemonObjects(containers, networks, volumes, None)
        execs: set[str] = set()
        for container in sorted(containers):
            try:
                execs |= exec_ids(reader.get_json(f"/containers/{quote(container, safe='')}/json"))
            except DaemonError as exc:
                if exc.status != 404:
                    raise
    except UnexpectedReply as exc:
        raise DaemonError(str(exc)) from exc
    return DaemonObjects(containers, networks, volumes, frozenset(execs))
