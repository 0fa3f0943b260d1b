"""Content rules of ``container:exec`` (``POST /containers/{id}/exec``, policy-v1 ``exec:``).

* ``exec.privileged``: ``Privileged`` gives the process every capability (bypass B12).
* ``exec.run_as_root``: ``User`` root by name or uid (``root``, ``0``, ``0:0``, ``:1000``) or with
  the root group. An empty ``User`` runs as the container's user, which the plugin does not know
  (it would have to inspect the container, and the create may predate the plugin); so with
  ``run_as_root: false`` an empty ``User`` is refused and the message asks for ``--user UID``.
  Ownership of the target container is checked by the engine (``ownership``).
"""

from __future__ import annotations

from collections.abc import Iterator

from authz.classify.bodies import ExecCreate
from authz.policy.compiled import EffectiveRole
from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.containers_user import root_reason
from authz.request import Operation, Subject

__all__ = ["check_exec"]

_HINT = "pass --user UID (a non-root uid) to docker exec"


@register("container:exec")
def check_exec(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    """Privileged and root execs, against ``role.exec``."""
    view = operation.view
    if not isinstance(view, ExecCreate):
        # Fail closed: without the body the exec's user and privileges are unknown.
        yield Violation("exec", "body", f"{operation.action} without a readable JSON body cannot be judged")
        return
    rules = role.exec
    if view.privileged and not rules.privileged:
        yield Violation("exec.privileged", "Privileged", "privileged exec (docker exec --privileged) is not allowed")
    if rules.run_as_root:
        return
    if view.user == "":
        # Fail closed: the container's own user is unknown here and may be root.
        yield Violation("exec.run_as_root", "User", f"an exec without --user runs as the container's user, "
                        f"which may be root; {_HINT}")  # fmt: skip
        return
    reason = root_reason(view.user)
    if reason is not None:
        yield Violation("exec.run_as_root", "User", f"{reason}; exec as root is not allowed: {_HINT}")
