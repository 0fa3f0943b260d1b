"""container:create / container:update content rules: real captures and hostile variants.

Every test goes through classify → evaluate with the built-in roles (or a small custom role), so
it proves the decision and the message, not a helper.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from authz.classify import classify
from authz.errors import RequestError
from authz.memory import MemoryOwnership
from authz.policy.compiled import CompiledPolicy, compile_snapshot
from authz.policy.engine import evaluate
from authz.policy.model import PolicySnapshot
from authz.policy.rules import EvalContext
from authz.policy.schema import parse_policy
from authz.request import Decision, DockerRequest, IdentitySource, Operation, Subject
from tests.support.captures import CAPTURES_DIR, capture_request

BOX = "b0" * 32  # the container the update captures target ("box")


def policy(roles: dict[str, Any] | None = None) -> CompiledPolicy:
    doc = {"version": 1, "roles": roles or {}}
    return compile_snapshot(PolicySnapshot(revision=1, policy=parse_policy(doc)))


BUILTIN = policy()


def context(image_user: Callable[[str], str | None] | None = lambda _ref: "1000") -> EvalContext:
    owners = MemoryOwnership()
    owners.record("container", BOX, "box", "alice")
    return EvalContext(ownership=owners, image_user=image_user)


def decide(
    operation: Operation,
    role: str = "developer",
    compiled: CompiledPolicy = BUILTIN,
    image_user: Callable[[str], str | None] | None = lambda _ref: "1000",
) -> Decision:
    subject = Subject("alice", IdentitySource.TOKEN, roles=(role,))
    return evaluate(compiled, subject, operation, context(image_user))


def capture_op(label: str, route: str = "containers-create") -> Operation:
    matches = sorted(CAPTURES_DIR.glob(f"{label}__*_POST_{route}.json"))
    assert matches, f"no capture {label} {route}"
    return classify(capture_request(matches[0].name))


def request(path: str, body: dict[str, Any] | None, version: str = "1.41") -> Operation:
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
    return classify(DockerRequest(method="POST", uri=f"/v{version}{path}", headers=headers, body=data or None))


def create(host_config: dict[str, Any] | None = None, version: str = "1.41", **top: Any) -> Operation:
    body: dict[str, Any] = {"Image": "tiny", "Cmd": ["true"], "User": "1000", **top}
    if host_config is not None:
        body["HostConfig"] = {"NetworkMode": "none", **host_config}
    return request("/containers/create", body, version)


def update(body: dict[str, Any]) -> Operation:
    return request("/containers/box/update", body)


def denied(decision: Decision, rule: str, field: str, *words: str) -> None:
    assert not decision.allow, decision.reason
    assert f"[rule roles.{decision.role}.{rule}, field {field}]" in decision.message, decision.message
    for word in words:
        assert word in decision.message, decision.message


# ---------------------------------------------------------------- captures: developer vs admin

CAPTURE_CASES = [
    ("run-privileged", "containers.privileged", "HostConfig.Privileged", "privileged containers are not allowed"),
    ("run-cap-add", "containers.capabilities", "HostConfig.CapAdd[0]", "SYS_ADMIN is not allowed (allowed: NET_BIND_"),
    ("run-bind-root", "containers.bind_mounts", "HostConfig.Binds[0]", "path / is not allowed (allowed prefixes: none"),
    ("run-mount-bind", "containers.bind_mounts", "HostConfig.Mounts[0].Source", "host path /etc is not allowed"),
    ("run-pid-host", "containers.host_namespaces", "HostConfig.PidMode", "PidMode host"),
    ("run-ipc-host", "containers.host_namespaces", "HostConfig.IpcMode", "IpcMode host"),
    ("create-network-host", "containers.host_namespaces", "HostConfig.NetworkMode", "NetworkMode host"),
    ("run-userns-host", "containers.host_namespaces", "HostConfig.UsernsMode", "UsernsMode host"),
    ("run-seccomp-unconfined", "containers.unconfined", "HostConfig.SecurityOpt[0]", "seccomp unconfined"),
    ("run-device", "containers.devices", "HostConfig.Devices[0]", "host device /dev/"),
    ("run-user-root", "containers.run_as_root", "User", "(uid 0); containers must not run as root: pass --user"),
    ("create-publish-all", "containers.published_ports", "HostConfig.PublishAllPorts", "(allowed: 1024-65535)"),
    ("run-sysctl", "containers.sysctls", "HostConfig.Sysctls.net.ipv4.ip_unprivileged_port_start", "(allowed: none)"),
    ("create-gpus-run2", "containers.devices", "HostConfig.DeviceRequests[0]", "GPUs are not allowed"),
    ("create-systempaths-unconfined", "containers.unconfined", "HostConfig.MaskedPaths", "systempaths=unconfined"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "rule", "field", "text"), CAPTURE_CASES, ids=[c[0] for c in CAPTURE_CASES])
def test_capture_is_denied_to_developer_and_allowed_to_admin(label: str, rule: str, field: str, text: str) -> None:
    operation = capture_op(label)
    denied(decide(operation), rule, field, text)
    assert decide(operation, "admin").allow


def test_kitchen_sink_names_every_host_power() -> None:
    decision = decide(capture_op("create-kitchen-sink-run3"))
    expected = [
        ("containers.capabilities", "HostConfig.CapAdd[0]"),
        ("containers.host_namespaces", "HostConfig.UTSMode"),
        ("containers.host_namespaces", "HostConfig.CgroupnsMode"),
        ("containers.unconfined", "HostConfig.CgroupParent"),
        ("containers.bind_mounts", "HostConfig.Binds[1]"),  # /tmp, and its :z relabel
        ("containers.bind_mounts_read_only", "HostConfig.Binds[1]"),
        ("containers.devices", "HostConfig.DeviceCgroupRules[0]"),
        ("containers.unconfined", "HostConfig.SecurityOpt[0]"),  # apparmor=unconfined
        ("containers.unconfined", "HostConfig.SecurityOpt[1]"),  # label=disable
        ("containers.run_as_root", "HostConfig.GroupAdd[0]"),
        ("containers.max_memory", "HostConfig.MemorySwap"),
        ("containers.max_pids", "HostConfig.PidsLimit"),
        ("containers.max_memory", "HostConfig.OomKillDisable"),
        ("containers.max_memory", "HostConfig.OomScoreAdj"),
    ]
    for rule, field in expected:
        denied(decision, rule, field)
    assert "SELinux relabel :z of host path /tmp" in decision.message
    assert "SecurityOpt[2]" not in decision.message  # no-new-privileges only adds confinement
    assert "bind_mounts, field HostConfig.Binds[0]" not in decision.message  # a named volume: not a host path
    assert decide(capture_op("create-kitchen-sink-run3"), "admin").allow


@pytest.mark.parametrize("label", ["run-plain", "create-publish", "run-memory", "create-annotation-runtime"])
def test_plain_captures_are_allowed_to_developer(label: str) -> None:
    assert decide(capture_op(label)).allow


def test_json_differential_top_level_host_config_is_applied_and_refused() -> None:
    jd0 = capture_op("json-differential")  # jd-0: Privileged, Binds, PidMode at the top level
    decision = decide(jd0)
    denied(decision, "containers.privileged", "HostConfig.Privileged")
    denied(decision, "containers.host_namespaces", "HostConfig.PidMode")
    denied(decision, "containers.bind_mounts", "HostConfig.Binds[0]")
    denied(decision, "containers.unconfined", "Privileged", "at the top level of the body")
    assert decide(jd0, "admin").allow


def test_json_differential_lower_case_keys_are_read_like_go() -> None:
    jd2 = classify(capture_request("json-differential__07_POST_containers-create.json"))
    decision = decide(jd2)
    denied(decision, "containers.privileged", "HostConfig.Privileged")
    denied(decision, "containers.bind_mounts", "HostConfig.Binds[0]", "host path /")
    assert decide(jd2, "admin").allow


def test_json_differential_top_level_beside_inner_host_config_is_refused() -> None:
    jd1 = classify(capture_request("json-differential__04_POST_containers-create.json"))
    denied(decide(jd1), "containers.unconfined", "Binds", "at the top level")


def test_stricter_roles_deny_what_developer_allows() -> None:
    strict = policy({"strict": {"extends": ["developer"], "containers": {
        "published_ports": ["8000-8079"], "max_memory": "32m", "runtimes": ["kata"]}}})  # fmt: skip
    denied(decide(capture_op("create-publish"), "strict", strict), "containers.published_ports",
           "HostConfig.PortBindings.80/tcp", "host port 8080 is not allowed (allowed: 8000-8079)")  # fmt: skip
    denied(decide(capture_op("run-memory"), "strict", strict), "containers.max_memory", "HostConfig.Memory",
           "64m is above the maximum 32m")  # fmt: skip
    denied(decide(capture_op("create-annotation-runtime"), "strict", strict), "containers.runtimes",
           "HostConfig.Runtime", "runtime runc is not allowed (allowed: kata)")  # fmt: skip


# ---------------------------------------------------------------- capabilities, namespaces


@pytest.mark.parametrize("cap", ["CAP_sys_admin", "sys_admin", "cap_SYS_ADMIN"])
def test_capability_spellings_are_normalised(cap: str) -> None:
    denied(decide(create({"CapAdd": [cap]})), "containers.capabilities", "HostConfig.CapAdd[0]", "SYS_ADMIN")


def test_capabilities_allowed_listed_and_all_needs_all() -> None:
    assert decide(create({"CapAdd": ["cap_net_bind_service"], "CapDrop": ["ALL"]})).allow
    denied(decide(create({"CapAdd": ["ALL"]})), "containers.capabilities", "HostConfig.CapAdd[0]", "capability ALL")
    denied(decide(create({"capadd": ["NET_ADMIN"]})), "containers.capabilities", "HostConfig.CapAdd[0]")
    assert decide(create({"CapAdd": ["ALL"]}), "admin").allow


@pytest.mark.parametrize("field", ["NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"])
def test_host_namespaces(field: str) -> None:
    denied(decide(create({field: "host"})), "containers.host_namespaces", f"HostConfig.{field}", f"{field} host")
    denied(decide(create({field: "HOST"})), "containers.host_namespaces", f"HostConfig.{field}")
    assert decide(create({field: "host"}), "admin").allow


def test_cgroupns_default_is_allowed_but_old_clients_get_host() -> None:
    assert decide(create({"CgroupnsMode": ""})).allow
    assert decide(create({"CgroupnsMode": "private"})).allow
    denied(decide(create({}, version="1.40")), "containers.host_namespaces", "HostConfig.CgroupnsMode",
           "pass --cgroupns private")  # fmt: skip
    assert decide(create({"CgroupnsMode": "private"}, version="1.40")).allow


def test_cgroup_and_cgroup_parent() -> None:
    denied(decide(create({"CgroupParent": "/"})), "containers.unconfined", "HostConfig.CgroupParent")
    denied(decide(create({"Cgroup": "host"})), "containers.host_namespaces", "HostConfig.Cgroup")
    assert decide(create({"CgroupParent": "/custom"}), "admin").allow


# ---------------------------------------------------------------- binds and mounts


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, CompiledPolicy]:
    root = tmp_path / "shared"
    (root / "data").mkdir(parents=True)
    (tmp_path / "sharedfoo").mkdir()
    roles = {"binder": {"extends": ["developer"], "containers": {"bind_mounts": [str(root)]}},
             "writer": {"extends": ["developer"], "containers": {"bind_mounts": [str(root) + "/"],
                                                                 "bind_mounts_read_only": False}}}  # fmt: skip
    return root, policy(roles)


def test_bind_inside_allowed_prefix_read_only(shared: tuple[Path, CompiledPolicy]) -> None:
    root, compiled = shared
    assert decide(create({"Binds": [f"{root}/data:/data:ro"]}), "binder", compiled).allow
    assert decide(create({"Binds": [f"{root}/new/dir:/data:ro"]}), "binder", compiled).allow  # created by the daemon
    denied(decide(create({"Binds": [f"{root}/data:/data"]}), "binder", compiled),
           "containers.bind_mounts_read_only", "HostConfig.Binds[0]", "add :ro")  # fmt: skip
    assert decide(create({"Binds": [f"{root}/data:/data:rw"]}), "writer", compiled).allow


@pytest.mark.parametrize("source", ["{root}/../../etc", "//etc/", "{root}foo", "{root}/../sharedfoo/x", "/etc"])
def test_bind_escapes_are_denied(shared: tuple[Path, CompiledPolicy], source: str) -> None:
    root, compiled = shared
    spec = source.format(root=root) + ":/x:ro"
    denied(decide(create({"Binds": [spec]}), "binder", compiled), "containers.bind_mounts", "HostConfig.Binds[0]",
           f"(allowed prefixes: {root})")  # fmt: skip


@pytest.mark.parametrize("target", ["/etc", "../../../../../../../../etc", "/etc/nonexistent-authz-dir"])
def test_symlink_under_allowed_prefix_to_etc_is_denied(shared: tuple[Path, CompiledPolicy], target: str) -> None:
    root, compiled = shared
    (root / "link").symlink_to(target)
    decision = decide(create({"Binds": [f"{root}/link:/x:ro"]}), "binder", compiled)
    denied(decision, "containers.bind_mounts", "HostConfig.Binds[0]", "resolves through a symlink to /etc")
    mount = {"Type": "bind", "Source": f"{root}/link/missing", "Target": "/x", "ReadOnly": True}
    denied(decide(create({"Mounts": [mount]}), "binder", compiled), "containers.bind_mounts",
           "HostConfig.Mounts[0].Source", "symlink to /etc")  # fmt: skip


def test_symlink_inside_the_prefix_is_fine_and_loops_are_refused(shared: tuple[Path, CompiledPolicy]) -> None:
    root, compiled = shared
    (root / "alias").symlink_to("data")
    assert decide(create({"Binds": [f"{root}/alias:/x:ro"]}), "binder", compiled).allow
    (root / "loop").symlink_to("loop")
    denied(decide(create({"Binds": [f"{root}/loop:/x:ro"]}), "binder", compiled), "containers.bind_mounts",
           "HostConfig.Binds[0]", "cannot be resolved")  # fmt: skip
    (root / "dangling").symlink_to("missing/../../../../../../../../etc")  # the daemon cannot use it either
    denied(decide(create({"Binds": [f"{root}/dangling:/x:ro"]}), "binder", compiled), "containers.bind_mounts",
           "HostConfig.Binds[0]", "cannot be resolved")  # fmt: skip
    (root / "file").write_text("x")
    denied(decide(create({"Binds": [f"{root}/file/below:/x:ro"]}), "binder", compiled), "containers.bind_mounts",
           "HostConfig.Binds[0]", "cannot be resolved")  # fmt: skip


_SWAP_RULE = "containers.bind_mounts_user_writable"


def _owned_dir(path: Path, uid: int = 0, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, uid, 0)
    path.chmod(mode)
    return path


def test_a_bind_through_a_directory_a_user_can_write_is_denied(shared: tuple[Path, CompiledPolicy]) -> None:
    """Its owner could swap `proj` for a symlink to / between create and start: the daemon
    resolves the source again at every start."""
    root, compiled = shared
    home = _owned_dir(root / "home", uid=1000)
    (home / "proj").mkdir()
    for spec, field in (({"Binds": [f"{home}/proj:/x:ro"]}, "HostConfig.Binds[0]"),
                        ({"Mounts": [{"Type": "bind", "Source": f"{home}/proj", "Target": "/x", "ReadOnly": True}]},
                         "HostConfig.Mounts[0].Source")):  # fmt: skip
        denied(decide(create(spec), "binder", compiled), _SWAP_RULE, field, f"runs through {home} (writable by "
               "its owner, uid 1000), where a non-root user could swap an entry")  # fmt: skip
    trusting_rules = {"bind_mounts": [str(root)], "bind_mounts_user_writable": True}
    trusting = policy({"trusting": {"extends": ["developer"], "containers": trusting_rules}})
    assert decide(create({"Binds": [f"{home}/proj:/x:ro"]}), "trusting", trusting).allow
    # A user's own directory deeper down does not matter: its entries are not on the path.
    (home / "proj").chmod(0o777)
    os.chown(root / "data", 1000, 1000)
    assert decide(create({"Binds": [f"{root}/data:/x:ro"]}), "binder", compiled).allow


@pytest.mark.parametrize(("mode", "says"), [(0o775, "writable by group 0"), (0o757, "writable by every user"),
                                            (0o1777, "writable by every user")])  # fmt: skip
def test_group_and_world_writable_directories_are_user_writable(
    shared: tuple[Path, CompiledPolicy], mode: int, says: str
) -> None:
    root, compiled = shared
    open_dir = _owned_dir(root / "open", mode=mode)
    (open_dir / "proj").mkdir()
    os.chown(open_dir / "proj", 1000, 1000)  # in a sticky directory, its owner may still rename it
    denied(decide(create({"Binds": [f"{open_dir}/proj:/x:ro"]}), "binder", compiled), _SWAP_RULE,
           "HostConfig.Binds[0]", says)  # fmt: skip


def test_a_sticky_directory_protects_roots_entries_but_not_missing_ones(shared: tuple[Path, CompiledPolicy]) -> None:
    """Like /tmp: only an entry's owner may rename it there, but anyone may create a missing one first."""
    root, compiled = shared
    sticky = _owned_dir(root / "sticky", mode=0o1777)
    (sticky / "rootdir").mkdir()
    assert decide(create({"Binds": [f"{sticky}/rootdir:/x:ro"]}), "binder", compiled).allow
    denied(decide(create({"Binds": [f"{sticky}/not-yet:/x:ro"]}), "binder", compiled), _SWAP_RULE,
           "HostConfig.Binds[0]", f"runs through {sticky} (writable by every user)")  # fmt: skip


