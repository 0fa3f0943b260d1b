"""Entrypoint of the managed (v2) plugin; runs inside its rootfs as ``/opt/authz/entrypoint.py``.

1. ``authzctl init``: schema migrated, token keys present, built-in roles stored (idempotent, so
   a plugin upgrade migrates the store it finds in the state mount).
2. First start only (the store holds no user yet): apply ``/etc/authz/policy.yaml`` if the
   policy mount provides one. Later starts never re-apply it: changes made with ``authzctl`` on
   the host must survive a plugin restart.
3. ``authzctl serve --socket /run/docker/plugins/authz.sock --workers $AUTHZ_WORKERS``, in this
   process (one interpreter start less: the daemon gives the plugin 0.5 s + 3 x 3 s to listen).

Any failure exits non-zero before the socket exists: the daemon then fails ``docker plugin
enable`` and, if the plugin is in ``authorization-plugins``, every API call (fail closed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from authz.cli import main as authzctl
from authz.cli.common import Context

SOCKET = "/run/docker/plugins/authz.sock"
POLICY_FILE = Path("/etc/authz/policy.yaml")


def _store_has_users() -> bool:
    ctx = Context()
    try:
        return bool(ctx.policy.list_users())
    finally:
        ctx.close()


def main() -> int:
    """Prepare the store, then serve; returns only on failure or shutdown."""
    workers = os.environ.get("AUTHZ_WORKERS", "").strip() or "2"
    code = authzctl(["init"])
    if code != 0:
        print(f"authz-plugin: authzctl init failed ({code}); not serving", file=sys.stderr)
        return code
    if POLICY_FILE.is_file() and not _store_has_users():
        code = authzctl(["policy", "apply", str(POLICY_FILE), "--author", "plugin-entrypoint"])
        if code != 0:
            # Fail closed: serving a store without the intended users would lock everyone out anyway.
            print(f"authz-plugin: applying {POLICY_FILE} failed ({code}); not serving", file=sys.stderr)
            return code
    return authzctl(["serve", "--socket", SOCKET, "--workers", workers])


if __name__ == "__main__":
    sys.exit(main())
