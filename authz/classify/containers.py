"""Typed views of ``POST /containers/create`` and ``POST /containers/{id}/update`` bodies.

``container_create_view`` computes the configuration the daemon will *apply*, following moby
v20.10 ``runconfig/config_unix.go`` (``ContainerConfigWrapper.getHostConfig``) and the create
handler (``postContainersCreate``):

* the body embeds ``container.Config`` and, for old clients, ``*container.HostConfig`` at the top
  level; when ``HostConfig`` is absent the top-level HostConfig fields are the HostConfig (B5);
* when ``HostConfig`` is present only ``Memory``, ``MemorySwap``, ``CpuShares``, ``CpusetCpus`` and
  ``VolumeDriver`` are copied in from the top level, each only where the inner value is zero, and
  the top-level ``Cpuset`` fills an empty ``CpusetCpus``;
* an empty ``NetworkMode`` becomes ``default``; API < 1.40 drops ``BindOptions.NonRecursive`` and
  defaults ``IpcMode`` to ``shareable``; API < 1.41 defaults ``CgroupnsMode`` to ``host`` (on cgroup
  v1 hosts; we cannot see the host, so we assume the wider one); ``PidsLimit <= 0`` means no limit.

The views make no policy decision; values the daemon would refuse raise ``BodyError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from authz.classify.hostconfig import (
    HOST_CONFIG_FIELDS,
    RESOURCES_FIELDS,
    DeviceMapping,
    DeviceRequest,
    PortBinding,
    SecurityOpt,
    go_parse_bool,
    normalise_capability,
    parse_device_requests,
    parse_devices,
    parse_port_bindings,
    parse_security_opt,
    version_less,
)
from authz.classify.mounts import (
    BindSpec,
    MountSpec,
    VolumesFrom,
    normalise_host_path,
    parse_bind,
    parse_mount,
    parse_volumes_from,
)
from authz.gojson import (
    GoObject,
    as_bool,
    as_int,
    as_list,
    as_object,
    as_opt_bool,
    as_opt_int,
    as_str,
    as_str_list,
    as_str_map,
    as_strslice,
)

__all__ = [
    "BindSpec",
    "ContainerCreate",
    "ContainerUpdate",
    "DeviceMapping",
    "DeviceRequest",
    "Endpoint",
    "LogConfig",
    "MountSpec",
    "PortBinding",
    "RestartPolicy",
    "SecurityOpt",
    "VolumesFrom",
    "container_create_view",
    "container_update_view",
    "normalise_host_path",
]

_HOST_CONFIG_KEYS = {name.lower(): name for name in HOST_CONFIG_FIELDS}
_UPDATE_KEYS = {name.lower(): name for name in (*RESOURCES_FIELDS, "RestartPolicy")}
# getHostConfig copies these from the top level into a present inner HostConfig when zero there.
_COPIED_FROM_TOP = ("Memory", "MemorySwap", "CpuShares", "CpusetCpus", "VolumeDriver")


@dataclass(frozen=True, slots=True)
class LogConfig:
    type: str  # "" = the daemon's default log driver
    config: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``NetworkingConfig.EndpointsConfig`` entry (the network is attached as well)."""

    network: str
    aliases: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    ipv4_address: str = ""
    ipv6_address: str = ""
    mac_address: str = ""
    driver_opts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    name: str
    maximum_retry_count: int