def test_a_symlink_in_a_user_writable_directory_is_denied_wherever_it_points(
    shared: tuple[Path, CompiledPolicy],
) -> None:
    root, compiled = shared
    home = _owned_dir(root / "home", uid=1000)
    (home / "to-data").symlink_to(root / "data")  # today it points inside the prefix; its owner may re-point it
    denied(decide(create({"Binds": [f"{home}/to-data:/x:ro"]}), "binder", compiled), _SWAP_RULE,
           "HostConfig.Binds[0]", f"runs through {home}")  # fmt: skip


def _decide_seeing(operation: Operation, role: str, compiled: CompiledPolicy, host_root: str | None) -> Decision:
    subject = Subject("alice", IdentitySource.TOKEN, roles=(role,))
    return evaluate(compiled, subject, operation, replace(context(), host_root=host_root))


def test_binds_are_judged_below_the_host_root(tmp_path: Path) -> None:
    """A plugin that sees the host at ``/host`` walks there, an absolute symlink included, as the
    daemon walks from the host's /."""
    host = tmp_path / "host"
    (host / "srv" / "shared" / "data").mkdir(parents=True)
    (host / "etc").mkdir()
    (host / "srv" / "shared" / "etc-link").symlink_to("/etc")  # the host's /etc, not the plugin's
    compiled = policy({"binder": {"extends": ["developer"], "containers": {"bind_mounts": ["/srv/shared"]}}})
    ok = _decide_seeing(create({"Binds": ["/srv/shared/data:/x:ro"]}), "binder", compiled, str(host))
    assert ok.allow, ok.reason
    denied(_decide_seeing(create({"Binds": ["/srv/shared/etc-link:/x:ro"]}), "binder", compiled, str(host)),
           "containers.bind_mounts", "HostConfig.Binds[0]", "resolves through a symlink to /etc")  # fmt: skip
    os.chown(host / "srv" / "shared", 1000, 1000)
    denied(_decide_seeing(create({"Binds": ["/srv/shared/data:/x:ro"]}), "binder", compiled, str(host)), _SWAP_RULE,
           "HostConfig.Binds[0]", "runs through /srv/shared (writable by its owner, uid 1000)")  # fmt: skip


