"""``docker run`` / ``docker create`` flags → the ``POST /containers/create`` body the CLI sends.

The body starts from what docker CLI 28.2.2 sends for a bare ``docker create IMAGE`` (captured,
``captures/create__02``) and each flag changes the fields it changes there (captures
``run-*``/``create-*``; the tests compare against them). Flags the simulator does not model are
refused by ``admin.cliflags``, so a body never silently lacks something the user asked for.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from admin.cliflags import CommandError, flags

__all__ = ["RUN_FLAGS", "create_body", "parse_bytes"]

RUN_FLAGS = flags(
    "-d,detach -i,interactive -t,tty rm privileged -P,publish-all init read-only oom-kill-disable "
    "name= -w,workdir= entrypoint= restart= -h,hostname= domainname= -u,user= network= net= pid= ipc= uts= "
    "userns= cgroupns= -m,memory= memory-swap= cpus= pids-limit= runtime= platform= shm-size= -c,cpu-shares= "
    "stop-signal= pull= log-driver= cgroup-parent= gpus= cpuset-cpus= oom-score-adj= blkio-weight= "
    "-e,env=* -l,label=* -v,volume=* mount=* cap-add=* cap-drop=* -p,publish=* expose=* device=* "
    "security-opt=* sysctl=* tmpfs=* volumes-from=* group-add=* add-host=* dns=* log-opt=* "
    "device-cgroup-rule=* storage-opt=* ulimit=*"
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_DEVICE_MODE = re.compile(r"^(?!.*(.).*\1)[rwm]+$")  # r, w, m, each at most once


def base_body(image: str, cmd: list[str]) -> dict[str, Any]:
    """The CLI's body for ``docker create IMAGE CMD…`` with no flags (API 1.41)."""
    host_config: dict[str, Any] = {
        "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}}, "NetworkMode": "default",
        "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": False,
        "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None, "CapDrop": None,
        "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None,
        "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "Privileged": False,
        "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
        "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "",
        "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [],
        "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": [],
        "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0, "MemorySwap": 0,
        "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": 0, "Ulimits": [], "CpuCount": 0,
        "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": None, "ReadonlyPaths": None,
    }  # fmt: skip
    return {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": True,
        "AttachStderr": True, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None,
        "Cmd": cmd or None, "Image": image, "Volumes": {}, "WorkingDir": "", "Entrypoint": None, "OnBuild": None,
        "Labels": {}, "HostConfig": host_config, "NetworkingConfig": {"EndpointsConfig": {}},
    }  # fmt: skip


def parse_bytes(text: str, flag: str) -> int:
    """``64m`` → 67108864 (docker's RAMInBytes: binary units, optional ``b``/``ib``)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise CommandError(f"{flag}: invalid size {text!r} (use e.g. 512m or 4g)")
    return int(Decimal(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"{flag}: expected a whole number, got {text!r}") from None


def _nano_cpus(text: str) -> int:
    try:
        value = Decimal(text) * 1_000_000_000
    except InvalidOperation:
        raise CommandError(f"--cpus: invalid value {text!r}") from None
    if value != value.to_integral_value() or value < 0:
        raise CommandError(f"--cpus: value is too precise or negative: {text!r}")
    return int(value)


def _pairs(items: list[str], flag: str, need_value: bool = True) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or (need_value and not eq):
            raise CommandError(f"{flag}: expected key=value, got {item!r}")
        out[key] = value
    return out


def _capability(name: str) -> str:
    upper = name.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else f"CAP_{upper}"


def _port(spec: str, body: dict[str, Any]) -> None:
    """``[ip:][hostPort:]containerPort[/proto]`` → ExposedPorts and PortBindings."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    ip = ""
    if rest.startswith("["):  # [::1]:8080:80
        ip, _, rest = rest[1:].partition("]")
        rest = rest.removeprefix(":")
    parts = rest.split(":")
    if len(parts) == 3:
        ip, host, container = parts
    elif len(parts) == 2:
        host, container = parts
    elif len(parts) == 1:
        host, container = "", parts[0]
    else:
        raise CommandError(f"-p: invalid port specification {spec!r}")
    low, _, high = container.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise CommandError(f"-p: invalid container port {container!r}")
    container_ports = list(range(int(low), int(high or low) + 1))
    host_low, _, host_high = host.partition("-")
    for offset, port in enumerate(container_ports):
        # A host range maps one by one onto a container range; otherwise the host spec is passed on.
        host_port = str(int(host_low) + offset) if host_high and len(container_ports) > 1 else host
        key = f"{port}/{proto}"
        body.setdefault("ExposedPorts", {})[key] = {}
        body["HostConfig"]["PortBindings"].setdefault(key, []).append({"HostIp": ip, "HostPort": host_port})


