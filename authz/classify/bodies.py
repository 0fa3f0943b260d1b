"""Typed views of the other JSON bodies rules look at: exec, networks, volumes, swarm services.

Struct and field names follow moby v20.10.24 ``api/types`` (``ExecConfig``,
``NetworkCreateRequest``, ``NetworkConnect``, ``volume.VolumeCreateBody``, ``swarm.ServiceSpec``),
plus the newer service fields (``Privileges.Seccomp/AppArmor/NoNewPrivileges``) that later daemons
read. Lookups are Go's (case-insensitive, ``null`` = absent); a value of a type Go would refuse
raises ``BodyError``. No policy decisions here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from authz.classify.hostconfig import go_upper, normalise_capability
from authz.classify.mounts import MountSpec, parse_mount
from authz.errors import BodyError
from authz.gojson import GoObject, as_bool, as_int, as_list, as_object, as_opt_bool, as_str, as_str_list, as_str_map

__all__ = [
    "ExecCreate",
    "IpamConfig",
    "NetworkAttachment",
    "NetworkConnect",
    "NetworkCreate",
    "PluginPrivilege",
    "PluginSpec",
    "PublishedPort",
    "ServiceSpec",
    "VolumeCreate",
    "exec_create_view",
    "network_connect_view",
    "network_create_view",
    "service_spec_view",
    "volume_create_view",
]


def _map(value: object, where: str) -> Mapping[str, str]:
    return MappingProxyType(as_str_map(value, where))


def _obj(value: object, where: str) -> GoObject:
    # A null or absent struct reads as its zero value, as in Go.
    return as_object(value, where) or GoObject()


@dataclass(frozen=True, slots=True)
class ExecCreate:
    """``POST /containers/{id}/exec`` (docker-authz.md 7.3)."""

    user: str  # "" = the container's user
    privileged: bool
    tty: bool
    attach_stdin: bool
    detach: bool
    env: tuple[str, ...]
    working_dir: str
    cmd: tuple[str, ...]


def exec_create_view(body: GoObject) -> ExecCreate:
    return ExecCreate(
        user=as_str(body.field("User"), "User"),
        privileged=as_bool(body.field("Privileged"), "Privileged"),
        tty=as_bool(body.field("Tty"), "Tty"),
        attach_stdin=as_bool(body.field("AttachStdin"), "AttachStdin"),
        detach=as_bool(body.field("Detach"), "Detach"),
        env=as_str_list(body.field("Env"), "Env"),
        working_dir=as_str(body.field("WorkingDir"), "WorkingDir"),
        cmd=as_str_list(body.field("Cmd"), "Cmd"),  # []string in ExecConfig: a bare string is a 400
    )


@dataclass(frozen=True, slots=True)
class IpamConfig:
    subnet: str
    ip_range: str
    gateway: str
    aux_addresses: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NetworkCreate:
    """``POST /networks/create`` (docker-authz.md 7.4)."""

    name: str
    driver: str  # as sent; see effective_driver
    scope: str
    enable_ipv6: bool
    internal: bool
    attachable: bool
    ingress: bool
    config_only: bool
    config_from: str | None  # ConfigFrom.Network
    options: Mapping[str, str]
    labels: Mapping[str, str]
    ipam_driver: str
    ipam_options: Mapping[str, str]
    ipam_configs: tuple[IpamConfig, ...]

    @property
    def effective_driver(self) -> str:
        """The daemon's default driver for an empty ``Driver`` is ``bridge``."""
        return self.driver or "bridge"


def network_create_view(body: GoObject) -> NetworkCreate:
    ipam = _obj(body.field("IPAM"), "IPAM")
    config_from = as_object(body.field("ConfigFrom"), "ConfigFrom")
    configs = []
    for i, item in enumerate(as_list(ipam.field("Config"), "IPAM.Config") or ()):
        here = f"IPAM.Config[{i}]"
        cfg = _obj(item, here)
        configs.append(
            IpamConfig(
                subnet=as_str(cfg.field("Subnet"), f"{here}.Subnet"),
                ip_range=as_str(cfg.field("IPRange"), f"{here}.IPRange"),
                gateway=as_str(cfg.field("Gateway"), f"{here}.Gateway"),
                aux_addresses=_map(cfg.field("AuxiliaryAddresses"), f"{here}.AuxiliaryAddresses"),
            )
        )
    return NetworkCreate(
        name=as_str(body.field("Name"), "Name"),
        driver=as_str(body.field("Driver"), "Driver"),
        scope=as_str(body.field("Scope"), "Scope"),
        enable_ipv6=as_bool(body.field("EnableIPv6"), "EnableIPv6"),
        internal=as_bool(body.field("Internal"), "Internal"),
        attachable=as_bool(body.field("Attachable"), "Attachable"),
        ingress=as_bool(body.field("Ingress"), "Ingress"),
        config_only=as_bool(body.field("ConfigOnly"), "ConfigOnly"),
        config_from=None if config_from is None else as_str(config_from.field("Network"), "ConfigFrom.Network"),
        options=_map(body.field("Options"), "Options"),
        labels=_map(body.field("Labels"), "Labels"),
        ipam_driver=as_str(ipam.field("Driver"), "IPAM.Driver"),
        ipam_options=_map(ipam.field("Options"), "IPAM.Options"),
        ipam_configs=tuple(configs),
    )


