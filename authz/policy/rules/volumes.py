"""Volume rules: ``volumes.drivers``, ``volumes.driver_opts`` and named-volume ownership (B10).

The ``local`` driver hands ``DriverOpts`` to mount(8): ``type=none,o=bind,device=/`` is a bind of
the host root, ``type=ext4,device=/dev/sda1`` mounts a host disk, ``type=nfs`` reaches out from
the host. Any other driver runs plugin code. So:

* ``volume:create``: the effective driver (``""`` is ``local``) must match ``volumes.drivers``
  (globs); with ``driver_opts: false`` any non-empty ``DriverOpts`` is denied, and so is a swarm
  ``ClusterVolumeSpec`` (its options are the CSI driver's).
* container create: ``HostConfig.VolumeDriver`` and every inline volume
  (``Mounts[]`` of ``Type: volume`` with ``VolumeOptions.DriverConfig``) follow the same driver
  and driver-option rules. The implicit default (``local`` without options: a plain directory)
  is not checked, because images declare anonymous volumes the plugin cannot see anyway.
* Named volumes in ``Binds`` and ``Mounts``: with ``ownership: own`` a volume the caller did not
  create is denied. One created by someone else may be a host bind made with driver options,
  and the ownership table cannot tell "not ours" from "does not exist yet" (the daemon would
  create a missing one on first use); the message says to ``docker volume create`` it first,
  which records the caller as its owner. Roles with ``ownership: any`` may use every volume,
  including ones that roles with ``driver_opts: true`` made into host binds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.references import allowed_text, body_missing, glob_allowed, owner_phrase, owns

if TYPE_CHECKING:
    from authz.classify.bodies import VolumeCreate
    from authz.classify.containers import ContainerCreate
    from authz.classify.mounts import MountSpec
    from authz.policy.compiled import EffectiveRole
    from authz.request import Operation, Subject

__all__ = ["driver_violation", "mount_volume_violations", "named_volume_violation", "options_violation"]


def driver_violation(role: EffectiveRole, driver: str, field: str) -> Violation | None:
    drivers = role.volumes.drivers or ()
    if glob_allowed(drivers, driver):
        return None
    return Violation(
        "volumes.drivers", field, f"volume driver {driver!r} is not allowed (allowed: {allowed_text(drivers)})"
    )


def options_violation(role: EffectiveRole, options: dict[str, str], field: str) -> Violation | None:
    if not options or role.volumes.driver_opts:
        return None
    listed = ",".join(f"{key}={value}" for key, value in sorted(options.items()))
    return Violation(
        "volumes.driver_opts",
        field,
        f"volume driver options ({listed}) are not allowed: with the local driver they mount host paths, "
        "devices or network shares (driver_opts: false)",
    )


def named_volume_violation(
    role: EffectiveRole, subject: Subject, context: EvalContext, name: str, field: str
) -> Violation | None:
    """``ownership: own`` may mount only volumes the caller created (recorded on volume create)."""
    if role.ownership != "own" or owns(context, "volume", name, subject):
        return None
    return Violation(
        "ownership",
        field,
        f"volume {name!r} ({owner_phrase(context, 'volume', name)}) cannot be mounted: role {role.name} may use "
        f"only volumes you created (ownership: own); if it is new, create it first with "
        f"`docker volume create {name}`",
    )


def mount_volume_violations(
    role: EffectiveRole, subject: Subject, context: EvalContext, mount: MountSpec, field: str
) -> Iterator[Violation]:
    """Driver, driver options and ownership of one ``Type: volume`` mount (container or service)."""
    if mount.volume_driver is not None:
        found = driver_violation(role, mount.volume_driver, f"{field}.VolumeOptions.DriverConfig.Name")
        if found is not None:
            yield found
    found = options_violation(role, dict(mount.volume_driver_options), f"{field}.VolumeOptions.DriverConfig.Options")
    if found is not None:
        yield found
    if mount.source:  # an empty Source is an anonymous volume, new and private to the container
        found = named_volume_violation(role, subject, context, mount.source, f"{field}.Source")
        if found is not None:
            yield found


@register("volume:create")
def check_volume_create(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: VolumeCreate | None = operation.view
    if view is None:
        yield body_missing(operation.action, "volumes")
        return
    for found in (
        driver_violation(role, view.effective_driver, "Driver"),
        options_violation(role, dict(view.driver_opts), "DriverOpts"),
    ):
        if found is not None:
            yield found
    if view.name and role.ownership == "own":
        found = existing_volume_violation(role, view.name, subject, context)
        if found is not None:
            yield found
    if view.has_cluster_volume_spec and not role.volumes.driver_opts:
        yield Violation(
            "volumes.driver_opts",
            "ClusterVolumeSpec",
            "cluster volumes pass their specification to a CSI driver; not allowed (driver_opts: false)",
        )


_ANONYMOUS_NAME = re.compile(r"[0-9a-f]{64}", re.ASCII)


def existing_volume_violation(
    role: EffectiveRole, name: str, subject: Subject, context: EvalContext
) -> Violation | None:
    """A create of a volume that exists answers 201 with it, unchanged: it must not make it yours.

    Refused here when another user owns ``name``; when it has no owner but the daemon has it (the
    daemon is asked when the plugin reads it: ``volume_exists``); and for the daemon's own names of
    anonymous volumes (64 hex digits), which any user can list the moment they exist. Without
    daemon reads, the create's answer is judged instead (its ``CreatedAt``, decide.py).
    """
    owner = context.ownership.owner_of("volume", name) if context.ownership is not None else None
    if owner == subject.name and owner is not None:
        return None
    why = ""
    if owner is not None:
        why = "already exists and is owned by another user"
    elif _ANONYMOUS_NAME.fullmatch(name):
        why = "has the form of the daemon's names for anonymous volumes (64 hex digits), which are other containers'"
    elif context.volume_exists is not None:
        exists = context.volume_exists(name)
        if exists is None:
            why = "cannot be checked: the daemon did not say whether it exists"
        elif exists:
            why = "already exists and is not recorded as created by anyone (made before the plugin, or by the daemon)"
    if not why:
        return None
    return Violation("ownership", "Name", f"volume {name!r} {why}; creating it would not make it yours: role "
                     f"{role.name} may use only volumes you created (ownership: own)")  # fmt: skip


@register("container:create")
def check_create_volumes(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: ContainerCreate | None = operation.view
    if view is None:
        return  # images.check_create_image already denies a create without a body
    if view.volume_driver:
        found = driver_violation(role, view.volume_driver, "HostConfig.VolumeDriver")
        if found is not None:
            yield found
    for index, bind in enumerate(view.binds):
        if bind.volume is not None:
            found = named_volume_violation(role, subject, context, bind.volume, f"HostConfig.Binds[{index}]")
            if found is not None:
                yield found
    for index, mount in enumerate(view.mounts):
        if mount.type == "volume":
            yield from mount_volume_violations(role, subject, context, mount, f"HostConfig.Mounts[{index}]")
