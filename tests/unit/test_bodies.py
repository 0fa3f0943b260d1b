"""authz.classify.bodies: exec, network, volume and service views over real and crafted bodies."""

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
from authz.classify.bodies import (
    exec_create_view,
    network_connect_view,
    network_create_view,
    service_spec_view,
    volume_create_view,
)
from authz.errors import BodyError

CAPTURES = Path("/work/shared/reference/captures")


def capture_body(name: str) -> gojson.GoObject:
    wire = json.loads((CAPTURES / name).read_text())["authz_req"]["wire"]
    return gojson.loads_object(base64.b64decode(wire["RequestBody"]))


def body(value: dict[str, Any]) -> gojson.GoObject:
    return gojson.loads_object(json.dumps(value).encode())


# --- exec ------------------------------------------------------------------------------------------


def test_exec_privileged_capture() -> None:
    v = exec_create_view(capture_body("exec-privileged__03_POST_containers-box-exec.json"))
    assert (v.privileged, v.user, v.cmd) == (True, "", ("true",))


def test_exec_user_root_capture() -> None:
    v = exec_create_view(capture_body("exec-user-root__03_POST_containers-box-exec.json"))
    assert (v.privileged, v.user, v.cmd) == (False, "root", ("id",))


def test_exec_is_read_like_go() -> None:
    v = exec_create_view(body({"privileged": True, "USER": "0:0", "cmd": ["sh"], "Env": None}))
    assert (v.privileged, v.user, v.cmd, v.env) == (True, "0:0", ("sh",), ())
    with pytest.raises(BodyError, match="Cmd: expected an array"):
        exec_create_view(body({"Cmd": "sh -c id"}))  # ExecConfig.Cmd is []string, not a StrSlice
    with pytest.raises(BodyError, match="Privileged"):
        exec_create_view(body({"Privileged": 1}))


# --- networks --------------------------------------------------------------------------------------


def test_network_create_captures() -> None:
    v = network_create_view(capture_body("network-create-run1__02_POST_networks-create.json"))
    assert (v.name, v.driver, v.internal, v.ingress, v.config_from) == (
        "testnet",
        "bridge",
        True,
        False,
        None,
    )
    assert v.ipam_driver == "default"
    assert [c.subnet for c in v.ipam_configs] == ["10.123.0.0/24"]
    labelled = network_create_view(capture_body("network-create-run2__02_POST_networks-create.json"))
    assert dict(labelled.labels) == {"team": "x"}


def test_network_create_options_and_defaults() -> None:
    v = network_create_view(
        body(
            {
                "name": "lan",
                "Driver": "macvlan",
                "options": {"parent": "eth0"},
                "ConfigFrom": {"Network": "cfg"},
                "IPAM": {"Config": [{"Subnet": "10.0.0.0/8", "AuxiliaryAddresses": {"gw": "10.0.0.1"}}]},
            }
        )
    )
    assert (v.name, v.effective_driver, dict(v.options), v.config_from) == (
        "lan",
        "macvlan",
        {"parent": "eth0"},
        "cfg",
    )
    assert dict(v.ipam_configs[0].aux_addresses) == {"gw": "10.0.0.1"}
    assert network_create_view(body({"Name": "n"})).effective_driver == "bridge"
    with pytest.raises(BodyError, match=r"Options\.parent"):
        network_create_view(body({"Options": {"parent": 1}}))


def test_network_connect_captures() -> None:
    plain = network_connect_view(capture_body("network-connect-run1__02_POST_networks-testnet-connect.json"))
    assert (plain.container, plain.aliases, plain.ipv4_address) == ("box", (), "")
    fixed = network_connect_view(capture_body("network-connect-run2__02_POST_networks-testnet2-connect.json"))
    assert (fixed.container, fixed.aliases, fixed.ipv4_address) == ("netc", ("foo",), "10.124.0.0")
    bare = network_connect_view(body({"container": "c"}))
    assert (bare.container, bare.has_endpoint_config) == ("c", False)


# --- volumes ---------------------------------------------------------------------------------------


def test_volume_create_bind_capture() -> None:
    v = volume_create_view(capture_body("volume-create-bind__02_POST_volumes-create.json"))
    assert (v.name, v.effective_driver) == ("hostroot", "local")
    assert dict(v.driver_opts) == {"device": "/", "o": "bind", "type": "none"}
    plain = volume_create_view(capture_body("volume-create__02_POST_volumes-create.json"))
    assert (plain.name, dict(plain.driver_opts)) == ("v1", {})


def test_volume_create_lower_case_and_types() -> None:
    v = volume_create_view(body({"driveropts": {"o": "bind"}, "ClusterVolumeSpec": {}}))
    assert (v.effective_driver, dict(v.driver_opts), v.has_cluster_volume_spec) == (
        "local",
        {"o": "bind"},
        True,
    )
    with pytest.raises(BodyError, match="DriverOpts: expected an object"):
        volume_create_view(body({"DriverOpts": ["o=bind"]}))


# --- services --------------------------------------------------------------------------------------


def test_service_create_capture() -> None:
    v = service_spec_view(capture_body("service-create__02_POST_services-create.json"))
    assert (v.name, v.image, v.mode) == ("svc", "127.0.0.1:5999/tiny:latest", "replicated")
    (mount,) = v.mounts
    assert (mount.type, mount.host_path, mount.target) == ("bind", "/", "/host")
    assert v.cap_add == ("SYS_ADMIN",)
    assert v.plugin is None
    assert v.init is False


