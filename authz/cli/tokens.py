"""``authzctl token issue|list|revoke``: bearer tokens for the ``X-Authz-Token`` header.

``issue --docker-config DIR`` merges the header into the docker CLI's ``DIR/config.json``
(``HttpHeaders``), keeping every other key; the file is written atomically with mode 0600.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.cli.common import (
    Context,
    UsageError,
    add_author,
    author,
    command_group,
    iso,
    parse_duration,
    table,
)

HEADER = "X-Authz-Token"
DEFAULT_TTL = "8h"
MAX_TTL_SECONDS = 366 * 86400  # long-lived bearer tokens belong in a secrets manager, not here


def register(subparsers: Any) -> None:
    commands = command_group(subparsers, "token", "issue, list and revoke tokens")

    issue = commands.add_parser("issue", help="issue a token for a user and print it")
    issue.add_argument("user", metavar="USER")
    issue.add_argument("--ttl", default=DEFAULT_TTL, help=f"lifetime: 90s, 30m, 8h, 7d … (default {DEFAULT_TTL})")
    issue.add_argument(
        "--docker-config", metavar="DIR", help="also store the token in DIR/config.json (e.g. ~/.docker)"
    )
    issue.add_argument("--note", help="free text shown by `token list` (what the token is for)")
    issue.set_defaults(handler=run_issue)

    list_ = commands.add_parser("list", help="list issued tokens")
    list_.add_argument("--user", metavar="USER", help="only tokens of USER")
    list_.set_defaults(handler=run_list)

    revoke = commands.add_parser("revoke", help="revoke one token, or every token of a user")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("jti", nargs="?", metavar="JTI", help="token id (see `token list`)")
    which.add_argument("--user", metavar="USER", help="revoke every token of USER")
    add_author(revoke)
    revoke.set_defaults(handler=run_revoke)


def run_issue(args: argparse.Namespace, ctx: Context) -> int:
    from authz.identity.token import KeyStore, issue_token  # noqa: PLC0415 - pyjwt only for token commands

    ttl = parse_duration(args.ttl)
    if ttl > MAX_TTL_SECONDS:
        raise UsageError(f"--ttl {args.ttl} is longer than the maximum of {MAX_TTL_SECONDS // 86400} days")
    user = ctx.policy.get_user(args.user)
    if user.disabled:
        raise UsageError(f"user {user.name} is disabled: `authzctl user enable {user.name}` first")
    keys = KeyStore(ctx.config.keys_dir).load_or_create()
    revision = ctx.policy.revision()  # read after the user: the token names a revision that has them
    issued = issue_token(keys, user.name, ttl, time.time(), audience=ctx.config.token_audience,
                         policy_revision=revision)  # fmt: skip
    ctx.tokens.record(
        issued.token_id,
        issued.subject,
        kid=issued.kid,
        issued_at=issued.issued_at,
        expires_at=issued.expires_at,
        note=args.note,
    )
    if args.docker_config:
        path = write_docker_config(Path(args.docker_config), issued.token)
        ctx.err.write(f"wrote {HEADER} to {path}\n")
    ctx.err.write(f"token {issued.token_id} for {user.name}, expires {iso(issued.expires_at)}\n")
    ctx.out.write(issued.token + "\n")
    return 0


def write_docker_config(directory: Path, token: str) -> Path:
    """Merge ``{"HttpHeaders": {"X-Authz-Token": token}}`` into ``directory/config.json``.

    Creates ``directory`` with mode 0700 if missing. Every other key (auths, credsStore, other
    headers …) is kept. The file is replaced atomically with mode 0600; run as root, it keeps the
    owner of the file (or of the directory) so the docker CLI of that user can still read it.
    """
    created = not directory.exists()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}") from exc
    path = directory / "config.json"
    data: dict[str, Any] = {}
    if path.is_symlink():
        # Fail closed: run as root, following a user's link would copy another file into theirs.
        raise UsageError(f"{path} is a symbolic link; refusing to follow it")
    if path.exists():
        try:
            loaded = json.loads(_read_nofollow(path) or "{}")
        except (OSError, ValueError) as exc:
            # Fail closed: never overwrite a config we cannot read; it may hold credentials.
            raise UsageError(f"{path} is not readable JSON ({exc}); fix or move it first") from exc
        if not isinstance(loaded, dict) or not isinstance(loaded.get("HttpHeaders", {}), dict):
            raise UsageError(f"{path}: expected a JSON object with an object HttpHeaders")
        data = loaded
    data.setdefault("HttpHeaders", {})[HEADER] = token
    owner = path if path.exists() else directory if not created else directory.parent
    _atomic_write(path, json.dumps(data, indent="\t") + "\n", owner)
    return path


def _read_nofollow(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8") as handle:
        return handle.read()


def _atomic_write(path: Path, text: str, owner_of: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if os.geteuid() == 0:
            info = owner_of.stat()
            os.chown(tmp, info.st_uid, info.st_gid)
            if owner_of != path:
                os.chown(path.parent, info.st_uid, info.st_gid)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    now = datetime.now(UTC)
    rows = [
        (t.jti, t.user, iso(t.issued_at), iso(t.expires_at), t.status(now), t.note)
        for t in ctx.tokens.list(user=args.user)
    ]
    table(ctx.out, ("JTI", "USER", "ISSUED", "EXPIRES", "STATUS", "NOTE"), rows)
    return 0


def run_revoke(args: argparse.Namespace, ctx: Context) -> int:
    if args.user is not None:
        count = ctx.tokens.revoke_user(args.user, author(args))
        ctx.out.write(f"revoked {count} token(s) of {args.user} (policy revision {ctx.policy.revision()})\n")
        return 0
    record = ctx.tokens.revoke(args.jti, author(args))
    ctx.out.write(f"token {record.jti} of {record.user} revoked (policy revision {ctx.policy.revision()})\n")
    return 0