@dataclass(frozen=True, slots=True)
class ContainerCreate:
    """The effective configuration of a create request, as the daemon will apply it."""

    image: str
    user: str
    group_add: tuple[str, ...]
    privileged: bool
    cap_add: tuple[str, ...]  # normalised: upper case, no CAP_ prefix, "ALL" kept
    cap_drop: tuple[str, ...]
    binds: tuple[BindSpec, ...]
    mounts: tuple[MountSpec, ...]
    volumes_from: tuple[VolumesFrom, ...]
    links: tuple[str, ...]  # HostConfig.Links as sent: "name", "name:alias" or "/name:/c/alias"
    volume_driver: str
    network_mode: str  # "default" when empty
    pid_mode: str
    ipc_mode: str
    uts_mode: str
    userns_mode: str
    cgroupns_mode: str  # "" = the daemon's default (host on cgroup v1 hosts, private on v2)
    cgroup: str
    cgroup_parent: str
    security_opt: tuple[SecurityOpt, ...]
    masked_paths: tuple[str, ...] | None  # None: daemon defaults; (): no masking at all
    readonly_paths: tuple[str, ...] | None
    devices: tuple[DeviceMapping, ...]
    device_cgroup_rules: tuple[str, ...]
    device_requests: tuple[DeviceRequest, ...]
    port_bindings: tuple[PortBinding, ...]
    publish_all_ports: bool
    exposed_ports: tuple[str, ...]
    sysctls: Mapping[str, str]
    runtime: str  # "" = the daemon's default runtime
    memory: int
    memory_swap: int
    nano_cpus: int
    cpu_quota: int
    cpu_period: int
    cpu_shares: int
    cpuset_cpus: str
    pids_limit: int | None  # None: no limit (absent, or <= 0, which the daemon reads as unlimited)
    oom_kill_disable: bool
    readonly_rootfs: bool
    log_config: LogConfig
    endpoints: tuple[Endpoint, ...]
    unknown_host_config_keys: tuple[str, ...]  # inner HostConfig keys that are no 20.10 field
    top_level_host_config_keys: tuple[str, ...]  # HostConfig fields (and Cpuset) at the top level

    @property
    def host_config_from_top_level(self) -> bool:
        return bool(self.top_level_host_config_keys)

    def security_values(self, key: str) -> tuple[str, ...]:
        """Every value given for a SecurityOpt key, in order (the daemon keeps the last one)."""
        return tuple(opt.value for opt in self.security_opt if opt.key == key)

    @property
    def seccomp_profile(self) -> str | None:
        values = self.security_values("seccomp")
        return values[-1] if values else None

    @property
    def apparmor_profile(self) -> str | None:
        values = self.security_values("apparmor")
        return values[-1] if values else None

    @property
    def no_new_privileges(self) -> bool:
        values = self.security_values("no-new-privileges")
        return go_parse_bool(values[-1], "SecurityOpt no-new-privileges") if values else False


def _keys_among(obj: GoObject, lowered: Set[str]) -> tuple[str, ...]:
    """The keys of ``obj`` whose lower-case form is in ``lowered``, in key order (set operations
    in C first: a create body has ~60 HostConfig keys and usually none to report)."""
    folded = obj.folded_keys()
    hits = folded.keys() & lowered
    return tuple(key for low, key in folded.items() if low in hits) if hits else ()


def _effective_host_config(body: GoObject) -> tuple[GoObject | None, tuple[str, ...]]:
    """The HostConfig object getHostConfig yields, and the HostConfig keys found at the top level."""
    top_keys = _keys_among(body, _HOST_CONFIG_KEYS.keys())
    top_folded = body.folded_keys()
    cpuset_keys = (top_folded["cpuset"],) if "cpuset" in top_folded else ()
    inner = as_object(body.field("HostConfig"), "HostConfig")
    if inner is None:
        # Go allocates the embedded top-level HostConfig as soon as one of its keys appears.
        hc = GoObject((key, body[key]) for key in top_keys) if top_keys else None
    else:
        hc = inner  # copied only when a top-level value is carried in (the CLI never does that)
        for name in _COPIED_FROM_TOP:
            top_value = body.field(name)
            if top_value and not inner.field(name):  # non-zero on top, zero (or absent) inside
                merged = dict(hc)
                merged.pop(hc.folded_keys().get(name.lower(), name), None)
                merged[name] = top_value
                hc = GoObject(merged)
    cpuset = as_str(body.field("Cpuset"), "Cpuset")
    if hc is not None and cpuset and not hc.field("CpusetCpus"):
        merged = {key: value for key, value in hc.items() if key.lower() != "cpusetcpus"}
        merged["CpusetCpus"] = cpuset
        hc = GoObject(merged)
    return hc, top_keys + cpuset_keys


def _endpoints(body: GoObject) -> tuple[Endpoint, ...]:
    networking = as_object(body.field("NetworkingConfig"), "NetworkingConfig")
    where = "NetworkingConfig.EndpointsConfig"
    configs = None if networking is None else as_object(networking.field("EndpointsConfig"), where)
    result = []
    for name, value in (configs or GoObject()).items():
        here = f"{where}.{name}"
        ep = as_object(value, here) or GoObject()
        ipam = as_object(ep.field("IPAMConfig"), f"{here}.IPAMConfig") or GoObject()
        result.append(
            Endpoint(
                network=name,
                aliases=as_str_list(ep.field("Aliases"), f"{here}.Aliases"),
                links=as_str_list(ep.field("Links"), f"{here}.Links"),
                ipv4_address=as_str(ipam.field("IPv4Address"), f"{here}.IPAMConfig.IPv4Address"),
                ipv6_address=as_str(ipam.field("IPv6Address"), f"{here}.IPAMConfig.IPv6Address"),
                mac_address=as_str(ep.field("MacAddress"), f"{here}.MacAddress"),
                driver_opts=MappingProxyType(as_str_map(ep.field("DriverOpts"), f"{here}.DriverOpts")),
            )
        )
    return tuple(result)


