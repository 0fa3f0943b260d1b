"""Content rules: what a request body may ask for, per role (containers, exec, images, …).

Each check is a pure function ``(role, operation, subject, context) -> Iterable[Violation]``
registered for the actions it concerns in ``CHECKS``. The engine runs the checks of an action for
every role that allows the action; a role grants the request only if none of its checks objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authz.policy.compiled import EffectiveRole
    from authz.ports import OwnershipStore
    from authz.request import Operation, Subject


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing a role does not permit, in words a developer can act on."""

    rule: str  # the policy key, relative to the role: "containers.privileged"
    field: str  # the request field: "HostConfig.Privileged"
    message: str  # "privileged containers are not allowed"


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What checks may consult besides the request: the ownership table, image metadata.

    ``engine.evaluate`` copies it field by field: a new field goes there too.
    """

    ownership: OwnershipStore | None = None
    image_user: Callable[[str], str | None] | None = None  # image reference -> its configured USER
    # volume name -> whether the daemon has it (None: it did not say); None: no daemon reads
    volume_exists: Callable[[str], bool | None] | None = None
    # Where the daemon host's / is seen, to judge bind sources; None: not at all (managed plugin).
    host_root: str | None = "/"
    extras: Mapping[str, object] = field(default_factory=dict)
    # At AuthZReq: a read of an object with no recorded owner (engine.RESPONSE_JUDGED_READS) is
    # let through to the daemon, whose answer is then judged by the full ID it names (AuthZRes).
    defer_unknown_reads: bool = False


ContentCheck = Callable[["EffectiveRole", "Operation", "Subject", EvalContext], Iterable[Violation]]

# action -> checks; filled by the rule-family modules imported below.
CHECKS: dict[str, list[ContentCheck]] = {}


def register(*action_names: str) -> Callable[[ContentCheck], ContentCheck]:
    def decorator(check: ContentCheck) -> ContentCheck:
        for action in action_names:
            CHECKS.setdefault(action, []).append(check)
        return check

    return decorator