def test_a_plugin_that_cannot_see_the_host_binds_only_for_roles_allowed_everything(tmp_path: Path) -> None:
    """The managed plugin (AUTHZ_HOST_ROOT=none): its rootfs says nothing of the host's paths."""
    compiled = policy({"binder": {"extends": ["developer"], "containers": {"bind_mounts": [str(tmp_path)]}}})
    (tmp_path / "data").mkdir()
    spec = {"Binds": [f"{tmp_path}/data:/x:ro"]}
    assert _decide_seeing(create(spec), "binder", compiled, "/").allow
    denied(_decide_seeing(create(spec), "binder", compiled, None), "containers.bind_mounts", "HostConfig.Binds[0]",
           "cannot be judged: this plugin does not see the host's files (AUTHZ_HOST_ROOT=none")  # fmt: skip
    assert _decide_seeing(create({"Binds": ["/etc:/x"]}), "admin", compiled, None).allow


def test_docker_socket_needs_a_literal_entry(tmp_path: Path) -> None:
    compiled = policy({
        "run-dir": {"extends": ["developer"], "containers": {"bind_mounts": ["/var/run", "/run", str(tmp_path)]}},
        "sock": {"extends": ["developer"], "containers": {"bind_mounts": ["/var/run/docker.sock"]}},
    })  # fmt: skip
    spec = {"Binds": ["/var/run/docker.sock:/var/run/docker.sock:ro"]}
    denied(decide(create(spec), "run-dir", compiled), "containers.bind_mounts", "HostConfig.Binds[0]",
           "socket /var/run/docker.sock")  # fmt: skip
    denied(decide(create({"Binds": ["/run/docker.sock:/s:ro"]}), "run-dir", compiled), "containers.bind_mounts",
           "HostConfig.Binds[0]", "socket")  # fmt: skip
    # A symlink to the socket is the socket, even where it does not exist on the plugin's host.
    (tmp_path / "sock-link").symlink_to("/var/run/docker.sock")
    denied(decide(create({"Binds": [f"{tmp_path}/sock-link:/s:ro"]}), "run-dir", compiled),
           "containers.bind_mounts", "HostConfig.Binds[0]", "socket")  # fmt: skip
    assert decide(create(spec), "sock", compiled).allow
    assert decide(create(spec), "admin").allow
    # Any socket file is treated like the docker socket.
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        denied(decide(create({"Binds": [f"{path}:/s:ro"]}), "run-dir", compiled), "containers.bind_mounts",
               "HostConfig.Binds[0]", f"socket {path}")  # fmt: skip


