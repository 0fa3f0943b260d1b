"""Parsers for HostConfig values shared by the container views: capabilities, security options,
port bindings, devices, and the field lists of the v20.10 API structs.

Each parser mirrors the daemon code named in its docstring; values the daemon refuses raise
``BodyError`` (a deny loses nothing the daemon would have done).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authz.errors import BodyError, RequestError
from authz.gojson import GoObject, as_int, as_list, as_object, as_str, as_str_list, as_str_map

__all__ = [
    "CONFIG_FIELDS",
    "HOST_CONFIG_FIELDS",
    "RESOURCES_FIELDS",
    "DeviceMapping",
    "DeviceRequest",
    "PortBinding",
    "SecurityOpt",
    "go_parse_bool",
    "go_upper",
    "normalise_capability",
    "parse_device_requests",
    "parse_devices",
    "parse_port_bindings",
    "parse_security_opt",
    "version_less",
]

# api/types/container/host_config.go at v20.10.24: Resources is embedded in HostConfig.
RESOURCES_FIELDS = (
    "CpuShares", "Memory", "NanoCpus", "CgroupParent", "BlkioWeight", "BlkioWeightDevice",
    "BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps",
    "CpuPeriod", "CpuQuota", "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems",
    "Devices", "DeviceCgroupRules", "DeviceRequests", "KernelMemory", "KernelMemoryTCP",
    "MemoryReservation", "MemorySwap", "MemorySwappiness", "OomKillDisable", "PidsLimit", "Ulimits",
    "CpuCount", "CpuPercent", "IOMaximumIOps", "IOMaximumBandwidth",
)  # fmt: skip
HOST_CONFIG_FIELDS = (
    "Binds", "ContainerIDFile", "LogConfig", "NetworkMode", "PortBindings", "RestartPolicy",
    "AutoRemove", "VolumeDriver", "VolumesFrom", "CapAdd", "CapDrop", "CgroupnsMode", "Dns",
    "DnsOptions", "DnsSearch", "ExtraHosts", "GroupAdd", "IpcMode", "Cgroup", "Links", "OomScoreAdj",
    "PidMode", "Privileged", "PublishAllPorts", "ReadonlyRootfs", "SecurityOpt", "StorageOpt", "Tmpfs",
    "UTSMode", "UsernsMode", "ShmSize", "Sysctls", "Runtime", "ConsoleSize", "Isolation",
    *RESOURCES_FIELDS,
    "Mounts", "MaskedPaths", "ReadonlyPaths", "Init",
)  # fmt: skip
# api/types/container/config.go at v20.10.24 (the top level of a create body).
CONFIG_FIELDS = (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts",
    "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes",
    "WorkingDir", "Entrypoint", "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
    "StopTimeout", "Shell",
)  # fmt: skip

_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def version_less(version: str | None, than: str) -> bool:
    """``versions.LessThan``: dotted numeric comparison; ``None`` is the newest version."""
    if version is None:
        return False
    return _version_less(version, than)


@functools.lru_cache(maxsize=256)  # a few versions in use; a create asks twice
def _version_less(version: str, than: str) -> bool:
    if not _VERSION.fullmatch(version):
        raise RequestError(f"invalid API version {version!r}")
    mine = [int(p) for p in version.split(".")]
    theirs = [int(p) for p in than.split(".")]
    width = max(len(mine), len(theirs))
    mine += [0] * (width - len(mine))
    theirs += [0] * (width - len(theirs))
    return mine < theirs


def go_parse_bool(text: str, where: str) -> bool:
    """``strconv.ParseBool``: the only spellings Go accepts."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise BodyError(f"{where}: {text!r} is not a boolean")


def go_upper(text: str) -> str:
    """``strings.ToUpper``: rune by rune (U+017F → S), never expanding (ß stays ß; Python: SS)."""
    if text.isascii():
        return text.upper()
    return "".join(up if len(up := ch.upper()) == 1 else ch for ch in text)


def normalise_capability(name: str) -> str:
    """A CapAdd/CapDrop entry as policy names it: upper case, no ``CAP_`` prefix, ``ALL`` kept.

    Mirrors ``caps.NormalizeLegacyCapabilities`` (upper-case, then ``ALL``, then the prefix).
    ``CAP_ALL`` stays as it is: the daemon refuses it as an unknown capability.
    """
    upper = go_upper(name)
    if upper.startswith("CAP_") and upper != "CAP_ALL":
        return upper[4:]
    return upper


@dataclass(frozen=True, slots=True)
class SecurityOpt:
    """One ``SecurityOpt`` entry split the way ``parseSecurityOpt`` splits it."""

    raw: str
    key: str  # label, apparmor, seccomp, no-new-privileges, writable-cgroups, or unknown
    value: str


