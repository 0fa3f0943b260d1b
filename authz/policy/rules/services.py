"""Swarm service rules (B15): a ``ServiceSpec`` is checked as strictly as a container create.

The orchestrator starts every task container on every eligible node **without an authz call**,
so ``service:create`` and ``service:update`` (whose body is the whole new spec) are the only
chance to judge them. For every role that allows the action:

* ``ContainerSpec.Image``: ``images.allow`` and ``images.require_digest`` (images.judge_image);
* ``Mounts``: binds exactly like a container's ``--mount type=bind`` (containers_mounts: allowed
  prefixes by path components, symlinks resolved on this host, sockets listed literally,
  read-only submounts included when ``bind_mounts_read_only``; ``shared``/``rshared`` or unknown
  propagation needs ``containers.unconfined``); volumes as in volumes.py (driver, driver options,
  ownership of named volumes); ``tmpfs`` is harmless; any other type (``npipe``, ``cluster`` …)
  cannot be judged: ``containers.unconfined`` only;
* ``CapabilityAdd``: ``containers.capabilities``; ``Sysctls``: ``containers.sysctls``;
* ``Privileges``: seccomp or AppArmor mode other than default, SELinux ``Disable`` or ``Type``:
  ``containers.unconfined``;
* ``User`` and ``Groups``: root needs ``containers.run_as_root``, read like a container's
  ``User``/``GroupAdd`` (containers_user: ``root``, uid/gid 0, an empty user part, or no user and
  an image whose ``USER`` is root or unknown to the plugin);
* networks: ``host`` needs ``containers.host_namespaces``, others ``networks.use`` (and
  ownership), aliases only on the caller's own networks (networks.py);
* ``EndpointSpec.Ports``: ``PublishedPort`` covered by ``containers.published_ports``; 0 (the
  swarm or the engine picks one) counts as 30000-65535;
* ``PluginSpec``, a ``Runtime`` other than ``container``, a ``NetworkAttachmentSpec``, and
  ``Secrets``/``Configs`` references (any swarm secret by name, without ``secret:*`` rights):
  admin-like roles only (``containers.unconfined`` and ``containers.host_namespaces`` true).

``Mode: Global`` (a task on every node) is fine. Not checked: ``LogDriver``, ``Resources``
(``require_limits``/``max_*``: the view has no resources yet), ``Ulimits``, ``OomScoreAdj``.
Tasks may run on other nodes, where symlinks and the image's USER may differ from this host.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from authz.errors import BodyError
from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.containers_mounts import host_source_violations
from authz.policy.rules.containers_user import group_add_violations, user_violations
from authz.policy.rules.images import judge_image
from authz.policy.rules.networks import network_use_violations, takeover_violation
from authz.policy.rules.references import admin_like_violation, allowed_text, body_missing, glob_allowed
from authz.policy.rules.volumes import mount_volume_violations

if TYPE_CHECKING:
    from authz.classify.bodies import ServiceSpec
    from authz.classify.mounts import MountSpec
    from authz.policy.compiled import EffectiveRole
    from authz.request import Operation, Subject

__all__ = ["check_service", "ports_covered"]

_SPEC = "TaskTemplate.ContainerSpec"
_CONTAINER_RUNTIMES = ("", "container")
_DEFAULT_MODES = ("", "default")
_PRIVATE_PROPAGATIONS = frozenset({"private", "rprivate", "slave", "rslave"})
_USER_HINT = "set User to a non-root uid (e.g. --user 1000:1000) or use an image whose USER is not root"
_SWARM_CHOSEN_PORTS = (30000, 65535)  # ingress allocates 30000-32767; host mode takes an ephemeral port


def ports_covered(entries: tuple[str, ...], low: int, high: int) -> bool:
    """Whether the ``published_ports`` entries (``*``, ``80``, ``8000-8999``) together cover low..high."""
    if "*" in entries:
        return True
    ranges = sorted((int(first), int(last or first)) for first, _, last in (e.partition("-") for e in entries))
    port = low
    for start, end in ranges:
        if start <= port <= end:
            port = end + 1
    return port > high


def _bind_violations(role: EffectiveRole, mount: MountSpec, field: str, host_root: str | None) -> Iterator[Violation]:
    """A bind judged exactly like a container's ``--mount type=bind`` (containers_mounts)."""
    rules = role.containers
    path = mount.host_path or mount.source
    try:
        yield from host_source_violations(rules, path, f"{field}.Source", host_root)
    except BodyError as exc:
        # A policy prefix that cannot be normalised (the schema should have refused it).
        yield Violation("containers.bind_mounts", f"{field}.Source", f"bind mounts cannot be judged: {exc}")
    if rules.bind_mounts_read_only and (not mount.read_only or mount.read_only_non_recursive):
        yield Violation(
            "containers.bind_mounts_read_only",
            f"{field}.ReadOnly",
            f"bind mount of host path {path} must be read-only, submounts included (bind_mounts_read_only: true)",
        )
    propagation = mount.propagation
    if propagation is not None and propagation not in _PRIVATE_PROPAGATIONS and not rules.unconfined:
        yield Violation(
            "containers.unconfined",
            f"{field}.BindOptions.Propagation",
            f"propagation {propagation!r} is not allowed: shared propagation makes mounts made in the container "
            "appear on the host; use the default (rprivate) or rslave",
        )


