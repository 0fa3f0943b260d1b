"""``authzctl doctor``: is this host's plugin installation sound? One line per check, and what to do.

Also the facts about the docker host that ``authz.install`` acts on, found the way dockerd finds
them: the plugin by name (legacy discovery order), its ``/Plugin.Activate`` answer, the running
dockerd's command line (``/proc/PID/cmdline``) and its daemon.json.

Checks: plugin socket found and answering; socket mode 0600, owner root; daemon.json valid and
listing the plugin (and every other listed plugin resolvable); the running dockerd has no
``--authorization-plugin`` flag and reads that daemon.json; database reachable and migrated; token
keys present with mode 0600; clock agrees with the store; free space in the state directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from authz.config import Config
from authz.daemon_api import UnixHTTPConnection, unix_socket_path
from authz.errors import AuthzError, ConfigError
from authz.install_units import AUTHZ_KEY, parse_daemon_json

__all__ = [
    "DEFAULT_DAEMON_JSON",
    "SOCKET_DIR",
    "Check",
    "DaemonProcess",
    "DoctorOptions",
    "activate",
    "find_daemon",
    "other_plugins",
    "print_checks",
    "resolve_plugin",
    "run_checks",
]

SOCKET_DIR = "/run/docker/plugins"
SPEC_DIRS = ("/etc/docker/plugins", "/usr/lib/docker/plugins")
DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_PIDFILE = "/run/docker.pid"
CLOCK_WARN, CLOCK_FAIL = 5.0, 30.0  # seconds; tokens are accepted up to 30 s past their expiry
DISK_FAIL, DISK_WARN = 50 * 2**20, 500 * 2**20  # bytes free in the state directory


# ---------------------------------------------------------------------- host facts


@dataclass(frozen=True, slots=True)
class DaemonProcess:
    """A running dockerd, from ``/proc/PID/cmdline``."""

    pid: int
    argv: tuple[str, ...]
    proc: Path = Path("/proc")

    def flag_values(self, flag: str) -> list[str]:
        """Values of ``--flag=V`` and ``--flag V`` (Go pflag syntax), in order."""
        values = []
        for index, arg in enumerate(self.argv[1:], start=1):
            if arg.startswith(f"--{flag}="):
                values.append(arg.split("=", 1)[1])
            elif arg == f"--{flag}" and index + 1 < len(self.argv):
                values.append(self.argv[index + 1])
        return values

    def authz_flags(self) -> list[str]:
        return [f"--authorization-plugin={v}" for v in self.flag_values("authorization-plugin")]

    def config_file(self) -> str:
        values = self.flag_values("config-file")
        return values[-1] if values else DEFAULT_DAEMON_JSON

    def alive(self) -> bool:
        """Still running (not a zombie) with the same command line."""
        try:
            status = (self.proc / str(self.pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
            return status != "Z" and _cmdline(self.proc, self.pid) == self.argv
        except (OSError, IndexError):
            return False


def _cmdline(proc: Path, pid: int) -> tuple[str, ...]:
    raw = (proc / str(pid) / "cmdline").read_bytes()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def find_daemon(pid: int | None, pidfile: Path | None, proc: Path = Path("/proc")) -> DaemonProcess | None:
    """dockerd by ``pid``, else by ``pidfile``; None when neither names a running dockerd.

    An explicit ``pid`` that is not dockerd raises ``ConfigError``: we would signal a stranger.
    """
    explicit = pid is not None
    if pid is None and pidfile is not None:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
    if pid is None:
        return None
    try:
        argv = _cmdline(proc, pid)
        comm = (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return None
    if not argv or (Path(argv[0]).name != "dockerd" and comm != "dockerd"):
        if explicit:
            raise ConfigError(f"pid {pid} is not dockerd ({argv[0] if argv else comm})")
        return None  # a stale pidfile whose pid was reused
    return DaemonProcess(pid, argv, proc)


def resolve_plugin(name: str, root: Path = Path("/")) -> Path | None:
    """The unix socket dockerd would use for legacy plugin ``name`` (discovery order), or None.

    Sockets in /run/docker/plugins first, then ``.spec`` and ``.json`` files; a spec naming a
    non-unix address resolves to the spec file itself (it is not ours to probe). Paths are read
    under ``root`` and unix addresses from specs are placed under it too.
    """
    base = root / SOCKET_DIR.lstrip("/")
    for candidate in (base / f"{name}.sock", base / name / f"{name}.sock"):
        try:
            if stat.S_ISSOCK(candidate.stat().st_mode):
                return candidate
        except OSError:
            continue
    for directory in SPEC_DIRS:
        spec_base = root / directory.lstrip("/")
        for ext in (".spec", ".json"):
            for candidate in (spec_base / f"{name}{ext}", spec_base / name / f"{name}{ext}"):
                if candidate.exists():
                    return _spec_target(candidate, root)
    return None


def _spec_target(path: Path, root: Path) -> Path:
    try:
        text = path.read_text(encoding="utf-8")
        address = str(json.loads(text).get("Addr", "")) if path.suffix == ".json" else text.strip()
    except (OSError, ValueError, AttributeError):
        return path
    if address.startswith("unix://"):
        return root / address.removeprefix("unix://").lstrip("/")
    return path


def activate(path: Path, timeout: float = 10.0) -> list[str]:
    """``POST /Plugin.Activate`` as dockerd sends it; the ``Implements`` list of the reply.

    ``OSError`` when nothing answers, ``ValueError`` when the answer is not what dockerd accepts.
    """
    conn = UnixHTTPConnection(str(path), timeout)
    try:
        conn.request("POST", "/Plugin.Activate", b"", {"Accept": "application/vnd.docker.plugins.v1.2+json"})
        reply = conn.getresponse()
        body = reply.read()
    finally:
        conn.close()
    if reply.status != 200:
        raise ValueError(f"HTTP {reply.status}: {body[:200]!r}")
    data = json.loads(body)
    # dockerd decodes with Go's encoding/json: the key matches case-insensitively.
    items = data.items() if isinstance(data, dict) else ()
    implements = next((value for key, value in items if key.lower() == "implements"), None)
    if not isinstance(implements, list) or not all(isinstance(i, str) for i in implements):
        raise ValueError(f"no Implements list in {body[:200]!r}")
    return implements


def other_plugins(names: list[str], root: Path = Path("/")) -> tuple[list[str], list[str]]:
    """(legacy plugins that do not answer Activate as authz, names that are no legacy plugin here).

    A reload re-validates every listed name: one that does not answer makes dockerd exit. Names
    that resolve to nothing may be managed plugins, which only the daemon can check.
    """
    dead, unknown = [], []
    for name in names:
        found = resolve_plugin(name, root)
        if found is None:
            unknown.append(name)
            continue
        try:
            if "authz" not in activate(found, timeout=10.0):
                dead.append(name)
        except (OSError, ValueError):
            dead.append(name)
    return dead, unknown


# ---------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Check:
    status: str  # "OK" | "WARN" | "FAIL"
    name: str
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    name: str = "authz"
    socket: str = ""  # "" = wherever the name resolves
    root: Path = Path("/")
    daemon_json: str = DEFAULT_DAEMON_JSON
    daemon_pid: int | None = None
    proc: Path = Path("/proc")
    docker_host: str = ""  # AUTHZ_DOCKER_HOST as the plugin's environment sets it


def run_checks(options: DoctorOptions, config: Config, now: Callable[[], float] = time.time) -> list[Check]:
    """Every check, in order; none raises (a check that cannot run is a FAIL saying why)."""
    checks: list[Check] = []
    steps: list[tuple[str, Callable[[], Iterator[Check]]]] = [
        ("plugin socket", lambda: _socket_checks(options)),
        ("daemon.json", lambda: _daemon_json_checks(options)),
        ("dockerd", lambda: _dockerd_checks(options)),
        ("database", lambda: _store_checks(config, now)),
        ("token keys", lambda: _key_checks(config)),
        ("disk", lambda: _disk_checks(config)),
        ("daemon reads", lambda: _daemon_read_checks(options)),
    ]
    for name, step in steps:
        try:
            checks.extend(step())
        except (AuthzError, OSError, ValueError) as exc:
            # A check that cannot run proves nothing: it counts as failed.
            checks.append(Check("FAIL", name, f"could not check: {exc}"))
    return checks


def print_checks(checks: list[Check], out: TextIO) -> int:
    """One line per check (plus ``→ fix``); returns the exit code: 1 if any FAIL."""
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        out.write(f"{check.status:<5} {check.name:<{width}}  {check.detail}\n")
        if check.fix and check.status != "OK":
            out.write(f"{'':<5} {'':<{width}}  → {check.fix}\n")
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _under(options: DoctorOptions, path: str) -> Path:
    return options.root / path.lstrip("/")


def _socket_checks(o: DoctorOptions) -> Iterator[Check]:
    found = _under(o, o.socket) if o.socket else resolve_plugin(o.name, o.root)
    install = f"`authzctl install --name {o.name}`, or `systemctl start {o.name}.socket`"
    if found is None or not found.exists():
        yield Check("FAIL", "plugin socket", f"plugin {o.name} not found ({_under(o, SOCKET_DIR)}, "
                    f"{_under(o, SPEC_DIRS[0])})", install)  # fmt: skip
        return
    if not stat.S_ISSOCK(found.stat().st_mode):
        yield Check("FAIL", "plugin socket", f"{o.name} resolves to {found}, which is not a unix socket",
                    "fix the .spec/.json file or choose another plugin name")  # fmt: skip
        return
    try:
        implements = activate(found, timeout=10.0)
    except (OSError, ValueError) as exc:
        yield Check("FAIL", "plugin socket", f"{found} does not answer /Plugin.Activate ({exc})",
                    f"journalctl -u {o.name}.service; restart it: systemctl restart {o.name}.service")  # fmt: skip
    else:
        status = "OK" if "authz" in implements else "FAIL"
        yield Check(status, "plugin socket", f"{found} answers /Plugin.Activate (Implements: {', '.join(implements)})",
                    "another program owns this socket: stop it, reinstall the plugin")  # fmt: skip
    info = found.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 or info.st_uid != 0:
        yield Check("FAIL", "socket access", f"{found} mode {mode:04o} owner uid {info.st_uid}: whoever can "
                    "connect can feed the plugin forged requests",
                    f"SocketMode=0600 in {o.name}.socket, or run `authzctl serve` as root (umask 0177)")  # fmt: skip
    else:
        yield Check("OK", "socket access", f"mode {mode:04o}, owner root")


def _daemon_json_checks(o: DoctorOptions) -> Iterator[Check]:
    path = _under(o, o.daemon_json)
    if not path.exists():
        yield Check("FAIL", "daemon.json", f"{path} does not exist: dockerd does not use the plugin",
                    f"authzctl install --name {o.name}")  # fmt: skip
        return
    try:
        data = parse_daemon_json(path.read_text(encoding="utf-8"), str(path))
    except ConfigError as exc:
        yield Check("FAIL", "daemon.json", str(exc), "fix the file by hand; dockerd will not start with it")
        return
    plugins: list[str] = data.get(AUTHZ_KEY, [])
    if o.name not in plugins:
        yield Check("FAIL", "daemon.json", f"{path} does not list {o.name} in {AUTHZ_KEY} ({plugins})",
                    f"authzctl install --name {o.name} (checks the plugin first, then reloads dockerd)")  # fmt: skip
    else:
        yield Check("OK", "daemon.json", f"{path} lists {AUTHZ_KEY} {plugins}")
    dead, unknown = other_plugins([p for p in plugins if p != o.name], o.root)
    for other in dead:
        yield Check("FAIL", "daemon.json", f"{other} does not answer /Plugin.Activate: dockerd exits on its "
                    "next reload", f"start {other}, or remove it from {AUTHZ_KEY}")  # fmt: skip
    for other in unknown:
        yield Check("WARN", "daemon.json", f"{other} is not a legacy plugin on this host: if it is not a "
                    "managed plugin (docker plugin ls) either, dockerd exits on its next reload",
                    f"remove {other!r} from {AUTHZ_KEY}")  # fmt: skip


def _dockerd_checks(o: DoctorOptions) -> Iterator[Check]:
    pidfile = None if o.daemon_pid is not None else _under(o, DOCKER_PIDFILE)
    daemon = find_daemon(o.daemon_pid, pidfile, o.proc)
    if daemon is None:
        yield Check("WARN", "dockerd", f"no running dockerd found (pidfile {pidfile})", "start docker: "
                    "systemctl start docker (the plugin must answer first)")  # fmt: skip
        return
    flags = daemon.authz_flags()
    if flags:
        yield Check("FAIL", "dockerd", f"pid {daemon.pid} runs with {' '.join(flags)}: a SIGHUP either fails "
                    "(conflict with daemon.json) or silently drops authorization",
                    "move the plugin list to daemon.json only (docker.service drop-in), restart dockerd")  # fmt: skip
    else:
        yield Check("OK", "dockerd", f"pid {daemon.pid}, no --authorization-plugin flag")
    reads = Path(os.path.realpath(daemon.config_file()))
    if reads != Path(os.path.realpath(_under(o, o.daemon_json))):
        yield Check("FAIL", "dockerd", f"pid {daemon.pid} reads {reads}, not {_under(o, o.daemon_json)}",
                    f"authzctl doctor --daemon-json {reads}")  # fmt: skip


def _store_checks(config: Config, now: Callable[[], float]) -> Iterator[Check]:
    from authz.storage import Database, current_revision, head_revision  # noqa: PLC0415 - SQLAlchemy only here

    db = Database(config.database_url)
    try:
        current, head = current_revision(db), head_revision()
        shown = db.engine.url.render_as_string(hide_password=True)
        if current != head:
            yield Check("FAIL", "database", f"{shown} at schema {current or 'none'}, this version needs {head}",
                        "authzctl migrate (or authzctl init on a new host)")  # fmt: skip
            return  # the clock check reads tables an unmigrated store may not have
        yield Check("OK", "database", f"{shown} reachable, schema {head}")
        yield _clock_check(db, now())
    finally:
        db.dispose()


def _clock_check(db: Any, wall: float) -> Check:
    from sqlalchemy import func, select, text  # noqa: PLC0415 - edge dependency, loaded with the store

    from authz.storage.models import AuditRow  # noqa: PLC0415

    fix = "sync the clock (timedatectl, chrony); tokens and break-glass expiry depend on it"
    with db.session() as session:
        newest = session.scalar(select(func.max(AuditRow.time)))
        if db.sqlite:
            database = db.engine.url.database or ""
            files = [Path(database), Path(database + "-wal")]
            mtimes = [p.stat().st_mtime for p in files if database and p.exists()]
            reference, what = max([*mtimes, newest or 0.0]), "newest database write"
        else:
            reference, what = float(session.scalar(select(func.extract("epoch", text("now()"))))), "PostgreSQL now()"
    ahead = reference - wall  # positive: the store saw a time later than our "now"
    # SQLite: older writes are normal, only a write from the future shows the clock went back.
    skew = max(ahead, 0.0) if db.sqlite else abs(ahead)
    status = "FAIL" if skew > CLOCK_FAIL else "WARN" if skew > CLOCK_WARN else "OK"
    return Check(status, "clock", f"wall clock vs {what}: {ahead:+.1f}s", fix)


def _key_checks(config: Config) -> Iterator[Check]:
    from authz.identity.token import SIGNING_FILE  # noqa: PLC0415 - pyjwt only when checking keys

    keys = config.keys_dir
    signing = keys / SIGNING_FILE
    if not signing.exists():
        yield Check("FAIL", "token keys", f"{signing} missing: no token can be issued or verified", "authzctl init")
        return
    bad = [f"{p.name} {stat.S_IMODE(p.stat().st_mode):04o}" for p in [signing, *keys.glob("token-verify-*.pem")]
           if stat.S_IMODE(p.stat().st_mode) & 0o077]  # fmt: skip
    if stat.S_IMODE(keys.stat().st_mode) & 0o077:
        bad.append(f"{keys} {stat.S_IMODE(keys.stat().st_mode):04o}")
    if bad:
        yield Check("FAIL", "token keys", f"readable by others: {', '.join(bad)}",
                    f"chmod 0700 {keys}; chmod 0600 {keys}/*.pem; then rotate the signing key")  # fmt: skip
    else:
        yield Check("OK", "token keys", f"{signing} present, mode 0600")


def _daemon_read_checks(o: DoctorOptions) -> Iterator[Check]:
    """The plugin's own reads of the daemon (``AUTHZ_DOCKER_HOST``) and the hourly ownership prune."""
    if not o.docker_host:
        yield Check("WARN", "daemon reads", "AUTHZ_DOCKER_HOST is not set: the plugin cannot read an image's USER "
                    "(a create without --user is denied to roles with run_as_root: false), cannot ask whether "
                    "a volume being created exists (its answer's CreatedAt is judged instead) and `authzctl "
                    "ownership prune` has no daemon to compare the ownership table with",
                    "set AUTHZ_DOCKER_HOST=unix:///var/run/docker.sock in the environment file and restart "
                    "the plugin")  # fmt: skip
        return
    fix = "point it at the daemon's API socket (unix:///var/run/docker.sock)"
    try:
        socket_file = _under(o, unix_socket_path(o.docker_host))
    except ConfigError as exc:
        yield Check("WARN", "daemon reads", str(exc), fix)
    else:
        if socket_file.is_socket():
            uses = "image USER lookups, volume checks, ownership prune"
            yield Check("OK", "daemon reads", f"AUTHZ_DOCKER_HOST={o.docker_host} ({uses})")
        else:
            yield Check("WARN", "daemon reads", f"AUTHZ_DOCKER_HOST={o.docker_host}: no unix socket at {socket_file}",
                        fix)  # fmt: skip
    timer = _under(o, f"/etc/systemd/system/{o.name}-ownership-prune.timer")
    if not timer.exists():
        yield Check("WARN", "ownership prune", f"no {timer}: the owners of objects the daemon removes on its own "
                    "(docker run --rm, exec instances) stay recorded",
                    "authzctl install (it sets up an hourly timer) or `authzctl ownership prune` in cron")  # fmt: skip
    else:
        yield Check("OK", "ownership prune", f"{timer.name} installed (systemctl status {timer.name})")


def _disk_checks(config: Config) -> Iterator[Check]:
    state = config.state_dir
    usage = shutil.disk_usage(state)
    detail = f"{state}: {usage.free / 2**20:.0f} MiB free of {usage.total / 2**20:.0f} MiB"
    fix = "free space: the audit log grows with every request, and a failed audit write denies the request"
    if usage.free < DISK_FAIL:
        yield Check("FAIL", "disk", detail, fix)
    elif usage.free < DISK_WARN or usage.free < usage.total * 0.05:
        yield Check("WARN", "disk", detail, fix)
    else:
        yield Check("OK", "disk", detail)
    mode = stat.S_IMODE(state.stat().st_mode)
    if mode & 0o077:
        yield Check("WARN", "state dir", f"{state} mode {mode:04o}: keys and the database should be root-only",
                    f"chmod 0700 {state}")  # fmt: skip