def test_service_spec_privileges_plugins_networks() -> None:
    v = service_spec_view(
        body(
            {
                "Name": "s",
                "TaskTemplate": {
                    "ContainerSpec": {
                        "User": "root",
                        "Privileges": {
                            "Seccomp": {"Mode": "unconfined"},
                            "AppArmor": {"Mode": "disabled"},
                            "SELinuxContext": {"Disable": True},
                            "NoNewPrivileges": True,
                        },
                        "Sysctls": {"net.ipv4.ip_forward": "1"},
                        "Secrets": [{"SecretName": "db"}],
                        "Configs": [{"ConfigName": "c"}],
                        "CapabilityDrop": ["all"],
                    },
                    "PluginSpec": {
                        "name": "p",
                        "remote": "evil/plugin",
                        "privileges": [{"name": "mount", "value": ["/"]}],
                    },
                    "Runtime": "plugin",
                    "Networks": [{"Target": "host"}],
                    "Placement": {"Constraints": ["node.role==manager"]},
                    "LogDriver": {"Name": "gelf"},
                },
                "Networks": [{"Target": "legacy"}],
                "Mode": {"Global": {}},
                "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]},
            }
        )
    )
    assert (v.user, v.seccomp_mode, v.apparmor_mode, v.selinux_disable, v.no_new_privileges) == (
        "root",
        "unconfined",
        "disabled",
        True,
        True,
    )
    assert (v.secrets, v.configs, v.cap_drop) == (("db",), ("c",), ("ALL",))
    assert v.plugin is not None
    assert (v.plugin.remote, v.plugin.privileges[0].name, v.plugin.privileges[0].values) == (
        "evil/plugin",
        "mount",
        ("/",),
    )
    assert [n.target for n in v.networks] == ["host", "legacy"]
    assert (v.runtime, v.mode, v.log_driver, v.placement_constraints) == (
        "plugin",
        "global",
        "gelf",
        ("node.role==manager",),
    )
    (port,) = v.published_ports
    assert (port.target_port, port.published_port, port.publish_mode) == (80, 8080, "host")


def test_service_spec_wrong_types_raise() -> None:
    with pytest.raises(BodyError, match=r"ContainerSpec\.Mounts"):
        service_spec_view(body({"TaskTemplate": {"ContainerSpec": {"Mounts": {}}}}))
    with pytest.raises(BodyError, match="not absolute"):
        service_spec_view(body({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "bind", "Source": "x"}]}}}))
    with pytest.raises(BodyError, match="TargetPort"):
        service_spec_view(body({"EndpointSpec": {"Ports": [{"TargetPort": -1}]}}))
    assert service_spec_view(body({})).mode == ""


def test_service_mode_rules() -> None:
    def mode(spec: dict[str, Any]) -> str:
        return service_spec_view(body(spec)).mode

    assert mode({"Mode": {"ReplicatedJob": {}}}) == "replicated-job"
    assert mode({"TaskTemplate": {"Runtime": "plugin"}}) == "global"  # the daemon forces global
    with pytest.raises(BodyError, match="Mode"):
        mode({"Mode": {"Replicated": {}, "Global": {}}})
    with pytest.raises(BodyError, match="Mode"):
        mode({"Mode": {"Replicated": {}}, "TaskTemplate": {"Runtime": "plugin"}})


@pytest.mark.parametrize(
    ("protocol", "publish_mode", "expected"),
    [
        ("", "", ("tcp", "ingress")),
        ("UDP", "Host", ("udp", "host")),
        ("sctp", "ho\u017ft", ("sctp", "host")),  # Go upper-cases the long s to S
        ("bogus", "bogus", ("tcp", "ingress")),  # unknown names are the enums' zero values
    ],
)
def test_service_published_ports(protocol: str, publish_mode: str, expected: tuple[str, str]) -> None:
    spec = {"EndpointSpec": {"Ports": [{"TargetPort": 80, "Protocol": protocol, "PublishMode": publish_mode}]}}
    (port,) = service_spec_view(body(spec)).published_ports
    assert (port.protocol, port.publish_mode) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["Name", "Type", "Source", "Mode", "Config", "Global", "Target"]), children, max_size=3
        )
    ),
    max_leaves=8,
)
_KEYS = ["Name", "Driver", "Options", "IPAM", "ConfigFrom", "Container", "EndpointConfig", "DriverOpts", "User",
         "Privileged", "Cmd", "TaskTemplate", "Mode", "EndpointSpec", "Networks", "Labels"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _json, max_size=5))
def test_property_views_or_body_error(value: dict[str, Any]) -> None:
    parsed = body(value)
    for make in (exec_create_view, network_create_view, network_connect_view, volume_create_view, service_spec_view):
        with contextlib.suppress(BodyError):
            make(parsed)


def test_public_surface() -> None:
    from authz.classify import bodies

    assert all(hasattr(bodies, name) for name in bodies.__all__)
    views = {
        "exec_create_view",
        "network_create_view",
        "network_connect_view",
        "volume_create_view",
        "service_spec_view",
    }
    assert views <= set(bodies.__all__)