def _opt_paths(value: object, where: str) -> tuple[str, ...] | None:
    # null and absent leave the daemon's defaults; [] (what systempaths=unconfined sends) removes them.
    return None if as_list(value, where) is None else as_str_list(value, where)


def container_create_view(body: GoObject, api_version: str | None) -> ContainerCreate:
    """The effective configuration of a create body (see the module docstring for the rules)."""
    hc, top_keys = _effective_host_config(body)
    hc = hc if hc is not None else GoObject()
    field = hc.fields()  # ~40 lookups per create
    inner = as_object(body.field("HostConfig"), "HostConfig")
    unknown = () if inner is None else _keys_among(inner, inner.folded_keys().keys() - _HOST_CONFIG_KEYS.keys())
    volume_driver = as_str(field("VolumeDriver"), "HostConfig.VolumeDriver")
    old_mounts = version_less(api_version, "1.40")
    pids = as_opt_int(field("PidsLimit"), "HostConfig.PidsLimit")
    log = as_object(field("LogConfig"), "HostConfig.LogConfig") or GoObject()
    ipc_mode = as_str(field("IpcMode"), "HostConfig.IpcMode")
    cgroupns_mode = as_str(field("CgroupnsMode"), "HostConfig.CgroupnsMode")
    return ContainerCreate(
        image=as_str(body.field("Image"), "Image"),
        user=as_str(body.field("User"), "User"),
        group_add=as_str_list(field("GroupAdd"), "HostConfig.GroupAdd"),
        privileged=as_bool(field("Privileged"), "HostConfig.Privileged"),
        cap_add=tuple(normalise_capability(c) for c in as_strslice(field("CapAdd"), "HostConfig.CapAdd")),
        cap_drop=tuple(normalise_capability(c) for c in as_strslice(field("CapDrop"), "HostConfig.CapDrop")),
        binds=tuple(parse_bind(b, volume_driver) for b in as_str_list(field("Binds"), "HostConfig.Binds")),
        mounts=tuple(
            parse_mount(m, f"HostConfig.Mounts[{i}]", ignore_non_recursive=old_mounts)
            for i, m in enumerate(as_list(field("Mounts"), "HostConfig.Mounts") or ())
        ),
        volumes_from=tuple(parse_volumes_from(v) for v in as_str_list(field("VolumesFrom"), "HostConfig.VolumesFrom")),
        links=as_str_list(field("Links"), "HostConfig.Links"),
        volume_driver=volume_driver,
        network_mode=as_str(field("NetworkMode"), "HostConfig.NetworkMode") or "default",
        pid_mode=as_str(field("PidMode"), "HostConfig.PidMode"),
        ipc_mode=ipc_mode or ("shareable" if old_mounts else ""),
        uts_mode=as_str(field("UTSMode"), "HostConfig.UTSMode"),
        userns_mode=as_str(field("UsernsMode"), "HostConfig.UsernsMode"),
        # Old clients get "host" on cgroup v1 hosts; assume v1, the wider of the two.
        cgroupns_mode=cgroupns_mode or ("host" if version_less(api_version, "1.41") else ""),
        cgroup=as_str(field("Cgroup"), "HostConfig.Cgroup"),
        cgroup_parent=as_str(field("CgroupParent"), "HostConfig.CgroupParent"),
        security_opt=tuple(parse_security_opt(s) for s in as_str_list(field("SecurityOpt"), "HostConfig.SecurityOpt")),
        masked_paths=_opt_paths(field("MaskedPaths"), "HostConfig.MaskedPaths"),
        readonly_paths=_opt_paths(field("ReadonlyPaths"), "HostConfig.ReadonlyPaths"),
        devices=parse_devices(field("Devices"), "HostConfig.Devices"),
        device_cgroup_rules=as_str_list(field("DeviceCgroupRules"), "HostConfig.DeviceCgroupRules"),
        device_requests=parse_device_requests(field("DeviceRequests"), "HostConfig.DeviceRequests"),
        port_bindings=parse_port_bindings(field("PortBindings"), "HostConfig.PortBindings"),
        publish_all_ports=as_bool(field("PublishAllPorts"), "HostConfig.PublishAllPorts"),
        exposed_ports=tuple(as_object(body.field("ExposedPorts"), "ExposedPorts") or ()),
        sysctls=MappingProxyType(as_str_map(field("Sysctls"), "HostConfig.Sysctls")),
        runtime=as_str(field("Runtime"), "HostConfig.Runtime"),
        memory=as_int(field("Memory"), "HostConfig.Memory"),
        memory_swap=as_int(field("MemorySwap"), "HostConfig.MemorySwap"),
        nano_cpus=as_int(field("NanoCpus"), "HostConfig.NanoCpus"),
        cpu_quota=as_int(field("CpuQuota"), "HostConfig.CpuQuota"),
        cpu_period=as_int(field("CpuPeriod"), "HostConfig.CpuPeriod"),
        cpu_shares=as_int(field("CpuShares"), "HostConfig.CpuShares"),
        cpuset_cpus=as_str(field("CpusetCpus"), "HostConfig.CpusetCpus"),
        pids_limit=pids if pids is not None and pids > 0 else None,
        oom_kill_disable=as_bool(field("OomKillDisable"), "HostConfig.OomKillDisable"),
        readonly_rootfs=as_bool(field("ReadonlyRootfs"), "HostConfig.ReadonlyRootfs"),
        log_config=LogConfig(
            type=as_str(log.field("Type"), "HostConfig.LogConfig.Type"),
            config=MappingProxyType(as_str_map(log.field("Config"), "HostConfig.LogConfig.Config")),
        ),
        endpoints=_endpoints(body),
        unknown_host_config_keys=unknown,
        top_level_host_config_keys=top_keys,
    )


