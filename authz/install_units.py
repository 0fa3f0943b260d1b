"""The files ``authzctl install`` writes for a legacy (v1) plugin run by systemd, as text.

Systemd units, the environment file, and daemon.json edited without disturbing it (every other
key and the key order kept; what dockerd would read differently from us is refused).

``NAME.socket`` owns the plugin socket (created by systemd before ``docker.service`` starts, mode
0600, root only) and starts ``NAME.service`` on the first connection: gunicorn inherits the bound
socket (``LISTEN_FDS``) instead of binding it, and tells systemd when it is ready (``Type=notify``).
The environment file is written once and never overwritten: it may hold a database password.

Pure functions of their arguments (standard library only), so tests compare texts exactly, and
``write_atomic`` which puts them in place.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.errors import ConfigError

__all__ = [
    "AUTHZ_KEY",
    "MARKER",
    "UnitSettings",
    "add_plugin",
    "env_file_text",
    "parse_daemon_json",
    "prune_service_unit",
    "prune_timer_unit",
    "remove_plugin",
    "service_unit",
    "socket_unit",
    "unified_diff",
    "validate_name",
    "write_atomic",
]

AUTHZ_KEY = "authorization-plugins"
# A unit name and a file name under /run/docker/plugins: no slash, no spaces, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

# First line of every file we write: uninstall removes only files that carry it.
MARKER = "# Written by `authzctl install`"


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What the unit texts depend on."""

    name: str  # plugin name: units NAME.socket and NAME.service
    socket: str  # absolute path of the plugin socket
    program: str  # absolute path of authzctl
    env_file: str = "/etc/authz/authz.env"
    state_dir: str = "/var/lib/authz"
    workers: int = 2
    cpu_affinity: str = "none"  # ``authzctl serve --cpu-affinity``; written only when not the default
    inet: bool = False  # PostgreSQL over TCP needs AF_INET/AF_INET6
    protect_home: str = "yes"  # "read-only" when the program lives under /root or /home


def socket_unit(s: UnitSettings) -> str:
    return f"""{MARKER}; reinstall rather than edit.
# The docker daemon finds the plugin "{s.name}" by this socket; it must exist before dockerd starts.
[Unit]
Description=Docker authorization plugin {s.name} (socket)
Documentation=man:systemd.socket(5)
Before=docker.service

[Socket]
ListenStream={s.socket}
SocketMode=0600
SocketUser=root
SocketGroup=root
DirectoryMode=0700
# A stopped plugin leaves no socket behind: dockerd then reports "plugin not found", not a hang.
RemoveOnStop=yes
Service={s.name}.service

[Install]
WantedBy=sockets.target
"""


def _sandbox(s: UnitSettings) -> str:
    """The hardening both services share: the state directory is the only writable path."""
    families = "AF_UNIX AF_INET AF_INET6" if s.inet else "AF_UNIX"
    return f"""ReadWritePaths={s.state_dir}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={s.protect_home}
# No PrivateTmp: bind sources below /tmp and /var/tmp must be judged as the daemon will see them
# (containers_mounts resolves them here). Both are read-only to the plugin (ProtectSystem=strict):
# its temporary files (gunicorn's heartbeat, SQLite's sorts) go to the state directory.
Environment=TMPDIR={s.state_dir}
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
CapabilityBoundingSet=
# AF_UNIX: the daemon's socket and a local PostgreSQL socket; TCP only with `install --inet`.
RestrictAddressFamilies={families}
SystemCallArchitectures=native
SystemCallFilter=@system-service
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
"""


def service_unit(s: UnitSettings) -> str:
    affinity = ["--cpu-affinity", s.cpu_affinity] if s.cpu_affinity != "none" else []
    exec_start = shlex.join([s.program, "serve", "--socket", s.socket, "--workers", str(s.workers), *affinity])
    network = "Wants=network-online.target\nAfter=network-online.target\n" if s.inet else ""
    return f"""{MARKER}; reinstall rather than edit.
# gunicorn inherits the socket of {s.name}.socket (LISTEN_FDS) and reports readiness (Type=notify).
[Unit]
Description=Docker authorization plugin {s.name}
Requires={s.name}.socket
After={s.name}.socket
Before=docker.service
{network}
[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Environment=AUTHZ_STATE_DIR={s.state_dir}
Environment=AUTHZ_DATABASE_URL=sqlite:///{s.state_dir}/authz.db
# Overrides the defaults above (database URL, node name …); written once, mode 0600.
EnvironmentFile={s.env_file}
Restart=always
RestartSec=1
# SIGTERM to gunicorn's master only: it drains its workers itself.
KillMode=mixed
TimeoutStopSec=15
UMask=0077
StateDirectory={_state_directory(s.state_dir)}
StateDirectoryMode=0700
{_sandbox(s)}"""


