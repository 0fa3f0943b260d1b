"""Objects a request names besides its target (B11, B18), and the predicates the image, network,
volume and service families share.

The engine checks ownership of the object in the path (``operation.target``). Bodies name more
objects, and each one is a way into another user's work:

* ``HostConfig.VolumesFrom`` (``C[:ro]``) copies every mount of container ``C``, host binds
  included. We cannot see ``C``'s mounts, so a container the caller did not create may be
  borrowed only by a role that could bind the whole host anyway (``containers.bind_mounts``
  contains ``/``), and read-only when the role demands read-only binds. Under ``ownership: own``
  the source must be the caller's own container.
* ``NetworkMode``/``PidMode``/``IpcMode``/``Cgroup`` ``container:<ref>`` join that container's
  namespaces: with ``ownership: own`` only the caller's containers may be joined. Under ``any``
  joining is allowed (it is about whose object it is, not about host namespaces).
* ``HostConfig.Links`` (``--link C:alias``) and the ``Links`` of a ``NetworkingConfig`` endpoint
  name containers too; on the default bridge a legacy link copies ``C``'s environment (its
  secrets) into the new container. With ``ownership: own`` only the caller's containers may be
  linked; a link the daemon cannot parse is denied.
* ``network:connect``/``network:disconnect`` name a ``Container`` in the body: with
  ``ownership: own`` it must be the caller's.

Not checked here: ``/commit?container=`` (already the operation's target) and ``?name=`` on
create (the daemon refuses duplicate names).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from authz.policy.rules import EvalContext, Violation, register

if TYPE_CHECKING:
    from authz.classify.containers import ContainerCreate
    from authz.policy.compiled import EffectiveRole
    from authz.request import Operation, Subject

__all__ = [
    "admin_like_violation",
    "allowed_text",
    "body_missing",
    "glob_allowed",
    "owner_phrase",
    "owns",
]

_CONTAINER_PREFIX = "container:"


def glob_allowed(patterns: Iterable[str], value: str) -> bool:
    """Whether a name-list policy key admits ``value``: each entry is a case-sensitive glob over
    the whole value (``*`` alone admits anything, the empty name included)."""
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def allowed_text(patterns: Iterable[str]) -> str:
    listed = ", ".join(patterns)
    return listed or "none"


def owns(context: EvalContext, kind: str, reference: str, subject: Subject) -> bool:
    """Whether ``reference`` names an object of ``kind`` recorded as created by ``subject``."""
    if subject.name is None or context.ownership is None:
        return False  # no identity or no ownership table: nothing can be shown to be ours
    return context.ownership.owner_of(kind, reference) == subject.name


def owner_phrase(context: EvalContext, kind: str, reference: str) -> str:
    """``"owned by another user"`` or ``"not recorded as yours"``, for messages."""
    owner = context.ownership.owner_of(kind, reference) if context.ownership is not None else None
    return "owned by another user" if owner is not None else "not recorded as created by you"


def admin_like_violation(role: EffectiveRole, field: str, what: str) -> Violation | None:
    """``what`` is allowed only for admin-like roles: ``containers.unconfined`` and
    ``containers.host_namespaces`` both true (such a role can take the host anyway)."""
    for key, value in (
        ("containers.unconfined", role.containers.unconfined),
        ("containers.host_namespaces", role.containers.host_namespaces),
    ):
        if not value:
            return Violation(
                key,
                field,
                f"{what} is allowed only for admin-like roles (containers.unconfined and "
                f"containers.host_namespaces both true); role {role.name} has {key}: false",
            )
    return None


def body_missing(action: str, section: str) -> Violation:
    """Fail closed: without the body nothing can be judged (the daemon needs one here anyway).

    ``section`` is the policy section whose rules could not be applied (never ``allow``: the
    engine reads that rule as "the role does not allow the action").
    """
    return Violation(section, "body", f"{action} needs a JSON request body for the plugin to judge; none was received")


def link_target(link: str) -> str | None:
    """The container a link names, parsed like the daemon's ``opts.ParseLink``; None if it refuses it.

    ``name`` and ``name:alias`` name ``name``; ``/name:/parent/alias`` (a link read back from an
    existing container) names ``name``; an empty link or one with two colons is an error.
    """
    parts = link.split(":")
    if link == "" or len(parts) > 2:
        return None
    if len(parts) == 1:
        return link
    return parts[0][1:] if parts[0].startswith("/") else parts[0]


def _links(view: ContainerCreate) -> Iterator[tuple[str, str]]:
    """(field, link) of ``HostConfig.Links`` and of every endpoint's ``Links``."""
    for index, link in enumerate(view.links):
        yield f"HostConfig.Links[{index}]", link
    for endpoint in view.endpoints:
        for index, link in enumerate(endpoint.links):
            yield f"NetworkingConfig.EndpointsConfig.{endpoint.network}.Links[{index}]", link