def _mount(spec: str) -> dict[str, Any]:
    """``--mount type=bind,source=/x,target=/y,readonly`` → a HostConfig.Mounts entry."""
    mount: dict[str, Any] = {}
    volume_opts: dict[str, str] = {}
    driver = ""
    for field in spec.split(","):
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if key == "type":
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "dst", "destination"):
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            if not eq or value.lower() in ("1", "true"):
                mount["ReadOnly"] = True
        elif key == "bind-propagation":
            mount.setdefault("BindOptions", {})["Propagation"] = value
        elif key == "volume-driver":
            driver = value
        elif key == "volume-opt":
            opt_key, _, opt_value = value.partition("=")
            volume_opts[opt_key] = opt_value
        else:
            raise CommandError(f"--mount: unsupported field {key!r} (use a raw API request instead)")
    if mount.get("Type") not in ("bind", "volume", "tmpfs"):
        raise CommandError(f"--mount: type must be bind, volume or tmpfs in {spec!r}")
    if driver or volume_opts:
        config: dict[str, Any] = {"Name": driver} if driver else {}
        if volume_opts:
            config["Options"] = volume_opts
        mount["VolumeOptions"] = {"DriverConfig": config}
    return mount


def _device(spec: str) -> dict[str, str]:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise CommandError(f"--device: invalid device specification {spec!r}")
    source, target, mode = parts[0], "", "rwm"
    if len(parts) == 3:
        target, mode = parts[1], parts[2]
    elif len(parts) == 2:
        if _DEVICE_MODE.match(parts[1]):
            mode = parts[1]
        else:
            target = parts[1]
    return {"PathOnHost": source, "PathInContainer": target or source, "CgroupPermissions": mode}


def _ulimit(spec: str) -> dict[str, Any]:
    """``nofile=1024:2048`` → ``{"Name": "nofile", "Hard": 2048, "Soft": 1024}``."""
    name, eq, limits = spec.partition("=")
    soft, _, hard = limits.partition(":")
    if not name or not eq:
        raise CommandError(f"--ulimit: expected name=soft[:hard], got {spec!r}")
    return {"Name": name, "Hard": _int(hard or soft, "--ulimit"), "Soft": _int(soft, "--ulimit")}


def _security_opts(values: list[str], host: dict[str, Any]) -> None:
    kept = []
    for opt in values:
        if opt == "systempaths=unconfined":  # handled by the CLI, never sent as is
            host["MaskedPaths"], host["ReadonlyPaths"] = [], []
            continue
        if opt.startswith("seccomp=") and opt != "seccomp=unconfined":
            # The CLI would send the file's content; the simulator cannot read the user's file.
            raise CommandError("--security-opt seccomp=<file>: use a raw API request with the profile")
        kept.append(opt)
    if kept:
        host["SecurityOpt"] = kept


