"""``authzctl install`` / ``uninstall``: the legacy (v1) plugin under systemd, wired into dockerd.

Install, in this order (each step only if the previous one succeeded):

1. preflight: the plugin name is valid; the running dockerd (``--daemon-pid``, else the pid in
   ``/run/docker.pid``) has no ``--authorization-plugin`` flag (flag + daemon.json key = the
   daemon rejects every reload) and reads the daemon.json we are about to edit;
2. write ``NAME.socket``, ``NAME.service``, ``NAME-ownership-prune.service`` and its hourly
   ``.timer`` (``authz.install_units``), the environment file (once) and, when the socket is not
   ``/run/docker/plugins/NAME.sock``, a ``NAME.spec`` pointing at it;
3. ``systemctl daemon-reload`` and ``systemctl enable --now NAME.socket NAME-ownership-prune.timer``;
4. the plugin, found the way dockerd will find it, answers ``POST /Plugin.Activate`` with
   ``Implements: [authz]`` — otherwise stop here: a daemon.json naming a plugin that does not
   answer makes dockerd **exit** on the next SIGHUP (and not start at all);
5. add NAME to ``authorization-plugins`` in daemon.json (every other key and their order kept);
6. SIGHUP to dockerd, then check it is still running.

Uninstall reverses it in the safe order: daemon.json key out → SIGHUP → only then stop and remove
the units (a plugin stopped while still configured fails every API call, then kills dockerd).

``--dry-run`` prints every change (file diffs, commands, the signal) and changes nothing.
``--root DIR`` writes every file under DIR, runs no systemctl and signals no daemon unless
``--daemon-pid`` names one (tests run a private dockerd that way).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from authz.doctor import (
    DEFAULT_DAEMON_JSON,
    DOCKER_PIDFILE,
    SOCKET_DIR,
    DaemonProcess,
    activate,
    find_daemon,
    other_plugins,
    resolve_plugin,
)
from authz.errors import ConfigError
from authz.install_units import (
    AUTHZ_KEY,
    MARKER,
    UnitSettings,
    add_plugin,
    env_file_text,
    parse_daemon_json,
    prune_service_unit,
    prune_timer_unit,
    remove_plugin,
    service_unit,
    socket_unit,
    unified_diff,
    validate_name,
    write_atomic,
)

__all__ = ["InstallError", "InstallOptions", "Installer"]

UNIT_DIR = "/etc/systemd/system"
SPEC_DIR = "/etc/docker/plugins"
HOME_DIRS = ("/root", "/home", "/run/user")  # hidden by ProtectHome=yes
SETTLE_SECONDS = 1.0  # after SIGHUP: the daemon reloads asynchronously


class InstallError(ConfigError):
    """Install or uninstall stopped before doing something unsafe; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class InstallOptions:
    name: str = "authz"
    socket: str = ""  # "" = /run/docker/plugins/NAME.sock
    root: Path = Path("/")
    daemon_json: str = DEFAULT_DAEMON_JSON
    daemon_pid: int | None = None
    program: str = ""  # authzctl for ExecStart; "" = the one running now
    env_file: str = "/etc/authz/authz.env"
    state_dir: str = "/var/lib/authz"
    workers: int = 2
    cpu_affinity: str = "none"
    inet: bool = False
    dry_run: bool = False
    activate_timeout: float = 30.0  # the first connection starts the service: gunicorn boots first

    @property
    def socket_path(self) -> str:
        return self.socket or f"{SOCKET_DIR}/{self.name}.sock"

    @property
    def rooted(self) -> bool:
        """True with ``--root``: files only, no systemctl."""
        return self.root.resolve() != Path("/")


@dataclass
class _Report:
    out: TextIO
    dry_run: bool
    changed: list[str] = field(default_factory=list)

    def line(self, verb: str, text: str) -> None:
        # Only effects are conditional in a dry run; checks and notes happen either way.
        effect = verb in {"write", "remove", "run", "signal"}
        self.out.write(f"{('would ' + verb) if self.dry_run and effect else verb:<14} {text}\n")

    def diff(self, text: str) -> None:
        for row in text.splitlines():
            self.out.write(f"    {row}\n")