@dataclass(frozen=True, slots=True)
class NetworkConnect:
    """``POST /networks/{id}/connect``: the container to attach and its endpoint settings."""

    container: str
    has_endpoint_config: bool
    aliases: tuple[str, ...]
    links: tuple[str, ...]
    ipv4_address: str
    ipv6_address: str
    link_local_ips: tuple[str, ...]
    mac_address: str
    driver_opts: Mapping[str, str]


def network_connect_view(body: GoObject) -> NetworkConnect:
    endpoint = as_object(body.field("EndpointConfig"), "EndpointConfig")
    ep = endpoint or GoObject()
    ipam = _obj(ep.field("IPAMConfig"), "EndpointConfig.IPAMConfig")
    return NetworkConnect(
        container=as_str(body.field("Container"), "Container"),
        has_endpoint_config=endpoint is not None,
        aliases=as_str_list(ep.field("Aliases"), "EndpointConfig.Aliases"),
        links=as_str_list(ep.field("Links"), "EndpointConfig.Links"),
        ipv4_address=as_str(ipam.field("IPv4Address"), "EndpointConfig.IPAMConfig.IPv4Address"),
        ipv6_address=as_str(ipam.field("IPv6Address"), "EndpointConfig.IPAMConfig.IPv6Address"),
        link_local_ips=as_str_list(ipam.field("LinkLocalIPs"), "EndpointConfig.IPAMConfig.LinkLocalIPs"),
        mac_address=as_str(ep.field("MacAddress"), "EndpointConfig.MacAddress"),
        driver_opts=_map(ep.field("DriverOpts"), "EndpointConfig.DriverOpts"),
    )


@dataclass(frozen=True, slots=True)
class VolumeCreate:
    """``POST /volumes/create`` (7.5): ``local`` with DriverOpts is a mount(8) of the host's choosing."""

    name: str  # "" = the daemon generates one
    driver: str
    driver_opts: Mapping[str, str]
    labels: Mapping[str, str]
    has_cluster_volume_spec: bool  # API >= 1.42 swarm cluster volume

    @property
    def effective_driver(self) -> str:
        return self.driver or "local"


def volume_create_view(body: GoObject) -> VolumeCreate:
    return VolumeCreate(
        name=as_str(body.field("Name"), "Name"),
        driver=as_str(body.field("Driver"), "Driver"),
        driver_opts=_map(body.field("DriverOpts"), "DriverOpts"),
        labels=_map(body.field("Labels"), "Labels"),
        has_cluster_volume_spec=as_object(body.field("ClusterVolumeSpec"), "ClusterVolumeSpec") is not None,
    )


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    target: str  # network name or ID ("host" gives the tasks the host network)
    aliases: tuple[str, ...]
    driver_opts: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PublishedPort:
    target_port: int
    published_port: int  # 0 = chosen by swarm
    protocol: str  # "tcp", "udp", "sctp"
    publish_mode: str  # "ingress" (every node, also for unknown names) or "host"