def _mount_violations(
    role: EffectiveRole, subject: Subject, context: EvalContext, spec: ServiceSpec
) -> Iterator[Violation]:
    for index, mount in enumerate(spec.mounts):
        field = f"{_SPEC}.Mounts[{index}]"
        if mount.type == "bind":
            yield from _bind_violations(role, mount, field, context.host_root)
        elif mount.type == "volume":
            yield from mount_volume_violations(role, subject, context, mount, field)
        elif mount.type != "tmpfs" and not role.containers.unconfined:
            # npipe, cluster and types newer than us: the plugin cannot judge them.
            yield Violation(
                "containers.unconfined",
                f"{field}.Type",
                f"mount type {mount.type!r} cannot be judged by the plugin (allowed: bind, volume, tmpfs)",
            )


def _confinement_violations(role: EffectiveRole, spec: ServiceSpec) -> Iterator[Violation]:
    allowed = role.containers.capabilities or ()
    for index, cap in enumerate(spec.cap_add):
        if "ALL" not in allowed and cap not in allowed:
            yield Violation(
                "containers.capabilities",
                f"{_SPEC}.CapabilityAdd[{index}]",
                f"capability {cap} is not allowed (allowed: {allowed_text(allowed)})",
            )
    sysctls = role.containers.sysctls or ()
    for key in spec.sysctls:
        # Slash-separated keys reach /proc/sys paths the dotted patterns do not describe.
        odd = "/" in key or ".." in key or " " in key or not key.isprintable()
        if "*" not in sysctls and (odd or not glob_allowed(sysctls, key)):
            yield Violation(
                "containers.sysctls",
                f"{_SPEC}.Sysctls[{key}]",
                f"sysctl {key} is not allowed (allowed: {allowed_text(sysctls)})",
            )
    if role.containers.unconfined:
        return
    p = f"{_SPEC}.Privileges"
    weakened = [
        (f"{p}.Seccomp.Mode", f"seccomp mode {spec.seccomp_mode!r}", spec.seccomp_mode not in _DEFAULT_MODES),
        (f"{p}.AppArmor.Mode", f"AppArmor mode {spec.apparmor_mode!r}", spec.apparmor_mode not in _DEFAULT_MODES),
        (f"{p}.SELinuxContext.Disable", "disabling SELinux labelling", spec.selinux_disable),
        (f"{p}.SELinuxContext.Type", f"SELinux type {spec.selinux_type!r}", bool(spec.selinux_type)),
    ]
    for field, what, present in weakened:
        if present:
            yield Violation(
                "containers.unconfined", field, f"{what} weakens confinement; not allowed (unconfined: false)"
            )


def _user_violations(role: EffectiveRole, spec: ServiceSpec, context: EvalContext) -> Iterator[Violation]:
    """Root in the tasks, read like a container's ``User``/``GroupAdd`` (containers_user)."""
    if role.containers.run_as_root:
        return
    rule = "containers.run_as_root"
    yield from user_violations(
        spec.user, spec.image, context.image_user, rule=rule, field=f"{_SPEC}.User", hint=_USER_HINT
    )
    yield from group_add_violations(spec.groups, rule=rule, field=f"{_SPEC}.Groups")


def _network_violations(
    role: EffectiveRole, subject: Subject, context: EvalContext, spec: ServiceSpec
) -> Iterator[Violation]:
    for index, attachment in enumerate(spec.networks):
        field = f"Networks[{index}].Target"
        yield from network_use_violations(role, subject, context, attachment.target, field)
        claims = [f"alias {alias!r}" for alias in attachment.aliases]
        found = takeover_violation(role, subject, context, attachment.target, field, claims)
        if found is not None:
            yield found
    entries = role.containers.published_ports or ()
    for index, port in enumerate(spec.published_ports):
        low, high = (port.published_port, port.published_port) if port.published_port else _SWARM_CHOSEN_PORTS
        if not ports_covered(entries, low, high):
            shown = port.published_port or "chosen by swarm (30000-65535)"
            yield Violation(
                "containers.published_ports",
                f"EndpointSpec.Ports[{index}].PublishedPort",
                f"published port {shown} is not allowed (allowed: {allowed_text(entries)})",
            )


def _admin_only(spec: ServiceSpec) -> Iterator[tuple[str, str]]:
    if spec.runtime not in _CONTAINER_RUNTIMES:
        yield "TaskTemplate.Runtime", f"runtime {spec.runtime!r} (a managed plugin or attachment on every node)"
    if spec.plugin is not None:
        yield "TaskTemplate.PluginSpec", f"PluginSpec {spec.plugin.remote or spec.plugin.name!r} (installs a plugin)"
    if spec.network_attachment_container is not None:
        yield "TaskTemplate.NetworkAttachmentSpec", "a NetworkAttachmentSpec"
    if spec.secrets:
        yield f"{_SPEC}.Secrets", f"swarm secrets {', '.join(spec.secrets)} (any secret, by name)"
    if spec.configs:
        yield f"{_SPEC}.Configs", f"swarm configs {', '.join(spec.configs)} (any config, by name)"


@register("service:create", "service:update")
def check_service(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    spec: ServiceSpec | None = operation.view
    if spec is None:
        yield body_missing(operation.action, "containers")
        return
    if spec.runtime in _CONTAINER_RUNTIMES:  # plugin tasks have no ContainerSpec: decided below
        yield from judge_image(role, spec.image, f"{_SPEC}.Image")
        yield from _user_violations(role, spec, context)
    yield from _mount_violations(role, subject, context, spec)
    yield from _confinement_violations(role, spec)
    yield from _network_violations(role, subject, context, spec)
    for field, what in _admin_only(spec):
        denied = admin_like_violation(role, field, what)
        if denied is not None:
            yield denied