@dataclass(frozen=True, slots=True)
class ContainerUpdate:
    """``POST /containers/{id}/update``: ``Resources`` + ``RestartPolicy`` (docker-authz.md 7.2).

    Zero means "leave unchanged" for the numeric limits (the daemon only copies non-zero values);
    ``pids_limit`` ``None`` leaves it unchanged and ``0`` removes the limit.
    """

    memory: int
    memory_swap: int
    memory_reservation: int
    kernel_memory: int
    nano_cpus: int
    cpu_shares: int
    cpu_period: int
    cpu_quota: int
    cpu_realtime_period: int
    cpu_realtime_runtime: int
    cpuset_cpus: str
    cpuset_mems: str
    blkio_weight: int
    pids_limit: int | None
    oom_kill_disable: bool | None
    cgroup_parent: str  # not applied by 20.10's update, reported for rules that refuse it anyway
    devices: tuple[DeviceMapping, ...]  # likewise ignored by the daemon on update
    device_cgroup_rules: tuple[str, ...]
    device_requests: tuple[DeviceRequest, ...]
    restart_policy: RestartPolicy | None  # None: absent (the daemon keeps the current one)
    unknown_keys: tuple[str, ...]


def container_update_view(body: GoObject, api_version: str | None = None) -> ContainerUpdate:
    """Read an update body; API < 1.40 ignores ``PidsLimit`` and ``<= 0`` means unlimited (0)."""

    def i(name: str) -> int:
        return as_int(body.field(name), name)

    pids = None if version_less(api_version, "1.40") else as_opt_int(body.field("PidsLimit"), "PidsLimit")
    restart = as_object(body.field("RestartPolicy"), "RestartPolicy")
    return ContainerUpdate(
        memory=i("Memory"),
        memory_swap=i("MemorySwap"),
        memory_reservation=i("MemoryReservation"),
        kernel_memory=i("KernelMemory"),
        nano_cpus=i("NanoCpus"),
        cpu_shares=i("CpuShares"),
        cpu_period=i("CpuPeriod"),
        cpu_quota=i("CpuQuota"),
        cpu_realtime_period=i("CpuRealtimePeriod"),
        cpu_realtime_runtime=i("CpuRealtimeRuntime"),
        cpuset_cpus=as_str(body.field("CpusetCpus"), "CpusetCpus"),
        cpuset_mems=as_str(body.field("CpusetMems"), "CpusetMems"),
        blkio_weight=as_int(body.field("BlkioWeight"), "BlkioWeight", minimum=0, maximum=65535),
        pids_limit=None if pids is None else max(pids, 0),
        oom_kill_disable=as_opt_bool(body.field("OomKillDisable"), "OomKillDisable"),
        cgroup_parent=as_str(body.field("CgroupParent"), "CgroupParent"),
        devices=parse_devices(body.field("Devices"), "Devices"),
        device_cgroup_rules=as_str_list(body.field("DeviceCgroupRules"), "DeviceCgroupRules"),
        device_requests=parse_device_requests(body.field("DeviceRequests"), "DeviceRequests"),
        restart_policy=None
        if restart is None
        else RestartPolicy(
            name=as_str(restart.field("Name"), "RestartPolicy.Name"),
            maximum_retry_count=as_int(restart.field("MaximumRetryCount"), "RestartPolicy.MaximumRetryCount"),
        ),
        unknown_keys=tuple(key for key in body if key.lower() not in _UPDATE_KEYS),
    )