def create_body(opts: dict[str, Any], image: str, cmd: list[str]) -> dict[str, Any]:
    """The create body for parsed ``RUN_FLAGS`` values, ``image`` and the command after it."""
    body = base_body(image, cmd)
    host = body["HostConfig"]
    if opts["detach"]:
        body["AttachStdout"] = body["AttachStderr"] = False
    if opts["interactive"]:
        body["OpenStdin"] = True
        if not opts["detach"]:
            body["AttachStdin"] = body["StdinOnce"] = True
    body["Tty"] = bool(opts["tty"])
    for key, flag in (("User", "user"), ("WorkingDir", "workdir"), ("Hostname", "hostname"),
                      ("Domainname", "domainname")):  # fmt: skip
        if opts[flag] is not None:
            body[key] = opts[flag]
    if opts["entrypoint"] is not None:
        body["Entrypoint"] = [opts["entrypoint"]]
    if opts["stop_signal"] is not None:
        body["StopSignal"] = opts["stop_signal"]
    if opts["env"]:
        body["Env"] = list(opts["env"])
    if opts["label"]:
        body["Labels"] = _pairs(opts["label"], "--label", need_value=False)
    for spec in opts["volume"]:
        if ":" in spec:
            host["Binds"] = [*(host["Binds"] or []), spec]
        else:
            body["Volumes"][spec] = {}
    if opts["mount"]:
        host["Mounts"] = [_mount(spec) for spec in opts["mount"]]
    if opts["tmpfs"]:
        host["Tmpfs"] = {path: options for path, _, options in (t.partition(":") for t in opts["tmpfs"])}
    for spec in opts["publish"]:
        _port(spec, body)
    for spec in opts["expose"]:
        port, _, proto = spec.partition("/")
        body.setdefault("ExposedPorts", {})[f"{port}/{proto or 'tcp'}"] = {}
    host["PublishAllPorts"] = bool(opts["publish_all"])
    host["Privileged"] = bool(opts["privileged"])
    host["ReadonlyRootfs"] = bool(opts["read_only"])
    host["OomKillDisable"] = bool(opts["oom_kill_disable"])
    host["AutoRemove"] = bool(opts["rm"])
    if opts["init"]:
        host["Init"] = True
    network = opts["network"] or opts["net"]
    if network is not None:
        host["NetworkMode"] = network
    for key, flag in (("PidMode", "pid"), ("IpcMode", "ipc"), ("UTSMode", "uts"), ("UsernsMode", "userns"),
                      ("CgroupnsMode", "cgroupns"), ("Runtime", "runtime"), ("CgroupParent", "cgroup_parent"),
                      ("CpusetCpus", "cpuset_cpus")):  # fmt: skip
        if opts[flag] is not None:
            host[key] = opts[flag]
    if opts["cap_add"]:
        host["CapAdd"] = [_capability(c) for c in opts["cap_add"]]
    if opts["cap_drop"]:
        host["CapDrop"] = [_capability(c) for c in opts["cap_drop"]]
    if opts["device"]:
        host["Devices"] = [_device(spec) for spec in opts["device"]]
    if opts["device_cgroup_rule"]:
        host["DeviceCgroupRules"] = list(opts["device_cgroup_rule"])
    if opts["gpus"] is not None:
        if opts["gpus"] != "all":
            raise CommandError("--gpus: only 'all' is supported here (use a raw API request instead)")
        host["DeviceRequests"] = [
            {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
        ]
    _security_opts(list(opts["security_opt"]), host)
    if opts["sysctl"]:
        host["Sysctls"] = _pairs(opts["sysctl"], "--sysctl")
    if opts["storage_opt"]:
        host["StorageOpt"] = _pairs(opts["storage_opt"], "--storage-opt")
    for key, flag in (("VolumesFrom", "volumes_from"), ("GroupAdd", "group_add"), ("ExtraHosts", "add_host"),
                      ("Dns", "dns")):  # fmt: skip
        if opts[flag]:
            host[key] = list(opts[flag])
    for key, flag in (("Memory", "memory"), ("MemorySwap", "memory_swap"), ("ShmSize", "shm_size")):
        if opts[flag] is not None:
            host[key] = -1 if opts[flag] == "-1" else parse_bytes(opts[flag], f"--{flag.replace('_', '-')}")
    if opts["cpus"] is not None:
        host["NanoCpus"] = _nano_cpus(opts["cpus"])
    for key, flag in (("PidsLimit", "pids_limit"), ("CpuShares", "cpu_shares"), ("OomScoreAdj", "oom_score_adj"),
                      ("BlkioWeight", "blkio_weight")):  # fmt: skip
        if opts[flag] is not None:
            host[key] = _int(opts[flag], f"--{flag.replace('_', '-')}")
    if opts["restart"] is not None:
        name, _, count = opts["restart"].partition(":")
        host["RestartPolicy"] = {"Name": name, "MaximumRetryCount": _int(count, "--restart") if count else 0}
    if opts["ulimit"]:
        host["Ulimits"] = [_ulimit(spec) for spec in opts["ulimit"]]
    if opts["log_driver"] is not None:
        host["LogConfig"]["Type"] = opts["log_driver"]
    if opts["log_opt"]:
        host["LogConfig"]["Config"] = _pairs(opts["log_opt"], "--log-opt")
    return body
