"""Ask the daemon for an image's configured USER, and whether a volume exists (an edge: I/O over
the daemon's socket).

``DaemonImageInspector.volume_exists(name)`` sends ``GET /volumes/{name}``: True on 200, False on
404, ``None`` on anything else (the volume rules then deny the create: fail closed). Never cached:
a volume appears the moment some container makes it.

``DaemonImageInspector.image_user(ref)`` sends ``GET /images/{ref}/json`` to the daemon's unix
socket and returns ``Config.User`` (``""`` when the image sets none), or ``None`` on any failure:
the run_as_root rule then denies (fail closed).

The daemon passes this request through the authorization plugins, ours included, so it carries
``X-Authz-Internal: <token>``; the Authorizer allows exactly ``image:inspect`` for that token.
No deadlock: the lookup runs inside a plugin worker while the daemon calls back into the plugin
for the same lookup (AuthZReq, then AuthZRes), maybe on another connection of that worker. Before
it waits, the lookup calls ``authz.blocking.about_to_wait()``, and the loop worker hands its loop
to another thread, which answers those calls (a thread per connection worker has a thread there
anyway). The timeout (2 s) bounds the wait if nothing answers: the create is then denied, never
allowed.

Caching: an image name is mutable (``docker tag`` re-points it), so a cached USER for a name
could be replayed for a root image; names are cached for ``name_ttl`` (1 s: within one request's
role evaluations), content-addressed references (digests, full IDs) for ``ttl`` (30 s).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from authz.blocking import about_to_wait
from authz.daemon_api import DaemonError, DaemonReader, unix_socket_path
from authz.decide import INTERNAL_HEADER
from authz.errors import ConfigError

__all__ = [
    "INTERNAL_HEADER",
    "INTERNAL_TOKEN_FILE",
    "DaemonImageInspector",
    "load_or_create_internal_token",
    "unix_socket_path",
]

INTERNAL_TOKEN_FILE = "internal-token"  # noqa: S105 - a file name in the state directory (mode 0600)

_MAX_RESPONSE = 4 * 1024 * 1024  # an image inspect is a few KiB; more means something is wrong
_MAX_CACHE = 1024
_IMMUTABLE = re.compile(r"(?:.*@)?sha256:[0-9a-f]{64}|[0-9a-f]{64}", re.ASCII)


def load_or_create_internal_token(path: Path) -> str:
    """The plugin's internal token in ``path`` (mode 0600), created with 256 random bits if absent.

    Every worker calls this at start; ``O_EXCL`` makes exactly one of them write the token.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
        return token
    for _ in range(50):  # another worker may be between creating and writing the file
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
        time.sleep(0.01)
    raise ConfigError(f"internal token file {path} is empty: remove it and restart the plugin")


def _safe_reference(ref: str) -> bool:
    # A reference is never empty, never has "." or ".." path segments (the daemon would redirect
    # the cleaned path, never answering for the image), and never has control characters.
    if not ref or not ref.isprintable() or any(c.isspace() for c in ref):
        return False
    return all(segment not in ("", ".", "..") for segment in ref.split("/"))


class DaemonImageInspector:
    """``image_user`` for ``EvalContext``; thread-safe, one short connection per lookup."""

    def __init__(
        self,
        docker_host: str,
        internal_token: str,
        timeout: float = 2.0,
        *,
        ttl: float = 30.0,
        name_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = unix_socket_path(docker_host)
        self._token = internal_token
        self._timeout = timeout
        self._ttl = ttl
        self._name_ttl = name_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str]] = {}  # ref -> (expiry, user)

    def image_user(self, ref: str) -> str | None:
        """The image's ``Config.User`` (``""`` when unset), or ``None`` when it cannot be read."""
        if not _safe_reference(ref):
            return None
        now = self._clock()
        with self._lock:
            cached = self._cache.get(ref)
            if cached is not None and cached[0] > now:
                return cached[1]
        user = self._fetch(ref)
        if user is not None:
            ttl = self._ttl if _IMMUTABLE.fullmatch(ref) else self._name_ttl
            with self._lock:
                if len(self._cache) >= _MAX_CACHE:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) < _MAX_CACHE:
                    self._cache[ref] = (now + ttl, user)
        return user

    def volume_exists(self, name: str) -> bool | None:
        """Whether the daemon has volume ``name``; ``None`` when it cannot be told."""
        if not _safe_reference(name) or "/" in name:
            return None
        try:
            self._get_json(f"/volumes/{quote(name, safe='')}")
        except DaemonError as exc:
            return False if exc.status == 404 else None
        return True

    def _get_json(self, path: str) -> object:
        """``DaemonReader.get_json`` on a connection of its own (``DaemonError`` on any failure).

        The daemon authorizes this read through the plugin, maybe on a connection this thread
        serves (authz.loop_worker): the loop must go on in another thread while we wait.
        """
        about_to_wait()
        reader = DaemonReader(self._path, self._token, self._timeout, max_reply=_MAX_RESPONSE)
        try:
            return reader.get_json(path)
        finally:
            reader.close()

    def _fetch(self, ref: str) -> str | None:
        try:
            document = self._get_json(f"/images/{quote(ref, safe='/:@')}/json")
        except DaemonError:
            return None  # daemon down, slow (timeout), denied, or garbage: the caller fails closed
        config = document.get("Config") if isinstance(document, dict) else None
        if config is None:
            return ""  # an image without a config runs as the default user (root): "" says so
        user = config.get("User", "") if isinstance(config, dict) else None
        return user if isinstance(user, str) else None
