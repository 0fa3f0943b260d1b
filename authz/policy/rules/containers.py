"""Content rules of ``container:create`` and ``container:update`` (policy-v1 ``containers:``).

Each rule reads the effective configuration (``authz.classify.containers``: top-level HostConfig
fields, case-insensitive keys and API-version defaults already applied) and names the policy key
and request field that failed. Split by concern: host paths in ``containers_mounts``, limits in
``containers_limits``, users in ``containers_user``. Image names, networks, volumes and joins of
other containers (``container:<id>``, ``VolumesFrom``) are judged by their own rule families.

Decisions worth knowing (also in the module comments):

* ``CgroupnsMode ""`` is allowed: it is what every ``docker run`` sends. On cgroup v1 daemons it
  means the host cgroup namespace (the daemon default there), which the plugin cannot see.
* A non-empty ``CgroupParent`` is refused unless ``unconfined``: it moves the container out of the
  cgroup tree its limits and accounting assume.
* Random host ports (empty ``HostPort``) are allowed when ``published_ports`` has ``*`` or covers
  every unprivileged port (1024-65535): the daemon picks them from its ephemeral range.
  ``PublishAllPorts`` needs ``*`` (policy-v1).
* Log drivers other than ``json-file``, ``local`` and ``none`` send data from the daemon's network
  with its credentials: refused unless ``unconfined``.
* HostConfig keys the v20.10 struct does not know, and HostConfig fields at the top level of the
  body (B5), are refused unless ``unconfined``: newer daemons may honour what we cannot judge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase

from authz.classify.containers import ContainerCreate, ContainerUpdate
from authz.classify.hostconfig import version_less
from authz.policy.compiled import EffectiveRole
from authz.policy.model import ContainerRules
from authz.policy.rules import EvalContext, Violation, register
from authz.policy.rules.containers_limits import check_create_limits, check_update_limits
from authz.policy.rules.containers_mounts import check_mounts
from authz.policy.rules.containers_user import group_add_violations, user_violations
from authz.request import Operation, Subject

__all__ = ["check_create", "check_update"]

_LOCAL_LOG_DRIVERS = frozenset({"", "json-file", "local", "none"})
_DEFAULT_RUNTIME = "runc"  # what Runtime "" means unless daemon.json changes default-runtime
_DEFAULT_APPARMOR = "docker-default"
_DEFAULT_SECCOMP = "builtin"  # newer daemons' name for the default profile (20.10 refuses it)
_UNPRIVILEGED_PORTS = (1024, 65535)
_USER_HINT = "pass --user UID (a non-root uid) or use an image whose USER is not root"


def _missing_body(action: str) -> Violation:
    # Fail closed: without the body nothing about the container can be judged.
    return Violation("containers", "body", f"{action} without a readable JSON body cannot be judged")


def _listed(value: str, patterns: Iterable[str]) -> bool:
    return any(p == "*" or fnmatchcase(value, p) for p in patterns)


def _allowed(patterns: tuple[str, ...] | None) -> str:
    return ", ".join(patterns) if patterns else "none"


# ---------------------------------------------------------------- privileges and namespaces


def _privileges(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    if view.privileged and not rules.privileged:
        yield Violation("containers.privileged", "HostConfig.Privileged", "privileged containers are not allowed")
    allowed = rules.capabilities or ()
    for index, cap in enumerate(view.cap_add):
        # CapDrop only removes power; "ALL" in CapAdd needs "ALL" in the policy.
        if "ALL" in allowed or cap in allowed:
            continue
        yield Violation("containers.capabilities", f"HostConfig.CapAdd[{index}]",
                        f"capability {cap} is not allowed (allowed: {_allowed(allowed)})")  # fmt: skip


def _namespaces(rules: ContainerRules, view: ContainerCreate, api_version: str | None) -> Iterator[Violation]:
    if rules.host_namespaces:
        return
    modes = (
        ("NetworkMode", view.network_mode), ("PidMode", view.pid_mode), ("IpcMode", view.ipc_mode),
        ("UTSMode", view.uts_mode), ("UsernsMode", view.userns_mode), ("CgroupnsMode", view.cgroupns_mode),
    )  # fmt: skip
    for name, mode in modes:
        # The daemon compares with "host" exactly; other spellings it refuses or reads as names.
        if mode.partition(":")[0].lower() != "host":
            continue
        message = f"{name} {mode} shares the host's namespace, which is not allowed"
        if name == "CgroupnsMode" and version_less(api_version, "1.41"):
            message += " (API < 1.41 clients get it by default on cgroup v1 hosts: pass --cgroupns private)"
        yield Violation("containers.host_namespaces", f"HostConfig.{name}", message)
    if view.cgroup and not view.cgroup.startswith("container:"):
        # 20.10 accepts only "" and container:<id> (judged by ownership); anything else is unknown.
        yield Violation("containers.host_namespaces", "HostConfig.Cgroup", f"Cgroup {view.cgroup!r} is not allowed")


def _cgroup_parent(rules: ContainerRules, value: str, field: str) -> Iterator[Violation]:
    if value and not rules.unconfined:
        yield Violation("containers.unconfined", field, f"CgroupParent {value!r} moves the container out of the "
                        "cgroup its limits assume; allowed only to roles with unconfined: true")  # fmt: skip


def _devices(rules: ContainerRules, view: ContainerCreate | ContainerUpdate, prefix: str) -> Iterator[Violation]:
    if rules.devices:
        return
    for index, device in enumerate(view.devices):
        yield Violation("containers.devices", f"{prefix}Devices[{index}]",
                        f"host device {device.path_on_host} is not allowed (--device)")  # fmt: skip
    for index, rule in enumerate(view.device_cgroup_rules):
        yield Violation("containers.devices", f"{prefix}DeviceCgroupRules[{index}]",
                        f"device cgroup rule {rule!r} is not allowed (--device-cgroup-rule)")  # fmt: skip
    for index, request in enumerate(view.device_requests):
        what = "GPUs" if any("gpu" in group for group in request.capabilities) else "device requests"
        yield Violation("containers.devices", f"{prefix}DeviceRequests[{index}]",
                        f"{what} are not allowed (--gpus, --device with a driver)")  # fmt: skip


# ---------------------------------------------------------------- confinement


def _security_options(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    if rules.unconfined:
        return
    for index, opt in enumerate(view.security_opt):
        field = f"HostConfig.SecurityOpt[{index}]"
        if opt.key == "seccomp" and opt.value != _DEFAULT_SECCOMP:
            what = "unconfined" if opt.value == "unconfined" else "a custom profile (which the plugin cannot judge)"
            yield Violation("containers.unconfined", field, f"seccomp {what} is not allowed; use the default profile")
        elif opt.key == "apparmor" and opt.value != _DEFAULT_APPARMOR:
            yield Violation("containers.unconfined", field, f"AppArmor profile {opt.value!r} is not allowed "
                            f"(only the default {_DEFAULT_APPARMOR})")  # fmt: skip
        elif opt.key == "label":
            # disable, type:…, user:, role:, level: all change the SELinux confinement.
            yield Violation("containers.unconfined", field, f"SELinux label option {opt.value!r} is not allowed")
        elif opt.key == "writable-cgroups" and opt.value.lower() in ("1", "t", "true"):
            yield Violation("containers.unconfined", field, "writable-cgroups is not allowed")
        elif opt.key not in ("seccomp", "apparmor", "label", "writable-cgroups", "no-new-privileges"):
            # An option newer daemons may honour; no-new-privileges=false equals leaving it out.
            yield Violation("containers.unconfined", field, f"security option {opt.raw!r} cannot be judged")
    for name, paths in (("MaskedPaths", view.masked_paths), ("ReadonlyPaths", view.readonly_paths)):
        if paths is not None:
            # [] (systempaths=unconfined) or any list replaces the daemon's /proc and /sys protection.
            yield Violation("containers.unconfined", f"HostConfig.{name}", f"{name} replaces the default masking of "
                            "/proc and /sys (--security-opt systempaths=unconfined) and is not allowed")  # fmt: skip


def _unjudgeable(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    if rules.unconfined:
        return
    for key in view.unknown_host_config_keys:
        yield Violation("containers.unconfined", f"HostConfig.{key}", f"HostConfig field {key!r} is unknown to the "
                        "plugin (a newer daemon may honour it) and is not allowed")  # fmt: skip
    for key in view.top_level_host_config_keys:
        yield Violation("containers.unconfined", key, f"HostConfig field {key!r} at the top level of the body is "
                        "not allowed; put it inside HostConfig")  # fmt: skip
    log = view.log_config.type
    if log not in _LOCAL_LOG_DRIVERS:
        yield Violation("containers.unconfined", "HostConfig.LogConfig.Type", f"log driver {log!r} sends logs from "
                        "the daemon's host; allowed: json-file, local, none")  # fmt: skip


# ---------------------------------------------------------------- ports, sysctls, runtimes


def _port_ranges(patterns: tuple[str, ...]) -> list[tuple[int, int]]:
    ranges = []
    for pattern in patterns:
        low, _, high = pattern.partition("-")
        if low.isdigit() and (high == "" or high.isdigit()):
            ranges.append((int(low), int(high or low)))
    return ranges


def _covers(ranges: list[tuple[int, int]], low: int, high: int) -> bool:
    port = low
    for start, end in sorted(ranges):
        if start <= port <= end:
            port = end + 1
        if port > high:
            return True
    return port > high


def _ports(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    patterns = rules.published_ports or ()
    if "*" in patterns:
        return
    ranges = _port_ranges(patterns)
    allowed = _allowed(patterns)
    if view.publish_all_ports:
        yield Violation("containers.published_ports", "HostConfig.PublishAllPorts", "publishing all exposed "
                        f"ports (-P) needs published_ports [*] (allowed: {allowed})")  # fmt: skip
    for binding in view.port_bindings:
        field = f"HostConfig.PortBindings.{binding.container_port}"
        if binding.host_port_start is None or binding.host_port_end is None:
            if not _covers(ranges, *_UNPRIVILEGED_PORTS):
                yield Violation("containers.published_ports", field, "a random host port needs published_ports to "
                                f"cover 1024-65535; give an explicit host port (allowed: {allowed})")  # fmt: skip
        elif not _covers(ranges, binding.host_port_start, binding.host_port_end):
            yield Violation("containers.published_ports", field,
                            f"host port {binding.host_port} is not allowed (allowed: {allowed})")  # fmt: skip


def _sysctls(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    patterns = rules.sysctls or ()
    for key in view.sysctls:
        # Slash-separated keys reach /proc/sys paths the dotted patterns do not describe.
        odd = "/" in key or ".." in key or not key.isprintable() or " " in key
        if "*" in patterns or (not odd and _listed(key, patterns)):
            continue
        yield Violation("containers.sysctls", f"HostConfig.Sysctls.{key}",
                        f"sysctl {key} is not allowed (allowed: {_allowed(patterns)})")  # fmt: skip


def _runtime(rules: ContainerRules, view: ContainerCreate) -> Iterator[Violation]:
    runtime = view.runtime or _DEFAULT_RUNTIME
    if not _listed(runtime, rules.runtimes or ()):
        yield Violation("containers.runtimes", "HostConfig.Runtime",
                        f"runtime {runtime} is not allowed (allowed: {_allowed(rules.runtimes)})")  # fmt: skip


def _user(rules: ContainerRules, view: ContainerCreate, context: EvalContext) -> Iterator[Violation]:
    if rules.run_as_root:
        return
    yield from user_violations(view.user, view.image, context.image_user, rule="containers.run_as_root",
                               field="User", hint=_USER_HINT)  # fmt: skip
    yield from group_add_violations(view.group_add, rule="containers.run_as_root", field="HostConfig.GroupAdd")


# ---------------------------------------------------------------- registered checks


@register("container:create")
def check_create(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    """Every host power a create asks for, against ``role.containers``."""
    view = operation.view
    if not isinstance(view, ContainerCreate):
        yield _missing_body(operation.action)
        return
    rules = role.containers
    yield from _privileges(rules, view)
    yield from _namespaces(rules, view, operation.api_version)
    yield from _cgroup_parent(rules, view.cgroup_parent, "HostConfig.CgroupParent")
    yield from check_mounts(rules, view, context.host_root)
    yield from _devices(rules, view, "HostConfig.")
    yield from _security_options(rules, view)
    yield from _unjudgeable(rules, view)
    yield from _user(rules, view, context)
    yield from _ports(rules, view)
    yield from _sysctls(rules, view)
    yield from _runtime(rules, view)
    yield from check_create_limits(rules, view, operation.body)


@register("container:update")
def check_update(
    role: EffectiveRole, operation: Operation, subject: Subject, context: EvalContext
) -> Iterator[Violation]:
    """An update may not lift limits, nor add devices or a cgroup parent (20.10 ignores those)."""
    view = operation.view
    if not isinstance(view, ContainerUpdate):
        yield _missing_body(operation.action)
        return
    rules = role.containers
    yield from check_update_limits(rules, view)
    yield from _cgroup_parent(rules, view.cgroup_parent, "CgroupParent")
    yield from _devices(rules, view, "")
    if not rules.unconfined:
        for key in view.unknown_keys:
            yield Violation("containers.unconfined", key, f"update field {key!r} is unknown to the plugin "
                            "(a newer daemon may honour it) and is not allowed")  # fmt: skip