def _link_violations(
    role: EffectiveRole, subject: Subject, context: EvalContext, links: Iterable[tuple[str, str]]
) -> Iterator[Violation]:
    for field, link in links:
        target = link_target(link)
        if not target:
            yield Violation("ownership", field, f"link {link!r} names no container (the daemon expects NAME[:ALIAS])")
            continue
        why = "a link can expose its environment; "
        found = _foreign_container(role, subject, context, field, target, "linking container", "link", why)
        if found is not None:
            yield found


def _foreign_container(
    role: EffectiveRole,
    subject: Subject,
    context: EvalContext,
    field: str,
    ref: str,
    doing: str,
    may: str,
    why: str = "",
) -> Violation | None:
    """Under ``ownership: own``, the violation of naming container ``ref`` the caller did not create."""
    if role.ownership != "own" or owns(context, "container", ref, subject):
        return None
    return Violation(
        "ownership",
        field,
        f"{doing} {ref!r} ({owner_phrase(context, 'container', ref)}) is not allowed: {why}role {role.name} may "
        f"{may} only containers you created (ownership: own)",
    )


def _container_joins(view: ContainerCreate) -> Iterator[tuple[str, str]]:
    """(field, container reference) of every ``container:<ref>`` namespace join."""
    for field, value in (
        ("HostConfig.NetworkMode", view.network_mode),
        ("HostConfig.PidMode", view.pid_mode),
        ("HostConfig.IpcMode", view.ipc_mode),
        ("HostConfig.Cgroup", view.cgroup),
    ):
        if value.startswith(_CONTAINER_PREFIX):  # Go: SplitN(mode, ":", 2)[0] == "container"
            yield field, value[len(_CONTAINER_PREFIX) :]


@register("container:create")
def check_create_references(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: ContainerCreate | None = operation.view
    if view is None:
        return  # images.check_create_image already denies a create without a body
    for field, ref in _container_joins(view):
        if ref == "":
            # The daemon refuses it; an empty reference must never reach the ownership table.
            yield Violation("ownership", field, f"{field} names no container after 'container:'")
            continue
        found = _foreign_container(role, subject, context, field, ref, "joining the namespaces of container", "join")
        if found is not None:
            yield found
    yield from _link_violations(role, subject, context, _links(view))
    for index, source in enumerate(view.volumes_from):
        field = f"HostConfig.VolumesFrom[{index}]"
        if owns(context, "container", source.container, subject):
            continue
        whose = owner_phrase(context, "container", source.container)
        if role.ownership == "own":
            yield Violation(
                "ownership",
                field,
                f"VolumesFrom container {source.container!r} ({whose}) is not allowed: role {role.name} may "
                "borrow mounts only from containers you created (ownership: own)",
            )
            continue
        binds = role.containers.bind_mounts or ()
        if "/" not in binds:
            # Its host binds are invisible to us: only a role that may bind all of / may borrow them.
            yield Violation(
                "containers.bind_mounts",
                field,
                f"VolumesFrom container {source.container!r} ({whose}) would copy its mounts, including host "
                f"binds the plugin cannot see; allowed only when bind_mounts contains / "
                f"(allowed prefixes: {allowed_text(binds)})",
            )
        elif role.containers.bind_mounts_read_only and not source.read_only:
            yield Violation(
                "containers.bind_mounts_read_only",
                field,
                f"VolumesFrom container {source.container!r} must be read-only ({source.container}:ro): "
                "its host binds are covered by bind_mounts_read_only: true",
            )


@register("network:connect", "network:disconnect")
def check_connect_container(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view = operation.view
    if view is None:
        yield body_missing(operation.action, "ownership")
        return
    links = getattr(view, "links", ())  # connect only: its EndpointConfig
    yield from _link_violations(
        role, subject, context, ((f"EndpointConfig.Links[{i}]", link) for i, link in enumerate(links))
    )
    if role.ownership != "own":
        return
    container: str = view.container
    verb = "connect" if operation.action == "network:connect" else "disconnect"
    if container == "":
        # The daemon refuses it; an empty reference must never reach the ownership table.
        yield Violation("ownership", "Container", f"network {verb} names no container")
    elif not owns(context, "container", container, subject):
        yield Violation(
            "ownership",
            "Container",
            f"container {container!r} ({owner_phrase(context, 'container', container)}) cannot be {verb}ed: "
            f"role {role.name} may act only on containers you created (ownership: own)",
        )