def test_propagation_and_relabel(shared: tuple[Path, CompiledPolicy]) -> None:
    root, compiled = shared
    denied(decide(create({"Binds": [f"{root}/data:/x:ro,rshared"]}), "binder", compiled), "containers.unconfined",
           "HostConfig.Binds[0]", "rshared propagation")  # fmt: skip
    assert decide(create({"Binds": [f"{root}/data:/x:ro,rslave"]}), "binder", compiled).allow
    mount = {"Type": "bind", "Source": f"{root}/data", "Target": "/x", "ReadOnly": True,
             "BindOptions": {"Propagation": "shared"}}  # fmt: skip
    denied(decide(create({"Mounts": [mount]}), "binder", compiled), "containers.unconfined",
           "HostConfig.Mounts[0].BindOptions.Propagation", "shared propagation")  # fmt: skip
    denied(decide(create({"Binds": [f"{root}/data:/x:ro,Z"]}), "binder", compiled), "containers.bind_mounts",
           "HostConfig.Binds[0]", "SELinux relabel :Z")  # fmt: skip
    assert decide(create({"Binds": ["/srv:/x:z,rshared"]}), "admin").allow


def test_mounts_read_only_and_types(shared: tuple[Path, CompiledPolicy]) -> None:
    root, compiled = shared
    ro = {"Type": "bind", "Source": f"{root}/data", "Target": "/x", "ReadOnly": True}
    assert decide(create({"Mounts": [ro]}), "binder", compiled).allow
    denied(decide(create({"Mounts": [{**ro, "ReadOnly": False}]}), "binder", compiled),
           "containers.bind_mounts_read_only", "HostConfig.Mounts[0].ReadOnly")  # fmt: skip
    non_recursive = {**ro, "BindOptions": {"ReadOnlyNonRecursive": True}}
    denied(decide(create({"Mounts": [non_recursive]}), "binder", compiled),
           "containers.bind_mounts_read_only", "HostConfig.Mounts[0].ReadOnly", "ReadOnlyNonRecursive")  # fmt: skip
    create_point = {**ro, "Source": f"{root}/new", "BindOptions": {"CreateMountpoint": True}}
    assert decide(create({"Mounts": [create_point]}), "binder", compiled).allow
    denied(decide(create({"Mounts": [{**create_point, "Source": "/var/lib/x"}]}), "binder", compiled),
           "containers.bind_mounts", "HostConfig.Mounts[0].Source")  # fmt: skip
    assert decide(create({"Mounts": [{"Type": "tmpfs", "Target": "/t"}]})).allow
    for kind in ("npipe", "cluster", "image", "hostpath"):
        other = {"Type": kind, "Source": "x", "Target": "/y"}
        denied(decide(create({"Mounts": [other]})), "containers.unconfined", "HostConfig.Mounts[0].Type",
               f"mount type {kind!r}")  # fmt: skip


