"""What every ``authzctl`` command shares: the context (config and stores, built lazily), the
usage error, argument helpers and output helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, Any, TextIO

from authz.audit import AuditEvent, parse_instant
from authz.config import Config
from authz.errors import AuthzError, PolicyError
from authz.storage.db import Database
from authz.storage.repositories import (
    AuditStore,
    BreakglassStore,
    OwnershipRepository,
    PolicyStore,
    TokenStore,
)

Handler = Callable[[argparse.Namespace, "Context"], int]
ADMIN_PHASE = "admin"  # audit records of administrative events (not daemon requests)
_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(AuthzError):
    """The command line asks for something impossible (exit 2, like argparse's own errors)."""


class PolicyFileError(PolicyError):
    """A ``PolicyError`` found in a named file: ``FILE: key.path: message``."""

    def __init__(self, source: str, error: PolicyError) -> None:
        super().__init__(error.path, error.message)
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {super().__str__()}"


class Context:
    """The composition root of one ``authzctl`` run: builds the config and stores on first use."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self._environ = environ

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ if self._environ is not None else os.environ

    @cached_property
    def config(self) -> Config:
        return Config.from_env(self.environ)

    @cached_property
    def db(self) -> Database:
        return Database(self.config.database_url)

    @cached_property
    def policy(self) -> PolicyStore:
        return PolicyStore(self.db)

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(self.db)

    @cached_property
    def audit(self) -> AuditStore:
        return AuditStore(self.db)

    @cached_property
    def ownership(self) -> OwnershipRepository:
        return OwnershipRepository(self.db, node=self.config.node)

    @cached_property
    def breakglass(self) -> BreakglassStore:
        return BreakglassStore(self.db)

    @property
    def out(self) -> TextIO:
        return sys.stdout

    @property
    def err(self) -> TextIO:
        return sys.stderr

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()


def command_group(subparsers: Any, name: str, help_text: str) -> Any:
    """The sub-command action of command ``name`` (``authzctl NAME ...``), created on first use.

    Lets separate modules add sub-commands to one family: ``command_group(sub, "audit", ...)``
    called from two modules yields the same ``audit`` sub-commands.
    """
    existing = subparsers.choices.get(name)
    if existing is not None:
        return existing.authz_subcommands
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    parser.authz_subcommands = commands
    parser.set_defaults(handler=_missing_subcommand(parser))
    return commands


def _missing_subcommand(parser: argparse.ArgumentParser) -> Handler:
    def handler(_args: argparse.Namespace, _ctx: Context) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def add_author(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--author", help="name recorded in the policy history (default: the invoking user)")


def author(args: argparse.Namespace) -> str:
    given = getattr(args, "author", None)
    if given:
        return str(given)
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): the uid still identifies
        return f"uid:{os.getuid()}"


def parse_duration(text: str) -> int:
    """``90`` / ``90s`` / ``30m`` / ``8h`` / ``2d`` / ``1w`` → seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise UsageError(f"invalid duration {text!r}: use a positive number with s, m, h, d or w (8h, 30m)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_time(text: str) -> float:
    """``authz.audit.parse_instant`` with the CLI's usage error."""
    try:
        return parse_instant(text)
    except ValueError:
        raise UsageError(f"invalid time {text!r}: use ISO 8601 such as 2024-06-01T12:00:00Z") from None


def iso(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_input(path: str) -> str:
    """The text of ``path`` (``-`` = standard input)."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


@contextlib.contextmanager
def output(path: str | None, mode: int = 0o644) -> Iterator[TextIO]:
    """Standard output, or a file written atomically (temporary file, then rename) with ``mode``."""
    if path is None or path == "-":
        yield sys.stdout
        return
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path(), prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def table(out: IO[str], headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def csv_list(values: Sequence[str]) -> str:
    return ",".join(values) if values else "-"


def record_admin_event(
    ctx: Context, by: str, action: str, user: str, reason: str, argv: list[str], detail: dict[str, Any]
) -> None:
    """Record an admin event in the hash-chained audit journal, then ship it to the store now.

    ``StoreError`` unless the record is durable in the journal. If only the shipping fails, the
    record stays journaled and a plugin's shipper copies it later (it claims orphan chains).
    """
    from authz.composition import build_audit_journal  # noqa: PLC0415 - Flask and the journal only here

    sink, shipper = build_audit_journal(ctx.config, ctx.db)
    try:
        sink.write(_admin_event(ctx, by, action, user, reason, argv, detail))
        try:
            shipper.ship_once(scan=False)
        except AuthzError as exc:
            ctx.err.write(f"authzctl: audit record journaled, not yet in the database ({exc})\n")
    finally:
        shipper.stop()
        sink.close()


def _admin_event(
    ctx: Context, by: str, action: str, user: str, reason: str, argv: list[str], detail: dict[str, Any]
) -> AuditEvent:
    return AuditEvent(
        time=time.time(),
        request_id=f"{action}-{uuid.uuid4().hex[:16]}",
        node=ctx.config.node,
        phase=ADMIN_PHASE,
        user=by,
        source="cli",
        roles=(),
        action=action,
        method="CLI",
        uri=shlex.join(["authzctl", *argv]),
        object=user,
        allow=True,
        mode="enforce",
        rule=None,
        role=None,
        reason=reason,
        message="",
        detail=detail,
    )
