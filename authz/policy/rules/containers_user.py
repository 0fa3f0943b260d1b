"""Who a container or exec process runs as, read the way runc's ``user.GetExecUser`` reads it.

Facts (opencontainers/runc ``libcontainer/user``, used by moby for ``Config.User`` and exec):

* the spec is split at ``:``; the first part is the user, the second the group, the rest ignored;
* an empty user part keeps the default user, which is root (``:1000`` runs as uid 0);
* a user part that ``strconv.Atoi`` accepts is always a uid (``0``, ``00``, ``+0``, ``-0`` are 0);
  otherwise it is a name looked up in the image's ``/etc/passwd``;
* a group part is read the same way against ``/etc/group``; ``GroupAdd`` entries are matched by
  name, or parsed with ``strconv.ParseInt``.

Residual risk: a name other than ``root`` may map to uid 0 (or a group name to gid 0) inside a
hostile image; the plugin cannot see the image's ``/etc/passwd``, so only ``root`` and numeric 0
are recognised as root. For the same reason a uid with no group part (``1000``) passes, though
runc gives it gid 0 when the image's ``/etc/passwd`` has no entry for it (``defaults.Gid``): only
an explicit root group is refused (README, "What the plugin cannot see").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from authz.policy.rules import Violation

__all__ = ["go_atoi", "group_add_violations", "root_reason", "user_violations"]

# strconv.Atoi / ParseInt base 10: optional sign, ASCII digits, no underscores, no spaces.
_GO_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def go_atoi(text: str) -> int | None:
    """The value ``strconv.Atoi`` gives ``text``, or ``None`` when Go refuses it."""
    return int(text) if _GO_INT.fullmatch(text) else None


def _is_root_id(part: str) -> bool:
    return part == "root" or go_atoi(part) == 0


def root_reason(spec: str) -> str | None:
    """Why ``spec`` (``user[:group]``, non-empty) runs with root's uid or gid, or ``None``."""
    user, _, rest = spec.partition(":")
    group = rest.partition(":")[0]
    if user == "":
        return f"user {spec!r} has an empty user part, which runs as uid 0 (root)"
    if _is_root_id(user):
        return f"user {spec!r} is root (uid 0)"
    if group and _is_root_id(group):
        # The root group opens every root-group-owned file, as GroupAdd 0 would.
        return f"user {spec!r} runs with the root group (gid 0)"
    return None


def user_violations(
    spec: str,
    image: str,
    image_user: Callable[[str], str | None] | None,
    *,
    rule: str,
    field: str,
    hint: str,
) -> Iterator[Violation]:
    """Violations of ``run_as_root: false`` for a create's ``Config.User``.

    An empty ``User`` means the image's configured USER, which ``image_user`` looks up on the
    daemon; an unknown or empty image USER is root for our purposes (fail closed).
    """
    if spec != "":
        reason = root_reason(spec)
        if reason is not None:
            yield Violation(rule, field, f"{reason}; containers must not run as root: {hint}")
        return
    looked_up = image_user(image) if image_user is not None else None
    if looked_up is None:
        # Fail closed: without the image's USER the container may well run as root.
        yield Violation(
            rule,
            field,
            f"no User was given and the USER of image {image!r} could not be read from the daemon "
            f"(is it pulled?); containers must not run as root: {hint}",
        )
        return
    if looked_up == "":
        yield Violation(
            rule,
            field,
            f"no User was given and image {image!r} sets no USER, so it runs as root; {hint}",
        )
        return
    reason = root_reason(looked_up)
    if reason is not None:
        yield Violation(rule, field, f"no User was given and the USER of image {image!r}: {reason}; {hint}")


def group_add_violations(groups: tuple[str, ...], *, rule: str, field: str) -> Iterator[Violation]:
    """``GroupAdd`` entries naming the root group (``root`` or a number ParseInt reads as 0).

    Note: adding the GID that owns the docker socket only matters together with a bind of the
    socket, which the bind rules refuse on their own.
    """
    for index, group in enumerate(groups):
        if _is_root_id(group):
            yield Violation(
                rule,
                f"{field}[{index}]",
                f"supplementary group {group!r} is the root group (gid 0), which is not allowed; "
                "drop --group-add 0/root",
            )