# ---------------------------------------------------------------- confinement, devices, logs


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("seccomp=unconfined", "seccomp unconfined"),
        ("seccomp:unconfined", "seccomp unconfined"),
        ('seccomp={"defaultAction":"SCMP_ACT_ALLOW"}', "custom profile"),
        ("apparmor=unconfined", "AppArmor profile 'unconfined'"),
        ("apparmor=my-profile", "AppArmor profile 'my-profile'"),
        ("label=disable", "SELinux label option 'disable'"),
        ("disable", "SELinux label option 'disable'"),
        ("label=type:spc_t", "SELinux label option 'type:spc_t'"),
        ("writable-cgroups=true", "writable-cgroups"),
        ("writable-cgroups", "writable-cgroups"),
        ("systempaths=unconfined", "cannot be judged"),
    ],
)
def test_unconfined_security_options(option: str, text: str) -> None:
    operation = create({"SecurityOpt": [option]})
    denied(decide(operation), "containers.unconfined", "HostConfig.SecurityOpt[0]", text)
    assert decide(operation, "admin").allow


@pytest.mark.parametrize(
    "option", ["no-new-privileges", "no-new-privileges=false", "no-new-privileges:true", "apparmor=docker-default",
               "writable-cgroups=false", "seccomp=builtin"],
)  # fmt: skip
def test_harmless_security_options(option: str) -> None:
    assert decide(create({"SecurityOpt": [option]})).allow


