"""A volume create that finds the volume existing, judged on the daemon's answer (no daemon reads).

The daemon answers ``POST /volumes/create`` of an existing name with 201 and that volume,
unchanged. With ``AUTHZ_DOCKER_HOST`` the plugin asks the daemon before (tests/bypass); without
it, the create's answer is judged: its ``CreatedAt`` is the existing volume's, older than a new
one's, so nobody is recorded and a developer is refused. Against a real daemon, because the
answer's fields are the daemon's to define.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest
from stack import Stack

from authz.decide import VOLUME_FRESH_SECONDS

pytestmark = pytest.mark.e2e


def test_a_volume_made_before_is_not_claimed_by_creating_it_again(e2e_stack_factory: Callable[..., Stack]) -> None:
    stack: Stack = e2e_stack_factory(settings={"AUTHZ_DOCKER_HOST": ""})  # the plugin does not read the daemon
    name = "old-data"
    # Made by the daemon for an admin's run -v: no ownership record, like a volume made before the plugin.
    stack.docker_as("admin", "run", "--rm", "--network", "none", "--user", "1000", "-v", f"{name}:/d", "tiny", "true",
                    check=True)  # fmt: skip
    made = time.monotonic()
    fresh = stack.docker_as("dev", "volume", "create", "new-data")
    assert fresh.returncode == 0, fresh.stderr  # a new one is recorded as dev's
    time.sleep(max(0.0, VOLUME_FRESH_SECONDS + 1.5 - (time.monotonic() - made)))  # older than a new one can be
    claim = stack.docker_as("dev", "volume", "create", name)
    assert claim.returncode != 0, claim.stdout
    assert f"{stack.denied_prefix()}authz: denied volume:create for dev (roles: developer): volume '{name}' " \
           "already exists and is not recorded as created by anyone" in claim.stderr, claim.stderr  # fmt: skip
    assert f"(judged on the daemon's answer: volume '{name}' already existed, created " in claim.stderr
    with sqlite3.connect(stack.workdir / "authz.db") as db:
        owners = dict(db.execute("SELECT object_id, owner FROM ownership WHERE kind = 'volume'").fetchall())
    assert owners == {"new-data": "dev"}
    again = stack.docker_as("dev", "volume", "create", "new-data")  # dev's own: answered, nothing new recorded
    assert again.returncode == 0, again.stderr
    for volume in (name, "new-data"):
        stack.docker_as("admin", "volume", "rm", volume, check=True)
