"""``docker network …`` and ``docker volume …`` → Engine API requests (bodies as CLI 28 sends them,
captures ``network-create*``, ``network-connect*``, ``volume-create*``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from admin.apicalls import ApiCall, fake_id, path
from admin.cliflags import CommandError, flags, parse

__all__ = ["network_command", "volume_command"]

_NETWORK_CREATE = flags("-d,driver= internal attachable ingress subnet=* gateway=* ip-range=* -o,opt=* label=*")
_NETWORK_CONNECT = flags("alias=* ip=")
_VOLUME_CREATE = flags("-d,driver= -o,opt=* label=* name=")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise CommandError(f"{flag}: expected key=value, got {item!r}")
        out[key] = value
    return out


def _network_create(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, _NETWORK_CREATE, "network create")
    if len(rest) != 1:
        raise CommandError("docker network create: give exactly one network name")
    name = rest[0]
    subnets, gateways, ranges = opts["subnet"], opts["gateway"], opts["ip_range"]
    if len(gateways) > len(subnets) or len(ranges) > len(subnets):
        raise CommandError("docker network create: every --gateway and --ip-range needs its --subnet")
    pools: list[dict[str, Any]] = []
    for index, subnet in enumerate(subnets):
        pool: dict[str, Any] = {"Subnet": subnet}
        if index < len(ranges):
            pool["IPRange"] = ranges[index]
        if index < len(gateways):
            pool["Gateway"] = gateways[index]
        pools.append(pool)
    body = {
        "Driver": opts["driver"] or "bridge", "Scope": "",
        "IPAM": {"Driver": "default", "Options": {}, "Config": pools},
        "Internal": bool(opts["internal"]), "Attachable": bool(opts["attachable"]), "Ingress": bool(opts["ingress"]),
        "ConfigOnly": False, "ConfigFrom": None, "Options": _pairs(opts["opt"], "--opt"),
        "Labels": _pairs(opts["label"], "--label"), "Name": name, "CheckDuplicate": True,
    }  # fmt: skip
    creates = ("network", fake_id("network", name), name)
    return [ApiCall("POST", "/networks/create", body, creates=creates, what=f"create network {name}")]


def _network_connect(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, _NETWORK_CONNECT, "network connect")
    if len(rest) != 2:
        raise CommandError("docker network connect: give a network and a container")
    network, container = rest
    endpoint = {
        "IPAMConfig": {"IPv4Address": opts["ip"]} if opts["ip"] else {}, "Links": None,
        "Aliases": list(opts["alias"]), "MacAddress": "", "DriverOpts": {}, "GwPriority": 0, "NetworkID": "",
        "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": None,
    }  # fmt: skip
    body = {"Container": container, "EndpointConfig": endpoint}
    return [ApiCall("POST", path("networks", network, "connect"), body, what=f"connect {container} to {network}")]


def _volume_create(args: list[str]) -> list[ApiCall]:
    opts, rest = parse(args, _VOLUME_CREATE, "volume create")
    if len(rest) > 1 or (rest and opts["name"]):
        raise CommandError("docker volume create: give at most one volume name")
    name = rest[0] if rest else opts["name"] or ""
    body: dict[str, Any] = {"Driver": opts["driver"] or "local"}
    if opts["opt"]:
        body["DriverOpts"] = _pairs(opts["opt"], "--opt")
    if opts["label"]:
        body["Labels"] = _pairs(opts["label"], "--label")
    if name:
        body["Name"] = name
    volume_id = name or fake_id("volume", *args)
    return [ApiCall("POST", "/volumes/create", body, creates=("volume", volume_id, name or None),
                    what=f"create volume {name or '(anonymous)'}")]  # fmt: skip


def _network_rm(args: list[str]) -> list[ApiCall]:
    """The CLI inspects each network before deleting it (captures ``network-rm-*``)."""
    _opts, names = parse(args, flags("-f,force"), "network rm")
    if not names:
        raise CommandError("docker network rm: give at least one name")
    calls = []
    for name in names:
        calls.append(ApiCall("GET", path("networks", name), what=f"inspect network {name}"))
        calls.append(ApiCall("DELETE", path("networks", name), what=f"remove network {name}"))
    return calls


def _volume_rm(args: list[str]) -> list[ApiCall]:
    opts, names = parse(args, flags("-f,force"), "volume rm")
    if not names:
        raise CommandError("docker volume rm: give at least one name")
    query = "?force=1" if opts["force"] else ""
    return [ApiCall("DELETE", path("volumes", name) + query, what=f"remove volume {name}") for name in names]


def _list(path_: str, what: str) -> Callable[[list[str]], list[ApiCall]]:
    def handler(args: list[str]) -> list[ApiCall]:
        _opts, rest = parse(args, flags("-q,quiet"), what)
        if rest:
            raise CommandError(f"docker {what}: unexpected argument {rest[0]!r}")
        return [ApiCall("GET", path_, what=what)]

    return handler


_NETWORK: dict[str, Callable[[list[str]], list[ApiCall]]] = {
    "create": _network_create,
    "connect": _network_connect,
    "rm": _network_rm,
    "ls": _list("/networks", "network ls"),
}
_VOLUME: dict[str, Callable[[list[str]], list[ApiCall]]] = {
    "create": _volume_create,
    "rm": _volume_rm,
    "ls": _list("/volumes", "volume ls"),
}


def _family(kind: str, table: dict[str, Callable[[list[str]], list[ApiCall]]]) -> Callable[[list[str]], list[ApiCall]]:
    def handler(args: list[str]) -> list[ApiCall]:
        if not args or args[0] not in table:
            raise CommandError(f"docker {kind}: supported sub-commands are {', '.join(table)}")
        return table[args[0]](args[1:])

    return handler


network_command = _family("network", _NETWORK)
volume_command = _family("volume", _VOLUME)
