"""A user created just before their token is known on their first command, through a real dockerd.

Plugins poll the store's revision (``AUTHZ_REVISION_POLL``); a token carries the revision it was
issued at, and a plugin process holding an older snapshot reads the store before deciding. The
stack here polls every 60 s (the most allowed), so nothing but that catch-up can bring the new
user in during the test: without it, the first command is denied "token subject ... is not a
known user".
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pluginproc import issue_token
from stack import Stack

pytestmark = pytest.mark.e2e


def test_a_user_created_just_before_their_token_works_at_once(e2e_stack_factory: Callable[..., Stack]) -> None:
    stack = e2e_stack_factory(users=("admin",), settings={"AUTHZ_REVISION_POLL": "60"})
    stack.authzctl("user", "add", "carol", "--role", "developer", "--author", "test")
    stack.configs["carol"] = issue_token(stack.env, "carol", stack.workdir / "users" / "carol")

    # Both plugin workers must catch up: the AuthZReq and the AuthZRes of one call may reach
    # different ones, and the AuthZRes records carol as the owner that `rm` checks.
    for n in range(4):
        name = f"fresh-{n}"
        created = stack.docker_as("carol", "create", "--network", "none", "--user", "1000", "--name", name,
                                  "tiny", "true")  # fmt: skip
        assert created.returncode == 0, created.stderr
        removed = stack.docker_as("carol", "rm", name)
        assert removed.returncode == 0, removed.stderr

    # The catch-up reads the store; it does not widen anything: carol is still a developer.
    privileged = stack.docker_as("carol", "create", "--network", "none", "--privileged", "tiny", "true")
    assert privileged.returncode != 0
    assert "authz: denied container:create for carol (roles: developer)" in privileged.stderr
