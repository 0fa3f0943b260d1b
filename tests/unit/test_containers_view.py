"""authz.classify.containers: the effective create/update configuration, as the daemon applies it."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import gojson
from authz.classify.containers import (
    ContainerCreate,
    container_create_view,
    container_update_view,
    normalise_host_path,
)
from authz.classify.hostconfig import HOST_CONFIG_FIELDS, normalise_capability, version_less
from authz.errors import BodyError, RequestError

CAPTURES = Path("/work/shared/reference/captures")


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CAPTURES / name).read_text())
    return data


def capture_body(name: str) -> gojson.GoObject:
    wire = capture(name)["authz_req"]["wire"]
    return gojson.loads_object(base64.b64decode(wire["RequestBody"]))


def create(label: str, api: str | None = "1.41") -> ContainerCreate:
    return container_create_view(capture_body(f"{label}__02_POST_containers-create.json"), api)


def view(body: dict[str, Any], api: str | None = "1.41") -> ContainerCreate:
    return container_create_view(gojson.loads_object(json.dumps(body).encode()), api)


# --- real CLI bodies ------------------------------------------------------------------------------


def test_run_privileged() -> None:
    v = create("run-privileged")
    assert v.privileged is True
    assert v.image == "tiny"
    assert v.network_mode == "none"
    assert v.top_level_host_config_keys == ()
    assert v.unknown_host_config_keys == ()


def test_run_bind_root() -> None:
    (bind,) = create("run-bind-root").binds
    assert bind.host_path == "/"
    assert bind.target == "/host"
    assert bind.is_host_bind
    assert not bind.read_only


def test_run_mount_bind() -> None:
    (mount,) = create("run-mount-bind").mounts
    assert (mount.type, mount.host_path, mount.target, mount.read_only) == ("bind", "/etc", "/hostetc", True)


def test_run_inline_volume_bind_exposes_driver_options() -> None:
    (mount,) = create("run-inline-volume-bind").mounts
    assert mount.type == "volume"
    assert mount.source == ""
    assert mount.host_path is None
    assert mount.volume_driver == "local"
    assert dict(mount.volume_driver_options) == {"device": "/etc", "o": "bind", "type": "none"}


def test_kitchen_sink() -> None:
    v = create("create-kitchen-sink-run3")
    assert v.cap_add == ("NET_ADMIN",)
    assert v.cap_drop == ("ALL",)
    assert v.group_add == ("0",)
    assert (v.cgroupns_mode, v.uts_mode, v.cgroup_parent, v.runtime) == ("host", "host", "/custom", "runc")
    assert v.oom_kill_disable is True
    assert v.pids_limit is None  # -1: unlimited
    assert v.device_cgroup_rules == ("c 1:3 rwm",)
    assert v.apparmor_profile == "unconfined"
    assert v.security_values("label") == ("disable",)
    assert v.no_new_privileges is True
    assert (v.log_config.type, dict(v.log_config.config)) == ("json-file", {"max-size": "1m"})
    assert (v.nano_cpus, v.cpu_shares, v.memory_swap) == (1_500_000_000, 512, -1)
    named, host = v.binds
    assert (named.volume, named.host_path, named.read_only, named.target) == ("named1", None, True, "/data")
    assert (host.host_path, host.read_only, host.relabel, host.mode) == ("/tmp", False, "z", "rw,z")


def test_gpus() -> None:
    (request,) = create("create-gpus-run2").device_requests
    assert request.count == -1
    assert request.capabilities == (("gpu",),)


def test_systempaths_unconfined_is_empty_not_null() -> None:
    v = create("create-systempaths-unconfined")
    assert v.masked_paths == ()
    assert v.readonly_paths == ()
    assert create("run-privileged").masked_paths is None


def test_join_namespaces_and_volumes_from() -> None:
    v = create("create-join-namespaces")
    assert (v.network_mode, v.pid_mode, v.ipc_mode) == ("container:box5",) * 3
    (source,) = create("create-volumes-from-run2").volumes_from
    assert (source.container, source.read_only) == ("sink", True)


def test_publish_and_devices_and_sysctls() -> None:
    (binding,) = create("create-publish").port_bindings
    assert (binding.container_port, binding.host_port_start, binding.host_port_end) == ("80/tcp", 8080, 8080)
    pa = create("create-publish-all")
    assert pa.publish_all_ports is True
    assert pa.exposed_ports == ("80/tcp",)
    (device,) = create("run-device").devices
    assert (device.path_on_host, device.path_in_container, device.cgroup_permissions) == (
        "/dev/null",
        "/dev/xnull",
        "rwm",
    )
    assert dict(create("run-sysctl").sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert create("run-user-root").user == "root"
    assert create("run-memory").memory == 64 * 1024 * 1024
    assert create("run-seccomp-unconfined").seccomp_profile == "unconfined"


# --- the JSON differential: our view against what the daemon applied (its inspect response) --------


@pytest.mark.parametrize(("create_no", "inspect_no"), [("01", "03"), ("04", "06"), ("07", "09"), ("19", "21")])
def test_json_differential_matches_daemon(create_no: str, inspect_no: str) -> None:
    v = container_create_view(capture_body(f"json-differential__{create_no}_POST_containers-create.json"), "1.41")
    inspect_file = next(CAPTURES.glob(f"json-differential__{inspect_no}_GET_*.json"))
    applied = capture(inspect_file.name)["authz_res"]["decoded_response_body"]["json"]["HostConfig"]
    assert v.privileged == applied["Privileged"]
    assert [b.raw for b in v.binds] == (applied["Binds"] or [])
    assert v.pid_mode == applied["PidMode"]
    assert v.network_mode == applied["NetworkMode"]
    assert v.cap_add == tuple(normalise_capability(c) for c in applied["CapAdd"] or ())


def test_top_level_host_config_is_reported() -> None:
    v = container_create_view(capture_body("json-differential__01_POST_containers-create.json"), "1.41")
    assert v.top_level_host_config_keys == ("Privileged", "Binds", "PidMode", "NetworkMode")
    assert v.host_config_from_top_level


@pytest.mark.parametrize("no", ["10", "13", "16"])
def test_json_differential_ambiguous_bodies_raise(no: str) -> None:
    wire = capture(f"json-differential__{no}_POST_containers-create.json")["authz_req"]["wire"]
    with pytest.raises(BodyError):
        gojson.loads_object(base64.b64decode(wire["RequestBody"]))


# --- getHostConfig rules ---------------------------------------------------------------------------


def test_inner_host_config_wins_except_copied_fields() -> None:
    v = view(
        {
            "Image": "x",
            "Privileged": True,
            "Memory": 100,
            "MemorySwap": 200,
            "CpuShares": 3,
            "CpusetCpus": "0",
            "VolumeDriver": "evil",
            "HostConfig": {"Binds": ["vol:/v"], "CpuShares": 7, "memory": None},
        }
    )
    assert v.privileged is False
    assert (v.memory, v.memory_swap, v.cpu_shares, v.cpuset_cpus) == (100, 200, 7, "0")
    assert v.volume_driver == "evil"
    assert v.binds[0].volume_driver == "evil"  # the copied driver applies to named volumes


def test_cpuset_fills_an_empty_cpuset_cpus_only_when_a_host_config_exists() -> None:
    assert view({"Cpuset": "1", "HostConfig": {}}).cpuset_cpus == "1"
    assert view({"Cpuset": "1", "HostConfig": {"CpusetCpus": "2"}}).cpuset_cpus == "2"
    assert view({"Cpuset": "1", "Memory": 5}).cpuset_cpus == "1"
    assert view({"Cpuset": "1"}).cpuset_cpus == ""
    assert view({"Cpuset": "1", "HostConfig": {}}).top_level_host_config_keys == ("Cpuset",)


def test_lower_case_and_null_keys() -> None:
    v = view({"image": "tiny", "hostconfig": {"privileged": True, "capadd": "sys_admin", "Binds": None}})
    assert (v.image, v.privileged, v.cap_add, v.binds) == ("tiny", True, ("SYS_ADMIN",), ())
    assert view({"HostConfig": None, "privileged": True}).privileged is True


def test_unknown_host_config_keys() -> None:
    v = view({"HostConfig": {"Privileged": False, "Annotations": {}, "resources": {}, "cpushares": 1}})
    assert v.unknown_host_config_keys == ("Annotations", "resources")
    assert "Resources" not in HOST_CONFIG_FIELDS
    assert len(HOST_CONFIG_FIELDS) == len(set(HOST_CONFIG_FIELDS))


def test_api_version_adjustments() -> None:
    body = {
        "HostConfig": {
            "Mounts": [{"Type": "bind", "Source": "/a", "Target": "/b", "BindOptions": {"NonRecursive": True}}]
        }
    }
    old, new = view(body, "1.39"), view(body, "1.41")
    assert old.mounts[0].non_recursive is False
    assert new.mounts[0].non_recursive is True
    assert (old.ipc_mode, new.ipc_mode) == ("shareable", "")
    assert (view({}, "1.40").cgroupns_mode, view({}, "1.41").cgroupns_mode) == ("host", "")
    assert view({}, None).cgroupns_mode == ""
    assert view({"HostConfig": {"CgroupnsMode": "private"}}, "1.30").cgroupns_mode == "private"
    assert view({}).network_mode == "default"


@pytest.mark.parametrize(("pids", "expected"), [(None, None), (0, None), (-1, None), (-5, None), (100, 100)])
def test_pids_limit(pids: int | None, expected: int | None) -> None:
    assert view({"HostConfig": {"PidsLimit": pids}}).pids_limit == expected


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        ({"Privileged": "true"}, "HostConfig.Privileged: expected a boolean"),
        ({"Binds": "/:/host"}, "HostConfig.Binds: expected an array"),
        ({"Memory": 1.5}, "HostConfig.Memory: expected an integer"),
        ({"Memory": 2**63}, "out of range"),
        ({"CapAdd": [1]}, r"CapAdd\[0\]"),
        ({"Mounts": [None]}, "null mount"),
        ({"Mounts": [{"Type": "bind", "Source": "etc", "Target": "/x"}]}, "not absolute"),
        ({"SecurityOpt": ["nonsense"]}, "invalid SecurityOpt"),
        ({"PortBindings": {"80/tcp": [{"HostPort": "80_80"}]}}, "invalid port"),
        ({"Sysctls": {"a": 1}}, r"Sysctls\.a"),
        ({"LogConfig": []}, "LogConfig: expected an object"),
    ],
)
def test_wrong_types_raise(host_config: dict[str, Any], message: str) -> None:
    with pytest.raises(BodyError, match=message):
        view({"HostConfig": host_config})


def test_non_object_host_config_raises() -> None:
    with pytest.raises(BodyError, match="HostConfig: expected an object"):
        view({"HostConfig": []})


# --- value parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("SYS_ADMIN", "SYS_ADMIN"),
        ("cap_sys_admin", "SYS_ADMIN"),
        ("CAP_NET_ADMIN", "NET_ADMIN"),
        ("all", "ALL"),
        ("CAP_ALL", "CAP_ALL"),  # unknown to the daemon: must not turn into ALL or into nothing
        ("\u017fys_admin", "SYS_ADMIN"),  # Go's ToUpper maps the long s to S
        ("net_\u00dfx", "NET_\u00dfX"),  # Go keeps ß (Python's upper would expand it to SS)
    ],
)
def test_capabilities(raw: str, expected: str) -> None:
    assert normalise_capability(raw) == expected


@pytest.mark.parametrize(
    ("raw", "key", "value"),
    [
        ("seccomp=unconfined", "seccomp", "unconfined"),
        ("seccomp:unconfined", "seccomp", "unconfined"),
        ('seccomp={"a": "b=c"}', "seccomp", '{"a": "b=c"}'),
        ("label=type:spc_t", "label", "type:spc_t"),
        ("label:disable", "label", "disable"),
        ("disable", "label", "disable"),
        ("no-new-privileges", "no-new-privileges", "true"),
        ("no-new-privileges=false", "no-new-privileges", "false"),
        ("writable-cgroups", "writable-cgroups", "true"),
        ("apparmor:x=y", "apparmor:x", "y"),  # "=" wins: the daemon refuses the unknown key
        ("systempaths=unconfined", "systempaths", "unconfined"),
    ],
)
def test_security_opt(raw: str, key: str, value: str) -> None:
    (opt,) = view({"HostConfig": {"SecurityOpt": [raw]}}).security_opt
    assert (opt.key, opt.value) == (key, value)


def test_no_new_privileges_values() -> None:
    assert view({"HostConfig": {"SecurityOpt": ["no-new-privileges=false"]}}).no_new_privileges is False
    assert view({"HostConfig": {"SecurityOpt": ["no-new-privileges:1"]}}).no_new_privileges is True
    with pytest.raises(BodyError, match="not a boolean"):
        view({"HostConfig": {"SecurityOpt": ["no-new-privileges=yes"]}})  # the daemon refuses it too
    with pytest.raises(BodyError, match="not a boolean"):
        view({"HostConfig": {"SecurityOpt": ["writable-cgroups=on"]}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/:/host", ("/", None, "/host", False, None, False)),
        ("//etc/../etc/:/h/:ro", ("/etc", None, "/h", True, None, False)),
        ("/var/run/docker.sock:/s:rshared", ("/var/run/docker.sock", None, "/s", False, "rshared", False)),
        ("/a/./b//:/c:ro,Z,slave,delegated", ("/a/b", None, "/c", True, "slave", False)),
        ("data:/data", (None, "data", "/data", False, None, False)),
        ("data:/data:nocopy,ro", (None, "data", "/data", True, None, True)),
        ("/data", (None, None, "/data", False, None, False)),
    ],
)
def test_binds(raw: str, expected: tuple[object, ...]) -> None:
    """expected: host_path, volume, target, read_only, propagation, nocopy."""
    (b,) = view({"HostConfig": {"Binds": [raw]}}).binds
    assert (b.host_path, b.volume, b.target, b.read_only, b.propagation, b.nocopy) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ":/x",
        "/a:/b:ro:x",
        "/a:/b:rw,ro",
        "/a:/b:ro,",
        "/a:/b:bogus",
        "/x:ro",
        "vol:",
        "/a:relative",
        "/a:/",
        "/a:/b:nocopy",
        "vol:/b:rshared",
        "/anon:ro",
    ],
)
def test_invalid_binds_raise(raw: str) -> None:
    with pytest.raises(BodyError, match="invalid bind"):
        view({"HostConfig": {"Binds": [raw]}})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("//", "/"),
        ("//etc", "/etc"),
        ("///etc//x/", "/etc/x"),
        ("/a/../../b", "/b"),
        ("/a/./b/.", "/a/b"),
    ],
)
def test_normalise_host_path(path: str, expected: str) -> None:
    assert normalise_host_path(path) == expected


@pytest.mark.parametrize("path", ["", "etc", "./etc", "\\etc", "~/x"])
def test_relative_paths_are_not_host_paths(path: str) -> None:
    with pytest.raises(BodyError, match="not absolute"):
        normalise_host_path(path)


@pytest.mark.parametrize(
    ("host_port", "start", "end"),
    [("", None, None), ("0", None, None), ("8080", 8080, 8080), ("08080", 8080, 8080),
     ("8000-8010", 8000, 8010), ("8080/udp", 8080, 8080), ("/tcp", None, None), ("1-2-3", 1, 2),
     ("0-100", 0, 100)],
)  # fmt: skip
def test_port_bindings(host_port: str, start: int | None, end: int | None) -> None:
    (binding,) = view({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": host_port}]}}}).port_bindings
    assert (binding.host_port_start, binding.host_port_end) == (start, end)


@pytest.mark.parametrize("host_port", ["-1", "+80", "65536", "8010-8000", "\u0668\u0660", "80-"])
def test_invalid_host_ports_raise(host_port: str) -> None:
    with pytest.raises(BodyError, match="port"):
        view({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": host_port}]}}})


def test_endpoints() -> None:
    body = {
        "NetworkingConfig": {
            "EndpointsConfig": {
                "net1": {"Aliases": ["db"], "IPAMConfig": {"IPv4Address": "10.0.0.9"}},
                "net2": None,
            }
        }
    }
    first, second = view(body).endpoints
    assert (first.network, first.aliases, first.ipv4_address) == ("net1", ("db",), "10.0.0.9")
    assert second.network == "net2"


def test_version_less() -> None:
    assert version_less("1.39", "1.40")
    assert not version_less("1.40", "1.40")
    assert not version_less("1.41.0", "1.41")
    assert version_less("1.9", "1.10")
    assert not version_less(None, "1.40")
    with pytest.raises(RequestError):
        version_less("1.x", "1.40")


# --- update ----------------------------------------------------------------------------------------


def test_update_captures() -> None:
    v = container_update_view(capture_body("update__02_POST_containers-box-update.json"), "1.41")
    assert (v.memory, v.memory_swap, v.pids_limit) == (128 * 2**20, 256 * 2**20, None)
    assert v.restart_policy is not None
    assert v.unknown_keys == ()
    r = container_update_view(capture_body("restart-policy-update-run2__02_POST_containers-box4-update.json"))
    assert r.restart_policy is not None
    assert r.restart_policy.name == "unless-stopped"


def test_update_pids_and_unknown_keys() -> None:
    def update(body: dict[str, Any], api: str | None = "1.41") -> Any:
        return container_update_view(gojson.loads_object(json.dumps(body).encode()), api)

    assert update({"PidsLimit": -1}).pids_limit == 0  # unlimited
    assert update({"PidsLimit": 50}).pids_limit == 50
    assert update({"PidsLimit": 50}, "1.39").pids_limit is None  # ignored before 1.40
    assert update({"pidslimit": 7, "Privileged": True}).unknown_keys == ("Privileged",)
    assert update({}).restart_policy is None
    with pytest.raises(BodyError, match="BlkioWeight"):
        update({"BlkioWeight": 70000})


# --- robustness: any JSON object gives a view or a BodyError, nothing else ---------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats(allow_nan=False,
    allow_infinity=False) | st.sampled_from(["", "/", "/a:/b:ro", "x", "host", "80", "a=b", "tcp"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["Type", "Source", "Target",
    "HostPort", "Name", "80/tcp", "Config", "BindOptions", "VolumeOptions", "DriverConfig"]), children, max_size=3),
    max_leaves=8,
)  # fmt: skip
_host_config = st.dictionaries(st.sampled_from(HOST_CONFIG_FIELDS), _json, max_size=6)


@settings(max_examples=300, deadline=None)
@given(_host_config, _host_config, st.sampled_from([None, "1.24", "1.39", "1.41"]))
def test_property_view_or_body_error(inner: dict[str, Any], top: dict[str, Any], api: str | None) -> None:
    body = {**top, "Image": "tiny", "HostConfig": inner or None}
    try:
        result = view(body, api)
    except BodyError:
        return
    assert isinstance(result, ContainerCreate)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["Memory", "PidsLimit", "RestartPolicy", "Devices", "CpusetCpus"]), _json))
def test_property_update_view_or_body_error(body: dict[str, Any]) -> None:
    with contextlib.suppress(BodyError):
        container_update_view(gojson.loads_object(json.dumps(body).encode()))


def test_public_surface() -> None:
    from authz.classify import containers, hostconfig, mounts

    for module in (containers, hostconfig, mounts):
        assert all(hasattr(module, name) for name in module.__all__)
    assert {"container_create_view", "container_update_view", "normalise_host_path"} <= set(containers.__all__)