class Installer:
    """Runs install or uninstall for one ``InstallOptions``; every host effect goes through here."""

    def __init__(
        self,
        options: InstallOptions,
        out: TextIO,
        *,
        proc: Path = Path("/proc"),
        run: Callable[[Sequence[str]], int] | None = None,
        kill: Callable[[int, int], None] = os.kill,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        validate_name(options.name)
        if not options.socket_path.startswith("/"):
            raise InstallError(f"--socket must be an absolute path, got {options.socket_path!r}")
        self.o = options
        self.report = _Report(out, options.dry_run)
        self.proc = proc
        self._run = run or _systemctl
        self._kill = kill
        self._sleep = sleep

    # ------------------------------------------------------------------ paths

    def host(self, path: str) -> Path:
        """Where ``path`` (as the installed system sees it) is on this machine: under ``--root``."""
        return self.o.root / path.lstrip("/")

    @property
    def units(self) -> dict[str, Path]:
        """The socket, the plugin service, and the hourly ownership prune (a service and its timer)."""
        name = self.o.name
        files = {"socket": f"{name}.socket", "service": f"{name}.service",
                 "prune_service": f"{name}-ownership-prune.service",
                 "prune_timer": f"{name}-ownership-prune.timer"}  # fmt: skip
        return {kind: self.host(f"{UNIT_DIR}/{file}") for kind, file in files.items()}

    @property
    def spec(self) -> Path:
        return self.host(f"{SPEC_DIR}/{self.o.name}.spec")

    @property
    def needs_spec(self) -> bool:
        return self.o.socket_path != f"{SOCKET_DIR}/{self.o.name}.sock"

    # ------------------------------------------------------------------ install

    def install(self) -> int:
        daemon = self._preflight(uninstalling=False)
        add_plugin(self._daemon_json_text(), self.o.name, str(self.daemon_json))  # refuse before any write
        settings = self._unit_settings()
        changed = [
            self._write(self.units["socket"], socket_unit(settings), 0o644),
            self._write(self.units["service"], service_unit(settings), 0o644),
            self._write(self.units["prune_service"], prune_service_unit(settings), 0o644),
            self._write(self.units["prune_timer"], prune_timer_unit(settings), 0o644),
        ]
        if self.needs_spec:
            changed.append(self._write(self.spec, f"unix://{self.o.socket_path}\n", 0o644))
        self._write_env_file()
        if self.o.rooted:
            self.report.line("skip", "systemctl (--root): start the plugin on the socket yourself")
        else:
            if any(changed):
                self._systemctl("daemon-reload")
            self._systemctl("enable", "--now", f"{self.o.name}.socket", f"{self.o.name}-ownership-prune.timer")
            if changed[1]:
                self._systemctl("try-restart", f"{self.o.name}.service")
        self._check_plugin()
        text, config_changed = add_plugin(self._daemon_json_text(), self.o.name, str(self.daemon_json))
        if config_changed and daemon is not None:
            self._check_others(text)
        self._write(self.daemon_json, text, 0o644, label=f"authorization-plugins += {self.o.name}")
        if not config_changed:
            self.report.line("keep", f"{self.daemon_json}: already lists {self.o.name}; no reload needed")
        elif daemon is not None:
            self._check_plugin()  # the last moment before the daemon depends on it
            self._reload(daemon)
        else:
            self.report.line("skip", "no running dockerd: it reads the plugin list when it starts")
        self._done()
        return 0

    def _unit_settings(self) -> UnitSettings:
        program = self.o.program or _default_program()
        if not program.startswith("/"):
            raise InstallError(f"--authzctl must be an absolute path, got {program!r}")
        protect_home = "yes"
        homes = [p for p in (program, _interpreter(Path(program))) if p and _under_home(os.path.realpath(p))]
        if homes:
            # ProtectHome=yes would hide the program from the service: it could never start.
            where = os.path.realpath(homes[0])
            self.report.line("warn", f"{where} is under a home directory: ProtectHome=read-only (use /opt for =yes)")
            protect_home = "read-only"
        return UnitSettings(
            name=self.o.name,
            socket=self.o.socket_path,
            program=program,
            env_file=self.o.env_file,
            state_dir=self.o.state_dir,
            workers=self.o.workers,
            cpu_affinity=self.o.cpu_affinity,
            inet=self.o.inet,
            protect_home=protect_home,
        )

    def _write_env_file(self) -> None:
        path = self.host(self.o.env_file)
        if path.exists():
            self.report.line("keep", f"{path} (written once; edit it by hand)")
            return
        self._write(path, env_file_text(self.o.state_dir), 0o600)

    def _check_plugin(self) -> None:
        """The plugin answers Activate where dockerd will look for it, or ``InstallError``."""
        address = resolve_plugin(self.o.name, self.o.root)
        expected = self.host(self.o.socket_path)
        if address is None and self.o.dry_run:  # the units are not started in a dry run
            self.report.line("check", f"{expected} does not answer yet (an install would stop here)")
            return
        if address is None:
            hint = "start `authzctl serve` on it" if self.o.rooted else f"systemctl status {self.o.name}.socket"
            raise InstallError(
                f"plugin {self.o.name} not found ({expected} missing): it must answer before daemon.json "
                f"names it, or dockerd exits on its next reload ({hint}, then run install again)"
            )
        if address != expected:
            raise InstallError(
                f"dockerd would resolve plugin {self.o.name} to {address}, not to {expected}: "
                "another plugin uses that name; choose another --name or remove it"
            )
        try:
            implements = activate(address, self.o.activate_timeout)
        except (OSError, ValueError) as exc:
            if self.o.dry_run:
                self.report.line("check", f"{address} does not answer yet ({exc}): an install would stop here")
                return
            raise InstallError(
                f"{address} does not answer POST /Plugin.Activate ({exc}); daemon.json left unchanged. "
                f"Check the plugin's log (journalctl -u {self.o.name}.service)"
            ) from exc
        if "authz" not in implements:
            raise InstallError(f"{address} answers Activate with Implements={implements}, not authz")
        self.report.line("check", f"{address} answers /Plugin.Activate: Implements {implements}")

    # ------------------------------------------------------------------ uninstall

    def uninstall(self) -> int:
        daemon = self._preflight(uninstalling=True)
        path = self.daemon_json
        if path.exists():
            text, changed = remove_plugin(self._daemon_json_text(), self.o.name, str(self.daemon_json))
            if changed and daemon is not None:
                self._check_others(text)
            self._write(path, text, 0o644, label=f"authorization-plugins -= {self.o.name}")
            if changed and daemon is not None:
                self._reload(daemon)
        else:
            self.report.line("keep", f"{path} does not exist")
        if self.o.rooted:
            self.report.line("skip", "systemctl (--root): stop the plugin yourself")
        elif any(unit.exists() for unit in self.units.values()):
            self._systemctl(
                "disable",
                "--now",
                f"{self.o.name}.socket",
                f"{self.o.name}.service",
                f"{self.o.name}-ownership-prune.timer",
                f"{self.o.name}-ownership-prune.service",
            )
        removed = [self._remove_ours(unit) for unit in self.units.values()]
        if self.needs_spec and self.spec.exists():
            if self.spec.read_text(encoding="utf-8").strip() == f"unix://{self.o.socket_path}":
                self._remove(self.spec)
            else:
                self.report.line("keep", f"{self.spec}: points elsewhere, not ours")
        if any(removed) and not self.o.rooted:
            self._systemctl("daemon-reload")
        self.report.line("keep", f"{self.host(self.o.env_file)} and {self.host(self.o.state_dir)} (policy, audit)")
        self._done()
        return 0

    def _remove_ours(self, path: Path) -> bool:
        if not path.exists():
            return False
        if not path.read_text(encoding="utf-8").startswith(MARKER):
            self.report.line("keep", f"{path}: not written by authzctl install")
            return False
        self._remove(path)
        return True

    # ------------------------------------------------------------------ shared steps

    @property
    def daemon_json(self) -> Path:
        return self.host(self.o.daemon_json)

    def _daemon_json_text(self) -> str:
        path = self.daemon_json
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def _preflight(self, uninstalling: bool) -> DaemonProcess | None:
        if not self.o.rooted and not self.o.dry_run and os.geteuid() != 0:
            raise InstallError("run as root (or preview with --dry-run)")
        if not self.o.rooted and not self.o.dry_run and not Path("/run/systemd/system").is_dir():
            raise InstallError("systemd is not running here; use --root DIR to write the files only")
        pid = self.o.daemon_pid
        daemon = find_daemon(pid, None if self.o.rooted else Path(DOCKER_PIDFILE), self.proc)
        if daemon is None:
            if pid is not None:
                raise InstallError(f"--daemon-pid {pid}: no dockerd with that pid")
            return None
        flags = daemon.authz_flags()
        if flags:
            what = "removing it would leave dockerd calling a stopped plugin" if uninstalling else (
                "dockerd rejects every reload when daemon.json sets authorization-plugins too")  # fmt: skip
            raise InstallError(
                f"dockerd (pid {daemon.pid}) runs with {' '.join(flags)}: {what}. Remove the flag from its "
                "command line (systemd drop-in for docker.service), restart dockerd, then run this again"
            )
        reads = Path(os.path.realpath(daemon.config_file()))
        if reads != Path(os.path.realpath(self.daemon_json)):
            raise InstallError(
                f"dockerd (pid {daemon.pid}) reads {reads}, not {self.daemon_json}: pass --daemon-json {reads}"
            )
        return daemon

    def _check_others(self, text: str) -> None:
        """The other plugins ``text`` lists answer: a reload re-validates every name."""
        names = [p for p in parse_daemon_json(text, str(self.daemon_json)).get(AUTHZ_KEY, []) if p != self.o.name]
        dead, unknown = other_plugins(names, self.o.root)
        if dead:
            # Fail closed: one listed plugin that does not answer makes dockerd exit on the reload.
            raise InstallError(
                f"daemon.json also lists {', '.join(dead)}, which does not answer /Plugin.Activate: a reload "
                f"would make dockerd exit. Start it or remove it from {self.daemon_json}"
            )
        for name in unknown:
            self.report.line("warn", f"{name} is no legacy plugin here: it must be an enabled managed plugin")

    def _reload(self, daemon: DaemonProcess) -> None:
        self.report.line("signal", f"SIGHUP to dockerd (pid {daemon.pid}): reload {self.daemon_json}")
        if self.o.dry_run:
            return
        self._kill(daemon.pid, signal.SIGHUP)
        self._sleep(SETTLE_SECONDS)
        if not daemon.alive():
            raise InstallError(
                f"dockerd (pid {daemon.pid}) is gone after the reload: see its log, and docs/breakglass.md"
            )

    def _write(self, path: Path, text: str, mode: int, label: str = "") -> bool:
        """Write ``text`` if it differs (diff shown); returns whether it changed."""
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old == text:
            self.report.line("unchanged", str(path))
            return False
        notes = [f"{mode:04o}", *(["new"] if old is None else []), *([label] if label else [])]
        self.report.line("write", f"{path} ({', '.join(notes)})")
        self.report.diff(unified_diff(old, text, str(path)))
        if not self.o.dry_run:
            keep = path.stat().st_mode & 0o7777 if old is not None and path.name == "daemon.json" else mode
            write_atomic(path, text, keep)
        self.report.changed.append(str(path))
        return True

    def _remove(self, path: Path) -> None:
        self.report.line("remove", str(path))
        if not self.o.dry_run:
            path.unlink()
        self.report.changed.append(str(path))

    def _systemctl(self, *args: str) -> None:
        self.report.line("run", " ".join(("systemctl", *args)))
        if not self.o.dry_run:
            code = self._run(["systemctl", *args])
            if code != 0:
                raise InstallError(f"systemctl {' '.join(args)} failed with exit {code}")

    def _done(self) -> None:
        if self.o.dry_run:
            self.report.out.write("dry run: nothing was changed\n")
        elif not self.report.changed:
            self.report.out.write("nothing to change\n")


def _systemctl(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), check=False).returncode


def _default_program() -> str:
    beside = Path(sys.executable).parent / "authzctl"
    found = str(beside) if beside.exists() else shutil.which("authzctl")
    if not found:
        raise InstallError("cannot find the authzctl program; pass --authzctl /path/to/authzctl")
    return os.path.abspath(found)


def _under_home(path: str) -> bool:
    return path.startswith(tuple(d + "/" for d in HOME_DIRS))


def _interpreter(program: Path) -> str:
    """The interpreter named by the ``#!`` line of a console script ('' if none)."""
    try:
        with program.open("rb") as handle:
            first = handle.readline(512)
    except OSError:
        return ""
    return first[2:].decode(errors="replace").split()[0] if first.startswith(b"#!") and first[2:].split() else ""
