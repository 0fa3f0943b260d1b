"""Who is on the other end of the gateway socket: ``SO_PEERCRED`` uid → authz user name.

Resolution, first match wins:

1. the mapping file names the uid (keys that are all digits, or YAML integers);
2. the mapping file names the uid's OS user name;
3. the OS user name itself, if it looks like a plain login (``[a-z_][a-z0-9_-]{0,31}``);
4. ``anonymous`` — a CN the policy must not define, so the plugin denies the caller.

Rule 3 only accepts plain login names so that an OS account can never take a CN meant for a
service certificate (those are typically domain names such as ``ci.example.com``); map any other
OS name explicitly. The mapping file is YAML or JSON, ``{uid or user name: authz user}``; it is
re-read when it changes, and a mapping file that cannot be read makes everyone anonymous.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz.errors import ConfigError
from authz.gateway.ca import validate_common_name

__all__ = [
    "ANONYMOUS",
    "Identity",
    "PeerCredentials",
    "UserMap",
    "UserMapFile",
    "os_user_name",
    "peer_credentials",
]

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
PLAIN_LOGIN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid" to the kernel
_PEERCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid (uids are unsigned)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The caller's process as the kernel saw it at ``connect()`` time."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected AF_UNIX socket (set by the kernel, not by the caller)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def os_user_name(uid: int) -> str | None:
    """The passwd name of ``uid``, or None when no entry exists."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@dataclass(frozen=True, slots=True)
class Identity:
    """The authz user a caller acts as, and which rule chose it (for the log line)."""

    user: str
    source: str  # "map-uid", "map-name", "os", "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.user == ANONYMOUS


@dataclass(frozen=True, slots=True)
class UserMap:
    """An explicit uid/name → authz user mapping; ``broken`` set means "everyone is anonymous"."""

    by_uid: Mapping[int, str] = field(default_factory=dict)
    by_name: Mapping[str, str] = field(default_factory=dict)
    broken: str | None = None

    @classmethod
    def from_mapping(cls, data: object, origin: str = "mapping") -> UserMap:
        """Validate a decoded document; raise ``ConfigError`` naming the offending key."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: must be a mapping of uid or user name to authz user name")
        by_uid: dict[int, str] = {}
        by_name: dict[str, str] = {}
        for key, value in data.items():
            target = _target(origin, key, value)
            uid = _as_uid(origin, key)
            if uid is not None:
                if uid in by_uid:
                    raise ConfigError(f"{origin}: uid {uid} is mapped twice")
                by_uid[uid] = target
            else:
                by_name[str(key)] = target
        return cls(by_uid, by_name)

    @classmethod
    def parse(cls, text: str, origin: str) -> UserMap:
        """Parse YAML or JSON text (JSON is YAML); duplicate keys are an error."""
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML/JSON: {exc}") from exc
        return cls.from_mapping(data, origin)

    @classmethod
    def load(cls, path: Path) -> UserMap:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the user map {path}: {exc}") from exc
        return cls.parse(text, str(path))

    def resolve(
        self,
        uid: int,
        os_name: Callable[[int], str | None] = os_user_name,
        *,
        os_fallback: bool = True,
    ) -> Identity:
        """The authz user for ``uid`` by the rules in the module docstring."""
        if self.broken is not None:
            # Fail closed: the admin's intent is unknown while the map cannot be read.
            return Identity(ANONYMOUS, "map-error")
        if uid in self.by_uid:
            return Identity(self.by_uid[uid], "map-uid")
        name = os_name(uid)
        if name is not None and name in self.by_name:
            return Identity(self.by_name[name], "map-name")
        # Only plain logins: "ci.example.com" as an OS account must not become a service's CN.
        if os_fallback and name is not None and PLAIN_LOGIN.fullmatch(name) and name != ANONYMOUS:
            return Identity(name, "os")
        return Identity(ANONYMOUS, "anonymous")


def _as_uid(origin: str, key: object) -> int | None:
    if isinstance(key, bool):  # YAML reads `yes:`/`true:` as booleans: neither a uid nor a name
        raise ConfigError(f"{origin}: key {key!r} is a boolean; quote it if it is a user name")
    if isinstance(key, int):
        uid = key
    elif isinstance(key, str) and key.isascii() and key.isdigit():
        uid = int(key)
    elif isinstance(key, str) and key and key == key.strip() and key.isprintable():
        return None
    else:
        raise ConfigError(f"{origin}: key {key!r} is neither a uid nor an OS user name")
    if not 0 <= uid <= _MAX_UID:
        raise ConfigError(f"{origin}: uid {uid} is out of range")
    return uid


def _target(origin: str, key: object, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: {key!r}: the authz user name must be a string, got {value!r}")
    try:
        validate_common_name(value)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {key!r}: {exc}") from exc
    if value == ANONYMOUS:
        raise ConfigError(f"{origin}: {key!r}: {ANONYMOUS!r} is reserved for unmapped callers")
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        # "1000" and 1000 name the same uid; anything else (even unhashable) compares by repr
        marker = str(key) if isinstance(key, int | str) and not isinstance(key, bool) else repr(key)
        if marker in seen:
            # Fail closed: with two entries for one caller, whichever wins is a guess.
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(marker)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


class UserMapFile:
    """A mapping file re-read whenever its inode, size or mtime changes.

    The first load raises ``ConfigError`` (the gateway refuses to start with a bad map); later
    failures are logged and make ``current()`` a broken map (everyone anonymous) until fixed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._signature = self._stat()
        except OSError as exc:
            raise ConfigError(f"cannot read the user map {path}: {exc}") from exc
        self._map = UserMap.load(path)

    def _stat(self) -> tuple[int, int, int]:
        info = os.stat(self.path)
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def current(self) -> UserMap:
        """The map as the file says now (cheap: one ``stat`` when unchanged)."""
        try:
            signature = self._stat()
        except OSError as exc:
            signature = (-1, -1, -1)
            error: str | None = f"cannot stat {self.path}: {exc}"
        else:
            error = None
        with self._lock:
            if signature == self._signature:
                return self._map
            self._signature = signature
            if error is None:
                try:
                    self._map = UserMap.load(self.path)
                except ConfigError as exc:
                    error = str(exc)
                else:
                    log.info("gateway: reloaded user map %s", self.path)
            if error is not None:
                log.error("gateway: user map unusable, every caller is anonymous until fixed: %s", error)
                self._map = UserMap(broken=error)
            return self._map
