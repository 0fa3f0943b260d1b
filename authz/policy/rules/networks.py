"""Network rules: ``networks.create``, ``networks.drivers``, ``networks.use`` (issue 3 item 4, B11).

``network:create``
  ``Name`` must match a ``networks.create`` glob. The effective driver (``""`` is ``bridge``) must
  match ``networks.drivers``, except that ``host``, ``macvlan`` and ``ipvlan`` (containers on the
  host's stack or directly on the physical LAN) pass only when listed **by name**: a ``*`` entry
  does not include them. The options that attach a network to something of the host's —
  ``com.docker.network.bridge.name`` (an existing host bridge) and ``parent`` (a host interface)
  — and ``ConfigFrom`` (which copies options we cannot see from a config-only network, itself
  subject to ``networks.use``) need the driver listed by name too. ``Ingress: true`` replaces the
  swarm routing mesh: admin-like roles only (``containers.unconfined`` and
  ``containers.host_namespaces`` true).

``networks.use``
  Applies to ``HostConfig.NetworkMode`` when it names a network (``host`` is the container
  rules' ``host_namespaces`` and ``container:<ref>`` is references.py), to every
  ``NetworkingConfig.EndpointsConfig`` key, to the ``{id}`` of ``network:connect``/
  ``network:disconnect``, to build ``networkmode`` and to service network targets. ``none``,
  ``default`` and ``bridge`` are names too (the defaults list them). The daemon resolves a
  network reference as full ID, then name, then unique **ID prefix**, so a hex string cannot be
  matched against name patterns: one names a network the caller created, or else needs ``*`` in
  ``use`` *and* ``containers.host_namespaces`` (it could be the host network's ID). ``host``
  anywhere but ``NetworkMode`` needs ``containers.host_namespaces``. With ``ownership: own`` a
  network other than ``none``/``default``/``bridge``/``host`` must be the caller's own.
  Static IPs, MAC addresses and aliases on a network the caller did not create can take over
  another container's address or DNS name: denied for every role.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.references import (
    admin_like_violation,
    allowed_text,
    body_missing,
    glob_allowed,
    owner_phrase,
    owns,
)

if TYPE_CHECKING:
    from authz.classify.bodies import NetworkConnect, NetworkCreate
    from authz.classify.containers import ContainerCreate
    from authz.policy.compiled import EffectiveRole
    from authz.request import Operation, Subject

__all__ = [
    "EXPLICIT_DRIVERS",
    "HOST_ATTACH_OPTIONS",
    "PREDEFINED",
    "driver_allowed",
    "network_use_violations",
    "takeover_violation",
]

PREDEFINED = frozenset({"none", "default", "bridge", "host"})  # exist on every daemon, owned by nobody
EXPLICIT_DRIVERS = frozenset({"host", "macvlan", "ipvlan"})
HOST_ATTACH_OPTIONS = ("com.docker.network.bridge.name", "parent")
_HEX = re.compile(r"[0-9a-f]+", re.ASCII)


def driver_allowed(patterns: Iterable[str], driver: str) -> bool:
    """Globs admit a driver, except the host-attached ones, which must be listed by name."""
    listed = tuple(patterns)
    if driver in EXPLICIT_DRIVERS:
        return driver in listed
    return glob_allowed(listed, driver)


def network_use_violations(
    role: EffectiveRole,
    subject: Subject,
    context: EvalContext,
    ref: str,
    field: str,
    *,
    check_ownership: bool = True,
) -> Iterator[Violation]:
    """Why ``role`` may not attach something to network ``ref`` (see the module docstring).

    ``check_ownership=False`` where the engine already checks the network (the operation's target).
    """
    use = role.networks.use or ()
    if ref == "":
        yield Violation("networks.use", field, "no network is named")
        return
    # The daemon's own networks have no owner: skip the store lookup (this runs on every create).
    owned = ref not in PREDEFINED and owns(context, "network", ref, subject)
    if check_ownership and role.ownership == "own" and ref not in PREDEFINED and not owned:
        yield Violation(
            "ownership",
            field,
            f"network {ref!r} ({owner_phrase(context, 'network', ref)}) cannot be used: role {role.name} may use "
            "only networks you created, or none/default/bridge (ownership: own)",
        )
        return
    if _HEX.fullmatch(ref):
        if not owned and not ("*" in use and role.containers.host_namespaces):
            # An ID or ID prefix has no name to match, and may be the host network's ID.
            yield Violation(
                "networks.use",
                field,
                f"network {ref!r} may be resolved as a network ID or ID prefix, which cannot be matched against "
                "name patterns; use the network's name (IDs of networks you did not create need * in "
                f"networks.use and containers.host_namespaces: true; allowed: {allowed_text(use)})",
            )
        return
    if ref == "host" and not role.containers.host_namespaces:
        yield Violation(
            "containers.host_namespaces",
            field,
            "the host network shares the host's network stack; not allowed (host_namespaces: false)",
        )
    elif not glob_allowed(use, ref):
        yield Violation("networks.use", field, f"network {ref!r} is not allowed (allowed: {allowed_text(use)})")


def takeover_violation(
    role: EffectiveRole, subject: Subject, context: EvalContext, network: str, field: str, claims: list[str]
) -> Violation | None:
    """Static addresses and aliases are allowed only on the caller's own networks."""
    if not claims or owns(context, "network", network, subject):
        return None
    if role.ownership == "own" and network not in PREDEFINED:
        return None  # network_use_violations already denies using the network at all
    return Violation(
        "networks.use",
        field,
        f"{', '.join(claims)} on network {network!r}, which you did not create, could take over another "
        "container's address or DNS name; allowed only on networks you created",
    )


def _claims(aliases: tuple[str, ...], ipv4: str, ipv6: str, mac: str, link_local: tuple[str, ...] = ()) -> list[str]:
    found = [f"alias {alias!r}" for alias in aliases]
    found += [f"{what} {value}" for what, value in (("IPv4 address", ipv4), ("IPv6 address", ipv6)) if value]
    found += [f"link-local address {value}" for value in link_local]
    if mac:
        found.append(f"MAC address {mac}")
    return found


@register("network:create")
def check_network_create(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: NetworkCreate | None = operation.view
    if view is None:
        yield body_missing(operation.action, "networks")
        return
    rules = role.networks
    create, drivers = rules.create or (), rules.drivers or ()
    if view.name == "":
        yield Violation("networks.create", "Name", "the network has no name")
    elif not glob_allowed(create, view.name):
        yield Violation(
            "networks.create", "Name", f"network name {view.name!r} is not allowed (allowed: {allowed_text(create)})"
        )
    elif role.ownership == "own" and context.ownership is not None:
        owner = context.ownership.owner_of("network", view.name)
        if owner is not None and owner != subject.name:
            # Without CheckDuplicate (API < 1.44) the daemon makes a second network of that name,
            # and recording it would take the name from the other user's record.
            yield Violation("ownership", "Name", f"network {view.name!r} already exists and is owned by another "
                            f"user; role {role.name} may use only networks you created (ownership: own)")  # fmt: skip
    driver = view.effective_driver
    explicit = (
        f"allowed only when driver {driver!r} is listed by name in networks.drivers (allowed: {allowed_text(drivers)})"
    )
    if not driver_allowed(drivers, driver):
        yield Violation(
            "networks.drivers",
            "Driver",
            f"network driver {driver!r} is not allowed (allowed: {allowed_text(drivers)}; host, macvlan and "
            "ipvlan must be listed by name, * does not include them)",
        )
    listed = driver in drivers
    for key in HOST_ATTACH_OPTIONS:
        if key in view.options and not listed:
            yield Violation(
                "networks.drivers",
                f"Options[{key}]",
                f"option {key}={view.options[key]} attaches the network to a host bridge or interface; {explicit}",
            )
    if view.ingress:
        found = admin_like_violation(role, "Ingress", "an ingress network (it replaces the swarm routing mesh)")
        if found is not None:
            yield found
    if view.config_from is not None:
        yield from network_use_violations(role, subject, context, view.config_from, "ConfigFrom.Network")
        if not listed:
            yield Violation(
                "networks.drivers",
                "ConfigFrom.Network",
                f"ConfigFrom copies driver options the plugin cannot see from network {view.config_from!r}; {explicit}",
            )


@register("container:create")
def check_create_networks(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: ContainerCreate | None = operation.view
    if view is None:
        return  # images.check_create_image already denies a create without a body
    mode = view.network_mode
    if mode != "host" and not mode.startswith("container:"):  # host: host_namespaces; container: references
        yield from network_use_violations(role, subject, context, mode, "HostConfig.NetworkMode")
    for endpoint in view.endpoints:
        field = f"NetworkingConfig.EndpointsConfig[{endpoint.network}]"
        yield from network_use_violations(role, subject, context, endpoint.network, field)
        claims = _claims(endpoint.aliases, endpoint.ipv4_address, endpoint.ipv6_address, endpoint.mac_address)
        found = takeover_violation(role, subject, context, endpoint.network, field, claims)
        if found is not None:
            yield found


@register("network:connect", "network:disconnect")
def check_connect_network(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    view: NetworkConnect | None = operation.view
    if view is None:
        return  # references.check_connect_container already denies a request without a body
    network = operation.target or ""
    # The engine checks ownership of the network in the path for ownership: own.
    yield from network_use_violations(role, subject, context, network, "{id}", check_ownership=False)
    if operation.action == "network:connect" and role.ownership != "own":
        claims = _claims(view.aliases, view.ipv4_address, view.ipv6_address, view.mac_address, view.link_local_ips)
        found = takeover_violation(role, subject, context, network, "EndpointConfig", claims)
        if found is not None:
            yield found