def test_system_paths() -> None:
    denied(decide(create({"ReadonlyPaths": []})), "containers.unconfined", "HostConfig.ReadonlyPaths")
    denied(decide(create({"MaskedPaths": ["/proc/kcore"]})), "containers.unconfined", "HostConfig.MaskedPaths")
    assert decide(create({"MaskedPaths": None, "ReadonlyPaths": None})).allow


def test_device_cgroup_rules_and_requests() -> None:
    denied(
        decide(create({"DeviceCgroupRules": ["b *:* rwm"]})), "containers.devices", "HostConfig.DeviceCgroupRules[0]"
    )
    cdi = {"DeviceRequests": [{"Driver": "cdi", "DeviceIDs": ["vendor.com/dev=x"]}]}
    denied(decide(create(cdi)), "containers.devices", "HostConfig.DeviceRequests[0]", "device requests")


def test_log_drivers() -> None:
    for driver in ("", "json-file", "local", "none"):
        assert decide(create({"LogConfig": {"Type": driver, "Config": {"max-size": "1m"}}})).allow
    syslog = create({"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "udp://10.0.0.1:514"}}})
    denied(decide(syslog), "containers.unconfined", "HostConfig.LogConfig.Type", "log driver 'syslog'")
    assert decide(syslog, "admin").allow


def test_unknown_host_config_keys() -> None:
    annotated = create({"Annotations": {"io.kubernetes.cri.x": "y"}, "Runtime": "runc"})
    denied(decide(annotated), "containers.unconfined", "HostConfig.Annotations", "unknown to the plugin")
    assert decide(annotated, "admin").allow


def test_missing_create_body_is_denied() -> None:
    operation = request("/containers/create", None)
    assert operation.view is None
    denied(decide(operation), "containers", "body", "cannot be judged")
    denied(decide(operation, "admin"), "containers", "body")


# ---------------------------------------------------------------- users


@pytest.mark.parametrize("user", ["root", "0", "00", "+0", "-0", "0:0", "root:root", ":1000", "1000:0", "1000:root"])
def test_root_users_are_denied(user: str) -> None:
    denied(decide(create({}, User=user)), "containers.run_as_root", "User", "--user UID")
    assert decide(create({}, User=user), "operator").allow


@pytest.mark.parametrize("user", ["1000", "1000:1000", "nobody", "app:app", "10:20:ignored"])
def test_non_root_users_are_allowed(user: str) -> None:
    assert decide(create({}, User=user)).allow


def test_empty_user_asks_the_image() -> None:
    seen: list[str] = []

    def lookup(answer: str | None) -> Callable[[str], str | None]:
        def image_user(ref: str) -> str | None:
            seen.append(ref)
            return answer

        return image_user

    operation = create({}, User="", Image="app:1")
    assert decide(operation, image_user=lookup("1000")).allow
    assert seen == ["app:1"]
    denied(decide(operation, image_user=lookup("")), "containers.run_as_root", "User", "sets no USER")
    denied(decide(operation, image_user=lookup("0:0")), "containers.run_as_root", "User", "is root")
    denied(decide(operation, image_user=lookup(None)), "containers.run_as_root", "User", "could not be read")
    denied(decide(operation, image_user=None), "containers.run_as_root", "User", "is it pulled?")
    assert decide(operation, "admin", image_user=None).allow


@pytest.mark.parametrize("group", ["0", "root", "+0", "000"])
def test_group_add_root(group: str) -> None:
    denied(decide(create({"GroupAdd": ["1000", group]})), "containers.run_as_root", "HostConfig.GroupAdd[1]")


# ---------------------------------------------------------------- ports, sysctls, runtimes


def test_published_ports() -> None:
    def ports(host_port: str) -> Operation:
        return create({"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": host_port}]}})

    narrow = policy({"narrow": {"extends": ["developer"], "containers": {"published_ports": ["8000-8005", "9000"]}}})
    assert decide(ports("8000-8005"), "narrow", narrow).allow
    denied(decide(ports("8000-8010"), "narrow", narrow), "containers.published_ports",
           "HostConfig.PortBindings.80/tcp", "host port 8000-8010")  # fmt: skip
    denied(decide(ports(""), "narrow", narrow), "containers.published_ports", "HostConfig.PortBindings.80/tcp",
           "random host port")  # fmt: skip
    assert decide(ports("")).allow  # developer's 1024-65535 covers the daemon's ephemeral range
    assert decide(ports("0")).allow
    denied(decide(ports("80")), "containers.published_ports", "HostConfig.PortBindings.80/tcp", "host port 80")
    assert decide(ports("80"), "admin").allow