def parse_security_opt(raw: str) -> SecurityOpt:
    """Bare ``no-new-privileges``/``writable-cgroups`` mean true, bare ``disable`` is a label;
    otherwise split at the first ``=`` if there is one, else at the first ``:`` (deprecated).
    Boolean options must be spelled as ``strconv.ParseBool`` accepts."""
    if raw in ("no-new-privileges", "writable-cgroups"):
        return SecurityOpt(raw, raw, "true")
    if raw == "disable":
        return SecurityOpt(raw, "label", "disable")
    separator = "=" if "=" in raw else ":" if ":" in raw else None
    if separator is None:
        # The daemon refuses it ("invalid --security-opt 1").
        raise BodyError(f"invalid SecurityOpt {raw!r}: expected key=value")
    key, _, value = raw.partition(separator)
    if key in ("no-new-privileges", "writable-cgroups"):
        go_parse_bool(value, f"SecurityOpt {raw!r}")  # the daemon refuses other spellings
    return SecurityOpt(raw, key, value)


@dataclass(frozen=True, slots=True)
class PortBinding:
    """One host binding of a container port. ``host_port_start`` ``None``: a random host port."""

    container_port: str  # the PortBindings key as sent, e.g. "80/tcp"
    host_ip: str
    host_port: str  # as sent
    host_port_start: int | None
    host_port_end: int | None


def _parse_uint16(text: str, where: str) -> int:
    # strconv.ParseUint(s, 10, 16): ASCII digits only, no sign, no underscores.
    if not _DIGITS.fullmatch(text) or int(text) > 65535:
        raise BodyError(f"{where}: invalid port {text!r}")
    return int(text)


def _host_port_range(host_port: str, where: str) -> tuple[int | None, int | None]:
    """``nat.NewPort(nat.SplitProtoPort(HostPort))`` then ``Range()``, as the daemon binds ports."""
    parts = host_port.split("/")
    port = "" if host_port == "" or parts[0] == "" else parts[0]  # a "/proto" suffix is ignored
    if port == "":
        return None, None
    if "-" not in port:
        start = end = _parse_uint16(port, where)
    else:
        pieces = port.split("-")  # Go reads only the first two pieces of "a-b-c"
        start, end = _parse_uint16(pieces[0], where), _parse_uint16(pieces[1], where)
        if end < start:
            raise BodyError(f"{where}: invalid port range {host_port!r}")
    if start == 0 and end == 0:
        return None, None  # port 0: the kernel picks one, like an empty HostPort
    return start, end


def parse_port_bindings(value: Any, where: str) -> tuple[PortBinding, ...]:
    """``nat.PortMap``: ``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``."""
    ports = as_object(value, where)
    if ports is None:
        return ()
    result: list[PortBinding] = []
    for key, bindings in ports.items():
        for i, item in enumerate(as_list(bindings, f"{where}.{key}") or ()):
            here = f"{where}.{key}[{i}]"
            binding = as_object(item, here) or GoObject()
            host_port = as_str(binding.field("HostPort"), f"{here}.HostPort")
            start, end = _host_port_range(host_port, f"{here}.HostPort")
            host_ip = as_str(binding.field("HostIp"), f"{here}.HostIp")
            result.append(PortBinding(key, host_ip, host_port, start, end))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class DeviceMapping:
    path_on_host: str
    path_in_container: str
    cgroup_permissions: str


def parse_devices(value: Any, where: str) -> tuple[DeviceMapping, ...]:
    result = []
    for i, item in enumerate(as_list(value, where) or ()):
        here = f"{where}[{i}]"
        obj = as_object(item, here) or GoObject()
        result.append(
            DeviceMapping(
                as_str(obj.field("PathOnHost"), f"{here}.PathOnHost"),
                as_str(obj.field("PathInContainer"), f"{here}.PathInContainer"),
                as_str(obj.field("CgroupPermissions"), f"{here}.CgroupPermissions"),
            )
        )
    return tuple(result)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """``--gpus``: the CLI sends ``Count: -1`` (all) and ``Capabilities: [["gpu"]]``."""

    driver: str
    count: int
    device_ids: tuple[str, ...]
    capabilities: tuple[tuple[str, ...], ...]
    options: Mapping[str, str]


def parse_device_requests(value: Any, where: str) -> tuple[DeviceRequest, ...]:
    result = []
    for i, item in enumerate(as_list(value, where) or ()):
        here = f"{where}[{i}]"
        obj = as_object(item, here) or GoObject()
        caps = as_list(obj.field("Capabilities"), f"{here}.Capabilities") or ()
        result.append(
            DeviceRequest(
                driver=as_str(obj.field("Driver"), f"{here}.Driver"),
                count=as_int(obj.field("Count"), f"{here}.Count"),
                device_ids=as_str_list(obj.field("DeviceIDs"), f"{here}.DeviceIDs"),
                capabilities=tuple(as_str_list(group, f"{here}.Capabilities[{j}]") for j, group in enumerate(caps)),
                options=MappingProxyType(as_str_map(obj.field("Options"), f"{here}.Options")),
            )
        )
    return tuple(result)