def prune_service_unit(s: UnitSettings) -> str:
    exec_start = shlex.join([s.program, "ownership", "prune", "--if-configured"])
    return f"""{MARKER}; reinstall rather than edit.
# Forgets the owners of objects the daemon removed without a call the plugin sees (`docker run
# --rm`, exec instances): `authzctl ownership prune --help`. It does nothing until
# AUTHZ_DOCKER_HOST is set in {s.env_file}; on a shared database it judges this node's records.
[Unit]
Description=Forget the owners of removed Docker objects (authorization plugin {s.name})
After={s.name}.service docker.service

[Service]
Type=oneshot
ExecStart={exec_start}
Environment=AUTHZ_STATE_DIR={s.state_dir}
Environment=AUTHZ_DATABASE_URL=sqlite:///{s.state_dir}/authz.db
EnvironmentFile={s.env_file}
Nice=10
UMask=0077
{_sandbox(s)}"""


def prune_timer_unit(s: UnitSettings) -> str:
    return f"""{MARKER}; reinstall rather than edit.
[Unit]
Description=Hourly ownership prune of the authorization plugin {s.name}

[Timer]
OnBootSec=15min
OnUnitActiveSec=1h
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
"""


def _state_directory(state_dir: str) -> str:
    """``StateDirectory=`` takes a path relative to /var/lib; other locations rely on ReadWritePaths."""
    prefix = "/var/lib/"
    return state_dir[len(prefix) :] if state_dir.startswith(prefix) else ""


def env_file_text(state_dir: str = "/var/lib/authz") -> str:
    return f"""{MARKER} once; never overwritten. Mode 0600: it may hold a database password.
# Settings of the authz plugin service (systemd EnvironmentFile). Export the same values when you
# run `authzctl` by hand, so the CLI and the plugin use one store.
AUTHZ_STATE_DIR={state_dir}
AUTHZ_DATABASE_URL=sqlite:///{state_dir}/authz.db
# The daemon's socket, for the plugin's own reads of it (an image's USER when a create names no
# --user; whether a volume being created exists; the listings of `authzctl ownership prune`):
#   AUTHZ_DOCKER_HOST=unix:///var/run/docker.sock
# PostgreSQL over its unix socket (works with the default hardening):
#   AUTHZ_DATABASE_URL=postgresql+psycopg2://authz:PASSWORD@/authz?host=/run/postgresql
# PostgreSQL over TCP: `authzctl install --inet` (allows AF_INET/AF_INET6), then e.g.
#   AUTHZ_DATABASE_URL=postgresql+psycopg2://authz:PASSWORD@db.example:5432/authz
"""


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid plugin name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    return name


def parse_daemon_json(text: str, source: str) -> dict[str, Any]:
    """daemon.json as an ordered dict (empty text = ``{}``), or ``ConfigError`` naming ``source``.

    Refused, because dockerd (Go, case-insensitive keys, last duplicate wins) would read them
    differently from a faithful edit: duplicate keys, a key spelled like ``Authorization-Plugins``.
    """
    if not text.strip():
        return {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ConfigError(f"{source}: key {key!r} appears twice; dockerd keeps the last one; fix it by hand")
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc}); dockerd would refuse it too") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    for key in data:
        if key.lower() == AUTHZ_KEY and key != AUTHZ_KEY:
            raise ConfigError(f"{source}: write the key as {AUTHZ_KEY!r}, not {key!r}")
    plugins = data.get(AUTHZ_KEY, [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: {AUTHZ_KEY} must be a list of plugin names")
    return data


def add_plugin(text: str, name: str, source: str = "daemon.json") -> tuple[str, bool]:
    """``text`` with ``name`` appended to ``authorization-plugins``; (new text, whether it changed)."""
    data = parse_daemon_json(text, source)
    plugins = data.get(AUTHZ_KEY, [])
    if name in plugins:
        return text, False
    data[AUTHZ_KEY] = [*plugins, name]
    return _dump(data, text), True


def remove_plugin(text: str, name: str, source: str = "daemon.json") -> tuple[str, bool]:
    """``text`` without ``name`` in ``authorization-plugins`` (the key goes when the list empties)."""
    data = parse_daemon_json(text, source)
    plugins = data.get(AUTHZ_KEY, [])
    if name not in plugins:
        return text, False
    rest = [p for p in plugins if p != name]
    if rest:
        data[AUTHZ_KEY] = rest
    else:
        del data[AUTHZ_KEY]
    return _dump(data, text), True


def _dump(data: dict[str, Any], original: str) -> str:
    """JSON in the original's indentation (tab or N spaces; 2 for a new or one-line file)."""
    indent: str | int = 2
    match = re.search(r"\n([ \t]+)\S", original)
    if match:
        indent = "\t" if match.group(1).startswith("\t") else len(match.group(1))
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


def unified_diff(old: str | None, new: str, label: str) -> str:
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile="/dev/null" if old is None else label,
        tofile=label,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` by ``text`` with ``mode``: temporary file in the same directory, fsync, rename.

    A crash leaves the old file or the new one, never half a daemon.json (dockerd would not start).
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