def test_sysctls() -> None:
    net = policy({"net": {"extends": ["developer"], "containers": {"sysctls": ["net.ipv4.*"]}}})
    assert decide(create({"Sysctls": {"net.ipv4.ip_forward": "1"}}), "net", net).allow
    for key in ("net/ipv4/ip_forward", "kernel.shmmax", "net.ipv4..x"):
        denied(decide(create({"Sysctls": {key: "1"}}), "net", net), "containers.sysctls", f"HostConfig.Sysctls.{key}")
    assert decide(create({"Sysctls": {"kernel.shmmax": "1"}}), "admin").allow


def test_runtimes() -> None:
    assert decide(create({"Runtime": ""})).allow
    denied(decide(create({"Runtime": "nvidia"})), "containers.runtimes", "HostConfig.Runtime", "(allowed: runc)")
    assert decide(create({"Runtime": "nvidia"}), "admin").allow


# ---------------------------------------------------------------- limits on create


def test_limits_within_maxima() -> None:
    assert decide(create({"Memory": 4 * 1024**3, "NanoCpus": 2_000_000_000, "PidsLimit": 1024})).allow
    denied(decide(create({"Memory": 4 * 1024**3 + 1})), "containers.max_memory", "HostConfig.Memory")
    denied(decide(create({"NanoCpus": 2_500_000_000})), "containers.max_cpus", "HostConfig.NanoCpus", "2.5")
    denied(decide(create({"CpuQuota": 300_000, "CpuPeriod": 100_000})), "containers.max_cpus", "HostConfig.CpuQuota")
    assert decide(create({"CpuQuota": 150_000})).allow  # 1.5 CPUs at the default 100 ms period
    denied(decide(create({"CpuQuota": -1})), "containers.max_cpus", "HostConfig.CpuQuota", "unlimited")
    denied(decide(create({"PidsLimit": 2048})), "containers.max_pids", "HostConfig.PidsLimit", "above the maximum")
    denied(decide(create({"PidsLimit": -1})), "containers.max_pids", "HostConfig.PidsLimit", "removes")
    assert decide(create({"PidsLimit": 0})).allow  # what docker run sends without --pids-limit
    denied(decide(create({"MemorySwap": -1})), "containers.max_memory", "HostConfig.MemorySwap")
    denied(decide(create({"OomKillDisable": True})), "containers.max_memory", "HostConfig.OomKillDisable")
    assert decide(create({"Memory": 64 * 1024**3, "PidsLimit": -1, "OomKillDisable": True}), "admin").allow


def test_require_limits() -> None:
    compiled = policy({"bounded": {"extends": ["developer"], "containers": {"require_limits": True}}})
    decision = decide(capture_op("run-plain"), "bounded", compiled)
    denied(decision, "containers.require_limits", "HostConfig.Memory", "pass --memory")
    denied(decision, "containers.require_limits", "HostConfig.NanoCpus", "pass --cpus")
    denied(decision, "containers.require_limits", "HostConfig.PidsLimit", "pass --pids-limit")
    limited = create({"Memory": 1024**3, "CpuQuota": 100_000, "CpuPeriod": 100_000, "PidsLimit": 100})
    assert decide(limited, "bounded", compiled).allow