@dataclass(frozen=True, slots=True)
class PluginPrivilege:
    name: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """``TaskTemplate.PluginSpec``: installs a managed plugin on every node."""

    name: str
    remote: str
    disabled: bool
    privileges: tuple[PluginPrivilege, ...]
    env: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A swarm ``ServiceSpec`` (7.8): what every task container will get, without authz."""

    name: str
    image: str
    user: str
    groups: tuple[str, ...]
    command: tuple[str, ...]
    args: tuple[str, ...]
    mounts: tuple[MountSpec, ...]
    cap_add: tuple[str, ...]  # normalised like container CapAdd
    cap_drop: tuple[str, ...]
    seccomp_mode: str  # Privileges.Seccomp.Mode: "", "default", "unconfined", "custom"
    apparmor_mode: str  # Privileges.AppArmor.Mode: "", "default", "disabled"
    no_new_privileges: bool
    selinux_disable: bool
    selinux_type: str
    has_credential_spec: bool
    sysctls: Mapping[str, str]
    init: bool | None
    read_only: bool
    hosts: tuple[str, ...]
    secrets: tuple[str, ...]  # SecretName of each reference
    configs: tuple[str, ...]
    isolation: str
    networks: tuple[NetworkAttachment, ...]  # TaskTemplate.Networks, then the deprecated top-level list
    runtime: str  # TaskTemplate.Runtime: "", "container", "plugin", "attachment"
    plugin: PluginSpec | None
    network_attachment_container: str | None
    log_driver: str | None
    placement_constraints: tuple[str, ...]
    mode: str  # "replicated", "global", "replicated-job", "global-job", "" (replicated); plugins: global
    published_ports: tuple[PublishedPort, ...]


def _attachments(value: object, where: str) -> list[NetworkAttachment]:
    result = []
    for i, item in enumerate(as_list(value, where) or ()):
        here = f"{where}[{i}]"
        obj = _obj(item, here)
        result.append(
            NetworkAttachment(
                target=as_str(obj.field("Target"), f"{here}.Target"),
                aliases=as_str_list(obj.field("Aliases"), f"{here}.Aliases"),
                driver_opts=_map(obj.field("DriverOpts"), f"{here}.DriverOpts"),
            )
        )
    return result


def _reference_names(value: object, where: str, key: str) -> tuple[str, ...]:
    return tuple(
        as_str(_obj(item, f"{where}[{i}]").field(key), f"{where}[{i}].{key}")
        for i, item in enumerate(as_list(value, where) or ())
    )


def _plugin(value: object) -> PluginSpec | None:
    spec = as_object(value, "TaskTemplate.PluginSpec")
    if spec is None:
        return None
    w = "TaskTemplate.PluginSpec"
    privileges = tuple(
        PluginPrivilege(
            name=as_str(_obj(p, f"{w}.Privileges[{i}]").field("Name"), f"{w}.Privileges[{i}].Name"),
            values=as_str_list(_obj(p, f"{w}.Privileges[{i}]").field("Value"), f"{w}.Privileges[{i}].Value"),
        )
        for i, p in enumerate(as_list(spec.field("Privileges"), f"{w}.Privileges") or ())
    )
    return PluginSpec(
        name=as_str(spec.field("Name"), f"{w}.Name"),
        remote=as_str(spec.field("Remote"), f"{w}.Remote"),
        disabled=as_bool(spec.field("Disabled"), f"{w}.Disabled"),
        privileges=privileges,
        env=as_str_list(spec.field("Env"), f"{w}.Env"),
    )


def _mode(body: GoObject, runtime: str) -> str:
    """``ServiceSpecToGRPC``: at most one mode; plugin services are always global."""
    mode = _obj(body.field("Mode"), "Mode")
    names = {
        "Replicated": "replicated",
        "Global": "global",
        "ReplicatedJob": "replicated-job",
        "GlobalJob": "global-job",
    }
    found = [name for field, name in names.items() if as_object(mode.field(field), f"Mode.{field}") is not None]
    if len(found) > 1 or (runtime == "plugin" and found and found != ["global"]):
        raise BodyError(f"Mode: the daemon refuses {' and '.join(found)} for runtime {runtime or 'container'!r}")
    return "global" if runtime == "plugin" else (found[0] if found else "")


def _published_port(item: object, here: str) -> PublishedPort:
    port = _obj(item, here)
    protocol = go_upper(as_str(port.field("Protocol"), f"{here}.Protocol"))
    publish_mode = go_upper(as_str(port.field("PublishMode"), f"{here}.PublishMode"))
    return PublishedPort(
        target_port=as_int(port.field("TargetPort"), f"{here}.TargetPort", minimum=0, maximum=2**32 - 1),
        published_port=as_int(port.field("PublishedPort"), f"{here}.PublishedPort", minimum=0, maximum=2**32 - 1),
        # The daemon maps the upper-cased names onto enums; unknown names become the zero value.
        protocol=protocol.lower() if protocol in ("TCP", "UDP", "SCTP") else "tcp",
        publish_mode="host" if publish_mode == "HOST" else "ingress",
    )


def service_spec_view(body: GoObject) -> ServiceSpec:
    """Read a ``/services/create`` or ``/services/{id}/update`` body."""
    task = _obj(body.field("TaskTemplate"), "TaskTemplate")
    c = "TaskTemplate.ContainerSpec"
    spec = _obj(task.field("ContainerSpec"), c)
    privileges = _obj(spec.field("Privileges"), f"{c}.Privileges")
    p = f"{c}.Privileges"
    seccomp = _obj(privileges.field("Seccomp"), f"{p}.Seccomp")
    apparmor = _obj(privileges.field("AppArmor"), f"{p}.AppArmor")
    selinux = _obj(privileges.field("SELinuxContext"), f"{p}.SELinuxContext")
    attachment = as_object(task.field("NetworkAttachmentSpec"), "TaskTemplate.NetworkAttachmentSpec")
    log_driver = as_object(task.field("LogDriver"), "TaskTemplate.LogDriver")
    placement = _obj(task.field("Placement"), "TaskTemplate.Placement")
    endpoint = _obj(body.field("EndpointSpec"), "EndpointSpec")
    ports = as_list(endpoint.field("Ports"), "EndpointSpec.Ports") or ()
    runtime = as_str(task.field("Runtime"), "TaskTemplate.Runtime")
    return ServiceSpec(
        name=as_str(body.field("Name"), "Name"),
        image=as_str(spec.field("Image"), f"{c}.Image"),
        user=as_str(spec.field("User"), f"{c}.User"),
        groups=as_str_list(spec.field("Groups"), f"{c}.Groups"),
        command=as_str_list(spec.field("Command"), f"{c}.Command"),
        args=as_str_list(spec.field("Args"), f"{c}.Args"),
        mounts=tuple(
            parse_mount(m, f"{c}.Mounts[{i}]") for i, m in enumerate(as_list(spec.field("Mounts"), f"{c}.Mounts") or ())
        ),
        cap_add=tuple(normalise_capability(x) for x in as_str_list(spec.field("CapabilityAdd"), f"{c}.CapabilityAdd")),
        cap_drop=tuple(
            normalise_capability(x) for x in as_str_list(spec.field("CapabilityDrop"), f"{c}.CapabilityDrop")
        ),
        seccomp_mode=as_str(seccomp.field("Mode"), f"{p}.Seccomp.Mode"),
        apparmor_mode=as_str(apparmor.field("Mode"), f"{p}.AppArmor.Mode"),
        no_new_privileges=as_bool(privileges.field("NoNewPrivileges"), f"{p}.NoNewPrivileges"),
        selinux_disable=as_bool(selinux.field("Disable"), f"{p}.SELinuxContext.Disable"),
        selinux_type=as_str(selinux.field("Type"), f"{p}.SELinuxContext.Type"),
        has_credential_spec=as_object(privileges.field("CredentialSpec"), f"{p}.CredentialSpec") is not None,
        sysctls=_map(spec.field("Sysctls"), f"{c}.Sysctls"),
        init=as_opt_bool(spec.field("Init"), f"{c}.Init"),
        read_only=as_bool(spec.field("ReadOnly"), f"{c}.ReadOnly"),
        hosts=as_str_list(spec.field("Hosts"), f"{c}.Hosts"),
        secrets=_reference_names(spec.field("Secrets"), f"{c}.Secrets", "SecretName"),
        configs=_reference_names(spec.field("Configs"), f"{c}.Configs", "ConfigName"),
        isolation=as_str(spec.field("Isolation"), f"{c}.Isolation"),
        networks=tuple(
            _attachments(task.field("Networks"), "TaskTemplate.Networks")
            + _attachments(body.field("Networks"), "Networks")
        ),
        runtime=runtime,
        plugin=_plugin(task.field("PluginSpec")),
        network_attachment_container=None
        if attachment is None
        else as_str(attachment.field("ContainerID"), "TaskTemplate.NetworkAttachmentSpec.ContainerID"),
        log_driver=None if log_driver is None else as_str(log_driver.field("Name"), "TaskTemplate.LogDriver.Name"),
        placement_constraints=as_str_list(placement.field("Constraints"), "TaskTemplate.Placement.Constraints"),
        mode=_mode(body, runtime),
        published_ports=tuple(_published_port(p, f"EndpointSpec.Ports[{i}]") for i, p in enumerate(ports)),
    )