def test_real_time_scheduling_is_refused_to_roles_with_cpu_limits() -> None:
    """SCHED_FIFO tasks are outside the CFS quota: --ulimit rtprio would make --cpus meaningless."""
    rtprio = {"Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}, {"Name": "rtprio", "Soft": 0, "Hard": 99}]}
    denied(decide(create(rtprio)), "containers.max_cpus", "HostConfig.Ulimits[1]", "--ulimit rtprio=0:99",
           "real-time scheduling")  # fmt: skip
    # The daemon upper-cases the name (RLIMIT_RTPRIO) and reads keys like Go: case does not hide it.
    sneaky = create({"ulimits": [{"name": "RtPrio", "soft": 1, "hard": 1}]})
    denied(decide(sneaky), "containers.max_cpus", "HostConfig.Ulimits[0]", "--ulimit RtPrio=1:1")
    denied(decide(create({"Ulimits": [{"Name": "rtprio", "Soft": -1, "Hard": -1}]})), "containers.max_cpus",
           "HostConfig.Ulimits[0]")  # fmt: skip
    denied(decide(create({"CpuRealtimeRuntime": 95_000})), "containers.max_cpus", "HostConfig.CpuRealtimeRuntime",
           "leave out --cpu-rt-runtime")  # fmt: skip
    denied(decide(update({"CpuRealtimeRuntime": 95_000})), "containers.max_cpus", "CpuRealtimeRuntime")
    assert decide(create({"Ulimits": [{"Name": "rtprio", "Soft": 0, "Hard": 0}, {"Name": "memlock", "Soft": -1,
                                                                                  "Hard": -1}]})).allow  # fmt: skip
    assert decide(create(rtprio), "admin").allow  # no CPU limit to escape
    bounded = policy({"bounded": {"extends": ["viewer"], "allow": ["container:create"],
                                  "containers": {"require_limits": True, "max_memory": "1g"}}})  # fmt: skip
    limited = {"Memory": 1024**3, "NanoCpus": 10**9, **rtprio}
    denied(decide(create(limited), "bounded", bounded), "containers.require_limits", "HostConfig.Ulimits[1]")


@pytest.mark.parametrize(
    ("ulimits", "words"),
    [
        ([None], "null is not a ulimit"),
        ("rtprio=99", "HostConfig.Ulimits"),
        ([{"Name": "rtpr\u0131o", "Soft": 99, "Hard": 99}], "not an ASCII ulimit name"),  # Go: ToUpper(ı) = I
        ([{"Name": "rtprio", "Soft": "99", "Hard": 99}], "HostConfig.Ulimits[0].Soft"),
    ],
)
def test_unreadable_ulimits_are_refused(ulimits: Any, words: str) -> None:
    """A RequestError, which the Authorizer turns into a deny naming it (rule classify)."""
    with pytest.raises(RequestError) as raised:
        decide(create({"Ulimits": ulimits}))
    assert words in str(raised.value)


def test_build_ulimits_may_not_raise_rtprio() -> None:
    builder = policy({"builder": {"extends": ["developer"], "images": {"local_builds": True, "allow": ["**"]}}})

    def build(query: str) -> Operation:
        headers = {"Content-Type": "application/x-tar", "Content-Length": "0"}
        return classify(DockerRequest(method="POST", uri=f"/v1.41/build?t=x{query}", headers=headers))

    rt = "&ulimits=" + json.dumps([{"Name": "rtprio", "Hard": 99, "Soft": 99}]).replace(" ", "")
    denied(decide(build(rt), "builder", builder), "containers.max_cpus", "ulimits[0]", "real-time scheduling")
    nofile = "&ulimits=" + json.dumps([{"Name": "nofile", "Hard": 4096, "Soft": 4096}]).replace(" ", "")
    assert decide(build(nofile), "builder", builder).allow
    with pytest.raises(RequestError, match="ulimits query parameter: JSON body is invalid"):
        decide(build("&ulimits=%7Bnot-json"), "builder", builder)


# ---------------------------------------------------------------- update


def test_update_captures() -> None:
    for label in ("update", "update-cpus"):
        operation = capture_op(label, "containers-box-update")
        assert decide(operation).allow, label
    tight = policy({"tight": {"extends": ["developer"], "containers": {"max_memory": "64m", "max_cpus": 0.25}}})
    denied(decide(capture_op("update", "containers-box-update"), "tight", tight), "containers.max_memory", "Memory",
           "128m is above the maximum 64m")  # fmt: skip
    denied(decide(capture_op("update-cpus", "containers-box-update"), "tight", tight), "containers.max_cpus",
           "NanoCpus")  # fmt: skip


def test_update_cannot_lift_limits() -> None:
    denied(decide(update({"Memory": 8 * 1024**3})), "containers.max_memory", "Memory", "8g is above the maximum 4g")
    denied(decide(update({"PidsLimit": -1})), "containers.max_pids", "PidsLimit", "removes the process limit")
    denied(decide(update({"PidsLimit": 0})), "containers.max_pids", "PidsLimit")
    denied(decide(update({"NanoCpus": 4_000_000_000})), "containers.max_cpus", "NanoCpus")
    denied(decide(update({"MemorySwap": -1})), "containers.max_memory", "MemorySwap")
    denied(decide(update({"OomKillDisable": True})), "containers.max_memory", "OomKillDisable")
    # Without CpuPeriod the container keeps its own period, which may be 1 ms: 190000 µs is 190 CPUs.
    denied(decide(update({"CpuQuota": 190_000})), "containers.max_cpus", "CpuQuota", "send CpuPeriod")
    denied(decide(update({"CpuPeriod": 1_000})), "containers.max_cpus", "CpuPeriod")
    assert decide(update({"CpuQuota": 150_000, "CpuPeriod": 100_000, "PidsLimit": 500})).allow
    assert decide(update({"Memory": 8 * 1024**3, "PidsLimit": -1}), "admin").allow


def test_update_devices_cgroup_parent_and_unknown_keys() -> None:
    denied(decide(update({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]})),
           "containers.devices", "Devices[0]", "/dev/sda")  # fmt: skip
    denied(decide(update({"CgroupParent": "/"})), "containers.unconfined", "CgroupParent")
    denied(decide(update({"Privileged": True})), "containers.unconfined", "Privileged", "unknown to the plugin")
    assert decide(update({"RestartPolicy": {"Name": "always"}})).allow


def test_missing_update_body_is_denied() -> None:
    operation = request("/containers/box/update", None)
    denied(decide(operation), "containers", "body", "cannot be judged")
